//! Parsed types: once built, they are valid, and nothing re-validates them.

pub mod alert;
pub mod channel;
pub mod ids;
pub mod integration;
pub mod matcher;
pub mod outcome;
pub mod receiver;
pub mod secret;
pub mod settings;
pub mod templates;

pub use alert::{Alert, AlertStatus, WebhookPayload};
pub use channel::{Channel, ChannelSource, ChannelSpec, RouteTiming};
pub use ids::{ChannelId, UserId, UNATTRIBUTED};
pub use integration::IntegrationKind;
pub use matcher::{Matcher, Matchers};
pub use outcome::{AttemptResult, MessageState, Reason, UndeliverableReason};
pub use receiver::{ReceiverName, Target};
pub use secret::Secret;
pub use settings::ChannelSettings;
pub use templates::{TemplateField, Templates};

//! Parsed types: once built, they are valid, and nothing re-validates them.

pub mod alert;
pub mod channel;
pub mod ids;
pub mod matcher;

pub use alert::{Alert, AlertStatus, WebhookPayload};
pub use channel::{Channel, ChannelSpec};
pub use ids::{ChannelId, UserId, UNATTRIBUTED};
pub use matcher::{Matcher, Matchers};

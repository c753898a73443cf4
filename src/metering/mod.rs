//! Per-user counters for Prometheus, and the open period's usage. The
//! counters are counted only through the event functions of [`events`].

pub mod events;
pub mod metrics;

pub use events::{ConsulSyncResult, Final, RenderResult};
pub use metrics::Metrics;

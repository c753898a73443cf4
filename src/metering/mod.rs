//! Per-user counters for Prometheus, and the open period's usage.

pub mod metrics;

pub use metrics::Metrics;

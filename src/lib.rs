//! notimeter: a notification proxy with per-user metering and billing for
//! Prometheus Alertmanager. See the README for the big picture.
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod atomic;
pub mod auth;
pub mod channels;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod config;
pub mod dispatch;
pub mod domain;
pub mod error;
pub mod html;
pub mod import;
pub mod ingest;
pub mod ledger;
pub mod metering;
pub mod outbound;
pub mod reconcile;
pub mod render;
pub mod routing;
pub mod server;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod templating;

//! Command-line verbs.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "notimeter",
    version,
    about = "Notification proxy with per-user metering and billing for Prometheus Alertmanager"
)]
pub struct Cli {
    /// TOML settings file; NOTIMETER_* environment variables override it.
    #[arg(long, global = true, env = "NOTIMETER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: webhook ingest, delivery, metrics and the API.
    Serve,
    /// Create the database if needed, apply migrations, and exit.
    Migrate,
}

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
    /// The finance ledger.
    #[command(subcommand)]
    Ledger(LedgerCommand),
}

#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// Close the open billing period now, write its report, and print its id.
    Close,
    /// Write a period's ledger CSV, byte for byte its report in reports/.
    Export {
        /// The period or statement id (see GET /v1/ledger/periods).
        #[arg(long)]
        period: String,
        /// Write here instead of standard output.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

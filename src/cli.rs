//! Command-line verbs.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

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
    /// Render Alertmanager's configuration from the channels, check it, write
    /// it atomically and reload Alertmanager (see [render] in the settings).
    Render(RenderArgs),
    /// Import channels from elsewhere.
    #[command(subcommand)]
    Import(ImportCommand),
    /// A local webhook receiver for trying notimeter out: prints every request
    /// it gets (a webhook channel pointed at it) and answers 200.
    Receive {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:9099")]
        listen: std::net::SocketAddr,
    },
}

// The options of `render` (no doc comment: the verb's own is its help).
#[derive(Debug, Args)]
pub struct RenderArgs {
    /// Print the candidate instead of writing it.
    #[arg(long, conflicts_with = "diff")]
    pub dry_run: bool,
    /// Print what would change against the current file, and write nothing.
    #[arg(long)]
    pub diff: bool,
    /// Publish even an empty result or one that shrinks by more than render.max_shrink.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Subcommand)]
pub enum ImportCommand {
    /// Channels from the original Consul layout users/<user_id>/alarms/<type>/<alarm_id>/<field>.
    ConsulExport {
        /// What `consul kv export users/` wrote.
        #[arg(required_unless_present = "from_consul")]
        file: Option<PathBuf>,
        /// Read the same data live from Consul, e.g. http://127.0.0.1:8500.
        #[arg(long, value_name = "ADDRESS", conflicts_with = "file")]
        from_consul: Option<String>,
        /// Also delete the Consul channels the data no longer describes (at
        /// most `[consul] max_delete_share` of them, unless --force).
        #[arg(long)]
        prune: bool,
        /// With --prune: delete however many that is.
        #[arg(long, requires = "prune")]
        force: bool,
    },
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

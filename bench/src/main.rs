//! notimeter-bench: measures a release build of notimeter on this machine.
//! `core` (the ingest and delivery path), `e2e` (through a real Alertmanager), `integrations` (per-integration
//! throughput and isolation), `ledger`, `render` and `memory` (resident memory
//! under load); see the README's Benchmarks section.

mod common;
mod core;
mod durable;
mod e2e;
mod floor;
mod integrations;
mod ledger;
mod memory;
mod render;

use std::net::SocketAddr;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Benchmarks a release build of notimeter")]
struct Cli {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// Alerts accepted per second, ingest latency, messages delivered per second, peak RSS.
    Core(core::CoreArgs),
    /// Through a real Alertmanager to 1,000 users' webhooks, against Alertmanager posting straight to them.
    E2e(e2e::E2eArgs),
    /// The CPU a message's storage costs at least: notimeter's outbox statements with nothing around them.
    Floor(floor::FloorArgs),
    /// Messages per second per integration, and a slow destination's effect on the others.
    Integrations(integrations::IntegrationArgs),
    /// Closing a period of 1,000,000 messages, exporting 100,000 rows, peak RSS.
    Ledger(ledger::LedgerArgs),
    /// Peak and settled RSS: idle, normal load, 16 concurrent 20,000-alert payloads.
    Memory(memory::MemoryArgs),
    /// Rendering 10,000 users × 3 channels in both modes; amtool, reload, Alertmanager CPU.
    Render(render::RenderArgs),
    /// (for profiling by hand) A sink that answers every request 200 at once.
    Sink {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// (internal) A handler that parses the webhook payload and answers 200 without a store.
    NullServer {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// (internal) The no-store handler that also delivers each payload to a sink before it answers.
    ForwardServer {
        #[arg(long)]
        listen: SocketAddr,
        /// The sink's base URL (`http://host:port`).
        #[arg(long)]
        sink: String,
    },
    /// (internal) The forwarder that stores each message (`floor`'s statements) before it answers, then delivers it.
    DurableForwardServer {
        #[arg(long)]
        listen: SocketAddr,
        /// The sink's base URL (`http://host:port`).
        #[arg(long)]
        sink: String,
        /// A migrated notimeter database: `sqlite://PATH` or a PostgreSQL URL.
        #[arg(long)]
        database: String,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        match cli.verb {
            Verb::Core(args) => core::run(args).await,
            Verb::E2e(args) => e2e::run(args).await,
            Verb::Floor(args) => floor::run(args).await,
            Verb::Integrations(args) => integrations::run(args).await,
            Verb::Ledger(args) => ledger::run(args).await,
            Verb::Memory(args) => memory::run(args).await,
            Verb::Render(args) => render::run(args).await,
            Verb::NullServer { listen } => core::null_server(listen).await,
            Verb::ForwardServer { listen, sink } => core::forward_server(listen, sink).await,
            Verb::DurableForwardServer {
                listen,
                sink,
                database,
            } => durable::server(listen, sink, database).await,
            Verb::Sink { listen } => core::sink_server(listen).await,
        }
    })
}

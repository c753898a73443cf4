//! The `notimeter` binary: parses the command line, loads the settings,
//! starts tracing and hands the verb to `notimeter::commands`.

use std::process::ExitCode;

use clap::Parser;
use notimeter::cli::{Cli, Command, ImportCommand, LedgerCommand};
use notimeter::commands;
use notimeter::config::Settings;

/// jemalloc rather than the system allocator: the core path allocates per
/// request and per message on several threads, where glibc's allocator
/// took a tenth of the writer thread's time and kept more memory.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("notimeter: invalid configuration: {}", describe(&e));
            return ExitCode::from(2);
        }
    };
    notimeter::telemetry::init(settings.log_format);
    let result = match cli.command {
        Command::Serve => commands::serve::run(settings).await,
        Command::Migrate => commands::migrate::run(&settings).await,
        Command::Ledger(LedgerCommand::Close) => commands::ledger::close(settings).await,
        Command::Ledger(LedgerCommand::Export { period, output }) => {
            commands::ledger::export(settings, &period, output.as_deref()).await
        }
        Command::Render(args) => commands::render::run(&settings, &args).await,
        Command::Receive { listen } => commands::receive::run(listen).await,
        Command::Import(ImportCommand::ConsulExport {
            file,
            from_consul,
            prune,
            force,
        }) => {
            let options = notimeter::import::consul::SyncOptions { prune, force };
            commands::import::consul_export(
                &settings,
                file.as_deref(),
                from_consul.as_deref(),
                options,
            )
            .await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // Said once, as one line: what went wrong and its causes (never a
        // backtrace, whatever RUST_BACKTRACE says: it is for panics).
        Err(e) => {
            eprintln!("notimeter: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A settings error, with where the setting is set: its TOML key and its
/// environment variable (`[dispatch] workers` is `NOTIMETER_DISPATCH__WORKERS`).
fn describe(e: &figment::Error) -> String {
    let key = e.path.join(".");
    if key.is_empty() {
        return e.to_string();
    }
    let var = format!("NOTIMETER_{}", e.path.join("__").to_ascii_uppercase());
    format!("{e} (set `{key}` in the --config file, or {var})")
}

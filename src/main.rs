use std::process::ExitCode;

use clap::Parser;
use notimeter::cli::{Cli, Command, LedgerCommand};
use notimeter::config::Settings;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("notimeter: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    notimeter::telemetry::init(settings.log_format);
    let result = match cli.command {
        Command::Serve => serve(settings).await,
        Command::Migrate => notimeter::app::open_store(&settings).await.map(|store| {
            tracing::info!(store = store.backend_name(), "migrations applied");
        }),
        Command::Ledger(verb) => ledger(settings, verb).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = ?e, "notimeter failed");
            eprintln!("notimeter: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn ledger(settings: Settings, verb: LedgerCommand) -> anyhow::Result<()> {
    use std::io::Write;
    let ledger = notimeter::app::open_ledger(settings).await?;
    match verb {
        LedgerCommand::Close => match ledger.close_now().await? {
            Some((closed, opened)) => println!(
                "closed {} (report {}); opened {}",
                closed.id,
                ledger.report_path(&closed.id).display(),
                opened.id
            ),
            None => anyhow::bail!("nothing to close: the open period starts in the future"),
        },
        LedgerCommand::Export { period, output } => {
            let p = ledger
                .store
                .get_period(&period)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no billing period {period:?}"))?;
            let bytes = ledger.csv(&p).await?;
            match output {
                Some(path) => std::fs::write(&path, &bytes)?,
                None => std::io::stdout().write_all(&bytes)?,
            }
        }
    }
    Ok(())
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let app = notimeter::app::Application::build(settings).await?;
    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        notimeter::app::shutdown_signal().await;
        trigger.cancel();
    });
    app.run(shutdown).await
}

use std::process::ExitCode;

use clap::Parser;
use notimeter::cli::{Cli, Command};
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

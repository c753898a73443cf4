//! `notimeter serve`: the service, until Ctrl-C or SIGTERM.

use tokio_util::sync::CancellationToken;

use crate::app::{shutdown_signal, Application};
use crate::config::Settings;

/// Builds the application and runs it until a shutdown signal arrives.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let app = Application::build(settings).await?;
    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        trigger.cancel();
    });
    app.run(shutdown).await
}

//! `notimeter migrate`: create the database if needed and apply migrations.

use crate::config::Settings;

/// Opens the store (which creates and migrates it) and logs that it is done.
pub async fn run(settings: &Settings) -> anyhow::Result<()> {
    let store = crate::app::open_store(settings, &crate::clock::Clock::system()).await?;
    tracing::info!(store = store.backend_name(), "migrations applied");
    Ok(())
}

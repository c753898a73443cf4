//! `notimeter ledger close` and `notimeter ledger export`.

use std::io::Write;
use std::path::Path;

use crate::config::Settings;

/// Closes the open billing period now and prints the closed period, its
/// report and the period opened in its place.
pub async fn close(settings: Settings) -> anyhow::Result<()> {
    let ledger = crate::app::open_ledger(settings).await?;
    match ledger.close_now().await? {
        Some((closed, opened)) => println!(
            "closed {} (report {}); opened {}",
            closed.id,
            ledger.report_path(&closed.id).display(),
            opened.id
        ),
        None => anyhow::bail!("nothing to close: the open period starts in the future"),
    }
    Ok(())
}

/// Writes a period's ledger CSV to `output`, or to standard output.
pub async fn export(settings: Settings, period: &str, output: Option<&Path>) -> anyhow::Result<()> {
    let ledger = crate::app::open_ledger(settings).await?;
    let p = ledger
        .store
        .get_period(period)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no billing period {period:?}"))?;
    let bytes = ledger.csv(&p).await?;
    match output {
        Some(path) => std::fs::write(path, &bytes)?,
        None => std::io::stdout().write_all(&bytes)?,
    }
    Ok(())
}

//! `notimeter import consul-export`: channels from the original Consul layout,
//! from an export file or live from Consul.

use std::path::Path;

use crate::clock::Clock;
use crate::config::Settings;
use crate::import::consul;

/// Imports the channels and prints each one imported, each entry skipped and
/// why, and the totals.
pub async fn consul_export(
    settings: &Settings,
    file: Option<&Path>,
    from_consul: Option<&str>,
) -> anyhow::Result<()> {
    let (entries, problems) = match (file, from_consul) {
        (_, Some(address)) => consul::fetch(address).await?,
        (Some(path), None) => {
            consul::parse(&std::fs::read_to_string(path)?).map_err(anyhow::Error::msg)?
        }
        (None, None) => anyhow::bail!("give an export file or --from-consul"),
    };
    let clock = Clock::system();
    let store = crate::app::open_store(settings, &clock).await?;
    let report = consul::import(&store, settings, &clock, &entries).await?;
    for (user, channel) in &report.imported {
        println!("imported {user}/{channel}");
    }
    for problem in &problems {
        println!("skipped: {problem}");
    }
    for (key, why) in &report.skipped {
        println!("skipped {key}: {why}");
    }
    println!(
        "{} channel(s) imported, {} skipped",
        report.imported.len(),
        report.skipped.len() + problems.len()
    );
    Ok(())
}

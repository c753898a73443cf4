//! `notimeter import consul-export`: channels from the original Consul layout,
//! from an export file or live from Consul.

use std::path::Path;

use crate::clock::Clock;
use crate::config::Settings;
use crate::import::consul::{self, SyncOptions};

/// Imports the channels and prints each one imported or deleted, each entry
/// skipped and why, and the totals. A prune the deletion guard refuses
/// changes nothing and fails.
pub async fn consul_export(
    settings: &Settings,
    file: Option<&Path>,
    from_consul: Option<&str>,
    options: SyncOptions,
) -> anyhow::Result<()> {
    let (entries, problems) = match (file, from_consul) {
        (_, Some(address)) => {
            let read = consul::read(&settings.consul, address, None).await?;
            (read.entries, read.problems)
        }
        (Some(path), None) => {
            consul::parse(&std::fs::read_to_string(path)?).map_err(anyhow::Error::msg)?
        }
        (None, None) => anyhow::bail!("give an export file or --from-consul"),
    };
    let clock = Clock::system();
    let store = crate::app::open_existing_store(settings, &clock).await?;
    let report = consul::sync(&store, settings, &clock, &entries, options).await?;
    if let Some(why) = &report.refused {
        anyhow::bail!("{why}; run with --force to delete them anyway");
    }
    for (user, channel) in &report.imported {
        println!("imported {user}/{channel}");
    }
    for (user, channel) in &report.deleted {
        println!("deleted {user}/{channel}");
    }
    for problem in &problems {
        println!("skipped: {problem}");
    }
    for (key, why) in &report.skipped {
        println!("skipped {key}: {why}");
    }
    println!(
        "{} channel(s) imported, {} unchanged, {} deleted, {} skipped",
        report.imported.len(),
        report.unchanged,
        report.deleted.len(),
        report.skipped.len() + problems.len()
    );
    Ok(())
}

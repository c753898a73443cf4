//! `notimeter render`: render Alertmanager's configuration once, and print it
//! (`--dry-run`), diff it (`--diff`) or publish it.

use std::path::Path;

use crate::cli::RenderArgs;
use crate::config::Settings;
use crate::render::publish::{self, Published, Renderer};

pub async fn run(settings: &Settings, args: &RenderArgs) -> anyhow::Result<()> {
    let store = crate::app::open_existing_store(settings, &crate::clock::Clock::system()).await?;
    let renderer = Renderer {
        store: &store,
        settings,
        http: crate::outbound::operator_client(settings.render.reload_timeout),
        metrics: None,
    };
    if args.dry_run || args.diff {
        return preview(&renderer, settings, args.dry_run).await;
    }
    match renderer.run(args.force).await? {
        Published::Unchanged => println!("unchanged: nothing written, nothing reloaded"),
        Published::Written { reloaded } => println!(
            "written {}{}",
            settings
                .render
                .output
                .as_deref()
                .unwrap_or(Path::new(""))
                .display(),
            if reloaded {
                "; Alertmanager reloaded and confirmed"
            } else {
                ""
            }
        ),
    }
    Ok(())
}

/// Prints the candidate (`dry_run`) or its diff against the current file,
/// and the channels left out of it; writes nothing.
async fn preview(
    renderer: &Renderer<'_>,
    settings: &Settings,
    dry_run: bool,
) -> anyhow::Result<()> {
    let candidate = renderer.candidate().await?;
    for s in &candidate.skipped {
        eprintln!("left out: {}/{}: {}", s.user_id, s.channel_id, s.reason);
    }
    if dry_run {
        print!("{}", candidate.yaml);
    } else {
        let path = settings
            .render
            .output
            .clone()
            .unwrap_or_else(|| "alertmanager.yml".into());
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        print!(
            "{}",
            publish::diff(&current, &candidate.yaml, &path.display().to_string())
        );
    }
    Ok(())
}

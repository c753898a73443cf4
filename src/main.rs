use std::process::ExitCode;

use clap::Parser;
use notimeter::cli::{Cli, Command, ImportCommand, LedgerCommand};
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
        Command::Render {
            dry_run,
            diff,
            force,
        } => render(settings, dry_run, diff, force).await,
        Command::Import(ImportCommand::ConsulExport { file, from_consul }) => {
            import(settings, file, from_consul).await
        }
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

async fn render(settings: Settings, dry_run: bool, diff: bool, force: bool) -> anyhow::Result<()> {
    use notimeter::render::publish::{self, Published, Renderer};
    let store = notimeter::app::open_store(&settings).await?;
    let renderer = Renderer {
        store: &store,
        settings: &settings,
        http: publish::operator_client(),
        metrics: None,
    };
    if dry_run || diff {
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
        return Ok(());
    }
    match renderer.run(force).await? {
        Published::Unchanged => println!("unchanged: nothing written, nothing reloaded"),
        Published::Written { reloaded } => println!(
            "written {}{}",
            settings
                .render
                .output
                .as_deref()
                .unwrap_or(std::path::Path::new(""))
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

async fn import(
    settings: Settings,
    file: Option<std::path::PathBuf>,
    from_consul: Option<String>,
) -> anyhow::Result<()> {
    use notimeter::render::consul;
    let (entries, problems) = match (file, from_consul) {
        (_, Some(address)) => consul::fetch(&address).await?,
        (Some(path), None) => {
            consul::parse(&std::fs::read_to_string(&path)?).map_err(anyhow::Error::msg)?
        }
        (None, None) => anyhow::bail!("give an export file or --from-consul"),
    };
    let store = notimeter::app::open_store(&settings).await?;
    let report = consul::import(&store, &settings, &entries).await?;
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

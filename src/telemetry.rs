//! Structured logs via tracing: `RUST_LOG` filters, plain or JSON lines.

use tracing_subscriber::filter::{FilterExt, LevelFilter, Targets};
use tracing_subscriber::prelude::*;
use tracing_subscriber::{fmt, EnvFilter};

use crate::config::LogFormat;

/// Libraries that name the destination (URL, host, TLS server name) in their
/// DEBUG and TRACE events, e.g. reqwest's `starting new connection:
/// http://host/`. A user's URL is a secret, so these are capped at INFO
/// whatever `RUST_LOG` says; notimeter's own events name a destination by
/// its user and channel.
const DESTINATION_NAMING: &[&str] = &[
    "reqwest",
    "hyper",
    "hyper_util",
    "hyper_rustls",
    "rustls",
    "tokio_rustls",
    "h2",
];

/// The cap on [`DESTINATION_NAMING`] targets, applied after `RUST_LOG`.
pub fn destination_cap() -> Targets {
    DESTINATION_NAMING.iter().fold(
        Targets::new().with_default(LevelFilter::TRACE),
        |targets, name| targets.with_target(*name, LevelFilter::INFO),
    )
}

pub fn init(format: LogFormat) {
    let env = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=warn"));
    let filter = env.and(destination_cap());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let layer = fmt::layer().with_ansi(ansi).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Plain => tracing_subscriber::registry()
            .with(layer.with_filter(filter))
            .try_init(),
        LogFormat::Json => tracing_subscriber::registry()
            .with(layer.json().flatten_event(true).with_filter(filter))
            .try_init(),
    };
}

#[cfg(test)]
mod tests {
    use tracing::Level;
    use tracing_subscriber::filter::Targets;

    #[test]
    fn destination_naming_targets_are_capped_at_info() {
        let cap: Targets = super::destination_cap();
        assert!(!cap.would_enable("reqwest::connect", &Level::DEBUG));
        assert!(!cap.would_enable("hyper_util::client::legacy::pool", &Level::TRACE));
        assert!(!cap.would_enable("rustls::client::hs", &Level::DEBUG));
        assert!(cap.would_enable("reqwest::connect", &Level::INFO));
        assert!(cap.would_enable("notimeter::dispatch::worker", &Level::TRACE));
        assert!(cap.would_enable("sqlx::query", &Level::TRACE));
    }
}

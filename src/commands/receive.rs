//! `notimeter receive`: a webhook receiver for trying notimeter out on one
//! machine (the README's quick start). Prints each request — method, path and
//! body (JSON pretty-printed) — to standard output and answers 200, until
//! Ctrl-C. Not for production: it keeps nothing and checks nothing.

use std::net::SocketAddr;

use anyhow::Context;
use axum::body::Bytes;
use axum::http::{Method, Uri};

async fn print(method: Method, uri: Uri, body: Bytes) -> &'static str {
    let shown = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(json) => serde_json::to_string_pretty(&json).unwrap_or_default(),
        Err(_) => String::from_utf8_lossy(&body).into_owned(),
    };
    println!("--- {method} {uri}\n{shown}");
    "ok"
}

/// Serves until Ctrl-C or SIGTERM.
pub async fn run(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    println!("receiving on http://{listen}/ (any path); Ctrl-C to stop");
    let app = axum::Router::new().fallback(print);
    axum::serve(listener, app)
        .with_graceful_shutdown(crate::app::shutdown_signal())
        .await?;
    Ok(())
}

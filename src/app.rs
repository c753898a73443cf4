//! Builds the router and the background tasks, and runs them until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;
use tracing::{error, info, warn};

use crate::api::throttle::LoginThrottle;
use crate::api::{access, channels, health, ledger as ledger_api, page, usage};
use crate::auth::Role;
use crate::clock::now_ms;
use crate::config::Settings;
use crate::dispatch::{Dispatcher, Registry, SendContext};
use crate::ledger::{scheduler, Ledger};
use crate::metering::Metrics;
use crate::server::{self, BodyTimedOut};
use crate::store::{self, Store};

#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub registry: Registry,
    /// Poked when new messages are queued, so idle workers start at once.
    pub wake: Arc<Notify>,
    pub ledger: Arc<Ledger>,
    /// Poked when a channel changes, so the Alertmanager config is rendered again.
    pub render_trigger: Arc<Notify>,
    /// Wrong tokens on `/login`, per client address.
    pub login_throttle: Arc<LoginThrottle>,
}

/// The routes, grouped by role; each group's token is checked by a layer,
/// from the headers, before a handler reads the body.
pub fn router(state: AppState) -> Router {
    let settings = state.settings.clone();
    // The ingest limit takes a turn before the body is read; it sits inside
    // (is added before) the layer that authenticates the request.
    let limit = crate::ingest::IngestLimit::new(&state.settings);
    let ingest = Router::new()
        .route("/v1/alertmanager", post(crate::ingest::alertmanager))
        .layer(DefaultBodyLimit::max(settings.max_request_bytes))
        .route_layer(middleware::from_fn_with_state(limit, crate::ingest::limit));
    let ingest =
        access::require(ingest, settings.clone(), state.store.clone(), Role::Ingest).route_layer(
            middleware::from_fn_with_state(state.clone(), count_webhook_requests),
        );
    let admin = Router::new()
        .route(
            "/v1/users/{user_id}/channels/{channel_id}",
            put(channels::put)
                .get(channels::get)
                .delete(channels::delete),
        )
        .route("/v1/users/{user_id}/channels", get(channels::list))
        .route("/v1/ledger/close", post(ledger_api::close))
        .route("/v1/users/{user_id}/settle", post(ledger_api::settle));
    let finance = Router::new()
        .route("/v1/usage", get(usage::usage))
        .route("/v1/ledger/current.csv", get(usage::current_csv))
        .route("/v1/ledger/periods", get(ledger_api::periods))
        .route("/v1/ledger/periods/{file}", get(ledger_api::period_csv))
        .route(
            "/v1/ledger/periods/{id}/items.csv",
            get(ledger_api::items_csv),
        );
    let metrics = Router::new().route("/metrics", get(health::metrics));
    // Open: health checks, and the finance page, which sends a visitor
    // without its cookie to /login instead of answering 401.
    let open = Router::new()
        .route("/", get(page::index))
        .route("/login", get(page::login_form).post(page::login))
        .route("/logout", get(page::logout))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz));
    Router::new()
        .merge(ingest)
        .merge(access::require(
            admin,
            settings.clone(),
            state.store.clone(),
            Role::Admin,
        ))
        .merge(access::require_for_reads(
            finance,
            settings.clone(),
            state.store.clone(),
            Role::Finance,
        ))
        .merge(access::require(
            metrics,
            settings.clone(),
            state.store.clone(),
            Role::Metrics,
        ))
        .merge(open)
        .layer(middleware::from_fn_with_state(
            settings.body_read_timeout,
            server::body_deadline,
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Counts every answer to the webhook route by status code, refusals by the
/// token check and body timeouts included.
async fn count_webhook_requests(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let timed_out = request.extensions().get::<BodyTimedOut>().cloned();
    let response = next.run(request).await;
    let status = match timed_out {
        Some(t) if t.is_set() => StatusCode::REQUEST_TIMEOUT,
        _ => response.status(),
    };
    state
        .metrics
        .webhook_requests
        .with_label_values(&[status.as_str()])
        .inc();
    response
}

/// Opens the store named by the settings and applies migrations.
pub async fn open_store(settings: &Settings) -> anyhow::Result<Arc<Store>> {
    let store = store::connect(&settings.database_url)
        .await
        .with_context(|| {
            format!(
                "opening the database ({})",
                redact_url(&settings.database_url)
            )
        })?;
    store
        .migrate(now_ms())
        .await
        .context("applying migrations")?;
    Ok(store)
}

/// The ledger on its own, for the CLI's `ledger` verbs.
pub async fn open_ledger(settings: Settings) -> anyhow::Result<Ledger> {
    let registry = Registry::standard(&settings);
    settings
        .check_integration_names(registry.names())
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    let store = open_store(&settings).await?;
    Ok(Ledger::new(
        store,
        Arc::new(settings),
        registry.names().collect(),
        None,
    ))
}

/// A database URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("<secret>"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

pub struct Application {
    listener: TcpListener,
    state: AppState,
}

impl Application {
    /// Checks the settings, opens and migrates the store, and binds the listener.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        if settings.has_open_role()
            && !settings.listen.ip().is_loopback()
            && !settings.allow_insecure
        {
            bail!(
                "refusing to listen on {} with a role left open: set ingest_token, admin_token and \
                 finance_token, or allow_insecure = true",
                settings.listen
            );
        }
        let registry = Registry::standard(&settings);
        settings
            .check_integration_names(registry.names())
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        let store = open_store(&settings).await?;
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("binding {}", settings.listen))?;
        let metrics = Arc::new(Metrics::new(settings.max_user_series));
        let settings = Arc::new(settings);
        let ledger = Arc::new(Ledger::new(
            store.clone(),
            settings.clone(),
            registry.names().collect(),
            Some(metrics.clone()),
        ));
        let login_throttle = Arc::new(LoginThrottle::new(
            settings.page.login_failures,
            settings.page.login_window,
        ));
        let state = AppState {
            metrics,
            settings,
            store,
            registry,
            wake: Arc::new(Notify::new()),
            ledger,
            render_trigger: Arc::new(Notify::new()),
            login_throttle,
        };
        Ok(Self { listener, state })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` is cancelled: then stops accepting requests,
    /// lets the dispatcher finish or release its sends, and closes the store.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let state = self.state;
        let settings = state.settings.clone();
        let ctx = SendContext::new(settings.clone()).context("building the HTTP client")?;
        let dispatcher = Arc::new(Dispatcher::new(
            state.store.clone(),
            state.registry.clone(),
            Arc::new(ctx),
            settings.dispatch.clone(),
            settings.limits.clone(),
            state.metrics.clone(),
            state.wake.clone(),
        ));
        // Sends in flight get most of the shutdown budget; recording them and
        // releasing the rest need the remainder.
        let send_grace = settings.shutdown_timeout.mul_f64(0.7);
        let dispatch_task = tokio::spawn(dispatcher.run(shutdown.clone(), send_grace));
        let pruner = tokio::spawn(prune_dedupe(state.store.clone(), shutdown.clone()));
        if let Err(e) = state.ledger.ensure_reports().await {
            error!(error = ?e, "writing missing reports failed");
        }
        let closes = tokio::spawn(scheduler::run_closes(
            state.ledger.clone(),
            shutdown.clone(),
        ));
        let renders = tokio::spawn(run_renderer(state.clone(), shutdown.clone()));
        let retention = tokio::spawn(scheduler::run_retention(
            state.ledger.clone(),
            shutdown.clone(),
        ));

        info!(listen = %self.listener.local_addr()?, store = state.store.backend_name(), "notimeter serving");
        let app = router(state.clone());
        // The whole stop, from the signal on, takes at most `shutdown_timeout`:
        // the server drains its connections while the dispatcher finishes or
        // releases its sends, then the store closes.
        let mut server = tokio::spawn(server::serve(
            self.listener,
            app,
            server::Limits::of(&settings),
            shutdown.clone(),
        ));
        let served = tokio::select! {
            served = &mut server => Some(served),
            _ = shutdown.cancelled() => None,
        };
        let deadline = tokio::time::Instant::now() + settings.shutdown_timeout;
        shutdown.cancel();
        let served = match served {
            Some(served) => served,
            None => match tokio::time::timeout_at(deadline, &mut server).await {
                Ok(served) => served,
                Err(_) => {
                    server.abort();
                    Ok(Ok(()))
                }
            },
        };
        let served = served.unwrap_or_else(|e| Err(std::io::Error::other(e)));
        // Whatever the store does (stalled, locked, gone), shutdown ends
        // within `shutdown_timeout`: what has not finished by then is left
        // to its lease, which expires and hands the message to another worker.
        let mut tasks = [pruner, closes, renders, retention, dispatch_task];
        let wound_down = tokio::time::timeout_at(deadline, async {
            for task in &mut tasks {
                if let Err(e) = task.await {
                    error!(error = %e, "a background task failed");
                }
            }
            state.store.close().await;
        })
        .await;
        match wound_down {
            Ok(()) => info!("notimeter stopped"),
            Err(_) => {
                for task in &tasks {
                    task.abort();
                }
                warn!(
                    timeout = ?settings.shutdown_timeout,
                    "shutdown did not finish in time (is the store stalled?); stopping anyway: \
                     unrecorded sends are retried after their lease expires"
                )
            }
        }
        served.context("HTTP server failed")
    }
}

/// Renders Alertmanager's configuration at start, after channel changes
/// (debounced: a burst gives one render and one reload) and every
/// `render.interval`. Does nothing when `render.output` is unset.
async fn run_renderer(state: AppState, shutdown: CancellationToken) {
    let settings = state.settings.clone();
    if settings.render.output.is_none() {
        return;
    }
    let renderer = crate::render::publish::Renderer {
        store: &state.store,
        settings: &settings,
        http: crate::render::publish::operator_client(),
        metrics: Some(&state.metrics),
    };
    loop {
        match renderer.run(false).await {
            Ok(outcome) => tracing::debug!(?outcome, "rendered"),
            Err(e) => {
                error!(error = %e, "rendering Alertmanager's configuration failed; the last good file stays")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = state.render_trigger.notified() => {}
            _ = tokio::time::sleep(settings.render.interval) => continue,
        }
        // Debounce: wait until changes stop arriving for a moment.
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = state.render_trigger.notified() => {}
                _ = tokio::time::sleep(settings.render.debounce) => break,
            }
        }
    }
}

async fn prune_dedupe(store: Arc<Store>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
        if let Err(e) = store.prune_dedupe(now_ms()).await {
            error!(error = ?anyhow::Error::from(e), "pruning dedupe keys failed");
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    info!("shutdown signal received");
}

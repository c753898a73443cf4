//! Builds the router and the background tasks, and runs them until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::api::router;
use crate::api::throttle::LoginThrottle;
use crate::clock::Clock;
use crate::config::Settings;
use crate::dispatch::{Dispatcher, Registry, SendContext};
use crate::ledger::{scheduler, Ledger};
use crate::metering::Metrics;
use crate::routing::Routes;
use crate::server;
use crate::state::AppState;
use crate::store::{self, Store};

/// Opens the store named by the settings and applies migrations.
pub async fn open_store(settings: &Settings, clock: &Clock) -> anyhow::Result<Arc<Store>> {
    let store = store::connect_with_clock(&settings.database_url, clock.clone())
        .await
        .with_context(|| {
            format!(
                "opening the database ({})",
                redact_url(&settings.database_url)
            )
        })?;
    store
        .migrate(clock.now_ms())
        .await
        .context("applying migrations")?;
    Ok(store)
}

/// Opens the store for a one-shot verb (`ledger`, `render`, `import`): an
/// existing database only. Run in the wrong folder, such a verb would
/// otherwise create an empty SQLite file there and report nothing to do.
pub async fn open_existing_store(settings: &Settings, clock: &Clock) -> anyhow::Result<Arc<Store>> {
    if let Some(path) = store::sqlite_file(&settings.database_url) {
        if !path.exists() {
            bail!(
                "no database at {} (database_url = {:?}): run this where the service's database is, \
                 point database_url (NOTIMETER_DATABASE_URL) at it, or create one with `notimeter migrate`",
                path.display(),
                settings.database_url
            );
        }
    }
    open_store(settings, clock).await
}

/// The ledger on its own, for the CLI's `ledger` verbs.
pub async fn open_ledger(settings: Settings) -> anyhow::Result<Ledger> {
    let clock = Clock::system();
    let store = open_existing_store(&settings, &clock).await?;
    Ok(Ledger::new(store, Arc::new(settings), None, clock))
}

/// A database URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some(crate::domain::secret::PLACEHOLDER));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

/// Who works off the outbox.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Dispatch {
    /// The dispatcher's workers, in the background (production).
    #[default]
    Background,
    /// Only calls of [`Dispatcher::drain_outbox`]: for tests that need to
    /// say when messages are sent.
    OnDemand,
}

pub struct Application {
    listener: TcpListener,
    state: AppState,
    dispatcher: Arc<Dispatcher>,
    dispatch: Dispatch,
}

impl Application {
    /// Checks the settings, opens and migrates the store, and binds the listener.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        Self::build_with_clock(settings, Clock::system()).await
    }

    /// Like [`Application::build`], reading the time from `clock` (tests pass
    /// a [`Clock::adjustable`] and move it forward).
    pub async fn build_with_clock(settings: Settings, clock: Clock) -> anyhow::Result<Self> {
        if settings.has_open_role()
            && !settings.listen.ip().is_loopback()
            && !settings.allow_insecure
        {
            bail!(
                "refusing to listen on {} with a role left open: set ingest_token, admin_token and \
                 finance_token (in the config file, or NOTIMETER_INGEST_TOKEN, NOTIMETER_ADMIN_TOKEN \
                 and NOTIMETER_FINANCE_TOKEN), or allow_insecure = true (NOTIMETER_ALLOW_INSECURE=true)",
                settings.listen
            );
        }
        if settings.render.output.is_some() && settings.render_is_unauthenticated() {
            bail!(crate::config::UNAUTHENTICATED_RENDER);
        }
        let registry = Registry::standard(&settings);
        let store = open_store(&settings, &clock).await?;
        let routes = Routes::load(store.clone())
            .await
            .context("loading the channels")?;
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("binding {}", settings.listen))?;
        let metrics = Arc::new(Metrics::new(settings.max_user_series));
        let settings = Arc::new(settings);
        let ledger = Arc::new(Ledger::new(
            store.clone(),
            settings.clone(),
            Some(metrics.clone()),
            clock.clone(),
        ));
        let login_throttle = Arc::new(LoginThrottle::new(
            settings.page.login_failures,
            settings.page.login_window,
            clock.clone(),
        ));
        let state = AppState {
            metrics,
            settings,
            store,
            routes,
            registry,
            wake: Arc::new(Notify::new()),
            ledger,
            render_trigger: Arc::new(Notify::new()),
            login_throttle,
            clock,
        };
        let ctx = SendContext::new(state.settings.clone()).context("building the HTTP client")?;
        let dispatcher = Arc::new(Dispatcher::new(
            state.store.clone(),
            state.routes.clone(),
            state.registry.clone(),
            Arc::new(ctx),
            &state.settings,
            state.metrics.clone(),
            state.wake.clone(),
            state.clock.clone(),
        ));
        Ok(Self {
            listener,
            state,
            dispatcher,
            dispatch: Dispatch::Background,
        })
    }

    /// Sets who works off the outbox once the application runs: with
    /// [`Dispatch::OnDemand`], nothing is sent but by
    /// [`Dispatcher::drain_outbox`].
    pub fn dispatch(mut self, dispatch: Dispatch) -> Self {
        self.dispatch = dispatch;
        self
    }

    /// The dispatcher, for [`Dispatcher::drain_outbox`]: the same one the
    /// background workers use (when they run), so drained messages are sent,
    /// recorded and counted as theirs are.
    pub fn dispatcher(&self) -> Arc<Dispatcher> {
        self.dispatcher.clone()
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
        // Sends in flight get most of the shutdown budget; recording them and
        // releasing the rest need the remainder.
        let send_grace = settings.shutdown_timeout.mul_f64(0.7);
        let dispatch_task = match self.dispatch {
            Dispatch::Background => tokio::spawn(self.dispatcher.run(shutdown.clone(), send_grace)),
            Dispatch::OnDemand => tokio::spawn(async {}),
        };
        let pruner = tokio::spawn(prune_dedupe(
            state.store.clone(),
            state.clock.clone(),
            shutdown.clone(),
        ));
        if let Err(e) = state.ledger.ensure_reports().await {
            error!(error = %crate::error::Causes(&*e), "writing missing reports failed");
        }
        state.metrics.ledger_closes_started();
        let closes = tokio::spawn(scheduler::run_closes(
            state.ledger.clone(),
            shutdown.clone(),
        ));
        let renders = tokio::spawn(run_renderer(state.clone(), shutdown.clone()));
        let routes = tokio::spawn(state.routes.clone().follow(shutdown.clone()));
        let consul = tokio::spawn(crate::import::watch::run(state.clone(), shutdown.clone()));
        let reconcile = tokio::spawn(crate::reconcile::run(state.clone(), shutdown.clone()));
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
        if state.metrics.reconciling() {
            // The requests answered since the last round, now that no more
            // come. Stored on a task of its own: a timeout here does not stop it.
            let last = crate::reconcile::store_received(&state);
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if let Ok(Err(e)) = tokio::time::timeout(left, last).await {
                warn!(error = %crate::error::Causes(&*e), "storing the reconciliation's last count failed");
            }
        }
        wind_down(
            [
                pruner,
                closes,
                renders,
                retention,
                routes,
                consul,
                reconcile,
                dispatch_task,
            ],
            &state.store,
            deadline,
            settings.shutdown_timeout,
        )
        .await;
        served.context("HTTP server failed")
    }
}

/// Waits for the background tasks and closes the store, until `deadline`.
/// Whatever the store does (stalled, locked, gone), shutdown ends within
/// `shutdown_timeout`: what has not finished by then is left to its lease,
/// which expires and hands the message to another worker.
async fn wind_down(
    mut tasks: [tokio::task::JoinHandle<()>; 8],
    store: &Store,
    deadline: tokio::time::Instant,
    shutdown_timeout: Duration,
) {
    let wound_down = tokio::time::timeout_at(deadline, async {
        for task in &mut tasks {
            if let Err(e) = task.await {
                error!(error = %e, "a background task failed");
            }
        }
        store.close().await;
    })
    .await;
    match wound_down {
        Ok(()) => info!("notimeter stopped"),
        Err(_) => {
            for task in &tasks {
                task.abort();
            }
            warn!(
                timeout = ?shutdown_timeout,
                "shutdown did not finish in time (is the store stalled?); stopping anyway: \
                 unrecorded sends are retried after their lease expires"
            )
        }
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
    state
        .metrics
        .renderer_started(settings.render.alertmanager_url.is_some());
    let renderer = crate::render::publish::Renderer {
        store: &state.store,
        settings: &settings,
        http: crate::outbound::operator_client(settings.render.reload_timeout),
        metrics: Some(&state.metrics),
    };
    loop {
        match renderer.run(false).await {
            // Logged and counted by the renderer's events.
            Ok(_) => {}
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

/// How long changes stay in the channel log: a process that has not read it
/// for longer (stopped, or cut off from the store) reloads every channel.
const CHANNEL_LOG_KEPT: Duration = Duration::from_secs(3600);

/// Every minute: expired dedupe keys (in bounded batches, so ingest never
/// waits long behind the prune) and old channel log entries.
async fn prune_dedupe(store: Arc<Store>, clock: Clock, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
        let now = clock.now_ms();
        loop {
            match store.prune_dedupe(now, PRUNE_BATCH).await {
                Ok(n) if n >= PRUNE_BATCH && !shutdown.is_cancelled() => {
                    tokio::task::yield_now().await
                }
                Ok(_) => break,
                Err(e) => {
                    error!(error = %crate::error::Causes(&e), "pruning dedupe keys failed");
                    break;
                }
            }
        }
        let before = now - crate::clock::duration_ms(CHANNEL_LOG_KEPT);
        if let Err(e) = store.prune_channel_log(before).await {
            error!(error = %crate::error::Causes(&e), "pruning the channel log failed");
        }
    }
}

/// Dedupe keys deleted per statement.
const PRUNE_BATCH: u64 = 5_000;

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

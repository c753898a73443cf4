//! `spawn_app()`, fake upstreams and polling helpers.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use notimeter::app::{Application, Dispatch};
use notimeter::clock::Clock;
use notimeter::config::{Secret, Settings};
use notimeter::dispatch::Dispatcher;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const INGEST_TOKEN: &str = "ingest-token-for-tests";
pub const ADMIN_TOKEN: &str = "admin-token-for-tests";
pub const FINANCE_TOKEN: &str = "finance-token-for-tests";

/// Declares `mod $name { sqlite, postgres }` running `$name(backend)` on each.
///
/// The `postgres` variants are `#[ignore]`d, so a plain `cargo test` lists them
/// as ignored: they need a server named by NOTIMETER_TEST_POSTGRES_URL and run
/// with `cargo test -- --include-ignored`, where a missing URL fails them.
/// `needs <tool>: a, b` declares tests that need a tool beyond Cargo: both
/// variants are ignored, and they fail when run without it.
#[macro_export]
macro_rules! on_both_backends {
    (needs alertmanager: $($name:ident),+ $(,)?) => {
        $crate::on_both_backends!(@ignored
            "needs prometheus-alertmanager (apt-get install prometheus-alertmanager); run with --include-ignored",
            "needs PostgreSQL (set NOTIMETER_TEST_POSTGRES_URL) and prometheus-alertmanager; run with --include-ignored";
            $($name),+);
    };
    (needs promtool: $($name:ident),+ $(,)?) => {
        $crate::on_both_backends!(@ignored
            "needs promtool (apt-get install prometheus); run with --include-ignored",
            "needs PostgreSQL (set NOTIMETER_TEST_POSTGRES_URL) and promtool; run with --include-ignored";
            $($name),+);
    };
    (needs aiosmtpd: $($name:ident),+ $(,)?) => {
        $crate::on_both_backends!(@ignored
            "needs /usr/bin/python3 with aiosmtpd (apt-get install python3-aiosmtpd); run with --include-ignored",
            "needs PostgreSQL (set NOTIMETER_TEST_POSTGRES_URL) and python3-aiosmtpd; run with --include-ignored";
            $($name),+);
    };
    (@ignored $sqlite:literal, $postgres:literal; $($name:ident),+) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[ignore = $sqlite]
            async fn sqlite() {
                super::$name($crate::helpers::Backend::Sqlite).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[ignore = $postgres]
            async fn postgres() {
                super::$name($crate::helpers::Backend::postgres()).await;
            }
        }
    )+};
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::helpers::Backend::Sqlite).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[ignore = "needs PostgreSQL: set NOTIMETER_TEST_POSTGRES_URL, run with --include-ignored"]
            async fn postgres() {
                super::$name($crate::helpers::Backend::postgres()).await;
            }
        }
    )*};
}

#[derive(Clone, Debug)]
pub enum Backend {
    Sqlite,
    /// The server URL from NOTIMETER_TEST_POSTGRES_URL.
    Postgres(String),
}

impl Backend {
    /// The server NOTIMETER_TEST_POSTGRES_URL names; fails the test without it
    /// (the PostgreSQL variants are ignored unless asked for, so asking for them
    /// without a server is a mistake to report, not a pass).
    pub fn postgres() -> Backend {
        match std::env::var("NOTIMETER_TEST_POSTGRES_URL") {
            Ok(url) if !url.is_empty() => Backend::Postgres(url),
            _ => panic!(
                "NOTIMETER_TEST_POSTGRES_URL is not set: the PostgreSQL variants need a server, \
                 e.g. NOTIMETER_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres"
            ),
        }
    }
}

/// A fresh database for one test: a SQLite file in the test's folder, or a new
/// PostgreSQL database that is dropped again when this is dropped.
pub struct TestDatabase {
    pub url: String,
    postgres: Option<(String, String)>,
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some((server, name)) = self.postgres.take() else {
            return;
        };
        // Drop cannot be async: a short-lived runtime on its own thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                use sqlx::Connection;
                if let Ok(mut conn) = sqlx::PgConnection::connect(&server).await {
                    let _ = sqlx::Executor::execute(
                        &mut conn,
                        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str(),
                    )
                    .await;
                }
            });
        })
        .join();
    }
}

pub async fn fresh_database(backend: &Backend, dir: &std::path::Path) -> TestDatabase {
    match backend {
        Backend::Sqlite => TestDatabase {
            url: format!("sqlite://{}", dir.join("notimeter.db").display()),
            postgres: None,
        },
        Backend::Postgres(server) => {
            use sqlx::Connection;
            let name = format!("notimeter_test_{}", uuid::Uuid::new_v4().simple());
            let mut conn = sqlx::PgConnection::connect(server)
                .await
                .expect("connect to PostgreSQL");
            sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {name}").as_str())
                .await
                .expect("create test database");
            let mut url = url::Url::parse(server).expect("valid PostgreSQL URL");
            url.set_path(&name);
            TestDatabase {
                url: url.to_string(),
                postgres: Some((server.clone(), name)),
            }
        }
    }
}

/// Settings for tests: tokens set, loopback allowed, fast retries.
pub fn test_settings(database_url: &str, dir: &std::path::Path) -> Settings {
    let mut s = Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: database_url.to_owned(),
        reports_dir: dir.join("reports"),
        ingest_token: Some(Secret::new(INGEST_TOKEN)),
        admin_token: Some(Secret::new(ADMIN_TOKEN)),
        finance_token: Some(Secret::new(FINANCE_TOKEN)),
        outbound_allow: vec!["127.0.0.0/8".parse().unwrap()],
        shutdown_timeout: Duration::from_secs(2),
        // Generous: this machine is shared and loaded; a test of the 503
        // path sets its own.
        store_timeout: Duration::from_secs(10),
        ..Settings::default()
    };
    s.dispatch.min_backoff = Duration::from_millis(20);
    s.dispatch.max_backoff = Duration::from_millis(200);
    s.dispatch.poll_interval = Duration::from_millis(20);
    s.dispatch.workers = 8;
    s
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub base: String,
    pub http: reqwest::Client,
    pub database_url: String,
    pub settings: Settings,
    /// The app's clock: `clock.advance(…)` skips ahead (dedupe windows,
    /// leases, retries, sessions) while real I/O keeps its pace.
    pub clock: Clock,
    dispatcher: Arc<Dispatcher>,
    /// The app's routing index.
    routes: Arc<notimeter::routing::Routes>,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
    pub dir: Arc<tempfile::TempDir>,
    database: Option<TestDatabase>,
}

pub async fn spawn_app(backend: &Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

pub async fn spawn_app_with(backend: &Backend, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    spawn(backend, Dispatch::Background, tweak).await
}

/// An app whose outbox is worked off only by [`TestApp::drain_outbox`]: no
/// message is sent until the test says so.
pub async fn spawn_app_on_demand(backend: &Backend, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    spawn(backend, Dispatch::OnDemand, tweak).await
}

async fn spawn(
    backend: &Backend,
    dispatch: Dispatch,
    tweak: impl FnOnce(&mut Settings),
) -> TestApp {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let database = fresh_database(backend, dir.path()).await;
    let mut settings = test_settings(&database.url, dir.path());
    tweak(&mut settings);
    let mut app = start_with(settings, dir, Clock::adjustable(), dispatch).await;
    app.database = Some(database);
    app
}

/// Starts the application with these settings (e.g. again on the same
/// database), on a clock of its own.
pub async fn start(settings: Settings, dir: Arc<tempfile::TempDir>) -> TestApp {
    start_with(settings, dir, Clock::adjustable(), Dispatch::Background).await
}

/// Starts the application on `clock` (a replica shares its twin's), its
/// outbox worked off by `dispatch`: in the background, or only by
/// [`TestApp::drain_outbox`].
pub async fn start_with(
    settings: Settings,
    dir: Arc<tempfile::TempDir>,
    clock: Clock,
    dispatch: Dispatch,
) -> TestApp {
    let app = Application::build_with_clock(settings.clone(), clock.clone())
        .await
        .expect("application builds")
        .dispatch(dispatch);
    let dispatcher = app.dispatcher();
    let routes = app.state().routes.clone();
    let addr = app.local_addr();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(app.run(shutdown.clone()));
    TestApp {
        addr,
        base: format!("http://{addr}"),
        http: reqwest::Client::new(),
        database_url: settings.database_url.clone(),
        settings,
        clock,
        dispatcher,
        routes,
        shutdown,
        handle: Some(handle),
        dir,
        database: None,
    }
}

impl TestApp {
    /// Another replica: the same settings, database and clock.
    pub async fn replica(&self) -> TestApp {
        start_with(
            self.settings.clone(),
            self.dir.clone(),
            self.clock.clone(),
            Dispatch::Background,
        )
        .await
    }

    /// Waits until this app routes by a channel saved elsewhere (another
    /// replica follows the channel log within a refresh).
    pub async fn wait_routes(&self, user_id: &str, channel_id: &str) {
        eventually(
            &format!("{user_id}/{channel_id} in the routing index"),
            || async {
                matches!(
                    self.routes.channel(user_id, channel_id),
                    notimeter::routing::Lookup::Found(_)
                )
            },
        )
        .await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Stops the application as SIGTERM would, keeping its database, so that
    /// it can be inspected and started again.
    pub async fn stop_keeping_data(mut self) -> StoppedApp {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            h.await.expect("app task").expect("app exits cleanly");
        }
        StoppedApp {
            settings: self.settings.clone(),
            dir: self.dir.clone(),
            clock: self.clock.clone(),
            database: self.database.take(),
        }
    }

    /// Stops the application as SIGTERM would and waits for it.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            h.await.expect("app task").expect("app exits cleanly");
        }
        drop(self.database.take());
    }

    pub async fn post_alerts(&self, payload: &Value) -> reqwest::Response {
        self.http
            .post(self.url("/v1/alertmanager"))
            .bearer_auth(INGEST_TOKEN)
            .json(payload)
            .send()
            .await
            .unwrap()
    }

    pub async fn put_channel(&self, user: &str, channel: &str, body: Value) -> reqwest::Response {
        self.http
            .put(self.url(&format!("/v1/users/{user}/channels/{channel}")))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Adds a webhook channel and asserts it was created.
    pub async fn add_webhook(&self, user: &str, channel: &str, url: &str) {
        let r = self
            .put_channel(
                user,
                channel,
                json!({"type": "webhook", "settings": {"url": url}}),
            )
            .await;
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    }

    /// POSTs to `path` as the admin, expecting 200, and returns the answer.
    async fn admin_post(&self, path: &str) -> Value {
        let r = self
            .http
            .post(self.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}: {}", r.text().await.unwrap());
        r.json().await.unwrap()
    }

    /// Closes the open period now: `{"closed": …, "opened": …}`.
    pub async fn close_period(&self) -> Value {
        self.admin_post("/v1/ledger/close").await
    }

    /// Settles `user` now: `{"statement": …}`.
    pub async fn settle(&self, user: &str) -> Value {
        self.admin_post(&format!("/v1/users/{user}/settle")).await
    }

    pub async fn get_json(&self, path: &str, token: &str) -> Value {
        let r = self
            .http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap()
    }

    pub async fn get_text(&self, path: &str, token: &str) -> String {
        let r = self
            .http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.text().await.unwrap()
    }

    pub async fn metrics(&self) -> String {
        self.get_text("/metrics", ADMIN_TOKEN).await
    }

    /// The value of one sample in /metrics, 0 when absent.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.metrics().await, name, labels)
    }

    /// `notimeter_notifications_total` for one user, integration and outcome.
    pub async fn notifications(&self, user: &str, integration: &str, outcome: &str) -> f64 {
        self.metric(
            "notimeter_notifications_total",
            &[
                ("user_id", user),
                ("integration", integration),
                ("outcome", outcome),
            ],
        )
        .await
    }

    /// Sends what is due now, as the dispatcher's workers would, until
    /// nothing is; returns how many messages it took (see
    /// `Dispatcher::drain_outbox`).
    pub async fn drain_outbox(&self) -> usize {
        self.dispatcher
            .drain_outbox()
            .await
            .expect("draining the outbox")
    }

    /// Waits until no message is pending.
    pub async fn wait_idle(&self) {
        eventually("the outbox to drain", || async {
            self.metric("notimeter_outbox_pending", &[]).await == 0.0
        })
        .await;
    }
}

pub struct StoppedApp {
    pub settings: Settings,
    pub dir: Arc<tempfile::TempDir>,
    /// Kept, so that time does not go back when the app starts again.
    pub clock: Clock,
    database: Option<TestDatabase>,
}

impl StoppedApp {
    pub async fn start(self) -> TestApp {
        let mut app = start_with(self.settings, self.dir, self.clock, Dispatch::Background).await;
        app.database = self.database;
        app
    }
}

/// Reads one sample from Prometheus text (labels must match exactly).
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let lines = text.lines().map(|l| Ok::<_, std::io::Error>(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid exposition format");
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| {
            s.labels.len() == labels.len()
                && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

/// Polls `url` until it answers 200 (a service started by the test is ready).
pub async fn wait_for_ok(what: &str, url: &str) {
    let http = reqwest::Client::new();
    eventually(what, || async {
        http.get(url).send().await.is_ok_and(|r| r.status() == 200)
    })
    .await;
}

/// Polls `check` until it holds, failing the test after 20 s.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ---- fake upstreams ------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: std::time::Instant,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    /// Wait this long before answering (a slow or hung destination).
    pub delay: Duration,
}

impl Reply {
    pub fn new(status: u16, body: &str) -> Self {
        Self {
            status,
            headers: vec![],
            body: body.to_owned(),
            delay: Duration::ZERO,
        }
    }
    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
    pub fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }
}

#[derive(Default)]
struct SinkState {
    received: Vec<Received>,
    script: HashMap<String, VecDeque<Reply>>,
    default: Option<Reply>,
    in_flight: HashMap<String, usize>,
    peak_in_flight: HashMap<String, usize>,
}

/// A local HTTP server that records every request and answers from a script
/// (per path; `200 ok` once the script is used up), as a webhook receiver or
/// Slack's incoming-webhook endpoint would.
#[derive(Clone)]
pub struct Sink {
    pub addr: SocketAddr,
    state: Arc<Mutex<SinkState>>,
}

async fn sink_handler(
    State(state): State<Arc<Mutex<SinkState>>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let reply = {
        let mut s = state.lock().unwrap();
        s.received.push(Received {
            path: path.clone(),
            headers,
            body,
            at: std::time::Instant::now(),
        });
        s.script
            .get_mut(&path)
            .and_then(VecDeque::pop_front)
            .or_else(|| s.default.clone())
    };
    let reply = reply.unwrap_or_else(|| Reply::new(200, "ok"));
    {
        let mut s = state.lock().unwrap();
        let n = s.in_flight.entry(path.clone()).or_default();
        *n += 1;
        let n = *n;
        let peak = s.peak_in_flight.entry(path.clone()).or_default();
        *peak = (*peak).max(n);
    }
    tokio::time::sleep(reply.delay).await;
    *state.lock().unwrap().in_flight.get_mut(&path).unwrap() -= 1;
    let mut response = (StatusCode::from_u16(reply.status).unwrap(), reply.body).into_response();
    for (name, value) in reply.headers {
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    response
}

impl Sink {
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_on(addr: SocketAddr) -> Self {
        let state = Arc::new(Mutex::new(SinkState::default()));
        let app = axum::Router::new()
            .fallback(sink_handler)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { addr, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The answer once a path's script is used up (else `200 ok`).
    pub fn default_reply(&self, reply: Reply) {
        self.state.lock().unwrap().default = Some(reply);
    }

    /// Queues replies for `path`, answered in order.
    pub fn script(&self, path: &str, replies: impl IntoIterator<Item = Reply>) {
        self.state
            .lock()
            .unwrap()
            .script
            .entry(path.to_owned())
            .or_default()
            .extend(replies);
    }

    /// The most requests to `path` that were being answered at once.
    pub fn peak_in_flight(&self, path: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .peak_in_flight
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    pub fn received_on(&self, path: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    pub async fn wait_for(&self, path: &str, n: usize) -> Vec<Received> {
        eventually(&format!("{n} request(s) on {path}"), || async {
            self.received_on(path).len() >= n
        })
        .await;
        self.received_on(path)
    }
}

/// Whether `binary --version` runs.
pub fn installed(binary: &str) -> bool {
    std::process::Command::new(binary)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Fails the test unless `binary --version` runs. The tests that need a tool
/// are `#[ignore]`d with the reason, so they run only when asked for
/// (`--include-ignored`), and then a missing tool is a failure, not a pass.
pub fn require(binary: &str, package: &str) {
    assert!(
        installed(binary),
        "`{binary}` is not installed, and this test needs it: apt-get install {package}"
    );
}

/// A child process killed when the test is done with it (or fails).
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port free at the time of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real Alertmanager (Debian's prometheus-alertmanager, 0.25 here), killed
/// when dropped.
pub struct Alertmanager {
    pub url: String,
    /// Its cluster (gossip) address, when clustered.
    pub cluster: Option<String>,
    _child: KillOnDrop,
}

impl Alertmanager {
    /// Starts one on `port` with `config`, keeping its state in `data`; in
    /// a cluster with `peers` when `cluster` is set (a quick peer timeout,
    /// so that a pair dedupes within seconds).
    pub fn start(
        config: &std::path::Path,
        data: &std::path::Path,
        port: u16,
        cluster: Option<&[String]>,
    ) -> Self {
        require("prometheus-alertmanager", "prometheus-alertmanager");
        let mut cmd = std::process::Command::new("prometheus-alertmanager");
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.path={}", data.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let address = cluster.map(|peers| {
            let address = format!("127.0.0.1:{}", free_port());
            cmd.arg(format!("--cluster.listen-address={address}"))
                .arg(format!("--cluster.advertise-address={address}"))
                .arg("--cluster.peer-timeout=1s")
                .arg("--cluster.gossip-interval=50ms")
                .arg("--cluster.pushpull-interval=1s");
            for p in peers {
                cmd.arg(format!("--cluster.peer={p}"));
            }
            address
        });
        if address.is_none() {
            cmd.arg("--cluster.listen-address=");
        }
        Self {
            url: format!("http://127.0.0.1:{port}"),
            cluster: address,
            _child: KillOnDrop(cmd.spawn().expect("start prometheus-alertmanager")),
        }
    }

    pub async fn ready(&self) {
        wait_for_ok("alertmanager to be ready", &format!("{}/-/ready", self.url)).await;
    }

    /// Posts alerts to its API, as Prometheus does.
    pub async fn post_alerts(&self, alerts: &Value) {
        let r = reqwest::Client::new()
            .post(format!("{}/api/v2/alerts", self.url))
            .json(alerts)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }

    /// Its `/metrics`.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

/// A real SMTP server (tests/smtp_server.py on aiosmtpd). Starting one fails
/// the test when Debian's python3-aiosmtpd is not installed: the tests that
/// use it are `#[ignore]`d, "needs … aiosmtpd".
pub struct SmtpServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: std::process::Child,
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One message the SMTP server accepted.
#[derive(Debug, serde::Deserialize)]
pub struct Mail {
    pub mail_from: String,
    pub rcpt_tos: Vec<String>,
    pub data: String,
}

impl SmtpServer {
    pub async fn start() -> Self {
        use std::io::BufRead;
        let python = "/usr/bin/python3";
        let has_aiosmtpd = std::process::Command::new(python)
            .args(["-c", "import aiosmtpd"])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            has_aiosmtpd,
            "{python} cannot import aiosmtpd, and this test needs a real SMTP server: \
             apt-get install python3-aiosmtpd"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/smtp_server.py");
        let mut child = std::process::Command::new(python)
            .arg(script)
            .arg(port.to_string())
            .arg(dir.path())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start the SMTP server");
        let stdout = child.stdout.take().unwrap();
        let ready = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            std::io::BufReader::new(stdout)
                .read_line(&mut line)
                .map(|_| line)
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(ready.trim(), "ready");
        Self { port, dir, child }
    }

    pub fn mails(&self) -> Vec<Mail> {
        let mut files: Vec<_> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .map(|e| (e.metadata().unwrap().modified().unwrap(), e.path()))
            .collect();
        files.sort();
        files
            .into_iter()
            .map(|(_, p)| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
            .collect()
    }

    pub async fn wait_for(&self, n: usize) -> Vec<Mail> {
        eventually(&format!("{n} mail(s)"), || async {
            self.mails().len() >= n
        })
        .await;
        self.mails()
    }

    /// Settings pointing notimeter at this server.
    pub fn configure(&self, s: &mut Settings) {
        s.smtp.smarthost = Some(format!("127.0.0.1:{}", self.port));
        s.smtp.from = Some("notimeter@example.com".into());
        s.smtp.tls = notimeter::config::SmtpTls::None;
    }
}

/// Reads the only row of a query, for checks on stored data, on a
/// connection of the database's own kind.
pub async fn query_row<R>(database_url: &str, sql: &str) -> R
where
    R: for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
        + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>
        + Send
        + Unpin,
{
    use sqlx::Connection;
    if database_url.starts_with("sqlite:") {
        let mut conn = sqlx::SqliteConnection::connect(database_url).await.unwrap();
        let row = sqlx::query_as(sql).fetch_one(&mut conn).await.unwrap();
        conn.close().await.unwrap();
        row
    } else {
        let mut conn = sqlx::PgConnection::connect(database_url).await.unwrap();
        let row = sqlx::query_as(sql).fetch_one(&mut conn).await.unwrap();
        conn.close().await.unwrap();
        row
    }
}

/// Reads one column of the only row of a query, for checks on stored data.
pub async fn query_one<T>(database_url: &str, sql: &str) -> T
where
    (T,): for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
        + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>
        + Send
        + Unpin,
{
    let (v,) = query_row::<(T,)>(database_url, sql).await;
    v
}

/// Runs one statement on the database, as an operator's tool would.
pub async fn execute(database_url: &str, sql: &str) {
    use sqlx::{Connection, Executor};
    if database_url.starts_with("sqlite:") {
        let mut conn = sqlx::SqliteConnection::connect(database_url).await.unwrap();
        conn.execute(sql).await.unwrap();
        conn.close().await.unwrap();
    } else {
        let mut conn = sqlx::PgConnection::connect(database_url).await.unwrap();
        conn.execute(sql).await.unwrap();
        conn.close().await.unwrap();
    }
}

// ---- payloads ------------------------------------------------------------------

/// An alert as Alertmanager sends it.
pub fn alert(name: &str, user: Option<&str>, fingerprint: &str) -> Value {
    let mut labels = json!({"alertname": name, "severity": "critical", "instance": "db-1:9100"});
    if let Some(u) = user {
        labels["user_id"] = json!(u);
    }
    json!({
        "status": "firing",
        "labels": labels,
        "annotations": {"description": format!("{name} on db-1"), "summary": "it is bad"},
        "startsAt": "2026-11-24T10:00:00.000Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph?g0.expr=up",
        "fingerprint": fingerprint
    })
}

/// A webhook v4 payload for `receiver` holding `alerts`.
pub fn payload(receiver: &str, group_key: &str, alerts: Vec<Value>) -> Value {
    json!({
        "version": "4",
        "groupKey": group_key,
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": receiver,
        "groupLabels": {"alertname": "high_cpu"},
        "commonLabels": {"alertname": "high_cpu"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "notification_reason": "new",
        "alerts": alerts
    })
}

/// The record of a first attempt that delivered `m` at `at`.
pub fn delivered(m: &notimeter::store::ClaimedMessage, at: i64) -> notimeter::store::AttemptRecord {
    notimeter::store::AttemptRecord {
        message_id: m.id,
        user_id: m.user_id.clone(),
        integration: m.integration,
        attempt: 1,
        started_at: at,
        duration_ms: 1,
        result: Some(notimeter::domain::AttemptResult::Success),
        status_code: Some(200),
        error: None,
        segments: None,
        attempted: true,
        outcome: notimeter::store::Outcome::Delivered,
        finished_at: at,
    }
}

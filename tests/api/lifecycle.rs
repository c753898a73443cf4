//! The real binary: crash after the 200 still delivers once; SIGTERM exits 0.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use notimeter::app::Dispatch;
use notimeter::clock::Clock;

use crate::helpers::*;
use crate::on_both_backends;

on_both_backends!(
    killed_after_accept_delivers_once_on_restart,
    sigterm_exits_cleanly,
    health_and_readiness
);

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `dispatch.lease` of the binaries these tests start.
const LEASE: Duration = Duration::from_secs(2);

fn write_config(dir: &Path, listen: SocketAddr, database_url: &str) -> std::path::PathBuf {
    let path = dir.join("notimeter.toml");
    std::fs::write(
        &path,
        format!(
            r#"listen = "{listen}"
database_url = "{database_url}"
reports_dir = "{reports}"
ingest_token = "{INGEST_TOKEN}"
admin_token = "{ADMIN_TOKEN}"
finance_token = "{FINANCE_TOKEN}"
outbound_allow = ["127.0.0.0/8"]
shutdown_timeout = "2s"

[dispatch]
lease = "{lease}s"
send_timeout = "1s"
min_backoff = "300ms"
max_backoff = "300ms"
poll_interval = "50ms"
"#,
            reports = dir.join("reports").display(),
            lease = LEASE.as_secs()
        ),
    )
    .unwrap();
    path
}

fn spawn_binary(config: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_notimeter"))
        .args(["--config", config.to_str().unwrap(), "serve"])
        .env("RUST_LOG", "warn")
        .env_remove("NOTIMETER_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start notimeter")
}

async fn wait_ready(addr: SocketAddr) {
    wait_for_ok("notimeter to be ready", &format!("http://{addr}/readyz")).await;
}

async fn killed_after_accept_delivers_once_on_restart(backend: Backend) {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let database = fresh_database(&backend, dir.path()).await;
    let url = database.url.clone();
    let listen = free_addr();
    let sink_addr = free_addr(); // nothing listens there yet: sends fail and are retried
    let config = write_config(dir.path(), listen, &url);
    let http = reqwest::Client::new();
    let base = format!("http://{listen}");

    let mut first = spawn_binary(&config);
    wait_ready(listen).await;
    let r = http
        .put(format!("{base}/v1/users/u1/channels/hook"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"type": "webhook", "settings": {"url": format!("http://{sink_addr}/u1")}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = http
        .post(format!("{base}/v1/alertmanager"))
        .bearer_auth(INGEST_TOKEN)
        .json(&payload(
            "default",
            "g",
            vec![alert("high_cpu", Some("u1"), "f1")],
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    first.kill().unwrap(); // SIGKILL: no chance to clean up
    first.wait().unwrap();

    let sink = Sink::start_on(sink_addr).await;
    let mut second = spawn_binary(&config);
    wait_ready(listen).await;
    sink.wait_for("/u1", 1).await;
    let metrics = || async {
        http.get(format!("{base}/metrics"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let delivered = [
        ("user_id", "u1"),
        ("integration", "webhook"),
        ("outcome", "delivered"),
    ];
    eventually("the message to be final and counted", || async {
        let m = metrics().await;
        metric_value(&m, "notimeter_outbox_pending", &[]) == 0.0
            && metric_value(&m, "notimeter_notifications_total", &delivered) >= 1.0
    })
    .await;
    let m = metrics().await;
    assert_eq!(
        metric_value(&m, "notimeter_notifications_total", &delivered),
        1.0
    );
    assert_eq!(
        metric_value(&m, "notimeter_period_notifications", &delivered),
        1.0
    );
    terminate(&mut second);

    // Past every lease either process took: a message left claimable (its
    // lease run out, the message not final) is taken by this drain and
    // delivered again.
    let mut settings = test_settings(&url, dir.path());
    settings.dispatch.lease = LEASE;
    let clock = Clock::adjustable();
    let later = start_with(settings, dir.clone(), clock.clone(), Dispatch::OnDemand).await;
    clock.advance(LEASE + Duration::from_secs(1));
    assert_eq!(later.drain_outbox().await, 0, "nothing left to claim");
    assert_eq!(
        sink.received_on("/u1").len(),
        1,
        "delivered exactly once after the crash"
    );
    later.stop().await;
}

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    child.wait().unwrap()
}

async fn sigterm_exits_cleanly(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let database = fresh_database(&backend, dir.path()).await;
    let url = database.url.clone();
    let listen = free_addr();
    let config = write_config(dir.path(), listen, &url);
    let http = reqwest::Client::new();
    let mut child = spawn_binary(&config);
    wait_ready(listen).await;
    let status = terminate(&mut child);
    assert!(status.success(), "exit status {status:?}");
    assert!(
        http.get(format!("http://{listen}/healthz"))
            .send()
            .await
            .is_err(),
        "no longer listening"
    );
}

async fn health_and_readiness(backend: Backend) {
    let app = spawn_app(&backend).await;
    let h = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(h.status(), 200);
    let r = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        body["store"],
        if matches!(backend, Backend::Sqlite) {
            "sqlite"
        } else {
            "postgres"
        }
    );
    app.stop().await;
}

fn notimeter(args: &[&str], env: &[(&str, String)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_notimeter"));
    cmd.args(args)
        .env_remove("NOTIMETER_CONFIG")
        .env("RUST_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run notimeter")
}

#[test]
fn cli_configuration_and_migrate() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fresh.db");
    let db_url = format!("sqlite://{}", db.display());

    // `migrate` creates the SQLite file; the environment overrides the file.
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        "database_url = \"sqlite:///nonexistent/dir/x.db\"\n",
    )
    .unwrap();
    let out = notimeter(
        &["--config", config.to_str().unwrap(), "migrate"],
        &[("NOTIMETER_DATABASE_URL", db_url.clone())],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(db.exists());
    // Idempotent.
    assert!(
        notimeter(&["migrate"], &[("NOTIMETER_DATABASE_URL", db_url.clone())])
            .status
            .success()
    );

    // Unknown keys are errors that name the key, in the file and in the environment.
    std::fs::write(&config, "[billing]\ncurency = \"EUR\"\n").unwrap();
    let out = notimeter(&["--config", config.to_str().unwrap(), "migrate"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("curency"));
    let out = notimeter(
        &["migrate"],
        &[("NOTIMETER_DEDUPE_WINDOW_TYPO", "1s".into())],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("dedupe_window_typo"));
    let out = notimeter(&["migrate"], &[("NOTIMETER_DEDUPE_WINDOW", "soon".into())]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .to_lowercase()
        .contains("dedupe_window"));

    // An open role on a non-loopback address is refused unless allow_insecure.
    let out = notimeter(
        &["serve"],
        &[
            ("NOTIMETER_LISTEN", "0.0.0.0:0".into()),
            ("NOTIMETER_DATABASE_URL", db_url.clone()),
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("allow_insecure"));

    // `ledger close` closes the open period and writes its report.
    let reports = dir.path().join("reports");
    let env = [
        ("NOTIMETER_DATABASE_URL", db_url.clone()),
        ("NOTIMETER_REPORTS_DIR", reports.display().to_string()),
    ];
    let out = notimeter(&["ledger", "close"], &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    let closed = said.split_whitespace().nth(1).unwrap().to_owned();
    assert!(
        reports.join(format!("{closed}.csv")).exists()
            && reports.join(format!("{closed}.csv.sha256")).exists(),
        "{said}"
    );
    let out = notimeter(&["ledger", "export", "--period", &closed], &env);
    assert_eq!(
        out.stdout,
        std::fs::read(reports.join(format!("{closed}.csv"))).unwrap()
    );
    let out = notimeter(&["ledger", "export", "--period", "nope"], &env);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no billing period")
    );

    // --help on each verb.
    for verb in ["serve", "migrate", "ledger"] {
        let out = notimeter(&[verb, "--help"], &[]);
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("--config"));
    }
}

/// An integration the settings name as a key must be one notimeter knows:
/// `smz` for `sms` is refused when the settings load, by every verb, from the
/// file and from the environment alike, instead of billing the default price.
#[tokio::test]
async fn an_unknown_integration_in_the_settings_is_refused_by_every_verb() {
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let env = [
        (
            "NOTIMETER_DATABASE_URL",
            format!("sqlite://{}", dir.path().join("n.db").display()),
        ),
        (
            "NOTIMETER_REPORTS_DIR",
            dir.path().join("reports").display().to_string(),
        ),
        ("NOTIMETER_LISTEN", listen.to_string()),
    ];
    let config = dir.path().join("c.toml");
    let path = config.to_str().unwrap();
    let refused = |out: std::process::Output, key: &str| {
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("unknown integration \"smz\"") && stderr.contains(key),
            "{stderr}"
        );
        assert!(
            stderr.contains("email, slack, sms, telegram, webhook"),
            "{stderr}"
        );
    };

    std::fs::write(&config, "[billing.user_prices.\"c1\"]\nsmz = \"3\"\n").unwrap();
    for verb in [&["migrate"][..], &["serve"], &["ledger", "close"]] {
        let args = [&["--config", path][..], verb].concat();
        refused(notimeter(&args, &env), "billing.user_prices.c1.smz");
    }
    assert!(
        !dir.path().join("n.db").exists(),
        "refused before the store"
    );
    for (verb, variable) in [
        ("migrate", "NOTIMETER_BILLING__USER_PRICES__C1__SMZ"),
        ("serve", "NOTIMETER_LIMITS__DEFAULT__SMZ"),
    ] {
        let env = [&env[..], &[(variable, "3".to_owned())]].concat();
        let key = variable.trim_start_matches("NOTIMETER_").replace("__", ".");
        refused(notimeter(&[verb], &env), &key);
    }

    // Spelled right, the same settings load, migrate and serve.
    std::fs::write(&config, "[billing.user_prices.\"c1\"]\nsms = \"3\"\n").unwrap();
    let out = notimeter(&["--config", path, "migrate"], &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut serve = Command::new(env!("CARGO_BIN_EXE_notimeter"))
        .args(["--config", path, "serve"])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env_remove("NOTIMETER_CONFIG")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start notimeter");
    wait_ready(listen).await;
    serve.kill().unwrap();
    serve.wait().unwrap();
}

on_both_backends!(shutdown_releases_sends_in_flight);

async fn shutdown_releases_sends_in_flight(backend: Backend) {
    let app = spawn_app_with(&backend, |s| {
        s.shutdown_timeout = Duration::from_millis(300);
        s.dispatch.send_timeout = Duration::from_secs(20);
        s.dispatch.lease = Duration::from_secs(60);
    })
    .await;
    let sink = Sink::start().await;
    sink.script(
        "/u1",
        [Reply::new(200, "ok").after(Duration::from_secs(30))],
    );
    app.add_webhook("u1", "hook", &sink.url("/u1")).await;
    app.post_alerts(&payload(
        "default",
        "g",
        vec![alert("high_cpu", Some("u1"), "f1")],
    ))
    .await;
    sink.wait_for("/u1", 1).await; // the send is now in flight, and hangs

    let database_url = app.database_url.clone();
    let stopped = app.stop_keeping_data().await; // returns once the bound has passed, not after 30 s

    let (state, owner): (String, Option<String>) =
        query_row(&database_url, "SELECT state, lease_owner FROM messages").await;
    assert_eq!(state, "pending");
    assert_eq!(
        owner, None,
        "the lease was released, so the next process takes it at once"
    );

    let again = stopped.start().await;
    sink.wait_for("/u1", 2).await;
    again.wait_idle().await;
    let delivered = [
        ("user_id", "u1"),
        ("integration", "webhook"),
        ("outcome", "delivered"),
    ];
    assert_eq!(
        again
            .metric("notimeter_notifications_total", &delivered)
            .await,
        1.0
    );
    assert_eq!(
        again
            .metric("notimeter_period_notifications", &delivered)
            .await,
        1.0
    );
    again.stop().await;
}

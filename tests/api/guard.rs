//! The outbound guard at send time and on redirects, and secrets that never
//! leave: not in logs, metrics or any API response.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::json;

use crate::helpers::*;
use crate::on_both_backends;

on_both_backends!(
    guard_applies_at_send_time,
    redirects_to_forbidden_addresses_are_refused,
    forbidden_ranges_are_refused_at_save,
    forbidden_ranges_are_refused_at_send_time,
    outbound_proxy_gets_only_checked_targets,
    environment_proxies_are_ignored,
    secret_hosts_are_never_logged
);

/// An address of one of this host's interfaces that no other rule refuses
/// (so only the own-address rule can), or `None` with the reason printed.
fn own_public_address() -> Option<IpAddr> {
    use notimeter::outbound::{classify, own_addresses};
    let found = own_addresses()
        .iter()
        .copied()
        .find(|a| classify(*a, &[]).is_none());
    if found.is_none() {
        eprintln!(
            "skipped the own-address case: every interface address of this machine is in a range refused anyway"
        );
    }
    found
}

fn url_of(addr: SocketAddr, path: &str) -> String {
    match addr {
        SocketAddr::V4(a) => format!("http://{a}{path}"),
        SocketAddr::V6(a) => format!("http://[{}]:{}{path}", a.ip(), a.port()),
    }
}

/// Addresses refused today that were accepted before, with the reason the
/// refusal names; the host's own address where it has one not refused anyway.
fn newly_refused() -> Vec<(String, &'static str)> {
    let mut cases: Vec<(String, &'static str)> = vec![
        ("0.0.0.1".into(), "\"this network\" (0.0.0.0/8)"),
        ("[::127.0.0.1]".into(), "IPv4-compatible form of loopback"),
        ("[64:ff9b::7f00:1]".into(), "NAT64 form of loopback"),
        ("[64:ff9b:1::a00:1]".into(), "local-use NAT64"),
        ("[2002:7f00:1::1]".into(), "6to4 form of loopback"),
        ("224.0.0.1".into(), "multicast"),
        ("[ff02::1]".into(), "multicast"),
        ("240.0.0.1".into(), "reserved"),
        ("198.18.0.1".into(), "benchmarking (198.18.0.0/15)"),
    ];
    if let Some(own) = own_public_address() {
        let host = match own {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        };
        cases.push((host, "this host's own interfaces"));
    }
    cases
}

async fn forbidden_ranges_are_refused_at_save(backend: Backend) {
    let app = spawn_app(&backend).await;
    for (i, (host, reason)) in newly_refused().into_iter().enumerate() {
        let url = format!("http://{host}:8080/hook");
        // Every secret URL setting goes through the same check.
        for (kind, settings) in [
            ("webhook", json!({"url": url})),
            ("slack", json!({"api_url": url})),
            ("telegram", json!({"webhook_url": url})),
        ] {
            let r = app
                .put_channel(
                    "u1",
                    &format!("c{i}"),
                    json!({"type": kind, "settings": settings}),
                )
                .await;
            assert_eq!(r.status(), 422, "{kind} {url} was accepted");
            let body: serde_json::Value = r.json().await.unwrap();
            let error = body["error"].as_str().unwrap();
            assert!(error.contains(reason), "{url}: {error}");
            assert!(error.contains("outbound_allow"), "{error}");
        }
    }
    app.stop().await;
}

async fn forbidden_ranges_are_refused_at_send_time(backend: Backend) {
    // Saved while the operator allowed them; refused at send time once not.
    let own = own_public_address();
    let own_sink = match own {
        Some(ip) => Some(Sink::start_on(SocketAddr::new(ip, 0)).await),
        None => None,
    };
    let app = spawn_app_with(&backend, |s| {
        s.outbound_allow.extend(
            ["64:ff9b::/96", "::/96", "198.18.0.0/15"]
                .iter()
                .map(|n| n.parse::<ipnet::IpNet>().unwrap()),
        );
        if let Some(ip) = own {
            s.outbound_allow.push(ipnet::IpNet::from(ip));
        }
    })
    .await;
    let sink = Sink::start().await;
    let port = sink.addr.port();
    let mut users = vec![
        ("nat64", format!("http://[64:ff9b::7f00:1]:{port}/nat64")),
        ("compat", format!("http://[::127.0.0.1]:{port}/compat")),
        ("bench", format!("http://198.18.0.1:{port}/bench")),
    ];
    if let Some(own_sink) = &own_sink {
        // A receiver really listens there: before, this was delivered.
        users.push(("own", url_of(own_sink.addr, "/own")));
    }
    for (user, url) in &users {
        app.add_webhook(user, "hook", url).await;
    }
    let mut stopped = app.stop_keeping_data().await;
    stopped.settings.outbound_allow = vec!["127.0.0.0/8".parse().unwrap()];
    let app = stopped.start().await;
    let alerts = users
        .iter()
        .map(|(user, _)| alert("high_cpu", Some(user), user))
        .collect();
    app.post_alerts(&payload("default", "g", alerts)).await;
    app.wait_idle().await;
    for (user, _) in &users {
        assert_eq!(
            app.notifications(user, "webhook", "failed").await,
            1.0,
            "{user}"
        );
        let (attempts, error): (i64, String) = {
            let sql = format!(
                "SELECT attempts, COALESCE(last_error, '') FROM messages WHERE user_id = '{user}'"
            );
            query_row(&app.database_url, &sql).await
        };
        assert!(error.contains("outbound guard"), "{user}: {error}");
        assert_eq!(attempts, 1, "{user}: a refusal is final at once");
    }
    assert!(sink.received().is_empty());
    if let Some(own_sink) = &own_sink {
        assert!(
            own_sink.received().is_empty(),
            "nothing may reach this host's own address"
        );
    }
    app.stop().await;
}

/// With `outbound_proxy`, deliveries go through it, and the guard resolves and
/// checks each target (and redirect target) before the proxy sees it.
async fn outbound_proxy_gets_only_checked_targets(backend: Backend) {
    // The proxy: a recording server answering requests in absolute form.
    let proxy = Sink::start().await;
    proxy.script(
        "/redirect",
        [Reply::new(302, "").header("location", "http://nowhere.invalid/after-redirect")],
    );
    let target = Sink::start().await;
    let app = spawn_app_with(&backend, |s| {
        s.outbound_allow.push("64:ff9b::/96".parse().unwrap());
        s.outbound_proxy = Some(notimeter::config::Secret::new(proxy.url("")));
    })
    .await;
    let port = target.addr.port();
    app.add_webhook("through", "hook", &target.url("/through"))
        .await;
    app.add_webhook("redirected", "hook", &target.url("/redirect"))
        .await;
    app.add_webhook("unresolved", "hook", "http://nowhere.invalid/unresolved")
        .await;
    app.add_webhook(
        "nat64",
        "hook",
        &format!("http://[64:ff9b::7f00:1]:{port}/nat64"),
    )
    .await;
    let mut stopped = app.stop_keeping_data().await;
    stopped.settings.outbound_allow = vec!["127.0.0.0/8".parse().unwrap()];
    let app = stopped.start().await;
    let users = ["through", "redirected", "unresolved", "nat64"];
    let alerts = users
        .iter()
        .map(|u| alert("high_cpu", Some(u), u))
        .collect();
    app.post_alerts(&payload("default", "g", alerts)).await;
    app.wait_idle().await;

    let through = proxy.received_on("/through");
    assert_eq!(through.len(), 1, "an allowed target goes through the proxy");
    assert_eq!(
        through[0].headers["host"].to_str().unwrap(),
        target.addr.to_string()
    );
    assert!(target.received().is_empty(), "nothing bypasses the proxy");
    let mut paths: Vec<String> = proxy.received().into_iter().map(|r| r.path).collect();
    paths.sort();
    assert_eq!(
        paths,
        ["/redirect", "/through"].map(String::from).to_vec(),
        "the proxy saw only checked targets"
    );
    assert_eq!(
        app.notifications("through", "webhook", "delivered").await,
        1.0
    );
    for user in ["redirected", "unresolved", "nat64"] {
        assert_eq!(
            app.notifications(user, "webhook", "failed").await,
            1.0,
            "{user}"
        );
    }
    app.stop().await;
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `notimeter serve` with this config and environment, logging at trace to `log`.
async fn serve(config: &Path, log: &Path, env: &[(&str, &str)], listen: SocketAddr) -> KillOnDrop {
    let mut command = Command::new(env!("CARGO_BIN_EXE_notimeter"));
    command
        .args(["--config", config.to_str().unwrap(), "serve"])
        .env("RUST_LOG", "trace")
        .env_remove("NOTIMETER_CONFIG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    for (k, v) in env {
        command.env(k, v);
    }
    let child = KillOnDrop(command.spawn().unwrap());
    wait_for_ok("notimeter to be ready", &format!("http://{listen}/readyz")).await;
    child
}

fn write_config(dir: &Path, listen: SocketAddr, database_url: &str, allow: &str) -> PathBuf {
    let path = dir.join("notimeter.toml");
    std::fs::write(
        &path,
        format!(
            "listen = \"{listen}\"\ndatabase_url = \"{database_url}\"\nreports_dir = \"{reports}\"\n\
             ingest_token = \"{INGEST_TOKEN}\"\nadmin_token = \"{ADMIN_TOKEN}\"\nfinance_token = \"{FINANCE_TOKEN}\"\n\
             outbound_allow = {allow}\nshutdown_timeout = \"2s\"\n\
             [dispatch]\nmin_backoff = \"20ms\"\nmax_backoff = \"100ms\"\npoll_interval = \"20ms\"\nmax_attempts = 3\n",
            reports = dir.join("reports").display()
        ),
    )
    .unwrap();
    path
}

async fn stop(mut child: KillOnDrop) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status();
    tokio::task::spawn_blocking(move || child.0.wait().unwrap())
        .await
        .unwrap();
}

async fn put(listen: SocketAddr, user: &str, channel: &str, body: serde_json::Value) -> u16 {
    reqwest::Client::new()
        .put(format!(
            "http://{listen}/v1/users/{user}/channels/{channel}"
        ))
        .bearer_auth(ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn post(listen: SocketAddr, payload: &serde_json::Value) {
    let r = reqwest::Client::new()
        .post(format!("http://{listen}/v1/alertmanager"))
        .bearer_auth(INGEST_TOKEN)
        .json(payload)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

async fn metric(listen: SocketAddr, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = reqwest::Client::new()
        .get(format!("http://{listen}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metric_value(&text, name, labels)
}

async fn wait_final(listen: SocketAddr) {
    eventually("every message final", || async {
        metric(listen, "notimeter_outbox_pending", &[]).await == 0.0
    })
    .await;
}

/// `HTTP_PROXY`, `HTTPS_PROXY` and `ALL_PROXY` in notimeter's environment are
/// not followed: they would send the target's name to the proxy unchecked.
async fn environment_proxies_are_ignored(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let database = fresh_database(&backend, dir.path()).await;
    let listen = free_addr();
    let config = write_config(dir.path(), listen, &database.url, "[\"127.0.0.0/8\"]");
    let proxy = Sink::start().await;
    let target = Sink::start().await;
    let proxy_url = proxy.url("");
    let env: Vec<(&str, &str)> = [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ]
    .iter()
    .map(|k| (*k, proxy_url.as_str()))
    .chain([("NO_PROXY", ""), ("no_proxy", "")])
    .collect();
    let child = serve(&config, &dir.path().join("log"), &env, listen).await;
    let webhook = |url: &str| json!({"type": "webhook", "settings": {"url": url}});
    assert_eq!(
        put(listen, "direct", "hook", webhook(&target.url("/direct"))).await,
        201
    );
    assert_eq!(
        put(
            listen,
            "named",
            "hook",
            webhook("http://nowhere.invalid/named")
        )
        .await,
        201
    );
    post(
        listen,
        &payload(
            "default",
            "g",
            vec![
                alert("high_cpu", Some("direct"), "f1"),
                alert("high_cpu", Some("named"), "f2"),
            ],
        ),
    )
    .await;
    wait_final(listen).await;
    stop(child).await;
    assert!(
        proxy.received().is_empty(),
        "the environment's proxy got {:?}",
        proxy.received().iter().map(|r| &r.path).collect::<Vec<_>>()
    );
    assert_eq!(target.received_on("/direct").len(), 1, "sent directly");
    let state: String = query_one(
        &database.url,
        "SELECT state FROM messages WHERE user_id = 'named'",
    )
    .await;
    assert_eq!(
        state, "failed",
        "a name that does not resolve is not delivered"
    );
}

/// No part of a secret URL reaches the logs at any level: not the host of a
/// named destination (reqwest's own `starting new connection: http://host/`
/// at DEBUG, rustls's server name, the guard's refusals), not its path.
async fn secret_hosts_are_never_logged(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let database = fresh_database(&backend, dir.path()).await;
    let listen = free_addr();
    let sink = Sink::start().await;
    let port = sink.addr.port();
    let secrets = [
        "secrethost-secret21",
        "path-SECRET22",
        "slack-SECRET23",
        "relay-SECRET24",
    ];
    let channels = [
        // A named host that is reached: a normal connection.
        (
            "named",
            json!({"type": "webhook", "settings": {"url": format!("http://localhost:{port}/hook/path-SECRET22")}}),
        ),
        // A name that does not resolve (or, where *.localhost does, is reached).
        (
            "unresolved",
            json!({"type": "webhook", "settings": {"url": format!("http://secrethost-secret21.localhost:{port}/x")}}),
        ),
        // TLS to a receiver that does not speak it: the server name is in play.
        (
            "tls",
            json!({"type": "slack", "settings": {"api_url": format!("https://localhost:{port}/services/slack-SECRET23")}}),
        ),
        (
            "relay",
            json!({"type": "telegram", "settings": {"webhook_url": format!("http://localhost:{port}/relay/relay-SECRET24")}}),
        ),
    ];
    let config = write_config(dir.path(), listen, &database.url, "[\"127.0.0.0/8\"]");
    let first_log = dir.path().join("first.log");
    let child = serve(&config, &first_log, &[], listen).await;
    for (channel, body) in &channels {
        assert_eq!(put(listen, "u1", channel, body.clone()).await, 201);
    }
    post(
        listen,
        &payload("default", "g1", vec![alert("high_cpu", Some("u1"), "f1")]),
    )
    .await;
    wait_final(listen).await;
    sink.wait_for("/hook/path-SECRET22", 1).await;
    sink.wait_for("/relay/relay-SECRET24", 1).await;
    stop(child).await;

    // Again with loopback no longer allowed: every send is refused by the guard.
    write_config(dir.path(), listen, &database.url, "[]");
    let second_log = dir.path().join("second.log");
    let child = serve(&config, &second_log, &[], listen).await;
    post(
        listen,
        &payload("default", "g2", vec![alert("high_cpu", Some("u1"), "f2")]),
    )
    .await;
    wait_final(listen).await;
    stop(child).await;

    let logs = std::fs::read_to_string(&first_log).unwrap()
        + &std::fs::read_to_string(&second_log).unwrap();
    assert!(
        logs.contains("outbound guard") && logs.contains("channel_id=unresolved"),
        "refusals are logged, naming user and channel:\n{logs}"
    );
    assert!(
        logs.contains("TRACE") && logs.contains("DEBUG"),
        "logged at trace"
    );
    for secret in secrets.iter().copied().chain(["localhost", "secrethost"]) {
        assert!(!logs.contains(secret), "{secret} in the logs:\n{logs}");
    }
}

async fn guard_applies_at_send_time(backend: Backend) {
    let app = spawn_app(&backend).await;
    let sink = Sink::start().await;
    app.add_webhook("u1", "hook", &sink.url("/u1")).await;
    // The operator takes loopback off the allow list; the saved channel stays.
    let mut stopped = app.stop_keeping_data().await;
    stopped.settings.outbound_allow.clear();
    let app = stopped.start().await;
    app.post_alerts(&payload(
        "default",
        "g",
        vec![alert("high_cpu", Some("u1"), "f1")],
    ))
    .await;
    app.wait_idle().await;
    assert!(
        sink.received().is_empty(),
        "nothing may reach a loopback address now"
    );
    assert_eq!(app.notifications("u1", "webhook", "failed").await, 1.0);
    let error: String = query_one(&app.database_url, "SELECT last_error FROM messages").await;
    assert!(error.contains("outbound guard"), "{error}");
    app.stop().await;
}

async fn redirects_to_forbidden_addresses_are_refused(backend: Backend) {
    let app = spawn_app(&backend).await;
    let sink = Sink::start().await;
    sink.script(
        "/evil",
        [Reply::new(302, "").header("location", "http://169.254.169.254/latest/meta-data/")],
    );
    sink.script(
        "/moved",
        [Reply::new(307, "").header("location", &sink.url("/final"))],
    );
    app.add_webhook("u1", "evil", &sink.url("/evil")).await;
    app.add_webhook("u2", "moved", &sink.url("/moved")).await;
    app.post_alerts(&payload(
        "default",
        "g",
        vec![alert("a", Some("u1"), "f1"), alert("a", Some("u2"), "f2")],
    ))
    .await;
    sink.wait_for("/final", 1).await;
    app.wait_idle().await;
    assert_eq!(
        sink.received_on("/evil").len(),
        1,
        "refused at once, not retried"
    );
    assert_eq!(app.notifications("u1", "webhook", "failed").await, 1.0);
    assert_eq!(
        app.notifications("u2", "webhook", "delivered").await,
        1.0,
        "an allowed redirect is followed"
    );
    app.stop().await;
}

/// Every integration but email, through the real binary logging at trace: no
/// secret appears in its logs, its metrics or any API response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_leave() {
    secrets_never_leave_with(None).await;
}

/// The same with an email channel too, through a real SMTP server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs /usr/bin/python3 with aiosmtpd (apt-get install python3-aiosmtpd); run with --include-ignored"]
async fn secrets_never_leave_email_included() {
    secrets_never_leave_with(Some(SmtpServer::start().await)).await;
}

async fn secrets_never_leave_with(smtp: Option<SmtpServer>) {
    let sink = Sink::start().await;
    let telegram = Sink::start().await;
    telegram.default_reply(Reply::new(200, r#"{"ok":true,"result":{}}"#));
    telegram.script(
        "/bot999:tg-SECRET5/sendMessage",
        [Reply::new(
            500,
            r#"{"ok":false,"error_code":500,"description":"Internal Server Error"}"#,
        )],
    );
    let twilio = Sink::start().await;
    twilio.default_reply(Reply::new(201, r#"{"sid":"SM1","num_segments":"1"}"#));
    sink.script("/hook/whsec-SECRET1", [Reply::new(500, "boom")]);

    let secrets = [
        "ingest-SECRET-a",
        "admin-SECRET-b",
        "finance-SECRET-c",
        "metrics-SECRET-d",
        "whsec-SECRET1",
        "whtok-SECRET2",
        "whpass-SECRET3",
        "slack-SECRET4",
        "tg-SECRET5",
        "relay-SECRET6",
        "sms-SECRET7",
    ];
    let dir = tempfile::tempdir().unwrap();
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let smtp_conf = smtp
        .as_ref()
        .map(|s| {
            format!(
                "[smtp]\nsmarthost = \"127.0.0.1:{}\"\nfrom = \"n@example.com\"\ntls = \"none\"\n",
                s.port
            )
        })
        .unwrap_or_default();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"{listen}\"\ndatabase_url = \"sqlite://{db}\"\nreports_dir = \"{reports}\"\n\
             ingest_token = \"ingest-SECRET-a\"\nadmin_token = \"admin-SECRET-b\"\nfinance_token = \"finance-SECRET-c\"\n\
             metrics_token = \"metrics-SECRET-d\"\noutbound_allow = [\"127.0.0.0/8\"]\n\
             [dispatch]\nmin_backoff = \"50ms\"\nmax_backoff = \"100ms\"\npoll_interval = \"20ms\"\n\
             [sms]\napi_url = \"{twilio}\"\naccount_sid = \"AC1\"\nauth_token = \"sms-SECRET7\"\nfrom = \"+15005550006\"\n{smtp_conf}",
            db = dir.path().join("n.db").display(),
            reports = dir.path().join("reports").display(),
            twilio = twilio.url(""),
        ),
    )
    .unwrap();
    let log_path = dir.path().join("notimeter.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_notimeter"))
        .args(["--config", config.to_str().unwrap(), "serve"])
        .env("RUST_LOG", "trace")
        .env_remove("NOTIMETER_CONFIG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let base = format!("http://{listen}");
    wait_for_ok("ready", &format!("{base}/readyz")).await;

    let mut responses = String::new();
    let channels = [
        (
            "webhook",
            json!({"url": sink.url("/hook/whsec-SECRET1"), "bearer_token": "whtok-SECRET2"}),
        ),
        (
            "webhook",
            json!({"url": sink.url("/basic"), "basic_auth": {"username": "u", "password": "whpass-SECRET3"}}),
        ),
        (
            "slack",
            json!({"api_url": sink.url("/services/T0/B0/slack-SECRET4")}),
        ),
        (
            "telegram",
            json!({"bot_token": "999:tg-SECRET5", "chat_id": 1, "api_url": telegram.url("")}),
        ),
        (
            "telegram",
            json!({"webhook_url": sink.url("/relay/relay-SECRET6")}),
        ),
        ("sms", json!({"to": "+14155550100"})),
        ("email", json!({"to": "ops@example.com"})),
    ];
    let mut expected = 0u32;
    for (i, (kind, settings)) in channels.iter().enumerate() {
        if *kind == "email" && smtp.is_none() {
            continue;
        }
        let r = http
            .put(format!("{base}/v1/users/u1/channels/c{i}"))
            .bearer_auth("admin-SECRET-b")
            .json(&json!({"type": kind, "settings": settings}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        responses.push_str(&r.text().await.unwrap());
        expected += 1;
    }
    let r = http
        .post(format!("{base}/v1/alertmanager"))
        .bearer_auth("ingest-SECRET-a")
        .json(&payload(
            "default",
            "g",
            vec![alert("high_cpu", Some("u1"), "f1")],
        ))
        .send()
        .await
        .unwrap();
    responses.push_str(&r.text().await.unwrap());
    let metrics = || async {
        http.get(format!("{base}/metrics"))
            .bearer_auth("metrics-SECRET-d")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    eventually("every message final", || async {
        let m = metrics().await;
        metric_value(&m, "notimeter_outbox_pending", &[]) == 0.0
            && metric_value(
                &m,
                "notimeter_delivery_attempts_total",
                &[("integration", "webhook"), ("result", "success")],
            ) >= 2.0
    })
    .await;
    // Every integration really sent (so the logs below cover real traffic).
    sink.wait_for("/hook/whsec-SECRET1", 2).await;
    sink.wait_for("/basic", 1).await;
    sink.wait_for("/services/T0/B0/slack-SECRET4", 1).await;
    sink.wait_for("/relay/relay-SECRET6", 1).await;
    telegram.wait_for("/bot999:tg-SECRET5/sendMessage", 2).await;
    assert_eq!(twilio.received().len(), 1);
    if let Some(smtp) = &smtp {
        smtp.wait_for(1).await;
    }
    let m = metrics().await;
    let total: f64 = ["webhook", "slack", "telegram", "sms", "email"]
        .iter()
        .map(|i| {
            metric_value(
                &m,
                "notimeter_notifications_total",
                &[
                    ("user_id", "u1"),
                    ("integration", i),
                    ("outcome", "delivered"),
                ],
            )
        })
        .sum();
    assert_eq!(total, f64::from(expected));
    responses.push_str(&metrics().await);
    for path in [
        "/v1/users/u1/channels",
        "/v1/usage",
        "/v1/ledger/current.csv",
    ] {
        let token = if path.starts_with("/v1/users") {
            "admin-SECRET-b"
        } else {
            "finance-SECRET-c"
        };
        responses.push_str(
            &http
                .get(format!("{base}{path}"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        );
    }
    for i in 0..channels.len() {
        let r = http
            .get(format!("{base}/v1/users/u1/channels/c{i}"))
            .bearer_auth("admin-SECRET-b")
            .send()
            .await
            .unwrap();
        responses.push_str(&r.text().await.unwrap());
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    child.wait().unwrap();
    let logs = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        logs.contains("delivery attempt failed"),
        "the failures were logged:\n{logs}"
    );
    assert!(responses.contains("<secret>"));
    for secret in secrets {
        assert!(!logs.contains(secret), "{secret} in the logs:\n{logs}");
        assert!(
            !responses.contains(secret),
            "{secret} in an API response or /metrics"
        );
    }
}

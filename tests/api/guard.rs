//! The outbound guard at send time and on redirects, and secrets that never
//! leave: not in logs, metrics or any API response.

use std::process::{Command, Stdio};

use serde_json::json;

use crate::helpers::*;
use crate::on_both_backends;

on_both_backends!(
    guard_applies_at_send_time,
    redirects_to_forbidden_addresses_are_refused
);

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
    let failed = [
        ("user_id", "u1"),
        ("integration", "webhook"),
        ("outcome", "failed"),
    ];
    assert_eq!(
        app.metric("notimeter_notifications_total", &failed).await,
        1.0
    );
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
    let failed = [
        ("user_id", "u1"),
        ("integration", "webhook"),
        ("outcome", "failed"),
    ];
    assert_eq!(
        app.metric("notimeter_notifications_total", &failed).await,
        1.0
    );
    let delivered = [
        ("user_id", "u2"),
        ("integration", "webhook"),
        ("outcome", "delivered"),
    ];
    assert_eq!(
        app.metric("notimeter_notifications_total", &delivered)
            .await,
        1.0,
        "an allowed redirect is followed"
    );
    app.stop().await;
}

/// Every integration, through the real binary logging at trace: no secret
/// appears in its logs, its metrics or any API response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_leave() {
    let smtp = SmtpServer::start().await;
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
    eventually("ready", || async {
        http.get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;

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

//! With the real Alertmanager (Debian's prometheus-alertmanager, 0.25 here):
//! alerts posted to its API reach each user's channel through notimeter, and
//! the counters agree with what each user received.

use std::net::TcpListener;
use std::process::{Command, Stdio};

use serde_json::json;

use crate::helpers::*;
use crate::on_both_backends;

on_both_backends!(needs alertmanager: real_alertmanager_routes_through_notimeter);

const BINARIES: [&str; 2] = ["prometheus-alertmanager", "alertmanager"];

fn find_alertmanager() -> Option<&'static str> {
    BINARIES.into_iter().find(|b| installed(b))
}

async fn real_alertmanager_routes_through_notimeter(backend: Backend) {
    let binary = find_alertmanager().expect(
        "prometheus-alertmanager is not installed, and this test needs it: \
         apt-get install prometheus-alertmanager",
    );
    let app = spawn_app(&backend).await;
    let sink = Sink::start().await;
    app.add_webhook("u1", "hook", &sink.url("/u1")).await;
    app.add_webhook("u2", "hook", &sink.url("/u2")).await;

    let webhook = format!(
        "webhook_configs:\n      - url: {}\n        send_resolved: true\n        http_config:\n          authorization:\n            credentials: {INGEST_TOKEN}\n",
        app.url("/v1/alertmanager")
    );
    let config = format!(
        "route:\n  receiver: catch-all\n  group_by: [alertname]\n  group_wait: 1s\n  group_interval: 2s\n  repeat_interval: 1h\n  routes:\n    - receiver: notimeter/u2/hook\n      matchers: ['user_id=\"u2\"']\n\
         receivers:\n  - name: catch-all\n    {webhook}  - name: notimeter/u2/hook\n    {webhook}"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("am.yml"), &config).unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let am_url = format!("http://127.0.0.1:{port}");
    let child = Command::new(binary)
        .arg(format!(
            "--config.file={}",
            dir.path().join("am.yml").display()
        ))
        .arg(format!(
            "--storage.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .arg("--log.level=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start alertmanager");
    let _am = KillOnDrop(child);
    let http = reqwest::Client::new();
    wait_for_ok("alertmanager to be ready", &format!("{am_url}/-/ready")).await;

    let alert = |name: &str, user: Option<&str>| {
        let mut labels = json!({"alertname": name, "severity": "critical"});
        if let Some(u) = user {
            labels["user_id"] = json!(u);
        }
        json!({"labels": labels, "annotations": {"description": format!("{name} for {}", user.unwrap_or("nobody"))}, "generatorURL": "http://prometheus:9090/graph"})
    };
    let r = http
        .post(format!("{am_url}/api/v2/alerts"))
        .json(&json!([
            alert("high_cpu", Some("u1")),
            alert("high_cpu", Some("u2")),
            alert("high_cpu", None),
            alert("disk_full", Some("u1"))
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    // u1's two alerts are in two groups (high_cpu with the unattributed one, disk_full).
    let u1 = sink.wait_for("/u1", 2).await;
    let u2 = sink.wait_for("/u2", 1).await;
    app.wait_idle().await;
    for got in &u1 {
        for a in got.json()["alerts"].as_array().unwrap() {
            assert_eq!(
                a["labels"]["user_id"], "u1",
                "u1 got someone else's alert: {a}"
            );
        }
    }
    let u2_alerts = u2[0].json()["alerts"].as_array().unwrap().clone();
    assert_eq!(u2_alerts.len(), 1);
    assert_eq!(u2_alerts[0]["labels"]["user_id"], "u2");
    assert_eq!(u2[0].json()["receiver"], "notimeter/u2/hook");

    let m = app.metrics().await;
    let delivered = |u| {
        [
            ("user_id", u),
            ("integration", "webhook"),
            ("outcome", "delivered"),
        ]
    };
    assert_eq!(
        metric_value(&m, "notimeter_notifications_total", &delivered("u1")),
        sink.received_on("/u1").len() as f64
    );
    assert_eq!(
        metric_value(&m, "notimeter_notifications_total", &delivered("u2")),
        sink.received_on("/u2").len() as f64
    );
    assert_eq!(
        metric_value(
            &m,
            "notimeter_alerts_received_total",
            &[("user_id", "_unattributed")]
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &m,
            "notimeter_alerts_undeliverable_total",
            &[("reason", "no_channel")]
        ),
        1.0
    );
    let usage = app.get_json("/v1/usage", FINANCE_TOKEN).await;
    let total: i64 = usage["usage"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["delivered"].as_i64().unwrap())
        .sum();
    assert_eq!(total as usize, sink.received().len());
    app.stop().await;
}

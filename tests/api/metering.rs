//! Counters, usage and the ledger CSV agree; every metric family is exported,
//! and the exposition passes promtool.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::json;

use crate::helpers::*;
use crate::on_both_backends;

on_both_backends!(csv_usage_and_counters_agree, metrics_families_are_exported);
on_both_backends!(needs promtool: metrics_pass_promtool);

async fn csv_usage_and_counters_agree(backend: Backend) {
    let app = spawn_app_with(&backend, |s| {
        s.billing.prices.insert(
            notimeter::domain::IntegrationKind::Webhook,
            "0.0025".parse().unwrap(),
        );
        s.billing.currency = "EUR".into();
    })
    .await;
    let sink = Sink::start().await;
    sink.script("/u2", std::iter::repeat_n(Reply::new(400, "bad"), 5));
    app.add_webhook("u1", "a", &sink.url("/u1")).await;
    app.add_webhook("u1", "b", &sink.url("/u1b")).await;
    app.add_webhook("u2", "a", &sink.url("/u2")).await;
    app.add_webhook("@SUM", "a", &sink.url("/hostile")).await;
    app.add_webhook("-2.3", "a", &sink.url("/hostile")).await;
    for i in 0..5 {
        let alerts = vec![
            alert("high_cpu", Some("u1"), &format!("a{i}")),
            alert("high_cpu", Some("u2"), &format!("b{i}")),
            alert("x", Some("@SUM"), &format!("c{i}")),
            alert("x", Some("-2.3"), &format!("d{i}")),
        ];
        assert_eq!(
            app.post_alerts(&payload("default", &format!("g{i}"), alerts))
                .await
                .status(),
            200
        );
    }
    sink.wait_for("/u1", 5).await;
    app.wait_idle().await;

    let metrics = app.metrics().await;
    let csv_text = app.get_text("/v1/ledger/current.csv", FINANCE_TOKEN).await;
    let usage = app.get_json("/v1/usage", FINANCE_TOKEN).await;

    let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
    assert_eq!(
        reader.headers().unwrap().iter().collect::<Vec<_>>(),
        [
            "period_id",
            "period_start",
            "period_end",
            "user_id",
            "integration",
            "delivered",
            "failed",
            "units",
            "unit_price",
            "amount",
            "currency"
        ]
    );
    let mut from_csv = BTreeMap::new();
    let mut users = vec![];
    for rec in reader.records() {
        let rec = rec.unwrap();
        assert_eq!(&rec[10], "EUR");
        assert_eq!(&rec[2], "", "the open period has no end yet");
        assert_eq!(&rec[0], usage["period_id"].as_str().unwrap());
        users.push(rec[3].to_owned());
        from_csv.insert(
            rec[3].trim_start_matches('\'').to_owned(),
            (
                rec[5].parse::<f64>().unwrap(),
                rec[6].parse::<f64>().unwrap(),
                rec[9].to_owned(),
            ),
        );
    }
    assert_eq!(
        users,
        ["'-2.3", "'@SUM", "u1", "u2"],
        "sorted, and hostile ids defused"
    );
    assert_eq!(from_csv["u1"], (10.0, 0.0, "0.0250".to_owned()));
    assert_eq!(from_csv["u2"], (0.0, 5.0, "0.0000".to_owned()));
    for (user, (delivered, failed, _)) in &from_csv {
        let label = |o| {
            [
                ("user_id", user.as_str()),
                ("integration", "webhook"),
                ("outcome", o),
            ]
        };
        assert_eq!(
            metric_value(
                &metrics,
                "notimeter_notifications_total",
                &label("delivered")
            ),
            *delivered,
            "{user}"
        );
        assert_eq!(
            metric_value(&metrics, "notimeter_notifications_total", &label("failed")),
            *failed,
            "{user}"
        );
        assert_eq!(
            metric_value(
                &metrics,
                "notimeter_period_notifications",
                &label("delivered")
            ),
            *delivered,
            "{user}"
        );
        let row = usage["usage"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["user_id"] == json!(user))
            .unwrap();
        assert_eq!(
            (
                row["delivered"].as_f64().unwrap(),
                row["failed"].as_f64().unwrap()
            ),
            (*delivered, *failed)
        );
    }
    app.stop().await;
}

/// /metrics after a retried delivery, a duplicate and an unattributed alert,
/// so that every family has samples; the app is still running.
async fn metrics_after_traffic(backend: &Backend) -> (TestApp, String) {
    let app = spawn_app(backend).await;
    let sink = Sink::start().await;
    sink.script("/u1", [Reply::new(503, "later")]);
    app.add_webhook("u1", "a", &sink.url("/u1")).await;
    let p = payload(
        "default",
        "g",
        vec![alert("high_cpu", Some("u1"), "f1"), alert("y", None, "f2")],
    );
    app.post_alerts(&p).await;
    app.post_alerts(&p).await;
    sink.wait_for("/u1", 2).await;
    app.wait_idle().await;
    let text = app.metrics().await;
    (app, text)
}

async fn metrics_families_are_exported(backend: Backend) {
    let (app, text) = metrics_after_traffic(&backend).await;
    for name in [
        "notimeter_notifications_total",
        "notimeter_alerts_received_total",
        "notimeter_delivery_attempts_total",
        "notimeter_delivery_latency_seconds",
        "notimeter_webhook_requests_total",
        "notimeter_duplicates_total",
        "notimeter_outbox_pending",
        "notimeter_period_notifications",
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} missing from /metrics"
        );
    }
    app.stop().await;
}

async fn metrics_pass_promtool(backend: Backend) {
    require("promtool", "prometheus");
    let (app, text) = metrics_after_traffic(&backend).await;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    app.stop().await;
}

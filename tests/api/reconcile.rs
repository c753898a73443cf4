//! Reconciliation with a real Alertmanager 0.25 HA pair: in steady state what
//! the Alertmanagers say they sent to notimeter is what it received (drift
//! 0); while notimeter is down they keep trying, and once it is back the
//! drift is exactly the requests they failed to deliver.

use std::time::Duration;

use notimeter::clock::now_ms;
use notimeter::store::{self, AlertmanagerReading};
use serde_json::{json, Value};

use crate::helpers::*;
use crate::on_both_backends;

on_both_backends!(needs alertmanager: drift_is_zero_in_steady_state_and_shows_an_outage);
on_both_backends!(alertmanager_restarts_and_stale_readings_are_counted_once);

const USERS: [&str; 4] = ["u1", "u2", "u3", "u4"];

/// Alertmanager's counters of webhook requests (all, failed) summed over `ams`.
async fn am_requests(ams: &[&Alertmanager]) -> (f64, f64) {
    let mut total = (0.0, 0.0);
    for am in ams {
        let m = am.metrics().await;
        let webhook = [("integration", "webhook")];
        total.0 += metric_value(&m, "alertmanager_notification_requests_total", &webhook);
        total.1 += metric_value(
            &m,
            "alertmanager_notification_requests_failed_total",
            &webhook,
        );
    }
    total
}

fn alerts(name: &str) -> Value {
    Value::Array(
        USERS
            .iter()
            .map(|u| json!({"labels": {"alertname": name, "user_id": u}, "annotations": {"description": format!("{name} for {u}")}}))
            .collect(),
    )
}

/// notimeter's reconcile gauges: (sum of the Alertmanagers', received, drift).
async fn reconciled(app: &TestApp, ams: &[&Alertmanager]) -> (f64, f64, f64) {
    let m = app.metrics().await;
    let sent = ams
        .iter()
        .map(|am| {
            metric_value(
                &m,
                "notimeter_reconcile_alertmanager_requests",
                &[("alertmanager", am.url.as_str())],
            )
        })
        .sum();
    (
        sent,
        metric_value(&m, "notimeter_reconcile_received_requests", &[]),
        metric_value(&m, "notimeter_reconcile_drift_requests", &[]),
    )
}

async fn drift_is_zero_in_steady_state_and_shows_an_outage(backend: Backend) {
    require("prometheus-alertmanager", "prometheus-alertmanager");
    let ports = [free_port(), free_port()];
    let am_urls: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    let app = spawn_app_with(&backend, |s| {
        s.reconcile.alertmanager_urls = am_urls.clone();
        s.reconcile.interval = Duration::from_millis(200);
    })
    .await;
    let sink = Sink::start().await;
    for u in USERS {
        app.add_webhook(u, "hook", &sink.url(&format!("/{u}")))
            .await;
    }
    let config = format!(
        "route:\n  receiver: notimeter\n  group_by: [user_id, alertname]\n  group_wait: 0s\n  group_interval: 1h\n  repeat_interval: 1h\n\
         receivers:\n  - name: notimeter\n    webhook_configs:\n      - url: {}\n        send_resolved: false\n        http_config:\n          authorization:\n            credentials: {INGEST_TOKEN}\n",
        app.url("/v1/alertmanager")
    );
    let dir = tempfile::tempdir().unwrap();
    let config_file = dir.path().join("am.yml");
    std::fs::write(&config_file, config).unwrap();
    let am1 = Alertmanager::start(&config_file, &dir.path().join("am1"), ports[0], Some(&[]));
    let peer = [am1.cluster.clone().unwrap()];
    let am2 = Alertmanager::start(&config_file, &dir.path().join("am2"), ports[1], Some(&peer));
    let ams = [&am1, &am2];
    am1.ready().await;
    am2.ready().await;
    // The count begins once both Alertmanagers have answered.
    eventually("the reconciliation to begin", || async {
        app.metrics().await.contains(&format!(
            "notimeter_reconcile_alertmanager_requests{{alertmanager=\"{}\"}}",
            am2.url
        ))
    })
    .await;
    let (base_requests, base_failed) = am_requests(&ams).await;

    // Steady state: Prometheus posts to both; the pair sends each group once.
    for am in ams {
        am.post_alerts(&alerts("cpu")).await;
    }
    for u in USERS {
        sink.wait_for(&format!("/{u}"), 1).await;
    }
    eventually("drift 0 with every request counted", || async {
        let (sent, received, drift) = reconciled(&app, &ams).await;
        let (requests, _) = am_requests(&ams).await;
        sent == requests - base_requests && received == sent && drift == 0.0 && sent >= 4.0
    })
    .await;
    let (before, _, drift_before) = reconciled(&app, &ams).await;
    println!("steady state: {before} requests sent, drift {drift_before}");

    // notimeter goes down; Alertmanager keeps trying to deliver new alerts.
    let addr = app.addr;
    let mut stopped = app.stop_keeping_data().await;
    for am in ams {
        am.post_alerts(&alerts("disk")).await;
    }
    eventually("Alertmanager to fail some requests", || async {
        am_requests(&ams).await.1 - base_failed >= 3.0
    })
    .await;
    // Back on the address Alertmanager posts to.
    stopped.settings.listen = addr;
    let app = stopped.start().await;
    for u in USERS {
        sink.wait_for(&format!("/{u}"), 2).await;
    }
    // Once Alertmanager has stopped retrying, the drift is what it failed
    // to deliver: every failed request never reached notimeter.
    eventually("drift to equal Alertmanager's failed requests", || async {
        let (sent, _, drift) = reconciled(&app, &ams).await;
        let (requests, failed) = am_requests(&ams).await;
        sent == requests - base_requests && drift == failed - base_failed && drift >= 3.0
    })
    .await;
    let (_, _, drift) = reconciled(&app, &ams).await;
    println!("after the outage: drift {drift}");
    // The finance page shows it too (read from the store by another path).
    eventually("the finance page to show the drift", || async {
        let page = app.get_text("/", FINANCE_TOKEN).await;
        page.contains(&format!("{drift} requests lost"))
    })
    .await;
    app.stop().await;
}

/// The stored count follows an Alertmanager's counters through a restart
/// (counters back to zero, another start time), ignores a stale reading (a
/// replica's older scrape stored after a newer one), and two replicas
/// reading at once add each request once.
async fn alertmanager_restarts_and_stale_readings_are_counted_once(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database(&backend, dir.path()).await;
    let store = store::connect(&db.url).await.unwrap();
    store.migrate(now_ms()).await.unwrap();
    let reading = |start_time, requests, failed| AlertmanagerReading {
        url: "http://am".into(),
        start_time,
        requests,
        failed,
    };
    let sent = || async { store.reconciliation().await.unwrap().unwrap().alertmanagers[0].clone() };
    assert!(store
        .begin_reconciliation(vec![reading(1, 100, 10)], now_ms())
        .await
        .unwrap());
    // Another replica beginning the same count joins it.
    assert!(!store
        .begin_reconciliation(vec![reading(1, 101, 10)], now_ms())
        .await
        .unwrap());

    store
        .observe_alertmanager(&reading(1, 105, 12), now_ms())
        .await
        .unwrap();
    assert_eq!((sent().await.requests, sent().await.failed), (5, 2));
    store
        .observe_alertmanager(&reading(1, 103, 11), now_ms())
        .await
        .unwrap();
    assert_eq!(
        (sent().await.requests, sent().await.failed),
        (5, 2),
        "a stale reading adds nothing"
    );
    // Restarted: its counters start again from zero.
    store
        .observe_alertmanager(&reading(2, 4, 1), now_ms())
        .await
        .unwrap();
    assert_eq!((sent().await.requests, sent().await.failed), (9, 3));
    // A replica's reading of the process before the restart, stored late:
    // nothing (it is neither a restart nor new).
    store
        .observe_alertmanager(&reading(1, 120, 12), now_ms())
        .await
        .unwrap();
    assert_eq!(
        (sent().await.requests, sent().await.failed),
        (9, 3),
        "a stale incarnation adds nothing"
    );
    // Two replicas storing the same reading at once count it once.
    let r = reading(2, 10, 1);
    let (a, b) = tokio::join!(
        store.observe_alertmanager(&r, now_ms()),
        store.observe_alertmanager(&r, now_ms())
    );
    a.unwrap();
    b.unwrap();
    assert_eq!(sent().await.requests, 15);
    store.add_received(12).await.unwrap();
    store.add_received(1).await.unwrap();
    let count = store.reconciliation().await.unwrap().unwrap();
    assert_eq!((count.sent(), count.received, count.drift()), (15, 13, 2));

    // Another set of Alertmanagers: the count begins again.
    let other = AlertmanagerReading {
        url: "http://am2".into(),
        ..reading(7, 50, 0)
    };
    assert!(store
        .begin_reconciliation(vec![other], now_ms())
        .await
        .unwrap());
    let count = store.reconciliation().await.unwrap().unwrap();
    assert_eq!(
        (count.urls.as_str(), count.sent(), count.received),
        ("http://am2", 0, 0)
    );
}

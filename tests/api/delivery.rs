//! Delivery: retries, permanent failures, the Slack message, counting once.

use serde_json::json;

use crate::helpers::*;
use crate::on_both_backends;

on_both_backends!(
    server_errors_are_retried_then_counted_once,
    client_error_fails_once_with_reason,
    retry_after_is_honoured,
    slack_message_like_alertmanager,
    slack_ok_false_is_a_permanent_failure,
    resolved_alerts_follow_send_resolved,
    drained_on_demand_sent_and_counted_as_by_the_workers,
);

/// With the background workers off, nothing is sent until the test drains
/// the outbox; a drain sends, records and counts what is due, and a retry
/// is due once the clock has passed its backoff.
async fn drained_on_demand_sent_and_counted_as_by_the_workers(backend: Backend) {
    let app = spawn_app_on_demand(&backend, |s| {
        // Longer than this test takes, so that only the clock makes it due.
        s.dispatch.min_backoff = std::time::Duration::from_secs(60);
        s.dispatch.max_backoff = std::time::Duration::from_secs(60);
    })
    .await;
    let sink = Sink::start().await;
    sink.script("/u2", [Reply::new(500, "boom")]);
    app.add_webhook("u1", "hook", &sink.url("/u1")).await;
    app.add_webhook("u2", "hook", &sink.url("/u2")).await;
    let alerts = vec![
        alert("high_cpu", Some("u1"), "f1"),
        alert("high_cpu", Some("u2"), "f2"),
    ];
    assert_eq!(
        app.post_alerts(&payload("default", "g", alerts))
            .await
            .status(),
        200
    );
    assert!(sink.received().is_empty(), "nothing sent before the drain");

    assert_eq!(app.drain_outbox().await, 2);
    assert_eq!(sink.received_on("/u1").len(), 1);
    assert_eq!(sink.received_on("/u2").len(), 1, "failed, to be retried");
    assert_eq!(app.notifications("u1", "webhook", "delivered").await, 1.0);
    assert_eq!(app.drain_outbox().await, 0, "the retry is not due yet");

    app.clock.advance(app.settings.dispatch.max_backoff);
    assert_eq!(app.drain_outbox().await, 1, "the retry");
    assert_eq!(sink.received_on("/u2").len(), 2);
    assert_eq!(app.notifications("u2", "webhook", "delivered").await, 1.0);
    assert_eq!(app.metric("notimeter_outbox_pending", &[]).await, 0.0);
    app.stop().await;
}

async fn server_errors_are_retried_then_counted_once(backend: Backend) {
    let app = spawn_app(&backend).await;
    let sink = Sink::start().await;
    sink.script("/u1", [Reply::new(500, "boom"), Reply::new(500, "boom")]);
    app.add_webhook("u1", "hook", &sink.url("/u1")).await;
    app.post_alerts(&payload(
        "default",
        "g",
        vec![alert("high_cpu", Some("u1"), "f1")],
    ))
    .await;

    sink.wait_for("/u1", 3).await;
    app.wait_idle().await;
    assert_eq!(
        sink.received_on("/u1").len(),
        3,
        "two failures, then one success"
    );
    let m = app.metrics().await;
    let delivered = [
        ("user_id", "u1"),
        ("integration", "webhook"),
        ("outcome", "delivered"),
    ];
    assert_eq!(
        metric_value(&m, "notimeter_notifications_total", &delivered),
        1.0
    );
    assert_eq!(
        metric_value(
            &m,
            "notimeter_notifications_total",
            &[
                ("user_id", "u1"),
                ("integration", "webhook"),
                ("outcome", "failed")
            ]
        ),
        0.0
    );
    assert_eq!(
        metric_value(
            &m,
            "notimeter_delivery_attempts_total",
            &[("integration", "webhook"), ("result", "serverError")]
        ),
        2.0
    );
    assert_eq!(
        metric_value(
            &m,
            "notimeter_delivery_attempts_total",
            &[("integration", "webhook"), ("result", "success")]
        ),
        1.0
    );
    let usage = app.get_json("/v1/usage", FINANCE_TOKEN).await;
    assert_eq!(
        usage["usage"],
        json!([{"user_id": "u1", "integration": "webhook", "delivered": 1, "failed": 0, "segments": 0, "units": 1, "unit_price": "0", "amount": "0"}])
    );
    app.stop().await;
}

async fn client_error_fails_once_with_reason(backend: Backend) {
    let app = spawn_app(&backend).await;
    let sink = Sink::start().await;
    sink.script("/gone", [Reply::new(404, "no such hook")]);
    app.add_webhook("u1", "hook", &sink.url("/gone")).await;
    app.post_alerts(&payload(
        "default",
        "g",
        vec![alert("high_cpu", Some("u1"), "f1")],
    ))
    .await;

    sink.wait_for("/gone", 1).await;
    app.wait_idle().await;
    assert_eq!(sink.received_on("/gone").len(), 1, "a 404 is not retried");
    let m = app.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "notimeter_notifications_total",
            &[
                ("user_id", "u1"),
                ("integration", "webhook"),
                ("outcome", "failed")
            ]
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &m,
            "notimeter_delivery_attempts_total",
            &[("integration", "webhook"), ("result", "clientError")]
        ),
        1.0
    );

    let row: (String, i64, String) = query_row(&app.database_url, "SELECT m.last_reason, a.status_code, a.result FROM messages m JOIN attempts a ON a.message_id = m.id").await;
    assert_eq!(
        row,
        ("clientError".to_owned(), 404, "clientError".to_owned())
    );
    app.stop().await;
}

async fn retry_after_is_honoured(backend: Backend) {
    let app = spawn_app(&backend).await;
    let sink = Sink::start().await;
    sink.script(
        "/u1",
        [Reply::new(429, "slow down").header("retry-after", "1")],
    );
    app.add_webhook("u1", "hook", &sink.url("/u1")).await;
    app.post_alerts(&payload(
        "default",
        "g",
        vec![alert("high_cpu", Some("u1"), "f1")],
    ))
    .await;

    let first = sink.wait_for("/u1", 1).await;
    let t0 = std::time::Instant::now();
    sink.wait_for("/u1", 2).await;
    let waited = t0.elapsed();
    let _ = first;
    assert!(
        waited >= std::time::Duration::from_millis(950),
        "retried after {waited:?}, before the 1 s hint"
    );
    app.wait_idle().await;
    assert_eq!(
        app.metric(
            "notimeter_delivery_attempts_total",
            &[("integration", "webhook"), ("result", "rateLimited")]
        )
        .await,
        1.0
    );
    assert_eq!(
        app.metric(
            "notimeter_notifications_total",
            &[
                ("user_id", "u1"),
                ("integration", "webhook"),
                ("outcome", "delivered")
            ]
        )
        .await,
        1.0
    );
    app.stop().await;
}

async fn slack_message_like_alertmanager(backend: Backend) {
    let app = spawn_app(&backend).await;
    let slack = Sink::start().await;
    let r = app
        .put_channel("u1", "slack", json!({
            "type": "slack",
            "settings": {"api_url": slack.url("/services/T000/B000/XXXX"), "channel": "#ops", "username": "notimeter"},
            "matchers": ["severity=~\"critical|warning\""]
        }))
        .await;
    assert_eq!(r.status(), 201);
    let mut info = alert("low_prio", Some("u1"), "f3");
    info["labels"]["severity"] = json!("info");
    let alerts = vec![
        alert("high_cpu", Some("u1"), "f1"),
        alert("high_cpu", Some("u1"), "f2"),
        info,
    ];
    let mut p = payload("default", "g", alerts);
    p["groupLabels"] = json!({"alertname": "high_cpu"});
    app.post_alerts(&p).await;

    let got = slack.wait_for("/services/T000/B000/XXXX", 1).await;
    app.wait_idle().await;
    let body = got[0].json();
    assert_eq!(
        body,
        json!({
            "channel": "#ops",
            "username": "notimeter",
            "attachments": [{
                "title": "[FIRING:2] high_cpu (db-1:9100 critical u1)",
                "title_link": "http://alertmanager:9093/#/alerts?receiver=default",
                "text": "high_cpu on db-1\nhigh_cpu on db-1\n",
                "fallback": "[FIRING:2] high_cpu (db-1:9100 critical u1) | http://alertmanager:9093/#/alerts?receiver=default",
                "color": "danger",
                "mrkdwn_in": ["fallback", "pretext", "text"]
            }]
        })
    );
    // The info alert matched no channel: kept as undeliverable, not sent.
    assert_eq!(
        app.metric(
            "notimeter_alerts_undeliverable_total",
            &[("reason", "no_matching_channel")]
        )
        .await,
        1.0
    );
    app.stop().await;
}

async fn slack_ok_false_is_a_permanent_failure(backend: Backend) {
    let app = spawn_app(&backend).await;
    let slack = Sink::start().await;
    slack.script(
        "/hook",
        [Reply::new(
            200,
            r#"{"ok":false,"error":"channel_not_found"}"#,
        )],
    );
    app.put_channel(
        "u1",
        "slack",
        json!({"type": "slack", "settings": {"api_url": slack.url("/hook")}}),
    )
    .await;
    app.post_alerts(&payload(
        "default",
        "g",
        vec![alert("high_cpu", Some("u1"), "f1")],
    ))
    .await;
    slack.wait_for("/hook", 1).await;
    app.wait_idle().await;
    assert_eq!(slack.received_on("/hook").len(), 1);
    assert_eq!(
        app.metric(
            "notimeter_notifications_total",
            &[
                ("user_id", "u1"),
                ("integration", "slack"),
                ("outcome", "failed")
            ]
        )
        .await,
        1.0
    );
    app.stop().await;
}

async fn resolved_alerts_follow_send_resolved(backend: Backend) {
    let app = spawn_app(&backend).await;
    let sink = Sink::start().await;
    app.put_channel(
        "u1",
        "quiet",
        json!({"type": "webhook", "settings": {"url": sink.url("/quiet")}, "send_resolved": false}),
    )
    .await;
    app.put_channel(
        "u1",
        "loud",
        json!({"type": "webhook", "settings": {"url": sink.url("/loud")}}),
    )
    .await;
    let mut resolved = alert("high_cpu", Some("u1"), "f1");
    resolved["status"] = json!("resolved");
    let mut p = payload("default", "g", vec![resolved]);
    p["status"] = json!("resolved");
    app.post_alerts(&p).await;
    let loud = sink.wait_for("/loud", 1).await;
    app.wait_idle().await;
    assert_eq!(loud[0].json()["status"], "resolved");
    assert!(
        sink.received_on("/quiet").is_empty(),
        "send_resolved=false gets no all-resolved notification"
    );
    app.stop().await;
}

on_both_backends!(
    two_replicas_fed_by_an_ha_pair_count_each_message_once,
    an_ha_pair_posting_to_one_instance_counts_each_message_once,
);

/// Users and notifications of the HA-pair tests.
const HA_USERS: usize = 4;
const HA_NOTIFICATIONS: usize = 60;

/// Posts `HA_NOTIFICATIONS` notifications of one alert per user (each its
/// own group) to both `targets` at once, as the two members of an
/// Alertmanager HA pair do; answers how many posts were accepted (the
/// others must be duplicates).
async fn post_as_an_ha_pair(http: &reqwest::Client, targets: [String; 2]) -> usize {
    let mut posts = tokio::task::JoinSet::new();
    for n in 0..HA_NOTIFICATIONS {
        let alerts = (0..HA_USERS)
            .map(|u| alert("high_cpu", Some(&format!("u{u}")), &format!("f{n}-{u}")))
            .collect();
        let p = payload("default", &format!("group-{n}"), alerts);
        for target in &targets {
            let (http, p, target) = (http.clone(), p.clone(), target.clone());
            posts.spawn(async move {
                let r = http
                    .post(target)
                    .bearer_auth(INGEST_TOKEN)
                    .json(&p)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                let status = r.json::<serde_json::Value>().await.unwrap()["status"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                assert!(status == "accepted" || status == "duplicate", "{status}");
                status
            });
        }
    }
    let mut accepted = 0;
    while let Some(status) = posts.join_next().await {
        accepted += usize::from(status.unwrap() == "accepted");
    }
    accepted
}

/// The sink got each user's message of each notification, once.
fn each_delivered_once(received: &[Received]) {
    assert_eq!(received.len(), HA_USERS * HA_NOTIFICATIONS);
    let mut seen = std::collections::HashSet::new();
    for r in received {
        let p = r.json();
        assert!(
            seen.insert((p["groupKey"].to_string(), r.path.clone())),
            "delivered twice: {} {}",
            p["groupKey"],
            r.path
        );
    }
}

/// A user's delivered webhook messages in `metrics` (one process's
/// figures), by the metric `name`.
fn delivered_to(metrics: &str, name: &str, user: &str) -> f64 {
    let label = [
        ("user_id", user),
        ("integration", "webhook"),
        ("outcome", "delivered"),
    ];
    metric_value(metrics, name, &label)
}

/// Every HA-pair user's delivered messages in `metrics`, counted.
fn delivered_to_all(metrics: &str) -> f64 {
    (0..HA_USERS)
        .map(|u| delivered_to(metrics, "notimeter_notifications_total", &format!("u{u}")))
        .sum()
}

/// Two notimeter processes on one database, each notification posted to both
/// (as the two members of an Alertmanager HA pair do): every message is
/// delivered once and counted once across the replicas.
async fn two_replicas_fed_by_an_ha_pair_count_each_message_once(backend: Backend) {
    let a = spawn_app(&backend).await;
    let b = start(a.settings.clone(), a.dir.clone()).await;
    let sink = Sink::start().await;
    let users = HA_USERS;
    for u in 0..users {
        a.add_webhook(&format!("u{u}"), "hook", &sink.url(&format!("/u{u}")))
            .await;
        b.wait_routes(&format!("u{u}"), "hook").await;
    }
    let notifications = HA_NOTIFICATIONS;
    let targets = [a.url("/v1/alertmanager"), b.url("/v1/alertmanager")];
    assert_eq!(
        post_as_an_ha_pair(&a.http, targets).await,
        notifications,
        "each notification accepted by exactly one replica"
    );

    let expected = notifications * users;
    eventually("every message delivered", || async {
        sink.received().len() >= expected
    })
    .await;
    a.wait_idle().await;
    // Both replicas idle: neither finds anything left to take, and each has
    // counted what it recorded (its counters follow the store's commit).
    assert_eq!(a.drain_outbox().await, 0, "nothing left for replica a");
    assert_eq!(b.drain_outbox().await, 0, "nothing left for replica b");
    eventually("both replicas to count every delivery", || async {
        delivered_to_all(&a.metrics().await) + delivered_to_all(&b.metrics().await)
            >= expected as f64
    })
    .await;
    each_delivered_once(&sink.received());
    let (ma, mb) = (a.metrics().await, b.metrics().await);
    for u in 0..users {
        assert_eq!(
            delivered_to(&ma, "notimeter_period_notifications", &format!("u{u}")),
            notifications as f64
        );
    }
    assert_eq!(
        delivered_to_all(&ma) + delivered_to_all(&mb),
        expected as f64,
        "the replicas' counters add up to the messages, none twice"
    );
    let dupes = metric_value(&ma, "notimeter_duplicates_total", &[])
        + metric_value(&mb, "notimeter_duplicates_total", &[]);
    assert_eq!(dupes, notifications as f64);
    b.stop().await;
    a.stop().await;
}

/// Both members of an Alertmanager HA pair posting each notification to one
/// instance at once: each is accepted once, delivered once and counted once.
/// On PostgreSQL the process has two writers, and the two copies of a
/// payload may go to both (whose group locks then take them in turn).
async fn an_ha_pair_posting_to_one_instance_counts_each_message_once(backend: Backend) {
    let app = spawn_app(&backend).await;
    let sink = Sink::start().await;
    for u in 0..HA_USERS {
        app.add_webhook(&format!("u{u}"), "hook", &sink.url(&format!("/u{u}")))
            .await;
    }
    let target = app.url("/v1/alertmanager");
    assert_eq!(
        post_as_an_ha_pair(&app.http, [target.clone(), target]).await,
        HA_NOTIFICATIONS,
        "each notification accepted once"
    );
    eventually("every message delivered", || async {
        sink.received().len() >= HA_USERS * HA_NOTIFICATIONS
    })
    .await;
    app.wait_idle().await;
    assert_eq!(app.drain_outbox().await, 0, "nothing left to send");
    each_delivered_once(&sink.received());
    eventually("every delivery counted", || async {
        delivered_to_all(&app.metrics().await) >= (HA_USERS * HA_NOTIFICATIONS) as f64
    })
    .await;
    let metrics = app.metrics().await;
    for u in 0..HA_USERS {
        let user = format!("u{u}");
        for name in [
            "notimeter_notifications_total",
            "notimeter_period_notifications",
        ] {
            assert_eq!(
                delivered_to(&metrics, name, &user),
                HA_NOTIFICATIONS as f64,
                "{name} {user}"
            );
        }
    }
    assert_eq!(
        metric_value(&metrics, "notimeter_duplicates_total", &[]),
        HA_NOTIFICATIONS as f64
    );
    app.stop().await;
}

//! Ingest: attribution, isolation between users, dedupe, bad input.

use serde_json::json;

use crate::helpers::*;
use crate::on_both_backends;

on_both_backends!(
    catch_all_receiver_keeps_users_apart,
    per_channel_receiver_keeps_users_apart,
    duplicate_within_window_counted_once,
    unattributed_and_bad_alerts_lose_nothing,
    bad_requests_are_refused_clearly,
    store_unavailable_is_503_and_nothing_half_written,
);

async fn catch_all_receiver_keeps_users_apart(backend: Backend) {
    let app = spawn_app(&backend).await;
    let sink = Sink::start().await;
    app.add_webhook("u1", "hook", &sink.url("/u1")).await;
    app.add_webhook("u2", "hook", &sink.url("/u2")).await;

    let alerts = vec![
        alert("high_cpu", Some("u1"), "f1"),
        alert("high_cpu", Some("u2"), "f2"),
        alert("disk_full", Some("u1"), "f3"),
    ];
    let r = app
        .post_alerts(&payload("default", "{}:{alertname=\"high_cpu\"}", alerts))
        .await;
    assert_eq!(r.status(), 200);

    let u1 = sink.wait_for("/u1", 1).await;
    let u2 = sink.wait_for("/u2", 1).await;
    app.wait_idle().await;
    assert_eq!(u1.len(), 1);
    assert_eq!(u2.len(), 1);
    let u1 = u1[0].json();
    let u2 = u2[0].json();
    let users = |p: &serde_json::Value| -> Vec<String> {
        p["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["labels"]["user_id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(users(&u1), ["u1", "u1"]);
    assert_eq!(users(&u2), ["u2"]);
    assert_eq!(u1["version"], "4");
    assert_eq!(u1["commonLabels"]["user_id"], "u1");
    assert_eq!(u2["alerts"][0]["fingerprint"], "f2");
    assert!(
        !u1.to_string().contains("\"u2\""),
        "u1's message mentions u2: {u1}"
    );
    assert!(
        !u2.to_string().contains("\"u1\""),
        "u2's message mentions u1: {u2}"
    );
    app.stop().await;
}

async fn per_channel_receiver_keeps_users_apart(backend: Backend) {
    let app = spawn_app(&backend).await;
    let sink = Sink::start().await;
    app.add_webhook("team.a", "hook", &sink.url("/a")).await;
    app.add_webhook("u2", "hook", &sink.url("/u2")).await;

    // Alertmanager may deliver the receiver name regex-escaped.
    let alerts = vec![
        alert("high_cpu", Some("team.a"), "f1"),
        alert("high_cpu", Some("u2"), "f2"),
    ];
    let r = app
        .post_alerts(&payload(r"notimeter/team\.a/hook", "g1", alerts))
        .await;
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["messages"], 1);
    assert_eq!(
        body["undeliverable"], 1,
        "u2's alert is kept as undeliverable: {body}"
    );

    let got = sink.wait_for("/a", 1).await;
    app.wait_idle().await;
    let p = got[0].json();
    assert_eq!(p["alerts"].as_array().unwrap().len(), 1);
    assert_eq!(p["alerts"][0]["labels"]["user_id"], "team.a");
    assert!(
        sink.received_on("/u2").is_empty(),
        "u2's channel must not get a message addressed to team.a"
    );
    assert_eq!(
        app.metric(
            "notimeter_alerts_undeliverable_total",
            &[("reason", "user_mismatch")]
        )
        .await,
        1.0
    );
    app.stop().await;
}

async fn duplicate_within_window_counted_once(backend: Backend) {
    let window = std::time::Duration::from_secs(60);
    let app = spawn_app_with(&backend, |s| s.dedupe_window = window).await;
    let sink = Sink::start().await;
    app.add_webhook("u1", "hook", &sink.url("/u1")).await;
    let p = payload("default", "g", vec![alert("high_cpu", Some("u1"), "f1")]);

    assert_eq!(app.post_alerts(&p).await.status(), 200);
    // Alertmanager's retry, or the HA twin, sends the same bytes again.
    let second = app.post_alerts(&p).await;
    assert_eq!(second.status(), 200);
    assert_eq!(
        second.json::<serde_json::Value>().await.unwrap()["status"],
        "duplicate"
    );
    sink.wait_for("/u1", 1).await;
    app.wait_idle().await;
    assert_eq!(sink.received_on("/u1").len(), 1);
    assert_eq!(app.metric("notimeter_duplicates_total", &[]).await, 1.0);
    let delivered = [
        ("user_id", "u1"),
        ("integration", "webhook"),
        ("outcome", "delivered"),
    ];
    assert_eq!(
        app.metric("notimeter_notifications_total", &delivered)
            .await,
        1.0
    );

    // Late in the window (unless this test took ten seconds so far), a
    // repeat is still a duplicate; after the window, the same notification
    // is a legitimate repeat.
    app.clock
        .advance(window - std::time::Duration::from_secs(10));
    let late = app.post_alerts(&p).await;
    assert_eq!(
        late.json::<serde_json::Value>().await.unwrap()["status"],
        "duplicate"
    );
    app.clock.advance(std::time::Duration::from_secs(11));
    let third = app.post_alerts(&p).await;
    assert_eq!(
        third.json::<serde_json::Value>().await.unwrap()["status"],
        "accepted"
    );
    sink.wait_for("/u1", 2).await;
    app.wait_idle().await;
    assert_eq!(sink.received_on("/u1").len(), 2);
    assert_eq!(
        app.metric("notimeter_notifications_total", &delivered)
            .await,
        2.0
    );
    app.stop().await;
}

async fn unattributed_and_bad_alerts_lose_nothing(backend: Backend) {
    let app = spawn_app(&backend).await;
    let sink = Sink::start().await;
    app.add_webhook("u1", "hook", &sink.url("/u1")).await;
    app.add_webhook("_unattributed", "ops", &sink.url("/ops"))
        .await;

    let mut bad_id = alert("bad_id", Some("has space"), "f4");
    bad_id["labels"]["user_id"] = json!("has space");
    let alerts = vec![
        alert("high_cpu", Some("u1"), "f1"),
        alert("no_user", None, "f2"),
        json!({"status": "firing", "labels": "not-a-map", "fingerprint": "f3"}),
        bad_id,
    ];
    let r = app.post_alerts(&payload("default", "g", alerts)).await;
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["alerts"], 4);
    assert_eq!(body["messages"], 2);
    assert_eq!(body["undeliverable"], 1, "{body}");

    let u1 = sink.wait_for("/u1", 1).await;
    let ops = sink.wait_for("/ops", 1).await;
    app.wait_idle().await;
    assert_eq!(u1[0].json()["alerts"].as_array().unwrap().len(), 1);
    let names: Vec<String> = ops[0].json()["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["labels"]["alertname"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        names,
        ["no_user", "bad_id"],
        "alerts without a valid user_id go to _unattributed"
    );
    assert_eq!(
        app.metric(
            "notimeter_alerts_received_total",
            &[("user_id", "_unattributed")]
        )
        .await,
        3.0
    );
    assert_eq!(
        app.metric(
            "notimeter_alerts_undeliverable_total",
            &[("reason", "invalid_alert")]
        )
        .await,
        1.0
    );

    // With no channel for _unattributed, such alerts are recorded, not dropped.
    let r = app
        .post_alerts(&payload(
            "default",
            "g2",
            vec![alert("orphan", Some("nobody"), "f9")],
        ))
        .await;
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["undeliverable"],
        1
    );
    assert_eq!(
        app.metric(
            "notimeter_alerts_undeliverable_total",
            &[("reason", "no_channel")]
        )
        .await,
        1.0
    );
    app.stop().await;
}

async fn bad_requests_are_refused_clearly(backend: Backend) {
    let app = spawn_app_with(&backend, |s| s.max_request_bytes = 64 * 1024).await;
    let url = app.url("/v1/alertmanager");

    let r = app
        .http
        .post(&url)
        .bearer_auth(INGEST_TOKEN)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: serde_json::Value = r.json().await.unwrap();
    assert!(
        e["error"].as_str().unwrap().contains("malformed JSON"),
        "{e}"
    );

    let r = app
        .http
        .post(&url)
        .bearer_auth(INGEST_TOKEN)
        .json(&json!({"version": "4", "alerts": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert!(r.json::<serde_json::Value>().await.unwrap()["error"]
        .as_str()
        .unwrap()
        .contains("receiver"));

    let p = payload("default", "g", vec![alert("a", Some("u1"), "f")]);
    let r = app
        .http
        .post(&url)
        .bearer_auth("wrong")
        .json(&p)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = app.http.post(&url).json(&p).send().await.unwrap();
    assert_eq!(r.status(), 401);

    let many: Vec<_> = (0..400)
        .map(|i| alert("big", Some("u1"), &format!("f{i}")))
        .collect();
    let r = app.post_alerts(&payload("default", "g", many)).await;
    assert_eq!(r.status(), 413);

    assert_eq!(
        app.metric("notimeter_webhook_requests_total", &[("code", "400")])
            .await,
        1.0
    );
    assert_eq!(
        app.metric("notimeter_webhook_requests_total", &[("code", "401")])
            .await,
        2.0
    );
    assert_eq!(
        app.metric("notimeter_webhook_requests_total", &[("code", "413")])
            .await,
        1.0
    );
    app.stop().await;
}

async fn store_unavailable_is_503_and_nothing_half_written(backend: Backend) {
    let app = spawn_app(&backend).await;
    let sink = Sink::start().await;
    app.add_webhook("u1", "hook", &sink.url("/u1")).await;
    let p = payload("default", "g", vec![alert("high_cpu", Some("u1"), "f1")]);

    // Take the outbox away under the running service: the dedupe record goes
    // in, the message insert fails, and the whole transaction must roll back.
    execute(
        &app.database_url,
        "ALTER TABLE messages RENAME TO messages_away",
    )
    .await;
    let r = app.post_alerts(&p).await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert!(r.json::<serde_json::Value>().await.unwrap()["error"]
        .as_str()
        .unwrap()
        .contains("try again"));
    execute(
        &app.database_url,
        "ALTER TABLE messages_away RENAME TO messages",
    )
    .await;

    // Alertmanager retries the same notification: it must not be a "duplicate".
    let r = app.post_alerts(&p).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["status"],
        "accepted"
    );
    sink.wait_for("/u1", 1).await;
    app.wait_idle().await;
    assert_eq!(sink.received_on("/u1").len(), 1);
    app.stop().await;
}

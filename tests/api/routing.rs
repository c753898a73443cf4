//! The routing index: a channel saved or deleted through one replica routes
//! on another within 2 s (each follows the channel log), and ingest routes
//! from memory.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::*;
use crate::on_both_backends;

on_both_backends!(a_change_through_one_replica_routes_on_the_other_within_2_s);

/// Posts an alert of `u1` with `severity` to `app` until its answer says
/// `messages` message(s) were made, or 2 s have passed since `since`.
async fn routes_within_2_s(app: &TestApp, severity: &str, messages: u64, since: Instant) {
    let mut n = 0;
    loop {
        n += 1;
        let mut a = alert(
            "high_cpu",
            Some("u1"),
            &format!("{severity}-{messages}-{n}"),
        );
        a["labels"]["severity"] = json!(severity);
        let r = app
            .post_alerts(&payload(
                "default",
                &format!("g-{severity}-{messages}-{n}"),
                vec![a],
            ))
            .await;
        assert_eq!(r.status(), 200);
        let answer: Value = r.json().await.unwrap();
        if answer["messages"] == json!(messages) {
            return;
        }
        assert!(
            since.elapsed() < Duration::from_secs(2),
            "{severity}: still {answer} two seconds after the change"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_change_through_one_replica_routes_on_the_other_within_2_s(backend: Backend) {
    let a = spawn_app(&backend).await;
    let b = a.replica().await;
    let sink = Sink::start().await;
    let channel = |severity: &str| {
        json!({"type": "webhook", "settings": {"url": sink.url("/u1")},
               "matchers": [format!("severity=\"{severity}\"")]})
    };
    // Created on a: routes on b.
    let since = Instant::now();
    assert_eq!(
        a.put_channel("u1", "hook", channel("critical"))
            .await
            .status(),
        201
    );
    routes_within_2_s(&b, "critical", 1, since).await;
    // Its matchers changed on a: b routes by the new ones.
    let since = Instant::now();
    assert_eq!(
        a.put_channel("u1", "hook", channel("warning"))
            .await
            .status(),
        200
    );
    routes_within_2_s(&b, "warning", 1, since).await;
    routes_within_2_s(&b, "critical", 0, since).await;
    // Deleted on a: b routes nothing to it.
    let since = Instant::now();
    let r = a
        .http
        .delete(a.url("/v1/users/u1/channels/hook"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    routes_within_2_s(&b, "warning", 0, since).await;
    // What b routed was delivered (by either replica's workers).
    eventually("the routed messages delivered", || async {
        sink.received().len() >= 3
    })
    .await;
    b.stop().await;
    a.stop().await;
}

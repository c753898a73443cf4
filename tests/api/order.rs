//! Delivery order per (channel, Alertmanager groupKey): a group's messages go
//! out in the order they were accepted, an older message still waiting when a
//! newer one is queued is superseded (final, not sent, not billed), and a
//! channel never ends on a state older than the last one Alertmanager sent.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;
use crate::on_both_backends;

on_both_backends!(
    resolution_after_a_rate_limit_supersedes_the_waiting_firing,
    resolution_during_the_firing_send_supersedes_its_retry,
    a_retrying_group_does_not_hold_back_other_groups,
    replicas_keep_each_groups_order,
);

/// DiskFull firing, or resolved, for group `group`.
fn disk_full(group: &str, status: &str) -> Value {
    let mut a = alert("DiskFull", Some("u1"), "fp-disk");
    a["status"] = json!(status);
    if status == "resolved" {
        a["endsAt"] = json!("2026-11-24T10:05:00.000Z");
    }
    let mut p = payload("default", group, vec![a]);
    p["status"] = json!(status);
    p["groupLabels"] = json!({"alertname": "DiskFull"});
    p
}

async fn slack_channel(app: &TestApp, slack: &Sink) {
    let r = app
        .put_channel(
            "u1",
            "slack",
            json!({"type": "slack", "settings": {"api_url": slack.url("/hook")}}),
        )
        .await;
    assert_eq!(r.status(), 201);
}

fn titles(received: &[Received]) -> Vec<String> {
    received
        .iter()
        .map(|r| {
            let body = String::from_utf8_lossy(&r.body);
            if body.contains("[RESOLVED]") {
                "RESOLVED".into()
            } else if body.contains("[FIRING:1]") {
                "FIRING".into()
            } else {
                panic!("neither firing nor resolved: {body}")
            }
        })
        .collect()
}

/// Checks the ledger: one delivered message billed, the superseded one listed
/// in items.csv but not billed.
async fn billed_once_superseded_listed(app: &TestApp) {
    let usage = app.get_json("/v1/usage", FINANCE_TOKEN).await;
    let open = usage["period_id"].as_str().unwrap().to_owned();
    let rows = usage["usage"].to_string();
    assert!(rows.contains("\"delivered\":1"), "{usage}");
    assert!(rows.contains("\"failed\":0"), "{usage}");
    let items = app
        .get_text(
            &format!("/v1/ledger/periods/{open}/items.csv"),
            FINANCE_TOKEN,
        )
        .await;
    let mut outcomes: Vec<String> = csv::Reader::from_reader(items.as_bytes())
        .deserialize::<std::collections::HashMap<String, String>>()
        .map(|r| r.unwrap()["outcome"].clone())
        .collect();
    outcomes.sort();
    assert_eq!(outcomes, ["delivered", "superseded"], "{items}");
}

/// Further ahead than any hold or retry in these tests (`retry-after: 1`,
/// the test settings' backoff): moved this far, whatever is still waiting is due.
const PAST_RETRIES: Duration = Duration::from_secs(5);

/// Posts DiskFull firing, then (after `pause`, counted from the firing's
/// first send) its resolution, to a Slack webhook that answers the first send
/// with `first_reply`; the channel must end on RESOLVED, the firing superseded.
async fn firing_then_resolved(backend: Backend, first_reply: Reply, pause: Duration) {
    let app = spawn_app(&backend).await;
    let slack = Sink::start().await;
    slack.script("/hook", [first_reply]);
    slack_channel(&app, &slack).await;

    let r = app.post_alerts(&disk_full("g-disk", "firing")).await;
    assert_eq!(r.status(), 200);
    slack.wait_for("/hook", 1).await;
    tokio::time::sleep(pause).await;
    let r = app.post_alerts(&disk_full("g-disk", "resolved")).await;
    assert_eq!(r.status(), 200);
    slack.wait_for("/hook", 2).await;
    app.wait_idle().await;
    // Past the firing's hold and any retry of it: nothing is left to send.
    app.clock.advance(PAST_RETRIES);
    assert_eq!(app.drain_outbox().await, 0, "nothing left to send");
    eventually("the resolution counted", || async {
        app.notifications("u1", "slack", "delivered").await >= 1.0
    })
    .await;

    assert_eq!(titles(&slack.received_on("/hook")), ["FIRING", "RESOLVED"]);
    assert_eq!(app.notifications("u1", "slack", "superseded").await, 1.0);
    assert_eq!(app.notifications("u1", "slack", "delivered").await, 1.0);
    billed_once_superseded_listed(&app).await;
    app.stop().await;
}

/// The user's report: firing gets 429, the resolution comes 0.5 s later while
/// the firing waits out the hold. Alertmanager would never send the firing
/// after the resolution, nor may notimeter.
async fn resolution_after_a_rate_limit_supersedes_the_waiting_firing(backend: Backend) {
    let rate_limited = Reply::new(429, "rate_limited").header("retry-after", "1");
    firing_then_resolved(backend, rate_limited, Duration::from_millis(500)).await;
}

/// The resolution arrives while the firing is being sent; the send then fails
/// (429): instead of retrying, the firing is superseded and the resolution goes.
async fn resolution_during_the_firing_send_supersedes_its_retry(backend: Backend) {
    let slow_rate_limited = Reply::new(429, "rate_limited")
        .header("retry-after", "1")
        .after(Duration::from_millis(800));
    firing_then_resolved(backend, slow_rate_limited, Duration::ZERO).await;
}

/// Group A's message fails and waits for its retry; group B, on the same
/// channel, is delivered meanwhile.
async fn a_retrying_group_does_not_hold_back_other_groups(backend: Backend) {
    let app = spawn_app_with(&backend, |s| {
        s.dispatch.min_backoff = Duration::from_secs(3);
        s.dispatch.max_backoff = Duration::from_secs(3);
    })
    .await;
    let sink = Sink::start().await;
    sink.script("/hook", [Reply::new(500, "boom")]);
    app.add_webhook("u1", "hook", &sink.url("/hook")).await;

    let group = |g: &str| payload("default", g, vec![alert("Busy", Some("u1"), g)]);
    assert_eq!(app.post_alerts(&group("A")).await.status(), 200);
    sink.wait_for("/hook", 1).await;
    assert_eq!(app.post_alerts(&group("B")).await.status(), 200);
    sink.wait_for("/hook", 2).await;
    // A's retry is due only once its backoff has passed on the app's clock.
    app.clock.advance(Duration::from_secs(3));
    let got = sink.wait_for("/hook", 3).await;
    let keys: Vec<String> = got
        .iter()
        .map(|r| r.json()["groupKey"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(keys, ["A", "B", "A"], "B goes while A waits for its retry");
    app.wait_idle().await;
    app.stop().await;
}

/// Two replicas on one database, each group's states posted alternately to
/// either, the receiver slow and rate limiting now and then: every group's
/// sends go in acceptance order and end on the last state posted.
async fn replicas_keep_each_groups_order(backend: Backend) {
    let a = spawn_app(&backend).await;
    let b = a.replica().await;
    let sink = Sink::start().await;
    let replies: Vec<Reply> = (0..40)
        .map(|i| {
            if i % 7 == 3 {
                Reply::new(429, "slow down").header("retry-after", "1")
            } else {
                Reply::new(200, "ok").after(Duration::from_millis(30))
            }
        })
        .collect();
    sink.script("/hook", replies.clone());
    a.add_webhook("u1", "hook", &sink.url("/hook")).await;
    b.wait_routes("u1", "hook").await;

    let groups = 8;
    let states = 4;
    let mut posts = tokio::task::JoinSet::new();
    for g in 0..groups {
        let urls = [a.url("/v1/alertmanager"), b.url("/v1/alertmanager")];
        let http = a.http.clone();
        posts.spawn(async move {
            for s in 0..states {
                let mut al = alert("Flap", Some("u1"), &format!("fp-{g}-{s}"));
                al["labels"]["seq"] = json!(s.to_string());
                let p = payload("default", &format!("group-{g}"), vec![al]);
                let r = http
                    .post(&urls[(g + s) % 2])
                    .bearer_auth(INGEST_TOKEN)
                    .json(&p)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                // A group's next state comes later, not at once (as
                // Alertmanager's group_interval spaces them): a real pause.
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        });
    }
    while let Some(done) = posts.join_next().await {
        done.unwrap();
    }
    a.wait_idle().await;
    b.wait_idle().await;
    // Past every hold and retry, on both replicas: nothing is left to send.
    a.clock.advance(PAST_RETRIES);
    assert_eq!(a.drain_outbox().await, 0, "nothing left for replica a");
    assert_eq!(b.drain_outbox().await, 0, "nothing left for replica b");

    let got = sink.received_on("/hook");
    let mut by_group: std::collections::BTreeMap<String, Vec<(usize, bool)>> = Default::default();
    for (i, r) in got.iter().enumerate() {
        let p = r.json();
        let seq: usize = p["alerts"][0]["labels"]["seq"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let ok = replies.get(i).is_none_or(|reply| reply.status == 200);
        by_group
            .entry(p["groupKey"].as_str().unwrap().to_owned())
            .or_default()
            .push((seq, ok));
    }
    assert_eq!(by_group.len(), groups, "every group was delivered");
    for (group, sends) in &by_group {
        let seqs: Vec<usize> = sends.iter().map(|(s, _)| *s).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] <= w[1]),
            "{group} sent out of order: {sends:?}"
        );
        let delivered: Vec<usize> = sends
            .iter()
            .filter(|(_, ok)| *ok)
            .map(|(s, _)| *s)
            .collect();
        assert_eq!(
            delivered.last(),
            Some(&(states - 1)),
            "{group} must end on its last state: {sends:?}"
        );
        assert!(
            delivered.windows(2).all(|w| w[0] < w[1]),
            "{group} delivered a state twice: {sends:?}"
        );
    }
    b.stop().await;
    a.stop().await;
}

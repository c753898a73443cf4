//! DESIGN.md "More endpoints": the delivery log, the undeliverable list,
//! redelivery and test sends, through the real router, with their roles and
//! paging.

use serde_json::{json, Value};

use crate::helpers::*;
use crate::on_both_backends;

on_both_backends!(
    the_delivery_log_pages_newest_first_with_attempts,
    the_undeliverable_list_filters_by_reason,
    a_failed_message_is_redelivered_as_a_new_one,
    a_test_send_answers_its_outcome_and_is_not_billed,
);

async fn get(app: &TestApp, path: &str, token: &str) -> (u16, Value) {
    let r = app
        .http
        .get(app.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn post(app: &TestApp, path: &str, token: &str) -> (u16, Value) {
    let r = app
        .http
        .post(app.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

fn ids(page: &Value, list: &str, key: &str) -> Vec<i64> {
    page[list]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m[key].as_i64().unwrap())
        .collect()
}

async fn the_delivery_log_pages_newest_first_with_attempts(backend: Backend) {
    let sink = Sink::start().await;
    // The first message fails once (500), then everything is delivered.
    sink.script("/u1", [Reply::new(500, "busy")]);
    let app = spawn_app(&backend).await;
    app.add_webhook("u1", "hook", &sink.url("/u1")).await;
    app.add_webhook("u2", "hook", &sink.url("/u2")).await;
    for g in ["g1", "g2", "g3"] {
        app.post_alerts(&payload("default", g, vec![alert(g, Some("u1"), g)]))
            .await;
    }
    app.post_alerts(&payload("default", "x", vec![alert("x", Some("u2"), "x")]))
        .await;
    sink.wait_for("/u1", 4).await;
    app.wait_idle().await;

    let (status, first) = get(&app, "/v1/users/u1/messages?limit=2", FINANCE_TOKEN).await;
    assert_eq!(status, 200, "{first}");
    let page1 = ids(&first, "messages", "message_id");
    assert_eq!(page1.len(), 2);
    assert!(page1[0] > page1[1], "newest first: {page1:?}");
    let cursor = first["next_cursor"]
        .as_str()
        .expect("a full page has a next cursor");
    let (_, second) = get(
        &app,
        &format!("/v1/users/u1/messages?limit=2&cursor={cursor}"),
        ADMIN_TOKEN,
    )
    .await;
    let page2 = ids(&second, "messages", "message_id");
    assert_eq!(page2.len(), 1);
    assert!(page2[0] < page1[1]);
    assert!(second["next_cursor"].is_null());
    // Only u1's, each with its attempts: the oldest took two.
    let oldest = &second["messages"][0];
    assert_eq!(oldest["state"], "delivered");
    assert_eq!(oldest["alertnames"], "g1");
    let results: Vec<&str> = oldest["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["result"].as_str().unwrap())
        .collect();
    assert_eq!(results, ["serverError", "success"]);
    assert_eq!(oldest["attempts"][0]["status_code"], 500);

    let (_, failed) = get(&app, "/v1/users/u1/messages?state=failed", FINANCE_TOKEN).await;
    assert_eq!(failed["messages"], json!([]));
    let (_, later) = get(
        &app,
        "/v1/users/u1/messages?since=2999-01-01T00:00:00Z",
        FINANCE_TOKEN,
    )
    .await;
    assert_eq!(later["messages"], json!([]));
    for bad in [
        "?limit=0",
        "?limit=x",
        "?state=lost",
        "?since=yesterday",
        "?cursor=abc",
        "?state=failed&state=pending",
    ] {
        let (status, body) = get(&app, &format!("/v1/users/u1/messages{bad}"), FINANCE_TOKEN).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"].as_str().unwrap().starts_with('?'), "{body}");
    }
    let r = app
        .http
        .get(app.url("/v1/users/u1/messages"))
        .bearer_auth(INGEST_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "the ingest token may not read the log");
    app.stop().await;
}

async fn the_undeliverable_list_filters_by_reason(backend: Backend) {
    let app = spawn_app(&backend).await;
    // A receiver naming a channel that does not exist, then no user_id label.
    app.post_alerts(&payload(
        "notimeter/nobody/ghost",
        "a",
        vec![alert("ghost", Some("nobody"), "a")],
    ))
    .await;
    app.post_alerts(&payload("default", "b", vec![alert("orphan", None, "b")]))
        .await;
    let (status, all) = get(&app, "/v1/undeliverable", ADMIN_TOKEN).await;
    assert_eq!(status, 200, "{all}");
    let rows = all["undeliverable"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{all}");
    assert_eq!(
        rows[0]["alert"]["labels"]["alertname"], "orphan",
        "newest first"
    );
    assert_eq!(
        (rows[0]["reason"].as_str(), rows[0]["user_id"].as_str()),
        (Some("no_channel"), Some("_unattributed"))
    );
    assert_eq!(
        (rows[1]["reason"].as_str(), rows[1]["receiver"].as_str()),
        (Some("unknown_channel"), Some("notimeter/nobody/ghost"))
    );
    let (_, one) = get(
        &app,
        "/v1/undeliverable?reason=unknown_channel",
        ADMIN_TOKEN,
    )
    .await;
    assert_eq!(one["undeliverable"].as_array().unwrap().len(), 1);
    assert_eq!(
        one["undeliverable"][0]["alert"]["labels"]["alertname"],
        "ghost"
    );
    let (_, paged) = get(&app, "/v1/undeliverable?limit=1", ADMIN_TOKEN).await;
    assert_eq!(ids(&paged, "undeliverable", "id").len(), 1);
    assert!(paged["next_cursor"].is_string());
    let (status, body) = get(&app, "/v1/undeliverable?reason=bogus", ADMIN_TOKEN).await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = get(&app, "/v1/undeliverable", FINANCE_TOKEN).await;
    assert_eq!(status, 403, "admin only");
    app.stop().await;
}

async fn a_failed_message_is_redelivered_as_a_new_one(backend: Backend) {
    let sink = Sink::start().await;
    // Refused for good (a 4xx is not retried), then the receiver is fixed.
    sink.script("/u1", [Reply::new(400, "bad request")]);
    let app = spawn_app(&backend).await;
    app.add_webhook("u1", "hook", &sink.url("/u1")).await;
    app.post_alerts(&payload(
        "default",
        "g",
        vec![alert("disk", Some("u1"), "f")],
    ))
    .await;
    sink.wait_for("/u1", 1).await;
    app.wait_idle().await;
    let (_, log) = get(&app, "/v1/users/u1/messages", ADMIN_TOKEN).await;
    assert_eq!(log["messages"][0]["state"], "failed");
    let failed = log["messages"][0]["message_id"].as_i64().unwrap();

    let (status, body) = post(
        &app,
        &format!("/v1/messages/{failed}/redeliver"),
        ADMIN_TOKEN,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let new = body["message_id"].as_i64().unwrap();
    assert!(new > failed);
    let got = sink.wait_for("/u1", 2).await;
    assert_eq!(got[1].body, got[0].body, "the same notification again");
    app.wait_idle().await;
    let (_, log) = get(&app, "/v1/users/u1/messages", ADMIN_TOKEN).await;
    assert_eq!(ids(&log, "messages", "message_id"), [new, failed]);
    assert_eq!(log["messages"][0]["state"], "delivered");
    // Billed once delivered: one delivered and one failed message.
    let usage = app.get_json("/v1/usage", FINANCE_TOKEN).await;
    assert_eq!(
        (
            usage["usage"][0]["delivered"].as_i64(),
            usage["usage"][0]["failed"].as_i64()
        ),
        (Some(1), Some(1))
    );

    let (status, body) = post(&app, &format!("/v1/messages/{new}/redeliver"), ADMIN_TOKEN).await;
    assert_eq!(
        status, 409,
        "a delivered message is not redelivered: {body}"
    );
    let (status, _) = post(&app, "/v1/messages/999999/redeliver", ADMIN_TOKEN).await;
    assert_eq!(status, 404);
    let (status, _) = post(
        &app,
        &format!("/v1/messages/{failed}/redeliver"),
        FINANCE_TOKEN,
    )
    .await;
    assert_eq!(status, 403, "admin only");
    let (status, body) = post(
        &app,
        &format!("/v1/messages/{failed}/redeliver"),
        ADMIN_TOKEN,
    )
    .await;
    assert_eq!(status, 409, "a failed message is redelivered once: {body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains(&format!("as message {new}")), "{body}");

    // A failed message whose channel is disabled now has nowhere to go.
    sink.script("/u1", [Reply::new(400, "bad request")]);
    app.post_alerts(&payload(
        "default",
        "g2",
        vec![alert("cpu", Some("u1"), "f2")],
    ))
    .await;
    sink.wait_for("/u1", 3).await;
    app.wait_idle().await;
    let (_, log) = get(&app, "/v1/users/u1/messages?state=failed", ADMIN_TOKEN).await;
    let second = log["messages"][0]["message_id"].as_i64().unwrap();
    assert_ne!(second, failed);
    let disabled =
        json!({"type": "webhook", "settings": {"url": sink.url("/u1")}, "enabled": false});
    assert_eq!(app.put_channel("u1", "hook", disabled).await.status(), 200);
    let (status, body) = post(
        &app,
        &format!("/v1/messages/{second}/redeliver"),
        ADMIN_TOKEN,
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("disabled"),
        "{body}"
    );
    app.stop().await;
}

async fn a_test_send_answers_its_outcome_and_is_not_billed(backend: Backend) {
    let sink = Sink::start().await;
    let app = spawn_app(&backend).await;
    app.add_webhook("u1", "ok", &sink.url("/ok")).await;
    app.add_webhook("u1", "broken", &sink.url("/broken")).await;
    sink.script("/broken", [Reply::new(503, "down")]);

    let (status, ok) = post(&app, "/v1/users/u1/channels/ok/test", ADMIN_TOKEN).await;
    assert_eq!(status, 200, "{ok}");
    assert_eq!(
        (ok["result"].as_str(), ok["status_code"].as_i64()),
        (Some("delivered"), Some(200))
    );
    assert!(ok["duration_ms"].is_u64());
    let got = sink.received_on("/ok");
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].json()["alerts"][0]["labels"]["alertname"],
        "NotimeterTest"
    );
    assert_eq!(got[0].json()["receiver"], "notimeter/u1/ok");

    let (_, broken) = post(&app, "/v1/users/u1/channels/broken/test", ADMIN_TOKEN).await;
    assert_eq!(
        (
            broken["result"].as_str(),
            broken["reason"].as_str(),
            broken["status_code"].as_i64()
        ),
        (Some("failed"), Some("serverError"), Some(503))
    );
    assert_eq!(
        sink.received_on("/broken").len(),
        1,
        "a test is sent once, not retried"
    );

    let (status, _) = post(&app, "/v1/users/u1/channels/nope/test", ADMIN_TOKEN).await;
    assert_eq!(status, 404);
    let (status, _) = post(&app, "/v1/users/u1/channels/ok/test", FINANCE_TOKEN).await;
    assert_eq!(status, 403);
    // Not billed, not in the log; counted.
    let usage = app.get_json("/v1/usage", FINANCE_TOKEN).await;
    assert_eq!(usage["usage"], json!([]));
    let (_, log) = get(&app, "/v1/users/u1/messages", ADMIN_TOKEN).await;
    assert_eq!(log["messages"], json!([]));
    for result in ["success", "serverError"] {
        let labels = [("integration", "webhook"), ("result", result)];
        assert_eq!(
            app.metric("notimeter_test_sends_total", &labels).await,
            1.0,
            "{result}"
        );
    }
    app.stop().await;
}

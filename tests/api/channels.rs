//! The channels API: create, replace, read with secrets redacted, list, delete,
//! and clear 422s for bad input.

use serde_json::json;

use crate::helpers::*;
use crate::on_both_backends;

on_both_backends!(channel_lifecycle_and_redaction, bad_channels_are_422);

async fn channel_lifecycle_and_redaction(backend: Backend) {
    let app = spawn_app(&backend).await;
    let secret_url = "http://127.0.0.1:9/hook/s3cr3t-path";
    let body = json!({
        "type": "webhook",
        "settings": {"url": secret_url, "basic_auth": {"username": "bob", "password": "hunter2"}},
        "matchers": ["alertname = high_cpu", "severity=~\"critical|warning\""],
        "send_resolved": false
    });
    let r = app.put_channel("u1", "hook", body.clone()).await;
    assert_eq!(r.status(), 201);
    let created: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        created["settings"],
        json!({"url": "<secret>", "basic_auth": {"username": "bob", "password": "<secret>"}})
    );
    assert_eq!(
        created["matchers"],
        json!(["alertname=\"high_cpu\"", "severity=~\"critical|warning\""])
    );
    assert_eq!(created["send_resolved"], false);

    let got = app
        .get_json("/v1/users/u1/channels/hook", ADMIN_TOKEN)
        .await;
    assert!(!got.to_string().contains("s3cr3t") && !got.to_string().contains("hunter2"));

    // Sending back what GET showed keeps the secrets; changing a field replaces it.
    let mut edited = got.clone();
    edited["enabled"] = json!(false);
    let edited = json!({"type": edited["type"], "settings": edited["settings"], "matchers": edited["matchers"], "send_resolved": true, "enabled": false});
    let r = app.put_channel("u1", "hook", edited).await;
    assert_eq!(r.status(), 200);
    let spec: String = query_one(
        &app.database_url,
        "SELECT spec FROM channels WHERE user_id = 'u1'",
    )
    .await;
    let spec: serde_json::Value = serde_json::from_str(&spec).unwrap();
    assert_eq!(spec["settings"]["url"], secret_url);
    assert_eq!(spec["settings"]["basic_auth"]["password"], "hunter2");
    assert_eq!(spec["enabled"], false);

    app.add_webhook("u1", "second", "http://127.0.0.1:9/other")
        .await;
    let list = app.get_json("/v1/users/u1/channels", ADMIN_TOKEN).await;
    let ids: Vec<&str> = list["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["channel_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["hook", "second"]);

    let del = |c: &str| {
        app.http
            .delete(app.url(&format!("/v1/users/u1/channels/{c}")))
            .bearer_auth(ADMIN_TOKEN)
            .send()
    };
    assert_eq!(del("hook").await.unwrap().status(), 204);
    assert_eq!(del("hook").await.unwrap().status(), 404);
    let r = app
        .http
        .get(app.url("/v1/users/u1/channels/hook"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // The finance token may not touch channels; no token at all is 401.
    let r = app
        .http
        .get(app.url("/v1/users/u1/channels"))
        .bearer_auth(FINANCE_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = app
        .http
        .get(app.url("/v1/users/u1/channels"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    app.stop().await;
}

async fn bad_channels_are_422(backend: Backend) {
    let app = spawn_app(&backend).await;
    let ok = json!({"type": "webhook", "settings": {"url": "http://127.0.0.1:9/x"}});
    let cases = [
        (
            "u1",
            "c1",
            json!({"type": "pager", "settings": {}}),
            "unknown channel type",
        ),
        (
            "u1",
            "c1",
            json!({"type": "webhook", "settings": {"url": "http://127.0.0.1:9/x"}, "matchers": ["sev=~\"(\""]}),
            "invalid regex",
        ),
        (
            "u1",
            "c1",
            json!({"type": "webhook", "settings": {"url": "http://127.0.0.1:9/x"}, "matchers": ["no operator"]}),
            "operator",
        ),
        (
            "u1",
            "c1",
            json!({"type": "webhook", "settings": {"url": "http://10.0.0.1/x"}}),
            "private",
        ),
        (
            "u1",
            "c1",
            json!({"type": "webhook", "settings": {"url": "http://169.254.169.254/latest"}}),
            "link-local",
        ),
        (
            "u1",
            "c1",
            json!({"type": "webhook", "settings": {}}),
            "missing field `url`",
        ),
        (
            "u1",
            "c1",
            json!({"type": "webhook", "settings": {"url": "http://127.0.0.1:9/x", "extra": 1}}),
            "unknown field `extra`",
        ),
        (
            "u1",
            "c1",
            json!({"type": "webhook", "settings": {"url": "http://127.0.0.1:9/x"}, "colour": "red"}),
            "unknown field `colour`",
        ),
        ("u%20x", "c1", ok.clone(), "user_id"),
        ("u1", "c%2Fx", ok.clone(), "channel_id"),
    ];
    for (user, channel, body, why) in cases {
        let r = app.put_channel(user, channel, body.clone()).await;
        assert_eq!(r.status(), 422, "{body}");
        let e: serde_json::Value = r.json().await.unwrap();
        assert!(
            e["error"].as_str().unwrap().contains(why),
            "expected {why:?} in {e}"
        );
    }
    let r = app
        .http
        .put(app.url("/v1/users/u1/channels/c1"))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(
        app.get_json("/v1/users/u1/channels", ADMIN_TOKEN).await["channels"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    app.stop().await;
}

//! Every 4xx has a JSON body `{"error": "..."}`: unknown routes and wrong
//! methods too (DESIGN.md, "More endpoints").

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_wrong_methods_answer_json() {
    let app = spawn_app(&Backend::Sqlite).await;
    let r = app
        .http
        .get(app.url("/v1/nothing/here"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "no route /v1/nothing/here");

    // A wrong method, with a token that may use the route: 405, Allow, JSON.
    let r = app
        .http
        .delete(app.url("/v1/usage"))
        .bearer_auth(FINANCE_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let allow = r.headers()["allow"].to_str().unwrap().to_owned();
    assert!(allow.contains("GET"), "{allow}");
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("does not take DELETE"),
        "{body}"
    );
    // Without a token too: which methods a route takes is no secret (the
    // token is checked once a method matches), and the answer is JSON.
    let r = app
        .http
        .get(app.url("/v1/alertmanager"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST");
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["error"].is_string(), "{body}");
    // And a matched method without a token is still refused.
    let r = app
        .http
        .post(app.url("/v1/alertmanager"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    app.stop().await;
}

//! `GET /openapi.json`: a valid OpenAPI 3.1 document (checked by PyPI's
//! openapi-spec-validator) that lists every route, and whose schemas the
//! service's real answers — successes and errors — match.

use std::process::Command;

use serde_json::{json, Value};

use crate::helpers::*;

/// Every route of the router, as the document names it.
const ROUTES: [(&str, &str); 25] = [
    ("post", "/v1/alertmanager"),
    ("put", "/v1/users/{user_id}/channels/{channel_id}"),
    ("get", "/v1/users/{user_id}/channels/{channel_id}"),
    ("delete", "/v1/users/{user_id}/channels/{channel_id}"),
    ("get", "/v1/users/{user_id}/channels"),
    ("post", "/v1/users/{user_id}/channels/{channel_id}/test"),
    ("get", "/v1/users/{user_id}/messages"),
    ("get", "/v1/undeliverable"),
    ("post", "/v1/messages/{message_id}/redeliver"),
    ("get", "/v1/usage"),
    ("get", "/v1/ledger/current.csv"),
    ("get", "/v1/ledger/periods"),
    ("get", "/v1/ledger/periods/{file}"),
    ("get", "/v1/ledger/periods/{id}/items.csv"),
    ("post", "/v1/ledger/close"),
    ("post", "/v1/users/{user_id}/settle"),
    ("get", "/"),
    ("get", "/login"),
    ("post", "/login"),
    ("get", "/logout"),
    ("get", "/metrics"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/openapi.json"),
    ("get", "/v1/users/{user_id}/channels/{channel_id}"),
];

/// Calls the app and keeps what it answered as a sample: the method, the
/// document's path template, the status and the JSON body (if JSON).
struct Samples<'a> {
    app: &'a TestApp,
    taken: Vec<Value>,
}

impl Samples<'_> {
    /// Calls `(method, template, path)`, asserting the status; the body.
    async fn expect(
        &mut self,
        status: u16,
        (method, template, path): (&str, &str, &str),
        token: Option<&str>,
        body: Option<Value>,
    ) -> Value {
        let mut r = self
            .app
            .http
            .request(method.to_uppercase().parse().unwrap(), self.app.url(path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap();
        let got = r.status().as_u16();
        let json = r
            .headers()
            .get("content-type")
            .is_some_and(|c| c.to_str().unwrap().starts_with("application/json"));
        let body = if json {
            r.json().await.unwrap()
        } else {
            Value::Null
        };
        self.taken
            .push(json!({"method": method, "path": template, "status": got, "body": body}));
        assert_eq!(got, status, "{method} {path}: {body}");
        body
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs python3 with openapi-spec-validator (pip install openapi-spec-validator); run with --include-ignored"]
async fn the_openapi_document_is_valid_and_describes_every_route_and_answer() {
    let python_ok = Command::new("python3")
        .args(["-c", "import openapi_spec_validator"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        python_ok,
        "this test needs python3 with openapi-spec-validator: pip install openapi-spec-validator"
    );
    let sink = Sink::start().await;
    sink.script("/u1", [Reply::new(400, "refused")]);
    let app = spawn_app(&Backend::Sqlite).await;
    let mut s = Samples {
        app: &app,
        taken: Vec::new(),
    };
    const CH: &str = "/v1/users/{user_id}/channels/{channel_id}";
    let (admin, finance, ingest) = (Some(ADMIN_TOKEN), Some(FINANCE_TOKEN), Some(INGEST_TOKEN));
    let hook = json!({"type": "webhook", "settings": {"url": sink.url("/u1")}});
    let put = ("put", CH, "/v1/users/u1/channels/hook");
    s.expect(201, put, admin, Some(hook.clone())).await;
    s.expect(200, put, admin, Some(hook)).await;
    let bad = json!({"type": "pager", "settings": {}});
    s.expect(
        422,
        ("put", CH, "/v1/users/u1/channels/x"),
        admin,
        Some(bad),
    )
    .await;
    s.expect(200, ("get", CH, "/v1/users/u1/channels/hook"), admin, None)
        .await;
    s.expect(404, ("get", CH, "/v1/users/u1/channels/nope"), admin, None)
        .await;
    let list = (
        "get",
        "/v1/users/{user_id}/channels",
        "/v1/users/u1/channels",
    );
    s.expect(200, list, admin, None).await;
    let p = payload(
        "default",
        "g",
        vec![alert("disk", Some("u1"), "f"), alert("cpu", None, "g")],
    );
    let ingest_route = ("post", "/v1/alertmanager", "/v1/alertmanager");
    s.expect(200, ingest_route, ingest, Some(p.clone())).await;
    s.expect(200, ingest_route, ingest, Some(p)).await;
    s.expect(401, ingest_route, None, Some(json!({}))).await;
    sink.wait_for("/u1", 1).await;
    app.wait_idle().await;

    const LOG: &str = "/v1/users/{user_id}/messages";
    let page = s
        .expect(200, ("get", LOG, "/v1/users/u1/messages"), finance, None)
        .await;
    s.expect(
        400,
        ("get", LOG, "/v1/users/u1/messages?limit=0"),
        finance,
        None,
    )
    .await;
    let undeliverable = ("get", "/v1/undeliverable", "/v1/undeliverable");
    s.expect(200, undeliverable, admin, None).await;
    s.expect(403, undeliverable, finance, None).await;
    const RE: &str = "/v1/messages/{message_id}/redeliver";
    let failed = format!(
        "/v1/messages/{}/redeliver",
        page["messages"][0]["message_id"]
    );
    s.expect(202, ("post", RE, &failed), admin, None).await;
    sink.wait_for("/u1", 2).await;
    app.wait_idle().await;
    let page = s
        .expect(200, ("get", LOG, "/v1/users/u1/messages"), admin, None)
        .await;
    let delivered = format!(
        "/v1/messages/{}/redeliver",
        page["messages"][0]["message_id"]
    );
    s.expect(409, ("post", RE, &delivered), admin, None).await;
    let test = "/v1/users/{user_id}/channels/{channel_id}/test";
    s.expect(
        200,
        ("post", test, "/v1/users/u1/channels/hook/test"),
        admin,
        None,
    )
    .await;

    for (method, path) in [("get", "/v1/usage"), ("get", "/v1/ledger/current.csv")] {
        s.expect(200, (method, path, path), finance, None).await;
    }
    let close = ("post", "/v1/ledger/close", "/v1/ledger/close");
    s.expect(200, close, admin, None).await;
    s.expect(403, close, finance, None).await;
    let settle = ("post", "/v1/users/{user_id}/settle", "/v1/users/u1/settle");
    s.expect(200, settle, admin, None).await;
    let periods = ("get", "/v1/ledger/periods", "/v1/ledger/periods");
    let periods = s.expect(200, periods, finance, None).await;
    let id = periods["periods"][0]["period_id"]
        .as_str()
        .unwrap()
        .to_owned();
    const FILE: &str = "/v1/ledger/periods/{file}";
    s.expect(
        200,
        ("get", FILE, &format!("/v1/ledger/periods/{id}.csv")),
        finance,
        None,
    )
    .await;
    s.expect(
        404,
        ("get", FILE, "/v1/ledger/periods/nope.csv"),
        finance,
        None,
    )
    .await;
    let items = format!("/v1/ledger/periods/{id}/items.csv");
    s.expect(
        200,
        ("get", "/v1/ledger/periods/{id}/items.csv", &items),
        finance,
        None,
    )
    .await;
    s.expect(
        204,
        ("delete", CH, "/v1/users/u1/channels/hook"),
        admin,
        None,
    )
    .await;
    for path in ["/healthz", "/readyz", "/metrics", "/login"] {
        s.expect(200, ("get", path, path), None, None).await;
    }
    let document = s
        .expect(200, ("get", "/openapi.json", "/openapi.json"), None, None)
        .await;
    assert!(
        document["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        document["openapi"]
    );
    for (method, path) in ROUTES {
        assert!(
            document["paths"][path][method].is_object(),
            "{} {path} is not in the document",
            method.to_uppercase()
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("openapi.json");
    let samples = dir.path().join("samples.json");
    std::fs::write(&spec, serde_json::to_vec_pretty(&document).unwrap()).unwrap();
    std::fs::write(&samples, serde_json::to_vec_pretty(&s.taken).unwrap()).unwrap();
    let checker =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/openapi_check.py");
    let out = Command::new("python3")
        .arg(checker)
        .arg(&spec)
        .arg(&samples)
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the OpenAPI check failed:\n{report}");
    println!("{report}");
    app.stop().await;
}

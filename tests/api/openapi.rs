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
    async fn call(
        &mut self,
        method: &str,
        template: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
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
        let status = r.status().as_u16();
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
            .push(json!({"method": method, "path": template, "status": status, "body": body}));
        (status, body)
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
    let hook = json!({"type": "webhook", "settings": {"url": sink.url("/u1")}});
    assert_eq!(
        s.call(
            "put",
            CH,
            "/v1/users/u1/channels/hook",
            Some(ADMIN_TOKEN),
            Some(hook.clone())
        )
        .await
        .0,
        201
    );
    assert_eq!(
        s.call(
            "put",
            CH,
            "/v1/users/u1/channels/hook",
            Some(ADMIN_TOKEN),
            Some(hook)
        )
        .await
        .0,
        200
    );
    let bad = json!({"type": "pager", "settings": {}});
    assert_eq!(
        s.call(
            "put",
            CH,
            "/v1/users/u1/channels/x",
            Some(ADMIN_TOKEN),
            Some(bad)
        )
        .await
        .0,
        422
    );
    assert_eq!(
        s.call(
            "get",
            CH,
            "/v1/users/u1/channels/hook",
            Some(ADMIN_TOKEN),
            None
        )
        .await
        .0,
        200
    );
    assert_eq!(
        s.call(
            "get",
            CH,
            "/v1/users/u1/channels/nope",
            Some(ADMIN_TOKEN),
            None
        )
        .await
        .0,
        404
    );
    assert_eq!(
        s.call(
            "get",
            "/v1/users/{user_id}/channels",
            "/v1/users/u1/channels",
            Some(ADMIN_TOKEN),
            None
        )
        .await
        .0,
        200
    );
    let p = payload(
        "default",
        "g",
        vec![alert("disk", Some("u1"), "f"), alert("cpu", None, "g")],
    );
    assert_eq!(
        s.call(
            "post",
            "/v1/alertmanager",
            "/v1/alertmanager",
            Some(INGEST_TOKEN),
            Some(p.clone())
        )
        .await
        .0,
        200
    );
    assert_eq!(
        s.call(
            "post",
            "/v1/alertmanager",
            "/v1/alertmanager",
            Some(INGEST_TOKEN),
            Some(p)
        )
        .await
        .0,
        200
    );
    assert_eq!(
        s.call(
            "post",
            "/v1/alertmanager",
            "/v1/alertmanager",
            None,
            Some(json!({}))
        )
        .await
        .0,
        401
    );
    sink.wait_for("/u1", 1).await;
    app.wait_idle().await;
    let log = "/v1/users/{user_id}/messages";
    let (_, page) = s
        .call(
            "get",
            log,
            "/v1/users/u1/messages",
            Some(FINANCE_TOKEN),
            None,
        )
        .await;
    assert_eq!(
        s.call(
            "get",
            log,
            "/v1/users/u1/messages?limit=0",
            Some(FINANCE_TOKEN),
            None
        )
        .await
        .0,
        400
    );
    assert_eq!(
        s.call(
            "get",
            "/v1/undeliverable",
            "/v1/undeliverable",
            Some(ADMIN_TOKEN),
            None
        )
        .await
        .0,
        200
    );
    assert_eq!(
        s.call(
            "get",
            "/v1/undeliverable",
            "/v1/undeliverable",
            Some(FINANCE_TOKEN),
            None
        )
        .await
        .0,
        403
    );
    let failed = page["messages"][0]["message_id"].as_i64().unwrap();
    let re = "/v1/messages/{message_id}/redeliver";
    assert_eq!(
        s.call(
            "post",
            re,
            &format!("/v1/messages/{failed}/redeliver"),
            Some(ADMIN_TOKEN),
            None
        )
        .await
        .0,
        202
    );
    sink.wait_for("/u1", 2).await;
    app.wait_idle().await;
    assert_eq!(
        s.call(
            "post",
            re,
            &format!("/v1/messages/{failed}/redeliver"),
            Some(ADMIN_TOKEN),
            None
        )
        .await
        .0,
        202
    );
    app.wait_idle().await;
    let (_, page) = s
        .call("get", log, "/v1/users/u1/messages", Some(ADMIN_TOKEN), None)
        .await;
    let delivered = page["messages"][0]["message_id"].as_i64().unwrap();
    assert_eq!(
        s.call(
            "post",
            re,
            &format!("/v1/messages/{delivered}/redeliver"),
            Some(ADMIN_TOKEN),
            None
        )
        .await
        .0,
        409
    );
    let test = "/v1/users/{user_id}/channels/{channel_id}/test";
    assert_eq!(
        s.call(
            "post",
            test,
            "/v1/users/u1/channels/hook/test",
            Some(ADMIN_TOKEN),
            None
        )
        .await
        .0,
        200
    );
    assert_eq!(
        s.call("get", "/v1/usage", "/v1/usage", Some(FINANCE_TOKEN), None)
            .await
            .0,
        200
    );
    assert_eq!(
        s.call(
            "get",
            "/v1/ledger/current.csv",
            "/v1/ledger/current.csv",
            Some(FINANCE_TOKEN),
            None
        )
        .await
        .0,
        200
    );
    assert_eq!(
        s.call(
            "post",
            "/v1/ledger/close",
            "/v1/ledger/close",
            Some(ADMIN_TOKEN),
            None
        )
        .await
        .0,
        200
    );
    assert_eq!(
        s.call(
            "post",
            "/v1/ledger/close",
            "/v1/ledger/close",
            Some(FINANCE_TOKEN),
            None
        )
        .await
        .0,
        403
    );
    let settle = "/v1/users/{user_id}/settle";
    assert_eq!(
        s.call(
            "post",
            settle,
            "/v1/users/u1/settle",
            Some(ADMIN_TOKEN),
            None
        )
        .await
        .0,
        200
    );
    let (_, periods) = s
        .call(
            "get",
            "/v1/ledger/periods",
            "/v1/ledger/periods",
            Some(FINANCE_TOKEN),
            None,
        )
        .await;
    let id = periods["periods"][0]["period_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        s.call(
            "get",
            "/v1/ledger/periods/{file}",
            &format!("/v1/ledger/periods/{id}.csv"),
            Some(FINANCE_TOKEN),
            None
        )
        .await
        .0,
        200
    );
    assert_eq!(
        s.call(
            "get",
            "/v1/ledger/periods/{file}",
            "/v1/ledger/periods/nope.csv",
            Some(FINANCE_TOKEN),
            None
        )
        .await
        .0,
        404
    );
    let items = "/v1/ledger/periods/{id}/items.csv";
    assert_eq!(
        s.call(
            "get",
            items,
            &format!("/v1/ledger/periods/{id}/items.csv"),
            Some(FINANCE_TOKEN),
            None
        )
        .await
        .0,
        200
    );
    assert_eq!(
        s.call(
            "delete",
            CH,
            "/v1/users/u1/channels/hook",
            Some(ADMIN_TOKEN),
            None
        )
        .await
        .0,
        204
    );
    for (method, path) in [
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/metrics"),
        ("get", "/login"),
    ] {
        assert_eq!(
            s.call(method, path, path, None, None).await.0,
            200,
            "{path}"
        );
    }
    let (status, document) = s
        .call("get", "/openapi.json", "/openapi.json", None, None)
        .await;
    assert_eq!(status, 200);
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

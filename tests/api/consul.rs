//! Consul as a live source of channels: `serve` follows a prefix with
//! blocking queries against a local server that implements Consul's KV API
//! as documented (https://developer.hashicorp.com/consul/api-docs/kv and
//! ".../api-docs/features/blocking"): `?recurse`, `index` and `wait`,
//! `X-Consul-Index` on every answer, 404 for an empty prefix, ACL tokens, and
//! an index that can go backwards (a restored snapshot).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;

use crate::helpers::*;
use crate::on_both_backends;

on_both_backends!(
    consul_changes_are_mirrored_into_channels_that_route,
    consul_never_touches_api_channels,
    a_consul_outage_or_an_empty_answer_changes_nothing,
    the_deletion_guard_refuses_a_mass_delete_and_a_reset_index_is_followed,
    import_with_prune_deletes_what_the_export_no_longer_has,
);

const CONSUL_TOKEN: &str = "consul-acl-token";

#[derive(Default)]
struct Kv {
    /// The Raft index: raised by every write.
    index: u64,
    /// key → (value, CreateIndex, ModifyIndex).
    keys: BTreeMap<String, (String, u64, u64)>,
    /// Answer every request with this status (an outage), if set.
    fail: Option<u16>,
    /// Queries seen: (path, query string).
    seen: Vec<(String, String)>,
}

/// A Consul agent's KV endpoint, in memory.
#[derive(Clone)]
struct FakeConsul {
    url: String,
    kv: Arc<Mutex<Kv>>,
    changed: watch::Sender<u64>,
}

#[derive(Deserialize)]
struct KvQuery {
    recurse: Option<String>,
    index: Option<u64>,
    wait: Option<String>,
}

/// Consul's wait: `10s`, `5m`; 5 minutes by default, 10 at most.
fn wait_of(s: Option<&str>) -> Duration {
    let d = s
        .and_then(|s| humantime::parse_duration(s).ok())
        .unwrap_or(Duration::from_secs(300));
    d.min(Duration::from_secs(600))
}

async fn kv_handler(
    State(consul): State<FakeConsul>,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Query<KvQuery>,
) -> Response {
    let key = uri.path().trim_start_matches("/v1/kv/").to_owned();
    {
        let mut kv = consul.kv.lock().unwrap();
        kv.seen
            .push((uri.path().to_owned(), uri.query().unwrap_or("").to_owned()));
        if let Some(status) = kv.fail {
            return (
                StatusCode::from_u16(status).unwrap(),
                "rpc error: No cluster leader",
            )
                .into_response();
        }
    }
    if headers.get("X-Consul-Token").and_then(|v| v.to_str().ok()) != Some(CONSUL_TOKEN) {
        return (StatusCode::FORBIDDEN, "Permission denied").into_response();
    }
    // A blocking query waits while the index is the one the client has seen.
    if let Some(index) = q.index.filter(|i| *i > 0) {
        let mut rx = consul.changed.subscribe();
        let _ = tokio::time::timeout(wait_of(q.wait.as_deref()), rx.wait_for(|now| *now != index))
            .await;
    }
    let kv = consul.kv.lock().unwrap();
    let index = kv.index.max(1).to_string();
    let matching: Vec<serde_json::Value> = kv
        .keys
        .iter()
        .filter(|(k, _)| {
            if q.recurse.is_some() {
                k.starts_with(&key)
            } else {
                **k == key
            }
        })
        .map(|(k, (v, create, modify))| {
            json!({
                "LockIndex": 0, "Key": k, "Flags": 0,
                "Value": base64::engine::general_purpose::STANDARD.encode(v),
                "CreateIndex": create, "ModifyIndex": modify,
            })
        })
        .collect();
    let mut response = if matching.is_empty() {
        StatusCode::NOT_FOUND.into_response()
    } else {
        axum::Json(matching).into_response()
    };
    response
        .headers_mut()
        .insert("X-Consul-Index", index.parse().unwrap());
    response
}

impl FakeConsul {
    async fn start() -> Self {
        let (changed, _) = watch::channel(0);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let consul = FakeConsul {
            url: format!("http://{}", listener.local_addr().unwrap()),
            kv: Arc::default(),
            changed,
        };
        let app = axum::Router::new()
            .route("/v1/kv/{*key}", axum::routing::get(kv_handler))
            .with_state(consul.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        consul
    }

    fn write(&self, f: impl FnOnce(&mut Kv)) {
        let mut kv = self.kv.lock().unwrap();
        kv.index += 1;
        f(&mut kv);
        let index = kv.index;
        drop(kv);
        self.changed.send_replace(index);
    }

    fn put(&self, key: &str, value: &str) {
        self.write(|kv| {
            let index = kv.index;
            let create = kv.keys.get(key).map_or(index, |e| e.1);
            kv.keys
                .insert(key.to_owned(), (value.to_owned(), create, index));
        });
    }

    fn delete_tree(&self, prefix: &str) {
        self.write(|kv| kv.keys.retain(|k, _| !k.starts_with(prefix)));
    }

    /// A webhook alarm of the original layout.
    fn webhook(&self, user: &str, alarm: &str, url: &str) {
        self.put(&format!("users/{user}/alarms/webhook/{alarm}/url"), url);
    }

    fn fail(&self, status: Option<u16>) {
        self.kv.lock().unwrap().fail = status;
    }

    /// The index goes back (a snapshot restored), the data as it is.
    fn reset_index(&self, to: u64) {
        let mut kv = self.kv.lock().unwrap();
        kv.index = to;
        drop(kv);
        self.changed.send_replace(to);
    }

    fn seen(&self) -> Vec<(String, String)> {
        self.kv.lock().unwrap().seen.clone()
    }
}

async fn spawn_with_consul(backend: &Backend, consul: &FakeConsul) -> TestApp {
    let url = consul.url.clone();
    spawn_app_with(backend, move |s| {
        s.consul.address = Some(url);
        s.consul.token = Some(notimeter::domain::Secret::new(CONSUL_TOKEN));
        s.consul.wait = Duration::from_secs(2);
        s.consul.max_backoff = Duration::from_millis(500);
    })
    .await
}

/// A channel as the API shows it, or `None` for a 404.
async fn channel(app: &TestApp, user: &str, id: &str) -> Option<serde_json::Value> {
    let r = app
        .http
        .get(app.url(&format!("/v1/users/{user}/channels/{id}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    match r.status().as_u16() {
        200 => Some(r.json().await.unwrap()),
        404 => None,
        other => panic!("GET {user}/{id}: {other}"),
    }
}

async fn syncs(app: &TestApp, result: &str) -> f64 {
    app.metric("notimeter_consul_sync_total", &[("result", result)])
        .await
}

async fn consul_changes_are_mirrored_into_channels_that_route(backend: Backend) {
    let consul = FakeConsul::start().await;
    let sink = Sink::start().await;
    consul.webhook("u1", "1", &sink.url("/u1"));
    consul.webhook("u2", "1", &sink.url("/u2"));
    consul.put("users/u3/alarms/slack/2/api_url", &sink.url("/slack"));
    consul.put("users/u3/alarms/slack/2/channel", "#ops");
    let app = spawn_with_consul(&backend, &consul).await;

    // Created: mirrored, marked as Consul's, and routed.
    eventually("the Consul channels", || async {
        channel(&app, "u3", "slack-2").await.is_some()
    })
    .await;
    let u1 = channel(&app, "u1", "webhook-1")
        .await
        .expect("u1's channel");
    assert_eq!(u1["source"], "consul");
    assert_eq!(u1["settings"]["url"], "<secret>");
    app.wait_routes("u1", "webhook-1").await;
    let alerts = vec![alert("high_cpu", Some("u1"), "f1")];
    assert_eq!(
        app.post_alerts(&payload("default", "g1", alerts))
            .await
            .status(),
        200
    );
    sink.wait_for("/u1", 1).await;

    // Changed.
    consul.put("users/u3/alarms/slack/2/channel", "#oncall");
    eventually("the changed channel", || async {
        channel(&app, "u3", "slack-2").await.unwrap()["settings"]["channel"] == "#oncall"
    })
    .await;

    // Deleted (one of three: within the guard).
    consul.delete_tree("users/u2/");
    eventually("the deleted channel", || async {
        channel(&app, "u2", "webhook-1").await.is_none()
    })
    .await;
    assert!(channel(&app, "u1", "webhook-1").await.is_some());
    eventually("the metrics", || async {
        app.metric("notimeter_consul_channels", &[]).await == 2.0
    })
    .await;
    assert!(syncs(&app, "applied").await >= 3.0);
    assert_eq!(syncs(&app, "refused").await, 0.0);
    assert!(
        app.metric("notimeter_consul_last_sync_timestamp_seconds", &[])
            .await
            > 1.0e9
    );

    // The watch blocked on Consul's index, with the token, on the prefix.
    let seen = consul.seen();
    assert!(
        seen.iter().all(|(path, _)| path == "/v1/kv/users/"),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|(_, q)| q.contains("recurse") && q.contains("index=") && q.contains("wait=2s")),
        "{seen:?}"
    );
    app.stop().await;
}

async fn consul_never_touches_api_channels(backend: Backend) {
    let consul = FakeConsul::start().await;
    let api_sink = Sink::start().await;
    consul.webhook("u1", "1", "http://127.0.0.1:9/from-consul");
    consul.webhook("u1", "2", "http://127.0.0.1:9/two");
    consul.webhook("u1", "3", "http://127.0.0.1:9/three");
    // The API made u1/webhook-1 before Consul was followed.
    let app = spawn_app(&backend).await;
    app.add_webhook("u1", "webhook-1", &api_sink.url("/api"))
        .await;
    let mut stopped = app.stop_keeping_data().await;
    stopped.settings.consul.address = Some(consul.url.clone());
    stopped.settings.consul.token = Some(notimeter::domain::Secret::new(CONSUL_TOKEN));
    stopped.settings.consul.wait = Duration::from_secs(2);
    let app = stopped.start().await;

    eventually("the Consul channels", || async {
        channel(&app, "u1", "webhook-3").await.is_some()
    })
    .await;
    let api = channel(&app, "u1", "webhook-1").await.unwrap();
    assert_eq!(api["source"], "api", "the API's channel is kept: {api}");
    // Its URL is still the API's: an alert for u1 goes to the API sink.
    let alerts = vec![alert("high_cpu", Some("u1"), "f1")];
    assert_eq!(
        app.post_alerts(&payload("default", "g1", alerts))
            .await
            .status(),
        200
    );
    api_sink.wait_for("/api", 1).await;

    // The API cannot change or delete Consul's channels.
    let r = app
        .put_channel(
            "u1",
            "webhook-2",
            json!({"type": "webhook", "settings": {"url": "http://127.0.0.1:9/x"}}),
        )
        .await;
    assert_eq!(r.status(), 409);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("Consul"), "{body}");
    let r = app
        .http
        .delete(app.url("/v1/users/u1/channels/webhook-2"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);

    // Consul dropping its alarm 1 does not delete the API's webhook-1; its
    // alarm 2 going deletes Consul's webhook-2.
    consul.delete_tree("users/u1/alarms/webhook/1/");
    consul.delete_tree("users/u1/alarms/webhook/2/");
    eventually("webhook-2 deleted", || async {
        channel(&app, "u1", "webhook-2").await.is_none()
    })
    .await;
    assert_eq!(
        channel(&app, "u1", "webhook-1").await.unwrap()["source"],
        "api"
    );
    app.stop().await;
}

async fn a_consul_outage_or_an_empty_answer_changes_nothing(backend: Backend) {
    let consul = FakeConsul::start().await;
    for user in ["u1", "u2", "u3"] {
        consul.webhook(user, "1", "http://127.0.0.1:9/x");
    }
    let app = spawn_with_consul(&backend, &consul).await;
    eventually("the Consul channels", || async {
        app.metric("notimeter_consul_channels", &[]).await == 3.0
    })
    .await;

    // An outage: errors, counted; every channel stays.
    consul.fail(Some(500));
    consul.delete_tree("users/u1/");
    eventually("an error counted", || async {
        syncs(&app, "error").await >= 2.0
    })
    .await;
    for user in ["u1", "u2", "u3"] {
        assert!(channel(&app, user, "webhook-1").await.is_some(), "{user}");
    }
    consul.fail(None);
    eventually("u1 deleted once Consul answers", || async {
        channel(&app, "u1", "webhook-1").await.is_none()
    })
    .await;

    // An empty answer (Consul's 404 for a prefix with no keys) is not
    // "delete everything": refused, counted, nothing changes.
    consul.delete_tree("users/");
    eventually("the refusal", || async {
        syncs(&app, "refused").await >= 1.0
    })
    .await;
    for user in ["u2", "u3"] {
        assert!(channel(&app, user, "webhook-1").await.is_some(), "{user}");
    }
    assert_eq!(app.metric("notimeter_consul_channels", &[]).await, 2.0);
    app.stop().await;
}

async fn the_deletion_guard_refuses_a_mass_delete_and_a_reset_index_is_followed(backend: Backend) {
    let consul = FakeConsul::start().await;
    for user in ["u1", "u2", "u3", "u4"] {
        consul.webhook(user, "1", "http://127.0.0.1:9/x");
    }
    let app = spawn_with_consul(&backend, &consul).await;
    eventually("the Consul channels", || async {
        app.metric("notimeter_consul_channels", &[]).await == 4.0
    })
    .await;
    // Three of four at once: more than max_delete_share (0.5).
    consul.write(|kv| kv.keys.retain(|k, _| k.starts_with("users/u4/")));
    eventually("the refusal", || async {
        syncs(&app, "refused").await >= 1.0
    })
    .await;
    for user in ["u1", "u2", "u3", "u4"] {
        assert!(channel(&app, user, "webhook-1").await.is_some(), "{user}");
    }
    // Consul restored from a snapshot: its index goes back, the data is whole
    // again plus a new alarm. The watch follows the smaller index.
    // (Back to 2, so that the writes below end on an index the watch has not
    // seen: one equal to the last it saw would look like no change, in
    // Consul as here.)
    consul.reset_index(2);
    for user in ["u1", "u2", "u3"] {
        consul.webhook(user, "1", "http://127.0.0.1:9/x");
    }
    consul.webhook("u5", "1", "http://127.0.0.1:9/x");
    eventually("u5 after the index went back", || async {
        channel(&app, "u5", "webhook-1").await.is_some()
    })
    .await;
    // The gauge is set once the sync that wrote u5 has finished, a moment
    // after its rows are visible.
    eventually("the Consul channels counted", || async {
        app.metric("notimeter_consul_channels", &[]).await == 5.0
    })
    .await;
    app.stop().await;
}

/// `import consul-export <file> --prune`: Consul channels the export no longer
/// has are deleted, under the same guard (`--force` overrides it).
async fn import_with_prune_deletes_what_the_export_no_longer_has(backend: Backend) {
    let app = spawn_app(&backend).await;
    app.add_webhook("u9", "webhook-1", "http://127.0.0.1:9/api")
        .await;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let export = |users: &[&str]| {
        let entries: Vec<serde_json::Value> = users
            .iter()
            .map(|u| {
                json!({"key": format!("users/{u}/alarms/webhook/1/url"), "flags": 0,
                            "value": b64("http://127.0.0.1:9/x")})
            })
            .collect();
        let file = app.dir.path().join(format!("export-{}.json", users.len()));
        std::fs::write(&file, serde_json::to_string(&entries).unwrap()).unwrap();
        file
    };
    let config = app.dir.path().join("import.toml");
    std::fs::write(
        &config,
        format!(
            "database_url = \"{}\"\noutbound_allow = [\"127.0.0.0/8\"]\n",
            app.database_url
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_notimeter"))
            .arg("--config")
            .arg(&config)
            .args(["import", "consul-export"])
            .args(args)
            .env_remove("NOTIMETER_CONFIG")
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let all = export(&["u1", "u2", "u3", "u4"]);
    let (ok, said) = run(&[all.to_str().unwrap()]);
    assert!(
        ok && said.contains("4 channel(s) imported, 0 unchanged, 0 deleted"),
        "{said}"
    );
    // Without --prune nothing is deleted; with it, u4 goes (1 of 4).
    let three = export(&["u1", "u2", "u3"]);
    let (ok, said) = run(&[three.to_str().unwrap()]);
    assert!(ok && said.contains("0 deleted"), "{said}");
    let (ok, said) = run(&[three.to_str().unwrap(), "--prune"]);
    assert!(ok && said.contains("deleted u4/webhook-1"), "{said}");
    assert!(
        said.contains("0 channel(s) imported, 3 unchanged, 1 deleted"),
        "{said}"
    );
    // Down to one of three: refused, nothing changes, the command fails.
    let one = export(&["u1"]);
    let (ok, said) = run(&[one.to_str().unwrap(), "--prune"]);
    assert!(
        !ok && said.contains("max_delete_share") && said.contains("--force"),
        "{said}"
    );
    app.wait_routes("u3", "webhook-1").await;
    assert!(channel(&app, "u3", "webhook-1").await.is_some());
    let (ok, said) = run(&[one.to_str().unwrap(), "--prune", "--force"]);
    assert!(ok && said.contains("2 deleted"), "{said}");
    assert!(channel(&app, "u3", "webhook-1").await.is_none());
    // The API's channel is never the import's to delete.
    assert_eq!(
        channel(&app, "u9", "webhook-1").await.unwrap()["source"],
        "api"
    );
    app.stop().await;
}

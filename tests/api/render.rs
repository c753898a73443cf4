//! Rendering Alertmanager's configuration: amtool accepts it at 0, 1 and
//! 1,000 users in both modes, routes go where they should, a real
//! Alertmanager is reloaded by `serve` and routes through notimeter, a broken
//! base never replaces the last good file, and the Consul import.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

/// Runs the binary with a settings file that names the app's database.
fn notimeter(app: &TestApp, render: &str, args: &[&str]) -> std::process::Output {
    let config = app
        .dir
        .path()
        .join(format!("render-{}.toml", uuid::Uuid::new_v4().simple()));
    std::fs::write(
        &config,
        format!(
            "database_url = \"{}\"\noutbound_allow = [\"127.0.0.0/8\"]\n[render]\n{render}",
            app.database_url
        ),
    )
    .unwrap();
    Command::new(env!("CARGO_BIN_EXE_notimeter"))
        .arg("--config")
        .arg(&config)
        .args(args)
        .env_remove("NOTIMETER_CONFIG")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn amtool_check(path: &Path) {
    let out = Command::new("amtool")
        .arg("check-config")
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn add_users(app: &TestApp, from: usize, to: usize) {
    let mut puts = tokio::task::JoinSet::new();
    for u in from..to {
        let (http, url) = (
            app.http.clone(),
            app.url(&format!("/v1/users/user{u}/channels/hook")),
        );
        let matchers = if u % 2 == 0 {
            json!(["severity=~\"critical|warning\""])
        } else {
            json!([])
        };
        puts.spawn(async move {
            let r = http
                .put(url)
                .bearer_auth(ADMIN_TOKEN)
                .json(&json!({"type": "webhook", "settings": {"url": "http://127.0.0.1:9/x"}, "matchers": matchers, "repeat_interval": "4h"}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
        });
        if puts.len() >= 32 {
            puts.join_next().await;
        }
    }
    while puts.join_next().await.is_some() {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs amtool (apt-get install prometheus-alertmanager); run with --include-ignored"]
async fn amtool_accepts_0_1_and_1000_users_in_both_modes() {
    require("amtool", "prometheus-alertmanager");
    let app = spawn_app(&Backend::Sqlite).await;
    for (users, add) in [(0, (0, 0)), (1, (0, 1)), (1000, (1, 1000))] {
        add_users(&app, add.0, add.1).await;
        for mode in ["per-channel", "compact"] {
            let out_path = app.dir.path().join(format!("am-{mode}-{users}.yml"));
            let out = notimeter(
                &app,
                &format!("output = \"{}\"\nmode = \"{mode}\"\ncredentials_file = \"/etc/alertmanager/token\"\n", out_path.display()),
                &["render"],
            );
            assert!(
                out.status.success(),
                "{mode}, {users}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            amtool_check(&out_path);
            let text = std::fs::read_to_string(&out_path).unwrap();
            let receivers = text.matches("- name: notimeter/").count();
            assert_eq!(
                receivers,
                if mode == "per-channel" { users } else { 0 },
                "{mode}, {users}"
            );
            assert!(text.starts_with(&format!(
                "# Rendered by notimeter ({mode}, channels: {users})"
            )));
            assert!(
                !text.contains("127.0.0.1:9/x"),
                "no channel secret in the file"
            );
        }
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs amtool (apt-get install prometheus-alertmanager); run with --include-ignored"]
async fn routes_send_u2s_alert_to_u2s_matching_receivers_only() {
    require("amtool", "prometheus-alertmanager");
    let app = spawn_app(&Backend::Sqlite).await;
    for (u, c, matchers) in [
        ("u1", "all", json!([])),
        ("u2", "crit", json!(["severity=\"critical\""])),
        ("u2", "warn", json!(["severity=\"warning\""])),
        ("u2", "all", json!([])),
        ("u3", "crit", json!(["severity=\"critical\""])),
    ] {
        let body = json!({"type": "webhook", "settings": {"url": "http://127.0.0.1:9/x"}, "matchers": matchers});
        assert_eq!(app.put_channel(u, c, body).await.status(), 201);
    }
    let out_path = app.dir.path().join("am.yml");
    let out = notimeter(
        &app,
        &format!("output = \"{}\"\n", out_path.display()),
        &["render"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let routed = Command::new("amtool")
        .args(["config", "routes", "test", "--config.file"])
        .arg(&out_path)
        .args(["user_id=u2", "severity=critical"])
        .output()
        .unwrap();
    let mut got: Vec<String> = String::from_utf8_lossy(&routed.stdout)
        .trim()
        .split(',')
        .map(|s| s.trim().to_owned())
        .collect();
    got.sort();
    assert_eq!(got, ["notimeter/u2/all", "notimeter/u2/crit"]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guards_diff_dry_run_and_unchanged() {
    let app = spawn_app(&Backend::Sqlite).await;
    add_users(&app, 0, 10).await;
    let out_path = app.dir.path().join("am.yml");
    let render = format!("output = \"{}\"\n", out_path.display());
    assert!(notimeter(&app, &render, &["render"]).status.success());
    // Dated an hour back, so that a rewrite (now) would show in its mtime.
    let written = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&out_path)
        .unwrap()
        .set_modified(written)
        .unwrap();

    // Unchanged data: no write.
    let out = notimeter(&app, &render, &["render"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("unchanged"));
    assert_eq!(
        std::fs::metadata(&out_path).unwrap().modified().unwrap(),
        written
    );

    // Six of ten channels gone at once is refused unless forced.
    for u in 0..6 {
        let r = app
            .http
            .delete(app.url(&format!("/v1/users/user{u}/channels/hook")))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }
    let diff = notimeter(&app, &render, &["render", "--diff"]);
    let diff = String::from_utf8_lossy(&diff.stdout).to_string();
    assert!(
        diff.contains("-  - receiver: notimeter/user0/hook")
            && diff.contains("+# Rendered by notimeter (per-channel, channels: 4)"),
        "{diff}"
    );
    let dry = notimeter(&app, &render, &["render", "--dry-run"]);
    assert!(String::from_utf8_lossy(&dry.stdout)
        .starts_with("# Rendered by notimeter (per-channel, channels: 4)"));
    let refused = notimeter(&app, &render, &["render"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("6 fewer than the current 10"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert_eq!(
        std::fs::metadata(&out_path).unwrap().modified().unwrap(),
        written,
        "the last good file stays"
    );
    assert!(notimeter(&app, &render, &["render", "--force"])
        .status
        .success());
    assert!(std::fs::read_to_string(&out_path)
        .unwrap()
        .contains("channels: 4"));
    assert!(
        std::fs::read_to_string(out_path.with_file_name("am.yml.last-good"))
            .unwrap()
            .contains("channels: 10")
    );
    app.stop().await;
}

fn start_alertmanager(config: &Path, data: PathBuf) -> (KillOnDrop, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("prometheus-alertmanager")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.path={}", data.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .arg("--log.level=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (KillOnDrop(child), format!("http://127.0.0.1:{port}"))
}

async fn am_config_hash(http: &reqwest::Client, am: &str) -> f64 {
    let text = http
        .get(format!("{am}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metric_value(&text, "alertmanager_config_hash", &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs prometheus-alertmanager and amtool (apt-get install prometheus-alertmanager); run with --include-ignored"]
async fn serve_reloads_a_real_alertmanager_and_keeps_the_last_good_config() {
    require("prometheus-alertmanager", "prometheus-alertmanager");
    require("amtool", "prometheus-alertmanager");
    let dir = tempfile::tempdir().unwrap();
    let am_file = dir.path().join("alertmanager.yml");
    let base = dir.path().join("base.yml");
    let token = dir.path().join("ingest-token");
    std::fs::write(&token, INGEST_TOKEN).unwrap();
    std::fs::write(
        &base,
        "global:\n  resolve_timeout: 5m\nroute:\n  group_by: [alertname, user_id]\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\n\
         inhibit_rules:\n  - source_matchers: ['severity=\"critical\"']\n    target_matchers: ['severity=\"warning\"']\n    equal: [alertname, user_id]\n",
    )
    .unwrap();
    // Alertmanager starts on a first render (no channels yet).
    std::fs::write(
        &am_file,
        "route:\n  receiver: blackhole\nreceivers:\n  - name: blackhole\n",
    )
    .unwrap();
    let (_am, am_url) = start_alertmanager(&am_file, dir.path().join("data"));
    let http = reqwest::Client::new();
    wait_for_ok("alertmanager ready", &format!("{am_url}/-/ready")).await;

    let sink = Sink::start().await;
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let app = spawn_app_with(&Backend::Sqlite, |s| {
        s.listen = listen;
        s.render.output = Some(am_file.clone());
        s.render.base_config = Some(base.clone());
        s.render.alertmanager_url = Some(am_url.clone());
        s.render.public_url = format!("http://{listen}");
        s.render.credentials_file = Some(token.clone());
        s.render.debounce = Duration::from_millis(200);
    })
    .await;
    eventually("the first render", || async {
        std::fs::read_to_string(&am_file)
            .unwrap()
            .contains("channels: 0")
    })
    .await;

    // A channel is added: serve renders, reloads, and Alertmanager confirms.
    let hash_before = am_config_hash(&http, &am_url).await;
    app.add_webhook("u1", "hook", &sink.url("/u1")).await;
    eventually("Alertmanager to load the new config", || async {
        app.metric(
            "notimeter_alertmanager_reload_total",
            &[("result", "success")],
        )
        .await
            >= 2.0
    })
    .await;
    assert_ne!(am_config_hash(&http, &am_url).await, hash_before);
    let status: serde_json::Value = http
        .get(format!("{am_url}/api/v2/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(status["config"]["original"]
        .as_str()
        .unwrap()
        .contains("notimeter/u1/hook"));

    // Alertmanager now routes u1's alert to notimeter, which delivers it.
    let r = http
        .post(format!("{am_url}/api/v2/alerts"))
        .json(&json!([{"labels": {"alertname": "high_cpu", "user_id": "u1", "severity": "critical"}}]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got = sink.wait_for("/u1", 1).await;
    assert_eq!(got[0].json()["receiver"], "notimeter/u1/hook");

    // A broken base (a bad regex amtool rejects) never replaces the last good file.
    let good = std::fs::read_to_string(&am_file).unwrap();
    let hash_good = am_config_hash(&http, &am_url).await;
    std::fs::write(&base, "route:\n  group_by: [alertname]\ninhibit_rules:\n  - source_matchers: ['severity=~\"(\"']\n").unwrap();
    app.add_webhook("u2", "hook", &sink.url("/u2")).await;
    eventually("the render to be rejected", || async {
        app.metric("notimeter_render_total", &[("result", "rejected")])
            .await
            >= 1.0
    })
    .await;
    assert_eq!(std::fs::read_to_string(&am_file).unwrap(), good);
    assert_eq!(am_config_hash(&http, &am_url).await, hash_good);
    assert_eq!(
        http.get(format!("{am_url}/-/ready"))
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "Alertmanager keeps running"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs prometheus-alertmanager (apt-get install prometheus-alertmanager); run with --include-ignored"]
async fn a_failed_reload_restores_the_last_good_file() {
    require("prometheus-alertmanager", "prometheus-alertmanager");
    let dir = tempfile::tempdir().unwrap();
    let am_file = dir.path().join("alertmanager.yml");
    std::fs::write(
        &am_file,
        "route:\n  receiver: blackhole\nreceivers:\n  - name: blackhole\n",
    )
    .unwrap();
    let (_am, am_url) = start_alertmanager(&am_file, dir.path().join("data"));
    let http = reqwest::Client::new();
    wait_for_ok("alertmanager ready", &format!("{am_url}/-/ready")).await;
    let app = spawn_app(&Backend::Sqlite).await;
    app.add_webhook("u1", "hook", "http://127.0.0.1:9/x").await;
    // Without amtool, only Alertmanager itself can reject the bad regex.
    let base = dir.path().join("base.yml");
    std::fs::write(&base, "route:\n  group_by: [alertname]\ninhibit_rules:\n  - source_matchers: ['severity=~\"(\"']\n").unwrap();
    let render = format!(
        "output = \"{}\"\nbase_config = \"{}\"\nalertmanager_url = \"{am_url}\"\namtool = \"\"\n",
        am_file.display(),
        base.display()
    );
    let before = std::fs::read_to_string(&am_file).unwrap();
    let out = notimeter(&app, &render, &["render"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("last good one was restored"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&am_file).unwrap(), before);
    assert_eq!(
        http.get(format!("{am_url}/-/ready"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_import_creates_the_expected_channels_and_reports_the_bad_one() {
    use base64::Engine;
    let app = spawn_app(&Backend::Sqlite).await;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let export = json!([
        {"key": "users/", "flags": 0, "value": ""},
        {"key": "users/u1/alarms/email/1/receiver", "flags": 0, "value": b64("ops@example.com")},
        {"key": "users/u1/alarms/slack/2/api_url", "flags": 0, "value": b64("https://hooks.slack.com/services/T/B/X")},
        {"key": "users/u1/alarms/slack/2/channel", "flags": 0, "value": b64("#ops")},
        {"key": "users/u1/alarms/slack/2/username", "flags": 0, "value": b64("alerts")},
        {"key": "users/team.a/alarms/telegram/7/tele_webhook", "flags": 0, "value": b64("https://relay.example.com/hook/abc")},
        {"key": "users/team.a/alarms/webhook/9/url", "flags": 0, "value": b64("https://example.com/alerts")},
        {"key": "users/u2/alarms/webhook/3/uri", "flags": 0, "value": b64("https://example.com/typo")},
        {"key": "users/u3/alarms/pager/1/number", "flags": 0, "value": b64("12345")},
        {"key": "users/bad user/alarms/webhook/1/url", "flags": 0, "value": b64("https://example.com/x")}
    ]);
    let file = app.dir.path().join("consul.json");
    std::fs::write(&file, export.to_string()).unwrap();
    // Email channels need an SMTP server configured (else the import says so).
    let render = "amtool = \"\"\n[smtp]\nsmarthost = \"127.0.0.1:25\"\nfrom = \"n@example.com\"\ntls = \"none\"\n";
    for run in 0..2 {
        let out = notimeter(
            &app,
            render,
            &["import", "consul-export", file.to_str().unwrap()],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let said = String::from_utf8_lossy(&out.stdout).to_string();
        let expected = if run == 0 {
            "4 channel(s) imported, 0 unchanged, 0 deleted, 3 skipped"
        } else {
            "0 channel(s) imported, 4 unchanged, 0 deleted, 3 skipped"
        };
        assert!(said.contains(expected), "run {run}: {said}");
        assert!(
            said.contains("users/u2/alarms/webhook/3: settings: missing field `url`")
                || said.contains("users/u2/alarms/webhook/3: missing field \"url\""),
            "{said}"
        );
        assert!(said.contains("unknown alarm type \"pager\""), "{said}");
        assert!(said.contains("bad user"), "{said}");
    }
    let u1 = app.get_json("/v1/users/u1/channels", ADMIN_TOKEN).await;
    let ids: Vec<&str> = u1["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["channel_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["email-1", "slack-2"]);
    assert_eq!(u1["channels"][0]["settings"]["to"], "ops@example.com");
    assert_eq!(u1["channels"][1]["settings"]["channel"], "#ops");
    let team = app.get_json("/v1/users/team.a/channels", ADMIN_TOKEN).await;
    assert_eq!(team["channels"][0]["type"], "telegram");
    assert_eq!(team["channels"][0]["settings"]["webhook_url"], "<secret>");
    assert_eq!(team["channels"].as_array().unwrap().len(), 2);
    assert!(
        app.get_json("/v1/users/u2/channels", ADMIN_TOKEN).await["channels"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // Live from Consul's KV API: same data, capitalised keys; a 404 is "no keys".
    let consul = Sink::start().await;
    let api: Vec<serde_json::Value> = export
        .as_array()
        .unwrap()
        .iter()
        .map(|e| json!({"Key": e["key"], "Flags": 0, "Value": e["value"], "CreateIndex": 1, "ModifyIndex": 1, "LockIndex": 0}))
        .collect();
    consul.default_reply(Reply::new(200, &serde_json::to_string(&api).unwrap()));
    let out = notimeter(
        &app,
        render,
        &["import", "consul-export", "--from-consul", &consul.url("")],
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("0 channel(s) imported, 4 unchanged"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(consul.received()[0].path, "/v1/kv/users/");
    let empty = Sink::start().await;
    empty.default_reply(Reply::new(404, ""));
    let out = notimeter(
        &app,
        render,
        &["import", "consul-export", "--from-consul", &empty.url("")],
    );
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("0 channel(s) imported, 0 unchanged, 0 deleted, 0 skipped"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_that_cannot_be_rendered_is_left_out_and_the_rest_published() {
    let app = spawn_app(&Backend::Sqlite).await;
    let ok = json!({"type": "webhook", "settings": {"url": "http://127.0.0.1:9/x"}, "repeat_interval": "4h"});
    let short = json!({"type": "webhook", "settings": {"url": "http://127.0.0.1:9/x"}, "repeat_interval": "2m"});
    assert_eq!(app.put_channel("u1", "ok", ok).await.status(), 201);
    assert_eq!(app.put_channel("u2", "short", short).await.status(), 201);
    // The operator raises the dedupe window past u2's repeat_interval.
    let config = app.dir.path().join("wide-window.toml");
    let out_path = app.dir.path().join("am.yml");
    std::fs::write(
        &config,
        format!(
            "database_url = \"{}\"\ndedupe_window = \"5m\"\n[render]\noutput = \"{}\"\n",
            app.database_url,
            out_path.display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_notimeter"))
        .arg("--config")
        .arg(&config)
        .arg("render")
        .env_remove("NOTIMETER_CONFIG")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(
        logs.contains("channel left out of the rendered config")
            && logs.contains("u2")
            && logs.contains("dedupe_window"),
        "{logs}"
    );
    let text = std::fs::read_to_string(&out_path).unwrap();
    assert!(
        text.contains("notimeter/u1/ok") && !text.contains("notimeter/u2/short"),
        "{text}"
    );
    assert!(text.starts_with("# Rendered by notimeter (per-channel, channels: 1)"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_channel_changes_gives_one_render() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("am.yml");
    let app = spawn_app_with(&Backend::Sqlite, |s| {
        s.render.output = Some(out_path.clone());
        s.render.credentials_file = Some("/etc/alertmanager/token".into());
        s.render.amtool = String::new();
        s.render.debounce = Duration::from_millis(400);
    })
    .await;
    let published = || app.metric("notimeter_render_total", &[("result", "published")]);
    eventually("the first render", || async { published().await == 1.0 }).await;
    for u in 0..5 {
        app.add_webhook(&format!("u{u}"), "hook", "http://127.0.0.1:9/x")
            .await;
    }
    let rendered = |channels: usize| {
        let out_path = &out_path;
        async move {
            std::fs::read_to_string(out_path)
                .unwrap()
                .contains(&format!("channels: {channels}"))
        }
    };
    eventually("the burst's render", || rendered(5)).await;
    // One more change, after the burst's render: once it is rendered too,
    // every render the burst caused is counted. A burst rendered twice
    // makes four.
    app.add_webhook("u5", "hook", "http://127.0.0.1:9/x").await;
    eventually("the next change's render", || async {
        rendered(6).await && published().await >= 3.0
    })
    .await;
    assert_eq!(
        published().await,
        3.0,
        "five changes in a burst, one render (and one for the change after it)"
    );
    app.stop().await;
}

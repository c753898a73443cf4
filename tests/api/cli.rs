//! The CLI as a new operator meets it: a verb run in the wrong folder names
//! the database it looked for and creates nothing; an error is said once,
//! without a backtrace, with the setting's TOML key and environment variable;
//! test and tool variables under NOTIMETER_TEST_ are not read as settings.

use std::process::Command;

fn notimeter(dir: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_notimeter"));
    c.current_dir(dir)
        .env_remove("NOTIMETER_CONFIG")
        .env_remove("NOTIMETER_DATABASE_URL")
        .env("RUST_BACKTRACE", "1");
    c
}

#[test]
fn one_shot_verbs_open_an_existing_database_only() {
    let dir = tempfile::tempdir().unwrap();
    for verb in [
        &["ledger", "close"][..],
        &["ledger", "export", "--period", "x"],
        &["render", "--dry-run"],
    ] {
        let out = notimeter(dir.path()).args(verb).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{verb:?}: {stderr}");
        assert!(
            stderr.contains("no database at notimeter.db"),
            "{verb:?}: {stderr}"
        );
        assert!(
            stderr.contains("NOTIMETER_DATABASE_URL"),
            "{verb:?}: {stderr}"
        );
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "said once, no backtrace: {stderr}"
        );
        assert!(
            !dir.path().join("notimeter.db").exists(),
            "{verb:?} created a database"
        );
    }
    // migrate creates it; then the verbs work.
    assert!(notimeter(dir.path())
        .arg("migrate")
        .status()
        .unwrap()
        .success());
    let out = notimeter(dir.path())
        .args(["ledger", "close"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn an_error_is_said_once_with_how_to_set_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = notimeter(dir.path())
        .arg("serve")
        .env("NOTIMETER_LISTEN", "0.0.0.0:0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("ingest_token") && stderr.contains("NOTIMETER_INGEST_TOKEN"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("stack backtrace") && !stderr.contains("Stack backtrace"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("refusing to listen").count(), 1, "{stderr}");
}

#[test]
fn test_variables_are_not_settings() {
    let dir = tempfile::tempdir().unwrap();
    let out = notimeter(dir.path())
        .arg("migrate")
        .env("NOTIMETER_TEST_SCREENSHOT", "/tmp/shots")
        .env("NOTIMETER_TEST_POSTGRES_URL", "postgres://nowhere")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = notimeter(dir.path())
        .arg("migrate")
        .env("NOTIMETER_NO_SUCH", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an unknown setting is refused");
    assert!(stderr.contains("no_such"), "{stderr}");
}

#[test]
fn a_render_that_could_not_authenticate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    assert!(notimeter(dir.path())
        .arg("migrate")
        .output()
        .unwrap()
        .status
        .success());
    // The CLI renders to standard output; serve would render to a file.
    let out = notimeter(dir.path())
        .args(["render", "--dry-run"])
        .env("NOTIMETER_INGEST_TOKEN", "secret")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("render.credentials_file") && stderr.contains("401"),
        "{stderr}"
    );
    let out = notimeter(dir.path())
        .arg("serve")
        .env("NOTIMETER_INGEST_TOKEN", "secret")
        .env("NOTIMETER_RENDER__OUTPUT", dir.path().join("am.yml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "serve refuses to start: {stderr}");
    assert!(
        stderr.contains("NOTIMETER_RENDER__CREDENTIALS_FILE"),
        "{stderr}"
    );
    // With the file named, the render goes through.
    let out = notimeter(dir.path())
        .args(["render", "--dry-run"])
        .env("NOTIMETER_INGEST_TOKEN", "secret")
        .env(
            "NOTIMETER_RENDER__CREDENTIALS_FILE",
            "/etc/alertmanager/notimeter-ingest-token",
        )
        .env("NOTIMETER_RENDER__AMTOOL", "")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("credentials_file: /etc/alertmanager/notimeter-ingest-token"),
        "{stdout}"
    );
}

/// The README's quick start: `notimeter receive` stands in for a customer's
/// webhook and `examples/alert.json` for Alertmanager; the notification is
/// delivered to it, counted and billed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quick_start_ends_with_a_delivered_billed_notification() {
    use crate::helpers::*;
    use std::io::BufRead;

    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut receiver = notimeter(dir.path())
        .args(["receive", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = receiver.stdout.take().unwrap();
    let _receiver = KillOnDrop(receiver);
    let (lines, got) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines.send(line);
        }
    });
    let app = spawn_app_with(&Backend::Sqlite, |s| {
        s.billing.prices.insert(
            notimeter::domain::IntegrationKind::Webhook,
            "0.01".parse().unwrap(),
        );
    })
    .await;
    wait_for_ok("the receiver", &format!("http://127.0.0.1:{port}/ready")).await;
    app.add_webhook("u1", "hook", &format!("http://127.0.0.1:{port}/u1"))
        .await;
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/alert.json");
    let payload: serde_json::Value =
        serde_json::from_slice(&std::fs::read(example).unwrap()).unwrap();
    assert_eq!(app.post_alerts(&payload).await.status(), 200);
    app.wait_idle().await;
    let mut printed = String::new();
    while !(printed.contains("--- POST /u1") && printed.contains("DiskFull")) {
        match got.recv_timeout(std::time::Duration::from_secs(10)) {
            Ok(line) => printed.push_str(&line),
            Err(_) => panic!("the receiver did not print the notification: {printed}"),
        }
    }
    let usage = app.get_json("/v1/usage", FINANCE_TOKEN).await;
    assert_eq!(usage["usage"][0]["delivered"], 1, "{usage}");
    assert_eq!(usage["total"], "0.01", "{usage}");
    app.stop().await;
}

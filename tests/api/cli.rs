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

//! The files under deploy/ are valid: the example settings load, and
//! Alertmanager's own checker accepts the Alertmanager configurations.

use std::path::Path;
use std::process::Command;

#[test]
fn example_settings_load_with_documented_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/notimeter.toml");
    let example =
        notimeter::config::Settings::load(Some(&path)).expect("deploy/notimeter.toml loads");
    let defaults = notimeter::config::Settings::default();
    // The example documents the defaults: it must not drift from them.
    assert_eq!(format!("{example:?}"), format!("{defaults:?}"));
}

#[test]
#[ignore = "needs amtool (apt-get install prometheus-alertmanager); run with --include-ignored"]
fn alertmanager_examples_pass_amtool() {
    crate::helpers::require("amtool", "prometheus-alertmanager");
    for file in ["deploy/alertmanager.yml", "deploy/alertmanager.compose.yml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        let out = Command::new("amtool")
            .arg("check-config")
            .arg(&path)
            .output()
            .expect("run amtool");
        assert!(
            out.status.success(),
            "{file}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

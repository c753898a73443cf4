//! deploy/, as shipped: every file parses; the example settings load; every
//! metric the Prometheus rules and the Grafana dashboard use is on a live
//! `/metrics`; promtool accepts and unit-tests the rules; amtool accepts the
//! Alertmanager files (the compose setup's as notimeter renders it); the
//! Kubernetes manifests have what Kubernetes requires; the compose file names
//! files, volumes and variables that exist; systemd accepts the unit and
//! rates it well.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_norway::Value;

use crate::helpers::*;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn read(relative: &str) -> String {
    let path = deploy_dir().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every document of a YAML file (`---`-separated), merge keys (`<<`) applied.
fn yaml_documents(relative: &str) -> Vec<Value> {
    let text = read(relative);
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| {
            let mut value = serde::Deserialize::deserialize(doc)
                .unwrap_or_else(|e| panic!("deploy/{relative} is not YAML: {e}"));
            Value::apply_merge(&mut value)
                .unwrap_or_else(|e| panic!("deploy/{relative}: merge keys: {e}"));
            value
        })
        .collect()
}

fn yaml(relative: &str) -> Value {
    let mut docs = yaml_documents(relative);
    assert_eq!(docs.len(), 1, "deploy/{relative}: one document");
    docs.remove(0)
}

/// The value at a dotted path (`spec.template.spec`), if every step is there.
fn at<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |v, key| v.get(key))
}

fn str_at<'a>(value: &'a Value, path: &str, what: &str) -> &'a str {
    at(value, path)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{what}: no {path}"))
}

fn seq_at<'a>(value: &'a Value, path: &str, what: &str) -> &'a [Value] {
    match at(value, path) {
        Some(Value::Sequence(s)) if !s.is_empty() => s,
        _ => panic!("{what}: {path} is missing or empty"),
    }
}

/// Every YAML file under deploy/, as paths relative to it.
fn yaml_files() -> Vec<String> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, base, out);
            } else if path.extension().is_some_and(|e| e == "yml" || e == "yaml") {
                out.push(path.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut files = Vec::new();
    walk(&deploy_dir(), &deploy_dir(), &mut files);
    files.sort();
    files
}

#[test]
fn example_settings_load_with_documented_defaults() {
    let path = deploy_dir().join("notimeter.toml");
    let example =
        notimeter::config::Settings::load(Some(&path)).expect("deploy/notimeter.toml loads");
    let defaults = notimeter::config::Settings::default();
    // The example documents the defaults: it must not drift from them.
    assert_eq!(format!("{example:?}"), format!("{defaults:?}"));
}

#[test]
fn every_yaml_file_in_deploy_parses() {
    let files = yaml_files();
    assert!(files.len() >= 15, "{files:?}");
    for file in &files {
        assert!(!yaml_documents(file).is_empty(), "deploy/{file} is empty");
    }
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("grafana/notimeter.json")).expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "notimeter");
}

// ---- metric names ----------------------------------------------------------------

/// The PromQL expressions of every alerting rule.
fn rule_expressions() -> Vec<(String, String)> {
    let rules = yaml("prometheus/notimeter.rules.yml");
    seq_at(&rules, "groups", "rules")
        .iter()
        .flat_map(|g| seq_at(g, "rules", "a rule group").iter())
        .map(|r| {
            let name = str_at(r, "alert", "a rule").to_owned();
            (name.clone(), str_at(r, "expr", &name).to_owned())
        })
        .collect()
}

/// The PromQL expressions of every dashboard panel (rows' panels included)
/// and template variable, with the panel's title.
fn dashboard_expressions() -> Vec<(String, String)> {
    fn walk(panels: &[serde_json::Value], out: &mut Vec<(String, String)>) {
        for panel in panels {
            let title = panel["title"].as_str().unwrap_or("untitled").to_owned();
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().expect("a target with an expr");
                out.push((title.clone(), expr.to_owned()));
            }
            if let Some(inner) = panel["panels"].as_array() {
                walk(inner, out);
            }
        }
    }
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("grafana/notimeter.json")).unwrap();
    let mut out = Vec::new();
    walk(dashboard["panels"].as_array().unwrap(), &mut out);
    assert!(out.len() > 20, "the dashboard's panels query: {out:?}");
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(query) = var["definition"].as_str() {
            out.push((format!("variable {}", var["name"]), query.to_owned()));
        }
    }
    out
}

/// notimeter's metric names in a PromQL expression (a crude scan: words
/// starting `notimeter_`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(r"\bnotimeter_[A-Za-z0-9_]+").unwrap();
    re.find_iter(expr).map(|m| m.as_str().to_owned()).collect()
}

/// Metric families in an exposition, by name, with their type.
fn families(exposition: &str) -> BTreeMap<String, String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let (name, kind) = l.split_once(' ')?;
            Some((name.to_owned(), kind.trim().to_owned()))
        })
        .collect()
}

/// Whether `name` is exported: a family, or a histogram's series.
fn exported(name: &str, families: &BTreeMap<String, String>) -> bool {
    families.contains_key(name)
        || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix)
                .is_some_and(|base| families.get(base).is_some_and(|k| k == "histogram"))
        })
}

/// What the stand-in Alertmanager's `/metrics` says: enough for the
/// reconciliation to begin its count.
const ALERTMANAGER_METRICS: &str = "# TYPE alertmanager_notification_requests_total counter\n\
alertmanager_notification_requests_total{integration=\"webhook\"} 0\n\
# TYPE alertmanager_notification_requests_failed_total counter\n\
alertmanager_notification_requests_failed_total{integration=\"webhook\"} 0\n\
# TYPE process_start_time_seconds gauge\n\
process_start_time_seconds 1.7e+09\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_in_rules_and_dashboard_is_exported() {
    const METRICS_TOKEN: &str = "metrics-token-for-tests";
    // Stand-ins for Alertmanager (the renderer reloads it) and Consul (an
    // empty prefix): what they answer does not matter here, only that the
    // renderer, the watch and the reconciliation run, as the compose setup has them.
    let alertmanager = Sink::start().await;
    alertmanager.default_reply(Reply::new(200, ALERTMANAGER_METRICS));
    let consul = Sink::start().await;
    consul.default_reply(Reply::new(404, "").header("X-Consul-Index", "1"));
    let rendered = tempfile::tempdir().unwrap();
    let app = spawn_app_with(&Backend::Sqlite, |s| {
        s.metrics_token = Some(notimeter::config::Secret::new(METRICS_TOKEN));
        s.render.output = Some(rendered.path().join("alertmanager.yml"));
        s.render.credentials_file = Some("/etc/alertmanager/secrets/ingest-token".into());
        s.render.alertmanager_url = Some(alertmanager.url(""));
        s.render.amtool = String::new();
        s.render.reload_timeout = Duration::from_millis(500);
        s.consul.address = Some(consul.url(""));
        s.reconcile.alertmanager_urls = vec![alertmanager.url("")];
        s.reconcile.interval = Duration::from_millis(200);
    })
    .await;

    // One delivered message, and an alert without a user_id (undeliverable).
    let receiver = Sink::start().await;
    app.add_webhook("u1", "hook", &receiver.url("/hook")).await;
    let alerts = vec![
        alert("high_cpu", Some("u1"), "f1"),
        alert("high_cpu", None, "f2"),
    ];
    assert_eq!(
        app.post_alerts(&payload("catch-all", "g1", alerts))
            .await
            .status(),
        200
    );
    receiver.wait_for("/hook", 1).await;
    app.wait_idle().await;

    let scrape = || async {
        app.http
            .get(app.url("/metrics"))
            .bearer_auth(METRICS_TOKEN)
            .send()
            .await
            .unwrap()
    };
    let open = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(open.status(), 401, "/metrics is behind metrics_token");

    let mut used: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (source, expr) in rule_expressions()
        .into_iter()
        .map(|(alert, e)| (format!("rule {alert}"), e))
        .chain(
            dashboard_expressions()
                .into_iter()
                .map(|(title, e)| (format!("panel {title:?}"), e)),
        )
    {
        for name in metric_names(&expr) {
            used.entry(name).or_default().insert(source.clone());
        }
    }
    assert!(used.len() >= 20, "{:?}", used.keys());

    // The renderer's and the watch's series appear once they have started:
    // scrape until every name is there, or give up and name what is not.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let response = scrape().await;
        assert_eq!(response.status(), 200);
        let families = families(&response.text().await.unwrap());
        let missing: Vec<_> = used
            .iter()
            .filter(|(name, _)| !exported(name, &families))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "used in deploy/ but not on /metrics: {missing:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.stop().await;
}

// ---- promtool ----------------------------------------------------------------------

fn run_ok(command: &mut Command) -> String {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{command:?} failed:\n{text}");
    text
}

#[test]
#[ignore = "needs promtool (apt-get install prometheus); run with --include-ignored"]
fn rules_dashboard_and_scrape_config_pass_promtool() {
    require("promtool", "prometheus");
    let dir = deploy_dir().join("prometheus");
    run_ok(
        Command::new("promtool")
            .args(["check", "rules"])
            .arg(dir.join("notimeter.rules.yml")),
    );
    run_ok(
        Command::new("promtool")
            .args(["test", "rules"])
            .arg(dir.join("notimeter.rules.test.yml")),
    );
    // Paths in it are the Prometheus container's: the syntax only.
    run_ok(
        Command::new("promtool")
            .args(["check", "config", "--syntax-only"])
            .arg(dir.join("prometheus.yml")),
    );

    // Every dashboard query is PromQL once Grafana's variables are filled in:
    // checked as recording rules.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in dashboard_expressions().iter().enumerate() {
        if expr.starts_with("label_values(") {
            continue; // Grafana's, not PromQL
        }
        let filled = expr
            .replace("$__rate_interval", "5m")
            .replace("$__range", "1h")
            .replace("$top", "10")
            .replace("$job", ".+")
            .replace("$instance", ".+");
        rules.push_str(&format!(
            "      - record: dashboard:panel_{i}\n        expr: {}\n",
            serde_json::to_string(&filled).unwrap()
        ));
    }
    let file = tempfile::Builder::new().suffix(".yml").tempfile().unwrap();
    std::fs::write(file.path(), rules).unwrap();
    run_ok(
        Command::new("promtool")
            .args(["check", "rules"])
            .arg(file.path()),
    );
}

#[test]
fn every_alert_is_unit_tested_firing_and_not() {
    let alerts: BTreeSet<String> = rule_expressions().into_iter().map(|(a, _)| a).collect();
    let tests = yaml("prometheus/notimeter.rules.test.yml");
    let mut firing = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for case in seq_at(&tests, "tests", "rules tests") {
        for eval in seq_at(case, "alert_rule_test", "a test case") {
            let name = str_at(eval, "alertname", "an alert_rule_test").to_owned();
            match at(eval, "exp_alerts") {
                Some(Value::Sequence(expected)) if !expected.is_empty() => firing.insert(name),
                _ => quiet.insert(name),
            };
        }
    }
    assert_eq!(firing, alerts, "every alert has a case where it fires");
    assert_eq!(quiet, alerts, "every alert has a case where it does not");
}

// ---- Alertmanager ------------------------------------------------------------------

/// The compose file's services, merge keys applied.
fn compose() -> Value {
    yaml("docker-compose.yml")
}

#[test]
#[ignore = "needs amtool (apt-get install prometheus-alertmanager); run with --include-ignored"]
fn alertmanager_configs_pass_amtool() {
    require("amtool", "prometheus-alertmanager");
    run_ok(
        Command::new("amtool")
            .arg("check-config")
            .arg(deploy_dir().join("alertmanager.yml")),
    );

    // The compose setup's Alertmanager file, rendered as its `render` service
    // does: its render settings, the base file, amtool on the way.
    let compose = compose();
    let environment = at(&compose, "services.render.environment")
        .and_then(Value::as_mapping)
        .expect("the render service's environment");
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("alertmanager/alertmanager.yml");
    std::fs::create_dir_all(output.parent().unwrap()).unwrap();
    let database = format!("sqlite://{}", dir.path().join("notimeter.db").display());
    // As the service's command does: migrate (render opens an existing
    // database only), then render.
    run_ok(
        Command::new(env!("CARGO_BIN_EXE_notimeter"))
            .arg("migrate")
            .env_clear()
            .env("NOTIMETER_DATABASE_URL", &database),
    );
    let mut render = Command::new(env!("CARGO_BIN_EXE_notimeter"));
    render
        .arg("render")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("NOTIMETER_DATABASE_URL", &database);
    for (key, value) in environment {
        let (key, value) = (key.as_str().unwrap(), value.as_str().unwrap());
        if key.starts_with("NOTIMETER_RENDER__") {
            render.env(key, value);
        }
    }
    render
        .env("NOTIMETER_RENDER__OUTPUT", &output)
        .env(
            "NOTIMETER_RENDER__BASE_CONFIG",
            deploy_dir().join("alertmanager-base.yml"),
        )
        .env("NOTIMETER_RENDER__AMTOOL", "amtool");
    run_ok(&mut render);
    run_ok(Command::new("amtool").arg("check-config").arg(&output));
    let rendered = std::fs::read_to_string(&output).unwrap();
    assert!(
        rendered.contains("credentials_file: /etc/alertmanager/secrets/ingest-token"),
        "{rendered}"
    );
}

// ---- Kubernetes --------------------------------------------------------------------

/// The Kubernetes objects in deploy/kubernetes/, by kind then name.
fn kubernetes_objects() -> BTreeMap<(String, String), (String, Value)> {
    let mut objects = BTreeMap::new();
    let name_ok = regex::Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$").unwrap();
    for file in yaml_files() {
        if !file.starts_with("kubernetes/") || file.ends_with("kustomization.yaml") {
            continue;
        }
        for doc in yaml_documents(&file) {
            let api_version = str_at(&doc, "apiVersion", &file);
            assert!(
                api_version.contains('v'),
                "{file}: apiVersion {api_version}"
            );
            let kind = str_at(&doc, "kind", &file).to_owned();
            let name = str_at(&doc, "metadata.name", &file).to_owned();
            assert!(name_ok.is_match(&name), "{file}: metadata.name {name:?}");
            assert!(
                objects
                    .insert((kind.clone(), name.clone()), (file.clone(), doc))
                    .is_none(),
                "{kind} {name} defined twice"
            );
        }
    }
    objects
}

fn object<'a>(
    objects: &'a BTreeMap<(String, String), (String, Value)>,
    kind: &str,
    name: &str,
) -> &'a Value {
    &objects
        .get(&(kind.to_owned(), name.to_owned()))
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/kubernetes"))
        .1
}

/// Whether every pair of `selector` is in `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let selector = selector.as_mapping().expect("a label map");
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[test]
fn kubernetes_manifests_have_what_kubernetes_requires() {
    let objects = kubernetes_objects();

    // kustomization.yaml lists every manifest.
    let kustomization = yaml("kubernetes/kustomization.yaml");
    let listed: BTreeSet<String> = seq_at(&kustomization, "resources", "kustomization")
        .iter()
        .map(|r| format!("kubernetes/{}", r.as_str().unwrap()))
        .collect();
    let files: BTreeSet<String> = objects.values().map(|(file, _)| file.clone()).collect();
    assert_eq!(listed, files, "kustomization.yaml's resources");

    // Deployment: selector, template, containers with image, probes, limits,
    // non-root, read-only root with writable volumes.
    let deployment = object(&objects, "Deployment", "notimeter");
    let what = "Deployment notimeter";
    let template_labels = at(deployment, "spec.template.metadata.labels").expect(what);
    assert!(
        selects(
            at(deployment, "spec.selector.matchLabels").expect(what),
            template_labels
        ),
        "{what}: the selector matches the template's labels"
    );
    let pod = at(deployment, "spec.template.spec").expect(what);
    assert_eq!(
        at(pod, "securityContext.runAsNonRoot"),
        Some(&Value::Bool(true))
    );
    assert!(at(pod, "securityContext.runAsUser").is_some_and(|u| u.as_u64() == Some(10001)));
    let volumes: BTreeSet<&str> = seq_at(pod, "volumes", what)
        .iter()
        .map(|v| str_at(v, "name", "a volume"))
        .collect();
    for container in seq_at(pod, "containers", what) {
        let name = str_at(container, "name", what);
        assert!(!str_at(container, "image", name).is_empty());
        for probe in ["livenessProbe", "readinessProbe"] {
            assert!(
                at(container, &format!("{probe}.httpGet.path")).is_some(),
                "{name}: {probe}"
            );
        }
        assert_eq!(
            str_at(container, "readinessProbe.httpGet.path", name),
            "/readyz"
        );
        assert_eq!(
            str_at(container, "livenessProbe.httpGet.path", name),
            "/healthz"
        );
        assert!(at(container, "resources.requests").is_some(), "{name}");
        assert!(at(container, "resources.limits.memory").is_some(), "{name}");
        assert_eq!(
            at(container, "securityContext.readOnlyRootFilesystem"),
            Some(&Value::Bool(true))
        );
        assert_eq!(
            at(container, "securityContext.allowPrivilegeEscalation"),
            Some(&Value::Bool(false))
        );
        for mount in seq_at(container, "volumeMounts", name) {
            let volume = str_at(mount, "name", name);
            assert!(volumes.contains(volume), "{name}: no volume {volume}");
        }
        let ports: Vec<&str> = seq_at(container, "ports", name)
            .iter()
            .map(|p| str_at(p, "name", "a port"))
            .collect();
        assert!(ports.contains(&"http"));
        for source in seq_at(container, "envFrom", name) {
            let secret = str_at(source, "secretRef.name", name);
            object(&objects, "Secret", secret);
        }
    }
    for volume in seq_at(pod, "volumes", what) {
        if let Some(map) = at(volume, "configMap.name") {
            object(&objects, "ConfigMap", map.as_str().unwrap());
        }
    }

    // Service: ports, and a selector that finds the Deployment's pods.
    let service = object(&objects, "Service", "notimeter");
    assert!(selects(
        at(service, "spec.selector").expect("Service selector"),
        template_labels
    ));
    let service_ports: BTreeSet<&str> = seq_at(service, "spec.ports", "Service")
        .iter()
        .map(|p| {
            assert!(at(p, "port").and_then(Value::as_u64).is_some(), "a port");
            str_at(p, "name", "a Service port")
        })
        .collect();

    // ConfigMap: the settings load.
    let config = object(&objects, "ConfigMap", "notimeter");
    // (A key with a dot: not a path for at().)
    let toml = config
        .get("data")
        .and_then(|d| d.get("notimeter.toml"))
        .and_then(Value::as_str)
        .expect("ConfigMap notimeter: data.notimeter.toml");
    let file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(file.path(), toml).unwrap();
    notimeter::config::Settings::load(Some(file.path())).expect("the ConfigMap's settings load");

    // Secret: the keys others refer to.
    let secret = object(&objects, "Secret", "notimeter");
    let keys = at(secret, "stringData")
        .or_else(|| at(secret, "data"))
        .and_then(Value::as_mapping)
        .expect("Secret notimeter: stringData");
    for key in ["NOTIMETER_DATABASE_URL", "NOTIMETER_METRICS_TOKEN"] {
        assert!(keys.contains_key(key), "Secret notimeter: {key}");
    }

    // ServiceMonitor: finds the Service, on one of its ports, with the token.
    let monitor = object(&objects, "ServiceMonitor", "notimeter");
    assert!(selects(
        at(monitor, "spec.selector.matchLabels").expect("ServiceMonitor selector"),
        at(service, "metadata.labels").expect("Service labels")
    ));
    for endpoint in seq_at(monitor, "spec.endpoints", "ServiceMonitor") {
        assert!(service_ports.contains(str_at(endpoint, "port", "an endpoint")));
        assert_eq!(
            str_at(endpoint, "authorization.credentials.name", "an endpoint"),
            "notimeter"
        );
        let key = str_at(endpoint, "authorization.credentials.key", "an endpoint");
        assert!(keys.contains_key(key), "Secret notimeter: {key}");
    }

    // PrometheusRule: the same groups as deploy/prometheus/notimeter.rules.yml.
    let rule = object(&objects, "PrometheusRule", "notimeter");
    assert_eq!(
        at(rule, "spec.groups"),
        at(&yaml("prometheus/notimeter.rules.yml"), "groups"),
        "prometheusrule.yaml wraps the rules file as it is"
    );
}

// ---- compose -----------------------------------------------------------------------

/// The `source:target[:mode]` volumes of a compose service.
fn mounts(service: &Value) -> Vec<(String, String)> {
    match service.get("volumes") {
        Some(Value::Sequence(volumes)) => volumes
            .iter()
            .map(|v| {
                let parts: Vec<&str> = v
                    .as_str()
                    .expect("short volume syntax")
                    .split(':')
                    .collect();
                (parts[0].to_owned(), parts[1].to_owned())
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Whether `path` (inside `service`'s container) lies in one of its mounts.
fn mounted(service: &Value, path: &str) -> bool {
    mounts(service).iter().any(|(_, target)| {
        path == target || path.starts_with(&format!("{}/", target.trim_end_matches('/')))
    })
}

#[test]
fn compose_refers_to_files_volumes_and_variables_that_exist() {
    let compose = compose();
    let services = at(&compose, "services")
        .and_then(Value::as_mapping)
        .expect("services");
    let declared: BTreeSet<&str> = at(&compose, "volumes")
        .and_then(Value::as_mapping)
        .expect("volumes")
        .keys()
        .map(|k| k.as_str().unwrap())
        .collect();
    for (name, service) in services {
        let name = name.as_str().unwrap();
        assert!(
            service.get("image").is_some() || service.get("build").is_some(),
            "{name}: image or build"
        );
        if let Some(build) = service.get("build") {
            let context = deploy_dir().join(str_at(build, "context", name));
            assert!(context.join(str_at(build, "dockerfile", name)).is_file());
        }
        for (source, target) in mounts(service) {
            assert!(target.starts_with('/'), "{name}: {target}");
            if let Some(file) = source.strip_prefix("./") {
                assert!(
                    deploy_dir().join(file).exists(),
                    "{name} mounts deploy/{file}, which does not exist"
                );
            } else {
                assert!(
                    declared.contains(source.as_str()),
                    "{name}: volume {source} is not declared"
                );
            }
        }
        if let Some(Value::Mapping(deps)) = service.get("depends_on") {
            for dep in deps.keys() {
                assert!(services.contains_key(dep), "{name} depends on {dep:?}");
            }
        }
    }

    // Every variable it reads from .env is in .env.example.
    let example = read(".env.example");
    let re = regex::Regex::new(r"\$\{([A-Z0-9_]+)").unwrap();
    for var in re.captures_iter(&read("docker-compose.yml")) {
        assert!(
            example.contains(&format!("\n{}=", &var[1])),
            ".env.example lacks {}",
            &var[1]
        );
    }

    // What the containers read lies in what they mount: Prometheus's rules
    // and metrics token, Alertmanager's rendered file and ingest token,
    // Grafana's dashboards.
    let service = |name: &str| at(&compose, &format!("services.{name}")).unwrap();
    let prometheus_config = yaml("prometheus/prometheus.yml");
    for rule_file in seq_at(&prometheus_config, "rule_files", "prometheus.yml") {
        assert!(mounted(service("prometheus"), rule_file.as_str().unwrap()));
    }
    let notimeter_job = seq_at(&prometheus_config, "scrape_configs", "prometheus.yml")
        .iter()
        .find(|j| at(j, "job_name").and_then(Value::as_str) == Some("notimeter"))
        .expect("a scrape job named notimeter (the rules select job=\"notimeter\")");
    let token_file = str_at(
        notimeter_job,
        "authorization.credentials_file",
        "the notimeter job",
    );
    assert!(mounted(service("prometheus"), token_file), "{token_file}");
    let environment = at(service("notimeter"), "environment").unwrap();
    let env = |key: &str| str_at(environment, key, "notimeter's environment");
    assert!(mounted(
        service("notimeter"),
        env("NOTIMETER_RENDER__OUTPUT")
    ));
    assert!(mounted(
        service("notimeter"),
        env("NOTIMETER_RENDER__BASE_CONFIG")
    ));
    assert!(mounted(
        service("alertmanager"),
        env("NOTIMETER_RENDER__CREDENTIALS_FILE")
    ));
    let config_flag = seq_at(service("alertmanager"), "command", "alertmanager")
        .iter()
        .filter_map(Value::as_str)
        .find_map(|a| a.strip_prefix("--config.file="))
        .expect("alertmanager --config.file");
    assert!(mounted(service("alertmanager"), config_flag));
    // The rendered folder is the same volume in both.
    let volume_at = |service: &Value, path: &str| {
        mounts(service)
            .into_iter()
            .find(|(_, target)| path.starts_with(target.as_str()))
            .map(|(source, _)| source)
    };
    assert_eq!(
        volume_at(service("notimeter"), env("NOTIMETER_RENDER__OUTPUT")),
        volume_at(service("alertmanager"), config_flag)
    );
    assert!(
        env("NOTIMETER_METRICS_TOKEN").contains("NOTIMETER_METRICS_TOKEN"),
        "/metrics behind metrics_token"
    );
    let provider = yaml("grafana/provisioning/dashboards/notimeter.yml");
    let path = str_at(
        &seq_at(&provider, "providers", "dashboard provider")[0],
        "options.path",
        "the dashboard provider",
    );
    assert!(mounted(
        service("grafana"),
        &format!("{path}/notimeter.json")
    ));

    // The image carries amtool; the build context leaves target/ out.
    assert!(read("Dockerfile").contains("/usr/local/bin/amtool"));
    let ignore =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(".dockerignore"))
            .expect(".dockerignore");
    assert!(ignore.lines().any(|l| l.trim() == "/target"));
}

// ---- systemd -----------------------------------------------------------------------

/// The unit's `Key=value` lines, by key (repeated keys in order).
fn unit_settings(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut settings: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with('[') || line.is_empty() {
            continue;
        }
        let (key, value) = line.split_once('=').expect("Key=value");
        settings
            .entry(key.to_owned())
            .or_default()
            .push(value.to_owned());
    }
    settings
}

#[test]
fn systemd_unit_runs_as_its_user_with_its_folders() {
    let unit = read("notimeter.service");
    let settings = unit_settings(&unit);
    let one = |key: &str| {
        settings
            .get(key)
            .and_then(|v| v.last())
            .unwrap_or_else(|| panic!("notimeter.service: no {key}="))
            .as_str()
    };
    assert_eq!(one("User"), "notimeter");
    assert_eq!(one("StateDirectory"), "notimeter");
    assert_eq!(one("WorkingDirectory"), "/var/lib/notimeter");
    assert_eq!(one("LimitNOFILE"), "4096");
    assert!(one("ReadWritePaths").contains("/etc/alertmanager/notimeter"));
    let sysusers = read("notimeter.sysusers.conf");
    assert!(
        sysusers
            .lines()
            .any(|l| l.split_whitespace().take(2).eq(["u", "notimeter"])),
        "notimeter.sysusers.conf creates the unit's user"
    );
}

#[test]
#[ignore = "needs systemd-analyze (apt-get install systemd); run with --include-ignored"]
fn systemd_unit_verifies_and_rates_well() {
    require("systemd-analyze", "systemd");
    // verify checks that ExecStart's binary exists: the one just built.
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("notimeter.service");
    std::fs::write(
        &unit,
        read("notimeter.service")
            .replace("/usr/local/bin/notimeter", env!("CARGO_BIN_EXE_notimeter")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    // It reports unknown keys and bad values on stderr, and exits 0.
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let rating = run_ok(
        Command::new("systemd-analyze")
            .args(["security", "--offline=yes"])
            .arg(deploy_dir().join("notimeter.service")),
    );
    let re = regex::Regex::new(r"Overall exposure level for notimeter.service: ([0-9.]+) (\w+)")
        .unwrap();
    let caps = re.captures(&rating).expect("an overall exposure level");
    let (score, verdict) = (caps[1].parse::<f64>().unwrap(), &caps[2]);
    assert!(score < 2.0, "exposure {score} {verdict}:\n{rating}");
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    assert!(
        readme.contains(&format!("{} {verdict}", &caps[1])),
        "the README states the rating: {} {verdict}",
        &caps[1]
    );

    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("etc")).unwrap();
    run_ok(
        Command::new("systemd-sysusers")
            .arg(format!("--root={}", root.path().display()))
            .arg(deploy_dir().join("notimeter.sysusers.conf")),
    );
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).unwrap();
    assert!(passwd.contains("notimeter:x:"), "{passwd}");
}

//! Alertmanager's configuration, rendered from the channels store as a typed
//! model and serialised (no text templating). The operator's base file keeps
//! its `global`, `inhibit_rules`, `templates`, `time_intervals` and root route
//! settings as they are; notimeter adds its routes and receivers.
//!
//! - `per-channel`: one route per enabled channel, matching `user_id` and the
//!   channel's matchers, `continue: true`, its own timing, to the receiver
//!   `notimeter/<user_id>/<channel_id>`.
//! - `compact`: one route grouping by `user_id` to a single catch-all
//!   receiver; notimeter applies the channels' matchers itself.
//!
//! The same data gives the same bytes: users and channels are sorted and keys
//! keep a fixed order.

pub mod publish;

use crate::domain::matcher::is_label_name;
use std::collections::BTreeSet;
use std::path::Path;

use serde::Serialize;
use serde_norway::{Mapping, Value};

use crate::config::{RenderMode, Settings};
use crate::domain::{Channel, ReceiverName, RouteTiming};
use crate::store::{Store, StoreError};

/// The receiver alerts go to when no channel route takes them (the catch-all).
pub const CATCH_ALL: &str = "notimeter";
/// The first line of every rendered file; it carries the channel count the
/// shrink guard compares against.
pub const HEADER_PREFIX: &str = "# Rendered by notimeter";

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("reading the base config {path}: {source}")]
    Base {
        path: String,
        source: std::io::Error,
    },
    #[error("the base config is not valid YAML: {0}")]
    BaseYaml(String),
    #[error("the base config's root is not a mapping")]
    BaseShape,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the rendered configuration is invalid: {0}")]
    Invalid(String),
    #[error("{}", crate::config::UNAUTHENTICATED_RENDER)]
    Unauthenticated,
}

/// Refuses a configuration whose receivers could not authenticate: with an
/// ingest token, every receiver must send it (from `credentials_file`).
pub fn check_auth(settings: &Settings) -> Result<(), RenderError> {
    if settings.render_is_unauthenticated() {
        return Err(RenderError::Unauthenticated);
    }
    Ok(())
}

#[derive(Debug, Serialize, PartialEq)]
struct Authorization {
    credentials_file: String,
}

#[derive(Debug, Serialize, PartialEq)]
struct HttpConfig {
    authorization: Authorization,
}

#[derive(Debug, Serialize, PartialEq)]
struct WebhookConfig {
    url: String,
    send_resolved: bool,
    max_alerts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    http_config: Option<HttpConfig>,
}

#[derive(Debug, Serialize, PartialEq)]
struct Receiver {
    name: String,
    webhook_configs: Vec<WebhookConfig>,
}

#[derive(Debug, Serialize, PartialEq, Default)]
struct Route {
    receiver: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    matchers: Vec<String>,
    #[serde(flatten)]
    timing: RouteTiming,
    #[serde(rename = "continue", skip_serializing_if = "std::ops::Not::not")]
    continue_: bool,
}

/// A channel left out of the rendered file, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Skipped {
    pub user_id: String,
    pub channel_id: String,
    pub reason: String,
}

/// A rendered candidate file.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub yaml: String,
    /// Channels routed in the file (per-channel) or served by it (compact).
    pub channels: usize,
    pub skipped: Vec<Skipped>,
}

fn webhook(settings: &Settings, send_resolved: bool) -> WebhookConfig {
    WebhookConfig {
        url: format!(
            "{}/v1/alertmanager",
            settings.render.public_url.trim_end_matches('/')
        ),
        send_resolved,
        max_alerts: 0,
        http_config: settings
            .render
            .credentials_file
            .as_ref()
            .map(|f| HttpConfig {
                authorization: Authorization {
                    credentials_file: f.display().to_string(),
                },
            }),
    }
}

fn to_value<T: Serialize>(v: &T) -> Value {
    serde_norway::to_value(v).expect("the model serialises")
}

/// Reads the operator's base file (or a minimal one).
pub fn load_base(path: Option<&Path>) -> Result<Mapping, RenderError> {
    let Some(path) = path else {
        let mut route = Mapping::new();
        route.insert("receiver".into(), CATCH_ALL.into());
        route.insert("group_by".into(), to_value(&["alertname", "user_id"]));
        let mut base = Mapping::new();
        base.insert("route".into(), Value::Mapping(route));
        return Ok(base);
    };
    let text = std::fs::read_to_string(path).map_err(|source| RenderError::Base {
        path: path.display().to_string(),
        source,
    })?;
    match serde_norway::from_str::<Value>(&text)
        .map_err(|e| RenderError::BaseYaml(e.to_string()))?
    {
        Value::Mapping(m) => Ok(m),
        Value::Null => Ok(Mapping::new()),
        _ => Err(RenderError::BaseShape),
    }
}

/// Checks a channel against the settings of today: a `repeat_interval` that
/// was fine when saved may be too short for a longer `dedupe_window` now.
fn renderable(ch: &Channel, settings: &Settings) -> Result<(), String> {
    ch.timing.check(settings.dedupe_window)
}

/// The enabled channels to render, and those left out (with why).
async fn renderable_channels(
    store: &Store,
    settings: &Settings,
) -> Result<(Vec<Channel>, Vec<Skipped>), RenderError> {
    let listed = store.enabled_channels().await?;
    let mut skipped: Vec<Skipped> = listed
        .corrupt
        .into_iter()
        .map(|bad| Skipped {
            user_id: bad.user_id,
            channel_id: bad.channel_id,
            reason: bad.reason,
        })
        .collect();
    let mut channels = Vec::new();
    for ch in listed.channels {
        match renderable(&ch, settings) {
            Err(reason) => skipped.push(Skipped {
                user_id: ch.user_id.to_string(),
                channel_id: ch.channel_id.to_string(),
                reason,
            }),
            Ok(()) => channels.push(ch),
        }
    }
    Ok((channels, skipped))
}

/// Per-channel mode: one route and one receiver for each channel, with its
/// matchers and timing.
fn per_channel_routes(
    settings: &Settings,
    channels: &[Channel],
    routes: &mut Vec<Value>,
    receivers: &mut Vec<Value>,
) {
    for ch in channels {
        let name = ReceiverName::new(ch.user_id.clone(), ch.channel_id.clone()).to_string();
        let mut matchers = vec![format!("user_id=\"{}\"", ch.user_id)];
        matchers.extend(ch.matchers.to_strings());
        routes.push(to_value(&Route {
            receiver: name.clone(),
            matchers,
            timing: ch.timing.clone(),
            continue_: true,
        }));
        receivers.push(to_value(&Receiver {
            name,
            webhook_configs: vec![webhook(settings, ch.send_resolved)],
        }));
    }
}

/// Compact mode: one route to the catch-all for every alert with a user,
/// grouped by user first, so that one notification holds one user's alerts.
fn compact_route(root: &Mapping) -> Value {
    let mut group_by: Vec<String> = match root.get("group_by") {
        Some(Value::Sequence(s)) => s
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => vec!["alertname".into()],
    };
    if !group_by.iter().any(|l| l == "user_id" || l == "...") {
        group_by.insert(0, "user_id".into());
    }
    to_value(&Route {
        receiver: CATCH_ALL.into(),
        matchers: vec!["user_id=~\".+\"".into()],
        timing: RouteTiming {
            group_by: Some(group_by),
            ..RouteTiming::default()
        },
        ..Route::default()
    })
}

/// Renders the configuration for `base` and the enabled channels in `store`.
pub async fn render(
    store: &Store,
    settings: &Settings,
    base: Mapping,
) -> Result<Candidate, RenderError> {
    let (channels, skipped) = renderable_channels(store, settings).await?;
    let mut base = base;
    let mut root = match base.remove("route") {
        Some(Value::Mapping(m)) => m,
        Some(_) => {
            return Err(RenderError::Invalid(
                "the base config's route is not a mapping".into(),
            ))
        }
        None => Mapping::new(),
    };
    if !root.contains_key("receiver") {
        root.insert("receiver".into(), CATCH_ALL.into());
    }
    let mut routes = match root.remove("routes") {
        Some(Value::Sequence(s)) => s,
        _ => Vec::new(),
    };
    let mut receivers = match base.remove("receivers") {
        Some(Value::Sequence(s)) => s,
        _ => Vec::new(),
    };
    let defined: BTreeSet<String> = receivers
        .iter()
        .filter_map(|r| r.get("name").and_then(Value::as_str).map(str::to_owned))
        .collect();
    if !defined.contains(CATCH_ALL) {
        receivers.push(to_value(&Receiver {
            name: CATCH_ALL.into(),
            webhook_configs: vec![webhook(settings, true)],
        }));
    }
    let mode = match settings.render.mode {
        RenderMode::PerChannel => {
            per_channel_routes(settings, &channels, &mut routes, &mut receivers);
            "per-channel"
        }
        RenderMode::Compact => {
            routes.push(compact_route(&root));
            "compact"
        }
    };
    root.insert("routes".into(), Value::Sequence(routes));

    let mut out = Mapping::new();
    for (k, v) in base.iter() {
        out.insert(k.clone(), v.clone());
    }
    out.insert("route".into(), Value::Mapping(root));
    out.insert("receivers".into(), Value::Sequence(receivers));
    let doc = Value::Mapping(out);
    check(&doc)?;
    let body = serde_norway::to_string(&doc).map_err(|e| RenderError::Invalid(e.to_string()))?;
    let yaml = format!(
        "{HEADER_PREFIX} ({mode}, channels: {}). Edits are overwritten; change the base config or the channels.\n{body}",
        channels.len()
    );
    Ok(Candidate {
        yaml,
        channels: channels.len(),
        skipped,
    })
}

/// The channel count a rendered file says it has (None if it is not ours).
pub fn rendered_channels(file: &str) -> Option<usize> {
    let first = file.lines().next()?;
    let rest = first.strip_prefix(HEADER_PREFIX)?;
    let n = rest.split("channels: ").nth(1)?;
    n.split(')').next()?.trim().parse().ok()
}

/// The renderer's own checks: unique receiver names, every route's receiver
/// defined, valid matchers and label names, a root route without matchers.
fn check(doc: &Value) -> Result<(), RenderError> {
    let bad = |m: String| Err(RenderError::Invalid(m));
    let mut names = BTreeSet::new();
    for r in doc
        .get("receivers")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
    {
        let Some(name) = r.get("name").and_then(Value::as_str) else {
            return bad("a receiver has no name".into());
        };
        if !names.insert(name.to_owned()) {
            return bad(format!("receiver {name:?} is defined twice"));
        }
    }
    let Some(root) = doc.get("route") else {
        return bad("no route".into());
    };
    if root.get("matchers").is_some()
        || root.get("match").is_some()
        || root.get("match_re").is_some()
    {
        return bad("the root route must not have matchers".into());
    }
    fn walk(route: &Value, names: &BTreeSet<String>, root: bool) -> Result<(), String> {
        match route.get("receiver").and_then(Value::as_str) {
            Some(r) if !names.contains(r) => {
                return Err(format!("route receiver {r:?} is not defined"))
            }
            None if root => return Err("the root route has no receiver".into()),
            _ => {}
        }
        for m in route
            .get("matchers")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let m = m.as_str().ok_or("a matcher is not a string")?;
            crate::domain::Matcher::check_syntax(m)?;
        }
        for l in route
            .get("group_by")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let l = l.as_str().unwrap_or("");
            if l != "..." && !is_label_name(l) {
                return Err(format!("group_by {l:?} is not a label name"));
            }
        }
        for child in route
            .get("routes")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            walk(child, names, false)?;
        }
        Ok(())
    }
    walk(root, &names, true).map_err(RenderError::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let f = format!(
            "{HEADER_PREFIX} (compact, channels: 42). Edits are overwritten.\nroute: {{}}\n"
        );
        assert_eq!(rendered_channels(&f), Some(42));
        assert_eq!(rendered_channels("route: {}\n"), None);
    }

    #[test]
    fn checks_catch_broken_trees() {
        let doc: Value = serde_norway::from_str(
            "route: {receiver: a, routes: [{receiver: b}]}\nreceivers: [{name: a}]\n",
        )
        .unwrap();
        assert!(check(&doc)
            .unwrap_err()
            .to_string()
            .contains("\"b\" is not defined"));
        let doc: Value =
            serde_norway::from_str("route: {receiver: a}\nreceivers: [{name: a}, {name: a}]\n")
                .unwrap();
        assert!(check(&doc).unwrap_err().to_string().contains("twice"));
        let doc: Value = serde_norway::from_str(
            "route: {receiver: a, matchers: ['x=\"1\"']}\nreceivers: [{name: a}]\n",
        )
        .unwrap();
        assert!(check(&doc).unwrap_err().to_string().contains("root route"));
    }
}

//! Alertmanager's notification data (`template.Data`) as gtmpl values, and
//! the sample notification templates are tried on when a channel is saved.
//!
//! The data and each alert are objects, so a misspelt field (`.CommonLabel`)
//! is an error, as it is in Go; label and annotation sets are maps, so a
//! missing name is no error (and prints `""`, see `super::rewrite`). Times are
//! the RFC 3339 strings of the webhook payload.

use std::collections::HashMap;

use gtmpl_ng::Value;

use crate::domain::{Alert, WebhookPayload};

fn object<const N: usize>(fields: [(&str, Value); N]) -> Value {
    Value::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

fn kv<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> Value {
    Value::Map(
        pairs
            .map(|(k, v)| (k.to_owned(), Value::from(v)))
            .collect::<HashMap<_, _>>(),
    )
}

fn alert(a: &Alert) -> Value {
    object([
        ("Status", Value::from(a.status.as_str())),
        ("Labels", kv(a.labels.iter())),
        ("Annotations", kv(a.annotations.iter())),
        ("StartsAt", Value::from(a.starts_at.as_str())),
        ("EndsAt", Value::from(a.ends_at.as_str())),
        ("GeneratorURL", Value::from(a.generator_url.as_str())),
        ("Fingerprint", Value::from(a.fingerprint.as_str())),
    ])
}

/// The data a template of a message for `p` runs on.
pub fn of(p: &WebhookPayload) -> Value {
    let map = |m: &std::collections::BTreeMap<String, String>| {
        kv(m.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    };
    object([
        ("Receiver", Value::from(p.receiver.as_str())),
        ("Status", Value::from(p.status.as_str())),
        ("Alerts", Value::Array(p.alerts.iter().map(alert).collect())),
        ("GroupLabels", map(&p.group_labels)),
        ("CommonLabels", map(&p.common_labels)),
        ("CommonAnnotations", map(&p.common_annotations)),
        ("ExternalURL", Value::from(p.external_url.as_str())),
    ])
}

/// A typical notification: two alerts of one group, one firing and one
/// resolved, with the usual labels and annotations.
pub fn sample() -> WebhookPayload {
    let alert = |status: &str, instance: &str, starts: &str, ends: &str, fingerprint: &str| {
        serde_json::json!({
            "status": status,
            "labels": {"alertname": "HighCPU", "severity": "critical", "instance": instance,
                       "job": "node", "user_id": "u1"},
            "annotations": {"summary": format!("CPU above 90% on {instance}"),
                            "description": format!("{instance} has been above 90% CPU for 5 minutes."),
                            "runbook_url": "https://runbooks.example.com/HighCPU"},
            "startsAt": starts, "endsAt": ends,
            "generatorURL": "http://prometheus:9090/graph?g0.expr=cpu%3E0.9",
            "fingerprint": fingerprint
        })
    };
    serde_json::from_value(serde_json::json!({
        "version": "4", "groupKey": "{}:{alertname=\"HighCPU\"}", "truncatedAlerts": 0,
        "status": "firing", "receiver": "notimeter/u1/sample",
        "groupLabels": {"alertname": "HighCPU"},
        "commonLabels": {"alertname": "HighCPU", "job": "node", "severity": "critical", "user_id": "u1"},
        "commonAnnotations": {"runbook_url": "https://runbooks.example.com/HighCPU"},
        "externalURL": "http://alertmanager:9093",
        "alerts": [
            alert("firing", "db-1:9100", "2026-01-01T10:00:00Z", "0001-01-01T00:00:00Z", "a1b2c3d4e5f60718"),
            alert("resolved", "db-2:9100", "2026-01-01T09:00:00Z", "2026-01-01T09:30:00Z", "0817f6e5d4c3b2a1"),
        ]
    }))
    .expect("the sample notification is a webhook payload")
}

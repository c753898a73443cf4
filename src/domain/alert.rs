//! Alertmanager's webhook payload (version "4"). Unknown fields, such as
//! `notification_reason` or `routeLabels`, are tolerated. Each alert is parsed on
//! its own, so one malformed alert does not sink the others.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatus {
    #[default]
    Firing,
    Resolved,
}

impl AlertStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertStatus::Firing => "firing",
            AlertStatus::Resolved => "resolved",
        }
    }
}

/// One alert as Alertmanager sends it. Times are kept as the strings received,
/// so a forwarded payload carries exactly what Alertmanager said.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    #[serde(default)]
    pub status: AlertStatus,
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub starts_at: String,
    #[serde(default)]
    pub ends_at: String,
    #[serde(default, rename = "generatorURL")]
    pub generator_url: String,
    #[serde(default)]
    pub fingerprint: String,
}

impl Alert {
    pub fn user_id_label(&self) -> Option<&str> {
        self.labels.get("user_id").map(String::as_str)
    }

    pub fn alertname(&self) -> &str {
        self.labels
            .get("alertname")
            .map(String::as_str)
            .unwrap_or("")
    }

    /// The fingerprint Alertmanager sent, or a stable hash of the labels.
    pub fn identity(&self) -> String {
        if !self.fingerprint.is_empty() {
            return self.fingerprint.clone();
        }
        let mut h = Sha256::new();
        for (k, v) in &self.labels {
            h.update(k.as_bytes());
            h.update([0]);
            h.update(v.as_bytes());
            h.update([0]);
        }
        hex::encode(&h.finalize()[..8])
    }
}

/// The webhook envelope. `alerts` stays raw here and is parsed alert by alert.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub group_key: String,
    #[serde(default)]
    pub status: String,
    pub receiver: String,
    #[serde(default)]
    pub group_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub common_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub common_annotations: BTreeMap<String, String>,
    #[serde(default, rename = "externalURL")]
    pub external_url: String,
    #[serde(default)]
    pub truncated_alerts: u64,
    pub alerts: Vec<Value>,
}

/// A payload as notimeter forwards it: Alertmanager's v4 shape, holding only
/// the alerts of one message (so only one user's alerts).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookPayload {
    pub version: String,
    pub group_key: String,
    pub truncated_alerts: u64,
    pub status: AlertStatus,
    pub receiver: String,
    pub group_labels: BTreeMap<String, String>,
    pub common_labels: BTreeMap<String, String>,
    pub common_annotations: BTreeMap<String, String>,
    #[serde(rename = "externalURL")]
    pub external_url: String,
    pub alerts: Vec<Alert>,
}

fn common(maps: impl Iterator<Item = BTreeMap<String, String>>) -> BTreeMap<String, String> {
    let mut iter = maps;
    let Some(mut acc) = iter.next() else {
        return BTreeMap::new();
    };
    for m in iter {
        acc.retain(|k, v| m.get(k) == Some(v));
    }
    acc
}

impl WebhookPayload {
    /// Builds the payload for a subset of an envelope's alerts: status and the
    /// common labels and annotations are computed over that subset, so nothing
    /// of another user's alerts leaks into it.
    pub fn for_alerts(envelope: &Envelope, alerts: Vec<Alert>) -> Self {
        let status = if alerts.iter().any(|a| a.status == AlertStatus::Firing) {
            AlertStatus::Firing
        } else {
            AlertStatus::Resolved
        };
        let common_labels = common(alerts.iter().map(|a| a.labels.clone()));
        let common_annotations = common(alerts.iter().map(|a| a.annotations.clone()));
        let group_labels = envelope
            .group_labels
            .iter()
            .filter(|(k, v)| common_labels.get(*k) == Some(*v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Self {
            version: "4".into(),
            group_key: envelope.group_key.clone(),
            truncated_alerts: 0,
            status,
            receiver: envelope.receiver.clone(),
            group_labels,
            common_labels,
            common_annotations,
            external_url: envelope.external_url.clone(),
            alerts,
        }
    }

    pub fn firing(&self) -> impl Iterator<Item = &Alert> {
        self.alerts
            .iter()
            .filter(|a| a.status == AlertStatus::Firing)
    }
}

/// Parses one raw alert, saying what is wrong with it.
pub fn parse_alert(raw: &Value) -> Result<Alert, String> {
    Alert::deserialize(raw).map_err(|e| format!("invalid alert: {e}"))
}

/// The dedupe key of a notification: receiver, groupKey, status and the sorted
/// (fingerprint, status, startsAt, endsAt) of its alerts. A retry by
/// Alertmanager or the twin of an HA pair gives the same key.
pub fn dedupe_key(envelope: &Envelope, alerts: &[Result<Alert, String>]) -> String {
    let mut parts: Vec<String> = alerts
        .iter()
        .zip(&envelope.alerts)
        .map(|(parsed, raw)| match parsed {
            Ok(a) => format!(
                "{}\u{1f}{}\u{1f}{}\u{1f}{}",
                a.identity(),
                a.status.as_str(),
                a.starts_at,
                a.ends_at
            ),
            Err(_) => raw.to_string(),
        })
        .collect();
    parts.sort_unstable();
    let mut h = Sha256::new();
    for field in [&envelope.receiver, &envelope.group_key, &envelope.status] {
        h.update(field.as_bytes());
        h.update([0x1e]);
    }
    for p in &parts {
        h.update(p.as_bytes());
        h.update([0x1e]);
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn envelope(alerts: Vec<Value>) -> Envelope {
        serde_json::from_value(json!({
            "version": "4", "groupKey": "{}:{}", "status": "firing", "receiver": "r",
            "groupLabels": {"alertname": "x"}, "commonLabels": {}, "commonAnnotations": {},
            "externalURL": "http://am", "truncatedAlerts": 0, "notification_reason": "new",
            "alerts": alerts
        }))
        .unwrap()
    }

    #[test]
    fn dedupe_key_ignores_alert_order() {
        let a = json!({"status":"firing","labels":{"a":"1"},"fingerprint":"f1","startsAt":"t"});
        let b = json!({"status":"firing","labels":{"a":"2"},"fingerprint":"f2","startsAt":"t"});
        let e1 = envelope(vec![a.clone(), b.clone()]);
        let e2 = envelope(vec![b, a]);
        let p1: Vec<_> = e1.alerts.iter().map(parse_alert).collect();
        let p2: Vec<_> = e2.alerts.iter().map(parse_alert).collect();
        assert_eq!(dedupe_key(&e1, &p1), dedupe_key(&e2, &p2));
    }

    #[test]
    fn subset_payload_recomputes_common_labels() {
        let e = envelope(vec![]);
        let a: Alert = serde_json::from_value(
            json!({"status":"resolved","labels":{"alertname":"x","user_id":"u1"}}),
        )
        .unwrap();
        let p = WebhookPayload::for_alerts(&e, vec![a]);
        assert_eq!(p.status, AlertStatus::Resolved);
        assert_eq!(p.common_labels.get("user_id").unwrap(), "u1");
        assert_eq!(p.group_labels.get("alertname").unwrap(), "x");
    }

    #[test]
    fn bad_alert_is_reported() {
        assert!(parse_alert(&json!({"labels": "nope"})).is_err());
        assert!(parse_alert(&json!({"status": "weird", "labels": {}})).is_err());
        assert!(parse_alert(&json!(42)).is_err());
    }
}

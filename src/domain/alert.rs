//! Alertmanager's webhook payload (version "4"). Unknown fields, such as
//! `notification_reason` or `routeLabels`, are tolerated. Each alert is parsed on
//! its own, so one malformed alert does not sink the others.
//!
//! A payload may hold tens of thousands of alerts, so they are parsed straight
//! from the body into compact types (no intermediate JSON tree), and a
//! message's payload is serialised from references to them (no copies).

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::domain::matcher::LabelLookup;

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

/// Labels or annotations: name-value pairs sorted by name, each name once (the
/// last one wins, as with a JSON object read into a map). One allocation for
/// the pairs and one per string, where a `BTreeMap` would take a node of a
/// few hundred bytes per alert.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSet(Box<[(Box<str>, Box<str>)]>);

impl LabelSet {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| k.as_ref().cmp(name))
            .ok()
            .map(|i| self.0[i].1.as_ref())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The pairs in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_ref(), v.as_ref()))
    }
}

impl<'a> IntoIterator for &'a LabelSet {
    type Item = (&'a str, &'a str);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (Box<str>, Box<str>)>,
        fn(&'a (Box<str>, Box<str>)) -> (&'a str, &'a str),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k.as_ref(), v.as_ref()))
    }
}

impl<K: Into<Box<str>>, V: Into<Box<str>>> FromIterator<(K, V)> for LabelSet {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut pairs: Vec<(Box<str>, Box<str>)> = iter
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        // A stable sort keeps repeated names in input order; keep the last.
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        pairs.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                std::mem::swap(later, kept);
            }
            same
        });
        LabelSet(pairs.into_boxed_slice())
    }
}

impl LabelLookup for LabelSet {
    fn label(&self, name: &str) -> Option<&str> {
        self.get(name)
    }
}

impl Serialize for LabelSet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for LabelSet {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Pairs;
        impl<'de> Visitor<'de> for Pairs {
            type Value = LabelSet;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of strings")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<LabelSet, M::Error> {
                let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
                while let Some((k, v)) = map.next_entry::<Box<str>, Box<str>>()? {
                    pairs.push((k, v));
                }
                Ok(pairs.into_iter().collect())
            }
        }
        deserializer.deserialize_map(Pairs)
    }
}

/// One alert as Alertmanager sends it. Times are kept as the strings received,
/// so a forwarded payload carries exactly what Alertmanager said.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    #[serde(default)]
    pub status: AlertStatus,
    pub labels: LabelSet,
    #[serde(default)]
    pub annotations: LabelSet,
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
        self.labels.get("user_id")
    }

    pub fn alertname(&self) -> &str {
        self.labels.get("alertname").unwrap_or("")
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

/// The webhook envelope. Its alerts are parsed one by one as the body is read
/// (see [`parse_alert`]); the handler takes them out to attribute them.
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
    #[serde(deserialize_with = "each_alert")]
    pub alerts: Vec<Result<Alert, InvalidAlert>>,
}

/// An alert that could not be parsed: why, and what it was.
#[derive(Clone, Debug, PartialEq)]
pub struct InvalidAlert {
    pub error: String,
    /// The alert's JSON (keys sorted), as recorded and as the dedupe key reads it.
    pub raw: String,
    /// Its `labels.user_id`, if that is a string.
    pub raw_user_id: Option<String>,
}

/// Reads the `alerts` array element by element, parsing each on its own: the
/// raw text of one element is copied out of the body only while it is parsed,
/// and no JSON tree is built.
fn each_alert<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<Result<Alert, InvalidAlert>>, D::Error> {
    struct Each;
    impl<'de> Visitor<'de> for Each {
        type Value = Vec<Result<Alert, InvalidAlert>>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an array of alerts")
        }
        fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Self::Value, S::Error> {
            let mut alerts = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
            while let Some(raw) = seq.next_element::<Box<RawValue>>()? {
                alerts.push(parse_alert(&raw));
            }
            Ok(alerts)
        }
    }
    deserializer.deserialize_seq(Each)
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

impl WebhookPayload {
    pub fn firing(&self) -> impl Iterator<Item = &Alert> {
        self.alerts
            .iter()
            .filter(|a| a.status == AlertStatus::Firing)
    }
}

/// The payload of one message, as it is stored and forwarded: Alertmanager's
/// v4 shape (it reads back as a [`WebhookPayload`]) holding only the given
/// alerts, serialised from references to them.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutgoingPayload<'a> {
    version: &'static str,
    group_key: &'a str,
    truncated_alerts: u64,
    status: AlertStatus,
    receiver: &'a str,
    group_labels: BTreeMap<&'a str, &'a str>,
    common_labels: BTreeMap<&'a str, &'a str>,
    common_annotations: BTreeMap<&'a str, &'a str>,
    #[serde(rename = "externalURL")]
    external_url: &'a str,
    alerts: &'a [&'a Alert],
}

/// The pairs every set has.
fn common<'a>(mut sets: impl Iterator<Item = &'a LabelSet>) -> BTreeMap<&'a str, &'a str> {
    let Some(first) = sets.next() else {
        return BTreeMap::new();
    };
    let mut acc: BTreeMap<&str, &str> = first.iter().collect();
    for set in sets {
        if acc.is_empty() {
            break;
        }
        acc.retain(|k, v| set.get(k) == Some(*v));
    }
    acc
}

impl<'a> OutgoingPayload<'a> {
    /// The payload for a subset of an envelope's alerts: status and the common
    /// labels and annotations are computed over that subset, so nothing of
    /// another user's alerts leaks into it.
    pub fn new(envelope: &'a Envelope, alerts: &'a [&'a Alert]) -> Self {
        let status = if alerts.iter().any(|a| a.status == AlertStatus::Firing) {
            AlertStatus::Firing
        } else {
            AlertStatus::Resolved
        };
        let common_labels = common(alerts.iter().map(|a| &a.labels));
        let common_annotations = common(alerts.iter().map(|a| &a.annotations));
        let group_labels = envelope
            .group_labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .filter(|(k, v)| common_labels.get(k) == Some(v))
            .collect();
        Self {
            version: "4",
            group_key: &envelope.group_key,
            truncated_alerts: 0,
            status,
            receiver: &envelope.receiver,
            group_labels,
            common_labels,
            common_annotations,
            external_url: &envelope.external_url,
            alerts,
        }
    }

    pub fn to_json(&self) -> String {
        self.to_json_in(&mut Vec::new())
    }

    /// The JSON, written to `scratch` first and then copied to a string of
    /// exactly its length: the many payloads of a large notification wait
    /// in memory until they are stored, and a string grown as it is written
    /// keeps up to twice its length (and is reallocated on the way).
    pub fn to_json_in(&self, scratch: &mut Vec<u8>) -> String {
        scratch.clear();
        serde_json::to_writer(&mut *scratch, self).expect("a payload serialises");
        String::from_utf8(scratch.to_vec()).expect("serde_json writes UTF-8")
    }
}

/// Parses one raw alert, saying what is wrong with it. A malformed alert is
/// read again as a JSON value: that gives the error as before, and the
/// canonical text recorded and hashed for it.
pub fn parse_alert(raw: &RawValue) -> Result<Alert, InvalidAlert> {
    if let Ok(alert) = serde_json::from_str::<Alert>(raw.get()) {
        return Ok(alert);
    }
    let value: Value = serde_json::from_str(raw.get()).unwrap_or(Value::Null);
    // A payload whose alert repeats a key is still read as a JSON value would.
    Alert::deserialize(&value).map_err(|e| InvalidAlert {
        error: format!("invalid alert: {e}"),
        raw_user_id: value
            .pointer("/labels/user_id")
            .and_then(Value::as_str)
            .map(str::to_owned),
        raw: value.to_string(),
    })
}

/// The dedupe key of a notification: receiver, groupKey, status and the sorted
/// (fingerprint, status, startsAt, endsAt) of its alerts. A retry by
/// Alertmanager or the twin of an HA pair gives the same key.
pub fn dedupe_key(envelope: &Envelope, alerts: &[Result<Alert, InvalidAlert>]) -> String {
    let mut parts: Vec<String> = alerts
        .iter()
        .map(|parsed| match parsed {
            Ok(a) => format!(
                "{}\u{1f}{}\u{1f}{}\u{1f}{}",
                a.identity(),
                a.status.as_str(),
                a.starts_at,
                a.ends_at
            ),
            Err(invalid) => invalid.raw.clone(),
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
        let body = json!({
            "version": "4", "groupKey": "{}:{}", "status": "firing", "receiver": "r",
            "groupLabels": {"alertname": "x"}, "commonLabels": {}, "commonAnnotations": {},
            "externalURL": "http://am", "truncatedAlerts": 0, "notification_reason": "new",
            "alerts": alerts
        });
        serde_json::from_slice(&serde_json::to_vec(&body).unwrap()).unwrap()
    }

    fn parse(alert: Value) -> Result<Alert, InvalidAlert> {
        parse_alert(&serde_json::value::to_raw_value(&alert).unwrap())
    }

    fn parse_text(alert: &str) -> Result<Alert, InvalidAlert> {
        parse_alert(&RawValue::from_string(alert.to_owned()).unwrap())
    }

    /// Computed independently of this code, from the algorithm as it was
    /// before alerts were parsed straight from the body.
    const PINNED_KEY: &str = "df9614553851537ea76bae2058f22fce01fb6484847c1ea5c3c42042a14bcffd";

    #[test]
    fn dedupe_key_ignores_alert_order() {
        let a = json!({"status":"firing","labels":{"a":"1"},"fingerprint":"f1","startsAt":"t"});
        let b = json!({"status":"firing","labels":{"a":"2"},"fingerprint":"f2","startsAt":"t"});
        let e1 = envelope(vec![a.clone(), b.clone()]);
        let e2 = envelope(vec![b, a]);
        assert_eq!(dedupe_key(&e1, &e1.alerts), dedupe_key(&e2, &e2.alerts));
    }

    /// The key as notimeter computed it when alerts were parsed from a JSON
    /// tree: a change here would let retries through as new notifications
    /// across an upgrade.
    #[test]
    fn dedupe_key_is_stable() {
        let e = envelope(vec![
            json!({"labels":{"b":"2","a":"1"},"fingerprint":"","startsAt":"t","endsAt":"u"}),
            json!({"status":"resolved","labels":{"user_id":"u1"},"fingerprint":"f2"}),
            json!({"labels": "not-a-map", "z": 1, "fingerprint": "f3"}),
        ]);
        assert_eq!(dedupe_key(&e, &e.alerts), PINNED_KEY);
    }

    #[test]
    fn subset_payload_recomputes_common_labels() {
        let e = envelope(vec![]);
        let a =
            parse(json!({"status":"resolved","labels":{"alertname":"x","user_id":"u1"}})).unwrap();
        let b = parse(
            json!({"status":"resolved","labels":{"alertname":"x","user_id":"u1","i":"2"},
                             "annotations":{"summary":"s"}}),
        )
        .unwrap();
        let alerts = [&a, &b];
        let json = OutgoingPayload::new(&e, &alerts).to_json();
        let p: WebhookPayload = serde_json::from_str(&json).unwrap();
        assert_eq!(p.status, AlertStatus::Resolved);
        assert_eq!(p.version, "4");
        assert_eq!(p.group_key, "{}:{}");
        assert_eq!(p.receiver, "r");
        assert_eq!(p.external_url, "http://am");
        assert_eq!(p.common_labels.len(), 2);
        assert_eq!(p.common_labels.get("user_id").unwrap(), "u1");
        assert!(p.common_annotations.is_empty());
        assert_eq!(p.group_labels.get("alertname").unwrap(), "x");
        assert_eq!(p.alerts, [a, b]);
    }

    #[test]
    fn label_sets_are_sorted_maps() {
        let a = parse_text(r#"{"labels":{"z":"1","a":"2","m":"3","a":"4"}}"#).unwrap();
        assert_eq!(
            a.labels.iter().collect::<Vec<_>>(),
            [("a", "4"), ("m", "3"), ("z", "1")]
        );
        assert_eq!(a.labels.get("m"), Some("3"));
        assert_eq!(a.labels.get("b"), None);
        assert_eq!(
            serde_json::to_value(&a.labels).unwrap(),
            json!({"a":"4","m":"3","z":"1"})
        );
    }

    #[test]
    fn bad_alert_is_reported() {
        let bad =
            parse_text(r#"{"labels": {"user_id": "u1", "n": 1}, "b": 2, "a": 1}"#).unwrap_err();
        assert!(bad.error.starts_with("invalid alert: "), "{}", bad.error);
        assert_eq!(bad.raw_user_id.as_deref(), Some("u1"));
        assert_eq!(bad.raw, r#"{"a":1,"b":2,"labels":{"n":1,"user_id":"u1"}}"#);
        assert!(parse(json!({"status": "weird", "labels": {}})).is_err());
        assert!(parse(json!(42)).is_err());
        // A repeated key is read as a JSON value reads it: the last one wins.
        let a = parse_text(r#"{"status":"firing","labels":{},"status":"resolved"}"#).unwrap();
        assert_eq!(a.status, AlertStatus::Resolved);
    }

    #[test]
    fn bad_alert_leaves_the_others() {
        let e = envelope(vec![
            json!({"labels": "nope"}),
            json!({"labels": {"a": "1"}}),
        ]);
        assert!(e.alerts[0].is_err());
        assert_eq!(e.alerts[1].as_ref().unwrap().labels.get("a"), Some("1"));
    }
}

//! The pieces of Alertmanager's default template (`default.tmpl`) that every
//! integration's default message is built from.

use crate::domain::{Alert, AlertStatus, WebhookPayload};

/// `__subject`: `[FIRING:2] <group label values> (<other common label values>)`.
/// Like Alertmanager's, it keeps the space after the group values even when no
/// parenthesised part follows.
pub fn subject(p: &WebhookPayload) -> String {
    let status = match p.status {
        AlertStatus::Firing => format!("FIRING:{}", p.firing().count()),
        AlertStatus::Resolved => "RESOLVED".to_owned(),
    };
    let group: Vec<&str> = p.group_labels.values().map(String::as_str).collect();
    let mut s = format!("[{status}] {} ", group.join(" "));
    if p.common_labels.len() > p.group_labels.len() {
        let rest: Vec<&str> = p
            .common_labels
            .iter()
            .filter(|(k, _)| !p.group_labels.contains_key(*k))
            .map(|(_, v)| v.as_str())
            .collect();
        s.push('(');
        s.push_str(&rest.join(" "));
        s.push(')');
    }
    s
}

/// `__alertmanagerURL`: `<externalURL>/#/alerts?receiver=<receiver, query-escaped>`.
pub fn alertmanager_url(p: &WebhookPayload) -> String {
    let receiver: String = url::form_urlencoded::byte_serialize(p.receiver.as_bytes()).collect();
    format!("{}/#/alerts?receiver={receiver}", p.external_url)
}

/// Each alert's `description` annotation (or `summary` when it has none), one a line.
pub fn descriptions(p: &WebhookPayload) -> String {
    p.alerts
        .iter()
        .filter_map(|a| {
            a.annotations
                .get("description")
                .or_else(|| a.annotations.get("summary"))
        })
        .map(|d| format!("{d}\n"))
        .collect()
}

/// `__text_alert_list`: each alert's labels, annotations and source.
pub fn text_alert_list<'a>(alerts: impl Iterator<Item = &'a Alert>) -> String {
    let mut out = String::new();
    for a in alerts {
        out.push_str("Labels:\n");
        for (k, v) in &a.labels {
            out.push_str(&format!(" - {k} = {v}\n"));
        }
        out.push_str("Annotations:\n");
        for (k, v) in &a.annotations {
            out.push_str(&format!(" - {k} = {v}\n"));
        }
        out.push_str(&format!("Source: {}\n", a.generator_url));
    }
    out
}

/// A payload's alerts split into (firing, resolved), as `.Alerts.Firing` and
/// `.Alerts.Resolved` are in Alertmanager's templates.
pub fn by_status(p: &WebhookPayload) -> (Vec<&Alert>, Vec<&Alert>) {
    p.alerts
        .iter()
        .partition(|a| a.status == AlertStatus::Firing)
}

/// The body of Alertmanager's default Telegram message (and of the text part of
/// notimeter's email): the firing alerts, then the resolved ones.
pub fn firing_and_resolved(p: &WebhookPayload) -> String {
    let (firing, resolved) = by_status(p);
    let mut out = String::new();
    if !firing.is_empty() {
        out.push_str("Alerts Firing:\n");
        out.push_str(&text_alert_list(firing.into_iter()));
    }
    if !resolved.is_empty() {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str("Alerts Resolved:\n");
        out.push_str(&text_alert_list(resolved.into_iter()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn payload(status: &str, alerts: serde_json::Value) -> WebhookPayload {
        serde_json::from_value(json!({
            "version": "4", "groupKey": "g", "truncatedAlerts": 0, "status": status,
            "receiver": "notimeter/u1/ops team", "groupLabels": {"alertname": "high_cpu"},
            "commonLabels": {"alertname": "high_cpu", "user_id": "u1", "severity": "critical"},
            "commonAnnotations": {}, "externalURL": "http://am:9093", "alerts": alerts
        }))
        .unwrap()
    }

    #[test]
    fn subject_like_alertmanager() {
        let a = json!([{"status":"firing","labels":{},"annotations":{"description":"CPU at 97%"}},
                       {"status":"resolved","labels":{}}]);
        let p = payload("firing", a);
        assert_eq!(subject(&p), "[FIRING:1] high_cpu (critical u1)");
        assert_eq!(descriptions(&p), "CPU at 97%\n");
        assert_eq!(
            alertmanager_url(&p),
            "http://am:9093/#/alerts?receiver=notimeter%2Fu1%2Fops+team"
        );
        let mut r = payload("resolved", json!([]));
        r.common_labels = r.group_labels.clone();
        assert_eq!(subject(&r), "[RESOLVED] high_cpu ");
    }
}

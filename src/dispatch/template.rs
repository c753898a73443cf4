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

/// Escapes text for HTML (element content and quoted attribute values).
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Cuts HTML to at most `max` characters, ending in `…`, never inside a tag
/// or an entity, and closing the tags left open.
pub fn truncate_html(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    // Walk the text, remembering the last place that is outside tags and
    // entities and the tags open there.
    let mut open: Vec<String> = Vec::new();
    let mut best = (0usize, Vec::<String>::new()); // (byte index, open tags)
    let mut chars = 0usize;
    let mut iter = s.char_indices().peekable();
    while let Some((i, c)) = iter.next() {
        let closing: usize = open.iter().map(|t| t.len() + 3).sum();
        if chars + 1 + closing > max {
            break;
        }
        best = (i, open.clone());
        match c {
            '<' => {
                let end = s[i..].find('>').map(|e| i + e);
                let Some(end) = end else { break };
                let tag = &s[i + 1..end];
                let name: String = tag
                    .trim_start_matches('/')
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric())
                    .collect();
                if tag.starts_with('/') {
                    if let Some(pos) = open.iter().rposition(|t| *t == name) {
                        open.remove(pos);
                    }
                } else if !tag.ends_with('/') && !name.is_empty() {
                    open.push(name);
                }
                let len = s[i..=end].chars().count();
                chars += len;
                while iter.peek().is_some_and(|(j, _)| *j <= end) {
                    iter.next();
                }
            }
            '&' => {
                let end = s[i..]
                    .find(';')
                    .filter(|e| *e <= 10)
                    .map(|e| i + e)
                    .unwrap_or(i);
                chars += s[i..=end].chars().count();
                while iter.peek().is_some_and(|(j, _)| *j <= end) {
                    iter.next();
                }
            }
            _ => chars += 1,
        }
    }
    let (cut, still_open) = best;
    let mut out = s[..cut].to_owned();
    out.push('…');
    for tag in still_open.iter().rev() {
        out.push_str(&format!("</{tag}>"));
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

    #[test]
    fn html_truncation_keeps_entities_and_tags_whole() {
        let s = format!("<b>{}</b>", "a&amp;b".repeat(10));
        for max in 8..s.chars().count() {
            let t = truncate_html(&s, max);
            assert!(t.chars().count() <= max, "{max}: {t}");
            assert!(t.ends_with("…</b>"), "{t}");
            let body = t.trim_start_matches("<b>").trim_end_matches("…</b>");
            assert!(!body.contains('<'), "{t}");
            assert_eq!(
                body.matches('&').count(),
                body.matches("&amp;").count(),
                "{t}"
            );
        }
        assert_eq!(truncate_html("short", 10), "short");
    }

    proptest::proptest! {
        #[test]
        fn escaped_text_truncates_to_the_limit(text in "[a-z<>&\"' ]{0,300}", max in 8usize..200) {
            let t = truncate_html(&html_escape(&text), max);
            proptest::prop_assert!(t.chars().count() <= max);
            // Every entity is whole: each '&' starts one of the escapes we made.
            let body = t.trim_end_matches('…');
            for (i, _) in body.match_indices('&') {
                let rest = &body[i..];
                proptest::prop_assert!(["&amp;", "&lt;", "&gt;", "&quot;", "&#39;"].iter().any(|e| rest.starts_with(e)), "{}", t);
            }
        }
    }
}

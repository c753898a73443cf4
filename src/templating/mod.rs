//! Message templates: a channel's templates (`domain::Templates`) run on a
//! notification, in Alertmanager's template language (Go's `text/template`
//! over Alertmanager's data), with the `gtmpl-ng` engine.
//!
//! - `data`: the notification as the data templates see (`.Status`,
//!   `.Alerts`, `.CommonLabels`, …) and the sample they are checked on;
//! - `funcs`: Alertmanager's functions and the stand-ins for its methods;
//! - `rewrite`: what a source becomes before gtmpl parses it (methods such as
//!   `.Alerts.Firing`, missing labels printing `""`).
//!
//! A template is checked when its channel is saved: it must parse and run on
//! [`data::sample`]. At send time it is parsed again (a few microseconds next
//! to the send; the routing index keeps sources, not parsed trees) and run on
//! the message's data; one that fails leaves its field's default text. A
//! render is bounded (gtmpl's [`Limits`]: iterations, output size, and a
//! deadline here), since templates are the users'.

mod data;
mod funcs;
mod rewrite;

use std::collections::BTreeMap;
use std::time::Duration;

use gtmpl_ng::{Context, Limits, Template};

use crate::domain::{TemplateField, Templates, WebhookPayload};
use funcs::Mode;

/// The texts a channel's templates gave for one message, by field; a field
/// without one keeps its integration's default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Texts(BTreeMap<TemplateField, String>);

impl Texts {
    pub fn get(&self, field: TemplateField) -> Option<&str> {
        self.0.get(&field).map(String::as_str)
    }
}

/// What rendering a channel's templates for one message gave: the texts, and
/// the fields whose template failed, with why.
#[derive(Debug, Default)]
pub struct Rendered {
    pub texts: Texts,
    pub failures: Vec<(TemplateField, String)>,
}

/// The most one render may write, and take.
const MAX_OUTPUT: usize = 1 << 20;
const DEADLINE: Duration = Duration::from_millis(200);

/// Checks each template: it parses, and runs on a sample notification. The
/// error names the field: `templates.text: template: text:1:3: …`.
pub fn check(templates: &Templates) -> Result<(), String> {
    if templates.is_empty() {
        return Ok(());
    }
    let ctx = Context::from(data::of(&data::sample()));
    for (field, source) in templates.iter() {
        run(field, source, &ctx).map_err(|e| format!("templates.{field}: {e}"))?;
    }
    Ok(())
}

/// Runs each template on `payload`'s data.
pub fn render(templates: &Templates, payload: &WebhookPayload) -> Rendered {
    let mut rendered = Rendered::default();
    if templates.is_empty() {
        return rendered;
    }
    let ctx = Context::from(data::of(payload));
    for (field, source) in templates.iter() {
        match run(field, source, &ctx) {
            Ok(text) => {
                rendered.texts.0.insert(field, text);
            }
            Err(e) => rendered.failures.push((field, e)),
        }
    }
    rendered
}

/// Parses and runs one template.
fn run(field: TemplateField, source: &str, ctx: &Context) -> Result<String, String> {
    let mode = if field == TemplateField::Html {
        Mode::Html
    } else {
        Mode::Text
    };
    let mut template = Template::with_limits(
        Limits::default()
            .with_output_bytes(MAX_OUTPUT)
            .with_deadline(DEADLINE),
    );
    template.name = field.as_str().to_owned();
    template.add_funcs(&funcs::all(mode));
    template
        .parse(rewrite::rewrite(source))
        .map_err(|e| brief(e.to_string()))?;
    template.render(ctx).map_err(|e| brief(e.to_string()))
}

/// An error cut to a readable length: gtmpl's may print a whole value (all of
/// a notification's alerts).
fn brief(mut error: String) -> String {
    const MAX: usize = 300;
    if let Some((cut, _)) = error.char_indices().nth(MAX) {
        error.truncate(cut);
        error.push('…');
    }
    error
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::IntegrationKind;

    fn templates(kind: IntegrationKind, pairs: &[(&str, &str)]) -> Templates {
        let raw = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let settings = match kind {
            IntegrationKind::Slack => serde_json::json!({"api_url": "http://x"}),
            _ => serde_json::json!({"to": "ops@example.com"}),
        };
        let settings = crate::domain::ChannelSettings::parse(kind, &settings).unwrap();
        Templates::parse(&settings, Some(raw)).unwrap()
    }

    /// What `source` gives as a Slack `text` on the sample.
    fn on_sample(source: &str) -> Result<String, String> {
        run(
            TemplateField::Text,
            source,
            &Context::from(data::of(&data::sample())),
        )
    }

    #[test]
    fn alertmanager_data_and_idioms() {
        let ok = |s: &str| on_sample(s).unwrap();
        assert_eq!(
            ok("{{ .Status }} {{ .Receiver }}"),
            "firing notimeter/u1/sample"
        );
        assert_eq!(ok("{{ .CommonLabels.alertname }}"), "HighCPU");
        assert_eq!(
            ok("{{ len .Alerts }}/{{ .Alerts.Firing | len }}/{{ len .Alerts.Resolved }}"),
            "2/1/1"
        );
        assert_eq!(
            ok("{{ range .Alerts.Firing }}{{ .Labels.instance }} {{ .Annotations.summary }}{{ end }}"),
            "db-1:9100 CPU above 90% on db-1:9100"
        );
        assert_eq!(
            ok("{{ range .CommonLabels.SortedPairs }}{{ .Name }}={{ .Value }};{{ end }}"),
            "alertname=HighCPU;job=node;severity=critical;user_id=u1;"
        );
        assert_eq!(ok(r#"{{ .GroupLabels.Names | join "," }}"#), "alertname");
        assert_eq!(
            ok(r#"{{ .CommonLabels.Values | join "," }}"#),
            "HighCPU,node,critical,u1"
        );
        assert_eq!(
            ok("{{ with index .Alerts 1 }}{{ .Status }} {{ .EndsAt }}{{ end }}"),
            "resolved 2026-01-01T09:30:00Z"
        );
        assert_eq!(ok("{{ .CommonLabels.severity | toUpper }}"), "CRITICAL");
        assert_eq!(
            ok("{{ range $i, $a := .Alerts }}{{ $i }}{{ $.Status }}{{ end }}"),
            "0firing1firing"
        );
    }

    #[test]
    fn missing_keys_print_as_empty() {
        let ok = |s: &str| on_sample(s).unwrap();
        assert_eq!(ok("[{{ .CommonLabels.team }}]"), "[]");
        assert_eq!(ok("[{{ .CommonAnnotations.nope.deeper }}]"), "[]");
        assert_eq!(ok(r#"[{{ index .CommonLabels "team" }}]"#), "[]");
        assert_eq!(ok(r#"[{{ printf "%s" .CommonLabels.team }}]"#), "[]");
        assert_eq!(
            ok(r#"{{ if eq .CommonLabels.team "" }}none{{ end }}"#),
            "none"
        );
        assert_eq!(ok(r#"{{ $t := .CommonLabels.team }}[{{ $t }}]"#), "[]");
        assert_eq!(ok(r#"{{ or .CommonLabels.team "ops" }}"#), "ops");
        assert_eq!(ok("[{{ .CommonLabels.team | toUpper }}]"), "[]");
        let err = on_sample("{{ .CommonLabel.team }}").unwrap_err();
        assert!(
            err.contains("CommonLabel"),
            "a misspelt field is an error: {err}"
        );
    }

    #[test]
    fn html_field_escapes_unless_safe() {
        let mut p = data::sample();
        p.common_annotations
            .insert("note".into(), "<b>&</b>".into());
        let rendered = render(
            &templates(
                IntegrationKind::Email,
                &[
                    ("html", "{{ .CommonAnnotations.note }}|{{ .CommonAnnotations.note | safeHtml }}|{{ html .CommonAnnotations.note }}"),
                    ("text", "{{ .CommonAnnotations.note }}"),
                ],
            ),
            &p,
        );
        assert!(rendered.failures.is_empty(), "{:?}", rendered.failures);
        assert_eq!(
            rendered.texts.get(TemplateField::Html),
            Some("&lt;b&gt;&amp;&lt;/b&gt;|<b>&</b>|&lt;b&gt;&amp;&lt;/b&gt;")
        );
        assert_eq!(rendered.texts.get(TemplateField::Text), Some("<b>&</b>"));
    }

    #[test]
    fn checks_name_the_field_and_sends_fall_back() {
        let slack =
            |source: &str| templates(IntegrationKind::Slack, &[("title", "ok"), ("text", source)]);
        let err = check(&slack("{{ nope .Status }}")).unwrap_err();
        assert!(
            err.starts_with("templates.text: ") && err.contains("nope"),
            "{err}"
        );
        let err = check(&slack("{{ if .Status }}")).unwrap_err();
        assert!(err.starts_with("templates.text: "), "{err}");
        let err = check(&slack("{{ index .Alerts 5 }}")).unwrap_err();
        assert!(err.contains("unable to get 5"), "{err}");
        assert!(err.chars().count() < 400, "cut: {err}");
        assert!(check(&slack("{{ index .Alerts 1 }}")).is_ok());

        let mut one = data::sample();
        one.alerts.truncate(1);
        let rendered = render(&slack("{{ (index .Alerts 1).Status }}"), &one);
        assert_eq!(rendered.texts.get(TemplateField::Title), Some("ok"));
        assert_eq!(rendered.texts.get(TemplateField::Text), None);
        assert_eq!(rendered.failures.len(), 1);
        assert_eq!(rendered.failures[0].0, TemplateField::Text);
    }

    #[test]
    fn renders_are_bounded() {
        let err = on_sample("{{ range 100000 }}x{{ end }}").unwrap_err();
        assert!(!err.is_empty());
        let err = on_sample(r#"{{ define "r" }}{{ template "r" . }}{{ end }}{{ template "r" . }}"#)
            .unwrap_err();
        assert!(!err.is_empty());
    }
}

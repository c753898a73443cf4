//! Message templates: a channel's `templates` replace the fields of the
//! message its integration sends, as the upstream receives it; a template
//! that does not parse or run on a sample is refused on save (422 naming the
//! field); one that fails on a message's own data leaves that field's default
//! and the message is delivered.

use serde_json::{json, Value};

use crate::helpers::*;
use crate::integrations::{
    form, header, only_mail_to, telegram_ok, twilio_created, with_sms, SEND_MESSAGE, TWILIO_PATH,
};
use crate::on_both_backends;

on_both_backends!(
    slack_text_template_of_the_original_setup,
    bad_templates_are_refused_naming_the_field,
    a_template_failing_at_send_time_leaves_the_default,
    telegram_message_template_over_firing_and_resolved,
    sms_text_template,
);

on_both_backends!(needs aiosmtpd: email_subject_html_and_text_templates);

const SLACK_HOOK: &str = "/services/T000/B000/XXXX";

async fn put_created(app: &TestApp, user: &str, channel: &str, body: Value) {
    let r = app.put_channel(user, channel, body).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
}

async fn delivered(app: &TestApp, user: &str, integration: &str) -> f64 {
    app.metric(
        "notimeter_notifications_total",
        &[
            ("user_id", user),
            ("integration", integration),
            ("outcome", "delivered"),
        ],
    )
    .await
}

/// Posts one firing alert of u1's (`high_cpu` on db-1, described so).
async fn post_one_alert(app: &TestApp) {
    app.post_alerts(&payload(
        "default",
        "g",
        vec![alert("high_cpu", Some("u1"), "f1")],
    ))
    .await;
}

/// Posts one alert and answers the attachment Slack received for it.
async fn slack_attachment(app: &TestApp, slack: &Sink) -> Value {
    post_one_alert(app).await;
    let got = slack.wait_for(SLACK_HOOK, 1).await;
    app.wait_idle().await;
    got[0].json()["attachments"][0].clone()
}

async fn slack_text_template_of_the_original_setup(backend: Backend) {
    let app = spawn_app(&backend).await;
    let slack = Sink::start().await;
    let templates = json!({"text": "{{ .CommonAnnotations.description }}"});
    put_created(
        &app,
        "u1",
        "slack",
        json!({"type": "slack", "settings": {"api_url": slack.url(SLACK_HOOK)}, "templates": templates}),
    )
    .await;
    let saved = app
        .get_json("/v1/users/u1/channels/slack", ADMIN_TOKEN)
        .await;
    assert_eq!(saved["templates"], templates, "shown as saved");

    let attachment = &slack_attachment(&app, &slack).await;
    assert_eq!(attachment["text"], "high_cpu on db-1");
    assert_eq!(
        attachment["title"], "[FIRING:1] high_cpu (db-1:9100 critical u1)",
        "a field without a template keeps its default"
    );
    assert!(attachment.get("pretext").is_none());
    assert_eq!(delivered(&app, "u1", "slack").await, 1.0);
    app.stop().await;
}

async fn bad_templates_are_refused_naming_the_field(backend: Backend) {
    let app = spawn_app(&backend).await;
    let slack = |templates: Value| json!({"type": "slack", "settings": {"api_url": "http://127.0.0.1:9/hook"}, "templates": templates});
    let cases = [
        (
            slack(json!({"text": "{{ if .Status }}no end"})),
            "templates.text: template: text:1:",
        ),
        (
            slack(json!({"title": "ok", "footer": "{{ .Status | nope }}"})),
            "function nope not defined",
        ),
        (
            slack(json!({"pretext": "{{ .CommonLabel.alertname }}"})),
            "templates.pretext: ",
        ),
        (
            slack(json!({"text": "{{ index .Alerts 5 }}"})),
            "templates.text: ",
        ),
        (
            slack(json!({"message": "{{ .Status }}"})),
            "templates.message: slack channels have no such template; theirs are title, text, pretext, footer",
        ),
        (
            json!({"type": "telegram", "settings": {"bot_token": "1:x", "chat_id": 1}, "templates": {"text": "x"}}),
            "templates.text: telegram channels have no such template",
        ),
        (
            json!({"type": "webhook", "settings": {"url": "http://127.0.0.1:9/"}, "templates": {"text": "x"}}),
            "templates: webhook channels have no templates",
        ),
        (
            json!({"type": "telegram", "settings": {"webhook_url": "http://127.0.0.1:9/"}, "templates": {"message": "x"}}),
            "templates: telegram relay channels (webhook_url) have no templates",
        ),
        (slack(json!({"text": 1})), "templates"),
    ];
    for (body, expected) in cases {
        let r = app.put_channel("u1", "c", body.clone()).await;
        assert_eq!(r.status(), 422, "{body}");
        let answer: Value = r.json().await.unwrap();
        let error = answer["error"].as_str().expect("an {\"error\"} body");
        assert!(error.contains(expected), "{body}: {error}");
    }
    let r = app
        .http
        .get(app.url("/v1/users/u1/channels/c"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "nothing was saved");
    app.stop().await;
}

async fn a_template_failing_at_send_time_leaves_the_default(backend: Backend) {
    let app = spawn_app(&backend).await;
    let slack = Sink::start().await;
    // The sample notification has two alerts, so this passes the check; a
    // notification of one alert has no second.
    put_created(
        &app,
        "u1",
        "slack",
        json!({
            "type": "slack", "settings": {"api_url": slack.url(SLACK_HOOK)},
            "templates": {
                "title": "{{ .Status | toUpper }}: {{ .CommonLabels.alertname }}",
                "text": "{{ (index .Alerts 1).Annotations.description }}",
            }
        }),
    )
    .await;
    let attachment = &slack_attachment(&app, &slack).await;
    assert_eq!(attachment["title"], "FIRING: high_cpu");
    assert_eq!(
        attachment["text"], "high_cpu on db-1\n",
        "the failed field's default text"
    );
    assert_eq!(delivered(&app, "u1", "slack").await, 1.0);
    assert_eq!(slack.received().len(), 1);
    for (field, failed) in [("text", 1.0), ("title", 0.0)] {
        let labels = [("integration", "slack"), ("field", field)];
        let counted = app
            .metric("notimeter_template_failures_total", &labels)
            .await;
        assert_eq!(counted, failed, "fallbacks of {field} counted");
    }
    app.stop().await;
}

async fn telegram_message_template_over_firing_and_resolved(backend: Backend) {
    let app = spawn_app(&backend).await;
    let api = Sink::start().await;
    api.default_reply(telegram_ok());
    let message = "<b>{{ .Alerts.Firing | len }} firing</b>\
        {{ range .Alerts.Firing }}\n{{ .Labels.alertname | toUpper }} on {{ .Labels.instance }}{{ end }}\
        {{ if .Alerts.Resolved }}\nresolved: {{ range .Alerts.Resolved }}{{ .Labels.alertname }} {{ end }}{{ end }}";
    put_created(
        &app,
        "u1",
        "tg",
        json!({
            "type": "telegram",
            "settings": {"bot_token": "123456:SECRET-bot-token", "chat_id": -100123, "api_url": api.url("")},
            "templates": {"message": message}
        }),
    )
    .await;
    let mut resolved = alert("disk_full", Some("u1"), "f3");
    resolved["status"] = json!("resolved");
    let alerts = vec![
        alert("high_cpu", Some("u1"), "f1"),
        alert("mem_low", Some("u1"), "f2"),
        resolved,
    ];
    app.post_alerts(&payload("default", "g", alerts)).await;
    let got = api.wait_for(SEND_MESSAGE, 1).await;
    app.wait_idle().await;
    let body = got[0].json();
    assert_eq!(
        body["text"],
        "<b>2 firing</b>\nHIGH_CPU on db-1:9100\nMEM_LOW on db-1:9100\nresolved: disk_full",
        "sent as the template gives it, markup included"
    );
    assert_eq!(body["parse_mode"], "HTML");
    assert_eq!(delivered(&app, "u1", "telegram").await, 1.0);
    app.stop().await;
}

async fn sms_text_template(backend: Backend) {
    let gateway = Sink::start().await;
    gateway.default_reply(twilio_created("1"));
    let app = spawn_app_with(&backend, |s| with_sms(s, &gateway)).await;
    put_created(
        &app,
        "u1",
        "phone",
        json!({
            "type": "sms", "settings": {"to": "+14155550100"},
            "templates": {"text": "{{ .Status | toUpper }} {{ .CommonLabels.alertname | title }}{{ .CommonLabels.team }}: {{ .CommonAnnotations.summary }}"}
        }),
    )
    .await;
    post_one_alert(&app).await;
    let got = gateway.wait_for(TWILIO_PATH, 1).await;
    app.wait_idle().await;
    assert_eq!(
        form(&got[0].body)["Body"],
        "FIRING High_cpu: it is bad",
        "a missing label prints nothing"
    );
    assert_eq!(delivered(&app, "u1", "sms").await, 1.0);
    app.stop().await;
}

async fn email_subject_html_and_text_templates(backend: Backend) {
    let smtp = SmtpServer::start().await;
    let app = spawn_app_with(&backend, |s| smtp.configure(s)).await;
    put_created(
        &app,
        "u1",
        "mail",
        json!({
            "type": "email", "settings": {"to": "ops@example.com"},
            "templates": {
                "subject": "{{ .CommonLabels.alertname | toUpper }}: {{ .CommonAnnotations.summary }}",
                "html": "<p>{{ .CommonAnnotations.note }}</p>{{ \"<hr>\" | safeHtml }}",
                "text": "{{ range .Alerts }}{{ .Labels.instance }} {{ .Annotations.note }}{{ end }}",
            }
        }),
    )
    .await;
    let mut a = alert("high_cpu", Some("u1"), "f1");
    a["annotations"]["summary"] = json!("it is bad\r\nBcc: evil@example.com");
    a["annotations"]["note"] = json!("<script>alert(1)</script>");
    app.post_alerts(&payload("default", "g", vec![a])).await;
    let m = only_mail_to(&app, &smtp, "ops@example.com").await;
    let parsed = mailparse::parse_mail(m.data.as_bytes()).unwrap();
    assert_eq!(
        header(&parsed, "Subject").unwrap(),
        "HIGH_CPU: it is bad  Bcc: evil@example.com",
        "the subject loses its line breaks"
    );
    let part = |mimetype: &str| {
        parsed
            .subparts
            .iter()
            .find(|p| p.ctype.mimetype == mimetype)
            .unwrap()
            .get_body()
            .unwrap()
    };
    assert_eq!(
        part("text/html").trim_end(),
        "<p>&lt;script&gt;alert(1)&lt;/script&gt;</p><hr>",
        "values escaped as html/template escapes them, safeHtml not"
    );
    assert_eq!(
        part("text/plain").trim_end(),
        "db-1:9100 <script>alert(1)</script>"
    );
    assert_eq!(delivered(&app, "u1", "email").await, 1.0);
    app.stop().await;
}

//! Every integration against a server that answers as the real one does:
//! the exact content delivered, a permanent failure counted once, and a
//! rate-limited send retried no sooner than the hint, then counted once.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;
use crate::on_both_backends;

on_both_backends!(
    telegram_message_like_alertmanager,
    telegram_long_message_is_cut_safely,
    telegram_blocked_bot_fails_once,
    telegram_retry_after_is_honoured,
    telegram_relay_is_billed_as_telegram,
    sms_message_and_segments,
    sms_invalid_number_fails_once,
    sms_rate_limit_is_honoured,
    slack_rate_limit_is_honoured,
    webhook_auth_and_max_alerts,
);

on_both_backends!(
    needs aiosmtpd: email_message_like_alertmanager,
    email_labels_cannot_inject_headers,
    email_permanent_and_transient_failures,
);

pub(crate) fn telegram_ok() -> Reply {
    Reply::new(
        200,
        r#"{"ok":true,"result":{"message_id":42,"chat":{"id":-100123,"type":"supergroup"},"date":1764000000,"text":"..."}}"#,
    )
}

async fn telegram_channel(app: &TestApp, api: &Sink, user: &str, extra: Value) {
    let mut settings =
        json!({"bot_token": "123456:SECRET-bot-token", "chat_id": -100123, "api_url": api.url("")});
    if let (Some(s), Some(e)) = (settings.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    let r = app
        .put_channel(
            user,
            "tg",
            json!({"type": "telegram", "settings": settings}),
        )
        .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
}

pub(crate) const SEND_MESSAGE: &str = "/bot123456:SECRET-bot-token/sendMessage";

fn counted(user: &str, integration: &str, outcome: &str) -> Vec<(&'static str, String)> {
    vec![
        ("user_id", user.to_owned()),
        ("integration", integration.to_owned()),
        ("outcome", outcome.to_owned()),
    ]
}

async fn count(app: &TestApp, name: &str, labels: Vec<(&'static str, String)>) -> f64 {
    let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
    app.metric(name, &labels).await
}

async fn telegram_message_like_alertmanager(backend: Backend) {
    let app = spawn_app(&backend).await;
    let api = Sink::start().await;
    api.default_reply(telegram_ok());
    telegram_channel(&app, &api, "u1", json!({})).await;
    let mut firing = alert("high_cpu", Some("u1"), "f1");
    firing["annotations"]["note"] = json!("<b>&\"quoted\"</b>");
    let mut resolved = alert("disk_full", Some("u1"), "f2");
    resolved["status"] = json!("resolved");
    app.post_alerts(&payload("default", "g", vec![firing, resolved]))
        .await;

    let got = api.wait_for(SEND_MESSAGE, 1).await;
    app.wait_idle().await;
    let body = got[0].json();
    let expected = "Alerts Firing:\n\
        Labels:\n - alertname = high_cpu\n - instance = db-1:9100\n - severity = critical\n - user_id = u1\n\
        Annotations:\n - description = high_cpu on db-1\n - note = &lt;b&gt;&amp;&quot;quoted&quot;&lt;/b&gt;\n - summary = it is bad\n\
        Source: http://prometheus:9090/graph?g0.expr=up\n\
        \n\
        Alerts Resolved:\n\
        Labels:\n - alertname = disk_full\n - instance = db-1:9100\n - severity = critical\n - user_id = u1\n\
        Annotations:\n - description = disk_full on db-1\n - summary = it is bad\n\
        Source: http://prometheus:9090/graph?g0.expr=up";
    assert_eq!(
        body,
        json!({"chat_id": -100123, "text": expected, "parse_mode": "HTML", "disable_web_page_preview": true, "disable_notification": false})
    );
    assert_eq!(
        count(
            &app,
            "notimeter_notifications_total",
            counted("u1", "telegram", "delivered")
        )
        .await,
        1.0
    );
    app.stop().await;
}

async fn telegram_long_message_is_cut_safely(backend: Backend) {
    let app = spawn_app(&backend).await;
    let api = Sink::start().await;
    api.default_reply(telegram_ok());
    telegram_channel(&app, &api, "u1", json!({})).await;
    let alerts: Vec<Value> = (0..60)
        .map(|i| {
            let mut a = alert("high_cpu", Some("u1"), &format!("f{i}"));
            a["annotations"]["description"] = json!("load & <pressure> ".repeat(5));
            a
        })
        .collect();
    app.post_alerts(&payload("default", "g", alerts)).await;
    let got = api.wait_for(SEND_MESSAGE, 1).await;
    app.wait_idle().await;
    let text = got[0].json()["text"].as_str().unwrap().to_owned();
    assert!(
        text.chars().count() <= 4096,
        "{} characters",
        text.chars().count()
    );
    assert!(
        text.chars().count() > 4000,
        "cut near the limit, not far below it"
    );
    assert!(text.ends_with('…'));
    let body = text.trim_end_matches('…');
    for (i, _) in body.match_indices('&') {
        assert!(
            ["&amp;", "&lt;", "&gt;", "&quot;", "&#39;"]
                .iter()
                .any(|e| body[i..].starts_with(e)),
            "broken entity at {i}"
        );
    }
    app.stop().await;
}

async fn telegram_blocked_bot_fails_once(backend: Backend) {
    let app = spawn_app(&backend).await;
    let api = Sink::start().await;
    api.default_reply(Reply::new(
        403,
        r#"{"ok":false,"error_code":403,"description":"Forbidden: bot was blocked by the user"}"#,
    ));
    telegram_channel(&app, &api, "u1", json!({})).await;
    app.post_alerts(&payload(
        "default",
        "g",
        vec![alert("high_cpu", Some("u1"), "f1")],
    ))
    .await;
    api.wait_for(SEND_MESSAGE, 1).await;
    app.wait_idle().await;
    assert_eq!(api.received().len(), 1, "a blocked bot is not retried");
    assert_eq!(
        count(
            &app,
            "notimeter_notifications_total",
            counted("u1", "telegram", "failed")
        )
        .await,
        1.0
    );
    assert_eq!(
        app.metric(
            "notimeter_delivery_attempts_total",
            &[("integration", "telegram"), ("result", "clientError")]
        )
        .await,
        1.0
    );
    let error: String = query_one(&app.database_url, "SELECT last_error FROM messages").await;
    assert!(error.contains("bot was blocked"), "{error}");
    app.stop().await;
}

async fn telegram_retry_after_is_honoured(backend: Backend) {
    let app = spawn_app(&backend).await;
    let api = Sink::start().await;
    api.default_reply(telegram_ok());
    api.script(
        SEND_MESSAGE,
        [Reply::new(429, r#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 1","parameters":{"retry_after":1}}"#)],
    );
    telegram_channel(&app, &api, "u1", json!({})).await;
    app.post_alerts(&payload(
        "default",
        "g",
        vec![alert("high_cpu", Some("u1"), "f1")],
    ))
    .await;
    let got = api.wait_for(SEND_MESSAGE, 2).await;
    app.wait_idle().await;
    let waited = got[1].at - got[0].at;
    assert!(
        waited >= Duration::from_millis(990),
        "retried after {waited:?}, sooner than retry_after = 1 s"
    );
    assert_eq!(api.received().len(), 2);
    assert_eq!(
        count(
            &app,
            "notimeter_notifications_total",
            counted("u1", "telegram", "delivered")
        )
        .await,
        1.0
    );
    assert_eq!(
        app.metric(
            "notimeter_delivery_attempts_total",
            &[("integration", "telegram"), ("result", "rateLimited")]
        )
        .await,
        1.0
    );
    app.stop().await;
}

async fn telegram_relay_is_billed_as_telegram(backend: Backend) {
    let app = spawn_app(&backend).await;
    let relay = Sink::start().await;
    let r = app
        .put_channel(
            "u1",
            "relay",
            json!({"type": "telegram", "settings": {"webhook_url": relay.url("/relay/abc")}}),
        )
        .await;
    assert_eq!(r.status(), 201);
    app.post_alerts(&payload(
        "default",
        "g",
        vec![alert("high_cpu", Some("u1"), "f1")],
    ))
    .await;
    let got = relay.wait_for("/relay/abc", 1).await;
    app.wait_idle().await;
    let p = got[0].json();
    assert_eq!(p["version"], "4");
    assert_eq!(p["alerts"][0]["labels"]["user_id"], "u1");
    let usage = app.get_json("/v1/usage", FINANCE_TOKEN).await;
    assert_eq!(usage["usage"][0]["integration"], "telegram");
    assert_eq!(usage["usage"][0]["delivered"], 1);
    app.stop().await;
}

pub(crate) fn header<'a>(mail: &'a mailparse::ParsedMail<'a>, name: &str) -> Option<String> {
    mail.headers
        .iter()
        .find(|h| h.get_key().eq_ignore_ascii_case(name))
        .map(|h| h.get_value())
}

async fn email_message_like_alertmanager(backend: Backend) {
    let smtp = SmtpServer::start().await;
    let app = spawn_app_with(&backend, |s| smtp.configure(s)).await;
    let r = app
        .put_channel("u1", "mail", json!({"type": "email", "settings": {"to": ["ops@example.com", "Oncall <oncall@example.com>"]}}))
        .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let mut a = alert("high_cpu", Some("u1"), "f1");
    a["annotations"]["note"] = json!("<script>alert(1)</script>");
    app.post_alerts(&payload("default", "g", vec![a])).await;

    let mails = smtp.wait_for(1).await;
    app.wait_idle().await;
    assert_eq!(mails.len(), 1);
    let m = &mails[0];
    assert_eq!(m.mail_from, "notimeter@example.com");
    assert_eq!(m.rcpt_tos, ["ops@example.com", "oncall@example.com"]);
    let parsed = mailparse::parse_mail(m.data.as_bytes()).unwrap();
    assert_eq!(
        header(&parsed, "Subject").unwrap(),
        "[FIRING:1] high_cpu (db-1:9100 critical u1)"
    );
    assert_eq!(header(&parsed, "From").unwrap(), "notimeter@example.com");
    assert!(header(&parsed, "To").unwrap().contains("ops@example.com"));
    let id = header(&parsed, "Message-ID").expect("a Message-Id");
    assert!(id.starts_with('<') && id.ends_with("@example.com>"), "{id}");
    assert!(header(&parsed, "Date").is_some());
    assert_eq!(parsed.ctype.mimetype, "multipart/alternative");
    // Bodies travel with CRLF line endings, as RFC 5322 wants.
    let text = parsed
        .subparts
        .iter()
        .find(|p| p.ctype.mimetype == "text/plain")
        .unwrap()
        .get_body()
        .unwrap()
        .replace("\r\n", "\n");
    let html = parsed
        .subparts
        .iter()
        .find(|p| p.ctype.mimetype == "text/html")
        .unwrap()
        .get_body()
        .unwrap();
    assert!(
        text.starts_with("Alerts Firing:\nLabels:\n - alertname = high_cpu\n"),
        "{text}"
    );
    assert!(
        text.contains(" - note = <script>alert(1)</script>\n"),
        "{text}"
    );
    assert!(html.contains("1 alert(s) firing for"), "{html}");
    assert!(html.contains("View in Alertmanager"));
    assert!(
        html.contains("note = &lt;script&gt;alert(1)&lt;/script&gt;"),
        "label values are escaped in HTML"
    );
    assert!(!html.contains("<script>"));
    assert_eq!(
        count(
            &app,
            "notimeter_notifications_total",
            counted("u1", "email", "delivered")
        )
        .await,
        1.0
    );
    app.stop().await;
}

/// The one mail sent, once handled, checked for what an injected header
/// would add: a recipient beyond `to`, a `Bcc`.
pub(crate) async fn only_mail_to(app: &TestApp, smtp: &SmtpServer, to: &str) -> Mail {
    smtp.wait_for(1).await;
    app.wait_idle().await;
    let mut mails = smtp.mails();
    assert_eq!(mails.len(), 1);
    let m = mails.remove(0);
    assert_eq!(m.rcpt_tos, [to], "no extra recipient");
    let parsed = mailparse::parse_mail(m.data.as_bytes()).unwrap();
    assert!(header(&parsed, "Bcc").is_none(), "{}", m.data);
    m
}

async fn email_labels_cannot_inject_headers(backend: Backend) {
    let smtp = SmtpServer::start().await;
    let app = spawn_app_with(&backend, |s| smtp.configure(s)).await;
    app.put_channel(
        "u1",
        "mail",
        json!({"type": "email", "settings": {"to": "ops@example.com"}}),
    )
    .await;
    let mut a = alert("x", Some("u1"), "f1");
    a["labels"]["alertname"] = json!("high_cpu\r\nBcc: evil@example.com\r\nX-Injected: yes");
    let mut p = payload("default", "g", vec![a]);
    p["groupLabels"] = json!({"alertname": "high_cpu\r\nBcc: evil@example.com\r\nX-Injected: yes"});
    app.post_alerts(&p).await;
    let m = &only_mail_to(&app, &smtp, "ops@example.com").await;
    let parsed = mailparse::parse_mail(m.data.as_bytes()).unwrap();
    assert!(header(&parsed, "X-Injected").is_none(), "{}", m.data);
    let subject = header(&parsed, "Subject").unwrap();
    assert!(!subject.contains('\n') && !subject.contains('\r'));
    assert!(
        subject.starts_with("[FIRING:1] high_cpu  Bcc: evil@example.com"),
        "{subject}"
    );
    app.stop().await;
}

async fn email_permanent_and_transient_failures(backend: Backend) {
    let smtp = SmtpServer::start().await;
    let app = spawn_app_with(&backend, |s| smtp.configure(s)).await;
    app.put_channel(
        "u1",
        "mail",
        json!({"type": "email", "settings": {"to": "reject@example.com"}}),
    )
    .await;
    app.put_channel(
        "u2",
        "mail",
        json!({"type": "email", "settings": {"to": "tempfail-once@example.com"}}),
    )
    .await;
    app.post_alerts(&payload(
        "default",
        "g",
        vec![
            alert("high_cpu", Some("u1"), "f1"),
            alert("high_cpu", Some("u2"), "f2"),
        ],
    ))
    .await;
    smtp.wait_for(1).await;
    app.wait_idle().await;
    assert_eq!(
        count(
            &app,
            "notimeter_notifications_total",
            counted("u1", "email", "failed")
        )
        .await,
        1.0
    );
    assert_eq!(
        count(
            &app,
            "notimeter_notifications_total",
            counted("u2", "email", "delivered")
        )
        .await,
        1.0
    );
    assert_eq!(
        app.metric(
            "notimeter_delivery_attempts_total",
            &[("integration", "email"), ("result", "clientError")]
        )
        .await,
        1.0
    );
    assert_eq!(
        app.metric(
            "notimeter_delivery_attempts_total",
            &[("integration", "email"), ("result", "serverError")]
        )
        .await,
        1.0
    );
    let code: i64 = query_one(&app.database_url, "SELECT a.status_code FROM attempts a JOIN messages m ON m.id = a.message_id WHERE m.user_id = 'u1'").await;
    assert_eq!(code, 550);
    let mails = smtp.mails();
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].rcpt_tos, ["tempfail-once@example.com"]);
    app.stop().await;
}

pub(crate) const TWILIO_PATH: &str = "/2010-04-01/Accounts/AC0123456789abcdef/Messages.json";

pub(crate) fn twilio_created(segments: &str) -> Reply {
    Reply::new(
        201,
        &format!(
            r#"{{"sid":"SM0123","status":"queued","num_segments":"{segments}","to":"+14155550100","from":"+15005550006"}}"#
        ),
    )
}

pub(crate) fn with_sms(s: &mut notimeter::config::Settings, gateway: &Sink) {
    s.sms.api_url = Some(gateway.url(""));
    s.sms.account_sid = Some("AC0123456789abcdef".into());
    s.sms.auth_token = Some(notimeter::config::Secret::new("sms-auth-SECRET"));
    s.sms.from = Some("+15005550006".into());
}

pub(crate) fn form(body: &[u8]) -> std::collections::BTreeMap<String, String> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

async fn sms_message_and_segments(backend: Backend) {
    let gateway = Sink::start().await;
    gateway.default_reply(twilio_created("1"));
    let app = spawn_app_with(&backend, |s| with_sms(s, &gateway)).await;
    let r = app
        .put_channel(
            "u1",
            "phone",
            json!({"type": "sms", "settings": {"to": "+14155550100"}}),
        )
        .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let mut p = payload(
        "default",
        "g",
        vec![
            alert("high_cpu", Some("u1"), "f1"),
            alert("high_cpu", Some("u1"), "f2"),
        ],
    );
    p["groupLabels"] = json!({"alertname": "high_cpu", "user_id": "u1"});
    app.post_alerts(&p).await;
    let got = gateway.wait_for(TWILIO_PATH, 1).await;
    app.wait_idle().await;
    let f = form(&got[0].body);
    assert_eq!(f["To"], "+14155550100");
    assert_eq!(f["From"], "+15005550006");
    assert_eq!(
        f["Body"],
        "[FIRING:2] high_cpu u1 (db-1:9100 critical): high_cpu on db-1; high_cpu on db-1"
    );
    let auth = got[0].headers["authorization"].to_str().unwrap().to_owned();
    use base64_check::decode;
    assert_eq!(
        decode(auth.trim_start_matches("Basic ")),
        "AC0123456789abcdef:sms-auth-SECRET"
    );
    let segments: i64 = query_one(&app.database_url, "SELECT segments FROM attempts").await;
    assert_eq!(segments, 1);
    assert_eq!(
        count(
            &app,
            "notimeter_notifications_total",
            counted("u1", "sms", "delivered")
        )
        .await,
        1.0
    );
    app.stop().await;
}

/// A minimal base64 decoder for the test's one Authorization header.
mod base64_check {
    pub fn decode(s: &str) -> String {
        const T: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut bits = 0u32;
        let mut n = 0;
        let mut out = Vec::new();
        for c in s.trim_end_matches('=').chars() {
            bits = (bits << 6) | T.find(c).unwrap() as u32;
            n += 6;
            if n >= 8 {
                n -= 8;
                out.push((bits >> n) as u8);
                bits &= (1 << n) - 1;
            }
        }
        String::from_utf8(out).unwrap()
    }
}

async fn sms_invalid_number_fails_once(backend: Backend) {
    let gateway = Sink::start().await;
    gateway.default_reply(Reply::new(
        400,
        r#"{"code":21211,"message":"The 'To' number +15555555555 is not a valid phone number.","more_info":"https://www.twilio.com/docs/errors/21211","status":400}"#,
    ));
    let app = spawn_app_with(&backend, |s| with_sms(s, &gateway)).await;
    app.put_channel(
        "u1",
        "phone",
        json!({"type": "sms", "settings": {"to": "+15555555555"}}),
    )
    .await;
    app.post_alerts(&payload(
        "default",
        "g",
        vec![alert("high_cpu", Some("u1"), "f1")],
    ))
    .await;
    gateway.wait_for(TWILIO_PATH, 1).await;
    app.wait_idle().await;
    assert_eq!(gateway.received().len(), 1);
    assert_eq!(
        count(
            &app,
            "notimeter_notifications_total",
            counted("u1", "sms", "failed")
        )
        .await,
        1.0
    );
    let error: String = query_one(&app.database_url, "SELECT last_error FROM messages").await;
    assert!(
        error.contains("21211") && error.contains("not a valid phone number"),
        "{error}"
    );
    app.stop().await;
}

async fn sms_rate_limit_is_honoured(backend: Backend) {
    let gateway = Sink::start().await;
    gateway.default_reply(twilio_created("1"));
    gateway.script(
        TWILIO_PATH,
        [Reply::new(
            429,
            r#"{"code":20429,"message":"Too Many Requests","status":429}"#,
        )
        .header("retry-after", "1")],
    );
    let app = spawn_app_with(&backend, |s| with_sms(s, &gateway)).await;
    app.put_channel(
        "u1",
        "phone",
        json!({"type": "sms", "settings": {"to": "+14155550100"}}),
    )
    .await;
    app.post_alerts(&payload(
        "default",
        "g",
        vec![alert("high_cpu", Some("u1"), "f1")],
    ))
    .await;
    let got = gateway.wait_for(TWILIO_PATH, 2).await;
    app.wait_idle().await;
    assert!(got[1].at - got[0].at >= Duration::from_millis(990));
    assert_eq!(
        count(
            &app,
            "notimeter_notifications_total",
            counted("u1", "sms", "delivered")
        )
        .await,
        1.0
    );
    assert_eq!(
        app.metric(
            "notimeter_delivery_attempts_total",
            &[("integration", "sms"), ("result", "rateLimited")]
        )
        .await,
        1.0
    );
    app.stop().await;
}

async fn slack_rate_limit_is_honoured(backend: Backend) {
    let app = spawn_app(&backend).await;
    let slack = Sink::start().await;
    slack.script(
        "/hook",
        [Reply::new(429, "rate_limited").header("retry-after", "1")],
    );
    app.put_channel(
        "u1",
        "slack",
        json!({"type": "slack", "settings": {"api_url": slack.url("/hook")}}),
    )
    .await;
    app.post_alerts(&payload(
        "default",
        "g",
        vec![alert("high_cpu", Some("u1"), "f1")],
    ))
    .await;
    let got = slack.wait_for("/hook", 2).await;
    app.wait_idle().await;
    assert!(got[1].at - got[0].at >= Duration::from_millis(990));
    assert_eq!(
        count(
            &app,
            "notimeter_notifications_total",
            counted("u1", "slack", "delivered")
        )
        .await,
        1.0
    );
    app.stop().await;
}

async fn webhook_auth_and_max_alerts(backend: Backend) {
    let app = spawn_app(&backend).await;
    let sink = Sink::start().await;
    let r = app
        .put_channel("u1", "bearer", json!({"type": "webhook", "settings": {"url": sink.url("/bearer"), "bearer_token": "tok-SECRET", "max_alerts": 2}}))
        .await;
    assert_eq!(r.status(), 201);
    let r = app
        .put_channel("u1", "basic", json!({"type": "webhook", "settings": {"url": sink.url("/basic"), "basic_auth": {"username": "bob", "password": "pw-SECRET"}}}))
        .await;
    assert_eq!(r.status(), 201);
    let alerts = (0..5)
        .map(|i| alert("high_cpu", Some("u1"), &format!("f{i}")))
        .collect();
    app.post_alerts(&payload("default", "g", alerts)).await;
    let bearer = sink.wait_for("/bearer", 1).await;
    let basic = sink.wait_for("/basic", 1).await;
    app.wait_idle().await;
    assert_eq!(bearer[0].headers["authorization"], "Bearer tok-SECRET");
    let p = bearer[0].json();
    assert_eq!(p["alerts"].as_array().unwrap().len(), 2);
    assert_eq!(p["truncatedAlerts"], 3);
    let auth = basic[0].headers["authorization"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        base64_check::decode(auth.trim_start_matches("Basic ")),
        "bob:pw-SECRET"
    );
    assert_eq!(basic[0].json()["alerts"].as_array().unwrap().len(), 5);
    app.stop().await;
}

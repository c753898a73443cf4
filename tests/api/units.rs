//! Billing units (DESIGN.md): an SMS bills the segments it was sent in,
//! totals round to the currency's minor unit, and the reports of periods
//! closed before units existed keep the columns they were written with.

use notimeter::domain::IntegrationKind;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::integrations::{twilio_created, with_sms, TWILIO_PATH};
use crate::on_both_backends;

on_both_backends!(
    sms_bills_its_segments_and_totals_round_to_the_minor_unit,
    reports_of_periods_closed_before_units_keep_their_columns,
);

async fn close(app: &TestApp) -> Value {
    app.close_period().await
}

fn usage_row<'a>(usage: &'a Value, integration: &str) -> &'a Value {
    usage["usage"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["integration"] == integration)
        .unwrap_or_else(|| panic!("no {integration} row in {usage}"))
}

async fn sms_bills_its_segments_and_totals_round_to_the_minor_unit(backend: Backend) {
    let gateway = Sink::start().await;
    // The gateway says the text took three segments.
    gateway.default_reply(twilio_created("3"));
    let sink = Sink::start().await;
    let app = spawn_app_with(&backend, |s| {
        with_sms(s, &gateway);
        s.billing
            .prices
            .insert(IntegrationKind::Sms, "0.0075".parse().unwrap());
        s.billing
            .prices
            .insert(IntegrationKind::Webhook, "0.0033".parse().unwrap());
    })
    .await;
    let r = app
        .put_channel(
            "u1",
            "phone",
            json!({"type": "sms", "settings": {"to": "+14155550100"}}),
        )
        .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    app.add_webhook("u1", "hook", &sink.url("/h")).await;
    app.post_alerts(&payload(
        "default",
        "g",
        vec![alert("disk_full", Some("u1"), "f1")],
    ))
    .await;
    gateway.wait_for(TWILIO_PATH, 1).await;
    sink.wait_for("/h", 1).await;
    app.wait_idle().await;

    let usage = app.get_json("/v1/usage", FINANCE_TOKEN).await;
    let sms = usage_row(&usage, "sms");
    assert_eq!(
        (sms["delivered"].as_i64(), sms["units"].as_i64()),
        (Some(1), Some(3))
    );
    assert_eq!(sms["amount"], "0.0225");
    let webhook = usage_row(&usage, "webhook");
    assert_eq!(
        (webhook["units"].as_i64(), webhook["amount"].as_str()),
        (Some(1), Some("0.0033"))
    );
    // 0.0225 + 0.0033 = 0.0258, rounded to cents in the total only.
    assert_eq!(usage["total"], "0.03");
    assert_eq!(
        app.metric("notimeter_sms_segments_total", &[("user_id", "u1")])
            .await,
        3.0
    );

    let closed = close(&app).await;
    let id = closed["closed"]["period_id"].as_str().unwrap();
    let csv = app
        .get_text(&format!("/v1/ledger/periods/{id}.csv"), FINANCE_TOKEN)
        .await;
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("period_id,period_start,period_end,user_id,integration,delivered,failed,units,unit_price,amount,currency")
    );
    let rows: Vec<&str> = lines.collect();
    assert!(
        rows[0].ends_with(",u1,sms,1,0,3,0.0075,0.0225,USD"),
        "{csv}"
    );
    assert!(
        rows[1].ends_with(",u1,webhook,1,0,1,0.0033,0.0033,USD"),
        "{csv}"
    );

    // Billed per message, an SMS is one unit.
    let app = {
        let mut stopped = app.stop_keeping_data().await;
        stopped.settings.billing.sms_unit = notimeter::config::SmsUnit::Message;
        stopped.start().await
    };
    app.post_alerts(&payload(
        "default",
        "g2",
        vec![alert("cpu", Some("u1"), "f2")],
    ))
    .await;
    gateway.wait_for(TWILIO_PATH, 2).await;
    sink.wait_for("/h", 2).await;
    app.wait_idle().await;
    let usage = app.get_json("/v1/usage", FINANCE_TOKEN).await;
    assert_eq!(usage_row(&usage, "sms")["units"].as_i64(), Some(1));
    assert_eq!(usage_row(&usage, "sms")["segments"].as_i64(), Some(3));
    assert_eq!(usage["total"], "0.01"); // 0.0075 + 0.0033
    app.stop().await;
}

/// A period closed before billing units existed has no `sms_unit` and its
/// report no `units` column: should its report have to be written again (it
/// went missing), it comes out as it was, byte for byte.
async fn reports_of_periods_closed_before_units_keep_their_columns(backend: Backend) {
    let sink = Sink::start().await;
    let app = spawn_app_with(&backend, |s| {
        s.billing
            .prices
            .insert(IntegrationKind::Webhook, "0.01".parse().unwrap());
    })
    .await;
    app.add_webhook("u1", "hook", &sink.url("/h")).await;
    for g in ["g1", "g2"] {
        app.post_alerts(&payload("default", g, vec![alert(g, Some("u1"), g)]))
            .await;
    }
    sink.wait_for("/h", 2).await;
    app.wait_idle().await;
    let closed = close(&app).await;
    let id = closed["closed"]["period_id"].as_str().unwrap().to_owned();
    let (start, end) = (
        closed["closed"]["period_start"]
            .as_str()
            .unwrap()
            .to_owned(),
        closed["closed"]["period_end"].as_str().unwrap().to_owned(),
    );
    // As a period closed by the version before units.
    let stopped = app.stop_keeping_data().await;
    execute(
        &stopped.settings.database_url,
        &format!("UPDATE periods SET sms_unit = NULL, report_sha256 = NULL WHERE id = '{id}'"),
    )
    .await;
    let report = stopped.settings.reports_dir.join(format!("{id}.csv"));
    std::fs::remove_file(&report).unwrap();
    let app = stopped.start().await;
    eventually(
        "the missing report to be written again at start",
        || async { report.exists() },
    )
    .await;
    let expected = format!(
        "period_id,period_start,period_end,user_id,integration,delivered,failed,unit_price,amount,currency\r\n\
         {id},{start},{end},u1,webhook,2,0,0.01,0.02,USD\r\n"
    );
    assert_eq!(std::fs::read_to_string(&report).unwrap(), expected);
    let r = app
        .http
        .get(app.url(&format!("/v1/ledger/periods/{id}.csv")))
        .bearer_auth(FINANCE_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap(), expected.as_bytes());
    app.stop().await;
}

//! Billing periods: close, settle, frozen prices, immutable reports, the
//! itemized export, atomicity under load, missed closes, retention, roles.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use notimeter::domain::IntegrationKind;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::on_both_backends;

on_both_backends!(
    close_freezes_prices_and_reports_never_change,
    settle_closes_one_users_statement,
    closing_under_load_puts_every_message_in_one_period,
    hostile_values_in_the_itemized_export,
    a_missed_close_happens_at_start_with_the_scheduled_boundary,
    the_schedule_closes_when_the_clock_reaches_its_boundary,
    retention_prunes_details_but_not_the_ledger,
    finance_reads_admin_closes,
    a_corrupt_frozen_price_fails_the_download_instead_of_billing_zero,
    a_period_without_messages_downloads_as_a_header_only_csv,
);

async fn close(app: &TestApp) -> Value {
    app.close_period().await
}

async fn settle(app: &TestApp, user: &str) -> Value {
    app.settle(user).await["statement"].clone()
}

async fn periods(app: &TestApp) -> Vec<Value> {
    app.get_json("/v1/ledger/periods", FINANCE_TOKEN).await["periods"]
        .as_array()
        .unwrap()
        .clone()
}

/// The closed periods' ends, in milliseconds.
fn period_ends(periods: &[Value]) -> Vec<i64> {
    periods
        .iter()
        .filter_map(|p| p["period_end"].as_str())
        .map(|t| {
            chrono::DateTime::parse_from_rfc3339(t)
                .unwrap()
                .timestamp_millis()
        })
        .collect()
}

async fn bytes(app: &TestApp, path: &str) -> Vec<u8> {
    let r = app
        .http
        .get(app.url(path))
        .bearer_auth(FINANCE_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{path}");
    r.bytes().await.unwrap().to_vec()
}

/// (user_id, integration) → (delivered, failed, unit_price, amount) of a ledger CSV.
fn ledger_rows(csv_bytes: &[u8]) -> BTreeMap<(String, String), (i64, i64, String, String)> {
    let mut reader = csv::Reader::from_reader(csv_bytes);
    assert_eq!(&reader.headers().unwrap()[7], "units");
    reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            (
                (r[3].to_owned(), r[4].to_owned()),
                (
                    r[5].parse().unwrap(),
                    r[6].parse().unwrap(),
                    r[8].to_owned(),
                    r[9].to_owned(),
                ),
            )
        })
        .collect()
}

/// Posts one alert for each of `users` (one message each) and waits until final.
async fn traffic(app: &TestApp, sink: &Sink, users: &[&str], tag: &str) {
    let before = sink.received().len();
    let alerts = users
        .iter()
        .map(|u| alert("high_cpu", Some(u), &format!("{tag}-{u}")))
        .collect();
    assert_eq!(
        app.post_alerts(&payload("default", tag, alerts))
            .await
            .status(),
        200
    );
    eventually("deliveries", || async {
        sink.received().len() >= before + users.len()
    })
    .await;
    app.wait_idle().await;
}

/// A frozen price the store cannot read (a damaged database) breaks the
/// download of a period whose report has to be made again from the store:
/// never a report that bills the row at 0.
async fn a_corrupt_frozen_price_fails_the_download_instead_of_billing_zero(backend: Backend) {
    let app = spawn_app_with(&backend, |s| {
        s.billing
            .prices
            .insert(IntegrationKind::Webhook, "0.002".parse().unwrap());
    })
    .await;
    let sink = Sink::start().await;
    app.add_webhook("u1", "hook", &sink.url("/u1")).await;
    traffic(&app, &sink, &["u1"], "a").await;
    let closed = close(&app).await;
    let id = closed["closed"]["period_id"].as_str().unwrap().to_owned();
    let path = format!("/v1/ledger/periods/{id}.csv");
    let intact = bytes(&app, &path).await;
    assert_eq!(
        ledger_rows(&intact)[&("u1".to_owned(), "webhook".to_owned())],
        (1, 0, "0.002".into(), "0.002".into())
    );

    execute(
        &app.database_url,
        &format!("UPDATE usage SET unit_price = '0.00two' WHERE period_id = '{id}'"),
    )
    .await;
    std::fs::remove_file(app.settings.reports_dir.join(format!("{id}.csv"))).unwrap();
    let r = app
        .http
        .get(app.url(&path))
        .bearer_auth(FINANCE_TOKEN)
        .send()
        .await
        .unwrap();
    assert!(
        r.bytes().await.is_err(),
        "the transfer breaks: no report billing the row at 0"
    );
    app.stop().await;
}

async fn close_freezes_prices_and_reports_never_change(backend: Backend) {
    let app = spawn_app_with(&backend, |s| {
        s.billing
            .prices
            .insert(IntegrationKind::Webhook, "0.002".parse().unwrap());
        s.billing.user_prices.insert(
            "vip".into(),
            [(IntegrationKind::Webhook, "0.001".parse().unwrap())].into(),
        );
        s.billing.currency = "EUR".into();
    })
    .await;
    let sink = Sink::start().await;
    for u in ["u1", "vip"] {
        app.add_webhook(u, "hook", &sink.url(&format!("/{u}")))
            .await;
    }
    traffic(&app, &sink, &["u1", "vip"], "a").await;
    traffic(&app, &sink, &["u1"], "b").await;
    let counter = [
        ("user_id", "u1"),
        ("integration", "webhook"),
        ("outcome", "delivered"),
    ];
    assert_eq!(
        app.metric("notimeter_notifications_total", &counter).await,
        2.0
    );
    let start_before = app
        .metric("notimeter_period_start_timestamp_seconds", &[])
        .await;

    let closed = close(&app).await;
    let id = closed["closed"]["period_id"].as_str().unwrap().to_owned();
    assert_eq!(closed["closed"]["status"], "closed");
    assert_eq!(closed["opened"]["status"], "open");
    assert_eq!(
        closed["closed"]["period_end"],
        closed["opened"]["period_start"]
    );

    // The report in reports/, its SHA-256, the download and the CLI export agree byte for byte.
    let file = std::fs::read(app.settings.reports_dir.join(format!("{id}.csv"))).unwrap();
    let sha_line =
        std::fs::read_to_string(app.settings.reports_dir.join(format!("{id}.csv.sha256"))).unwrap();
    let sha = closed["closed"]["sha256"].as_str().unwrap();
    assert_eq!(sha_line, format!("{sha}  {id}.csv\n"));
    assert_eq!(notimeter::ledger::sha256_hex(&file), sha);
    let r = app
        .http
        .get(app.url(&format!("/v1/ledger/periods/{id}.csv")))
        .bearer_auth(FINANCE_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["content-disposition"],
        format!("attachment; filename=\"notimeter-{id}.csv\"").as_str()
    );
    assert_eq!(r.bytes().await.unwrap().to_vec(), file);
    let rows = ledger_rows(&file);
    assert_eq!(
        rows[&("u1".to_owned(), "webhook".to_owned())],
        (2, 0, "0.002".into(), "0.004".into())
    );
    assert_eq!(
        rows[&("vip".to_owned(), "webhook".to_owned())],
        (1, 0, "0.001".into(), "0.001".into())
    );
    assert!(String::from_utf8_lossy(&file).contains(",EUR\r\n"));

    // Counters go on; the period gauges restart; the start moves.
    assert_eq!(
        app.metric("notimeter_notifications_total", &counter).await,
        2.0
    );
    assert_eq!(
        app.metric("notimeter_period_notifications", &counter).await,
        0.0
    );
    assert!(
        app.metric("notimeter_period_start_timestamp_seconds", &[])
            .await
            > start_before
    );
    assert_eq!(
        app.metric("notimeter_ledger_closes_total", &[("result", "success")])
            .await,
        1.0
    );

    // New prices later do not alter the closed period; they price the open one.
    let mut stopped = app.stop_keeping_data().await;
    stopped
        .settings
        .billing
        .prices
        .insert(IntegrationKind::Webhook, "9".parse().unwrap());
    let app = stopped.start().await;
    traffic(&app, &sink, &["u1"], "c").await;
    assert_eq!(
        bytes(&app, &format!("/v1/ledger/periods/{id}.csv")).await,
        file
    );
    let usage = app.get_json("/v1/usage", FINANCE_TOKEN).await;
    assert_eq!(usage["usage"][0]["amount"], "9");
    let config = app.dir.path().join("cli.toml");
    std::fs::write(
        &config,
        format!(
            "database_url = \"{}\"\nreports_dir = \"{}\"\n",
            app.database_url,
            app.settings.reports_dir.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_notimeter"))
        .args([
            "--config",
            config.to_str().unwrap(),
            "ledger",
            "export",
            "--period",
            &id,
        ])
        .env_remove("NOTIMETER_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        out.stdout, file,
        "notimeter ledger export reproduces the report byte for byte"
    );
    app.stop().await;
}

async fn settle_closes_one_users_statement(backend: Backend) {
    let app = spawn_app(&backend).await;
    let sink = Sink::start().await;
    for u in ["u1", "u2"] {
        app.add_webhook(u, "hook", &sink.url(&format!("/{u}")))
            .await;
    }
    traffic(&app, &sink, &["u1", "u2"], "a").await;
    traffic(&app, &sink, &["u1"], "b").await;

    let statement = settle(&app, "u1").await;
    assert_eq!(statement["user_id"], "u1");
    assert_eq!(statement["kind"], "statement");
    let id = statement["period_id"].as_str().unwrap().to_owned();
    let rows = ledger_rows(&bytes(&app, &format!("/v1/ledger/periods/{id}.csv")).await);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[&("u1".to_owned(), "webhook".to_owned())].0, 2);
    assert!(periods(&app)
        .await
        .iter()
        .any(|p| p["period_id"] == json!(id) && p["user_id"] == "u1"));
    // u1 restarts from zero in the open period; u2 is untouched.
    let usage = app.get_json("/v1/usage", FINANCE_TOKEN).await;
    let users: Vec<&str> = usage["usage"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["u2"]);
    let gauge = [
        ("user_id", "u1"),
        ("integration", "webhook"),
        ("outcome", "delivered"),
    ];
    assert_eq!(
        app.metric("notimeter_period_notifications", &gauge).await,
        0.0
    );
    assert_eq!(
        app.metric("notimeter_notifications_total", &gauge).await,
        2.0
    );

    // Settling again at once: an empty statement, not an error, not a double bill.
    let again = settle(&app, "u1").await;
    assert_ne!(again["period_id"], statement["period_id"]);
    assert!(ledger_rows(
        &bytes(
            &app,
            &format!(
                "/v1/ledger/periods/{}.csv",
                again["period_id"].as_str().unwrap()
            )
        )
        .await
    )
    .is_empty());

    traffic(&app, &sink, &["u1"], "c").await;
    let closed = close(&app).await;
    let rows = ledger_rows(
        &bytes(
            &app,
            &format!(
                "/v1/ledger/periods/{}.csv",
                closed["closed"]["period_id"].as_str().unwrap()
            ),
        )
        .await,
    );
    assert_eq!(
        rows[&("u1".to_owned(), "webhook".to_owned())].0,
        1,
        "only what came after the settle"
    );
    assert_eq!(rows[&("u2".to_owned(), "webhook".to_owned())].0, 1);
    app.stop().await;
}

async fn closing_under_load_puts_every_message_in_one_period(backend: Backend) {
    let app = spawn_app(&backend).await;
    let sink = Sink::start().await;
    let users: Vec<String> = (0..5).map(|u| format!("u{u}")).collect();
    for u in &users {
        app.add_webhook(u, "hook", &sink.url(&format!("/{u}")))
            .await;
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let accepted = Arc::new(AtomicUsize::new(0));
    let load = {
        let (http, url, users, stop, accepted) = (
            app.http.clone(),
            app.url("/v1/alertmanager"),
            users.clone(),
            stop.clone(),
            accepted.clone(),
        );
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.is_cancelled() {
                let alerts = users
                    .iter()
                    .map(|u| alert("high_cpu", Some(u), &format!("{n}-{u}")))
                    .collect();
                let r = http
                    .post(&url)
                    .bearer_auth(INGEST_TOKEN)
                    .json(&payload("default", &format!("g{n}"), alerts))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                n += 1;
                accepted.store(n, Ordering::SeqCst);
            }
            n
        })
    };
    // Closes and settles while deliveries are finishing: each after a few
    // more payloads were accepted, however fast this machine takes them.
    for round in 0..6 {
        let target = accepted.load(Ordering::SeqCst) + 4;
        eventually("more payloads accepted", || async {
            accepted.load(Ordering::SeqCst) >= target
        })
        .await;
        if round % 3 == 2 {
            settle(&app, "u1").await;
        } else {
            close(&app).await;
        }
    }
    stop.cancel();
    let payloads = load.await.unwrap();
    let expected = payloads * users.len();
    eventually("every message delivered", || async {
        sink.received().len() >= expected
    })
    .await;
    app.wait_idle().await;
    assert_eq!(sink.received().len(), expected);

    // Every report and the open period together hold every message exactly once.
    let mut total = 0;
    let all = periods(&app).await;
    assert!(all.len() >= 7, "{all:?}");
    for p in &all {
        let id = p["period_id"].as_str().unwrap();
        let rows = ledger_rows(&bytes(&app, &format!("/v1/ledger/periods/{id}.csv")).await);
        let sum: i64 = rows.values().map(|r| r.0 + r.1).sum();
        let items = bytes(&app, &format!("/v1/ledger/periods/{id}/items.csv")).await;
        let item_count = csv::Reader::from_reader(items.as_slice()).records().count() as i64;
        assert_eq!(
            sum, item_count,
            "period {id}: the ledger rows and its messages agree"
        );
        total += sum;
    }
    assert_eq!(
        total as usize, expected,
        "each message in exactly one period"
    );
    let unassigned: i64 = query_one(
        &app.database_url,
        "SELECT COUNT(*) FROM messages WHERE period_id IS NULL",
    )
    .await;
    assert_eq!(unassigned, 0);
    let outside: i64 = query_one(
        &app.database_url,
        "SELECT COUNT(*) FROM messages m JOIN periods p ON p.id = m.period_id \
         WHERE m.final_at < p.start_at OR (p.end_at IS NOT NULL AND m.final_at >= p.end_at)",
    )
    .await;
    assert_eq!(
        outside, 0,
        "a message billed to a period its final_at is not in"
    );
    app.stop().await;
}

async fn hostile_values_in_the_itemized_export(backend: Backend) {
    let app = spawn_app(&backend).await;
    let sink = Sink::start().await;
    for u in ["@SUM", "-2.3", "=cmd"] {
        let r = app
            .put_channel(
                u,
                "hook",
                json!({"type": "webhook", "settings": {"url": sink.url("/x")}}),
            )
            .await;
        if u == "=cmd" {
            assert_eq!(r.status(), 422, "'=' is not allowed in a user_id");
            continue;
        }
        assert_eq!(r.status(), 201);
    }
    let mut a = alert("x", Some("@SUM"), "f1");
    a["labels"]["alertname"] =
        json!("=HYPERLINK(\"http://evil\",\"click\"), \"quoted\"\nsecond line");
    let b = alert("+cmd", Some("-2.3"), "f2");
    app.post_alerts(&payload("default", "g", vec![a, b])).await;
    sink.wait_for("/x", 2).await;
    app.wait_idle().await;
    let open = app.get_json("/v1/usage", FINANCE_TOKEN).await["period_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let items = bytes(&app, &format!("/v1/ledger/periods/{open}/items.csv")).await;
    let mut reader = csv::Reader::from_reader(items.as_slice());
    assert_eq!(
        reader.headers().unwrap().iter().collect::<Vec<_>>(),
        [
            "period_id",
            "message_id",
            "final_at",
            "user_id",
            "integration",
            "channel_id",
            "alertnames",
            "outcome",
            "attempts",
            "last_reason",
            "segments"
        ]
    );
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 2);
    let by_user: BTreeMap<String, csv::StringRecord> =
        rows.into_iter().map(|r| (r[3].to_owned(), r)).collect();
    let sum = &by_user["'@SUM"];
    assert_eq!(
        &sum[6], "'=HYPERLINK(\"http://evil\",\"click\"), \"quoted\"\nsecond line",
        "quotes, commas and newlines survive, defused"
    );
    assert_eq!(&sum[7], "delivered");
    assert_eq!(&sum[8], "1");
    assert_eq!(&by_user["'-2.3"][6], "'+cmd");
    let ledger = bytes(&app, "/v1/ledger/current.csv").await;
    let users: Vec<String> = ledger_rows(&ledger)
        .keys()
        .map(|(u, _)| u.clone())
        .collect();
    assert_eq!(users, ["'-2.3", "'@SUM"]);
    app.stop().await;
}

async fn a_missed_close_happens_at_start_with_the_scheduled_boundary(backend: Backend) {
    let hour = 3_600_000;
    // The message must become final after the last boundary before the
    // restart, and no close may run before the test moves the open period's
    // start: a run that starts in an hour's last minute waits for the next.
    let to_next = hour - notimeter::clock::now_ms() % hour;
    if to_next < 60_000 {
        tokio::time::sleep(Duration::from_millis(to_next as u64 + 100)).await;
    }
    let app = spawn_app_with(&backend, |s| {
        s.billing.schedule = "0 0 * * * *".parse().unwrap();
    })
    .await;
    // A message delivered now: final after the boundaries the missed closes
    // use, so each close moves it (and its count) on to the next period.
    let sink = Sink::start().await;
    app.add_webhook("u1", "hook", &sink.url("/u1")).await;
    traffic(&app, &sink, &["u1"], "late").await;
    let stopped = app.stop_keeping_data().await;
    // Down for a while: the open period started 2.5 hours ago.
    let start = notimeter::clock::now_ms() - 5 * hour / 2;
    execute(
        &stopped.settings.database_url,
        &format!("UPDATE periods SET start_at = {start} WHERE end_at IS NULL"),
    )
    .await;
    let app = stopped.start().await;
    // 2.5 hours hold two or three hourly boundaries, depending on the minute:
    // wait for all of them, until the open period starts at the last.
    let last = (start + 5 * hour / 2) / hour * hour;
    eventually("the missed closes", || async {
        let all = periods(&app).await;
        let open = all.iter().find(|p| p["period_end"].is_null());
        open.and_then(|p| p["period_start"].as_str()).map(|t| {
            chrono::DateTime::parse_from_rfc3339(t)
                .unwrap()
                .timestamp_millis()
        }) == Some(last)
    })
    .await;
    let all = periods(&app).await;
    let ends = period_ends(&all);
    let first = (start / hour + 1) * hour;
    assert_eq!(
        ends[..2],
        [first, first + hour],
        "closed at the schedule's boundaries, not at the restart"
    );
    for p in all.iter().filter(|p| p["period_end"].is_string()) {
        let id = p["period_id"].as_str().unwrap();
        let csv = bytes(&app, &format!("/v1/ledger/periods/{id}.csv")).await;
        assert!(
            ledger_rows(&csv).is_empty(),
            "{id} bills nothing: its message became final after its end"
        );
    }
    let usage = app.get_json("/v1/usage", FINANCE_TOKEN).await;
    assert_eq!(
        usage["usage"],
        json!([{"user_id": "u1", "integration": "webhook", "delivered": 1, "failed": 0,
                "segments": 0, "units": 1, "unit_price": "0", "amount": "0"}]),
        "the open period bills the late message: {usage}"
    );
    app.stop().await;
}

/// The close schedule reads the app's clock: moved past the next boundary,
/// the period closes there, without waiting for the hour to come.
async fn the_schedule_closes_when_the_clock_reaches_its_boundary(backend: Backend) {
    let app = spawn_app_with(&backend, |s| {
        s.billing.schedule = "0 0 * * * *".parse().unwrap();
    })
    .await;
    assert_eq!(periods(&app).await.len(), 1);
    let hour = 3_600_000;
    let boundary = (app.clock.now_ms() / hour + 1) * hour;
    let ahead = boundary - app.clock.now_ms() + 1000;
    app.clock.advance(Duration::from_millis(ahead as u64));
    eventually("the scheduled close", || async {
        periods(&app).await.len() == 2
    })
    .await;
    let ends = period_ends(&periods(&app).await);
    assert_eq!(ends, [boundary], "closed at the boundary");
    app.stop().await;
}

async fn retention_prunes_details_but_not_the_ledger(backend: Backend) {
    let app = spawn_app_with(&backend, |s| {
        s.retention.messages = Duration::ZERO;
        s.retention.interval = Duration::from_millis(100);
    })
    .await;
    let sink = Sink::start().await;
    app.add_webhook("u1", "hook", &sink.url("/u1")).await;
    traffic(&app, &sink, &["u1"], "a").await;
    let attempts: i64 = query_one(&app.database_url, "SELECT COUNT(*) FROM attempts").await;
    assert_eq!(attempts, 1, "the open period's details are kept");
    let id = close(&app).await["closed"]["period_id"]
        .as_str()
        .unwrap()
        .to_owned();
    eventually("pruning", || async {
        query_one::<i64>(&app.database_url, "SELECT COUNT(*) FROM attempts").await == 0
    })
    .await;
    let payload: String = query_one(&app.database_url, "SELECT payload FROM messages").await;
    assert_eq!(payload, "");
    assert_eq!(
        ledger_rows(&bytes(&app, &format!("/v1/ledger/periods/{id}.csv")).await).len(),
        1
    );
    let items = bytes(&app, &format!("/v1/ledger/periods/{id}/items.csv")).await;
    assert_eq!(
        csv::Reader::from_reader(items.as_slice()).records().count(),
        1,
        "the itemized ledger stays"
    );
    app.stop().await;
}

async fn finance_reads_admin_closes(backend: Backend) {
    let app = spawn_app(&backend).await;
    let post = |path: &str, token: Option<&str>| {
        let mut r = app.http.post(app.url(path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    assert_eq!(
        post("/v1/ledger/close", Some(FINANCE_TOKEN))
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        post("/v1/users/u1/settle", Some(FINANCE_TOKEN))
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(post("/v1/ledger/close", None).await.unwrap().status(), 401);
    assert_eq!(
        post("/v1/users/not%20valid/settle", Some(ADMIN_TOKEN))
            .await
            .unwrap()
            .status(),
        422
    );
    let r = app
        .http
        .get(app.url("/v1/ledger/periods"))
        .bearer_auth(INGEST_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = app
        .http
        .get(app.url("/v1/ledger/periods/nope.csv"))
        .bearer_auth(FINANCE_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(periods(&app).await.len(), 1);
    app.stop().await;
}

/// A period with nothing in it, streamed from the store (the open period, or
/// a closed one whose report is being written), is a CSV with its header:
/// never an empty body.
async fn a_period_without_messages_downloads_as_a_header_only_csv(backend: Backend) {
    let app = spawn_app(&backend).await;
    let open = periods(&app).await[0]["period_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let ledger = bytes(&app, &format!("/v1/ledger/periods/{open}.csv")).await;
    assert_eq!(
        String::from_utf8(ledger).unwrap(),
        format!("{}\r\n", notimeter::ledger::csv::HEADER.join(","))
    );
    let items = bytes(&app, &format!("/v1/ledger/periods/{open}/items.csv")).await;
    assert_eq!(
        String::from_utf8(items).unwrap(),
        format!("{}\r\n", notimeter::ledger::csv::ITEMS_HEADER.join(","))
    );
    app.stop().await;
}

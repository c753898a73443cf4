//! The finance page: in headless Chromium (Debian's chromium and
//! chromium-driver, over WebDriver) after signing in through its form, the
//! open period's table matches the API, closed periods and statements show
//! their totals and per-customer amounts in the currency's minor unit, with
//! their names and times in `[page] timezone`, and every CSV link downloads;
//! the page bounds the closed periods it shows; and the login cookie opens
//! reads, never writes.

use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::{DateTime, Datelike, TimeZone};
use chrono_tz::Europe::Berlin;
use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::helpers::*;
use crate::on_both_backends;

on_both_backends!(the_page_shows_the_most_recent_closed_periods);

/// The month of the schedule's boundary: a yearly close some months ahead,
/// so that moving the clock by a day never reaches it.
fn close_month() -> u32 {
    (chrono::Utc::now().month() + 2) % 12 + 1
}

/// Three users with webhooks at 0.005 USD (u2 at 0.0125). Round "a" is
/// delivered and, a day later, closed into a period; rounds "b" and "c"
/// stay open; hours later @SUM is settled, so its "b" is a statement.
async fn app_with_traffic() -> (TestApp, Sink) {
    use notimeter::domain::IntegrationKind::Webhook;
    let app = spawn_app_with(&Backend::Sqlite, |s| {
        s.billing.prices.insert(Webhook, "0.005".parse().unwrap());
        s.billing
            .user_prices
            .insert("u2".into(), [(Webhook, "0.0125".parse().unwrap())].into());
        // The schedule is read in UTC: the page's zone is its own.
        s.billing.schedule = format!("0 0 0 1 {} *", close_month()).parse().unwrap();
        s.page.timezone = Some(Berlin);
    })
    .await;
    let sink = Sink::start().await;
    for u in ["u1", "u2", "@SUM"] {
        app.add_webhook(u, "hook", &sink.url(&format!("/{u}")))
            .await;
    }
    let alerts = |tag: &str| {
        ["u1", "u2", "@SUM"]
            .iter()
            .map(|u| alert("high_cpu", Some(u), &format!("{tag}{u}")))
            .collect()
    };
    app.post_alerts(&payload("default", "g1", alerts("a")))
        .await;
    eventually("first deliveries", || async { sink.received().len() >= 3 }).await;
    app.wait_idle().await;
    app.clock.advance(Duration::from_secs(26 * 3600 + 17 * 60));
    app.close_period().await;
    app.post_alerts(&payload("default", "g2", alerts("b")))
        .await;
    app.post_alerts(&payload(
        "default",
        "g3",
        vec![alert("disk", Some("u1"), "c")],
    ))
    .await;
    eventually("more deliveries", || async { sink.received().len() >= 7 }).await;
    app.wait_idle().await;
    app.clock.advance(Duration::from_secs(5 * 3600 + 42 * 60));
    app.settle("@SUM").await;
    (app, sink)
}

/// A Chromium under chromedriver, and what must live as long as it.
struct Browser {
    client: Client,
    _driver: KillOnDrop,
    _profile: tempfile::TempDir,
}

async fn browser() -> Browser {
    require("chromium", "chromium");
    require("chromedriver", "chromium-driver");
    let port = free_port();
    let driver = KillOnDrop(
        Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let profile = tempfile::tempdir().unwrap();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"binary": "/usr/bin/chromium", "args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--window-size=1280,1400", format!("--user-data-dir={}", profile.path().display())
        ]}),
    );
    for _ in 0..50 {
        // chromedriver speaks plain HTTP on loopback: no TLS stack needed.
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(client) => {
                return Browser {
                    client,
                    _driver: driver,
                    _profile: profile,
                }
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    panic!("chromedriver does not answer");
}

/// Through the form: a wrong token first, then the finance token.
async fn sign_in(c: &Client, app: &TestApp) {
    // Not signed in: the page sends us to the login form.
    c.goto(&app.url("/")).await.unwrap();
    assert!(c.current_url().await.unwrap().as_str().ends_with("/login"));
    for token in ["wrong", FINANCE_TOKEN] {
        let field = c.find(Locator::Css("#token")).await.unwrap();
        field.send_keys(token).await.unwrap();
        c.find(Locator::Css("#sign-in"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        if token == "wrong" {
            // The click returns before the answer has loaded: wait for it.
            eventually("the refusal", || async {
                c.source()
                    .await
                    .unwrap()
                    .contains("not a finance or admin token")
            })
            .await;
        }
    }
    c.wait()
        .for_element(Locator::Css("#open-usage"))
        .await
        .unwrap();
}

/// The text of each cell (`th` or `td`) of each row `css` finds under `under`.
async fn rows(under: &Element, css: &str) -> Vec<Vec<String>> {
    let mut shown = Vec::new();
    for row in under.find_all(Locator::Css(css)).await.unwrap() {
        let mut cells = Vec::new();
        for cell in row.find_all(Locator::Css("th, td")).await.unwrap() {
            cells.push(cell.text().await.unwrap());
        }
        shown.push(cells);
    }
    shown
}

async fn text(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// "25 Nov 2026 10:08" in Berlin, and its zone ("CET"), of an RFC 3339 time.
fn berlin(rfc3339: &str) -> (String, String) {
    let t = DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .with_timezone(&Berlin);
    (
        t.format("%-d %b %Y %H:%M").to_string(),
        t.format("%Z").to_string(),
    )
}

/// The open period's rows are the API's, every unit price and amount at the
/// table's finest scale (0.0125: four decimals), then each customer's
/// subtotal and the total in cents, with the currency. Its name is in
/// Berlin, up to the schedule's next boundary: midnight UTC, 1:00 or 2:00
/// there.
async fn check_open_period(c: &Client, app: &TestApp) {
    let table = c.find(Locator::Css("#open-usage")).await.unwrap();
    let shown = rows(&table, "tr.item").await;
    let usage = app.get_json("/v1/usage", FINANCE_TOKEN).await;
    let api = usage["usage"].as_array().unwrap();
    assert_eq!(shown.len(), api.len(), "{shown:?}");
    for (row, r) in shown.iter().zip(api) {
        let counts: Vec<String> = ["user_id", "integration", "delivered", "failed", "units"]
            .iter()
            .map(|k| match &r[*k] {
                Value::String(s) => s.clone(),
                v => v.to_string(),
            })
            .collect();
        assert_eq!(row[..5], counts[..]);
        for (cell, key) in [(5, "unit_price"), (6, "amount")] {
            let exact: rust_decimal::Decimal = r[key].as_str().unwrap().parse().unwrap();
            assert_eq!(row[cell].parse::<rust_decimal::Decimal>().unwrap(), exact);
            assert_eq!(
                row[cell].split('.').nth(1).map(str::len),
                Some(4),
                "{row:?}"
            );
        }
    }
    assert_eq!(
        rows(&table, "tr.subtotal").await,
        [
            ["Subtotal u1", "2", "0", "2", "", "0.01 USD"],
            ["Subtotal u2", "1", "0", "1", "", "0.01 USD"]
        ]
    );
    let total = rows(&table, "tfoot tr").await;
    assert_eq!(
        total,
        [["Total", "3", "0", "3", "", "0.02 USD"]],
        "no note: 0.0225 rounds to 0.02"
    );
    assert_eq!(usage["total"], "0.02");
    let name = text(c, "#open-name").await;
    let (start, zone) = berlin(usage["period_start"].as_str().unwrap());
    let start_utc = DateTime::parse_from_rfc3339(usage["period_start"].as_str().unwrap()).unwrap();
    let on = |y| {
        chrono::Utc
            .with_ymd_and_hms(y, close_month(), 1, 0, 0, 0)
            .unwrap()
    };
    let mut boundary = on(start_utc.year());
    if boundary <= start_utc {
        boundary = on(start_utc.year() + 1);
    }
    let boundary = boundary.to_rfc3339();
    let (end, end_zone) = berlin(&boundary);
    assert!(end.ends_with(" 01:00") || end.ends_with(" 02:00"), "{end}");
    assert!(
        name.starts_with(&format!("Open period: {start}"))
            && name.contains(&end)
            && name.contains(&zone)
            && name.ends_with(&end_zone),
        "{name}: from {start} {zone} to {end} {end_zone}"
    );
    assert_eq!(
        text(c, "#open-period").await,
        usage["period_id"].as_str().unwrap()
    );
}

/// The closed period and the statement, newest first: their names in
/// Berlin, totals and a row per customer in cents, with the currency.
async fn check_closed(c: &Client, app: &TestApp) -> Vec<Value> {
    let all = app.get_json("/v1/ledger/periods", FINANCE_TOKEN).await;
    let closed: Vec<Value> = all["periods"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["status"] == "closed")
        .cloned()
        .collect();
    let (period, statement) = (&closed[0], &closed[1]);
    assert_eq!(statement["user_id"], "@SUM");
    let overview = c.find(Locator::Css("#closed")).await.unwrap();
    let shown = rows(&overview, "tbody tr").await;
    let (p_start, zone) = berlin(period["period_start"].as_str().unwrap());
    let (s_start, _) = berlin(statement["period_start"].as_str().unwrap());
    assert!(
        shown[0][0].starts_with(&format!("Statement for @SUM, {s_start}")),
        "{shown:?}"
    );
    assert_eq!(shown[0][1..6], ["1", "1", "0", "1", "0.01 USD"]);
    assert!(
        shown[1][0].starts_with(&p_start) && shown[1][0].contains(&zone),
        "{shown:?}"
    );
    assert_eq!(shown[1][1..6], ["3", "3", "0", "3", "0.03 USD"]);
    let id = period["period_id"].as_str().unwrap();
    let bill = c.find(Locator::Id(&format!("period-{id}"))).await.unwrap();
    assert_eq!(
        rows(&bill, "tbody tr").await,
        [
            ["@SUM", "1", "0", "1", "0.01 USD"],
            ["u1", "1", "0", "1", "0.01 USD"],
            ["u2", "1", "0", "1", "0.01 USD"]
        ]
    );
    let footer = rows(&bill, "tfoot tr").await;
    assert_eq!(footer[0], ["Total", "3", "0", "3", "0.03 USD"]);
    assert!(
        footer[1][0].contains("add up to 0.0225 USD, which rounds to 0.02 USD"),
        "the difference is explained: {footer:?}"
    );
    let id = statement["period_id"].as_str().unwrap();
    let bill = c.find(Locator::Id(&format!("period-{id}"))).await.unwrap();
    assert_eq!(
        rows(&bill, "tbody tr").await,
        [["@SUM", "1", "0", "1", "0.01 USD"]]
    );
    closed
}

/// Every CSV is linked, and every link downloads.
async fn check_links(c: &Client, app: &TestApp, closed: &[Value]) {
    let mut hrefs = Vec::new();
    for a in c.find_all(Locator::Css("a")).await.unwrap() {
        hrefs.push(a.attr("href").await.unwrap().unwrap_or_default());
    }
    let open = app.get_json("/v1/usage", FINANCE_TOKEN).await["period_id"].clone();
    let mut wanted = vec![
        "/v1/ledger/current.csv".to_owned(),
        format!("/v1/ledger/periods/{}/items.csv", open.as_str().unwrap()),
    ];
    for p in closed {
        wanted.push(p["csv"].as_str().unwrap().to_owned());
        wanted.push(p["items"].as_str().unwrap().to_owned());
    }
    for href in &wanted {
        assert!(hrefs.contains(href), "{href} in {hrefs:?}");
        let csv = app.get_text(href, FINANCE_TOKEN).await;
        assert!(csv.starts_with("period_id,"), "{href}: {csv}");
    }
    assert!(
        hrefs.iter().any(|h| h == "/v1/ledger/periods"),
        "older periods: {hrefs:?}"
    );
}

/// Saves what the browser shows, the first screen and the whole page, in
/// the app's folder and in `NOTIMETER_TEST_SCREENSHOT` (a folder) when set.
async fn screenshots(c: &Client, app: &TestApp) {
    let first = c.screenshot().await.unwrap();
    assert_eq!(&first[..8], b"\x89PNG\r\n\x1a\n");
    let height = c
        .execute("return document.documentElement.scrollHeight", vec![])
        .await
        .unwrap()
        .as_u64()
        .unwrap();
    c.set_window_size(1280, height as u32 + 200).await.unwrap();
    let whole = c.screenshot().await.unwrap();
    let keep = std::env::var_os("NOTIMETER_TEST_SCREENSHOT").map(std::path::PathBuf::from);
    for dir in std::iter::once(app.dir.path().to_owned()).chain(keep) {
        std::fs::create_dir_all(&dir).unwrap();
        for (name, png) in [
            ("finance-page.png", &first),
            ("finance-page-full.png", &whole),
        ] {
            std::fs::write(dir.join(name), png).unwrap();
            eprintln!("screenshot: {}", dir.join(name).display());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromedriver (apt-get install chromium chromium-driver); run with --include-ignored"]
async fn finance_page_in_headless_chromium() {
    let (app, _sink) = app_with_traffic().await;
    let browser = browser().await;
    let c = &browser.client;
    sign_in(c, &app).await;
    check_open_period(c, &app).await;
    let closed = check_closed(c, &app).await;
    check_links(c, &app, &closed).await;
    assert_eq!(
        text(c, "header .meta").await,
        "Times in Europe/Berlin · Sign out"
    );
    // The chart is drawn server-side.
    let bars = c.find_all(Locator::Css("#chart rect")).await.unwrap();
    assert!(bars.len() > 5, "bars and legend");
    let source = c.source().await.unwrap();
    assert!(!source.contains("<script"), "no scripts");
    assert!(!source.contains("https://"), "no external resources");
    screenshots(c, &app).await;
    // The page's way to older periods opens with the same session.
    c.goto(&app.url("/v1/ledger/periods")).await.unwrap();
    let listed = c.source().await.unwrap();
    for p in &closed {
        assert!(
            listed.contains(p["period_id"].as_str().unwrap()),
            "{listed}"
        );
    }
    browser.client.clone().close().await.unwrap();
    app.stop().await;
}

/// Years of closes: the page shows the most recent 24, newest first, and
/// says where the others are.
async fn the_page_shows_the_most_recent_closed_periods(backend: Backend) {
    let app = spawn_app(&backend).await;
    let mut ids = Vec::new();
    for _ in 0..26 {
        app.clock.advance(Duration::from_secs(1));
        let closed = app.close_period().await;
        ids.push(closed["closed"]["period_id"].as_str().unwrap().to_owned());
    }
    let page = app.get_text("/", FINANCE_TOKEN).await;
    let shown: Vec<&str> = page
        .split("<section class=\"period\" id=\"period-")
        .skip(1)
        .map(|s| &s[..s.find('"').unwrap()])
        .collect();
    let newest: Vec<&str> = ids.iter().rev().take(24).map(String::as_str).collect();
    assert_eq!(shown, newest);
    assert!(
        page.contains("The 24 most recent of 26, newest first."),
        "{page}"
    );
    assert!(page.contains("<a href=\"/v1/ledger/periods\">"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_cookie_opens_reads_never_writes() {
    let (app, _sink) = app_with_traffic().await;
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_redirects.get(app.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 303);
    let r = no_redirects
        .post(app.url("/login"))
        .form(&[("token", INGEST_TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "only finance and admin tokens sign in");
    let r = no_redirects
        .post(app.url("/login"))
        .form(&[("token", FINANCE_TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_owned();
    let page = no_redirects
        .get(app.url("/"))
        .header("cookie", &pair)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let csv = no_redirects
        .get(app.url("/v1/ledger/current.csv"))
        .header("cookie", &pair)
        .send()
        .await
        .unwrap();
    assert_eq!(csv.status(), 200);
    let close = no_redirects
        .post(app.url("/v1/ledger/close"))
        .header("cookie", &pair)
        .send()
        .await
        .unwrap();
    assert_eq!(close.status(), 401, "a cookie never authorises a change");
    app.stop().await;
}

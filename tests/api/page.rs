//! The finance page: in headless Chromium (Debian's chromium and
//! chromium-driver, over WebDriver) after signing in through its form, the
//! table matches the API; and the login cookie opens reads, never writes.

use std::process::{Command, Stdio};
use std::time::Duration;

use fantoccini::{ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::helpers::*;

async fn app_with_traffic() -> (TestApp, Sink) {
    let app = spawn_app_with(&Backend::Sqlite, |s| {
        s.billing.prices.insert(
            notimeter::domain::IntegrationKind::Webhook,
            "0.005".parse().unwrap(),
        );
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
    let r = app
        .http
        .post(app.url("/v1/ledger/close"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
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
    (app, sink)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromedriver (apt-get install chromium chromium-driver); run with --include-ignored"]
async fn finance_page_in_headless_chromium() {
    require("chromium", "chromium");
    require("chromedriver", "chromium-driver");
    let (app, _sink) = app_with_traffic().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _driver = KillOnDrop(
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
    let mut client = None;
    for _ in 0..50 {
        // chromedriver speaks plain HTTP on loopback: no TLS stack needed.
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(c) => {
                client = Some(c);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let c = client.expect("chromedriver answers");

    // Not signed in: the page sends us to the login form.
    c.goto(&app.url("/")).await.unwrap();
    assert!(c.current_url().await.unwrap().as_str().ends_with("/login"));
    c.find(Locator::Css("#token"))
        .await
        .unwrap()
        .send_keys("wrong")
        .await
        .unwrap();
    c.find(Locator::Css("#sign-in"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // The click returns before the answer has loaded: wait for it.
    eventually("the refusal", || async {
        c.source()
            .await
            .unwrap()
            .contains("not a finance or admin token")
    })
    .await;
    c.find(Locator::Css("#token"))
        .await
        .unwrap()
        .send_keys(FINANCE_TOKEN)
        .await
        .unwrap();
    c.find(Locator::Css("#sign-in"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    c.wait()
        .for_element(Locator::Css("#open-usage"))
        .await
        .unwrap();

    // The open period's table is the API's usage, row for row.
    let rows = c
        .find_all(Locator::Css("#open-usage tbody tr"))
        .await
        .unwrap();
    let mut shown: Vec<Vec<String>> = Vec::new();
    for row in rows {
        let mut cells = Vec::new();
        for cell in row.find_all(Locator::Css("td")).await.unwrap() {
            cells.push(cell.text().await.unwrap());
        }
        shown.push(cells);
    }
    let usage = app.get_json("/v1/usage", FINANCE_TOKEN).await;
    let expected: Vec<Vec<String>> = usage["usage"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            [
                "user_id",
                "integration",
                "delivered",
                "failed",
                "units",
                "unit_price",
                "amount",
            ]
            .iter()
            .map(|k| match &r[*k] {
                Value::String(s) => s.clone(),
                v => v.to_string(),
            })
            .collect()
        })
        .collect();
    assert_eq!(shown, expected);
    let total = c
        .find(Locator::Css("#totals"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        total.contains("Total (USD)") && total.contains('4') && total.contains("0.02 USD"),
        "{total}"
    );
    assert_eq!(
        c.find(Locator::Css("#open-period"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        usage["period_id"].as_str().unwrap()
    );

    // The chart is drawn server-side, and the closed period is listed with its downloads.
    let bars = c.find_all(Locator::Css("#chart rect")).await.unwrap();
    assert!(bars.len() > 5, "bars and legend");
    let closed = c
        .find(Locator::Css("#closed tbody"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        closed.contains("CSV") && closed.contains("all users"),
        "{closed}"
    );
    let source = c.source().await.unwrap();
    assert!(!source.contains("<script"), "no scripts");
    assert!(!source.contains("https://"), "no external resources");

    let png = c.screenshot().await.unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let shot = app.dir.path().join("finance-page.png");
    std::fs::write(&shot, &png).unwrap();
    eprintln!("screenshot: {}", shot.display());
    if let Ok(keep) = std::env::var("NOTIMETER_SCREENSHOT") {
        std::fs::write(keep, &png).unwrap();
    }
    c.close().await.unwrap();
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

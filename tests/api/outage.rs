//! A store that stops answering: PostgreSQL behind a connection that stalls
//! (a network partition), SQLite locked by another process. Requests answer
//! 503 quickly, /metrics keeps answering with its last reading, readiness
//! fails, the service recovers when the store does, and shutdown ends in time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::Connection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::helpers::*;
use crate::on_both_backends;

/// A TCP relay to `upstream` that can be stalled: while stalled it neither
/// reads nor writes, as a partitioned network behaves (no reset, no answer).
struct StallingRelay {
    addr: SocketAddr,
    stalled: watch::Sender<bool>,
}

async fn until_flowing(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stalled| !stalled).await;
}

async fn pump(
    mut from: tokio::io::ReadHalf<TcpStream>,
    mut to: tokio::io::WriteHalf<TcpStream>,
    mut rx: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        until_flowing(&mut rx).await;
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        until_flowing(&mut rx).await;
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl StallingRelay {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stalled, rx) = watch::channel(false);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mut rx = rx.clone();
                tokio::spawn(async move {
                    until_flowing(&mut rx).await;
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (cr, cw) = tokio::io::split(client);
                    let (sr, sw) = tokio::io::split(server);
                    tokio::join!(pump(cr, sw, rx.clone()), pump(sr, cw, rx));
                });
            }
        });
        Self { addr, stalled }
    }

    fn stall(&self, on: bool) {
        self.stalled.send_replace(on);
    }
}

/// How the store is taken away.
enum Outage {
    /// PostgreSQL reached through a relay that stalls.
    Stall(StallingRelay),
    /// SQLite with another connection holding the write lock.
    Lock(String, Option<sqlx::SqliteConnection>),
}

impl Outage {
    async fn begin(&mut self) {
        match self {
            Outage::Stall(relay) => relay.stall(true),
            Outage::Lock(url, held) => {
                let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
                sqlx::Executor::execute(&mut conn, "BEGIN EXCLUSIVE")
                    .await
                    .unwrap();
                *held = Some(conn);
            }
        }
    }

    async fn end(&mut self) {
        match self {
            Outage::Stall(relay) => relay.stall(false),
            Outage::Lock(_, held) => {
                if let Some(mut conn) = held.take() {
                    sqlx::Executor::execute(&mut conn, "ROLLBACK")
                        .await
                        .unwrap();
                }
            }
        }
    }

    fn is_stall(&self) -> bool {
        matches!(self, Outage::Stall(_))
    }
}

fn one(seq: &str) -> serde_json::Value {
    let mut a = alert("StoreDown", Some("u1"), &format!("fp-{seq}"));
    a["labels"]["seq"] = json!(seq);
    payload("catch-all", &format!("group-{seq}"), vec![a])
}

async fn store_outage(backend: Backend) {
    let sink = Sink::start().await;
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let database = fresh_database(&backend, dir.path()).await;
    let mut settings = test_settings(&database.url, dir.path());
    settings.store_timeout = Duration::from_millis(1500);
    let mut outage = match &backend {
        Backend::Sqlite => Outage::Lock(database.url.clone(), None),
        Backend::Postgres(_) => {
            let mut url = url::Url::parse(&database.url).unwrap();
            let upstream: SocketAddr =
                format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432))
                    .parse()
                    .unwrap();
            let relay = StallingRelay::start(upstream).await;
            url.set_port(Some(relay.addr.port())).unwrap();
            settings.database_url = url.to_string();
            Outage::Stall(relay)
        }
    };
    let app = start(settings, dir).await;
    app.add_webhook("u1", "hook", &sink.url("/hook")).await;
    assert_eq!(app.post_alerts(&one("before")).await.status(), 200);
    sink.wait_for("/hook", 1).await;
    app.wait_idle().await;
    let delivered = [
        ("user_id", "u1"),
        ("integration", "webhook"),
        ("outcome", "delivered"),
    ];
    assert_eq!(app.metric("notimeter_store_up", &[]).await, 1.0);
    assert_eq!(
        app.metric("notimeter_period_notifications", &delivered)
            .await,
        1.0
    );

    outage.begin().await;

    // Ingest answers 503 with Retry-After, promptly (store_timeout is 1.5 s;
    // the bound here is generous for a loaded machine).
    let started = Instant::now();
    let r = app.post_alerts(&one("during")).await;
    assert_eq!(r.status(), 503, "ingest during the outage");
    assert!(r.headers().contains_key("retry-after"));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "503 took {:?}",
        started.elapsed()
    );

    let started = Instant::now();
    let r = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503, "not ready while the store takes no write");
    assert!(started.elapsed() < Duration::from_secs(4));

    // /metrics answers, with the last reading of the store-derived gauges.
    let started = Instant::now();
    let text = app.metrics().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "/metrics took {:?}",
        started.elapsed()
    );
    assert_eq!(
        metric_value(&text, "notimeter_period_notifications", &delivered),
        1.0
    );
    if outage.is_stall() {
        assert_eq!(metric_value(&text, "notimeter_store_up", &[]), 0.0);
    }

    outage.end().await;

    // Recovered: Alertmanager's retry of the refused notification goes through.
    eventually("ingest to work again", || async {
        app.post_alerts(&one("during")).await.status() == 200
    })
    .await;
    sink.wait_for("/hook", 2).await;
    // Whichever of the refused request's write and its retry was stored is
    // counted, once: a write given up on by its request still counts.
    eventually("both notifications' alerts counted", || async {
        app.metric("notimeter_alerts_received_total", &[("user_id", "u1")])
            .await
            == 2.0
    })
    .await;
    eventually("the store to be up again", || async {
        app.metric("notimeter_store_up", &[]).await == 1.0
    })
    .await;
    let r = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // A send in flight when the store goes away: shutdown still ends in time.
    sink.script(
        "/hook",
        [Reply::new(200, "ok").after(Duration::from_millis(500))],
    );
    assert_eq!(app.post_alerts(&one("in-flight")).await.status(), 200);
    sink.wait_for("/hook", 3).await;
    outage.begin().await;
    let grace = app.settings.shutdown_timeout + Duration::from_secs(3);
    tokio::time::timeout(grace, app.stop())
        .await
        .expect("shutdown ends within shutdown_timeout while the store is down");
    outage.end().await;
    drop(database);
}

on_both_backends!(store_outage);

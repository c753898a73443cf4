//! The bounds on webhook requests handled at once (`max_concurrent_ingests`
//! requests, `max_ingest_bytes` of bodies by `Content-Length`): an excess
//! request waits, then is answered 503 with `Retry-After`, and its retry (as
//! Alertmanager makes it) is accepted and delivered, so nothing is lost.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;
use crate::on_both_backends;

on_both_backends!(
    excess_ingest_is_503_and_its_retry_delivered,
    abandoned_ingest_gives_its_turn_back,
    small_requests_share_the_budget,
);

/// The largest body the tests here accept.
const LARGEST: usize = 8 * 1024;

/// A payload of one alert, padded to just under [`LARGEST`].
fn large_alert(group: &str, fingerprint: &str) -> Value {
    let mut p = one_alert(group, fingerprint);
    let size = serde_json::to_vec(&p).unwrap().len();
    p["alerts"][0]["annotations"]["padding"] = json!("x".repeat(LARGEST - size - 100));
    p
}

/// A webhook request sent over a raw connection: the head and half the body
/// at once, the rest when asked, so it holds its turn in between.
struct SlowRequest {
    stream: TcpStream,
    rest: Vec<u8>,
}

impl SlowRequest {
    async fn start(app: &TestApp, payload: &Value) -> Self {
        let body = serde_json::to_vec(payload).unwrap();
        let head = format!(
            "POST /v1/alertmanager HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {INGEST_TOKEN}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            app.addr,
            body.len()
        );
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        let half = body.len() / 2;
        stream.write_all(&body[..half]).await.unwrap();
        stream.flush().await.unwrap();
        Self {
            stream,
            rest: body[half..].to_vec(),
        }
    }

    /// Sends the rest of the body and reads the answer: status and JSON body.
    async fn finish(mut self) -> (u16, Value) {
        self.stream.write_all(&self.rest).await.unwrap();
        let mut response = Vec::new();
        self.stream.read_to_end(&mut response).await.unwrap();
        let text = String::from_utf8(response).unwrap();
        let status = text[9..12].parse().unwrap();
        let (_, body) = text.split_once("\r\n\r\n").unwrap();
        (status, serde_json::from_str(body).unwrap())
    }
}

fn one_alert(group: &str, fingerprint: &str) -> Value {
    payload(
        "default",
        group,
        vec![alert("high_cpu", Some("u1"), fingerprint)],
    )
}

async fn excess_ingest_is_503_and_its_retry_delivered(backend: Backend) {
    let app = spawn_app_with(&backend, |s| {
        s.max_concurrent_ingests = 1;
        s.ingest_queue_timeout = Duration::from_millis(100);
    })
    .await;
    let sink = Sink::start().await;
    app.add_webhook("u1", "hook", &sink.url("/u1")).await;

    let first = SlowRequest::start(&app, &one_alert("g-first", "first")).await;
    // While the first request holds the only turn, another one waits and is
    // refused. (Until the server has read the first one's head, others may
    // still get in: they are accepted, and must be delivered too.)
    let mut expected = vec!["first".to_owned()];
    let (refused, response) = loop {
        let fingerprint = format!("second-{}", expected.len());
        let p = one_alert(&format!("g-{fingerprint}"), &fingerprint);
        let r = app.post_alerts(&p).await;
        expected.push(fingerprint);
        if r.status() == 503 {
            break (p, r);
        }
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        assert!(
            expected.len() < 20,
            "no request was refused while another held the only turn"
        );
    };
    assert_eq!(response.headers()["retry-after"], "1");
    let error: Value = response.json().await.unwrap();
    assert!(
        error["error"].as_str().unwrap().contains("try again"),
        "{error}"
    );

    let (status, body) = first.finish().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "accepted");

    // Alertmanager retries the refused notification: it is new, not a duplicate.
    let r = app.post_alerts(&refused).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "accepted");

    let received = sink.wait_for("/u1", expected.len()).await;
    app.wait_idle().await;
    let mut delivered: Vec<String> = received
        .iter()
        .map(|r| {
            r.json()["alerts"][0]["fingerprint"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    delivered.sort();
    expected.sort();
    assert_eq!(delivered, expected, "every notification delivered once");
    assert_eq!(
        app.metric("notimeter_webhook_requests_total", &[("code", "503")])
            .await,
        1.0
    );
    assert_eq!(
        app.metric("notimeter_alerts_received_total", &[("user_id", "u1")])
            .await,
        expected.len() as f64
    );
    app.stop().await;
}

async fn abandoned_ingest_gives_its_turn_back(backend: Backend) {
    let app = spawn_app_with(&backend, |s| {
        s.max_concurrent_ingests = 1;
        s.ingest_queue_timeout = Duration::from_secs(10);
    })
    .await;
    let sink = Sink::start().await;
    app.add_webhook("u1", "hook", &sink.url("/u1")).await;

    // A client that gives up halfway through its body must not keep the turn.
    for i in 0..3 {
        drop(SlowRequest::start(&app, &one_alert(&format!("g-gone-{i}"), "gone")).await);
    }
    let r = app.post_alerts(&one_alert("g-kept", "kept")).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let received = sink.wait_for("/u1", 1).await;
    assert_eq!(
        received[0].json()["alerts"][0]["fingerprint"],
        json!("kept")
    );
    app.stop().await;
}

/// The byte bound: a large body waiting for the rest of it holds the whole
/// budget, and the next request is refused; small notifications take a
/// small share, so several are handled at once and yet another is accepted
/// while they all hold their turns.
async fn small_requests_share_the_budget(backend: Backend) {
    let app = spawn_app_with(&backend, |s| {
        s.max_request_bytes = LARGEST;
        s.max_ingest_bytes = LARGEST;
        s.ingest_queue_timeout = Duration::from_millis(100);
    })
    .await;
    let sink = Sink::start().await;
    app.add_webhook("u1", "hook", &sink.url("/u1")).await;
    let large = SlowRequest::start(&app, &large_alert("g-large", "large")).await;
    // A probe may come before the large request has taken its turn and be
    // accepted (and delivered): each is a notification of its own, counted.
    let (probes, accepted) = (AtomicUsize::new(0), AtomicUsize::new(0));
    eventually(
        "a request refused while the large one holds the budget",
        || async {
            let n = probes.fetch_add(1, Ordering::Relaxed);
            let status = app
                .post_alerts(&one_alert(&format!("g-probe-{n}"), &format!("probe-{n}")))
                .await
                .status();
            if status == 200 {
                accepted.fetch_add(1, Ordering::Relaxed);
            }
            status == 503
        },
    )
    .await;
    let accepted = accepted.load(Ordering::Relaxed);
    let (status, body) = large.finish().await;
    assert_eq!(status, 200, "{body}");
    let mut holding = Vec::new();
    for i in 0..4 {
        let fingerprint = format!("held-{i}");
        holding.push(
            SlowRequest::start(&app, &one_alert(&format!("g-{fingerprint}"), &fingerprint)).await,
        );
    }
    let r = app.post_alerts(&one_alert("g-more", "more")).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    for request in holding {
        let (status, body) = request.finish().await;
        assert_eq!(status, 200, "{body}");
    }
    let received = sink.wait_for("/u1", 6 + accepted).await;
    app.wait_idle().await;
    assert_eq!(
        received.len(),
        6 + accepted,
        "the refused one was not stored"
    );
    app.stop().await;
}

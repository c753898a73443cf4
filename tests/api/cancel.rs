//! Callers that go away: a store operation dropped at any await point, and
//! webhook clients that hang up mid-request, must leave the store usable, lose
//! nothing accepted and deliver nothing twice.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use notimeter::clock::now_ms;
use notimeter::store::{self, Enqueued, IngestBatch, NewMessage};
use rand::Rng;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::helpers::*;
use crate::on_both_backends;

/// Polls the inner future at most `polls` times, then gives up on it (drops
/// it), as a request handler is dropped when its client hangs up.
struct DropAfter<F> {
    inner: Pin<Box<F>>,
    polls: usize,
}

impl<F: Future> Future for DropAfter<F> {
    type Output = Option<F::Output>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.polls == 0 {
            return Poll::Ready(None);
        }
        self.polls -= 1;
        self.inner.as_mut().poll(cx).map(Some)
    }
}

fn batch(key: &str, channel: &str) -> IngestBatch {
    let now = now_ms();
    let message = |n: usize| NewMessage {
        user_id: "u1".into(),
        channel_id: channel.into(),
        integration: notimeter::domain::IntegrationKind::Webhook,
        group_key: String::new(),
        payload: json!({"n": n}).to_string(),
        alert_count: 1,
        alertnames: "a".into(),
    };
    IngestBatch {
        dedupe_key: key.into(),
        now,
        dedupe_expires_at: now + 60_000,
        messages: vec![message(1), message(2)],
        undeliverable: vec![],
    }
}

/// Drops an enqueue after 0, 1, 2, … polls — at every await point it has —
/// and enqueues again after each drop: the next enqueue must work, and each
/// dropped batch is either wholly stored or not at all.
async fn enqueue_dropped_at_every_await_point(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database(&backend, dir.path()).await;
    let store = store::connect(&db.url).await.unwrap();
    store.migrate(now_ms()).await.unwrap();
    // As when a dispatcher runs: messages are handed over leased at insert.
    let mut handed = store.hand_off_to("here", Duration::from_secs(60), 4096);

    let mut dropped = 0;
    for polls in 0.. {
        let fut = store.enqueue(batch(&format!("dropped-{polls}"), &format!("d{polls}")));
        let outcome = DropAfter {
            inner: Box::pin(fut),
            polls,
        }
        .await;
        if let Some(done) = outcome {
            assert!(matches!(done.unwrap(), Enqueued::Accepted { .. }));
            assert!(polls > 0);
            break;
        }
        dropped += 1;
        let again = tokio::time::timeout(
            Duration::from_secs(10),
            store.enqueue(batch(&format!("after-{polls}"), &format!("a{polls}"))),
        )
        .await
        .unwrap_or_else(|_| panic!("enqueue after a drop at poll {polls} hung"));
        assert!(matches!(
            again.unwrap_or_else(|e| panic!("enqueue after a drop at poll {polls}: {e:?}")),
            Enqueued::Accepted { .. }
        ));
        no_transaction_left_open(&backend, &db.url).await;
        assert!(polls < 10_000, "enqueue never completed");
    }
    assert!(dropped > 0);
    // Each stored message was handed over once, leased to "here" (the
    // writer answers in order, so the last answer came after every send).
    let mut ids = Vec::new();
    while let Ok(m) = handed.try_recv() {
        ids.push(m.id);
    }
    let count = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), count, "a message handed over twice");
    store.close().await;
    drop(store);
    let stored: i64 = query_one(&db.url, "SELECT COUNT(*) FROM messages").await;
    let leased: i64 = query_one(
        &db.url,
        "SELECT COUNT(*) FROM messages WHERE lease_owner = 'here'",
    )
    .await;
    assert_eq!((stored, leased), (count as i64, count as i64));

    // Every batch is whole or absent: two messages per channel, or none.
    for polls in 0..dropped {
        let n: i64 = query_one(
            &db.url,
            &format!("SELECT COUNT(*) FROM messages WHERE channel_id = 'd{polls}'"),
        )
        .await;
        assert!(
            n == 0 || n == 2,
            "batch dropped at poll {polls} left {n} messages"
        );
        let n: i64 = query_one(
            &db.url,
            &format!("SELECT COUNT(*) FROM messages WHERE channel_id = 'a{polls}'"),
        )
        .await;
        assert_eq!(n, 2, "the enqueue after poll {polls}");
    }
}

/// On PostgreSQL, waits until no connection is left idle in a transaction.
async fn no_transaction_left_open(backend: &Backend, url: &str) {
    if matches!(backend, Backend::Postgres(_)) {
        eventually("no connection idle in a transaction", || async {
            let open: i64 = query_one(
                url,
                "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND state LIKE 'idle in transaction%'",
            )
            .await;
            open == 0
        })
        .await;
    }
}

/// Sends a raw HTTP request and hangs up at a random moment within 4 ms.
async fn post_and_hang_up(addr: std::net::SocketAddr, body: Vec<u8>) {
    let Ok(mut conn) = tokio::net::TcpStream::connect(addr).await else {
        return;
    };
    let head = format!(
        "POST /v1/alertmanager HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {INGEST_TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(head.as_bytes()).await;
    let _ = conn.write_all(&body).await;
    let wait = rand::rng().random_range(0..4_000);
    tokio::time::sleep(Duration::from_micros(wait)).await;
    drop(conn);
}

/// 3,000 one-alert payloads from 32 clients that hang up within 4 ms of
/// sending; afterwards ingest, readiness and delivery work, nothing accepted
/// is lost or delivered twice, and shutdown ends in time.
async fn clients_hanging_up_do_not_wedge_the_store(backend: Backend) {
    let sink = Sink::start().await;
    let app = spawn_app(&backend).await;
    app.add_webhook("u1", "hook", &sink.url("/hook")).await;

    let clients: Vec<_> = (0..32)
        .map(|client| {
            let addr = app.addr;
            tokio::spawn(async move {
                for i in 0..94 {
                    let seq = format!("{client}-{i}");
                    let mut a = alert("HangUp", Some("u1"), &format!("fp-{seq}"));
                    a["labels"]["seq"] = json!(seq);
                    let p = payload("catch-all", &format!("{{}}:{{seq=\"{seq}\"}}"), vec![a]);
                    post_and_hang_up(addr, serde_json::to_vec(&p).unwrap()).await;
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }

    // Ingest still works, on every request.
    for i in 0..20 {
        let mut a = alert("After", Some("u1"), &format!("after-{i}"));
        a["labels"]["seq"] = json!(format!("after-{i}"));
        let r = app
            .post_alerts(&payload("catch-all", &format!("after-{i}"), vec![a]))
            .await;
        assert_eq!(r.status(), 200, "ingest after the hang-ups");
    }
    let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    app.wait_idle().await;

    // Every stored message was delivered once; nothing is left pending.
    let stored: i64 = query_one(&app.database_url, "SELECT COUNT(*) FROM messages").await;
    let delivered: i64 = query_one(
        &app.database_url,
        "SELECT COUNT(*) FROM messages WHERE state = 'delivered'",
    )
    .await;
    assert_eq!(delivered, stored, "every accepted message delivered");
    let received = sink.received_on("/hook");
    assert_eq!(received.len() as i64, stored, "one request per message");
    let mut seqs: Vec<String> = received
        .iter()
        .flat_map(|r| {
            r.json()["alerts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["labels"]["seq"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    let total = seqs.len();
    seqs.sort();
    seqs.dedup();
    assert_eq!(seqs.len(), total, "an alert was delivered twice");
    for i in 0..20 {
        assert!(seqs.contains(&format!("after-{i}")));
    }

    let grace = app.settings.shutdown_timeout + Duration::from_secs(5);
    tokio::time::timeout(grace, app.stop())
        .await
        .expect("shutdown ends within shutdown_timeout");
}

on_both_backends!(
    enqueue_dropped_at_every_await_point,
    record_dropped_at_every_await_point,
    record_claiming_a_backlog_dropped_at_every_await_point,
    clients_hanging_up_do_not_wedge_the_store,
    reconciliation_begin_dropped_at_every_await_point,
    redelivery_dropped_at_every_await_point,
);

/// Begins the reconciliation's count, dropping the call after 0, 1, 2, …
/// polls: each time the count is either wholly begun (the row and one row
/// per Alertmanager) or not at all, and the store takes the next call.
async fn reconciliation_begin_dropped_at_every_await_point(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database(&backend, dir.path()).await;
    let store = store::connect(&db.url).await.unwrap();
    store.migrate(now_ms()).await.unwrap();
    for polls in 0.. {
        // A set of its own each time, so that each begin replaces the last.
        let readings: Vec<_> = ["a", "b"]
            .iter()
            .map(|am| store::AlertmanagerReading {
                url: format!("http://{am}{polls}"),
                start_time: 1,
                requests: 10,
                failed: 1,
            })
            .collect();
        let fut = store.begin_reconciliation(readings, now_ms());
        let done = DropAfter {
            inner: Box::pin(fut),
            polls,
        }
        .await;
        // A dropped write still runs to its end: wait for it to settle.
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Some(count) = store.reconciliation().await.unwrap() {
            assert_eq!(
                count.alertmanagers.len(),
                2,
                "a count begun whole: {count:?}"
            );
            assert!(count
                .urls
                .lines()
                .all(|u| count.alertmanagers.iter().any(|a| a.url == u)));
        }
        if let Some(begun) = done {
            assert!(begun.unwrap());
            let count = store.reconciliation().await.unwrap().unwrap();
            assert!(count.urls.ends_with(&format!("b{polls}")));
            break;
        }
    }
    store.add_received(3).await.unwrap();
    assert_eq!(store.reconciliation().await.unwrap().unwrap().received, 3);
}

/// Redelivers a failed message, dropping the call after 0, 1, 2, … polls:
/// each dropped call leaves either one whole new message or none, and the
/// store takes the next call.
async fn redelivery_dropped_at_every_await_point(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database(&backend, dir.path()).await;
    let store = store::connect(&db.url).await.unwrap();
    store.migrate(now_ms()).await.unwrap();
    assert!(matches!(
        store.enqueue(batch("k", "c1")).await.unwrap(),
        Enqueued::Accepted { .. }
    ));
    execute(&db.url, "UPDATE messages SET state = 'failed' WHERE id = 1").await;
    execute(
        &db.url,
        "INSERT INTO channels (user_id, channel_id, integration, enabled, spec, created_at, updated_at) \
         VALUES ('u1', 'c1', 'webhook', TRUE, '{}', 0, 0)",
    )
    .await;
    let count = || async { query_one::<i64>(&db.url, "SELECT COUNT(*) FROM messages").await };
    for polls in 0.. {
        let fut = store.redeliver(1, format!("redeliver:1:{polls}"), now_ms());
        let done = DropAfter {
            inner: Box::pin(fut),
            polls,
        }
        .await;
        // A dropped write still runs to its end: wait for it to settle.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let made = count().await - 2;
        assert!(made <= 1, "a message is redelivered once: {made} copies");
        if let Some(r) = done {
            // Queued now, or by a dropped call that ran to its end before.
            assert!(matches!(
                r.unwrap(),
                store::Redelivery::Queued { .. } | store::Redelivery::Already(_)
            ),);
            break;
        }
    }
    let (copies, marked): (i64, i64) = query_row(
        &db.url,
        "SELECT COUNT(*), (SELECT redelivered_as FROM messages WHERE id = 1) FROM messages \
         WHERE payload = (SELECT payload FROM messages WHERE id = 1) AND id > 1",
    )
    .await;
    assert_eq!(copies, 1, "one whole copy");
    assert!(marked > 1, "the original names its copy");
    assert!(matches!(
        store.redeliver(1, "again".into(), now_ms()).await.unwrap(),
        store::Redelivery::Already(id) if id == marked
    ));
}

/// The next message for "here": from its hand-over queue (then true), else
/// claimed.
async fn next_for_here(
    store: &store::Store,
    handed: &mut tokio::sync::mpsc::Receiver<store::ClaimedMessage>,
) -> (store::ClaimedMessage, bool) {
    if let Ok(m) = handed.try_recv() {
        return (m, true);
    }
    let now = now_ms();
    let claimed = store.claim("here", now, now + 60_000, 1).await.unwrap();
    let m = claimed
        .into_iter()
        .next()
        .expect("the backlog is not used up");
    (m, false)
}

/// With a backlog said (`note_backlog`), the writer's transaction that
/// records an outcome also claims for the dispatcher. Dropped after 0, 1,
/// 2, … polls, the record still runs whole or not at all, the next one
/// works, and whatever a claim leased reaches the dispatcher's hand-over
/// queue: no message is left leased to it unseen (until its lease ran out).
async fn record_claiming_a_backlog_dropped_at_every_await_point(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database(&backend, dir.path()).await;
    let store = store::connect(&db.url).await.unwrap();
    store.migrate(now_ms()).await.unwrap();
    // A backlog of 400 messages, waiting before any dispatcher takes them.
    for k in 0..200 {
        store
            .enqueue(batch(&format!("w{k}"), &format!("c{k}")))
            .await
            .unwrap();
    }
    let mut handed = store.hand_off_to("here", Duration::from_secs(60), 4);
    // Every message that reached "here", handed over or claimed.
    let mut seen = Vec::new();
    // How many of them the writer claimed with a record and handed over.
    let mut via_queue = 0;
    let mut dropped = 0;
    for polls in 0.. {
        let (m, queued) = next_for_here(&store, &mut handed).await;
        seen.push(m.id);
        via_queue += usize::from(queued);
        store.note_backlog(true);
        let outcome = DropAfter {
            inner: Box::pin(store.record("here", &[delivered(&m, now_ms())])),
            polls,
        }
        .await;
        if outcome.is_some() {
            break;
        }
        dropped += 1;
        let (other, queued) = next_for_here(&store, &mut handed).await;
        seen.push(other.id);
        via_queue += usize::from(queued);
        let again = tokio::time::timeout(
            Duration::from_secs(10),
            store.record("here", &[delivered(&other, now_ms())]),
        )
        .await
        .unwrap_or_else(|_| panic!("record after a drop at poll {polls} hung"));
        assert!(again.is_ok(), "{again:?}");
        no_transaction_left_open(&backend, &db.url).await;
        assert!(polls < 10_000, "record never completed");
    }
    assert!(dropped >= 2, "dropped {dropped} times");
    store.close().await;
    drop(store);
    let left: Vec<i64> = std::iter::from_fn(|| handed.try_recv().ok().map(|m| m.id)).collect();
    via_queue += left.len();
    seen.extend(left);
    let mut pending_seen = 0;
    for id in &seen {
        let (state, attempts): (String, i64) = query_row(
            &db.url,
            &format!(
                "SELECT state, (SELECT COUNT(*) FROM attempts WHERE message_id = {id}) \
                 FROM messages WHERE id = {id}"
            ),
        )
        .await;
        assert!(
            (state == "delivered" && attempts == 1) || (state == "pending" && attempts == 0),
            "message {id}: {state} with {attempts} attempt rows"
        );
        pending_seen += i64::from(state == "pending");
    }
    let leased: i64 = query_one(
        &db.url,
        "SELECT COUNT(*) FROM messages WHERE state = 'pending' AND lease_owner = 'here'",
    )
    .await;
    assert_eq!(
        leased, pending_seen,
        "every message leased to here reached it"
    );
    assert!(via_queue > 0, "no record claimed for the backlog");
}

/// Records an outcome, dropping the call after 0, 1, 2, … polls, while an
/// enqueue runs beside it (the two share the writer's transaction): each
/// dropped record is applied whole (the message delivered, one attempt row,
/// counted once) or not at all, the enqueue beside it is accepted, the next
/// record works, and a message recorded again is not counted twice.
async fn record_dropped_at_every_await_point(backend: Backend) {
    use notimeter::store::Recorded;
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database(&backend, dir.path()).await;
    let store = store::connect(&db.url).await.unwrap();
    store.migrate(now_ms()).await.unwrap();
    let mut handed = store.hand_off_to("here", Duration::from_secs(60), 4096);
    let next = |store: &std::sync::Arc<store::Store>, key: String| {
        let store = store.clone();
        async move {
            assert!(matches!(
                store.enqueue(batch(&key, &key)).await.unwrap(),
                Enqueued::Accepted { .. }
            ));
        }
    };
    next(&store, "first".into()).await;
    let mut recorded = Vec::new();
    let mut dropped = 0;
    for polls in 0.. {
        let m = handed.try_recv().expect("a message handed over");
        // An enqueue beside the record, so that both go in one transaction.
        let beside = tokio::spawn(next(&store, format!("beside-{polls}")));
        let outcome = DropAfter {
            inner: Box::pin(store.record("here", &[delivered(&m, now_ms())])),
            polls,
        }
        .await;
        tokio::time::timeout(Duration::from_secs(10), beside)
            .await
            .unwrap_or_else(|_| panic!("the enqueue beside a record dropped at poll {polls} hung"))
            .unwrap();
        recorded.push(m.id);
        if let Some(done) = outcome {
            assert_eq!(done.unwrap(), vec![Recorded::Applied]);
            break;
        }
        dropped += 1;
        // The store takes the next record; the dropped one's message is
        // either already final (then a second record is refused) or not.
        let other = handed.try_recv().expect("a message handed over");
        let again = tokio::time::timeout(
            Duration::from_secs(10),
            store.record("here", &[delivered(&other, now_ms())]),
        )
        .await
        .unwrap_or_else(|_| panic!("record after a drop at poll {polls} hung"));
        assert_eq!(again.unwrap(), vec![Recorded::Applied]);
        recorded.push(other.id);
        no_transaction_left_open(&backend, &db.url).await;
        assert!(polls < 10_000, "record never completed");
    }
    // Dropped before it was queued, and at least once after (waiting for
    // the writer's answer).
    assert!(dropped >= 2, "dropped {dropped} times");
    // Give a dropped record's write time to end (it runs on), then look.
    store.close().await;
    drop(store);
    for id in &recorded {
        let (state, attempts): (String, i64) = query_row(
            &db.url,
            &format!(
                "SELECT state, (SELECT COUNT(*) FROM attempts WHERE message_id = {id}) \
                 FROM messages WHERE id = {id}"
            ),
        )
        .await;
        assert!(
            (state == "delivered" && attempts == 1) || (state == "pending" && attempts == 0),
            "message {id}: {state} with {attempts} attempt rows"
        );
    }
    let (delivered_rows, counted): (i64, i64) = query_row(
        &db.url,
        "SELECT (SELECT COUNT(*) FROM messages WHERE state = 'delivered'), \
                (SELECT CAST(COALESCE(SUM(delivered), 0) AS BIGINT) FROM usage)",
    )
    .await;
    assert_eq!(
        delivered_rows, counted,
        "usage counts each delivered message once"
    );
    assert!(delivered_rows > 0);
}

//! Group commit: many concurrent ingest batches share write transactions,
//! written a few multi-row statements at a time. Whatever lands in one
//! group, each batch must come out as it would alone: a dedupe key accepted
//! once, every message of an accepted batch stored, and a (channel, group)
//! left with only its newest message pending.

use std::collections::BTreeMap;

use futures::future::join_all;
use notimeter::clock::now_ms;
use notimeter::store::{self, Enqueued, IngestBatch, NewMessage};
use serde_json::json;

use crate::helpers::*;
use crate::on_both_backends;

on_both_backends!(concurrent_batches_come_out_as_they_would_alone);
on_both_backends!(messages_are_handed_over_leased_at_insert_unless_their_group_waits);
on_both_backends!(with_a_backlog_recording_outcomes_claims_in_the_same_transaction);

fn batch(key: &str, channel: &str, group: &str, messages: usize) -> IngestBatch {
    let now = now_ms();
    IngestBatch {
        dedupe_key: key.into(),
        now,
        dedupe_expires_at: now + 60_000,
        messages: (0..messages)
            .map(|n| NewMessage {
                user_id: "u1".into(),
                channel_id: format!("{channel}-{n}"),
                integration: notimeter::domain::IntegrationKind::Webhook,
                group_key: group.into(),
                payload: json!({"key": key, "n": n}).to_string(),
                alert_count: 1,
                alertnames: "a".into(),
            })
            .collect(),
        undeliverable: vec![],
    }
}

async fn concurrent_batches_come_out_as_they_would_alone(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database(&backend, dir.path()).await;
    let store = store::connect(&db.url).await.unwrap();
    store.migrate(now_ms()).await.unwrap();

    // 300 distinct keys, each sent twice (an HA pair): 300 accepted, 300
    // duplicates. Keys 0..200 have channels of their own; keys 200..300 are
    // 20 (channel, group)s of five notifications each (firing, resolved, ...).
    let mut batches = Vec::new();
    for k in 0..300 {
        let b = if k < 200 {
            batch(&format!("k{k}"), &format!("own{k}"), "", 2)
        } else {
            let g = k % 20;
            batch(&format!("k{k}"), &format!("shared{g}"), &format!("g{g}"), 1)
        };
        batches.push(b.clone());
        batches.push(b);
    }
    let results = join_all(batches.into_iter().map(|b| {
        let store = store.clone();
        async move {
            let key = b.dedupe_key.clone();
            (key, store.enqueue(b).await.unwrap())
        }
    }))
    .await;

    let mut by_key: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut superseded = 0;
    for (key, result) in &results {
        let e = by_key.entry(key.clone()).or_default();
        match result {
            Enqueued::Accepted { superseded: s, .. } => {
                e.0 += 1;
                superseded += s.len();
            }
            Enqueued::Duplicate => e.1 += 1,
        }
    }
    assert_eq!(by_key.len(), 300);
    for (key, counts) in &by_key {
        assert_eq!(*counts, (1, 1), "{key}: accepted once, a duplicate once");
    }
    let stored: i64 = query_one(&db.url, "SELECT COUNT(*) FROM messages").await;
    assert_eq!(
        stored,
        200 * 2 + 100,
        "every message of every accepted batch"
    );
    assert_eq!(
        superseded, 80,
        "each of 20 groups of five: four superseded by a newer one"
    );
    let rows: i64 = query_one(
        &db.url,
        "SELECT COUNT(*) FROM messages WHERE group_key <> '' AND state = 'superseded'",
    )
    .await;
    assert_eq!(rows, 80);
    // What is left pending of each group is its newest message.
    let stale: i64 = query_one(
        &db.url,
        "SELECT COUNT(*) FROM messages m WHERE m.group_key <> '' AND m.state = 'pending' \
         AND EXISTS (SELECT 1 FROM messages n WHERE n.group_key = m.group_key \
                     AND n.channel_id = m.channel_id AND n.id > m.id)",
    )
    .await;
    assert_eq!(stale, 0, "only the newest message of a group is pending");
    let pending: i64 = query_one(
        &db.url,
        "SELECT COUNT(*) FROM messages WHERE group_key <> '' AND state = 'pending'",
    )
    .await;
    assert_eq!(pending, 20);
    let keys: i64 = query_one(&db.url, "SELECT COUNT(*) FROM dedupe").await;
    assert_eq!(keys, 300);

    // One more notification of each group, at once: no two share a key or a
    // group, so they are written by the multi-row statements; each
    // supersedes its group's pending message.
    let results = join_all((0..20).map(|g| {
        let store = store.clone();
        async move {
            let b = batch(
                &format!("r2-{g}"),
                &format!("shared{g}"),
                &format!("g{g}"),
                1,
            );
            store.enqueue(b).await.unwrap()
        }
    }))
    .await;
    for r in &results {
        match r {
            Enqueued::Accepted { superseded, .. } => assert_eq!(superseded.len(), 1, "{r:?}"),
            Enqueued::Duplicate => panic!("a fresh key taken for a duplicate"),
        }
    }
    let rows: i64 = query_one(
        &db.url,
        "SELECT COUNT(*) FROM messages WHERE group_key <> '' AND state = 'superseded'",
    )
    .await;
    assert_eq!(rows, 100);
    let newest: i64 = query_one(
        &db.url,
        "SELECT COUNT(*) FROM messages WHERE state = 'pending' AND payload LIKE '%r2-%'",
    )
    .await;
    assert_eq!(newest, 20, "the newest of each group is the one pending");
    store.close().await;
}

/// Ingest's writer leases what it inserts to this process's dispatcher, as
/// many as the dispatcher has room for, and hands them over once committed
/// (they need no claim). A message whose (channel, group) already has one
/// pending (being sent) is not handed over: the claim releases it after
/// the older one, as before. Nothing is handed over twice or lost.
async fn messages_are_handed_over_leased_at_insert_unless_their_group_waits(backend: Backend) {
    use notimeter::store::Recorded;
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database(&backend, dir.path()).await;
    let store = store::connect(&db.url).await.unwrap();
    store.migrate(now_ms()).await.unwrap();
    let mut handed = store.hand_off_to("here", Duration::from_secs(60), 3);
    let waiting = |e: &Enqueued| match e {
        Enqueued::Accepted { waiting, .. } => *waiting,
        Enqueued::Duplicate => panic!("a duplicate"),
    };

    // Two messages of group g on channels c-0, c-1: both handed over.
    let first = store.enqueue(batch("a", "c", "g", 2)).await.unwrap();
    assert_eq!(waiting(&first), 0);
    let a: Vec<_> = (0..2).map(|_| handed.try_recv().unwrap()).collect();
    assert_eq!(
        a.iter().map(|m| m.channel_id.as_str()).collect::<Vec<_>>(),
        ["c-0", "c-1"]
    );
    assert!(a.iter().all(|m| m.attempts == 0 && !m.payload.is_empty()));
    assert!(a[0].id < a[1].id, "ids in insert order: {a:?}");

    // The same group again while those are being sent: kept for the claim.
    let second = store.enqueue(batch("b", "c", "g", 2)).await.unwrap();
    assert_eq!(waiting(&second), 2);
    assert!(handed.try_recv().is_err());

    // Four messages without a group and room for three: one waits.
    let third = store.enqueue(batch("c", "d", "", 4)).await.unwrap();
    assert_eq!(waiting(&third), 1);
    let c: Vec<_> = (0..3).map(|_| handed.try_recv().unwrap()).collect();
    assert!(handed.try_recv().is_err());

    // Another owner's claim finds the one left over only: the handed-over
    // ones are leased, the second batch waits behind the first.
    let now = now_ms();
    let claimed = store.claim("there", now, now + 60_000, 100).await.unwrap();
    assert_eq!(claimed.len(), 1, "{claimed:?}");
    assert_eq!(claimed[0].channel_id, "d-3");

    // The handed-over messages are leased to "here": its records apply.
    let delivered = |m| delivered(m, now);
    let records: Vec<_> = a.iter().chain(&c).map(delivered).collect();
    assert_eq!(
        store.record("there", &records).await.unwrap(),
        vec![Recorded::LeaseLost; 5]
    );
    // Recording them tells that a held-back message may now go (the
    // second batch waits behind group g's first).
    assert_eq!(
        store.record_telling("here", records.clone()).await.unwrap(),
        (vec![Recorded::Applied; 5], true)
    );

    // Group g's first messages are final: the second batch is claimable now.
    let now = now_ms();
    let claimed = store.claim("there", now, now + 60_000, 100).await.unwrap();
    let mut channels: Vec<_> = claimed.iter().map(|m| m.channel_id.as_str()).collect();
    channels.sort();
    assert_eq!(channels, ["c-0", "c-1"]);
    // Those were the last of group g: recording them releases nothing.
    let records: Vec<_> = claimed.iter().map(delivered).collect();
    assert_eq!(
        store
            .record_telling("there", records.clone())
            .await
            .unwrap(),
        (vec![Recorded::Applied; 2], false)
    );

    // Stopped: nothing more is handed over.
    store.stop_handoff();
    let fourth = store.enqueue(batch("d", "e", "", 2)).await.unwrap();
    assert_eq!(waiting(&fourth), 2);
    assert!(handed.try_recv().is_err());
}

/// While the dispatcher says the outbox holds more than it took
/// (`note_backlog`), the writer's transaction that records its outcomes
/// also claims for it, as many as its hand-over queue has room for: what
/// the outcomes let go of its group is among them. A full claim keeps the
/// flag set; one that finds fewer than its room clears it; without the
/// flag, recording claims nothing. Nothing is claimed twice or for another
/// owner.
async fn with_a_backlog_recording_outcomes_claims_in_the_same_transaction(backend: Backend) {
    use notimeter::store::Recorded;
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database(&backend, dir.path()).await;
    let store = store::connect(&db.url).await.unwrap();
    store.migrate(now_ms()).await.unwrap();
    let channels = |ms: &[notimeter::store::ClaimedMessage]| {
        let mut c: Vec<String> = ms.iter().map(|m| m.channel_id.clone()).collect();
        c.sort();
        c
    };

    // Group g's first message (on g-0) and one without a group, claimed by
    // "here"; then group g's second, which waits behind the first, and
    // five more without a group.
    store.enqueue(batch("a", "g", "g", 1)).await.unwrap();
    store.enqueue(batch("p", "p", "", 1)).await.unwrap();
    let now = now_ms();
    let taken = store.claim("here", now, now + 60_000, 2).await.unwrap();
    assert_eq!(channels(&taken), ["g-0", "p-0"]);
    let (g_first, other) = match taken[0].channel_id == "g-0" {
        true => (&taken[0], &taken[1]),
        false => (&taken[1], &taken[0]),
    };
    store.enqueue(batch("b", "g", "g", 1)).await.unwrap();
    store.enqueue(batch("x", "d", "", 5)).await.unwrap();
    let mut handed = store.hand_off_to("here", Duration::from_secs(60), 4);
    let drain = |handed: &mut tokio::sync::mpsc::Receiver<_>| {
        std::iter::from_fn(|| handed.try_recv().ok()).collect::<Vec<_>>()
    };
    let record_one = |m: &notimeter::store::ClaimedMessage| {
        store.record_telling("here", vec![delivered(m, now)])
    };

    // No backlog said: recording claims nothing.
    assert_eq!(
        record_one(other).await.unwrap(),
        (vec![Recorded::Applied], false)
    );
    assert!(handed.try_recv().is_err());

    // A backlog said: recording group g's first claims, in the same
    // transaction, four of the six now due (room for four). That claim was
    // full, so recording one of them claims the other two; fewer than its
    // room, which clears the flag. Group g's second is among the six.
    store.note_backlog(true);
    assert_eq!(
        record_one(g_first).await.unwrap(),
        (vec![Recorded::Applied], true)
    );
    let first = drain(&mut handed);
    assert_eq!(first.len(), 4, "{first:?}");
    assert_eq!(
        record_one(&first[0]).await.unwrap().0,
        vec![Recorded::Applied]
    );
    let second = drain(&mut handed);
    assert_eq!(second.len(), 2, "{second:?}");
    let mut got: Vec<_> = first.into_iter().chain(second).collect();
    assert_eq!(channels(&got), ["d-0", "d-1", "d-2", "d-3", "d-4", "g-0"]);
    assert!(got.iter().all(|m| m.attempts == 0 && !m.payload.is_empty()));
    let now = now_ms();
    let elsewhere = store.claim("there", now, now + 60_000, 100).await.unwrap();
    assert!(elsewhere.is_empty(), "leased to here: {elsewhere:?}");

    // The flag is cleared. Of six new messages four are leased at insert
    // (the queue, emptied above, has room for four); recording every
    // handed-over message then claims nothing, and the two left over wait
    // for a claim.
    got.remove(0); // recorded above
    let e = store.enqueue(batch("e", "e", "", 6)).await.unwrap();
    assert!(matches!(e, Enqueued::Accepted { waiting: 2, .. }), "{e:?}");
    got.extend(drain(&mut handed));
    assert_eq!(got.len(), 9);
    let records: Vec<_> = got.iter().map(|m| delivered(m, now)).collect();
    assert_eq!(
        store.record_telling("here", records).await.unwrap().0,
        vec![Recorded::Applied; 9]
    );
    assert!(handed.try_recv().is_err());
    let now = now_ms();
    let left = store.claim("there", now, now + 60_000, 100).await.unwrap();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.iter().all(|m| m.channel_id.starts_with("e-")));
}

/// The batches waiting for the writer are bounded by bytes: with the writer
/// held (another connection has SQLite's write lock) and one batch as large
/// as the bound waiting, a further request waits for room instead of
/// queueing its batch. Given up on while it waits, it has queued nothing:
/// once the lock is let go, the large batch and a later one are written,
/// the one given up on never is. (Without the bound, the writer would own
/// it and write it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_beyond_the_queued_bytes_waits_and_queues_nothing() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database(&Backend::Sqlite, dir.path()).await;
    let store = store::connect(&db.url).await.unwrap();
    store.migrate(now_ms()).await.unwrap();

    let mut lock = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
    sqlx::Executor::execute(&mut lock, "BEGIN IMMEDIATE")
        .await
        .unwrap();

    let mut large = batch("large", "large", "", 1);
    large.messages[0].payload = "x".repeat(64 << 20);
    let waiting = {
        let store = store.clone();
        tokio::spawn(async move { store.enqueue(large).await })
    };
    // The large batch takes all the room as soon as its task runs.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let given_up = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        store.enqueue(batch("given-up", "given-up", "", 1)),
    )
    .await;
    assert!(
        given_up.is_err(),
        "a request beyond the bound was answered: {given_up:?}"
    );

    sqlx::Executor::execute(&mut lock, "COMMIT").await.unwrap();
    let large = waiting.await.unwrap().expect("the large batch is written");
    assert!(matches!(large, Enqueued::Accepted { .. }));
    let later = store.enqueue(batch("later", "later", "", 1)).await.unwrap();
    assert!(matches!(later, Enqueued::Accepted { .. }));

    let channels: Vec<String> = sqlx::query_scalar("SELECT channel_id FROM messages ORDER BY id")
        .fetch_all(&mut lock)
        .await
        .unwrap();
    assert_eq!(channels, ["large-0", "later-0"]);
    let _ = lock.close().await;
}

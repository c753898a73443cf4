//! The durable forwarder: the bench's no-store forwarder (see
//! `core::forward_handler`) with the least durability added, to show what
//! storing before answering must cost end to end on this machine.
//!
//! For each alert it hands a message to one writer, which takes whatever is
//! waiting and runs `floor`'s statements for it in one transaction
//! (`floor::cycle_statements`: the dedupe key, the pending look-up, the
//! message, leased; on SQLite through rusqlite with notimeter's pragmas,
//! `synchronous = FULL`); once committed it answers 200, then posts the
//! payload to the user's URL on the sink and hands the outcome back to the
//! writer, which makes the message final with its attempt and usage in its
//! next transaction. Nothing else: no routing, no metrics, no claims, no
//! retries, no pacing; a failed send is only logged. It is a floor of
//! notimeter's work, not a product.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Result;
use tokio::sync::{mpsc, oneshot};

use crate::core::{serve_ingest, Forward};
use crate::floor::{cycle_statements, key, remember, Message, PgWriter, SqliteWriter};

/// What the writer is handed.
enum Job {
    /// Store this message and answer its id once committed.
    Store(Message, oneshot::Sender<Option<i64>>),
    /// This message (id, user) was delivered: make it final.
    Delivered(i64, String),
}

struct Durable {
    forward: Forward,
    jobs: mpsc::UnboundedSender<Job>,
    seq: AtomicU64,
}

/// Takes what is waiting after `first`: new messages (with whom to answer)
/// and delivered ones.
#[allow(clippy::type_complexity)]
fn batch(
    first: Job,
    jobs: &mut mpsc::UnboundedReceiver<Job>,
) -> (
    Vec<Message>,
    Vec<oneshot::Sender<Option<i64>>>,
    Vec<(i64, String)>,
) {
    let (mut new, mut answer, mut delivered) = (Vec::new(), Vec::new(), Vec::new());
    let mut next = Some(first);
    while let Some(job) = next {
        match job {
            Job::Store(m, done) => {
                new.push(m);
                answer.push(done);
            }
            Job::Delivered(id, user) => delivered.push((id, user)),
        }
        next = jobs.try_recv().ok();
    }
    (new, answer, delivered)
}

/// Answers each waiting request with its message's id, or with none if the
/// transaction failed; on failure, answers the delivered messages to make
/// final again (they go into the next transaction).
fn answer(
    answer: Vec<oneshot::Sender<Option<i64>>>,
    new: Vec<Message>,
    delivered: Vec<(i64, String)>,
    written: Result<(Vec<i64>, usize)>,
) -> Vec<(i64, String)> {
    let users = new.into_iter().map(|m| m.user).collect();
    let finishing = delivered.len();
    let written = written.and_then(|(ids, finished)| {
        if finished != finishing {
            anyhow::bail!("made {finished} messages final, not {finishing}");
        }
        remember(ids, users)
    });
    match written {
        Ok(ids) => {
            for (done, (id, _)) in answer.into_iter().zip(ids) {
                let _ = done.send(Some(id));
            }
            Vec::new()
        }
        Err(e) => {
            eprintln!("durable forwarder: a write failed: {e:#}");
            for done in answer {
                let _ = done.send(None);
            }
            delivered
        }
    }
}

/// SQLite: the writer on a thread of its own, as notimeter's.
fn sqlite_writer(path: String, mut jobs: mpsc::UnboundedReceiver<Job>) -> Result<()> {
    let mut writer = SqliteWriter::open(&path)?;
    let mut retry = Vec::new();
    while let Some(first) = jobs.blocking_recv() {
        let (new, done, mut delivered) = batch(first, &mut jobs);
        delivered.append(&mut retry);
        let statements =
            cycle_statements(notimeter::clock::now_ms(), &writer.period, &delivered, &new);
        let written = writer.cycle(&statements);
        retry = answer(done, new, delivered, written);
    }
    Ok(())
}

async fn postgres_writer(url: String, mut jobs: mpsc::UnboundedReceiver<Job>) -> Result<()> {
    let mut writer = PgWriter::open(&url).await?;
    let mut retry = Vec::new();
    while let Some(first) = jobs.recv().await {
        let (new, done, mut delivered) = batch(first, &mut jobs);
        delivered.append(&mut retry);
        let statements =
            cycle_statements(notimeter::clock::now_ms(), &writer.period, &delivered, &new);
        let written = writer.cycle(&statements).await;
        retry = answer(done, new, delivered, written);
    }
    Ok(())
}

/// Stores each alert's message, answers, then delivers it.
async fn handler(
    axum::extract::State(d): axum::extract::State<Arc<Durable>>,
    body: axum::body::Bytes,
) -> (axum::http::StatusCode, &'static str) {
    let Ok(envelope) = serde_json::from_slice::<notimeter::domain::alert::Envelope>(&body) else {
        return (axum::http::StatusCode::BAD_REQUEST, "{}");
    };
    let Ok(payload) = std::str::from_utf8(&body) else {
        return (axum::http::StatusCode::BAD_REQUEST, "{}");
    };
    let mut stored = Vec::new();
    for alert in envelope.alerts.iter().flatten() {
        let user = alert.labels.get("user_id").unwrap_or_default().to_owned();
        let (done, id) = oneshot::channel();
        let message = Message {
            key: key(d.seq.fetch_add(1, Ordering::Relaxed)),
            user: user.clone(),
            group_key: envelope.group_key.clone(),
            payload: payload.to_owned(),
        };
        if d.jobs.send(Job::Store(message, done)).is_err() {
            return (axum::http::StatusCode::SERVICE_UNAVAILABLE, "{}");
        }
        let Ok(Some(id)) = id.await else {
            return (axum::http::StatusCode::SERVICE_UNAVAILABLE, "{}");
        };
        stored.push((id, user));
    }
    for (id, user) in stored {
        let (d, body) = (d.clone(), body.clone());
        tokio::spawn(async move {
            if d.forward.post(&user, body).await {
                let _ = d.jobs.send(Job::Delivered(id, user));
            } else {
                eprintln!("durable forwarder: message {id} was not delivered");
            }
        });
    }
    (axum::http::StatusCode::OK, "{\"status\":\"accepted\"}")
}

/// The durable forwarder on `database` (a migrated notimeter database:
/// `sqlite://PATH` or a PostgreSQL URL), posting to `sink`.
pub async fn server(listen: SocketAddr, sink: String, database: String) -> Result<()> {
    let (jobs, waiting) = mpsc::unbounded_channel();
    if let Some(path) = database.strip_prefix("sqlite://") {
        let path = path.to_owned();
        std::thread::spawn(move || {
            if let Err(e) = sqlite_writer(path, waiting) {
                eprintln!("durable forwarder: the writer stopped: {e:#}");
            }
        });
    } else {
        tokio::spawn(async move {
            if let Err(e) = postgres_writer(database, waiting).await {
                eprintln!("durable forwarder: the writer stopped: {e:#}");
            }
        });
    }
    let d = Arc::new(Durable {
        forward: Forward::new(sink)?,
        jobs,
        seq: AtomicU64::new(0),
    });
    let app = axum::Router::new()
        .route("/v1/alertmanager", axum::routing::post(handler))
        .with_state(d);
    serve_ingest(listen, app).await
}

//! The HTTP listener: our own accept loop over hyper's HTTP/1 connections,
//! for the timeouts and the connection cap that `axum::serve` does not have.
//!
//! A connection is always in one of three states, each with a deadline past
//! which it is closed:
//!
//! - **waiting for a request**: a new connection has `header_read_timeout` to
//!   send a complete request head. A kept-alive connection may then idle for
//!   `idle_timeout`; once the next request's first byte arrives, its head has
//!   `header_read_timeout` again. A client sending a byte a second cannot
//!   stretch either: the clock is not reset by bytes, only by a whole request.
//! - **handling a request**: no deadline here; the request body has
//!   `body_read_timeout` from the head on ([`body_deadline`], 408 after it) and
//!   the handler is ours.
//! - **sending the response**: `idle_timeout` without the client taking a
//!   byte of it.
//!
//! **Connection cap.** At most `max_connections` are open. A connection
//! accepted beyond it closes the one that has been waiting for a request the
//! longest (a silent or slow client, or an idle kept-alive connection), so a
//! health check or Alertmanager still gets in while the cap is reached; only
//! when every connection is busy with a request is the new one closed at once.
//! When accepting fails because descriptors ran out (EMFILE), the same
//! longest-waiting connection is closed to free one, the loop backs off
//! briefly, and the error is logged at most every ten seconds instead of
//! spinning.
//!
//! **Shutdown.** Stop accepting, close the connections that wait for a
//! request, let requests in flight finish (keep-alive is switched off for
//! them), and after `shutdown_timeout` close whatever is left.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::body::{Frame, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::{debug, info, warn};

use crate::config::Settings;
use crate::error::ApiError;

/// The listener's limits, from the settings.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub shutdown_timeout: Duration,
}

impl Limits {
    pub fn of(settings: &Settings) -> Self {
        Self {
            header_read_timeout: settings.header_read_timeout,
            idle_timeout: settings.idle_timeout,
            max_connections: settings.max_connections.max(1),
            shutdown_timeout: settings.shutdown_timeout,
        }
    }
}

/// How often an accept error is logged at most.
const ACCEPT_ERROR_LOG_EVERY: Duration = Duration::from_secs(10);
/// How long the accept loop pauses after an error such as EMFILE.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `app` on `listener` until `shutdown` is cancelled, then drains the
/// connections (see the module documentation).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> io::Result<()> {
    warn_if_few_descriptors(limits.max_connections);
    let registry = Arc::new(Registry::default());
    let mut last_logged: Option<Instant> = None;
    let mut suppressed = 0u64;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok((stream, peer)) => (stream, peer),
            // The client gave up before we got to it: nothing to do.
            Err(e) if is_per_connection(&e) => continue,
            Err(e) => {
                // Out of descriptors or memory: free the longest-waiting
                // connection, pause instead of spinning, log now and then.
                registry.evict_longest_waiting(None);
                if last_logged.is_none_or(|t| t.elapsed() >= ACCEPT_ERROR_LOG_EVERY) {
                    warn!(error = %e, suppressed, open = registry.open(), "accepting a connection failed; backing off");
                    last_logged = Some(Instant::now());
                    suppressed = 0;
                } else {
                    suppressed += 1;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => continue,
                }
            }
        };
        tracing::trace!(%peer, "connection accepted");
        let _ = stream.set_nodelay(true);
        let (id, conn) = registry.add();
        if registry.open() > limits.max_connections && !registry.evict_longest_waiting(Some(id)) {
            registry.remove(id);
            debug!(
                max_connections = limits.max_connections,
                "connection cap reached and every connection busy; closing the new one"
            );
            continue;
        }
        tokio::spawn(serve_connection(
            (stream, peer),
            app.clone(),
            conn,
            limits,
            shutdown.clone(),
            registry.clone(),
            id,
        ));
    }
    drop(listener);
    registry.drain(limits.shutdown_timeout).await;
    Ok(())
}

/// Descriptors kept for the database pool, outbound connections and files.
const DESCRIPTOR_RESERVE: u64 = 256;

/// The most a connection's read buffer grows to (hyper's default is about
/// 400 KiB). A buffer keeps the size it grew to for the life of its
/// connection, so a few large webhook bodies would otherwise leave several
/// hundred KiB on each keep-alive connection they came on; a large body is
/// read in more, smaller reads instead.
const READ_BUFFER: usize = 64 * 1024;

/// Warns when the process's soft descriptor limit (Linux: /proc/self/limits)
/// leaves less than [`DESCRIPTOR_RESERVE`] beside `max_connections`.
fn warn_if_few_descriptors(max_connections: usize) {
    let Some(limit) = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| soft_open_files_limit(&limits))
    else {
        return;
    };
    let wanted = max_connections as u64 + DESCRIPTOR_RESERVE;
    if limit < wanted {
        warn!(
            limit,
            max_connections,
            "the open-files limit is below max_connections + {DESCRIPTOR_RESERVE}; raise it \
             (LimitNOFILE=, ulimit -n) to at least {wanted} or lower max_connections"
        );
    }
}

/// The soft "Max open files" of a /proc/<pid>/limits text; None when unlimited.
fn soft_open_files_limit(limits: &str) -> Option<u64> {
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Errors of one connection that `accept` reports; the listener is fine.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

async fn serve_connection(
    (stream, peer): (TcpStream, std::net::SocketAddr),
    app: Router,
    conn: Arc<Conn>,
    limits: Limits,
    shutdown: CancellationToken,
    registry: Arc<Registry>,
    id: u64,
) {
    let io = TokioIo::new(Watched {
        inner: stream,
        conn: conn.clone(),
    });
    let service_conn = conn.clone();
    let service = hyper::service::service_fn(move |mut request: Request<hyper::body::Incoming>| {
        // The client's address, as `into_make_service_with_connect_info` would
        // give it: `/login` throttles by it.
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        let app = app.clone();
        let conn = service_conn.clone();
        conn.request_started();
        async move {
            let response = match app.oneshot(request.map(Body::new)).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            conn.handler_done();
            Ok::<_, Infallible>(response.map(|body| {
                Body::new(ResponseBody {
                    inner: body,
                    _sent: ResponseSent(conn),
                })
            }))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // Our own deadlines below replace hyper's header timer.
    builder.header_read_timeout(None);
    builder.max_buf_size(READ_BUFFER);
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let mut draining = false;
    loop {
        let deadline = conn.deadline(&limits);
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(e) = served {
                    debug!(error = %e, "connection ended with an error");
                }
                break;
            }
            _ = conn.changed.notified() => {}
            _ = sleep_until(deadline.unwrap_or_else(far_future)), if deadline.is_some() => {
                if conn.deadline(&limits).is_some_and(|d| d <= Instant::now()) {
                    debug!("closing a connection past its deadline");
                    break;
                }
            }
            _ = conn.close.cancelled() => {
                debug!("closing a connection to make room");
                break;
            }
            _ = shutdown.cancelled(), if !draining => {
                if conn.is_waiting() {
                    break;
                }
                // Finish the request in flight, then close.
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
    registry.remove(id);
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

/// Milliseconds since the registry's start; 0 means "not set" where it matters.
fn millis_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX) + 1
}

/// What one connection is doing, shared by its reader, its service and its task.
struct Conn {
    epoch: Instant,
    /// Requests whose handler has not returned yet.
    handling: AtomicUsize,
    /// Requests whose response has not been sent completely.
    open_requests: AtomicUsize,
    /// Since when it has waited for a request (opened, or its last response sent).
    waiting_since: AtomicU64,
    /// The first byte of the request it waits for (0: none yet).
    head_started: AtomicU64,
    /// Last time the client took a byte of a response.
    last_write: AtomicU64,
    /// Poked whenever the deadline may have moved.
    changed: Notify,
    /// Cancelled to close it (the cap, or descriptors running out).
    close: CancellationToken,
    /// Whether the registry still counts it as open (neither told to close
    /// nor removed); whoever clears it takes it off the count.
    counted: AtomicBool,
}

impl Conn {
    fn new(epoch: Instant) -> Self {
        let now = millis_since(epoch);
        Self {
            epoch,
            handling: AtomicUsize::new(0),
            open_requests: AtomicUsize::new(0),
            waiting_since: AtomicU64::new(now),
            // A new connection owes its head from the start.
            head_started: AtomicU64::new(now),
            last_write: AtomicU64::new(now),
            changed: Notify::new(),
            close: CancellationToken::new(),
            counted: AtomicBool::new(true),
        }
    }

    fn at(&self, millis: u64) -> Instant {
        self.epoch + Duration::from_millis(millis.saturating_sub(1))
    }

    fn now(&self) -> u64 {
        millis_since(self.epoch)
    }

    /// When this connection is to be closed if nothing happens, or None
    /// while a handler runs.
    fn deadline(&self, limits: &Limits) -> Option<Instant> {
        if self.handling.load(Ordering::Acquire) > 0 {
            return None;
        }
        if self.open_requests.load(Ordering::Acquire) > 0 {
            return Some(self.at(self.last_write.load(Ordering::Acquire)) + limits.idle_timeout);
        }
        match self.head_started.load(Ordering::Acquire) {
            0 => Some(self.at(self.waiting_since.load(Ordering::Acquire)) + limits.idle_timeout),
            started => Some(self.at(started) + limits.header_read_timeout),
        }
    }

    /// Whether it waits for a request (and so may be closed to make room).
    fn is_waiting(&self) -> bool {
        self.open_requests.load(Ordering::Acquire) == 0 && !self.close.is_cancelled()
    }

    fn bytes_read(&self) {
        if self.open_requests.load(Ordering::Acquire) == 0
            && self.head_started.load(Ordering::Acquire) == 0
        {
            self.head_started.store(self.now(), Ordering::Release);
            self.changed.notify_one();
        }
    }

    fn bytes_written(&self) {
        self.last_write.store(self.now(), Ordering::Release);
    }

    fn request_started(&self) {
        self.open_requests.fetch_add(1, Ordering::AcqRel);
        self.handling.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_one();
    }

    fn handler_done(&self) {
        self.last_write.store(self.now(), Ordering::Release);
        self.handling.fetch_sub(1, Ordering::AcqRel);
        self.changed.notify_one();
    }

    fn response_sent(&self) {
        if self.open_requests.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.head_started.store(0, Ordering::Release);
            self.waiting_since.store(self.now(), Ordering::Release);
        }
        self.changed.notify_one();
    }
}

/// The open connections.
#[derive(Default)]
struct Registry {
    connections: Mutex<HashMap<u64, Arc<Conn>>>,
    /// Connections open and not told to close: read on every accept, so
    /// kept as a count rather than found by walking every connection.
    open: AtomicUsize,
    next_id: AtomicU64,
    epoch: std::sync::OnceLock<Instant>,
    removed: Notify,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.connections.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self) -> (u64, Arc<Conn>) {
        let epoch = *self.epoch.get_or_init(Instant::now);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn::new(epoch));
        self.open.fetch_add(1, Ordering::AcqRel);
        self.lock().insert(id, conn.clone());
        (id, conn)
    }

    fn remove(&self, id: u64) {
        if let Some(c) = self.lock().remove(&id) {
            self.uncount(&c);
        }
        self.removed.notify_waiters();
    }

    /// Tells a connection to close; it no longer counts as open.
    fn close(&self, c: &Conn) {
        c.close.cancel();
        self.uncount(c);
    }

    fn uncount(&self, c: &Conn) {
        if c.counted.swap(false, Ordering::AcqRel) {
            self.open.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Connections open and not already told to close.
    fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Closes the connection that has waited for a request the longest (not
    /// `except`); false when every connection is busy.
    fn evict_longest_waiting(&self, except: Option<u64>) -> bool {
        let connections = self.lock();
        let oldest = connections
            .iter()
            .filter(|(id, c)| Some(**id) != except && c.is_waiting())
            .min_by_key(|(_, c)| c.waiting_since.load(Ordering::Acquire));
        match oldest {
            Some((_, c)) => {
                self.close(c);
                true
            }
            None => false,
        }
    }

    /// Waits until every connection has ended, at most `timeout`; then closes
    /// the rest.
    async fn drain(&self, timeout: Duration) {
        let until = Instant::now() + timeout;
        loop {
            let removed = self.removed.notified();
            tokio::pin!(removed);
            removed.as_mut().enable();
            let left = self.lock().len();
            if left == 0 {
                return;
            }
            tokio::select! {
                _ = removed => {}
                _ = sleep_until(until) => {
                    info!(connections = left, "shutdown timeout reached; closing connections still open");
                    for c in self.lock().values() {
                        self.close(c);
                    }
                    return;
                }
            }
        }
    }
}

/// The TCP stream, telling its connection when bytes move.
struct Watched {
    inner: TcpStream,
    conn: Arc<Conn>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.conn.bytes_read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.conn.bytes_written();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.conn.bytes_written();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Marks the response sent when hyper drops its body (sent, or the
/// connection gone).
struct ResponseSent(Arc<Conn>);

impl Drop for ResponseSent {
    fn drop(&mut self) {
        self.0.response_sent();
    }
}

struct ResponseBody {
    inner: Body,
    _sent: ResponseSent,
}

impl HttpBody for ResponseBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Set on a request whose body did not arrive within `body_read_timeout`;
/// layers inside [`body_deadline`] may look at it to learn the final status.
#[derive(Clone, Default)]
pub struct BodyTimedOut(Arc<AtomicBool>);

impl BodyTimedOut {
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Middleware: the request body must arrive within `timeout` from here (the
/// head); otherwise reading it fails and the answer is 408 with the API's
/// error body, and the connection is closed.
pub async fn body_deadline(
    State(timeout): State<Duration>,
    mut request: Request,
    next: Next,
) -> Response {
    if request.body().is_end_stream() {
        return next.run(request).await;
    }
    let timed_out = BodyTimedOut::default();
    request.extensions_mut().insert(timed_out.clone());
    let request = request.map(|inner| {
        Body::new(DeadlineBody {
            inner,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            timed_out: timed_out.clone(),
        })
    });
    let response = next.run(request).await;
    if !timed_out.is_set() {
        return response;
    }
    let mut response = ApiError::RequestTimeout(timeout).into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timed_out: BodyTimedOut,
}

#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
struct BodyTimeout;

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.timed_out.0.store(true, Ordering::Release);
            return Poll::Ready(Some(Err(axum::Error::new(BodyTimeout))));
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_soft_open_files_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             95629                95629                processes \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(soft_open_files_limit(limits), Some(1024));
        assert_eq!(
            soft_open_files_limit(
                "Max open files            unlimited            unlimited            files\n"
            ),
            None
        );
    }

    #[test]
    fn the_open_count_leaves_out_closed_and_removed_connections_once() {
        let registry = Registry::default();
        let (a, conn_a) = registry.add();
        let (b, conn_b) = registry.add();
        let (c, _) = registry.add();
        assert_eq!(registry.open(), 3);
        // One of those waiting (not `c`) is told to close.
        assert!(registry.evict_longest_waiting(Some(c)));
        assert_eq!(registry.open(), 2);
        let (evicted, other) = if conn_a.close.is_cancelled() {
            (a, conn_b)
        } else {
            (b, conn_a)
        };
        // Its task ends later and removes it: not counted twice.
        registry.remove(evicted);
        assert_eq!(registry.open(), 2);
        registry.close(&other);
        assert!(other.close.is_cancelled());
        registry.close(&other);
        assert_eq!(registry.open(), 1);
        registry.remove(if evicted == a { b } else { a });
        assert_eq!(registry.open(), 1);
        registry.remove(c);
        registry.remove(c);
        assert_eq!(registry.open(), 0);
        assert!(registry.lock().is_empty());
    }

    #[tokio::test]
    async fn deadlines_follow_the_connection_state() {
        let limits = Limits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1,
            shutdown_timeout: Duration::from_secs(1),
        };
        let conn = Conn::new(Instant::now());
        // Within a second of now + `after` (the test may be slow, not that slow).
        let about = |after: Duration| {
            let d = conn.deadline(&limits).expect("a deadline");
            let want = Instant::now() + after;
            assert!(
                d <= want && d + Duration::from_secs(1) >= want,
                "{:?} off",
                want - d
            );
        };
        // New: the head is owed from the start.
        about(limits.header_read_timeout);
        assert!(conn.is_waiting());
        conn.request_started();
        assert_eq!(conn.deadline(&limits), None, "no deadline while handling");
        assert!(!conn.is_waiting());
        conn.handler_done();
        // Sending the response: the client must keep taking it.
        about(limits.idle_timeout);
        conn.response_sent();
        // Kept alive: idle until the next request's first byte, then the head.
        about(limits.idle_timeout);
        assert!(conn.is_waiting());
        conn.bytes_read();
        about(limits.header_read_timeout);
    }
}

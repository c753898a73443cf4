//! Streamed response bodies: a producer writes into a buffer, and whenever
//! enough has gathered it goes to the client, so a download of any size uses
//! little memory.

use std::future::Future;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use tokio::sync::mpsc;

/// Where a producer writes; cheap to clone (shared).
#[derive(Clone, Default)]
pub struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Buffer {
    fn len(&self) -> usize {
        self.0.lock().map(|b| b.len()).unwrap_or(0)
    }
    fn take(&self) -> Vec<u8> {
        self.0
            .lock()
            .map(|mut b| std::mem::take(&mut *b))
            .unwrap_or_default()
    }
}

impl std::io::Write for Buffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const CHUNK: usize = 64 * 1024;

pub struct Chunks {
    buffer: Buffer,
    tx: mpsc::Sender<std::io::Result<Bytes>>,
}

impl Chunks {
    pub fn writer(&self) -> Buffer {
        self.buffer.clone()
    }

    /// Sends what is buffered once there is a chunk's worth (or anything, with
    /// `all`). False when the client has gone away.
    pub async fn pass_on(&self, all: bool) -> bool {
        if self.buffer.len() < CHUNK && !all {
            return true;
        }
        let chunk = self.buffer.take();
        chunk.is_empty() || self.tx.send(Ok(Bytes::from(chunk))).await.is_ok()
    }

    /// Writes every row of `rows` with `write` (which also flushes its
    /// writer into the buffer), passing chunks on as they fill, then the
    /// rest. The first error ends the body as a failed transfer; a client that
    /// went away ends it quietly.
    pub async fn write_all<T, E>(
        &self,
        rows: impl futures::Stream<Item = Result<T, E>>,
        mut write: impl FnMut(T) -> anyhow::Result<()>,
    ) where
        E: Into<anyhow::Error>,
    {
        use futures::StreamExt;
        let mut rows = std::pin::pin!(rows);
        while let Some(row) = rows.next().await {
            if let Err(e) = row.map_err(Into::into).and_then(&mut write) {
                return self.fail(e).await;
            }
            if !self.pass_on(false).await {
                return;
            }
        }
        self.pass_on(true).await;
    }

    /// Ends the body with an error (the client sees a broken transfer, not a
    /// truncated file that looks whole).
    pub async fn fail(&self, error: impl std::fmt::Display) {
        tracing::error!(%error, "streamed download failed");
        let _ = self
            .tx
            .send(Err(std::io::Error::other(error.to_string())))
            .await;
    }
}

/// A body produced by `produce` on its own task.
pub fn body<F, Fut>(produce: F) -> Body
where
    F: FnOnce(Chunks) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(produce(Chunks {
        buffer: Buffer::default(),
        tx,
    }));
    Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|c| (c, rx))
    }))
}

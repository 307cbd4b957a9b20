//! Step 1 of capture: the client's body, spooled while hashing (blake3), with bounded memory.
//!
//! Bodies up to `inline_max` stay in memory and go into the log entry itself (no extra fsync);
//! larger ones stream into the blob store through a small bounded channel to a blocking writer
//! thread, so memory stays a few chunks whatever the size. A body that fails half-way (client
//! gone, too large, too slow) leaves nothing behind: the unfinished blob's temp file is removed.

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Body;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::blobs::{BlobError, BlobHash, BlobStore, BlobWriter};
use crate::body::BodyError;

/// Chunks in flight between the network and the blob writer: the memory bound of a large upload.
const CHANNEL_CHUNKS: usize = 8;

/// Where a spooled body lives.
#[derive(Clone, Debug)]
pub enum Stored {
    /// Small body, kept in memory and written into the log entry.
    Inline(Bytes),
    /// Large body, durable in the blob store under its hash.
    Blob(BlobHash),
}

/// A completely received body.
#[derive(Clone, Debug)]
pub struct StoredBody {
    /// Where the bytes are.
    pub stored: Stored,
    /// Total length in bytes.
    pub len: u64,
    /// blake3 of the whole body.
    pub hash: BlobHash,
}

/// Why spooling failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The client's body could not be read completely.
    #[error(transparent)]
    Body(#[from] BodyError),
    /// The blob store could not take it (disk full, I/O error).
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// The blob writer thread died.
    #[error("blob writer task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// A blob being written by a blocking thread.
struct Sink {
    tx: mpsc::Sender<Bytes>,
    task: JoinHandle<Result<BlobWriter, BlobError>>,
}

impl Sink {
    fn start(blobs: &BlobStore) -> Result<Sink, BlobError> {
        let mut writer = blobs.writer()?;
        let (tx, mut rx) = mpsc::channel::<Bytes>(CHANNEL_CHUNKS);
        let task = tokio::task::spawn_blocking(move || {
            while let Some(chunk) = rx.blocking_recv() {
                writer.write(&chunk)?;
            }
            Ok(writer)
        });
        Ok(Sink { tx, task })
    }

    async fn send(&mut self, chunk: Bytes) -> Result<(), SpoolError> {
        if self.tx.send(chunk).await.is_ok() {
            return Ok(());
        }
        // The writer stopped early: it failed, and its error is the one to report.
        let (tx, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.tx, tx));
        match (&mut self.task).await {
            Ok(Err(e)) => Err(e.into()),
            Ok(Ok(_)) => Err(SpoolError::Blob(BlobError::Io {
                op: "write",
                path: "blob writer".into(),
                source: std::io::Error::other("writer stopped"),
            })),
            Err(e) => Err(SpoolError::Task(e)),
        }
    }

    /// Closes the channel and makes the blob durable (fsync, rename, directory fsync).
    async fn finish(self) -> Result<(u64, BlobHash), SpoolError> {
        drop(self.tx);
        let writer = self.task.await.map_err(SpoolError::Task)??;
        let len = writer.len();
        let hash = tokio::task::spawn_blocking(move || writer.finish())
            .await
            .map_err(SpoolError::Task)??;
        Ok((len, hash))
    }
}

/// Reads `body` to its end into memory or the blob store. Nothing durable exists unless this
/// returns `Ok`.
pub async fn spool<B>(
    mut body: B,
    blobs: &BlobStore,
    inline_max: u64,
) -> Result<StoredBody, SpoolError>
where
    B: Body<Data = Bytes, Error = BodyError> + Unpin,
{
    let inline_max = usize::try_from(inline_max).unwrap_or(usize::MAX);
    let mut buf = BytesMut::new();
    let mut sink: Option<Sink> = None;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue; // trailers are not recorded (nor forwarded: the origin gets a plain body)
        };
        match sink.as_mut() {
            Some(s) => s.send(data).await?,
            None if buf.len() + data.len() <= inline_max => buf.extend_from_slice(&data),
            None => {
                let mut s = Sink::start(blobs)?;
                s.send(buf.split().freeze()).await?;
                s.send(data).await?;
                sink = Some(s);
            }
        }
    }
    match sink {
        None => {
            let bytes = buf.freeze();
            Ok(StoredBody {
                len: bytes.len() as u64,
                hash: BlobHash::from(blake3::hash(&bytes)),
                stored: Stored::Inline(bytes),
            })
        }
        Some(s) => {
            let (len, hash) = s.finish().await?;
            Ok(StoredBody {
                stored: Stored::Blob(hash),
                len,
                hash,
            })
        }
    }
}

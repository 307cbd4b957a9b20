//! An origin's answer collected whole: for a captured request (the outcome records a digest of
//! the body, and the client is answered only after that outcome is durable) and for a replay on
//! a mirror (compared with the writer's).
//!
//! Memory is bounded: up to `max_response_buffer` bytes stay in memory, the rest spills to an
//! anonymous temporary file (deleted by the OS when closed) under the data directory.
//!
//! When the node encrypts at rest, a spill file is sealed ([`crate::crypt::stream`]) with a
//! key drawn for that one file and kept only in memory: a CMS response can hold anything the
//! request did (a login page echoing a user name, an account page), and an unlinked file's
//! blocks stay on the disk after it is gone. Once the process forgets the key, they are noise.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use http::{HeaderMap, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};

use crate::blobs::BlobHash;
use crate::crypt::{CryptError, SealWriter, SealedReader, StreamKey};
use crate::error::{full, BoxError, ProxyBody};
use crate::origin::OriginError;

/// A complete origin response.
pub struct Collected {
    /// The origin's status.
    pub status: StatusCode,
    /// The origin's headers, unfiltered.
    pub headers: HeaderMap,
    /// blake3 of the whole body.
    pub digest: BlobHash,
    /// Body length in bytes.
    pub len: u64,
    /// The body, ready to send to the client.
    pub body: ProxyBody,
    /// The whole body, when it fit in memory (for `compare::observe`); `None` when spilled.
    pub memory: Option<Bytes>,
}

/// Reads the whole response body, hashing it, into memory or a spill file (sealed with a
/// one-off key when `seal`).
pub async fn collect(
    resp: Response<Incoming>,
    max_memory: u64,
    spill_dir: &Path,
    seal: bool,
) -> Result<Collected, OriginError> {
    let (parts, mut body) = resp.into_parts();
    let max_memory = usize::try_from(max_memory).unwrap_or(usize::MAX);
    let mut hasher = blake3::Hasher::new();
    let mut memory: Vec<Bytes> = Vec::new();
    let mut in_memory = 0usize;
    let mut spill: Option<Spill> = None;
    let mut len: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| OriginError::Body(e.into()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        hasher.update(&data);
        len += data.len() as u64;
        if spill.is_none() && in_memory + data.len() <= max_memory {
            in_memory += data.len();
            memory.push(data);
            continue;
        }
        let file = match spill.as_mut() {
            Some(f) => f,
            None => {
                let mut f = Spill::new(spill_dir, seal)?;
                for chunk in memory.drain(..) {
                    f.write_all(&chunk).map_err(spill_error)?;
                }
                spill.insert(f)
            }
        };
        // A plain write to an unlinked file lands in the page cache: fast enough to do inline,
        // and only responses larger than the memory budget take this path.
        file.write_all(&data).map_err(spill_error)?;
    }
    let (body, memory) = match spill {
        None => {
            let bytes = Bytes::from(memory.concat());
            (full(bytes.clone()), Some(bytes))
        }
        Some(f) => {
            let frames = futures_util::StreamExt::map(f.into_stream()?, |c| {
                c.map(Frame::data).map_err(BoxError::from)
            });
            (http_body_util::StreamBody::new(frames).boxed_unsync(), None)
        }
    };
    Ok(Collected {
        status: parts.status,
        headers: parts.headers,
        digest: BlobHash::from(hasher.finalize()),
        len,
        body,
        memory,
    })
}

fn spill_error(e: std::io::Error) -> OriginError {
    OriginError::Body(Box::new(e))
}

/// A spill file being written.
enum Spill {
    Plain(File),
    /// Sealed with a key that exists only here and in the reader made from it.
    Sealed(SealWriter<File>, StreamKey),
}

impl Spill {
    fn new(dir: &Path, seal: bool) -> Result<Spill, OriginError> {
        let file = tempfile::tempfile_in(dir).map_err(spill_error)?;
        if !seal {
            return Ok(Spill::Plain(file));
        }
        let crypt_error = |e: CryptError| OriginError::Body(Box::new(e));
        let key = StreamKey::ephemeral().map_err(crypt_error)?;
        let writer = SealWriter::new(file, &key).map_err(crypt_error)?;
        Ok(Spill::Sealed(writer, key))
    }

    fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Spill::Plain(f) => f.write_all(data),
            Spill::Sealed(f, _) => f.write_all(data),
        }
    }

    /// The whole spilled body, from its first byte.
    fn into_stream(self) -> Result<BoxStream<'static, std::io::Result<Bytes>>, OriginError> {
        match self {
            Spill::Plain(mut f) => {
                f.seek(SeekFrom::Start(0)).map_err(spill_error)?;
                // As before encryption existed: tokio's file reader, unchanged cost.
                let stream = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(f));
                Ok(stream.boxed())
            }
            Spill::Sealed(writer, key) => {
                let mut f = writer.finish().map_err(spill_error)?;
                f.seek(SeekFrom::Start(0)).map_err(spill_error)?;
                let reader =
                    SealedReader::new(f, &key).map_err(|e| OriginError::Body(Box::new(e)))?;
                Ok(crate::crypt::reader_stream(reader))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use futures_util::TryStreamExt;

    use super::*;

    fn body() -> Vec<u8> {
        let mut out = b"<p>Welcome CANARY-user</p>".repeat(10_000);
        out.extend_from_slice(b"end");
        out
    }

    async fn round_trip(seal: bool) -> (Vec<u8>, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let data = body();
        let mut spill = Spill::new(dir.path(), seal).unwrap();
        for chunk in data.chunks(7000) {
            spill.write_all(chunk).unwrap();
        }
        // What the disk holds: the file as written so far (sealed segments, or plaintext).
        let mut on_disk = Vec::new();
        let file = match &spill {
            Spill::Plain(f) => f,
            Spill::Sealed(w, _) => w.get_ref(),
        };
        let mut file = file.try_clone().unwrap();
        file.seek(SeekFrom::Start(0)).unwrap();
        file.read_to_end(&mut on_disk).unwrap();
        let chunks: Vec<Bytes> = spill.into_stream().unwrap().try_collect().await.unwrap();
        assert_eq!(chunks.concat(), data);
        (on_disk, data)
    }

    #[tokio::test]
    async fn a_sealed_spill_holds_no_plaintext_and_reads_back_whole() {
        let (on_disk, data) = round_trip(true).await;
        assert!(
            on_disk.len() > data.len() / 2,
            "segments reach the file as they fill"
        );
        assert!(!on_disk.windows(6).any(|w| w == b"CANARY"));
    }

    /// The control: a plain spill does hold the response, so the check above is not blind.
    #[tokio::test]
    async fn a_plain_spill_is_the_response_as_is() {
        let (on_disk, data) = round_trip(false).await;
        assert_eq!(on_disk, data);
    }
}

//! Sealed streams: the at-rest format of blobs and response spill files, written and read one
//! 64 KiB segment at a time, so a 1 GiB upload never sits in memory.
//!
//! # Format (version 1)
//! ```text
//! header   "copyist\0" (8) | version = 1 (1) | key id (8) | nonce prefix (19)   = 36 bytes
//! segment  ciphertext ++ tag (16), repeated
//! ```
//! Segments are STREAM (`aead::stream::EncryptorBE32`) over XChaCha20-Poly1305: each nonce is
//! the random per-stream prefix, a 32-bit segment counter and a last-segment flag, and each
//! segment's associated data is the header. Every segment but the last holds exactly
//! [`SEGMENT`] plaintext bytes; the last holds fewer (0 for an empty stream or one whose
//! length is a multiple of [`SEGMENT`]), so a reader knows a segment is the last by its size,
//! and the plaintext length follows from the file's length ([`plain_len`]). A stream cut at a
//! segment boundary lacks its last segment and fails; so does any reordering or splicing.

use std::fmt;
use std::io::{self, Read, Seek, SeekFrom, Write};

use bytes::Bytes;
use chacha20poly1305::aead::stream::{DecryptorBE32, EncryptorBE32};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use zeroize::Zeroizing;

use super::{random, CryptError, KeyId, KEY_ID_LEN, KEY_LEN, TAG_LEN};

/// Plaintext bytes per segment (all but the last).
pub const SEGMENT: usize = 64 * 1024;
/// The header's first bytes.
const MAGIC: &[u8; 8] = b"copyist\0";
/// The only stream format this build writes and reads.
const VERSION_1: u8 = 1;
/// STREAM's nonce prefix: XChaCha20's 24 bytes less 5 for the counter and the flag.
const PREFIX_LEN: usize = 19;
/// Bytes before the first segment.
pub const HEADER_LEN: usize = MAGIC.len() + 1 + KEY_ID_LEN + PREFIX_LEN;
/// Bytes a full segment takes on disk.
const SEALED_SEGMENT: usize = SEGMENT + TAG_LEN;

/// Bytes a sealed stream of `plain` plaintext bytes takes.
pub fn sealed_len(plain: u64) -> u64 {
    let full = plain / SEGMENT as u64;
    let rest = plain % SEGMENT as u64;
    HEADER_LEN as u64 + full * SEALED_SEGMENT as u64 + rest + TAG_LEN as u64
}

/// The plaintext length of a sealed stream of `sealed` bytes; `None` if no stream has that
/// length (cut short or padded).
pub fn plain_len(sealed: u64) -> Option<u64> {
    let body = sealed.checked_sub(HEADER_LEN as u64)?;
    let full = body / SEALED_SEGMENT as u64;
    let last = (body % SEALED_SEGMENT as u64).checked_sub(TAG_LEN as u64)?;
    Some(full * SEGMENT as u64 + last)
}

// === impl StreamKey ===

/// A key for sealed streams: derived from the node key (blobs) or drawn fresh and kept only in
/// memory (spill files, unreadable once the process forgets it).
#[derive(Clone)]
pub struct StreamKey {
    id: KeyId,
    key: Zeroizing<[u8; KEY_LEN]>,
}

impl fmt::Debug for StreamKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamKey({})", self.id)
    }
}

impl StreamKey {
    pub(super) fn new(id: KeyId, key: Zeroizing<[u8; KEY_LEN]>) -> StreamKey {
        StreamKey { id, key }
    }

    /// A one-off key from the OS's random source, for data that must not outlive the process.
    pub fn ephemeral() -> Result<StreamKey, CryptError> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        random(&mut key[..])?;
        let mut id = [0u8; KEY_ID_LEN];
        random(&mut id)?;
        Ok(StreamKey { id: KeyId(id), key })
    }

    /// The id written into every stream this key seals.
    pub fn id(&self) -> KeyId {
        self.id
    }

    fn aead(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&(*self.key).into())
    }

    /// Reads and checks a stream's header: the magic, the version and the key id.
    pub fn check_header(&self, header: &[u8; HEADER_LEN]) -> Result<(), CryptError> {
        if &header[..MAGIC.len()] != MAGIC {
            return Err(CryptError::Malformed(
                "not an encrypted copyist file (bad magic)".into(),
            ));
        }
        let version = header[MAGIC.len()];
        if version != VERSION_1 {
            return Err(CryptError::Malformed(format!(
                "encrypted with stream format version {version} (this build reads version \
                 {VERSION_1}); written by a newer copyist?"
            )));
        }
        let mut found = [0u8; KEY_ID_LEN];
        found.copy_from_slice(&header[MAGIC.len() + 1..MAGIC.len() + 1 + KEY_ID_LEN]);
        if found != self.id.0 {
            return Err(CryptError::OtherKey {
                found: KeyId(found),
                ours: self.id,
            });
        }
        Ok(())
    }
}

/// The nonce prefix stored in a header.
fn prefix(header: &[u8; HEADER_LEN]) -> &[u8] {
    &header[HEADER_LEN - PREFIX_LEN..]
}

fn sealing_failed() -> io::Error {
    // Only a stream of more than 2^32 segments (256 TiB) gets here.
    io::Error::other("stream too long to encrypt")
}

// === impl SealWriter ===

/// Seals everything written to it into `inner`, one segment at a time. Call
/// [`SealWriter::finish`]: dropping it unfinished leaves a stream without its last segment,
/// which no reader accepts.
pub struct SealWriter<W: Write> {
    inner: W,
    header: [u8; HEADER_LEN],
    /// `None` once `finish` has sealed the last segment.
    encryptor: Option<EncryptorBE32<XChaCha20Poly1305>>,
    /// Plaintext of the segment being filled; sealed in place when full.
    buf: Vec<u8>,
}

impl<W: Write> SealWriter<W> {
    /// Writes a header with a fresh random nonce prefix to `inner`.
    pub fn new(mut inner: W, key: &StreamKey) -> Result<SealWriter<W>, CryptError> {
        let mut header = [0u8; HEADER_LEN];
        header[..MAGIC.len()].copy_from_slice(MAGIC);
        header[MAGIC.len()] = VERSION_1;
        header[MAGIC.len() + 1..MAGIC.len() + 1 + KEY_ID_LEN].copy_from_slice(&key.id.0);
        random(&mut header[HEADER_LEN - PREFIX_LEN..])?;
        inner.write_all(&header)?;
        let encryptor = EncryptorBE32::from_aead(key.aead(), prefix(&header).into());
        Ok(SealWriter {
            inner,
            header,
            encryptor: Some(encryptor),
            buf: Vec::with_capacity(SEALED_SEGMENT),
        })
    }

    /// The inner writer (what reached it so far is the header and the full segments).
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// Seals the last segment and returns the inner writer (not flushed, not fsynced).
    pub fn finish(mut self) -> io::Result<W> {
        let encryptor = self
            .encryptor
            .take()
            .ok_or_else(|| io::Error::other("stream already finished"))?;
        encryptor
            .encrypt_last_in_place(&self.header, &mut self.buf)
            .map_err(|_| sealing_failed())?;
        self.inner.write_all(&self.buf)?;
        Ok(self.inner)
    }

    /// Seals the full segment in `buf` and writes it.
    fn seal_segment(&mut self) -> io::Result<()> {
        let encryptor = self
            .encryptor
            .as_mut()
            .ok_or_else(|| io::Error::other("stream already finished"))?;
        encryptor
            .encrypt_next_in_place(&self.header, &mut self.buf)
            .map_err(|_| sealing_failed())?;
        self.inner.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }
}

impl<W: Write> Write for SealWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let take = data.len().min(SEGMENT - self.buf.len());
        self.buf.extend_from_slice(&data[..take]);
        // Sealed as soon as it is full, never at `finish`: so the last segment is always
        // shorter than SEGMENT, which is how a reader recognises it.
        if self.buf.len() == SEGMENT {
            self.seal_segment()?;
        }
        Ok(take)
    }

    /// Flushes what is sealed; the segment being filled stays in memory until it is full or
    /// `finish` seals it.
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

// === impl SealedReader ===

/// Reads the plaintext of a sealed stream, authenticating each segment before returning any
/// of it. Authentication failures and truncation are `io::ErrorKind::InvalidData` errors
/// wrapping a [`CryptError`].
pub struct SealedReader<R: Read> {
    inner: R,
    key: StreamKey,
    header: [u8; HEADER_LEN],
    /// `None` once the last segment is open.
    decryptor: Option<DecryptorBE32<XChaCha20Poly1305>>,
    /// The current segment's plaintext, and how much of it was returned.
    buf: Vec<u8>,
    pos: usize,
}

impl<R: Read> SealedReader<R> {
    /// Reads and checks the header (magic, version, key id).
    pub fn new(mut inner: R, key: &StreamKey) -> Result<SealedReader<R>, CryptError> {
        let header = read_header(&mut inner, key)?;
        Ok(SealedReader {
            decryptor: Some(DecryptorBE32::from_aead(key.aead(), prefix(&header).into())),
            inner,
            key: key.clone(),
            header,
            buf: Vec::with_capacity(SEALED_SEGMENT),
            pos: 0,
        })
    }

    /// Reads and opens the next segment into `buf`.
    fn next_segment(&mut self) -> io::Result<()> {
        self.buf.resize(SEALED_SEGMENT, 0);
        let n = read_full(&mut self.inner, &mut self.buf)?;
        self.buf.truncate(n);
        self.pos = 0;
        let result = if n == SEALED_SEGMENT {
            // A full segment is never the last (see the module docs).
            match self.decryptor.as_mut() {
                Some(d) => d.decrypt_next_in_place(&self.header, &mut self.buf),
                None => return Ok(()),
            }
        } else if n < TAG_LEN {
            self.buf.clear();
            return Err(invalid(CryptError::Malformed(
                "encrypted file cut short (its last segment is missing)".into(),
            )));
        } else {
            match self.decryptor.take() {
                Some(d) => d.decrypt_last_in_place(&self.header, &mut self.buf),
                None => return Ok(()),
            }
        };
        result.map_err(|_| {
            self.buf.clear();
            self.decryptor = None;
            invalid(CryptError::Auth)
        })
    }
}

impl<R: Read + Seek> SealedReader<R> {
    /// Goes back to the start of the stream.
    pub fn rewind(&mut self) -> Result<(), CryptError> {
        self.inner.seek(SeekFrom::Start(0))?;
        self.header = read_header(&mut self.inner, &self.key)?;
        self.decryptor = Some(DecryptorBE32::from_aead(
            self.key.aead(),
            prefix(&self.header).into(),
        ));
        self.buf.clear();
        self.pos = 0;
        Ok(())
    }
}

impl<R: Read> Read for SealedReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            if self.decryptor.is_none() {
                return Ok(0);
            }
            self.next_segment()?;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn read_header<R: Read>(inner: &mut R, key: &StreamKey) -> Result<[u8; HEADER_LEN], CryptError> {
    let mut header = [0u8; HEADER_LEN];
    if read_full(inner, &mut header)? < HEADER_LEN {
        return Err(CryptError::Malformed(
            "not an encrypted copyist file (shorter than a header)".into(),
        ));
    }
    key.check_header(&header)?;
    Ok(header)
}

fn invalid(e: CryptError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full<R: Read>(inner: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match inner.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// A blocking reader as an async stream of chunks of up to [`SEGMENT`] bytes, each read on
/// tokio's blocking pool (as `tokio::fs::File` does), so decryption never stalls the runtime.
pub fn reader_stream<R: Read + Send + 'static>(reader: R) -> BoxStream<'static, io::Result<Bytes>> {
    futures_util::stream::try_unfold(reader, |mut reader| async move {
        let (reader, chunk) = tokio::task::spawn_blocking(move || {
            let mut chunk = vec![0u8; SEGMENT];
            let n = loop {
                match reader.read(&mut chunk) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            };
            chunk.truncate(n);
            Ok((reader, chunk))
        })
        .await
        .map_err(io::Error::other)??;
        if chunk.is_empty() {
            return Ok(None);
        }
        Ok(Some((Bytes::from(chunk), reader)))
    })
    .boxed()
}

//! The blob store: content-addressed files named by their blake3 hash, laid out as
//! `blobs/ab/cdef…` (the first two hex digits name a subdirectory), written to `blobs/tmp/`
//! first, fsynced, renamed into place, and verified on read. This is the only code that
//! touches the blob directory. It must not know what a blob is for (request bodies, multipart
//! files, pushed blobs on a mirror all look the same here) and must not touch the log.
//!
//! Durability: a blob is durable when [`BlobWriter::finish`] returns, so the capture pipeline
//! can log an entry that names it. `finish` fsyncs the file before the rename (otherwise a
//! crash could leave a correctly named file with missing content) and the subdirectory after
//! it (otherwise the rename itself could be lost).
//!
//! # Encryption at rest
//! Opened with a key ([`BlobStore::open_with_key`]), the store seals every blob as it is
//! written, temp file included, in the streaming format of [`crate::crypt::stream`] (64 KiB
//! segments: memory stays one segment whatever the size), under `ab/cdef….enc`. The name is
//! still the blake3 of the *plaintext*, so dedup and the replication protocol are unchanged.
//! Reads ([`BlobReader`]) decrypt transparently and fail on any tampering; [`BlobReader::len`]
//! is the plaintext length. The suffix tells the two formats apart without guessing from
//! content, so blobs stored before encryption was switched on stay readable (a new write of
//! the same content adds a sealed copy beside the old one). Without a key nothing changes: no
//! suffix, no header, the same cost as before.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::crypt::stream::{plain_len, sealed_len, HEADER_LEN};
use crate::crypt::{CryptError, NodeKey, SealWriter, SealedReader, StreamKey};

/// Name of the directory, inside the store, that holds blobs still being written.
const TMP_DIR: &str = "tmp";
/// Suffix of a sealed blob's file name.
const SEALED_SUFFIX: &str = ".enc";

/// Buffer size for writing and verifying: large enough that a body arriving in small HTTP
/// frames costs few syscalls, small enough to stay out of the way of bounded memory.
const IO_BUF: usize = 64 * 1024;

// === impl BlobHash ===

/// The blake3 hash of a blob's content, which is also its name. `Display`, `Debug` and
/// `FromStr` use 64 hex digits; so does serde in human-readable formats (the admin API's JSON),
/// while binary formats (the log's codec) keep the 32 raw bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobHash(pub [u8; 32]);

impl Serialize for BlobHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for BlobHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<BlobHash, D::Error> {
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            text.parse().map_err(serde::de::Error::custom)
        } else {
            <[u8; 32]>::deserialize(d).map(BlobHash)
        }
    }
}

impl BlobHash {
    /// The hash of the empty input (what an empty body hashes to).
    pub fn of_empty() -> BlobHash {
        blake3::hash(&[]).into()
    }
}

impl From<blake3::Hash> for BlobHash {
    fn from(hash: blake3::Hash) -> BlobHash {
        BlobHash(*hash.as_bytes())
    }
}

impl fmt::Display for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in &self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for BlobHash {
    type Err = BlobError;

    /// Parses exactly 64 hex digits (either case). Anything else is `BlobError::BadHash`: a
    /// hash often arrives from a peer or a URL, so this must never panic.
    fn from_str(s: &str) -> Result<BlobHash, BlobError> {
        let bad = || BlobError::BadHash(s.chars().take(80).collect());
        if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            // Cannot fail after the check above, but stay panic-free anyway.
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(BlobHash(out))
    }
}

// === impl BlobError ===

/// Why a blob operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// A filesystem operation failed; `op` names it (`fsync`, `rename`, …).
    #[error("blob store: {op} {}: {source}", path.display())]
    Io {
        /// The operation that failed.
        op: &'static str,
        /// The file or directory it failed on.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// No blob with this hash is stored.
    #[error("blob store: blob {0} not found")]
    NotFound(BlobHash),
    /// The stored file's content does not hash to its name.
    #[error("blob store: blob {0} is corrupt (its content does not match its hash)")]
    Corrupt(BlobHash),
    /// A string that is not 64 hex digits was given as a hash.
    #[error("blob store: bad blob hash {0:?} (expected 64 hex digits)")]
    BadHash(String),
    /// A sealed blob cannot be read: no key, another key, or damaged (failed authentication).
    #[error("blob store: blob {hash}: {source}")]
    Sealed {
        /// The blob.
        hash: BlobHash,
        /// Why.
        source: CryptError,
    },
}

/// Builds the `map_err` closure for an I/O error on `path`.
fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> BlobError + 'a {
    move |source| BlobError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

// === impl BlobStore ===

/// A handle on the blob directory. Cheap to clone.
#[derive(Clone, Debug)]
pub struct BlobStore {
    dir: Arc<Path>,
    /// Seals every blob written; `None`: plaintext.
    key: Option<Arc<StreamKey>>,
}

/// Makes temp file names unique within this process; the process id keeps them unique across
/// processes that share nothing else.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl BlobStore {
    /// Opens (creating if needed) the blob store at `dir`, and removes temp files left by a
    /// crash: they are blobs whose `finish` never returned, so nothing refers to them.
    ///
    /// All 256 subdirectories are created here, once, so that `finish` normally never creates
    /// a directory: that keeps it at two fsyncs and avoids a race where one writer returns
    /// before another has made a new subdirectory durable.
    pub fn open(dir: &Path) -> Result<BlobStore, BlobError> {
        BlobStore::open_with_key(dir, None)
    }

    /// [`BlobStore::open`], sealing every blob written with `key` when one is given (see the
    /// module docs).
    pub fn open_with_key(dir: &Path, key: Option<&NodeKey>) -> Result<BlobStore, BlobError> {
        let tmp = dir.join(TMP_DIR);
        fs::create_dir_all(&tmp).map_err(io_err("create", &tmp))?;
        for entry in fs::read_dir(&tmp).map_err(io_err("list", &tmp))? {
            let path = entry.map_err(io_err("list", &tmp))?.path();
            match fs::remove_file(&path) {
                Ok(()) => {
                    tracing::debug!(path = %path.display(), "removed leftover blob temp file")
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove", &path)(e)),
            }
        }
        for byte in 0..=255u8 {
            let sub = dir.join(format!("{byte:02x}"));
            match fs::create_dir(&sub) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err("create", &sub)(e)),
            }
        }
        // Make the new directory entries (tmp, the subdirectories, `dir` itself) durable.
        // Only at open, so it costs nothing per blob.
        fsync_dir(dir)?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            fsync_dir(parent)?;
        }
        Ok(BlobStore {
            dir: Arc::from(dir),
            key: key.map(|k| Arc::new(k.stream_key())),
        })
    }

    /// Whether this store seals what it writes: the node encrypts at rest, so other
    /// files it writes (response spills) should not hold plaintext either.
    pub fn is_encrypted(&self) -> bool {
        self.key.is_some()
    }

    /// Starts a new blob: a fresh temp file under `tmp/`.
    pub fn writer(&self) -> Result<BlobWriter, BlobError> {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .dir
            .join(TMP_DIR)
            .join(format!("{}-{n}", std::process::id()));
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        let sink = match &self.key {
            // Segments are written whole, so no BufWriter underneath.
            Some(key) => Sink::Sealed(SealWriter::new(file, key).map_err(|e| match e {
                CryptError::Io(e) => io_err("write", &tmp)(e),
                other => io_err("encrypt", &tmp)(io::Error::other(other)),
            })?),
            None => Sink::Plain(BufWriter::with_capacity(IO_BUF, file)),
        };
        Ok(BlobWriter {
            store: self.clone(),
            tmp,
            file: Some(sink),
            hasher: blake3::Hasher::new(),
            len: 0,
            renamed: false,
        })
    }

    /// Whether a copy of this blob that this node can read is stored (not verified): a plain
    /// one, or a sealed one with this node's key.
    pub fn has(&self, hash: &BlobHash) -> bool {
        let plain = fs::metadata(self.path_of(hash)).is_ok_and(|m| m.is_file());
        plain || self.key.is_some() && self.sealed_by_us(&self.sealed_path_of(hash))
    }

    /// The stored blob's length in bytes (of the plaintext, for a sealed blob).
    pub fn len(&self, hash: &BlobHash) -> Result<u64, BlobError> {
        Ok(self.open_unverified(hash)?.len())
    }

    /// Opens a blob after reading it whole and checking that it hashes to its name (and, if
    /// sealed, that every segment authenticates); returns the reader rewound to the start.
    /// Reading twice is the price of never replaying or shipping a damaged body.
    pub fn open_verified(&self, hash: &BlobHash) -> Result<BlobReader, BlobError> {
        let mut reader = self.open_unverified(hash)?;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; IO_BUF];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    hasher.update(&buf[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(reader.read_error(e)),
            }
        }
        if BlobHash::from(hasher.finalize()) != *hash {
            return Err(BlobError::Corrupt(*hash));
        }
        reader.rewind()?;
        Ok(reader)
    }

    /// Opens a blob without verifying it. Only for the writer's forward of a body it has just
    /// hashed while storing it, and for the informational multipart index; anything that ships,
    /// replays or serves a blob later uses [`BlobStore::open_verified`]. A sealed blob is still
    /// authenticated segment by segment as it is read.
    pub fn open_unverified(&self, hash: &BlobHash) -> Result<BlobReader, BlobError> {
        let sealed_path = self.sealed_path_of(hash);
        let mut refused = None;
        if let Some(key) = &self.key {
            match File::open(&sealed_path) {
                Ok(file) => match BlobReader::sealed(*hash, &sealed_path, file, key) {
                    Ok(reader) => return Ok(reader),
                    // Another key: a plain copy from before may still do.
                    Err(e) => refused = Some(e),
                },
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("open", &sealed_path)(e)),
            }
        }
        let path = self.path_of(hash);
        match File::open(&path) {
            Ok(file) => BlobReader::plain(*hash, &path, file),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(match refused {
                Some(refused) => refused,
                None if self.key.is_none() && sealed_path.is_file() => BlobError::Sealed {
                    hash: *hash,
                    source: CryptError::Malformed(
                        "encrypted with a key this node does not have (no [log] \
                         encryption_key_file is set)"
                            .into(),
                    ),
                },
                None => BlobError::NotFound(*hash),
            }),
            Err(e) => Err(io_err("open", &path)(e)),
        }
    }

    /// `dir/ab/cdef…`.
    fn path_of(&self, hash: &BlobHash) -> PathBuf {
        let hex = hash.to_string();
        self.dir.join(&hex[..2]).join(&hex[2..])
    }

    /// `dir/ab/cdef….enc`.
    fn sealed_path_of(&self, hash: &BlobHash) -> PathBuf {
        let hex = hash.to_string();
        self.dir
            .join(&hex[..2])
            .join(format!("{}{SEALED_SUFFIX}", &hex[2..]))
    }

    /// Whether `path` is a sealed file with this store's key (its header says so).
    fn sealed_by_us(&self, path: &Path) -> bool {
        let Some(key) = &self.key else {
            return false;
        };
        let mut header = [0u8; HEADER_LEN];
        File::open(path)
            .and_then(|mut f| f.read_exact(&mut header))
            .is_ok_and(|()| key.check_header(&header).is_ok())
    }
}

/// fsyncs a directory, so that entries created, renamed or removed in it survive a crash.
fn fsync_dir(dir: &Path) -> Result<(), BlobError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync", dir))
}

// === impl BlobWriter ===

/// A blob being written. Call [`BlobWriter::finish`] to store it; dropping it unfinished
/// removes the temp file, so a client that disconnects mid-body leaves nothing behind.
#[derive(Debug)]
pub struct BlobWriter {
    store: BlobStore,
    tmp: PathBuf,
    /// `Some` until `finish` or `drop` takes it.
    file: Option<Sink>,
    /// Set once the temp file has become the blob; until then `drop` removes the temp file.
    renamed: bool,
    hasher: blake3::Hasher,
    len: u64,
}

impl BlobWriter {
    /// Appends `buf` to the blob, hashing it on the way.
    pub fn write(&mut self, buf: &[u8]) -> Result<(), BlobError> {
        let file = self.file.as_mut().ok_or_else(|| BlobError::Io {
            op: "write",
            path: self.tmp.clone(),
            source: io::Error::other("blob writer already closed"),
        })?;
        let result = match file {
            Sink::Plain(f) => f.write_all(buf),
            Sink::Sealed(f) => f.write_all(buf),
        };
        result.map_err(io_err("write", &self.tmp))?;
        self.hasher.update(buf);
        self.len += buf.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing has been written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Makes the blob durable under its hash and returns the hash.
    ///
    /// Order matters: fsync the content, then rename, then fsync the subdirectory; the caller
    /// may log an entry naming the blob as soon as this returns. If the blob is already stored
    /// (same content seen before), the temp file is dropped instead, without an fsync of its
    /// own. Concurrent finishes of the same content are safe: both renames carry identical,
    /// already-fsynced bytes, and `rename` replaces atomically.
    pub fn finish(mut self) -> Result<BlobHash, BlobError> {
        let hash = BlobHash::from(self.hasher.finalize());
        let sealed = self.store.key.is_some();
        let (dest, stored_len) = if sealed {
            (self.store.sealed_path_of(&hash), sealed_len(self.len))
        } else {
            (self.store.path_of(&hash), self.len)
        };
        let sub = dest.parent().unwrap_or(&self.store.dir).to_path_buf();
        // Normally present since `open`; recreated if someone removed it.
        let created_sub = match fs::create_dir(&sub) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(io_err("create", &sub)(e)),
        };
        // Dedup: an existing file of the right length is the same content (it was fsynced
        // before its rename). A wrong length means a damaged copy, and a sealed copy with
        // another key one this node cannot read: replace either.
        let exists = fs::metadata(&dest).is_ok_and(|m| m.is_file() && m.len() == stored_len)
            && (!sealed || self.store.sealed_by_us(&dest));
        if !exists {
            let file = self
                .file
                .take()
                .ok_or_else(|| io_err("finish", &self.tmp)(io::Error::other("already closed")))?;
            let file = match file {
                Sink::Plain(f) => f
                    .into_inner()
                    .map_err(|e| io_err("write", &self.tmp)(e.into_error()))?,
                Sink::Sealed(f) => f.finish().map_err(io_err("write", &self.tmp))?,
            };
            // Without this a crash could leave a correctly named file with missing content.
            file.sync_all().map_err(io_err("fsync", &self.tmp))?;
            drop(file);
            fs::rename(&self.tmp, &dest).map_err(io_err("rename", &self.tmp))?;
            self.renamed = true;
        }
        // Also on dedup: the writer that renamed the existing copy may not have fsynced the
        // subdirectory yet, and our caller is about to log an entry that names this blob.
        fsync_dir(&sub)?;
        if created_sub {
            fsync_dir(&self.store.dir)?;
        }
        Ok(hash)
        // On dedup (and on any error above) `drop` removes the temp file.
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        match self.file.take() {
            // `into_parts` discards the buffered bytes instead of writing them to a file we
            // are about to delete.
            Some(Sink::Plain(file)) => drop(file.into_parts()),
            // Holds no more than one unsealed segment, dropped with it.
            Some(Sink::Sealed(file)) => drop(file),
            None => {}
        }
        if self.renamed {
            return;
        }
        match fs::remove_file(&self.tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            // Harmless: `BlobStore::open` removes leftovers.
            Err(e) => {
                tracing::warn!(path = %self.tmp.display(), error = %e, "cannot remove blob temp file")
            }
        }
    }
}

/// Where a blob being written goes.
enum Sink {
    Plain(BufWriter<File>),
    Sealed(SealWriter<File>),
}

impl fmt::Debug for Sink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Sink::Plain(_) => "Sink::Plain",
            Sink::Sealed(_) => "Sink::Sealed",
        })
    }
}

// === impl BlobReader ===

/// A stored blob, open for reading: its plaintext, whether it is stored sealed or not. Every
/// byte of a sealed blob is authenticated before it is returned; a failure is an
/// `io::ErrorKind::InvalidData` read error.
pub struct BlobReader {
    hash: BlobHash,
    path: PathBuf,
    /// Plaintext length.
    len: u64,
    source: Source,
}

enum Source {
    Plain(File),
    /// Boxed: the reader carries its cipher state and header, and a plain blob should not pay
    /// for that space.
    Sealed(Box<SealedReader<File>>),
}

impl fmt::Debug for BlobReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobReader")
            .field("hash", &self.hash)
            .field("len", &self.len)
            .field("sealed", &matches!(self.source, Source::Sealed(_)))
            .finish()
    }
}

impl BlobReader {
    fn plain(hash: BlobHash, path: &Path, file: File) -> Result<BlobReader, BlobError> {
        let len = file.metadata().map_err(io_err("stat", path))?.len();
        Ok(BlobReader {
            hash,
            path: path.to_path_buf(),
            len,
            source: Source::Plain(file),
        })
    }

    fn sealed(
        hash: BlobHash,
        path: &Path,
        file: File,
        key: &StreamKey,
    ) -> Result<BlobReader, BlobError> {
        let sealed = |source| BlobError::Sealed { hash, source };
        let stored = file.metadata().map_err(io_err("stat", path))?.len();
        let len = plain_len(stored).ok_or_else(|| {
            sealed(CryptError::Malformed(format!(
                "damaged: {stored} bytes is no encrypted blob's length"
            )))
        })?;
        let reader = SealedReader::new(file, key).map_err(|e| match e {
            CryptError::Io(e) => io_err("read", path)(e),
            other => sealed(other),
        })?;
        Ok(BlobReader {
            hash,
            path: path.to_path_buf(),
            len,
            source: Source::Sealed(Box::new(reader)),
        })
    }

    /// The blob's length in bytes (the plaintext's): what a `Content-Length` must say.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the blob is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The blob as an async stream of chunks, each read (and decrypted) on tokio's blocking
    /// pool, as `tokio::fs::File` would read it.
    pub fn into_stream(self) -> BoxStream<'static, io::Result<Bytes>> {
        crate::crypt::reader_stream(self)
    }

    /// Back to the first byte.
    fn rewind(&mut self) -> Result<(), BlobError> {
        match &mut self.source {
            Source::Plain(file) => file
                .seek(SeekFrom::Start(0))
                .map(|_| ())
                .map_err(io_err("seek", &self.path)),
            Source::Sealed(reader) => reader.rewind().map_err(|e| match e {
                CryptError::Io(e) => io_err("seek", &self.path)(e),
                source => BlobError::Sealed {
                    hash: self.hash,
                    source,
                },
            }),
        }
    }

    /// A read error as a `BlobError`: a failed authentication is the blob's fault, anything
    /// else the file's.
    fn read_error(&self, e: io::Error) -> BlobError {
        if e.kind() == io::ErrorKind::InvalidData {
            if let Some(crypt) = e.get_ref().and_then(|c| c.downcast_ref::<CryptError>()) {
                let source = match crypt {
                    CryptError::Auth => CryptError::Auth,
                    other => CryptError::Malformed(other.to_string()),
                };
                return BlobError::Sealed {
                    hash: self.hash,
                    source,
                };
            }
        }
        io_err("read", &self.path)(e)
    }
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.source {
            Source::Plain(file) => file.read(buf),
            Source::Sealed(reader) => reader.read(buf),
        }
    }
}

#[cfg(test)]
mod tests;

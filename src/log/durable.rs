//! Making sled's files reach the disk. sled 0.34.7's `flush()` writes its log with `pwrite`
//! followed by `sync_file_range(WAIT_BEFORE | WRITE | WAIT_AFTER)`
//! (`src/pagecache/iobuf.rs` lines 730-744), which starts and waits for writeback of those
//! pages but neither flushes the drive's volatile cache nor commits the file's size and block
//! allocation (metadata) to the journal. A power cut after `flush()` can therefore lose an
//! entry that copyist already treated as durable. This file closes that gap with real fsyncs
//! of everything sled writes. It must not decide *when* to commit (that is `Log`) and must not
//! read or write entries.
//!
//! What sled 0.34.7 writes in its directory, and how each is covered:
//! * `db`: every tree, as log segments (`iobuf.rs` 730-744, see above). Covered by
//!   `sync_data` of our own handle on `db` after every flush: fsync acts on the inode, so any
//!   descriptor will do. (sled locks `db` with `flock`, which belongs to sled's open file
//!   description, so our second descriptor neither takes nor releases that lock.)
//! * `blobs/<lsn>`: a page whose serialised size exceeds segment_size / 4 (~128 KiB with the
//!   default 512 KiB segments; `logger.rs` 168-173) is written to its own file with
//!   `create_new` + `write_all` and no fsync at all (`blob_io.rs` 65-96, called from
//!   `iobuf.rs` 545). A sled leaf holds up to 16 entries (`node.rs` 599-606), so a few large
//!   entries are enough. Covered by listing `blobs/` after every flush and fsyncing any new
//!   file and then the directory.
//! * `conf`: written once when the database is created, no fsync (`config.rs` 666-680);
//!   `blobs/` is created with `create_dir_all` (`config.rs` 557-560). Covered at open.
//! * `snap.<lsn>`: written at open only, during recovery (`snapshot.rs` 365, 512-561),
//!   fsynced by sled but renamed without a directory fsync. Covered at open, and by the same
//!   listing of the top directory after every flush in case a later sled writes one.
//!
//! Steady-state cost: one `sync_data` per commit, plus two `readdir`s (no fsync) of small
//! directories, plus one 16-byte `pwrite` of the seal (below). Extra fsyncs happen only when
//! sled has created files.
//!
//! # The seal (`copyist.seal`)
//! sled checks a CRC on every message it reads back, but at open it treats the first message
//! that fails its CRC as the end of the log and silently drops it and everything after it
//! (checked: one flipped byte in an entry of sled 0.34.7's `db` file makes the log open with
//! that entry and all later ones gone). Committed, acknowledged entries would vanish and their
//! seqs be handed out again. So each commit also counts itself (`meta` key `commits`, in the
//! same sled transaction) and, once sled's files are fsynced, that count is written to a
//! 16-byte file beside them (the count and the first 8 bytes of its blake3, rewritten in place
//! with one `pwrite`). At open, a `commits` below the seal means sled lost committed writes:
//! the log refuses to open ([`LogError::Damaged`]) instead of carrying on without them. A log
//! without a seal (older builds) gets one at open.
//!
//! The seal is not fsynced per commit (that would double the fsyncs of a write): it reaches
//! the disk with the kernel's writeback, and a process crash (`kill -9`) loses nothing of it,
//! since the page cache survives. After a power cut the seal may be older than the log, which
//! only weakens the check; it can never be newer than what sled made durable, because it is
//! written after sled's fsync, so it never refuses a healthy log.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
#[cfg(any(test, feature = "failpoints"))]
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::LogError;

/// Counters shared between the [`Syncer`] (behind the writer lock) and lock-free readers.
#[derive(Debug, Default)]
pub(crate) struct SyncStats {
    /// fsyncs performed (files and directories), for tests and metrics.
    pub(crate) fsyncs: AtomicU64,
    /// Failpoint: the next fsync fails as if the disk had reported an error.
    #[cfg(any(test, feature = "failpoints"))]
    pub(crate) fail_next_fsync: AtomicBool,
}

/// The seal's file name, in sled's directory (sled leaves files it does not know alone).
pub(crate) const SEAL_FILE: &str = "copyist.seal";

/// Owns the fsyncs of one sled directory, and its seal.
#[derive(Debug)]
pub(crate) struct Syncer {
    db_path: PathBuf,
    db_file: File,
    seal_path: PathBuf,
    seal_file: File,
    watches: [DirWatch; 2],
    stats: Arc<SyncStats>,
}

impl Syncer {
    /// Called right after sled has opened `dir`, with the commit count sled recovered: checks
    /// it against the seal (creating the seal if there is none), then fsyncs every file sled
    /// may have created without an fsync, then the directories, then the parent (in case
    /// `dir` itself is new).
    pub(crate) fn open(
        dir: &Path,
        stats: Arc<SyncStats>,
        commits: u64,
    ) -> Result<Syncer, LogError> {
        let db_path = dir.join("db");
        let db_file = File::open(&db_path).map_err(io_err("open", &db_path))?;
        let seal_path = dir.join(SEAL_FILE);
        let seal_file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&seal_path)
            .map_err(io_err("open", &seal_path))?;
        let mut bytes = Vec::new();
        io::Read::read_to_end(&mut &seal_file, &mut bytes).map_err(io_err("read", &seal_path))?;
        if bytes.is_empty() {
            // New log, or one from a build without seals: start counting from here.
            write_seal(&seal_file, commits).map_err(io_err("write", &seal_path))?;
        } else {
            let sealed = read_seal(&bytes).ok_or_else(|| {
                LogError::Damaged(format!(
                    "{} is damaged ({} bytes, checksum does not match); it records how many \
                     commits were made durable, so the log cannot be proven complete",
                    seal_path.display(),
                    bytes.len()
                ))
            })?;
            if sealed > commits {
                return Err(LogError::Damaged(format!(
                    "{}: {sealed} commits were made durable ({SEAL_FILE}) but sled recovered \
                     only {commits}: the log's tail is damaged or truncated (sled stops reading \
                     at the first bad checksum) and acknowledged entries may be missing. \
                     Refusing to open rather than lose them silently or reuse their seqs; \
                     restore the log directory from a backup or rebuild this node",
                    dir.display()
                )));
            }
        }
        let mut syncer = Syncer {
            db_path,
            db_file,
            seal_path,
            seal_file,
            // blobs/ first: files there must be durable before the log record naming them.
            watches: [
                DirWatch::new(dir.join("blobs")),
                DirWatch::new(dir.to_path_buf()),
            ],
            stats,
        };
        for watch in &mut syncer.watches {
            let names = watch.list()?;
            for name in &names {
                syncer.stats.sync_path(&watch.dir.join(name))?;
            }
            syncer.stats.sync_path(&watch.dir)?;
            watch.names = names;
        }
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            syncer.stats.sync_path(parent)?;
        }
        Ok(syncer)
    }

    /// Makes everything sled has flushed durable, then seals `commits` (the count this
    /// commit wrote to `meta`). Call after every successful `flush()`.
    pub(crate) fn commit(&mut self, commits: u64) -> Result<(), LogError> {
        for watch in &mut self.watches {
            let names = watch.list()?;
            let mut created = false;
            for name in names.difference(&watch.names) {
                self.stats.sync_path(&watch.dir.join(name))?;
                created = true;
            }
            if created {
                self.stats.sync_path(&watch.dir)?;
            }
            watch.names = names;
        }
        // sync_data is enough: it includes the file size and block allocation, which is what
        // reading the data back needs; only timestamps are left to the journal.
        self.stats
            .fsync(|| self.db_file.sync_data(), "fsync", &self.db_path)?;
        // Only now: the seal must never count a commit that is not durable in sled.
        write_seal(&self.seal_file, commits).map_err(io_err("write", &self.seal_path))
    }
}

/// The seal's bytes: the count, big-endian, and the first 8 bytes of its blake3.
fn seal_bytes(commits: u64) -> [u8; 16] {
    let count = commits.to_be_bytes();
    let mut out = [0; 16];
    out[..8].copy_from_slice(&count);
    out[8..].copy_from_slice(&blake3::hash(&count).as_bytes()[..8]);
    out
}

/// Rewrites the seal in place (16 bytes at offset 0: within one sector, so never torn).
fn write_seal(file: &File, commits: u64) -> io::Result<()> {
    file.write_all_at(&seal_bytes(commits), 0)
}

/// The count a seal holds, if its bytes are intact.
fn read_seal(bytes: &[u8]) -> Option<u64> {
    let count = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
    (bytes.len() == 16 && seal_bytes(count) == bytes).then_some(count)
}

impl SyncStats {
    /// Runs one fsync-like call, counting it, or fails it if the failpoint is armed.
    fn fsync(
        &self,
        call: impl FnOnce() -> io::Result<()>,
        op: &'static str,
        path: &Path,
    ) -> Result<(), LogError> {
        #[cfg(any(test, feature = "failpoints"))]
        if self.fail_next_fsync.swap(false, Ordering::SeqCst) {
            return Err(io_err(op, path)(io::Error::other("injected fsync failure")));
        }
        call().map_err(io_err(op, path))?;
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// fsyncs a file or directory by path. A file that vanished in between (sled removes old
    /// snapshots and blobs) needs no fsync.
    fn sync_path(&self, path: &Path) -> Result<(), LogError> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("open", path)(e)),
        };
        self.fsync(|| file.sync_all(), "fsync", path)
    }
}

/// Remembers which names a directory held at the last commit, to spot new files.
#[derive(Debug)]
struct DirWatch {
    dir: PathBuf,
    names: BTreeSet<OsString>,
}

impl DirWatch {
    fn new(dir: PathBuf) -> DirWatch {
        DirWatch {
            dir,
            names: BTreeSet::new(),
        }
    }

    /// The names of the regular files in the directory now (none if it does not exist).
    fn list(&self) -> Result<BTreeSet<OsString>, LogError> {
        let read = match fs::read_dir(&self.dir) {
            Ok(read) => read,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
            Err(e) => return Err(io_err("list", &self.dir)(e)),
        };
        let mut names = BTreeSet::new();
        for entry in read {
            let entry = entry.map_err(io_err("list", &self.dir))?;
            if entry.file_type().is_ok_and(|t| t.is_file()) {
                names.insert(entry.file_name());
            }
        }
        Ok(names)
    }
}

/// Builds the `map_err` closure for an I/O error on `path`.
pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> LogError + 'a {
    move |source| LogError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

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
//! directories. Extra fsyncs happen only when sled has created files.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
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

/// Owns the fsyncs of one sled directory.
#[derive(Debug)]
pub(crate) struct Syncer {
    db_path: PathBuf,
    db_file: File,
    watches: [DirWatch; 2],
    stats: Arc<SyncStats>,
}

impl Syncer {
    /// Called right after sled has opened `dir`: fsyncs every file sled may have created
    /// without an fsync, then the directories, then the parent (in case `dir` itself is new).
    pub(crate) fn open(dir: &Path, stats: Arc<SyncStats>) -> Result<Syncer, LogError> {
        let db_path = dir.join("db");
        let db_file = File::open(&db_path).map_err(io_err("open", &db_path))?;
        let mut syncer = Syncer {
            db_path,
            db_file,
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

    /// Makes everything sled has flushed durable. Call after every successful `flush()`.
    pub(crate) fn commit(&mut self) -> Result<(), LogError> {
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
            .fsync(|| self.db_file.sync_data(), "fsync", &self.db_path)
    }
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

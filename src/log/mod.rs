//! The log: every captured request as a numbered entry, stored durably in sled before the
//! origin sees it; on a mirror, every entry the writer shipped, stored durably before the
//! mirror's origin sees it, with its apply state and the mirror's halt. This module owns the
//! `log/` directory and is the only code that names sled. It must not know about HTTP, the
//! origin or peers, and must not touch the blob store: entries only *name* blobs by hash.
//!
//! # Durability
//! Every write (`append_pending`, `settle`, `resolve`, `set_paused`, `begin_apply`,
//! `record_rejected`, `finish_apply`, `retry`, `skip`, crash recovery at `open`) is one sled
//! transaction, then `flush()`, then an fsync of sled's files (see `durable.rs` for why
//! `flush()` alone is not enough). A write returns only after all three; that is what lets
//! capture forward a request to the origin, and apply replay one. Any failure in those steps
//! latches the log as poisoned: every later write fails with [`LogError::Poisoned`] without
//! touching the disk, until restart. (After a failed fsync Linux may mark the dirty pages
//! clean, so a retry could "succeed" while the data is lost; failing closed is the only honest
//! answer.)
//!
//! The one exception is a mirror's shipping cursor ([`Log::set_cursor`]): written to sled
//! without a flush of its own, so it reaches the disk with the next durable write, sled's
//! periodic flush or a clean shutdown. Losing it only makes the shipper resend entries the
//! mirror already has, which the mirror answers from its log.
//!
//! # Layout
//! Four sled trees:
//! * `entries`: seq → entry, key big-endian so iteration is in seq order. On a mirror the seq
//!   is the writer's.
//! * `meta`: `next_seq`; on a mirror `applied_seq`, `halt` (absent while streaming) and
//!   `retry` (the halted seq an operator released for one more apply); on the writer
//!   `cursor/<mirror>` and `mirror/<mirror>` (paused flag and its audit trail).
//! * `unsettled`: seq → empty, the entries still `Pending` (writer) or `Applying` (mirror), so
//!   recovery at open need not scan the whole log.
//! * `cookies` (mirror): cookie name + writer's value → the mirror's value.
//!
//! # Encryption at rest
//! Opened with a key ([`Log::open_with_key`]), every value is sealed in `Log::commit` just
//! before its transaction, and opened on read; the format and what stays plaintext are in
//! `codec.rs`. Values written without a key stay readable; a sealed value read without the
//! key (or with another) is a [`LogError::Codec`] naming the key ids, never a panic.

// pub(crate) for `crate::fuzzing` and `crate::bench_api` only.
pub(crate) mod codec;
mod durable;
mod entry;
mod mirror_side;
#[cfg(test)]
mod replication_tests;
#[cfg(test)]
mod sealed_tests;
mod stored;
#[cfg(test)]
mod tests;
mod writer_side;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::{IVec, Transactional, Tree};
use tokio::sync::watch;

pub use entry::{
    AuditRecord, BodyRef, Entry, EntryState, Event, Halt, IllegalTransition, MultipartIndex,
    Outcome, PartInfo, RequestRecord, Seq,
};

use codec::{decode_u64, encode_entry, encode_u64, key_seq, seq_key};
use durable::{io_err, SyncStats, Syncer};

use crate::crypt::{NodeKey, ValueCipher};
use stored::decode_meta;

/// The trees' names, as sled knows them and as sealed values' associated data names them.
const ENTRIES: &str = "entries";
const META: &str = "meta";
const UNSETTLED: &str = "unsettled";
const COOKIES: &str = "cookies";

/// The `meta` key holding the next sequence number to assign (big-endian u64). Stored in the
/// same transaction as each new entry so that a seq, once handed out, is never handed out
/// again, even after the entries themselves are removed by retention.
const META_NEXT_SEQ: &[u8] = b"next_seq";
/// How many durable commits this log has made (big-endian u64), checked against the seal at
/// open (`durable.rs`).
const META_COMMITS: &[u8] = b"commits";
/// Mirror: the highest seq finished here (applied, skipped or stored rejected); big-endian u64.
const META_APPLIED_SEQ: &[u8] = b"applied_seq";
/// Mirror: the current [`Halt`], encoded like an entry; absent while streaming.
const META_HALT: &[u8] = b"halt";
/// Mirror: the halted seq an operator released with `retry`, until `begin_apply` takes it.
const META_RETRY: &[u8] = b"retry";

// === impl LogError ===

/// Why a log operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// sled reported an error (I/O underneath, or corruption).
    #[error("log: sled: {0}")]
    Sled(#[from] sled::Error),
    /// A filesystem operation outside sled failed (the fsyncs, creating the directory).
    #[error("log: {op} {}: {source}", path.display())]
    Io {
        /// The operation that failed.
        op: &'static str,
        /// The file or directory it failed on.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The log is provably missing writes it made durable, or its seal is damaged (see
    /// `durable.rs`): refusing to open.
    #[error("log damaged: {0}")]
    Damaged(String),
    /// Stored bytes could not be decoded (unknown version, damage).
    #[error("log: cannot decode: {0}")]
    Codec(String),
    /// No entry with this seq.
    #[error("log: entry {0} not found")]
    NotFound(Seq),
    /// The requested state change is not allowed.
    #[error("log: {0}")]
    Illegal(#[from] IllegalTransition),
    /// An earlier write failed; the log refuses writes until the node restarts.
    #[error("log: refusing writes after an earlier write failure; restart the node")]
    Poisoned,
    /// Mirror: a shipped entry is not the next one. `got < expected` is a resend of an entry
    /// this mirror already finished (its stored result is in [`Log::get`]); `got > expected`
    /// is a gap.
    #[error("log: out of order: expected seq {expected}, got {got}")]
    OutOfOrder {
        /// The seq this mirror accepts next (`applied_seq + 1`).
        expected: Seq,
        /// The seq that was offered.
        got: Seq,
    },
    /// Mirror: halted; nothing more is applied until an operator retries or skips.
    #[error("log: {0}")]
    Halted(Halt),
    /// Mirror: `retry` while streaming (nothing to retry).
    #[error("log: not halted")]
    NotHalted,
    /// Mirror: `skip` of a seq the mirror is not halted at.
    #[error("log: cannot skip {seq}: {}", match .halted {
        Some(h) => format!("the mirror is halted at {h}"),
        None => "the mirror is not halted".to_owned(),
    })]
    NotHaltedAt {
        /// The seq the operator asked to skip.
        seq: Seq,
        /// Where the mirror is halted, if it is.
        halted: Option<Seq>,
    },
    /// Writer: `resolve` of an entry that is not in doubt.
    #[error("log: entry {0} is not in doubt")]
    NotInDoubt(Seq),
    /// Writer: `resolve` of an entry that was replayed from a writer (this node is a mirror);
    /// a mirror's in-doubt entry is settled with `retry` or `skip`.
    #[error("log: entry {0} was replayed from the writer; use retry or skip on a mirror")]
    ReplayedEntry(Seq),
    /// Mirror: the entry is `Applying` already (a resend raced the first attempt).
    #[error("log: entry {0} is being applied")]
    ApplyInProgress(Seq),
    /// Mirror: a shipped entry is in a state that cannot be stored this way (`begin_apply`
    /// takes `Accepted` entries, `record_rejected` takes `Rejected` ones).
    #[error("log: entry {seq} was shipped {state}, expected {expected}")]
    ShippedState {
        /// The shipped entry.
        seq: Seq,
        /// The state it was shipped in.
        state: EntryState,
        /// The state this call takes.
        expected: EntryState,
    },
    /// Mirror: a retried entry's request differs from the one stored under that seq.
    #[error("log: entry {0} was shipped again with a different request")]
    ConflictingEntry(Seq),
}

// === impl Log ===

/// A handle on the log. Cheap to clone; all clones share one database.
#[derive(Clone, Debug)]
pub struct Log {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: sled::Db,
    entries: Tree,
    meta: Tree,
    unsettled: Tree,
    cookies: Tree,
    /// Serialises writes: seq assignment and "commit then fsync" must not interleave.
    writer: Mutex<Writer>,
    /// The highest seq assigned, readable without the lock.
    last: AtomicU64,
    /// Mirror: the highest seq finished; changed only under the writer lock after a commit.
    applied: AtomicU64,
    /// Mirror: the current halt; changed only under the writer lock after a commit.
    halt: Mutex<Option<Halt>>,
    /// Writer: the highest settled seq, for shippers.
    settled: watch::Sender<Seq>,
    /// Latched by any failed write, flush or fsync.
    poisoned: AtomicBool,
    stats: Arc<SyncStats>,
    /// Seals every value written and opens sealed values read; `None`: plaintext.
    cipher: Option<ValueCipher>,
}

#[derive(Debug)]
struct Writer {
    /// The seq the next `append_pending` gets.
    next: Seq,
    /// Mirror: the halted seq released by `retry`, until `begin_apply` takes it.
    retry: Option<Seq>,
    /// Commits made durable so far (`meta` `commits`; the seal, see `durable.rs`).
    commits: u64,
    syncer: Syncer,
}

/// One key to set or remove, in one of the trees. `Entry`, `Meta` and `Cookie` values are
/// sealed by `commit` when the log has a key; the others hold no client data.
#[derive(Clone)]
enum Write {
    Entry(Seq, IVec),
    NextSeq(Seq),
    Unsettled(Seq),
    Settled(Seq),
    /// An encoded value (`codec::encode_value`).
    Meta(Vec<u8>, IVec),
    /// A counter (big-endian u64).
    MetaU64(Vec<u8>, u64),
    MetaRemove(Vec<u8>),
    /// A cookie map key (`cookie_key`, not yet blinded) and the mirror's value.
    Cookie(Vec<u8>, IVec),
}

impl Write {
    fn entry(entry: &Entry) -> Result<Write, LogError> {
        Ok(Write::Entry(entry.seq, encode_entry(entry)?.into()))
    }

    fn meta_u64(key: &[u8], value: u64) -> Write {
        Write::MetaU64(key.to_vec(), value)
    }
}

/// How long `open` waits for sled's file lock. A handle dropped in this process releases it
/// only once sled's background flusher lets go (a few milliseconds later); another running node
/// on the same `data_dir` keeps it, and is reported after this wait.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Opens sled, waiting (bounded) for its lock while a previous handle in this process winds down.
fn open_db(dir: &Path, cache_capacity: u64) -> Result<sled::Db, LogError> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        let result = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_capacity)
            .open();
        match result {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return Ok(other?),
        }
    }
}

impl Log {
    /// Opens (creating if needed) the log in `dir`, with sled's page cache limited to
    /// `cache_capacity` bytes.
    ///
    /// Entries found `Pending` were logged but never settled: the node stopped between
    /// logging and recording the origin's answer, so nobody knows whether the origin applied
    /// them. They are durably turned `InDoubt` and their seqs returned, for the caller to
    /// report.
    pub fn open(dir: &Path, cache_capacity: u64) -> Result<(Log, Vec<Seq>), LogError> {
        Log::open_with_key(dir, cache_capacity, None)
    }

    /// [`Log::open`], sealing every value written with `key` when one is given (see the
    /// module docs). Values written without a key stay readable; sealed values need the key.
    pub fn open_with_key(
        dir: &Path,
        cache_capacity: u64,
        key: Option<&NodeKey>,
    ) -> Result<(Log, Vec<Seq>), LogError> {
        let cipher = key.map(NodeKey::value_cipher);
        std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        let db = open_db(dir, cache_capacity)?;
        let entries = db.open_tree(ENTRIES)?;
        let meta = db.open_tree(META)?;
        let unsettled = db.open_tree(UNSETTLED)?;
        let cookies = db.open_tree(COOKIES)?;
        if let Some((_, newest)) = entries.last()? {
            codec::check_key(cipher.as_ref(), &newest)?;
        }
        // Before any entry is written: make what sled created or recovered (files, the trees
        // just opened) durable, fsyncing the files sled never fsyncs itself.
        db.flush()?;
        let stats = Arc::new(SyncStats::default());
        let commits = read_u64(&meta, META_COMMITS)?.unwrap_or(0);
        let syncer = Syncer::open(dir, stats.clone(), commits)?;
        let next = next_seq(&entries, &meta)?;
        let applied = read_u64(&meta, META_APPLIED_SEQ)?.unwrap_or(0);
        let retry = read_u64(&meta, META_RETRY)?.map(Seq);
        let halt = match meta.get(META_HALT)? {
            Some(bytes) => Some(decode_meta::<Halt>(
                cipher.as_ref(),
                META_HALT,
                &bytes,
                "halt",
            )?),
            None => None,
        };
        let last = Seq(next.0 - 1);
        let log = Log {
            inner: Arc::new(Inner {
                db,
                entries,
                meta,
                unsettled,
                cookies,
                writer: Mutex::new(Writer {
                    next,
                    retry,
                    commits,
                    syncer,
                }),
                last: AtomicU64::new(last.0),
                applied: AtomicU64::new(applied),
                halt: Mutex::new(halt),
                // After recovery nothing is pending: everything up to `last` is settled.
                settled: watch::Sender::new(last),
                poisoned: AtomicBool::new(false),
                stats,
                cipher,
            }),
        };
        let recovered = log.recover()?;
        Ok((log, recovered))
    }

    /// Turns every `Pending` entry (writer) and every `Applying` entry (mirror) `InDoubt`, and
    /// halts a mirror at the first such entry, in one durable commit.
    fn recover(&self) -> Result<Vec<Seq>, LogError> {
        let mut writer = self.lock_writer()?;
        let mut writes = Vec::new();
        let mut recovered = Vec::new();
        let mut halt = None;
        for key in self.inner.unsettled.iter().keys() {
            let seq = key_seq(&key?)?;
            writes.push(Write::Settled(seq));
            let Some(mut entry) = self.get(seq)? else {
                tracing::warn!(%seq, "unsettled index names a missing entry; dropping it");
                continue;
            };
            let was = entry.state;
            entry.state = match entry.state.next(Event::CrashRecovered) {
                Ok(state) => state,
                Err(illegal) => {
                    tracing::warn!(%seq, %illegal, "unsettled index names a settled entry; dropping it");
                    continue;
                }
            };
            if was == EntryState::Applying {
                // UNKNOWN and HALT: the mirror's origin may have applied it. Never guess.
                let this = Halt {
                    seq,
                    reason: Halt::IN_DOUBT.to_owned(),
                    detail: format!(
                        "crashed while applying seq={seq}: the mirror's CMS may or may not have \
                         applied it"
                    ),
                };
                entry.halt = Some(this.clone());
                // Keys iterate in seq order: the first one is where the mirror stops.
                if halt.is_none() {
                    halt = Some(this);
                }
            } else {
                entry.settled_unix_ms = Some(now_unix_ms());
            }
            writes.push(Write::entry(&entry)?);
            recovered.push(seq);
        }
        let current = self.lock_halt().clone();
        let halt = match (current, halt) {
            (None, Some(halt)) => {
                writes.push(Write::Meta(
                    META_HALT.to_vec(),
                    codec::encode_value(&halt)?.into(),
                ));
                Some(halt)
            }
            (Some(current), Some(found)) => {
                // Cannot happen (nothing is applied while halted); keep the older halt.
                tracing::warn!(%current, %found, "in-doubt apply found on a halted mirror");
                None
            }
            (_, None) => None,
        };
        if !writes.is_empty() {
            fail::fail_point!("during_recovery", |_| std::process::abort());
            self.commit(&mut writer, &writes)?;
            tracing::warn!(
                ?recovered,
                "entries found pending or applying at open are now in-doubt"
            );
        }
        if let Some(halt) = halt {
            tracing::error!(%halt, "mirror halted: crashed while applying");
            *self.lock_halt() = Some(halt);
        }
        Ok(recovered)
    }

    /// Logs a captured request as the next entry, `Pending`, and returns its seq.
    ///
    /// Durable when this returns: the caller may forward the request to the origin only after
    /// this succeeds, so that a crash can never leave the origin changed by a request the log
    /// does not know about.
    pub fn append_pending(&self, request: RequestRecord) -> Result<Seq, LogError> {
        let mut writer = self.lock_writer()?;
        let seq = writer.next;
        if seq.0 == u64::MAX {
            // Unreachable by counting; only a damaged `next_seq` or key gets here. Refuse
            // rather than wrap around and overwrite entry 0 or 1.
            return Err(LogError::Codec(format!("seq space exhausted at {seq}")));
        }
        debug_assert_eq!(
            seq.0,
            self.inner.last.load(Ordering::SeqCst) + 1,
            "seq must increase by exactly 1"
        );
        let entry = Entry {
            seq,
            state: EntryState::Pending,
            request,
            outcome: None,
            settled_unix_ms: None,
            writer_state: None,
            mirror_outcome: None,
            halt: None,
            audit: Vec::new(),
        };
        let writes = [
            Write::Entry(seq, encode_entry(&entry)?.into()),
            Write::NextSeq(seq.next()),
            Write::Unsettled(seq),
        ];
        self.commit(&mut writer, &writes)?;
        writer.next = seq.next();
        self.inner.last.store(seq.0, Ordering::SeqCst);
        Ok(seq)
    }

    /// Records the origin's answer for a `Pending` entry and moves it on according to
    /// `event` (`OriginAccepted`, `OriginRejected` or `OutcomeUnknown`; any other event is
    /// refused); returns the new state. Durable when this returns, so the answer the client
    /// gets always matches what the mirrors will be told. Wakes [`Log::subscribe`]rs.
    pub fn settle(&self, seq: Seq, event: Event, outcome: Outcome) -> Result<EntryState, LogError> {
        let mut writer = self.lock_writer()?;
        let mut entry = self.get(seq)?.ok_or(LogError::NotFound(seq))?;
        if entry.state != EntryState::Pending
            || !matches!(
                event,
                Event::OriginAccepted | Event::OriginRejected | Event::OutcomeUnknown
            )
        {
            return Err(IllegalTransition {
                from: entry.state,
                event,
            }
            .into());
        }
        entry.state = entry.state.next(event)?;
        entry.outcome = Some(outcome);
        entry.settled_unix_ms = Some(now_unix_ms());
        let writes = [Write::entry(&entry)?, Write::Settled(seq)];
        self.commit(&mut writer, &writes)?;
        self.publish_settled(seq, false);
        Ok(entry.state)
    }

    /// The entry with this seq, if stored.
    pub fn get(&self, seq: Seq) -> Result<Option<Entry>, LogError> {
        match self.inner.entries.get(seq_key(seq))? {
            Some(bytes) => self.decode_stored(seq, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Up to `limit` entries with seq below `before` (all if `None`), newest first.
    pub fn list(&self, before: Option<Seq>, limit: usize) -> Result<Vec<Entry>, LogError> {
        let range = match before {
            Some(before) => self.inner.entries.range(..seq_key(before)),
            None => self.inner.entries.iter(),
        };
        range
            .rev()
            .take(limit)
            .map(|item| self.decode_pair(item))
            .collect()
    }

    /// Entries from `from` (inclusive) upwards, in seq order. Reads lazily: entries appended
    /// while iterating may or may not be included.
    pub fn iter_from(&self, from: Seq) -> impl Iterator<Item = Result<Entry, LogError>> + '_ {
        self.inner
            .entries
            .range(seq_key(from)..)
            .map(move |item| self.decode_pair(item))
    }

    /// The highest seq assigned so far (`Seq(0)` for an empty log).
    pub fn last_seq(&self) -> Seq {
        Seq(self.inner.last.load(Ordering::SeqCst))
    }

    /// Whether a write has failed; if so every write fails until restart.
    pub fn is_poisoned(&self) -> bool {
        self.inner.poisoned.load(Ordering::SeqCst)
    }

    /// How many fsyncs (files and directories) this handle has performed since open,
    /// including those done by `open` itself. Lets tests pin the cost of a write.
    pub fn fsync_count(&self) -> u64 {
        self.inner.stats.fsyncs.load(Ordering::Relaxed)
    }

    /// Failpoint: the next fsync fails as an I/O error would, which poisons the log.
    #[cfg(any(test, feature = "failpoints"))]
    pub fn fail_next_fsync(&self) {
        self.inner
            .stats
            .fail_next_fsync
            .store(true, Ordering::SeqCst);
    }

    /// Takes the writer lock, refusing if the log is poisoned. Checked under the lock, so a
    /// write queued behind a failing one does not touch the disk either.
    fn lock_writer(&self) -> Result<MutexGuard<'_, Writer>, LogError> {
        // A panic while holding the lock may have left a commit half-done: treat it like a
        // failed write.
        let guard = self.inner.writer.lock().map_err(|_| self.poison())?;
        if self.is_poisoned() {
            return Err(LogError::Poisoned);
        }
        Ok(guard)
    }

    /// Applies `writes` atomically and makes them durable: transaction, flush, fsync. Any
    /// failure poisons the log. With a key, values are sealed first (before the transaction,
    /// which sled may run more than once), so nothing unsealed ever reaches sled's files.
    fn commit(&self, writer: &mut Writer, writes: &[Write]) -> Result<(), LogError> {
        let sealed: Vec<Write>;
        let writes = match &self.inner.cipher {
            Some(cipher) => {
                // Nothing is written yet: a failure here (no randomness) does not poison.
                sealed = writes
                    .iter()
                    .map(|w| w.sealed(cipher))
                    .collect::<Result<_, _>>()?;
                &sealed[..]
            }
            None => writes,
        };
        let commits = writer.commits.saturating_add(1);
        let result = self
            .transact(writes, commits)
            .and_then(|()| {
                fail::fail_point!("after_append_before_sync", is_append(writes), |_| {
                    std::process::abort()
                });
                self.inner.db.flush().map_err(LogError::from)
            })
            .and_then(|_bytes| writer.syncer.commit(commits));
        if result.is_ok() {
            writer.commits = commits;
        }
        if let Err(error) = &result {
            self.poison();
            tracing::error!(%error, "log write failed; refusing writes until restart");
        }
        result
    }

    /// One sled transaction over the four trees. sled makes a multi-tree transaction
    /// atomic across crashes (`transaction.rs` 404-414: the writes are sealed as one batch).
    /// `commits` is stored with them (see the seal in `durable.rs`).
    fn transact(&self, writes: &[Write], commits: u64) -> Result<(), LogError> {
        let inner = &*self.inner;
        let trees = (
            &inner.entries,
            &inner.meta,
            &inner.unsettled,
            &inner.cookies,
        );
        trees
            .transaction(|(entries, meta, unsettled, cookies)| {
                for write in writes {
                    match write {
                        Write::Entry(seq, bytes) => entries.insert(&seq_key(*seq), bytes.clone()),
                        Write::NextSeq(seq) => meta.insert(META_NEXT_SEQ, &encode_u64(seq.0)),
                        Write::Unsettled(seq) => unsettled.insert(&seq_key(*seq), &[]),
                        Write::Settled(seq) => unsettled.remove(&seq_key(*seq)),
                        Write::Meta(key, value) => meta.insert(key.as_slice(), value.clone()),
                        Write::MetaU64(key, value) => {
                            meta.insert(key.as_slice(), &encode_u64(*value))
                        }
                        Write::MetaRemove(key) => meta.remove(key.as_slice()),
                        Write::Cookie(key, value) => cookies.insert(key.as_slice(), value.clone()),
                    }?;
                }
                meta.insert(META_COMMITS, &encode_u64(commits))?;
                Ok::<_, ConflictableTransactionError<std::convert::Infallible>>(())
            })
            .map_err(|e| match e {
                TransactionError::Storage(e) => LogError::Sled(e),
                TransactionError::Abort(never) => match never {},
            })
    }

    /// Latches the poisoned flag; returns the error to give the caller.
    fn poison(&self) -> LogError {
        self.inner.poisoned.store(true, Ordering::SeqCst);
        LogError::Poisoned
    }

    /// The current halt. A panic elsewhere while holding this lock cannot leave the value
    /// half-written (it is replaced whole), so a poisoned lock is still read.
    fn lock_halt(&self) -> MutexGuard<'_, Option<Halt>> {
        self.inner
            .halt
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Tells subscribers that `seq` is settled. `always`: wake them even if the value does not
    /// grow (a resolve below the current value changes what they may ship).
    fn publish_settled(&self, seq: Seq, always: bool) {
        self.inner.settled.send_if_modified(|value| {
            let grew = seq > *value;
            if grew {
                *value = seq;
            }
            grew || always
        });
    }
}

/// Reads a big-endian u64 meta value.
fn read_u64(meta: &Tree, key: &[u8]) -> Result<Option<u64>, LogError> {
    match meta.get(key)? {
        Some(bytes) => decode_u64(&bytes).map(Some).map_err(|len| {
            LogError::Codec(format!(
                "meta {} of {len} bytes",
                String::from_utf8_lossy(key)
            ))
        }),
        None => Ok(None),
    }
}

/// The seq to assign next: past both the stored `next_seq` and the last entry, so it is
/// never reused whichever of the two survived.
fn next_seq(entries: &Tree, meta: &Tree) -> Result<Seq, LogError> {
    let stored = match meta.get(META_NEXT_SEQ)? {
        Some(bytes) => decode_u64(&bytes)
            .map_err(|len| LogError::Codec(format!("meta next_seq of {len} bytes")))?,
        None => 1,
    };
    let after_last = match entries.last()? {
        // Saturating: the key was read from disk, and a damaged one must not panic.
        Some((key, _)) => key_seq(&key)?.0.saturating_add(1),
        None => 1,
    };
    Ok(Seq(stored.max(after_last).max(1)))
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Whether `writes` are [`Log::append_pending`]'s (a new writer entry), for the
/// `after_append_before_sync` crash point. Without the `failpoints` feature nothing calls it.
#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
fn is_append(writes: &[Write]) -> bool {
    matches!(
        writes,
        [Write::Entry(..), Write::NextSeq(_), Write::Unsettled(_)]
    )
}

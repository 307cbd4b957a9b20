//! Shipping (writer): one [`Shipper`] task per mirror walks the log from where that mirror
//! stands and sends it every settled entry, in order, with a bounded window in flight.
//!
//! * The mirror's own `applied_seq` (from `GET state`) is where each session starts: resends are
//!   harmless (the mirror answers an applied entry with its recorded result), so nothing here
//!   needs to be durable before sending; the per-mirror cursor is kept for status and retention.
//! * Rejected entries are sent too, marked rejected: the mirror records them without applying,
//!   so its sequence stays gap-free.
//! * An `in-doubt` entry stops shipping to every mirror until an operator resolves it.
//! * Transport errors retry with backoff (lag grows, nothing halts). A mirror that halts is
//!   left alone until an operator acts on it. One mirror never waits for another, and no client
//!   request ever waits for a shipper.
//!
//! `ship` reads `log` and `blobs`; it never calls the origin.

pub mod peer;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::{FuturesOrdered, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::blobs::BlobStore;
use crate::log::{BodyRef, Entry, EntryState, Halt, Log, Seq};
use crate::shutdown::Shutdown;
use crate::wire::{Control, PeerState};
use peer::{EntryReply, Peer, PeerError};

/// First pause after a transport error; doubles up to `retry_max`.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// What the writer knows about one mirror, for status, metrics and the CLI.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MirrorStatus {
    /// The mirror's name.
    pub name: String,
    /// "connecting", "streaming", "catching-up", "paused", "halted", "blocked" (at an in-doubt
    /// entry on the writer).
    pub state: String,
    /// Highest sequence number the mirror reported finished.
    pub applied_seq: u64,
    /// The mirror's halt, when halted.
    pub halt: Option<Halt>,
    /// The in-doubt entry shipping waits at, if any.
    pub blocked_at: Option<u64>,
    /// The last transport error, if the last attempt failed.
    pub last_error: Option<String>,
}

/// Ships the log to one mirror. Cheap to clone.
#[derive(Clone)]
pub struct Shipper {
    inner: Arc<Inner>,
}

struct Inner {
    peer: Peer,
    log: Log,
    blobs: BlobStore,
    window: usize,
    retry_max: Duration,
    status: Mutex<MirrorStatus>,
    /// Wakes the task early: pause/resume, an operator action, shutdown checks.
    wake: Notify,
}

/// How a session ended without a transport error.
enum SessionEnd {
    /// Start a new session now (the mirror's position must be re-read).
    Resync,
    /// Wait to be woken (paused, halted) before the next session.
    Idle,
}

impl Shipper {
    /// A shipper for `peer`.
    pub fn new(
        peer: Peer,
        log: Log,
        blobs: BlobStore,
        window: usize,
        retry_max: Duration,
    ) -> Shipper {
        let status = MirrorStatus {
            name: peer.name().to_string(),
            state: "connecting".into(),
            ..MirrorStatus::default()
        };
        Shipper {
            inner: Arc::new(Inner {
                peer,
                log,
                blobs,
                window: window.max(1),
                retry_max,
                status: Mutex::new(status),
                wake: Notify::new(),
            }),
        }
    }

    /// The mirror's name.
    pub fn name(&self) -> &str {
        self.inner.peer.name()
    }

    /// A snapshot of what this shipper knows.
    pub fn status(&self) -> MirrorStatus {
        self.inner
            .status
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Wakes the task (after pause/resume or an operator action).
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// Relays an operator action to the mirror, then wakes the task so it resumes shipping.
    pub async fn control(&self, control: &Control) -> Result<PeerState, PeerError> {
        let state = self.inner.peer.control(control).await?;
        self.set(|s| {
            s.halt = state.halt.clone();
            s.applied_seq = state.applied_seq;
        });
        self.wake();
        Ok(state)
    }

    /// Runs until shutdown.
    pub async fn run(self, mut shutdown: Shutdown) {
        let mut backoff = FIRST_BACKOFF;
        while !shutdown.is_fired() {
            let paused = self.inner.log.paused(self.name()).unwrap_or(false);
            let end = if paused {
                self.set(|s| s.state = "paused".into());
                Ok(SessionEnd::Idle)
            } else {
                self.session(&mut shutdown).await
            };
            let pause = match end {
                Ok(SessionEnd::Resync) => {
                    backoff = FIRST_BACKOFF;
                    continue;
                }
                Ok(SessionEnd::Idle) => {
                    backoff = FIRST_BACKOFF;
                    self.inner.retry_max
                }
                Err(e) => {
                    let text = crate::error::error_chain(&e);
                    tracing::warn!(mirror = %self.name(), error = %text, "shipping failed; retrying");
                    self.set(|s| {
                        s.state = "connecting".into();
                        s.last_error = Some(text);
                    });
                    let wait = backoff;
                    backoff = (backoff * 2).min(self.inner.retry_max);
                    wait
                }
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = self.inner.wake.notified() => {}
                () = shutdown.recv() => {}
            }
        }
    }

    /// One connection's worth of shipping: learn where the mirror stands, then stream.
    async fn session(&self, shutdown: &mut Shutdown) -> Result<SessionEnd, PeerError> {
        let inner = &self.inner;
        let state = inner.peer.state().await?;
        self.set(|s| {
            s.applied_seq = state.applied_seq;
            s.halt = state.halt.clone();
            s.last_error = None;
        });
        if state.halt.is_some() {
            self.set(|s| s.state = "halted".into());
            return Ok(SessionEnd::Idle);
        }
        // The cursor only moves forward; a mirror reporting less (re-initialised) is simply
        // sent what it lacks.
        if inner
            .log
            .cursor(self.name())
            .is_ok_and(|c| c.0 < state.applied_seq)
        {
            let _ = inner.log.set_cursor(self.name(), Seq(state.applied_seq));
        }
        let mut settled = inner.log.subscribe();
        let mut next = state.applied_seq + 1;
        let mut in_flight = FuturesOrdered::new();
        let mut queued: VecDeque<u64> = VecDeque::new();
        loop {
            if inner.log.paused(self.name()).unwrap_or(false) {
                return Ok(SessionEnd::Resync);
            }
            let last = settled.borrow_and_update().0;
            let mut blocked = None;
            while in_flight.len() < inner.window && next <= last {
                let entry = match inner.log.get(Seq(next)) {
                    Ok(Some(e)) => e,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::error!(seq = next, error = %e, "cannot read entry to ship");
                        break;
                    }
                };
                match entry.state {
                    EntryState::Accepted | EntryState::Rejected => {}
                    EntryState::InDoubt => {
                        blocked = Some(next);
                        break;
                    }
                    // Not settled yet; the subscription will wake us.
                    _ => break,
                }
                queued.push_back(next);
                in_flight.push_back(self.send(entry));
                next += 1;
            }
            let lag = last.saturating_sub(self.status().applied_seq);
            self.set(|s| {
                s.blocked_at = blocked;
                s.state = if blocked.is_some() && in_flight.is_empty() {
                    "blocked".into()
                } else if lag as usize > inner.window {
                    "catching-up".into()
                } else {
                    "streaming".into()
                };
            });
            if in_flight.is_empty() {
                tokio::select! {
                    changed = settled.changed() => if changed.is_err() { return Ok(SessionEnd::Idle) },
                    () = inner.wake.notified() => {}
                    () = tokio::time::sleep(inner.retry_max) => {}
                    () = shutdown.recv() => return Ok(SessionEnd::Idle),
                }
                continue;
            }
            // A newly settled entry joins the window at once, without waiting for the replies
            // already in flight (otherwise a caught-up mirror lags a whole round trip per write).
            let can_grow = in_flight.len() < inner.window;
            let reply = tokio::select! {
                reply = in_flight.next() => reply,
                changed = settled.changed(), if can_grow => {
                    if changed.is_err() {
                        return Ok(SessionEnd::Idle);
                    }
                    continue;
                }
                () = shutdown.recv() => return Ok(SessionEnd::Idle),
            };
            let Some(reply) = reply else { continue };
            let seq = queued.pop_front().unwrap_or(0);
            fail::fail_point!("mid_replicate_send", |_| std::process::abort());
            match reply? {
                EntryReply::Done(answer) => {
                    if let Some(halt) = answer.halt {
                        tracing::error!(mirror = %self.name(), seq, reason = %halt.reason, detail = %halt.detail, "mirror halted");
                        self.set(|s| {
                            s.state = "halted".into();
                            s.halt = Some(halt);
                        });
                        return Ok(SessionEnd::Idle);
                    }
                    if inner
                        .log
                        .cursor(self.name())
                        .is_ok_and(|c| c.0 < answer.seq)
                    {
                        let _ = inner.log.set_cursor(self.name(), Seq(answer.seq));
                    }
                    self.set(|s| s.applied_seq = s.applied_seq.max(answer.seq));
                }
                EntryReply::Halted(halt) => {
                    self.set(|s| {
                        s.state = "halted".into();
                        s.halt = Some(halt);
                    });
                    return Ok(SessionEnd::Idle);
                }
                // Our window ran ahead of what the mirror accepts, or it restarted: re-read.
                EntryReply::Gap(expected) => {
                    tracing::debug!(mirror = %self.name(), seq, expected, "gap; resyncing");
                    return Ok(SessionEnd::Resync);
                }
                EntryReply::BlobMissing => {
                    return Err(PeerError::Decode(format!(
                        "mirror lacks the body of entry {seq}"
                    )))
                }
            }
        }
    }

    /// Pushes the entry's blob if needed, then the entry.
    async fn send(&self, entry: Entry) -> Result<EntryReply, PeerError> {
        if let BodyRef::Blob(hash) = &entry.request.body {
            if entry.state == EntryState::Accepted {
                self.inner.peer.ensure_blob(&self.inner.blobs, hash).await?;
            }
        }
        self.inner.peer.send_entry(&entry).await
    }

    fn set(&self, f: impl FnOnce(&mut MirrorStatus)) {
        if let Ok(mut s) = self.inner.status.lock() {
            f(&mut s);
        }
    }
}

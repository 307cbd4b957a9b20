//! The writer's side of replication state: the watch shippers wait on, each mirror's shipping
//! cursor and pause flag, and the operator's resolution of in-doubt entries. Only state
//! lives here; shipping itself is `ship`'s.

use serde::{Deserialize, Serialize};
use sled::IVec;
use tokio::sync::watch;

use super::codec::{decode_u64, encode_u64, encode_value};
use super::{AuditRecord, EntryState, Event, Log, LogError, Seq, Write};

/// Prefix of a mirror's cursor key in `meta`: `cursor/<mirror>` → big-endian u64.
const CURSOR_PREFIX: &str = "cursor/";
/// Prefix of a mirror's control key in `meta`: `mirror/<mirror>` → [`MirrorControl`].
const CONTROL_PREFIX: &str = "mirror/";

/// What an operator set for one mirror, stored under `mirror/<name>`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct MirrorControl {
    /// Shipping to this mirror is paused.
    paused: bool,
    /// Every pause and resume, oldest first.
    audit: Vec<AuditRecord>,
}

fn cursor_key(mirror: &str) -> Vec<u8> {
    format!("{CURSOR_PREFIX}{mirror}").into_bytes()
}

fn control_key(mirror: &str) -> Vec<u8> {
    format!("{CONTROL_PREFIX}{mirror}").into_bytes()
}

impl Log {
    /// A receiver whose value is the highest seq whose entry is settled (`Accepted`,
    /// `Rejected` or `InDoubt`). Set at open and after every `settle` and `resolve`; a
    /// `resolve` wakes receivers even when the value does not grow. Shippers wait on it; they
    /// must still read each entry's state, since an entry below the value may be `InDoubt`.
    pub fn subscribe(&self) -> watch::Receiver<Seq> {
        self.inner.settled.subscribe()
    }

    /// The last seq `mirror` acknowledged (`Seq(0)` if none).
    pub fn cursor(&self, mirror: &str) -> Result<Seq, LogError> {
        match self.inner.meta.get(cursor_key(mirror))? {
            Some(bytes) => decode_cursor(mirror, &bytes),
            None => Ok(Seq::NONE),
        }
    }

    /// Moves `mirror`'s cursor to `seq`. Not made durable on its own (see the module docs):
    /// a lost update only causes resends the mirror recognises. Never moves backwards: an
    /// older `seq` is a bug in the caller (a `debug_assert` fails) and is otherwise ignored.
    /// Does not take the writer lock, so it never waits for another write's fsync.
    pub fn set_cursor(&self, mirror: &str, seq: Seq) -> Result<(), LogError> {
        if self.is_poisoned() {
            return Err(LogError::Poisoned);
        }
        let new = IVec::from(&encode_u64(seq.0)[..]);
        let old = self
            .inner
            .meta
            .fetch_and_update(cursor_key(mirror), |old| match old {
                // Keep a later cursor, and damaged bytes (reported below), as they are.
                Some(old) if decode_u64(old).map_or(true, |old| old >= seq.0) => {
                    Some(IVec::from(old))
                }
                _ => Some(new.clone()),
            })?;
        if let Some(old) = old {
            let old = decode_cursor(mirror, &old)?;
            debug_assert!(
                old <= seq,
                "cursor of {mirror} moved backwards from {old} to {seq}"
            );
        }
        Ok(())
    }

    /// Whether shipping to `mirror` is paused.
    pub fn paused(&self, mirror: &str) -> Result<bool, LogError> {
        Ok(self.control(mirror)?.paused)
    }

    /// Pauses or resumes shipping to `mirror`, recording `audit`. Durable when this returns.
    pub fn set_paused(
        &self,
        mirror: &str,
        paused: bool,
        audit: AuditRecord,
    ) -> Result<(), LogError> {
        let mut writer = self.lock_writer()?;
        let mut control = self.control(mirror)?;
        control.paused = paused;
        control.audit.push(audit);
        let write = Write::Meta(control_key(mirror), encode_value(&control)?.into());
        self.commit(&mut writer, &[write])
    }

    /// Every pause and resume of `mirror`, oldest first.
    pub fn mirror_audit(&self, mirror: &str) -> Result<Vec<AuditRecord>, LogError> {
        Ok(self.control(mirror)?.audit)
    }

    /// Settles an `InDoubt` entry by an operator's word: `applied` means the origin did apply
    /// it (→ `Accepted`, shipped), otherwise → `Rejected` (never shipped). Records `audit`
    /// on the entry. Durable when this returns; wakes [`Log::subscribe`]rs.
    pub fn resolve(
        &self,
        seq: Seq,
        applied: bool,
        audit: AuditRecord,
    ) -> Result<EntryState, LogError> {
        let mut writer = self.lock_writer()?;
        let mut entry = self.get(seq)?.ok_or(LogError::NotFound(seq))?;
        if entry.writer_state.is_some() {
            return Err(LogError::ReplayedEntry(seq));
        }
        if entry.state != EntryState::InDoubt {
            return Err(LogError::NotInDoubt(seq));
        }
        let event = if applied {
            Event::OperatorApplied
        } else {
            Event::OperatorNotApplied
        };
        entry.state = entry.state.next(event)?;
        entry.audit.push(audit);
        self.commit(&mut writer, &[Write::entry(&entry)?])?;
        tracing::warn!(%seq, state = %entry.state, "in-doubt entry resolved by an operator");
        self.publish_settled(seq, true);
        Ok(entry.state)
    }

    fn control(&self, mirror: &str) -> Result<MirrorControl, LogError> {
        let key = control_key(mirror);
        match self.inner.meta.get(&key)? {
            Some(bytes) => self.decode_meta(&key, &bytes, "mirror control"),
            None => Ok(MirrorControl::default()),
        }
    }
}

fn decode_cursor(mirror: &str, bytes: &[u8]) -> Result<Seq, LogError> {
    decode_u64(bytes)
        .map(Seq)
        .map_err(|len| LogError::Codec(format!("cursor of {mirror}: {len} bytes")))
}

//! The mirror's side: storing shipped entries in order, their apply state, the mirror's halt,
//! the operator's retry and skip, and the session-cookie map. The rules (ORDER, ONCE, HALT,
//! UNKNOWN in RELIABILITY.md) are enforced here, under the writer lock, so that no caller can
//! apply out of order or past a halt. Only state lives here; replaying is `apply`'s.
//!
//! A mirror accepts exactly `applied_seq + 1`. It is stored `Applying` (durable) before the
//! request goes to the mirror's origin, then `finish_apply` makes it `Applied` (advancing
//! `applied_seq`) or `Diverged` (halting). While halted nothing is stored, except that
//! `retry` releases the halted seq for one more `begin_apply`, and `skip` moves past it.

use std::sync::atomic::Ordering;

use sled::IVec;

use super::codec::{self, encode_value, Place};
use super::{
    AuditRecord, Entry, EntryState, Event, Halt, IllegalTransition, Log, LogError, Outcome, Seq,
    Write, Writer, COOKIES, META_APPLIED_SEQ, META_HALT, META_RETRY,
};

/// The `cookies` key for a cookie name and the writer's value: the name's length (u32
/// big-endian), the name, the value; unambiguous whatever bytes either holds.
fn cookie_key(name: &str, writer_value: &str) -> Vec<u8> {
    let len = u32::try_from(name.len()).unwrap_or(u32::MAX);
    let mut key = Vec::with_capacity(4 + name.len() + writer_value.len());
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(name.as_bytes());
    key.extend_from_slice(writer_value.as_bytes());
    key
}

impl Log {
    /// The highest seq finished on this mirror: applied, skipped, or stored as rejected by the
    /// writer. Every seq up to it is in the log. `Seq(0)` on a fresh mirror (and on a writer).
    pub fn applied_seq(&self) -> Seq {
        Seq(self.inner.applied.load(Ordering::SeqCst))
    }

    /// Where and why this mirror is halted; `None` while streaming. Survives restarts: only
    /// [`Log::retry`] and [`Log::skip`] clear it.
    pub fn halt(&self) -> Option<Halt> {
        self.lock_halt().clone()
    }

    /// Stores a shipped `Accepted` entry as `Applying`, durably, before the caller sends it to
    /// the mirror's origin. `entry` is the writer's entry as shipped; its `state` is kept in
    /// `writer_state` and its `outcome` stays the writer's.
    ///
    /// Refused unless `entry.seq` is exactly `applied_seq + 1`
    /// ([`LogError::OutOfOrder`]: below is a resend, whose stored result [`Log::get`] has;
    /// above is a gap) and the mirror is not halted ([`LogError::Halted`]). The one entry
    /// allowed while the halt is being retried is the halted seq after [`Log::retry`]: it goes
    /// back to `Applying` (the `OperatorRetry` transition), keeping its audit trail; its
    /// request must equal the stored one ([`LogError::ConflictingEntry`]).
    pub fn begin_apply(&self, entry: Entry) -> Result<(), LogError> {
        let mut writer = self.lock_writer()?;
        let seq = entry.seq;
        self.check_next(seq)?;
        let retrying = writer.retry == Some(seq);
        let stored =
            match self.get(seq)? {
                None => {
                    let state = entry.state.next(Event::ApplyStarted).map_err(|_| {
                        LogError::ShippedState {
                            seq,
                            state: entry.state,
                            expected: EntryState::Accepted,
                        }
                    })?;
                    Entry {
                        state,
                        writer_state: Some(entry.state),
                        mirror_outcome: None,
                        halt: None,
                        ..entry
                    }
                }
                Some(mut existing) if retrying => {
                    if existing.request != entry.request {
                        return Err(LogError::ConflictingEntry(seq));
                    }
                    existing.state = existing.state.next(Event::OperatorRetry)?;
                    // The earlier attempt's answer; the halt stays as history.
                    existing.mirror_outcome = None;
                    existing
                }
                Some(existing) if existing.state == EntryState::Applying => {
                    return Err(LogError::ApplyInProgress(seq));
                }
                Some(existing) => {
                    return Err(IllegalTransition {
                        from: existing.state,
                        event: Event::ApplyStarted,
                    }
                    .into());
                }
            };
        let mut writes = vec![Write::entry(&stored)?, Write::Unsettled(seq)];
        if retrying {
            writes.push(Write::MetaRemove(META_RETRY.to_vec()));
        }
        let next = self.extend_seqs(&writer, seq, &mut writes);
        self.commit(&mut writer, &writes)?;
        if retrying {
            writer.retry = None;
        }
        self.advance_next(&mut writer, next);
        Ok(())
    }

    /// Stores a shipped `Rejected` entry as `Rejected` (it is never applied) and advances
    /// `applied_seq` to it. Same order rules as [`Log::begin_apply`]. Durable when this
    /// returns.
    pub fn record_rejected(&self, entry: Entry) -> Result<(), LogError> {
        let mut writer = self.lock_writer()?;
        let seq = entry.seq;
        self.check_next(seq)?;
        if entry.state != EntryState::Rejected {
            return Err(LogError::ShippedState {
                seq,
                state: entry.state,
                expected: EntryState::Rejected,
            });
        }
        match self.get(seq)? {
            None => {}
            Some(existing) if existing.state == EntryState::Applying => {
                return Err(LogError::ApplyInProgress(seq));
            }
            // Stored as accepted before; the writer now says rejected.
            Some(_) => return Err(LogError::ConflictingEntry(seq)),
        }
        let stored = Entry {
            writer_state: Some(EntryState::Rejected),
            mirror_outcome: None,
            halt: None,
            ..entry
        };
        let mut writes = vec![
            Write::entry(&stored)?,
            Write::meta_u64(META_APPLIED_SEQ, seq.0),
        ];
        let next = self.extend_seqs(&writer, seq, &mut writes);
        self.commit(&mut writer, &writes)?;
        self.inner.applied.store(seq.0, Ordering::SeqCst);
        self.advance_next(&mut writer, next);
        Ok(())
    }

    /// Records how the mirror's origin answered the `Applying` entry `seq`, in one durable
    /// commit, and returns the new state:
    /// * `Ok(())`: `Applied`, and `applied_seq` becomes `seq`.
    /// * `Err(halt)`: the mirror halts at `seq` (kept in meta and on the entry). The entry
    ///   becomes `Diverged`, or `InDoubt` when `halt.reason` is [`Halt::IN_DOUBT`] (the origin
    ///   may have applied it: the request was sent and no answer came back).
    ///
    /// `cookies` are (cookie name, writer's value, mirror's value) mappings the mirror's answer
    /// established; they are stored in the same commit either way, since the mirror's origin
    /// did hand them out.
    pub fn finish_apply(
        &self,
        seq: Seq,
        mirror_outcome: Outcome,
        result: Result<(), Halt>,
        cookies: Vec<(String, String, String)>,
    ) -> Result<EntryState, LogError> {
        let mut writer = self.lock_writer()?;
        let mut entry = self.get(seq)?.ok_or(LogError::NotFound(seq))?;
        let event = match &result {
            Ok(()) => Event::MirrorAgreed,
            Err(halt) if halt.reason == Halt::IN_DOUBT => Event::OutcomeUnknown,
            Err(_) => Event::MirrorDiverged,
        };
        entry.state = entry.state.next(event)?;
        debug_assert_eq!(
            seq.0,
            self.applied_seq().0.saturating_add(1),
            "an Applying entry is always the next one"
        );
        entry.mirror_outcome = Some(mirror_outcome);
        let mut writes = vec![Write::Settled(seq)];
        let halt = match result {
            Ok(()) => {
                writes.push(Write::meta_u64(META_APPLIED_SEQ, seq.0));
                None
            }
            Err(mut halt) => {
                debug_assert_eq!(halt.seq, seq, "a halt names the entry it stops at");
                halt.seq = seq;
                entry.halt = Some(halt.clone());
                writes.push(Write::Meta(META_HALT.to_vec(), encode_value(&halt)?.into()));
                Some(halt)
            }
        };
        writes.push(Write::entry(&entry)?);
        for (name, writer_value, mirror_value) in cookies {
            writes.push(Write::Cookie(
                cookie_key(&name, &writer_value),
                IVec::from(mirror_value.as_bytes()),
            ));
        }
        self.commit(&mut writer, &writes)?;
        match halt {
            None => self.inner.applied.store(seq.0, Ordering::SeqCst),
            Some(halt) => {
                tracing::error!(%halt, "mirror halted");
                *self.lock_halt() = Some(halt);
            }
        }
        Ok(entry.state)
    }

    /// The mirror's value for cookie `name` where the writer's origin set `writer_value`, if a
    /// replay mapped it.
    pub fn mapped_cookie(
        &self,
        name: &str,
        writer_value: &str,
    ) -> Result<Option<String>, LogError> {
        let plain = cookie_key(name, writer_value);
        let what = format!("mapped value of cookie {name}");
        let mut found = None;
        if let Some(cipher) = &self.inner.cipher {
            // Stored under the blinded key since encryption was switched on, and sealed.
            let key = codec::blind_key(cipher, &plain);
            if let Some(bytes) = self.inner.cookies.get(&key)? {
                if !codec::is_sealed(&bytes) {
                    return Err(LogError::Codec(format!("{what} is not encrypted")));
                }
                let place = Place {
                    tree: COOKIES,
                    key: &key,
                };
                found = Some(codec::unseal(Some(cipher), place, &bytes, &what)?.into_owned());
            }
        }
        if found.is_none() {
            // Stored in the clear, before encryption was switched on (or with none).
            found = self.inner.cookies.get(&plain)?.map(|bytes| bytes.to_vec());
        }
        found
            .map(|bytes| {
                String::from_utf8(bytes)
                    .map_err(|_| LogError::Codec(format!("{what} is not UTF-8")))
            })
            .transpose()
    }

    /// Operator: apply the entry this mirror is halted at once more. Clears the halt and
    /// releases that seq for one [`Log::begin_apply`] (the entry stays `Diverged` or `InDoubt`
    /// until then); records `audit` on the entry. Durable when this returns. Returns the seq.
    /// Refused with [`LogError::NotHalted`] while streaming.
    pub fn retry(&self, audit: AuditRecord) -> Result<Seq, LogError> {
        let mut writer = self.lock_writer()?;
        let halt = self.halt().ok_or(LogError::NotHalted)?;
        let seq = halt.seq;
        let mut entry = self.get(seq)?.ok_or(LogError::NotFound(seq))?;
        // Check now that begin_apply will be able to take it.
        entry.state.next(Event::OperatorRetry)?;
        entry.audit.push(audit);
        let writes = [
            Write::entry(&entry)?,
            Write::MetaRemove(META_HALT.to_vec()),
            Write::meta_u64(META_RETRY, seq.0),
        ];
        self.commit(&mut writer, &writes)?;
        writer.retry = Some(seq);
        *self.lock_halt() = None;
        tracing::warn!(%seq, "halted entry released for retry by an operator");
        Ok(seq)
    }

    /// Operator: skip the entry this mirror is halted at, which must be `seq`
    /// ([`LogError::NotHaltedAt`] otherwise): it becomes `Skipped` without being applied
    /// again, `applied_seq` becomes `seq`, the halt is cleared and `audit` recorded on the
    /// entry. Durable when this returns.
    pub fn skip(&self, seq: Seq, audit: AuditRecord) -> Result<(), LogError> {
        let mut writer = self.lock_writer()?;
        let halted = self.halt().map(|h| h.seq);
        if halted != Some(seq) {
            return Err(LogError::NotHaltedAt { seq, halted });
        }
        let mut entry = self.get(seq)?.ok_or(LogError::NotFound(seq))?;
        entry.state = entry.state.next(Event::OperatorSkipped)?;
        entry.audit.push(audit);
        let mut writes = vec![
            Write::entry(&entry)?,
            Write::MetaRemove(META_HALT.to_vec()),
            Write::meta_u64(META_APPLIED_SEQ, seq.0),
        ];
        if writer.retry.is_some() {
            writes.push(Write::MetaRemove(META_RETRY.to_vec()));
        }
        self.commit(&mut writer, &writes)?;
        writer.retry = None;
        self.inner.applied.store(seq.0, Ordering::SeqCst);
        *self.lock_halt() = None;
        tracing::warn!(%seq, "halted entry skipped by an operator");
        Ok(())
    }

    /// ORDER and HALT: `seq` must be the next one and the mirror must not be halted. A resend
    /// of a finished seq is reported as out of order even while halted, so that its stored
    /// result can still be returned.
    fn check_next(&self, seq: Seq) -> Result<(), LogError> {
        let applied = self.applied_seq();
        let expected = Seq(applied.0.saturating_add(1));
        if seq <= applied {
            return Err(LogError::OutOfOrder { expected, got: seq });
        }
        if let Some(halt) = self.halt() {
            return Err(LogError::Halted(halt));
        }
        if seq != expected {
            return Err(LogError::OutOfOrder { expected, got: seq });
        }
        Ok(())
    }

    /// Keeps `next_seq` past every stored seq (so a promoted mirror never reuses one): adds
    /// the write if `seq` is beyond it and returns the new value to set after the commit.
    fn extend_seqs(&self, writer: &Writer, seq: Seq, writes: &mut Vec<Write>) -> Option<Seq> {
        if seq < writer.next {
            return None;
        }
        // `seq` came over the network; a u64::MAX seq leaves next_seq saturated and
        // append_pending refuses it.
        let next = Seq(seq.0.saturating_add(1));
        writes.push(Write::NextSeq(next));
        Some(next)
    }

    fn advance_next(&self, writer: &mut Writer, next: Option<Seq>) {
        if let Some(next) = next {
            writer.next = next;
            self.inner.last.store(next.0 - 1, Ordering::SeqCst);
        }
    }
}

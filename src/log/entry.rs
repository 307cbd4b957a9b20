//! Entries of the log and the rules for how their state may change: `Seq`, `Entry`, the
//! captured `RequestRecord`, the origin's `Outcome`, a mirror's `Halt`, the operator's
//! `AuditRecord`, and `EntryState` with its single transition function. Everything here is plain data and pure functions; this file must not
//! do I/O or know how entries are encoded or stored (that is `codec` and `Log`).
//!
//! Encoding note: entries are stored with postcard, which writes an enum variant as its index
//! and a struct as its fields in order, without names. New `EntryState` or `Event` variants
//! must therefore be added at the end, never in between, and a new struct field needs a new
//! codec version (see `codec.rs`).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::blobs::BlobHash;

// === impl Seq ===

/// The position of an entry in the log. The first entry is `Seq(1)`; `Seq(0)` means "none
/// yet". A sequence number is never reused, even when old entries are removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Seq(pub u64);

impl Seq {
    /// The "no entry yet" marker: the `last_seq` of an empty log.
    pub const NONE: Seq = Seq(0);

    /// The sequence number that follows this one.
    pub fn next(self) -> Seq {
        // Counting cannot exhaust a u64 (centuries at a billion entries per second). A value
        // read from disk can be damaged, so `Log` refuses `u64::MAX` before calling this.
        Seq(self.0 + 1)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

// === impl EntryState ===

/// Where an entry is in its life.
///
/// On the writer: `Pending` until the origin answers, then `Accepted` or `Rejected`; `InDoubt`
/// when nobody can tell whether the origin applied it, until an operator resolves it to
/// `Accepted` or `Rejected`.
///
/// On a mirror: an accepted entry arrives and is stored `Applying` before it reaches the
/// mirror's origin; then `Applied` (the outcomes agree) or `Diverged` (they do not, or the
/// apply failed). A crash while `Applying` leaves it `InDoubt`. An operator moves a `Diverged`
/// or `InDoubt` entry back to `Applying` (retry) or on to `Skipped`. An entry the writer
/// rejected is stored `Rejected` and never applied.
///
/// Variants are stored by index: append new ones at the end (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryState {
    /// Durably logged; the request may be on its way to the origin.
    Pending,
    /// The origin answered with a status in the success set.
    Accepted,
    /// The origin answered with a status outside the success set.
    Rejected,
    /// The origin may or may not have applied the request. Shipping (writer) or applying
    /// (mirror) stops here until an operator decides.
    InDoubt,
    /// Mirror: durably recorded, and the request may be on its way to the mirror's origin.
    Applying,
    /// Mirror: replayed, and the mirror's outcome agreed with the writer's.
    Applied,
    /// Mirror: replayed, and the outcome differed or the apply failed; the mirror is halted.
    Diverged,
    /// Mirror: an operator skipped this entry on a halted mirror; it was not (re)applied.
    Skipped,
}

/// Something that happened to an entry, fed to [`EntryState::next`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// The origin answered with a status in the success set.
    OriginAccepted,
    /// The origin answered with a status outside the success set.
    OriginRejected,
    /// The request may have reached the origin but no answer came back (for example the origin
    /// timed out after the request was sent).
    OutcomeUnknown,
    /// The entry was found `Pending` (writer) or `Applying` (mirror) when the log was opened:
    /// the node crashed between logging the request and recording the origin's answer.
    CrashRecovered,
    /// Mirror: an accepted entry arrived and is about to be sent to the mirror's origin.
    ApplyStarted,
    /// Mirror: the mirror's outcome agreed with the writer's.
    MirrorAgreed,
    /// Mirror: the mirror's outcome differed from the writer's, or the apply failed.
    MirrorDiverged,
    /// Writer: an operator found that the origin did apply an in-doubt entry.
    OperatorApplied,
    /// Writer: an operator found that the origin did not apply an in-doubt entry.
    OperatorNotApplied,
    /// Mirror: an operator skipped the entry the mirror is halted at.
    OperatorSkipped,
    /// Mirror: an operator asked to apply the entry the mirror is halted at again.
    OperatorRetry,
}

/// An event that is not allowed in the entry's current state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("illegal transition: {event:?} while the entry is {from}")]
pub struct IllegalTransition {
    /// The state the entry was in.
    pub from: EntryState,
    /// The event that was refused.
    pub event: Event,
}

impl EntryState {
    /// The name used in the admin API, the CLI and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryState::Pending => "pending",
            EntryState::Accepted => "accepted",
            EntryState::Rejected => "rejected",
            EntryState::InDoubt => "in-doubt",
            EntryState::Applying => "applying",
            EntryState::Applied => "applied",
            EntryState::Diverged => "diverged",
            EntryState::Skipped => "skipped",
        }
    }

    /// The state after `event`, or an error if `event` is not allowed now. The whole
    /// transition table lives here; which side may feed which event is up to `Log`'s methods
    /// (the writer never starts an apply, a mirror never resolves).
    ///
    /// | from | event | to |
    /// |---|---|---|
    /// | Pending | OriginAccepted | Accepted |
    /// | Pending | OriginRejected | Rejected |
    /// | Pending | OutcomeUnknown, CrashRecovered | InDoubt |
    /// | InDoubt | OperatorApplied | Accepted (writer) |
    /// | InDoubt | OperatorNotApplied | Rejected (writer) |
    /// | Accepted | ApplyStarted | Applying (mirror: the shipped entry arrives) |
    /// | Applying | MirrorAgreed | Applied |
    /// | Applying | MirrorDiverged | Diverged |
    /// | Applying | OutcomeUnknown, CrashRecovered | InDoubt |
    /// | Diverged, InDoubt | OperatorRetry | Applying (mirror) |
    /// | Diverged, InDoubt | OperatorSkipped | Skipped (mirror) |
    ///
    /// `Rejected`, `Applied` and `Skipped` are final.
    pub fn next(self, event: Event) -> Result<EntryState, IllegalTransition> {
        use EntryState::*;
        use Event::*;
        match (self, event) {
            (Pending, OriginAccepted) => Ok(Accepted),
            (Pending, OriginRejected) => Ok(Rejected),
            (Pending, OutcomeUnknown | CrashRecovered) => Ok(InDoubt),
            (InDoubt, OperatorApplied) => Ok(Accepted),
            (InDoubt, OperatorNotApplied) => Ok(Rejected),
            (Accepted, ApplyStarted) => Ok(Applying),
            (Applying, MirrorAgreed) => Ok(Applied),
            (Applying, MirrorDiverged) => Ok(Diverged),
            (Applying, OutcomeUnknown | CrashRecovered) => Ok(InDoubt),
            (Diverged | InDoubt, OperatorRetry) => Ok(Applying),
            (Diverged | InDoubt, OperatorSkipped) => Ok(Skipped),
            (from, event) => Err(IllegalTransition { from, event }),
        }
    }
}

impl fmt::Display for EntryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl RequestRecord ===

/// A captured request, exactly as it was forwarded to the writer's origin. A mirror replays it
/// from this record, so nothing here may be normalised.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// The request method, e.g. `POST`.
    pub method: String,
    /// `path?query` exactly as received.
    pub target: String,
    /// The HTTP version, e.g. `HTTP/1.1`.
    pub version: String,
    /// Headers as forwarded to the origin, in order; values are raw bytes because HTTP allows
    /// non-UTF-8 values.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The client's address as the origin was told it (`X-Forwarded-For` source).
    pub client_addr: String,
    /// The request id used in logs and traces.
    pub request_id: String,
    /// When the request was received, in milliseconds since the Unix epoch.
    pub received_unix_ms: u64,
    /// Where the raw body is. Large bodies live in the blob store, never in the log.
    pub body: BodyRef,
    /// Length of the whole body in bytes.
    pub body_len: u64,
    /// blake3 of the whole body, always set, whether the body is inline or a blob.
    pub body_hash: BlobHash,
    /// The multipart index, for inspection only: a body is never rebuilt from it.
    pub multipart: Option<MultipartIndex>,
}

/// Where a request body is stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum BodyRef {
    /// Small bodies, stored in the entry itself.
    Inline(Vec<u8>),
    /// Larger bodies, stored in the blob store under this hash.
    Blob(BlobHash),
}

/// What capture learned from a `multipart/form-data` body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MultipartIndex {
    /// The parts, in body order.
    pub parts: Vec<PartInfo>,
    /// Why indexing stopped early, if it did. The request went through regardless.
    pub error: Option<String>,
}

/// One part of a multipart body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartInfo {
    /// The form field name.
    pub name: Option<String>,
    /// The file name, for file parts.
    pub filename: Option<String>,
    /// The part's `Content-Type`.
    pub content_type: Option<String>,
    /// Size of the part's content in bytes.
    pub size: u64,
    /// blake3 of the part's content.
    pub hash: BlobHash,
    /// A short preview of a text field, already masked by capture when it looks secret;
    /// `None` for files.
    pub value: Option<String>,
}

/// What the origin answered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// The response status (0 when no response arrived).
    pub status: u16,
    /// The `Location` header, if any.
    pub location: Option<String>,
    /// Every `Set-Cookie` header, in order.
    pub set_cookies: Vec<String>,
    /// blake3 of the response body.
    pub body_digest: BlobHash,
    /// Length of the response body in bytes.
    pub body_len: u64,
    /// Time from sending the request to the end of the response, in microseconds.
    pub duration_us: u64,
    /// Why no complete answer was received, if that was the case.
    pub error: Option<String>,
    /// The JSON fields the compare rule observed, as (JSON pointer, value as JSON text), in
    /// rule order; empty when the rule names none.
    #[serde(default)]
    pub fields: Vec<(String, String)>,
    /// blake3 of the body with the rule's volatile parts masked, when the rule asks for a
    /// body comparison.
    #[serde(default)]
    pub masked_digest: Option<BlobHash>,
}

// === impl Halt ===

/// Why a mirror stopped applying, at which entry. Kept in the log's meta (the mirror's
/// current halt) and on the entry (what happened to it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Halt {
    /// The entry the mirror stopped at; nothing after it is applied.
    pub seq: Seq,
    /// Machine-readable code: `status_mismatch`, `location_mismatch`, `field_mismatch`,
    /// `body_mismatch`, `apply_error`, `in_doubt`, `blob_missing`.
    pub reason: String,
    /// Human text, e.g. `status_mismatch seq=7 writer=201 mirror=500`.
    pub detail: String,
}

impl Halt {
    /// The `reason` of a halt whose entry may or may not have been applied by the mirror's
    /// origin. [`crate::log::Log::finish_apply`] records such an entry `InDoubt` rather than
    /// `Diverged`.
    pub const IN_DOUBT: &'static str = "in_doubt";
}

impl fmt::Display for Halt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "halted at seq {}: {} ({})",
            self.seq, self.reason, self.detail
        )
    }
}

// === impl AuditRecord ===

/// An operator action, kept with what it acted on (an entry, or a mirror's pause state).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When, in milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// What: `retry`, `skip`, `resolve-applied`, `resolve-not-applied`, `pause`, `resume`.
    pub action: String,
    /// Why, as the operator put it.
    pub reason: String,
    /// Who: `cli`, or a user name the CLI passes.
    pub by: String,
}

/// One entry of the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Its position; equal to the key it is stored under.
    pub seq: Seq,
    /// Where it is in its life.
    pub state: EntryState,
    /// The captured request.
    pub request: RequestRecord,
    /// The origin's answer, once known; `None` while `Pending` and for entries recovered after
    /// a crash.
    pub outcome: Option<Outcome>,
    /// When the entry left `Pending` (for a crash-recovered entry: when it was found at open),
    /// in milliseconds since the Unix epoch. On a mirror: as the writer shipped it.
    pub settled_unix_ms: Option<u64>,
    /// Mirror: the state the writer shipped (`Accepted` or `Rejected`); `None` on the writer.
    #[serde(default)]
    pub writer_state: Option<EntryState>,
    /// Mirror: what the mirror's origin answered to the replay, once known. `outcome` stays
    /// the writer's.
    #[serde(default)]
    pub mirror_outcome: Option<Outcome>,
    /// Mirror: the latest halt this entry caused. Kept after a retry or skip as history; the
    /// mirror's *current* halt is [`crate::log::Log::halt`].
    #[serde(default)]
    pub halt: Option<Halt>,
    /// Operator actions on this entry, oldest first.
    #[serde(default)]
    pub audit: Vec<AuditRecord>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATES: [EntryState; 8] = [
        EntryState::Pending,
        EntryState::Accepted,
        EntryState::Rejected,
        EntryState::InDoubt,
        EntryState::Applying,
        EntryState::Applied,
        EntryState::Diverged,
        EntryState::Skipped,
    ];
    const EVENTS: [Event; 11] = [
        Event::OriginAccepted,
        Event::OriginRejected,
        Event::OutcomeUnknown,
        Event::CrashRecovered,
        Event::ApplyStarted,
        Event::MirrorAgreed,
        Event::MirrorDiverged,
        Event::OperatorApplied,
        Event::OperatorNotApplied,
        Event::OperatorSkipped,
        Event::OperatorRetry,
    ];

    /// Every (state, event) pair: exactly these are legal, everything else is refused.
    #[test]
    fn transition_table() {
        use EntryState::*;
        use Event::*;
        let legal = [
            // writer
            (Pending, OriginAccepted, Accepted),
            (Pending, OriginRejected, Rejected),
            (Pending, OutcomeUnknown, InDoubt),
            (Pending, CrashRecovered, InDoubt),
            (InDoubt, OperatorApplied, Accepted),
            (InDoubt, OperatorNotApplied, Rejected),
            // mirror
            (Accepted, ApplyStarted, Applying),
            (Applying, MirrorAgreed, Applied),
            (Applying, MirrorDiverged, Diverged),
            (Applying, OutcomeUnknown, InDoubt),
            (Applying, CrashRecovered, InDoubt),
            (Diverged, OperatorRetry, Applying),
            (InDoubt, OperatorRetry, Applying),
            (Diverged, OperatorSkipped, Skipped),
            (InDoubt, OperatorSkipped, Skipped),
        ];
        let mut allowed = 0;
        for from in STATES {
            for event in EVENTS {
                let expected = legal
                    .iter()
                    .find(|(f, e, _)| *f == from && *e == event)
                    .map(|(_, _, to)| *to)
                    .ok_or(IllegalTransition { from, event });
                assert_eq!(from.next(event), expected, "{from} + {event:?}");
                allowed += usize::from(expected.is_ok());
            }
        }
        assert_eq!(
            allowed,
            legal.len(),
            "a legal row names a state or event twice"
        );
        // Final states stay final.
        for from in [Rejected, Applied, Skipped] {
            assert!(EVENTS.iter().all(|&e| from.next(e).is_err()), "{from}");
        }
    }

    #[test]
    fn state_names() {
        let names: Vec<_> = STATES.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            [
                "pending", "accepted", "rejected", "in-doubt", "applying", "applied", "diverged",
                "skipped"
            ]
        );
        assert_eq!(EntryState::InDoubt.to_string(), "in-doubt");
    }

    /// postcard stores variants by index: the original four must keep theirs.
    #[test]
    fn variant_indices_are_stable() {
        let index = |s: EntryState| postcard::to_allocvec(&s).unwrap();
        assert_eq!(index(EntryState::Pending), [0]);
        assert_eq!(index(EntryState::InDoubt), [3]);
        assert_eq!(index(EntryState::Skipped), [7]);
        assert_eq!(postcard::to_allocvec(&Event::CrashRecovered).unwrap(), [3]);
        assert_eq!(postcard::to_allocvec(&Event::OperatorRetry).unwrap(), [10]);
    }

    #[test]
    fn halt_display() {
        let halt = Halt {
            seq: Seq(7),
            reason: "status_mismatch".into(),
            detail: "status_mismatch seq=7 writer=201 mirror=500".into(),
        };
        assert_eq!(
            halt.to_string(),
            "halted at seq 7: status_mismatch (status_mismatch seq=7 writer=201 mirror=500)"
        );
    }

    #[test]
    fn seq_basics() {
        assert_eq!(Seq::NONE.next(), Seq(1));
        assert_eq!(Seq(41).to_string(), "41");
        assert!(Seq(2) > Seq(1));
    }

    #[test]
    fn illegal_transition_message() {
        let err = EntryState::Accepted
            .next(Event::OriginRejected)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "illegal transition: OriginRejected while the entry is accepted"
        );
    }
}

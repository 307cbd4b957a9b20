//! Entries of the log and the rules for how their state may change: `Seq`, `Entry`, the
//! captured `RequestRecord`, the origin's `Outcome`, and `EntryState` with its single
//! transition function. Everything here is plain data and pure functions; this file must not
//! do I/O or know how entries are encoded or stored (that is `codec` and `Log`).
//!
//! Encoding note: entries are stored with postcard, which writes an enum variant as its index.
//! New `EntryState` or `Event` variants (the mirror's `Applying`, `Applied`, `Diverged`) must
//! therefore be added at the end, never in between, or old logs decode to the wrong state.

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

/// Where an entry is in its life. On the writer: `Pending` until the origin answers, then
/// `Accepted` or `Rejected`; `InDoubt` when nobody can tell whether the origin applied it.
/// The mirror will add `Applying`, `Applied` and `Diverged` (append them at the end: see the
/// module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryState {
    /// Durably logged; the request may be on its way to the origin.
    Pending,
    /// The origin answered with a status in the success set.
    Accepted,
    /// The origin answered with a status outside the success set.
    Rejected,
    /// The origin may or may not have applied the request. Shipping stops here until an
    /// operator resolves it.
    InDoubt,
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
    /// The entry was found `Pending` when the log was opened: the node crashed between logging
    /// the request and recording the origin's answer.
    CrashRecovered,
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
        }
    }

    /// The state after `event`, or an error if `event` is not allowed now. The whole
    /// transition table lives here: only `Pending` may move, and only once.
    pub fn next(self, event: Event) -> Result<EntryState, IllegalTransition> {
        match (self, event) {
            (EntryState::Pending, Event::OriginAccepted) => Ok(EntryState::Accepted),
            (EntryState::Pending, Event::OriginRejected) => Ok(EntryState::Rejected),
            (EntryState::Pending, Event::OutcomeUnknown | Event::CrashRecovered) => {
                Ok(EntryState::InDoubt)
            }
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
    /// in milliseconds since the Unix epoch.
    pub settled_unix_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATES: [EntryState; 4] = [
        EntryState::Pending,
        EntryState::Accepted,
        EntryState::Rejected,
        EntryState::InDoubt,
    ];
    const EVENTS: [Event; 4] = [
        Event::OriginAccepted,
        Event::OriginRejected,
        Event::OutcomeUnknown,
        Event::CrashRecovered,
    ];

    #[test]
    fn transition_table() {
        use EntryState::*;
        use Event::*;
        let legal = [
            (Pending, OriginAccepted, Accepted),
            (Pending, OriginRejected, Rejected),
            (Pending, OutcomeUnknown, InDoubt),
            (Pending, CrashRecovered, InDoubt),
        ];
        for from in STATES {
            for event in EVENTS {
                let expected = legal
                    .iter()
                    .find(|(f, e, _)| *f == from && *e == event)
                    .map(|(_, _, to)| *to)
                    .ok_or(IllegalTransition { from, event });
                assert_eq!(from.next(event), expected, "{from} + {event:?}");
            }
        }
    }

    #[test]
    fn state_names() {
        let names: Vec<_> = STATES.iter().map(|s| s.as_str()).collect();
        assert_eq!(names, ["pending", "accepted", "rejected", "in-doubt"]);
        assert_eq!(EntryState::InDoubt.to_string(), "in-doubt");
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

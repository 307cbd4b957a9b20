//! The replication protocol: paths and messages exchanged between a writer's shippers (client)
//! and a mirror's apply handler (server), over HTTP/2 on mutually authenticated TLS.
//!
//! | request | meaning | answers |
//! |---|---|---|
//! | `GET  /_copyist/v1/state` | where is this node? | 200 [`PeerState`] |
//! | `HEAD /_copyist/v1/blobs/HASH` | does the mirror hold this blob? | 200 / 404 |
//! | `PUT  /_copyist/v1/blobs/HASH` | store this blob (verified against HASH) | 201 / 422 |
//! | `POST /_copyist/v1/entries/SEQ` | apply entry SEQ (postcard-encoded [`crate::log::Entry`]) | 200 [`ApplyAnswer`] / 409 gap / 423 halted |
//! | `POST /_copyist/v1/control` | operator action on a halted mirror ([`Control`]) | 200 [`PeerState`] / 409 |
//! | `POST /_copyist/v1/forward` | (to the writer) a client's request that a mirror sends there (a write, a writer path, a client with writer affinity) | the writer's answer; with `X-Copyist-Seq` when the writer's rules captured it |
//!
//! Entries travel in postcard (bodies are bytes); everything else is JSON. Every message is
//! versioned by the path; a peer that sends anything else gets a 4xx and nothing reaches a CMS.

use serde::{Deserialize, Serialize};

use crate::log::{Entry, Halt, Outcome};

/// Prefix of every replication path. Never served on the public listener.
pub const PREFIX: &str = "/_copyist/v1/";

/// Where a node stands, as its peers see it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerState {
    /// The node's name (from its config; the certificate already proved it).
    pub node: String,
    /// "writer" or "mirror".
    pub role: String,
    /// Highest sequence number finished here (applied, skipped or recorded as rejected).
    pub applied_seq: u64,
    /// The halt, when the mirror has stopped.
    pub halt: Option<Halt>,
}

/// A mirror's answer to one entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApplyAnswer {
    /// The entry's sequence number.
    pub seq: u64,
    /// The entry's state on the mirror: "applied", "rejected" (recorded, never applied),
    /// "skipped", "diverged", "in-doubt".
    pub state: String,
    /// The mirror CMS's outcome, when it ran the request.
    pub mirror_outcome: Option<Outcome>,
    /// Why the mirror halted at this entry, if it did.
    pub halt: Option<Halt>,
}

/// Answer to an entry that arrived too early: the mirror needs `expected` first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Gap {
    /// The sequence number the mirror will apply next.
    pub expected: u64,
}

/// An operator's action, relayed by the writer to a halted mirror.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Control {
    /// "retry" or "skip".
    pub action: String,
    /// For "skip": the exact sequence number to skip (must be the halted one).
    pub seq: Option<u64>,
    /// Why, for the audit record.
    pub reason: String,
    /// Who, for the audit record.
    pub by: String,
}

/// Header carrying a forwarded write's [`ForwardHead`] (JSON) on `POST forward`; the body is
/// the client's body, streamed.
pub const FORWARD_HEADER: &str = "x-copyist-forward";

/// Header that carries `Content-Length` of the writer's answer to a forwarded `HEAD`. The
/// answer travels as the answer to a `POST`, whose `Content-Length` must match its (empty)
/// body; the mirror puts the real length back.
pub const HEAD_LENGTH_HEADER: &str = "x-copyist-head-length";

/// A client's request that reached a mirror, forwarded to the writer: captured or passed
/// through as the writer's own rules classify it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForwardHead {
    /// Request method.
    pub method: String,
    /// `path?query`.
    pub target: String,
    /// The headers as the mirror cleaned them (hop-by-hop removed, X-Forwarded-* set).
    pub headers: Vec<(String, Vec<u8>)>,
    /// The real client address, as the mirror determined it.
    pub client_addr: String,
    /// The mirror's request id, kept for the entry.
    pub request_id: String,
}

/// Encodes an entry for `POST entries/SEQ`.
pub fn encode_entry(entry: &Entry) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_allocvec(entry)
}

/// Decodes an entry; malformed bytes are an error, never a panic.
pub fn decode_entry(bytes: &[u8]) -> Result<Entry, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// `entries/SEQ` → SEQ.
pub fn entry_path(seq: u64) -> String {
    format!("{PREFIX}entries/{seq}")
}

/// `blobs/HASH`.
pub fn blob_path(hash: &crate::blobs::BlobHash) -> String {
    format!("{PREFIX}blobs/{hash}")
}

//! The log: every captured request as a numbered entry, stored durably in sled before the
//! origin sees it. This module owns the `log/` directory and is the only code that names
//! sled. It must not know about HTTP, the origin or peers, and must not touch the blob store:
//! entries only *name* blobs by hash.

mod entry;

pub use entry::{
    BodyRef, Entry, EntryState, Event, IllegalTransition, MultipartIndex, Outcome, PartInfo,
    RequestRecord, Seq,
};

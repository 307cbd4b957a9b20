//! `codec`: the log's decoders (`log::codec::decode_entry`, and `decode_value` for a stored
//! halt) on arbitrary bytes, as if read from a damaged sled tree: never a panic, an error at
//! worst. What decodes re-encodes to bytes that decode to the same value.
//!
//! The same input also builds an `Entry` and a `Halt` field by field (`arbitrary`), and checks
//! the round trip decode(encode(e)) == e and that no strict prefix or one-byte extension of the
//! encoding decodes as an entry.
#![no_main]

use arbitrary::{Arbitrary, Result, Unstructured};
use copyist::blobs::BlobHash;
use copyist::fuzzing::{decode_entry, decode_halt, encode_entry, encode_halt};
use copyist::log::{
    AuditRecord, BodyRef, Entry, EntryState, Halt, MultipartIndex, Outcome, PartInfo,
    RequestRecord, Seq,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(entry) = decode_entry(data) {
        round_trip(&entry);
    }
    if let Ok(halt) = decode_halt(data) {
        let bytes = encode_halt(&halt).expect("a decoded halt encodes");
        assert_eq!(decode_halt(&bytes).as_ref(), Ok(&halt));
    }

    let mut u = Unstructured::new(data);
    if let Ok(entry) = entry(&mut u) {
        let bytes = round_trip(&entry);
        // Postcard has no framing of its own: the codec must notice a cut or an extra byte.
        let cut = usize::arbitrary(&mut u).unwrap_or(0) % bytes.len();
        assert!(
            decode_entry(&bytes[..cut]).is_err(),
            "prefix of {cut} bytes"
        );
        let mut longer = bytes;
        longer.push(u8::arbitrary(&mut u).unwrap_or(0));
        assert!(decode_entry(&longer).is_err(), "one byte more");
    }
    if let Ok(halt) = halt(&mut u) {
        let bytes = encode_halt(&halt).expect("a halt encodes");
        assert_eq!(decode_halt(&bytes).as_ref(), Ok(&halt));
    }
});

/// encode → decode gives `entry` back, and encoding is deterministic. Returns the encoding.
fn round_trip(entry: &Entry) -> Vec<u8> {
    let bytes = encode_entry(entry).expect("an entry encodes");
    let back = decode_entry(&bytes).expect("an encoded entry decodes");
    assert_eq!(&back, entry);
    assert_eq!(encode_entry(&back).as_ref(), Ok(&bytes));
    bytes
}

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

fn state(u: &mut Unstructured<'_>) -> Result<EntryState> {
    u.choose(&STATES).copied()
}

fn hash(u: &mut Unstructured<'_>) -> Result<BlobHash> {
    Ok(BlobHash(u.arbitrary()?))
}

fn option<T>(
    u: &mut Unstructured<'_>,
    f: impl FnOnce(&mut Unstructured<'_>) -> Result<T>,
) -> Result<Option<T>> {
    Ok(if u.arbitrary()? { Some(f(u)?) } else { None })
}

fn vec<T>(
    u: &mut Unstructured<'_>,
    mut f: impl FnMut(&mut Unstructured<'_>) -> Result<T>,
) -> Result<Vec<T>> {
    let n = u.arbitrary_len::<u8>()?.min(16);
    (0..n).map(|_| f(u)).collect()
}

fn entry(u: &mut Unstructured<'_>) -> Result<Entry> {
    Ok(Entry {
        seq: Seq(u.arbitrary()?),
        state: state(u)?,
        request: request(u)?,
        outcome: option(u, outcome)?,
        settled_unix_ms: u.arbitrary()?,
        writer_state: option(u, state)?,
        mirror_outcome: option(u, outcome)?,
        halt: option(u, halt)?,
        audit: vec(u, audit)?,
    })
}

fn request(u: &mut Unstructured<'_>) -> Result<RequestRecord> {
    Ok(RequestRecord {
        method: u.arbitrary()?,
        target: u.arbitrary()?,
        version: u.arbitrary()?,
        headers: vec(u, |u| Ok((u.arbitrary()?, u.arbitrary()?)))?,
        client_addr: u.arbitrary()?,
        request_id: u.arbitrary()?,
        received_unix_ms: u.arbitrary()?,
        body: if u.arbitrary()? {
            BodyRef::Inline(u.arbitrary()?)
        } else {
            BodyRef::Blob(hash(u)?)
        },
        body_len: u.arbitrary()?,
        body_hash: hash(u)?,
        multipart: option(u, |u| {
            Ok(MultipartIndex {
                parts: vec(u, part)?,
                error: u.arbitrary()?,
            })
        })?,
    })
}

fn part(u: &mut Unstructured<'_>) -> Result<PartInfo> {
    Ok(PartInfo {
        name: u.arbitrary()?,
        filename: u.arbitrary()?,
        content_type: u.arbitrary()?,
        size: u.arbitrary()?,
        hash: hash(u)?,
        value: u.arbitrary()?,
    })
}

fn outcome(u: &mut Unstructured<'_>) -> Result<Outcome> {
    Ok(Outcome {
        status: u.arbitrary()?,
        location: u.arbitrary()?,
        set_cookies: u.arbitrary()?,
        body_digest: hash(u)?,
        body_len: u.arbitrary()?,
        duration_us: u.arbitrary()?,
        error: u.arbitrary()?,
        fields: u.arbitrary()?,
        masked_digest: option(u, hash)?,
    })
}

fn halt(u: &mut Unstructured<'_>) -> Result<Halt> {
    Ok(Halt {
        seq: Seq(u.arbitrary()?),
        reason: u.arbitrary()?,
        detail: u.arbitrary()?,
    })
}

fn audit(u: &mut Unstructured<'_>) -> Result<AuditRecord> {
    Ok(AuditRecord {
        unix_ms: u.arbitrary()?,
        action: u.arbitrary()?,
        reason: u.arbitrary()?,
        by: u.arbitrary()?,
    })
}

//! Tests of the `Log` handle against real sled directories in temp dirs.
#![cfg(test)]

use super::*;
use crate::blobs::BlobHash;

/// A request as capture would log it, with `body` inline.
pub(super) fn sample_request(body: &[u8]) -> RequestRecord {
    let hash = BlobHash::from(blake3::hash(body));
    RequestRecord {
        method: "POST".into(),
        target: "/node/add?destination=%2F".into(),
        version: "HTTP/1.1".into(),
        headers: vec![
            ("host".into(), b"example.org".to_vec()),
            ("x-raw".into(), vec![0xff, 0x00, b'a']),
        ],
        client_addr: "192.0.2.1".into(),
        request_id: "req-1".into(),
        received_unix_ms: 1_700_000_000_000,
        body: BodyRef::Inline(body.to_vec()),
        body_len: body.len() as u64,
        body_hash: hash,
        multipart: Some(MultipartIndex {
            parts: vec![PartInfo {
                name: Some("file".into()),
                filename: Some("a.png".into()),
                content_type: Some("image/png".into()),
                size: 3,
                hash,
                value: None,
            }],
            error: Some("stopped".into()),
        }),
    }
}

pub(super) fn sample_outcome(status: u16) -> Outcome {
    Outcome {
        status,
        location: Some("/node/7".into()),
        set_cookies: vec!["SESS=abc; Path=/".into()],
        body_digest: BlobHash::of_empty(),
        body_len: 0,
        duration_us: 1234,
        error: None,
        fields: Vec::new(),
        masked_digest: None,
    }
}

/// A fully populated settled entry.
pub(super) fn sample_entry(seq: u64) -> Entry {
    Entry {
        seq: Seq(seq),
        state: EntryState::Accepted,
        request: sample_request(b"title=x"),
        outcome: Some(sample_outcome(302)),
        settled_unix_ms: Some(1_700_000_000_100),
        writer_state: None,
        mirror_outcome: None,
        halt: None,
        audit: Vec::new(),
    }
}

/// A mirror-side entry with every optional field set.
pub(super) fn sample_mirror_entry(seq: u64) -> Entry {
    let mut mirror_outcome = sample_outcome(500);
    mirror_outcome.fields = vec![("/id".into(), "43".into())];
    mirror_outcome.masked_digest = Some(BlobHash::of_empty());
    Entry {
        state: EntryState::Diverged,
        writer_state: Some(EntryState::Accepted),
        mirror_outcome: Some(mirror_outcome),
        halt: Some(Halt {
            seq: Seq(seq),
            reason: "status_mismatch".into(),
            detail: format!("status_mismatch seq={seq} writer=302 mirror=500"),
        }),
        audit: vec![AuditRecord {
            unix_ms: 1_700_000_000_200,
            action: "retry".into(),
            reason: "fixed permissions".into(),
            by: "cli".into(),
        }],
        ..sample_entry(seq)
    }
}

pub(super) const CACHE: u64 = 4 * 1024 * 1024;

pub(super) fn open(dir: &tempfile::TempDir) -> (Log, Vec<Seq>) {
    Log::open(&dir.path().join("log"), CACHE).unwrap()
}

fn seqs(entries: &[Entry]) -> Vec<u64> {
    entries.iter().map(|e| e.seq.0).collect()
}

#[test]
fn log_is_send_sync_clone() {
    fn check<T: Send + Sync + Clone + 'static>() {}
    check::<Log>();
}

#[test]
fn append_settle_get() {
    let dir = tempfile::tempdir().unwrap();
    let (log, recovered) = open(&dir);
    assert!(recovered.is_empty());
    assert_eq!(log.last_seq(), Seq(0));

    let seq = log.append_pending(sample_request(b"a=1")).unwrap();
    assert_eq!(seq, Seq(1));
    assert_eq!(log.last_seq(), Seq(1));
    let pending = log.get(seq).unwrap().unwrap();
    assert_eq!(pending.state, EntryState::Pending);
    assert_eq!(pending.request, sample_request(b"a=1"));
    assert_eq!(pending.outcome, None);
    assert_eq!(pending.settled_unix_ms, None);

    let state = log
        .settle(seq, Event::OriginAccepted, sample_outcome(201))
        .unwrap();
    assert_eq!(state, EntryState::Accepted);
    let settled = log.get(seq).unwrap().unwrap();
    assert_eq!(settled.state, EntryState::Accepted);
    assert_eq!(settled.outcome, Some(sample_outcome(201)));
    assert!(settled.settled_unix_ms.is_some());

    let seq2 = log.append_pending(sample_request(b"a=2")).unwrap();
    assert_eq!(seq2, Seq(2));
    let state = log
        .settle(seq2, Event::OriginRejected, sample_outcome(403))
        .unwrap();
    assert_eq!(state, EntryState::Rejected);
    assert_eq!(log.get(Seq(3)).unwrap(), None);
}

#[test]
fn settle_refuses_illegal_and_missing_without_poisoning() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(&dir);
    let seq = log.append_pending(sample_request(b"")).unwrap();
    log.settle(seq, Event::OriginAccepted, sample_outcome(200))
        .unwrap();
    let again = log.settle(seq, Event::OriginRejected, sample_outcome(500));
    assert!(matches!(again, Err(LogError::Illegal(_))), "{again:?}");
    let missing = log.settle(Seq(9), Event::OriginAccepted, sample_outcome(200));
    assert!(matches!(missing, Err(LogError::NotFound(Seq(9)))));
    assert!(!log.is_poisoned());
    // The refused settle changed nothing.
    assert_eq!(
        log.get(seq).unwrap().unwrap().outcome,
        Some(sample_outcome(200))
    );
}

#[test]
fn list_and_iter_from() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(&dir);
    // Enough entries that seqs cross a byte boundary (255 → 256) in the key.
    for i in 1..=300u64 {
        assert_eq!(log.append_pending(sample_request(b"x")).unwrap(), Seq(i));
    }
    assert_eq!(seqs(&log.list(None, 3).unwrap()), [300, 299, 298]);
    assert_eq!(
        seqs(&log.list(Some(Seq(258)), 4).unwrap()),
        [257, 256, 255, 254]
    );
    assert_eq!(seqs(&log.list(Some(Seq(3)), 10).unwrap()), [2, 1]);
    assert!(log.list(Some(Seq(1)), 10).unwrap().is_empty());
    assert!(log.list(None, 0).unwrap().is_empty());

    let from: Vec<_> = log.iter_from(Seq(250)).map(|e| e.unwrap().seq.0).collect();
    assert_eq!(from, (250..=300).collect::<Vec<_>>());
    assert_eq!(log.iter_from(Seq(0)).count(), 300);
    assert_eq!(log.iter_from(Seq(301)).count(), 0);
}

#[test]
fn reopen_keeps_everything_and_never_reuses_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(&dir);
    let seq = log.append_pending(sample_request(b"a=1")).unwrap();
    log.settle(seq, Event::OriginAccepted, sample_outcome(201))
        .unwrap();
    let before = log.get(seq).unwrap();
    drop(log);

    let (log, recovered) = open(&dir);
    assert!(recovered.is_empty());
    assert_eq!(log.last_seq(), Seq(1));
    assert_eq!(log.get(seq).unwrap(), before);
    assert_eq!(log.append_pending(sample_request(b"a=2")).unwrap(), Seq(2));
}

#[test]
fn next_seq_survives_removal_of_all_entries() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(&dir);
    for _ in 0..3 {
        log.append_pending(sample_request(b"x")).unwrap();
    }
    // What retention will do once every mirror has the entries.
    log.inner.entries.clear().unwrap();
    log.inner.unsettled.clear().unwrap();
    log.inner.db.flush().unwrap();
    drop(log);

    let (log, recovered) = open(&dir);
    assert!(recovered.is_empty());
    assert_eq!(log.last_seq(), Seq(3));
    assert_eq!(log.append_pending(sample_request(b"x")).unwrap(), Seq(4));
}

#[test]
fn pending_at_open_comes_back_in_doubt_and_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(&dir);
    let settled = log.append_pending(sample_request(b"a=1")).unwrap();
    log.settle(settled, Event::OriginAccepted, sample_outcome(201))
        .unwrap();
    let pending = log.append_pending(sample_request(b"a=2")).unwrap();
    drop(log); // "crash" between append_pending and settle

    let (log, recovered) = open(&dir);
    assert_eq!(recovered, [pending]);
    let entry = log.get(pending).unwrap().unwrap();
    assert_eq!(entry.state, EntryState::InDoubt);
    assert_eq!(entry.outcome, None);
    assert!(entry.settled_unix_ms.is_some());
    assert_eq!(
        log.get(settled).unwrap().unwrap().state,
        EntryState::Accepted
    );
    // An in-doubt entry is not settled again by the capture path.
    let again = log.settle(pending, Event::OriginAccepted, sample_outcome(200));
    assert!(matches!(again, Err(LogError::Illegal(_))));
    drop(log);

    // Recovery was durable and is reported once only.
    let (log, recovered) = open(&dir);
    assert!(recovered.is_empty());
    assert_eq!(
        log.get(pending).unwrap().unwrap().state,
        EntryState::InDoubt
    );
    assert_eq!(log.append_pending(sample_request(b"a=3")).unwrap(), Seq(3));
}

#[test]
fn one_fsync_per_append_and_per_settle() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(&dir);
    for _ in 0..20 {
        let before = log.fsync_count();
        let seq = log.append_pending(sample_request(&[b'x'; 2000])).unwrap();
        // sled's `db` (the seal is written, not fsynced: durable.rs).
        assert_eq!(log.fsync_count() - before, 1, "append_pending {seq}");
        let before = log.fsync_count();
        log.settle(seq, Event::OriginAccepted, sample_outcome(200))
            .unwrap();
        assert_eq!(log.fsync_count() - before, 1, "settle {seq}");
    }
    // Reads never fsync.
    let before = log.fsync_count();
    log.get(Seq(1)).unwrap();
    log.list(None, 10).unwrap();
    assert_eq!(log.fsync_count(), before);
}

#[test]
fn open_fsyncs_what_sled_created() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(&dir);
    // At least db, conf, blobs/, log/ and the parent.
    assert!(log.fsync_count() >= 5, "{}", log.fsync_count());
}

#[test]
fn sled_blob_files_are_fsynced_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(&dir);
    let big = vec![b'b'; 200 * 1024]; // over sled's ~128 KiB inline limit for a page
    let before = log.fsync_count();
    let seq = log.append_pending(sample_request(&big)).unwrap();
    let blob_files = std::fs::read_dir(dir.path().join("log").join("blobs"))
        .unwrap()
        .count();
    assert!(blob_files > 0, "sled did not spill to its blobs dir");
    // db, plus each new sled blob file, plus the blobs directory.
    assert!(
        log.fsync_count() - before >= 3,
        "{}",
        log.fsync_count() - before
    );
    drop(log);

    let (log, recovered) = open(&dir);
    assert_eq!(recovered, [seq]);
    let entry = log.get(seq).unwrap().unwrap();
    assert_eq!(entry.request.body, BodyRef::Inline(big));
}

#[test]
fn failed_fsync_poisons_and_later_writes_do_not_touch_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(&dir);
    let first = log.append_pending(sample_request(b"a=1")).unwrap();

    log.fail_next_fsync();
    let failed = log.append_pending(sample_request(b"a=2"));
    assert!(
        matches!(failed, Err(LogError::Io { op: "fsync", .. })),
        "{failed:?}"
    );
    assert!(log.is_poisoned());
    assert!(failed
        .unwrap_err()
        .to_string()
        .contains("injected fsync failure"));

    let fsyncs = log.fsync_count();
    let clone = log.clone();
    assert!(matches!(
        clone.append_pending(sample_request(b"a=3")),
        Err(LogError::Poisoned)
    ));
    assert!(matches!(
        log.settle(first, Event::OriginAccepted, sample_outcome(200)),
        Err(LogError::Poisoned)
    ));
    assert_eq!(
        log.fsync_count(),
        fsyncs,
        "a poisoned log must not touch the disk"
    );
    // Reads still work, for the admin API and the status page.
    assert_eq!(log.get(first).unwrap().unwrap().state, EntryState::Pending);
    drop((log, clone));

    // Restart clears the latch. Whatever the failed write left behind, seq 1 is never reused
    // and nothing stays pending.
    let (log, recovered) = open(&dir);
    assert!(!log.is_poisoned());
    assert!(recovered.contains(&first));
    let next = log.append_pending(sample_request(b"a=4")).unwrap();
    assert!(next > first);
    for entry in log.iter_from(Seq(1)) {
        let entry = entry.unwrap();
        if entry.seq != next {
            assert_ne!(entry.state, EntryState::Pending, "entry {}", entry.seq);
        }
    }
}

#[test]
fn concurrent_appends_get_distinct_contiguous_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(&dir);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let log = log.clone();
            std::thread::spawn(move || {
                (0..10)
                    .map(|_| log.append_pending(sample_request(b"x")).unwrap().0)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    all.sort();
    assert_eq!(all, (1..=40).collect::<Vec<_>>());
    assert_eq!(log.last_seq(), Seq(40));
}

#[test]
fn damaged_entry_is_a_codec_error() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(&dir);
    let seq = log.append_pending(sample_request(b"x")).unwrap();
    log.inner
        .entries
        .insert(codec::seq_key(seq), &[9u8, 1, 2, 3][..])
        .unwrap();
    assert!(matches!(log.get(seq), Err(LogError::Codec(_))));
    // An entry stored under the wrong key is caught too.
    let other = codec::encode_entry(&sample_entry(7)).unwrap();
    log.inner
        .entries
        .insert(codec::seq_key(seq), other)
        .unwrap();
    assert!(matches!(log.get(seq), Err(LogError::Codec(m)) if m.contains("says it is 7")));
}

#[test]
fn damaged_next_seq_is_refused_not_wrapped() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(&dir);
    log.inner
        .meta
        .insert(META_NEXT_SEQ, &codec::encode_u64(u64::MAX)[..])
        .unwrap();
    log.inner.db.flush().unwrap();
    drop(log);

    let (log, _) = open(&dir);
    let refused = log.append_pending(sample_request(b"x"));
    assert!(matches!(refused, Err(LogError::Codec(_))), "{refused:?}");
    assert!(!log.is_poisoned(), "nothing was written");
}

// --- the seal (durable.rs): committed writes sled lost at open are detected ---

/// Flips one bit of every copy of `needle` in sled's `db` file; returns how many.
fn flip_in_db(dir: &tempfile::TempDir, needle: &[u8]) -> usize {
    let db = dir.path().join("log").join("db");
    let mut bytes = std::fs::read(&db).unwrap();
    let hits: Vec<usize> = (0..bytes.len().saturating_sub(needle.len()))
        .filter(|&i| &bytes[i..i + needle.len()] == needle)
        .collect();
    for &i in &hits {
        bytes[i + needle.len() / 2] ^= 0x01;
    }
    std::fs::write(&db, &bytes).unwrap();
    hits.len()
}

#[test]
fn a_flipped_byte_in_a_committed_entry_refuses_to_open_instead_of_losing_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(&dir);
    for i in 0..5 {
        let seq = log
            .append_pending(sample_request(format!("body-{i}-abcdefgh").as_bytes()))
            .unwrap();
        log.settle(seq, Event::OriginAccepted, sample_outcome(200))
            .unwrap();
    }
    drop(log);
    assert!(
        flip_in_db(&dir, b"body-2-abcdefgh") > 0,
        "entry 3 not found in db"
    );
    match Log::open(&dir.path().join("log"), 1 << 20) {
        Err(LogError::Damaged(msg)) => {
            assert!(msg.contains("sled recovered only"), "{msg}")
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok((log, _)) => panic!(
            "opened with last seq {} after damage: acknowledged entries silently lost",
            log.last_seq()
        ),
    }
}

#[test]
fn a_damaged_seal_refuses_to_open_and_a_missing_one_is_recreated() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(&dir);
    log.append_pending(sample_request(b"x")).unwrap();
    drop(log);
    let seal = dir.path().join("log").join(durable::SEAL_FILE);
    let mut bytes = std::fs::read(&seal).unwrap();
    assert_eq!(bytes.len(), 16);
    bytes[3] ^= 0x10;
    std::fs::write(&seal, &bytes).unwrap();
    match Log::open(&dir.path().join("log"), 1 << 20) {
        Err(LogError::Damaged(msg)) => assert!(msg.contains("checksum"), "{msg}"),
        other => panic!("{:?}", other.map(|(l, _)| l.last_seq())),
    }
    // A log from a build without seals: opens, and is sealed from then on.
    std::fs::remove_file(&seal).unwrap();
    let (log, _) = open(&dir);
    assert_eq!(log.last_seq(), Seq(1));
    drop(log);
    assert_eq!(std::fs::read(&seal).unwrap().len(), 16);
    // Null control: an intact log and seal open, with nothing lost.
    let (log, _) = open(&dir);
    assert_eq!(log.last_seq(), Seq(1));
}

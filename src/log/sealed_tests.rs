//! Tests of the log with encryption at rest: every kind of value that can hold client data is
//! sealed on disk (checked by scanning sled's raw files for canaries, with a plaintext control
//! that finds them), sealed values need their key, and plaintext logs upgrade in place.
#![cfg(test)]

use std::path::Path;

use super::tests::{sample_entry, sample_outcome, sample_request, CACHE};
use super::*;
use crate::crypt::NodeKey;

fn key(n: u8) -> NodeKey {
    NodeKey::from_hex(&format!("{n:02x}").repeat(32)).unwrap()
}

fn open_with(dir: &Path, key: Option<&NodeKey>) -> Log {
    Log::open_with_key(&dir.join("log"), CACHE, key).unwrap().0
}

/// Whether any file under `dir` contains `needle`, read as raw bytes.
fn found_in_files(dir: &Path, needle: &[u8]) -> bool {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read(&path)
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle)
            {
                return true;
            }
        }
    }
    false
}

/// The canaries `write_everything` stores, one per kind of value.
const CANARIES: [&str; 6] = [
    "CANARY-body",
    "CANARY-header",
    "CANARY-audit",
    "CANARY-halt",
    "CANARY-writer-cookie",
    "CANARY-mirror-cookie",
];

/// Writes every kind of value a log holds, each with its canary: a writer's entries (request
/// body and headers, settled, resolved with an audit record), a mirror's pause record, and a
/// mirror's applied entry with a cookie mapping and a halt.
fn write_everything(dir: &Path, key: Option<&NodeKey>) {
    let writer = open_with(&dir.join("writer"), key);
    let mut request = sample_request(b"user=admin&password=CANARY-body");
    request
        .headers
        .push(("authorization".into(), b"Basic CANARY-header".to_vec()));
    let seq = writer.append_pending(request.clone()).unwrap();
    writer
        .settle(seq, Event::OutcomeUnknown, sample_outcome(502))
        .unwrap();
    let audit = AuditRecord {
        unix_ms: 1,
        action: "resolve".into(),
        reason: "CANARY-audit".into(),
        by: "cli".into(),
    };
    writer.resolve(seq, true, audit.clone()).unwrap();
    writer.set_paused("mirror-1", true, audit).unwrap();
    writer.set_cursor("mirror-1", Seq(1)).unwrap();
    drop(writer);

    let mirror = open_with(&dir.join("mirror"), key);
    let shipped = |seq| Entry {
        request: request.clone(),
        ..sample_entry(seq)
    };
    mirror.begin_apply(shipped(1)).unwrap();
    let cookie = (
        "SESS".to_owned(),
        "CANARY-writer-cookie".to_owned(),
        "CANARY-mirror-cookie".to_owned(),
    );
    mirror
        .finish_apply(Seq(1), sample_outcome(302), Ok(()), vec![cookie])
        .unwrap();
    mirror.begin_apply(shipped(2)).unwrap();
    let halt = Halt {
        seq: Seq(2),
        reason: "status_mismatch".into(),
        detail: "mirror said CANARY-halt".into(),
    };
    mirror
        .finish_apply(Seq(2), sample_outcome(500), Err(halt), Vec::new())
        .unwrap();
}

/// What `write_everything` wrote, read back through the API.
fn read_everything(dir: &Path, key: Option<&NodeKey>) -> Result<(), LogError> {
    let writer = open_with(&dir.join("writer"), key);
    let entry = writer.get(Seq(1))?.unwrap();
    assert!(entry
        .request
        .headers
        .iter()
        .any(|(_, v)| v == b"Basic CANARY-header"));
    assert_eq!(entry.state, EntryState::Accepted);
    assert_eq!(entry.audit[0].reason, "CANARY-audit");
    assert!(writer.paused("mirror-1")?);
    assert_eq!(writer.mirror_audit("mirror-1")?[0].reason, "CANARY-audit");
    assert_eq!(writer.cursor("mirror-1")?, Seq(1));
    assert_eq!(writer.list(None, 10)?.len(), 1);
    drop(writer);

    let (mirror, _) = Log::open_with_key(&dir.join("mirror").join("log"), CACHE, key)?;
    assert_eq!(mirror.halt().unwrap().detail, "mirror said CANARY-halt");
    assert_eq!(
        mirror
            .mapped_cookie("SESS", "CANARY-writer-cookie")?
            .as_deref(),
        Some("CANARY-mirror-cookie")
    );
    assert_eq!(
        mirror
            .iter_from(Seq(1))
            .collect::<Result<Vec<_>, _>>()?
            .len(),
        2
    );
    Ok(())
}

#[test]
fn with_a_key_no_client_data_reaches_the_disk_in_the_clear() {
    let dir = tempfile::tempdir().unwrap();
    let k = key(1);
    write_everything(dir.path(), Some(&k));
    read_everything(dir.path(), Some(&k)).unwrap();
    for canary in CANARIES {
        assert!(
            !found_in_files(dir.path(), canary.as_bytes()),
            "{canary} found in the clear under {}",
            dir.path().display()
        );
    }
}

/// The control: the same scan finds every canary in a plaintext log, so the test above would
/// catch a value that escaped sealing.
#[test]
fn without_a_key_the_same_scan_finds_every_canary() {
    let dir = tempfile::tempdir().unwrap();
    write_everything(dir.path(), None);
    read_everything(dir.path(), None).unwrap();
    for canary in CANARIES {
        assert!(
            found_in_files(dir.path(), canary.as_bytes()),
            "{canary} not found: the scan is blind"
        );
    }
}

#[test]
fn sealed_values_need_this_nodes_key() {
    let dir = tempfile::tempdir().unwrap();
    write_everything(dir.path(), Some(&key(1)));

    // No key, or another node's: the log refuses to open, naming the key it needs.
    for node in ["writer", "mirror"] {
        let dir = dir.path().join(node).join("log");
        let err = Log::open(&dir, CACHE).unwrap_err().to_string();
        assert!(err.contains("a key this node does not have"), "{err}");
        assert!(err.contains(&key(1).id().to_string()), "{err}");
        assert!(err.contains("encryption_key_file"), "{err}");
        let err = Log::open_with_key(&dir, CACHE, Some(&key(2)))
            .unwrap_err()
            .to_string();
        assert!(err.contains(&key(1).id().to_string()), "{err}");
        assert!(err.contains(&key(2).id().to_string()), "{err}");
    }
    // Past that check (an older entry sealed, the newest not), reads are clear errors.
    let log = open_with(&dir.path().join("writer"), Some(&key(1)));
    let mut plain = log.get(Seq(1)).unwrap().unwrap();
    plain.seq = Seq(2);
    let bytes = encode_entry(&plain).unwrap();
    log.inner.entries.insert(seq_key(Seq(2)), bytes).unwrap();
    drop(log);
    let log = open_with(&dir.path().join("writer"), None);
    let err = log.get(Seq(1)).unwrap_err().to_string();
    assert!(
        err.contains("entry 1") && err.contains("a key this node does not have"),
        "{err}"
    );
    assert!(log.list(None, 10).is_err());
    assert!(log.paused("mirror-1").is_err());
    assert!(log.get(Seq(2)).unwrap().is_some());
}

#[test]
fn a_sealed_entry_moved_to_another_seq_fails_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_with(dir.path(), Some(&key(1)));
    for body in [&b"a=1"[..], b"a=2"] {
        let seq = log.append_pending(sample_request(body)).unwrap();
        log.settle(seq, Event::OriginAccepted, sample_outcome(200))
            .unwrap();
    }
    let one = log.inner.entries.get(seq_key(Seq(1))).unwrap().unwrap();
    log.inner.entries.insert(seq_key(Seq(2)), one).unwrap();
    let err = log.get(Seq(2)).unwrap_err().to_string();
    assert!(
        err.contains("entry 2") && err.contains("authentication"),
        "{err}"
    );
    assert!(log.get(Seq(1)).unwrap().is_some());
}

#[test]
fn a_plaintext_log_stays_readable_when_encryption_is_switched_on() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_with(dir.path(), None);
    let old = log
        .append_pending(sample_request(b"old=CANARY-old"))
        .unwrap();
    log.settle(old, Event::OriginAccepted, sample_outcome(200))
        .unwrap();
    let pending = log.append_pending(sample_request(b"pending=1")).unwrap();
    drop(log);

    let k = key(1);
    // Reopening with the key recovers the pending entry (rewriting it sealed).
    let (log, recovered) = Log::open_with_key(&dir.path().join("log"), CACHE, Some(&k)).unwrap();
    assert_eq!(recovered, vec![pending]);
    assert_eq!(log.get(old).unwrap().unwrap().state, EntryState::Accepted);
    let new = log
        .append_pending(sample_request(b"new=CANARY-new"))
        .unwrap();
    log.settle(new, Event::OriginAccepted, sample_outcome(200))
        .unwrap();
    let all: Vec<u64> = log
        .list(None, 10)
        .unwrap()
        .iter()
        .map(|e| e.seq.0)
        .collect();
    assert_eq!(all, [3, 2, 1]);
    assert!(is_sealed_on_disk(&log, new) && is_sealed_on_disk(&log, pending));
    assert!(
        !is_sealed_on_disk(&log, old),
        "old values are not rewritten"
    );
    drop(log);
    assert!(!found_in_files(dir.path(), b"CANARY-new"));

    // Back without the key: refused at open (the newest entry is sealed).
    assert!(Log::open(&dir.path().join("log"), CACHE).is_err());
}

fn is_sealed_on_disk(log: &Log, seq: Seq) -> bool {
    let bytes = log.inner.entries.get(seq_key(seq)).unwrap().unwrap();
    codec::is_sealed(&bytes)
}

#[test]
fn a_cookie_mapped_before_encryption_is_still_found() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_with(dir.path(), None);
    log.begin_apply(sample_entry(1)).unwrap();
    let cookie = ("SESS".to_owned(), "w1".to_owned(), "m1".to_owned());
    log.finish_apply(Seq(1), sample_outcome(200), Ok(()), vec![cookie])
        .unwrap();
    drop(log);

    let log = open_with(dir.path(), Some(&key(1)));
    assert_eq!(
        log.mapped_cookie("SESS", "w1").unwrap().as_deref(),
        Some("m1")
    );
    log.begin_apply(sample_entry(2)).unwrap();
    let cookie = ("SESS".to_owned(), "w2".to_owned(), "m2".to_owned());
    log.finish_apply(Seq(2), sample_outcome(200), Ok(()), vec![cookie])
        .unwrap();
    assert_eq!(
        log.mapped_cookie("SESS", "w2").unwrap().as_deref(),
        Some("m2")
    );
    assert_eq!(log.mapped_cookie("SESS", "w3").unwrap(), None);
    // Stored under a blinded key: the writer's value is not in the key either.
    assert!(log
        .inner
        .cookies
        .get(mirror_side_plain_key("SESS", "w2"))
        .unwrap()
        .is_none());
}

/// The plain cookie map key (as `mirror_side::cookie_key` builds it).
fn mirror_side_plain_key(name: &str, value: &str) -> Vec<u8> {
    let mut key = (name.len() as u32).to_be_bytes().to_vec();
    key.extend_from_slice(name.as_bytes());
    key.extend_from_slice(value.as_bytes());
    key
}

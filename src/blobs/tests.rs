//! Tests of the blob store, plain and sealed, against real temp dirs.

use super::*;
use crate::crypt::stream::SEGMENT;
use crate::crypt::NodeKey;

fn store() -> (tempfile::TempDir, BlobStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(&dir.path().join("blobs")).unwrap();
    (dir, store)
}

fn put(store: &BlobStore, chunks: &[&[u8]]) -> BlobHash {
    let mut w = store.writer().unwrap();
    for chunk in chunks {
        w.write(chunk).unwrap();
    }
    w.finish().unwrap()
}

fn tmp_files(store: &BlobStore) -> usize {
    fs::read_dir(store.dir.join(TMP_DIR)).unwrap().count()
}

#[test]
fn write_finish_has_open_verified() {
    let (_dir, store) = store();
    let mut w = store.writer().unwrap();
    w.write(b"hello ").unwrap();
    w.write(b"world").unwrap();
    assert_eq!(w.len(), 11);
    let hash = w.finish().unwrap();
    assert_eq!(hash, BlobHash::from(blake3::hash(b"hello world")));
    assert!(store.has(&hash));
    assert_eq!(store.len(&hash).unwrap(), 11);
    let hex = hash.to_string();
    assert!(store.dir.join(&hex[..2]).join(&hex[2..]).is_file());

    let mut body = String::new();
    store
        .open_verified(&hash)
        .unwrap()
        .read_to_string(&mut body)
        .unwrap();
    assert_eq!(body, "hello world");
    assert_eq!(tmp_files(&store), 0);
}

#[test]
fn large_blob_round_trips() {
    let (_dir, store) = store();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let hash = put(&store, &data.chunks(8192).collect::<Vec<_>>());
    let mut back = Vec::new();
    store
        .open_verified(&hash)
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert_eq!(back, data);
}

#[test]
fn empty_blob() {
    let (_dir, store) = store();
    let hash = put(&store, &[]);
    assert_eq!(hash, BlobHash::of_empty());
    assert_eq!(store.len(&hash).unwrap(), 0);
}

#[test]
fn identical_content_from_two_writers_is_stored_once() {
    let (_dir, store) = store();
    let mut a = store.writer().unwrap();
    let mut b = store.writer().unwrap();
    a.write(b"same").unwrap();
    b.write(b"same").unwrap();
    let ha = a.finish().unwrap();
    let hb = b.finish().unwrap();
    assert_eq!(ha, hb);
    assert_eq!(tmp_files(&store), 0);
    let hex = ha.to_string();
    assert_eq!(fs::read_dir(store.dir.join(&hex[..2])).unwrap().count(), 1);
    assert!(store.open_verified(&ha).is_ok());
}

#[test]
fn concurrent_finishes_of_the_same_content_are_safe() {
    let (_dir, store) = store();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            std::thread::spawn(move || put(&store, &[&[7u8; 100_000]]))
        })
        .collect();
    let hashes: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(hashes.windows(2).all(|w| w[0] == w[1]));
    assert!(store.open_verified(&hashes[0]).is_ok());
    assert_eq!(tmp_files(&store), 0);
}

#[test]
fn drop_without_finish_leaves_nothing() {
    let (_dir, store) = store();
    let mut w = store.writer().unwrap();
    w.write(&[1u8; 200_000]).unwrap();
    assert_eq!(tmp_files(&store), 1);
    drop(w);
    assert_eq!(tmp_files(&store), 0);
    assert!(!store.has(&BlobHash::from(blake3::hash(&[1u8; 200_000]))));
}

#[test]
fn open_removes_leftover_temp_files() {
    let (dir, store) = store();
    fs::write(store.dir.join(TMP_DIR).join("crashed-1"), b"partial").unwrap();
    let store = BlobStore::open(&dir.path().join("blobs")).unwrap();
    assert_eq!(tmp_files(&store), 0);
}

#[test]
fn corrupted_blob_is_reported() {
    let (_dir, store) = store();
    let hash = put(&store, &[b"original content"]);
    fs::write(store.path_of(&hash), b"original c0ntent").unwrap();
    assert!(matches!(store.open_verified(&hash), Err(BlobError::Corrupt(h)) if h == hash));
    assert!(store
        .open_verified(&hash)
        .unwrap_err()
        .to_string()
        .contains("corrupt"));
}

#[test]
fn damaged_copy_is_replaced_by_a_new_write() {
    let (_dir, store) = store();
    let hash = put(&store, &[b"content"]);
    fs::write(store.path_of(&hash), b"cont").unwrap(); // truncated
    assert_eq!(put(&store, &[b"content"]), hash);
    assert!(store.open_verified(&hash).is_ok());
}

#[test]
fn missing_blob_is_not_found() {
    let (_dir, store) = store();
    let hash = BlobHash::from(blake3::hash(b"never written"));
    assert!(!store.has(&hash));
    assert!(matches!(store.len(&hash), Err(BlobError::NotFound(_))));
    assert!(matches!(
        store.open_verified(&hash),
        Err(BlobError::NotFound(_))
    ));
}

#[test]
fn hash_text_form() {
    let hash = BlobHash::from(blake3::hash(b"x"));
    let hex = hash.to_string();
    assert_eq!(hex.len(), 64);
    assert_eq!(format!("{hash:?}"), hex);
    assert!(hex
        .bytes()
        .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()));
    assert_eq!(hex.parse::<BlobHash>().unwrap(), hash);
    assert_eq!(hex.to_uppercase().parse::<BlobHash>().unwrap(), hash);
}

#[test]
fn bad_hashes_are_rejected() {
    let good = BlobHash::from(blake3::hash(b"x")).to_string();
    let too_long = format!("{good}0");
    let non_hex = format!("{}g", &good[..63]);
    // 64 bytes but not 64 ASCII characters: must not panic on a char boundary.
    let multibyte = format!("é{}", &good[..62]);
    for bad in ["", &good[..63], &too_long, &non_hex, &multibyte] {
        assert!(
            matches!(bad.parse::<BlobHash>(), Err(BlobError::BadHash(_))),
            "{bad:?}"
        );
    }
}

// --- encryption at rest ---

fn key(n: u8) -> NodeKey {
    NodeKey::from_hex(&format!("{n:02x}").repeat(32)).unwrap()
}

fn sealed_store(dir: &tempfile::TempDir, key: Option<&NodeKey>) -> BlobStore {
    BlobStore::open_with_key(&dir.path().join("blobs"), key).unwrap()
}

/// `len` bytes with a canary every 10,000 bytes.
fn canary_data(len: usize) -> Vec<u8> {
    let mut out: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    for at in (0..len.saturating_sub(6)).step_by(10_000) {
        out[at..at + 6].copy_from_slice(b"CANARY");
    }
    out
}

fn has_canary(bytes: &[u8]) -> bool {
    bytes.windows(6).any(|w| w == b"CANARY")
}

fn read_all(mut r: BlobReader) -> Vec<u8> {
    let mut out = Vec::new();
    r.read_to_end(&mut out).unwrap();
    out
}

#[test]
fn sealed_blobs_round_trip_at_segment_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let store = sealed_store(&dir, Some(&key(1)));
    assert!(store.is_encrypted());
    for len in [0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 3 * SEGMENT + 5] {
        let data = canary_data(len);
        let hash = put(&store, &data.chunks(5000).collect::<Vec<_>>());
        // Named by the plaintext's hash, as without encryption.
        assert_eq!(hash, BlobHash::from(blake3::hash(&data)), "len {len}");
        let raw = fs::read(store.sealed_path_of(&hash)).unwrap();
        assert!(!store.path_of(&hash).exists(), "no plaintext copy");
        assert!(len < 6 || !has_canary(&raw), "len {len}");
        assert_eq!(
            raw.len() as u64,
            crate::crypt::stream::sealed_len(len as u64)
        );
        assert!(store.has(&hash));
        assert_eq!(store.len(&hash).unwrap(), len as u64);
        let reader = store.open_verified(&hash).unwrap();
        assert_eq!(reader.len(), len as u64);
        assert_eq!(read_all(reader), data, "len {len}");
        assert_eq!(read_all(store.open_unverified(&hash).unwrap()), data);
    }
    assert_eq!(tmp_files(&store), 0);
}

#[test]
fn a_sealed_blob_being_written_is_sealed_in_its_temp_file_too() {
    let dir = tempfile::tempdir().unwrap();
    let store = sealed_store(&dir, Some(&key(1)));
    let mut w = store.writer().unwrap();
    w.write(&canary_data(3 * SEGMENT)).unwrap();
    let tmp = fs::read_dir(store.dir.join(TMP_DIR)).unwrap();
    for file in tmp {
        let bytes = fs::read(file.unwrap().path()).unwrap();
        assert!(
            bytes.len() > 2 * SEGMENT,
            "segments are written as they fill"
        );
        assert!(!has_canary(&bytes));
    }
    drop(w);
    assert_eq!(tmp_files(&store), 0);
}

#[test]
fn a_tampered_sealed_blob_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = sealed_store(&dir, Some(&key(1)));
    let data = canary_data(2 * SEGMENT + 10);
    let hash = put(&store, &[&data]);
    let path = store.sealed_path_of(&hash);
    let good = fs::read(&path).unwrap();
    for at in [40, SEGMENT + 100, good.len() - 1] {
        let mut bad = good.clone();
        bad[at] ^= 1;
        fs::write(&path, &bad).unwrap();
        let err = store.open_verified(&hash).unwrap_err();
        assert!(
            matches!(
                err,
                BlobError::Sealed {
                    source: CryptError::Auth,
                    ..
                }
            ),
            "flip at {at}: {err}"
        );
        // Read unverified, the damage still surfaces as an error, never as bytes.
        let mut r = store.open_unverified(&hash).unwrap();
        assert!(std::io::copy(&mut r, &mut std::io::sink()).is_err());
    }
    // Cut at a segment boundary: the length is no sealed blob's.
    fs::write(&path, &good[..HEADER_LEN + SEGMENT + 16]).unwrap();
    assert!(matches!(
        store.open_verified(&hash),
        Err(BlobError::Sealed { .. })
    ));
    fs::write(&path, &good).unwrap();
    assert!(store.open_verified(&hash).is_ok());
}

#[test]
fn a_sealed_blob_needs_this_nodes_key() {
    let dir = tempfile::tempdir().unwrap();
    let hash = put(&sealed_store(&dir, Some(&key(1))), &[b"secret body"]);

    let other = sealed_store(&dir, Some(&key(2)));
    assert!(
        !other.has(&hash),
        "a copy this node cannot read does not count"
    );
    let err = other.open_verified(&hash).unwrap_err().to_string();
    assert!(err.contains("a key this node does not have"), "{err}");
    assert!(err.contains(&key(1).id().to_string()), "{err}");

    let plain = sealed_store(&dir, None);
    assert!(!plain.has(&hash));
    let err = plain.open_verified(&hash).unwrap_err().to_string();
    assert!(err.contains("encryption_key_file"), "{err}");

    // A push of the same content under another key replaces the unreadable copy.
    assert_eq!(put(&other, &[b"secret body"]), hash);
    assert!(other.has(&hash));
    assert_eq!(
        read_all(other.open_verified(&hash).unwrap()),
        b"secret body"
    );
}

#[test]
fn plaintext_blobs_stay_readable_when_encryption_is_switched_on() {
    let dir = tempfile::tempdir().unwrap();
    let hash = put(&sealed_store(&dir, None), &[b"from before"]);
    let store = sealed_store(&dir, Some(&key(1)));
    assert!(store.has(&hash));
    assert_eq!(store.len(&hash).unwrap(), 11);
    assert_eq!(
        read_all(store.open_verified(&hash).unwrap()),
        b"from before"
    );
    // Written again with the key: a sealed copy joins it, and is the one read.
    assert_eq!(put(&store, &[b"from before"]), hash);
    assert!(store.sealed_path_of(&hash).is_file());
    assert!(format!("{:?}", store.open_verified(&hash).unwrap()).contains("sealed: true"));
}

#[test]
fn identical_sealed_content_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = sealed_store(&dir, Some(&key(1)));
    let a = put(&store, &[&[7u8; 100_000]]);
    let before = fs::read(store.sealed_path_of(&a)).unwrap();
    assert_eq!(put(&store, &[&[7u8; 100_000]]), a);
    // Dedup kept the first copy (a rewrite would have a fresh nonce prefix).
    assert_eq!(fs::read(store.sealed_path_of(&a)).unwrap(), before);
    let hex = a.to_string();
    assert_eq!(fs::read_dir(store.dir.join(&hex[..2])).unwrap().count(), 1);
    assert_eq!(tmp_files(&store), 0);
}

#[tokio::test]
async fn blobs_stream_asynchronously_sealed_or_not() {
    use futures_util::TryStreamExt;
    let dir = tempfile::tempdir().unwrap();
    let data = canary_data(2 * SEGMENT + 3);
    for key in [None, Some(key(1))] {
        let store = sealed_store(&dir, key.as_ref());
        let hash = put(&store, &[&data]);
        let reader = store.open_verified(&hash).unwrap();
        let chunks: Vec<Bytes> = reader.into_stream().try_collect().await.unwrap();
        assert_eq!(chunks.concat(), data);
    }
}

#[test]
fn io_error_names_the_operation_and_path() {
    let err = io_err("fsync", Path::new("/x/tmp/123"))(io::Error::from_raw_os_error(28));
    assert!(err
        .to_string()
        .starts_with("blob store: fsync /x/tmp/123: No space left on device"));
}

//! Tests of the node key, sealed values and sealed streams.

use std::io::{Cursor, Read, Write};
use std::os::unix::fs::PermissionsExt;

use super::stream::{plain_len, sealed_len, HEADER_LEN, SEGMENT};
use super::*;

const HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn key(n: u8) -> NodeKey {
    NodeKey::from_hex(&format!("{n:02x}").repeat(32)).unwrap()
}

// --- the key and its file ---

#[test]
fn key_text_tolerates_whitespace_and_case_only() {
    let a = NodeKey::from_hex(HEX).unwrap();
    let spaced = format!("  {}\n{}\r\n", &HEX[..32], HEX[32..].to_uppercase());
    assert_eq!(NodeKey::from_hex(&spaced).unwrap().id(), a.id());
    assert_eq!(*a.bytes, core::array::from_fn::<u8, 32, _>(|i| i as u8));
    assert_eq!(a.to_hex().as_str(), format!("{HEX}\n"));

    let short = NodeKey::from_hex(&HEX[..62]).unwrap_err();
    assert!(short.contains("found 62"), "{short}");
    let long = NodeKey::from_hex(&format!("{HEX}00")).unwrap_err();
    assert!(long.contains("found 66"), "{long}");
    // The error must never quote the file: a near-miss key is still secret.
    let bad = NodeKey::from_hex(&format!("{}zz", &HEX[..62])).unwrap_err();
    assert!(bad.contains("digit 63") && !bad.contains("zz"), "{bad}");
    assert!(NodeKey::from_hex("").is_err());
}

#[test]
fn debug_shows_the_id_not_the_key() {
    let k = NodeKey::from_hex(HEX).unwrap();
    let shown = format!("{k:?} {:?} {:?}", k.value_cipher(), k.stream_key());
    assert!(shown.contains(&k.id().to_string()), "{shown}");
    assert!(!shown.contains("0102030405"), "{shown}");
    assert_ne!(key(1).id(), key(2).id());
    assert_eq!(k.id().to_string().len(), 16);
}

#[test]
fn init_writes_a_private_key_file_that_loads_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.key");
    let made = NodeKey::init_file(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.len(), 65, "64 hex digits and a newline");
    assert_eq!(NodeKey::load(&path).unwrap().id(), made.id());
    // Two keys from the OS's random source differ.
    assert_ne!(NodeKey::generate().unwrap().id(), made.id());

    let again = NodeKey::init_file(&path).unwrap_err();
    assert!(matches!(again, KeyError::Exists { .. }), "{again}");
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        text,
        "never replaced"
    );
}

#[test]
fn load_refuses_missing_malformed_and_world_readable_files() {
    let dir = tempfile::tempdir().unwrap();
    let missing = NodeKey::load(&dir.path().join("nope")).unwrap_err();
    assert!(matches!(missing, KeyError::Io { .. }), "{missing}");
    assert!(missing.to_string().contains("nope"), "{missing}");

    let path = dir.path().join("k");
    let write = |text: &str, mode: u32| {
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    write("abc\n", 0o600);
    let short = NodeKey::load(&path).unwrap_err();
    assert!(matches!(short, KeyError::Format { .. }), "{short}");
    assert!(short.to_string().contains("64 hex digits"), "{short}");

    write(HEX, 0o644);
    let open = NodeKey::load(&path).unwrap_err();
    assert!(
        matches!(open, KeyError::WorldAccessible { mode: 0o644, .. }),
        "{open}"
    );
    assert!(open.to_string().contains("chmod 600"), "{open}");
    write(HEX, 0o602);
    assert!(
        NodeKey::load(&path).is_err(),
        "world-writable is refused too"
    );
    // Group access is allowed (root:copyist 0640), with a warning.
    write(HEX, 0o640);
    assert!(NodeKey::load(&path).is_ok());
}

// --- values ---

#[test]
fn values_round_trip_and_every_tampering_fails() {
    let cipher = key(1).value_cipher();
    let sealed = cipher.seal(b"place-1", b"password=CANARY").unwrap();
    assert_eq!(sealed.len(), NONCE_LEN + 15 + TAG_LEN);
    assert!(!contains(&sealed, b"CANARY"));
    assert_eq!(
        cipher.open(b"place-1", &sealed).unwrap(),
        b"password=CANARY"
    );
    // A fresh nonce each time: the same value never seals to the same bytes.
    assert_ne!(cipher.seal(b"place-1", b"password=CANARY").unwrap(), sealed);

    for i in 0..sealed.len() {
        let mut bad = sealed.clone();
        bad[i] ^= 0x01;
        assert!(matches!(
            cipher.open(b"place-1", &bad),
            Err(CryptError::Auth)
        ));
    }
    assert!(matches!(
        cipher.open(b"place-2", &sealed),
        Err(CryptError::Auth)
    ));
    assert!(matches!(
        key(2).value_cipher().open(b"place-1", &sealed),
        Err(CryptError::Auth)
    ));
    for cut in [0, 1, NONCE_LEN + TAG_LEN - 1, sealed.len() - 1] {
        assert!(
            cipher.open(b"place-1", &sealed[..cut]).is_err(),
            "cut {cut}"
        );
    }
}

#[test]
fn blinding_is_keyed_and_stable() {
    let (a, b) = (key(1).value_cipher(), key(2).value_cipher());
    assert_eq!(a.blind(b"SESS=x"), a.blind(b"SESS=x"));
    assert_ne!(a.blind(b"SESS=x"), a.blind(b"SESS=y"));
    assert_ne!(a.blind(b"SESS=x"), b.blind(b"SESS=x"));
}

// --- streams ---

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Plaintext of `len` bytes, with a canary every 10,000 bytes.
fn data(len: usize) -> Vec<u8> {
    let mut out: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    for at in (0..len.saturating_sub(6)).step_by(10_000) {
        out[at..at + 6].copy_from_slice(b"CANARY");
    }
    out
}

/// Seals `plain`, writing it in `chunk`-byte pieces.
fn seal_stream(key: &StreamKey, plain: &[u8], chunk: usize) -> Vec<u8> {
    let mut w = SealWriter::new(Vec::new(), key).unwrap();
    for piece in plain.chunks(chunk.max(1)) {
        w.write_all(piece).unwrap();
    }
    w.finish().unwrap()
}

fn open_stream(key: &StreamKey, sealed: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut r = SealedReader::new(Cursor::new(sealed), key).map_err(std::io::Error::other)?;
    let mut out = Vec::new();
    r.read_to_end(&mut out)?;
    Ok(out)
}

#[test]
fn streams_round_trip_at_every_segment_boundary() {
    let key = key(1).stream_key();
    let sizes = [
        0,
        1,
        SEGMENT - 1,
        SEGMENT,
        SEGMENT + 1,
        2 * SEGMENT,
        3 * SEGMENT + 17,
    ];
    for len in sizes {
        let plain = data(len);
        for chunk in [1000, SEGMENT, 3 * SEGMENT] {
            let sealed = seal_stream(&key, &plain, chunk);
            assert_eq!(sealed.len() as u64, sealed_len(len as u64), "len {len}");
            assert_eq!(plain_len(sealed.len() as u64), Some(len as u64));
            assert!(len < 6 || !contains(&sealed, b"CANARY"), "len {len}");
            assert_eq!(open_stream(&key, &sealed).unwrap(), plain, "len {len}");
        }
    }
    assert_eq!(sealed_len(0), (HEADER_LEN + TAG_LEN) as u64);
    assert_eq!(plain_len(HEADER_LEN as u64 + 3), None);
    assert_eq!(plain_len(3), None);
}

#[test]
fn stream_tampering_truncation_and_splicing_fail() {
    let key = key(1).stream_key();
    let plain = data(2 * SEGMENT + 100);
    let sealed = seal_stream(&key, &plain, 4096);
    let is_invalid = |r: std::io::Result<Vec<u8>>| match r {
        Err(e) => {
            e.kind() == std::io::ErrorKind::InvalidData || e.kind() == std::io::ErrorKind::Other
        }
        Ok(_) => false,
    };
    // A flipped bit anywhere: in the header (magic, version, key id, nonce prefix), in any
    // segment's ciphertext or tag.
    let full = SEGMENT + TAG_LEN;
    for at in [
        0,
        8,
        9,
        20,
        HEADER_LEN - 1,
        HEADER_LEN,
        HEADER_LEN + full - 1,
        HEADER_LEN + full + 5,
        sealed.len() - 1,
    ] {
        let mut bad = sealed.clone();
        bad[at] ^= 0x80;
        assert!(is_invalid(open_stream(&key, &bad)), "flip at {at}");
    }
    // Cut at a segment boundary (the last segment missing), inside one, or one byte short.
    for cut in [
        HEADER_LEN,
        HEADER_LEN + full,
        HEADER_LEN + 2 * full,
        HEADER_LEN + 10,
        sealed.len() - 1,
    ] {
        assert!(
            is_invalid(open_stream(&key, &sealed[..cut])),
            "cut at {cut}"
        );
    }
    let mut longer = sealed.clone();
    longer.extend_from_slice(&[0; 20]);
    assert!(is_invalid(open_stream(&key, &longer)));
    // Segments swapped within the stream, or taken from another stream of the same key.
    let mut swapped = sealed.clone();
    let (a, b) = (HEADER_LEN, HEADER_LEN + full);
    let first = sealed[a..a + full].to_vec();
    swapped.copy_within(b..b + full, a);
    swapped[b..b + full].copy_from_slice(&first);
    assert!(is_invalid(open_stream(&key, &swapped)));
    let other = seal_stream(&key, &plain, 4096);
    let mut spliced = sealed.clone();
    spliced[a..a + full].copy_from_slice(&other[a..a + full]);
    assert!(is_invalid(open_stream(&key, &spliced)));
}

#[test]
fn a_stream_from_another_key_is_named_as_such() {
    let sealed = seal_stream(&key(1).stream_key(), b"hello", 10);
    let ours = key(2).stream_key();
    match SealedReader::new(Cursor::new(&sealed), &ours) {
        Err(CryptError::OtherKey { found, ours: id }) => {
            assert_eq!(found, key(1).id());
            assert_eq!(id, key(2).id());
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("opened with another key"),
    }
    let err = SealedReader::new(
        Cursor::new(b"plain text, not sealed at all".to_vec()),
        &ours,
    );
    assert!(matches!(err, Err(CryptError::Malformed(_))));
    assert!(matches!(
        SealedReader::new(Cursor::new(Vec::new()), &ours),
        Err(CryptError::Malformed(_))
    ));
    // Ephemeral keys are all different from each other.
    let (e1, e2) = (
        StreamKey::ephemeral().unwrap(),
        StreamKey::ephemeral().unwrap(),
    );
    let sealed = seal_stream(&e1, b"spill", 10);
    assert!(SealedReader::new(Cursor::new(&sealed), &e2).is_err());
    assert_eq!(open_stream(&e1, &sealed).unwrap(), b"spill");
}

#[test]
fn rewind_reads_the_stream_again() {
    let key = key(1).stream_key();
    let plain = data(SEGMENT + 5);
    let sealed = seal_stream(&key, &plain, 777);
    let mut r = SealedReader::new(Cursor::new(sealed), &key).unwrap();
    let mut half = vec![0; SEGMENT + 2];
    r.read_exact(&mut half).unwrap();
    r.rewind().unwrap();
    let mut all = Vec::new();
    r.read_to_end(&mut all).unwrap();
    assert_eq!(all, plain);
}

#[tokio::test]
async fn reader_stream_yields_the_plaintext_in_order() {
    use futures_util::TryStreamExt;
    let key = key(1).stream_key();
    let plain = data(3 * SEGMENT + 1);
    let sealed = seal_stream(&key, &plain, 5000);
    let reader = SealedReader::new(Cursor::new(sealed.clone()), &key).unwrap();
    let chunks: Vec<bytes::Bytes> = reader_stream(reader).try_collect().await.unwrap();
    assert_eq!(chunks.concat(), plain);

    // A damaged stream ends in an error, not in silently short data.
    let mut bad = sealed;
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let reader = SealedReader::new(Cursor::new(bad), &key).unwrap();
    let result: std::io::Result<Vec<bytes::Bytes>> = reader_stream(reader).try_collect().await;
    assert_eq!(result.unwrap_err().kind(), std::io::ErrorKind::InvalidData);
}

//! How entries, meta values and log keys are laid out as bytes: one version byte, then
//! postcard, for values; big-endian `u64` for keys, so that sled's byte order is seq order.
//! This file owns the on-disk format and nothing else: it must not touch sled or the
//! filesystem, and it must never panic on bytes read from disk (unknown versions and damaged
//! bytes are `LogError::Codec`).
//!
//! Changing a stored type in a way postcard cannot read back (adding or reordering a struct
//! field, inserting an enum variant) needs a new version byte and, once logs exist in the
//! field, a decoder for the old one.
//!
//! History: version 1 was `Entry` before the mirror fields (`writer_state`, `mirror_outcome`,
//! `halt`, `audit`, and `Outcome::fields`, `masked_digest`). It was never released, so this
//! build refuses it with a message saying so rather than carry a decoder for it.
//!
//! # Encryption at rest (version 3)
//! With `[log] encryption_key_file` set, every value written is sealed ([`seal`]):
//! `[VERSION_3] ++ key id (8) ++ nonce (24) ++ XChaCha20-Poly1305(inner) ++ tag (16)`, where
//! `inner` is the value as it would be stored unencrypted (`[VERSION_2] ++ postcard` for
//! entries and meta values, the raw bytes for a cookie map value). The associated data is the
//! version, the key id, the tree and the key the value is stored under, so a value copied or
//! swapped to another seq fails to open. [`unseal`] returns other versions unchanged: values
//! written before encryption was switched on stay readable, and are sealed when next
//! rewritten. Not sealed: the 8-byte counters (`next_seq`, `applied_seq`, `retry`, cursors),
//! which hold no client data, and the keys of `entries`, `unsettled` and `meta` (seqs and
//! mirror names). A cookie map key holds the writer's session cookie, so with a key set it is
//! replaced by a keyed hash ([`blind_key`]).

use std::borrow::Cow;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::entry::{Entry, Seq};
use super::LogError;
use crate::crypt::{CryptError, KeyId, ValueCipher, KEY_ID_LEN, NONCE_LEN, TAG_LEN};

/// The retired pre-release encoding (see the module docs).
const VERSION_1: u8 = 1;
/// The current encoding: postcard of the types as defined in `entry.rs` and `mod.rs`.
const VERSION_2: u8 = 2;
/// A sealed value: an encrypted inner value (see the module docs).
const VERSION_3: u8 = 3;
/// First byte of a blinded key: a plain cookie map key starts with a big-endian name length
/// below 2^24, so its first byte is 0 and the two never collide.
const BLINDED: u8 = 0xff;

/// Where a value is stored: bound into a sealed value's associated data.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Place<'a> {
    /// The sled tree.
    pub(crate) tree: &'static str,
    /// The key within it.
    pub(crate) key: &'a [u8],
}

/// Encodes an entry as `[VERSION_2] ++ postcard(entry)`.
pub(crate) fn encode_entry(entry: &Entry) -> Result<Vec<u8>, LogError> {
    encode_value(entry)
        .map_err(|e| LogError::Codec(format!("cannot encode entry {}: {e}", entry.seq)))
}

/// Decodes bytes written by [`encode_entry`] (any version this build knows).
pub(crate) fn decode_entry(bytes: &[u8]) -> Result<Entry, LogError> {
    decode_value(bytes, "entry")
}

/// Encodes any stored value (entry, halt, mirror control) as `[VERSION_2] ++ postcard`.
pub(crate) fn encode_value<T: Serialize>(value: &T) -> Result<Vec<u8>, LogError> {
    let mut out = vec![VERSION_2];
    postcard::to_io(value, &mut out).map_err(|e| LogError::Codec(format!("cannot encode: {e}")))?;
    Ok(out)
}

/// Decodes bytes written by [`encode_value`]; `what` names the value in errors.
pub(crate) fn decode_value<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, LogError> {
    match bytes.split_first() {
        Some((&VERSION_2, rest)) => {
            let (value, trailing) = postcard::take_from_bytes::<T>(rest)
                .map_err(|e| LogError::Codec(format!("damaged {what} (version 2): {e}")))?;
            if !trailing.is_empty() {
                return Err(LogError::Codec(format!(
                    "damaged {what} (version 2): {} trailing bytes",
                    trailing.len()
                )));
            }
            Ok(value)
        }
        Some((&VERSION_3, _)) => Err(LogError::Codec(format!(
            "{what} is encrypted and was not opened first"
        ))),
        Some((&VERSION_1, _)) => Err(LogError::Codec(format!(
            "{what} in encoding version 1, a pre-release format this build no longer reads; \
             move the log directory aside and start with an empty log"
        ))),
        Some((version, _)) => Err(LogError::Codec(format!(
            "unknown {what} encoding version {version} (this build reads version {VERSION_2}, \
             and {VERSION_3} when encrypted); was the log written by a newer copyist?"
        ))),
        None => Err(LogError::Codec(format!("empty {what}"))),
    }
}

/// Seals the stored form of a value (`encoded`) for `place` (see the module docs).
pub(crate) fn seal(
    cipher: &ValueCipher,
    place: Place<'_>,
    encoded: &[u8],
) -> Result<Vec<u8>, LogError> {
    let id = cipher.key_id();
    let sealed = cipher
        .seal(&associated_data(id, place), encoded)
        .map_err(|e| LogError::Codec(format!("cannot encrypt: {e}")))?;
    let mut out = Vec::with_capacity(1 + KEY_ID_LEN + sealed.len());
    out.push(VERSION_3);
    out.extend_from_slice(&id.0);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// The stored form of a value read from `place`: opened if sealed, as it is otherwise (a value
/// written before encryption was switched on). `what` names the value in errors.
pub(crate) fn unseal<'b>(
    cipher: Option<&ValueCipher>,
    place: Place<'_>,
    stored: &'b [u8],
    what: &str,
) -> Result<Cow<'b, [u8]>, LogError> {
    let Some((&VERSION_3, rest)) = stored.split_first() else {
        return Ok(Cow::Borrowed(stored));
    };
    if rest.len() < KEY_ID_LEN + NONCE_LEN + TAG_LEN {
        return Err(LogError::Codec(format!(
            "damaged {what} (version 3): {} bytes",
            stored.len()
        )));
    }
    let (id, sealed) = rest.split_at(KEY_ID_LEN);
    let mut found = [0u8; KEY_ID_LEN];
    found.copy_from_slice(id);
    let found = KeyId(found);
    let Some(cipher) = cipher else {
        return Err(LogError::Codec(format!(
            "{what} is encrypted with a key this node does not have (key id {found}; no \
             [log] encryption_key_file is set)"
        )));
    };
    if found != cipher.key_id() {
        let e = CryptError::OtherKey {
            found,
            ours: cipher.key_id(),
        };
        return Err(LogError::Codec(format!("{what} is {e}")));
    }
    let inner = cipher
        .open(&associated_data(found, place), sealed)
        .map_err(|e| LogError::Codec(format!("{what} (version 3): {e}")))?;
    if inner.first() == Some(&VERSION_3) {
        return Err(LogError::Codec(format!("{what} is encrypted twice")));
    }
    Ok(Cow::Owned(inner))
}

/// Refuses a log whose newest entry is sealed with a key this node does not have, so that a
/// node started without its key (or with another node's) stops at once with a clear error
/// instead of running on a log it cannot read. Damage is left for the read to report.
pub(crate) fn check_key(cipher: Option<&ValueCipher>, stored: &[u8]) -> Result<(), LogError> {
    let Some((&VERSION_3, rest)) = stored.split_first() else {
        return Ok(());
    };
    let Some(Ok(found)) = rest.get(..KEY_ID_LEN).map(<[u8; KEY_ID_LEN]>::try_from) else {
        return Ok(());
    };
    let found = KeyId(found);
    match cipher {
        None => Err(LogError::Codec(format!(
            "the log is encrypted with a key this node does not have (key id {found}); set \
             [log] encryption_key_file to that key's file"
        ))),
        Some(cipher) if cipher.key_id() != found => Err(LogError::Codec(format!(
            "the log is {}",
            CryptError::OtherKey {
                found,
                ours: cipher.key_id()
            }
        ))),
        Some(_) => Ok(()),
    }
}

/// Whether stored bytes are a sealed value.
pub(crate) fn is_sealed(stored: &[u8]) -> bool {
    stored.first() == Some(&VERSION_3)
}

/// A sealed value's associated data: the version, the key id and the place.
fn associated_data(id: KeyId, place: Place<'_>) -> Vec<u8> {
    let tree = place.tree.as_bytes();
    let mut aad = Vec::with_capacity(2 + KEY_ID_LEN + tree.len() + place.key.len());
    aad.push(VERSION_3);
    aad.extend_from_slice(&id.0);
    // The tree's length first, so (tree, key) pairs cannot run into each other.
    aad.push(u8::try_from(tree.len()).unwrap_or(u8::MAX));
    aad.extend_from_slice(tree);
    aad.extend_from_slice(place.key);
    aad
}

/// The key a secret-bearing key is stored under when encryption is on: a keyed hash of it.
pub(crate) fn blind_key(cipher: &ValueCipher, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(33);
    out.push(BLINDED);
    out.extend_from_slice(&cipher.blind(key));
    out
}

/// The key an entry is stored under.
pub(crate) fn seq_key(seq: Seq) -> [u8; 8] {
    seq.0.to_be_bytes()
}

/// The seq a key names.
pub(crate) fn key_seq(key: &[u8]) -> Result<Seq, LogError> {
    decode_u64(key)
        .map(Seq)
        .map_err(|len| LogError::Codec(format!("log key of {len} bytes, expected 8")))
}

/// Encodes a `u64` meta value (big-endian, like keys).
pub(crate) fn encode_u64(value: u64) -> [u8; 8] {
    value.to_be_bytes()
}

/// Decodes a `u64` meta value; the error is the length found.
pub(crate) fn decode_u64(bytes: &[u8]) -> Result<u64, usize> {
    <[u8; 8]>::try_from(bytes)
        .map(u64::from_be_bytes)
        .map_err(|_| bytes.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::tests::sample_entry;

    #[test]
    fn round_trip() {
        let entry = sample_entry(42);
        let bytes = encode_entry(&entry).unwrap();
        assert_eq!(bytes[0], VERSION_2);
        assert_eq!(decode_entry(&bytes).unwrap(), entry);
    }

    #[test]
    fn round_trip_of_a_mirror_entry_with_every_field() {
        let entry = crate::log::tests::sample_mirror_entry(9);
        assert!(entry.halt.is_some() && !entry.audit.is_empty());
        let bytes = encode_entry(&entry).unwrap();
        assert_eq!(decode_entry(&bytes).unwrap(), entry);
    }

    #[test]
    fn version_1_is_refused_with_a_clear_message() {
        let mut bytes = encode_entry(&sample_entry(1)).unwrap();
        bytes[0] = VERSION_1;
        let err = decode_entry(&bytes).unwrap_err();
        assert!(
            matches!(err, LogError::Codec(ref m) if m.contains("pre-release")),
            "{err}"
        );
    }

    #[test]
    fn unknown_version_is_an_error_not_a_panic() {
        let mut bytes = encode_entry(&sample_entry(1)).unwrap();
        bytes[0] = 4;
        let err = decode_entry(&bytes).unwrap_err();
        assert!(
            matches!(err, LogError::Codec(ref m) if m.contains("version 4")),
            "{err}"
        );
        bytes[0] = 0;
        assert!(matches!(decode_entry(&bytes), Err(LogError::Codec(_))));
    }

    #[test]
    fn damaged_bytes_are_errors() {
        let bytes = encode_entry(&sample_entry(1)).unwrap();
        assert!(matches!(decode_entry(&[]), Err(LogError::Codec(_))));
        for cut in [1, 2, bytes.len() / 2, bytes.len() - 1] {
            assert!(
                matches!(decode_entry(&bytes[..cut]), Err(LogError::Codec(_))),
                "cut at {cut}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(decode_entry(&longer), Err(LogError::Codec(_))));
    }

    fn cipher(n: u8) -> ValueCipher {
        crate::crypt::NodeKey::from_hex(&format!("{n:02x}").repeat(32))
            .unwrap()
            .value_cipher()
    }

    fn place(key: &[u8]) -> Place<'_> {
        Place {
            tree: "entries",
            key,
        }
    }

    #[test]
    fn sealed_values_round_trip_and_name_what_is_wrong() {
        let (ours, theirs) = (cipher(1), cipher(2));
        let key = seq_key(Seq(7));
        let mut entry = sample_entry(7);
        entry.request.body = crate::log::BodyRef::Inline(b"password=CANARY".to_vec());
        let plain = encode_entry(&entry).unwrap();
        let sealed = seal(&ours, place(&key), &plain).unwrap();
        assert_eq!(sealed[0], VERSION_3);
        assert_eq!(sealed[1..9], ours.key_id().0);
        assert!(!sealed.windows(6).any(|w| w == b"CANARY"));
        let opened = unseal(Some(&ours), place(&key), &sealed, "entry 7").unwrap();
        assert_eq!(decode_entry(&opened).unwrap(), entry);
        // Unopened, the decoder refuses it rather than misread it.
        assert!(decode_entry(&sealed).is_err());

        let no_key = unseal(None, place(&key), &sealed, "entry 7").unwrap_err();
        assert!(
            no_key.to_string().contains("a key this node does not have"),
            "{no_key}"
        );
        let other = unseal(Some(&theirs), place(&key), &sealed, "entry 7").unwrap_err();
        let text = other.to_string();
        assert!(text.contains("a key this node does not have"), "{text}");
        assert!(text.contains(&ours.key_id().to_string()), "{text}");
        assert!(text.contains(&theirs.key_id().to_string()), "{text}");

        // Moved to another seq, or to another tree: fails, though the bytes are intact.
        let moved = unseal(Some(&ours), place(&seq_key(Seq(8))), &sealed, "entry 8");
        assert!(moved.unwrap_err().to_string().contains("authentication"));
        let elsewhere = Place {
            tree: "meta",
            key: &key,
        };
        assert!(unseal(Some(&ours), elsewhere, &sealed, "halt").is_err());
        // Damage anywhere, or a cut, is an error, never a panic.
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x10;
            let r = unseal(Some(&ours), place(&key), &bad, "entry 7");
            // Byte 0 turned into another version is passed through, and the decoder refuses it.
            assert!(
                r.is_err() || decode_entry(&r.unwrap()).is_err(),
                "flip at {i}"
            );
        }
        for cut in [1, 9, 40, sealed.len() - 1] {
            assert!(unseal(Some(&ours), place(&key), &sealed[..cut], "e").is_err());
        }
    }

    #[test]
    fn plaintext_values_pass_through_unseal() {
        let plain = encode_entry(&sample_entry(3)).unwrap();
        let key = seq_key(Seq(3));
        for cipher in [None, Some(cipher(1))] {
            let out = unseal(cipher.as_ref(), place(&key), &plain, "entry 3").unwrap();
            assert!(matches!(out, Cow::Borrowed(_)));
            assert_eq!(decode_entry(&out).unwrap(), sample_entry(3));
        }
        assert!(!is_sealed(&plain));
        let c = cipher(1);
        assert!(is_sealed(&seal(&c, place(&key), &plain).unwrap()));
        let blinded = blind_key(&c, b"\0\0\0\x04SESSwriter-value");
        assert_eq!(blinded.len(), 33);
        assert_eq!(blinded[0], BLINDED);
        assert_ne!(
            blinded,
            blind_key(&cipher(2), b"\0\0\0\x04SESSwriter-value")
        );
    }

    #[test]
    fn keys_sort_in_seq_order() {
        let seqs = [1u64, 2, 255, 256, 65_536, u64::MAX - 1];
        let mut keys: Vec<_> = seqs.iter().map(|&s| seq_key(Seq(s))).collect();
        keys.sort();
        let back: Vec<_> = keys.iter().map(|k| key_seq(k).unwrap().0).collect();
        assert_eq!(back, seqs);
        assert!(matches!(key_seq(&[1, 2, 3]), Err(LogError::Codec(_))));
        assert_eq!(decode_u64(&encode_u64(77)), Ok(77));
        assert_eq!(decode_u64(&[1]), Err(1));
    }
}

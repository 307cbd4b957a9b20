//! How entries and log keys are laid out as bytes: one version byte, then postcard, for
//! values; big-endian `u64` for keys, so that sled's byte order is seq order. This file owns
//! the on-disk format and nothing else: it must not touch sled or the filesystem, and it must
//! never panic on bytes read from disk (unknown versions and damaged bytes are
//! `LogError::Codec`).
//!
//! Changing a stored type in a way postcard cannot read back (adding or reordering a struct
//! field, inserting an enum variant) needs a new version byte and a decoder for the old one.

use super::entry::{Entry, Seq};
use super::LogError;

/// The current encoding: postcard of [`Entry`] as defined in `entry.rs`.
const VERSION_1: u8 = 1;

/// Encodes an entry as `[VERSION_1] ++ postcard(entry)`.
pub(crate) fn encode_entry(entry: &Entry) -> Result<Vec<u8>, LogError> {
    let mut out = vec![VERSION_1];
    postcard::to_io(entry, &mut out)
        .map_err(|e| LogError::Codec(format!("cannot encode entry {}: {e}", entry.seq)))?;
    Ok(out)
}

/// Decodes bytes written by [`encode_entry`] (any version this build knows).
pub(crate) fn decode_entry(bytes: &[u8]) -> Result<Entry, LogError> {
    match bytes.split_first() {
        Some((&VERSION_1, rest)) => {
            let (entry, trailing) = postcard::take_from_bytes::<Entry>(rest)
                .map_err(|e| LogError::Codec(format!("damaged entry (version 1): {e}")))?;
            if !trailing.is_empty() {
                return Err(LogError::Codec(format!(
                    "damaged entry (version 1): {} trailing bytes",
                    trailing.len()
                )));
            }
            Ok(entry)
        }
        Some((version, _)) => Err(LogError::Codec(format!(
            "unknown entry encoding version {version} (this build reads version {VERSION_1}); \
             was the log written by a newer copyist?"
        ))),
        None => Err(LogError::Codec("empty entry".to_owned())),
    }
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
        assert_eq!(bytes[0], VERSION_1);
        assert_eq!(decode_entry(&bytes).unwrap(), entry);
    }

    #[test]
    fn unknown_version_is_an_error_not_a_panic() {
        let mut bytes = encode_entry(&sample_entry(1)).unwrap();
        bytes[0] = 2;
        let err = decode_entry(&bytes).unwrap_err();
        assert!(
            matches!(err, LogError::Codec(ref m) if m.contains("version 2")),
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

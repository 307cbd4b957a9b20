//! How values cross the boundary to sled: sealed on the way in when the log has a key
//! ([`Write::sealed`], called by `Log::commit`), opened and decoded on the way out, each bound
//! to the tree and key it is stored under. The byte formats are `codec.rs`'s.

use sled::IVec;

use super::codec::{self, decode_entry, decode_value, key_seq, seq_key, Place};
use super::{Entry, Log, LogError, Seq, Write, COOKIES, ENTRIES, META};
use crate::crypt::ValueCipher;

impl Write {
    /// This write as stored with `cipher`: values sealed, a cookie key blinded.
    pub(super) fn sealed(&self, cipher: &ValueCipher) -> Result<Write, LogError> {
        Ok(match self {
            Write::Entry(seq, bytes) => {
                let place = Place {
                    tree: ENTRIES,
                    key: &seq_key(*seq),
                };
                Write::Entry(*seq, codec::seal(cipher, place, bytes)?.into())
            }
            Write::Meta(key, bytes) => {
                let place = Place { tree: META, key };
                Write::Meta(key.clone(), codec::seal(cipher, place, bytes)?.into())
            }
            Write::Cookie(key, bytes) => {
                let key = codec::blind_key(cipher, key);
                let place = Place {
                    tree: COOKIES,
                    key: &key,
                };
                let sealed = codec::seal(cipher, place, bytes)?;
                Write::Cookie(key, sealed.into())
            }
            other => other.clone(),
        })
    }
}

/// Opens (if sealed) and decodes a `meta` value stored under `key`.
pub(super) fn decode_meta<T: serde::de::DeserializeOwned>(
    cipher: Option<&ValueCipher>,
    key: &[u8],
    bytes: &[u8],
    what: &str,
) -> Result<T, LogError> {
    let place = Place { tree: META, key };
    decode_value(&codec::unseal(cipher, place, bytes, what)?, what)
}

impl Log {
    /// Opens (if sealed) and decodes an entry, and checks it is the one its key names.
    pub(super) fn decode_stored(&self, seq: Seq, bytes: &[u8]) -> Result<Entry, LogError> {
        let place = Place {
            tree: ENTRIES,
            key: &seq_key(seq),
        };
        let what = format!("entry {seq}");
        let entry = codec::unseal(self.inner.cipher.as_ref(), place, bytes, &what)
            .and_then(|plain| decode_entry(&plain))
            .map_err(|e| match e {
                LogError::Codec(msg) if !msg.contains(&what) => {
                    LogError::Codec(format!("{what}: {msg}"))
                }
                other => other,
            })?;
        if entry.seq != seq {
            return Err(LogError::Codec(format!(
                "entry stored under {seq} says it is {}",
                entry.seq
            )));
        }
        Ok(entry)
    }

    pub(super) fn decode_pair(&self, item: sled::Result<(IVec, IVec)>) -> Result<Entry, LogError> {
        let (key, value) = item?;
        self.decode_stored(key_seq(&key)?, &value)
    }

    /// Opens (if sealed) and decodes a `meta` value.
    pub(super) fn decode_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
        bytes: &[u8],
        what: &str,
    ) -> Result<T, LogError> {
        decode_meta(self.inner.cipher.as_ref(), key, bytes, what)
    }
}

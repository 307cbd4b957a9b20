//! Encryption at rest (`[log] encryption_key_file`): the node key and its file, sealed values
//! (the log's entries and meta values) and sealed streams (blobs, response spill files). This
//! module owns the cryptography and the key file, and nothing else: it does not know what the
//! bytes mean, and the only file it touches is the key file. The log (`log/codec.rs`), the
//! blob store and the response spill frame its output in their own on-disk formats.
//!
//! # Choices
//! * **One key per node.** Each node encrypts its own storage with its own key; nodes never
//!   share or need each other's keys, because the replication channel carries plaintext inside
//!   mTLS and a mirror seals what it stores with its own key. Losing a node's key loses that
//!   node's log and blobs (re-seed it like a new mirror); there is no rotation.
//! * **Subkeys per purpose**, derived from the node key with BLAKE3's `derive_key`, so the
//!   value key, the stream key and the key that blinds cookie names are never the same bytes.
//! * **Values**: XChaCha20-Poly1305 with a random 24-byte nonce per value. 192-bit nonces are
//!   safe to draw at random for any number of values one node will ever write, unlike
//!   ChaCha20-Poly1305's 96 bits. The caller's associated data binds a value to where it is
//!   stored, so a value copied to another key fails to open.
//! * **Streams**: the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár 2015;
//!   `aead::stream`) over XChaCha20-Poly1305, in 64 KiB segments ([`stream`]): memory stays one
//!   segment whatever the size, and truncating, reordering or splicing segments fails.
//! * **Key ids**: 8 bytes derived from the key, stored beside every sealed value and stream,
//!   so that "sealed with another key" is told apart from "damaged". The id reveals nothing
//!   about the key (it is a BLAKE3 output) and is safe to log.
//! * **Key file**: 64 hex digits (32 bytes from the OS's random source), whitespace allowed
//!   around them. World-accessible (any `o` permission bit): refused, since any local user
//!   could read it. Group-accessible: a warning, since `root:copyist 0640` is a legitimate
//!   deployment.

pub mod stream;

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::rand_core::RngCore;
use chacha20poly1305::aead::{AeadInPlace, OsRng};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

pub use stream::{reader_stream, SealWriter, SealedReader, StreamKey};

/// Bytes in a node key.
pub const KEY_LEN: usize = 32;
/// Bytes in a key id.
pub const KEY_ID_LEN: usize = 8;
/// Bytes in a sealed value's nonce.
pub const NONCE_LEN: usize = 24;
/// Bytes in a Poly1305 tag.
pub const TAG_LEN: usize = 16;

/// `derive_key` contexts (BLAKE3 asks for hard-coded, globally unique strings).
const CONTEXT_ID: &str = "copyist 2025-06 at-rest key id";
const CONTEXT_VALUES: &str = "copyist 2025-06 at-rest log values";
const CONTEXT_BLIND: &str = "copyist 2025-06 at-rest blinded keys";
const CONTEXT_STREAMS: &str = "copyist 2025-06 at-rest streams";

// === impl CryptError ===

/// Why sealing or opening failed.
#[derive(Debug, thiserror::Error)]
pub enum CryptError {
    /// The OS's random source failed (a fresh nonce or key could not be drawn).
    #[error("no randomness from the operating system: {0}")]
    Random(String),
    /// The sealed bytes were made with another key.
    #[error(
        "encrypted with a key this node does not have (key id {found}; this node's key id is \
         {ours})"
    )]
    OtherKey {
        /// The id stored with the sealed bytes.
        found: KeyId,
        /// This node's key id.
        ours: KeyId,
    },
    /// Authentication failed: the bytes were changed, cut short, or moved from elsewhere.
    #[error("authentication failed: the encrypted bytes were changed, cut short or moved")]
    Auth,
    /// Not sealed bytes of a format this build reads.
    #[error("{0}")]
    Malformed(String),
    /// Reading or writing the underlying file failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Fills `buf` from the OS's random source, without panicking if it fails.
fn random(buf: &mut [u8]) -> Result<(), CryptError> {
    OsRng
        .try_fill_bytes(buf)
        .map_err(|e| CryptError::Random(e.to_string()))
}

// === impl KeyError ===

/// Why a key file could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read, created or written.
    #[error("encryption key file {}: {source}", path.display())]
    Io {
        /// The key file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file does not hold a key (never echoes the content: it may be a key).
    #[error("encryption key file {}: {reason}", path.display())]
    Format {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Anyone on the machine can read or change the file.
    #[error(
        "encryption key file {}: mode {mode:04o} gives access to every user on the machine; \
         run `chmod 600 {}` (or 640 with a group only copyist's user is in)",
        path.display(),
        path.display()
    )]
    WorldAccessible {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// `key init` would replace an existing file (and with it the only copy of a key).
    #[error("encryption key file {} exists already; refusing to replace a key", path.display())]
    Exists {
        /// The key file.
        path: PathBuf,
    },
    /// No key could be generated.
    #[error(transparent)]
    Random(#[from] CryptError),
}

// === impl KeyId ===

/// A key's public name: 8 bytes derived from it, shown as 16 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; KEY_ID_LEN]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in &self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

// === impl NodeKey ===

/// A node's at-rest key. Wiped from memory when dropped; `Debug` shows only its id.
#[derive(Clone)]
pub struct NodeKey {
    bytes: Zeroizing<[u8; KEY_LEN]>,
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeKey({})", self.id())
    }
}

impl NodeKey {
    /// A fresh key from the OS's random source.
    pub fn generate() -> Result<NodeKey, CryptError> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        random(&mut bytes[..])?;
        Ok(NodeKey { bytes })
    }

    /// Parses a key file's text: exactly 64 hex digits, whitespace allowed anywhere around
    /// and between them (a trailing newline, a line break from an editor). The error never
    /// quotes the text.
    pub fn from_hex(text: &str) -> Result<NodeKey, String> {
        let digits: Zeroizing<Vec<u8>> =
            Zeroizing::new(text.bytes().filter(|b| !b.is_ascii_whitespace()).collect());
        if let Some(at) = digits.iter().position(|b| !b.is_ascii_hexdigit()) {
            return Err(format!(
                "expected 64 hex digits; found a character that is not one (at digit {})",
                at + 1
            ));
        }
        if digits.len() != 2 * KEY_LEN {
            return Err(format!(
                "expected 64 hex digits (32 bytes), found {}; create a key with \
                 `copyist key init FILE`",
                digits.len()
            ));
        }
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        for (byte, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
            *byte = (hex_value(pair[0]) << 4) | hex_value(pair[1]);
        }
        Ok(NodeKey { bytes })
    }

    /// The key as 64 lowercase hex digits and a newline: the key file's content.
    fn to_hex(&self) -> Zeroizing<String> {
        let mut text = Zeroizing::new(String::with_capacity(2 * KEY_LEN + 1));
        for byte in self.bytes.iter() {
            text.push_str(&format!("{byte:02x}"));
        }
        text.push('\n');
        text
    }

    /// Reads the key file at `path`. Refuses a missing, unreadable or malformed file, and a
    /// world-accessible one; warns about a group-accessible one (see the module docs).
    pub fn load(path: &Path) -> Result<NodeKey, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o007 != 0 {
            return Err(KeyError::WorldAccessible {
                path: path.to_path_buf(),
                mode,
            });
        }
        if mode & 0o070 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{mode:04o}"),
                "encryption key file is group-accessible: every member of its group can read \
                 this node's stored requests"
            );
        }
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(io)?);
        NodeKey::from_hex(&text).map_err(|reason| KeyError::Format {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// `copyist key init FILE`: generates a key and writes it to a new file, mode 0600,
    /// fsynced. Never replaces an existing file.
    pub fn init_file(path: &Path) -> Result<NodeKey, KeyError> {
        let key = NodeKey::generate()?;
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => KeyError::Exists {
                    path: path.to_path_buf(),
                },
                _ => io(e),
            })?;
        file.write_all(key.to_hex().as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io)?;
        // The new directory entry too: a key that vanishes in a crash takes the data with it.
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
        }
        Ok(key)
    }

    /// The key's public id.
    pub fn id(&self) -> KeyId {
        let derived = Zeroizing::new(blake3::derive_key(CONTEXT_ID, &self.bytes[..]));
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&derived[..KEY_ID_LEN]);
        KeyId(id)
    }

    /// The cipher for the log's values.
    pub fn value_cipher(&self) -> ValueCipher {
        let key = Zeroizing::new(blake3::derive_key(CONTEXT_VALUES, &self.bytes[..]));
        ValueCipher {
            id: self.id(),
            aead: XChaCha20Poly1305::new(&(*key).into()),
            blind_key: Zeroizing::new(blake3::derive_key(CONTEXT_BLIND, &self.bytes[..])),
        }
    }

    /// The key for sealed streams (blobs).
    pub fn stream_key(&self) -> StreamKey {
        StreamKey::new(
            self.id(),
            Zeroizing::new(blake3::derive_key(CONTEXT_STREAMS, &self.bytes[..])),
        )
    }
}

/// The value of one ASCII hex digit (checked by the caller).
fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        b'A'..=b'F' => digit - b'A' + 10,
        _ => 0,
    }
}

// === impl ValueCipher ===

/// Seals and opens single values: XChaCha20-Poly1305 with a random nonce per value. Sealed
/// form: `nonce (24) ++ ciphertext ++ tag (16)`; the caller frames it (version byte, key id).
#[derive(Clone)]
pub struct ValueCipher {
    id: KeyId,
    aead: XChaCha20Poly1305,
    blind_key: Zeroizing<[u8; KEY_LEN]>,
}

impl fmt::Debug for ValueCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ValueCipher({})", self.id)
    }
}

impl ValueCipher {
    /// The id of the node key this cipher derives from.
    pub fn key_id(&self) -> KeyId {
        self.id
    }

    /// Seals `plaintext`, binding it to `aad`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptError> {
        let mut nonce = [0u8; NONCE_LEN];
        random(&mut nonce)?;
        let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = self
            .aead
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), aad, &mut out[NONCE_LEN..])
            // Only fails for a message longer than the cipher allows (256 GiB).
            .map_err(|_| CryptError::Malformed("value too large to encrypt".into()))?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Opens bytes made by [`ValueCipher::seal`] with the same `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptError> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(CryptError::Auth);
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
        let mut plain = ciphertext.to_vec();
        self.aead
            .decrypt_in_place_detached(
                XNonce::from_slice(nonce),
                aad,
                &mut plain,
                chacha20poly1305::Tag::from_slice(tag),
            )
            .map_err(|_| CryptError::Auth)?;
        Ok(plain)
    }

    /// A keyed hash of `data`: stands in for a secret used as a lookup key (a session cookie
    /// value in the log's cookie map), so the key can be found again without being stored.
    pub fn blind(&self, data: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&self.blind_key, data).as_bytes()
    }
}

#[cfg(test)]
mod tests;

//! Entry points for the fuzz targets in `fuzz/` (`scripts/fuzz.sh`): thin wrappers over
//! crate-internal functions that have no public door of their own. Not an API: nothing in
//! copyist uses this module, and it may change with the targets.
//!
//! The other targets need nothing here: `config::Config::from_toml`,
//! `capture::multipart::index` and `proxy::headers` are public already.

use crate::log::{codec, Entry, Halt};

/// The log's entry decoder, as `Log` runs it on bytes read from sled.
pub fn decode_entry(bytes: &[u8]) -> Result<Entry, String> {
    codec::decode_entry(bytes).map_err(|e| e.to_string())
}

/// The log's entry encoder.
pub fn encode_entry(entry: &Entry) -> Result<Vec<u8>, String> {
    codec::encode_entry(entry).map_err(|e| e.to_string())
}

/// The decoder of a mirror's stored halt (`decode_value` with another type).
pub fn decode_halt(bytes: &[u8]) -> Result<Halt, String> {
    codec::decode_value(bytes, "halt").map_err(|e| e.to_string())
}

/// The encoder of a stored halt.
pub fn encode_halt(halt: &Halt) -> Result<Vec<u8>, String> {
    codec::encode_value(halt).map_err(|e| e.to_string())
}

//! Internals the micro-benchmarks (`benches/hot_paths.rs`, `scripts/bench-micro.sh`) measure.
//! Not an API: hidden from the docs, thin wrappers only, no logic of its own, so a benchmark
//! measures exactly the code a request runs.

use std::net::IpAddr;

use http::request::Parts as RequestParts;
use http::{HeaderMap, HeaderValue, Version};

use crate::config::PublicConfig;
use crate::log::{Entry, LogError};

/// `proxy::check_head`: framing, header size, host and declared length of a request head.
pub fn check_head(parts: &RequestParts, c: &PublicConfig) -> Option<HeaderValue> {
    crate::proxy::check_head(parts, c).ok().flatten()
}

/// `proxy::prepare_origin_headers`: the header rewriting every forwarded request gets.
pub fn prepare_origin_headers(
    h: &mut HeaderMap,
    version: Version,
    host: Option<HeaderValue>,
    peer: IpAddr,
    trusted: &[ipnet::IpNet],
    request_id: &str,
) -> IpAddr {
    crate::proxy::prepare_origin_headers(h, version, host, peer, false, trusted, request_id)
}

/// The log's entry encoding (`[version] ++ postcard`), as stored without encryption.
pub fn encode_entry(entry: &Entry) -> Result<Vec<u8>, LogError> {
    crate::log::codec::encode_entry(entry)
}

/// Decodes what [`encode_entry`] wrote.
pub fn decode_entry(bytes: &[u8]) -> Result<Entry, LogError> {
    crate::log::codec::decode_entry(bytes)
}

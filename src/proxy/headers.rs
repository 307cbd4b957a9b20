//! Header hygiene for everything that crosses the proxy: hop-by-hop removal (RFC 9110 7.6.1),
//! `X-Forwarded-*`, and stripping client-sent `X-Copyist-*`.
//!
//! Pure functions over header maps; no I/O. The origin sees the client's headers minus exactly
//! these changes, which the README lists as the documented differences.

use std::net::IpAddr;

use http::{header, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

/// Headers that describe one connection, never the message (RFC 9110 7.6.1, plus the
/// non-standard `Proxy-Connection` and `Keep-Alive` that old clients still send).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

/// Forwarding headers a client could use to lie about where it is; trusted only from
/// `trusted_proxies`, otherwise removed and rebuilt.
const FORWARDING: [HeaderName; 5] = [
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
    header::FORWARDED,
    HeaderName::from_static("x-real-ip"),
];

// Names built once: a `&str` name is parsed and validated on every map lookup (issue 6).
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Prefix of the headers copyist itself sets (`X-Copyist-Seq`, `X-Copyist-Replay`, …).
pub const COPYIST_PREFIX: &str = "x-copyist-";

/// Removes hop-by-hop headers and every header the `Connection` header nominates.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names, then remove only what is there: nine hashed removals per
    // message (request and response) were ~4k instructions per request (issue 6,
    // `scripts/bench-micro.sh`). Most requests have none; most responses only `Connection`.
    let mut present: Vec<HeaderName> = headers
        .keys()
        .filter(|name| HOP_BY_HOP.contains(name))
        .cloned()
        .collect();
    if present.is_empty() {
        return;
    }
    let nominated = headers
        .get_all(header::CONNECTION)
        .iter()
        // Bytes, not `to_str`: one non-ASCII byte in the value must not hide the names beside
        // it (found by the `headers` fuzz target).
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .filter_map(|name| HeaderName::from_bytes(name.trim_ascii()).ok());
    present.extend(nominated.collect::<Vec<_>>());
    for name in &present {
        headers.remove(name);
    }
}

/// Removes every `X-Copyist-*` header: only copyist may set those, on its own hop.
pub fn strip_copyist(headers: &mut HeaderMap) {
    let is_ours = |name: &HeaderName| {
        let name = name.as_str().as_bytes();
        name.len() > COPYIST_PREFIX.len()
            && name[..COPYIST_PREFIX.len()] == *COPYIST_PREFIX.as_bytes()
    };
    if !headers.keys().any(is_ours) {
        return;
    }
    let ours: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with(COPYIST_PREFIX))
        .cloned()
        .collect();
    for name in ours {
        headers.remove(name);
    }
}

/// Whether `ip` is one of the configured trusted proxies.
pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    let ip = canonical(ip);
    trusted.iter().any(|net| net.contains(&ip))
}

/// Sets `X-Forwarded-For/-Proto/-Host` for a request from `peer` and returns the real client
/// address. A trusted peer's forwarding headers are kept and extended; anyone else's are
/// removed, along with `Forwarded` and `X-Real-IP`, so the CMS never sees a spoofed address.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    peer: IpAddr,
    tls: bool,
    trusted: &[IpNet],
) -> IpAddr {
    let peer = canonical(peer);
    let proto = if tls { "https" } else { "http" };
    if !is_trusted(peer, trusted) {
        for name in &FORWARDING {
            headers.remove(name);
        }
    }
    let chain = forwarded_chain(headers);
    let client = real_client(&chain, peer, trusted);
    let mut xff = String::with_capacity(16 * (chain.len() + 1));
    for ip in &chain {
        push_ip(&mut xff, *ip);
        xff.push_str(", ");
    }
    push_ip(&mut xff, peer);
    if let Ok(value) = HeaderValue::from_maybe_shared(bytes::Bytes::from(xff)) {
        headers.insert(X_FORWARDED_FOR, value);
    }
    if !headers.contains_key(X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if !headers.contains_key(X_FORWARDED_HOST) {
        if let Some(host) = headers.get(header::HOST).cloned() {
            headers.insert(X_FORWARDED_HOST, host);
        }
    }
    client
}

/// The real client address of a request from `peer`: what [`set_forwarded`] returns, without
/// touching the headers (for the access log, before the headers are cleaned).
pub fn client_addr(headers: &HeaderMap, peer: IpAddr, trusted: &[IpNet]) -> IpAddr {
    let peer = canonical(peer);
    if !is_trusted(peer, trusted) {
        return peer;
    }
    real_client(&forwarded_chain(headers), peer, trusted)
}

/// The addresses in the (already trusted) `X-Forwarded-For` headers, in order. Entries that are
/// not IP addresses are dropped rather than passed on.
fn forwarded_chain(headers: &HeaderMap) -> Vec<IpAddr> {
    headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse::<IpAddr>().ok())
        .map(canonical)
        .collect()
}

/// Walks the chain from the nearest hop outwards and returns the first address that is not a
/// trusted proxy (the standard right-to-left rule; the leftmost entry is the client's own claim).
fn real_client(chain: &[IpAddr], peer: IpAddr, trusted: &[IpNet]) -> IpAddr {
    if !is_trusted(peer, trusted) {
        return peer;
    }
    chain
        .iter()
        .rev()
        .find(|ip| !is_trusted(**ip, trusted))
        .or(chain.first())
        .copied()
        .unwrap_or(peer)
}

/// Appends `ip` as text. IPv4 by hand: `Display` goes through the formatting machinery, a
/// measurable part of a pass-through request (issue 6); IPv6 is rare here and uses it.
fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
        }
        IpAddr::V6(v6) => {
            use std::fmt::Write as _;
            let _ = write!(out, "{v6}");
        }
    }
}

/// IPv4-mapped IPv6 addresses (from a dual-stack listener) as plain IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_and_nominated_headers_are_removed() {
        let mut h = map(&[
            ("connection", "X-Test, Cookie"),
            ("x-test", "1"),
            ("cookie", "a=b"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic x"),
            ("transfer-encoding", "chunked"),
            ("x-keep", "yes"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-keep"], "yes");
    }

    #[test]
    fn a_non_ascii_byte_does_not_hide_the_other_nominated_headers() {
        let mut h = map(&[("x-a", "1"), ("x-b", "2"), ("x-keep", "yes")]);
        h.append(
            header::CONNECTION,
            HeaderValue::from_bytes(b"x-a,\xfe, x-b").unwrap(),
        );
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-keep"], "yes");
    }

    #[test]
    fn copyist_headers_from_clients_are_removed() {
        let mut h = map(&[
            ("X-Copyist-Seq", "9"),
            ("x-copyist-replay", "1"),
            ("x-other", "1"),
        ]);
        strip_copyist(&mut h);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn untrusted_peer_cannot_spoof_forwarding_headers() {
        let mut h = map(&[
            ("host", "site.example"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("forwarded", "for=6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
        ]);
        let client = set_forwarded(&mut h, "192.0.2.7".parse().unwrap(), false, &[]);
        assert_eq!(client, "192.0.2.7".parse::<IpAddr>().unwrap());
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "site.example");
        assert!(!h.contains_key("forwarded") && !h.contains_key("x-real-ip"));
    }

    #[test]
    fn trusted_peer_extends_the_chain_and_names_the_real_client() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = map(&[
            ("host", "site.example"),
            ("x-forwarded-for", "203.0.113.9, 10.1.1.1"),
            ("x-forwarded-proto", "https"),
        ]);
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        // The access log's address is the one the CMS is told.
        assert_eq!(
            client_addr(&h, peer, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_addr(&h, peer, &[]), peer);
        let client = set_forwarded(&mut h, peer, false, &trusted);
        assert_eq!(client, "203.0.113.9".parse::<IpAddr>().unwrap());
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 10.1.1.1, 10.0.0.2");
        assert_eq!(h["x-forwarded-proto"], "https");
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "10.100.9.255",
            "192.0.2.7",
            "2001:db8::1",
            "::",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut out = String::new();
            push_ip(&mut out, ip);
            assert_eq!(out, ip.to_string());
        }
    }

    #[test]
    fn ipv4_mapped_peers_are_matched_as_ipv4() {
        let trusted: Vec<IpNet> = vec!["127.0.0.1/32".parse().unwrap()];
        assert!(is_trusted("::ffff:127.0.0.1".parse().unwrap(), &trusted));
    }
}

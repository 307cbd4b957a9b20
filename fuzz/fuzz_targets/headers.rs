//! `headers`: the header rewriting every request gets on its way to the origin, in the order
//! `Proxy::origin_headers` applies it (`strip_hop_by_hop`, `strip_copyist`, `set_forwarded`),
//! on header maps, peers and trusted-proxy lists built from the input.
//!
//! Never panics, and afterwards: no hop-by-hop header and no header a `Connection` value
//! nominated (other than the `X-Forwarded-*` that `set_forwarded` sets itself), no
//! `X-Copyist-*`; exactly one `X-Forwarded-For`, a list of addresses ending in the peer; an
//! untrusted peer's forwarding headers replaced, not kept; the real client is the peer, or for
//! a trusted peer the nearest untrusted hop; every other header untouched, values in order.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use arbitrary::{Arbitrary, Result, Unstructured};
use copyist::proxy::headers::{is_trusted, set_forwarded, strip_copyist, strip_hop_by_hop};
use http::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;

/// Names worth drawing often: every one the rewriting treats specially, and a few it must not.
const NAMES: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "x-real-ip",
    "x-copyist-seq",
    "x-copyist-replay",
    "x-copyist-request-id",
    "host",
    "cookie",
    "content-type",
    "x-test",
];

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];
const FORWARDING: &[&str] = &[
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "x-real-ip",
];
const SET_BY_US: &[&str] = &["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"];

#[derive(Debug)]
struct Input {
    headers: HeaderMap,
    peer: IpAddr,
    tls: bool,
    trusted: Vec<IpNet>,
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = input(&mut Unstructured::new(data)) else {
        return;
    };
    check(input);
});

fn check(input: Input) {
    let Input {
        headers: original,
        peer,
        tls,
        trusted,
    } = input;
    let mut h = original.clone();

    strip_hop_by_hop(&mut h);
    let nominated = nominated(&original);
    for name in HOP_BY_HOP
        .iter()
        .copied()
        .chain(nominated.iter().map(|n| n.as_str()))
    {
        assert!(
            !h.contains_key(name),
            "{name} left by strip_hop_by_hop: {h:?}"
        );
    }

    strip_copyist(&mut h);
    assert!(
        !h.keys().any(|k| k.as_str().starts_with("x-copyist-")),
        "{h:?}"
    );
    let before_forwarding = h.clone();

    let client = set_forwarded(&mut h, peer, tls, &trusted);
    let peer = canonical(peer);
    let peer_trusted = is_trusted(peer, &trusted);

    for name in HOP_BY_HOP {
        assert!(!h.contains_key(*name), "{name} after set_forwarded");
    }
    for name in &nominated {
        assert!(
            SET_BY_US.contains(&name.as_str()) || !h.contains_key(name),
            "nominated {name} after set_forwarded"
        );
    }
    assert!(
        !h.keys().any(|k| k.as_str().starts_with("x-copyist-")),
        "{h:?}"
    );

    // X-Forwarded-For: one header, addresses only, the peer last.
    let xff: Vec<&HeaderValue> = h.get_all("x-forwarded-for").iter().collect();
    assert_eq!(xff.len(), 1, "{xff:?}");
    let chain: Vec<IpAddr> = xff[0]
        .to_str()
        .expect("X-Forwarded-For is ASCII")
        .split(", ")
        .map(|a| a.parse().expect("X-Forwarded-For holds addresses only"))
        .collect();
    assert_eq!(chain.last(), Some(&peer), "{chain:?}");
    let proto = if tls { "https" } else { "http" };

    if peer_trusted {
        // The trusted chain, extended by the peer.
        let mut expected = addresses(&before_forwarding);
        expected.push(peer);
        assert_eq!(chain, expected);
        let nearest_untrusted = chain.iter().rev().find(|ip| !is_trusted(**ip, &trusted));
        match nearest_untrusted {
            Some(ip) => assert_eq!(client, *ip),
            None => assert_eq!(client, chain[0]),
        }
        assert!(h.contains_key("x-forwarded-proto"));
        for name in [
            "forwarded",
            "x-real-ip",
            "x-forwarded-proto",
            "x-forwarded-host",
        ] {
            if before_forwarding.contains_key(name) {
                assert_eq!(values(&h, name), values(&before_forwarding, name), "{name}");
            }
        }
    } else {
        // Nothing the peer said about forwarding survives.
        assert_eq!(client, peer);
        assert_eq!(chain, [peer]);
        assert_eq!(values(&h, "x-forwarded-proto"), [proto.as_bytes()]);
        let host: Vec<&[u8]> = values(&before_forwarding, "host")
            .into_iter()
            .take(1)
            .collect();
        assert_eq!(values(&h, "x-forwarded-host"), host);
        assert!(!h.contains_key("forwarded") && !h.contains_key("x-real-ip"));
    }

    // Everything else is the client's, untouched and in order.
    for name in before_forwarding.keys() {
        if !FORWARDING.contains(&name.as_str()) {
            assert_eq!(
                values(&h, name.as_str()),
                values(&before_forwarding, name.as_str())
            );
        }
    }
    for name in original.keys() {
        let removed = HOP_BY_HOP.contains(&name.as_str())
            || nominated.contains(name)
            || name.as_str().starts_with("x-copyist-")
            || FORWARDING.contains(&name.as_str());
        if !removed {
            assert_eq!(
                values(&h, name.as_str()),
                values(&original, name.as_str()),
                "{name}"
            );
        }
    }
}

/// Every header name a `Connection` value nominates: comma-separated tokens (RFC 9110 7.6.1),
/// whatever else the value holds.
fn nominated(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all("connection")
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
        .collect()
}

/// The addresses in every `X-Forwarded-For` value, in order; anything else is skipped.
fn addresses(headers: &HeaderMap) -> Vec<IpAddr> {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse::<IpAddr>().ok())
        .map(canonical)
        .collect()
}

fn values<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a [u8]> {
    headers
        .get_all(name)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect()
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

// === building the input ===

fn input(u: &mut Unstructured<'_>) -> Result<Input> {
    let peer = ip(u)?;
    let tls = u.arbitrary()?;
    let mut trusted = Vec::new();
    for _ in 0..u.int_in_range(0..=3)? {
        let addr = if u.ratio(1, 2)? { peer } else { ip(u)? };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = u.int_in_range(0..=max)?;
        trusted.push(IpNet::new(addr, prefix).expect("prefix in range"));
    }
    let mut headers = HeaderMap::new();
    for _ in 0..u.int_in_range(0..=24)? {
        let name = if u.ratio(3, 4)? {
            HeaderName::from_static(u.choose(NAMES)?)
        } else {
            match HeaderName::from_bytes(<&[u8]>::arbitrary(u)?) {
                Ok(name) => name,
                Err(_) => continue,
            }
        };
        let value = match u.int_in_range(0..=3)? {
            // A list of names, for Connection.
            0 => {
                let mut list = Vec::new();
                for _ in 0..u.int_in_range(1..=4)? {
                    if !list.is_empty() {
                        list.extend_from_slice(if u.arbitrary()? { b", " } else { b"," });
                    }
                    if u.ratio(1, 4)? {
                        // Anything at all between the commas, obs-text included.
                        list.extend_from_slice(<&[u8]>::arbitrary(u)?);
                    } else {
                        list.extend_from_slice(u.choose(NAMES)?.as_bytes());
                    }
                }
                list
            }
            // A list of addresses, for X-Forwarded-For.
            1 => {
                let mut list = String::new();
                for _ in 0..u.int_in_range(1..=4)? {
                    if !list.is_empty() {
                        list.push_str(if u.arbitrary()? { ", " } else { "," });
                    }
                    list.push_str(&ip(u)?.to_string());
                }
                list.into_bytes()
            }
            _ => <&[u8]>::arbitrary(u)?.to_vec(),
        };
        if let Ok(value) = HeaderValue::from_bytes(&value) {
            headers.append(name, value);
        }
    }
    Ok(Input {
        headers,
        peer,
        tls,
        trusted,
    })
}

fn ip(u: &mut Unstructured<'_>) -> Result<IpAddr> {
    Ok(match u.int_in_range(0..=2)? {
        0 => IpAddr::V4(Ipv4Addr::from(u.arbitrary::<[u8; 4]>()?)),
        1 => IpAddr::V6(Ipv6Addr::from(u.arbitrary::<[u8; 16]>()?)),
        _ => IpAddr::V6(Ipv4Addr::from(u.arbitrary::<[u8; 4]>()?).to_ipv6_mapped()),
    })
}

//! What a mirror sends to its writer instead of its own CMS, over the replication channel:
//!
//! * writes (what the mirror's rules capture): its CMS changes only through replay. The client
//!   is answered once this mirror has applied the writer's entry for the write
//!   (read-your-writes), so a user who just posted sees their own article on the mirror they
//!   are talking to. The wait is bounded (`[writer] read_your_writes_wait`): past it the
//!   writer's answer is returned anyway, marked `X-Copyist-Applied: timeout`;
//! * every request on a `[writer] paths` path, reads included: an admin area must show the
//!   writer's state, not a copy that may lag;
//! * every request of a client holding a valid writer-affinity cookie, which a mirror sets on
//!   the answer to a write it forwarded: for `[writer] affinity` after writing, a client sees its
//!   own writes on pages the read-your-writes wait cannot cover (lists, feeds, search).
//!
//! The cookie holds only its expiry, unsigned. A forged or replayed one sends nobody's requests
//! but its holder's to the writer, which would have answered them just the same: it grants
//! nothing. It is removed from every request before any CMS sees it ([`take_affinity_cookie`]).
//!
//! If the writer cannot be reached, writes and writer paths get 503 with `Retry-After`; reads
//! sent only because of the cookie are served by this mirror's CMS instead (the proxy decides).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::sync::watch;

use crate::body::GuardedBody;
use crate::config::{PathPattern, WriterConfig};
use crate::error::{Blame, BoxError, HttpError, ProxyBody};
use crate::ship::peer::{Peer, PeerError};
use crate::wire::{self, ForwardHead};

/// Why a forwarded request failed.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The writer could not be reached; nothing was written.
    #[error("the writer cannot be reached; try again")]
    WriterUnreachable(#[source] PeerError),
    /// The forward could not be encoded.
    #[error("cannot forward this request: {0}")]
    Encode(String),
}

impl HttpError for ForwardError {
    fn blame(&self) -> Blame {
        Blame::Copyist
    }
    fn status(&self) -> StatusCode {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// The writer-affinity cookie as a request carried it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AffinityCookie {
    /// No cookie of that name.
    Absent,
    /// Only values that are not an expiry (mangled, forged, or somebody else's cookie).
    Garbage,
    /// The latest expiry, in Unix seconds, among the cookie's values.
    Expires(u64),
}

impl AffinityCookie {
    /// Whether the cookie still sends its holder to the writer at `now` (Unix seconds).
    pub fn valid_at(self, now: u64) -> bool {
        matches!(self, AffinityCookie::Expires(t) if t > now)
    }

    /// Two sightings of the cookie combined: the latest expiry wins.
    fn and(self, other: AffinityCookie) -> AffinityCookie {
        use AffinityCookie::{Absent, Expires, Garbage};
        match (self, other) {
            (Expires(a), Expires(b)) => Expires(a.max(b)),
            (Expires(t), _) | (_, Expires(t)) => Expires(t),
            (Garbage, _) | (_, Garbage) => Garbage,
            (Absent, Absent) => Absent,
        }
    }
}

/// Forwards client requests from a mirror to its writer, and decides which ones go there
/// besides writes. Cheap to clone.
#[derive(Clone)]
pub struct Forwarder {
    peer: Arc<Peer>,
    applied: watch::Receiver<u64>,
    read_your_writes_wait: Duration,
    paths: Arc<[PathPattern]>,
    /// Whole seconds of affinity; 0 when it is off.
    affinity_secs: u64,
    cookie: Arc<str>,
}

impl Forwarder {
    /// A forwarder to `peer` (the writer), watching this mirror's applied sequence number,
    /// routing by `config`.
    pub fn new(peer: Peer, applied: watch::Receiver<u64>, config: &WriterConfig) -> Forwarder {
        // Rounded up: a sub-second affinity must not become `Max-Age=0` (delete the cookie).
        let affinity = config.affinity;
        let affinity_secs = affinity.as_secs() + u64::from(affinity.subsec_nanos() > 0);
        Forwarder {
            peer: Arc::new(peer),
            applied,
            read_your_writes_wait: config.read_your_writes_wait,
            paths: config.paths.clone().into(),
            affinity_secs,
            cookie: config.affinity_cookie.as_str().into(),
        }
    }

    /// Whether requests on `path` go to the writer whatever their method (`[writer] paths`).
    pub fn is_writer_path(&self, path: &str) -> bool {
        self.paths.iter().any(|p| p.matches(path))
    }

    /// Removes the affinity cookie from `headers` (the CMS must never see it) and says whether
    /// it sends this request to the writer: affinity is on and the cookie has not expired.
    /// Without the cookie this neither allocates nor reads the clock.
    pub fn take_affinity(&self, headers: &mut HeaderMap) -> bool {
        let found = take_affinity_cookie(headers, &self.cookie);
        self.affinity_secs > 0 && found != AffinityCookie::Absent && found.valid_at(unix_now())
    }

    /// The `Set-Cookie` value that gives a client affinity from now on, or `None` when
    /// affinity is off. `secure`: the client's connection is TLS, so the browser must never
    /// send the cookie in clear.
    pub fn affinity_set_cookie(&self, secure: bool) -> Option<HeaderValue> {
        if self.affinity_secs == 0 {
            return None;
        }
        set_cookie(&self.cookie, self.affinity_secs, unix_now(), secure)
    }

    /// Sends the request to the writer and returns its answer. When the writer logged it
    /// (`X-Copyist-Seq`), first waits (bounded) until this mirror applied that entry.
    pub async fn forward(
        &self,
        head: ForwardHead,
        body: GuardedBody,
    ) -> Result<Response<ProxyBody>, ForwardError> {
        let encoded = serde_json::to_vec(&head).map_err(|e| ForwardError::Encode(e.to_string()))?;
        let value =
            HeaderValue::from_bytes(&encoded).map_err(|e| ForwardError::Encode(e.to_string()))?;
        let mut req = Request::new(body.map_err(BoxError::from).boxed_unsync());
        *req.method_mut() = Method::POST;
        *req.uri_mut() = format!("{}forward", wire::PREFIX)
            .parse()
            .map_err(|_| ForwardError::Encode("path".into()))?;
        req.headers_mut().insert(wire::FORWARD_HEADER, value);
        let resp = self
            .peer
            .send(req)
            .await
            .map_err(ForwardError::WriterUnreachable)?;
        let seq = resp
            .headers()
            .get("x-copyist-seq")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let (mut parts, body) = resp.into_parts();
        crate::proxy::headers::strip_hop_by_hop(&mut parts.headers);
        // The length of a HEAD answer travels under another name (see `wire`).
        if let Some(length) = parts.headers.remove(wire::HEAD_LENGTH_HEADER) {
            if head.method == Method::HEAD.as_str() {
                parts.headers.insert(header::CONTENT_LENGTH, length);
            }
        }
        if let Some(seq) = seq {
            let mut applied = self.applied.clone();
            let done =
                tokio::time::timeout(self.read_your_writes_wait, applied.wait_for(|a| *a >= seq))
                    .await;
            let mark = if matches!(done, Ok(Ok(_))) {
                "yes"
            } else {
                "timeout"
            };
            parts
                .headers
                .insert("x-copyist-applied", HeaderValue::from_static(mark));
        }
        Ok(Response::from_parts(
            parts,
            body.map_err(BoxError::from).boxed_unsync(),
        ))
    }
}

/// `Set-Cookie` for an affinity of `ttl` seconds from `now`. The value is the expiry, so no
/// server-side state is needed; `HttpOnly` because no script needs it, `SameSite=Lax` because
/// it only routes, and a top-level navigation from elsewhere may carry it.
fn set_cookie(name: &str, ttl: u64, now: u64, secure: bool) -> Option<HeaderValue> {
    let expires = now.saturating_add(ttl);
    let secure = if secure { "; Secure" } else { "" };
    let text = format!("{name}={expires}; Max-Age={ttl}; Path=/; HttpOnly; SameSite=Lax{secure}");
    HeaderValue::from_str(&text).ok()
}

/// Removes every `name=…` pair from the request's `Cookie` headers and says what they held.
/// The other pairs stay byte for byte as the client sent them, separators included; a
/// `Cookie` header left with nothing is removed. Without such a pair nothing is allocated and
/// the headers are untouched.
pub fn take_affinity_cookie(headers: &mut HeaderMap, name: &str) -> AffinityCookie {
    let mut found = AffinityCookie::Absent;
    for value in headers.get_all(header::COOKIE) {
        for pair in value.as_bytes().split(|b| *b == b';') {
            if let Some(v) = cookie_value(pair, name) {
                found = found.and(expiry(v));
            }
        }
    }
    if found == AffinityCookie::Absent {
        return found;
    }
    let kept: Vec<HeaderValue> = (headers.get_all(header::COOKIE).iter())
        .filter_map(|v| without_cookie(v.as_bytes(), name))
        .collect();
    headers.remove(header::COOKIE);
    for v in kept {
        headers.append(header::COOKIE, v);
    }
    found
}

/// The value of one `name=value` pair of a `Cookie` header if its name is `name` (names are
/// case-sensitive; spaces around the pair, the name and the value are ignored).
fn cookie_value<'a>(pair: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let at = pair.iter().position(|b| *b == b'=')?;
    let (n, v) = (&pair[..at], &pair[at + 1..]);
    (n.trim_ascii() == name.as_bytes()).then(|| v.trim_ascii())
}

/// An expiry in Unix seconds: digits only, as copyist writes it.
fn expiry(value: &[u8]) -> AffinityCookie {
    let digits = !value.is_empty() && value.len() <= 20 && value.iter().all(u8::is_ascii_digit);
    let parsed = (std::str::from_utf8(value).ok())
        .filter(|_| digits)
        .and_then(|s| s.parse().ok());
    parsed.map_or(AffinityCookie::Garbage, AffinityCookie::Expires)
}

/// One `Cookie` header value without its `name=…` pairs; `None` when nothing else is left.
fn without_cookie(value: &[u8], name: &str) -> Option<HeaderValue> {
    let mut out = Vec::with_capacity(value.len());
    let mut first = true;
    for pair in value.split(|b| *b == b';') {
        if cookie_value(pair, name).is_some() {
            continue;
        }
        if !first {
            out.push(b';');
        }
        first = false;
        out.extend_from_slice(pair);
    }
    // The removed pair may have been first: drop the space that followed its separator.
    let kept = out.trim_ascii_start();
    if kept.is_empty() {
        return None;
    }
    HeaderValue::from_bytes(kept).ok()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAME: &str = "copyist_writer";

    /// Runs [`take_affinity_cookie`] on `Cookie` headers `values`; returns what it found and
    /// the `Cookie` headers left.
    fn take(values: &[&str]) -> (AffinityCookie, Vec<String>) {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("site"));
        for v in values {
            h.append(header::COOKIE, HeaderValue::from_str(v).unwrap());
        }
        let found = take_affinity_cookie(&mut h, NAME);
        let left = (h.get_all(header::COOKIE).iter())
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        assert_eq!(h.get(header::HOST).unwrap(), "site", "other headers kept");
        (found, left)
    }

    #[test]
    fn absent_cookie_leaves_every_header_as_it_was() {
        for values in [
            &[][..],
            &["a=1"][..],
            &["a=1;b=2", "c=3 ;  d=4"][..],
            &["copyist_writerx=5; xcopyist_writer=6; Copyist_Writer=7"][..],
            &["copyist_writer"][..],
        ] {
            let (found, left) = take(values);
            assert_eq!(found, AffinityCookie::Absent, "{values:?}");
            assert_eq!(left, values, "untouched");
        }
    }

    #[test]
    fn the_cookie_is_removed_and_the_others_kept_byte_for_byte() {
        let cases: &[(&[&str], &[&str])] = &[
            (&["copyist_writer=100"], &[]),
            (&["copyist_writer=100; a=1"], &["a=1"]),
            (&["a=1; copyist_writer=100"], &["a=1"]),
            (&["a=1; copyist_writer=100; b=2"], &["a=1; b=2"]),
            (&["a=1;copyist_writer=100;b=\"x y\""], &["a=1;b=\"x y\""]),
            (&["a=1 ;  copyist_writer = 100 ;  b=2"], &["a=1 ;  b=2"]),
            (&["sess=abc==; copyist_writer=100"], &["sess=abc=="]),
            (&["a=1", "copyist_writer=100", "b=2"], &["a=1", "b=2"]),
            (&["copyist_writer=1; a=1; copyist_writer=100"], &["a=1"]),
        ];
        for (values, want) in cases {
            let (found, left) = take(values);
            assert_eq!(found, AffinityCookie::Expires(100), "{values:?}");
            assert_eq!(left, *want, "{values:?}");
        }
    }

    #[test]
    fn garbage_values_are_removed_and_never_valid() {
        for value in [
            "",
            "abc",
            "-5",
            "+5",
            "1e9",
            "12 34",
            "\"100\"",
            "99999999999999999999999",
        ] {
            let (found, left) = take(&[&format!("a=1; copyist_writer={value}")]);
            assert_eq!(found, AffinityCookie::Garbage, "{value:?}");
            assert!(!found.valid_at(0), "{value:?}");
            assert_eq!(left, ["a=1"], "{value:?}");
        }
        // A garbage copy does not spoil a real one.
        let (found, _) = take(&["copyist_writer=x; copyist_writer=100"]);
        assert_eq!(found, AffinityCookie::Expires(100));
    }

    #[test]
    fn set_cookie_names_its_expiry_and_is_secure_only_over_tls() {
        let plain = set_cookie(NAME, 300, 1_000, false).unwrap();
        assert_eq!(
            plain,
            "copyist_writer=1300; Max-Age=300; Path=/; HttpOnly; SameSite=Lax"
        );
        let tls = set_cookie(NAME, 300, 1_000, true).unwrap();
        assert_eq!(
            tls,
            "copyist_writer=1300; Max-Age=300; Path=/; HttpOnly; SameSite=Lax; Secure"
        );
        // What it sets, a request brings back: valid until the expiry.
        let mut h = HeaderMap::new();
        let pair = plain.to_str().unwrap().split(';').next().unwrap();
        h.insert(header::COOKIE, HeaderValue::from_str(pair).unwrap());
        let found = take_affinity_cookie(&mut h, NAME);
        assert!(found.valid_at(1_299) && !found.valid_at(1_300));
    }

    #[test]
    fn validity_is_strictly_before_the_expiry() {
        let c = AffinityCookie::Expires(100);
        assert!(c.valid_at(99));
        assert!(!c.valid_at(100), "expired at its second");
        assert!(!c.valid_at(1_000));
        assert!(!AffinityCookie::Absent.valid_at(0));
    }
}

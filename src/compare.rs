//! What of an origin response is compared between the writer and a mirror, and how.
//!
//! The writer calls [`observe`] at capture time to record what a mirror must match (JSON fields,
//! a masked body digest) in its [`Outcome`]; a mirror calls [`observe`] on its own origin's answer
//! to the replay and then [`compare`] to decide whether it may carry on or must halt.
//!
//! This module owns the comparison rules' meaning: which parts of an answer count, how `Location`
//! is normalised, how volatile parts of a body are masked, and the machine-readable
//! [`Divergence`] reason. It is pure: it must not do I/O, read the clock, log, or decide what
//! happens after a divergence (halting and recording both outcomes belong to `apply`). Choosing
//! the rule for a path belongs to the caller.

use std::borrow::Cow;
use std::fmt;

use serde_json::Value;

use crate::blobs::BlobHash;
use crate::config::{CompareRule, StatusCompare, Volatile};
use crate::log::Outcome;

/// What a JSON pointer is recorded as when the body is not JSON or has nothing at that pointer.
pub const MISSING: &str = "<missing>";

/// What every match of a volatile pattern is replaced by before the body is hashed.
///
/// Part of the recorded data's meaning: the writer hashes with it at capture time and a mirror,
/// possibly running a later version, hashes with it at replay time, so it must never change.
const MASK: &str = "\u{0}copyist:masked\u{0}";

/// The longest value a [`Divergence`] line shows, in characters; the full values stay in the
/// recorded outcomes.
const SHOWN_CHARS: usize = 120;

// === observe ===

/// What `observe` extracts from a response body for later comparison.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    /// `(pointer, value)` for each of the rule's JSON fields, in rule order.
    pub fields: Vec<(String, String)>,
    /// blake3 of the body with volatile parts masked, when the rule compares bodies.
    pub masked_digest: Option<BlobHash>,
}

/// Extracts the rule's JSON fields (when the body parses as JSON; a missing pointer is recorded
/// as `"<missing>"`; values rendered as compact JSON text, strings without quotes) and, when
/// `rule.body` is set, the blake3 of the body with every volatile regex match replaced by a fixed
/// mask. `body` is None when the body was too large to hold in memory: then fields are empty and
/// masked_digest is None.
///
/// A body that is not valid UTF-8 is masked piecewise: the patterns run over each valid UTF-8
/// stretch and the invalid bytes are hashed as they are (a pattern could not match them anyway).
/// Patterns are applied one after the other, each to the previous one's output.
pub fn observe(rule: &CompareRule, body: Option<&[u8]>) -> Observed {
    let Some(body) = body else {
        return Observed::default();
    };
    let fields = if rule.json_fields.is_empty() {
        Vec::new()
    } else {
        let json = serde_json::from_slice::<Value>(body).ok();
        rule.json_fields
            .iter()
            .map(|pointer| {
                let value = json.as_ref().and_then(|j| j.pointer(pointer));
                (
                    pointer.clone(),
                    value.map_or_else(|| MISSING.to_owned(), render),
                )
            })
            .collect()
    };
    let masked_digest = rule.body.then(|| masked_digest(&rule.volatile, body));
    Observed {
        fields,
        masked_digest,
    }
}

/// A JSON value as compared: strings as their text, anything else as compact JSON.
fn render(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn masked_digest(volatile: &[Volatile], body: &[u8]) -> BlobHash {
    let mut hasher = blake3::Hasher::new();
    for chunk in body.utf8_chunks() {
        let mut text = Cow::Borrowed(chunk.valid());
        for pattern in volatile {
            let replaced = match pattern.regex().replace_all(&text, MASK) {
                Cow::Owned(s) => Some(s),
                Cow::Borrowed(_) => None,
            };
            if let Some(s) = replaced {
                text = Cow::Owned(s);
            }
        }
        hasher.update(text.as_bytes());
        hasher.update(chunk.invalid());
    }
    hasher.finalize().into()
}

// === compare ===

/// Why a mirror's answer differs from the writer's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Divergence {
    /// Different status codes (or classes, under [`StatusCompare::Class`]).
    Status {
        /// The writer's status.
        writer: u16,
        /// The mirror's status.
        mirror: u16,
    },
    /// Different `Location` paths, after [`normalise_location`].
    Location {
        /// The writer's normalised `Location`, if it sent one.
        writer: Option<String>,
        /// The mirror's normalised `Location`, if it sent one.
        mirror: Option<String>,
    },
    /// A JSON field differs.
    Field {
        /// The JSON pointer, as configured.
        pointer: String,
        /// The writer's value (`"<missing>"`, or `"<unknown>"` when it was not recorded).
        writer: String,
        /// The mirror's value (`"<missing>"`, or `"<unknown>"` when it was not recorded).
        mirror: String,
    },
    /// The masked body digests differ, or one side has none.
    Body {
        /// First 8 hex digits of the writer's masked digest, or `"unknown"`.
        writer: String,
        /// First 8 hex digits of the mirror's masked digest, or `"unknown"`.
        mirror: String,
    },
}

/// What a field is compared as when an outcome has no value recorded for its pointer (the body
/// was too large to hold, or the rule changed since capture). Never equal to anything.
const UNKNOWN_FIELD: &str = "<unknown>";

/// What a masked digest is shown as when an outcome has none.
const UNKNOWN_BODY: &str = "unknown";

/// The outcome record of a collected origin response: what the writer keeps for its mirrors to
/// match, and what a mirror keeps of its own replay.
pub fn outcome(
    c: &crate::origin::response::Collected,
    observed: Observed,
    duration_us: u64,
) -> Outcome {
    let text = |v: &http::HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned();
    Outcome {
        status: c.status.as_u16(),
        location: c.headers.get(http::header::LOCATION).map(text),
        set_cookies: c
            .headers
            .get_all(http::header::SET_COOKIE)
            .iter()
            .map(text)
            .collect(),
        body_digest: c.digest,
        body_len: c.len,
        duration_us,
        error: None,
        fields: observed.fields,
        masked_digest: observed.masked_digest,
    }
}

/// Compares a mirror's outcome with the writer's under `rule`: status (exact, or same class when
/// [`StatusCompare::Class`]), `Location` after [`normalise_location`] when `rule.location`, each
/// JSON field in rule order, masked digest when `rule.body` (if either side lacks
/// `masked_digest` → [`Divergence::Body`] with `"unknown"`). Returns the FIRST difference in that
/// order.
///
/// Fails closed: a JSON field that either outcome did not record counts as `"<unknown>"` and
/// diverges, even when both lack it, as a missing masked digest does; a check that could not be
/// made is never passed.
///
/// `error` is not looked at: an outcome without a complete answer is an apply error for the
/// caller to deal with before comparing.
pub fn compare(rule: &CompareRule, writer: &Outcome, mirror: &Outcome) -> Result<(), Divergence> {
    let same_status = match rule.status {
        StatusCompare::Exact => writer.status == mirror.status,
        StatusCompare::Class => writer.status / 100 == mirror.status / 100,
    };
    if !same_status {
        return Err(Divergence::Status {
            writer: writer.status,
            mirror: mirror.status,
        });
    }

    if rule.location {
        let w = writer.location.as_deref().map(normalise_location);
        let m = mirror.location.as_deref().map(normalise_location);
        if w != m {
            return Err(Divergence::Location {
                writer: w,
                mirror: m,
            });
        }
    }

    for pointer in &rule.json_fields {
        let w = recorded(&writer.fields, pointer);
        let m = recorded(&mirror.fields, pointer);
        if w.is_none() || w != m {
            return Err(Divergence::Field {
                pointer: pointer.clone(),
                writer: w.unwrap_or(UNKNOWN_FIELD).to_owned(),
                mirror: m.unwrap_or(UNKNOWN_FIELD).to_owned(),
            });
        }
    }

    if rule.body {
        let (w, m) = (writer.masked_digest, mirror.masked_digest);
        if w.is_none() || w != m {
            let show = |d: Option<BlobHash>| d.map_or_else(|| UNKNOWN_BODY.to_owned(), hex8);
            return Err(Divergence::Body {
                writer: show(w),
                mirror: show(m),
            });
        }
    }
    Ok(())
}

/// The value an outcome recorded for `pointer`, if it recorded one.
fn recorded<'a>(fields: &'a [(String, String)], pointer: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(p, _)| p == pointer)
        .map(|(_, v)| v.as_str())
}

/// The first 8 hex digits of a digest: enough to tell two apart in a reason line.
fn hex8(digest: BlobHash) -> String {
    digest.0[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// `"https://a.example:8080/x?y"` → `"/x?y"`; `"/x"` → `"/x"`; `"//host/x"` → `"/x"`; relative
/// `"x"` stays `"x"`. The host differs per node (each CMS sees its own Host), the path must not.
///
/// The scheme goes with the host (a node behind TLS termination may see `http`); an absolute URL
/// without a path becomes `"/"`; a URI whose scheme is not followed by `//` (`mailto:`) is kept
/// as it is. Nothing is decoded or case-folded: the path is compared as sent.
pub fn normalise_location(location: &str) -> String {
    let after_scheme = strip_scheme(location).unwrap_or(location);
    let Some(authority_and_path) = after_scheme.strip_prefix("//") else {
        return location.to_owned();
    };
    let path_at = authority_and_path
        .find(['/', '?', '#'])
        .unwrap_or(authority_and_path.len());
    let path = &authority_and_path[path_at..];
    if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    }
}

/// What follows `scheme:` when `s` starts with a URI scheme (RFC 3986 §3.1).
fn strip_scheme(s: &str) -> Option<&str> {
    let (scheme, rest) = s.split_once(':')?;
    let mut chars = scheme.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    (first_ok && rest_ok).then_some(rest)
}

// === impl Divergence ===

impl Divergence {
    /// The reason's stable code, the first word of its `Display` line.
    pub fn code(&self) -> &'static str {
        match self {
            Divergence::Status { .. } => "status_mismatch",
            Divergence::Location { .. } => "location_mismatch",
            Divergence::Field { .. } => "field_mismatch",
            Divergence::Body { .. } => "body_mismatch",
        }
    }
}

impl fmt::Display for Divergence {
    /// One line, `code key=value ...`, e.g. `field_mismatch pointer=/id writer=42 mirror=43`.
    /// A value that is empty or holds whitespace, quotes or control characters is quoted and
    /// escaped (so the line stays one line and splits on spaces); a value longer than 120
    /// characters is cut and ends in `…`. An absent `Location` shows as `<none>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())?;
        match self {
            Divergence::Status { writer, mirror } => write!(f, " writer={writer} mirror={mirror}"),
            Divergence::Location { writer, mirror } => {
                let none = "<none>";
                write!(
                    f,
                    " writer={} mirror={}",
                    Shown(writer.as_deref().unwrap_or(none)),
                    Shown(mirror.as_deref().unwrap_or(none))
                )
            }
            Divergence::Field {
                pointer,
                writer,
                mirror,
            } => write!(
                f,
                " pointer={} writer={} mirror={}",
                Shown(pointer),
                Shown(writer),
                Shown(mirror)
            ),
            Divergence::Body { writer, mirror } => {
                write!(f, " writer={} mirror={}", Shown(writer), Shown(mirror))
            }
        }
    }
}

/// A value in a reason line: bare when it is safe to, quoted and escaped otherwise, cut short.
struct Shown<'a>(&'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cut = match self.0.char_indices().nth(SHOWN_CHARS) {
            Some((at, _)) => Cow::Owned(format!("{}…", &self.0[..at])),
            None => Cow::Borrowed(self.0),
        };
        let needs_quotes = cut.is_empty()
            || cut
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '"');
        if needs_quotes {
            write!(f, "{cut:?}")
        } else {
            f.write_str(&cut)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PathPattern;

    /// The one place tests build a `Volatile` (the real type's constructor may differ).
    fn volatile(pattern: &str) -> Volatile {
        Volatile::new(pattern).unwrap()
    }

    fn rule(status: StatusCompare, location: bool, fields: &[&str], body: bool) -> CompareRule {
        CompareRule {
            path: PathPattern::new("/*").unwrap(),
            status,
            location,
            json_fields: fields.iter().map(|f| (*f).to_owned()).collect(),
            body,
            volatile: vec![
                volatile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z"),
                volatile(r#"name="nonce" value="[0-9a-f]+""#),
            ],
        }
    }

    /// An outcome as `apply` would build it: the body observed under `rule`.
    fn outcome(
        rule: &CompareRule,
        status: u16,
        location: Option<&str>,
        body: Option<&[u8]>,
    ) -> Outcome {
        let observed = observe(rule, body);
        Outcome {
            status,
            location: location.map(str::to_owned),
            set_cookies: Vec::new(),
            body_digest: blake3::hash(body.unwrap_or_default()).into(),
            body_len: body.map_or(0, |b| b.len() as u64),
            duration_us: 1,
            error: None,
            fields: observed.fields,
            masked_digest: observed.masked_digest,
        }
    }

    enum Want {
        Equal,
        /// The divergence's full `Display` line.
        Line(&'static str),
        /// Only the divergence's code (for lines holding digests).
        Code(&'static str),
    }

    #[test]
    fn compare_table() {
        use StatusCompare::{Class, Exact};
        type Side = (u16, Option<&'static str>, Option<&'static [u8]>);
        let page_w: &[u8] = br#"<p>at 2024-05-01T10:00:00Z</p><input name="nonce" value="ab12">"#;
        let page_m: &[u8] = br#"<p>at 2024-05-01T10:00:07Z</p><input name="nonce" value="9f9f">"#;
        let page_x: &[u8] = br#"<p>at 2024-05-01T10:00:07Z</p><input name="nonce" value="9f9f">!"#;
        let error_page: &[u8] = b"<h1>Database error</h1>";
        let cases: Vec<(&str, CompareRule, Side, Side, Want)> = vec![
            // Status.
            (
                "same status",
                rule(Exact, false, &[], false),
                (201, None, Some(b"")),
                (201, None, Some(b"")),
                Want::Equal,
            ),
            (
                "exact: different status",
                rule(Exact, false, &[], false),
                (201, None, None),
                (500, None, None),
                Want::Line("status_mismatch writer=201 mirror=500"),
            ),
            (
                "exact: same class is not enough",
                rule(Exact, false, &[], false),
                (201, None, None),
                (200, None, None),
                Want::Line("status_mismatch writer=201 mirror=200"),
            ),
            (
                "class: same class",
                rule(Class, false, &[], false),
                (201, None, None),
                (200, None, None),
                Want::Equal,
            ),
            (
                "class: different class",
                rule(Class, false, &[], false),
                (302, None, None),
                (200, None, None),
                Want::Line("status_mismatch writer=302 mirror=200"),
            ),
            (
                "no answer on the mirror",
                rule(Class, false, &[], false),
                (200, None, None),
                (0, None, None),
                Want::Line("status_mismatch writer=200 mirror=0"),
            ),
            // Location.
            (
                "location: scheme, host and port differ",
                rule(Exact, true, &[], false),
                (302, Some("https://writer.example/article/3?ok=1"), None),
                (302, Some("http://mirror-1:8080/article/3?ok=1"), None),
                Want::Equal,
            ),
            (
                "location: absolute vs path-only",
                rule(Exact, true, &[], false),
                (302, Some("https://writer.example/article/3"), None),
                (302, Some("/article/3"), None),
                Want::Equal,
            ),
            (
                "location: path differs",
                rule(Exact, true, &[], false),
                (302, Some("https://writer.example/article/3"), None),
                (302, Some("https://mirror.example/article/4"), None),
                Want::Line("location_mismatch writer=/article/3 mirror=/article/4"),
            ),
            (
                "location: query differs",
                rule(Exact, true, &[], false),
                (302, Some("/article/3?id=3"), None),
                (302, Some("/article/3?id=4"), None),
                Want::Line("location_mismatch writer=/article/3?id=3 mirror=/article/3?id=4"),
            ),
            (
                "location: one side has none",
                rule(Exact, true, &[], false),
                (302, Some("/article/3"), None),
                (302, None, None),
                Want::Line("location_mismatch writer=/article/3 mirror=<none>"),
            ),
            (
                "location: not compared unless asked",
                rule(Exact, false, &[], false),
                (302, Some("/article/3"), None),
                (302, Some("/article/4"), None),
                Want::Equal,
            ),
            (
                "status is checked before location",
                rule(Exact, true, &[], false),
                (302, Some("/article/3"), None),
                (303, Some("/article/4"), None),
                Want::Code("status_mismatch"),
            ),
            // JSON fields.
            (
                "field: /id equal",
                rule(Exact, false, &["/id"], false),
                (201, None, Some(br#"{"id": 42, "at": "10:00"}"#)),
                (201, None, Some(br#"{"at":"10:01","id":42}"#)),
                Want::Equal,
            ),
            (
                "field: /id different",
                rule(Exact, false, &["/id"], false),
                (201, None, Some(br#"{"id": 42}"#)),
                (201, None, Some(br#"{"id": 43}"#)),
                Want::Line("field_mismatch pointer=/id writer=42 mirror=43"),
            ),
            (
                "field: nested pointer equal",
                rule(Exact, false, &["/data/0/id"], false),
                (200, None, Some(br#"{"data":[{"id":"a7"},{"id":"b8"}]}"#)),
                (200, None, Some(br#"{"data":[{"id":"a7"}]}"#)),
                Want::Equal,
            ),
            (
                "field: nested pointer different",
                rule(Exact, false, &["/data/0/id"], false),
                (200, None, Some(br#"{"data":[{"id":"a7"}]}"#)),
                (200, None, Some(br#"{"data":[{"id":"a8"}]}"#)),
                Want::Line("field_mismatch pointer=/data/0/id writer=a7 mirror=a8"),
            ),
            (
                "field: non-JSON on both sides is <missing> on both",
                rule(Exact, false, &["/id"], false),
                (200, None, Some(b"<html>created</html>")),
                (200, None, Some(b"<html>created</html>")),
                Want::Equal,
            ),
            (
                "field: present on one side only",
                rule(Exact, false, &["/id"], false),
                (200, None, Some(br#"{"id":1}"#)),
                (200, None, Some(b"<html>error</html>")),
                Want::Line("field_mismatch pointer=/id writer=1 mirror=<missing>"),
            ),
            (
                "field: first difference in rule order",
                rule(Exact, false, &["/id", "/slug"], false),
                (201, None, Some(br#"{"id":1,"slug":"a"}"#)),
                (201, None, Some(br#"{"id":2,"slug":"b"}"#)),
                Want::Line("field_mismatch pointer=/id writer=1 mirror=2"),
            ),
            (
                "field: string and value with spaces are quoted in the line",
                rule(Exact, false, &["/title"], false),
                (201, None, Some(br#"{"title":"hello world"}"#)),
                (201, None, Some(br#"{"title":"hello"}"#)),
                Want::Line(r#"field_mismatch pointer=/title writer="hello world" mirror=hello"#),
            ),
            (
                "field: object values compare as compact JSON",
                rule(Exact, false, &["/tags"], false),
                (201, None, Some(br#"{"tags": {"b": [1, 2], "a": null}}"#)),
                (201, None, Some(br#"{"tags":{"a":null,"b":[1,2]}}"#)),
                Want::Equal,
            ),
            (
                "field: body too large on both sides is unknown, never equal",
                rule(Exact, false, &["/id"], false),
                (201, None, None),
                (201, None, None),
                Want::Line("field_mismatch pointer=/id writer=<unknown> mirror=<unknown>"),
            ),
            (
                "field: body too large on the mirror",
                rule(Exact, false, &["/id"], false),
                (201, None, Some(br#"{"id":1}"#)),
                (201, None, None),
                Want::Line("field_mismatch pointer=/id writer=1 mirror=<unknown>"),
            ),
            (
                "location is checked before fields",
                rule(Exact, true, &["/id"], false),
                (201, Some("/a/1"), Some(br#"{"id":1}"#)),
                (201, Some("/a/2"), Some(br#"{"id":2}"#)),
                Want::Code("location_mismatch"),
            ),
            // Body digest with volatile parts masked.
            (
                "body: same bytes",
                rule(Exact, false, &[], true),
                (200, None, Some(page_w)),
                (200, None, Some(page_w)),
                Want::Equal,
            ),
            (
                "body: differs only in timestamp and nonce",
                rule(Exact, false, &[], true),
                (200, None, Some(page_w)),
                (200, None, Some(page_m)),
                Want::Equal,
            ),
            (
                "body: differs outside the masked parts",
                rule(Exact, false, &[], true),
                (200, None, Some(page_w)),
                (200, None, Some(page_x)),
                Want::Code("body_mismatch"),
            ),
            (
                "body: a 200 error page is caught only by the body check",
                rule(Exact, false, &[], true),
                (200, None, Some(page_w)),
                (200, None, Some(error_page)),
                Want::Code("body_mismatch"),
            ),
            (
                "body: not compared unless asked",
                rule(Exact, false, &[], false),
                (200, None, Some(page_w)),
                (200, None, Some(error_page)),
                Want::Equal,
            ),
            (
                "body: too large on both sides is unknown, never equal",
                rule(Exact, false, &[], true),
                (200, None, None),
                (200, None, None),
                Want::Line("body_mismatch writer=unknown mirror=unknown"),
            ),
            (
                "fields are checked before the body",
                rule(Exact, false, &["/id"], true),
                (201, None, Some(br#"{"id":1}"#)),
                (201, None, Some(br#"{"id":2} "#)),
                Want::Code("field_mismatch"),
            ),
        ];
        for (name, rule, w, m, want) in cases {
            let writer = outcome(&rule, w.0, w.1, w.2);
            let mirror = outcome(&rule, m.0, m.1, m.2);
            let got = compare(&rule, &writer, &mirror);
            match (want, got) {
                (Want::Equal, Ok(())) => {}
                (Want::Line(line), Err(d)) => assert_eq!(d.to_string(), line, "{name}"),
                (Want::Code(code), Err(d)) => {
                    assert_eq!(d.code(), code, "{name}");
                    assert!(d.to_string().starts_with(code), "{name}: {d}");
                }
                (_, got) => panic!("{name}: unexpected {got:?}"),
            }
        }
    }

    #[test]
    fn body_divergence_shows_short_digests_or_unknown() {
        let r = rule(StatusCompare::Exact, false, &[], true);
        let a = outcome(&r, 200, None, Some(b"a"));
        let b = outcome(&r, 200, None, Some(b"b"));
        let hex = |body: &[u8]| blake3::hash(body).to_hex()[..8].to_owned();
        let got = compare(&r, &a, &b).unwrap_err();
        assert_eq!(
            got,
            Divergence::Body {
                writer: hex(b"a"),
                mirror: hex(b"b")
            }
        );
        assert_eq!(
            got.to_string(),
            format!("body_mismatch writer={} mirror={}", hex(b"a"), hex(b"b"))
        );

        let too_large = outcome(&r, 200, None, None);
        let got = compare(&r, &a, &too_large).unwrap_err();
        assert_eq!(
            got.to_string(),
            format!("body_mismatch writer={} mirror=unknown", hex(b"a"))
        );
    }

    #[test]
    fn observe_table() {
        let r = |fields: &[&str], body: bool| {
            let mut r = rule(StatusCompare::Exact, false, fields, body);
            r.volatile = vec![volatile(r"\d+")];
            r
        };
        let json: &[u8] = br#"{"id":42,"s":"x y","q":"say \"hi\"","n":null,"b":true,"f":1.5,"a":[1,"2"],"o":{"k":"v"}}"#;
        let all = [
            "/id", "/s", "/q", "/n", "/b", "/f", "/a", "/o", "/o/k", "/nope", "",
        ];
        let rendered = [
            "42",
            "x y",
            r#"say "hi""#,
            "null",
            "true",
            "1.5",
            r#"[1,"2"]"#,
            r#"{"k":"v"}"#,
            "v",
            MISSING,
            r#"{"a":[1,"2"],"b":true,"f":1.5,"id":42,"n":null,"o":{"k":"v"},"q":"say \"hi\"","s":"x y"}"#,
        ];
        let got = observe(&r(&all, false), Some(json));
        let want: Vec<(String, String)> = all
            .iter()
            .zip(rendered)
            .map(|(p, v)| ((*p).to_owned(), v.to_owned()))
            .collect();
        assert_eq!(got.fields, want);
        assert_eq!(got.masked_digest, None);

        // Not JSON: every pointer is <missing>.
        let got = observe(&r(&["/id", "/x"], false), Some(b"<html>"));
        assert_eq!(
            got.fields,
            [
                ("/id".into(), MISSING.into()),
                ("/x".into(), MISSING.into())
            ]
        );

        // Too large to hold: nothing recorded, whatever the rule asks.
        assert_eq!(observe(&r(&["/id"], true), None), Observed::default());

        // Nothing asked: nothing recorded.
        assert_eq!(observe(&r(&[], false), Some(json)), Observed::default());

        // Masked digest: the masked text's blake3; without volatile patterns, the body's.
        let got = observe(&r(&[], true), Some(b"id 42 at 7"));
        let masked = format!("id {MASK} at {MASK}");
        assert_eq!(
            got.masked_digest,
            Some(blake3::hash(masked.as_bytes()).into())
        );
        let mut plain = r(&[], true);
        plain.volatile.clear();
        let got = observe(&plain, Some(b"id 42"));
        assert_eq!(got.masked_digest, Some(blake3::hash(b"id 42").into()));
    }

    #[test]
    fn masking_keeps_invalid_utf8_and_masks_around_it() {
        let mut r = rule(StatusCompare::Exact, false, &[], true);
        r.volatile = vec![volatile(r"\d+")];
        let a = observe(&r, Some(b"t=1\xff\xfe t=22"));
        let b = observe(&r, Some(b"t=333\xff\xfe t=4"));
        let c = observe(&r, Some(b"t=1\xff\xfd t=22"));
        assert_eq!(a.masked_digest, b.masked_digest);
        assert_ne!(
            a.masked_digest, c.masked_digest,
            "invalid bytes are hashed as they are"
        );
        let want = [
            b"t=".as_slice(),
            MASK.as_bytes(),
            b"\xff\xfe t=",
            MASK.as_bytes(),
        ]
        .concat();
        assert_eq!(a.masked_digest, Some(blake3::hash(&want).into()));
    }

    #[test]
    fn normalise_location_table() {
        let cases = [
            ("https://a.example:8080/x?y", "/x?y"),
            ("http://a.example/x", "/x"),
            ("HTTPS://A.EXAMPLE/X", "/X"),
            ("https://user:pw@a.example/x#f", "/x#f"),
            ("https://a.example", "/"),
            ("https://a.example?y=1", "/?y=1"),
            ("https://a.example#top", "/#top"),
            ("//host/x", "/x"),
            ("//host", "/"),
            ("/x", "/x"),
            ("/x?next=http://b/y", "/x?next=http://b/y"),
            ("/", "/"),
            ("x", "x"),
            ("../x", "../x"),
            ("?page=2", "?page=2"),
            ("", ""),
            ("mailto:a@b.example", "mailto:a@b.example"),
            ("urn:isbn:1", "urn:isbn:1"),
            ("1http://a/x", "1http://a/x"),
            ("a:b//c", "a:b//c"),
        ];
        for (location, want) in cases {
            assert_eq!(normalise_location(location), want, "{location}");
        }
    }

    #[test]
    fn divergence_lines_and_codes() {
        let long = "x".repeat(SHOWN_CHARS + 5);
        let cases = [
            (
                Divergence::Status {
                    writer: 201,
                    mirror: 500,
                },
                "status_mismatch",
                "status_mismatch writer=201 mirror=500".to_owned(),
            ),
            (
                Divergence::Location {
                    writer: Some("/article/3".into()),
                    mirror: None,
                },
                "location_mismatch",
                "location_mismatch writer=/article/3 mirror=<none>".to_owned(),
            ),
            (
                Divergence::Field {
                    pointer: "/title".into(),
                    writer: "a\nb".into(),
                    mirror: String::new(),
                },
                "field_mismatch",
                r#"field_mismatch pointer=/title writer="a\nb" mirror="""#.to_owned(),
            ),
            (
                Divergence::Field {
                    pointer: "/q".into(),
                    writer: "a=\"b\"".into(),
                    mirror: long.clone(),
                },
                "field_mismatch",
                format!(
                    r#"field_mismatch pointer=/q writer="a=\"b\"" mirror={}…"#,
                    &long[..SHOWN_CHARS]
                ),
            ),
            (
                Divergence::Body {
                    writer: "0123abcd".into(),
                    mirror: "unknown".into(),
                },
                "body_mismatch",
                "body_mismatch writer=0123abcd mirror=unknown".to_owned(),
            ),
        ];
        for (divergence, code, line) in cases {
            assert_eq!(divergence.code(), code);
            assert_eq!(divergence.to_string(), line);
            assert!(!divergence.to_string().contains('\n'));
        }
    }
}

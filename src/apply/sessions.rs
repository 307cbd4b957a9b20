//! The mirror's cookie map: which of the mirror CMS's cookie values stands for which of the
//! writer CMS's.
//!
//! Replays carry the original `Cookie` header, and PHP's default sessions adopt the id they are
//! sent, so a session that logged in on the writer is logged in on a mirror too. But PHP
//! regenerates the session id at login: the writer's CMS and the mirror's CMS then each
//! `Set-Cookie` a different value for the same name in answer to the same request, and the
//! client goes on sending the writer's. [`new_mappings`] finds those pairs after a replay;
//! [`rewrite_cookie_header`] puts the mirror's value into later replays.
//!
//! This module owns parsing `Set-Cookie` and `Cookie` values for that purpose and nothing else.
//! It is pure: it must not store the map (keeping it is the rest of `apply`'s job), read
//! the clock, or touch any header other than the one it is given. It never changes a byte of a
//! `Cookie` header it has no mapping for.

use std::borrow::Cow;

/// (name, value) of each Set-Cookie header value (first pair only; attributes ignored; malformed
/// ones skipped).
///
/// Names and values are trimmed of surrounding spaces and tabs; a value keeps its quotes
/// (`a="x"` gives `"x"`), since that is what the client echoes back. Malformed: no `=` in the
/// first pair, an empty name, a name with characters other than visible ASCII or with
/// `;`, `=`, `,` or `"`, or a value with control characters.
pub fn set_cookie_pairs(set_cookies: &[String]) -> Vec<(String, String)> {
    set_cookies
        .iter()
        .filter_map(|header| parse_set_cookie(header))
        .map(|c| (c.name.to_owned(), c.value.to_owned()))
        .collect()
}

/// New mappings from one replay: for each cookie name both sides set, with different values,
/// (name, writer_value, mirror_value). A cookie deleted on one side (empty value or
/// Max-Age=0/expired) is not mapped.
///
/// When one response sets the same name more than once (PHP's `session_regenerate_id` after the
/// session cookie was already sent), the last one counts, as in a browser. Mappings come in the
/// order the writer's response first set each name.
///
/// Deleted means: an empty value (`""` included); or `Max-Age` of zero or less (the last
/// `Max-Age` wins, and it overrides `Expires`, RFC 6265 §5.3); or, without `Max-Age`, an
/// `Expires` date before the year 2000. That last test stands in for "in the past": this is a
/// pure function, and a mirror catching up replays hours after the writer answered, so neither
/// clock would be right. Every framework deletes with a date in 1970 (PHP also sends `Max-Age=0`);
/// an `Expires` in the recent past without `Max-Age` is not recognised as a deletion.
pub fn new_mappings(writer_set: &[String], mirror_set: &[String]) -> Vec<(String, String, String)> {
    let writer = effective(writer_set);
    let mirror = effective(mirror_set);
    writer
        .iter()
        .filter_map(|w| {
            let m = mirror.iter().find(|m| m.name == w.name)?;
            let differ = !w.deleted && !m.deleted && w.value != m.value;
            differ.then(|| (w.name.to_owned(), w.value.to_owned(), m.value.to_owned()))
        })
        .collect()
}

/// Rewrites a Cookie request header value ("a=1; PHPSESSID=w123"), replacing each value for
/// which `lookup(name, value)` returns Some(mirror_value); keeps order, spacing normalised to
/// "; ", and never changes anything else (bytes that are not valid cookie pairs are kept
/// verbatim).
///
/// When nothing is replaced the input comes back byte for byte, spacing included. When something
/// is, pieces are trimmed of spaces and tabs and joined with `"; "`, and empty pieces (`;;`)
/// dropped. A replacement that is not a plain cookie value (holds `;`, `,`, whitespace or control
/// characters) is refused and the pair kept, so a mapping can never inject another cookie.
pub fn rewrite_cookie_header(
    cookie: &[u8],
    lookup: impl Fn(&str, &str) -> Option<String>,
) -> Vec<u8> {
    let mut pieces: Vec<Cow<'_, [u8]>> = Vec::new();
    let mut changed = false;
    for piece in cookie.split(|&b| b == b';').map(trim_ows) {
        if piece.is_empty() {
            continue;
        }
        let replaced = cookie_pair(piece).and_then(|(name, value)| {
            let new = lookup(name, value).filter(|new| new != value && is_plain_value(new))?;
            Some(format!("{name}={new}").into_bytes())
        });
        match replaced {
            Some(bytes) => {
                changed = true;
                pieces.push(Cow::Owned(bytes));
            }
            None => pieces.push(Cow::Borrowed(piece)),
        }
    }
    if !changed {
        return cookie.to_vec();
    }
    pieces.join(&b"; "[..])
}

// === parsing ===

/// The first pair of a `Set-Cookie` value and whether it deletes the cookie.
struct SetCookie<'a> {
    name: &'a str,
    value: &'a str,
    deleted: bool,
}

/// The cookies a response leaves set, one per name: the last `Set-Cookie` for a name wins, in
/// the position of the first.
fn effective(set_cookies: &[String]) -> Vec<SetCookie<'_>> {
    let mut cookies: Vec<SetCookie<'_>> = Vec::new();
    for cookie in set_cookies.iter().filter_map(|h| parse_set_cookie(h)) {
        match cookies.iter_mut().find(|c| c.name == cookie.name) {
            Some(earlier) => *earlier = cookie,
            None => cookies.push(cookie),
        }
    }
    cookies
}

fn parse_set_cookie(header: &str) -> Option<SetCookie<'_>> {
    let mut parts = header.split(';');
    let (name, value) = parts.next()?.split_once('=')?;
    let (name, value) = (name.trim_matches(is_ows), value.trim_matches(is_ows));
    if !is_name(name) || value.chars().any(|c| c.is_control()) {
        return None;
    }
    let mut max_age_expired = None;
    let mut expires_expired = None;
    for attribute in parts {
        let (key, val) = attribute.split_once('=').unwrap_or((attribute, ""));
        let (key, val) = (key.trim_matches(is_ows), val.trim_matches(is_ows));
        if key.eq_ignore_ascii_case("max-age") {
            if let Some(expired) = max_age_expired_now(val) {
                max_age_expired = Some(expired);
            }
        } else if key.eq_ignore_ascii_case("expires") {
            if let Some(year) = expires_year(val) {
                expires_expired = Some(year < 2000);
            }
        }
    }
    let expired = max_age_expired.or(expires_expired).unwrap_or(false);
    Some(SetCookie {
        name,
        value,
        deleted: value.is_empty() || value == "\"\"" || expired,
    })
}

/// Whether a `Max-Age` value expires the cookie at once (`0` or negative); None when it is not
/// a valid `Max-Age` and must be ignored (RFC 6265 §5.2.2). Parsed by hand: any length.
fn max_age_expired_now(value: &str) -> Option<bool> {
    let (negative, digits) = match value.strip_prefix('-') {
        Some(digits) => (true, digits),
        None => (false, value),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(negative || digits.bytes().all(|b| b == b'0'))
}

/// The year of an `Expires` date, found as RFC 6265 §5.1.1 does: tokens split on delimiters;
/// the first numeric token of one or two digits is the day, the next of two to four digits the
/// year; two-digit years 70–99 are 19xx and 00–69 are 20xx. Time tokens (with `:`) are skipped.
fn expires_year(value: &str) -> Option<u32> {
    let delimiter = |c: char| !(c.is_ascii_alphanumeric() || c == ':');
    let mut day_found = false;
    for token in value.split(delimiter).filter(|t| !t.is_empty()) {
        if !token.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if !day_found && token.len() <= 2 {
            day_found = true;
        } else if (2..=4).contains(&token.len()) {
            let year: u32 = token.parse().ok()?;
            return Some(match (token.len(), year) {
                (2, 70..=99) => 1900 + year,
                (2, _) => 2000 + year,
                _ => year,
            });
        }
    }
    None
}

/// `name=value` in a `Cookie` header piece (already trimmed), if it is one.
fn cookie_pair(piece: &[u8]) -> Option<(&str, &str)> {
    let at = piece.iter().position(|&b| b == b'=')?;
    let name = std::str::from_utf8(trim_ows(&piece[..at])).ok()?;
    let value = std::str::from_utf8(trim_ows(&piece[at + 1..])).ok()?;
    is_name(name).then_some((name, value))
}

/// A cookie name we handle: visible ASCII without the characters that break a header apart.
fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b';' | b'=' | b',' | b'"'))
}

/// A value safe to write into a `Cookie` header as one pair.
fn is_plain_value(value: &str) -> bool {
    value
        .chars()
        .all(|c| !c.is_control() && !c.is_whitespace() && c != ';' && c != ',')
}

fn is_ows(c: char) -> bool {
    c == ' ' || c == '\t'
}

fn trim_ows(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|&b| !is_ows(b.into()))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|&b| !is_ows(b.into()))
        .map_or(start, |at| at + 1);
    &bytes[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| (*v).to_owned()).collect()
    }

    #[test]
    fn set_cookie_pairs_table() {
        type Case = (
            &'static [&'static str],
            &'static [(&'static str, &'static str)],
        );
        let cases: &[Case] = &[
            (&[], &[]),
            (
                &["PHPSESSID=abc123; path=/; HttpOnly"],
                &[("PHPSESSID", "abc123")],
            ),
            (&["a=1", "b=2; Secure"], &[("a", "1"), ("b", "2")]),
            (&[" c = 3 ;Path=/"], &[("c", "3")]),
            (&["q=\"x\"; Path=/"], &[("q", "\"x\"")]),
            (&["d=e=f; Max-Age=10"], &[("d", "e=f")]),
            (&["gone=; Max-Age=0"], &[("gone", "")]),
            (&["cart[1]=2"], &[("cart[1]", "2")]),
            (&["no-equals-sign; Path=/"], &[]),
            (&["=value"], &[]),
            (&[""], &[]),
            (&["na me=1"], &[]),
            (&["a,b=1"], &[]),
            (&["x=1\u{7}"], &[]),
            (&["ok=1", "bad", "ok=2"], &[("ok", "1"), ("ok", "2")]),
        ];
        for (headers, want) in cases {
            let want: Vec<(String, String)> = want
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect();
            assert_eq!(set_cookie_pairs(&strings(headers)), want, "{headers:?}");
        }
    }

    #[test]
    fn new_mappings_table() {
        const PHP_DELETE: &str =
            "PHPSESSID=deleted; expires=Thu, 01 Jan 1970 00:00:01 GMT; Max-Age=0; path=/";
        type Mapping = (&'static str, &'static str, &'static str);
        type Case = (
            &'static str,
            &'static [&'static str],
            &'static [&'static str],
            &'static [Mapping],
        );
        let cases: &[Case] = &[
            (
                "session id regenerated at login",
                &["PHPSESSID=w1; path=/; HttpOnly"],
                &["PHPSESSID=m1; path=/; HttpOnly"],
                &[("PHPSESSID", "w1", "m1")],
            ),
            ("same value", &["a=1"], &["a=1; Path=/x"], &[]),
            ("only the writer sets it", &["a=1"], &[], &[]),
            ("only the mirror sets it", &[], &["a=1"], &[]),
            ("neither sets anything", &[], &[], &[]),
            (
                "PHP deletion on the writer",
                &[PHP_DELETE],
                &["PHPSESSID=m1"],
                &[],
            ),
            (
                "PHP deletion on the mirror",
                &["PHPSESSID=w1"],
                &[PHP_DELETE],
                &[],
            ),
            ("empty value", &["a="], &["a=1"], &[]),
            ("empty quoted value", &["a=\"\""], &["a=1"], &[]),
            ("Max-Age=0", &["a=1; Max-Age=0"], &["a=2"], &[]),
            ("negative Max-Age", &["a=1"], &["a=2; max-age=-1"], &[]),
            (
                "Max-Age with many zeros",
                &["a=1; Max-Age=000"],
                &["a=2"],
                &[],
            ),
            (
                "huge negative Max-Age",
                &["a=1; Max-Age=-99999999999999999999999"],
                &["a=2"],
                &[],
            ),
            (
                "expired Expires without Max-Age",
                &["a=1; Expires=Thu, 01 Jan 1970 00:00:00 GMT"],
                &["a=2"],
                &[],
            ),
            (
                "expired Expires, Netscape form",
                &["a=1; expires=Thu, 01-Jan-1970 00:00:10 GMT"],
                &["a=2"],
                &[],
            ),
            (
                "expired Expires, two-digit year",
                &["a=1; expires=Thursday, 01-Jan-70 00:00:00 GMT"],
                &["a=2"],
                &[],
            ),
            (
                "expired Expires, asctime form",
                &["a=1; expires=Thu Jan  1 00:00:00 1970"],
                &["a=2"],
                &[],
            ),
            (
                "future Expires",
                &["a=1; Expires=Wed, 01 Jan 2031 00:00:00 GMT"],
                &["a=2; Expires=Wed, 01-Jan-31 00:00:00 GMT"],
                &[("a", "1", "2")],
            ),
            (
                "positive Max-Age overrides an old Expires",
                &["a=1; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=3600"],
                &["a=2"],
                &[("a", "1", "2")],
            ),
            (
                "the last Max-Age wins",
                &["a=1; Max-Age=0; Max-Age=60"],
                &["a=2"],
                &[("a", "1", "2")],
            ),
            (
                "an invalid Max-Age is ignored",
                &["a=1; Max-Age=soon"],
                &["a=2; Max-Age="],
                &[("a", "1", "2")],
            ),
            (
                "set twice in one response: the last one counts",
                &["PHPSESSID=old; path=/", "PHPSESSID=w2; path=/"],
                &["PHPSESSID=old; path=/", "PHPSESSID=m2; path=/"],
                &[("PHPSESSID", "w2", "m2")],
            ),
            (
                "set, then deleted, in one response",
                &["a=1", "a=; Max-Age=0"],
                &["a=2"],
                &[],
            ),
            (
                "several cookies, in the writer's order",
                &["a=1", "b=2", "c=3"],
                &["c=30", "a=10", "b=2"],
                &[("a", "1", "10"), ("c", "3", "30")],
            ),
            (
                "quoted values keep their quotes",
                &["t=\"w\"; Path=/"],
                &["t=\"m\"; Path=/"],
                &[("t", "\"w\"", "\"m\"")],
            ),
            (
                "malformed ones are skipped",
                &["garbage", "a=1"],
                &["a=2", "=x"],
                &[("a", "1", "2")],
            ),
        ];
        for (name, writer, mirror, want) in cases {
            let want: Vec<(String, String, String)> = want
                .iter()
                .map(|(n, w, m)| ((*n).to_owned(), (*w).to_owned(), (*m).to_owned()))
                .collect();
            assert_eq!(
                new_mappings(&strings(writer), &strings(mirror)),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn rewrite_cookie_header_table() {
        let map = [
            ("PHPSESSID", "w123", "m456"),
            ("t", "\"w\"", "\"m\""),
            ("same", "v", "v"),
            ("evil", "w", "m; admin=1"),
            ("crlf", "w", "m\r\nX-Admin: 1"),
        ];
        let lookup = |name: &str, value: &str| {
            map.iter()
                .find(|(n, w, _)| *n == name && *w == value)
                .map(|(_, _, m)| (*m).to_owned())
        };
        let cases: &[(&[u8], &[u8])] = &[
            (b"a=1; PHPSESSID=w123", b"a=1; PHPSESSID=m456"),
            (b"PHPSESSID=w123;a=1", b"PHPSESSID=m456; a=1"),
            (b"PHPSESSID=w123", b"PHPSESSID=m456"),
            (
                b"a=1;;  PHPSESSID=w123 ;\tjunk ; =x;",
                b"a=1; PHPSESSID=m456; junk; =x",
            ),
            (b"x=\xff\xfe; PHPSESSID=w123", b"x=\xff\xfe; PHPSESSID=m456"),
            (b"t=\"w\"; u=\"w\"", b"t=\"m\"; u=\"w\""),
            (
                b"PHPSESSID=w123; PHPSESSID=w123",
                b"PHPSESSID=m456; PHPSESSID=m456",
            ),
            (b"PHPSESSID = w123", b"PHPSESSID=m456"),
            // Nothing mapped: the very same bytes, odd spacing and all.
            (b"", b""),
            (b"a=1;  b=2;", b"a=1;  b=2;"),
            (b"PHPSESSID=other", b"PHPSESSID=other"),
            (b"other=w123", b"other=w123"),
            (b" same=v ;x", b" same=v ;x"),
            (b"junk;;\xff", b"junk;;\xff"),
            (b"evil=w;  a=1", b"evil=w;  a=1"),
            (b"crlf=w", b"crlf=w"),
        ];
        for (header, want) in cases {
            let got = rewrite_cookie_header(header, lookup);
            assert_eq!(
                got,
                *want,
                "{:?} → {:?}",
                String::from_utf8_lossy(header),
                String::from_utf8_lossy(&got)
            );
        }
    }

    #[test]
    fn a_mapping_found_after_login_rewrites_the_next_replay() {
        let writer = strings(&["PHPSESSID=w123; path=/; HttpOnly"]);
        let mirror = strings(&["PHPSESSID=m456; path=/; HttpOnly"]);
        let map = new_mappings(&writer, &mirror);
        let lookup = |name: &str, value: &str| {
            map.iter()
                .find(|(n, w, _)| n == name && w == value)
                .map(|(_, _, m)| m.clone())
        };
        let got = rewrite_cookie_header(b"theme=dark; PHPSESSID=w123", lookup);
        assert_eq!(got, b"theme=dark; PHPSESSID=m456");
    }
}

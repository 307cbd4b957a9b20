//! `PathPattern`: the `path` of a `[[capture.rule]]`, and how it matches a request path.

use std::fmt;

/// A request-path pattern: `*` matches any run of characters, `/` included; every other
/// character is literal; the pattern must match the whole path.
///
/// Invariant: starts with `/` and contains no `?`, `#`, whitespace or control characters (a
/// request path has none, so such a pattern could never match). Paths are matched as sent,
/// without percent-decoding, and the query string is not part of the path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathPattern(String);

/// Why a path pattern was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid path pattern \"{pattern}\" ({reason})")]
pub struct PatternError {
    pattern: String,
    reason: &'static str,
}

impl PathPattern {
    /// Checks and wraps `pattern`, e.g. `"/visit*"` or `"/api/*/like"`.
    pub fn new(pattern: &str) -> Result<PathPattern, PatternError> {
        let refuse = |reason| {
            Err(PatternError {
                pattern: pattern.to_owned(),
                reason,
            })
        };
        if !pattern.starts_with('/') {
            return refuse("must start with '/'");
        }
        if pattern.contains(['?', '#']) {
            return refuse("matches the path only; the query string is not part of it");
        }
        if pattern.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return refuse("must not contain spaces or control characters");
        }
        Ok(PathPattern(pattern.to_owned()))
    }

    /// Whether `path` (a request's path, without the query) matches the whole pattern.
    pub fn matches(&self, path: &str) -> bool {
        let pattern = self.0.as_str();
        let Some((head, rest)) = pattern.split_once('*') else {
            return path == pattern;
        };
        let (middle, tail) = rest.rsplit_once('*').unwrap_or(("", rest));
        if path.len() < head.len() + tail.len() || !path.starts_with(head) || !path.ends_with(tail)
        {
            return false;
        }
        // Both ends matched, so these offsets are character boundaries and in order.
        let mut unmatched = &path[head.len()..path.len() - tail.len()];
        // With only `*` between the literals, taking each literal's leftmost occurrence is
        // enough: it leaves the most room for the ones after it.
        for literal in middle.split('*').filter(|l| !l.is_empty()) {
            match unmatched.find(literal) {
                Some(at) => unmatched = &unmatched[at + literal.len()..],
                None => return false,
            }
        }
        true
    }

    /// The pattern as written in the config.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_table() {
        let table: &[(&str, &str, bool)] = &[
            ("/visit", "/visit", true),
            ("/visit", "/visit/", false),
            ("/visit", "/visits", false),
            ("/visit", "/", false),
            ("/visit*", "/visit", true),
            ("/visit*", "/visit/42", true),
            ("/visit*", "/visits", true),
            ("/visit*", "/vis", false),
            ("/visit*", "/other/visit", false),
            ("/*", "/", true),
            ("/*", "/a/b", true),
            ("/api/*/like", "/api/7/like", true),
            ("/api/*/like", "/api/7/8/like", true),
            ("/api/*/like", "/api//like", true),
            ("/api/*/like", "/api/like", false),
            ("/api/*/like", "/api/7/like/x", false),
            ("/a*b*c", "/abc", true),
            ("/a*b*c", "/aXbYc", true),
            ("/a*b*c", "/aXcYb", false),
            ("/a*b*c", "/abcbc", true),
            ("/a*a", "/a", false),
            ("/a*a", "/aa", true),
            ("/*.php", "/index.php", true),
            ("/*.php", "/index.phps", false),
            ("/**", "/x", true),
            ("/é*", "/été", true),
            ("/x*é", "/xé", true),
        ];
        for (pattern, path, want) in table {
            let p = PathPattern::new(pattern).unwrap();
            assert_eq!(p.matches(path), *want, "{pattern} vs {path}");
        }
    }

    #[test]
    fn refuses_patterns_that_cannot_match() {
        for pattern in ["", "visit", "*visit", "/a?b=1", "/a#x", "/a b", "/a\tb"] {
            assert!(PathPattern::new(pattern).is_err(), "{pattern:?}");
        }
        let error = PathPattern::new("visit").unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid path pattern \"visit\" (must start with '/')"
        );
    }
}

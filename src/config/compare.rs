//! `[compare]` and `[[compare.rule]]`: what a mirror checks to decide that its CMS answered a
//! replayed request the way the writer's did. Only the settings live here; the comparison
//! itself is `apply`'s.

use std::fmt;

use super::defaults as d;
use super::PathPattern;

/// `[compare]` and its `[[compare.rule]]`s. The default is no section: every key at its
/// default, no rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompareConfig {
    /// The keys of `[compare]` itself, for paths no rule matches. Its path is `/*`.
    pub default: CompareRule,
    /// `[[compare.rule]]`s in file order; the first whose path matches decides. Each key a rule
    /// leaves out has the value of `default`.
    pub rules: Vec<CompareRule>,
}

/// How one response is compared with the writer's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompareRule {
    /// Request paths the rule applies to (`/*` for [`CompareConfig::default`]).
    pub path: PathPattern,
    /// How statuses are compared.
    pub status: StatusCompare,
    /// Compare `Location`, with scheme and host removed (they differ per node).
    pub location: bool,
    /// JSON pointers (RFC 6901) into a JSON response body whose values must be equal, e.g.
    /// `/id`. Each starts with `/`, and every `~` in it is followed by `0` or `1`.
    pub json_fields: Vec<String>,
    /// Compare the blake3 digest of the response body, after masking [`CompareRule::volatile`].
    pub body: bool,
    /// Patterns whose matches are masked in the body before it is digested.
    pub volatile: Vec<Volatile>,
}

/// How two statuses are compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusCompare {
    /// The same status (`"exact"`).
    Exact,
    /// The same class, 1xx to 5xx (`"class"`): 200 and 201 are equal, 200 and 302 are not.
    Class,
}

/// A compiled regular expression from `volatile`. Two are equal, and print, by their pattern
/// text, so configs can be compared and logged.
#[derive(Clone)]
pub struct Volatile(regex::Regex);

// === impl CompareConfig ===

impl CompareConfig {
    /// The rule for a request with `path` (without the query): the first `[[compare.rule]]`
    /// whose path matches, else [`CompareConfig::default`].
    pub fn rule_for(&self, path: &str) -> &CompareRule {
        (self.rules.iter())
            .find(|rule| rule.path.matches(path))
            .unwrap_or(&self.default)
    }
}

// === impl CompareRule ===

impl Default for CompareRule {
    /// `[compare]` with every key at its default.
    fn default() -> Self {
        CompareRule {
            path: PathPattern::new(d::COMPARE_PATH).expect("\"/*\" is a valid path pattern"),
            status: d::COMPARE_STATUS,
            location: d::COMPARE_LOCATION,
            json_fields: d::COMPARE_JSON_FIELDS
                .iter()
                .map(|f| f.to_string())
                .collect(),
            body: d::COMPARE_BODY,
            volatile: Vec::new(),
        }
    }
}

// === impl StatusCompare ===

impl StatusCompare {
    /// Whether the mirror's status `mirror` counts as equal to the writer's `writer`.
    pub fn equal(self, writer: u16, mirror: u16) -> bool {
        match self {
            StatusCompare::Exact => writer == mirror,
            StatusCompare::Class => writer / 100 == mirror / 100,
        }
    }

    /// As written in the config file: `"exact"` or `"class"`.
    pub fn as_str(self) -> &'static str {
        match self {
            StatusCompare::Exact => "exact",
            StatusCompare::Class => "class",
        }
    }
}

// === impl Volatile ===

impl Volatile {
    /// Compiles `pattern` (the `regex` crate's syntax).
    pub fn new(pattern: &str) -> Result<Volatile, regex::Error> {
        regex::Regex::new(pattern).map(Volatile)
    }

    /// The compiled expression.
    pub fn regex(&self) -> &regex::Regex {
        &self.0
    }

    /// The pattern as written in the config.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl PartialEq for Volatile {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Volatile {}

impl fmt::Debug for Volatile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Volatile").field(&self.as_str()).finish()
    }
}

impl fmt::Display for Volatile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(path: &str, status: StatusCompare) -> CompareRule {
        CompareRule {
            path: PathPattern::new(path).unwrap(),
            status,
            ..CompareRule::default()
        }
    }

    #[test]
    fn first_matching_rule_wins_else_the_default() {
        let config = CompareConfig {
            default: CompareRule::default(),
            rules: vec![
                rule("/api/*", StatusCompare::Class),
                rule("/api/strict", StatusCompare::Exact),
            ],
        };
        assert_eq!(config.rule_for("/api/strict").status, StatusCompare::Class);
        assert_eq!(config.rule_for("/api/x").path.as_str(), "/api/*");
        assert_eq!(config.rule_for("/node/add"), &config.default);
        assert_eq!(config.default.path.as_str(), "/*");
    }

    #[test]
    fn status_classes() {
        assert!(StatusCompare::Exact.equal(201, 201));
        assert!(!StatusCompare::Exact.equal(200, 201));
        assert!(StatusCompare::Class.equal(200, 204));
        assert!(!StatusCompare::Class.equal(200, 302));
        assert!(!StatusCompare::Class.equal(499, 500));
    }

    #[test]
    fn volatiles_compare_and_print_by_pattern() {
        let a = Volatile::new(r"\d{4}-\d{2}-\d{2}").unwrap();
        assert_eq!(a, Volatile::new(r"\d{4}-\d{2}-\d{2}").unwrap());
        assert_ne!(a, Volatile::new(r"\d+").unwrap());
        assert_eq!(format!("{a:?}"), r#"Volatile("\\d{4}-\\d{2}-\\d{2}")"#);
        assert!(a.regex().is_match("on 2024-01-31"));
    }
}

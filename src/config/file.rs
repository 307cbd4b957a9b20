//! `FileConfig`: the raw mirror of `proxy.toml`. Every key as written, with its byte span, checked
//! only for TOML type and for being a known key. Meaning (addresses, durations, sizes, required
//! keys, cross-field rules) is `validate`'s job.
//!
//! Why not `#[derive(Deserialize)] #[serde(deny_unknown_fields)]`: serde stops at the first error,
//! and an operator fixing a config one boot at a time is the failure habit 7 exists to prevent.
//! So the document is parsed once into `toml`'s spanned tree (`DeTable`) and walked by a small
//! [`Reader`] that records every unknown key and every type mismatch, then carries on.

use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::error::Problems;

/// Byte offsets of something in the config text.
pub(super) type Span = Range<usize>;

/// A key or section as found in the file.
#[derive(Debug)]
pub(super) enum Found<T> {
    /// Not in the file: a default applies, or a required key is missing.
    Absent,
    /// Present but of the wrong TOML type; already recorded, so validation stays quiet about it.
    Invalid,
    /// Present and of the right type.
    Present(T),
}

/// One key of a table, as found in the file.
#[derive(Debug)]
pub(super) struct Key<T> {
    /// Dotted name for problems, e.g. `public.listen` or `capture.rule[2].path`.
    pub(super) name: String,
    /// Span of the table's header: a missing required key is reported there.
    pub(super) header: Span,
    /// The value, with its span when present.
    pub(super) value: Found<Spanned<T>>,
}

/// A value that may be written as a string or an integer (sizes: `"64MiB"` or `512`; statuses:
/// `"2xx"` or `201`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Scalar {
    Int(i64),
    Str(String),
}

/// The whole file.
#[derive(Debug)]
pub(super) struct FileConfig {
    pub(super) node: Found<FileNode>,
    pub(super) public: Found<FilePublic>,
    pub(super) origin: Found<FileOrigin>,
    pub(super) admin: Found<FileAdmin>,
    pub(super) capture: Found<FileCapture>,
    pub(super) log: Found<FileLog>,
}

/// `[node]`.
#[derive(Debug)]
pub(super) struct FileNode {
    pub(super) name: Key<String>,
    pub(super) role: Key<String>,
    pub(super) data_dir: Key<String>,
}

/// `[public]`.
#[derive(Debug)]
pub(super) struct FilePublic {
    pub(super) listen: Key<String>,
    pub(super) tls_cert: Key<String>,
    pub(super) tls_key: Key<String>,
    pub(super) trusted_proxies: Key<Vec<Spanned<String>>>,
    pub(super) header_read_timeout: Key<String>,
    pub(super) body_read_timeout: Key<String>,
    pub(super) max_header_bytes: Key<Scalar>,
    pub(super) max_headers: Key<i64>,
    pub(super) max_body_bytes: Key<Scalar>,
}

/// `[origin]`.
#[derive(Debug)]
pub(super) struct FileOrigin {
    pub(super) url: Key<String>,
    pub(super) connect_timeout: Key<String>,
    pub(super) response_timeout: Key<String>,
    pub(super) idle_timeout: Key<String>,
    pub(super) max_idle_per_host: Key<i64>,
}

/// `[admin]`.
#[derive(Debug)]
pub(super) struct FileAdmin {
    pub(super) listen: Key<String>,
}

/// `[capture]`, with its `[[capture.rule]]` and `[capture.multipart]` tables.
#[derive(Debug)]
pub(super) struct FileCapture {
    pub(super) success_status: Key<Vec<Spanned<Scalar>>>,
    pub(super) rules: Vec<FileRule>,
    pub(super) inline_max: Key<Scalar>,
    pub(super) max_response_buffer: Key<Scalar>,
    pub(super) multipart: Found<FileMultipart>,
    pub(super) mask_fields: Key<Vec<Spanned<String>>>,
}

/// One `[[capture.rule]]`.
#[derive(Debug)]
pub(super) struct FileRule {
    pub(super) method: Key<String>,
    pub(super) path: Key<String>,
    pub(super) action: Key<String>,
}

/// `[capture.multipart]`.
#[derive(Debug)]
pub(super) struct FileMultipart {
    pub(super) max_parts: Key<i64>,
    pub(super) max_field_bytes: Key<Scalar>,
}

/// `[log]`.
#[derive(Debug)]
pub(super) struct FileLog {
    pub(super) cache_capacity: Key<Scalar>,
}

// What each kind of value should look like, for type-mismatch messages.
const ADDRESS: &str = "a socket address string such as \"127.0.0.1:8080\"";
const DURATION: &str = "a duration string such as \"30s\"";
const SIZE: &str = "a size such as \"64MiB\" or an integer number of bytes";
const COUNT: &str = "an integer";
const STRING: &str = "a string";

impl FileConfig {
    /// Parses `src`. Returns `None` only for TOML syntax errors (all recorded in `problems`);
    /// otherwise every unknown key and type mismatch is recorded and the rest is returned.
    pub(super) fn parse(src: &str, problems: &mut Problems) -> Option<FileConfig> {
        let (document, errors) = DeTable::parse_recoverable(src);
        if !errors.is_empty() {
            // Semantic checks on a half-parsed document would only add noise.
            for error in errors {
                problems.push(error.span().unwrap_or(0..0), "", error.message());
            }
            return None;
        }
        let mut root = Reader::new(document.get_ref(), String::new(), 0..0, "section");
        let file = FileConfig {
            node: root.section("node", FileNode::read),
            public: root.section("public", FilePublic::read),
            origin: root.section("origin", FileOrigin::read),
            admin: root.section("admin", FileAdmin::read),
            capture: root.section("capture", FileCapture::read),
            log: root.section("log", FileLog::read),
        };
        problems.append(root.finish());
        Some(file)
    }
}

impl FileNode {
    fn read(r: &mut Reader<'_, '_>) -> FileNode {
        FileNode {
            name: r.value("name", STRING, string),
            role: r.value("role", "\"writer\" or \"mirror\"", string),
            data_dir: r.value("data_dir", "a directory path string", string),
        }
    }
}

impl FilePublic {
    fn read(r: &mut Reader<'_, '_>) -> FilePublic {
        let networks = (
            "an array of IP addresses or networks",
            "an IP address or network string such as \"10.0.0.0/8\"",
        );
        FilePublic {
            listen: r.value("listen", ADDRESS, string),
            tls_cert: r.value("tls_cert", "a file path string", string),
            tls_key: r.value("tls_key", "a file path string", string),
            trusted_proxies: r.array("trusted_proxies", networks, string),
            header_read_timeout: r.value("header_read_timeout", DURATION, string),
            body_read_timeout: r.value("body_read_timeout", DURATION, string),
            max_header_bytes: r.value("max_header_bytes", SIZE, scalar),
            max_headers: r.value("max_headers", COUNT, integer),
            max_body_bytes: r.value("max_body_bytes", SIZE, scalar),
        }
    }
}

impl FileOrigin {
    fn read(r: &mut Reader<'_, '_>) -> FileOrigin {
        FileOrigin {
            url: r.value(
                "url",
                "a URL string such as \"http://127.0.0.1:8081\"",
                string,
            ),
            connect_timeout: r.value("connect_timeout", DURATION, string),
            response_timeout: r.value("response_timeout", DURATION, string),
            idle_timeout: r.value("idle_timeout", DURATION, string),
            max_idle_per_host: r.value("max_idle_per_host", COUNT, integer),
        }
    }
}

impl FileAdmin {
    fn read(r: &mut Reader<'_, '_>) -> FileAdmin {
        FileAdmin {
            listen: r.value("listen", ADDRESS, string),
        }
    }
}

impl FileCapture {
    fn read(r: &mut Reader<'_, '_>) -> FileCapture {
        let status = (
            "an array of statuses",
            "a status such as \"2xx\", \"201\" or \"200-299\"",
        );
        FileCapture {
            success_status: r.array("success_status", status, scalar),
            rules: r.sections("rule", FileRule::read),
            inline_max: r.value("inline_max", SIZE, scalar),
            max_response_buffer: r.value("max_response_buffer", SIZE, scalar),
            multipart: r.section("multipart", FileMultipart::read),
            mask_fields: r.array("mask_fields", ("an array of strings", STRING), string),
        }
    }
}

impl FileRule {
    fn read(r: &mut Reader<'_, '_>) -> FileRule {
        FileRule {
            method: r.value(
                "method",
                "a method string such as \"POST\" or \"*\"",
                string,
            ),
            path: r.value("path", "a path pattern string such as \"/visit*\"", string),
            action: r.value("action", "\"capture\" or \"pass\"", string),
        }
    }
}

impl FileMultipart {
    fn read(r: &mut Reader<'_, '_>) -> FileMultipart {
        FileMultipart {
            max_parts: r.value("max_parts", COUNT, integer),
            max_field_bytes: r.value("max_field_bytes", SIZE, scalar),
        }
    }
}

impl FileLog {
    fn read(r: &mut Reader<'_, '_>) -> FileLog {
        FileLog {
            cache_capacity: r.value("cache_capacity", SIZE, scalar),
        }
    }
}

// === impl Reader ===

/// Walks one table of the spanned document, remembering which keys were asked for so that
/// [`Reader::finish`] can report the rest as unknown.
struct Reader<'a, 'i> {
    table: &'a DeTable<'i>,
    /// Dotted name of this table in problems (`public`, `capture.rule[2]`); empty at the root.
    prefix: String,
    /// Span of the table's header, where its missing keys are reported.
    header: Span,
    /// What an unknown entry is called here: "key", or "section" at the root.
    noun: &'static str,
    known: Vec<&'static str>,
    problems: Problems,
}

impl<'a, 'i> Reader<'a, 'i> {
    fn new(table: &'a DeTable<'i>, prefix: String, header: Span, noun: &'static str) -> Self {
        Reader {
            table,
            prefix,
            header,
            noun,
            known: Vec::new(),
            problems: Problems::default(),
        }
    }

    fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    fn get(&mut self, name: &'static str) -> Option<&'a Spanned<DeValue<'i>>> {
        self.known.push(name);
        self.table.get(name)
    }

    /// Reads a scalar key with `convert`, recording a mismatch at the value.
    fn value<T>(&mut self, name: &'static str, expected: &str, convert: Convert<T>) -> Key<T> {
        let found = match self.get(name) {
            None => Found::Absent,
            Some(value) => match convert(value.get_ref(), expected) {
                Ok(v) => Found::Present(Spanned::new(value.span(), v)),
                Err(message) => {
                    let key = self.key(name);
                    self.problems.push(value.span(), &key, message);
                    Found::Invalid
                }
            },
        };
        self.found(name, found)
    }

    fn found<T>(&self, name: &str, value: Found<Spanned<T>>) -> Key<T> {
        Key {
            name: self.key(name),
            header: self.header.clone(),
            value,
        }
    }

    /// Reads an array key, converting each element; every bad element is recorded.
    fn array<T>(
        &mut self,
        name: &'static str,
        expected: (&str, &str),
        convert: Convert<T>,
    ) -> Key<Vec<Spanned<T>>> {
        let found = match self.get(name) {
            None => Found::Absent,
            Some(value) => self.items(&self.key(name), value, expected, convert),
        };
        self.found(name, found)
    }

    /// Converts each element of an array; every bad element is recorded.
    fn items<T>(
        &mut self,
        key: &str,
        value: &Spanned<DeValue<'_>>,
        (expected_array, expected): (&str, &str),
        convert: Convert<T>,
    ) -> Found<Spanned<Vec<Spanned<T>>>> {
        let DeValue::Array(items) = value.get_ref() else {
            let message = mismatch(expected_array, value.get_ref());
            self.problems.push(value.span(), key, message);
            return Found::Invalid;
        };
        let mut out = Vec::with_capacity(items.len());
        for item in items.iter() {
            match convert(item.get_ref(), expected) {
                Ok(v) => out.push(Spanned::new(item.span(), v)),
                Err(message) => self.problems.push(item.span(), key, message),
            }
        }
        if out.len() == items.len() {
            Found::Present(Spanned::new(value.span(), out))
        } else {
            Found::Invalid
        }
    }

    /// Reads a sub-table (`[capture.multipart]`, or an inline `{ … }`) with `read`.
    fn section<T>(&mut self, name: &'static str, read: Read<T>) -> Found<T> {
        let Some(value) = self.get(name) else {
            return Found::Absent;
        };
        let key = self.key(name);
        match value.get_ref() {
            DeValue::Table(table) => Found::Present(self.nested(table, key, value.span(), read)),
            other => {
                let expected = format!("a table ([{key}])");
                self.problems
                    .push(value.span(), &key, mismatch(&expected, other));
                Found::Invalid
            }
        }
    }

    /// Reads an array of tables (`[[capture.rule]]`), naming them `key[1]`, `key[2]`…
    fn sections<T>(&mut self, name: &'static str, read: Read<T>) -> Vec<T> {
        let Some(value) = self.get(name) else {
            return Vec::new();
        };
        let key = self.key(name);
        let expected = format!("an array of tables ([[{key}]])");
        let DeValue::Array(items) = value.get_ref() else {
            let message = mismatch(&expected, value.get_ref());
            self.problems.push(value.span(), &key, message);
            return Vec::new();
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match item.get_ref() {
                DeValue::Table(table) => {
                    let prefix = format!("{key}[{}]", i + 1);
                    out.push(self.nested(table, prefix, item.span(), read));
                }
                other => self
                    .problems
                    .push(item.span(), &key, mismatch(&expected, other)),
            }
        }
        out
    }

    /// Runs `read` on a child table, then collects the child's problems (unknown keys included).
    fn nested<T>(
        &mut self,
        table: &'a DeTable<'i>,
        prefix: String,
        header: Span,
        read: Read<T>,
    ) -> T {
        let mut child = Reader::new(table, prefix, header, "key");
        let out = read(&mut child);
        self.problems.append(child.finish());
        out
    }

    /// Records every key that was never asked for, and hands back all problems.
    fn finish(mut self) -> Problems {
        for (name, value) in self.table.iter() {
            if self.known.contains(&name.get_ref().as_ref()) {
                continue;
            }
            let key = self.key(name.get_ref());
            let message = if self.prefix.is_empty() && !value.get_ref().is_table() {
                "key outside any section (put it under its section's header, e.g. [public])"
                    .to_owned()
            } else {
                unknown(self.noun, name.get_ref(), &self.known)
            };
            // A `[section]` header comes before its name: point at the header's '['.
            let at = name.span().start.min(value.span().start);
            self.problems.push(at..at, &key, message);
        }
        self.problems
    }
}

/// "unknown key (did you mean `listen`?)", or the list of known keys when nothing is close.
fn unknown(noun: &str, name: &str, known: &[&str]) -> String {
    let closest = known
        .iter()
        .map(|k| (edit_distance(name, k), *k))
        .filter(|(d, _)| *d <= 2 && *d < name.len())
        .min();
    match closest {
        Some((_, k)) => format!("unknown {noun} (did you mean \"{k}\"?)"),
        None => format!("unknown {noun} (expected one of: {})", known.join(", ")),
    }
}

/// Levenshtein distance, for "did you mean" on misspelt keys. Keys are short ASCII.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != *cb);
            cur.push(substitute.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

// === conversions from TOML values ===

/// Reads one table into its raw struct.
type Read<T> = fn(&mut Reader<'_, '_>) -> T;

/// Turns a TOML value into a raw field, or says what was expected instead.
type Convert<T> = fn(&DeValue<'_>, &str) -> Result<T, String>;

fn string(value: &DeValue<'_>, expected: &str) -> Result<String, String> {
    match value {
        DeValue::String(s) => Ok(s.to_string()),
        other => Err(mismatch(expected, other)),
    }
}

fn integer(value: &DeValue<'_>, expected: &str) -> Result<i64, String> {
    match value {
        DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
            .map_err(|_| format!("integer {i} is out of range")),
        other => Err(mismatch(expected, other)),
    }
}

fn scalar(value: &DeValue<'_>, expected: &str) -> Result<Scalar, String> {
    match value {
        DeValue::String(s) => Ok(Scalar::Str(s.to_string())),
        DeValue::Integer(_) => integer(value, expected).map(Scalar::Int),
        other => Err(mismatch(expected, other)),
    }
}

fn mismatch(expected: &str, found: &DeValue<'_>) -> String {
    let found = match found {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    };
    format!("expected {expected}, found {found}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("listen", "listen"), 0);
        assert_eq!(edit_distance("lisen", "listen"), 1);
        assert_eq!(edit_distance("listne", "listen"), 2);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn unknown_suggests_only_close_keys() {
        let known = ["listen", "tls_cert"];
        assert_eq!(
            unknown("key", "lisen", &known),
            "unknown key (did you mean \"listen\"?)"
        );
        assert_eq!(
            unknown("key", "bogus", &known),
            "unknown key (expected one of: listen, tls_cert)"
        );
    }
}

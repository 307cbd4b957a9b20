//! `Reader`: walks one table of `toml`'s spanned document, converting the keys `file` asks for
//! and recording every type mismatch and, at [`Reader::finish`], every key nobody asked for.
//! It knows nothing of proxy.toml's shape; that is `file`'s.

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::{Found, Key, Scalar, Span};
use crate::config::error::Problems;

/// Walks one table of the spanned document, remembering which keys were asked for so that
/// [`Reader::finish`] can report the rest as unknown.
pub(super) struct Reader<'a, 'i> {
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
    pub(super) fn new(
        table: &'a DeTable<'i>,
        prefix: String,
        header: Span,
        noun: &'static str,
    ) -> Self {
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
    pub(super) fn value<T>(
        &mut self,
        name: &'static str,
        expected: &str,
        convert: Convert<T>,
    ) -> Key<T> {
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
    pub(super) fn array<T>(
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
    pub(super) fn section<T>(&mut self, name: &'static str, read: Read<T>) -> Found<T> {
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
    pub(super) fn sections<T>(&mut self, name: &'static str, read: Read<T>) -> Vec<T> {
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
    pub(super) fn finish(mut self) -> Problems {
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
pub(super) type Read<T> = fn(&mut Reader<'_, '_>) -> T;

/// Turns a TOML value into a raw field, or says what was expected instead.
pub(super) type Convert<T> = fn(&DeValue<'_>, &str) -> Result<T, String>;

pub(super) fn string(value: &DeValue<'_>, expected: &str) -> Result<String, String> {
    match value {
        DeValue::String(s) => Ok(s.to_string()),
        other => Err(mismatch(expected, other)),
    }
}

pub(super) fn integer(value: &DeValue<'_>, expected: &str) -> Result<i64, String> {
    match value {
        DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
            .map_err(|_| format!("integer {i} is out of range")),
        other => Err(mismatch(expected, other)),
    }
}

pub(super) fn boolean(value: &DeValue<'_>, expected: &str) -> Result<bool, String> {
    match value {
        DeValue::Boolean(b) => Ok(*b),
        other => Err(mismatch(expected, other)),
    }
}

pub(super) fn scalar(value: &DeValue<'_>, expected: &str) -> Result<Scalar, String> {
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

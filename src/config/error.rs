//! `ConfigError`: every problem found in one config file, each with its line, column and key.
//!
//! The raw and validation layers only record byte spans ([`Problems`]); positions are computed
//! once, from the source text, when the error is built.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// A config file that could not be read, parsed or validated.
///
/// `Display` prints one problem per line, as `FILE:LINE:COLUMN: [section] key: message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the problems were found in, as given to [`super::Config::load`].
    pub path: PathBuf,
    /// Every problem, in the order they appear in the file. Never empty.
    pub problems: Vec<Problem>,
}

/// One problem in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line. 0 only when the file could not be read (no position to give).
    pub line: usize,
    /// 1-based column, counted in characters.
    pub column: usize,
    /// Dotted key, e.g. `public.listen` or `capture.rule[2].path` (rules count from 1); a bare
    /// section name (`node`) for a problem with the whole section; empty for TOML syntax errors
    /// and I/O errors.
    pub key: String,
    /// What is wrong, and where helpful what was expected.
    pub message: String,
}

impl ConfigError {
    /// An error for a file that could not be read at all.
    pub(super) fn io(path: &Path, error: &std::io::Error) -> ConfigError {
        let problem = Problem {
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot read config file: {error}"),
        };
        ConfigError {
            path: path.to_path_buf(),
            problems: vec![problem],
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:", self.path.display())?;
            if problem.line > 0 {
                write!(f, "{}:{}:", problem.line, problem.column)?;
            }
            write!(f, " {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl fmt::Display for Problem {
    /// `[section] key: message`, `[section]: message` or just `message`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            return f.write_str(&self.message);
        }
        match self.key.rsplit_once('.') {
            Some((section, key)) => write!(f, "[{section}] {key}: {}", self.message),
            None => write!(f, "[{}]: {}", self.key, self.message),
        }
    }
}

// === impl Problems ===

/// Problems collected while reading and validating, positioned by byte span.
#[derive(Debug, Default)]
pub(super) struct Problems {
    list: Vec<(Range<usize>, String, String)>,
}

impl Problems {
    /// Records a problem at `span` (byte offsets into the source text).
    pub(super) fn push(&mut self, span: Range<usize>, key: &str, message: impl Into<String>) {
        self.list.push((span, key.to_owned(), message.into()));
    }

    /// Moves every problem of `other` into `self`.
    pub(super) fn append(&mut self, other: Problems) {
        self.list.extend(other.list);
    }

    /// Whether nothing was recorded.
    pub(super) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Builds the error, with positions computed from `src`, sorted by position.
    pub(super) fn into_error(self, src: &str, path: &Path) -> ConfigError {
        let mut problems: Vec<Problem> = self
            .list
            .into_iter()
            .map(|(span, key, message)| {
                let (line, column) = position(src, span.start);
                Problem {
                    line,
                    column,
                    key,
                    message,
                }
            })
            .collect();
        // Stable: problems at one position keep the order they were found in.
        problems.sort_by_key(|p| (p.line, p.column));
        ConfigError {
            path: path.to_path_buf(),
            problems,
        }
    }
}

/// 1-based line and column (in characters, like the `toml` crate's errors) of byte `offset`.
fn position(src: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(src.len());
    // A span never starts inside a character, but be safe rather than slice mid-character.
    while !src.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &src[..offset];
    let line_start = before.rfind('\n').map_or(0, |nl| nl + 1);
    let line = before.matches('\n').count() + 1;
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_lines_and_characters() {
        let src = "a = 1\nbé = \"x\"\n";
        assert_eq!(position(src, 0), (1, 1));
        assert_eq!(position(src, 4), (1, 5));
        assert_eq!(position(src, 6), (2, 1));
        // 'é' is two bytes but one column: the space after it is column 3.
        assert_eq!(position(src, 9), (2, 3));
        assert_eq!(position(src, 1000), (3, 1));
    }

    #[test]
    fn display_names_file_position_and_key() {
        let error = ConfigError {
            path: PathBuf::from("proxy.toml"),
            problems: vec![
                Problem {
                    line: 12,
                    column: 5,
                    key: "public.listen".into(),
                    message: "bad".into(),
                },
                Problem {
                    line: 1,
                    column: 1,
                    key: "node".into(),
                    message: "missing".into(),
                },
                Problem {
                    line: 3,
                    column: 2,
                    key: String::new(),
                    message: "duplicate key".into(),
                },
            ],
        };
        assert_eq!(
            error.to_string(),
            "proxy.toml:12:5: [public] listen: bad\n\
             proxy.toml:1:1: [node]: missing\n\
             proxy.toml:3:2: duplicate key"
        );
    }

    #[test]
    fn io_errors_name_the_file() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        let error = ConfigError::io(Path::new("/etc/copyist.toml"), &io);
        assert_eq!(
            error.to_string(),
            "/etc/copyist.toml: cannot read config file: gone"
        );
    }
}

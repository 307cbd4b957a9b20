//! `[compare]` and `[[compare.rule]]`: a rule's missing keys take `[compare]`'s values, so a
//! rule states only how its paths differ.

use super::super::error::Problems;
use super::super::file::{FileCompare, FileCompareKeys, FileCompareRule};
use super::super::{CompareConfig, CompareRule, PathPattern, StatusCompare, Volatile};
use super::{optional, optional_list, required, Checked};

pub(super) fn compare(f: FileCompare, p: &mut Problems) -> Option<CompareConfig> {
    let default = keys(f.keys, CompareRule::default(), p);
    // Rules are checked even when [compare] itself is wrong, against the built-in defaults,
    // so that one run reports every problem.
    let base = default.clone().unwrap_or_default();
    let rules: Vec<Option<CompareRule>> =
        (f.rules.into_iter()).map(|r| rule(r, &base, p)).collect();
    Some(CompareConfig {
        default: default?,
        rules: rules.into_iter().collect::<Option<_>>()?,
    })
}

fn rule(f: FileCompareRule, base: &CompareRule, p: &mut Problems) -> Option<CompareRule> {
    let path = required(f.path, p, |s| {
        PathPattern::new(&s).map_err(|e| e.to_string())
    });
    let rule = keys(f.keys, base.clone(), p);
    Some(CompareRule {
        path: path?,
        ..rule?
    })
}

/// The keys of `[compare]` or of one rule; a missing key keeps its value in `base`.
fn keys(f: FileCompareKeys, base: CompareRule, p: &mut Problems) -> Option<CompareRule> {
    let status = optional(f.status, base.status, p, status);
    let location = optional(f.location, base.location, p, Ok);
    let json_fields = optional_list(f.json_fields, base.json_fields, p, json_pointer);
    let body = optional(f.body, base.body, p, Ok);
    let volatile = optional_list(f.volatile, base.volatile, p, volatile);
    Some(CompareRule {
        path: base.path,
        status: status?,
        location: location?,
        json_fields: json_fields?,
        body: body?,
        volatile: volatile?,
    })
}

fn status(text: String) -> Checked<StatusCompare> {
    match text.as_str() {
        "exact" => Ok(StatusCompare::Exact),
        "class" => Ok(StatusCompare::Class),
        _ => Err(format!(
            "invalid status comparison \"{text}\" (expected \"exact\" or \"class\")"
        )),
    }
}

/// An RFC 6901 JSON pointer to one value: starts with `/`, and `~` only escapes (`~0` is `~`,
/// `~1` is `/`). The empty pointer (the whole document) is refused: that is what `body` is for.
fn json_pointer(text: String) -> Checked<String> {
    if !text.starts_with('/') {
        return Err(format!(
            "invalid JSON pointer \"{text}\" (must start with '/', e.g. \"/id\")"
        ));
    }
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Err(format!(
                "invalid JSON pointer \"{text}\" ('~' must be followed by 0 or 1: \"~0\" is '~', \"~1\" is '/')"
            ));
        }
    }
    Ok(text)
}

fn volatile(pattern: String) -> Checked<Volatile> {
    if pattern.is_empty() {
        return Err("an empty pattern masks nothing".to_owned());
    }
    match Volatile::new(&pattern) {
        Ok(volatile) => Ok(volatile),
        Err(regex::Error::Syntax(rendered)) => Err(format!(
            "invalid regex \"{pattern}\": {}",
            syntax_problem(&pattern, &rendered)
        )),
        Err(e) => Err(format!("invalid regex \"{pattern}\": {e}")),
    }
}

/// One line from the `regex` crate's syntax error, which draws the pattern with carets under
/// the fault on several lines:
///
/// ```text
/// regex parse error:
///     (a
///     ^
/// error: unclosed group
/// ```
///
/// becomes `unclosed group (at character 1)`. The crate gives no position in any other form.
/// Should that drawing ever change, the message keeps its text and loses only the position.
fn syntax_problem(pattern: &str, rendered: &str) -> String {
    let lines: Vec<&str> = rendered.lines().collect();
    let what = match lines.last().and_then(|l| l.strip_prefix("error: ")) {
        Some(what) => what,
        None => return lines.join(" "),
    };
    // A one-line pattern is drawn indented by four spaces, with the carets right below it.
    let drawn = format!("    {pattern}");
    let position = match lines.as_slice() {
        [_, line, carets, _] if *line == drawn && carets.trim_start().starts_with('^') => {
            let indent = carets.chars().take_while(|c| *c == ' ').count();
            indent.checked_sub(3)
        }
        _ => None,
    };
    match position {
        Some(at) => format!("{what} (at character {at})"),
        None => what.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_pointers() {
        for ok in ["/id", "/data/0/id", "/a~0b", "/a~1b", "/"] {
            assert_eq!(json_pointer(ok.to_owned()), Ok(ok.to_owned()));
        }
        for bad in ["id", "", "/a~2", "/a~", "#/id"] {
            assert!(json_pointer(bad.to_owned()).is_err(), "{bad}");
        }
    }

    #[test]
    fn regex_errors_name_the_character() {
        let cases = [
            ("(a", "unclosed group (at character 1)"),
            (r"\d{4}-[0-9", "unclosed character class (at character 7)"),
            ("ab)", "unopened group (at character 3)"),
            (r"é\p{Nope}", "Unicode property not found (at character 2)"),
            (
                "x{2,1}",
                "invalid repetition count range, the start must be <= the end (at character 2)",
            ),
        ];
        for (pattern, want) in cases {
            assert_eq!(
                volatile(pattern.to_owned()),
                Err(format!("invalid regex \"{pattern}\": {want}")),
                "{pattern}"
            );
        }
        // A pattern over several lines is drawn differently: the text stays, the position goes.
        assert_eq!(
            volatile("a\n(b".to_owned()),
            Err("invalid regex \"a\n(b\": unclosed group".to_owned())
        );
        assert!(volatile(r"nonce=\w+".to_owned()).is_ok());
    }
}

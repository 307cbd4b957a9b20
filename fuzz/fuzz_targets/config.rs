//! `config`: arbitrary bytes as a `proxy.toml`, through the path `copyist check-config` takes
//! (`Config::load` reads the file as UTF-8, then `Config::from_toml` parses and validates).
//!
//! Never panics. An error lists at least one problem, each at a line and column inside the
//! input, in file order; a success satisfies the invariants `Config` documents.
#![no_main]

use std::collections::HashSet;
use std::path::Path;

use copyist::config::{defaults, Config, ConfigError, Role};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // `Config::load` refuses a file that is not UTF-8 before parsing (an I/O error, no position).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_toml(text, Path::new("/etc/copyist/proxy.toml")) {
        Ok(config) => check_config(&config),
        Err(error) => check_error(text, &error),
    }
});

fn check_error(text: &str, error: &ConfigError) {
    assert!(!error.problems.is_empty(), "an error without a problem");
    // Lines as the positions count them: only '\n' ends a line (a '\r' is a character).
    let lines: Vec<&str> = text.split('\n').collect();
    let mut previous = (0, 0);
    for p in &error.problems {
        assert!(
            p.line >= 1 && p.line <= lines.len(),
            "line {} outside the input's {} lines: {p}",
            p.line,
            lines.len()
        );
        let width = lines[p.line - 1].chars().count();
        assert!(
            p.column >= 1 && p.column <= width + 1,
            "column {} outside line {} ({width} characters): {p}",
            p.column,
            p.line
        );
        assert!(!p.message.is_empty(), "a problem without a message");
        assert!(
            (p.line, p.column) >= previous,
            "problems out of order: {error}"
        );
        previous = (p.line, p.column);
    }
    // What the operator reads: one line per problem, each naming the file and position.
    let shown = error.to_string();
    assert_eq!(shown.lines().count(), error.problems.len(), "{shown}");
    assert!(shown
        .lines()
        .all(|l| l.starts_with("/etc/copyist/proxy.toml:")));
}

fn check_config(c: &Config) {
    assert_eq!(c.writer.is_some(), c.node.role == Role::Mirror);
    if c.node.role == Role::Mirror {
        assert!(c.mirrors.is_empty() && c.replication.is_some());
    }
    if !c.mirrors.is_empty() {
        assert!(c.replication.is_some());
    }
    let mut names = HashSet::new();
    for m in &c.mirrors {
        assert!(names.insert(m.name.as_str()), "mirror {} twice", m.name);
        assert_ne!(m.name, c.node.name);
        assert_https_root(&m.url);
    }
    if let Some(w) = &c.writer {
        assert_https_root(&w.url);
    }
    assert!(copyist::config::check_node_name(&c.node.name).is_ok());
    assert!(c.node.data_dir.is_absolute(), "{:?}", c.node.data_dir);

    let url = &c.origin.url;
    assert_eq!(url.scheme_str(), Some("http"));
    assert!(url.port_u16().is_some(), "{url}");
    assert_eq!(url.path(), "/");
    assert_eq!(url.query(), None);

    assert!(c.public.max_header_bytes >= defaults::MIN_HEADER_BYTES);
    assert!(c.public.max_headers >= 1);
    assert!(c.public.max_body_bytes >= 1);
    assert!(c.health.probe_path.starts_with('/'));
    assert!(!c.capture.success_statuses.is_empty());
    for r in &c.capture.success_statuses {
        assert!(100 <= r.lo && r.lo <= r.hi && r.hi <= 599, "{r}");
    }
    assert!(c.capture.multipart.max_parts >= 1);
    assert!(c.capture.multipart.max_field_bytes >= 1);
    if let Some(r) = &c.replication {
        assert!(r.window >= 1);
    }
}

fn assert_https_root(url: &http::Uri) {
    assert_eq!(url.scheme_str(), Some("https"), "{url}");
    assert!(url.port_u16().is_some(), "{url}");
    assert_eq!(url.path(), "/", "{url}");
}

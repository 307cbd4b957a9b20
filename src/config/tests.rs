//! Tests of `Config::load` / `Config::from_toml` as a whole: the example file, the fixtures in
//! `fixtures/config/`, defaults and multi-problem reports. Value parsers and path patterns are
//! tested next to their code.
#![cfg(test)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

const MINIMAL: &str = r#"
[node]
name = "writer-1"
role = "writer"
data_dir = "./demo/writer"

[public]
listen = "127.0.0.1:8080"

[origin]
url = "http://127.0.0.1:8081"
"#;

/// What [`mirror`] adds to [`MINIMAL`].
const MIRROR_SECTIONS: &str = r#"
[replication]
listen = "127.0.0.1:9444"
ca = "certs/ca.pem"
cert = "certs/mirror-1.pem"
key = "certs/mirror-1.key"

[writer]
name = "writer-1"
url = "https://127.0.0.1:9443"
"#;

/// [`MINIMAL`] as mirror-1 of writer-1, with its required cluster sections.
fn mirror() -> String {
    let node = MINIMAL
        .replace("\"writer\"", "\"mirror\"")
        .replace("\"writer-1\"", "\"mirror-1\"");
    node + MIRROR_SECTIONS
}

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(text, Path::new("proxy.toml"))
}

/// `fixtures/config/*` whose name starts with `prefix` and ends with `.toml`, sorted.
fn fixtures(prefix: &str) -> Vec<PathBuf> {
    let dir = manifest_dir().join("fixtures/config");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            let name = path.file_name().unwrap().to_str().unwrap();
            name.starts_with(prefix) && name.ends_with(".toml")
        })
        .collect();
    found.sort();
    assert!(!found.is_empty(), "no {prefix}*.toml in {}", dir.display());
    found
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn example_file_loads_as_the_demo_writer() {
    let path = manifest_dir().join("proxy.toml.example");
    let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.path, path);
    assert_eq!(config.node.name, "writer-1");
    assert_eq!(config.node.role, Role::Writer);
    assert_eq!(config.node.data_dir, manifest_dir().join("demo/writer"));
    assert_eq!(config.public.listen, addr("127.0.0.1:8080"));
    assert_eq!(config.public.tls, None);
    assert_eq!(config.origin.url, "http://127.0.0.1:8081/");
    assert_eq!(config.admin.listen, addr("127.0.0.1:9901"));
    let visit = Rule {
        method: Some(http::Method::GET),
        path: PathPattern::new("/visit").unwrap(),
        action: RuleAction::Capture,
    };
    assert_eq!(config.capture.rules, vec![visit]);

    // The PEM files are named, not read: they need not exist for the config to load.
    let replication = config.replication.unwrap();
    assert_eq!(replication.listen, addr("127.0.0.1:9443"));
    let certs = manifest_dir().join("demo/certs");
    assert_eq!(replication.ca, certs.join("ca.pem"));
    assert_eq!(replication.cert, certs.join("writer-1.pem"));
    assert_eq!(replication.key, certs.join("writer-1.key"));
    let mirrors: Vec<(&str, String)> = (config.mirrors.iter())
        .map(|m| (m.name.as_str(), m.url.to_string()))
        .collect();
    assert_eq!(
        mirrors,
        [
            ("mirror-1", "https://127.0.0.1:9444/".to_owned()),
            ("mirror-2", "https://127.0.0.1:9445/".to_owned())
        ]
    );
    assert_eq!(config.writer, None);
    assert!(config.compare.rules.is_empty());
}

/// The example sets every optional key to the value its `[default: …]` comment names; those
/// values must be the real defaults, or the documentation lies.
#[test]
fn example_file_states_the_real_defaults() {
    let path = manifest_dir().join("proxy.toml.example");
    let example = Config::load(&path).unwrap();
    let defaults = Config::from_toml(MINIMAL, &path).unwrap();
    assert_eq!(example.public, defaults.public);
    assert_eq!(example.origin, defaults.origin);
    assert_eq!(example.admin, defaults.admin);
    assert_eq!(example.health, defaults.health);
    assert_eq!(example.log, defaults.log);
    let example_capture = CaptureConfig {
        rules: Vec::new(),
        ..example.capture
    };
    assert_eq!(example_capture, defaults.capture);
    assert_eq!(example.compare, defaults.compare);
    let replication = example.replication.unwrap();
    assert_eq!(replication.window, defaults::REPLICATION_WINDOW);
    assert_eq!(replication.retry_max, defaults::RETRY_MAX);
    assert_eq!(replication.request_timeout, defaults::REQUEST_TIMEOUT);
}

#[test]
fn every_valid_fixture_loads() {
    for path in fixtures("valid-") {
        if let Err(e) = Config::load(&path) {
            panic!("{} should load, got:\n{e}", path.display());
        }
    }
}

/// Each `invalid-X.toml` must fail with exactly the lines in `invalid-X.expected`. The file is
/// named by its file name only, so the expected text does not depend on the checkout path.
#[test]
fn every_invalid_fixture_reports_exactly_its_expected_problems() {
    let mut failures = Vec::new();
    for path in fixtures("invalid-") {
        let name = path.file_name().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let expected_path = path.with_extension("expected");
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|e| panic!("{}: {e}", expected_path.display()));
        match Config::from_toml(&text, Path::new(name)) {
            Ok(_) => failures.push(format!("{} loaded without error", path.display())),
            Err(e) if e.to_string() != expected.trim_end() => failures.push(format!(
                "{}:\n--- expected\n{}\n--- got\n{e}",
                path.display(),
                expected.trim_end()
            )),
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn all_problems_in_a_file_are_reported_at_once() {
    let text = r#"
[node]
name = "w"
role = "boss"

[public]
listen = "nowhere"
max_headers = "many"
surprise = 1

[origin]
url = "https://cms"
"#;
    let error = parse(text).unwrap_err();
    let found: Vec<(usize, &str)> = error
        .problems
        .iter()
        .map(|p| (p.line, p.key.as_str()))
        .collect();
    assert_eq!(
        found,
        [
            (2, "node.data_dir"),
            (4, "node.role"),
            (7, "public.listen"),
            (8, "public.max_headers"),
            (9, "public.surprise"),
            (12, "origin.url"),
        ]
    );
    let first = &error.problems[0];
    assert_eq!(
        (first.column, first.message.as_str()),
        (1, "missing required key")
    );
    assert_eq!(error.path, Path::new("proxy.toml"));
}

#[test]
fn missing_optional_sections_get_the_defaults() {
    let config = parse(MINIMAL).unwrap();
    assert_eq!(config.admin, AdminConfig::default());
    assert_eq!(config.health, HealthConfig::default());
    let h = &config.health;
    assert_eq!(h.probe_path, "/");
    assert_eq!(h.probe_interval, Duration::from_secs(2));
    assert_eq!(h.probe_timeout, Duration::from_secs(1));
    assert_eq!(h.maintenance_file, None);
    assert_eq!(h.drain_status, http::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(config.capture, CaptureConfig::default());
    assert_eq!(config.log, LogConfig::default());
    assert_eq!(config.public, PublicConfig::new(addr("127.0.0.1:8080")));
    assert_eq!(config.origin, OriginConfig::new(addr("127.0.0.1:8081")));

    let p = &config.public;
    assert_eq!(p.header_read_timeout, Duration::from_secs(10));
    assert_eq!(p.body_read_timeout, Duration::from_secs(30));
    assert_eq!(p.max_header_bytes, 64 * 1024);
    assert_eq!(p.max_headers, 100);
    assert_eq!(p.max_body_bytes, 1 << 30);
    assert!(p.trusted_proxies.is_empty());
    let o = &config.origin;
    assert_eq!(o.connect_timeout, Duration::from_secs(5));
    assert_eq!(o.response_timeout, Duration::from_secs(60));
    assert_eq!(o.idle_timeout, Duration::from_secs(90));
    assert_eq!(o.max_idle_per_host, 64);
    assert_eq!(config.admin.listen, addr("127.0.0.1:9901"));
    let c = &config.capture;
    assert!(c.is_success(200) && c.is_success(302) && c.is_success(399));
    assert!(!c.is_success(199) && !c.is_success(400) && !c.is_success(503));
    assert!(c.rules.is_empty());
    assert_eq!(c.inline_body_max, 16 * 1024);
    assert_eq!(c.max_response_buffer, 8 << 20);
    assert_eq!(c.multipart.max_parts, 1000);
    assert_eq!(c.multipart.max_field_bytes, 1 << 20);
    assert_eq!(c.mask_fields.len(), 9);
    assert_eq!(config.log.cache_capacity, 64 << 20);
    assert_eq!(config.log.encryption_key_file, None);

    assert_eq!(config.replication, None);
    assert!(config.mirrors.is_empty());
    assert_eq!(config.writer, None);
    assert_eq!(config.compare, CompareConfig::default());
    let d = &config.compare.default;
    assert_eq!(d.path.as_str(), "/*");
    assert_eq!(d.status, StatusCompare::Exact);
    assert!(d.location);
    assert!(d.json_fields.is_empty());
    assert!(!d.body);
    assert!(d.volatile.is_empty());
    assert!(config.compare.rules.is_empty());
}

#[test]
fn replication_keys_get_their_defaults() {
    let config = parse(&mirror()).unwrap();
    let r = config.replication.unwrap();
    assert_eq!(r.listen, addr("127.0.0.1:9444"));
    assert_eq!(r.window, 32);
    assert_eq!(r.retry_max, Duration::from_secs(5));
    assert_eq!(r.request_timeout, Duration::from_secs(60));
    let writer = config.writer.unwrap();
    assert_eq!(writer.name, "writer-1");
    assert_eq!(writer.url, "https://127.0.0.1:9443/");
    assert!(writer.paths.is_empty());
    assert_eq!(writer.affinity, Duration::from_secs(300));
    assert_eq!(writer.affinity_cookie, "copyist_writer");
    assert_eq!(writer.read_your_writes_wait, Duration::from_secs(10));
}

#[test]
fn every_writer_key_is_read() {
    let keys = r#"paths = ["/wp-admin/*", "/login"]
affinity = "0s"
affinity_cookie = "__Host-w"
read_your_writes_wait = "250ms"
"#;
    let config = parse(&format!("{}{keys}", mirror())).unwrap();
    let writer = config.writer.unwrap();
    let paths: Vec<&str> = writer.paths.iter().map(PathPattern::as_str).collect();
    assert_eq!(paths, ["/wp-admin/*", "/login"]);
    assert_eq!(writer.affinity, Duration::ZERO, "\"0s\" turns affinity off");
    assert_eq!(writer.affinity_cookie, "__Host-w");
    assert_eq!(writer.read_your_writes_wait, Duration::from_millis(250));
}

#[test]
fn every_health_key_is_read() {
    let path = fixtures("valid-full").remove(0);
    let config = Config::load(&path).unwrap();
    let h = config.health;
    assert_eq!(h.probe_path, "/healthz?deep=1");
    assert_eq!(h.probe_interval, Duration::from_secs(5));
    assert_eq!(h.probe_timeout, Duration::from_millis(250));
    let dir = path.parent().unwrap();
    assert_eq!(h.maintenance_file, Some(dir.join("maintenance")));
    assert_eq!(h.drain_status, http::StatusCode::NOT_FOUND);
}

#[test]
fn every_log_key_is_read() {
    let path = fixtures("valid-full").remove(0);
    let log = Config::load(&path).unwrap().log;
    assert_eq!(log.cache_capacity, 1 << 30);
    let key = std::path::PathBuf::from("/etc/copyist/log.key");
    assert_eq!(log.encryption_key_file, Some(key));
    // A relative path is relative to the config file, like every other path.
    let text = format!("{MINIMAL}\n[log]\nencryption_key_file = \"keys/log.key\"\n");
    let config = Config::from_toml(&text, &path).unwrap();
    let dir = path.parent().unwrap();
    assert_eq!(
        config.log.encryption_key_file,
        Some(dir.join("keys/log.key"))
    );
    let error = parse(&format!("{MINIMAL}\n[log]\nencryption_key_file = 32\n")).unwrap_err();
    assert_eq!(error.problems[0].key, "log.encryption_key_file", "{error}");
}

/// The probe bypasses capture: a path a rule captures would change the CMS without an entry.
#[test]
fn a_probe_path_that_a_rule_captures_is_refused() {
    let rules = "[[capture.rule]]\nmethod = \"GET\"\npath = \"/visit*\"\naction = \"capture\"\n";
    let text = format!("{MINIMAL}\n[health]\nprobe_path = \"/visit?x=1\"\n\n[capture]\n{rules}");
    let error = parse(&text).unwrap_err();
    assert_eq!(error.problems.len(), 1, "{error}");
    assert_eq!(error.problems[0].key, "health.probe_path");
    assert_eq!(
        error.problems[0].message,
        "GET /visit is captured by [[capture.rule]] \"/visit*\": probing it would change the CMS without a log entry"
    );
    let text = format!("{MINIMAL}\n[health]\nprobe_path = \"/healthz\"\n\n[capture]\n{rules}");
    assert_eq!(parse(&text).unwrap().health.probe_path, "/healthz");
}

#[test]
fn every_replication_key_is_read() {
    let config = Config::load(&fixtures("valid-full").remove(0)).unwrap();
    let r = config.replication.unwrap();
    assert_eq!(r.listen, addr("[::]:9443"));
    assert_eq!(r.window, 4);
    assert_eq!(r.retry_max, Duration::from_secs(30));
    assert_eq!(r.request_timeout, Duration::from_secs(120));
    assert_eq!(r.key, Path::new("/etc/copyist/writer.key"));
    let mirrors: Vec<(&str, String)> = (config.mirrors.iter())
        .map(|m| (m.name.as_str(), m.url.to_string()))
        .collect();
    assert_eq!(
        mirrors,
        [
            ("mirror-1", "https://10.0.0.2:9444/".to_owned()),
            (
                "mirror.eu-2_b",
                "https://mirror.eu-2.internal:443/".to_owned()
            )
        ]
    );
}

/// A `[[compare.rule]]` states only what differs: every key it leaves out is `[compare]`'s.
#[test]
fn compare_rules_inherit_the_compare_section() {
    let config = Config::load(&fixtures("valid-full").remove(0)).unwrap();
    let c = &config.compare;
    let volatile = vec![
        Volatile::new(r"\d{4}-\d{2}-\d{2}").unwrap(),
        Volatile::new(r"nonce=\w+").unwrap(),
    ];
    let section = CompareRule {
        path: PathPattern::new("/*").unwrap(),
        status: StatusCompare::Class,
        location: false,
        json_fields: vec!["/id".into(), "/data/0/slug~1path".into()],
        body: true,
        volatile,
    };
    assert_eq!(c.default, section);
    let api = CompareRule {
        path: PathPattern::new("/api/*").unwrap(),
        status: StatusCompare::Exact,
        location: true,
        json_fields: Vec::new(),
        body: false,
        volatile: Vec::new(),
    };
    let upload = CompareRule {
        path: PathPattern::new("/upload*").unwrap(),
        ..section.clone()
    };
    assert_eq!(c.rules, [api.clone(), upload.clone()]);
    assert_eq!(c.rule_for("/api/items"), &api);
    assert_eq!(c.rule_for("/upload/1"), &upload);
    assert_eq!(c.rule_for("/node/add"), &section);

    // Without [compare], rules inherit the built-in defaults.
    let config = Config::load(&fixtures("valid-mirror").remove(0)).unwrap();
    let search = config.compare.rule_for("/search/reindex");
    assert_eq!(search.status, StatusCompare::Class);
    assert_eq!(search.json_fields, ["/id"], "from [compare]");
    assert!(search.location && !search.body);
    let article = config.compare.rule_for("/article/7");
    assert!(article.body);
    assert!(article.volatile[0].regex().is_match("rendered at 12:00:59"));
}

#[test]
fn relative_paths_resolve_against_the_config_directory() {
    let text = MINIMAL.replace(
        "listen = \"127.0.0.1:8080\"",
        "listen = \"127.0.0.1:8080\"\ntls_cert = \"certs/a.pem\"\ntls_key = \"/abs/a.key\"",
    );
    let config = Config::from_toml(&text, Path::new("/etc/copyist/proxy.toml")).unwrap();
    assert_eq!(config.node.data_dir, Path::new("/etc/copyist/demo/writer"));
    let tls = config.public.tls.unwrap();
    assert_eq!(tls.cert, Path::new("/etc/copyist/certs/a.pem"));
    assert_eq!(tls.key, Path::new("/abs/a.key"));

    let text = mirror().replace("certs/mirror-1.key", "/abs/mirror-1.key");
    let config = Config::from_toml(&text, Path::new("/etc/copyist/proxy.toml")).unwrap();
    let r = config.replication.unwrap();
    assert_eq!(r.ca, Path::new("/etc/copyist/certs/ca.pem"));
    assert_eq!(r.cert, Path::new("/etc/copyist/certs/mirror-1.pem"));
    assert_eq!(r.key, Path::new("/abs/mirror-1.key"));

    // A config named without a directory: paths stay relative to the working directory.
    let config = parse(MINIMAL).unwrap();
    assert_eq!(config.node.data_dir, Path::new("demo/writer"));
    let config = parse(&MINIMAL.replace("./demo/writer", ".")).unwrap();
    assert_eq!(config.node.data_dir, Path::new("."));
}

#[test]
fn addresses_and_urls_are_normalised() {
    let path = fixtures("valid-inline").remove(0);
    let config = Config::load(&path).unwrap();
    assert_eq!(config.admin.listen, addr("[::1]:9901"));
    assert_eq!(config.origin.url, "http://[::1]:8081/");

    let config = Config::load(&fixtures("valid-minimal").remove(0)).unwrap();
    assert_eq!(config.origin.url, "http://localhost:80/");
    assert_eq!(config.origin.url.port_u16(), Some(80));

    let config = Config::load(&fixtures("valid-full").remove(0)).unwrap();
    let nets: Vec<String> = config
        .public
        .trusted_proxies
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(
        nets,
        ["10.0.0.0/8", "192.168.1.7/32", "fd00::/8", "::1/128"]
    );
    assert_eq!(config.capture.mask_fields, ["password", "ssn"]);
    let statuses: Vec<String> = config
        .capture
        .success_statuses
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(statuses, ["200-299", "302", "303"]);
    assert!(!config.capture.is_success(301));
    assert_eq!(config.capture.rules[1].method, None);
    assert_eq!(config.capture.rules[2].method.as_ref().unwrap(), "PURGE");
}

#[test]
fn rules_match_method_and_path() {
    let config = Config::load(&fixtures("valid-full").remove(0)).unwrap();
    let first = |method: http::Method, path: &str| {
        let rule = config
            .capture
            .rules
            .iter()
            .find(|r| r.matches(&method, path));
        rule.map(|r| r.action)
    };
    assert_eq!(
        first(http::Method::POST, "/search/q"),
        Some(RuleAction::Pass)
    );
    assert_eq!(first(http::Method::GET, "/search/q"), None);
    assert_eq!(
        first(http::Method::POST, "/api/1/like"),
        Some(RuleAction::Capture)
    );
    assert_eq!(
        first(http::Method::DELETE, "/api/1/like"),
        Some(RuleAction::Capture)
    );
}

#[test]
fn unreadable_file_names_the_path() {
    let path = manifest_dir().join("fixtures/config/does-not-exist.toml");
    let error = Config::load(&path).unwrap_err();
    assert_eq!(error.path, path);
    assert_eq!(error.problems.len(), 1);
    let text = error.to_string();
    assert!(
        text.starts_with(&format!("{}: cannot read config file: ", path.display())),
        "{text}"
    );
}

#[test]
fn role_names_round_trip() {
    assert_eq!(parse(MINIMAL).unwrap().node.role, Role::Writer);
    assert_eq!(parse(&mirror()).unwrap().node.role, Role::Mirror);
    assert_eq!(
        (Role::Writer.as_str(), Role::Mirror.as_str()),
        ("writer", "mirror")
    );
}

#[test]
fn node_names_must_be_dns_names() {
    for ok in ["w", "writer-1", "writer.eu-1_a", "a1.b2", "_x", "10.0.0.x"] {
        let text = MINIMAL.replace("\"writer-1\"", &format!("{ok:?}"));
        assert_eq!(parse(&text).unwrap().node.name, ok);
    }
    let long_label = "a".repeat(64);
    let long_name = [
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(63),
    ]
    .join(".");
    for bad in [
        "-w",
        "w-",
        "a..b",
        ".a",
        "a.",
        "10.0.0.7",
        "7",
        &long_label,
        &long_name,
    ] {
        let text = MINIMAL.replace("\"writer-1\"", &format!("{bad:?}"));
        let error = parse(&text).unwrap_err();
        assert_eq!(error.problems.len(), 1, "{bad}: {error}");
        assert_eq!(error.problems[0].key, "node.name", "{bad}");
    }
}

#[test]
fn stray_keys_and_misshapen_sections_are_reported() {
    let text = format!("listen = \"127.0.0.1:1\"\n{MINIMAL}\n[[admin]]\nlisten = \"127.0.0.1\"\n");
    let error = parse(&text).unwrap_err();
    assert_eq!(
        error.to_string(),
        "proxy.toml:1:1: [listen]: key outside any section (put it under its section's header, \
         e.g. [public])\n\
         proxy.toml:14:1: [admin]: expected a table ([admin]), found an array"
    );
}

//! SIGHUP reloads and the access log, on real `copyist run` processes (real signals): a valid
//! change is in force without a restart, an invalid file is rejected with its line named and
//! the old settings kept, and the access log's lines, client addresses, byte counts, escaping
//! and rotation.

use std::path::Path;
use std::process::Command;

use http_body_util::Full;

use crate::support::node::{config_text, Opts};
use crate::support::{raw, Client, NodeProcess, StubOrigin};

/// Writes a test node's config with `public` lines in `[public]` and `extra` sections.
fn write_config(dir: &Path, origin: &StubOrigin, public: &str, extra: &str) {
    let text = config_text(
        &dir.join("data"),
        &origin.url(),
        Opts {
            public,
            extra,
            ..Opts::default()
        },
    );
    std::fs::write(dir.join("proxy.toml"), text).unwrap();
}

async fn start(dir: &Path) -> NodeProcess {
    NodeProcess::start(&dir.join("proxy.toml"), &dir.join("data")).await
}

fn hup(node: &NodeProcess) {
    let status = Command::new("kill")
        .args(["-HUP", &node.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// The value of an unlabelled sample in the node's `/metrics`.
async fn metric(node: &NodeProcess, name: &str) -> f64 {
    let text = Client::new(node.admin).get("/metrics").await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        .parse()
        .unwrap()
}

/// Sends SIGHUP and waits until the reload has been recorded: the success gauge reads
/// `success` and, for a success, the timestamp has moved past `before`.
async fn reload(node: &NodeProcess, success: bool) {
    let before = metric(node, "copyist_config_reload_timestamp_seconds").await;
    hup(node);
    let want = if success { 1.0 } else { 0.0 };
    crate::assert_eventually!(
        metric(node, "copyist_config_reload_success").await == want
            && (!success || metric(node, "copyist_config_reload_timestamp_seconds").await > before),
        "reload never recorded (want success={success}); log:\n{}",
        node_log(node)
    );
    if !success {
        // A rejected reload keeps the time the config in force was loaded.
        let after = metric(node, "copyist_config_reload_timestamp_seconds").await;
        assert_eq!(after, before);
    }
}

fn node_log(node: &NodeProcess) -> String {
    std::fs::read_to_string(node.config_path.with_extension("log")).unwrap_or_default()
}

async fn post_bytes(c: &Client, n: usize) -> u16 {
    c.post("/articles", "application/octet-stream", vec![b'x'; n])
        .await
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_puts_a_new_capture_rule_and_body_limit_in_force_without_a_restart() {
    let origin = StubOrigin::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &origin, "", "");
    let node = start(dir.path()).await;
    let c = Client::new(node.public);
    let pid = node.child.id();

    // Before: GET /visit passes through, a 2000-byte POST is captured.
    assert_eq!(c.get("/visit").await.seq(), None);
    assert_eq!(post_bytes(&c, 2000).await, 201);

    write_config(
        dir.path(),
        &origin,
        "max_body_bytes = 1000\nlisten_backlog_is_not_a_key = false\n",
        "",
    );
    // (First an invalid file, to see the next valid one recover the gauge.)
    reload(&node, false).await;
    write_config(
        dir.path(),
        &origin,
        "max_body_bytes = 1000",
        "[[capture.rule]]\nmethod = \"GET\"\npath = \"/visit\"\naction = \"capture\"\n\
         [log]\ncache_capacity = \"32MiB\"\n",
    );
    reload(&node, true).await;

    // After: the same process (no restart), the new rule and limit in force.
    assert_eq!(node.child.id(), pid);
    let visit = c.get("/visit").await;
    assert_eq!(visit.status, 200);
    assert!(
        visit.seq().is_some(),
        "GET /visit not captured after reload"
    );
    assert_eq!(post_bytes(&c, 2000).await, 413);
    assert_eq!(post_bytes(&c, 1000).await, 201);
    let log = node_log(&node);
    assert!(log.contains("[public] max_body_bytes"), "{log}");
    assert!(log.contains("[[capture.rule]]"), "{log}");
    // The log cache needs a restart: named in a warning.
    assert!(log.contains("[log] cache_capacity"), "{log}");
    assert_eq!(metric(&node, "copyist_config_reload_success").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_config_is_rejected_with_its_line_named_and_the_old_one_kept() {
    let origin = StubOrigin::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &origin, "max_body_bytes = 1000", "");
    let node = start(dir.path()).await;
    let c = Client::new(node.public);
    assert_eq!(post_bytes(&c, 1500).await, 413);

    // A raised limit that would be visible, and a bad key further down.
    write_config(
        dir.path(),
        &origin,
        "max_body_bytes = 100000",
        "[capture]\nsuccess_status = [\"7xx\"]\n",
    );
    let text = std::fs::read_to_string(dir.path().join("proxy.toml")).unwrap();
    let line = 1 + text
        .lines()
        .position(|l| l.starts_with("success_status"))
        .unwrap();
    reload(&node, false).await;

    // Still serving, with the old limit.
    assert_eq!(post_bytes(&c, 1500).await, 413);
    assert_eq!(post_bytes(&c, 900).await, 201);
    let config = node.config_path.display().to_string();
    let want = format!("{config}:{line}:");
    crate::assert_eventually!(
        node_log(&node).contains(&want),
        "the log does not name {want}:\n{}",
        node_log(&node)
    );
    let log = node_log(&node);
    assert!(log.contains("[capture] success_status"), "{log}");
    assert!(log.contains("reload rejected"), "{log}");
}

/// One combined-format line, split into its fields.
#[derive(Debug)]
struct Line {
    client: String,
    request: String,
    status: u16,
    bytes: Option<u64>,
    referer: String,
    agent: String,
}

fn parse_lines(text: &str) -> Vec<Line> {
    let re = regex::Regex::new(
        r#"^(\S+) - - \[\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} \+0000\] "([^"]*)" (\d{3}) (\d+|-) "([^"]*)" "([^"]*)"$"#,
    )
    .unwrap();
    text.lines()
        .map(|l| {
            let m = re
                .captures(l)
                .unwrap_or_else(|| panic!("not a combined log line: {l:?}"));
            Line {
                client: m[1].to_owned(),
                request: m[2].to_owned(),
                status: m[3].parse().unwrap(),
                bytes: m[4].parse().ok(),
                referer: m[5].to_owned(),
                agent: m[6].to_owned(),
            }
        })
        .collect()
}

fn read_log(path: &Path) -> Vec<Line> {
    parse_lines(&std::fs::read_to_string(path).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_writes_combined_lines_and_reopens_on_sighup() {
    let origin = StubOrigin::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    // Relative: resolved against the config file's directory.
    let public = "trusted_proxies = [\"127.0.0.1\"]\nmax_body_bytes = 100\n\
                  access_log = \"access.log\"";
    write_config(dir.path(), &origin, public, "");
    let node = start(dir.path()).await;
    let path = dir.path().join("access.log");
    let c = Client::new(node.public);

    // A trusted proxy names the client; a known body size; a referer and an agent.
    let req = c
        .request("GET", "/big/1234?x=1")
        .header("x-forwarded-for", "203.0.113.9")
        .header("referer", "https://site.example/a")
        .header("user-agent", "test-agent/1.0")
        .body(Full::default())
        .unwrap();
    let r = c.send(req).await;
    assert_eq!((r.status, r.body.len()), (200, 1234));
    // Answered by copyist itself: too large.
    assert_eq!(post_bytes(&c, 101).await, 413);
    // A user agent that tries to close the field and forge a second line's worth.
    let forged = "GET /ua HTTP/1.1\r\nHost: site\r\n\
                  User-Agent: evil\" 200 1 \"-\" \"x\tend\r\nConnection: close\r\n\r\n";
    assert!(raw(node.public, forged.as_bytes())
        .await
        .starts_with("HTTP/1.1 200"));
    crate::assert_eventually!(read_log(&path).len() >= 3, "access log lines missing");

    let lines = read_log(&path);
    assert_eq!(lines.len(), 3, "{lines:?}");
    // Each line is written when its response ends: find them by request, not by order.
    let find = |start: &str| {
        lines
            .iter()
            .find(|l| l.request.starts_with(start))
            .unwrap_or_else(|| panic!("no {start} in {lines:?}"))
    };
    let big = find("GET /big");
    assert_eq!(big.client, "203.0.113.9");
    assert_eq!(big.request, "GET /big/1234?x=1 HTTP/1.1");
    assert_eq!((big.status, big.bytes), (200, Some(1234)));
    assert_eq!(big.referer, "https://site.example/a");
    assert_eq!(big.agent, "test-agent/1.0");
    let refused = find("POST");
    assert_eq!(refused.client, "127.0.0.1");
    assert_eq!(refused.request, "POST /articles HTTP/1.1");
    assert_eq!(refused.status, 413);
    assert!(refused.bytes.unwrap_or(0) > 0, "{refused:?}");
    let evil = find("GET /ua");
    assert_eq!(evil.request, "GET /ua HTTP/1.1");
    assert_eq!(evil.agent, r#"evil\x22 200 1 \x22-\x22 \x22x\x09end"#);
    assert_eq!(evil.referer, "-");

    // logrotate: the file is moved away, SIGHUP reopens a new one at the same path.
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&path, &rotated).unwrap();
    reload(&node, true).await;
    assert_eq!(c.get("/after-rotation").await.status, 200);
    crate::assert_eventually!(
        read_log(&path)
            .iter()
            .any(|l| l.request == "GET /after-rotation HTTP/1.1"),
        "the new file never got the next line"
    );
    let old = read_log(&rotated);
    assert_eq!(old.len(), 3, "{old:?}");

    // A changed path is picked up by the next reload too.
    let public = "trusted_proxies = [\"127.0.0.1\"]\nmax_body_bytes = 100\n\
                  access_log = \"other.log\"";
    write_config(dir.path(), &origin, public, "");
    reload(&node, true).await;
    assert_eq!(c.get("/elsewhere").await.status, 200);
    let other = dir.path().join("other.log");
    crate::assert_eventually!(
        read_log(&other)
            .iter()
            .any(|l| l.request == "GET /elsewhere HTTP/1.1"),
        "the new path never got the next line"
    );
    assert!(!read_log(&path)
        .iter()
        .any(|l| l.request == "GET /elsewhere HTTP/1.1"));
    assert_eq!(metric(&node, "copyist_access_log_dropped_total").await, 0.0);
}

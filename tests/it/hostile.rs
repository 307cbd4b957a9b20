//! Hostile input on the public port (RELIABILITY.md F7, F9, F10, F11, F12, F13): slow clients,
//! fd exhaustion, multipart bombs, multipart bodies two parsers could read differently, upload
//! filenames that try to escape, and an origin that points back at copyist.
//!
//! Each test first proves its attack happened (connections held, bytes sent, parts counted) and
//! then checks the invariant.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;

use crate::support::cluster::TestCluster;
use crate::support::node::{config_text, Opts};
use crate::support::{Client, NodeProcess, PhpCms, TestNode};

// === helpers ===

/// blake3 of `body` in the log's spelling (64 hex digits).
fn b3(body: &[u8]) -> String {
    blake3::hash(body).to_hex().to_string()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `POST path` with a raw body and content type, from `client`.
async fn post_raw(
    client: &Client,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> crate::support::Reply {
    let req = client
        .request("POST", path)
        .header("content-type", content_type)
        .body(Full::new(Bytes::copy_from_slice(body)))
        .unwrap();
    client.send(req).await
}

/// What the CMS at `cms` last answered to `POST /echo-form`, read from the CMS directly.
async fn last_echo(cms: &PhpCms) -> serde_json::Value {
    let r = Client::new(cms.addr).get("/echo-form").await;
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_slice(&r.body).unwrap()
}

/// Every regular file under `dir` (recursively, at most `depth` levels), ignoring errors (a
/// temp dir shared with other processes changes while it is walked).
fn files_under(dir: &Path, depth: usize) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() && depth > 0 {
            out.extend(files_under(&e.path(), depth - 1));
        } else if ft.is_file() {
            out.push(e.path());
        }
    }
    out
}

// === F13: forwarding loop ===

/// A node whose `[origin] url` is its own public address answers 508 after one hop instead of
/// recursing: a read comes back 508, a write is logged once (one hop) with the 508 the second
/// hop answered, and the node still serves afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_pointing_back_at_copyist_is_a_508_after_one_hop() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let data = dir.path().join("data");
    let text = config_text(&data, &format!("http://127.0.0.1:{port}"), Opts::default()).replacen(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
        1,
    );
    let config = dir.path().join("proxy.toml");
    std::fs::write(&config, text).unwrap();
    let mut node = NodeProcess::start(&config, &data).await;
    assert_eq!(
        node.public.port(),
        port,
        "vacuity: the node must listen where its origin points"
    );
    let c = Client::new(node.public);

    let started = Instant::now();
    let read = c.get("/some/page").await;
    assert_eq!(read.status, 508, "{}", read.text());
    let write = c.post_form("/articles", "title=loop").await;
    assert_eq!(write.status, 508, "{}", write.text());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the loop was not cut quickly: {:?}",
        started.elapsed()
    );
    // One hop: the write was logged once, with the 508 its second hop answered.
    assert_eq!(write.seq(), Some(1), "{:?}", write.headers);
    let admin = Client::new(node.admin);
    let status: serde_json::Value =
        serde_json::from_slice(&admin.get("/api/v1/status").await.body).unwrap();
    assert_eq!(status["last_seq"], 1, "{status}");
    let entry: serde_json::Value =
        serde_json::from_slice(&admin.get("/api/v1/log/1").await.body).unwrap();
    assert_eq!(entry["outcome"]["status"], 508, "{entry}");
    // Still alive and serving.
    assert_eq!(c.get("/again").await.status, 508);
    assert!(node.child.try_wait().unwrap().is_none(), "copyist died");
    let log = std::fs::read_to_string(config.with_extension("log")).unwrap();
    assert!(log.contains("forwarding loop"), "{log}");
    node.kill9();
}

/// The null control for the loop check: a client that sends an `X-Copyist-Request-Id` of its
/// own (not this process's) is not refused; the header is stripped as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_request_id_is_not_a_loop() {
    let origin = crate::support::StubOrigin::spawn().await;
    let node = TestNode::start(&origin.url()).await;
    let req = node
        .client()
        .request("GET", "/x")
        .header("x-copyist-request-id", "test-writer-0-1")
        .body(Full::default())
        .unwrap();
    let r = node.client().send(req).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = origin.seen();
    assert_eq!(seen.len(), 1);
    assert_ne!(
        seen[0].header("x-copyist-request-id"),
        Some("test-writer-0-1")
    );
}

// === F11: multipart parser differential ===

/// Multipart bodies that parsers disagree on (multer vs PHP): whatever copyist's own index
/// makes of them, the bytes each node's CMS receives are the client's (same blake3 in both
/// logs, the same length in PHP), and the mirror's PHP sees exactly the `$_POST`/`$_FILES` the
/// writer's saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tricky_multipart_bodies_reach_both_cmses_byte_identical_and_parse_alike() {
    let cluster = TestCluster::start(1).await;
    let w = cluster.writer.client();
    let mirror = &cluster.mirrors[0];
    let cd = "Content-Disposition: form-data";
    let cases: Vec<(&str, String, Vec<u8>)> = vec![
        (
            "case variants of name= and filename=",
            "multipart/form-data; boundary=B".into(),
            String::from(
                "--B\r\ncontent-disposition: form-data; NAME=\"title\"\r\n\r\nupper\r\n\
                 --B\r\nCONTENT-DISPOSITION: form-data; Name=\"f\"; FILENAME=\"Case.txt\"\r\n\r\nfile\r\n--B--\r\n"
            )
            .into_bytes(),
        ),
        (
            "filename*= before filename=",
            "multipart/form-data; boundary=B".into(),
            format!(
                "--B\r\n{cd}; name=\"f\"; filename*=UTF-8''real%20name.txt; filename=\"decoy.txt\"\r\n\r\nstar\r\n--B--\r\n"
            )
            .into_bytes(),
        ),
        (
            "duplicate names",
            "multipart/form-data; boundary=B".into(),
            format!(
                "--B\r\n{cd}; name=\"a\"\r\n\r\nfirst\r\n--B\r\n{cd}; name=\"a\"\r\n\r\nsecond\r\n\
                 --B\r\n{cd}; name=\"f\"; filename=\"1.txt\"\r\n\r\none\r\n--B\r\n{cd}; name=\"f\"; filename=\"2.txt\"\r\n\r\ntwo\r\n--B--\r\n"
            )
            .into_bytes(),
        ),
        (
            "a[] arrays",
            "multipart/form-data; boundary=B".into(),
            format!(
                "--B\r\n{cd}; name=\"a[]\"\r\n\r\nx\r\n--B\r\n{cd}; name=\"a[]\"\r\n\r\ny\r\n--B\r\n{cd}; name=\"m[k][]\"\r\n\r\nz\r\n\
                 --B\r\n{cd}; name=\"f[]\"; filename=\"p.txt\"\r\n\r\np\r\n--B\r\n{cd}; name=\"f[]\"; filename=\"q.txt\"\r\n\r\nqq\r\n--B--\r\n"
            )
            .into_bytes(),
        ),
        (
            "empty filename",
            "multipart/form-data; boundary=B".into(),
            format!(
                "--B\r\n{cd}; name=\"f\"; filename=\"\"\r\nContent-Type: application/octet-stream\r\n\r\n\r\n\
                 --B\r\n{cd}; name=\"t\"\r\n\r\nkept\r\n--B--\r\n"
            )
            .into_bytes(),
        ),
        (
            "LF-only lines",
            "multipart/form-data; boundary=B".into(),
            format!(
                "--B\n{cd}; name=\"t\"\n\nlf only\n--B\n{cd}; name=\"f\"; filename=\"lf.txt\"\n\nlf file\n--B--\n"
            )
            .into_bytes(),
        ),
        (
            "quoted boundary with special characters",
            "multipart/form-data; boundary=\"q b:c=d\"".into(),
            format!(
                "--q b:c=d\r\n{cd}; name=\"t\"\r\n\r\nquoted\r\n--q b:c=d\r\n{cd}; name=\"f\"; filename=\"q.bin\"\r\n\r\n\x00\x01\x02\r\n--q b:c=d--\r\n"
            )
            .into_bytes(),
        ),
    ];
    let mut parsed_something = 0;
    for (what, content_type, body) in &cases {
        let r = post_raw(&w, "/echo-form", content_type, body).await;
        assert_eq!(r.status, 200, "{what}: {}", r.text());
        let seq = r.seq().unwrap_or_else(|| panic!("{what}: not logged"));
        let writer_echo: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            writer_echo["content_length"],
            body.len(),
            "{what}: the writer's CMS did not get the whole body"
        );
        let hash = b3(body);
        let wentry = cluster.writer.node.api(&format!("/api/v1/log/{seq}")).await;
        assert_eq!(wentry["body_hash"], hash, "{what}: writer log");
        cluster.wait_applied(0, seq).await;
        let mentry = mirror.node.api(&format!("/api/v1/log/{seq}")).await;
        assert_eq!(mentry["body_hash"], hash, "{what}: mirror log");
        assert_eq!(mentry["state"], "applied", "{what}: {mentry}");
        // The mirror's PHP parsed the same bytes into the same $_POST/$_FILES.
        let mirror_echo = last_echo(&mirror.cms).await;
        assert_eq!(
            mirror_echo, writer_echo,
            "{what}: the mirror's PHP saw another form"
        );
        assert_eq!(
            mentry["mirror_outcome"]["body_digest"], wentry["outcome"]["body_digest"],
            "{what}"
        );
        let post = writer_echo["post"].as_object().unwrap();
        let files = writer_echo["files"].as_object().unwrap();
        if !post.is_empty() || !files.is_empty() {
            parsed_something += 1;
        }
    }
    // Vacuity: the bodies were real forms to PHP, not all rejected as garbage.
    assert!(
        parsed_something >= cases.len() - 1,
        "PHP parsed only {parsed_something} bodies"
    );
    assert_eq!(mirror.dump().await, cluster.writer.dump().await);
}

// === F12: upload filename traversal ===

/// Filenames that try to escape (`../`, `..\`, absolute, NUL, 10k characters, NFD unicode):
/// copyist stores upload bodies only under content hashes in its blob directory, creates no
/// file named after the upload anywhere, and hands the filename to both CMSes byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_filenames_never_name_a_file_and_reach_the_cms_verbatim() {
    let cluster = TestCluster::start(1).await;
    let w = cluster.writer.client();
    let mirror = &cluster.mirrors[0];
    let passwd_before = std::fs::read("/etc/passwd").unwrap_or_default();
    let long = format!("{}.php", "L".repeat(10_000));
    let names: Vec<Vec<u8>> = vec![
        b"../../etc/passwd".to_vec(),
        b"..\\..\\x.php".to_vec(),
        b"/abs/cpyst-evil-abs.php".to_vec(),
        b"nul\x00cpyst-evil.php".to_vec(),
        long.into_bytes(),
        "he\u{301}llo-nfd.txt".as_bytes().to_vec(),
    ];
    // Above the inline limit, so each body goes to the blob store.
    let content = vec![b'z'; 40 * 1024];
    for name in &names {
        let mut body = b"--B\r\nContent-Disposition: form-data; name=\"f\"; filename=\"".to_vec();
        body.extend_from_slice(name);
        body.extend_from_slice(b"\"\r\nContent-Type: application/octet-stream\r\n\r\n");
        body.extend_from_slice(&content);
        body.extend_from_slice(b"\r\n--B--\r\n");
        let r = post_raw(&w, "/echo-form", "multipart/form-data; boundary=B", &body).await;
        let shown = String::from_utf8_lossy(&name[..name.len().min(40)]).into_owned();
        assert_eq!(r.status, 200, "{shown}: {}", r.text());
        let seq = r.seq().unwrap();
        let echo: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let entry = cluster.writer.node.api(&format!("/api/v1/log/{seq}")).await;
        assert_eq!(entry["body_hash"], b3(&body), "{shown}");
        assert_eq!(entry["body_storage"], "blob", "{shown}: {entry}");
        // PHP keeps the name as sent in full_path (it basenames `name`); NUL ends a C string
        // in PHP's parser, so there it must at least be a prefix of what was sent.
        let file = &echo["files"]["f"];
        let full = file["full_path_hex"].as_str().unwrap();
        if name.contains(&0) {
            assert!(
                hex(name).starts_with(full) && !full.is_empty(),
                "{shown}: {echo}"
            );
        } else {
            assert_eq!(full, hex(name), "{shown}: {echo}");
        }
        assert_eq!(file["size"], content.len(), "{shown}: {echo}");
        cluster.wait_applied(0, seq).await;
        assert_eq!(
            last_echo(&mirror.cms).await,
            echo,
            "{shown}: the mirror's PHP differs"
        );
    }

    // Every file copyist keeps under its data dir is either a blob named by its hash, or not
    // a blob at all (sled, admin.addr); none is named after an upload.
    let markers = ["passwd", "x.php", "cpyst-evil", "LLLLLLLL", "nfd"];
    let mut blobs = 0;
    for node_dir in [cluster.writer.node.dir.path(), mirror.node.dir.path()] {
        for path in files_under(node_dir, 6) {
            let rel = path
                .strip_prefix(node_dir)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            assert!(
                !markers.iter().any(|m| rel.contains(m)),
                "a file named after an upload: {rel}"
            );
            if let Some(inside) = rel.strip_prefix("data/blobs/") {
                let parts: Vec<&str> = inside.split('/').collect();
                let is_hash = parts.len() == 2
                    && parts[0].len() == 2
                    && parts[1].len() == 62
                    && inside
                        .replace('/', "")
                        .chars()
                        .all(|c| c.is_ascii_hexdigit());
                assert!(is_hash || parts[0] == "tmp", "not a hash-named blob: {rel}");
                if is_hash {
                    blobs += 1;
                }
            }
        }
    }
    assert!(
        blobs >= names.len(),
        "vacuity: the uploads were not blobs ({blobs})"
    );
    // Nothing escaped into the temp dir or the CMS's own directories, and /etc/passwd is as
    // it was.
    for dir in [
        std::env::temp_dir(),
        cluster.writer.cms.dir.path().to_path_buf(),
        mirror.cms.dir.path().to_path_buf(),
    ] {
        for path in files_under(&dir, 2) {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                !(name.contains("cpyst-evil") || name == "passwd" || name.contains("x.php")),
                "{}",
                path.display()
            );
        }
    }
    assert!(!Path::new("/abs").exists());
    assert_eq!(
        std::fs::read("/etc/passwd").unwrap_or_default(),
        passwd_before
    );
}

// === F10: multipart DoS ===

/// Multipart bombs: copyist's index stops at its limits and records why, the request is
/// handled in bounded time, and the CMS receives the whole body or nothing (never a half-read
/// one): PHP reports the full length and the log holds the client's blake3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_bombs_are_bounded_and_never_half_read() {
    let cms = PhpCms::start();
    let node = TestNode::start(&cms.url()).await;
    let c = node.client();
    let cd = "Content-Disposition: form-data";

    let mut tiny = Vec::new();
    for i in 0..100_000 {
        tiny.extend_from_slice(format!("--B\r\n{cd}; name=\"p{i}\"\r\n\r\nx\r\n").as_bytes());
    }
    tiny.extend_from_slice(b"--B--\r\n");

    let mut unterminated = format!("--B\r\n{cd}; name=\"a\"\r\n").into_bytes();
    for i in 0..20_000 {
        unterminated.extend_from_slice(format!("X-Pad-{i}: {}\r\n", "p".repeat(40)).as_bytes());
    }

    let mut many_headers = format!("--B\r\n{cd}; name=\"h\"\r\n").into_bytes();
    for i in 0..40 {
        many_headers.extend_from_slice(format!("X-Part-Header-{i}: v\r\n").as_bytes());
    }
    many_headers.extend_from_slice(b"\r\nvalue\r\n--B--\r\n");

    let pad = vec![b'.'; 8 * 1024 * 1024];
    let mut preamble = pad.clone();
    preamble.extend_from_slice(
        format!("\r\n--B\r\n{cd}; name=\"t\"\r\n\r\npre\r\n--B--\r\n").as_bytes(),
    );
    preamble.extend_from_slice(&pad);

    let long_boundary = "b".repeat(70);
    let seventy = format!(
        "--{long_boundary}\r\n{cd}; name=\"t\"\r\n\r\n--{}\r\n--{long_boundary}--\r\n",
        &long_boundary[..69]
    )
    .into_bytes();

    // (what, boundary, body, what copyist's index makes of it: its error, or "" and one part)
    let cases: Vec<(&str, String, &[u8], &str)> = vec![
        (
            "100k tiny parts",
            "boundary=B".into(),
            &tiny[..],
            "more than 1000 parts",
        ),
        (
            "unterminated part headers",
            "boundary=B".into(),
            &unterminated[..],
            "incomplete",
        ),
        (
            "40 part headers",
            "boundary=B".into(),
            &many_headers[..],
            "headers",
        ),
        (
            "8 MB preamble and 8 MB epilogue",
            "boundary=B".into(),
            &preamble[..],
            "",
        ),
        (
            "70-char boundary, 69 in the body",
            format!("boundary={long_boundary}"),
            &seventy[..],
            "",
        ),
    ];
    for (what, boundary, body, index_error) in cases {
        let started = Instant::now();
        let r = post_raw(
            &c,
            "/echo-form",
            &format!("multipart/form-data; {boundary}"),
            body,
        )
        .await;
        let took = started.elapsed();
        assert!(took < Duration::from_secs(20), "{what}: took {took:?}");
        let Some(seq) = r.seq() else {
            // Refused before the CMS: it must be a client error, and nothing was logged.
            assert!(
                (400..500).contains(&r.status),
                "{what}: {} {}",
                r.status,
                r.text()
            );
            continue;
        };
        let entry = node.api(&format!("/api/v1/log/{seq}")).await;
        assert_eq!(entry["body_len"], body.len(), "{what}");
        assert_eq!(entry["body_hash"], b3(body), "{what}");
        let index = &entry["multipart"];
        if index_error.is_empty() {
            assert!(index["error"].is_null(), "{what}: {index}");
            assert_eq!(
                index["parts"].as_array().unwrap().len(),
                1,
                "{what}: {index}"
            );
        } else {
            // The index stopped at its limit and says why; the request went on regardless.
            let err = index["error"].as_str().unwrap_or_default();
            assert!(err.contains(index_error), "{what}: {index}");
            assert!(index["parts"].as_array().unwrap().len() <= 1000, "{what}");
        }
        if r.status == 200 {
            // The CMS read the whole body: never a truncated or half-forwarded one.
            let echo: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(echo["content_length"], body.len(), "{what}");
        } else {
            // PHP refused the form; copyist still recorded its answer.
            assert!(r.status >= 400, "{what}: {} {}", r.status, r.text());
        }
    }
    // The node is still healthy and serving.
    assert_eq!(c.get("/healthz").await.status, 200);
}

// === process measurements (from /proc, so the node must be its own process) ===

/// Open file descriptors of `pid`.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Resident set size of `pid`, in kB.
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// CPU time (user + system) `pid` has used.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start with field 3, the state;
    // utime and stime are fields 14 and 15.
    let rest: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    let ticks: u64 = rest[11].parse::<u64>().unwrap() + rest[12].parse::<u64>().unwrap();
    Duration::from_secs_f64(ticks as f64 / clock_ticks())
}

fn clock_ticks() -> f64 {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// A `copyist run` process in front of `origin` with `public` lines in `[public]`, started
/// under `wrapper` (e.g. `prlimit`).
async fn proxy_process(
    origin: &str,
    public: &str,
    wrapper: &[&str],
) -> (tempfile::TempDir, NodeProcess) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let text = config_text(
        &data,
        origin,
        Opts {
            public,
            ..Opts::default()
        },
    );
    let config = dir.path().join("proxy.toml");
    std::fs::write(&config, text).unwrap();
    let node = NodeProcess::start_under(&config, &data, wrapper).await;
    (dir, node)
}

/// `GET path` once with a deadline: the status, or `None` when it failed or took too long.
async fn try_get(addr: std::net::SocketAddr, path: &str, within: Duration) -> Option<u16> {
    let c = Client::new(addr);
    let req = c.request("GET", path).body(Full::default()).unwrap();
    tokio::time::timeout(within, c.try_send(req))
        .await
        .ok()
        .and_then(|r| r.ok())
        .map(|r| r.status)
}

// === F9: fd exhaustion ===

/// Under `prlimit --nofile=64`, 200 held connections exhaust copyist's descriptors: accept
/// fails with EMFILE, but copyist does not spin (CPU under 10 % of wall time), its health
/// probe fails while it lasts, and once the sockets close it serves and reports healthy again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fd_exhaustion_does_not_spin_and_recovers() {
    let cms = PhpCms::start();
    let (dir, mut node) = proxy_process(
        &cms.url(),
        "header_read_timeout = \"30s\"",
        &["prlimit", "--nofile=64:64", "--"],
    )
    .await;
    let pid = node.child.id();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    assert!(
        limits
            .lines()
            .any(|l| l.starts_with("Max open files") && l.contains(" 64 ")),
        "vacuity: the limit is not in force:\n{limits}"
    );
    assert_eq!(
        try_get(node.public, "/healthz", Duration::from_secs(5)).await,
        Some(200)
    );
    let baseline = fds(pid);

    // 200 connections that send nothing: copyist accepts until it runs out of descriptors,
    // the kernel queues more in the listen backlog, and drops the SYNs of the rest (those
    // connects time out; only the ones that connected count).
    let mut held = Vec::new();
    for _ in 0..200 {
        let connect = tokio::net::TcpStream::connect(node.public);
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(300), connect).await {
            held.push(s);
        }
    }
    assert!(
        held.len() >= 100,
        "vacuity: only {} sockets held",
        held.len()
    );
    crate::assert_eventually!(
        fds(pid) >= 62,
        "copyist never ran out of descriptors: {} open",
        fds(pid)
    );
    let log_path = dir.path().join("proxy.log");
    crate::assert_eventually!(
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .contains("accept failed"),
        "no accept failure logged"
    );

    // No busy loop while exhausted.
    let (cpu0, wall0) = (cpu_time(pid), Instant::now());
    let health = try_get(node.admin, "/health", Duration::from_secs(3)).await;
    let public = try_get(node.public, "/healthz", Duration::from_secs(1)).await;
    while wall0.elapsed() < Duration::from_secs(4) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (cpu, wall) = (cpu_time(pid) - cpu0, wall0.elapsed());
    assert!(
        fds(pid) >= 62,
        "vacuity: exhaustion ended during the measurement"
    );
    assert!(
        cpu.as_secs_f64() < 0.10 * wall.as_secs_f64(),
        "accept busy-loop: {cpu:?} of CPU in {wall:?}"
    );
    // While exhausted, a health check cannot come back healthy.
    assert_ne!(
        health,
        Some(200),
        "the admin health said healthy while out of fds"
    );
    assert_ne!(public, Some(200), "a request was served while out of fds");

    // Recovery: the sockets close, copyist serves and reports healthy again.
    drop(held);
    crate::assert_eventually!(
        try_get(node.public, "/healthz", Duration::from_secs(2)).await == Some(200),
        "copyist did not recover after the sockets closed"
    );
    crate::assert_eventually!(
        try_get(node.admin, "/health", Duration::from_secs(2)).await == Some(200),
        "health did not recover"
    );
    crate::assert_eventually!(
        fds(pid) <= baseline + 4,
        "descriptors leaked: {} now, {baseline} before",
        fds(pid)
    );
    assert!(node.child.try_wait().unwrap().is_none(), "copyist died");
}

// === G6: clock skew on a mirror ===

/// libfaketime on the mirror's process only (same pid, unlike the `faketime` wrapper, which
/// forks): its wall clock is `offset` away, its monotonic clock untouched.
fn faketime(offset: &str) -> Vec<(String, String)> {
    vec![
        (
            "LD_PRELOAD".into(),
            "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1".into(),
        ),
        ("FAKETIME".into(), offset.into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
    ]
}

/// A mirror whose clock is 10 minutes off (either way) replicates as usual. One two years
/// behind sees the writer's certificate as not yet valid: the handshake is refused with that
/// reason in its log and in the writer's view of it, nothing is applied, and fixing the clock
/// lets it catch up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_skew_is_tolerated_in_minutes_and_blocks_replication_with_a_reason_in_years() {
    use crate::support::process_cluster::{ProcessCluster, ProcessClusterOpts};
    assert!(
        Path::new("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1").exists(),
        "libfaketime missing: apt-get install faketime (scripts/check.sh installs it)"
    );
    let mut cluster = ProcessCluster::start(ProcessClusterOpts::default()).await;
    let mut seq = 0;
    for offset in ["+600s", "-600s"] {
        cluster.mirror.kill9();
        cluster.mirror.env = faketime(offset);
        cluster.mirror.start().await;
        let pid = cluster.mirror.proc.as_ref().unwrap().child.id();
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        assert!(
            String::from_utf8_lossy(&environ).contains(&format!("FAKETIME={offset}")),
            "vacuity: the mirror does not run under faketime"
        );
        let r = cluster
            .writer
            .client()
            .post_form("/articles", &format!("title=skew{offset}"))
            .await;
        seq += 1;
        assert_eq!(r.seq(), Some(seq), "{}", r.text());
        cluster.wait_converged(Duration::from_secs(30)).await;
        assert_eq!(cluster.mirror.dump().await, cluster.writer.dump().await);
    }

    // Two years behind: the writer's certificate is not valid yet on the mirror.
    cluster.mirror.kill9();
    cluster.mirror.env = faketime("-730d");
    cluster.mirror.start().await;
    let before = cluster.mirror.dump().await;
    let r = cluster
        .writer
        .client()
        .post_form("/articles", "title=from-the-future")
        .await;
    assert_eq!(r.seq(), Some(seq + 1));
    crate::assert_eventually!(
        {
            let log = cluster.mirror.log_tail().to_lowercase();
            log.contains("handshake")
                && [
                    "notvalidyet",
                    "not valid yet",
                    "not yet valid",
                    "not valid before",
                ]
                .iter()
                .any(|why| log.contains(why))
        },
        "the mirror's log gives no reason:\n{}",
        cluster.logs()
    );
    crate::assert_eventually!(
        !cluster.writer.status().await["mirrors"][0]["last_error"].is_null(),
        "the writer does not report the refused mirror: {}",
        cluster.writer.status().await
    );
    let view = cluster.writer.status().await["mirrors"][0].clone();
    assert_eq!(cluster.mirror.status().await["applied_seq"], seq, "{view}");
    assert_eq!(
        cluster.mirror.dump().await,
        before,
        "applied through a refused handshake"
    );
    assert!(!before.contains("from-the-future"));

    // The clock fixed, it catches up.
    cluster.mirror.kill9();
    cluster.mirror.env = Vec::new();
    cluster.mirror.start().await;
    cluster.wait_converged(Duration::from_secs(30)).await;
    assert!(cluster.mirror.dump().await.contains("from-the-future"));
}

// === F7: slowloris, RUDY, slow read ===

/// What one slow connection achieved.
#[derive(Debug)]
struct Slow {
    /// Bytes it got into copyist (the attack really happened).
    sent: usize,
    /// How long after it went slow the server closed it; `None`: still open at the give-up time.
    closed_after: Option<Duration>,
}

/// Opens a connection, sends `head`, then trickles one byte (`drip`) every `every` for
/// `trickle_for`, then goes silent; returns when the server closes the connection (or after
/// `give_up`). Anything the server answers (a 408) is read and discarded.
async fn slow_client(
    addr: std::net::SocketAddr,
    head: Vec<u8>,
    every: Duration,
    trickle_for: Duration,
    give_up: Duration,
) -> Slow {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let mut sent = 0;
    let closed = |sent| Slow {
        sent,
        closed_after: Some(started.elapsed()),
    };
    if s.write_all(&head).await.is_err() {
        return closed(sent);
    }
    sent += head.len();
    let mut buf = [0u8; 4096];
    loop {
        tokio::select! {
            r = s.read(&mut buf) => match r {
                Ok(0) | Err(_) => return closed(sent),
                Ok(_) => continue,
            },
            () = tokio::time::sleep(every) => {
                if started.elapsed() > give_up {
                    return Slow { sent, closed_after: None };
                }
                if started.elapsed() < trickle_for {
                    if s.write_all(b"a").await.is_err() {
                        return closed(sent);
                    }
                    sent += 1;
                }
            }
        }
    }
}

/// The response a slow reader asks for: far beyond its 4 KiB window, small enough that the
/// kernel's socket buffers between copyist and the CMS absorb it, so the CMS (`php -S` with 2
/// workers) is not held by back-pressure. A larger one holds a CMS worker until
/// `send_timeout` cuts the client: copyist streams, it does not buffer responses.
const SLOW_READ_BYTES: usize = 4_000_000;

/// `n` sequential requests by a legitimate client; returns the 99th-percentile latency.
async fn probe_p99(addr: std::net::SocketAddr, n: usize) -> Duration {
    let c = Client::new(addr);
    let mut lat = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let r = c.get("/healthz").await;
        assert_eq!(r.status, 200, "{}", r.text());
        lat.push(t.elapsed());
    }
    lat.sort();
    lat[n * 99 / 100 - 1]
}

/// Slowloris (300 connections dripping header bytes), RUDY (100 connections dripping a body)
/// and slow read (20 clients with a 4 KiB window that never read a 4 MB response), each against a real process:
/// a legitimate client's p99 stays under 1 s, copyist's descriptors and memory stay bounded,
/// and every slow connection is closed by its deadline (`header_read_timeout`,
/// `body_read_timeout`, `send_timeout`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_by_deadlines_while_a_real_client_stays_fast() {
    let cms = PhpCms::start();
    let (_dir, mut node) = proxy_process(
        &cms.url(),
        "header_read_timeout = \"3s\"\nbody_read_timeout = \"2s\"\nsend_timeout = \"3s\"",
        &[],
    )
    .await;
    let pid = node.child.id();
    let addr = node.public;
    assert!(probe_p99(addr, 10).await < Duration::from_secs(1));
    let (fds0, rss0) = (fds(pid), rss_kb(pid));

    // --- slowloris: a header line that never ends, one byte every 200 ms.
    const LORIS: usize = 300;
    let mut attackers = Vec::new();
    for _ in 0..LORIS {
        attackers.push(tokio::spawn(slow_client(
            addr,
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ".to_vec(),
            Duration::from_millis(200),
            Duration::from_secs(60),
            Duration::from_secs(20),
        )));
    }
    crate::assert_eventually!(
        fds(pid) >= fds0 + LORIS * 9 / 10,
        "the slowloris connections were not held: {} fds",
        fds(pid)
    );
    let held_fds = fds(pid);
    let p99 = probe_p99(addr, 100).await;
    assert!(p99 < Duration::from_secs(1), "slowloris: p99 {p99:?}");
    assert!(
        held_fds <= fds0 + LORIS + 16,
        "descriptors beyond one per connection: {held_fds} (was {fds0})"
    );
    let mut sent = 0;
    for a in attackers {
        let slow = a.await.unwrap();
        sent += slow.sent;
        let closed = slow
            .closed_after
            .expect("a slowloris connection outlived its deadline");
        assert!(
            closed < Duration::from_secs(8),
            "closed only after {closed:?}"
        );
    }
    assert!(sent > LORIS * 30, "vacuity: only {sent} bytes dripped");

    // --- RUDY: a declared 100 kB form body, dripped a byte every 500 ms for 3 s, then silent.
    const RUDY: usize = 100;
    let head = b"POST /articles HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100000\r\n\r\ntitle=".to_vec();
    let mut attackers = Vec::new();
    for _ in 0..RUDY {
        attackers.push(tokio::spawn(slow_client(
            addr,
            head.clone(),
            Duration::from_millis(500),
            Duration::from_secs(3),
            Duration::from_secs(20),
        )));
    }
    crate::assert_eventually!(
        fds(pid) >= fds0 + RUDY * 9 / 10,
        "the RUDY connections were not held: {} fds",
        fds(pid)
    );
    let p99 = probe_p99(addr, 100).await;
    assert!(p99 < Duration::from_secs(1), "RUDY: p99 {p99:?}");
    for a in attackers {
        let slow = a.await.unwrap();
        assert!(slow.sent > head.len(), "vacuity: no body byte dripped");
        let closed = slow
            .closed_after
            .expect("a RUDY connection outlived its deadline");
        // Trickling (every 500 ms) keeps it under the 2 s idle deadline; silence ends it.
        assert!(
            closed >= Duration::from_secs(3) && closed < Duration::from_secs(9),
            "closed after {closed:?}"
        );
    }
    let admin = Client::new(node.admin);
    let status: serde_json::Value =
        serde_json::from_slice(&admin.get("/api/v1/status").await.body).unwrap();
    assert_eq!(
        status["last_seq"], 0,
        "a half-sent body was logged: {status}"
    );

    // --- slow read: responses far larger than the clients' 4 KiB window, never read.
    const READERS: usize = 20;
    let mut readers = Vec::new();
    for _ in 0..READERS {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        let mut s = sock.connect(addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let get = format!("GET /big?bytes={SLOW_READ_BYTES} HTTP/1.1\r\nHost: x\r\n\r\n");
        s.write_all(get.as_bytes()).await.unwrap();
        let mut first = [0u8; 12];
        s.read_exact(&mut first).await.unwrap();
        assert_eq!(
            &first, b"HTTP/1.1 200",
            "vacuity: the response did not start"
        );
        readers.push((s, Instant::now()));
    }
    let p99 = probe_p99(addr, 100).await;
    assert!(p99 < Duration::from_secs(1), "slow read: p99 {p99:?}");
    assert!(
        rss_kb(pid) < rss0 + 256 * 1024,
        "RSS grew from {rss0} kB to {} kB",
        rss_kb(pid)
    );
    // Each one is cut by send_timeout while it still holds its socket open: copyist's
    // descriptors go back to where they were; reading now finds a truncated response.
    crate::assert_eventually!(
        fds(pid) <= fds0 + 4,
        "slow readers were never cut: {} fds (was {fds0})",
        fds(pid)
    );
    for (mut s, since) in readers {
        use tokio::io::AsyncReadExt;
        assert!(
            since.elapsed() > Duration::from_secs(3),
            "cut before send_timeout"
        );
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "the connection is still open");
        assert!(
            rest.len() < SLOW_READ_BYTES,
            "the whole response was delivered"
        );
    }
    // Back to where it started: no descriptor kept for a closed connection, still serving.
    crate::assert_eventually!(
        fds(pid) <= fds0 + 4,
        "descriptors leaked: {} (was {fds0})",
        fds(pid)
    );
    assert!(probe_p99(addr, 10).await < Duration::from_secs(1));
    assert!(node.child.try_wait().unwrap().is_none(), "copyist died");
}

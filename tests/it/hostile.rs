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
async fn post_raw(client: &Client, path: &str, content_type: &str, body: &[u8]) -> crate::support::Reply {
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
    let text = config_text(&data, &format!("http://127.0.0.1:{port}"), Opts::default())
        .replacen(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\""),
            1,
        );
    let config = dir.path().join("proxy.toml");
    std::fs::write(&config, text).unwrap();
    let mut node = NodeProcess::start(&config, &data).await;
    assert_eq!(node.public.port(), port, "vacuity: the node must listen where its origin points");
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
            format!(
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
        assert_eq!(mirror_echo, writer_echo, "{what}: the mirror's PHP saw another form");
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
    assert!(parsed_something >= cases.len() - 1, "PHP parsed only {parsed_something} bodies");
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
        b"/abs/hostile-abs.php".to_vec(),
        b"nul\x00hostile.php".to_vec(),
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
            assert!(hex(name).starts_with(full) && !full.is_empty(), "{shown}: {echo}");
        } else {
            assert_eq!(full, hex(name), "{shown}: {echo}");
        }
        assert_eq!(file["size"], content.len(), "{shown}: {echo}");
        cluster.wait_applied(0, seq).await;
        assert_eq!(last_echo(&mirror.cms).await, echo, "{shown}: the mirror's PHP differs");
    }

    // Every file copyist keeps under its data dir is either a blob named by its hash, or not
    // a blob at all (sled, admin.addr); none is named after an upload.
    let markers = ["passwd", "x.php", "hostile", "LLLLLLLL", "nfd"];
    let mut blobs = 0;
    for node_dir in [
        cluster.writer.node.dir.path(),
        mirror.node.dir.path(),
    ] {
        for path in files_under(node_dir, 6) {
            let rel = path.strip_prefix(node_dir).unwrap().to_string_lossy().into_owned();
            assert!(
                !markers.iter().any(|m| rel.contains(m)),
                "a file named after an upload: {rel}"
            );
            if let Some(inside) = rel.strip_prefix("data/blobs/") {
                let parts: Vec<&str> = inside.split('/').collect();
                let is_hash = parts.len() == 2
                    && parts[0].len() == 2
                    && parts[1].len() == 62
                    && inside.replace('/', "").chars().all(|c| c.is_ascii_hexdigit());
                assert!(is_hash || parts[0] == "tmp", "not a hash-named blob: {rel}");
                if is_hash {
                    blobs += 1;
                }
            }
        }
    }
    assert!(blobs >= names.len(), "vacuity: the uploads were not blobs ({blobs})");
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
                !(name.contains("hostile") || name == "passwd" || name.contains("x.php")),
                "{}",
                path.display()
            );
        }
    }
    assert!(!Path::new("/abs").exists());
    assert_eq!(std::fs::read("/etc/passwd").unwrap_or_default(), passwd_before);
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

    let pad = vec![b'.'; 20 * 1024 * 1024];
    let mut preamble = pad.clone();
    preamble.extend_from_slice(format!("\r\n--B\r\n{cd}; name=\"t\"\r\n\r\npre\r\n--B--\r\n").as_bytes());
    preamble.extend_from_slice(&pad);

    let long_boundary = "b".repeat(70);
    let seventy = format!(
        "--{long_boundary}\r\n{cd}; name=\"t\"\r\n\r\n--{}\r\n--{long_boundary}--\r\n",
        &long_boundary[..69]
    )
    .into_bytes();

    let cases: Vec<(&str, String, &[u8], &str)> = vec![
        ("100k tiny parts", "boundary=B".into(), &tiny[..], "more than 1000 parts"),
        ("unterminated part headers", "boundary=B".into(), &unterminated[..], ""),
        ("40 part headers", "boundary=B".into(), &many_headers[..], ""),
        ("20 MB preamble and epilogue", "boundary=B".into(), &preamble[..], ""),
        (
            "70-char boundary, 69 in the body",
            format!("boundary={long_boundary}"),
            &seventy[..],
            "",
        ),
    ];
    for (what, boundary, body, index_error) in cases {
        let started = Instant::now();
        let r = post_raw(&c, "/echo-form", &format!("multipart/form-data; {boundary}"), body).await;
        let took = started.elapsed();
        assert!(took < Duration::from_secs(20), "{what}: took {took:?}");
        let Some(seq) = r.seq() else {
            // Refused before the CMS: it must be a client error, and nothing was logged.
            assert!((400..500).contains(&r.status), "{what}: {} {}", r.status, r.text());
            continue;
        };
        let entry = node.api(&format!("/api/v1/log/{seq}")).await;
        assert_eq!(entry["body_len"], body.len(), "{what}");
        assert_eq!(entry["body_hash"], b3(body), "{what}");
        if !index_error.is_empty() {
            let err = entry["multipart"]["error"].as_str().unwrap_or_default();
            assert!(err.contains(index_error), "{what}: {}", entry["multipart"]);
            assert_eq!(entry["multipart"]["parts"].as_array().unwrap().len(), 1000);
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

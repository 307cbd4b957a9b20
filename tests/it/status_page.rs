//! The admin status page as a browser shows it: a real cluster (writer and two mirrors, each
//! before its PHP CMS), one mirror halted by a hand edit, and headless Chromium rendering each
//! node's `GET /`. Chromium is required (scripts/check.sh installs it): a missing one fails.

use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::cluster::Certs;
use crate::support::cluster::{ClusterOpts, TestCluster};
use crate::support::node::Opts;
use crate::support::{Client, TestNode};

/// Longest a Chromium run may take before it is killed and the test fails.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(60);

/// A target with characters HTML gives meaning to (`&`, `'`): shown as written.
const TARGET: &str = "/articles?from=page-test&note='quoted'";

/// Runs headless Chromium with `args` then `url` in its own process group and a fresh profile;
/// returns its stdout. Chromium's stderr is noise (GPU, D-Bus) and is dropped.
fn chromium(args: &[&str], url: &str, profile: &Path) -> Vec<u8> {
    let mut child = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        // Its own group, so a timeout kills the renderer and zygote processes too.
        .process_group(0)
        .spawn()
        .expect("chromium not found: install Debian's chromium (scripts/check.sh does)");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        out
    });
    let deadline = Instant::now() + CHROMIUM_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = Command::new("kill")
                .args(["-s", "KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish {url} within {CHROMIUM_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = reader.join().unwrap();
    assert!(status.success(), "chromium exited with {status} on {url}");
    out
}

/// The DOM Chromium built from the status page at `admin`.
async fn rendered(admin: SocketAddr) -> String {
    tokio::task::spawn_blocking(move || {
        let profile = tempfile::tempdir().unwrap();
        let url = format!("http://{admin}/");
        String::from_utf8(chromium(&["--dump-dom"], &url, profile.path())).unwrap()
    })
    .await
    .unwrap()
}

/// The element that opens with the first tag containing `marker`, up to its `</tag>`: tables
/// rows and sections here hold no element of their own kind.
fn element<'a>(dom: &'a str, marker: &str) -> &'a str {
    let at = dom
        .find(marker)
        .unwrap_or_else(|| panic!("{marker} not in the page:\n{dom}"));
    let open = dom[..at].rfind('<').unwrap();
    let tag: String = dom[open + 1..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    let close = format!("</{tag}>");
    let end = dom[open..].find(&close).unwrap() + open + close.len();
    &dom[open..end]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_renders_nodes_a_halted_mirror_with_both_outcomes_and_recent_entries() {
    let cluster = TestCluster::start_opts(ClusterOpts {
        mirrors: 2,
        extra: "[health]\nprobe_interval = \"50ms\"\nprobe_timeout = \"5s\"\n".into(),
        ..ClusterOpts::default()
    })
    .await;
    // A hand edit of mirror-1's database: its next article ID is off by one, so it halts at 1.
    cluster.mirrors[0].dump().await;
    cluster.mirrors[0]
        .cms
        .sql("INSERT INTO articles (title, body) VALUES ('hand', 'edit')");
    let w = cluster.writer.client();
    assert_eq!(w.post_form("/articles", "title=one").await.seq(), Some(1));
    assert_eq!(w.post_form("/articles", "title=two").await.seq(), Some(2));
    let r = w.post_form(TARGET, "title=three").await;
    assert_eq!(r.seq(), Some(3), "{}", r.text());
    cluster.wait_halted(0).await;
    cluster.wait_applied(1, 3).await;
    crate::assert_eventually!(
        cluster.writer.status().await["mirrors"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["applied_seq"] == 3 || !m["halt"].is_null()),
        "the writer never heard both mirrors' positions"
    );
    // mirror-1's probes have seen its CMS up and reached its writer.
    crate::assert_eventually!(
        Client::new(cluster.mirrors[0].node.admin)
            .get("/health")
            .await
            .status
            == 200
            && cluster.mirrors[0].node.api("/api/v1/status").await["health"]["last_seq"] == 3,
        "mirror-1 never probed its CMS and its writer"
    );

    // Plain HTTP first: the headers a browser acts on.
    let page = Client::new(cluster.writer.node.admin).get("/").await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(page.header("cache-control"), Some("no-store"));
    let csp = page.header("content-security-policy").unwrap();
    assert!(csp.starts_with("default-src 'none'"), "{csp}");

    let dom = rendered(cluster.writer.node.admin).await;
    // `<tbody>` is never in the source: this is Chromium's DOM, not the bytes served.
    assert!(dom.contains("<tbody>"), "not a rendered DOM:\n{dom}");
    assert!(
        dom.contains(r#"<meta http-equiv="refresh" content="5">"#),
        "{dom}"
    );
    let node = element(&dom, r#"id="node""#);
    assert!(node.contains(r#"data-node="writer""#), "{node}");
    assert!(node.contains(r#"data-role="writer""#), "{node}");
    let nodes = element(&dom, r#"id="nodes""#);
    let m1 = element(nodes, r#"data-mirror="mirror-1""#);
    assert!(m1.contains(r#"data-state="halted""#), "{m1}");
    assert!(m1.contains("location_mismatch"), "{m1}");
    let m2 = element(nodes, r#"data-mirror="mirror-2""#);
    assert!(m2.contains(r#"data-state="running""#), "{m2}");
    // Both outcomes of the halted entry: the writer's from its log, the mirror's from its halt.
    let halted = element(&dom, r#"id="halted""#);
    let row = element(
        halted,
        r#"class="halted" data-mirror="mirror-1" data-seq="1""#,
    );
    let writer_outcome = element(row, r#"class="writer-outcome""#);
    assert!(
        writer_outcome.contains("303") && writer_outcome.contains("/article/1"),
        "{row}"
    );
    let mirror_outcome = element(row, r#"class="mirror-outcome""#);
    assert!(mirror_outcome.contains("mirror=/article/2"), "{row}");
    let recent = element(&dom, r#"id="recent""#);
    for seq in 1..=3 {
        assert!(recent.contains(&format!(r#"data-seq="{seq}""#)), "{recent}");
    }
    assert!(
        recent.contains("/articles?from=page-test&amp;note='quoted'"),
        "{recent}"
    );

    // The halted mirror's own page: its writer, and both outcomes from its own log.
    let dom = rendered(cluster.mirrors[0].node.admin).await;
    let node = element(&dom, r#"id="node""#);
    assert!(
        node.contains(r#"data-node="mirror-1""#) && node.contains(r#"data-role="mirror""#),
        "{node}"
    );
    assert!(node.contains(r#"data-state="halted""#), "{node}");
    let writer = element(&dom, r#"data-writer="writer""#);
    assert!(writer.contains(r#"data-state="reachable""#), "{writer}");
    let row = element(
        &dom,
        r#"class="halted" data-mirror="mirror-1" data-seq="1""#,
    );
    assert!(
        element(row, r#"class="writer-outcome""#).contains("/article/1"),
        "{row}"
    );
    assert!(
        element(row, r#"class="mirror-outcome""#).contains("/article/2"),
        "{row}"
    );

    // And it paints: a screenshot is a PNG with something in it.
    let admin = cluster.mirrors[1].node.admin;
    let png = tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("page.png");
        let shot = format!("--screenshot={}", file.display());
        chromium(
            &[&shot, "--window-size=1000,800"],
            &format!("http://{admin}/"),
            &dir.path().join("profile"),
        );
        std::fs::read(&file).unwrap()
    })
    .await
    .unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(
        png.len() > 1000,
        "an empty screenshot ({} bytes)",
        png.len()
    );
}

/// A CMS that reflects the request's `slug` into its redirect, as many do with a page's name:
/// `POST /articles?slug=S` answers 201 with `Location: /PREFIX/S` (decoded). Anything else: 200.
async fn reflecting_cms(prefix: &'static str) -> SocketAddr {
    use http_body_util::Full;
    use hyper::body::Bytes;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let svc = hyper::service::service_fn(move |req: http::Request<_>| async move {
                let slug = form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                    .find(|(k, _)| k == "slug")
                    .map(|(_, v)| v.into_owned());
                let resp = match (req.method() == http::Method::POST, slug) {
                    (true, Some(slug)) => http::Response::builder()
                        .status(201)
                        .header("location", format!("/{prefix}/{slug}"))
                        .body(Full::new(Bytes::new())),
                    _ => http::Response::builder().body(Full::new(Bytes::from_static(b"ok"))),
                };
                Ok::<_, std::convert::Infallible>(resp.unwrap())
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc),
            );
        }
    });
    addr
}

/// `<script>` from a client's request path, reflected by the CMS into the outcomes and the halt
/// reason, is text on every page that shows it. (A raw `<` in a target never gets that far:
/// hyper refuses it with 400 before copyist sees the request.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_in_a_request_path_reflected_by_the_cms_renders_as_text() {
    let certs = Certs::new(&["writer", "mirror-1"]);
    let writer_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // The two CMSs redirect to different places: the mirror halts, its halt naming both.
    let mirror_cms = reflecting_cms("m").await;
    let extra = format!(
        "{}\n[writer]\nname = \"writer\"\nurl = \"https://127.0.0.1:{writer_port}\"\n",
        certs.replication("mirror-1")
    );
    let mirror = TestNode::start_opts(
        &format!("http://{mirror_cms}"),
        Opts {
            name: "mirror-1",
            role: "mirror",
            extra: &extra,
            ..Opts::default()
        },
    )
    .await;
    let writer_cms = reflecting_cms("w").await;
    let extra = format!(
        "{}\n[[mirrors]]\nname = \"mirror-1\"\nurl = \"https://127.0.0.1:{}\"\n",
        certs.replication_on("writer", writer_port),
        mirror.replication.unwrap().port()
    );
    let writer = TestNode::start_opts(
        &format!("http://{writer_cms}"),
        Opts {
            name: "writer",
            extra: &extra,
            ..Opts::default()
        },
    )
    .await;

    let r = writer
        .client()
        .post_form(
            "/articles?slug=%3Cscript%3Ealert(1)%3C%2Fscript%3E",
            "title=x",
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        r.header("location"),
        Some("/w/<script>alert(1)</script>"),
        "the CMS does reflect the path"
    );
    crate::assert_eventually!(
        !writer.api("/api/v1/status").await["mirrors"][0]["halt"].is_null(),
        "mirror-1 never halted"
    );
    let escaped = "&lt;script&gt;alert(1)&lt;/script&gt;";
    for (who, admin) in [("writer", writer.admin), ("mirror-1", mirror.admin)] {
        let dom = rendered(admin).await;
        assert!(
            !dom.contains("<script"),
            "{who}: a script element got in:\n{dom}"
        );
        let row = element(
            &dom,
            r#"class="halted" data-mirror="mirror-1" data-seq="1""#,
        );
        for class in ["writer-outcome", "mirror-outcome"] {
            let cell = element(row, &format!("class=\"{class}\""));
            assert!(cell.contains(escaped), "{who} {class}: {cell}");
        }
    }
    let answer = crate::support::raw(
        writer.public,
        b"POST /articles?slug=<script> HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
}

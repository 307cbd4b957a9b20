//! Pass-through is transparent: the origin gets the client's request, changed only in the
//! documented headers, and nothing is logged.

use bytes::Bytes;
use http_body_util::Full;

use crate::support::node::Opts;
use crate::support::{Client, StubOrigin, TestNode};

/// Headers copyist documents as changed on the way to the origin.
const DOCUMENTED: [&str; 4] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-copyist-request-id",
];

fn without_documented(headers: &[(String, String)]) -> Vec<(String, String)> {
    let mut h: Vec<_> = headers
        .iter()
        .filter(|(k, _)| !DOCUMENTED.contains(&k.as_str()))
        .cloned()
        .collect();
    h.sort();
    h
}

#[tokio::test]
async fn same_request_direct_and_through_copyist_reaches_origin_identical() {
    let origin = StubOrigin::spawn().await;
    let node = TestNode::start(&origin.url()).await;
    let send = |c: Client| async move {
        let req = c
            .request("GET", "/some/page?q=1&b=%20x")
            .header("host", "site.example")
            .header("accept", "text/html")
            .header("cookie", "a=1; b=2")
            .header("user-agent", "t/1")
            .body(Full::<Bytes>::default())
            .unwrap();
        c.send(req).await
    };
    let direct = send(Client::new(origin.addr)).await;
    let proxied = send(node.client()).await;
    assert_eq!(direct.status, proxied.status);
    assert_eq!(direct.body, proxied.body);
    let seen = origin.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].method, seen[1].method);
    assert_eq!(seen[0].target, seen[1].target);
    assert_eq!(
        without_documented(&seen[0].headers),
        without_documented(&seen[1].headers)
    );
    assert_eq!(
        seen[1].header("host"),
        Some("site.example"),
        "original Host kept"
    );
    assert_eq!(seen[1].header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen[1].header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen[1].header("x-forwarded-host"), Some("site.example"));
    assert!(seen[1].header("x-copyist-request-id").is_some());
    assert_eq!(node.last_seq().await, 0, "GET must not be logged");
}

#[tokio::test]
async fn hop_by_hop_spoofed_forwarding_and_copyist_headers_do_not_reach_origin() {
    let origin = StubOrigin::spawn().await;
    let node = TestNode::start(&origin.url()).await;
    let c = node.client();
    let req = c
        .request("GET", "/")
        .header("host", "site.example")
        .header("connection", "X-Secret-Hop")
        .header("x-secret-hop", "1")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("proxy-authorization", "Basic eDp5")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-host", "evil.example")
        .header("x-real-ip", "6.6.6.6")
        .header("forwarded", "for=6.6.6.6")
        .header("x-copyist-seq", "77")
        .header("x-copyist-replay", "1")
        .body(Full::<Bytes>::default())
        .unwrap();
    assert_eq!(c.send(req).await.status, 200);
    let seen = &origin.seen()[0];
    for gone in [
        "x-secret-hop",
        "keep-alive",
        "te",
        "proxy-authorization",
        "x-real-ip",
        "forwarded",
        "x-copyist-seq",
        "x-copyist-replay",
    ] {
        assert_eq!(seen.header(gone), None, "{gone} reached the origin");
    }
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-host"), Some("site.example"));
}

#[tokio::test]
async fn forwarding_headers_from_a_trusted_proxy_are_kept_and_extended() {
    let origin = StubOrigin::spawn().await;
    let opts = Opts {
        public: r#"trusted_proxies = ["127.0.0.1"]"#,
        ..Opts::default()
    };
    let node = TestNode::start_opts(&origin.url(), opts).await;
    let c = node.client();
    let req = c
        .request("GET", "/")
        .header("host", "site.example")
        .header("x-forwarded-for", "203.0.113.5")
        .header("x-forwarded-proto", "https")
        .body(Full::<Bytes>::default())
        .unwrap();
    c.send(req).await;
    let seen = &origin.seen()[0];
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("203.0.113.5, 127.0.0.1")
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
}

#[tokio::test]
async fn large_response_streams_through() {
    let origin = StubOrigin::spawn().await;
    let node = TestNode::start(&origin.url()).await;
    let r = node.client().get("/big/3000000").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 3_000_000);
}

#[tokio::test]
async fn head_and_options_are_never_captured_even_by_a_rule() {
    let origin = StubOrigin::spawn().await;
    let rules = "[[capture.rule]]\nmethod = \"*\"\npath = \"/*\"\naction = \"capture\"\n";
    let node = TestNode::start_opts(
        &origin.url(),
        Opts {
            extra: rules,
            ..Opts::default()
        },
    )
    .await;
    let c = node.client();
    for m in ["HEAD", "OPTIONS"] {
        let r = c
            .send(
                c.request(m, "/x")
                    .header("host", "h")
                    .body(Full::default())
                    .unwrap(),
            )
            .await;
        assert_eq!(r.status, 200, "{m}");
        assert!(r.seq().is_none(), "{m} was captured");
    }
    assert_eq!(node.last_seq().await, 0);
    // The catch-all rule does capture a GET.
    let r = c.get("/x").await;
    assert_eq!(r.seq(), Some(1));
}

#[tokio::test]
async fn origin_down_gives_502_for_reads() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let node = TestNode::start(&format!("http://127.0.0.1:{port}")).await;
    let r = node.client().get("/").await;
    assert_eq!(r.status, 502);
    assert!(r.header("x-copyist-error").is_some());
}

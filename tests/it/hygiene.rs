//! Malformed, oversized and smuggling requests get a clean 4xx and never reach the origin
//! half-read; ambiguous framing is refused or becomes exactly one normalised request.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::node::Opts;
use crate::support::{raw, StubOrigin, TestNode};

fn status_of(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Request smuggling vectors (RELIABILITY.md F1): framing two parsers could read differently.
/// Each hides a second request that only a confused parser would see. Each must be refused, or
/// (hyper's RFC 9112 6.3 handling of CL+TE: Transfer-Encoding wins, Content-Length is dropped,
/// the connection is closed after answering) become exactly one normalised request.
const SMUGGLING: &[&str] = &[
    "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
    "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5c\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n0\r\n\r\n",
    "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 44\r\n\r\nhelloGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
    "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\t\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
    "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:  chunked\r\nTransfer-Encoding: x\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
    "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\nContent-Length: 44\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
    "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
    "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: +44\r\n\r\nhelloGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
    "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5,44\r\n\r\nhelloGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
    "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n Transfer-Encoding: chunked\r\n\r\nhelloGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
    "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding\r\n : chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
    "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\nContent-Length: 44\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
];

#[tokio::test]
async fn smuggling_vectors_are_refused_or_become_exactly_one_request() {
    let origin = StubOrigin::spawn().await;
    let node = TestNode::start(&origin.url()).await;
    let mut refused = 0;
    for (i, vector) in SMUGGLING.iter().enumerate() {
        let before = origin.seen().len();
        let answer = raw(node.public, vector.as_bytes()).await;
        let status = status_of(&answer);
        assert_eq!(
            answer.matches("HTTP/1.1 ").count(),
            1,
            "vector {i}: more than one answer:\n{answer}"
        );
        let reached: Vec<_> = origin.seen()[before..].to_vec();
        if status == 400 || status == 501 {
            refused += 1;
            assert!(
                reached.is_empty(),
                "vector {i}: refused but reached the origin"
            );
        } else {
            assert_eq!(status / 100, 2, "vector {i}:\n{answer}");
            assert_eq!(
                reached.len(),
                1,
                "vector {i}: became {} requests",
                reached.len()
            );
            assert_eq!(reached[0].target, "/a");
            assert!(
                answer.contains("connection: close"),
                "vector {i}: connection kept open"
            );
        }
    }
    assert!(
        origin.seen().iter().all(|s| s.target != "/smuggled"),
        "a smuggled request got through"
    );
    assert!(
        refused >= SMUGGLING.len() - 2,
        "only {refused} vectors refused"
    );
    assert_eq!(
        node.last_seq().await as usize,
        origin.seen().len(),
        "every forwarded write logged once"
    );
}

/// Odd but unambiguous framing (optional whitespace, bare LF line ends, zero-padded length):
/// tolerated, and the origin gets exactly the requests the bytes contain, re-framed cleanly.
const TOLERATED: &[(&str, &[&str])] = &[
    ("POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\t\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /next HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", &["/a", "/next"]),
    ("POST /a HTTP/1.1\nHost: h\nContent-Length: 5\nConnection: close\n\nhello", &["/a"]),
    ("POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 005\r\nConnection: close\r\n\r\nhello", &["/a"]),
];

#[tokio::test]
async fn tolerated_framing_becomes_exactly_the_requests_sent() {
    let origin = StubOrigin::spawn().await;
    let node = TestNode::start(&origin.url()).await;
    for (i, (bytes, targets)) in TOLERATED.iter().enumerate() {
        let before = origin.seen().len();
        let answer = raw(node.public, bytes.as_bytes()).await;
        assert_eq!(
            answer.matches("HTTP/1.1 2").count(),
            targets.len(),
            "vector {i}:\n{answer}"
        );
        let seen: Vec<_> = origin.seen()[before..].to_vec();
        let got: Vec<&str> = seen.iter().map(|s| s.target.as_str()).collect();
        assert_eq!(&got, targets, "vector {i}");
        assert_eq!(seen[0].body, b"hello", "vector {i}: body re-framed wrongly");
        assert_eq!(seen[0].header("content-length"), Some("5"), "vector {i}");
        assert_eq!(seen[0].header("transfer-encoding"), None, "vector {i}");
    }
}

#[tokio::test]
async fn header_floods_get_431_before_the_origin_is_contacted() {
    let origin = StubOrigin::spawn().await;
    let node = TestNode::start(&origin.url()).await;
    let mut many = String::from("GET / HTTP/1.1\r\nHost: h\r\n");
    for i in 0..150 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: h\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let mut summed = String::from("POST /items HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n");
    for i in 0..60 {
        summed.push_str(&format!("X-H{i}: {}\r\n", "b".repeat(2000)));
    }
    summed.push_str("\r\n");
    for (name, req) in [
        ("150 headers", many),
        ("1 MiB header", huge),
        ("120 KB of headers", summed),
    ] {
        let answer = raw(node.public, req.as_bytes()).await;
        assert_eq!(status_of(&answer), 431, "{name}: {answer}");
    }
    assert_eq!(origin.started(), 0);
    assert_eq!(node.last_seq().await, 0);
}

#[tokio::test]
async fn host_attacks_are_refused() {
    let origin = StubOrigin::spawn().await;
    let node = TestNode::start(&origin.url()).await;
    let cases = [
        ("missing Host", "GET / HTTP/1.1\r\n\r\n"),
        (
            "two Hosts",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: evil\r\n\r\n",
        ),
        (
            "absolute form disagrees",
            "GET http://evil/ HTTP/1.1\r\nHost: site\r\n\r\n",
        ),
        ("userinfo", "GET / HTTP/1.1\r\nHost: user@site\r\n\r\n"),
        ("garbage", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n"),
    ];
    for (name, req) in cases {
        let answer = raw(node.public, req.as_bytes()).await;
        assert_eq!(status_of(&answer), 400, "{name}: {answer}");
    }
    assert_eq!(origin.started(), 0);
    // Absolute form with a matching host is fine, and the origin sees that host.
    let answer = raw(
        node.public,
        b"GET http://site/x HTTP/1.1\r\nHost: site\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert_eq!(origin.seen()[0].header("host"), Some("site"));
    assert_eq!(origin.seen()[0].target, "/x");
}

#[tokio::test]
async fn connect_and_trace_are_refused() {
    let origin = StubOrigin::spawn().await;
    let node = TestNode::start(&origin.url()).await;
    let answer = raw(node.public, b"TRACE / HTTP/1.1\r\nHost: h\r\n\r\n").await;
    assert_eq!(status_of(&answer), 405, "{answer}");
    assert_eq!(origin.started(), 0);
}

#[tokio::test]
async fn reserved_prefix_is_answered_by_copyist_and_never_forwarded() {
    let origin = StubOrigin::spawn().await;
    let node = TestNode::start(&origin.url()).await;
    assert_eq!(node.client().get("/.copyist/liveness").await.status, 200);
    assert_eq!(
        node.client()
            .post_form("/.copyist/anything", "a=1")
            .await
            .status,
        404
    );
    assert_eq!(origin.started(), 0);
    assert_eq!(node.last_seq().await, 0);
}

#[tokio::test]
async fn slow_headers_are_cut_off_by_the_header_timeout() {
    let origin = StubOrigin::spawn().await;
    let opts = Opts {
        public: "header_read_timeout = \"300ms\"",
        ..Opts::default()
    };
    let node = TestNode::start_opts(&origin.url(), opts).await;
    let mut s = tokio::net::TcpStream::connect(node.public).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n").await.unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    assert!(
        closed.is_ok(),
        "connection still open after 10 s of slow headers"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(origin.started(), 0);
}

#[tokio::test]
async fn a_stalled_body_gets_408_and_never_reaches_the_origin() {
    let origin = StubOrigin::spawn().await;
    let opts = Opts {
        public: "body_read_timeout = \"300ms\"",
        ..Opts::default()
    };
    let node = TestNode::start_opts(&origin.url(), opts).await;
    let mut s = tokio::net::TcpStream::connect(node.public).await.unwrap();
    s.write_all(b"POST /items HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nhalf")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    let answer = String::from_utf8_lossy(&buf);
    assert_eq!(status_of(&answer), 408, "{answer}");
    assert_eq!(origin.started(), 0);
    assert_eq!(node.last_seq().await, 0);
}

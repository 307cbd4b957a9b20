//! Micro-benchmarks of the per-request hot paths: request-head checks, classification, header
//! rewriting, and the log's entry encoding (issue 6).
//!
//! Two ways to run them:
//! * `cargo bench --bench hot_paths`: criterion, wall-clock time per operation (noisy on a
//!   shared machine).
//! * `scripts/bench-micro.sh`: each benchmark under `valgrind --tool=callgrind`, instructions
//!   per operation. Repeatable to a few instructions, so a regression shows as a number. The
//!   script sets `COPYIST_BENCH_CALLGRIND=NAME` and `COPYIST_BENCH_ITERS=N`; this binary then
//!   runs only `NAME`, `N` times, inside `callgrind_loop` (the only function callgrind counts).

use std::hint::black_box;
use std::net::{IpAddr, SocketAddr};

use criterion::{BatchSize, Criterion};
use http::{Method, Request, Version};

use copyist::bench_api;
use copyist::blobs::BlobHash;
use copyist::config::{PathPattern, PublicConfig, Rule, RuleAction};
use copyist::log::{BodyRef, Entry, EntryState, Outcome, RequestRecord, Seq};
use copyist::proxy::classify::{classify, Route};
use copyist::proxy::headers;

/// What a current desktop browser sends for a page view on a site it has a session with.
const BROWSER_HEADERS: &[(&str, &str)] = &[
    ("host", "www.example.org"),
    ("connection", "keep-alive"),
    ("cache-control", "max-age=0"),
    ("sec-ch-ua", "\"Chromium\";v=\"131\", \"Not_A Brand\";v=\"24\""),
    ("sec-ch-ua-mobile", "?0"),
    ("sec-ch-ua-platform", "\"Linux\""),
    ("upgrade-insecure-requests", "1"),
    ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"),
    ("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"),
    ("sec-fetch-site", "same-origin"),
    ("sec-fetch-mode", "navigate"),
    ("sec-fetch-user", "?1"),
    ("sec-fetch-dest", "document"),
    ("referer", "https://www.example.org/articles/2024/11/"),
    ("accept-encoding", "gzip, deflate, br, zstd"),
    ("accept-language", "en-GB,en;q=0.9,de;q=0.8"),
    ("cookie", "wordpress_logged_in_5c9e=editor%7C1732300000%7Cq8lPz0dWk3%7C9f2c1b; wp-settings-1=libraryContent%3Dbrowse; wp-settings-time-1=1732200000; _pk_id.1.1fff=3c2b8a0e5d1f4a2b.1732100000."),
];

/// The browser's request head, as hyper hands it to the proxy.
fn browser_request() -> http::request::Parts {
    let mut b = Request::builder()
        .method(Method::GET)
        .uri("/articles/2024/11/a-long-slug-for-a-story?page=2")
        .version(Version::HTTP_11);
    for (k, v) in BROWSER_HEADERS {
        b = b.header(*k, *v);
    }
    b.body(()).map(|r| r.into_parts().0).expect("valid request")
}

/// Ten `[[capture.rule]]`s of the kind a WordPress or Drupal site configures.
fn rules() -> Vec<Rule> {
    let rule = |method: Option<&str>, path: &str, action| Rule {
        method: method.map(|m| m.parse().expect("method")),
        path: PathPattern::new(path).expect("pattern"),
        action,
    };
    vec![
        rule(Some("POST"), "/wp-cron.php", RuleAction::Pass),
        rule(Some("POST"), "/xmlrpc.php", RuleAction::Pass),
        rule(Some("POST"), "/wp-json/*/heartbeat", RuleAction::Pass),
        rule(Some("GET"), "/wp-login.php*", RuleAction::Capture),
        rule(Some("GET"), "/user/logout*", RuleAction::Capture),
        rule(Some("POST"), "/search*", RuleAction::Pass),
        rule(None, "/api/v1/metrics*", RuleAction::Pass),
        rule(Some("GET"), "/user/*/cancel/confirm/*", RuleAction::Capture),
        rule(
            Some("POST"),
            "/wp-admin/admin-ajax.php",
            RuleAction::Capture,
        ),
        rule(Some("GET"), "/visit*", RuleAction::Capture),
    ]
}

/// A settled captured form POST as the writer stores it (inline body of 320 bytes).
fn entry() -> Entry {
    let headers = BROWSER_HEADERS
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .chain([
            (
                "content-type".to_string(),
                b"application/x-www-form-urlencoded".to_vec(),
            ),
            ("x-forwarded-for".to_string(), b"192.0.2.7".to_vec()),
            ("x-forwarded-proto".to_string(), b"https".to_vec()),
            (
                "x-copyist-request-id".to_string(),
                b"writer-193a1b2c3d4-48213".to_vec(),
            ),
        ])
        .collect();
    Entry {
        seq: Seq(48_213),
        state: EntryState::Accepted,
        request: RequestRecord {
            method: "POST".into(),
            target: "/wp-admin/post.php".into(),
            version: "HTTP/1.1".into(),
            headers,
            client_addr: "192.0.2.7".into(),
            request_id: "writer-193a1b2c3d4-48213".into(),
            received_unix_ms: 1_732_300_000_123,
            body: BodyRef::Inline(
                b"post_ID=42&action=editpost&_wpnonce=9f2c1b0a77&post_title=Hello&content="
                    .repeat(4),
            ),
            body_len: 320,
            body_hash: BlobHash([7; 32]),
            multipart: None,
        },
        outcome: Some(Outcome {
            status: 302,
            location: Some(
                "https://www.example.org/wp-admin/post.php?post=42&action=edit&message=1".into(),
            ),
            set_cookies: vec!["wp-saving-post=42-saved; path=/".into()],
            body_digest: BlobHash([9; 32]),
            body_len: 0,
            duration_us: 48_211,
            error: None,
            fields: Vec::new(),
            masked_digest: None,
        }),
        settled_unix_ms: Some(1_732_300_000_171),
        writer_state: None,
        mirror_outcome: None,
        halt: None,
        audit: Vec::new(),
    }
}

/// Everything a benchmark needs, built once outside the measured loop.
struct Fixture {
    head: http::request::Parts,
    public: PublicConfig,
    rules: Vec<Rule>,
    peer: IpAddr,
    entry: Entry,
    encoded: Vec<u8>,
}

impl Fixture {
    fn new() -> Fixture {
        let entry = entry();
        let encoded = bench_api::encode_entry(&entry).expect("encode");
        Fixture {
            head: browser_request(),
            public: PublicConfig::new(SocketAddr::from(([127, 0, 0, 1], 8080))),
            rules: rules(),
            peer: IpAddr::from([192, 0, 2, 7]),
            entry,
            encoded,
        }
    }
}

/// One benchmark: a name and one operation. Operations that edit a header map get a fresh
/// clone each time; `header_map_clone` measures that clone alone.
type Op = fn(&Fixture);

const BENCHES: &[(&str, Op)] = &[
    ("header_map_clone", |f| {
        black_box(f.head.headers.clone());
    }),
    ("check_head", |f| {
        black_box(bench_api::check_head(black_box(&f.head), &f.public));
    }),
    ("classify_get_no_rule_matches", |f| {
        let route = classify(&Method::GET, black_box(f.head.uri.path()), &f.rules);
        assert_eq!(black_box(route), Route::PassThrough);
    }),
    ("classify_post_ninth_rule", |f| {
        let path = black_box("/wp-admin/admin-ajax.php");
        assert_eq!(classify(&Method::POST, path, &f.rules), Route::Capture);
    }),
    ("strip_hop_by_hop", |f| {
        let mut h = f.head.headers.clone();
        headers::strip_hop_by_hop(&mut h);
        black_box(h);
    }),
    ("strip_copyist", |f| {
        let mut h = f.head.headers.clone();
        headers::strip_copyist(&mut h);
        black_box(h);
    }),
    ("set_forwarded", |f| {
        let mut h = f.head.headers.clone();
        black_box(headers::set_forwarded(&mut h, f.peer, false, &[]));
        black_box(h);
    }),
    ("origin_headers", |f| {
        let mut h = f.head.headers.clone();
        let host = h.get(http::header::HOST).cloned();
        let id = "bench-193a1b2c3d4-48213";
        bench_api::prepare_origin_headers(&mut h, Version::HTTP_11, host, f.peer, &[], id);
        black_box(h);
    }),
    ("entry_encode", |f| {
        black_box(bench_api::encode_entry(black_box(&f.entry)).expect("encode"));
    }),
    ("entry_decode", |f| {
        black_box(bench_api::decode_entry(black_box(&f.encoded)).expect("decode"));
    }),
];

/// The measured loop under callgrind (`--toggle-collect=*callgrind_loop*`): only what runs
/// inside it is counted, so setup and process start are not.
#[inline(never)]
fn callgrind_loop(op: Op, f: &Fixture, iters: u64) {
    for _ in 0..iters {
        op(black_box(f));
    }
}

fn criterion_benches(c: &mut Criterion) {
    let f = Fixture::new();
    for (name, op) in BENCHES {
        c.bench_function(name, |b| {
            b.iter_batched(|| (), |()| op(black_box(&f)), BatchSize::SmallInput)
        });
    }
    // Header rewriting without the clone in the measurement.
    c.bench_function("origin_headers_without_clone", |b| {
        b.iter_batched(
            || f.head.headers.clone(),
            |mut h| {
                let host = h.get(http::header::HOST).cloned();
                let id = "bench-193a1b2c3d4-48213";
                bench_api::prepare_origin_headers(&mut h, Version::HTTP_11, host, f.peer, &[], id);
                h
            },
            BatchSize::SmallInput,
        )
    });
}

fn main() {
    // Sanity: the fixtures are what the names say (a broken fixture would measure an error path).
    let f = Fixture::new();
    assert!(bench_api::check_head(&f.head, &f.public).is_some());
    assert_eq!(
        bench_api::decode_entry(&f.encoded).expect("decode"),
        f.entry
    );

    if let Ok(name) = std::env::var("COPYIST_BENCH_CALLGRIND") {
        let iters = std::env::var("COPYIST_BENCH_ITERS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(10_000);
        if name == "list" {
            for (name, _) in BENCHES {
                println!("{name}");
            }
            return;
        }
        let Some((_, op)) = BENCHES.iter().find(|(n, _)| *n == name) else {
            eprintln!("no benchmark named {name}");
            std::process::exit(2);
        };
        callgrind_loop(*op, &f, iters);
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    criterion_benches(&mut c);
    c.final_summary();
}

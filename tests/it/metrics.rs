//! `GET /metrics` on the admin listener: the counters move with the traffic, the exposition
//! is well formed, and a writer sees each mirror's position.

use std::collections::HashMap;

use http_body_util::Full;

use crate::assert_eventually;
use crate::support::cluster::TestCluster;
use crate::support::{Client, StubOrigin, TestNode};

/// A scrape: the sample values by series (`name{labels}` exactly as rendered).
struct Scrape {
    text: String,
    samples: HashMap<String, f64>,
}

impl Scrape {
    fn get(&self, series: &str) -> f64 {
        *self
            .samples
            .get(series)
            .unwrap_or_else(|| panic!("no sample {series} in\n{}", self.text))
    }
    fn has(&self, series: &str) -> bool {
        self.samples.contains_key(series)
    }
}

/// Scrapes `/metrics` on an admin listener and checks the text format's shape on the way: a
/// `# HELP` and `# TYPE` for every family, before its samples.
async fn scrape(admin: &Client) -> Scrape {
    let r = admin.get("/metrics").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let ct = r.header("content-type").unwrap_or("");
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let text = r.text();
    let mut helped = Vec::new();
    let mut typed = Vec::new();
    let mut samples = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            helped.push(rest.split(' ').next().unwrap().to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            typed.push(rest.split(' ').next().unwrap().to_string());
        } else {
            let (series, value) = line.rsplit_once(' ').expect("`series value`");
            let name = series.split('{').next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|f| typed.iter().any(|t| t == f))
                })
                .unwrap_or(name);
            assert_eq!(
                typed.last().map(String::as_str),
                Some(family),
                "{line}: not after its own # TYPE"
            );
            assert!(helped.iter().any(|h| h == family), "{family} has no # HELP");
            let value = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("{line}")),
            };
            samples.insert(series.to_string(), value);
        }
    }
    assert_eq!(helped, typed, "every family has HELP and TYPE, in order");
    Scrape { text, samples }
}

#[tokio::test]
async fn a_get_and_a_post_move_the_counters() {
    let origin = StubOrigin::spawn().await;
    let node = TestNode::start(&origin.url()).await;
    // No scrape before the traffic: the blob store's size would then be cached for a minute.
    let c = node.client();
    assert_eq!(c.get("/page").await.status, 200);
    // Above inline_max (16 KiB): the body becomes a blob.
    let big = vec![b'x'; 20_000];
    let r = c.post("/items", "application/octet-stream", big).await;
    assert_eq!(r.seq(), Some(1));
    assert_eq!(c.get("/.copyist/liveness").await.status, 200);
    let trace = c.request("TRACE", "/").body(Full::default()).unwrap();
    assert_eq!(c.send(trace).await.status, 405);

    let m = scrape(&node.admin_client()).await;
    assert_eq!(m.get(r#"copyist_requests_total{action="pass"}"#), 1.0);
    assert_eq!(m.get(r#"copyist_requests_total{action="capture"}"#), 1.0);
    assert_eq!(m.get(r#"copyist_requests_total{action="reserved"}"#), 1.0);
    assert_eq!(m.get(r#"copyist_requests_total{action="refused"}"#), 1.0);
    assert_eq!(m.get(r#"copyist_requests_total{action="error"}"#), 0.0);
    assert_eq!(m.get("copyist_last_seq"), 1.0);
    assert_eq!(m.get("copyist_capture_seconds_count"), 1.0);
    assert_eq!(m.get(r#"copyist_capture_seconds_bucket{le="+Inf"}"#), 1.0);
    assert!(m.get("copyist_capture_seconds_sum") > 0.0);
    for (kind, n) in [("pass", 1.0), ("capture", 1.0), ("replay", 0.0)] {
        let series = format!(r#"copyist_origin_seconds_count{{path_kind="{kind}"}}"#);
        assert_eq!(m.get(&series), n, "{kind}");
    }
    assert!(m.get("copyist_blob_bytes") >= 20_000.0);
    assert_eq!(m.get("copyist_fail_closed"), 0.0);
    assert_eq!(m.get("copyist_halted"), 0.0);
    assert_eq!(m.get("copyist_config_reload_success"), 1.0);
    assert!(m.get("copyist_config_reload_timestamp_seconds") > 1.6e9);
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        m.get(&format!(
            r#"copyist_build_info{{version="{version}",commit=""}}"#
        )),
        1.0
    );
    // A writer without mirrors has neither a mirror's applied seq nor per-mirror series.
    assert!(!m.has("copyist_applied_seq"));
    assert!(!m.text.contains("copyist_mirror_"));
}

#[tokio::test]
async fn a_dead_origin_counts_as_errors() {
    // Nothing listens on the discard port.
    let node = TestNode::start("http://127.0.0.1:9").await;
    let c = node.client();
    assert_eq!(c.get("/").await.status, 502);
    assert_eq!(c.post_form("/items", "a=1").await.status, 502);
    let m = scrape(&node.admin_client()).await;
    assert_eq!(m.get(r#"copyist_requests_total{action="error"}"#), 2.0);
    assert_eq!(m.get(r#"copyist_requests_total{action="pass"}"#), 0.0);
    // The entry exists (rejected: the origin provably never saw it), but no origin time.
    assert_eq!(m.get("copyist_last_seq"), 1.0);
    assert_eq!(
        m.get(r#"copyist_origin_seconds_count{path_kind="capture"}"#),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_sees_each_mirror_catch_up() {
    let cluster = TestCluster::start(1).await;
    let w = cluster.writer.client();
    for i in 0..3 {
        let r = w
            .post_form("/articles", &format!("title=m{i}&body=b"))
            .await;
        assert_eq!(r.status, 303, "{}", r.text());
    }
    let writer_admin = cluster.writer.node.admin_client();
    let last = scrape(&writer_admin).await.get("copyist_last_seq");
    assert_eq!(last, 3.0);
    let applied = r#"copyist_mirror_applied_seq{mirror="mirror-1"}"#;
    assert_eventually!(
        scrape(&writer_admin).await.get(applied) == last,
        "mirror-1 never reached the writer's last seq in the writer's metrics"
    );
    let m = scrape(&writer_admin).await;
    assert_eq!(
        m.get(r#"copyist_mirror_lag_entries{mirror="mirror-1"}"#),
        0.0
    );
    assert_eq!(
        m.get(r#"copyist_mirror_lag_seconds{mirror="mirror-1"}"#),
        0.0
    );
    let state = |s: &str| {
        m.get(&format!(
            r#"copyist_mirror_state{{mirror="mirror-1",state="{s}"}}"#
        ))
    };
    assert_eq!(state("streaming"), 1.0, "{}", m.text);
    assert_eq!(state("halted"), 0.0);
    assert_eq!(state("connecting"), 0.0);

    let mirror = scrape(&cluster.mirrors[0].node.admin_client()).await;
    assert_eq!(mirror.get("copyist_applied_seq"), 3.0);
    assert_eq!(mirror.get("copyist_halted"), 0.0);
    assert_eq!(mirror.get("copyist_halts_total"), 0.0);
    assert_eq!(
        mirror.get(r#"copyist_origin_seconds_count{path_kind="replay"}"#),
        3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_halt_and_a_skip_show_on_both_sides() {
    let cluster = TestCluster::start(1).await;
    let m1 = &cluster.mirrors[0];
    m1.dump().await; // the fixture creates its schema on first use
    let db = m1.cms.dir.path().join("cms.sqlite");
    let code = format!(
        "$db = new PDO('sqlite:{}'); $db->exec(\"INSERT INTO articles (title, body) VALUES ('hand', 'edit')\");",
        db.display()
    );
    let out = std::process::Command::new("php")
        .arg("-r")
        .arg(code)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // The mirror's CMS now gives the next article another id: it halts at seq 1.
    let w = cluster.writer.client();
    assert_eq!(w.post_form("/articles", "title=one").await.seq(), Some(1));
    cluster.wait_halted(0).await;
    let mirror_admin = m1.node.admin_client();
    let m = scrape(&mirror_admin).await;
    assert_eq!(m.get("copyist_halted"), 1.0);
    assert_eq!(m.get("copyist_halts_total"), 1.0);
    assert_eq!(m.get("copyist_applied_seq"), 0.0);
    let writer_admin = cluster.writer.node.admin_client();
    let halted = r#"copyist_mirror_state{mirror="mirror-1",state="halted"}"#;
    assert_eventually!(
        scrape(&writer_admin).await.get(halted) == 1.0,
        "the writer never showed mirror-1 halted"
    );
    assert_eq!(
        scrape(&writer_admin)
            .await
            .get(r#"copyist_mirror_lag_entries{mirror="mirror-1"}"#),
        1.0
    );

    let skip = r#"{"reason": "hand edit kept", "seq": 1}"#;
    let r = writer_admin
        .post("/api/v1/mirrors/mirror-1/skip", "application/json", skip)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let m = scrape(&mirror_admin).await;
    assert_eq!(m.get("copyist_skips_total"), 1.0);
    assert_eq!(m.get("copyist_halted"), 0.0);
    assert_eq!(m.get("copyist_applied_seq"), 1.0);
    assert_eventually!(
        scrape(&writer_admin).await.get(halted) == 0.0,
        "the writer never saw mirror-1 resume"
    );
}

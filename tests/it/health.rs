//! Health checks for load balancers: every endpoint's answer across states (caught up,
//! lagging, halted, draining, origin down, log unwritable), on the admin listener and under
//! `/.copyist/` on the public one, for GET, HEAD and OPTIONS.

use std::net::SocketAddr;

use serde_json::Value;

use crate::assert_eventually;
use crate::support::cluster::{Certs, ClusterOpts, TestCluster};
use crate::support::node::cli_async as cli;
use crate::support::node::Opts;
use crate::support::{Client, PhpCms, StubOrigin, TestNode};

/// Probes often, so "after the next probe" is quick; a generous timeout, so a busy test machine
/// does not fail a probe (a refused connection, as for a dead CMS, fails at once anyway).
const FAST: &str = "[health]\nprobe_interval = \"50ms\"\nprobe_timeout = \"5s\"\n";

/// A health endpoint's status and JSON body; every answer must be `no-store`.
async fn check(addr: SocketAddr, path: &str) -> (u16, Value) {
    let r = Client::new(addr).get(path).await;
    assert_eq!(r.header("cache-control"), Some("no-store"), "{path}");
    let body = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("{path} answered {}: {} ({e})", r.status, r.text()));
    (r.status, body)
}

async fn status(addr: SocketAddr, path: &str) -> u16 {
    check(addr, path).await.0
}

async fn writer_node(origin: &str, extra: &str) -> TestNode {
    TestNode::start_opts(
        origin,
        Opts {
            extra,
            ..Opts::default()
        },
    )
    .await
}

/// A writer and one mirror, each before its own PHP CMS, probing fast.
async fn cluster() -> TestCluster {
    TestCluster::start_opts(ClusterOpts {
        mirrors: 1,
        extra: FAST.into(),
        ..ClusterOpts::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caught_up_writer_and_mirror_answer_each_endpoint_by_role() {
    let c = cluster().await;
    let (w, m) = (c.writer.node.admin, c.mirrors[0].node.admin);
    let r = c.writer.client().post_form("/articles", "title=a").await;
    assert_eq!(r.seq(), Some(1));
    // 200, not just applied_seq: the body says 1 as soon as the entry is applied, which can be
    // before the mirror's probe has heard from its writer (started after the mirror).
    assert_eventually!(
        matches!(check(m, "/mirror?lag=0").await, (200, body) if body["applied_seq"] == 1),
        "mirror never caught up"
    );
    let cases = [
        (w, "/health", 200, None),
        (w, "/readiness", 200, None),
        (w, "/writer", 200, None),
        (w, "/mirror", 503, Some("this node is the writer")),
        (w, "/read-only?lag=0", 200, None),
        (m, "/health", 200, None),
        (m, "/readiness?lag=0", 200, None),
        (m, "/writer", 503, Some("this node is a mirror")),
        (m, "/mirror", 200, None),
        (m, "/mirror?lag=0", 200, None),
        (m, "/read-only?lag=1s", 200, None),
        (m, "/read-only?lag=soon", 503, None),
    ];
    for (addr, path, want, reason) in cases {
        let (got, body) = check(addr, path).await;
        assert_eq!(got, want, "{path} on {addr}: {body}");
        if let Some(reason) = reason {
            assert_eq!(body["reason"], reason, "{path}");
        }
    }
    let (_, body) = check(m, "/read-only?lag=soon").await;
    assert!(
        body["reason"].as_str().unwrap().starts_with("invalid lag"),
        "{body}"
    );

    let (_, body) = check(m, "/mirror").await;
    assert_eq!(body["node"], "mirror-1");
    assert_eq!(body["role"], "mirror");
    assert_eq!(body["healthy"], true);
    assert_eq!(body["draining"], false);
    assert_eq!(body["halted"], Value::Null);
    assert_eq!(body["applied_seq"], 1);
    assert_eq!(body["last_seq"], 1);
    assert_eq!(body["lag_entries"], 0);
    assert_eq!(body["lag_seconds"], 0.0);
    assert_eq!(body["origin"]["ok"], true);
    assert!(body["origin"]["checked_ms_ago"].as_u64().unwrap() < 5_000);
    assert_eq!(body["origin"]["error"], Value::Null);
    assert_eq!(body["reason"], Value::Null);
    let (_, body) = check(w, "/writer").await;
    assert_eq!(
        (body["role"].as_str(), body["last_seq"].as_u64()),
        (Some("writer"), Some(1))
    );
    assert_eq!(body["lag_entries"], 0);

    let live = Client::new(m).get("/liveness").await;
    assert_eq!((live.status, live.text().as_str()), (200, "ok\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_mirror_fails_a_tight_lag_limit_and_passes_a_loose_one() {
    let c = cluster().await;
    let m = c.mirrors[0].node.admin;
    // The mirror's probe must have seen it caught up once for lag in seconds to be known.
    assert_eventually!(
        status(m, "/mirror?lag=0s").await == 200,
        "mirror never ready"
    );
    let pause = Client::new(c.writer.node.admin)
        .post(
            "/api/v1/mirrors/mirror-1/pause",
            "application/json",
            r#"{"reason":"lag test"}"#,
        )
        .await;
    assert_eq!(pause.status, 200, "{}", pause.text());
    for title in ["a", "b"] {
        let r = c
            .writer
            .client()
            .post_form("/articles", &format!("title={title}"))
            .await;
        assert_eq!(r.status, 303);
    }
    assert_eventually!(
        check(m, "/mirror").await.1["lag_entries"] == 2,
        "the mirror never learnt the writer's position"
    );
    let (code, body) = check(m, "/mirror?lag=1").await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["reason"], "lag of 2 entries exceeds 1");
    assert_eq!(
        (body["applied_seq"].as_u64(), body["last_seq"].as_u64()),
        (Some(0), Some(2))
    );
    assert!(body["lag_seconds"].as_f64().unwrap() > 0.0, "{body}");
    assert_eq!(status(m, "/readiness?lag=1").await, 503);
    assert_eq!(status(m, "/read-only?lag=1").await, 503);
    assert_eq!(status(m, "/mirror?lag=1000").await, 200);
    assert_eq!(status(m, "/read-only?lag=2").await, 200);
    assert_eq!(status(m, "/mirror?lag=1h").await, 200);
    assert_eq!(status(m, "/mirror").await, 200, "no limit, no lag check");
    let (code, body) = check(m, "/mirror?lag=1ms").await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body["reason"].as_str().unwrap().ends_with("exceeds 1ms"),
        "{body}"
    );

    let resume = Client::new(c.writer.node.admin)
        .post(
            "/api/v1/mirrors/mirror-1/resume",
            "application/json",
            r#"{"reason":"lag test over"}"#,
        )
        .await;
    assert_eq!(resume.status, 200);
    assert_eventually!(
        status(m, "/mirror?lag=0").await == 200,
        "the mirror never caught up again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_halted_mirror_leaves_rotation_with_its_halt_in_the_body() {
    let cluster = cluster().await;
    let (w, m) = (cluster.writer.node.admin, cluster.mirrors[0].node.admin);
    assert_eventually!(status(m, "/mirror").await == 200, "mirror never ready");
    cluster.mirrors[0]
        .cms
        .sql("INSERT INTO articles (title, body) VALUES ('hand', 'edit')");
    let r = cluster
        .writer
        .client()
        .post_form("/articles", "title=x")
        .await;
    assert_eq!(r.seq(), Some(1));
    cluster.wait_halted(0).await;
    let (code, body) = check(m, "/mirror").await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["halted"]["seq"], 1);
    assert_eq!(body["halted"]["reason"], "location_mismatch");
    assert_eq!(body["reason"], "halted at entry 1 (location_mismatch)");
    assert_eq!(status(m, "/readiness").await, 503);
    assert_eq!(status(m, "/read-only").await, 503);
    assert_eq!(status(m, "/health").await, 200, "halted is not unhealthy");
    assert_eq!(status(w, "/writer").await, 200);
    assert_eq!(status(w, "/read-only").await, 200);
}

#[tokio::test]
async fn a_mirror_that_cannot_reach_its_writer_has_unknown_lag() {
    let origin = StubOrigin::spawn().await;
    let certs = Certs::new(&["writer", "mirror-1"]);
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let extra = format!(
        "{}\n[writer]\nname = \"writer\"\nurl = \"https://{closed}\"\n\n{FAST}",
        certs.replication("mirror-1")
    );
    let opts = Opts {
        name: "mirror-1",
        role: "mirror",
        extra: &extra,
        ..Opts::default()
    };
    let node = TestNode::start_opts(&origin.url(), opts).await;
    let m = node.admin;
    assert_eventually!(
        status(m, "/mirror").await == 200,
        "no lag limit, no writer needed"
    );
    for path in ["/mirror?lag=1000", "/readiness?lag=1h", "/read-only?lag=0"] {
        let (code, body) = check(m, path).await;
        assert_eq!(code, 503, "{path}: {body}");
        assert_eq!(body["reason"], "writer unreachable; lag unknown", "{path}");
        let lag = (
            &body["last_seq"],
            &body["lag_entries"],
            &body["lag_seconds"],
        );
        assert_eq!(lag, (&Value::Null, &Value::Null, &Value::Null), "{path}");
    }
    assert_eq!(status(m, "/read-only").await, 200);
    assert_eq!(
        status(m, "/health").await,
        200,
        "the writer is not this node's health"
    );
}

#[tokio::test]
async fn drain_and_undrain_through_the_cli_while_traffic_keeps_flowing() {
    let origin = StubOrigin::spawn().await;
    let node = writer_node(&origin.url(), FAST).await;
    let a = node.admin;
    assert_eventually!(status(a, "/readiness").await == 200, "never ready");

    let (code, out, err) = cli(&node.config_path(), &["drain", "--reason", "kernel update"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("draining"), "{out}");
    let (code, body) = check(a, "/readiness").await;
    assert_eq!(code, 503);
    assert_eq!(body["draining"], true);
    let reason = body["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("draining: kernel update (by "),
        "{reason}"
    );
    assert_eq!(status(a, "/writer").await, 503);
    assert_eq!(status(a, "/read-only").await, 503);
    assert_eq!(status(a, "/health").await, 200, "draining is not unhealthy");
    // `copyist status` says so, and why.
    let (code, out, err) = cli(&node.config_path(), &["status"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("health      draining\n"), "{out}");
    assert!(out.contains("draining    yes: kernel update (by "), "{out}");
    let (code, out, err) = cli(&node.config_path(), &["status", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let json: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["health"]["state"], "draining", "{json}");
    assert!(
        json["health"]["drain"]
            .as_str()
            .unwrap()
            .starts_with("kernel update (by "),
        "{json}"
    );
    // Traffic is not refused: only the checks change.
    let c = node.client();
    assert_eq!(c.get("/page").await.status, 200);
    assert_eq!(c.post_form("/items", "x=1").await.seq(), Some(1));

    let (code, _, err) = cli(&node.config_path(), &["undrain", "--reason", ""]).await;
    assert_eq!(code, 1, "an empty reason is refused");
    assert!(err.contains("reason is required"), "{err}");
    let (code, out, err) = cli(&node.config_path(), &["undrain", "--reason", "done"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(status(a, "/readiness").await, 200);
    assert_eq!(check(a, "/writer").await.1["draining"], false);
    let (_, out, _) = cli(&node.config_path(), &["status"]).await;
    assert!(out.contains("health      healthy\n"), "{out}");
    assert!(out.contains("draining    no\n"), "{out}");
}

#[tokio::test]
async fn a_maintenance_file_drains_the_node_with_the_configured_404() {
    let origin = StubOrigin::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("maintenance");
    let extra = format!(
        "{FAST}maintenance_file = \"{}\"\ndrain_status = 404\n",
        file.display()
    );
    let node = writer_node(&origin.url(), &extra).await;
    let a = node.admin;
    assert_eventually!(status(a, "/readiness").await == 200, "never ready");

    std::fs::write(&file, b"").unwrap();
    assert_eventually!(
        status(a, "/readiness").await == 404,
        "the maintenance file never drained the node"
    );
    let (_, body) = check(a, "/writer").await;
    let expected = format!("draining: maintenance file {} exists", file.display());
    assert_eq!(body["reason"], expected.as_str());
    assert_eq!(status(a, "/writer").await, 404);
    assert_eq!(status(a, "/read-only").await, 404);
    assert_eq!(
        status(a, "/mirror").await,
        503,
        "404 only when draining is the sole reason"
    );
    assert_eq!(status(a, "/health").await, 200);
    assert_eq!(status(node.public, "/.copyist/readiness").await, 404);
    let (_, out, _) = cli(&node.config_path(), &["status"]).await;
    let why = format!(
        "draining    yes: maintenance file {} exists\n",
        file.display()
    );
    assert!(out.contains(&why), "{out}");
    assert_eq!(node.client().get("/page").await.status, 200);

    std::fs::remove_file(&file).unwrap();
    assert_eventually!(
        status(a, "/readiness").await == 200,
        "removing the maintenance file never undrained the node"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_goes_down_makes_the_node_unhealthy_after_the_next_probe() {
    let cms = PhpCms::start();
    let node = writer_node(&cms.url(), FAST).await;
    let a = node.admin;
    assert_eventually!(status(a, "/health").await == 200, "never healthy");
    let cms_addr = cms.addr.to_string();
    drop(cms);
    assert_eventually!(
        status(a, "/health").await == 503,
        "the node stayed healthy with its CMS gone"
    );
    let (_, body) = check(a, "/health").await;
    assert_eq!(body["healthy"], false);
    assert_eq!(body["origin"]["ok"], false);
    assert!(body["origin"]["error"].is_string(), "{body}");
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .starts_with("origin down: "),
        "{body}"
    );
    for path in ["/readiness", "/writer", "/read-only"] {
        assert_eq!(status(a, path).await, 503, "{path}");
    }
    assert_eq!(Client::new(a).get("/liveness").await.status, 200);

    // The public body says the origin is down, but not the admin body's error text (it names
    // the CMS's internal address) nor the node's name or sequence numbers.
    // A refused connection names the address (the first failure may be a reset instead).
    assert_eventually!(
        check(a, "/health").await.1["origin"]["error"]
            .as_str()
            .is_some_and(|e| e.contains(&cms_addr)),
        "the admin body never named the CMS's address"
    );
    let (code, public) = check(node.public, "/.copyist/health").await;
    assert_eq!(code, 503);
    assert_eq!(
        public,
        serde_json::json!({"role": "writer", "ok": false, "state": "origin-down",
                           "draining": false, "reason": "unhealthy"})
    );
    let raw = Client::new(node.public)
        .get("/.copyist/health")
        .await
        .text();
    for secret in [
        cms_addr.as_str(),
        "test-writer",
        "seq",
        "connect",
        "origin down",
    ] {
        assert!(
            !raw.contains(secret),
            "{secret:?} in the public body: {raw}"
        );
    }
}

#[tokio::test]
async fn any_probe_answer_below_500_counts_as_up() {
    let origin = StubOrigin::spawn().await;
    let up = writer_node(
        &origin.url(),
        &format!("{FAST}probe_path = \"/status/404\"\n"),
    )
    .await;
    let down = writer_node(
        &origin.url(),
        &format!("{FAST}probe_path = \"/status/500\"\n"),
    )
    .await;
    assert_eventually!(status(up.admin, "/health").await == 200, "404 is up");
    assert_eventually!(
        check(down.admin, "/health").await.1["origin"]["checked_ms_ago"].is_u64(),
        "never probed"
    );
    let (code, body) = check(down.admin, "/health").await;
    assert_eq!(code, 503);
    assert_eq!(
        body["origin"]["error"],
        "GET /status/500 answered 500 Internal Server Error"
    );
    // Before its first probe a node is not yet known healthy; a closed port never becomes so.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let node = writer_node(&format!("http://{closed}"), FAST).await;
    assert_eventually!(
        check(node.admin, "/health").await.1["origin"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot connect to origin")),
        "a closed origin port was not reported"
    );
    assert_eq!(status(node.admin, "/health").await, 503);
}

#[tokio::test]
async fn an_unwritable_log_makes_the_node_unhealthy() {
    let origin = StubOrigin::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let _disk = crate::support::SmallDisk::mount(&dir.path().join("data"), "8m");
    let opts = Opts {
        extra: FAST,
        ..Opts::default()
    };
    let node = TestNode::start_in(dir, &origin.url(), opts).await;
    assert_eventually!(status(node.admin, "/health").await == 200, "never healthy");
    let big = vec![7u8; 12 << 20];
    let r = node
        .client()
        .post("/upload", "application/octet-stream", big)
        .await;
    assert_eq!(r.status, 503, "{}", r.text());
    let (code, body) = check(node.admin, "/health").await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["healthy"], false);
    assert_eq!(body["state"], "fail-closed");
    assert_eq!(body["origin"]["ok"], true, "the origin is fine");
    assert_eq!(
        body["reason"],
        "log not writable (fail-closed until restart)"
    );
    let (code, body) = check(node.public, "/.copyist/health").await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(
        (&body["ok"], &body["state"], &body["reason"]),
        (
            &Value::Bool(false),
            &"fail-closed".into(),
            &"unhealthy".into()
        )
    );
    assert_eq!(status(node.admin, "/writer").await, 503);
}

#[tokio::test]
async fn the_public_listener_answers_the_same_under_the_reserved_prefix_and_never_forwards() {
    let origin = StubOrigin::spawn().await;
    let node = writer_node(&origin.url(), FAST).await;
    assert_eventually!(status(node.admin, "/health").await == 200, "never healthy");
    let paths = [
        "health",
        "readiness",
        "writer",
        "mirror",
        "read-only?lag=5",
        "readiness?lag=x",
    ];
    for path in paths {
        let (admin_code, admin) = check(node.admin, &format!("/{path}")).await;
        let (public_code, public) = check(node.public, &format!("/.copyist/{path}")).await;
        assert_eq!(admin_code, public_code, "{path}");
        // The same verdict, in the public body's fewer words (a writer has no lag there).
        let expected = serde_json::json!({
            "role": admin["role"],
            "ok": admin_code == 200,
            "state": admin["state"],
            "draining": admin["draining"],
            "reason": public["reason"],
        });
        assert_eq!(public, expected, "{path}");
        assert_eq!(
            public["reason"].is_null(),
            admin["reason"].is_null(),
            "{path}"
        );
    }
    let reason = |path: &'static str| async move {
        check(node.public, &format!("/.copyist/{path}")).await.1["reason"].clone()
    };
    assert_eq!(reason("mirror").await, "wrong-role");
    assert_eq!(reason("readiness?lag=x").await, "invalid-lag");
    for (addr, prefix) in [(node.admin, ""), (node.public, "/.copyist")] {
        let c = Client::new(addr);
        for (method, name, want) in [
            ("HEAD", "writer", 200),
            ("OPTIONS", "writer", 200),
            ("HEAD", "mirror", 503),
            ("OPTIONS", "mirror", 503),
        ] {
            let path = format!("{prefix}/{name}");
            let r = c
                .send(c.request(method, &path).body(Default::default()).unwrap())
                .await;
            assert_eq!(r.status, want, "{method} {path}");
            assert!(r.body.is_empty(), "{method} {path}: {}", r.text());
            assert_eq!(r.header("cache-control"), Some("no-store"));
        }
        let path = format!("{prefix}/health");
        let r = c
            .send(c.request("POST", &path).body(Default::default()).unwrap())
            .await;
        assert_eq!(r.status, 405, "POST {path}");
        assert_eq!(r.header("allow"), Some("GET, HEAD, OPTIONS"));
    }
    let c = node.client();
    assert_eq!(c.get("/.copyist/liveness").await.text(), "ok\n");
    assert_eq!(c.get("/.copyist/nothing").await.status, 404);
    assert!(
        origin
            .seen()
            .iter()
            .all(|s| !s.target.starts_with("/.copyist")),
        "a reserved path reached the origin"
    );
    assert!(origin.probes() > 0, "the probe never asked the origin");
    assert_eq!(
        node.last_seq().await,
        0,
        "a POST to /.copyist/ was captured"
    );
}

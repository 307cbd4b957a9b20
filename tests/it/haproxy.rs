//! Debian's HAProxy in front of a real writer and two mirrors, routing by the health endpoints
//! alone: writes reach only the node whose `/writer` passes, reads spread over the nodes whose
//! `/read-only?lag=5` passes, a halted mirror leaves the read rotation and comes back once
//! repaired, and a drained one (404, `disable-on-404`) stops getting new reads.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::support::cluster::{ClusterOpts, TestCluster};
use crate::support::haproxy::{HaProxy, READERS, WRITERS};
use crate::support::node::cli_async as cli;
use crate::support::Reply;

/// The nodes probe their CMS and writer often, so a state change shows in the checks quickly.
const FAST: &str = "[health]\nprobe_interval = \"100ms\"\nprobe_timeout = \"5s\"\n";

/// A writer and two mirrors behind HAProxy, once HAProxy's checks have settled: the writer alone
/// in `writers`, all three in `readers`.
async fn cluster_behind_haproxy(extra: &str, disable_on_404: bool) -> (TestCluster, HaProxy) {
    let cluster = TestCluster::start_opts(ClusterOpts {
        mirrors: 2,
        extra: extra.into(),
        ..ClusterOpts::default()
    })
    .await;
    let lb = HaProxy::start(&cluster, disable_on_404);
    lb.wait_statuses(
        WRITERS,
        &[("writer", "UP"), ("mirror-1", "DOWN"), ("mirror-2", "DOWN")],
    )
    .await;
    lb.wait_statuses(
        READERS,
        &[("writer", "UP"), ("mirror-1", "UP"), ("mirror-2", "UP")],
    )
    .await;
    (cluster, lb)
}

fn served_by(r: &Reply) -> String {
    r.header("x-served-by")
        .unwrap_or_else(|| panic!("no X-Served-By on a {}: {}", r.status, r.text()))
        .to_string()
}

/// Sends `n` GETs of `path` through HAProxy; each must be a 200. Returns who served each.
async fn read_n(lb: &HaProxy, path: &str, n: usize) -> Vec<String> {
    let c = lb.client();
    let mut by = Vec::new();
    for _ in 0..n {
        let r = c.get(path).await;
        assert_eq!(
            r.status,
            200,
            "GET {path} via {}: {}",
            served_by(&r),
            r.text()
        );
        by.push(served_by(&r));
    }
    by
}

/// GETs `path` through HAProxy until `server` answers it (deadline), and returns that answer.
async fn read_from(lb: &HaProxy, server: &str, path: &str) -> Reply {
    let c = lb.client();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = c.get(path).await;
        if served_by(&r) == server {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "{server} never served a read again; {:?}",
            lb.statuses(READERS)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_reach_only_the_writer_and_reads_spread_over_every_node() {
    let (cluster, lb) = cluster_behind_haproxy(FAST, false).await;
    let c = lb.client();
    for i in 1..=3u64 {
        let r = c.post_form("/articles", &format!("title=lb-{i}")).await;
        assert_eq!(r.status, 303, "{}", r.text());
        assert_eq!(served_by(&r), "writer", "a write went to a mirror");
        assert_eq!(r.seq(), Some(i), "the writer did not log write {i}");
    }
    // PUT, PATCH and DELETE take the same route (the fixture refuses them, the writer logs them).
    for method in ["PUT", "PATCH", "DELETE"] {
        let r = c
            .send(
                c.request(method, "/article/1")
                    .body(Default::default())
                    .unwrap(),
            )
            .await;
        assert_eq!(served_by(&r), "writer", "{method} went to a mirror");
    }
    cluster.wait_converged().await;
    let mut seen = HashSet::new();
    for i in 1..=3 {
        let path = format!("/article/{i}");
        let c = lb.client();
        for _ in 0..3 {
            let r = c.get(&path).await;
            assert_eq!(r.status, 200, "{path} via {}: {}", served_by(&r), r.text());
            assert!(
                r.text().contains(&format!("lb-{i}")),
                "{path}: {}",
                r.text()
            );
            seen.insert(served_by(&r));
        }
    }
    let all: HashSet<String> = ["writer", "mirror-1", "mirror-2"].map(String::from).into();
    assert_eq!(seen, all, "reads were not spread over every node");
    let writer_dump = cluster.writer.dump().await;
    for m in &cluster.mirrors {
        assert_eq!(m.dump().await, writer_dump, "{} differs", m.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_halted_mirror_leaves_the_read_rotation_and_returns_once_repaired() {
    let (cluster, lb) = cluster_behind_haproxy(FAST, false).await;
    let m1 = &cluster.mirrors[0];
    read_from(&lb, "mirror-1", "/").await;
    // A hand edit on mirror-1: its next article ID is off by one, so the next replay diverges.
    m1.dump().await;
    m1.cms
        .sql("INSERT INTO articles (title, body) VALUES ('hand', 'edit')");
    let r = lb.client().post_form("/articles", "title=one").await;
    assert_eq!((served_by(&r), r.seq()), ("writer".to_string(), Some(1)));
    let halt = cluster.wait_halted(0).await;
    assert_eq!(halt["reason"], "location_mismatch", "{halt}");
    lb.wait_statuses(READERS, &[("mirror-1", "DOWN")]).await;

    let by = read_n(&lb, "/article/1", 30).await;
    assert!(
        !by.iter().any(|s| s == "mirror-1"),
        "the halted mirror served a read: {by:?}"
    );
    assert!(
        by.iter().any(|s| s == "writer") && by.iter().any(|s| s == "mirror-2"),
        "reads not spread over the healthy nodes: {by:?}"
    );

    // The operator undoes the edit and the diverged replay (the mirror's CMS did store it, as
    // article 2), then retries: the mirror catches up and is back in rotation.
    m1.cms.sql("DELETE FROM articles");
    let (code, out, err) = cluster
        .cli(vec![
            "mirror".into(),
            "retry".into(),
            "mirror-1".into(),
            "--reason".into(),
            "removed hand edit".into(),
        ])
        .await;
    assert_eq!(code, 0, "{out}{err}");
    cluster.wait_converged().await;
    lb.wait_statuses(READERS, &[("mirror-1", "UP")]).await;
    let r = read_from(&lb, "mirror-1", "/article/1").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("one"), "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_mirror_gets_no_new_reads_and_undrain_brings_it_back() {
    let extra = format!("{FAST}drain_status = 404\n");
    let (cluster, lb) = cluster_behind_haproxy(&extra, true).await;
    let m2 = &cluster.mirrors[1];
    read_from(&lb, "mirror-2", "/").await;

    let (code, out, err) = cli(
        &m2.node.config_path(),
        &["drain", "--reason", "kernel update"],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    // 404 with disable-on-404: still up (existing connections may finish), but no new ones.
    lb.wait_statuses(READERS, &[("mirror-2", "NOLB")]).await;
    let by = read_n(&lb, "/", 30).await;
    assert!(
        !by.iter().any(|s| s == "mirror-2"),
        "the drained mirror served a read: {by:?}"
    );
    assert!(
        by.iter().any(|s| s == "writer") && by.iter().any(|s| s == "mirror-1"),
        "reads not spread over the other nodes: {by:?}"
    );
    assert_eq!(
        lb.statuses(WRITERS)["mirror-2"],
        "DOWN",
        "a drained mirror is still no writer"
    );
    // Traffic sent to the node directly is not refused: only the checks change.
    assert_eq!(m2.client().get("/").await.status, 200);

    let (code, out, err) = cli(&m2.node.config_path(), &["undrain", "--reason", "done"]).await;
    assert_eq!(code, 0, "{out}{err}");
    lb.wait_statuses(READERS, &[("mirror-2", "UP")]).await;
    read_from(&lb, "mirror-2", "/").await;
}

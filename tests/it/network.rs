//! Network faults between the writer and its mirrors (RELIABILITY.md C1–C4, E4): toxics from
//! the chaos proxy on the replication path (C3). Each fault test proves its fault fired (the
//! proxy's counters) and the null control shows the same checks pass with the fault off.

use std::time::Duration;

use crate::support::chaos::{Direction, Faults, Stats};
use crate::support::client::multipart;
use crate::support::cluster::{ClusterOpts, TestCluster};

/// What a toxic does to a transfer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Slows or splits bytes but delivers them all: the mirror makes progress under the toxic.
    Degrades,
    /// Loses or withholds bytes: nothing past the cut is applied until the network heals.
    Breaks,
}

/// Writes an upload and some articles through `fault` between the writer and one mirror,
/// waits until `fired` shows in the proxy's counters, then heals and checks ORDER and ONCE:
/// every entry applied once in order, the mirror's CMS equal to the writer's.
/// `faults` sees the counters of a clean start (one connection: handshake, state, one entry).
async fn through_toxic(
    faults: impl FnOnce(&Stats) -> Faults,
    kind: Kind,
    fired: impl Fn(&Stats) -> bool,
) -> Stats {
    let cluster = TestCluster::start_opts(ClusterOpts {
        mirrors: 1,
        chaos: true,
        ..ClusterOpts::default()
    })
    .await;
    let chaos = cluster.chaos[0].as_ref().unwrap();
    let w = cluster.writer.client();
    w.post_form("/articles", "title=before").await;
    cluster.wait_converged().await;
    let clean = chaos.stats();

    // A fresh connection, so per-connection limits count from its handshake.
    chaos.cut();
    chaos.set(faults(&clean));
    // A 64 KB blob first: a truncated transfer of it can never be applied whole.
    let blob: Vec<u8> = (0..65_536u32).map(|i| (i % 251) as u8).collect();
    let body = multipart("B", &[("title", "blob")], &[("file", "blob.bin", &blob)]);
    let r = w
        .post("/upload", "multipart/form-data; boundary=B", body)
        .await;
    assert_eq!(r.status, 303, "the writer is unaffected: {}", r.text());
    for i in 0..4 {
        let r = w.post_form("/articles", &format!("title=during-{i}")).await;
        assert_eq!(r.status, 303, "the writer is unaffected");
    }
    let last = cluster.writer.node.last_seq().await;
    crate::assert_eventually!(
        fired(&chaos.stats()),
        "the toxic never fired: {:?}",
        chaos.stats()
    );
    let m = &cluster.mirrors[0];
    match kind {
        Kind::Degrades => cluster.wait_converged().await,
        Kind::Breaks => {
            // Entry states first, the applied position after: the mirror may go on applying
            // while we look (a cut answer does not stop it), and a position read last bounds
            // every state read before it. Reading the other way round would race.
            let mut applied_entries = Vec::new();
            for seq in 1..=last {
                let r = m
                    .node
                    .admin_client()
                    .get(&format!("/api/v1/log/{seq}"))
                    .await;
                if r.status != 404 && r.text().contains("\"applied\"") {
                    applied_entries.push(seq);
                }
            }
            let s = m.status().await;
            assert!(
                s["halt"].is_null(),
                "a network fault halted the mirror: {s}"
            );
            let applied = s["applied_seq"].as_u64().unwrap();
            assert!(applied <= last, "{s}");
            for seq in applied_entries {
                assert!(seq <= applied, "seq {seq} applied past {applied}: {s}");
            }
        }
    }
    let evidence = chaos.stats();

    chaos.clear();
    // Idle connections a toxic held (blackhole) are dropped, so the writer reconnects at once.
    chaos.cut();
    chaos.clear();
    w.post_form("/articles", "title=after").await;
    cluster.wait_converged().await;
    assert_eq!(m.dump().await, cluster.writer.dump().await, "ONCE / ORDER");
    let last = cluster.writer.node.last_seq().await;
    for seq in 1..=last {
        let e = m.node.api(&format!("/api/v1/log/{seq}")).await;
        assert_eq!(e["state"], "applied", "seq {seq}: {e}");
    }
    // The blob arrived whole: the mirror's copy serves the same bytes.
    let got = m.client().get("/uploads/1-blob.bin").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body.as_ref(), &blob[..], "the mirror's blob differs");
    assert!(clean.up.delayed + clean.up.swallowed + clean.truncated + clean.reset == 0);
    evidence
}

fn faults(edit: impl FnOnce(&mut Faults)) -> Faults {
    let mut f = Faults::default();
    edit(&mut f);
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c3_null_control_with_the_toxics_off_fires_nothing_and_converges() {
    let s = through_toxic(|_| Faults::default(), Kind::Degrades, |s| s.bytes_up > 0).await;
    for d in [&s.up, &s.down] {
        assert_eq!(
            (d.delayed, d.sliced, d.throttled, d.swallowed, d.reset),
            (0, 0, 0, 0, 0)
        );
    }
    assert_eq!((s.truncated, s.reset, s.blackholed), (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c3_latency_with_jitter_both_ways_still_converges() {
    let f = |_: &Stats| {
        faults(|f| {
            f.latency = Duration::from_millis(40);
            f.jitter = Duration::from_millis(40);
        })
    };
    through_toxic(f, Kind::Degrades, |s| {
        s.up.delayed > 2 && s.down.delayed > 2
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c3_slicing_into_tiny_pieces_still_converges() {
    let f = |_: &Stats| faults(|f| f.slice = Some(7));
    through_toxic(f, Kind::Degrades, |s| s.up.sliced > 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c3_low_bandwidth_upstream_still_converges() {
    let f = |_: &Stats| {
        faults(|f| {
            f.bandwidth = Some(100_000);
            f.direction = Direction::Up;
        })
    };
    through_toxic(f, Kind::Degrades, |s| {
        s.up.throttled > 2 && s.down.throttled == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c3_truncated_upstream_transfer_is_never_applied() {
    let f = |_: &Stats| faults(|f| f.truncate_after = Some(8 * 1024));
    through_toxic(f, Kind::Breaks, |s| s.truncated >= 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c3_truncated_answers_are_retried_and_applied_once() {
    // Past the handshake and a first answer: later answers are cut after the mirror applied.
    let f = |clean: &Stats| faults(|f| f.truncate_down_after = Some(clean.bytes_down + 150));
    through_toxic(f, Kind::Breaks, |s| s.truncated >= 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c3_reset_connections_mid_transfer_are_never_applied_half() {
    let f = |_: &Stats| faults(|f| f.reset = true);
    through_toxic(f, Kind::Breaks, |s| s.reset >= 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c3_blackhole_holds_then_heals_without_duplicates() {
    let f = |_: &Stats| faults(|f| f.blackhole = true);
    through_toxic(f, Kind::Breaks, |s| s.up.swallowed > 0 || s.blackholed >= 1).await;
}

/// C1 with the fault on or off: the writer's only link goes down during writes, then comes
/// back. The writer keeps accepting, the mirror's lag shows on the writer's status and the
/// mirror's health while cut, and after healing the mirror applies everything once, in order.
async fn full_partition(fault: bool) {
    use crate::support::netns::{heal, link_up, partition, NetCluster};
    let cluster = NetCluster::start(1, "").await;
    let (w, m) = (&cluster.writer, &cluster.mirrors[0]);
    let client = w.client();
    for i in 0..3 {
        let r = client
            .post_form("/articles", &format!("title=before-{i}"))
            .await;
        assert_eq!(r.status, 303, "{}", r.text());
    }
    cluster.wait_caught_up(0, Duration::from_secs(20)).await;
    let health = |m: &crate::support::netns::NetNode| {
        let c = m.admin_client();
        async move { c.get("/mirror?lag=2").await.status }
    };
    crate::assert_eventually!(health(m).await == 200, "the mirror is not healthy at first");

    if fault {
        partition(&w.ns);
        assert!(!link_up(&w.ns), "the partition is not in force");
    }
    for i in 0..5 {
        let r = client
            .post_form("/articles", &format!("title=during-{i}"))
            .await;
        assert_eq!(r.status, 303, "the writer stopped accepting: {}", r.text());
    }
    let last = cluster.last_seq().await;
    assert_eq!(last, 8);
    if fault {
        // The lag is visible while cut, and the mirror applied nothing new.
        crate::assert_eventually!(
            w.status().await["mirrors"][0]["lag_entries"].as_u64() == Some(5),
            "lag not visible: {}",
            w.status().await["mirrors"][0]
        );
        crate::assert_eventually!(
            health(m).await == 503,
            "the mirror's health ignores an unreachable writer"
        );
        assert_eq!(
            m.status().await["applied_seq"],
            3,
            "applied through a partition"
        );
        assert!(!link_up(&w.ns), "the partition ended early");
        heal(&w.ns);
    }

    cluster.wait_caught_up(0, Duration::from_secs(40)).await;
    assert_eq!(m.dump().await, w.dump().await, "ONCE / ORDER");
    for seq in 1..=last {
        let e = m.api(&format!("/api/v1/log/{seq}")).await;
        assert_eq!(e["state"], "applied", "seq {seq}: {e}");
    }
    crate::assert_eventually!(
        w.status().await["mirrors"][0]["lag_entries"].as_u64() == Some(0),
        "lag did not clear"
    );
    crate::assert_eventually!(
        health(m).await == 200,
        "the mirror's health did not recover"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c1_full_partition_during_writes_then_heal() {
    full_partition(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c1_null_control_without_the_partition() {
    full_partition(false).await;
}

/// C2 with the fault on or off: the mirror's packets to the writer are dropped (nft, in the
/// mirror's namespace) while the writer ships entries, until the writer has given up on the
/// lost answers; then the rule goes and the writer retries. The mirror answers the resent
/// entries from its record: nothing halts and each entry is applied once.
async fn lost_acks(fault: bool) {
    use crate::support::netns::{drop_to, dropped_packets, undrop, NetCluster};
    let cluster = NetCluster::start(1, "").await;
    let (w, m) = (&cluster.writer, &cluster.mirrors[0]);
    let client = w.client();
    for i in 0..2 {
        client
            .post_form("/articles", &format!("title=before-{i}"))
            .await;
    }
    cluster.wait_caught_up(0, Duration::from_secs(20)).await;

    if fault {
        drop_to(&m.ns, w.ip);
    }
    for i in 0..3 {
        let r = client
            .post_form("/articles", &format!("title=during-{i}"))
            .await;
        assert_eq!(r.status, 303, "the writer stopped accepting: {}", r.text());
    }
    // The writer's packets still arrive: the mirror applies what it got, unheard.
    crate::assert_eventually!(
        m.status().await["applied_seq"].as_u64() >= Some(3),
        "the mirror never received an entry"
    );
    if fault {
        let deadline = std::time::Instant::now() + Duration::from_secs(40);
        loop {
            let view = w.status().await["mirrors"][0].clone();
            // The writer gave up on an answer it never got (and will resend).
            if !view["last_error"].is_null() {
                break;
            }
            assert!(
                view["applied_seq"].as_u64() <= Some(2),
                "an answer got through the drop: {view}"
            );
            assert!(
                std::time::Instant::now() < deadline,
                "the writer never noticed: {view}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let dropped = dropped_packets(&m.ns);
        assert!(dropped > 0, "the nft rule dropped nothing");
        undrop(&m.ns);
    }
    cluster.wait_caught_up(0, Duration::from_secs(40)).await;
    assert!(m.status().await["halt"].is_null());
    assert_eq!(m.dump().await, w.dump().await, "ONCE / ORDER");
    let last = cluster.last_seq().await;
    assert_eq!(last, 5);
    for seq in 1..=last {
        let e = m.api(&format!("/api/v1/log/{seq}")).await;
        assert_eq!(e["state"], "applied", "seq {seq}: {e}");
    }
    // The writer hears the answers again (on a resend, from the mirror's record).
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    loop {
        let view = w.status().await["mirrors"][0].clone();
        if view["lag_entries"] == 0 && view["applied_seq"] == last {
            assert!(view["halt"].is_null(), "{view}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the writer never heard back: {view}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(m.dump().await, w.dump().await, "ONCE after the resends");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c2_lost_acknowledgements_are_retried_and_each_entry_applied_once() {
    lost_acks(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c2_null_control_without_the_drop() {
    lost_acks(false).await;
}

/// C4: the writer's link to its mirrors is throttled (tc tbf) and a client uploads a large
/// file. The transfer makes progress under the limit, the mirror does not hold the whole blob
/// in memory, and a second upload of the same bytes does not send the blob again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c4_low_bandwidth_large_upload_streams_and_is_not_resent() {
    use crate::support::netns::{throttle, throttle_stats, NetCluster};
    let cluster = NetCluster::start(1, "").await;
    let (w, m) = (&cluster.writer, &cluster.mirrors[0]);
    let client = w.client();
    client.post_form("/articles", "title=warm").await;
    cluster.wait_caught_up(0, Duration::from_secs(20)).await;
    let rss_before = m.peak_rss();

    // 24 MB at 5 MB/s: a few seconds of transfer, and far more than the mirror may buffer.
    const BLOB: u32 = 24_000_000;
    throttle(&w.ns, "40mbit");
    let blob: Vec<u8> = (0..BLOB)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let body = multipart("B", &[("title", "big")], &[("file", "big.bin", &blob)]);
    let start = std::time::Instant::now();
    let r = client
        .post("/upload", "multipart/form-data; boundary=B", body.clone())
        .await;
    assert_eq!(r.status, 303, "{}", r.text());
    cluster.wait_caught_up(0, Duration::from_secs(40)).await;
    let took = start.elapsed();
    let (sent, overlimits) = throttle_stats(&w.ns);
    assert!(overlimits > 0, "the throttle never held a packet back");
    assert!(
        sent >= blob.len() as u64,
        "the blob did not cross the throttled link: {sent}"
    );
    assert!(
        took >= Duration::from_secs(2),
        "faster than the limit allows: {took:?}"
    );
    let got = m.client().get("/uploads/1-big.bin").await;
    assert_eq!(got.body.as_ref(), &blob[..], "the mirror's copy differs");
    let grew = m.peak_rss().saturating_sub(rss_before);
    assert!(
        grew < blob.len() as u64 / 2,
        "the mirror's peak RSS grew by {grew} for a {} byte blob",
        blob.len()
    );

    // The same request body again (a blob is a whole body, by content): a new entry, but the
    // mirror already holds its blob.
    let r = client
        .post("/upload", "multipart/form-data; boundary=B", body)
        .await;
    assert_eq!(r.status, 303, "{}", r.text());
    cluster.wait_caught_up(0, Duration::from_secs(40)).await;
    let (sent_again, _) = throttle_stats(&w.ns);
    assert!(
        sent_again - sent < 200_000,
        "the blob was sent again: {} bytes",
        sent_again - sent
    );
    assert_eq!(m.dump().await, w.dump().await);
}

/// E4: mirror-1's link is throttled (tbf on the switch port towards it) and mirror-2 halts on a
/// divergence (its database edited by hand). The writer answers as fast as ever, mirror-1
/// catches up, and each mirror's history is a prefix of the writer's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e4_a_throttled_mirror_and_a_halted_one_do_not_hold_back_the_writer_or_each_other() {
    use crate::support::netns::{throttle_dev, throttle_stats_dev, NetCluster};
    let cluster = NetCluster::start(2, "").await;
    let w = &cluster.writer;
    let (m1, m2) = (&cluster.mirrors[0], &cluster.mirrors[1]);
    let client = w.client();
    client.post_form("/articles", "title=warm").await;
    cluster.wait_caught_up(0, Duration::from_secs(20)).await;
    cluster.wait_caught_up(1, Duration::from_secs(20)).await;

    // mirror-2's next article id is off by one: its next replay diverges and halts it.
    let db = cluster.dir.path().join("mirror-2-cms/cms.sqlite");
    crate::support::php::sql_at(
        &db,
        "INSERT INTO articles (title, body) VALUES ('hand', 'edit')",
    );
    let (sw, port) = cluster.lan.port_to(m1.ip);
    throttle_dev(&sw, &port, "2mbit"); // 250 KB/s towards mirror-1

    let blob: Vec<u8> = (0..1_500_000u32).map(|i| (i % 253) as u8).collect();
    let body = multipart("B", &[("title", "big")], &[("file", "big.bin", &blob)]);
    let start = std::time::Instant::now();
    let r = client
        .post("/upload", "multipart/form-data; boundary=B", body)
        .await;
    assert_eq!(r.status, 303, "{}", r.text());
    for i in 0..5 {
        let r = client
            .post_form("/articles", &format!("title=during-{i}"))
            .await;
        assert_eq!(r.status, 303, "{}", r.text());
    }
    let writer_took = start.elapsed();
    let last = cluster.last_seq().await;
    assert_eq!(last, 7);

    crate::assert_eventually!(
        !m2.status().await["halt"].is_null(),
        "mirror-2 never halted"
    );
    let halt = m2.status().await["halt"].clone();
    // seq 2 is the upload (uploads have their own ids); seq 3 is the first article.
    assert_eq!(halt["seq"], 3, "{halt}");
    cluster.wait_caught_up(0, Duration::from_secs(40)).await;
    let m1_took = start.elapsed();
    let (_, overlimits) = throttle_stats_dev(&sw, &port);
    assert!(overlimits > 0, "mirror-1 was never throttled");
    // 1.5 MB at 250 KB/s is about 6 s: the writer answered everything well before that.
    assert!(
        m1_took >= Duration::from_secs(4),
        "the throttle did not slow mirror-1: {m1_took:?}"
    );
    assert!(
        writer_took < m1_took / 2,
        "the writer waited on its mirrors: {writer_took:?} vs {m1_took:?}"
    );
    assert_eq!(
        m1.dump().await,
        w.dump().await,
        "mirror-1 has the writer's history"
    );
    // mirror-2 stopped exactly at the divergence: a prefix (seq 1-2) applied, nothing after.
    assert_eq!(m2.status().await["applied_seq"], 2);
    for seq in 4..=last {
        let r = m2.admin_client().get(&format!("/api/v1/log/{seq}")).await;
        assert!(
            r.status == 404 || !r.text().contains("\"applied\""),
            "mirror-2 applied {seq} past its halt"
        );
    }
    let view = w.status().await["mirrors"].clone();
    assert_eq!(view[0]["lag_entries"], 0, "{view}");
    assert!(
        !view[1]["halt"].is_null(),
        "the writer does not see mirror-2's halt: {view}"
    );
}

//! `kill -9` of real `copyist run` processes in a writer + mirror cluster (PHP fixture CMS per
//! node): no entry applied twice (ONCE), none out of order (ORDER), none lost (ACK), and an
//! apply the crash left ambiguous halts the mirror as `in_doubt` (UNKNOWN, HALT) until an
//! operator settles it with `retry` or `skip`.
//!
//! `COPYIST_CRASH_CYCLES` raises the number of mirror kills in the first test (default 8) for
//! longer soaks.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::history::check::{check_all, check_cluster, Snapshot};
use crate::support::history::vacuity::RowReport;
use crate::support::history::{History, Load, Outcome, Workers};
use crate::support::process_cluster::{ProcessCluster, ProcessClusterOpts};

/// Mirror kills in `kill_9_of_a_mirror_…`; `COPYIST_CRASH_CYCLES` raises it for soaks.
fn crash_cycles() -> usize {
    std::env::var("COPYIST_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8)
}

/// The article id in a `Location: /article/ID`.
fn article_id(location: &str) -> u64 {
    location
        .rsplit('/')
        .next()
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("not an article location: {location}"))
}

/// Article ids in a `/dump`.
pub(crate) fn dump_article_ids(dump: &str) -> Vec<u64> {
    let v: Value = serde_json::from_str(dump).unwrap_or_else(|e| panic!("{e}: {dump}"));
    v["articles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_u64().unwrap())
        .collect()
}

/// How an operator settled one in-doubt entry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Settled {
    /// The mirror's CMS had the row: `skip --seq N`.
    Skipped(u64),
    /// It did not: `retry`.
    Retried(u64),
}

/// If the (restarted) mirror is halted, checks that it is the correct `in_doubt` halt and
/// settles it like an operator: look at the mirror's CMS for the entry's row, then `skip` it
/// (the CMS applied it) or `retry` it (it did not). Returns what was done.
pub(crate) async fn settle_in_doubt(cluster: &ProcessCluster) -> Option<Settled> {
    let m = &cluster.mirror;
    let s = m.status().await;
    if s["halt"].is_null() {
        return None;
    }
    let halt = &s["halt"];
    assert_eq!(
        halt["reason"],
        "in_doubt",
        "a kill -9 may only leave an in-doubt halt: {halt}\n{}",
        cluster.logs()
    );
    let n = halt["seq"].as_u64().unwrap();
    assert_eq!(
        s["applied_seq"].as_u64().unwrap(),
        n - 1,
        "halted at {n}, so everything before it and nothing after it is applied"
    );
    let entry = m.entry(n).await.expect("the halted entry is in the log");
    assert_eq!(entry["state"], "in-doubt", "{entry}");

    // Which article the writer's CMS created for seq n, and whether the mirror's CMS has it.
    let writer_entry = cluster.writer.api(&format!("/api/v1/log/{n}")).await;
    let id = article_id(writer_entry["outcome"]["location"].as_str().unwrap());
    let ids = dump_article_ids(&m.dump().await);
    let expected_before: Vec<u64> = (1..id).collect();
    let applied = if ids == expected_before {
        false
    } else {
        let with: Vec<u64> = (1..=id).collect();
        assert_eq!(
            ids, with,
            "mirror CMS holds neither exactly the articles before seq {n} (id {id}) nor those \
             plus it"
        );
        true
    };
    let (code, out, err) = if applied {
        cluster
            .cli(&[
                "mirror",
                "skip",
                "mirror-1",
                "--seq",
                &n.to_string(),
                "--reason",
                "in-doubt after kill -9; row present in the mirror CMS",
            ])
            .await
    } else {
        cluster
            .cli(&[
                "mirror",
                "retry",
                "mirror-1",
                "--reason",
                "in-doubt after kill -9; row absent in the mirror CMS",
            ])
            .await
    };
    assert_eq!(
        code,
        0,
        "operator action refused: {out}{err}\n{}",
        cluster.logs()
    );
    crate::assert_eventually!(
        {
            let s = m.status().await;
            s["halt"].is_null() && s["applied_seq"].as_u64().unwrap() >= n
        },
        "mirror did not move past {n} after the operator's action\n{}",
        cluster.logs()
    );
    let entry = m.entry(n).await.unwrap();
    let (state, action) = if applied {
        ("skipped", "skip")
    } else {
        ("applied", "retry")
    };
    assert_eq!(entry["state"], state, "{entry}");
    assert_eq!(entry["audit"][0]["action"], action, "{entry}");
    Some(if applied {
        Settled::Skipped(n)
    } else {
        Settled::Retried(n)
    })
}

/// Every entry 1..=last on the mirror: finished the way it should be, with the writer's ID.
async fn assert_mirror_log(cluster: &ProcessCluster, last: u64, skipped: &BTreeSet<u64>) {
    for seq in 1..=last {
        let m = cluster
            .mirror
            .entry(seq)
            .await
            .unwrap_or_else(|| panic!("mirror lacks entry {seq}"));
        let want = if skipped.contains(&seq) {
            "skipped"
        } else {
            "applied"
        };
        assert_eq!(m["state"], want, "mirror entry {seq}: {m}");
        if want == "applied" {
            assert_eq!(
                m["mirror_outcome"]["location"], m["outcome"]["location"],
                "IDS: mirror entry {seq} created another row than the writer's"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_mirror_while_the_writer_takes_writes_applies_every_entry_once_in_order() {
    let started = Instant::now();
    let mut cluster = ProcessCluster::start(ProcessClusterOpts::default()).await;
    let history = History::new("w");
    let writers = Workers::spawn(
        &history,
        &[("writer".to_string(), cluster.writer.public())],
        2,
        Load::default(),
    );
    let acked = || history.count(Outcome::Ok);
    let mut settled = Vec::new();
    let mut kills = 0;
    let mut applied_at_start = 0;
    for cycle in 0..crash_cycles() {
        // Let a varying number of writes land, and the mirror apply a varying number of
        // entries since its restart (so the kill lands in a live stream, not in a reconnect),
        // then kill it without warning.
        let k = 2 + (cycle * 5) % 9;
        writers.wait_ok(acked() + k).await;
        let want = applied_at_start + 1 + (cycle % 3) as u64;
        crate::assert_eventually!(
            cluster.mirror.status().await["applied_seq"]
                .as_u64()
                .unwrap()
                >= want,
            "the restarted mirror never applied {want}\n{}",
            cluster.logs()
        );
        cluster.mirror.kill9();
        kills += 1;
        // The writer keeps taking writes while its mirror is down.
        writers.wait_ok(acked() + 1 + cycle % 3).await;
        cluster.mirror.start().await;
        if cycle % 4 == 3 {
            // A crash during recovery: killed again as soon as it is up.
            cluster.mirror.kill9();
            kills += 1;
            cluster.mirror.start().await;
        }
        if let Some(s) = settle_in_doubt(&cluster).await {
            settled.push(s);
        }
        applied_at_start = cluster.mirror.status().await["applied_seq"]
            .as_u64()
            .unwrap();
    }
    let pids: BTreeSet<u32> = cluster.mirror.pids.iter().copied().collect();
    assert_eq!(
        pids.len(),
        kills + 1,
        "every kill -9 hit a running mirror and a new process took over"
    );
    writers.wait_ok(acked() + 3).await;
    writers.finish().await;
    assert_eq!(
        acked(),
        history.len(),
        "the writer refused or lost a write while its mirror was killed: {:?}",
        history.ops().iter().find(|o| o.outcome != Outcome::Ok)
    );
    assert!(
        history.ops().iter().all(|o| o.status == Some(303)),
        "every article was answered 303 See Other"
    );
    cluster.wait_converged(Duration::from_secs(30)).await;

    // ACK, ONCE, ORDER, IDS, CONVERGE, BLOB, HALT: every acknowledged write is there, each
    // exactly once, with the id its client was told, on both CMSes, and nothing else is.
    let snap = Snapshot::take(&cluster.handles()).await;
    let report = check_all(&history, &snap);
    let peak = cluster.mirror.sample_peak();
    RowReport {
        row: "A3+A5".into(),
        test: "mirror kill -9 under writes, every 4th killed again during recovery".into(),
        faults: kills as u64,
        held: report.held(),
        ops: history.len(),
        peak,
        note: {
            let skips = settled
                .iter()
                .filter(|s| matches!(s, Settled::Skipped(_)))
                .count();
            format!(
                "{} in-doubt halts settled: {skips} skip, {} retry",
                settled.len(),
                settled.len() - skips
            )
        },
    }
    .emit();
    report.assert_held("mirror kill -9 under writes");
    let last = cluster.writer.status().await["last_seq"].as_u64().unwrap();
    assert_eq!(
        last,
        acked() as u64,
        "every entry on the writer is an acknowledged article"
    );
    // Every article on the mirror is one the writer acknowledged, with the same id.
    let mut told: Vec<u64> = history.ops().iter().filter_map(|o| o.id).collect();
    told.sort_unstable();
    assert_eq!(
        dump_article_ids(&cluster.mirror.dump().await),
        told,
        "the mirror's articles are exactly the acknowledged ones"
    );
    // ORDER and IDS, and how each in-doubt entry was settled: skipped or re-applied.
    let skipped: BTreeSet<u64> = settled
        .iter()
        .filter_map(|s| match s {
            Settled::Skipped(n) => Some(*n),
            Settled::Retried(_) => None,
        })
        .collect();
    assert_mirror_log(&cluster, last, &skipped).await;
    let m = cluster.mirror.status().await;
    assert_eq!(m["applied_seq"].as_u64().unwrap(), last);
    assert!(m["halt"].is_null());
    eprintln!(
        "crash test 1: {kills} mirror kills, {}, in-doubt settled: {settled:?}, {:.1} s",
        history.summary(),
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_mirror_mid_apply_halts_it_in_doubt_until_the_operator_skips_that_entry() {
    let mut cluster = ProcessCluster::start(ProcessClusterOpts {
        writer_origin: "response_timeout = \"30s\"".into(),
        mirror_origin: "response_timeout = \"30s\"".into(),
        ..ProcessClusterOpts::default()
    })
    .await;
    let w = cluster.writer.client();
    for i in 0..2 {
        let r = w.post_form("/articles", &format!("title=before{i}")).await;
        assert_eq!(r.status, 303);
    }
    cluster.wait_converged(Duration::from_secs(20)).await;

    // The fixture commits a row, then sleeps 3 s: the mirror's replay of it is in flight for 3 s.
    let slow = {
        let w = w.clone();
        tokio::spawn(async move {
            w.send(
                w.request("POST", "/slow?ms=3000")
                    .body(Default::default())
                    .unwrap(),
            )
            .await
        })
    };
    let n = 3;
    crate::assert_eventually!(
        matches!(cluster.mirror.entry(n).await, Some(e) if e["state"] == "applying"),
        "the mirror never started applying {n}"
    );
    // The mirror's CMS did apply it (row committed), and the mirror is still waiting for the
    // answer: the outcome is ambiguous from copyist's point of view.
    crate::assert_eventually!(
        cluster.mirror.article_ids_in_db() == vec![1, 2, 3],
        "the slow request never reached the mirror's CMS"
    );
    assert_eq!(
        cluster.mirror.entry(n).await.unwrap()["state"],
        "applying",
        "the kill must land while the apply is in flight"
    );
    cluster.mirror.kill9();
    let r = slow.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.seq(), Some(n));

    // After a restart (two, in fact: a restart alone never resumes) it is halted at n.
    for _ in 0..2 {
        cluster.mirror.start().await;
        let s = cluster.mirror.status().await;
        assert_eq!(s["halt"]["reason"], "in_doubt", "{s}");
        assert_eq!(s["halt"]["seq"], n, "{s}");
        assert_eq!(s["applied_seq"], n - 1, "{s}");
        assert_eq!(cluster.mirror.entry(n).await.unwrap()["state"], "in-doubt");
        cluster.mirror.kill9();
    }
    cluster.mirror.start().await;

    // More writes come in; the mirror applies none of them.
    for i in 0..3 {
        let r = w.post_form("/articles", &format!("title=after{i}")).await;
        assert_eq!(r.status, 303);
    }
    assert_eq!(cluster.writer.status().await["last_seq"], n + 3);
    crate::assert_eventually!(
        {
            let m = &cluster.writer.status().await["mirrors"][0];
            m["state"] == "halted" && m["halt"]["seq"] == n
        },
        "the writer never saw the mirror halted at {n}"
    );
    let s = cluster.mirror.status().await;
    assert_eq!(s["applied_seq"], n - 1, "HALT: applied past the halt: {s}");
    assert!(
        cluster.mirror.entry(n + 1).await.is_none(),
        "HALT: the mirror stored an entry after the halt"
    );
    assert_eq!(
        cluster.mirror.article_ids_in_db(),
        vec![1, 2, 3],
        "HALT: the mirror's CMS changed after the halt"
    );
    // The checkers agree: halted at n with a machine reason, a gap-free prefix before it,
    // nothing stored past it, the writer's log intact.
    let snap = Snapshot::take(&cluster.handles()).await;
    assert_eq!(snap.halted(), vec!["mirror-1".to_string()]);
    let halted = check_cluster(&snap);
    halted.assert_held("mirror halted in doubt");
    assert!(halted.check("halts").note.contains("in_doubt"), "{halted}");

    // The operator: the row is there (id 3, as on the writer), so the entry was applied. A skip
    // of any other entry is refused; the exact one is accepted.
    let writer_ids = dump_article_ids(&cluster.writer.dump().await);
    assert_eq!(writer_ids, vec![1, 2, 3, 4, 5, 6]);
    let (code, _, err) = cluster
        .cli(&[
            "mirror",
            "skip",
            "mirror-1",
            "--seq",
            &(n + 1).to_string(),
            "--reason",
            "wrong",
        ])
        .await;
    assert_ne!(
        code, 0,
        "skip of an entry the mirror is not halted at: {err}"
    );
    let (code, out, err) = cluster
        .cli(&[
            "mirror",
            "skip",
            "mirror-1",
            "--seq",
            &n.to_string(),
            "--reason",
            "slow row present on the mirror",
        ])
        .await;
    assert_eq!(code, 0, "{out}{err}");
    cluster.wait_converged(Duration::from_secs(20)).await;
    assert_eq!(cluster.mirror.dump().await, cluster.writer.dump().await);
    let skipped = BTreeSet::from([n]);
    assert_mirror_log(&cluster, n + 3, &skipped).await;
    let e = cluster.mirror.entry(n).await.unwrap();
    assert_eq!(e["audit"][0]["action"], "skip", "{e}");
    assert_eq!(e["audit"][0]["reason"], "slow row present on the mirror");
    let report = check_cluster(&Snapshot::take(&cluster.handles()).await);
    RowReport {
        row: "A3".into(),
        test: "mirror kill -9 mid-apply: in-doubt halt, operator skip".into(),
        faults: cluster.mirror.pids.len() as u64 - 1,
        held: report.held(),
        ops: 9,
        peak: cluster.mirror.sample_peak(),
        note: String::new(),
    }
    .emit();
    report.assert_held("after the skip");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_writer_while_it_ships_a_backlog_loses_and_repeats_nothing() {
    // A small window: when the writer dies it has sent the mirror only a few entries past the
    // mirror's position, so the rest must come from the restarted writer, resuming from where
    // the mirror stands.
    let mut cluster = ProcessCluster::start(ProcessClusterOpts {
        writer_replication: "window = 4".into(),
        ..ProcessClusterOpts::default()
    })
    .await;
    let (code, out, err) = cluster
        .cli(&["mirror", "pause", "mirror-1", "--reason", "build a backlog"])
        .await;
    assert_eq!(code, 0, "{out}{err}");
    // 30 writes; every other one makes each CMS take 60 ms, so the mirror needs about a second
    // for the backlog and the kill lands in the middle of it.
    let w = cluster.writer.client();
    let mut locations = BTreeMap::new();
    for i in 1..=30u64 {
        let r = if i % 2 == 0 {
            w.send(
                w.request("POST", "/slow?ms=60")
                    .body(Default::default())
                    .unwrap(),
            )
            .await
        } else {
            w.post_form("/articles", &format!("title=backlog{i}")).await
        };
        assert!(r.status == 200 || r.status == 303, "{}", r.text());
        assert_eq!(r.seq(), Some(i));
        if let Some(l) = r.header("location") {
            locations.insert(i, l.to_string());
        }
    }
    assert_eq!(cluster.mirror.status().await["applied_seq"], 0, "paused");
    let (code, out, err) = cluster
        .cli(&["mirror", "resume", "mirror-1", "--reason", "ship it"])
        .await;
    assert_eq!(code, 0, "{out}{err}");

    // Kill the writer as soon as the mirror is part-way through.
    let deadline = Instant::now() + Duration::from_secs(20);
    let seen = loop {
        let a = cluster.mirror.status().await["applied_seq"]
            .as_u64()
            .unwrap();
        if a > 0 {
            break a;
        }
        assert!(Instant::now() < deadline, "shipping never started");
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let old = cluster.writer.kill9();
    assert!(
        seen < 30,
        "the backlog was shipped before the kill ({seen}): the fault did not fire mid-shipping"
    );
    let at_kill = cluster.mirror.status().await["applied_seq"]
        .as_u64()
        .unwrap();
    cluster.writer.start().await;
    assert_ne!(cluster.writer.pids.last(), Some(&old));
    assert_eq!(cluster.writer.status().await["last_seq"], 30);

    cluster.wait_converged(Duration::from_secs(20)).await;
    let s = cluster.mirror.status().await;
    assert_eq!(s["applied_seq"], 30, "{s}");
    assert!(s["halt"].is_null(), "{s}");
    let writer_dump = cluster.writer.dump().await;
    assert_eq!(cluster.mirror.dump().await, writer_dump, "CONVERGE");
    assert_eq!(
        dump_article_ids(&writer_dump),
        (1..=30).collect::<Vec<_>>(),
        "ONCE: 30 rows for 30 writes"
    );
    assert_mirror_log(&cluster, 30, &BTreeSet::new()).await;
    for (seq, location) in &locations {
        let e = cluster.mirror.entry(*seq).await.unwrap();
        assert_eq!(
            e["mirror_outcome"]["location"],
            location.as_str(),
            "seq {seq}"
        );
    }
    let report = check_cluster(&Snapshot::take(&cluster.handles()).await);
    RowReport {
        row: "A1".into(),
        test: "writer kill -9 while it ships a backlog".into(),
        faults: (cluster.writer.pids.len() - 1) as u64,
        held: report.held(),
        ops: 30,
        peak: cluster.writer.sample_peak(),
        note: format!("mirror at {seen} of 30 when killed"),
    }
    .emit();
    report.assert_held("writer killed mid-shipping");
    eprintln!("crash test 3: writer killed with the mirror at {seen} (then {at_kill}) of 30");
}

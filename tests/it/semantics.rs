//! Replication semantics and divergence (RELIABILITY.md rows D2, D4, D5, D6, E3, H3): what copyist
//! does with a CMS whose writes are not plain deterministic POSTs, and what survives restarts
//! and racing uploads. Each test drives a writer and a mirror, each in front of its own PHP
//! fixture CMS, and holds the result to the history checkers (`support::history::check`).
//!
//! D5 (time-dependent replay): nothing in the fixture CMS depends on the clock (no timestamps in
//! rows or pages, ids are rowids, the CSRF token never expires; only PHP's session GC reads file
//! mtimes), so there is nothing time-dependent to detect. The D5 test asserts exactly that: a
//! mirror whose PHP runs a month ahead under libfaketime converges byte for byte. A CMS whose
//! output does depend on the date would be caught by the same comparisons as D3/D4 (`Location`,
//! fields, body digest). Clock skew on copyist itself is covered by `hostile.rs` (G6).

use std::time::Duration;

use serde_json::Value;

use crate::support::client::multipart;
use crate::support::cluster::{ClusterOpts, Member, TestCluster};
use crate::support::history::check::{check_all, check_cluster, NodeHandle, Snapshot};
use crate::support::history::History;
use crate::support::node::Opts;
use crate::support::process_cluster::{ProcessCluster, ProcessClusterOpts};
use crate::support::TestNode;

/// Every node of the cluster, writer first, for a [`Snapshot`].
fn handles(cluster: &TestCluster) -> Vec<NodeHandle> {
    std::iter::once(&cluster.writer)
        .chain(&cluster.mirrors)
        .map(NodeHandle::from)
        .collect()
}

fn cluster_with(extra: &str) -> ClusterOpts {
    ClusterOpts {
        mirrors: 1,
        extra: extra.to_string(),
        ..ClusterOpts::default()
    }
}

// === D2: a writer-side partial effect ===

/// D2. `POST /flaky` commits a row on the writer's CMS, then answers 500. The policy (README,
/// "Replication"; ARCHITECTURE "Ship"): an entry whose status is outside `success_status`
/// (2xx/3xx by default) is `rejected`, shipped as such and recorded on the mirror, never
/// replayed. So the writer's CMS keeps the flaky row and the mirror's never sees it: the next
/// create gets id 2 on the writer and id 1 on the mirror. That must be detected (the `Location`
/// comparison) and halt the mirror at exactly that entry with a machine reason, not drift.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d2_a_rejected_request_that_wrote_anyway_halts_the_mirror_at_the_next_create() {
    let cluster = TestCluster::start(1).await;
    let w = cluster.writer.client();
    let flaky = w.post_form("/flaky", "x=1").await;
    assert_eq!(flaky.status, 500, "{}", flaky.text());
    assert_eq!(flaky.seq(), Some(1), "the failed request is logged too");
    let next = w.post_form("/articles", "title=after-flaky").await;
    assert_eq!(next.status, 303, "{}", next.text());
    assert_eq!(next.seq(), Some(2));
    assert_eq!(
        next.header("location"),
        Some("/article/2"),
        "the writer's CMS kept the flaky row (id 1)"
    );

    let halt = cluster.wait_halted(0).await;
    assert_eq!(
        halt["seq"], 2,
        "halted at the create whose id differs: {halt}"
    );
    assert_eq!(halt["reason"], "location_mismatch", "{halt}");
    let m = &cluster.mirrors[0];
    // The rejected entry is recorded on the mirror but its CMS never saw it.
    let e1 = m.node.api("/api/v1/log/1").await;
    assert_eq!(e1["state"], "rejected", "{e1}");
    assert!(e1["mirror_outcome"].is_null(), "{e1}");
    let e2 = m.node.api("/api/v1/log/2").await;
    assert_eq!(e2["state"], "diverged", "{e2}");
    assert_eq!(e2["outcome"]["location"], "/article/2");
    assert_eq!(e2["mirror_outcome"]["location"], "/article/1");
    assert_eq!(m.status().await["applied_seq"], 1, "nothing past the halt");

    // The fault fired: the writer's CMS holds the flaky row, the mirror's does not.
    let wd: Value = serde_json::from_str(&cluster.writer.dump().await).unwrap();
    let md: Value = serde_json::from_str(&m.dump().await).unwrap();
    assert_eq!(wd["articles"][0]["title"], "flaky", "{wd}");
    assert!(
        md["articles"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["title"] != "flaky"),
        "{md}"
    );
    // The checkers agree: a halted mirror with a machine reason at applied+1, no drift among
    // the nodes that are not halted.
    let snap = Snapshot::take(&handles(&cluster)).await;
    let report = check_cluster(&snap);
    report.assert_held("D2");
    assert_eq!(snap.halted(), vec!["mirror-1".to_string()]);
}

// === D4: nondeterministic CMS output ===

/// Sends `POST /random` then an article through the writer; returns the /random reply's seq.
async fn random_then_article(cluster: &TestCluster) -> u64 {
    let w = cluster.writer.client();
    let r = w.post_form("/random", "x=1").await;
    assert_eq!(r.status, 201, "{}", r.text());
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["value"].as_str().unwrap().len(), 32, "{v}");
    let a = w.post_form("/articles", "title=after-random").await;
    assert_eq!(a.status, 303);
    r.seq().unwrap()
}

/// The dumps of a writer and a mirror that both applied `/random`: equal apart from the random
/// values (the fixture's one documented nondeterministic write), which differ.
fn assert_differ_only_in_random_values(writer: &str, mirror: &str) {
    let mut w: Value = serde_json::from_str(writer).unwrap();
    let mut m: Value = serde_json::from_str(mirror).unwrap();
    let wr = w["randoms"].as_array_mut().unwrap();
    let mr = m["randoms"].as_array_mut().unwrap();
    assert_eq!(wr.len(), 1, "{writer}");
    assert_eq!(mr.len(), 1, "{mirror}");
    assert_ne!(wr[0]["value"], mr[0]["value"], "the random values differ");
    for row in wr.iter_mut().chain(mr.iter_mut()) {
        row["value"] = Value::Null;
    }
    assert_eq!(w, m, "the dumps differ beyond the random values");
}

/// D4, status only: `[compare]` looks at the status (no `Location` on `/random`, no body), so
/// the replay is accepted and the mirror carries on; the divergence it leaves behind is the
/// `randoms` value, which a dump diff (the `converge` check) catches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d4_random_output_replays_when_only_the_status_is_compared_and_the_dump_diff_sees_it() {
    let cluster = TestCluster::start_opts(cluster_with(
        "[compare]\nstatus = \"exact\"\nbody = false\n",
    ))
    .await;
    random_then_article(&cluster).await;
    cluster.wait_converged().await;
    let m = &cluster.mirrors[0];
    assert_differ_only_in_random_values(&cluster.writer.dump().await, &m.dump().await);
    let snap = Snapshot::take(&handles(&cluster)).await;
    let report = check_cluster(&snap);
    assert_eq!(report.failed(), vec!["converge"], "{report}");
    let problems = &report.check("converge").problems;
    assert!(problems[0].contains("randoms"), "{report}");
}

/// D4, body compared without a mask: the mirror's body carries another random value, so the
/// mirror halts at `/random` with a body-digest mismatch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d4_random_output_halts_a_mirror_that_compares_the_body_unmasked() {
    let cluster = TestCluster::start_opts(cluster_with(
        "[[compare.rule]]\npath = \"/random\"\nbody = true\n",
    ))
    .await;
    let seq = random_then_article(&cluster).await;
    let halt = cluster.wait_halted(0).await;
    assert_eq!(halt["seq"], seq, "{halt}");
    assert_eq!(halt["reason"], "body_mismatch", "{halt}");
    assert!(
        halt["detail"]
            .as_str()
            .unwrap()
            .starts_with("body_mismatch"),
        "{halt}"
    );
    let snap = Snapshot::take(&handles(&cluster)).await;
    check_cluster(&snap).assert_held("D4 unmasked");
    assert_eq!(snap.halted(), vec!["mirror-1".to_string()]);
}

/// D4, body compared with the random value declared volatile: the replay passes, and only the
/// dump diff still tells the nodes apart (by design: the value is nondeterministic).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d4_random_output_passes_with_its_value_declared_volatile() {
    let cluster = TestCluster::start_opts(cluster_with(
        "[[compare.rule]]\npath = \"/random\"\nbody = true\nvolatile = ['\"value\":\"[0-9a-f]{32}\"']\n",
    ))
    .await;
    let seq = random_then_article(&cluster).await;
    cluster.wait_converged().await;
    let m = &cluster.mirrors[0];
    let e = m.node.api(&format!("/api/v1/log/{seq}")).await;
    assert_eq!(e["state"], "applied", "{e}");
    assert_differ_only_in_random_values(&cluster.writer.dump().await, &m.dump().await);
}

// === D6: a GET with a side effect ===

/// D6, default: GET is pass-through, so `/visit` moves only the counter of the node that served
/// it. Documented (README: give nodes a `[[capture.rule]]` for GETs with side effects); the dump
/// diff shows the drift.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d6_a_mutating_get_is_pass_through_by_default_and_the_dump_diff_shows_the_drift() {
    let cluster = TestCluster::start(1).await;
    let w = cluster.writer.client();
    for n in 1..=3 {
        let r = w.get("/visit").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), n.to_string());
        assert_eq!(r.seq(), None, "a pass-through GET is not logged");
    }
    assert_eq!(w.post_form("/articles", "title=a").await.status, 303);
    cluster.wait_converged().await;
    assert_eq!(cluster.writer.node.last_seq().await, 1);
    let wd: Value = serde_json::from_str(&cluster.writer.dump().await).unwrap();
    let md: Value = serde_json::from_str(&cluster.mirrors[0].dump().await).unwrap();
    assert_eq!(wd["counters"][0]["value"], 3, "{wd}");
    assert_eq!(md["counters"], serde_json::json!([]), "{md}");
    let snap = Snapshot::take(&handles(&cluster)).await;
    let report = check_cluster(&snap);
    assert_eq!(report.failed(), vec!["converge"], "{report}");
    assert!(
        report.check("converge").problems[0].contains("counters"),
        "{report}"
    );
}

/// D6, with `[[capture.rule]] GET /visit capture`: each visit is logged, replayed, and the
/// counters converge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d6_a_mutating_get_captured_by_a_rule_is_replicated_and_counters_converge() {
    let cluster = TestCluster::start_opts(cluster_with(
        "[[capture.rule]]\nmethod = \"GET\"\npath = \"/visit\"\naction = \"capture\"\n",
    ))
    .await;
    let w = cluster.writer.client();
    for n in 1..=3u64 {
        let r = w.get("/visit").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), n.to_string());
        assert_eq!(r.seq(), Some(n), "the GET is logged");
    }
    cluster.wait_converged().await;
    let md: Value = serde_json::from_str(&cluster.mirrors[0].dump().await).unwrap();
    assert_eq!(md["counters"][0]["value"], 3, "{md}");
    let snap = Snapshot::take(&handles(&cluster)).await;
    check_cluster(&snap).assert_held("D6 captured");
}

// === E3: sequence numbers across writer restarts ===

/// The `extra` a TestNode was started with, read back from its config file (everything after
/// the `[admin]` section `config_text` writes).
fn extra_of(node: &TestNode) -> String {
    let text = std::fs::read_to_string(node.config_path()).unwrap();
    let marker = "[admin]\nlisten = \"127.0.0.1:0\"\n\n";
    let at = text.find(marker).expect("config_text layout changed") + marker.len();
    text[at..].to_string()
}

/// E3. The writer restarts 20 times with a write between restarts: every write gets a sequence
/// number above every earlier one (never re-minted after a restart), the log has no gap, and
/// the mirror applies every one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e3_sequence_numbers_strictly_increase_across_twenty_writer_restarts() {
    let mut cluster = TestCluster::start(1).await;
    let extra = extra_of(&cluster.writer.node);
    let history = History::new("e3");
    let mut seqs = Vec::new();
    for round in 0..=20 {
        if round > 0 {
            let TestCluster {
                certs,
                writer,
                mirrors,
                chaos,
            } = cluster;
            let Member { name, node, cms } = writer;
            let dir = node.stop().await;
            let node = TestNode::start_in(
                dir,
                &cms.url(),
                Opts {
                    name: "writer",
                    extra: &extra,
                    ..Opts::default()
                },
            )
            .await;
            cluster = TestCluster {
                certs,
                writer: Member { name, node, cms },
                mirrors,
                chaos,
            };
        }
        let mut rec = history.recorder("writer", cluster.writer.node.public);
        let op = rec.add().await;
        let seq = op.seq.unwrap_or_else(|| panic!("round {round}: {op:?}"));
        if let Some(&prev) = seqs.last() {
            assert!(
                seq > prev,
                "round {round}: seq {seq} after {prev}: re-minted"
            );
        }
        seqs.push(seq);
        // Shipping resumes after each restart.
        cluster.wait_applied(0, seq).await;
    }
    assert_eq!(seqs.len(), 21);
    cluster.wait_converged().await;
    let snap = Snapshot::take(&handles(&cluster)).await;
    let report = check_all(&history, &snap);
    report.assert_held("E3");
    let m = snap.mirrors().next().unwrap();
    for seq in &seqs {
        assert_eq!(m.entries[seq]["state"], "applied", "seq {seq}");
    }
    assert_eq!(m.applied_seq(), *seqs.last().unwrap());
}

/// E3 with crashes: the writer is a real process, `kill -9`ed right after each acknowledged
/// write and restarted on the same data dir, 20 times. The sequence number the client was told
/// survives the crash (ACK), the next write gets a higher one (no re-mint of a number handed
/// out before the crash), and the mirror applies every one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e3_sequence_numbers_are_never_reminted_across_twenty_writer_kill_9s() {
    let mut cluster = ProcessCluster::start(ProcessClusterOpts::default()).await;
    let history = History::new("e3k");
    let mut seqs = Vec::new();
    let mut pids = Vec::new();
    for round in 0..=20 {
        if round > 0 {
            pids.push(cluster.writer.kill9());
            cluster.writer.start().await;
        }
        let mut rec = history.recorder("writer", cluster.writer.public());
        let op = rec.add().await;
        let seq = op
            .seq
            .unwrap_or_else(|| panic!("round {round}: {op:?}\n{}", cluster.logs()));
        if let Some(&prev) = seqs.last() {
            assert!(
                seq > prev,
                "round {round}: seq {seq} after {prev}: re-minted"
            );
        }
        seqs.push(seq);
    }
    // The crashes fired: 20 different writer processes were killed.
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(pids.len(), 20);
    cluster.wait_converged(Duration::from_secs(30)).await;
    let snap = Snapshot::take(&cluster.handles()).await;
    let report = check_all(&history, &snap);
    report.assert_held("E3 kill -9");
    let m = snap.mirrors().next().unwrap();
    for seq in &seqs {
        assert_eq!(m.entries[seq]["state"], "applied", "seq {seq}");
    }
    assert_eq!(snap.writer().last_seq(), *seqs.last().unwrap());
}

// === H3: the blob dedup race ===

/// The blob files under `data/blobs` (not the temp dir), and the files left in `blobs/tmp`.
fn blob_files(member: &Member) -> (Vec<std::path::PathBuf>, Vec<std::path::PathBuf>) {
    let root = member.node.dir.path().join("data/blobs");
    let mut blobs = Vec::new();
    let mut tmp = Vec::new();
    for sub in std::fs::read_dir(&root).unwrap().flatten() {
        if !sub.path().is_dir() {
            blobs.push(sub.path());
            continue;
        }
        let into = if sub.file_name() == "tmp" {
            &mut tmp
        } else {
            &mut blobs
        };
        into.extend(
            std::fs::read_dir(sub.path())
                .unwrap()
                .flatten()
                .map(|f| f.path()),
        );
    }
    (blobs, tmp)
}

/// H3. 20 clients upload the same ~2 MB body at once. The blob store is content-addressed, so
/// the writer must end with exactly one blob file for it, named by its blake3 and holding it,
/// no temp file left, every entry pointing at it; the mirror likewise, and converged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_twenty_concurrent_uploads_of_one_file_leave_one_verified_blob_on_each_node() {
    let cluster = TestCluster::start(1).await;
    // Under the fixture's 2M upload_max_filesize.
    let file: Vec<u8> = (0..1_900_000u32).map(|i| (i % 251) as u8).collect();
    let body = bytes::Bytes::from(multipart(
        "h3-boundary",
        &[("title", "same")],
        &[("file", "same.bin", &file)],
    ));
    let hash = blake3::hash(&body).to_hex().to_string();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let c = cluster.writer.client();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            c.post("/upload", "multipart/form-data; boundary=h3-boundary", body)
                .await
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 303, "{}", r.text());
        seqs.push(r.seq().unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=20).collect::<Vec<u64>>());
    cluster.wait_converged().await;

    for member in std::iter::once(&cluster.writer).chain(&cluster.mirrors) {
        let (blobs, tmp) = blob_files(member);
        assert_eq!(blobs.len(), 1, "{}: {blobs:?}", member.name);
        assert!(tmp.is_empty(), "{}: temp files left: {tmp:?}", member.name);
        let name: String = blobs[0]
            .strip_prefix(member.node.dir.path().join("data/blobs"))
            .unwrap()
            .iter()
            .map(|c| c.to_string_lossy().into_owned())
            .collect();
        assert_eq!(name, hash, "{}", member.name);
        let stored = std::fs::read(&blobs[0]).unwrap();
        assert_eq!(
            blake3::hash(&stored).to_hex().to_string(),
            hash,
            "{}: the blob's bytes do not hash to its name",
            member.name
        );
    }
    let snap = Snapshot::take(&handles(&cluster)).await;
    check_cluster(&snap).assert_held("H3");
    for node in &snap.nodes {
        for seq in 1..=20u64 {
            let e = &node.entries[&seq];
            assert_eq!(e["body_storage"], "blob", "{} seq {seq}", node.name);
            assert_eq!(e["body_hash"], hash.as_str(), "{} seq {seq}", node.name);
        }
    }
    let w: Value = serde_json::from_str(&snap.nodes[0].dump).unwrap();
    assert_eq!(w["uploads"].as_array().unwrap().len(), 20);
}

// === D5: a mirror's CMS a month ahead ===

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// libfaketime's environment for a process whose wall clock runs `offset` ahead.
fn faketime(offset: &str) -> [(&'static str, String); 3] {
    [
        ("LD_PRELOAD", LIBFAKETIME.to_string()),
        ("FAKETIME", offset.to_string()),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_string()),
    ]
}

/// `php -r CODE` under `env`, its stdout.
fn php_output(code: &str, env: &[(&str, &str)]) -> String {
    let out = std::process::Command::new("php")
        .args(["-r", code])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// D5. The mirror's PHP runs 31 days ahead (a month boundary crossed, whatever today is). The
/// fixture's writes do not depend on the date, so every replay matches and the dumps are
/// byte-equal: no false halt, and nothing for a dump diff to find.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d5_a_mirror_cms_a_month_ahead_converges_because_the_fixture_is_time_independent() {
    assert!(
        std::path::Path::new(LIBFAKETIME).exists(),
        "libfaketime missing: apt-get install faketime (scripts/check.sh installs it)"
    );
    let env = faketime("+31d");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // The fault fires: PHP under this environment is in another month.
    let month = "echo date('Y-m');";
    assert_ne!(
        php_output(month, &env),
        php_output(month, &[]),
        "faketime has no effect"
    );
    let mut cluster = TestCluster::start_opts(cluster_with(
        "[[capture.rule]]\nmethod = \"GET\"\npath = \"/visit\"\naction = \"capture\"\n",
    ))
    .await;
    cluster.mirrors[0].cms.restart_with_env(&env);
    let pid = cluster.mirrors[0].cms.pid();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(
        String::from_utf8_lossy(&environ).contains("FAKETIME=+31d"),
        "the mirror's CMS does not run under faketime"
    );

    let history = History::new("d5");
    let mut rec = history.recorder("writer", cluster.writer.node.public);
    for i in 0..4 {
        let op = if i % 2 == 0 {
            rec.add().await
        } else {
            rec.upload(&vec![i as u8; 40_000]).await
        };
        assert!(op.seq.is_some(), "{op:?}");
    }
    assert_eq!(cluster.writer.client().get("/visit").await.status, 200);
    cluster.wait_converged().await;
    let snap = Snapshot::take(&handles(&cluster)).await;
    check_all(&history, &snap).assert_held("D5");
}

//! H1: a mixed load at a bounded rate through a writer and two mirrors (real processes), with
//! copyist's memory (`VmRSS`, `VmHWM`) and open fds sampled from `/proc` every few seconds.
//! Reads, captured writes and uploads go to every node (writes sent to a mirror are forwarded
//! to the writer); at the end every history checker runs and nothing may have failed.
//!
//! `cargo test` runs it for a few seconds. `COPYIST_SOAK_MINUTES=30` (what
//! `scripts/chaos.sh --soak 30` sets) makes it a real soak, and only then is RSS growth over
//! the run held to a bound: a short run is all warm-up.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::history::check::{check_all, Snapshot};
use crate::support::history::vacuity::{Peak, ProcSample, RowReport};
use crate::support::history::{History, Load, Outcome, Workers};
use crate::support::process_cluster::{ProcessCluster, ProcessClusterOpts};
use crate::support::Client;

/// How long the load runs: `COPYIST_SOAK_MINUTES`, else a few seconds (CI).
fn soak_length() -> Duration {
    std::env::var("COPYIST_SOAK_MINUTES")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .map(|m| Duration::from_secs_f64(m * 60.0))
        .unwrap_or(Duration::from_secs(8))
}

/// Seconds between `/proc` samples.
const SAMPLE_EVERY: Duration = Duration::from_secs(3);

/// Writes per second per client loop (one loop per node), every fifth an upload.
const WRITE_RATE: f64 = 4.0;
/// Reads per second per reader loop (one per node).
const READ_RATE: f64 = 10.0;
/// Upload size: above `capture.inline_max` (16 KiB), so every upload is a blob.
const UPLOAD_BYTES: usize = 24 << 10;

/// Bounds any run must stay under, per node.
const MAX_HWM_KB: u64 = 256 << 10;
/// Open fds after quiescing may exceed those before the load by this much (lazily opened
/// files, pooled connections); a per-request leak exceeds it within seconds.
const FD_SLACK: u64 = 16;

/// Read answers by class: 2xx/3xx/404 are fine, anything else is an error.
#[derive(Default)]
struct Reads {
    ok: AtomicU64,
    errors: AtomicU64,
    last_error: std::sync::Mutex<String>,
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_load_through_a_writer_and_two_mirrors_keeps_memory_and_fds_bounded() {
    let length = soak_length();
    let cluster = ProcessCluster::start(ProcessClusterOpts {
        mirrors: 2,
        forward_writes: true,
        ..ProcessClusterOpts::default()
    })
    .await;
    let nodes: Vec<(String, std::net::SocketAddr, u32)> = std::iter::once(&cluster.writer)
        .chain(cluster.mirrors())
        .map(|n| (n.name.clone(), n.public(), n.pid()))
        .collect();
    let targets: Vec<(String, std::net::SocketAddr)> =
        nodes.iter().map(|(n, a, _)| (n.clone(), *a)).collect();
    let idle: Vec<ProcSample> = nodes
        .iter()
        .map(|(_, _, pid)| ProcSample::read(*pid).unwrap())
        .collect();

    let history = History::new("s");
    let writers = Workers::spawn(
        &history,
        &targets,
        targets.len(),
        Load {
            upload_every: 5,
            upload_bytes: UPLOAD_BYTES,
            stop_on_error: false,
            rate: Some(WRITE_RATE),
        },
    );
    let reads = Arc::new(Reads::default());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = targets
        .iter()
        .map(|(_, addr)| {
            let (c, reads, stop, history) = (
                Client::new(*addr),
                reads.clone(),
                stop.clone(),
                history.clone(),
            );
            tokio::spawn(async move {
                let mut pace = tokio::time::interval(Duration::from_secs_f64(1.0 / READ_RATE));
                pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    pace.tick().await;
                    n += 1;
                    // Pass-through reads: a health probe, and an article some client created.
                    let latest = history.last_id().unwrap_or(1);
                    let path = if n % 2 == 0 {
                        "/healthz".to_string()
                    } else {
                        format!("/article/{}", 1 + n % latest)
                    };
                    let r = c
                        .try_send(c.request("GET", &path).body(Default::default()).unwrap())
                        .await;
                    match r {
                        Ok(r) if r.status < 400 || r.status == 404 => {
                            reads.ok.fetch_add(1, Ordering::Relaxed);
                        }
                        other => {
                            reads.errors.fetch_add(1, Ordering::Relaxed);
                            *reads.last_error.lock().unwrap() =
                                format!("GET {path}: {:?}", other.map(|r| (r.status, r.text())));
                        }
                    }
                }
            })
        })
        .collect();

    // The soak itself: sample every node until the time is up.
    let started = Instant::now();
    let mut samples: Vec<Vec<ProcSample>> = vec![Vec::new(); nodes.len()];
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while started.elapsed() < length {
        tick.tick().await;
        for (i, (name, _, pid)) in nodes.iter().enumerate() {
            let s = ProcSample::read(*pid).unwrap_or_else(|| panic!("{name} exited"));
            samples[i].push(s);
        }
    }
    writers.finish().await;
    stop.store(true, Ordering::SeqCst);
    for r in readers {
        r.await.unwrap();
    }
    cluster.wait_converged(Duration::from_secs(120)).await;

    let snap = Snapshot::take(&cluster.handles()).await;
    let report = check_all(&history, &snap);
    let quiet: Vec<ProcSample> = nodes
        .iter()
        .map(|(_, _, pid)| ProcSample::read(*pid).unwrap())
        .collect();
    let mut peak = Peak::default();
    let mut lines = Vec::new();
    let mut growth_max = 0.0f64;
    for (i, (name, _, _)) in nodes.iter().enumerate() {
        for s in &samples[i] {
            peak.add(*s);
        }
        peak.add(quiet[i]);
        // RSS growth: median of the last quarter of the run against the second quarter (the
        // first is warm-up).
        let rss: Vec<u64> = samples[i].iter().map(|s| s.rss_kb).collect();
        let q = rss.len() / 4;
        let (early, late) = if q > 0 {
            (
                median(rss[q..2 * q].to_vec()),
                median(rss[rss.len() - q..].to_vec()),
            )
        } else {
            (idle[i].rss_kb, quiet[i].rss_kb)
        };
        let growth = late as f64 / early.max(1) as f64 - 1.0;
        growth_max = growth_max.max(growth);
        let fds_peak = samples[i].iter().map(|s| s.fds).max().unwrap_or(0);
        lines.push(format!(
            "{name}: idle {} KiB / {} fds; peak VmHWM {} KiB, {fds_peak} fds; quiet {} KiB / {} \
             fds; RSS {early} → {late} KiB ({:+.0} %)",
            idle[i].rss_kb,
            idle[i].fds,
            quiet[i].hwm_kb,
            quiet[i].rss_kb,
            quiet[i].fds,
            growth * 100.0
        ));
    }
    let summary = format!(
        "{:.1} min, {}, reads {} ok / {} errors; {}",
        started.elapsed().as_secs_f64() / 60.0,
        history.summary(),
        reads.ok.load(Ordering::Relaxed),
        reads.errors.load(Ordering::Relaxed),
        lines.join("; ")
    );
    eprintln!("soak: {summary}\n{report}");
    let long = length >= Duration::from_secs(5 * 60);
    let mut held = report.held()
        && history.count(Outcome::Ok) == history.len()
        && reads.errors.load(Ordering::Relaxed) == 0;
    for i in 0..nodes.len() {
        held &= quiet[i].hwm_kb < MAX_HWM_KB && quiet[i].fds <= idle[i].fds + FD_SLACK;
    }
    if long {
        held &= growth_max < 0.25;
    }
    RowReport {
        row: "H1".into(),
        test: format!(
            "{} mixed soak: writer + 2 mirrors",
            humantime::format_duration(Duration::from_secs(length.as_secs()))
        ),
        faults: 0,
        held,
        ops: history.len() + reads.ok.load(Ordering::Relaxed) as usize,
        peak,
        note: format!(
            "{} writes ({} uploads), {} reads; max RSS growth {:+.0} % (2nd → 4th quarter)",
            history.len(),
            history
                .ops()
                .iter()
                .filter(|o| o.op == crate::support::history::OpKind::Upload)
                .count(),
            reads.ok.load(Ordering::Relaxed) + reads.errors.load(Ordering::Relaxed),
            growth_max * 100.0
        ),
    }
    .emit();

    report.assert_held("soak");
    let failed: Vec<_> = history
        .ops()
        .into_iter()
        .filter(|o| o.outcome != Outcome::Ok)
        .take(5)
        .collect();
    assert!(
        failed.is_empty(),
        "writes failed under a modest load: {failed:?}"
    );
    assert_eq!(
        reads.errors.load(Ordering::Relaxed),
        0,
        "reads failed: {}",
        reads.last_error.lock().unwrap()
    );
    assert!(
        history
            .ops()
            .iter()
            .any(|o| o.op == crate::support::history::OpKind::Upload)
            && history.ops().iter().any(|o| o.via == "mirror-2"),
        "the load reached every node with every kind of write: {}",
        history.summary()
    );
    for (i, (name, _, _)) in nodes.iter().enumerate() {
        assert!(
            quiet[i].hwm_kb < MAX_HWM_KB,
            "{name}: VmHWM {} KiB: {summary}",
            quiet[i].hwm_kb
        );
        assert!(
            quiet[i].fds <= idle[i].fds + FD_SLACK,
            "{name}: {} fds after the load, {} before: a leak? {summary}",
            quiet[i].fds,
            idle[i].fds
        );
    }
    if long {
        assert!(
            growth_max < 0.25,
            "RSS grew {:.0} % over the soak: {summary}",
            growth_max * 100.0
        );
    }
}

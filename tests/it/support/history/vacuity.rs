//! VACUITY and the chaos summary: a fault test proves its fault fired, and passes its checkers
//! with the fault off too ([`null_control`]); copyist's memory and fds are read from `/proc`
//! ([`ProcSample`], [`Peak`]); and each run appends one row to `$COPYIST_CHAOS_REPORT` for
//! `scripts/chaos.sh` ([`RowReport`]).

use std::future::Future;
use std::io::Write;

use super::check::Report;

/// One reading of a process's `/proc/PID/status` and `/proc/PID/fd`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcSample {
    /// Resident set size now, KiB.
    pub rss_kb: u64,
    /// Peak resident set size over the process's life (`VmHWM`), KiB.
    pub hwm_kb: u64,
    /// Open file descriptors.
    pub fds: u64,
}

impl ProcSample {
    /// Reads `pid`; None once it has exited.
    pub fn read(pid: u32) -> Option<ProcSample> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
        Some(ProcSample {
            rss_kb: field("VmRSS:"),
            hwm_kb: field("VmHWM:"),
            fds,
        })
    }
}

/// The highest readings seen, over any number of processes and samples.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Peak {
    pub hwm_kb: u64,
    pub fds: u64,
}

impl Peak {
    pub fn add(&mut self, s: ProcSample) {
        self.hwm_kb = self.hwm_kb.max(s.hwm_kb).max(s.rss_kb);
        self.fds = self.fds.max(s.fds);
    }

    /// Samples `pid` (a no-op once it has exited). Call it just before a `kill -9`: `VmHWM`
    /// then covers the process's whole life.
    pub fn sample(&mut self, pid: u32) {
        if let Some(s) = ProcSample::read(pid) {
            self.add(s);
        }
    }

    pub fn merge(&mut self, other: Peak) {
        self.hwm_kb = self.hwm_kb.max(other.hwm_kb);
        self.fds = self.fds.max(other.fds);
    }
}

/// One line of the chaos summary: a test run, its fault count and whether its invariants held.
#[derive(Clone, Debug, Default)]
pub struct RowReport {
    /// RELIABILITY.md row id(s), e.g. `A1` or `A3+A5`.
    pub row: String,
    /// What ran, in a few words.
    pub test: String,
    /// How many times the fault fired (kills, crashes, …).
    pub faults: u64,
    pub held: bool,
    /// Client ops recorded.
    pub ops: usize,
    pub peak: Peak,
    /// Anything else worth a column (e.g. "3 in-doubt settled").
    pub note: String,
}

impl RowReport {
    /// Appends the row to `$COPYIST_CHAOS_REPORT` (tab-separated: row, test, faults, held,
    /// ops, peak KiB, peak fds, note), when set. `cargo test` alone leaves it unset.
    pub fn emit(&self) {
        eprintln!(
            "chaos row {}: {} — faults {}, invariants {}, {} ops, peak {} KiB / {} fds {}",
            self.row,
            self.test,
            self.faults,
            if self.held { "held" } else { "BROKEN" },
            self.ops,
            self.peak.hwm_kb,
            self.peak.fds,
            self.note
        );
        let Some(path) = std::env::var_os("COPYIST_CHAOS_REPORT") else {
            return;
        };
        let clean = |s: &str| s.replace(['\t', '\n'], " ");
        let line = format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
            clean(&self.row),
            clean(&self.test),
            self.faults,
            if self.held { "yes" } else { "no" },
            self.ops,
            self.peak.hwm_kb,
            self.peak.fds,
            clean(&self.note)
        );
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(line.as_bytes()).unwrap();
    }
}

/// What one run of a fault test produced.
#[derive(Debug)]
pub struct Run {
    /// How many times the fault fired (e.g. pids that changed under `kill -9`).
    pub fired: u64,
    /// The checkers' verdict on the run.
    pub report: Report,
    pub ops: usize,
    pub peak: Peak,
    pub note: String,
}

/// Runs `body` twice: with the fault off (`body(false)`), then on (`body(true)`). The checkers
/// must hold both times, the fault must fire with it on and never with it off: a test whose
/// fault silently stopped firing, or whose checkers reject a fault-free run, fails here
/// (VACUITY; pgcolumnar#223). Emits a chaos row for the faulty run and returns both runs.
pub async fn null_control<F, Fut>(row: &str, test: &str, mut body: F) -> (Run, Run)
where
    F: FnMut(bool) -> Fut,
    Fut: Future<Output = Run>,
{
    let off = body(false).await;
    eprintln!("{row} null control (fault off):\n{}", off.report);
    assert_eq!(
        off.fired, 0,
        "{row}: the fault fired {} times while disabled",
        off.fired
    );
    off.report.assert_held(&format!("{row} with the fault off"));

    let on = body(true).await;
    eprintln!("{row} fault on ({} fired):\n{}", on.fired, on.report);
    RowReport {
        row: row.to_string(),
        test: test.to_string(),
        faults: on.fired,
        held: on.report.held(),
        ops: on.ops,
        peak: on.peak,
        note: on.note.clone(),
    }
    .emit();
    assert!(on.fired > 0, "{row}: VACUITY: the fault never fired");
    on.report.assert_held(&format!("{row} with the fault on"));
    (off, on)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::support::history::check::Check;

    fn run(fired: u64, held: bool) -> Run {
        let mut report = Report::default();
        report.checks.push(Check {
            name: "set",
            invariants: "ACK",
            problems: if held { vec![] } else { vec!["lost".into()] },
            note: String::new(),
        });
        Run {
            fired,
            report,
            ops: 1,
            peak: Peak::default(),
            note: String::new(),
        }
    }

    async fn control(on: (u64, bool), off: (u64, bool)) -> bool {
        let h = tokio::spawn(async move {
            null_control("T0", "unit", |fault| async move {
                if fault {
                    run(on.0, on.1)
                } else {
                    run(off.0, off.1)
                }
            })
            .await;
        });
        h.await.is_ok()
    }

    #[tokio::test]
    async fn null_control_fails_a_silent_fault_a_leaky_control_or_a_broken_checker() {
        assert!(control((3, true), (0, true)).await, "a good test passes");
        assert!(!control((0, true), (0, true)).await, "fault never fired");
        assert!(!control((3, true), (1, true)).await, "fired while off");
        assert!(
            !control((3, false), (0, true)).await,
            "invariant broken under the fault"
        );
        assert!(
            !control((3, true), (0, false)).await,
            "checkers reject a clean run"
        );
    }

    #[test]
    fn this_process_can_be_sampled() {
        let s = ProcSample::read(std::process::id()).unwrap();
        assert!(s.rss_kb > 0 && s.hwm_kb >= s.rss_kb && s.fds > 2, "{s:?}");
        let mut p = Peak::default();
        p.add(s);
        assert_eq!(p.hwm_kb, s.hwm_kb);
        assert!(ProcSample::read(u32::MAX).is_none());
    }
}

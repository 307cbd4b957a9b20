//! Storage faults injected into a real `copyist run` with strace (Debian `strace`; root):
//! failing or slowing `fsync`/`fdatasync`, failing `write` on one path. Each injection is
//! logged to an `inj.log`, so a test can prove its fault fired (VACUITY).
//!
//! Two ways in: [`prefix`] for `NodeProcess::start_wrapped` (traced from its first syscall,
//! fine for faults that only a request can reach, such as writes under `blobs/`), and [`attach`]
//! to a node already up (for faults that startup would hit too). strace counts `when=N+` per
//! thread, and tokio runs blocking work on whichever pool thread is free, so "the Nth fsync of
//! the process" cannot be aimed at from the start; attaching once the node is up and failing
//! every call from then on (`when=1+`) can.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `strace -f -qq -o LOG ARGS…`: the front of a command line; the traced program follows.
pub fn prefix(log: &Path, args: &[&str]) -> Vec<OsString> {
    let mut v: Vec<OsString> = ["strace", "-f", "-qq", "-o"]
        .iter()
        .map(OsString::from)
        .collect();
    v.push(log.as_os_str().to_owned());
    v.extend(args.iter().map(OsString::from));
    v
}

/// A strace attached to a running process; detached (killed) on drop.
pub struct Attached {
    child: Child,
    pub log: PathBuf,
}

/// Attaches `strace -f -qq -o log ARGS -p pid` and waits until every thread of `pid` is
/// traced, so the next syscall of interest is already subject to the injection.
pub async fn attach(pid: u32, log: &Path, args: &[&str]) -> Attached {
    // Waited for by `Attached`'s drop (clippy does not follow the move into it).
    #[allow(clippy::zombie_processes)]
    let mut child = Command::new("strace")
        .args(["-f", "-qq", "-o"])
        .arg(log)
        .args(args)
        .args(["-p", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("strace not found (apt-get install strace)");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if all_traced(pid) {
            return Attached {
                child,
                log: log.to_path_buf(),
            };
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("strace did not attach to {pid}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        // SIGKILL of strace detaches its tracees (they run on, untraced).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether every thread of `pid` has a tracer.
fn all_traced(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let mut any = false;
    for task in tasks.flatten() {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let tracer = status
            .lines()
            .find_map(|l| l.strip_prefix("TracerPid:"))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default();
        if tracer.is_empty() || tracer == "0" {
            return false;
        }
        any = true;
    }
    any
}

/// The one child process of `parent` (the program a wrapper such as strace started).
pub fn child_of(parent: u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let children = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
            .unwrap_or_default();
        if let Some(pid) = children
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
        {
            return pid;
        }
        assert!(Instant::now() < deadline, "{parent} has no child process");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The lines of an strace log that record an injection (`… (INJECTED)` for errors,
/// `(DELAYED)` for delays) of `syscall`.
pub fn injections(log: &Path, syscall: &str) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            // `PID fsync(5) = -1 EIO (…) (INJECTED)`, or a `<... fsync resumed>` line.
            let call = l.contains(&format!(" {syscall}("))
                || l.contains(&format!("<... {syscall} resumed>"));
            call && (l.contains("(INJECTED)") || l.contains("(DELAYED)"))
        })
        .map(str::to_owned)
        .collect()
}

/// Every line of the strace log, for failure messages.
pub fn text(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

//! Test support: real nodes on port 0 in fresh temp dirs, a recording stub origin, the PHP
//! fixture CMS, raw-socket and HTTP clients, and `assert_eventually!`.

#![allow(dead_code)]

pub mod chaos;
pub mod client;
pub mod cluster;
pub mod haproxy;
pub mod history;
pub mod netns;
pub mod node;
pub mod origin;
pub mod php;
pub mod process_cluster;
pub mod strace;

pub use client::{raw, Client, Reply};
pub use node::{NodeProcess, TestNode};
pub use origin::StubOrigin;
pub use php::PhpCms;

/// Waits for a condition with a deadline, polling; never a bare sleep.
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr, $($msg:tt)+) => {{
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            if $cond {
                break;
            }
            if std::time::Instant::now() > deadline {
                panic!($($msg)+);
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }};
}

/// Logs to stderr when `TEST_LOG` is set (zero2prod's habit); silent otherwise.
pub fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "copyist=debug,hyper_util=debug,hyper=debug",
            ))
            .with_test_writer()
            .try_init();
    }
}

/// A small tmpfs mounted over a node's data directory, unmounted on drop: a real disk-full.
/// Needs root, as CI has.
pub struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    pub fn mount(path: &std::path::Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(path).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .expect("mount not found");
        assert!(
            out.status.success(),
            "mounting a tmpfs needs root (CI runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk(path.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

//! Configuration reload on SIGHUP (`systemctl reload copyist`, `kill -HUP PID`): the file the
//! node started with is read and validated again, exactly as at startup, and what can change
//! while serving is swapped in.
//!
//! [`Live`] holds the configuration in force. Everything that reads a reloadable setting does
//! it through [`Live::current`]: one atomic load (an `ArcSwap`), no lock, so a reload never
//! waits for a request and a request never waits for a reload. A request takes one snapshot
//! and uses it to the end: it never sees half a reload.
//!
//! What a reload does ([`Reloader::reload`]):
//! * An invalid file changes nothing: every problem is logged at error level as
//!   `FILE:LINE:COLUMN: [section] key: message`, `copyist_config_reload_success` drops to 0,
//!   and the node keeps its configuration.
//! * A valid file: the settings in [`merge`]'s live list take effect at once (each named in
//!   one info line); each changed setting that needs a restart is named in a warning and keeps
//!   its old value until then. The access log is reopened (logrotate's `postrotate`), at its
//!   new path if that changed; a log that cannot be opened rejects the whole reload.
//!
//! This module owns the swap and the comparison; it never binds, opens storage or contacts a
//! peer.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::access_log::{self, AccessLog};
use crate::admin::metrics::Metrics;
use crate::config::{Config, ConfigError};
use crate::shutdown::{Hangups, Shutdown};

/// The configuration in force, shared by everything that reads a reloadable setting. Cheap to
/// clone.
#[derive(Clone, Debug)]
pub struct Live(Arc<ArcSwap<Config>>);

impl Live {
    /// Starts with `config`.
    pub fn new(config: Config) -> Live {
        Live(Arc::new(ArcSwap::from_pointee(config)))
    }

    /// The configuration in force now: a snapshot, unaffected by later reloads.
    pub fn current(&self) -> Arc<Config> {
        self.0.load_full()
    }

    fn store(&self, config: Config) {
        self.0.store(Arc::new(config));
    }
}

/// What a reload changed, by setting name (`[section] key`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Changed and in force now.
    pub applied: Vec<&'static str>,
    /// Changed in the file, but in force only after a restart.
    pub restart: Vec<&'static str>,
}

/// Why a reload was rejected (the old configuration stays).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file cannot be read or is invalid.
    #[error("invalid configuration")]
    Config(#[from] ConfigError),
    /// The (new) access log cannot be opened.
    #[error("cannot open the access log {path}")]
    AccessLog {
        /// The file.
        path: std::path::PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A blocking step died.
    #[error("reload task failed")]
    Task(#[from] tokio::task::JoinError),
}

/// `running` with the live settings of `file` applied, and what differs. Restart-only settings
/// keep their running values, so nothing reads a value that is not in force; any difference
/// not named here is reported as needing a restart, so a setting added later is never applied
/// half-way by mistake.
pub fn merge(running: &Config, file: &Config) -> (Config, Changes) {
    let mut next = running.clone();
    let mut changes = Changes::default();
    // Copies one setting from `file` into `next` when it differs, and names it.
    macro_rules! live {
        ($name:literal, $($field:ident).+) => {
            if next.$($field).+ != file.$($field).+ {
                next.$($field).+ = file.$($field).+.clone();
                changes.applied.push($name);
            }
        };
    }
    // Read per request (limits, timeouts) or per new connection (hyper's own limits).
    live!("[public] trusted_proxies", public.trusted_proxies);
    live!("[public] header_read_timeout", public.header_read_timeout);
    live!("[public] body_read_timeout", public.body_read_timeout);
    live!("[public] send_timeout", public.send_timeout);
    live!("[public] max_header_bytes", public.max_header_bytes);
    live!("[public] max_headers", public.max_headers);
    live!("[public] max_body_bytes", public.max_body_bytes);
    live!("[public] access_log", public.access_log);
    // Read by the probe at each round, and by the endpoints at each answer.
    live!("[health] probe_path", health.probe_path);
    live!("[health] probe_interval", health.probe_interval);
    live!("[health] probe_timeout", health.probe_timeout);
    live!("[health] maintenance_file", health.maintenance_file);
    live!("[health] drain_status", health.drain_status);
    live!("[health] shutdown_delay", health.shutdown_delay);
    // Read per captured request (and by `log show`).
    live!("[capture] success_status", capture.success_statuses);
    live!("[[capture.rule]]", capture.rules);
    live!("[capture] inline_max", capture.inline_body_max);
    live!("[capture] max_response_buffer", capture.max_response_buffer);
    live!("[capture.multipart] max_parts", capture.multipart.max_parts);
    live!(
        "[capture.multipart] max_field_bytes",
        capture.multipart.max_field_bytes
    );
    live!("[capture] mask_fields", capture.mask_fields);

    // Fixed at startup: listeners, storage, identities, peers, the origin client.
    let (r, f) = (running, file);
    let fixed = [
        ("[node] name", r.node.name != f.node.name),
        ("[node] role", r.node.role != f.node.role),
        ("[node] data_dir", r.node.data_dir != f.node.data_dir),
        ("[public] listen", r.public.listen != f.public.listen),
        ("[public] tls_cert/tls_key", r.public.tls != f.public.tls),
        ("[origin] url", r.origin.url != f.origin.url),
        (
            "[origin] connect_timeout",
            r.origin.connect_timeout != f.origin.connect_timeout,
        ),
        (
            "[origin] response_timeout",
            r.origin.response_timeout != f.origin.response_timeout,
        ),
        (
            "[origin] idle_timeout",
            r.origin.idle_timeout != f.origin.idle_timeout,
        ),
        (
            "[origin] max_idle_per_host",
            r.origin.max_idle_per_host != f.origin.max_idle_per_host,
        ),
        ("[admin] listen", r.admin.listen != f.admin.listen),
        (
            "[log] cache_capacity",
            r.log.cache_capacity != f.log.cache_capacity,
        ),
        (
            "[log] encryption_key_file",
            r.log.encryption_key_file != f.log.encryption_key_file,
        ),
        ("[[mirrors]]", r.mirrors != f.mirrors),
        ("[compare]", r.compare != f.compare),
    ];
    changes.restart.extend(
        fixed
            .iter()
            .filter(|(_, changed)| *changed)
            .map(|(n, _)| *n),
    );
    match (&r.replication, &f.replication) {
        (Some(a), Some(b)) => {
            let fields = [
                ("[replication] listen", a.listen != b.listen),
                (
                    "[replication] ca/cert/key",
                    (&a.ca, &a.cert, &a.key) != (&b.ca, &b.cert, &b.key),
                ),
                ("[replication] window", a.window != b.window),
                ("[replication] retry_max", a.retry_max != b.retry_max),
                (
                    "[replication] request_timeout",
                    a.request_timeout != b.request_timeout,
                ),
            ];
            changes
                .restart
                .extend(fields.iter().filter(|(_, c)| *c).map(|(n, _)| *n));
        }
        (a, b) if a != b => changes.restart.push("[replication]"),
        _ => {}
    }
    match (&r.writer, &f.writer) {
        (Some(a), Some(b)) => {
            if a.name != b.name {
                changes.restart.push("[writer] name");
            }
            if a.url != b.url {
                changes.restart.push("[writer] url");
            }
            let mut rest = a.clone();
            rest.name.clone_from(&b.name);
            rest.url = b.url.clone();
            if rest != *b {
                changes.restart.push("[writer]");
            }
        }
        (a, b) if a != b => changes.restart.push("[writer]"),
        _ => {}
    }
    if changes.restart.is_empty() && next != *file {
        changes
            .restart
            .push("settings not reloadable while running");
    }
    (next, changes)
}

/// Reloads the configuration of one node on SIGHUP.
pub struct Reloader {
    live: Live,
    access_log: AccessLog,
    metrics: Arc<Metrics>,
}

impl Reloader {
    /// Reloads into `live`, reopens `access_log`, and reports to `metrics`.
    pub fn new(live: Live, access_log: AccessLog, metrics: Arc<Metrics>) -> Reloader {
        Reloader {
            live,
            access_log,
            metrics,
        }
    }

    /// Reloads at each SIGHUP until shutdown, telling systemd `RELOADING=1` … `READY=1`.
    pub async fn run(self, mut hangups: Hangups, mut shutdown: Shutdown) {
        loop {
            tokio::select! {
                () = hangups.recv() => {}
                () = shutdown.recv() => return,
            }
            tracing::info!("received SIGHUP, reloading the configuration");
            crate::systemd::reloading();
            let status = match self.reload().await {
                Ok(_) => "configuration reloaded",
                Err(_) => "configuration reload rejected; running with the previous one",
            };
            crate::systemd::notify(&format!("READY=1\nSTATUS={status}"));
        }
    }

    /// One reload: reads and validates the file, reopens the access log, swaps the live
    /// settings in. Logs the outcome and records it in the metrics either way.
    pub async fn reload(&self) -> Result<Changes, ReloadError> {
        let result = self.try_reload().await;
        match &result {
            Ok(changes) => {
                self.metrics.config_reloaded(true);
                report(changes);
            }
            Err(e) => {
                self.metrics.config_reloaded(false);
                let path = self.live.current().path.clone();
                let file = path.display();
                match e {
                    ReloadError::Config(config) => {
                        tracing::error!(
                            %file,
                            problems = config.problems.len(),
                            "configuration reload rejected: the file is invalid; still running with the previous configuration"
                        );
                        // One line per problem, each naming FILE:LINE:COLUMN.
                        for problem in config.to_string().lines() {
                            tracing::error!("{problem}");
                        }
                    }
                    other => tracing::error!(
                        %file,
                        error = %crate::error::error_chain(other),
                        "configuration reload rejected; still running with the previous configuration"
                    ),
                }
            }
        }
        result
    }

    async fn try_reload(&self) -> Result<Changes, ReloadError> {
        let running = self.live.current();
        let path = running.path.clone();
        let file = tokio::task::spawn_blocking(move || Config::load(&path)).await??;
        let (next, changes) = merge(&running, &file);
        // Opened before anything is swapped: a log that cannot be opened rejects the reload
        // whole rather than leaving it half applied.
        let log = match next.public.access_log.clone() {
            Some(path) => Some(
                tokio::task::spawn_blocking(move || {
                    access_log::open(&path)
                        .map_err(|source| ReloadError::AccessLog { path, source })
                })
                .await??,
            ),
            None => None,
        };
        self.access_log.reopen(log).await;
        self.live.store(next);
        Ok(changes)
    }
}

/// Logs what a successful reload changed.
fn report(changes: &Changes) {
    if changes.applied.is_empty() {
        tracing::info!("configuration reloaded: no live setting changed (access log reopened)");
    } else {
        tracing::info!(
            applied = %changes.applied.join(", "),
            "configuration reloaded: new settings in force"
        );
    }
    for setting in &changes.restart {
        tracing::warn!(
            %setting,
            "changed in the configuration file, but takes effect only after a restart; the running value stays"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(extra: &str) -> Config {
        let text = format!(
            r#"
[node]
name = "w"
role = "writer"
data_dir = "/tmp/w"

[public]
listen = "127.0.0.1:8080"
{extra}

[origin]
url = "http://127.0.0.1:8081"
"#
        );
        Config::from_toml(&text, Path::new("/etc/copyist/proxy.toml")).unwrap()
    }

    #[test]
    fn the_same_file_changes_nothing() {
        let c = config("");
        let (next, changes) = merge(&c, &c);
        assert_eq!(next, c);
        assert_eq!(changes, Changes::default());
    }

    #[test]
    fn live_settings_are_applied_and_named() {
        let running = config("");
        let file = config(
            "max_body_bytes = \"1KiB\"\naccess_log = \"/var/log/a.log\"\n\
             [[capture.rule]]\nmethod = \"GET\"\npath = \"/visit\"\naction = \"capture\"\n\
             [health]\ndrain_status = 404\n",
        );
        let (next, changes) = merge(&running, &file);
        assert_eq!(next, file);
        assert_eq!(
            changes.applied,
            [
                "[public] max_body_bytes",
                "[public] access_log",
                "[health] drain_status",
                "[[capture.rule]]"
            ]
        );
        assert!(changes.restart.is_empty(), "{changes:?}");
    }

    #[test]
    fn restart_settings_keep_their_running_value_and_are_named() {
        let running = config("");
        let mut file = config("max_body_bytes = 10\n");
        file.public.listen = "127.0.0.1:9090".parse().unwrap();
        file.node.name = "w2".into();
        file.log.cache_capacity += 1;
        file.log.encryption_key_file = Some("/etc/copyist/log.key".into());
        file.origin.url = "http://127.0.0.1:9/".parse().unwrap();
        let (next, changes) = merge(&running, &file);
        assert_eq!(next.public.listen, running.public.listen);
        assert_eq!(next.node.name, "w");
        assert_eq!(next.log, running.log);
        assert_eq!(next.origin, running.origin);
        assert_eq!(next.public.max_body_bytes, 10);
        assert_eq!(changes.applied, ["[public] max_body_bytes"]);
        assert_eq!(
            changes.restart,
            [
                "[node] name",
                "[public] listen",
                "[origin] url",
                "[log] cache_capacity",
                "[log] encryption_key_file"
            ]
        );
    }

    #[test]
    fn a_new_section_needs_a_restart() {
        let running = config("");
        let mut file = running.clone();
        file.mirrors.push(crate::config::MirrorConfig {
            name: "m".into(),
            url: "https://127.0.0.1:9444/".parse().unwrap(),
        });
        let (next, changes) = merge(&running, &file);
        assert_eq!(next, running);
        assert_eq!(changes.restart, ["[[mirrors]]"]);
    }
}

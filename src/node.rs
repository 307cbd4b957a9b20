//! The composition root: builds a node from a [`Config`] and runs it. Tests start nodes through
//! this too, exactly as `copyist run` does.
//!
//! [`Node::build`] does everything that can fail at start-up (data directory, log recovery,
//! listeners bound, so port 0 works) before anything is served; [`Node::run`] serves until
//! shutdown and drains. Only this module spawns long-lived tasks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::access_log::{self, AccessLog};
use crate::admin::metrics::Metrics;
use crate::admin::{self, AdminState, Health, Prober};
use crate::apply::{self, Replication};
use crate::blobs::{BlobError, BlobStore};
use crate::capture::Capture;
use crate::config::Config;
use crate::config::Role;
use crate::log::{Log, LogError, Seq};
use crate::origin::Origin;
use crate::proxy::Proxy;
use crate::reload::{Live, Reloader};
use crate::ship::peer::Peer;
use crate::ship::Shipper;
use crate::shutdown::Shutdown;
use crate::tls::{self, TlsError};

/// How long open connections may finish after shutdown begins.
const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// Name of the file in `data_dir` holding the admin listener's bound address, so the CLI finds a
/// node whose config says port 0.
pub const ADMIN_ADDR_FILE: &str = "admin.addr";

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The data directory (or a directory in it) could not be created.
    #[error("data directory {path}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The log could not be opened or recovered.
    #[error("opening the log")]
    Log(#[from] LogError),
    /// The blob store could not be opened.
    #[error("opening the blob store")]
    Blobs(#[from] BlobError),
    /// `[log] encryption_key_file` is set but holds no usable key.
    #[error("encryption at rest")]
    Key(#[from] crate::crypt::KeyError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what})")]
    Bind {
        /// "public", "admin" or "replication".
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A TLS certificate or key is unusable.
    #[error("TLS")]
    Tls(#[from] TlsError),
    /// The access log cannot be opened for appending.
    #[error("cannot open the access log {path}")]
    AccessLog {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A startup task died.
    #[error("startup task failed")]
    Task(#[from] tokio::task::JoinError),
}

/// A built node: storage open, listeners bound, nothing served yet.
pub struct Node {
    config: Config,
    proxy: Proxy,
    admin: AdminState,
    public: TcpListener,
    admin_listener: TcpListener,
    tls: Option<TlsAcceptor>,
    in_doubt: Vec<Seq>,
    /// The replication listener, when `[replication]` is configured.
    replication: Option<(TcpListener, TlsAcceptor, Replication)>,
    /// One shipper per configured mirror (writer only).
    shippers: Vec<Shipper>,
    /// Cached health, and the background probe that keeps it fresh.
    health: (Health, Prober),
    /// The configuration in force (reloadable settings are read from it).
    live: Live,
    /// SIGHUP: re-reads the config into `live`, reopens the access log.
    reloader: Reloader,
    /// The access log's writer task.
    access_log: access_log::Writer,
}

impl Node {
    /// Opens storage and binds listeners. Steps are numbered; each can fail with a clear error.
    pub async fn build(config: Config) -> Result<Node, NodeError> {
        // 1. Data directory layout.
        let data = config.node.data_dir.clone();
        let spill_dir = data.join("tmp");
        for dir in [&data, &spill_dir] {
            std::fs::create_dir_all(dir).map_err(|source| NodeError::DataDir {
                path: dir.clone(),
                source,
            })?;
        }
        // 2. The log: recovery turns interrupted Pending entries into InDoubt. With a key, the
        // log and the blobs are encrypted at rest; a missing or bad key stops the node here.
        let key = match &config.log.encryption_key_file {
            Some(path) => Some(crate::crypt::NodeKey::load(path)?),
            None => None,
        };
        if let Some(key) = &key {
            tracing::info!(key_id = %key.id(), "encrypting the log, blobs and spill files at rest");
        }
        let log_dir = data.join("log");
        let cache = config.log.cache_capacity;
        let log_key = key.clone();
        let (log, in_doubt) = tokio::task::spawn_blocking(move || {
            Log::open_with_key(&log_dir, cache, log_key.as_ref())
        })
        .await??;
        for seq in &in_doubt {
            tracing::warn!(%seq, "entry was pending (writer) or applying (mirror) when the node stopped: now in-doubt");
        }
        // 3. Blobs, metrics, the live configuration, the access log, origin, capture.
        let blobs = BlobStore::open_with_key(&data.join("blobs"), key.as_ref())?;
        drop(key);
        let metrics = Arc::new(Metrics::new(data.join("blobs")));
        let live = Live::new(config.clone());
        let log_file = match &config.public.access_log {
            Some(path) => Some(
                access_log::open(path).map_err(|source| NodeError::AccessLog {
                    path: path.clone(),
                    source,
                })?,
            ),
            None => None,
        };
        let (access_log, access_writer): (AccessLog, _) =
            access_log::channel(log_file, metrics.clone());
        let origin = Origin::new(&config.origin);
        let capture = Capture::new(
            log.clone(),
            blobs.clone(),
            origin.clone(),
            live.clone(),
            config.compare.clone(),
            spill_dir,
            metrics.clone(),
        );
        // 4. TLS and listeners, bound now so a port-0 config learns its ports before serving.
        let tls = config
            .public
            .tls
            .as_ref()
            .map(tls::public_acceptor)
            .transpose()?;
        let public = bind("public", config.public.listen).await?;
        let admin_listener = bind("admin", config.admin.listen).await?;
        if let Ok(addr) = admin_listener.local_addr() {
            let file = data.join(ADMIN_ADDR_FILE);
            if let Err(source) = std::fs::write(&file, addr.to_string()) {
                return Err(NodeError::DataDir { path: file, source });
            }
        }
        // 5. Replication: the mTLS listener, and on a writer one shipper per mirror.
        let mut shippers = Vec::new();
        let mut replication = None;
        let mut writer_peer: Option<crate::admin::health::WriterPeer> = None;
        let mut forward_peer = None;
        if let Some(rc) = &config.replication {
            let server = tls::replication_server(rc)?;
            let client = tls::replication_client(rc)?;
            // A mirror's health probe asks its writer how far ahead it is (the mirror's lag),
            // with `probe_timeout` (reloadable: the probe rebuilds its client when it changes).
            if let (Role::Mirror, Some(w)) = (config.node.role, &config.writer) {
                let (name, url, tls) = (w.name.clone(), w.url.clone(), client.clone());
                writer_peer = Some(Box::new(move |timeout| {
                    Peer::new(&name, &url, tls.clone(), timeout)
                }));
                // Client writes that reach this mirror go to the writer on their own connection.
                forward_peer = Some(Peer::new(
                    &w.name,
                    &w.url,
                    client.clone(),
                    rc.request_timeout,
                ));
            }
            if config.node.role == Role::Writer {
                for m in &config.mirrors {
                    let peer = Peer::new(&m.name, &m.url, client.clone(), rc.request_timeout);
                    shippers.push(Shipper::new(
                        peer,
                        log.clone(),
                        blobs.clone(),
                        rc.window,
                        rc.retry_max,
                    ));
                }
            }
            let peers = match (&config.node.role, &config.writer) {
                (Role::Mirror, Some(w)) => vec![w.name.clone()],
                _ => config.mirrors.iter().map(|m| m.name.clone()).collect(),
            };
            let service = Replication::new(apply::Parts {
                node: config.node.name.clone(),
                role: config.node.role,
                peers,
                log: log.clone(),
                blobs: blobs.clone(),
                origin: origin.clone(),
                compare: config.compare.clone(),
                live: live.clone(),
                spill_dir: data.join("tmp"),
                capture: (config.node.role == Role::Writer).then(|| capture.clone()),
                metrics: metrics.clone(),
            });
            let listener = bind("replication", rc.listen).await?;
            replication = Some((listener, TlsAcceptor::from(server), service));
        }
        // 6. Health: the state the endpoints read and the probe that refreshes it.
        let health = Health::new(
            &config.node.name,
            config.node.role,
            log.clone(),
            capture.clone(),
            live.clone(),
        );
        let prober = Prober::new(origin.clone(), writer_peer);
        let forwarder = match (forward_peer, &replication, &config.writer) {
            (Some(peer), Some((_, _, service)), Some(writer)) => Some(
                crate::cluster::Forwarder::new(peer, service.applied_watch(), writer),
            ),
            _ => None,
        };
        let proxy = Proxy::new(crate::proxy::Parts {
            live: live.clone(),
            role: config.node.role,
            origin,
            capture: capture.clone(),
            metrics: metrics.clone(),
            health: health.clone(),
            node: config.node.name.clone(),
            forwarder,
            access_log: access_log.clone(),
        });
        let admin = AdminState {
            node: config.node.name.clone(),
            role: config.node.role,
            public_addr: public.local_addr().unwrap_or(config.public.listen),
            log,
            blobs,
            capture,
            live: live.clone(),
            shippers: shippers.clone(),
            replication: replication.as_ref().map(|(_, _, r)| r.clone()),
            metrics: metrics.clone(),
            health: health.clone(),
        };
        let reloader = Reloader::new(live.clone(), access_log, metrics);
        Ok(Node {
            config,
            proxy,
            admin,
            public,
            admin_listener,
            tls,
            in_doubt,
            replication,
            shippers,
            health: (health, prober),
            live,
            reloader,
            access_log: access_writer,
        })
    }

    /// The bound public address.
    pub fn public_addr(&self) -> SocketAddr {
        self.public
            .local_addr()
            .unwrap_or(self.config.public.listen)
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener
            .local_addr()
            .unwrap_or(self.config.admin.listen)
    }

    /// The bound replication address, when configured.
    pub fn replication_addr(&self) -> Option<SocketAddr> {
        self.replication
            .as_ref()
            .and_then(|(l, _, _)| l.local_addr().ok())
    }

    /// The node's health state (to drain it before shutting down).
    pub fn health(&self) -> Health {
        self.health.0.clone()
    }

    /// The configuration in force, as reloads change it.
    pub fn live(&self) -> Live {
        self.live.clone()
    }

    /// Entries found pending at start-up and marked in-doubt.
    pub fn in_doubt(&self) -> &[Seq] {
        &self.in_doubt
    }

    /// Serves until `shutdown` fires, then drains connections for a bounded time.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), NodeError> {
        tracing::info!(
            node = %self.config.node.name,
            role = self.config.node.role.as_str(),
            public = %self.public_addr(),
            admin = %self.admin_addr(),
            origin = %self.config.origin.url,
            "copyist running"
        );
        let public = self.public_addr();
        // Before READY: from now on SIGHUP reloads rather than kills the process.
        let hangups = crate::shutdown::hangups();
        let mut tasks = vec![
            tokio::spawn(
                self.proxy
                    .serve(self.public, self.tls, shutdown.clone(), DRAIN_GRACE),
            ),
            tokio::spawn(admin::serve(
                self.admin_listener,
                self.admin,
                shutdown.clone(),
                DRAIN_GRACE,
            )),
        ];
        if let Some((listener, acceptor, service)) = self.replication {
            tasks.push(tokio::spawn(service.serve(
                listener,
                acceptor,
                shutdown.clone(),
            )));
        }
        for shipper in self.shippers {
            tasks.push(tokio::spawn(shipper.run(shutdown.clone())));
        }
        let (health, prober) = self.health;
        tasks.push(tokio::spawn(health.probe(prober, shutdown.clone())));
        tasks.push(tokio::spawn(self.reloader.run(hangups, shutdown.clone())));
        tasks.push(tokio::spawn(
            self.access_log.run(shutdown.clone(), DRAIN_GRACE),
        ));
        crate::systemd::notify(&format!(
            "READY=1\nSTATUS=serving as {} on {public}",
            self.config.node.role.as_str()
        ));
        for task in tasks {
            task.await?;
        }
        tracing::info!("copyist stopped");
        Ok(())
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, NodeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::Bind { what, addr, source })
}

//! The composition root: builds a node from a [`Config`] and runs it. Tests start nodes through
//! this too, exactly as `copyist run` does.
//!
//! [`Node::build`] does everything that can fail at start-up (data directory, log recovery,
//! listeners bound, so port 0 works) before anything is served; [`Node::run`] serves until
//! shutdown and drains. Only this module spawns long-lived tasks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::admin::{self, AdminState};
use crate::blobs::{BlobError, BlobStore};
use crate::capture::Capture;
use crate::config::Config;
use crate::log::{Log, LogError, Seq};
use crate::origin::Origin;
use crate::proxy::Proxy;
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
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what})")]
    Bind {
        /// "public" or "admin".
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The public TLS certificate or key is unusable.
    #[error("public TLS")]
    Tls(#[from] TlsError),
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
        // 2. The log: recovery turns interrupted Pending entries into InDoubt.
        let log_dir = data.join("log");
        let cache = config.log.cache_capacity;
        let (log, in_doubt) =
            tokio::task::spawn_blocking(move || Log::open(&log_dir, cache)).await??;
        for seq in &in_doubt {
            tracing::warn!(%seq, "entry was pending when the node stopped: now in-doubt");
        }
        // 3. Blobs, origin, capture.
        let blobs = BlobStore::open(&data.join("blobs"))?;
        let origin = Origin::new(&config.origin);
        let capture = Capture::new(
            log.clone(),
            blobs.clone(),
            origin.clone(),
            config.capture.clone(),
            spill_dir,
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
        let proxy = Proxy::new(
            config.public.clone(),
            config.node.role,
            config.capture.rules.clone(),
            origin,
            capture.clone(),
            &config.node.name,
        );
        let admin = AdminState {
            node: config.node.name.clone(),
            role: config.node.role,
            public_addr: public.local_addr().unwrap_or(config.public.listen),
            log,
            blobs,
            capture,
            mask_fields: config.capture.mask_fields.clone(),
        };
        Ok(Node {
            config,
            proxy,
            admin,
            public,
            admin_listener,
            tls,
            in_doubt,
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
        let public =
            tokio::spawn(
                self.proxy
                    .serve(self.public, self.tls, shutdown.clone(), DRAIN_GRACE),
            );
        let admin = tokio::spawn(admin::serve(
            self.admin_listener,
            self.admin,
            shutdown,
            DRAIN_GRACE,
        ));
        let (p, a) = tokio::join!(public, admin);
        p?;
        a?;
        tracing::info!("copyist stopped");
        Ok(())
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, NodeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::Bind { what, addr, source })
}

//! The background probe behind the cached health state: the local CMS answering, on a mirror
//! the writer's position, and the maintenance file. Endpoints never wait on it; they read what
//! the last round found.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::{header, HeaderValue, Request};

use super::{lock, Health};
use crate::error::{error_chain, full};
use crate::origin::Origin;
use crate::ship::peer::Peer;
use crate::shutdown::Shutdown;

impl Health {
    /// Probes until shutdown: at once, then every `probe_interval`. A round that outlives
    /// shutdown is abandoned (it only reads).
    pub async fn probe(self, mut prober: Prober, mut shutdown: Shutdown) {
        let mut interval = self.inner.live.current().health.probe_interval;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.recv() => return,
            }
            let settings = self.inner.live.current();
            let health = &settings.health;
            if health.probe_interval != interval {
                // Reloaded: the next round is one new interval from now.
                interval = health.probe_interval;
                let next = tokio::time::Instant::now() + interval;
                tick = tokio::time::interval_at(next, interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            }
            prober.configure(&health.probe_path, health.probe_timeout);
            let prober = &prober;
            let round = async {
                tokio::join!(
                    self.probe_origin(prober),
                    self.probe_writer(prober),
                    self.check_maintenance()
                )
            };
            tokio::select! {
                _ = round => {}
                () = shutdown.recv() => return,
            }
        }
    }

    async fn probe_origin(&self, p: &Prober) {
        let result = origin_answer(&p.origin, &p.path, p.timeout).await;
        let mut origin = lock(&self.inner.origin);
        match result {
            Ok(()) => {
                if !origin.ok && origin.at.is_some() {
                    tracing::info!("origin answers the health probe again");
                }
                origin.ok = true;
                origin.error = None;
            }
            Err(error) => {
                if origin.ok || origin.at.is_none() {
                    tracing::warn!(%error, "origin failed the health probe: node unhealthy");
                }
                origin.ok = false;
                origin.error = Some(error);
            }
        }
        origin.at = Some(Instant::now());
    }

    /// On a mirror: the writer's last sequence number, and whether this mirror has reached it.
    async fn probe_writer(&self, p: &Prober) {
        let Some(peer) = &p.writer else { return };
        let result = peer.state().await;
        // Read after the answer: applied >= the writer's last then means caught up now.
        let applied = self.inner.log.applied_seq().0;
        let mut writer = lock(&self.inner.writer);
        // The writer's client is built by the first round (and rebuilt on reload): name it here.
        if writer.name.as_deref() != Some(peer.name()) {
            writer.name = Some(peer.name().to_owned());
        }
        match result {
            Ok(state) => {
                writer.last_seq = Some(state.applied_seq);
                if applied >= state.applied_seq {
                    writer.caught_up_at = Some(Instant::now());
                }
                if writer.error.take().is_some() {
                    tracing::info!(writer = peer.name(), "writer reachable again");
                }
            }
            Err(e) => {
                let error = error_chain(&e);
                if writer.error.is_none() {
                    tracing::warn!(writer = peer.name(), %error, "writer unreachable: lag unknown");
                }
                writer.last_seq = None;
                writer.error = Some(error);
            }
        }
    }

    async fn check_maintenance(&self) {
        let settings = self.inner.live.current();
        let Some(path) = &settings.health.maintenance_file else {
            return;
        };
        let exists = tokio::fs::metadata(path).await.is_ok();
        if self.inner.maintenance.swap(exists, Ordering::AcqRel) != exists {
            let file = path.display();
            if exists {
                tracing::warn!(%file, "maintenance file exists: draining");
            } else {
                tracing::warn!(%file, "maintenance file removed: no longer draining");
            }
        }
    }
}

/// Builds the client for the writer's replication listener with a given request timeout.
pub type WriterPeer = Box<dyn Fn(Duration) -> Peer + Send + Sync>;

/// What the background probe asks, and how.
pub struct Prober {
    origin: Origin,
    /// Builds the writer's client (mirror only); rebuilt when `probe_timeout` changes.
    make_writer: Option<WriterPeer>,
    /// The writer's replication listener (mirror only), asked for its last sequence number.
    writer: Option<Peer>,
    path: String,
    timeout: Duration,
}

impl Prober {
    /// Probes `origin` (and, on a mirror, the writer, through a client `make_writer` builds) as
    /// `[health]` in force says at each round.
    pub fn new(origin: Origin, make_writer: Option<WriterPeer>) -> Prober {
        Prober {
            origin,
            make_writer,
            writer: None,
            path: String::new(),
            timeout: Duration::ZERO,
        }
    }

    /// Takes the `[health]` settings in force; the writer's client is rebuilt when its
    /// timeout changed (its own timeouts bound every step, and resets a stuck connection).
    fn configure(&mut self, path: &str, timeout: Duration) {
        if self.path != path {
            self.path = path.to_owned();
        }
        if self.writer.is_none() || self.timeout != timeout {
            self.writer = self.make_writer.as_ref().map(|make| make(timeout));
        }
        self.timeout = timeout;
    }
}

/// GETs `path` on the origin: `Ok` for any answer below 500 within `timeout`.
async fn origin_answer(origin: &Origin, path: &str, timeout: Duration) -> Result<(), String> {
    let uri = origin.uri_for(path).map_err(|e| e.to_string())?;
    let mut req = Request::new(full(""));
    // The origin client passes Host through rather than setting it; name the CMS itself.
    if let Some(host) = uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        req.headers_mut().insert(header::HOST, host);
    }
    req.headers_mut().insert(
        header::USER_AGENT,
        HeaderValue::from_static("copyist-health-probe"),
    );
    *req.uri_mut() = uri;
    let resp = match tokio::time::timeout(timeout, origin.send(req)).await {
        Err(_) => {
            let limit = humantime::format_duration(timeout);
            return Err(format!("no answer to GET {path} within {limit}"));
        }
        Ok(Err(e)) => return Err(error_chain(&e)),
        Ok(Ok(resp)) => resp,
    };
    match resp.status() {
        s if s.is_server_error() => Err(format!("GET {path} answered {s}")),
        _ => Ok(()),
    }
}

//! The admin listener (loopback by default): what operators and the CLI use.
//!
//! Endpoints:
//! * `GET /` — the status page: HTML for a browser, reloading itself ([`page`]).
//! * `GET|HEAD|OPTIONS /liveness`, `/health`, `/readiness?lag=L`, `/writer`, `/mirror?lag=L`,
//!   `/read-only?lag=L` — health checks for load balancers, from cached state ([`health`]).
//! * `GET /api/v1/status` — node name, role, last sequence number, fail-closed latch, mirrors,
//!   health (state, drain reason).
//! * `GET /api/v1/log?before=N&limit=M` — entries, newest first (summaries).
//! * `GET /api/v1/log/N` — one entry in full, secrets masked.
//! * `GET /api/v1/blob/HASH` — a blob's bytes, verified against its hash first.
//! * `POST /api/v1/mirrors/NAME/pause|resume|retry|skip` — operator actions on a mirror.
//! * `POST /api/v1/resolve/SEQ` — settle an in-doubt entry (`{"applied": bool, "reason": …}`).
//! * `GET /metrics` — Prometheus text format ([`metrics`]; every metric is in the README).
//! * `POST /api/v1/drain`, `/api/v1/undrain` — take the node out of rotation or back
//!   (`{"reason": …}`).
//!
//! Admin never holds the write lock; its only writes are the audited operator actions.

pub mod actions;
pub mod api;
pub mod health;
pub mod metrics;
pub mod page;

use std::convert::Infallible;
use std::time::Duration;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::error::{text_response, ProxyBody};
use crate::shutdown::Shutdown;
pub use api::AdminState;
pub use health::{Health, Prober};

/// Slow admin clients are dropped after this long without complete headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the admin API on `listener` until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    mut shutdown: Shutdown,
    grace: Duration,
) {
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let state = state.clone();
                    let service = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(route(&state, req).await) }
                    });
                    let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
                    tokio::spawn(async move {
                        if let Err(error) = conn.await {
                            tracing::debug!(%error, "admin connection ended with an error");
                        }
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            () = shutdown.recv() => break,
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(grace, graceful.shutdown()).await;
}

/// Largest action body read.
const MAX_ACTION_BODY: usize = 64 << 10;

async fn route(state: &AdminState, req: Request<Incoming>) -> Response<ProxyBody> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let name = path.strip_prefix('/').unwrap_or(&path);
    if let Some(resp) = state.health.respond(
        health::Listener::Admin,
        req.method(),
        name,
        req.uri().query(),
    ) {
        return resp;
    }
    let mut resp = if req.method() == Method::POST {
        let body = match http_body_util::Limited::new(req.into_body(), MAX_ACTION_BODY)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e) => return text_response(StatusCode::BAD_REQUEST, format!("{e}\n")),
        };
        post(state, &path, body).await
    } else if req.method() == Method::GET || req.method() == Method::HEAD {
        get(state, &path, &query).await
    } else {
        text_response(StatusCode::METHOD_NOT_ALLOWED, "GET, HEAD or POST\n")
    };
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

async fn get(state: &AdminState, path: &str, query: &str) -> Response<ProxyBody> {
    match path {
        "/" => page::render(state).await,
        "/api/v1/status" => api::status(state).await,
        "/metrics" => metrics::scrape(state).await,
        "/api/v1/log" => api::list(state, query).await,
        p => match (
            p.strip_prefix("/api/v1/log/"),
            p.strip_prefix("/api/v1/blob/"),
        ) {
            (Some(seq), _) => api::show(state, seq).await,
            (_, Some(hash)) => api::blob(state, hash).await,
            _ => text_response(StatusCode::NOT_FOUND, "no such admin endpoint\n"),
        },
    }
}

async fn post(state: &AdminState, path: &str, body: bytes::Bytes) -> Response<ProxyBody> {
    if let Some(rest) = path.strip_prefix("/api/v1/mirrors/") {
        if let Some((name, action)) = rest.split_once('/') {
            return actions::mirror(state, name, action, body).await;
        }
    }
    if let Some(seq) = path.strip_prefix("/api/v1/resolve/") {
        return actions::resolve(state, seq, body).await;
    }
    match path {
        "/api/v1/drain" => return health::drain(state, true, &body),
        "/api/v1/undrain" => return health::drain(state, false, &body),
        _ => {}
    }
    text_response(StatusCode::NOT_FOUND, "no such admin action\n")
}

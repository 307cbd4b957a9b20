//! The local CMS: a pooled HTTP/1.1 client and every origin timeout.
//!
//! Owns how copyist talks to the origin and nothing else: it never decides what to send (that is
//! `proxy` and `capture`) and never records anything. Its error type says whether the request can
//! have reached the CMS, because capture must record an unknown outcome as `in-doubt`.

pub mod response;

use std::time::Duration;

use http::{uri::PathAndQuery, Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::OriginConfig;
use crate::error::{Blame, HttpError, ProxyBody};

/// Why the origin did not produce a response.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    /// No connection could be made: the request provably never reached the CMS.
    #[error("cannot connect to origin {origin}")]
    Connect {
        /// The origin's address.
        origin: String,
        /// What the connector said.
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// No response headers within `response_timeout`: the CMS may or may not have acted.
    #[error("origin did not answer within {0:?}")]
    Timeout(Duration),
    /// The exchange failed after the request may have been sent.
    #[error("origin request failed")]
    Failed(#[source] hyper_util::client::legacy::Error),
    /// The response body broke off or could not be stored: the CMS acted, the outcome is unclear.
    #[error("origin response body failed")]
    Body(#[source] crate::error::BoxError),
    /// The request target could not be turned into an origin URI.
    #[error("request target {0:?} is not valid for the origin")]
    BadTarget(String),
}

impl OriginError {
    /// Whether the CMS may have seen (and acted on) the request.
    pub fn may_have_reached_origin(&self) -> bool {
        matches!(
            self,
            OriginError::Timeout(_) | OriginError::Failed(_) | OriginError::Body(_)
        )
    }
}

impl HttpError for OriginError {
    fn blame(&self) -> Blame {
        Blame::Origin
    }
    fn status(&self) -> http::StatusCode {
        match self {
            OriginError::Timeout(_) => http::StatusCode::GATEWAY_TIMEOUT,
            _ => http::StatusCode::BAD_GATEWAY,
        }
    }
}

/// A handle to the local CMS. Cheap to clone (the pool is shared).
#[derive(Clone, Debug)]
pub struct Origin {
    client: Client<HttpConnector, ProxyBody>,
    /// `http://host:port`, the scheme and authority every request is sent to.
    base: Uri,
    response_timeout: Duration,
}

impl Origin {
    /// A pooled client for `config.url`.
    pub fn new(config: &OriginConfig) -> Origin {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(config.idle_timeout)
            .pool_max_idle_per_host(config.max_idle_per_host)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            // The client's own Host goes to the CMS unchanged: CMSes store it in URLs.
            .set_host(false)
            .build(connector);
        Origin {
            client,
            base: config.url.clone(),
            response_timeout: config.response_timeout,
        }
    }

    /// The origin URI for a request target in origin form (`/path?query`).
    pub fn uri_for(&self, target: &str) -> Result<Uri, OriginError> {
        let bad = || OriginError::BadTarget(target.chars().take(200).collect());
        let path: PathAndQuery = target.parse().map_err(|_| bad())?;
        let mut parts = self.base.clone().into_parts();
        parts.path_and_query = Some(path);
        Uri::from_parts(parts).map_err(|_| bad())
    }

    /// Sends `req` (its URI already from [`Origin::uri_for`]) and waits at most `response_timeout`
    /// for the response headers. The body is streamed by the caller.
    pub async fn send(&self, req: Request<ProxyBody>) -> Result<Response<Incoming>, OriginError> {
        match tokio::time::timeout(self.response_timeout, self.client.request(req)).await {
            Err(_) => Err(OriginError::Timeout(self.response_timeout)),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) if e.is_connect() => Err(OriginError::Connect {
                origin: self.base.to_string(),
                source: e,
            }),
            Ok(Err(e)) => Err(OriginError::Failed(e)),
        }
    }

    /// How long to wait for response headers (capture also bounds the response body by it).
    pub fn response_timeout(&self) -> Duration {
        self.response_timeout
    }
}

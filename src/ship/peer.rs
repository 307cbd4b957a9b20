//! The writer's mTLS client for one mirror's replication listener: one HTTP/2 connection,
//! multiplexed, re-established on demand.
//!
//! The mirror is addressed by its configured node name: TLS verifies its certificate carries
//! that name and chains to the cluster CA, so a wrong or impostor mirror fails the handshake
//! before any entry is sent.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_rustls::TlsConnector;

use crate::blobs::{BlobHash, BlobStore};
use crate::error::{BoxError, ProxyBody};
use crate::log::{Entry, Halt};
use crate::wire::{self, ApplyAnswer, Control, Gap, PeerState};

/// Largest JSON answer read from a peer.
const MAX_ANSWER: usize = 1 << 20;

/// Why talking to a mirror failed. All of these are transport-level: retried with backoff,
/// never a reason to halt.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// TCP connection failed.
    #[error("connecting to {addr}")]
    Connect {
        /// host:port.
        addr: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake failed (wrong CA, wrong name, no client certificate accepted).
    #[error("TLS handshake with {name}")]
    Tls {
        /// The mirror's name.
        name: String,
        /// What rustls said.
        #[source]
        source: std::io::Error,
    },
    /// HTTP/2 failed.
    #[error("replication request failed")]
    Http(#[source] hyper::Error),
    /// No answer within `request_timeout`.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The mirror answered with an unexpected status.
    #[error("mirror answered {status}: {body}")]
    Status {
        /// HTTP status.
        status: StatusCode,
        /// The start of the body.
        body: String,
    },
    /// The answer could not be decoded.
    #[error("undecodable answer: {0}")]
    Decode(String),
    /// A blob to push could not be read locally.
    #[error("reading blob to push")]
    Blob(#[source] crate::blobs::BlobError),
}

/// What a mirror said to one entry.
#[derive(Debug)]
pub enum EntryReply {
    /// Applied, recorded or halted at it (see `ApplyAnswer::halt`).
    Done(Box<ApplyAnswer>),
    /// Too early: the mirror needs this sequence number first.
    Gap(u64),
    /// The mirror is halted (at another entry).
    Halted(Halt),
    /// The mirror lacks the entry's body blob.
    BlobMissing,
}

/// A connection manager for one mirror.
pub struct Peer {
    name: String,
    addr: String,
    base: String,
    tls: TlsConnector,
    timeout: Duration,
    conn: Mutex<Option<SendRequest<ProxyBody>>>,
}

impl Peer {
    /// A client for the mirror `name` at `url` (https://HOST:PORT).
    pub fn new(name: &str, url: &Uri, tls: Arc<rustls::ClientConfig>, timeout: Duration) -> Peer {
        let addr = url
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_default();
        Peer {
            name: name.to_string(),
            base: format!("https://{addr}"),
            addr,
            tls: TlsConnector::from(tls),
            timeout,
            conn: Mutex::new(None),
        }
    }

    /// The mirror's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    async fn sender(&self) -> Result<SendRequest<ProxyBody>, PeerError> {
        let mut conn = self.conn.lock().await;
        if let Some(s) = conn.as_ref() {
            if !s.is_closed() {
                return Ok(s.clone());
            }
        }
        let tcp = tokio::time::timeout(self.timeout, TcpStream::connect(&self.addr))
            .await
            .map_err(|_| PeerError::Timeout(self.timeout))?
            .map_err(|source| PeerError::Connect {
                addr: self.addr.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let server_name = ServerName::try_from(self.name.clone()).map_err(|e| PeerError::Tls {
            name: self.name.clone(),
            source: std::io::Error::other(e),
        })?;
        let tls = tokio::time::timeout(self.timeout, self.tls.connect(server_name, tcp))
            .await
            .map_err(|_| PeerError::Timeout(self.timeout))?
            .map_err(|source| PeerError::Tls {
                name: self.name.clone(),
                source,
            })?;
        let (send, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(Duration::from_secs(10)))
            .handshake(TokioIo::new(tls))
            .await
            .map_err(PeerError::Http)?;
        let name = self.name.clone();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(mirror = %name, %error, "replication connection closed");
            }
        });
        *conn = Some(send.clone());
        Ok(send)
    }

    /// Sends `req` (a path under [`wire::PREFIX`] as its URI) and returns the response with its
    /// body still streaming; waits at most `request_timeout` for the response headers.
    pub async fn send(
        &self,
        mut req: Request<ProxyBody>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, PeerError> {
        let mut send = self.sender().await?;
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default();
        *req.uri_mut() = format!("{}{path}", self.base)
            .parse()
            .map_err(|_| PeerError::Decode(format!("bad path {path}")))?;
        let exchange = async {
            send.ready().await.map_err(PeerError::Http)?;
            send.send_request(req).await.map_err(PeerError::Http)
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| PeerError::Timeout(self.timeout))?
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: ProxyBody,
    ) -> Result<(StatusCode, Bytes), PeerError> {
        let mut send = self.sender().await?;
        let uri: Uri = format!("{}{path}", self.base)
            .parse()
            .map_err(|_| PeerError::Decode(format!("bad path {path}")))?;
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        let exchange = async {
            send.ready().await.map_err(PeerError::Http)?;
            let resp = send.send_request(req).await.map_err(PeerError::Http)?;
            let status = resp.status();
            let body = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| PeerError::Decode(e.to_string()))?
                .to_bytes();
            Ok((status, body))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => {
                // A stuck connection is dropped so the next call starts afresh.
                *self.conn.lock().await = None;
                Err(PeerError::Timeout(self.timeout))
            }
        }
    }

    /// `GET state`.
    pub async fn state(&self) -> Result<PeerState, PeerError> {
        let (status, body) = self
            .call(Method::GET, &format!("{}state", wire::PREFIX), empty())
            .await?;
        expect(status, StatusCode::OK, &body)?;
        json(&body)
    }

    /// Makes sure the mirror holds `hash`, pushing it if not. A broken push leaves nothing on
    /// the mirror (its temp file is dropped) and is simply redone.
    pub async fn ensure_blob(&self, blobs: &BlobStore, hash: &BlobHash) -> Result<(), PeerError> {
        let path = wire::blob_path(hash);
        let (status, _) = self.call(Method::HEAD, &path, empty()).await?;
        if status == StatusCode::OK {
            return Ok(());
        }
        let blobs = blobs.clone();
        let h = *hash;
        let file = tokio::task::spawn_blocking(move || blobs.open_verified(&h))
            .await
            .map_err(|e| PeerError::Decode(e.to_string()))?
            .map_err(PeerError::Blob)?;
        let frames = futures_util::StreamExt::map(file.into_stream(), |c| {
            c.map(hyper::body::Frame::data).map_err(BoxError::from)
        });
        let body = http_body_util::StreamBody::new(frames).boxed_unsync();
        let (status, text) = self.call(Method::PUT, &path, body).await?;
        expect(status, StatusCode::CREATED, &text)
    }

    /// `POST entries/SEQ`.
    pub async fn send_entry(&self, entry: &Entry) -> Result<EntryReply, PeerError> {
        let bytes = wire::encode_entry(entry).map_err(|e| PeerError::Decode(e.to_string()))?;
        let body = Full::new(Bytes::from(bytes))
            .map_err(|n| match n {})
            .boxed_unsync();
        let (status, text) = self
            .call(Method::POST, &wire::entry_path(entry.seq.0), body)
            .await?;
        match status {
            StatusCode::OK => Ok(EntryReply::Done(Box::new(json(&text)?))),
            StatusCode::CONFLICT => Ok(EntryReply::Gap(json::<Gap>(&text)?.expected)),
            StatusCode::LOCKED => Ok(EntryReply::Halted(json(&text)?)),
            StatusCode::FAILED_DEPENDENCY => Ok(EntryReply::BlobMissing),
            other => Err(PeerError::Status {
                status: other,
                body: String::from_utf8_lossy(&text).chars().take(300).collect(),
            }),
        }
    }

    /// `POST control`.
    pub async fn control(&self, control: &Control) -> Result<PeerState, PeerError> {
        let bytes = serde_json::to_vec(control).map_err(|e| PeerError::Decode(e.to_string()))?;
        let body = Full::new(Bytes::from(bytes))
            .map_err(|n| match n {})
            .boxed_unsync();
        let (status, text) = self
            .call(Method::POST, &format!("{}control", wire::PREFIX), body)
            .await?;
        expect(status, StatusCode::OK, &text)?;
        json(&text)
    }
}

fn empty() -> ProxyBody {
    Empty::<Bytes>::new().map_err(|n| match n {}).boxed_unsync()
}

fn expect(status: StatusCode, want: StatusCode, body: &[u8]) -> Result<(), PeerError> {
    if status == want {
        return Ok(());
    }
    Err(PeerError::Status {
        status,
        body: String::from_utf8_lossy(body).chars().take(300).collect(),
    })
}

fn json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, PeerError> {
    serde_json::from_slice(body).map_err(|e| PeerError::Decode(e.to_string()))
}

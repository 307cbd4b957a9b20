//! Clients: a small HTTP/1.1 client over hyper, and raw sockets for bytes hyper would not send.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client as HyperClient};
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A complete response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn seq(&self) -> Option<u64> {
        self.header("x-copyist-seq").and_then(|v| v.parse().ok())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Why a request got no complete answer.
#[derive(Debug, Clone)]
pub enum SendError {
    /// No connection was made: nothing was sent.
    Connect(String),
    /// Timed out, reset, or the answer broke off: the request may have arrived.
    Other(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(e) | SendError::Other(e) => f.write_str(e),
        }
    }
}

/// An HTTP/1.1 client aimed at one address.
#[derive(Clone)]
pub struct Client {
    addr: SocketAddr,
    inner: HyperClient<HttpConnector, Full<Bytes>>,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        let inner = HyperClient::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build_http();
        Client { addr, inner }
    }

    pub fn request(&self, method: &str, path: &str) -> http::request::Builder {
        Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr))
    }

    pub async fn send(&self, req: Request<Full<Bytes>>) -> Reply {
        self.try_send(req).await.expect("request failed")
    }

    pub async fn try_send(&self, req: Request<Full<Bytes>>) -> Result<Reply, String> {
        self.try_send_classified(req)
            .await
            .map_err(|e| e.to_string())
    }

    /// Like `try_send`, but says whether the request can have reached the server: a history
    /// records a connection that was never made as a definite failure, anything else as unknown.
    pub async fn try_send_classified(&self, req: Request<Full<Bytes>>) -> Result<Reply, SendError> {
        let resp = tokio::time::timeout(Duration::from_secs(30), self.inner.request(req))
            .await
            .map_err(|_| SendError::Other("timed out".to_string()))?
            .map_err(|e| {
                if e.is_connect() {
                    SendError::Connect(format!("{e:?}"))
                } else {
                    SendError::Other(format!("{e:?}"))
                }
            })?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| SendError::Other(e.to_string()))?
            .to_bytes();
        Ok(Reply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.request("GET", path).body(Full::default()).unwrap())
            .await
    }

    pub async fn post(&self, path: &str, content_type: &str, body: impl Into<Bytes>) -> Reply {
        let req = self
            .request("POST", path)
            .header("content-type", content_type)
            .body(Full::new(body.into()))
            .unwrap();
        self.send(req).await
    }

    pub async fn post_form(&self, path: &str, form: &str) -> Reply {
        self.post(path, "application/x-www-form-urlencoded", form.to_string())
            .await
    }
}

/// Sends raw bytes, half-closes, and returns everything the server sent back until it closed
/// (or 5 s passed).
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let _ = s.shutdown().await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A multipart/form-data body with the given text fields and files (name, filename, bytes).
pub fn multipart(
    boundary: &str,
    fields: &[(&str, &str)],
    files: &[(&str, &str, &[u8])],
) -> Vec<u8> {
    let mut b = Vec::new();
    for (name, value) in fields {
        b.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
                .as_bytes(),
        );
    }
    for (name, filename, data) in files {
        b.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        b.extend_from_slice(data);
        b.extend_from_slice(b"\r\n");
    }
    b.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    b
}

//! An in-test origin that records exactly what reached it.
//!
//! Routes (by path): `/status/NNN` answers NNN; `/stall` records the request and never answers;
//! `/big/N` answers N bytes; anything else answers 200 (GET/HEAD/OPTIONS) or 201 with `Location` (other
//! methods). Every complete request is kept; requests whose body broke off are counted apart, so a
//! test can prove nothing reached the origin half-read. copyist's own health probes are answered
//! (`/status/NNN` too) and only counted, so they never show up among the requests under test.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// One request as the origin saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct State {
    seen: Mutex<Vec<Seen>>,
    started: AtomicUsize,
    broken: AtomicUsize,
    created: AtomicUsize,
    probes: AtomicUsize,
}

/// A running stub origin.
#[derive(Clone)]
pub struct StubOrigin {
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl StubOrigin {
    pub async fn spawn() -> StubOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let s = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(handle(&s, req).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        StubOrigin { addr, state }
    }

    /// Complete requests received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Requests whose headers arrived (complete or not).
    pub fn started(&self) -> usize {
        self.state.started.load(Ordering::SeqCst)
    }

    /// Requests whose body broke off.
    pub fn broken(&self) -> usize {
        self.state.broken.load(Ordering::SeqCst)
    }

    /// copyist health probes answered (not in `seen` or `started`).
    pub fn probes(&self) -> usize {
        self.state.probes.load(Ordering::SeqCst)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn handle(s: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let probe = req.headers().get("user-agent");
    if probe.is_some_and(|ua| ua == "copyist-health-probe") {
        s.probes.fetch_add(1, Ordering::SeqCst);
        let status = (req.uri().path().strip_prefix("/status/"))
            .map_or(200, |code| code.parse().unwrap_or(500));
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        return r;
    }
    s.started.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes().to_vec(),
        Err(_) => {
            s.broken.fetch_add(1, Ordering::SeqCst);
            return Response::new(Full::new(Bytes::new()));
        }
    };
    let seen = Seen {
        method: parts.method.to_string(),
        target: parts.uri.to_string(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
    };
    s.seen.lock().unwrap().push(seen);
    let path = parts.uri.path();
    if path == "/stall" {
        std::future::pending::<()>().await;
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let mut r = Response::new(Full::new(Bytes::from_static(b"as you wish")));
        *r.status_mut() = StatusCode::from_u16(code.parse().unwrap_or(500)).unwrap();
        return r;
    }
    if let Some(n) = path.strip_prefix("/big/") {
        let n: usize = n.parse().unwrap_or(0);
        return Response::new(Full::new(Bytes::from(vec![b'x'; n])));
    }
    if [http::Method::GET, http::Method::HEAD, http::Method::OPTIONS].contains(&parts.method) {
        return Response::new(Full::new(Bytes::from_static(b"hello from origin")));
    }
    let id = s.created.fetch_add(1, Ordering::SeqCst) + 1;
    Response::builder()
        .status(201)
        .header("location", format!("/item/{id}"))
        .header("set-cookie", "sid=origin-secret; Path=/")
        .body(Full::new(Bytes::from(format!("{{\"id\":{id}}}"))))
        .unwrap()
}

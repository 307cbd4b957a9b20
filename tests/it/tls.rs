//! TLS on the public listener with HTTP/2 and HTTP/1.1 by ALPN (rustls, PEM files).

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
use tokio_rustls::TlsConnector;

use crate::support::node::Opts;
use crate::support::{StubOrigin, TestNode};

struct Certs {
    _dir: tempfile::TempDir,
    public_extra: String,
    cert_pem: String,
}

fn certs() -> Certs {
    let dir = tempfile::tempdir().unwrap();
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    Certs {
        public_extra: format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"",
            cert.display(),
            key.display()
        ),
        cert_pem: ck.cert.pem(),
        _dir: dir,
    }
}

async fn connect(
    node: &TestNode,
    certs: &Certs,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(certs.cert_pem.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tokio::net::TcpStream::connect(node.public).await.unwrap();
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

#[tokio::test]
async fn http2_over_tls_passes_reads_and_captures_writes() {
    let origin = StubOrigin::spawn().await;
    let certs = certs();
    let node = TestNode::start_opts(
        &origin.url(),
        Opts {
            public: &certs.public_extra,
            ..Opts::default()
        },
    )
    .await;
    let tls = connect(&node, &certs, b"h2").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);

    let get = Request::get("https://localhost/page")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(Full::<Bytes>::default())
        .unwrap();
    let resp = send.send_request(get).await.unwrap();
    assert_eq!(resp.version(), Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let seen = &origin.seen()[0];
    assert_eq!(
        seen.header("host"),
        Some("localhost"),
        ":authority becomes Host"
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(
        seen.header("cookie"),
        Some("a=1; b=2"),
        "split h2 cookies joined for HTTP/1.1"
    );

    let post = Request::post("https://localhost/items")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from_static(b"title=h2")))
        .unwrap();
    let resp = send.send_request(post).await.unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["x-copyist-seq"], "1");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"{\"id\":1}");
    assert_eq!(origin.seen()[1].body, b"title=h2");
}

#[tokio::test]
async fn http1_over_tls_works_and_a_stalled_handshake_does_not_block_others() {
    let origin = StubOrigin::spawn().await;
    let certs = certs();
    let extra = format!("{}\nheader_read_timeout = \"500ms\"", certs.public_extra);
    let node = TestNode::start_opts(
        &origin.url(),
        Opts {
            public: &extra,
            ..Opts::default()
        },
    )
    .await;
    // A client that opens TCP and never says hello.
    let _staller = tokio::net::TcpStream::connect(node.public).await.unwrap();
    let tls = connect(&node, &certs, b"http/1.1").await;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/")
        .header("host", "localhost")
        .body(Full::<Bytes>::default())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), Version::HTTP_11);
}

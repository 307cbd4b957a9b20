//! Certificates made by `init_ca`/`issue_node`, and real handshakes between
//! `replication_server` and `replication_client` over an in-memory duplex stream.
#![cfg(test)]

use std::os::unix::fs::PermissionsExt;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::*;
use crate::config::defaults;

/// A cluster CA in a temp dir, with node certificates issued on demand.
struct Cluster {
    dir: tempfile::TempDir,
}

impl Cluster {
    fn new() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path()).unwrap();
        Cluster { dir }
    }

    /// Issues `name` (if not yet issued) and returns its replication config.
    fn node(&self, name: &str) -> ReplicationConfig {
        let dir = self.dir.path();
        if !dir.join(format!("{name}.pem")).exists() {
            issue_node(dir, name, &[]).unwrap();
        }
        ReplicationConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            ca: dir.join(CA_CERT_FILE),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
            window: defaults::REPLICATION_WINDOW,
            retry_max: defaults::RETRY_MAX,
            request_timeout: defaults::REQUEST_TIMEOUT,
        }
    }
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn leaf(path: &Path) -> CertificateDer<'static> {
    load_certs(path).unwrap().remove(0)
}

/// What each side of one handshake ended with.
struct Handshake {
    server: Result<Vec<CertificateDer<'static>>, std::io::Error>,
    client: Result<Option<Vec<u8>>, std::io::Error>,
}

/// Runs one handshake: `client` connects to `server` expecting the server to be `expected`.
async fn handshake(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    expected: &str,
) -> Handshake {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let name = ServerName::try_from(expected.to_owned()).unwrap();
    let accept = async {
        let mut stream = TlsAcceptor::from(server).accept(server_io).await?;
        let certs = stream.get_ref().1.peer_certificates().unwrap_or_default();
        let certs = certs.to_vec();
        // close_notify, so the client's read below ends cleanly.
        stream.shutdown().await?;
        Ok(certs)
    };
    let connect = async {
        let mut stream = TlsConnector::from(client).connect(name, client_io).await?;
        let alpn = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let version = stream.get_ref().1.protocol_version();
        assert_eq!(version, Some(rustls::ProtocolVersion::TLSv1_3));
        // In TLS 1.3 the server judges the client's certificate after the client has
        // finished; a refusal arrives as an alert on the first read.
        let read = stream.read(&mut [0u8; 1]).await?;
        assert_eq!(read, 0, "the server sends nothing but close_notify");
        Ok(alpn)
    };
    let timeout = std::time::Duration::from_secs(10);
    let (server, client) = tokio::time::timeout(timeout, async { tokio::join!(accept, connect) })
        .await
        .expect("handshake finished");
    Handshake { server, client }
}

#[test]
fn init_ca_and_issue_node_write_pem_files_once() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let (ca_cert, ca_key) = init_ca(&certs).unwrap();
    assert_eq!(
        (ca_cert.clone(), ca_key.clone()),
        (certs.join("ca.pem"), certs.join("ca.key"))
    );
    assert_eq!(mode(&ca_key), 0o600);
    assert!(fs::read_to_string(&ca_cert)
        .unwrap()
        .starts_with("-----BEGIN CERTIFICATE-----"));

    let hosts = ["127.0.0.1".to_owned(), "writer.internal".to_owned()];
    let (cert, key) = issue_node(&certs, "writer-1", &hosts).unwrap();
    assert_eq!(
        (cert.clone(), key.clone()),
        (certs.join("writer-1.pem"), certs.join("writer-1.key"))
    );
    assert_eq!(mode(&key), 0o600);
    assert!(load_key(&key).is_ok());

    let der = leaf(&cert);
    assert!(peer_name(&der, "writer-1"));
    assert!(
        peer_name(&der, "WRITER-1"),
        "DNS names compare case-insensitively"
    );
    assert!(peer_name(&der, "writer.internal"));
    assert!(!peer_name(&der, "writer-2"));
    assert!(
        !peer_name(&der, "127.0.0.1"),
        "peer_name checks DNS names only"
    );
    let ip = ServerName::try_from("127.0.0.1").unwrap();
    let ee = webpki::EndEntityCert::try_from(&der).unwrap();
    assert!(ee.verify_is_valid_for_subject_name(&ip).is_ok(), "IP SAN");
    let other_ip = ServerName::try_from("10.0.0.1").unwrap();
    assert!(ee.verify_is_valid_for_subject_name(&other_ip).is_err());

    // Nothing is ever replaced, and the error names the file.
    let ca_before = fs::read(&ca_cert).unwrap();
    let error = init_ca(&certs).unwrap_err();
    assert!(
        matches!(&error, TlsError::Exists { path } if *path == ca_cert),
        "{error}"
    );
    assert_eq!(fs::read(&ca_cert).unwrap(), ca_before);
    fs::remove_file(&ca_cert).unwrap();
    let error = init_ca(&certs).unwrap_err();
    assert!(
        matches!(&error, TlsError::Exists { path } if *path == ca_key),
        "{error}"
    );
    assert!(
        !ca_cert.exists(),
        "nothing written when one of the pair exists"
    );
}

#[test]
fn issue_node_refuses_overwrites_bad_names_and_a_foreign_ca() {
    let cluster = Cluster::new();
    let dir = cluster.dir.path();
    issue_node(dir, "mirror-1", &[]).unwrap();
    let error = issue_node(dir, "mirror-1", &[]).unwrap_err();
    let pem = dir.join("mirror-1.pem");
    assert!(
        matches!(&error, TlsError::Exists { path } if *path == pem),
        "{error}"
    );
    assert_eq!(
        error.to_string(),
        format!("{} already exists; refusing to overwrite it", pem.display())
    );
    // "ca" would be ca.pem and ca.key: refused as existing files, never overwritten.
    assert!(matches!(
        issue_node(dir, "ca", &[]),
        Err(TlsError::Exists { .. })
    ));

    for bad in ["", "../x", "a b", "-a", "10.0.0.1"] {
        assert!(
            matches!(issue_node(dir, bad, &[]), Err(TlsError::Name { .. })),
            "{bad:?}"
        );
    }
    let error = issue_node(dir, "m2", &["bad host".to_owned()]).unwrap_err();
    assert_eq!(
        error.to_string(),
        "host \"bad host\" cannot be put in a certificate: not an IP address or DNS name"
    );
    assert!(!dir.join("m2.pem").exists());

    // A ca.key that does not belong to ca.pem is caught before anything is written.
    let other = Cluster::new();
    fs::remove_file(dir.join(CA_KEY_FILE)).unwrap();
    fs::copy(other.dir.path().join(CA_KEY_FILE), dir.join(CA_KEY_FILE)).unwrap();
    let error = issue_node(dir, "mirror-3", &[]).unwrap_err();
    assert!(matches!(error, TlsError::CaMismatch { .. }), "{error}");
    assert!(!dir.join("mirror-3.key").exists());

    // No CA at all: the error names the missing file.
    let empty = tempfile::tempdir().unwrap();
    let error = issue_node(empty.path(), "w", &[]).unwrap_err();
    assert!(error.to_string().contains("ca.pem"), "{error}");
}

#[tokio::test]
async fn certified_peers_complete_the_handshake_and_the_server_sees_the_writer() {
    let cluster = Cluster::new();
    let server = replication_server(&cluster.node("mirror-1")).unwrap();
    let client = replication_client(&cluster.node("writer-1")).unwrap();
    let h = handshake(server, client, "mirror-1").await;
    let certs = h.server.unwrap();
    assert!(peer_name(&certs[0], "writer-1"));
    assert!(!peer_name(&certs[0], "other"));
    assert!(!peer_name(&certs[0], "mirror-1"));
    assert_eq!(h.client.unwrap(), Some(b"h2".to_vec()));
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused() {
    let cluster = Cluster::new();
    let intruder = Cluster::new();
    let server = replication_server(&cluster.node("mirror-1")).unwrap();
    // Trusts the right CA, so it accepts the server, but its own certificate is foreign.
    let mut writer = intruder.node("writer-1");
    writer.ca = cluster.dir.path().join(CA_CERT_FILE);
    let client = replication_client(&writer).unwrap();
    let h = handshake(server, client, "mirror-1").await;
    assert!(
        h.server.is_err(),
        "server accepted a foreign client certificate"
    );
    assert!(h.client.is_err());
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let cluster = Cluster::new();
    let server = replication_server(&cluster.node("mirror-1")).unwrap();
    let client = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(cluster_roots(&cluster.dir.path().join(CA_CERT_FILE)).unwrap())
        .with_no_client_auth();
    let h = handshake(server, Arc::new(client), "mirror-1").await;
    assert!(
        h.server.is_err(),
        "server accepted a client without a certificate"
    );
}

#[tokio::test]
async fn a_server_certified_for_another_name_fails_the_handshake() {
    let cluster = Cluster::new();
    // mirror-x's certificate is genuine, but the writer is configured to reach mirror-1.
    let server = replication_server(&cluster.node("mirror-x")).unwrap();
    let client = replication_client(&cluster.node("writer-1")).unwrap();
    let h = handshake(server, client, "mirror-1").await;
    let error = h.client.unwrap_err();
    let cause = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>());
    assert!(
        matches!(
            cause,
            Some(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                    | rustls::CertificateError::NotValidForNameContext { .. }
            ))
        ),
        "{error}"
    );
    assert!(h.server.is_err());
}

#[tokio::test]
async fn a_server_from_another_ca_fails_the_handshake() {
    let cluster = Cluster::new();
    let intruder = Cluster::new();
    let mut mirror = intruder.node("mirror-1");
    mirror.ca = cluster.dir.path().join(CA_CERT_FILE);
    let server = replication_server(&mirror).unwrap();
    let client = replication_client(&cluster.node("writer-1")).unwrap();
    let h = handshake(server, client, "mirror-1").await;
    assert!(
        h.client.is_err(),
        "client accepted a foreign server certificate"
    );
}

#[test]
fn replication_configs_are_tls13_h2_without_early_data() {
    let cluster = Cluster::new();
    let server = replication_server(&cluster.node("mirror-1")).unwrap();
    assert_eq!(server.max_early_data_size, 0);
    assert_eq!(server.alpn_protocols, [b"h2".to_vec()]);
    let client = replication_client(&cluster.node("writer-1")).unwrap();
    assert!(!client.enable_early_data);
    assert_eq!(client.alpn_protocols, [b"h2".to_vec()]);
    // A missing file names itself.
    let mut missing = cluster.node("writer-1");
    missing.key = cluster.dir.path().join("nope.key");
    let error = replication_client(&missing).unwrap_err();
    assert!(error.to_string().contains("nope.key"), "{error}");
}

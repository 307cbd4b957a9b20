//! rustls configuration: the public listener's certificate (PEM files from the config).
//!
//! Uses the `ring` provider explicitly, so no process-wide default provider has to be installed
//! and nothing beyond a C compiler is needed to build. The replication channel's mTLS (cluster CA,
//! node certificates) will live here too.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsFiles;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{what} {path}: {message}")]
    Pem {
        /// "certificate" or "private key".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// rustls refused the certificate and key.
    #[error("TLS configuration")]
    Rustls(#[from] rustls::Error),
}

/// The acceptor for the public listener: HTTP/2 and HTTP/1.1 by ALPN.
pub fn public_acceptor(files: &TlsFiles) -> Result<TlsAcceptor, TlsError> {
    let certs = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |message: String| TlsError::Pem {
        what: "certificate",
        path: path.to_path_buf(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no certificate found".into()));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Pem {
        what: "private key",
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

// === Replication: cluster CA, node certificates, mutual TLS ===

/// Calendar year of the system clock (good enough for certificate validity bounds).
fn current_year() -> i32 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    1970 + i32::try_from(secs / 31_556_952).unwrap_or(0)
}

/// Validity from the start of last year (tolerates clock skew between nodes) for ten years.
fn validity(params: &mut rcgen::CertificateParams) {
    let year = current_year();
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + 10, 1, 1);
}

fn gen_error<'a>(what: &'static str, path: &'a Path) -> impl Fn(rcgen::Error) -> TlsError + 'a {
    move |e| TlsError::Pem {
        what,
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Writes `path` only if it does not exist yet; keys get mode 0600.
fn write_new(path: &Path, text: &str, secret: bool) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |e: std::io::Error| TlsError::Pem {
        what: if secret { "private key" } else { "certificate" },
        path: path.to_path_buf(),
        message: if e.kind() == std::io::ErrorKind::AlreadyExists {
            "already exists; refusing to overwrite it".into()
        } else {
            e.to_string()
        },
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .map_err(err)?;
    file.write_all(text.as_bytes()).map_err(err)?;
    file.sync_all().map_err(err)
}

/// Creates the cluster CA: `dir/ca.pem` and `dir/ca.key` (mode 0600). Refuses to overwrite.
pub fn init_ca(dir: &Path) -> Result<(PathBuf, PathBuf), TlsError> {
    let cert_path = dir.join("ca.pem");
    let key_path = dir.join("ca.key");
    std::fs::create_dir_all(dir).map_err(|e| TlsError::Pem {
        what: "certificate",
        path: dir.to_path_buf(),
        message: e.to_string(),
    })?;
    for p in [&cert_path, &key_path] {
        if p.exists() {
            return Err(TlsError::Pem {
                what: "certificate",
                path: p.clone(),
                message: "already exists; refusing to overwrite it".into(),
            });
        }
    }
    let key = rcgen::KeyPair::generate().map_err(gen_error("private key", &key_path))?;
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "copyist cluster CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params);
    let cert = params
        .self_signed(&key)
        .map_err(gen_error("certificate", &cert_path))?;
    write_new(&key_path, &key.serialize_pem(), true)?;
    write_new(&cert_path, &cert.pem(), false)?;
    Ok((cert_path, key_path))
}

/// Issues `dir/NAME.pem` and `dir/NAME.key` (0600), signed by `dir/ca.pem` + `dir/ca.key`.
/// The certificate names the node (DNS SAN `NAME`) plus `hosts` (IP or DNS SANs) and is good
/// for both server and client authentication. Refuses to overwrite.
pub fn issue_node(
    dir: &Path,
    name: &str,
    hosts: &[String],
) -> Result<(PathBuf, PathBuf), TlsError> {
    let ca_cert = dir.join("ca.pem");
    let ca_key = dir.join("ca.key");
    let read = |p: &Path, what: &'static str| {
        std::fs::read_to_string(p).map_err(|e| TlsError::Pem {
            what,
            path: p.to_path_buf(),
            message: e.to_string(),
        })
    };
    let ca_key_pair = rcgen::KeyPair::from_pem(&read(&ca_key, "private key")?)
        .map_err(gen_error("private key", &ca_key))?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(&read(&ca_cert, "certificate")?, ca_key_pair)
        .map_err(gen_error("certificate", &ca_cert))?;
    let cert_path = dir.join(format!("{name}.pem"));
    let key_path = dir.join(format!("{name}.key"));
    let mut names = vec![name.to_string()];
    names.extend(hosts.iter().cloned());
    let mut params =
        rcgen::CertificateParams::new(names).map_err(gen_error("certificate", &cert_path))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    validity(&mut params);
    let key = rcgen::KeyPair::generate().map_err(gen_error("private key", &key_path))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(gen_error("certificate", &cert_path))?;
    write_new(&key_path, &key.serialize_pem(), true)?;
    write_new(&cert_path, &cert.pem(), false)?;
    Ok((cert_path, key_path))
}

fn ca_roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| TlsError::Pem {
            what: "certificate",
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// The replication listener's TLS: TLS 1.3 only, HTTP/2 only, a client certificate from the
/// cluster CA required, and no 0-RTT (early data could be replayed).
pub fn replication_server(
    cfg: &crate::config::ReplicationConfig,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(ca_roots(&cfg.ca)?),
        provider.clone(),
    )
    .build()
    .map_err(|e| TlsError::Pem {
        what: "certificate",
        path: cfg.ca.clone(),
        message: e.to_string(),
    })?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(&cfg.cert)?, load_key(&cfg.key)?)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    config.max_early_data_size = 0;
    Ok(Arc::new(config))
}

/// The shipper's TLS: trusts only the cluster CA and presents this node's certificate. The
/// caller connects with the peer's node name, so a peer whose certificate lacks that name
/// fails the handshake.
pub fn replication_client(
    cfg: &crate::config::ReplicationConfig,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(ca_roots(&cfg.ca)?)
        .with_client_auth_cert(load_certs(&cfg.cert)?, load_key(&cfg.key)?)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Whether a peer's end-entity certificate (already verified against the cluster CA) names
/// `expected`: the replication server's check that the client is a configured peer.
pub fn peer_name(cert: &CertificateDer<'_>, expected: &str) -> bool {
    let Ok(name) = rustls::pki_types::ServerName::try_from(expected) else {
        return false;
    };
    webpki::EndEntityCert::try_from(cert)
        .is_ok_and(|ee| ee.verify_is_valid_for_subject_name(&name).is_ok())
}

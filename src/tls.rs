//! rustls configuration and certificates: the public listener's certificate (PEM files from the
//! config), and the replication channel's mutual TLS: the cluster CA and node certificates
//! (`copyist certs`), the server and client configs, and the check of a peer's name.
//!
//! Uses the `ring` provider explicitly, so no process-wide default provider has to be installed
//! and nothing beyond a C compiler is needed to build.
//!
//! Replication trusts exactly one root, the cluster CA, in both directions, and speaks only
//! TLS 1.3 with ALPN `h2`. Who a peer is comes from its certificate's DNS name, which is its
//! `[node] name`: the writer connects to a mirror with that name as the server name, so the
//! handshake itself checks the mirror; the mirror checks its client with [`peer_name`]. This
//! module only builds and checks certificates; it never decides what a peer may do.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::config::{ReplicationConfig, TlsFiles};

/// File name of the cluster CA certificate in a certificate directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the cluster CA private key in a certificate directory.
pub const CA_KEY_FILE: &str = "ca.key";

/// The CA certificate's subject. [`issue_node`] rebuilds the issuer from it instead of parsing
/// `ca.pem` (rcgen parses certificates only with a feature that pulls in a second X.509
/// parser), then checks the result against `ca.pem` with webpki.
const CA_COMMON_NAME: &str = "copyist cluster CA";

/// Certificates are valid from a day before they are made, so a node whose clock runs a little
/// behind the machine that made them still accepts them.
const BACKDATE: Duration = Duration::from_secs(24 * 60 * 60);

/// ... until ten years after they are made (3652 days: ten years with their leap days). Long,
/// because rotating them is a manual, cluster-wide step; the CA key is the thing to protect.
const VALIDITY: Duration = Duration::from_secs(3652 * 24 * 60 * 60);

/// The only application protocol on the replication channel.
const ALPN_H2: &[u8] = b"h2";

/// Why TLS could not be set up, or a certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{what} {path}: {message}")]
    Pem {
        /// "certificate", "private key" or "CA certificate".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// rustls refused the certificate and key.
    #[error("TLS configuration")]
    Rustls(#[from] rustls::Error),
    /// The client-certificate verifier could not be built from the cluster CA.
    #[error("client certificate verifier")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// A file or directory could not be created, written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A certificate or key file is already there; `copyist certs` never replaces one.
    #[error("{path} already exists; refusing to overwrite it")]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// A node name or host cannot be put in a certificate.
    #[error("{what} \"{name}\" cannot be put in a certificate: {reason}")]
    Name {
        /// "node name" or "host".
        what: &'static str,
        /// As given.
        name: String,
        /// Why not.
        reason: String,
    },
    /// rcgen could not make a key or certificate.
    #[error("certificate generation")]
    Generate(#[from] rcgen::Error),
    /// A newly issued certificate does not verify against the CA certificate: `ca.key` does
    /// not belong to `ca.pem`, or `ca.pem` was not made by [`init_ca`].
    #[error(
        "{path} does not match {CA_KEY_FILE} or was not made by `copyist certs init`: {reason}"
    )]
    CaMismatch {
        /// The CA certificate.
        path: PathBuf,
        /// What webpki said.
        reason: String,
    },
}

// === public listener ===

/// The acceptor for the public listener: HTTP/2 and HTTP/1.1 by ALPN.
pub fn public_acceptor(files: &TlsFiles) -> Result<TlsAcceptor, TlsError> {
    let certs = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

// === replication channel ===

/// The replication listener's config: serves `cfg.cert`, and requires a client certificate
/// that chains to the cluster CA (`cfg.ca`), before any request is read. Which node the client
/// is remains for the caller to check with [`peer_name`].
pub fn replication_server(cfg: &ReplicationConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let roots = Arc::new(cluster_roots(&cfg.ca)?);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone()).build()?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(&cfg.cert)?, load_key(&cfg.key)?)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // No 0-RTT: early data can be replayed by anyone who recorded it, and a replayed
    // replication request must never reach the apply path twice. (rustls's default, pinned.)
    config.max_early_data_size = 0;
    Ok(Arc::new(config))
}

/// The replication client's config: trusts only the cluster CA and presents `cfg.cert` as
/// its client certificate. Connect with `ServerName::try_from(peer_name)` (the peer's
/// `[node] name`, a DNS name), so a peer whose certificate does not carry its configured
/// name fails the handshake.
pub fn replication_client(cfg: &ReplicationConfig) -> Result<Arc<ClientConfig>, TlsError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(cluster_roots(&cfg.ca)?)
        .with_client_auth_cert(load_certs(&cfg.cert)?, load_key(&cfg.key)?)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // No 0-RTT, as on the server: early data is replayable.
    config.enable_early_data = false;
    Ok(Arc::new(config))
}

/// Whether the end-entity certificate `cert` is valid for the DNS name `expected`: how the
/// replication server checks that its client is the configured `[writer] name`. `false` for
/// anything unparsable, and for an `expected` that is not a DNS name (an IP address).
///
/// Only the name is checked: call it on a certificate the handshake has verified, e.g. the
/// first of `stream.get_ref().1.peer_certificates()` on a `tokio_rustls` server stream.
pub fn peer_name(cert: &CertificateDer<'_>, expected: &str) -> bool {
    let Ok(name @ ServerName::DnsName(_)) = ServerName::try_from(expected) else {
        return false;
    };
    webpki::EndEntityCert::try_from(cert)
        .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
}

// === certificates (`copyist certs`) ===

/// Creates the cluster CA: `dir/ca.pem` and `dir/ca.key` (mode 0600), creating `dir` if
/// needed. Returns their paths. Refuses to replace either file: a new CA would orphan every
/// node certificate issued by the old one.
pub fn init_ca(dir: &Path) -> Result<(PathBuf, PathBuf), TlsError> {
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    refuse_existing(&[&cert_path, &key_path])?;
    let key = KeyPair::generate()?;
    let cert = ca_params().self_signed(&key)?;
    write_new(&key_path, &key.serialize_pem(), 0o600)?;
    write_new(&cert_path, &cert.pem(), 0o644)?;
    Ok((cert_path, key_path))
}

/// Issues a certificate for node `name` from the CA in `dir`: `dir/NAME.pem` and
/// `dir/NAME.key` (mode 0600). Returns their paths.
///
/// The certificate is valid for the DNS name `name` and for each of `hosts` (an IP address
/// becomes an IP SAN, anything else a DNS SAN), for both server and client authentication,
/// from a day ago for ten years. Refuses to replace existing files.
pub fn issue_node(
    dir: &Path,
    name: &str,
    hosts: &[String],
) -> Result<(PathBuf, PathBuf), TlsError> {
    crate::config::check_node_name(name).map_err(|reason| TlsError::Name {
        what: "node name",
        name: name.to_owned(),
        reason,
    })?;
    let mut names = vec![name.to_owned()];
    for host in hosts {
        if ServerName::try_from(host.as_str()).is_err() {
            return Err(TlsError::Name {
                what: "host",
                name: host.clone(),
                reason: "not an IP address or DNS name".to_owned(),
            });
        }
        if !names.iter().any(|n| n.eq_ignore_ascii_case(host)) {
            names.push(host.clone());
        }
    }
    let cert_path = dir.join(format!("{name}.pem"));
    let key_path = dir.join(format!("{name}.key"));
    refuse_existing(&[&cert_path, &key_path])?;

    let ca_cert_path = dir.join(CA_CERT_FILE);
    // load_certs never returns an empty list, so remove(0) cannot panic.
    let ca_cert = load_certs(&ca_cert_path)?.remove(0);
    let ca_key_path = dir.join(CA_KEY_FILE);
    let ca_key_pem = fs::read_to_string(&ca_key_path).map_err(io_error(&ca_key_path))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|e| TlsError::Pem {
        what: "CA private key",
        path: ca_key_path,
        message: e.to_string(),
    })?;
    let issuer = Issuer::new(ca_params(), ca_key);

    let key = KeyPair::generate()?;
    let cert = node_params(name, names)?.signed_by(&key, &issuer)?;
    verify_issued(cert.der(), &ca_cert, &ca_cert_path)?;
    write_new(&key_path, &key.serialize_pem(), 0o600)?;
    write_new(&cert_path, &cert.pem(), 0o644)?;
    Ok((cert_path, key_path))
}

/// The cluster CA: may sign end-entity certificates only (path length 0).
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, CA_COMMON_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params);
    params
}

/// A node certificate for `name`, valid for `names` (`name` first).
fn node_params(name: &str, names: Vec<String>) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Every node is both: a server to peers that connect to it, a client to those it
    // connects to (and a mirror can be promoted to writer).
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params);
    Ok(params)
}

fn set_validity(params: &mut CertificateParams) {
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    // A clock before 1970 is broken beyond what a day of backdating helps; start at 1970.
    let now = epoch
        + SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
    params.not_before = now - BACKDATE;
    params.not_after = now + VALIDITY;
}

/// Checks that `leaf` chains to `ca` for both uses; catches a `ca.key` that does not belong
/// to `ca.pem`, or a `ca.pem` whose subject is not the one [`ca_params`] rebuilds.
fn verify_issued(
    leaf: &CertificateDer<'_>,
    ca: &CertificateDer<'_>,
    ca_path: &Path,
) -> Result<(), TlsError> {
    let mismatch = |e: webpki::Error| TlsError::CaMismatch {
        path: ca_path.to_path_buf(),
        reason: e.to_string(),
    };
    let anchors = [webpki::anchor_from_trusted_cert(ca).map_err(mismatch)?];
    let leaf = webpki::EndEntityCert::try_from(leaf).map_err(mismatch)?;
    let algorithms = provider().signature_verification_algorithms.all;
    let now = UnixTime::now();
    for usage in [
        webpki::KeyUsage::server_auth(),
        webpki::KeyUsage::client_auth(),
    ] {
        leaf.verify_for_usage(algorithms, &anchors, &[], now, usage, None, None)
            .map_err(mismatch)?;
    }
    Ok(())
}

// === files ===

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The cluster CA as the only trusted root.
fn cluster_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| TlsError::Pem {
            what: "CA certificate",
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    }
    Ok(roots)
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

/// Fails naming the first of `paths` that exists (a dangling symlink counts), before anything
/// is written, so a refused run leaves no half-made pair behind.
fn refuse_existing(paths: &[&Path]) -> Result<(), TlsError> {
    match paths.iter().find(|p| p.symlink_metadata().is_ok()) {
        Some(path) => Err(TlsError::Exists {
            path: path.to_path_buf(),
        }),
        None => Ok(()),
    }
}

/// Writes a new file with `mode`, durably. `create_new` makes a file that appeared since
/// [`refuse_existing`] an error, not a silent overwrite.
fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), TlsError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => TlsError::Exists {
                path: path.to_path_buf(),
            },
            _ => io_error(path)(e),
        })?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_error(path))
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests;

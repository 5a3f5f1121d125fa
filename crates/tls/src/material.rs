//! One loaded set of TLS files, turned into the rustls configurations every side needs.
//!
//! Built once per change of the files and shared (`Arc`) by every connection made while it
//! is current, so a handshake never reads a file.

use crate::{TlsError, TlsPaths};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::Path;
use std::sync::Arc;

/// gRPC runs on HTTP/2 only; saying so in ALPN makes a mismatched peer fail in the handshake.
const ALPN_H2: &[u8] = b"h2";
/// A PEM file larger than this is not a certificate bundle (and must not be read whole).
pub(crate) const PEM_BYTES_MAX: u64 = 1 << 20;

/// The raw bytes of the three files, compared to decide whether anything changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Files {
    ca: Vec<u8>,
    cert: Option<Vec<u8>>,
    key: Option<Vec<u8>>,
    peer_ca: Option<Vec<u8>>,
}

impl Files {
    pub(crate) fn read(paths: &TlsPaths) -> Result<Files, TlsError> {
        Ok(Files {
            ca: read_pem("CA bundle", &paths.ca)?,
            cert: paths.cert.as_deref().map(|p| read_pem("certificate", p)).transpose()?,
            key: paths.key.as_deref().map(|p| read_pem("private key", p)).transpose()?,
            peer_ca: paths.peer_ca.as_deref().map(|p| read_pem("peer CA bundle", p)).transpose()?,
        })
    }
}

fn read_pem(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    use std::io::Read;
    let err = |source| TlsError::Read { what, path: path.to_path_buf(), source };
    let file = std::fs::File::open(path).map_err(err)?;
    let mut bytes = Vec::new();
    file.take(PEM_BYTES_MAX + 1).read_to_end(&mut bytes).map_err(err)?;
    if bytes.len() as u64 > PEM_BYTES_MAX {
        return Err(TlsError::Pem {
            what,
            path: path.to_path_buf(),
            reason: format!("larger than {PEM_BYTES_MAX} bytes"),
        });
    }
    Ok(bytes)
}

pub(crate) struct Material {
    pub(crate) files: Files,
    /// Dials anyone the CAs vouch for (routers, clients).
    pub(crate) client: Arc<ClientConfig>,
    /// Dials nodes only: servers must hold a certificate of the nodes' CA.
    pub(crate) client_to_peers: Arc<ClientConfig>,
    /// Serves with a client certificate optional (verified when presented).
    pub(crate) server_optional: Option<Arc<ServerConfig>>,
    /// Serves only clients presenting a certificate of the nodes' CA (the peer port).
    pub(crate) server_required: Option<Arc<ServerConfig>>,
    /// Whether a verified client certificate is a node's (of the nodes' CA).
    pub(crate) peer_verifier: Arc<dyn ClientCertVerifier>,
    /// When this process's own certificate expires (Unix seconds), if it has one.
    pub(crate) not_after_unix: Option<i64>,
}

/// The certificates of a PEM bundle as a root store, refusing an empty one.
fn roots_of(
    what: &'static str,
    path: &Path,
    pem: &[u8],
    into: &mut RootCertStore,
) -> Result<(), TlsError> {
    let cas = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem { what, path: path.to_path_buf(), reason: e.to_string() })?;
    if cas.is_empty() {
        return Err(TlsError::Empty { what, path: path.to_path_buf(), expected: "CERTIFICATE" });
    }
    for ca in cas {
        into.add(ca)
            .map_err(|e| TlsError::Roots { path: path.to_path_buf(), reason: e.to_string() })?;
    }
    Ok(())
}

fn config_err(e: rustls::Error) -> TlsError {
    TlsError::Config(e.to_string())
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Material {
    pub(crate) fn build(paths: &TlsPaths, files: Files) -> Result<Material, TlsError> {
        fn pem_err(
            what: &'static str,
            path: &Path,
        ) -> impl FnOnce(rustls::pki_types::pem::Error) -> TlsError + use<> {
            let path = path.to_path_buf();
            move |e| TlsError::Pem { what, path, reason: e.to_string() }
        }
        // `ca` vouches for everyone when nodes have no CA of their own; with a peer CA,
        // servers are checked against both (nodes' certificates come from the peer CA) and
        // only the peer CA's certificates are nodes.
        let mut roots = RootCertStore::empty();
        roots_of("CA bundle", &paths.ca, &files.ca, &mut roots)?;
        let mut peer_roots = RootCertStore::empty();
        match (&paths.peer_ca, &files.peer_ca) {
            (Some(path), Some(pem)) => {
                roots_of("peer CA bundle", path, pem, &mut peer_roots)?;
                roots_of("peer CA bundle", path, pem, &mut roots)?;
            }
            _ => roots_of("CA bundle", &paths.ca, &files.ca, &mut peer_roots)?,
        }
        let roots = Arc::new(roots);
        let peer_roots = Arc::new(peer_roots);
        let peer_verifier =
            WebPkiClientVerifier::builder_with_provider(peer_roots.clone(), provider())
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
        let identity = match (&paths.cert, &paths.key, &files.cert, &files.key) {
            (Some(cert_path), Some(key_path), Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_slice_iter(cert)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(pem_err("certificate", cert_path))?;
                if chain.is_empty() {
                    return Err(TlsError::Empty {
                        what: "certificate",
                        path: cert_path.clone(),
                        expected: "CERTIFICATE",
                    });
                }
                let key =
                    PrivateKeyDer::from_pem_slice(key).map_err(pem_err("private key", key_path))?;
                Some((chain, key, cert_path.clone(), key_path.clone()))
            }
            _ => None,
        };

        let client_trusting = |roots: &Arc<RootCertStore>| -> Result<Arc<ClientConfig>, TlsError> {
            let builder = ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(config_err)?
                .with_root_certificates(roots.clone());
            let mut client = match &identity {
                Some((chain, key, cert_path, key_path)) => builder
                    .with_client_auth_cert(chain.clone(), key.clone_key())
                    .map_err(|e| TlsError::Identity {
                        cert: cert_path.clone(),
                        key: key_path.clone(),
                        reason: e.to_string(),
                    })?,
                None => builder.with_no_client_auth(),
            };
            client.alpn_protocols = vec![ALPN_H2.to_vec()];
            Ok(Arc::new(client))
        };
        let client = client_trusting(&roots)?;
        // A node dials only nodes: it must not take a certificate of the other CA (which
        // routers and applications hold) for a node's.
        let client_to_peers = client_trusting(&peer_roots)?;

        let (server_optional, server_required) = match &identity {
            None => (None, None),
            Some((chain, key, cert_path, key_path)) => {
                let server = |required: bool| -> Result<Arc<ServerConfig>, TlsError> {
                    // The peer port admits only nodes; client ports anyone the CAs vouch
                    // for, and clients without a certificate.
                    let verifier = if required {
                        WebPkiClientVerifier::builder_with_provider(peer_roots.clone(), provider())
                    } else {
                        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                            .allow_unauthenticated()
                    };
                    let verifier = verifier.build().map_err(|e| TlsError::Config(e.to_string()))?;
                    let mut config = ServerConfig::builder_with_provider(provider())
                        .with_safe_default_protocol_versions()
                        .map_err(config_err)?
                        .with_client_cert_verifier(verifier)
                        .with_single_cert(chain.clone(), key.clone_key())
                        .map_err(|e| TlsError::Identity {
                            cert: cert_path.clone(),
                            key: key_path.clone(),
                            reason: e.to_string(),
                        })?;
                    config.alpn_protocols = vec![ALPN_H2.to_vec()];
                    Ok(Arc::new(config))
                };
                (Some(server(false)?), Some(server(true)?))
            }
        };
        let not_after_unix = identity.as_ref().and_then(|(chain, ..)| {
            let (_, cert) = x509_parser::parse_x509_certificate(chain[0].as_ref()).ok()?;
            Some(cert.validity().not_after.timestamp())
        });
        Ok(Material {
            not_after_unix,
            files,
            client,
            client_to_peers,
            server_optional,
            server_required,
            peer_verifier,
        })
    }
}

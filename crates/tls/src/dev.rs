//! Throwaway certificates for development clusters and tests (`ringkv dev --tls`).
//!
//! A [`DevCa`] is a fresh self-signed CA whose key lives only in memory: it issues the
//! certificates of one dev cluster and is gone with the process, so nothing it signed can be
//! trusted anywhere else. Real clusters get their certificates from their own CA
//! (cert-manager, see docs/security.md).

use crate::{TlsError, TlsPaths};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use std::path::Path;

/// What a certificate may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// Serves and dials (nodes, routers): server and client authentication.
    Peer,
    /// Only dials (applications, the CLI): client authentication.
    Client,
}

pub struct DevCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DevCa")
    }
}

fn gen_err(e: rcgen::Error) -> TlsError {
    TlsError::Generate(e.to_string())
}

impl DevCa {
    /// A new CA called `name`.
    pub fn generate(name: &str) -> Result<DevCa, TlsError> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().map_err(gen_err)?;
        let issuer = CertifiedIssuer::self_signed(params, key).map_err(gen_err)?;
        Ok(DevCa { issuer })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate and its key (both PEM) for `names` (DNS names or IPs; the first is also
    /// the common name).
    pub fn issue(&self, names: &[&str], usage: Usage) -> Result<(String, String), TlsError> {
        let sans: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(sans).map_err(gen_err)?;
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match usage {
            Usage::Peer => {
                vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth]
            }
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        let key = KeyPair::generate().map_err(gen_err)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(gen_err)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Writes `ca.crt`, `tls.crt` and `tls.key` (readable by the owner only) for a new
    /// certificate into `dir`, as a Kubernetes TLS Secret would hold them.
    pub fn write_identity(
        &self,
        dir: &Path,
        names: &[&str],
        usage: Usage,
    ) -> Result<TlsPaths, TlsError> {
        let (cert, key) = self.issue(names, usage)?;
        let paths = TlsPaths::in_dir(dir);
        let werr = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TlsError::Write { path, source }
        };
        std::fs::create_dir_all(dir).map_err(werr(dir))?;
        write_file(&paths.ca, self.cert_pem().as_bytes(), 0o644).map_err(werr(&paths.ca))?;
        let (cert_path, key_path) = (dir.join(TlsPaths::CERT_FILE), dir.join(TlsPaths::KEY_FILE));
        // The key before the certificate: a reload between the two writes sees a key that
        // does not match the old certificate, fails and keeps the old set, rather than ever
        // serving a certificate with another's key.
        write_file(&key_path, key.as_bytes(), 0o600).map_err(werr(&key_path))?;
        write_file(&cert_path, cert.as_bytes(), 0o644).map_err(werr(&cert_path))?;
        Ok(paths)
    }
}

/// Writes through a temporary file and a rename, so a reader never sees half a file.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

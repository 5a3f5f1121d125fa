//! Where a process finds its CA bundle, certificate and key.
//!
//! The names in a directory follow the Kubernetes TLS Secret that cert-manager writes
//! (`ca.crt`, `tls.crt`, `tls.key`), so a mounted Secret is a `--tls-dir` as it is.

use crate::TlsError;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    /// PEM bundle of the CAs this process trusts (peers' and servers' certificates).
    pub ca: PathBuf,
    /// PEM certificate chain of this process (leaf first); `None` for a client without one.
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `cert`.
    pub key: Option<PathBuf>,
    /// The CA bundle of *nodes'* certificates, when nodes have a CA of their own (`None`: the
    /// nodes' CA is `ca`). Only its certificates may call the peer services; `ca` then
    /// vouches for routers and clients.
    pub peer_ca: Option<PathBuf>,
}

impl TlsPaths {
    pub const CA_FILE: &'static str = "ca.crt";
    pub const CERT_FILE: &'static str = "tls.crt";
    pub const KEY_FILE: &'static str = "tls.key";

    /// `ca.crt`, `tls.crt` and `tls.key` in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        TlsPaths {
            ca: dir.join(Self::CA_FILE),
            cert: Some(dir.join(Self::CERT_FILE)),
            key: Some(dir.join(Self::KEY_FILE)),
            peer_ca: None,
        }
    }

    /// The paths from a process's settings: a directory, overridden file by file. `None`
    /// when nothing was given (plaintext); an error when a certificate comes without its key
    /// or there is no CA to verify peers with.
    pub fn from_settings(
        dir: Option<&Path>,
        ca: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
    ) -> Result<Option<Self>, TlsError> {
        let base = dir.map(Self::in_dir);
        let ca = ca.or_else(|| base.as_ref().map(|b| b.ca.clone()));
        let cert = cert.or_else(|| base.as_ref().and_then(|b| b.cert.clone()));
        let key = key.or_else(|| base.as_ref().and_then(|b| b.key.clone()));
        match (ca, cert, key) {
            (None, None, None) => Ok(None),
            (Some(ca), cert @ None, key @ None) | (Some(ca), cert @ Some(_), key @ Some(_)) => {
                Ok(Some(TlsPaths { ca, cert, key, peer_ca: None }))
            }
            (_, Some(_), None) => Err(TlsError::Incomplete { have: "a certificate, no key" }),
            (_, None, Some(_)) => Err(TlsError::Incomplete { have: "a key, no certificate" }),
            (None, Some(_), Some(_)) => Err(TlsError::Config(
                "a certificate needs the CA bundle to verify peers with (--tls-ca)".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_names_the_secret_files_and_flags_override_them() {
        let p = TlsPaths::from_settings(
            Some(Path::new("/etc/tls")),
            None,
            Some("/other/cert.pem".into()),
            None,
        )
        .unwrap()
        .unwrap();
        assert_eq!(p.ca, Path::new("/etc/tls/ca.crt"));
        assert_eq!(p.cert.as_deref(), Some(Path::new("/other/cert.pem")));
        assert_eq!(p.key.as_deref(), Some(Path::new("/etc/tls/tls.key")));
    }

    #[test]
    fn nothing_given_is_plaintext_and_half_an_identity_is_an_error() {
        assert_eq!(TlsPaths::from_settings(None, None, None, None).unwrap(), None);
        let only_ca = TlsPaths::from_settings(None, Some("ca.pem".into()), None, None).unwrap();
        assert_eq!(only_ca.unwrap().cert, None);
        let e = TlsPaths::from_settings(None, Some("ca".into()), Some("c".into()), None);
        assert!(e.unwrap_err().to_string().contains("give both or neither"));
        let e = TlsPaths::from_settings(None, None, Some("c".into()), Some("k".into()));
        assert!(e.unwrap_err().to_string().contains("--tls-ca"));
    }
}

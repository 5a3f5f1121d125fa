//! What can go wrong loading certificates or making them, each variant naming the file and
//! the reason, so an operator can fix it without reading code.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{what} {path} holds no PEM {expected}")]
    Empty { what: &'static str, path: PathBuf, expected: &'static str },
    #[error("{what} {path} is not valid PEM: {reason}")]
    Pem { what: &'static str, path: PathBuf, reason: String },
    #[error("CA bundle {path} was refused: {reason}")]
    Roots { path: PathBuf, reason: String },
    #[error("the certificate {cert} and key {key} do not make a usable identity: {reason}")]
    Identity { cert: PathBuf, key: PathBuf, reason: String },
    #[error("a TLS certificate and its key go together: give both or neither (have {have})")]
    Incomplete { have: &'static str },
    #[error("this TLS configuration has no certificate of its own, so it cannot serve")]
    NoIdentity,
    #[error("TLS configuration refused: {0}")]
    Config(String),
    #[error("cannot make a certificate: {0}")]
    Generate(String),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

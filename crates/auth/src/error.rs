//! The errors of authentication and authorization, and their one mapping to `tonic::Status`.
//!
//! | variant           | gRPC code          | reason             | the caller should           |
//! |-------------------|--------------------|--------------------|-----------------------------|
//! | Unauthenticated   | UNAUTHENTICATED    | UNAUTHENTICATED    | present what `needs` names  |
//! | PermissionDenied  | PERMISSION_DENIED  | PERMISSION_DENIED  | ask for the grant in `needs`|
//! | Policy, Config    | (not sent: refused at start or on reload, logged) |  |          |
//!
//! Neither is retried by the routing core (another node would answer the same) and neither
//! changed anything: the write outcome is `NOT_APPLIED`.

use crate::grant::{Access, Need};
use std::collections::HashMap;
use std::path::PathBuf;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// Printed names of keys and topics are cut to this many bytes: a 64 KiB key in an error
/// message (and its details, and the log) would help nobody.
const NAME_SHOWN_BYTES_MAX: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("unauthenticated: {why}; {needs}")]
    Unauthenticated { why: String, needs: &'static str },
    #[error("permission denied: {subject} may not call {rpc}: it needs {access} on {on} {name}")]
    PermissionDenied {
        subject: String,
        rpc: &'static str,
        access: Access,
        on: &'static str,
        name: String,
    },
    #[error("access policy {path}: {reason}")]
    Policy { path: PathBuf, reason: String },
    #[error("{0}")]
    Config(String),
}

/// What an unauthenticated caller can do about it.
pub(crate) const NEEDS_TOKEN: &str = "send a token of this cluster's access policy (ringkv --token or RINGKV_TOKEN; \
     an `authorization: Bearer <token>` header) or a client certificate the policy names";

impl AuthError {
    pub(crate) fn denied(subject: &str, rpc: &'static str, need: &Need<'_>) -> AuthError {
        let (access, on, name) = match need {
            Need::Key(k, a) => (*a, "key", shown(k)),
            Need::KeyRange { lo, hi, access } => (
                *access,
                "key_range",
                format!("[{}, {})", shown(lo), hi.map_or("end of the key space".into(), shown)),
            ),
            Need::Topic(t, a) => (*a, "topic", shown(t.as_bytes())),
            Need::Cluster => (Access::ADMIN, "cluster", String::new()),
        };
        AuthError::PermissionDenied { subject: subject.to_string(), rpc, access, on, name }
    }

    pub fn unauthenticated(why: impl Into<String>) -> AuthError {
        AuthError::Unauthenticated { why: why.into(), needs: NEEDS_TOKEN }
    }

    pub fn to_status(&self) -> Status {
        let mut md = HashMap::new();
        let (code, reason) = match self {
            AuthError::Unauthenticated { why, needs } => {
                md.insert("why".to_string(), why.clone());
                md.insert("needs".to_string(), (*needs).to_string());
                (Code::Unauthenticated, "UNAUTHENTICATED")
            }
            AuthError::PermissionDenied { subject, rpc, access, on, name } => {
                md.insert("subject".to_string(), subject.clone());
                md.insert("rpc".to_string(), (*rpc).to_string());
                md.insert("needs".to_string(), access.to_string());
                md.insert("on".to_string(), (*on).to_string());
                md.insert("name".to_string(), name.clone());
                (Code::PermissionDenied, "PERMISSION_DENIED")
            }
            AuthError::Policy { .. } | AuthError::Config(_) => (Code::Internal, "INTERNAL"),
        };
        let details = ErrorDetails::with_error_info(reason, ringkv_proto::ERROR_DOMAIN, md);
        Status::with_error_details(code, self.to_string(), details)
    }
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Status {
        e.to_status()
    }
}

/// A key or name as text for messages: escaped, and cut at [`NAME_SHOWN_BYTES_MAX`].
pub(crate) fn shown(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(NAME_SHOWN_BYTES_MAX)];
    let mut s = format!("\"{}\"", String::from_utf8_lossy(cut).escape_debug());
    if cut.len() < bytes.len() {
        s.push_str(&format!(" (first {} of {} bytes)", cut.len(), bytes.len()));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_carry_their_reason_and_the_missing_grant() {
        let denied = AuthError::denied("app", "Put", &Need::Key(b"orders/1", Access::WRITE));
        let s = denied.to_status();
        assert_eq!(s.code(), Code::PermissionDenied);
        let info = s.get_error_details().error_info().cloned().unwrap();
        assert_eq!(info.reason, "PERMISSION_DENIED");
        assert_eq!(info.metadata["subject"], "app");
        assert_eq!(info.metadata["needs"], "write");
        assert_eq!(info.metadata["on"], "key");
        assert_eq!(info.metadata["name"], "\"orders/1\"");
        assert!(s.message().contains("app may not call Put: it needs write on key \"orders/1\""));

        let s = AuthError::unauthenticated("no token").to_status();
        assert_eq!(s.code(), Code::Unauthenticated);
        let info = s.get_error_details().error_info().cloned().unwrap();
        assert_eq!(info.reason, "UNAUTHENTICATED");
        assert_eq!(info.metadata["why"], "no token");
    }

    #[test]
    fn long_names_are_cut() {
        let s = shown(&[b'a'; 1000]);
        assert!(s.len() < 200 && s.ends_with("(first 128 of 1000 bytes)"), "{s}");
    }
}

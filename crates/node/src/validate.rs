//! Input limits, checked before anything is proposed to Raft.
//!
//! Each limit exists to bound something: a Raft entry must fit comfortably in one
//! AppendEntries message and one RocksDB write; a key is copied into every index and
//! snapshot. Requests that break a limit get INVALID_ARGUMENT naming the field and the limit,
//! and nothing is written.

use crate::error::NodeError;
use ringkv_proto::v1::Consistency;

pub const KEY_BYTES_MAX: usize = 4 << 10;
pub const VALUE_BYTES_MAX: usize = 1 << 20;
pub const BATCH_OPS_MAX: usize = 1000;
pub const BATCH_BYTES_MAX: usize = 8 << 20;
pub const SCAN_LIMIT_DEFAULT: usize = 1000;
pub const SCAN_LIMIT_MAX: usize = 10_000;
pub const MULTI_GET_KEYS_MAX: usize = 1000;
/// gRPC messages larger than this are refused by the transport before they are decoded:
/// the largest valid request (a full batch) plus framing.
pub const GRPC_MESSAGE_BYTES_MAX: usize = BATCH_BYTES_MAX + (1 << 20);

pub fn key(key: &[u8]) -> Result<(), NodeError> {
    if key.is_empty() {
        return Err(NodeError::invalid("key", "must not be empty"));
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(NodeError::too_large("key", key.len(), KEY_BYTES_MAX));
    }
    Ok(())
}

pub fn value(value: &[u8]) -> Result<(), NodeError> {
    if value.len() > VALUE_BYTES_MAX {
        return Err(NodeError::too_large("value", value.len(), VALUE_BYTES_MAX));
    }
    Ok(())
}

/// A proto enum value arrives as an i32 and may be any number.
pub fn consistency(raw: i32) -> Result<Consistency, NodeError> {
    match Consistency::try_from(raw) {
        Ok(Consistency::Unspecified) => Ok(Consistency::Linearizable),
        Ok(c) => Ok(c),
        Err(_) => Err(NodeError::InvalidArgument {
            field: "consistency",
            reason: format!(
                "unknown consistency level {raw}; use LINEARIZABLE (1), LEASE (2) or STALE (3)"
            ),
            limit: None,
        }),
    }
}

pub fn batch(ops: usize, bytes: usize) -> Result<(), NodeError> {
    if ops == 0 {
        return Err(NodeError::invalid("ops", "a batch needs at least one operation"));
    }
    if ops > BATCH_OPS_MAX {
        return Err(NodeError::InvalidArgument {
            field: "ops",
            reason: format!("{ops} operations exceeds the limit of {BATCH_OPS_MAX}"),
            limit: Some(BATCH_OPS_MAX as u64),
        });
    }
    if bytes > BATCH_BYTES_MAX {
        return Err(NodeError::too_large("ops", bytes, BATCH_BYTES_MAX));
    }
    Ok(())
}

/// A write session, if the request carries one.
pub fn session(
    s: Option<&ringkv_proto::v1::WriteSession>,
) -> Result<Option<ringkv_storage::Session>, NodeError> {
    match s {
        None => Ok(None),
        Some(s) if s.client_id == 0 => {
            Err(NodeError::invalid("session.client_id", "must be non-zero"))
        }
        Some(s) => Ok(Some(ringkv_storage::Session { client_id: s.client_id, seq: s.sequence })),
    }
}

pub fn scan_limit(raw: u32) -> Result<usize, NodeError> {
    match raw as usize {
        0 => Ok(SCAN_LIMIT_DEFAULT),
        n if n > SCAN_LIMIT_MAX => Err(NodeError::InvalidArgument {
            field: "limit",
            reason: format!("{n} exceeds the limit of {SCAN_LIMIT_MAX} keys per page"),
            limit: Some(SCAN_LIMIT_MAX as u64),
        }),
        n => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_enforced_at_their_edges() {
        assert!(key(b"").is_err());
        assert!(key(&[7; KEY_BYTES_MAX]).is_ok());
        assert!(key(&[7; KEY_BYTES_MAX + 1]).is_err());
        assert!(value(&[]).is_ok());
        assert!(value(&vec![0; VALUE_BYTES_MAX]).is_ok());
        assert!(value(&vec![0; VALUE_BYTES_MAX + 1]).is_err());
        assert!(batch(0, 0).is_err());
        assert!(batch(BATCH_OPS_MAX, BATCH_BYTES_MAX).is_ok());
        assert!(batch(BATCH_OPS_MAX + 1, 0).is_err());
        assert!(batch(1, BATCH_BYTES_MAX + 1).is_err());
        assert_eq!(scan_limit(0).unwrap(), SCAN_LIMIT_DEFAULT);
        assert!(scan_limit(SCAN_LIMIT_MAX as u32 + 1).is_err());
    }

    #[test]
    fn consistency_levels() {
        assert_eq!(consistency(0).unwrap(), Consistency::Linearizable);
        assert_eq!(consistency(3).unwrap(), Consistency::Stale);
        let e = consistency(42).unwrap_err();
        assert!(e.to_string().contains("unknown consistency level 42"), "{e}");
    }
}

//! What kind of failure a storage error is, decided by type, never by its message.
//!
//! The storage layer reports every failure as an `io::Error`, because openraft's storage
//! traits want one. The node needs to tell two kinds apart:
//!
//! - **corrupt data**: a record failed its CRC or did not decode, or RocksDB itself reported
//!   corruption. The shard stops, the client gets `DATA_LOSS` and an operator is paged; the
//!   data must be read from another replica.
//! - **anything else**: an I/O error, a full disk, a missing column family. The replica is
//!   unavailable; the client may retry elsewhere.
//!
//! The convention that carries the kind is `io::ErrorKind::InvalidData`, which this crate uses
//! for corrupt data and for nothing else: decoders set it where they find damage, and
//! [`rocks_err`](crate::log_store::rocks_err) sets it for RocksDB's own `Corruption` status.
//!
//! openraft wraps the errors of a shard's stores in the type config's `ErrorSource` before the
//! node sees them (as `Fatal::StorageError`). Its default keeps only a message, so [`Fault`] is
//! ringkv's `ErrorSource`: it keeps the [`FaultKind`] it found on the way in.

use openraft::error::ErrorSource;
use serde::{Deserialize, Serialize};
use std::error::Error;
use std::io;

/// The two kinds of storage failure the node treats differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FaultKind {
    /// Data on disk is damaged: stop the shard, answer `DATA_LOSS`.
    Corrupt,
    /// Anything else (I/O, a full disk, a network error wrapped by openraft).
    Other,
}

/// The `io::ErrorKind` a RocksDB status becomes: its `Corruption` status is corrupt data.
pub(crate) fn rocks_io_kind(kind: &rocksdb::ErrorKind) -> io::ErrorKind {
    match kind {
        rocksdb::ErrorKind::Corruption => io::ErrorKind::InvalidData,
        _ => io::ErrorKind::Other,
    }
}

impl FaultKind {
    /// The kind of an error from this crate.
    pub fn of(e: &io::Error) -> FaultKind {
        if e.kind() == io::ErrorKind::InvalidData { FaultKind::Corrupt } else { FaultKind::Other }
    }

    /// The kind of any error: the first `io::Error` or [`Fault`] in its source chain decides.
    pub fn of_any(e: &(dyn Error + 'static)) -> FaultKind {
        let mut cur = Some(e);
        while let Some(err) = cur {
            if let Some(io) = err.downcast_ref::<io::Error>() {
                return FaultKind::of(io);
            }
            if let Some(fault) = err.downcast_ref::<Fault>() {
                return fault.kind;
            }
            cur = err.source();
        }
        FaultKind::Other
    }
}

/// ringkv's openraft `ErrorSource`: an error's message and its [`FaultKind`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct Fault {
    pub kind: FaultKind,
    pub message: String,
}

impl Fault {
    /// The fault inside an openraft error that wraps one (`StorageError`, `NetworkError`...).
    pub fn find<'a>(e: &'a (dyn Error + 'static)) -> Option<&'a Fault> {
        let mut cur = Some(e);
        while let Some(err) = cur {
            if let Some(fault) = err.downcast_ref::<Fault>() {
                return Some(fault);
            }
            cur = err.source();
        }
        None
    }
}

impl ErrorSource for Fault {
    fn from_error<E: Error + 'static>(error: &E) -> Self {
        Fault { kind: FaultKind::of_any(error), message: error.to_string() }
    }

    fn from_string(msg: impl ToString) -> Self {
        Fault { kind: FaultKind::Other, message: msg.to_string() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::type_config::{StorageError, TypeConfig};
    use openraft::RaftTypeConfig;

    fn storage_error(e: io::Error) -> StorageError {
        StorageError::read_state_machine(<TypeConfig as RaftTypeConfig>::ErrorSource::from_error(
            &e,
        ))
    }

    #[test]
    fn corruption_survives_openraft_wrapping_whatever_the_message_says() {
        let e = storage_error(io::Error::new(io::ErrorKind::InvalidData, "crc mismatch"));
        assert_eq!(Fault::find(&e).map(|f| f.kind), Some(FaultKind::Corrupt));
        // A message that happens to say "corrupt" is not corruption: only the kind counts.
        let e = storage_error(io::Error::other("corrupt-looking words, but a full disk"));
        assert_eq!(Fault::find(&e).map(|f| f.kind), Some(FaultKind::Other));
    }

    #[test]
    fn rocksdb_corruption_is_corrupt_and_its_io_errors_are_not() {
        // rocksdb::Error cannot be built outside its crate, so the mapping of its kinds is
        // checked on the kinds.
        let corrupt = rocks_io_kind(&rocksdb::ErrorKind::Corruption);
        assert_eq!(FaultKind::of(&io::Error::new(corrupt, "x")), FaultKind::Corrupt);
        for other in [rocksdb::ErrorKind::IOError, rocksdb::ErrorKind::Busy] {
            let kind = rocks_io_kind(&other);
            assert_eq!(FaultKind::of(&io::Error::new(kind, "x")), FaultKind::Other, "{other:?}");
        }
        let nested = io::Error::other(Fault { kind: FaultKind::Corrupt, message: "m".into() });
        assert_eq!(FaultKind::of_any(&nested), FaultKind::Other, "the outer io kind decides");
    }
}

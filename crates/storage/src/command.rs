//! The commands a shard's Raft log carries, and what applying them returns.
//!
//! A command is decided once by Raft and then applied on every replica in log order, so
//! applying must be deterministic: it reads only the shard's own state and the entry's log
//! index, which becomes the version of every key the command writes. Validation (sizes, empty
//! keys, one shard per batch) happens before a command is proposed; `apply` never rejects a
//! committed command, it only reports conditional outcomes such as a failed compare.

use serde::{Deserialize, Serialize};
use std::fmt;

/// What a compare-and-swap expects to find.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expected {
    /// The current value equals this.
    Value(Vec<u8>),
    /// The current version equals this.
    Version(u64),
    /// The key does not exist.
    Absent,
}

/// One write of an atomic batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BatchOp {
    Put { key: Vec<u8>, value: Vec<u8> },
    Delete { key: Vec<u8> },
}

/// A state-machine command: the application data of a Raft log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
    },
    /// Writes `new` (or deletes, when `new` is `None`) if the key matches `expected`.
    Cas {
        key: Vec<u8>,
        expected: Expected,
        new: Option<Vec<u8>>,
    },
    Batch {
        ops: Vec<BatchOp>,
    },
}

impl fmt::Display for Command {
    // Keys and values stay out of logs: they may be large or sensitive.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Put { key, value } => {
                write!(f, "put({}B key, {}B value)", key.len(), value.len())
            }
            Command::Delete { key } => write!(f, "delete({}B key)", key.len()),
            Command::Cas { key, .. } => write!(f, "cas({}B key)", key.len()),
            Command::Batch { ops } => write!(f, "batch({} ops)", ops.len()),
        }
    }
}

/// A key's current value and version, as returned by reads and failed compares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versioned {
    pub value: Vec<u8>,
    pub version: u64,
}

/// The outcome of applying a [`Command`] (or a blank/membership entry: `Nothing`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum CommandResult {
    #[default]
    Nothing,
    Put {
        version: u64,
    },
    Delete {
        deleted: bool,
    },
    Cas {
        succeeded: bool,
        version: u64,
        current: Option<Versioned>,
    },
    Batch {
        version: u64,
    },
}

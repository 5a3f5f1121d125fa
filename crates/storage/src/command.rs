//! The commands a shard's Raft log carries, and what applying them returns.
//!
//! A command is decided once by Raft and then applied on every replica in log order, so
//! applying must be deterministic: it reads only the shard's own state and the entry's log
//! index, which becomes the version of every key the command writes. Validation (sizes, empty
//! keys, one shard per batch) happens before a command is proposed; `apply` never rejects a
//! committed command, it only reports conditional outcomes such as a failed compare.

use crate::streams::{StreamCommand, StreamResult};
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
    /// Topics, partitions, events, offsets, change history: see [`crate::streams`].
    Stream(StreamCommand),
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
            Command::Stream(StreamCommand::Append { events, partition, .. }) => {
                write!(f, "append({} events to partition {partition})", events.len())
            }
            Command::Stream(other) => write!(f, "{}", other.name()),
        }
    }
}

/// Identifies a write for at-most-once application (Raft dissertation §6.3): a client id
/// and a sequence number that the client increases for each new write. A client keeps at
/// most one write outstanding per client id, and retries it with the same number until it
/// gets an answer; the shard remembers each client's last sequence number and result, so a
/// retry of an applied write returns the first result instead of applying again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub client_id: u64,
    pub seq: u64,
}

/// The application data of a Raft log entry: a command, optionally tagged with a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub session: Option<Session>,
    pub command: Command,
}

impl From<Command> for Proposal {
    fn from(command: Command) -> Self {
        Proposal { session: None, command }
    }
}

impl Proposal {
    /// Roughly how many separate heap allocations (keys, values, events) the proposal holds:
    /// its size in memory grows with these as well as with its bytes.
    pub fn allocations(&self) -> usize {
        match &self.command {
            Command::Batch { ops } => ops.len().saturating_mul(2),
            Command::Stream(StreamCommand::Append { events, .. }) => events.len().saturating_mul(2),
            _ => 2,
        }
    }
}

impl fmt::Display for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.session {
            Some(s) => write!(f, "{} (client {} seq {})", self.command, s.client_id, s.seq),
            None => write!(f, "{}", self.command),
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
    /// The session's client has already had a later write applied, so the result of this
    /// (older) one is no longer known. Nothing was applied now.
    SessionSuperseded {
        last_seq: u64,
    },
    Stream(StreamResult),
}

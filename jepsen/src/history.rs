//! Histories as JSON lines, one event per line, in the order they happened:
//!
//! ```json
//! {"process":3,"kind":"invoke","op":{"f":"cas","key":"k1","from":2,"to":5},"time_ns":1200}
//! {"process":3,"kind":"ok","op":{"f":"cas","key":"k1","from":2,"to":5},"time_ns":3400}
//! ```
//!
//! A process has at most one operation outstanding: its next event after an invoke completes
//! that invoke. Reads carry their result in the completion (`value`, `null` for a missing key).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Invoke,
    Ok,
    Fail,
    Info,
}

/// A register operation on one key. Values are integers, unique per write in a workload, so
/// a read names the write it observed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "lowercase")]
pub enum Op {
    Read {
        key: String,
        value: Option<i64>,
    },
    Write {
        key: String,
        value: i64,
    },
    Cas {
        key: String,
        from: i64,
        to: i64,
    },
    /// Appends a unique element to the list at `key`.
    Append {
        key: String,
        element: i64,
    },
    /// Reads the whole list at `key`.
    ReadList {
        key: String,
        value: Option<Vec<i64>>,
    },
    /// Appends a unique element as one event to the partition `key` names (`e<g>.<k>`:
    /// partition k of topic `jepsen-events-<g>`), through an idempotent producer; an `ok` completion carries the offset
    /// the append returned.
    Produce {
        key: String,
        element: i64,
        #[serde(default)]
        offset: Option<u64>,
    },
    /// Reads partition `key` from offset 0 to its end: the elements in offset order.
    #[serde(rename = "read-partition")]
    ReadPartition {
        key: String,
        value: Option<Vec<i64>>,
    },
    /// A STALE read of a register: checked against what STALE promises (a committed value,
    /// no older than the replica's reported `staleness_ms`), not against linearizability.
    #[serde(rename = "stale-read")]
    StaleRead {
        key: String,
        value: Option<i64>,
        /// What the answering replica reported: how old its state may be.
        #[serde(default)]
        staleness_ms: Option<u64>,
        /// The answering replica's node id, term and applied index (for diagnosis).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replica: Option<(u64, u64, u64)>,
    },
}

impl Op {
    pub fn key(&self) -> &str {
        match self {
            Op::Read { key, .. }
            | Op::Write { key, .. }
            | Op::Cas { key, .. }
            | Op::Append { key, .. }
            | Op::ReadList { key, .. }
            | Op::Produce { key, .. }
            | Op::ReadPartition { key, .. }
            | Op::StaleRead { key, .. } => key,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub process: u64,
    pub kind: Kind,
    pub op: Op,
    pub time_ns: u64,
    /// Why an operation ended `info` or `fail`, when the client said (for diagnosis only;
    /// checkers ignore it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("line {line}: {source}")]
    Json { line: usize, source: serde_json::Error },
    #[error("event {index}: process {process} completes an operation it never invoked")]
    Unmatched { index: usize, process: u64 },
    #[error("event {index}: process {process} invokes while its previous operation is outstanding")]
    Overlapping { index: usize, process: u64 },
}

/// Parses JSON lines (empty lines are skipped).
pub fn parse(text: &str) -> Result<Vec<Event>, HistoryError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|source| HistoryError::Json { line: i + 1, source })
        })
        .collect()
}

/// One operation with its invocation and completion positions in the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub process: u64,
    /// The completed form of the operation (reads carry their result).
    pub op: Op,
    pub outcome: Kind,
    pub invoke_index: usize,
    /// `None` while the history ended with the operation outstanding (treated like `info`).
    pub complete_index: Option<usize>,
}

/// Pairs invocations with completions.
pub fn calls(events: &[Event]) -> Result<Vec<Call>, HistoryError> {
    let mut open: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
    let mut calls: Vec<Call> = Vec::new();
    for (index, e) in events.iter().enumerate() {
        match e.kind {
            Kind::Invoke => {
                if open.contains_key(&e.process) {
                    return Err(HistoryError::Overlapping { index, process: e.process });
                }
                open.insert(e.process, calls.len());
                calls.push(Call {
                    process: e.process,
                    op: e.op.clone(),
                    outcome: Kind::Info,
                    invoke_index: index,
                    complete_index: None,
                });
            }
            kind => {
                let i = open
                    .remove(&e.process)
                    .ok_or(HistoryError::Unmatched { index, process: e.process })?;
                calls[i].op = e.op.clone();
                calls[i].outcome = kind;
                calls[i].complete_index = Some(index);
            }
        }
    }
    Ok(calls)
}

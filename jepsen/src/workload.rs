//! The register workload: concurrent clients read, write and compare-and-swap integer
//! registers (a few keys), through the router, recording every operation.
//!
//! Each written value is unique, so a read names the write it saw. Outcomes map to history
//! kinds as the checker needs them: success is `ok`; a CAS whose condition did not hold is
//! `fail` (it certainly did not happen); any error is `info` (unknown: a timed-out write may
//! still be applied later). After an `info` the logical process is retired and a fresh process
//! id takes its place, since the old operation may still be in flight.

use crate::history::{Event, Kind, Op};
use ringkv_client::{Client, Consistency, Expect};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Instant;
use tokio::sync::Mutex;

/// The shared, ordered record of a run.
#[derive(Clone)]
pub struct Recorder {
    events: Arc<Mutex<Vec<Event>>>,
    started: Instant,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder { events: Arc::default(), started: Instant::now() }
    }
}

impl Recorder {
    pub fn elapsed_ns(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Appends an event; the order of appends is the history's real-time order.
    pub async fn record(&self, process: u64, kind: Kind, op: Op) {
        let mut events = self.events.lock().await;
        let time_ns = self.elapsed_ns();
        events.push(Event { process, kind, op, time_ns });
    }

    pub async fn events(&self) -> Vec<Event> {
        self.events.lock().await.clone()
    }
}

fn encode(v: i64) -> Vec<u8> {
    v.to_string().into_bytes()
}

fn decode(b: &[u8]) -> Option<i64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// One operation against `client`, recorded as invoke + completion. Returns the completion
/// (`Kind::Info` when the outcome is unknown; the caller then retires the process).
pub async fn perform(client: &Client, rec: &Recorder, process: u64, op: Op) -> (Kind, Op) {
    rec.record(process, Kind::Invoke, op.clone()).await;
    let (kind, done) = match &op {
        Op::Read { key, .. } => {
            match client.get_with(key.as_bytes(), Consistency::Linearizable).await {
                Ok(kv) => {
                    let value = kv.and_then(|kv| decode(&kv.value));
                    (Kind::Ok, Op::Read { key: key.clone(), value })
                }
                Err(_) => (Kind::Info, op.clone()),
            }
        }
        Op::Write { key, value } => match client.put(key.as_bytes(), &encode(*value)).await {
            Ok(_) => (Kind::Ok, op.clone()),
            Err(_) => (Kind::Info, op.clone()),
        },
        Op::Cas { key, from, to } => {
            match client.cas(key.as_bytes(), Expect::Value(encode(*from)), Some(&encode(*to))).await
            {
                Ok(out) if out.succeeded => (Kind::Ok, op.clone()),
                Ok(_) => (Kind::Fail, op.clone()),
                Err(_) => (Kind::Info, op.clone()),
            }
        }
        other => (Kind::Fail, other.clone()),
    };
    rec.record(process, kind, done.clone()).await;
    (kind, done)
}

/// Runs one client until `stop`: random operations over `keys`.
pub async fn client_loop(
    client: Client,
    rec: Recorder,
    first_process: u64,
    process_stride: u64,
    keys: usize,
    next_value: Arc<AtomicI64>,
    stop: Arc<AtomicBool>,
) {
    let mut process = first_process;
    let mut last_seen: Vec<Option<i64>> = vec![None; keys];
    while !stop.load(Ordering::Relaxed) {
        let k = rand::random_range(0..keys);
        let key = format!("r{k}");
        let op = match rand::random_range(0..3u8) {
            0 => Op::Read { key, value: None },
            1 => Op::Write { key, value: next_value.fetch_add(1, Ordering::Relaxed) },
            _ => Op::Cas {
                key,
                from: last_seen[k].unwrap_or(0),
                to: next_value.fetch_add(1, Ordering::Relaxed),
            },
        };
        // Remember what this client last read or wrote, to aim CAS at likely-current values.
        match perform(&client, &rec, process, op).await {
            (Kind::Info, _) => process += process_stride,
            (Kind::Ok, Op::Read { value, .. }) => last_seen[k] = value,
            (Kind::Ok, Op::Write { value, .. } | Op::Cas { to: value, .. }) => {
                last_seen[k] = Some(value)
            }
            _ => {}
        }
    }
}

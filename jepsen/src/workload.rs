//! The workloads: concurrent clients, through the router, recording every operation.
//!
//! - *register*: read, write and compare-and-swap integer registers (`r<generation>.<k>`). Reads are
//!   LINEARIZABLE or LEASE (checked for linearizability); optionally STALE reads are mixed in
//!   (checked against what STALE promises).
//! - *append*: append unique integers to lists (`a<generation>.<k>`) (read the list, CAS it to the list
//!   plus the element, retry on a lost race) and read whole lists (linearizable).
//! - *events*: produce unique integers as events to partition `k` of topic
//!   `jepsen-events-<generation>` (key `e<generation>.<k>`) through idempotent producers (the
//!   router and the producer retry across failovers) and read whole partitions; a produce whose
//!   outcome is unknown retires its producer, as Kafka's does. Topics rotate with the key
//!   generation so whole-partition reads stay small (a long run with one topic recorded every
//!   partition in full at every read: a 730 MB history in 6 minutes).
//!
//! Each written value is unique, so a read names the write it saw. Outcomes map to history
//! kinds as the checker needs them: success is `ok`; a CAS whose condition did not hold is
//! `fail` (it certainly did not happen); any error is `info` (unknown: a timed-out write may
//! still be applied later). After an `info` the logical process is retired and a fresh process
//! id takes its place, since the old operation may still be in flight.

use crate::history::{Event, Kind, Op};
use ringkv_client::{
    Client, ClientError, Consistency, Event as StreamEvent, Expect, Producer, Retention,
    WriteOutcome,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;
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
        self.record_error(process, kind, op, None).await;
    }

    /// [`Recorder::record`] with the client's error, if it gave one.
    pub async fn record_error(&self, process: u64, kind: Kind, op: Op, error: Option<String>) {
        let mut events = self.events.lock().await;
        let time_ns = self.elapsed_ns();
        events.push(Event { process, kind, op, time_ns, error });
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

fn encode_list(l: &[i64]) -> Vec<u8> {
    l.iter().map(i64::to_string).collect::<Vec<_>>().join(",").into_bytes()
}

fn decode_list(b: &[u8]) -> Option<Vec<i64>> {
    let s = std::str::from_utf8(b).ok()?;
    if s.is_empty() {
        return Some(Vec::new());
    }
    s.split(',').map(|e| e.parse().ok()).collect()
}

/// Which workload a client runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    Register,
    Append,
    Events,
}

/// The events workload's topics: one per key generation, one partition per key.
pub const EVENTS_TOPIC: &str = "jepsen-events";

/// The events topic of `generation`.
pub fn events_topic(generation: u64) -> String {
    format!("{EVENTS_TOPIC}-{generation}")
}

/// (topic, partition) of an events key `e<generation>.<k>`.
pub fn event_partition(key: &str) -> Option<(String, u32)> {
    let (g, k) = key.strip_prefix('e')?.split_once('.')?;
    Some((events_topic(g.parse().ok()?), k.parse().ok()?))
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Register => "register",
            Workload::Append => "append",
            Workload::Events => "events",
        }
    }
}

impl std::str::FromStr for Workload {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "register" => Ok(Workload::Register),
            "append" => Ok(Workload::Append),
            "events" => Ok(Workload::Events),
            other => Err(format!("unknown workload {other:?}: use register, append or events")),
        }
    }
}

/// How clients read.
#[derive(Debug, Clone, Copy)]
pub struct ReadMode {
    /// LINEARIZABLE or LEASE: the reads the linearizability checker holds to account.
    pub register: Consistency,
    /// Also issue STALE reads (checked by the stale-read checker).
    pub stale: bool,
}

impl Default for ReadMode {
    fn default() -> Self {
        ReadMode { register: Consistency::Linearizable, stale: false }
    }
}

/// Attempts of an append's read-then-CAS before giving up (each lost race certainly did
/// not apply, so giving up is a clean `fail`).
const APPEND_ATTEMPTS_MAX: usize = 20;

/// Appends `element` to the list at `key`. `Ok(true)` appended, `Ok(false)` certainly not
/// (every CAS lost its race), `Err` unknown.
async fn append(client: &Client, key: &str, element: i64, deadline: Instant) -> Result<bool, ()> {
    for _ in 0..APPEND_ATTEMPTS_MAX {
        if Instant::now() > deadline {
            // Every earlier attempt certainly failed; stopping here is a clean failure.
            return Ok(false);
        }
        // A failed read changes nothing, and every earlier CAS lost its race: a clean failure.
        let Ok(current) = client.get(key.as_bytes()).await else { return Ok(false) };
        let (expect, mut list) = match current {
            None => (Expect::Absent, Vec::new()),
            Some(kv) => {
                let list = decode_list(&kv.value).ok_or(())?;
                (Expect::Value(kv.value.to_vec()), list)
            }
        };
        list.push(element);
        match client.cas(key.as_bytes(), expect, Some(&encode_list(&list))).await {
            Ok(out) if out.succeeded => return Ok(true),
            Ok(_) => continue,
            // Refused before it was proposed (e.g. every attempt met a former leader).
            Err(e) if e.write_outcome() == WriteOutcome::NotApplied => return Ok(false),
            Err(_) => return Err(()),
        }
    }
    Ok(false)
}

/// Reads the partition of events key `e<g>.<k>` from offset 0 to its end. A topic that does
/// not exist (no client reached that generation) reads as empty: nothing was appended to it.
async fn read_partition(client: &Client, key: &str) -> Result<Vec<i64>, ()> {
    let (topic, partition) = event_partition(key).ok_or(())?;
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let page = match client.read_events(&topic, partition, offset, 0).await {
            Ok(page) => page,
            Err(e) if e.reason().as_deref() == Some("NOT_FOUND") => return Ok(out),
            Err(_) => return Err(()),
        };
        for e in &page.events {
            out.push(decode(&e.payload).ok_or(())?);
        }
        if page.next_offset >= page.end_offset || page.events.is_empty() {
            return Ok(out);
        }
        offset = page.next_offset;
    }
}

/// How a failed write completes: `fail` when the client knows it was not applied (every
/// attempt was refused before anything was proposed), else `info` (it may show up later).
fn failed_write(e: &ClientError) -> Kind {
    match e.write_outcome() {
        WriteOutcome::NotApplied => Kind::Fail,
        WriteOutcome::Unknown => Kind::Info,
    }
}

/// One operation against `client` (produces through `producer`), recorded as invoke +
/// completion. Returns the completion (`Kind::Info` when a write's outcome is unknown; the
/// caller then retires the process). A read that fails is `Kind::Fail`: it changed nothing,
/// so the process goes on (Jepsen's convention).
pub async fn perform(
    client: &Client,
    producer: Option<&Producer<'_>>,
    rec: &Recorder,
    process: u64,
    op: Op,
    reads: ReadMode,
    op_timeout: Duration,
) -> (Kind, Op) {
    rec.record(process, Kind::Invoke, op.clone()).await;
    let mut error = None;
    let (kind, done) = match &op {
        Op::Read { key, .. } => match client.get_with(key.as_bytes(), reads.register).await {
            Ok(kv) => {
                let value = kv.and_then(|kv| decode(&kv.value));
                (Kind::Ok, Op::Read { key: key.clone(), value })
            }
            Err(e) => {
                error = Some(e.to_string());
                (Kind::Fail, op.clone())
            }
        },
        Op::StaleRead { key, .. } => {
            match client.get_detailed(key.as_bytes(), Consistency::Stale).await {
                Ok(resp) => {
                    let value = resp.kv.and_then(|kv| decode(&kv.value));
                    let staleness_ms = resp.header.as_ref().map(|h| h.staleness_ms);
                    let replica = resp.header.map(|h| (h.node_id, h.term, h.applied_index));
                    (Kind::Ok, Op::StaleRead { key: key.clone(), value, staleness_ms, replica })
                }
                Err(e) => {
                    error = Some(e.to_string());
                    (Kind::Fail, op.clone())
                }
            }
        }
        Op::Write { key, value } => match client.put(key.as_bytes(), &encode(*value)).await {
            Ok(_) => (Kind::Ok, op.clone()),
            Err(e) => {
                error = Some(e.to_string());
                (failed_write(&e), op.clone())
            }
        },
        Op::Cas { key, from, to } => {
            match client.cas(key.as_bytes(), Expect::Value(encode(*from)), Some(&encode(*to))).await
            {
                Ok(out) if out.succeeded => (Kind::Ok, op.clone()),
                Ok(_) => (Kind::Fail, op.clone()),
                Err(e) => {
                    error = Some(e.to_string());
                    (failed_write(&e), op.clone())
                }
            }
        }
        Op::Append { key, element } => {
            match append(client, key, *element, Instant::now() + op_timeout).await {
                Ok(true) => (Kind::Ok, op.clone()),
                Ok(false) => (Kind::Fail, op.clone()),
                Err(()) => (Kind::Info, op.clone()),
            }
        }
        Op::ReadList { key, .. } => match client.get(key.as_bytes()).await {
            Ok(kv) => match kv.map(|kv| decode_list(&kv.value)) {
                Some(None) => (Kind::Info, op.clone()),
                Some(Some(l)) => (Kind::Ok, Op::ReadList { key: key.clone(), value: Some(l) }),
                None => (Kind::Ok, Op::ReadList { key: key.clone(), value: None }),
            },
            Err(e) => {
                error = Some(e.to_string());
                (Kind::Fail, op.clone())
            }
        },
        Op::Produce { key, element, .. } => {
            match (producer, event_partition(key)) {
                (Some(p), Some((_, partition))) => {
                    let event =
                        StreamEvent { payload: encode(*element).into(), ..Default::default() };
                    match p.send_to(partition, vec![event]).await {
                        Ok(r) => (
                            Kind::Ok,
                            Op::Produce {
                                key: key.clone(),
                                element: *element,
                                offset: Some(r.first_offset),
                            },
                        ),
                        Err(e) => {
                            error = Some(e.to_string());
                            (failed_write(&e), op.clone())
                        }
                    }
                }
                // Nothing was sent: certainly not appended.
                _ => (Kind::Fail, op.clone()),
            }
        }
        Op::ReadPartition { key, .. } => match read_partition(client, key).await {
            Ok(l) => (Kind::Ok, Op::ReadPartition { key: key.clone(), value: Some(l) }),
            Err(()) => (Kind::Fail, op.clone()),
        },
    };
    rec.record_error(process, kind, done.clone(), error).await;
    (kind, done)
}

/// One client's identity and shared state.
pub struct ClientCtx {
    pub client: Client,
    pub rec: Recorder,
    pub workload: Workload,
    pub first_process: u64,
    pub process_stride: u64,
    pub keys: usize,
    pub next_value: Arc<AtomicI64>,
    pub stop: Arc<AtomicBool>,
    /// While set the client starts no operation (a script compares replicas meanwhile).
    pub paused: Arc<AtomicBool>,
    pub reads: ReadMode,
    pub op_timeout: Duration,
    /// Keys are replaced by fresh ones this often (see [`key_name`]).
    pub key_lifetime: Duration,
}

/// The key `k` of generation `generation`: `r3.1` (register) or `a3.1` (append).
///
/// Workloads move to fresh keys every `key_lifetime`, as Jepsen's independent keys do: the
/// linearizability search is exponential in the concurrency of one key's history, and a
/// timed-out write stays "concurrent" with everything after it, so a key that lives for a
/// whole long run becomes uncheckable. Short-lived keys keep each key's history small.
///
/// Events keys name a partition of the generation's topic (`e3.1`: partition 1 of
/// `jepsen-events-3`).
pub fn key_name(workload: Workload, generation: u64, k: usize) -> String {
    let p = match workload {
        Workload::Register => 'r',
        Workload::Append => 'a',
        Workload::Events => 'e',
    };
    format!("{p}{generation}.{k}")
}

/// The key generation at `elapsed_ns` into the run.
pub fn generation(elapsed_ns: u64, key_lifetime: Duration) -> u64 {
    elapsed_ns / u64::try_from(key_lifetime.as_nanos()).unwrap_or(u64::MAX).max(1)
}

/// Runs one client until `stop`: random operations of its workload over `keys` keys.
pub async fn client_loop(ctx: ClientCtx) {
    let mut process = ctx.first_process;
    let mut last_seen: Vec<Option<i64>> = vec![None; ctx.keys];
    let mut current_generation = 0;
    let next = || ctx.next_value.fetch_add(1, Ordering::Relaxed);
    // Events clients produce through one idempotent producer, replaced (a new producer id)
    // after an unknown outcome, like the logical process.
    let mut producer: Option<Producer<'_>> = None;
    let partitions = u32::try_from(ctx.keys).unwrap_or(u32::MAX);
    while !ctx.stop.load(Ordering::Relaxed) {
        if ctx.paused.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let g = generation(ctx.rec.elapsed_ns(), ctx.key_lifetime);
        if g != current_generation {
            current_generation = g;
            last_seen = vec![None; ctx.keys];
            producer = None;
        }
        if ctx.workload == Workload::Events && producer.is_none() {
            // Creating a topic is idempotent: every events client of the generation asks.
            let topic = events_topic(g);
            let created = ctx.client.create_topic(&topic, partitions, Retention::default()).await;
            match created {
                Ok(_) => match ctx.client.producer(&topic).await {
                    Ok(p) => producer = Some(p),
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let k = rand::random_range(0..ctx.keys);
        let op = match ctx.workload {
            Workload::Register => {
                let key = key_name(Workload::Register, g, k);
                match rand::random_range(0..if ctx.reads.stale { 4u8 } else { 3 }) {
                    0 => Op::Read { key, value: None },
                    1 => Op::Write { key, value: next() },
                    2 => Op::Cas { key, from: last_seen[k].unwrap_or(0), to: next() },
                    _ => Op::StaleRead { key, value: None, staleness_ms: None, replica: None },
                }
            }
            Workload::Append => {
                let key = key_name(Workload::Append, g, k);
                if rand::random_range(0..2u8) == 0 {
                    Op::ReadList { key, value: None }
                } else {
                    Op::Append { key, element: next() }
                }
            }
            Workload::Events => {
                let key = key_name(Workload::Events, g, k);
                // Whole-partition reads grow with the run: fewer of them.
                if rand::random_range(0..4u8) == 0 {
                    Op::ReadPartition { key, value: None }
                } else {
                    Op::Produce { key, element: next(), offset: None }
                }
            }
        };
        // Remember what this client last read or wrote, to aim CAS at likely-current values.
        let done = perform(
            &ctx.client,
            producer.as_ref(),
            &ctx.rec,
            process,
            op,
            ctx.reads,
            ctx.op_timeout,
        )
        .await;
        match done {
            (Kind::Info, Op::Produce { .. }) => {
                process += ctx.process_stride;
                producer = None;
            }
            (Kind::Info, _) => process += ctx.process_stride,
            (Kind::Ok, Op::Read { value, .. }) => last_seen[k] = value,
            (Kind::Ok, Op::Write { value, .. } | Op::Cas { to: value, .. }) => {
                last_seen[k] = Some(value)
            }
            _ => {}
        }
    }
}

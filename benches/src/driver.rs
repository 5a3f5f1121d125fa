//! Drives a workload against M connections and measures it.
//!
//! - **Closed loop**: N clients, each issuing its next operation when the previous one
//!   returns. Throughput is whatever the system sustains; latency is per operation.
//! - **Open loop**: operations are *scheduled* at a fixed rate and at most N are in flight.
//!   Latency counts from each operation's intended start, so when the system falls behind the
//!   queueing shows up in the percentiles instead of silently lowering the offered load (the
//!   "coordinated omission" trap of closed-loop latency numbers).
//!
//! Every completion goes over a bounded channel to one collector that owns the histograms
//! (HdrHistogram, microseconds, 3 significant digits), per-second throughput and error counts.

use crate::keys::{KeyChooser, key};
use crate::results::{LatencySummary, RunResult};
use crate::target::{Conn, OpError};
use crate::workload::{OpKind, SCAN_RECORDS_MAX, Workload, value};
use anyhow::Result;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rand::RngExt;
use ringkv_client::Consistency;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc};

/// Highest latency the histograms hold; slower operations are clamped to it.
const LATENCY_US_MAX: u64 = 60_000_000;
/// Completions buffered between the clients and the collector.
const COMPLETIONS_QUEUED_MAX: usize = 65_536;

#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub workload: Workload,
    pub keys: Arc<KeyChooser>,
    pub value_bytes: usize,
    pub clients: usize,
    pub duration: Duration,
    /// Open loop at this many operations per second; closed loop when `None`.
    pub rate: Option<f64>,
    pub consistency: Consistency,
}

struct Done {
    kind: OpKind,
    at: Instant,
    latency_us: u64,
    error: Option<String>,
}

async fn one_op(conn: &Conn, spec: &LoadSpec, kind: OpKind) -> Result<(), OpError> {
    let (record, val) = {
        let mut rng = rand::rng();
        let record = match kind {
            OpKind::Insert => spec.keys.insert(),
            _ => spec.keys.next(&mut rng),
        };
        // Only writes need a value: making one per read cost the generator CPU that the
        // target under test could have had.
        let val = match kind {
            OpKind::Update | OpKind::Insert | OpKind::Rmw => value(&mut rng, spec.value_bytes),
            OpKind::Read | OpKind::Scan => Vec::new(),
        };
        (record, val)
    };
    let k = key(record);
    match kind {
        OpKind::Read => conn.read(&k, spec.consistency).await.map(|_| ()),
        OpKind::Update | OpKind::Insert => conn.write(&k, &val).await,
        OpKind::Scan => {
            let n = rand::rng().random_range(1..=SCAN_RECORDS_MAX);
            conn.scan(&k, n).await.map(|_| ())
        }
        // A lost race is a completed operation (YCSB counts it too).
        OpKind::Rmw => conn.read_modify_write(&k, &val).await.map(|_| ()),
    }
}

/// Writes records `0..records` (concurrently over the connections) before a run.
pub async fn load(
    conns: &[Arc<Conn>],
    records: u64,
    value_bytes: usize,
    concurrency: usize,
) -> Result<()> {
    let bar = ProgressBar::new(records).with_style(
        ProgressStyle::with_template("loading {bar:40} {pos}/{len} records ({per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..concurrency.max(1) {
        let conn = conns[i % conns.len()].clone();
        let next = next.clone();
        let bar = bar.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let r = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if r >= records {
                    return Ok::<(), anyhow::Error>(());
                }
                let v = value(&mut rand::rng(), value_bytes);
                let mut attempts = 0;
                while let Err(e) = conn.write(&key(r), &v).await {
                    attempts += 1;
                    anyhow::ensure!(attempts < 20, "loading record {r} kept failing: {e}");
                    tokio::time::sleep(Duration::from_millis(50 * attempts)).await;
                }
                bar.inc(1);
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    bar.finish_and_clear();
    Ok(())
}

/// Runs `spec` over `conns`, returns the measurements. `name` labels the result.
pub async fn run(name: &str, conns: &[Arc<Conn>], spec: &LoadSpec) -> Result<RunResult> {
    anyhow::ensure!(!conns.is_empty() && spec.clients > 0, "need connections and clients");
    let (tx, mut rx) = mpsc::channel::<Done>(COMPLETIONS_QUEUED_MAX);
    let start = Instant::now();
    let deadline = start + spec.duration;
    let spec = Arc::new(spec.clone());
    let collector = tokio::spawn({
        let secs = spec.duration.as_secs() as usize + 1;
        let bar = ProgressBar::new(spec.duration.as_secs()).with_style(
            ProgressStyle::with_template("{msg:30} {bar:40} {pos}/{len} s")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message(name.to_string());
        async move {
            let mut hists: BTreeMap<OpKind, Histogram<u64>> = BTreeMap::new();
            let mut per_second = vec![0u64; secs];
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            while let Some(d) = rx.recv().await {
                let sec = (d.at.duration_since(start).as_secs() as usize).min(secs - 1);
                bar.set_position(sec as u64);
                match d.error {
                    Some(kind) => *errors.entry(kind).or_default() += 1,
                    None => {
                        per_second[sec] += 1;
                        let h = hists.entry(d.kind).or_insert_with(|| {
                            Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid bounds")
                        });
                        h.saturating_record(d.latency_us.clamp(1, LATENCY_US_MAX));
                    }
                }
            }
            bar.finish_and_clear();
            (hists, per_second, errors)
        }
    });

    let mut tasks = Vec::new();
    match spec.rate {
        None => {
            for i in 0..spec.clients {
                let conn = conns[i % conns.len()].clone();
                let (tx, spec) = (tx.clone(), spec.clone());
                tasks.push(tokio::spawn(async move {
                    while Instant::now() < deadline {
                        let kind = spec.workload.pick(&mut rand::rng());
                        let t0 = Instant::now();
                        let r = one_op(&conn, &spec, kind).await;
                        let at = Instant::now();
                        let latency_us = u64::try_from((at - t0).as_micros()).unwrap_or(u64::MAX);
                        let error = r.err().map(|e| e.kind);
                        if tx.send(Done { kind, at, latency_us, error }).await.is_err() {
                            return;
                        }
                    }
                }));
            }
        }
        Some(rate) => {
            anyhow::ensure!(rate > 0.0, "rate must be positive");
            let permits = Arc::new(Semaphore::new(spec.clients));
            let interval = Duration::from_secs_f64(1.0 / rate);
            let (tx, spec, conns) = (tx.clone(), spec.clone(), conns.to_vec());
            tasks.push(tokio::spawn(async move {
                let mut k: u32 = 0;
                loop {
                    let intended = start + interval * k;
                    if intended >= deadline {
                        break;
                    }
                    tokio::time::sleep_until(intended.into()).await;
                    // Waiting here when N operations are in flight delays the *issue* but not
                    // the intended start: the wait is counted in the latency.
                    let Ok(permit) = permits.clone().acquire_owned().await else { break };
                    let conn = conns[k as usize % conns.len()].clone();
                    let (tx, spec) = (tx.clone(), spec.clone());
                    tokio::spawn(async move {
                        let kind = spec.workload.pick(&mut rand::rng());
                        let r = one_op(&conn, &spec, kind).await;
                        let at = Instant::now();
                        let latency_us =
                            u64::try_from((at - intended).as_micros()).unwrap_or(u64::MAX);
                        let error = r.err().map(|e| e.kind);
                        let _ = tx.send(Done { kind, at, latency_us, error }).await;
                        drop(permit);
                    });
                    k = k.saturating_add(1);
                }
                // Wait for the stragglers.
                let _ = permits.acquire_many(u32::try_from(spec.clients).unwrap_or(u32::MAX)).await;
            }));
        }
    }
    drop(tx);
    for t in tasks {
        t.await?;
    }
    let elapsed = start.elapsed();
    let (hists, per_second, errors) = collector.await?;
    let ops: u64 = per_second.iter().sum();
    let latency =
        hists.iter().map(|(k, h)| (k.name().to_string(), LatencySummary::from(h))).collect();
    let all = hists.values().fold(
        Histogram::<u64>::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid bounds"),
        |mut acc, h| {
            let _ = acc.add(h);
            acc
        },
    );
    Ok(RunResult {
        name: name.to_string(),
        workload: spec.workload,
        distribution: None,
        clients: spec.clients,
        connections: conns.len(),
        rate: spec.rate,
        consistency: format!("{:?}", spec.consistency).to_uppercase(),
        value_bytes: spec.value_bytes,
        duration_s: elapsed.as_secs_f64(),
        ops,
        throughput_ops_s: ops as f64 / elapsed.as_secs_f64(),
        latency,
        all: LatencySummary::from(&all),
        errors,
        per_second,
        extra: BTreeMap::new(),
    })
}

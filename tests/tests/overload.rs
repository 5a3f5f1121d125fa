//! Overload: an open-loop load of several times what the cluster sustains, through the
//! router, for a minute (`RINGKV_OVERLOAD_SECS` to change it).
//!
//! What must hold (see `crates/node/src/admission.rs` and `crates/router/src/admission.rs`):
//! the requests that are admitted keep a bounded latency instead of queueing without end; the
//! rest are refused at once with RESOURCE_EXHAUSTED / OVERLOADED and a retry delay, and with
//! nothing else; node and router memory stay under the stated bounds; nothing crashes; and
//! every acknowledged write is readable afterwards.
//!
//! The load is open-loop, as real traffic is: requests are sent on a clock whatever happened
//! to the earlier ones, so a slow cluster gets no relief from a waiting client (a closed loop
//! would slow down with the cluster and never overload it).

use anyhow::{Context, Result, ensure};
use hdrhistogram::Histogram;
use ringkv_proto::v1::kv_client::KvClient;
use ringkv_proto::v1::{Consistency, PutRequest, ScanRequest};
use ringkv_tests::{Cluster, Tuning};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic_types::StatusExt;

/// A node's resident memory must stay under this (a debug build with 4 shards idles near
/// 100 MiB; the bound is what its admission limits leave room for).
const NODE_RSS_MAX_MIB: u64 = 768;
/// The router's resident memory bound (it idles near 20 MiB).
const ROUTER_RSS_MAX_MIB: u64 = 256;
/// Admitted writes' p99 bound. Unbounded queueing would take it to the 10 s deadline.
const ADMITTED_P99_MAX: Duration = Duration::from_millis(2500);
/// The router's in-flight bound in this test, and the nodes'.
const ROUTER_INFLIGHT: u32 = 64;
const NODE_INFLIGHT: u32 = 48;
/// Requests the generator keeps outstanding at most (its own memory bound).
const GENERATOR_OUTSTANDING_MAX: usize = 20_000;

fn rss_mib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

fn key(i: u64) -> Vec<u8> {
    format!("ol/{i:09}").into_bytes()
}

fn put(i: u64) -> tonic::Request<PutRequest> {
    let mut r = tonic::Request::new(PutRequest {
        key: key(i).into(),
        value: vec![b'v'; 128].into(),
        session: None,
    });
    r.set_timeout(Duration::from_secs(10));
    r
}

/// Writes in a closed loop for `secs`, with as many writers as the router admits at once:
/// what the cluster sustains under these limits.
async fn capacity(kv: &KvClient<Channel>, secs: u64) -> Result<f64> {
    let until = Instant::now() + Duration::from_secs(secs);
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..u64::from(ROUTER_INFLIGHT) {
        let mut kv = kv.clone();
        writers.spawn(async move {
            let mut done = 0u64;
            let mut i = 1_000_000_000 + w * 1_000_000;
            while Instant::now() < until {
                if kv.put(put(i)).await.is_ok() {
                    done += 1;
                }
                i += 1;
            }
            done
        });
    }
    let mut total = 0;
    while let Some(n) = writers.join_next().await {
        total += n?;
    }
    Ok(total as f64 / secs as f64)
}

#[derive(Default)]
struct Tally {
    admitted: Vec<u64>,
    overloaded: u64,
    /// OVERLOADED refusals that did not say when to come back (there must be none).
    without_retry_info: u64,
    other: Vec<String>,
    latency: Option<Histogram<u64>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_shed_with_clear_errors_and_loses_nothing() -> Result<()> {
    let secs: u64 =
        std::env::var("RINGKV_OVERLOAD_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let tuning = Tuning { inflight_requests_max: NODE_INFLIGHT, ..Tuning::default() };
    let c = Cluster::start(3, 4, 3, tuning).await?;
    c.wait_for_leaders(Duration::from_secs(30)).await?;
    let inflight = ROUTER_INFLIGHT.to_string();
    let router = c.start_router_with(&["--inflight-requests-max", &inflight]).await?;
    let channel = ringkv_tests::channel(&router.addr).await?;
    let kv = KvClient::new(channel);

    let sustained = capacity(&kv, 5).await?;
    ensure!(sustained > 10.0, "the cluster sustained only {sustained:.0} writes/s");
    let rate = sustained * 4.0;
    println!("sustained {sustained:.0} writes/s closed-loop; offering {rate:.0}/s for {secs} s");

    let tally = Arc::new(Mutex::new(Tally {
        latency: Some(Histogram::new_with_bounds(1, 60_000_000, 3)?),
        ..Tally::default()
    }));
    let mut peak = (0u64, 0u64);
    let pids: Vec<u32> = c.running().iter().filter_map(|&id| c.pid(id)).collect();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut next_sample = started;
    let (mut sent, mut generator_shed) = (0u64, 0u64);
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    while started.elapsed() < Duration::from_secs(secs) {
        ticker.tick().await;
        while let Some(done) = tasks.try_join_next() {
            done?;
        }
        if tasks.len() >= GENERATOR_OUTSTANDING_MAX {
            generator_shed += 1;
            continue;
        }
        let i = sent;
        sent += 1;
        let (mut kv, tally) = (kv.clone(), tally.clone());
        tasks.spawn(async move {
            let t0 = Instant::now();
            let result = kv.put(put(i)).await;
            let took = t0.elapsed();
            let mut t = tally.lock().unwrap();
            match result {
                Ok(_) => {
                    t.admitted.push(i);
                    let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
                    let _ = t.latency.as_mut().unwrap().record(us);
                }
                Err(s) => {
                    let d = s.get_error_details();
                    let reason = d.error_info().map(|i| i.reason.clone());
                    if s.code() == tonic::Code::ResourceExhausted
                        && reason.as_deref() == Some("OVERLOADED")
                    {
                        t.overloaded += 1;
                        if d.retry_info().and_then(|r| r.retry_delay).is_none() {
                            t.without_retry_info += 1;
                        }
                    } else if t.other.len() < 20 {
                        t.other.push(format!("{:?} {reason:?}: {}", s.code(), s.message()));
                    } else {
                        t.other.push(String::new());
                    }
                }
            }
        });
        if Instant::now() >= next_sample {
            next_sample += Duration::from_secs(1);
            for &pid in &pids {
                peak.0 = peak.0.max(rss_mib(pid).context("a node died under load")?);
            }
            peak.1 = peak.1.max(rss_mib(router.pid()).context("the router died under load")?);
        }
    }
    while let Some(done) = tasks.join_next().await {
        done?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let t = std::mem::take(&mut *tally.lock().unwrap());
    let lat = t.latency.as_ref().unwrap();
    let p = |q: f64| Duration::from_micros(lat.value_at_quantile(q));
    println!(
        "offered {sent} in {elapsed:.0} s ({:.0}/s; generator shed {generator_shed}): admitted {} \
         ({:.0}/s), OVERLOADED {}, other {}; admitted p50 {:?} p99 {:?} max {:?}; peak RSS node \
         {} MiB, router {} MiB",
        sent as f64 / elapsed,
        t.admitted.len(),
        t.admitted.len() as f64 / elapsed,
        t.overloaded,
        t.other.len(),
        p(0.5),
        p(0.99),
        Duration::from_micros(lat.max()),
        peak.0,
        peak.1
    );
    ensure!(
        t.other.is_empty(),
        "errors other than OVERLOADED: {:?}; {}",
        t.other,
        c.keep_logs("overload")
    );
    ensure!(t.overloaded > 0, "an offered load of {rate:.0}/s was never shed");
    ensure!(t.without_retry_info == 0, "{} refusals without a retry delay", t.without_retry_info);
    ensure!(!t.admitted.is_empty(), "nothing was admitted under overload");
    ensure!(p(0.99) <= ADMITTED_P99_MAX, "admitted p99 {:?} over {ADMITTED_P99_MAX:?}", p(0.99));
    ensure!(peak.0 <= NODE_RSS_MAX_MIB, "node RSS peaked at {} MiB", peak.0);
    ensure!(peak.1 <= ROUTER_RSS_MAX_MIB, "router RSS peaked at {} MiB", peak.1);
    for id in c.running() {
        ensure!(c.pid(id).and_then(rss_mib).is_some(), "node {id} is gone");
    }

    // Every acknowledged write is there: scan the whole prefix (linearizable) and compare.
    let mut found = HashSet::new();
    let mut continuation = Vec::new();
    let mut kv = kv.clone();
    loop {
        let mut req = tonic::Request::new(ScanRequest {
            prefix: b"ol/".to_vec().into(),
            limit: 10_000,
            continuation_token: continuation.into(),
            consistency: Consistency::Linearizable as i32,
            ..ScanRequest::default()
        });
        req.set_timeout(Duration::from_secs(30));
        let page = kv.scan(req).await?.into_inner();
        found.extend(page.kvs.into_iter().map(|kv| kv.key.to_vec()));
        if page.continuation_token.is_empty() {
            break;
        }
        continuation = page.continuation_token.to_vec();
    }
    let missing: Vec<u64> =
        t.admitted.iter().copied().filter(|&i| !found.contains(&key(i))).take(10).collect();
    ensure!(missing.is_empty(), "acknowledged writes missing after the load: {missing:?}");
    println!("all {} acknowledged writes read back", t.admitted.len());
    Ok(())
}

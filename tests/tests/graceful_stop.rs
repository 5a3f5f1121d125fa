//! SIGTERM hands leaderships off, so a rolling restart costs clients nothing but retries.
//!
//! A 3-node, 8-shard cluster (RF 3) behind a router, under a steady write load from several
//! clients. Each node in turn gets SIGTERM (as Kubernetes sends it), is restarted, and the
//! next one waits until it is ready again, as a StatefulSet rolling update does with a
//! readiness gate. Every node must say it handed off every leadership it held, and no client
//! write may fail: transfers redirect requests (the router follows them), they never drop
//! them. The figures (writes, failures, slowest write) are printed for the docs.

use anyhow::{Context, Result, ensure};
use ringkv_client::Client;
use ringkv_tests::{Cluster, Tuning};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);
const WRITERS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_restart_under_load_loses_no_write() -> Result<()> {
    let mut c = Cluster::start(3, 8, 3, Tuning::default()).await?;
    c.wait_for_leaders(T).await?;
    for id in 1..=3 {
        c.wait_node_ready(id, T).await?;
    }
    let router = c.start_router("round-robin").await?;
    let client = Client::builder().timeout(Duration::from_secs(5)).router(router.addr.clone());
    let client = Arc::new(client.connect().await?);

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, slowest_us) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (client, stop, ok, failed, slowest_us, errors) = (
            client.clone(),
            stop.clone(),
            ok.clone(),
            failed.clone(),
            slowest_us.clone(),
            errors.clone(),
        );
        writers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("w{w}-{}", i % 64);
                let started = Instant::now();
                match client.put(key.as_bytes(), i.to_string().as_bytes()).await {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        errors.lock().unwrap_or_else(|p| p.into_inner()).push(e.to_string());
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                slowest_us.fetch_max(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    let started = Instant::now();
    let mut handed_off = 0;
    for id in 1..=3 {
        let before = ok.load(Ordering::Relaxed);
        let stop_started = Instant::now();
        let status = c.terminate(id)?;
        let stop_ms = stop_started.elapsed().as_millis();
        ensure!(status.success(), "node {id}: SIGTERM should exit 0, got {status}");
        let log = strip_ansi(&c.log_text(id));
        let line = log
            .lines()
            .rev()
            .find(|l| l.contains("leaderships handed off"))
            .with_context(|| format!("node {id} logged no hand-off\n{}", c.log_tail(id)))?
            .to_string();
        ensure!(line.contains("still_led=0"), "node {id} kept leaderships: {line}");
        handed_off += field(&line, "led=").unwrap_or(0);
        c.restart(id).await?;
        c.wait_node_ready(id, T).await?;
        println!(
            "node {id}: stopped in {stop_ms} ms ({line}); {} writes meanwhile",
            ok.load(Ordering::Relaxed) - before
        );
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await?;
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!(
        "rolling restart of 3 nodes under {WRITERS} writers through the router: {ok} writes acknowledged, \
         {failed} failed, slowest {} ms, {:.1} s",
        slowest_us.load(Ordering::Relaxed) / 1000,
        started.elapsed().as_secs_f64()
    );
    ensure!(ok > 0, "no write went through");
    ensure!(
        handed_off > 0,
        "no node led anything when it was stopped: the hand-off was not exercised"
    );
    let errors = errors.lock().unwrap_or_else(|p| p.into_inner()).clone();
    ensure!(
        failed == 0,
        "{failed} writes failed during the rolling restart: {:?}",
        &errors[..errors.len().min(5)]
    );
    Ok(())
}

/// The log without terminal colour codes.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(ch) = chars.next() {
        if ch == '\u{1b}' {
            // CSI: ESC [ parameters, ending with a letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(ch);
        }
    }
    out
}

/// The number after ` name` in a tracing line (`led=3`).
fn field(line: &str, name: &str) -> Option<u64> {
    let at = line.find(&format!(" {name}"))? + name.len() + 1;
    line[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// A node whose leaderships sleep (quiesced: their acknowledgements are as old as the sleep)
/// still hands every one of them off on SIGTERM: it wakes them first.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sleeping_leaderships_are_woken_and_handed_off() -> Result<()> {
    let tuning = Tuning { quiesce_after_ms: 300, ..Tuning::default() };
    let mut c = Cluster::start(3, 8, 3, tuning).await?;
    c.wait_for_leaders(T).await?;
    let id = c.busiest_leader().await.context("no leader")?;
    // Every group asleep on that node, the meta group's too.
    ringkv_tests::wait_for(T, "the node's groups to sleep", || {
        let c = &c;
        async move {
            let text = c.metrics(id).await.ok()?;
            let value = |name: &str| -> Option<f64> {
                text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            };
            let (all, asleep) = (value("ringkv_replicas ")?, value("ringkv_replicas_quiesced ")?);
            (asleep >= all).then_some(())
        }
    })
    .await?;
    let status = c.terminate(id)?;
    ensure!(status.success(), "SIGTERM should exit 0, got {status}");
    let log = strip_ansi(&c.log_text(id));
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("leaderships handed off"))
        .with_context(|| format!("node {id} logged no hand-off\n{}", c.log_tail(id)))?;
    ensure!(field(line, "led=").unwrap_or(0) > 0, "the busiest leader led nothing: {line}");
    ensure!(line.contains("still_led=0"), "sleeping leaderships were not handed off: {line}");
    Ok(())
}

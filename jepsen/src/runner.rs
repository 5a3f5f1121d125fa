//! A run: start a cluster and a router, drive the workload from concurrent clients while the
//! nemesis injects faults, heal, take final reads, check the history, write the results.

use crate::checker::{Verdict, linearizable};
use crate::history::{Kind, Op};
use crate::nemesis::{self, Fault, FaultWindow};
use crate::workload::{Recorder, client_loop, perform};
use anyhow::{Context, Result};
use ringkv_client::Client;
use ringkv_tests::{Cluster, Tuning};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub time: Duration,
    pub nemeses: Vec<Fault>,
    /// Quiet time between faults.
    pub interval: Duration,
    /// How long a fault lasts before it is healed.
    pub hold: Duration,
    pub clients: usize,
    pub keys: usize,
    pub nodes: u64,
    pub shards: u32,
    pub rf: u32,
    /// Client-side deadline per operation; a timed-out operation is recorded as `info`.
    pub op_timeout: Duration,
    pub out: PathBuf,
}

#[derive(Debug)]
pub struct RunReport {
    pub verdicts: Vec<Verdict>,
    pub events: usize,
    pub faults: Vec<FaultWindow>,
    pub dir: PathBuf,
}

impl RunReport {
    pub fn valid(&self) -> bool {
        !self.verdicts.is_empty() && self.verdicts.iter().all(|v| v.valid)
    }
}

pub async fn run(o: &RunOptions) -> Result<RunReport> {
    std::fs::create_dir_all(&o.out).with_context(|| format!("creating {}", o.out.display()))?;
    let mut cluster = Cluster::start(o.nodes, o.shards, o.rf, Tuning::default()).await?;
    cluster.wait_for_leaders(Duration::from_secs(30)).await?;
    let router = cluster.start_router("round-robin").await?;
    let rec = Recorder::default();
    let stop = Arc::new(AtomicBool::new(false));
    let next_value = Arc::new(AtomicI64::new(1));
    let mut tasks = Vec::new();
    for i in 0..o.clients {
        let client =
            Client::builder().router(router.addr.clone()).timeout(o.op_timeout).connect().await?;
        tasks.push(tokio::spawn(client_loop(
            client,
            rec.clone(),
            i as u64,
            o.clients as u64,
            o.keys,
            next_value.clone(),
            stop.clone(),
        )));
    }

    let mut faults = Vec::new();
    let deadline = Instant::now() + o.time;
    while Instant::now() + o.interval < deadline {
        tokio::time::sleep(o.interval).await;
        if o.nemeses.is_empty() {
            continue;
        }
        let fault = o.nemeses[rand::random_range(0..o.nemeses.len())];
        let start_ns = rec.elapsed_ns();
        let what = nemesis::inject(&mut cluster, fault, o.hold).await?;
        println!("nemesis: {what}");
        faults.push(FaultWindow { fault: what, start_ns, end_ns: rec.elapsed_ns() });
    }
    tokio::time::sleep(deadline.saturating_duration_since(Instant::now())).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }

    // Final reads on a healed cluster, each retried until it succeeds.
    nemesis::heal(&mut cluster).await?;
    cluster.wait_for_leaders(Duration::from_secs(60)).await?;
    let client =
        Client::builder().router(router.addr.clone()).timeout(o.op_timeout).connect().await?;
    let mut process = 1_000_000;
    for k in 0..o.keys {
        let until = Instant::now() + Duration::from_secs(60);
        let read = || Op::Read { key: format!("r{k}"), value: None };
        while perform(&client, &rec, process, read()).await.0 != Kind::Ok {
            process += 1;
            anyhow::ensure!(
                Instant::now() < until,
                "final read of r{k} kept failing on the healed cluster"
            );
        }
        process += 1;
    }

    let events = rec.events().await;
    let history: String = events
        .iter()
        .map(|e| serde_json::to_string(e).map(|l| l + "\n"))
        .collect::<Result<_, _>>()?;
    std::fs::write(o.out.join("history.jsonl"), history)?;
    std::fs::write(o.out.join("faults.json"), serde_json::to_string_pretty(&faults)?)?;
    let verdicts = vec![linearizable::check(&events)?];
    std::fs::write(o.out.join("verdict.json"), serde_json::to_string_pretty(&verdicts)?)?;
    drop(router);
    Ok(RunReport { verdicts, events: events.len(), faults, dir: o.out.clone() })
}

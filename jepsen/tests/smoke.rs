//! The chaos smoke run CI makes: a short register workload against three real nodes while
//! nodes are killed, paused and leaders moved; the history must be linearizable.

use ringkv_jepsen::nemesis::Fault;
use ringkv_jepsen::runner::{RunOptions, run};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn register_workload_stays_linearizable_under_process_faults() -> anyhow::Result<()> {
    let out = tempfile::tempdir()?;
    let opts = RunOptions {
        time: Duration::from_secs(20),
        nemeses: vec![Fault::Kill, Fault::Pause, Fault::Transfer],
        interval: Duration::from_secs(3),
        hold: Duration::from_secs(2),
        clients: 6,
        keys: 3,
        nodes: 3,
        shards: 2,
        rf: 3,
        op_timeout: Duration::from_secs(2),
        out: out.path().join("run"),
    };
    let report = run(&opts).await?;
    println!(
        "{} events, faults: {:?}",
        report.events,
        report.faults.iter().map(|f| &f.fault).collect::<Vec<_>>()
    );
    for v in &report.verdicts {
        println!("{}: valid={} ops={} {:?}", v.checker, v.valid, v.ops, v.counterexamples);
    }
    anyhow::ensure!(!report.faults.is_empty(), "the nemesis injected nothing");
    anyhow::ensure!(
        report.verdicts.iter().all(|v| v.ops > 100),
        "too few operations to mean anything"
    );
    anyhow::ensure!(report.valid(), "history not linearizable; see the counterexamples above");
    anyhow::ensure!(out.path().join("run/history.jsonl").exists());
    Ok(())
}

//! The chaos smoke run CI makes: register, append and events workloads against three real nodes, each
//! in its own network namespace (CI runs as root), while the network is partitioned, a node is
//! killed, a leader paused, and a node loses its data and rejoins under a new identity (a
//! membership change: its replicas move to the new identity); every verdict must be valid. Without root the nodes run on
//! loopback with process faults only, and the test says so. It runs twice: plaintext, and
//! with TLS everywhere.

use ringkv_jepsen::nemesis::Fault;
use ringkv_jepsen::runner::{RunOptions, run};
use ringkv_jepsen::workload::{ReadMode, Workload};
use ringkv_tests::NetLab;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workloads_stay_valid_under_partitions_and_kills() -> anyhow::Result<()> {
    smoke(false).await
}

/// The same with TLS everywhere: reconnects after partitions, kills and a wiped node all go
/// through fresh mutual-TLS handshakes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workloads_stay_valid_under_partitions_and_kills_over_tls() -> anyhow::Result<()> {
    smoke(true).await
}

async fn smoke(tls: bool) -> anyhow::Result<()> {
    let out = tempfile::tempdir()?;
    let root = NetLab::unavailable_reason().is_none();
    if !root {
        println!("note: no network namespaces here; process faults only");
    }
    let opts = RunOptions {
        time: Duration::from_secs(30),
        workloads: vec![Workload::Register, Workload::Append, Workload::Events],
        reads: ReadMode { stale: true, ..ReadMode::default() },
        // In this order, one per interval: the partition and the kill are both guaranteed.
        nemeses: vec![Fault::PartitionHalves, Fault::Kill, Fault::PauseLeader, Fault::Wipe],
        interval: Duration::from_secs(3),
        hold: Duration::from_secs(3),
        cycle_faults: true,
        clients: 8,
        keys: 3,
        key_lifetime: Duration::from_secs(8),
        nodes: 3,
        spare_nodes: 0,
        shards: 2,
        rf: 3,
        op_timeout: Duration::from_secs(2),
        net: true,
        tls,
        out: out.path().join("run"),
    };
    let report = run(&opts).await?;
    println!(
        "{} events, faults: {:?}",
        report.events,
        report.faults.iter().map(|f| &f.fault).collect::<Vec<_>>()
    );
    for v in &report.verdicts {
        println!(
            "{}: {} ops={} {:?} {:?}",
            v.checker,
            v.outcome(),
            v.ops,
            v.counterexamples,
            v.unknown
        );
    }
    let injected: Vec<&str> = report.faults.iter().map(|f| f.fault.as_str()).collect();
    anyhow::ensure!(injected.iter().any(|f| f.starts_with("kill")), "no kill in {injected:?}");
    anyhow::ensure!(
        injected.iter().any(|f| f.starts_with("wipe")),
        "no membership change in {injected:?}"
    );
    if root {
        anyhow::ensure!(
            report.namespaces,
            "root, but nodes did not get namespaces: {:?}",
            report.notes
        );
        anyhow::ensure!(
            injected.iter().any(|f| f.starts_with("partition")),
            "no partition in {injected:?}"
        );
    }
    anyhow::ensure!(
        report.verdicts.iter().all(|v| v.ops > 100),
        "too few operations to mean anything"
    );
    anyhow::ensure!(
        report.valid(),
        "history not proven valid; see the counterexamples or undecided keys above"
    );
    for f in ["history.jsonl", "history.edn", "verdict.json", "timeline.svg", "report.html"] {
        anyhow::ensure!(out.path().join("run").join(f).exists(), "{f} missing from the results");
    }
    Ok(())
}

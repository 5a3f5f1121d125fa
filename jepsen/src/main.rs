//! `ringkv-jepsen run`: a chaos run against real `ringkv-node` processes. Exits 0 only when
//! every checker's verdict is valid; the verdicts are printed last.

use clap::{Parser, Subcommand};
use ringkv_jepsen::nemesis::Fault;
use ringkv_jepsen::runner::{RunOptions, run};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "ringkv-jepsen",
    version,
    about = "Chaos runs against a real ringkv cluster, checked for linearizability"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the register workload under faults and check the history.
    Run {
        /// Seconds of workload.
        #[arg(long, default_value_t = 30)]
        time: u64,
        /// Faults, comma separated: kill, pause, transfer, or all; none for a fault-free run.
        #[arg(long, default_value = "all", value_delimiter = ',')]
        nemesis: Vec<String>,
        /// Seconds between faults.
        #[arg(long, default_value_t = 4)]
        interval: u64,
        /// Seconds a fault lasts.
        #[arg(long, default_value_t = 3)]
        hold: u64,
        #[arg(long, default_value_t = 8)]
        clients: usize,
        #[arg(long, default_value_t = 4)]
        keys: usize,
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        #[arg(long, default_value_t = 4)]
        shards: u32,
        #[arg(long, default_value_t = 3)]
        rf: u32,
        /// Per-operation deadline in milliseconds (timeouts are recorded as indeterminate).
        #[arg(long, default_value_t = 2000)]
        op_timeout_ms: u64,
        /// Results directory (history.jsonl, faults.json, verdict.json).
        #[arg(long, default_value = "jepsen-results")]
        out: PathBuf,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let Command::Run {
        time,
        nemesis,
        interval,
        hold,
        clients,
        keys,
        nodes,
        shards,
        rf,
        op_timeout_ms,
        out,
    } = Cli::parse().command;
    let nemeses: Result<Vec<Fault>, String> = nemesis
        .iter()
        .flat_map(|n| match n.as_str() {
            "all" => vec!["kill", "pause", "transfer"],
            "none" => vec![],
            other => vec![other],
        })
        .map(str::parse)
        .collect();
    let nemeses = match nemeses {
        Ok(n) => n,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let opts = RunOptions {
        time: Duration::from_secs(time),
        nemeses,
        interval: Duration::from_secs(interval),
        hold: Duration::from_secs(hold),
        clients,
        keys,
        nodes,
        shards,
        rf,
        op_timeout: Duration::from_millis(op_timeout_ms),
        out: out.join(format!("run-{stamp}")),
    };
    println!(
        "note: nodes run on loopback; only process faults (kill, pause, transfer) are injected"
    );
    match run(&opts).await {
        Ok(report) => {
            println!(
                "results in {}; {} events, {} faults",
                report.dir.display(),
                report.events,
                report.faults.len()
            );
            for v in &report.verdicts {
                println!(
                    "{}: {} over {} operations",
                    v.checker,
                    if v.valid { "VALID" } else { "INVALID" },
                    v.ops
                );
                for c in &v.counterexamples {
                    println!("  {c}");
                }
            }
            if report.valid() { ExitCode::SUCCESS } else { ExitCode::from(1) }
        }
        Err(e) => {
            eprintln!("run failed (verdict unknown): {e:#}");
            ExitCode::from(3)
        }
    }
}

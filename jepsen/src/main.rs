//! `ringkv-jepsen`: chaos runs against real `ringkv-node` processes (`run`), and re-checking or
//! exporting a recorded history (`check`, `edn`). `run` and `check` exit 0 only when every
//! checker's verdict is valid (1 invalid, 3 unknown, 2 bad usage); verdicts are printed last.

use clap::{Parser, Subcommand, ValueEnum};
use ringkv_client::Consistency;
use ringkv_jepsen::checker::{Outcome, Verdict, append, events, linearizable, stale};
use ringkv_jepsen::nemesis::Fault;
use ringkv_jepsen::runner::{RunOptions, run};
use ringkv_jepsen::workload::{ReadMode, Workload};
use ringkv_jepsen::{edn, history};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "ringkv-jepsen",
    version,
    about = "Chaos runs against a real ringkv cluster, with recorded histories and their checkers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ReadLevel {
    Linearizable,
    Lease,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run workloads under faults and check the history.
    Run {
        /// Seconds of workload.
        #[arg(long, default_value_t = 60)]
        time: u64,
        /// Workloads, comma separated: register, append, events (run side by side on their own keys).
        #[arg(long, default_value = "register,append", value_delimiter = ',')]
        workload: Vec<String>,
        /// Faults, comma separated: kill, pause, pause-leader, transfer, partition-halves,
        /// partition-leaders, partition-bridge, partition-ring, loss, slow, delay; or the groups
        /// process, partition, network, all; none for a fault-free run. Membership faults
        /// (join, drain, remove, wipe; group membership) are not in `all`: they need
        /// --spare-nodes for joins.
        #[arg(long, default_value = "all", value_delimiter = ',')]
        nemesis: Vec<String>,
        /// Seconds between faults.
        #[arg(long, default_value_t = 4)]
        interval: u64,
        /// Seconds a fault lasts.
        #[arg(long, default_value_t = 3)]
        hold: u64,
        /// Take the faults in the order given, round and round, instead of at random.
        #[arg(long)]
        cycle: bool,
        #[arg(long, default_value_t = 10)]
        clients: usize,
        /// Keys per workload at a time.
        #[arg(long, default_value_t = 4)]
        keys: usize,
        /// Seconds a key is used before the workload moves to fresh keys (keeps each key's
        /// history small enough to check).
        #[arg(long, default_value_t = 10)]
        key_lifetime: u64,
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// Slots (and network namespaces) for nodes that join during the run.
        #[arg(long, default_value_t = 0)]
        spare_nodes: u64,
        #[arg(long, default_value_t = 4)]
        shards: u32,
        #[arg(long, default_value_t = 3)]
        rf: u32,
        /// Consistency of the register reads checked for linearizability.
        #[arg(long, value_enum, default_value_t = ReadLevel::Linearizable)]
        read_consistency: ReadLevel,
        /// Mix STALE reads into the register workload (checked against what STALE promises).
        #[arg(long)]
        stale_reads: bool,
        /// Run nodes on loopback even as root (no network faults then).
        #[arg(long)]
        no_netns: bool,
        /// TLS everywhere (mutual TLS between nodes and from the router; certificates of a
        /// throwaway CA).
        #[arg(long)]
        tls: bool,
        /// Per-operation deadline in milliseconds (timeouts are recorded as indeterminate).
        #[arg(long, default_value_t = 2000)]
        op_timeout_ms: u64,
        /// Results directory; each run gets a run-<unix time> folder in it.
        #[arg(long, default_value = "jepsen-results")]
        out: PathBuf,
    },
    /// Check a recorded history.jsonl again.
    Check {
        history: PathBuf,
        /// Checkers, comma separated: register, stale, append, events.
        #[arg(long, default_value = "register,stale,append,events", value_delimiter = ',')]
        checker: Vec<String>,
    },
    /// Convert a history.jsonl to Jepsen EDN on standard output.
    Edn { history: PathBuf },
}

fn print_verdicts(verdicts: &[Verdict]) -> ExitCode {
    for v in verdicts {
        println!("{}: {} over {} operations", v.checker, v.outcome(), v.ops);
        for c in v.counterexamples.iter().chain(&v.unknown).take(10) {
            println!("  {c}");
        }
    }
    match Outcome::of(verdicts) {
        Outcome::Valid => ExitCode::SUCCESS,
        Outcome::Invalid => ExitCode::from(1),
        Outcome::Unknown => ExitCode::from(3),
    }
}

fn usage(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(2)
}

fn read_history(path: &PathBuf) -> Result<Vec<history::Event>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    history::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check { history, checker } => {
            let events = match read_history(&history) {
                Ok(e) => e,
                Err(e) => return usage(e),
            };
            let mut verdicts = Vec::new();
            for c in &checker {
                let v = match c.as_str() {
                    "register" => linearizable::check(&events),
                    "stale" => stale::check(&events, stale::SLACK_MS_DEFAULT),
                    "append" => append::check(&events),
                    "events" => events::check(&events),
                    other => {
                        return usage(format!(
                            "unknown checker {other:?}: use register, stale, append, events"
                        ));
                    }
                };
                match v {
                    Ok(v) if v.ops > 0 => verdicts.push(v),
                    Ok(_) => {}
                    Err(e) => return usage(e),
                }
            }
            print_verdicts(&verdicts)
        }
        Command::Edn { history } => match read_history(&history) {
            Ok(events) => {
                print!("{}", edn::export(&events));
                ExitCode::SUCCESS
            }
            Err(e) => usage(e),
        },
        Command::Run {
            time,
            workload,
            nemesis,
            interval,
            hold,
            cycle,
            clients,
            keys,
            key_lifetime,
            nodes,
            spare_nodes,
            shards,
            rf,
            read_consistency,
            stale_reads,
            no_netns,
            tls,
            op_timeout_ms,
            out,
        } => {
            let workloads: Result<Vec<Workload>, String> =
                workload.iter().map(|w| w.parse()).collect();
            let workloads = match workloads {
                Ok(w) => w,
                Err(e) => return usage(e),
            };
            let nemeses = match Fault::parse_list(&nemesis) {
                Ok(n) => n,
                Err(e) => return usage(e),
            };
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let opts = RunOptions {
                time: Duration::from_secs(time),
                workloads,
                reads: ReadMode {
                    register: match read_consistency {
                        ReadLevel::Linearizable => Consistency::Linearizable,
                        ReadLevel::Lease => Consistency::Lease,
                    },
                    stale: stale_reads,
                },
                nemeses,
                interval: Duration::from_secs(interval),
                hold: Duration::from_secs(hold),
                cycle_faults: cycle,
                clients,
                keys,
                key_lifetime: Duration::from_secs(key_lifetime.max(1)),
                nodes,
                spare_nodes,
                shards,
                rf,
                op_timeout: Duration::from_millis(op_timeout_ms),
                net: !no_netns,
                tls,
                out: out.join(format!("run-{stamp}")),
            };
            match run(&opts).await {
                Ok(report) => {
                    println!(
                        "results in {} (report.html); {} events, {} faults, nodes {}",
                        report.dir.display(),
                        report.events,
                        report.faults.len(),
                        if report.namespaces {
                            "in their own network namespaces"
                        } else {
                            "on loopback"
                        }
                    );
                    for n in &report.notes {
                        println!("note: {n}");
                    }
                    print_verdicts(&report.verdicts)
                }
                Err(e) => {
                    eprintln!("run failed (verdict unknown): {e:#}");
                    ExitCode::from(3)
                }
            }
        }
    }
}

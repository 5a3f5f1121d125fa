//! A run: start a cluster (each node in its own network namespace when it can) and a router,
//! drive the workloads from concurrent clients while the nemesis injects faults, heal, take
//! final reads, check the history, write the results folder.

use crate::checker::{Outcome, Verdict, append, events, linearizable, stale};
use crate::clients::Clients;
use crate::history::Event;
use crate::nemesis::{self, Fault, FaultWindow};
use crate::workload::{ReadMode, Workload};
use crate::{edn, report};
use anyhow::{Context, Result};
use ringkv_tests::{Cluster, NetLab, RouterProc, Tuning};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub time: Duration,
    pub workloads: Vec<Workload>,
    pub reads: ReadMode,
    pub nemeses: Vec<Fault>,
    /// Quiet time between faults.
    pub interval: Duration,
    /// How long a fault lasts before it is healed.
    pub hold: Duration,
    /// Take the faults in the given order, round and round, instead of at random.
    pub cycle_faults: bool,
    pub clients: usize,
    /// Keys per workload at a time.
    pub keys: usize,
    /// How long a key is used before the workload moves to a fresh one.
    pub key_lifetime: Duration,
    pub nodes: u64,
    /// Slots for nodes that join during the run (membership faults), beyond `nodes`.
    pub spare_nodes: u64,
    pub shards: u32,
    pub rf: u32,
    /// Client-side deadline per operation; a timed-out operation is recorded as `info`.
    pub op_timeout: Duration,
    /// Put each node in its own network namespace (needs root); falls back to loopback.
    pub net: bool,
    /// TLS everywhere: nodes, router and clients with certificates of a throwaway CA.
    pub tls: bool,
    pub out: PathBuf,
}

#[derive(Debug)]
pub struct RunReport {
    pub verdicts: Vec<Verdict>,
    pub events: usize,
    pub faults: Vec<FaultWindow>,
    pub dir: PathBuf,
    /// Whether nodes ran in their own namespaces.
    pub namespaces: bool,
    /// What the run could not do as asked, and why.
    pub notes: Vec<String>,
}

impl RunReport {
    pub fn valid(&self) -> bool {
        Outcome::of(&self.verdicts) == Outcome::Valid
    }
}

/// Decides where nodes run and which faults can be injected there.
fn plan_network(o: &RunOptions, notes: &mut Vec<String>) -> (Option<NetLab>, Vec<Fault>) {
    let wants_net = o.nemeses.iter().any(|f| f.needs_net());
    let lab = if o.net {
        match NetLab::create(&(1..=o.nodes + o.spare_nodes).collect::<Vec<_>>()) {
            Ok(lab) => Some(lab),
            Err(e) => {
                notes.push(format!(
                    "nodes run on loopback, not in their own network namespaces: {e:#}"
                ));
                None
            }
        }
    } else {
        None
    };
    let mut nemeses = o.nemeses.clone();
    if lab.is_none() && wants_net {
        nemeses.retain(|f| !f.needs_net());
        notes.push("network faults dropped: only process faults can be injected".into());
    }
    if let Some(l) = &lab
        && nemeses.contains(&Fault::Delay)
        && !l.netem_available()
    {
        nemeses.retain(|f| *f != Fault::Delay);
        notes.push("delay dropped: this kernel has no tc netem (sch_netem)".into());
    }
    if o.nodes < 4 && nemeses.contains(&Fault::PartitionRing) {
        nemeses.retain(|f| *f != Fault::PartitionRing);
        notes.push(
            "partition-ring dropped: with fewer than 4 nodes a ring is fully connected".into(),
        );
    }
    (lab, nemeses)
}

/// A run in progress: the cluster, its router, and the clients recording the history. The
/// nemesis (or a test's own script) changes the cluster meanwhile; [`Campaign::finish`] stops
/// the clients, heals, takes the final reads and checks.
pub struct Campaign {
    o: RunOptions,
    pub cluster: Cluster,
    router: RouterProc,
    clients: Clients,
    faults: Vec<FaultWindow>,
    nemeses: Vec<Fault>,
    notes: Vec<String>,
    namespaces: bool,
    started: Instant,
}

impl Campaign {
    /// Starts the cluster, the router and the clients.
    pub async fn start(o: &RunOptions, tuning: Tuning) -> Result<Campaign> {
        anyhow::ensure!(!o.workloads.is_empty(), "no workload given");
        std::fs::create_dir_all(&o.out).with_context(|| format!("creating {}", o.out.display()))?;
        let mut notes = Vec::new();
        let (lab, nemeses) = plan_network(o, &mut notes);
        for n in &notes {
            println!("note: {n}");
        }
        let namespaces = lab.is_some();
        let cluster = Cluster::start_with(o.nodes, o.shards, o.rf, tuning, lab, o.tls).await?;
        cluster.wait_for_leaders(Duration::from_secs(30)).await?;
        let router = cluster.start_router("round-robin").await?;
        let clients = Clients::start(o, &router.addr, cluster.dialer()).await?;
        Ok(Campaign {
            o: o.clone(),
            cluster,
            router,
            clients,
            faults: Vec::new(),
            nemeses,
            notes,
            namespaces,
            started: Instant::now(),
        })
    }

    /// The faults this machine can inject of those asked for.
    pub fn nemeses(&self) -> &[Fault] {
        &self.nemeses
    }

    /// Injects one fault, recording its window in the history's report.
    pub async fn inject(&mut self, fault: Fault) -> Result<String> {
        let start_ns = self.clients.now_ns();
        let what = nemesis::inject(&mut self.cluster, fault, self.o.hold).await?;
        println!("nemesis: {what}");
        self.faults.push(FaultWindow {
            fault: what.clone(),
            start_ns,
            end_ns: self.clients.now_ns(),
        });
        Ok(what)
    }

    /// Records a window of something a script did to the cluster since `start_ns`.
    pub fn record(&mut self, what: impl Into<String>, start_ns: u64) {
        let what = what.into();
        println!("step: {what}");
        self.faults.push(FaultWindow { fault: what, start_ns, end_ns: self.clients.now_ns() });
    }

    /// Now, on the history's clock.
    pub fn now_ns(&self) -> u64 {
        self.clients.now_ns()
    }

    /// Operations recorded so far (all kinds).
    pub async fn events(&self) -> usize {
        self.clients.events().await
    }

    /// Stops the clients from starting operations and waits until none can be in flight (an
    /// operation, retries included, ends within the operation timeout).
    pub async fn pause_clients(&self) {
        self.clients.pause().await;
    }

    pub fn resume_clients(&self) {
        self.clients.resume();
    }

    /// Runs the workload for the rest of `o.time`, injecting the nemeses every interval.
    pub async fn run_nemesis(&mut self) -> Result<()> {
        let deadline = self.started + self.o.time;
        while Instant::now() + self.o.interval < deadline {
            tokio::time::sleep(self.o.interval).await;
            if self.nemeses.is_empty() {
                continue;
            }
            let pick = if self.o.cycle_faults {
                self.faults.len() % self.nemeses.len()
            } else {
                rand::random_range(0..self.nemeses.len())
            };
            let fault = self.nemeses[pick];
            // A fault that could not be injected (a refusal, a node slow to come back) is a
            // note in the report, not the end of the run: the history so far is still checked.
            if let Err(e) = self.inject(fault).await {
                let what = format!("{} failed: {e:#}", fault.name());
                println!("nemesis: {what}");
                let now = self.clients.now_ns();
                self.faults.push(FaultWindow { fault: what, start_ns: now, end_ns: now });
            }
        }
        tokio::time::sleep(deadline.saturating_duration_since(Instant::now())).await;
        Ok(())
    }

    /// Stops the clients, heals, takes the final reads, writes and checks the history.
    pub async fn finish(mut self) -> Result<RunReport> {
        let o = self.o.clone();
        // The clients stop first: what they do while the cluster heals would fall outside
        // every recorded fault window. Then the final reads, on the healed cluster.
        self.clients.stop().await?;
        nemesis::heal(&mut self.cluster).await?;
        self.cluster.wait_for_leaders(Duration::from_secs(60)).await?;
        let Campaign { cluster, router, clients, faults, notes, namespaces, .. } = self;
        let events = clients.finish().await?;
        drop(router);
        cluster.copy_logs(&o.out.join("logs"))?;
        drop(cluster);

        // The history first: if checking fails or is interrupted, it can be checked again with
        // `ringkv-jepsen check`.
        write_history(&o, &events, &faults)?;
        let verdicts = check(&events, &o)?;
        std::fs::write(o.out.join("verdict.json"), serde_json::to_string_pretty(&verdicts)?)?;
        report::write(&o.out, &events, &faults, &verdicts, &notes)?;
        Ok(RunReport {
            verdicts,
            events: events.len(),
            faults,
            dir: o.out.clone(),
            namespaces,
            notes,
        })
    }
}

/// A whole run: start, faults on a schedule for `o.time`, finish and check.
pub async fn run(o: &RunOptions) -> Result<RunReport> {
    let mut campaign = Campaign::start(o, Tuning::default()).await?;
    campaign.run_nemesis().await?;
    campaign.finish().await
}

/// The verdicts of the checkers that `o`'s workloads call for.
pub fn check(events: &[Event], o: &RunOptions) -> Result<Vec<Verdict>> {
    let mut verdicts = Vec::new();
    for w in &o.workloads {
        match w {
            Workload::Register => {
                verdicts.push(linearizable::check(events)?);
                if o.reads.stale {
                    verdicts.push(stale::check(events, stale::SLACK_MS_DEFAULT)?);
                }
            }
            Workload::Append => verdicts.push(append::check(events)?),
            Workload::Events => verdicts.push(events::check(events)?),
        }
    }
    Ok(verdicts)
}

/// Writes the history (JSON lines and EDN) and the fault windows into `o.out`.
pub fn write_history(o: &RunOptions, events: &[Event], faults: &[FaultWindow]) -> Result<()> {
    let history: String = events
        .iter()
        .map(|e| serde_json::to_string(e).map(|l| l + "\n"))
        .collect::<Result<_, _>>()?;
    std::fs::write(o.out.join("history.jsonl"), history)?;
    std::fs::write(o.out.join("history.edn"), edn::export(events))?;
    std::fs::write(o.out.join("faults.json"), serde_json::to_string_pretty(&faults)?)?;
    Ok(())
}

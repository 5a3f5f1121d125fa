//! The clients of a run: concurrent workload loops through a router, recording one history,
//! and the final reads that close it.
//!
//! Kept apart from the cluster that serves them, so the same clients and history drive the
//! harness's own clusters ([`crate::runner::Campaign`]) and clusters started some other way
//! (the Kubernetes StatefulSet rehearsal starts the rendered manifests' pods instead): anything
//! with a router address can be checked.
//!
//! The final reads: after the clients stop, every key any generation used is read once more
//! (retried until it succeeds), so a write acknowledged but never read in the run is still
//! checked: if it were lost, its key's last read would miss it.

use crate::history::{Event, Kind, Op};
use crate::runner::RunOptions;
use crate::workload::{ClientCtx, Recorder, Workload, client_loop, generation, key_name, perform};
use anyhow::{Context, Result};
use ringkv_client::Client;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

/// How long one key's final read may keep failing on a healed cluster before the run ends
/// with an error: long enough for elections and moves to finish on a loaded machine.
const FINAL_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Process ids of the final reads start here, far above any client's.
const FINAL_READ_PROCESS_FIRST: u64 = 1_000_000;

/// The running clients and the history they record.
pub struct Clients {
    o: RunOptions,
    router: String,
    dialer: ringkv_tls::Dialer,
    rec: Recorder,
    stop: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Clients {
    /// Starts `o.clients` clients against the router at `router` (workloads dealt round
    /// robin), each with its own connection.
    pub async fn start(o: &RunOptions, router: &str, dialer: ringkv_tls::Dialer) -> Result<Self> {
        anyhow::ensure!(!o.workloads.is_empty(), "no workload given");
        anyhow::ensure!(o.clients >= o.workloads.len(), "need at least one client per workload");
        anyhow::ensure!(u32::try_from(o.keys).is_ok(), "too many keys for event partitions");
        let rec = Recorder::default();
        let stop = Arc::new(AtomicBool::new(false));
        let paused = Arc::new(AtomicBool::new(false));
        let next_value = Arc::new(AtomicI64::new(1));
        let mut tasks = Vec::new();
        for i in 0..o.clients {
            let client = Self::connect(o, router, &dialer).await?;
            tasks.push(tokio::spawn(client_loop(ClientCtx {
                client,
                rec: rec.clone(),
                workload: o.workloads[i % o.workloads.len()],
                first_process: i as u64,
                process_stride: o.clients as u64,
                keys: o.keys,
                next_value: next_value.clone(),
                stop: stop.clone(),
                paused: paused.clone(),
                reads: o.reads,
                op_timeout: o.op_timeout,
                key_lifetime: o.key_lifetime,
            })));
        }
        Ok(Clients { o: o.clone(), router: router.to_string(), dialer, rec, stop, paused, tasks })
    }

    async fn connect(o: &RunOptions, router: &str, dialer: &ringkv_tls::Dialer) -> Result<Client> {
        Client::builder()
            .router(router.to_string())
            .timeout(o.op_timeout)
            .dialer(dialer.clone())
            .connect()
            .await
            .with_context(|| format!("connecting a client to the router at {router}"))
    }

    /// The recorder (its clock is the history's).
    pub fn recorder(&self) -> &Recorder {
        &self.rec
    }

    /// Now, on the history's clock.
    pub fn now_ns(&self) -> u64 {
        self.rec.elapsed_ns()
    }

    /// Operations recorded so far (all kinds).
    pub async fn events(&self) -> usize {
        self.rec.events().await.len()
    }

    /// Completed operations recorded so far that succeeded (`ok`).
    pub async fn ok_events(&self) -> usize {
        self.rec.events().await.iter().filter(|e| e.kind == Kind::Ok).count()
    }

    /// Stops the clients from starting operations and waits until none can be in flight (an
    /// operation, retries included, ends within the operation timeout).
    pub async fn pause(&self) {
        self.paused.store(true, Ordering::Relaxed);
        tokio::time::sleep(self.o.op_timeout + Duration::from_millis(500)).await;
    }

    pub fn resume(&self) {
        self.paused.store(false, Ordering::Relaxed);
    }

    /// Stops the clients and waits until none has an operation in flight.
    pub async fn stop(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        self.paused.store(false, Ordering::Relaxed);
        for t in std::mem::take(&mut self.tasks) {
            t.await?;
        }
        Ok(())
    }

    /// Stops the clients (if [`Clients::stop`] did not already) and reads every key once
    /// more (each read retried until it succeeds, for at most [`FINAL_READ_TIMEOUT`]). Heal
    /// the cluster between the two. Returns the whole history.
    pub async fn finish(mut self) -> Result<Vec<Event>> {
        self.stop().await?;
        let o = &self.o;
        let client = Self::connect(o, &self.router, &self.dialer).await?;
        let rec = &self.rec;
        let mut process = FINAL_READ_PROCESS_FIRST;
        let generations = generation(rec.elapsed_ns(), o.key_lifetime);
        let keys = (0..=generations).flat_map(|g| (0..o.keys).map(move |k| (g, k)));
        for w in &o.workloads {
            let names: Vec<String> = keys.clone().map(|(g, k)| key_name(*w, g, k)).collect();
            for key in names {
                let until = Instant::now() + FINAL_READ_TIMEOUT;
                let read = || match w {
                    Workload::Register => Op::Read { key: key.clone(), value: None },
                    Workload::Append => Op::ReadList { key: key.clone(), value: None },
                    Workload::Events => Op::ReadPartition { key: key.clone(), value: None },
                };
                while perform(&client, None, rec, process, read(), o.reads, o.op_timeout).await.0
                    != Kind::Ok
                {
                    process += 1;
                    anyhow::ensure!(
                        Instant::now() < until,
                        "final read of {:?} kept failing on the healed cluster",
                        read()
                    );
                }
                process += 1;
            }
        }
        Ok(self.rec.events().await)
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        // A run that ends early (an error in a script) must not leave clients hammering a
        // cluster that is being torn down.
        self.stop.store(true, Ordering::Relaxed);
        for t in &self.tasks {
            t.abort();
        }
    }
}

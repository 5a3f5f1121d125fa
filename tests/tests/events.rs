//! Event streams end to end, through the router, on a real three-node cluster: idempotent
//! producers and a consumer group while leaders are transferred and a node is killed.
//!
//! Checked at the end, per partition:
//! - the consumer group received offsets 0, 1, 2, ... up to the end, each once and in order,
//!   although its consumer was stopped and restarted from the committed offsets mid-run and
//!   its subscriptions were moved between leaders by the router;
//! - every acknowledged event was delivered, at the offset its append returned;
//! - no event appears twice anywhere (producer retries across failovers were deduplicated by
//!   sequence numbers), and nothing appears that no producer sent.

use anyhow::{Context, Result, ensure};
use ringkv_client::{Event, Retention};
use ringkv_proto::v1::TransferLeaderRequest;
use ringkv_tests::{Cluster, Tuning, router_client, wait_for};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::Mutex;

const TOPIC: &str = "ev";
const PARTITIONS: u32 = 4;
const PRODUCERS: usize = 4;

#[derive(Default)]
struct Ledger {
    /// payload -> (partition, offset) for acknowledged events.
    acked: HashMap<String, (u32, u64)>,
    attempted: HashSet<String>,
    errors: usize,
    /// Consumed (offset, payload) per partition, in delivery order.
    consumed: BTreeMap<u32, Vec<(u64, String)>>,
}

/// One consumer of group "g": a subscription per partition, recording then committing each
/// batch, until `stop` (checked between batches, so what is recorded is what is committed).
fn start_consumer(
    router: String,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Result<()>>> {
    (0..PARTITIONS)
        .map(|p| {
            let (router, ledger, stop) = (router.clone(), ledger.clone(), stop.clone());
            tokio::spawn(async move {
                let client = router_client(&router).await?;
                let mut sub = client.subscribe_group(TOPIC, p, "g").await?;
                while !stop.load(Ordering::SeqCst) {
                    let next = tokio::select! {
                        n = sub.next() => n,
                        _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                    };
                    let batch = next.context("subscription ended")??;
                    if batch.events.is_empty() {
                        continue;
                    }
                    {
                        let mut l = ledger.lock().await;
                        let list = l.consumed.entry(p).or_default();
                        for e in &batch.events {
                            list.push((e.offset, String::from_utf8_lossy(&e.payload).into_owned()));
                        }
                    }
                    client.commit_offset("g", TOPIC, p, batch.next_offset).await?;
                }
                Ok(())
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn producers_and_a_consumer_group_see_every_event_once_across_failovers() -> Result<()> {
    let mut c = Cluster::start(3, 4, 3, Tuning::default()).await?;
    c.wait_for_leaders(Duration::from_secs(30)).await?;
    let router = c.start_router("round-robin").await?;
    let admin_client = router_client(&router.addr).await?;
    let created = admin_client.create_topic(TOPIC, PARTITIONS, Retention::default()).await?;
    ensure!(created.created, "a fresh cluster has no topic {TOPIC}");
    let again = admin_client.create_topic(TOPIC, PARTITIONS, Retention::default()).await?;
    ensure!(!again.created, "creating the same topic twice is idempotent");

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop_producers = Arc::new(AtomicBool::new(false));
    let mut producers = Vec::new();
    for w in 0..PRODUCERS {
        let (ledger, stop, addr) = (ledger.clone(), stop_producers.clone(), router.addr.clone());
        producers.push(tokio::spawn(async move {
            let client = router_client(&addr).await?;
            let producer = client.producer(TOPIC).await?;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let size = 1 + (n % 3) as usize;
                let payloads: Vec<String> = (0..size).map(|i| format!("p{w}-{n}-{i}")).collect();
                let events = payloads
                    .iter()
                    .map(|p| Event {
                        key: format!("k{w}-{}", n % 13).into_bytes().into(),
                        payload: p.clone().into_bytes().into(),
                        ..Default::default()
                    })
                    .collect();
                ledger.lock().await.attempted.extend(payloads.iter().cloned());
                match producer.send(events).await {
                    Ok(r) => {
                        let mut l = ledger.lock().await;
                        for (i, p) in payloads.into_iter().enumerate() {
                            l.acked.insert(p, (r.partition, r.first_offset + i as u64));
                        }
                    }
                    // A producer whose batch failed for good cannot know its sequence state;
                    // a real application would start a new producer id. So does this one.
                    Err(e) => {
                        eprintln!("producer {w}: {e}");
                        ledger.lock().await.errors += 1;
                        return anyhow::Ok(());
                    }
                }
                n += 1;
            }
            anyhow::Ok(())
        }));
    }
    let acked = |ledger: Arc<Mutex<Ledger>>| async move { ledger.lock().await.acked.len() };
    let wait_more = |what: &'static str, more: usize| {
        let ledger = ledger.clone();
        async move {
            let before = acked(ledger.clone()).await;
            wait_for(Duration::from_secs(90), what, || {
                let l = ledger.clone();
                async move { (acked(l).await >= before + more).then_some(()) }
            })
            .await
        }
    };

    let stop_first = Arc::new(AtomicBool::new(false));
    let first_consumer = start_consumer(router.addr.clone(), ledger.clone(), stop_first.clone());
    wait_more("appends before the faults", 100).await?;

    eprintln!("stage: transfers");
    for (shard, leader) in c.leaders().await {
        let to = *c.map.replicas(shard).iter().find(|&&n| n != leader).context("RF 3")?;
        let mut admin = c.admin(leader).await?;
        // The leader may have changed meanwhile; a refused transfer is fine.
        let _ =
            admin.transfer_leader(TransferLeaderRequest { shard_id: shard, to_node_id: to }).await;
    }
    wait_more("appends after the transfers", 100).await?;

    eprintln!("stage: consumer restart");
    stop_first.store(true, Ordering::SeqCst);
    for t in first_consumer {
        t.await??;
    }
    let stop_second = Arc::new(AtomicBool::new(false));
    let second_consumer = start_consumer(router.addr.clone(), ledger.clone(), stop_second.clone());

    eprintln!("stage: kill");
    let victim = c.busiest_leader().await.context("no leader")?;
    c.kill(victim)?;
    wait_more("appends with a node down", 100).await?;
    c.restart(victim).await?;
    wait_more("appends after the restart", 50).await?;
    stop_producers.store(true, Ordering::Relaxed);
    for p in producers {
        p.await??;
    }

    // Everything appended is eventually consumed.
    let ends: Vec<(u32, u64)> = admin_client
        .describe_topic(TOPIC)
        .await?
        .partitions
        .iter()
        .map(|p| (p.partition, p.end_offset))
        .collect();
    let reached = wait_for(Duration::from_secs(60), "the consumer group to reach the end", || {
        let (ledger, ends) = (ledger.clone(), ends.clone());
        async move {
            let l = ledger.lock().await;
            ends.iter()
                .all(|(p, end)| l.consumed.get(p).map_or(0, |v| v.len() as u64) >= *end)
                .then_some(())
        }
    })
    .await;
    if let Err(e) = reached {
        // Say why: a consumer that stopped with an error, or how far each partition got.
        stop_second.store(true, Ordering::SeqCst);
        let mut why = Vec::new();
        for t in second_consumer {
            match tokio::time::timeout(Duration::from_secs(5), t).await {
                Ok(Ok(Err(e))) => why.push(format!("{e:#}")),
                Ok(Err(e)) => why.push(format!("consumer panicked: {e}")),
                Ok(Ok(Ok(()))) => {}
                Err(_) => why.push("a consumer did not stop".into()),
            }
        }
        let l = ledger.lock().await;
        let got: Vec<(u32, usize)> = l.consumed.iter().map(|(p, v)| (*p, v.len())).collect();
        let logs =
            std::env::temp_dir().join(format!("ringkv-events-failure-{}", std::process::id()));
        let kept =
            c.copy_logs(&logs).map_or_else(|e| e.to_string(), |()| logs.display().to_string());
        anyhow::bail!(
            "{e}: consumed {got:?} of {ends:?}; consumer errors: {why:?}; logs in {kept}"
        );
    }
    stop_second.store(true, Ordering::SeqCst);
    for t in second_consumer {
        t.await??;
    }

    let l = ledger.lock().await;
    let mut seen: HashMap<&str, (u32, u64)> = HashMap::new();
    for (p, list) in &l.consumed {
        for (i, (offset, payload)) in list.iter().enumerate() {
            ensure!(
                *offset == i as u64,
                "partition {p}: delivery {i} has offset {offset} (gap, repeat or reorder)"
            );
            ensure!(l.attempted.contains(payload), "partition {p}: {payload} was never sent");
            if let Some(first) = seen.insert(payload, (*p, *offset)) {
                anyhow::bail!("{payload} appended twice: at {first:?} and at ({p}, {offset})");
            }
        }
    }
    for (payload, at) in &l.acked {
        ensure!(
            seen.get(payload.as_str()) == Some(at),
            "acked {payload} at {at:?} was delivered at {:?}",
            seen.get(payload.as_str())
        );
    }
    let total: usize = l.consumed.values().map(Vec::len).sum();
    eprintln!(
        "events: {} acked, {} delivered, {} producer errors, ends {ends:?}",
        l.acked.len(),
        total,
        l.errors
    );
    ensure!(l.acked.len() >= 350, "the run acknowledged {} events", l.acked.len());
    Ok(())
}

/// Bad input and producer mistakes get clear, typed errors, and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mistakes_get_clear_errors_and_change_nothing() -> Result<()> {
    use ringkv_proto::v1::events_client::EventsClient;
    use ringkv_proto::v1::{AppendRequest, ProducerSequence};
    use tonic::Code;
    let c = Cluster::start(1, 2, 1, Tuning::default()).await?;
    c.wait_for_leaders(Duration::from_secs(30)).await?;
    let router = c.start_router("round-robin").await?;
    let client = router_client(&router.addr).await?;
    let status = |e: ringkv_client::ClientError| match e {
        ringkv_client::ClientError::Status(s) => Ok(s),
        other => Err(anyhow::anyhow!("not a status: {other}")),
    };

    let bad = status(client.create_topic("no spaces", 1, Retention::default()).await.unwrap_err())?;
    ensure!(bad.code() == Code::InvalidArgument && bad.message().contains("' '"), "{bad:?}");
    let missing = status(client.append("nope", None, vec![Event::default()]).await.unwrap_err())?;
    ensure!(missing.code() == Code::NotFound, "{missing:?}");

    client.create_topic("t", 2, Retention::default()).await?;
    let other = status(client.create_topic("t", 3, Retention::default()).await.unwrap_err())?;
    ensure!(
        other.code() == Code::AlreadyExists && other.message().contains("2 partitions"),
        "{other:?}"
    );
    let beyond = status(client.append("t", Some(7), vec![Event::default()]).await.unwrap_err())?;
    ensure!(
        beyond.code() == Code::InvalidArgument && beyond.message().contains("2 partitions"),
        "{beyond:?}"
    );

    // A new producer must start at sequence 0; a gap names the expected sequence.
    let mut events = EventsClient::new(ringkv_tests::channel(&router.addr).await?);
    let append = |seq| AppendRequest {
        topic: "t".into(),
        partition: Some(0),
        events: vec![Event { payload: b"x".to_vec().into(), ..Default::default() }],
        producer: Some(ProducerSequence { producer_id: 42, sequence: seq }),
        ..Default::default()
    };
    let gap = events.append(append(5)).await.unwrap_err();
    ensure!(gap.code() == Code::FailedPrecondition, "{gap:?}");
    ensure!(ringkv_tests::reason(&gap).as_deref() == Some("OUT_OF_ORDER_SEQUENCE"), "{gap:?}");
    let first = events.append(append(0)).await?.into_inner();
    let retry = events.append(append(0)).await?.into_inner();
    ensure!(retry.duplicate && retry.first_offset == first.first_offset, "{retry:?}");
    let d = client.describe_topic("t").await?;
    ensure!(d.partitions[0].end_offset == 1, "only one event stored: {:?}", d.partitions[0]);
    Ok(())
}

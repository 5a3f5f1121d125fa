//! Topic retention on a real three-node cluster: the leader trims through Raft, so every
//! replica drops the same events; reads below the retention point fail with
//! OFFSET_OUT_OF_RANGE naming the earliest offset kept, on the router and on every node.

use anyhow::{Result, ensure};
use ringkv_client::{Client, Event, Retention};
use ringkv_proto::v1::streams_client::StreamsClient;
use ringkv_proto::v1::{Consistency, ReadRequest};
use ringkv_tests::{Cluster, Tuning, wait_for};
use std::time::Duration;
use tonic_types::StatusExt;

fn events(from: u64, n: u64) -> Vec<Event> {
    (from..from + n)
        .map(|i| Event { payload: format!("e{i}").into_bytes().into(), ..Default::default() })
        .collect()
}

fn earliest(status: &tonic::Status) -> Option<u64> {
    let d = status.get_error_details();
    d.error_info()?.metadata.get("earliest_offset")?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_trims_every_replica_and_old_offsets_fail_clearly() -> Result<()> {
    let c =
        Cluster::start(3, 2, 3, Tuning { retention_interval_ms: 100, ..Tuning::default() }).await?;
    c.wait_for_leaders(Duration::from_secs(30)).await?;
    let router = c.start_router("round-robin").await?;
    let client = Client::builder().router(router.addr.clone()).connect().await?;

    let by_count = Retention { max_events: 10, ..Default::default() };
    client.create_topic("counted", 1, by_count).await?;
    for i in 0..3 {
        client.append("counted", Some(0), events(i * 10, 10)).await?;
    }
    wait_for(Duration::from_secs(20), "the count limit to be enforced", || {
        let client = &client;
        async move {
            let d = client.describe_topic("counted").await.ok()?;
            (d.partitions[0].start_offset == 20).then_some(())
        }
    })
    .await?;
    let below = client.read_events("counted", 0, 5, 0).await.expect_err("offset 5 was trimmed");
    let ringkv_client::ClientError::Status(s) = &below else { anyhow::bail!("{below}") };
    ensure!(s.code() == tonic::Code::OutOfRange, "{s:?}");
    ensure!(ringkv_tests::reason(s).as_deref() == Some("OFFSET_OUT_OF_RANGE"), "{s:?}");
    ensure!(earliest(s) == Some(20), "{s:?}");
    ensure!(s.message().contains("keeps offsets 20 to 30"), "{}", s.message());

    // Every replica, read on its own (STALE: no leader needed), keeps exactly 20..30.
    for id in 1..=3u64 {
        let mut node = StreamsClient::new(ringkv_tests::channel(&c.addr(id)).await?);
        let read = |offset| ReadRequest {
            topic: "counted".into(),
            partition: 0,
            offset,
            consistency: Consistency::Stale as i32,
            ..Default::default()
        };
        let kept = wait_for(Duration::from_secs(20), "the replica to apply the trim", || {
            let mut node = node.clone();
            async move {
                let r = node.read(read(20)).await.ok()?.into_inner();
                (r.start_offset == 20).then_some(r)
            }
        })
        .await?;
        let payloads: Vec<String> =
            kept.events.iter().map(|e| String::from_utf8_lossy(&e.payload).into_owned()).collect();
        let want: Vec<String> = (20..30).map(|i| format!("e{i}")).collect();
        ensure!(payloads == want, "node {id} keeps {payloads:?}");
        let err = node.read(read(0)).await.expect_err("offset 0 was trimmed");
        ensure!(earliest(&err) == Some(20), "node {id}: {err:?}");
    }

    // By bytes: 10 events of 10 bytes under a 45-byte limit keep the last 4.
    client.create_topic("sized", 1, Retention { max_bytes: 45, ..Default::default() }).await?;
    let ten_bytes: Vec<Event> = (0..10)
        .map(|i| Event { payload: format!("{i:010}").into_bytes().into(), ..Default::default() })
        .collect();
    client.append("sized", Some(0), ten_bytes).await?;
    wait_for(Duration::from_secs(20), "the byte limit to be enforced", || {
        let client = &client;
        async move {
            let p = client.describe_topic("sized").await.ok()?.partitions[0];
            (p.start_offset == 6 && p.bytes == 40).then_some(())
        }
    })
    .await?;

    // By age: everything goes once it is older than the limit, and appends continue after.
    client.create_topic("aged", 1, Retention { max_age_ms: 300, ..Default::default() }).await?;
    client.append("aged", Some(0), events(0, 5)).await?;
    wait_for(Duration::from_secs(20), "the age limit to be enforced", || {
        let client = &client;
        async move {
            let p = client.describe_topic("aged").await.ok()?.partitions[0];
            (p.start_offset == 5 && p.end_offset == 5 && p.bytes == 0).then_some(())
        }
    })
    .await?;
    let r = client.append("aged", Some(0), events(5, 1)).await?;
    ensure!(r.first_offset == 5, "offsets continue after a full trim: {r:?}");

    // The nodes count what they did: 46 events appended, at least one trim per topic.
    let (mut appended, mut trims) = (0.0, 0.0);
    for id in 1..=3u64 {
        let text = c.metrics(id).await?;
        appended += metric(&text, "ringkv_events_appended_total");
        trims += metric(&text, "ringkv_retention_proposals_total");
    }
    ensure!(appended == 46.0, "events appended per metrics: {appended}");
    ensure!(trims >= 3.0, "retention proposals per metrics: {trims}");
    Ok(())
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines().filter_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok()).sum()
}

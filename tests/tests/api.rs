//! The public API of a node, against real processes: input limits, leader redirects, shard
//! ownership, KV semantics, metrics, clean shutdown and refusing a changed layout.

use anyhow::{Context, Result, ensure};
use ringkv_proto::v1::{
    BatchWriteRequest, Compare, CompareAndSwapRequest, Consistency, DeleteRequest, GetRequest,
    PutRequest, ScanRequest, WriteOp, compare, write_op,
};
use ringkv_tests::{Cluster, Tuning, leader_hint, reason};
use std::time::Duration;
use tonic::Code;
use tonic_types::StatusExt;

const T: Duration = Duration::from_secs(20);

fn assert_invalid(status: &tonic::Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let d = status.get_error_details();
    let info = d.error_info().expect("error info");
    assert_eq!(info.reason, "INVALID_INPUT");
    assert_eq!(info.metadata.get("field").map(String::as_str), Some(field), "{status:?}");
    assert!(!status.message().is_empty());
}

fn put(key: &[u8], value: &[u8]) -> PutRequest {
    PutRequest { key: key.to_vec().into(), value: value.to_vec().into(), session: None }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_rejected_with_details_and_writes_nothing() -> Result<()> {
    let c = Cluster::start(1, 4, 1, Tuning::default()).await?;
    c.wait_for_leaders(T).await?;
    let mut kv = c.kv(1).await?;

    assert_invalid(&kv.put(put(b"", b"v")).await.unwrap_err(), "key");
    let e = kv.put(put(&[b'k'; 4097], b"v")).await.unwrap_err();
    assert_invalid(&e, "key");
    assert!(e.message().contains("4097 bytes exceeds the limit of 4096"), "{}", e.message());
    assert_invalid(&kv.put(put(b"big", &vec![0; (1 << 20) + 1])).await.unwrap_err(), "value");
    let e = kv.get(GetRequest { key: b"k".to_vec().into(), consistency: 9 }).await.unwrap_err();
    assert_invalid(&e, "consistency");
    assert!(e.message().contains("unknown consistency level 9"));
    let cas = CompareAndSwapRequest { key: b"k".to_vec().into(), ..Default::default() };
    assert_invalid(&kv.compare_and_swap(cas).await.unwrap_err(), "expected");
    let too_many = (0..1001)
        .map(|i| WriteOp { op: Some(write_op::Op::Put(put(format!("k{i}").as_bytes(), b"v"))) })
        .collect();
    assert_invalid(
        &kv.batch_write(BatchWriteRequest { ops: too_many, session: None }).await.unwrap_err(),
        "ops",
    );
    // Two keys in different shards cannot form one atomic batch.
    let a = c.key_in_shard(0, "a");
    let b = c.key_in_shard(1, "b");
    let cross = vec![
        WriteOp { op: Some(write_op::Op::Put(put(&a, b"1"))) },
        WriteOp { op: Some(write_op::Op::Put(put(&b, b"2"))) },
    ];
    let e = kv.batch_write(BatchWriteRequest { ops: cross, session: None }).await.unwrap_err();
    assert_invalid(&e, "ops");
    assert!(e.message().contains("must stay in one shard"), "{}", e.message());
    let e = kv.scan(ScanRequest::default()).await.unwrap_err();
    assert_invalid(&e, "shard_id");
    let e = kv
        .scan(ScanRequest { shard_id: Some(0), limit: 10_001, ..Default::default() })
        .await
        .unwrap_err();
    assert_invalid(&e, "limit");

    // None of it was written.
    for key in [&b"big"[..], &a, &b] {
        let got =
            kv.get(GetRequest { key: key.to_vec().into(), consistency: 0 }).await?.into_inner();
        ensure!(got.kv.is_none(), "rejected write of {key:?} was applied");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_redirect_and_foreign_shards_are_refused() -> Result<()> {
    let c = Cluster::start(3, 6, 2, Tuning::default()).await?;
    let leaders = c.wait_for_leaders(T).await?;
    let shard = 0;
    let leader = leaders[&shard];
    let follower =
        *c.map.replicas(shard).iter().find(|&&n| n != leader).context("RF 2 has a follower")?;
    let key = c.key_in_shard(shard, "redirect");
    c.put(&key, b"v1", T).await?;

    let mut kv = c.kv(follower).await?;
    let e = kv.put(put(&key, b"v2")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(leader_hint(&e), Some(leader), "{e:?}");
    let d = e.get_error_details();
    assert_eq!(d.error_info().unwrap().metadata["leader_addr"], c.addr(leader));
    let e = kv
        .get(GetRequest { key: key.clone().into(), consistency: Consistency::Linearizable as i32 })
        .await
        .unwrap_err();
    assert_eq!(leader_hint(&e), Some(leader));
    let e = kv
        .get(GetRequest { key: key.clone().into(), consistency: Consistency::Lease as i32 })
        .await
        .unwrap_err();
    assert_eq!(leader_hint(&e), Some(leader));

    // A stale read is served by the follower itself and says how fresh it is.
    let stale = ringkv_tests::wait_for(T, "the follower to apply v1", || {
        let (mut kv, key) = (kv.clone(), key.clone());
        async move {
            let r = kv
                .get(GetRequest { key: key.into(), consistency: Consistency::Stale as i32 })
                .await
                .ok()?
                .into_inner();
            r.kv.is_some().then_some(r)
        }
    })
    .await?;
    let h = stale.header.context("header")?;
    assert_eq!(h.node_id, follower);
    assert_eq!(h.shard_id, shard);
    assert!(
        h.staleness_ms < 5_000,
        "follower last heard from its leader {} ms ago",
        h.staleness_ms
    );
    assert_eq!(&stale.kv.unwrap().value[..], b"v1");

    // A node without a replica of the shard says so, with the map epoch.
    let outsider = (1..=3)
        .find(|n| !c.map.replicas(shard).contains(n))
        .context("RF 2 of 3 leaves one node out")?;
    let e = c.kv(outsider).await?.put(put(&key, b"v3")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(reason(&e).as_deref(), Some("WRONG_SHARD"));
    let epoch = c.current_map().await?.epoch;
    assert!(epoch >= 1);
    assert_eq!(e.get_error_details().error_info().unwrap().metadata["epoch"], epoch.to_string());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_semantics_versions_cas_batch_and_scan() -> Result<()> {
    kv_semantics(Cluster::start(1, 2, 1, Tuning::default()).await?).await
}

/// The same, straight to a node serving TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_semantics_versions_cas_batch_and_scan_over_tls() -> Result<()> {
    kv_semantics(Cluster::start_tls(1, 2, 1, Tuning::default()).await?).await
}

async fn kv_semantics(c: Cluster) -> Result<()> {
    c.wait_for_leaders(T).await?;
    let mut kv = c.kv(1).await?;
    let key = c.key_in_shard(0, "cas");
    let v1 = kv.put(put(&key, b"one")).await?.into_inner().version;
    let got = kv
        .get(GetRequest { key: key.clone().into(), consistency: Consistency::Lease as i32 })
        .await?
        .into_inner();
    assert_eq!(got.kv.as_ref().unwrap().version, v1);

    let cas = |expected: compare::Target, new: &[u8]| CompareAndSwapRequest {
        key: key.clone().into(),
        expected: Some(Compare { target: Some(expected) }),
        new_value: new.to_vec().into(),
        delete: false,
        session: None,
    };
    let ok = kv.compare_and_swap(cas(compare::Target::Version(v1), b"two")).await?.into_inner();
    assert!(ok.succeeded && ok.version > v1);
    let stale =
        kv.compare_and_swap(cas(compare::Target::Version(v1), b"three")).await?.into_inner();
    assert!(!stale.succeeded);
    assert_eq!(&stale.current.as_ref().unwrap().value[..], b"two");
    assert_eq!(stale.current.unwrap().version, ok.version);
    let by_value = kv
        .compare_and_swap(cas(compare::Target::Value(b"two".to_vec().into()), b"four"))
        .await?
        .into_inner();
    assert!(by_value.succeeded);
    let absent =
        kv.compare_and_swap(cas(compare::Target::MustNotExist(true), b"five")).await?.into_inner();
    assert!(!absent.succeeded);

    assert!(
        kv.delete(DeleteRequest { key: key.clone().into(), session: None })
            .await?
            .into_inner()
            .deleted
    );
    assert!(
        !kv.delete(DeleteRequest { key: key.clone().into(), session: None })
            .await?
            .into_inner()
            .deleted
    );
    let created =
        kv.compare_and_swap(cas(compare::Target::MustNotExist(true), b"six")).await?.into_inner();
    assert!(created.succeeded);

    // An atomic batch in shard 1: every key gets the batch's version.
    let keys: Vec<Vec<u8>> = (0..25).map(|i| c.key_in_shard(1, &format!("scan/{i:02}"))).collect();
    let ops = keys.iter().map(|k| WriteOp { op: Some(write_op::Op::Put(put(k, b"b"))) }).collect();
    let batch_version =
        kv.batch_write(BatchWriteRequest { ops, session: None }).await?.into_inner().version;

    // Scan shard 1 in pages of 10 with the prefix; continuation tokens join the pages.
    let mut seen = Vec::new();
    let mut token = Vec::new();
    loop {
        let page = kv
            .scan(ScanRequest {
                shard_id: Some(1),
                prefix: b"scan/".to_vec().into(),
                limit: 10,
                continuation_token: token.clone().into(),
                ..Default::default()
            })
            .await?
            .into_inner();
        ensure!(page.kvs.len() <= 10);
        for kv in &page.kvs {
            ensure!(kv.version == batch_version);
            seen.push(kv.key.to_vec());
        }
        if page.continuation_token.is_empty() {
            break;
        }
        token = page.continuation_token.to_vec();
    }
    let mut want = keys.clone();
    want.sort();
    want.dedup();
    ensure!(
        seen == want,
        "scan returned {} keys in order {:?}",
        seen.len(),
        seen.iter().map(|k| String::from_utf8_lossy(k).to_string()).collect::<Vec<_>>()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_clean_shutdown_and_changed_layout_refused() -> Result<()> {
    let mut c = Cluster::start(1, 3, 1, Tuning::default()).await?;
    c.wait_for_leaders(T).await?;
    c.put(b"m", b"1", T).await?;
    // Shard gauges refresh every second; request counters at once.
    let needles = [
        r#"ringkv_requests_total{method="put",code="OK"} 1"#,
        r#"ringkv_shard_role{shard="2"} 1"#,
        "ringkv_shard_applied_index{shard=\"0\"}",
        "ringkv_storage_group_commit_syncs_total",
        "ringkv_request_duration_seconds_bucket",
    ];
    ringkv_tests::wait_for(T, "metrics to show the shards and the put", || async {
        let t = c.metrics(1).await.ok()?;
        needles.iter().all(|n| t.contains(n)).then_some(t)
    })
    .await?;

    let status = c.terminate(1)?;
    ensure!(status.success(), "SIGTERM should exit 0, got {status}");

    // Same data directory, different shard count: refused, with the reason.
    let cmd = c.command(1)?;
    let idx = cmd.get_args().position(|a| a == "--shards").context("--shards")? + 1;
    let mut args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
    args[idx] = "5".into();
    let out = std::process::Command::new(cmd.get_program()).args(&args).output()?;
    ensure!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(stderr.contains("start with the original settings"), "stderr: {stderr}");

    // The original settings still start, and the data is there.
    c.restart(1).await?;
    let got = c.get(b"m", Consistency::Linearizable, T).await?;
    ensure!(got.kv.is_some_and(|kv| &kv.value[..] == b"1"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_writes_apply_at_most_once() -> Result<()> {
    use ringkv_proto::v1::WriteSession;
    let c = Cluster::start(1, 2, 1, Tuning::default()).await?;
    c.wait_for_leaders(T).await?;
    let mut kv = c.kv(1).await?;
    let session = |seq| Some(WriteSession { client_id: 0xfeed, sequence: seq });
    let put_s = |value: &[u8], seq| PutRequest {
        key: b"s".to_vec().into(),
        value: value.to_vec().into(),
        session: session(seq),
    };

    let first = kv.put(put_s(b"one", 1)).await?.into_inner().version;
    // A retry of seq 1 (even with another value) returns the first result and changes nothing.
    let retry = kv.put(put_s(b"other", 1)).await?.into_inner().version;
    assert_eq!(retry, first);
    let got = kv.get(GetRequest { key: b"s".to_vec().into(), consistency: 0 }).await?.into_inner();
    assert_eq!(&got.kv.as_ref().unwrap().value[..], b"one");
    assert_eq!(got.kv.unwrap().version, first);

    kv.put(put_s(b"two", 2)).await?;
    let e = kv.put(put_s(b"late", 1)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(reason(&e).as_deref(), Some("SESSION_SUPERSEDED"));
    assert_eq!(e.get_error_details().error_info().unwrap().metadata["last_seq"], "2");

    let zero = PutRequest {
        key: b"s".to_vec().into(),
        value: b"x".to_vec().into(),
        session: Some(WriteSession { client_id: 0, sequence: 1 }),
    };
    assert_invalid(&kv.put(zero).await.unwrap_err(), "session.client_id");
    Ok(())
}

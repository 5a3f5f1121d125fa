//! Storage behaviour beyond openraft's suite: shards sharing one database stay isolated,
//! data survives reopening, damaged records are reported as corruption (never returned), and
//! snapshots round-trip between nodes.

use futures::StreamExt;
use openraft::storage::{IOFlushed, RaftLogStorage, RaftStateMachine};
use openraft::type_config::TypeConfigExt;
use openraft::{EntryPayload, RaftLogReader, RaftSnapshotBuilder};
use ringkv_storage::keys::{self, CF_RAFT_LOG};
use ringkv_storage::type_config::{Entry, LogId, Vote};
use ringkv_storage::{Command, NodeStorage, ScanRange, StorageMetrics, TypeConfig};

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(openraft::impls::leader_id_adv::LeaderId { term, node_id: 1 }, index)
}

fn put(term: u64, index: u64, key: &str, value: &str) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(Command::Put { key: key.into(), value: value.into() }),
    }
}

async fn append(log: &mut ringkv_storage::ShardLogStore, entries: Vec<Entry>) {
    let (tx, rx) = TypeConfig::oneshot();
    log.append(entries, IOFlushed::signal(tx)).await.unwrap();
    rx.await.unwrap().unwrap();
}

async fn apply(sm: &mut ringkv_storage::ShardStateMachine, entries: Vec<Entry>) {
    let stream = futures::stream::iter(entries.into_iter().map(|e| Ok((e, None))));
    sm.apply(stream.boxed()).await.unwrap();
}

fn open(dir: &std::path::Path) -> NodeStorage {
    NodeStorage::open(dir, StorageMetrics::default()).unwrap()
}

#[tokio::test]
async fn shards_are_isolated_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let storage = open(dir.path());
        for shard in [1u64, 2] {
            let mut log = storage.log_store(shard);
            append(
                &mut log,
                (1..=5).map(|i| put(1, i, &format!("k{i}"), &format!("s{shard}"))).collect(),
            )
            .await;
            log.save_vote(&Vote::new(3, shard)).await.unwrap();
            let mut sm = storage.state_machine(shard).unwrap();
            apply(
                &mut sm,
                (1..=5).map(|i| put(1, i, &format!("k{i}"), &format!("s{shard}"))).collect(),
            )
            .await;
        }
        // Purging shard 1 must leave shard 2's log whole.
        storage.log_store(1).purge(log_id(1, 3)).await.unwrap();
    }
    let storage = open(dir.path());
    let mut l1 = storage.log_store(1);
    let mut l2 = storage.log_store(2);
    let s1 = l1.get_log_state().await.unwrap();
    assert_eq!(s1.last_purged_log_id, Some(log_id(1, 3)));
    assert_eq!(s1.last_log_id, Some(log_id(1, 5)));
    assert_eq!(l1.try_get_log_entries(0..10).await.unwrap().len(), 2);
    assert_eq!(l2.try_get_log_entries(0..10).await.unwrap().len(), 5);
    assert_eq!(l2.read_vote().await.unwrap(), Some(Vote::new(3, 2)));
    assert_eq!(storage.reader(2).get(b"k1").unwrap().unwrap().value, b"s2");
    assert_eq!(storage.reader(1).get(b"k1").unwrap().unwrap().version, 1);
    let (applied, _) = storage.state_machine(2).unwrap().applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1, 5)));
}

#[tokio::test]
async fn a_damaged_log_entry_is_reported_not_returned() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    let mut log = storage.log_store(7);
    append(&mut log, (1..=3).map(|i| put(1, i, "k", "v")).collect()).await;
    let db = storage.db();
    let cf = db.cf_handle(CF_RAFT_LOG).unwrap();
    let key = keys::log_key(7, 2);
    let mut raw = db.get_cf(cf, key).unwrap().unwrap();
    let last = raw.len() - 1;
    raw[last] ^= 0x40;
    db.put_cf(cf, key, raw).unwrap();
    let err = log.try_get_log_entries(1..4).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
    // The undamaged entry before it still reads.
    assert_eq!(log.try_get_log_entries(1..2).await.unwrap().len(), 1);
}

#[tokio::test]
async fn apply_semantics_cas_versions_and_batches() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    let mut sm = storage.state_machine(0).unwrap();
    let entries = vec![
        put(1, 1, "a", "1"),
        Entry {
            log_id: log_id(1, 2),
            payload: EntryPayload::Normal(Command::Cas {
                key: b"a".to_vec(),
                expected: ringkv_storage::Expected::Version(1),
                new: Some(b"2".to_vec()),
            }),
        },
        Entry {
            log_id: log_id(1, 3),
            payload: EntryPayload::Normal(Command::Cas {
                key: b"a".to_vec(),
                expected: ringkv_storage::Expected::Version(1),
                new: Some(b"3".to_vec()),
            }),
        },
        Entry {
            log_id: log_id(1, 4),
            payload: EntryPayload::Normal(Command::Batch {
                ops: vec![
                    ringkv_storage::BatchOp::Put { key: b"b".to_vec(), value: b"x".to_vec() },
                    ringkv_storage::BatchOp::Delete { key: b"a".to_vec() },
                ],
            }),
        },
    ];
    apply(&mut sm, entries).await;
    let r = storage.reader(0);
    // The CAS at index 2 saw the put of index 1 within the same batch; index 3 failed.
    assert!(r.get(b"a").unwrap().is_none(), "deleted by the batch");
    assert_eq!(r.get(b"b").unwrap().unwrap().version, 4);
    let page = r.scan(&ScanRange::default(), 10).unwrap();
    assert_eq!(page.items.len(), 1);
    assert!(page.next_start.is_none());
}

#[tokio::test]
async fn snapshot_moves_a_shard_between_nodes() {
    let a_dir = tempfile::tempdir().unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    let a = open(a_dir.path());
    let b = open(b_dir.path());
    let mut sm_a = a.state_machine(4).unwrap();
    apply(
        &mut sm_a,
        (1..=2500).map(|i| put(2, i, &format!("key-{i:05}"), &"v".repeat(700))).collect(),
    )
    .await;
    let snap = sm_a.build_snapshot().await.unwrap();
    assert_eq!(snap.meta.last_log_id, Some(log_id(2, 2500)));
    // Copy the file as the transport would, then install it on an empty node with some
    // older data in the same shard that must disappear.
    let mut sm_b = b.state_machine(4).unwrap();
    apply(&mut sm_b, vec![put(1, 1, "stale", "x")]).await;
    let incoming = sm_b.incoming_snapshot_path();
    std::fs::copy(&snap.snapshot.path, &incoming).unwrap();
    sm_b.install_snapshot(&snap.meta, ringkv_storage::SnapshotFile { path: incoming })
        .await
        .unwrap();
    let sum_a = a.reader(4).checksum().unwrap();
    let sum_b = b.reader(4).checksum().unwrap();
    assert_eq!(sum_a, sum_b);
    assert_eq!(sum_b.keys, 2500);
    assert!(b.reader(4).get(b"stale").unwrap().is_none());
    let current = sm_b.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta.last_log_id, Some(log_id(2, 2500)));
}

#[tokio::test]
async fn a_damaged_snapshot_is_refused_and_installs_nothing() {
    let a_dir = tempfile::tempdir().unwrap();
    let a = open(a_dir.path());
    let mut sm = a.state_machine(1).unwrap();
    apply(&mut sm, (1..=50).map(|i| put(1, i, &format!("k{i}"), "v")).collect()).await;
    let snap = sm.build_snapshot().await.unwrap();
    let mut bytes = std::fs::read(&snap.snapshot.path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    let b_dir = tempfile::tempdir().unwrap();
    let b = open(b_dir.path());
    let mut sm_b = b.state_machine(1).unwrap();
    apply(&mut sm_b, vec![put(1, 1, "keep", "me")]).await;
    let path = sm_b.incoming_snapshot_path();
    std::fs::write(&path, bytes).unwrap();
    let err =
        sm_b.install_snapshot(&snap.meta, ringkv_storage::SnapshotFile { path }).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    assert_eq!(b.reader(1).get(b"keep").unwrap().unwrap().value, b"me");
}

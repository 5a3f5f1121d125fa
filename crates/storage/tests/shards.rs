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
        payload: EntryPayload::Normal(ringkv_storage::Proposal::from(Command::Put {
            key: key.into(),
            value: value.into(),
        })),
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
    {
        let db = storage.db();
        let cf = db.cf_handle(CF_RAFT_LOG).unwrap();
        let key = keys::log_key(7, 2);
        let mut raw = db.get_cf(cf, key).unwrap().unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 0x40;
        db.put_cf(cf, key, raw).unwrap();
    }
    // The damage is on disk; the entries just written are also in the log's memory cache, so
    // read them the way a restarted node would.
    drop((log, storage));
    let storage = open(dir.path());
    let mut log = storage.log_store(7);
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
            payload: EntryPayload::Normal(ringkv_storage::Proposal::from(Command::Cas {
                key: b"a".to_vec(),
                expected: ringkv_storage::Expected::Version(1),
                new: Some(b"2".to_vec()),
            })),
        },
        Entry {
            log_id: log_id(1, 3),
            payload: EntryPayload::Normal(ringkv_storage::Proposal::from(Command::Cas {
                key: b"a".to_vec(),
                expected: ringkv_storage::Expected::Version(1),
                new: Some(b"3".to_vec()),
            })),
        },
        Entry {
            log_id: log_id(1, 4),
            payload: EntryPayload::Normal(ringkv_storage::Proposal::from(Command::Batch {
                ops: vec![
                    ringkv_storage::BatchOp::Put { key: b"b".to_vec(), value: b"x".to_vec() },
                    ringkv_storage::BatchOp::Delete { key: b"a".to_vec() },
                ],
            })),
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

fn session_put(index: u64, client: u64, seq: u64, key: &str, value: &str) -> Entry {
    Entry {
        log_id: log_id(1, index),
        payload: EntryPayload::Normal(ringkv_storage::Proposal {
            session: Some(ringkv_storage::Session { client_id: client, seq }),
            command: Command::Put { key: key.into(), value: value.into() },
        }),
    }
}

#[tokio::test]
async fn sessions_apply_each_write_at_most_once_and_travel_in_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    let mut sm = storage.state_machine(3).unwrap();
    // Client 7 writes seq 1, then the same seq 1 is retried with another value (a buggy or
    // racing retry): the retry must not apply.
    apply(&mut sm, vec![session_put(1, 7, 1, "k", "first"), session_put(2, 7, 1, "k", "retry")])
        .await;
    let r = storage.reader(3);
    let v = r.get(b"k").unwrap().unwrap();
    assert_eq!((v.value.as_slice(), v.version), (&b"first"[..], 1));
    // seq 2 applies; an old seq 1 arriving late does not.
    apply(&mut sm, vec![session_put(3, 7, 2, "k", "second"), session_put(4, 7, 1, "k", "late")])
        .await;
    let v = r.get(b"k").unwrap().unwrap();
    assert_eq!((v.value.as_slice(), v.version), (&b"second"[..], 3));

    // The session table travels with a snapshot: on the new replica the retry is still a no-op.
    let snap = sm.build_snapshot().await.unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    let b = open(b_dir.path());
    let mut sm_b = b.state_machine(3).unwrap();
    let path = sm_b.incoming_snapshot_path();
    std::fs::copy(&snap.snapshot.path, &path).unwrap();
    sm_b.install_snapshot(&snap.meta, ringkv_storage::SnapshotFile { path }).await.unwrap();
    assert_eq!(storage.reader(3).checksum().unwrap(), b.reader(3).checksum().unwrap());
    apply(&mut sm_b, vec![session_put(5, 7, 2, "k", "retried-after-move")]).await;
    assert_eq!(b.reader(3).get(b"k").unwrap().unwrap().value, b"second");
}

/// A snapshot replaces the session table; records cached from writes before it must not
/// answer retries after it.
#[tokio::test]
async fn a_snapshot_replaces_cached_sessions() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (open(a_dir.path()), open(b_dir.path()));
    let mut sm_a = a.state_machine(0).unwrap();
    apply(&mut sm_a, vec![session_put(1, 7, 1, "k", "a1"), session_put(2, 7, 2, "k", "a2")]).await;
    let snap = sm_a.build_snapshot().await.unwrap();
    // Replica b saw a different history for client 7 (seq 5), now cached.
    let mut sm_b = b.state_machine(0).unwrap();
    apply(&mut sm_b, vec![session_put(1, 7, 5, "k", "b5")]).await;
    let path = sm_b.incoming_snapshot_path();
    std::fs::copy(&snap.snapshot.path, &path).unwrap();
    sm_b.install_snapshot(&snap.meta, ringkv_storage::SnapshotFile { path }).await.unwrap();
    // After the snapshot client 7 is at seq 2: seq 3 is new and applies (a cached seq 5
    // would call it superseded), and seq 2 is a retry that does not.
    apply(&mut sm_b, vec![session_put(3, 7, 3, "k", "b3"), session_put(4, 7, 2, "k", "again")])
        .await;
    let v = b.reader(0).get(b"k").unwrap().unwrap();
    assert_eq!((v.value.as_slice(), v.version), (&b"b3"[..], 3));
}

#[tokio::test]
async fn session_table_is_bounded_and_evicts_the_same_client_everywhere() {
    let a_dir = tempfile::tempdir().unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    let (a, b) = (open(a_dir.path()), open(b_dir.path()));
    let mut sm_a = a.state_machine(0).unwrap().with_session_limit(2);
    let mut sm_b = b.state_machine(0).unwrap().with_session_limit(2);
    // Clients 1, 2, 3 in order; client 1 is the oldest and is forgotten when 3 arrives.
    let entries = || {
        vec![
            session_put(1, 1, 1, "a", "1"),
            session_put(2, 2, 1, "b", "2"),
            session_put(3, 3, 1, "c", "3"),
        ]
    };
    apply(&mut sm_a, entries()).await;
    // Replica b gets the same entries in two apply calls: eviction must not depend on batching.
    let mut e = entries();
    let last = e.split_off(2);
    apply(&mut sm_b, e).await;
    apply(&mut sm_b, last).await;
    assert_eq!(a.reader(0).checksum().unwrap(), b.reader(0).checksum().unwrap());
    // Client 2 is remembered: its retry does nothing. Client 1 was forgotten: its retry applies
    // again (the documented cost of the bound).
    apply(&mut sm_a, vec![session_put(4, 2, 1, "b", "again"), session_put(5, 1, 1, "a", "again")])
        .await;
    assert_eq!(a.reader(0).get(b"b").unwrap().unwrap().value, b"2");
    assert_eq!(a.reader(0).get(b"a").unwrap().unwrap().value, b"again");
}

mod batching_does_not_matter {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// Replicas cut the same log into different apply batches; their state, session
        /// table included, must come out identical.
        #[test]
        fn same_entries_any_batching_same_state(
            writes in proptest::collection::vec((1u64..6, 0u64..3, 0u8..4), 1..40),
            cuts in proptest::collection::vec(any::<bool>(), 40),
            age_shift in 0u32..4,
        ) {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                let mut next_seq = [0u64; 6];
                let entries: Vec<Entry> = writes.iter().enumerate().map(|(i, &(client, retry, key))| {
                    // Mostly new writes, sometimes a retry of an earlier sequence number.
                    let seq = if retry == 0 && next_seq[client as usize] > 0 { next_seq[client as usize] } else {
                        next_seq[client as usize] += 1;
                        next_seq[client as usize]
                    };
                    session_put(i as u64 + 1, client, seq, &format!("k{key}"), &format!("v{i}"))
                }).collect();
                let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
                let (a, b) = (open(a_dir.path()), open(b_dir.path()));
                // Age buckets of 1 to 8 entries: clients share buckets and move between them.
                let sm = |s: &NodeStorage| {
                    s.state_machine(0).unwrap().with_session_limit(3).with_session_age_shift(age_shift)
                };
                let (mut sm_a, mut sm_b) = (sm(&a), sm(&b));
                apply(&mut sm_a, entries.clone()).await;
                let mut batch = Vec::new();
                for (i, e) in entries.into_iter().enumerate() {
                    batch.push(e);
                    if cuts[i] {
                        apply(&mut sm_b, std::mem::take(&mut batch)).await;
                    }
                }
                if !batch.is_empty() {
                    apply(&mut sm_b, batch).await;
                }
                assert_eq!(a.reader(0).checksum().unwrap(), b.reader(0).checksum().unwrap());
                // Replica b again from its disk alone (no cached sessions): a retry of every
                // client's last write must be answered the same as on replica a.
                drop(sm_b);
                drop(b);
                let b = open(b_dir.path());
                let mut sm_b = sm(&b);
                let retries: Vec<Entry> = (1u64..6).enumerate().map(|(i, client)| {
                    let index = writes.len() as u64 + 1 + i as u64;
                    session_put(index, client, next_seq[client as usize].max(1), "retry", &format!("c{client}"))
                }).collect();
                apply(&mut sm_a, retries.clone()).await;
                apply(&mut sm_b, retries).await;
                assert_eq!(a.reader(0).checksum().unwrap(), b.reader(0).checksum().unwrap());
            });
        }
    }
}

/// The committed hint reaches the disk with the next append, never on its own: every handle
/// sees the newest at once, a restart finds the last one an append carried.
#[tokio::test]
async fn the_committed_hint_is_written_with_the_next_append() {
    let dir = tempfile::tempdir().unwrap();
    {
        let storage = open(dir.path());
        let mut log = storage.log_store(2);
        append(&mut log, (1..=3).map(|i| put(1, i, "k", "v")).collect()).await;
        log.save_committed(Some(log_id(1, 2))).await.unwrap();
        assert_eq!(storage.log_store(2).read_committed().await.unwrap(), Some(log_id(1, 2)));
        append(&mut log, vec![put(1, 4, "k", "v")]).await;
        // No append follows this one: it stays in memory.
        log.save_committed(Some(log_id(1, 4))).await.unwrap();
        assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 4)));
    }
    let storage = open(dir.path());
    assert_eq!(storage.log_store(2).read_committed().await.unwrap(), Some(log_id(1, 2)));
    assert_eq!(storage.log_store(1).read_committed().await.unwrap(), None, "other shards");
}

/// The entry cache follows truncations and purges, and every handle of a shard sees the same
/// log: changes made through one handle are seen through the other, and every read equals
/// what the disk gives after a restart (empty cache).
#[tokio::test]
async fn log_reads_match_the_disk_through_truncation_and_purge() {
    let dir = tempfile::tempdir().unwrap();
    let terms = |v: &[Entry]| v.iter().map(|e| e.log_id.leader_id.term).collect::<Vec<_>>();
    let seen = {
        let storage = open(dir.path());
        let mut log = storage.log_store(3);
        let mut other = storage.log_store(3);
        append(&mut log, (1..=5).map(|i| put(1, i, "k", "v")).collect()).await;
        assert_eq!(terms(&other.try_get_log_entries(1..6).await.unwrap()), [1, 1, 1, 1, 1]);
        // A new leader overwrites 3..: truncated through one handle, read through the other.
        other.truncate_after(Some(log_id(1, 2))).await.unwrap();
        assert_eq!(log.try_get_log_entries(1..6).await.unwrap().len(), 2);
        append(&mut log, (3..=4).map(|i| put(2, i, "k", "w")).collect()).await;
        assert_eq!(terms(&other.try_get_log_entries(1..5).await.unwrap()), [1, 1, 2, 2]);
        other.purge(log_id(1, 2)).await.unwrap();
        assert!(log.try_get_log_entries(1..3).await.unwrap().is_empty(), "purged");
        log.try_get_log_entries(3..5).await.unwrap()
    };
    assert_eq!(terms(&seen), [2, 2]);
    // The same read after a restart comes from RocksDB alone: whole entries must match.
    let storage = open(dir.path());
    let mut log = storage.log_store(3);
    assert_eq!(log.try_get_log_entries(3..5).await.unwrap(), seen);
}

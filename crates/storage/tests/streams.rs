//! Event-stream commands applied through the real state machine on RocksDB: idempotent
//! producers, retention trims, consumer offsets, the KV change history and its compaction;
//! any batching of the same log gives the same bytes; snapshots carry all of it.

use futures::StreamExt;
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, RaftSnapshotBuilder};
use ringkv_storage::stream_reader::KeyFilter;
use ringkv_storage::streams::{EventData, Retention, StreamCommand, TopicConfig};
use ringkv_storage::type_config::{Entry, LogId};
use ringkv_storage::{Command, NodeStorage, Proposal, StorageMetrics};

fn log_id(index: u64) -> LogId {
    LogId::new(openraft::impls::leader_id_adv::LeaderId { term: 1, node_id: 1 }, index)
}

fn entry(index: u64, command: Command) -> Entry {
    Entry { log_id: log_id(index), payload: EntryPayload::Normal(Proposal::from(command)) }
}

fn stream(index: u64, cmd: StreamCommand) -> Entry {
    entry(index, Command::Stream(cmd))
}

fn config() -> TopicConfig {
    TopicConfig { partitions: 2, retention: Retention::default() }
}

fn events(n: usize, tag: &str) -> Vec<EventData> {
    (0..n)
        .map(|i| EventData {
            key: vec![],
            payload: format!("{tag}{i}").into_bytes(),
            headers: vec![],
        })
        .collect()
}

fn append(index: u64, producer: Option<(u64, u64)>, n: usize, tag: &str) -> Entry {
    stream(
        index,
        StreamCommand::Append {
            topic: "t".into(),
            partition: 0,
            topic_id: 0,
            producer,
            timestamp_ms: 1000 + index,
            events: events(n, tag),
        },
    )
}

async fn apply(sm: &mut ringkv_storage::ShardStateMachine, entries: Vec<Entry>) {
    let stream = futures::stream::iter(entries.into_iter().map(|e| Ok((e, None))));
    sm.apply(stream.boxed()).await.unwrap();
}

fn open(dir: &std::path::Path) -> NodeStorage {
    NodeStorage::open(dir, StorageMetrics::default()).unwrap()
}

/// The log every test below applies: a partition, producer retries (same batch, an older
/// batch, a gap), a trim, commits, key writes, and a change-history compaction.
fn scenario() -> Vec<Entry> {
    let create = StreamCommand::CreatePartition {
        topic: "t".into(),
        partition: 0,
        topic_id: 1,
        config: config(),
    };
    vec![
        stream(1, create.clone()),
        append(2, Some((7, 0)), 3, "a"), // offsets 0..3, producer 7 seq 0..2
        append(3, Some((7, 0)), 3, "a"), // retry of the same batch: duplicate, nothing stored
        append(4, Some((7, 3)), 2, "b"), // offsets 3..5
        append(5, Some((7, 1)), 1, "x"), // older than the last batch: refused
        append(6, Some((7, 9)), 1, "y"), // a gap: refused
        append(7, None, 2, "c"),         // offsets 5..7
        stream(8, create),               // creating again changes nothing
        stream(9, StreamCommand::Trim { topic: "t".into(), partition: 0, before_offset: 2 }),
        stream(
            10,
            StreamCommand::CommitOffset {
                topic: "t".into(),
                partition: 0,
                group: "g".into(),
                offset: 4,
            },
        ),
        stream(
            11,
            StreamCommand::CommitOffset {
                topic: "t".into(),
                partition: 0,
                group: "g".into(),
                offset: 99,
            },
        ),
        entry(12, Command::Put { key: b"k1".to_vec(), value: b"v1".to_vec() }),
        entry(13, Command::Delete { key: b"k1".to_vec() }),
        entry(14, Command::Put { key: b"k2".to_vec(), value: b"v2".to_vec() }),
        stream(15, StreamCommand::CompactChanges { below_revision: 13 }),
    ]
}

#[tokio::test]
async fn producers_trims_offsets_and_history_apply_as_specified() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    let mut sm = storage.state_machine(3).unwrap();
    apply(&mut sm, scenario()).await;
    let r = storage.reader(3);
    let p = r.partition("t", 0).unwrap().expect("partition exists");
    assert_eq!((p.start_offset, p.next_offset), (2, 7), "{p:?}");
    assert_eq!(p.producers, 1);
    // Bytes kept: events 2..7 = "a2" "b0" "b1" "c0" "c1" = 10 bytes.
    assert_eq!(p.bytes(), 10);
    let got: Vec<(u64, String)> = r
        .events("t", 0, 0, 100, u64::MAX)
        .unwrap()
        .into_iter()
        .map(|(o, e)| (o, String::from_utf8(e.event.payload).unwrap()))
        .collect();
    let want: Vec<(u64, String)> = [(2, "a2"), (3, "b0"), (4, "b1"), (5, "c0"), (6, "c1")]
        .iter()
        .map(|(o, s)| (*o, s.to_string()))
        .collect();
    assert_eq!(got, want, "a retried batch is stored once; refused ones not at all");
    assert_eq!(r.event("t", 0, 2).unwrap().unwrap().timestamp_ms, 1002);
    // A commit beyond the end is refused; the earlier one stands.
    assert_eq!(r.group_offset("t", 0, "g").unwrap(), Some(4));
    assert_eq!(r.group_offset("t", 0, "other").unwrap(), None);
    // History below revision 13 is gone; 13 and 14 remain.
    assert_eq!(r.first_revision().unwrap(), 13);
    let page = r.changes(1, 15, KeyFilter::Prefix(b"k"), 100).unwrap();
    let revs: Vec<(u64, Option<Vec<u8>>)> =
        page.changes.into_iter().map(|(rev, c)| (rev, c.value)).collect();
    assert_eq!(revs, vec![(13, None), (14, Some(b"v2".to_vec()))]);
    assert_eq!(page.scanned_to, 15);
    let exact = r.changes(13, 15, KeyFilter::Exact(b"k2"), 100).unwrap();
    assert_eq!(exact.changes.len(), 1);
}

#[tokio::test]
async fn any_batching_gives_the_same_bytes_and_snapshots_carry_streams() {
    let (a_dir, b_dir, c_dir) =
        (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b, c) = (open(a_dir.path()), open(b_dir.path()), open(c_dir.path()));
    let mut sm_a = a.state_machine(1).unwrap();
    let mut sm_b = b.state_machine(1).unwrap();
    apply(&mut sm_a, scenario()).await;
    for e in scenario() {
        apply(&mut sm_b, vec![e]).await;
    }
    let sum_a = a.reader(1).checksum().unwrap();
    assert_eq!(sum_a, b.reader(1).checksum().unwrap());

    let snap = sm_a.build_snapshot().await.unwrap();
    let mut sm_c = c.state_machine(1).unwrap();
    // Older stream data on the receiver must disappear with the install.
    apply(
        &mut sm_c,
        vec![stream(
            1,
            StreamCommand::CreatePartition {
                topic: "old".into(),
                partition: 0,
                topic_id: 1,
                config: config(),
            },
        )],
    )
    .await;
    let incoming = sm_c.incoming_snapshot_path();
    std::fs::copy(&snap.snapshot.path, &incoming).unwrap();
    sm_c.install_snapshot(&snap.meta, ringkv_storage::SnapshotFile { path: incoming })
        .await
        .unwrap();
    assert_eq!(c.reader(1).checksum().unwrap(), sum_a);
    assert!(c.reader(1).partition("old", 0).unwrap().is_none());
    assert_eq!(c.reader(1).partition("t", 0).unwrap().unwrap().next_offset, 7);
}

#[tokio::test]
async fn dropping_and_recreating_a_partition_replaces_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    let mut sm = storage.state_machine(0).unwrap();
    let mut log = scenario();
    let next = log.len() as u64 + 1;
    log.push(stream(
        next,
        StreamCommand::CreatePartition {
            topic: "t".into(),
            partition: 0,
            topic_id: 5,
            config: config(),
        },
    ));
    // An append for the old incarnation is refused; one for any incarnation lands at 0.
    log.push(stream(
        next + 1,
        StreamCommand::Append {
            topic: "t".into(),
            partition: 0,
            topic_id: 1,
            producer: None,
            timestamp_ms: 0,
            events: events(1, "old"),
        },
    ));
    log.push(append(next + 2, Some((7, 0)), 1, "new"));
    apply(&mut sm, log).await;
    let r = storage.reader(0);
    let p = r.partition("t", 0).unwrap().unwrap();
    assert_eq!((p.topic_id, p.start_offset, p.next_offset, p.groups, p.producers), (5, 0, 1, 0, 1));
    assert_eq!(r.events("t", 0, 0, 10, u64::MAX).unwrap()[0].1.event.payload, b"new0");
    assert_eq!(
        r.group_offset("t", 0, "g").unwrap(),
        None,
        "offsets of the old incarnation are gone"
    );
}

//! Micro-benchmarks (divan): key → shard lookup, log append + apply through the storage
//! engine, and proto encode/decode. `cargo bench -p ringkv-bench --bench micro` runs them;
//! CI builds them with `--all-targets` so they cannot rot.

use divan::Bencher;
use futures::StreamExt;
use openraft::EntryPayload;
use openraft::storage::{IOFlushed, RaftLogStorage, RaftStateMachine};
use openraft::type_config::TypeConfigExt;
use prost::Message;
use ringkv_placement::{Layout, NodeSpec, ShardMap};
use ringkv_proto::v1::PutRequest;
use ringkv_storage::type_config::{Entry, LogId};
use ringkv_storage::{Command, NodeStorage, StorageMetrics, TypeConfig};

fn main() {
    divan::main();
}

#[divan::bench(args = [8, 64, 1024])]
fn shard_of(bencher: Bencher, shards: u32) {
    let nodes = (1..=5).map(|id| NodeSpec { id, addr: format!("n{id}"), weight: 1 }).collect();
    let layout = Layout { shard_count: shards, replication_factor: 3, vnodes_per_shard: 256 };
    let map = ShardMap::new(layout, nodes, 1).expect("valid layout");
    let keys: Vec<Vec<u8>> = (0..1024).map(|i| format!("user{i:020}").into_bytes()).collect();
    let mut i = 0;
    bencher.bench_local(|| {
        i = (i + 1) % keys.len();
        map.shard_of(divan::black_box(&keys[i]))
    });
}

#[divan::bench]
fn put_request_encode_decode(bencher: Bencher) {
    let req =
        PutRequest { key: vec![b'k'; 24].into(), value: vec![b'v'; 256].into(), session: None };
    bencher.bench_local(|| {
        let bytes = divan::black_box(&req).encode_to_vec();
        PutRequest::decode(bytes.as_slice()).expect("round trip")
    });
}

fn entry(index: u64) -> Entry {
    Entry {
        log_id: LogId::new(openraft::impls::leader_id_adv::LeaderId { term: 1, node_id: 1 }, index),
        payload: EntryPayload::Normal(ringkv_storage::Proposal::from(Command::Put {
            key: format!("user{index:020}").into(),
            value: vec![b'v'; 256],
        })),
    }
}

/// 64 entries appended (fsynced, as every acknowledged write is) and applied.
#[divan::bench(sample_count = 20, sample_size = 1)]
fn log_append_and_apply_64(bencher: Bencher) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let storage = NodeStorage::open(dir.path(), StorageMetrics::default()).expect("open storage");
    let mut log = storage.log_store(1);
    let mut sm = storage.state_machine(1).expect("state machine");
    let mut next = 1u64;
    bencher.bench_local(|| {
        let entries: Vec<Entry> = (next..next + 64).map(entry).collect();
        next += 64;
        rt.block_on(async {
            let (tx, rx) = TypeConfig::oneshot();
            log.append(entries.clone(), IOFlushed::signal(tx)).await.expect("append");
            rx.await.expect("flushed").expect("flush ok");
            let stream = futures::stream::iter(entries.into_iter().map(|e| Ok((e, None))));
            sm.apply(stream.boxed()).await.expect("apply");
        });
    });
}

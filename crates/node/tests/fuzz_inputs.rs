//! Every decoder of bytes a node receives from the network, fed arbitrary bytes and mutated
//! valid messages: the Raft payloads peers send (postcard inside the internal gRPC service)
//! and the client requests (protobuf) with the checks that turn them into commands. Each
//! answers with a value or an error, never a panic, and never allocates without bound: this
//! binary's allocator is capped, so an allocation sized by a hostile length prefix aborts it.
//!
//! Storage's own decoders (log entries, records, snapshot files, the CRC framing) have the
//! same properties in `crates/storage/tests/fuzz_decoders.rs`; the transport itself (garbage,
//! truncated HTTP/2, oversized messages on every port) in `tests/tests/hostile_input.rs`.

use cap::Cap;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, TransferLeaderRequest, VoteRequest, VoteResponse,
};
use proptest::prelude::*;
use prost::Message;
use ringkv_node::{validate, validate_events, wire};
use ringkv_proto::v1::*;
use ringkv_storage::TypeConfig;
use ringkv_storage::type_config::{Entry, LogId, SnapshotMeta, Vote};
use std::alloc::System;

/// Far above what decoding a few KiB needs, far below what a hostile prefix would ask for.
const ALLOCATION_CAP_BYTES: usize = 256 << 20;

#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, ALLOCATION_CAP_BYTES);

/// Decodes `raw` as every Raft payload a peer can send; returns how many decoded.
fn decode_raft(raw: &[u8]) -> usize {
    [
        wire::decode::<AppendEntriesRequest<TypeConfig>>(raw).is_ok(),
        wire::decode::<AppendEntriesResponse<TypeConfig>>(raw).is_ok(),
        wire::decode::<VoteRequest<TypeConfig>>(raw).is_ok(),
        wire::decode::<VoteResponse<TypeConfig>>(raw).is_ok(),
        wire::decode::<TransferLeaderRequest<TypeConfig>>(raw).is_ok(),
        wire::decode::<(Vote, SnapshotMeta)>(raw).is_ok(),
    ]
    .into_iter()
    .filter(|ok| *ok)
    .count()
}

/// Decodes `raw` as every client request and, where it decodes, runs the checks the handlers
/// run before anything is proposed or read. Returns how many decoded.
fn decode_requests(raw: &[u8]) -> usize {
    let mut decoded = 0;
    if let Ok(r) = PutRequest::decode(raw) {
        decoded += 1;
        let _ = validate::key(&r.key).and(validate::value(&r.value));
        let _ = validate::session(r.session.as_ref());
    }
    if let Ok(r) = GetRequest::decode(raw) {
        decoded += 1;
        let _ = validate::key(&r.key).and(validate::consistency(r.consistency).map(|_| ()));
    }
    if let Ok(r) = CompareAndSwapRequest::decode(raw) {
        decoded += 1;
        let _ = validate::key(&r.key);
    }
    if let Ok(r) = ScanRequest::decode(raw) {
        decoded += 1;
        let _ = validate::scan_limit(r.limit).and(validate::consistency(r.consistency));
    }
    if let Ok(r) = BatchWriteRequest::decode(raw) {
        decoded += 1;
        let bytes = r.encoded_len();
        let _ = validate::batch(r.ops.len(), bytes);
        for op in &r.ops {
            match &op.op {
                Some(write_op::Op::Put(p)) => {
                    let _ = validate::key(&p.key).and(validate::value(&p.value));
                }
                Some(write_op::Op::Delete(d)) => {
                    let _ = validate::key(&d.key);
                }
                None => {}
            }
        }
    }
    if let Ok(r) = MultiGetRequest::decode(raw) {
        decoded += 1;
        for k in &r.keys {
            let _ = validate::key(k);
        }
    }
    if let Ok(r) = CreateTopicRequest::decode(raw) {
        decoded += 1;
        let _ = validate_events::topic(&r.name);
        let _ = validate_events::config(r.config.as_ref());
    }
    if let Ok(r) = AppendRequest::decode(raw) {
        decoded += 1;
        let _ = validate_events::topic(&r.topic);
        let _ = validate_events::events(r.events);
    }
    if let Ok(r) = ReadRequest::decode(raw) {
        decoded += 1;
        let _ = validate_events::read_limits(r.max_events, r.max_bytes);
    }
    if let Ok(r) = CommitOffsetRequest::decode(raw) {
        decoded += 1;
        let _ = validate_events::group(&r.group).and(validate_events::topic(&r.topic));
    }
    decoded += usize::from(ringkv_proto::internal::RaftRequest::decode(raw).is_ok());
    decoded
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(openraft::impls::leader_id_adv::LeaderId { term, node_id: 1 }, index)
}

/// Valid peer payloads: an AppendEntries with entries, and a vote request.
fn valid_payloads() -> Vec<Vec<u8>> {
    let entries = (1..4u64)
        .map(|i| Entry {
            log_id: log_id(2, i),
            payload: openraft::EntryPayload::Normal(ringkv_storage::Proposal::from(
                ringkv_storage::Command::Put { key: vec![b'k'; 8], value: vec![i as u8; 50] },
            )),
        })
        .collect();
    let append = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new(2, 1),
        prev_log_id: Some(log_id(2, 0)),
        entries,
        leader_commit: Some(log_id(2, 2)),
    };
    let vote = VoteRequest::<TypeConfig> {
        vote: Vote::new(3, 2),
        last_log_id: Some(log_id(2, 3)),
        leadership_transfer: false,
    };
    vec![wire::encode(&append).unwrap(), wire::encode(&vote).unwrap()]
}

/// Valid client requests of the main kinds.
fn valid_requests() -> Vec<Vec<u8>> {
    let put = |k: &str| PutRequest {
        key: k.as_bytes().to_vec().into(),
        value: vec![1; 20].into(),
        session: Some(WriteSession { client_id: 5, sequence: 9 }),
    };
    vec![
        put("key").encode_to_vec(),
        BatchWriteRequest {
            ops: vec![
                WriteOp { op: Some(write_op::Op::Put(put("a"))) },
                WriteOp { op: Some(write_op::Op::Put(put("b"))) },
            ],
            session: None,
        }
        .encode_to_vec(),
        AppendRequest {
            topic: "orders".into(),
            events: vec![Event {
                key: b"user-1".to_vec().into(),
                payload: vec![3; 40].into(),
                ..Event::default()
            }],
            ..AppendRequest::default()
        }
        .encode_to_vec(),
    ]
}

fn mutate(bytes: &mut Vec<u8>, edits: &[(usize, u8, u8)]) {
    for &(at, kind, byte) in edits {
        if bytes.is_empty() {
            return;
        }
        let n = bytes.len();
        match kind % 4 {
            0 => bytes[at % n] ^= 1 << (byte % 8),
            1 => bytes[at % n] = byte,
            2 => bytes.insert(at % (n + 1), byte),
            _ => bytes.truncate(at % n),
        }
    }
}

/// The cap is real: an allocation over it fails (here recoverably, through `try_reserve`;
/// inside a decoder it would abort the test).
#[test]
fn the_allocator_cap_is_enforced() {
    let mut v: Vec<u8> = Vec::new();
    assert!(v.try_reserve(ALLOCATION_CAP_BYTES + 1).is_err());
    assert!(v.try_reserve(1 << 20).is_ok());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_from_a_peer_decode_or_fail(raw in prop::collection::vec(any::<u8>(), 0..4096)) {
        decode_raft(&raw);
    }

    #[test]
    fn arbitrary_bytes_from_a_client_decode_or_fail(raw in prop::collection::vec(any::<u8>(), 0..4096)) {
        decode_requests(&raw);
    }

    /// Valid messages with flipped, overwritten, inserted and cut bytes.
    #[test]
    fn mutated_messages_decode_or_fail(
        which in 0usize..5,
        edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..6),
    ) {
        let mut all = valid_payloads();
        all.extend(valid_requests());
        let mut raw = all.swap_remove(which);
        mutate(&mut raw, &edits);
        decode_raft(&raw);
        decode_requests(&raw);
    }
}

#[test]
fn the_valid_messages_decode() {
    // The mutation property starts from these: they must be valid, or it tests nothing.
    for p in valid_payloads() {
        assert!(decode_raft(&p) >= 1);
    }
    for r in valid_requests() {
        assert!(decode_requests(&r) >= 1);
    }
}

#[test]
fn hostile_length_prefixes_are_refused_without_allocating_them() {
    // A postcard sequence length of u64::MAX: refused (the capped allocator proves it was not
    // allocated), as is a payload over the wire limit, before any decoding.
    let mut huge = vec![0xff; 9];
    huge.push(0x01);
    assert_eq!(decode_raft(&huge), 0);
    let over = vec![0u8; wire::PAYLOAD_BYTES_MAX + 1];
    let e = wire::decode::<VoteRequest<TypeConfig>>(&over).expect_err("over the limit");
    assert!(e.contains("exceeds"), "{e}");
    // A protobuf length-delimited field claiming 2 GiB in a 6-byte message.
    let claim = [0x0a, 0xff, 0xff, 0xff, 0xff, 0x07];
    assert!(PutRequest::decode(&claim[..]).is_err());
}

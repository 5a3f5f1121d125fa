//! Every decoder of bytes that storage reads back from disk (or receives as a snapshot), fed
//! arbitrary bytes and mutated valid records: each answers with a value or an error, never a
//! panic, and never allocates without bound.
//!
//! The bound is enforced, not hoped for: this test binary's allocator is capped
//! ([`ALLOCATION_CAP_BYTES`]), so a decoder that sized an allocation from a corrupt length
//! prefix (gigabytes from a few bytes) would abort the test process. Inputs here are at most a
//! few KiB, and serde's collection visitors pre-allocate at most ~1 MiB whatever a prefix says.
//!
//! Arbitrary payloads are framed with a *valid* CRC, so the payload decoder itself, not the
//! checksum in front of it, faces the garbage (a real disk would need a matching CRC to get
//! garbage past the frame; a bug in the writer would not). Raw mutations keep their stale CRC
//! and must be caught by it. Case counts fit CI (`PROPTEST_CASES` raises them).

use cap::Cap;
use openraft::EntryPayload;
use proptest::prelude::*;
use ringkv_storage::codec;
use ringkv_storage::sessions::SessionRecord;
use ringkv_storage::snapshot::{Frame, SnapshotReader, SnapshotWriter};
use ringkv_storage::streams::{
    ChangeRecord, EventData, EventRecord, PartitionRecord, ProducerRecord, TopicRecord,
};
use ringkv_storage::type_config::{Entry, LogId, SnapshotMeta, StoredMembership, Vote};
use ringkv_storage::{BatchOp, Command, CommandResult, Proposal, Session};
use std::alloc::System;

/// Far above what decoding a few KiB legitimately needs, far below what a corrupt length
/// prefix would ask for.
const ALLOCATION_CAP_BYTES: usize = 256 << 20;

#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, ALLOCATION_CAP_BYTES);

/// `payload` as a stored record with a correct header and CRC.
fn framed(payload: &[u8]) -> Vec<u8> {
    let mut out = vec![1u8];
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Decodes `raw` as every record type storage reads back; returns how many decoded.
fn decode_all(raw: &[u8]) -> usize {
    [
        codec::decode::<Entry>(raw).is_ok(),
        codec::decode::<Vote>(raw).is_ok(),
        codec::decode::<LogId>(raw).is_ok(),
        codec::decode::<StoredMembership>(raw).is_ok(),
        codec::decode::<SessionRecord>(raw).is_ok(),
        codec::decode::<TopicRecord>(raw).is_ok(),
        codec::decode::<PartitionRecord>(raw).is_ok(),
        codec::decode::<EventRecord>(raw).is_ok(),
        codec::decode::<ProducerRecord>(raw).is_ok(),
        codec::decode::<ChangeRecord>(raw).is_ok(),
        codec::decode::<Frame>(raw).is_ok(),
        codec::decode::<Proposal>(raw).is_ok(),
    ]
    .into_iter()
    .filter(|ok| *ok)
    .count()
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(openraft::impls::leader_id_adv::LeaderId { term, node_id: 1 }, index)
}

/// Valid records of the main kinds, as stored.
fn valid_records() -> Vec<Vec<u8>> {
    let session = Some(Session { client_id: 7, seq: 3 });
    let batch = Command::Batch {
        ops: vec![
            BatchOp::Put { key: b"k1".to_vec(), value: vec![1; 40] },
            BatchOp::Delete { key: b"k2".to_vec() },
        ],
    };
    let entry = |command| Entry {
        log_id: log_id(2, 9),
        payload: EntryPayload::Normal(Proposal { session, command }),
    };
    let event = EventRecord {
        pos: 4096,
        timestamp_ms: 1_700_000_000_000,
        event: EventData {
            key: b"user-1".to_vec(),
            payload: vec![9; 64],
            headers: vec![("trace".into(), b"abc".to_vec())],
        },
    };
    vec![
        codec::encode(&entry(Command::Put { key: b"key".to_vec(), value: vec![7; 100] })).unwrap(),
        codec::encode(&entry(batch)).unwrap(),
        codec::encode(&SessionRecord {
            last_seq: 3,
            last_index: 9,
            result: CommandResult::Put { version: 9 },
        })
        .unwrap(),
        codec::encode(&event).unwrap(),
        codec::encode(&ChangeRecord { key: b"k".to_vec(), value: Some(b"v".to_vec()) }).unwrap(),
        codec::encode(&log_id(3, 44)).unwrap(),
    ]
}

/// One mutation of a byte string: flip, overwrite, insert, delete or truncate.
#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, bit: u8 },
    Set { at: usize, byte: u8 },
    Insert { at: usize, bytes: Vec<u8> },
    Delete { at: usize, len: usize },
    Truncate { at: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (any::<usize>(), 1usize..16).prop_map(|(at, len)| Mutation::Delete { at, len }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    let n = bytes.len();
    match m {
        Mutation::Flip { at, bit } => bytes[at % n] ^= 1 << bit,
        Mutation::Set { at, byte } => bytes[at % n] = *byte,
        Mutation::Insert { at, bytes: b } => {
            let at = at % (n + 1);
            bytes.splice(at..at, b.iter().copied());
        }
        Mutation::Delete { at, len } => {
            let at = at % n;
            bytes.drain(at..(at + len).min(n));
        }
        Mutation::Truncate { at } => bytes.truncate(at % n),
    }
}

/// Reads a snapshot file to its end; Ok only if every frame and the end frame check out.
fn read_snapshot(path: &std::path::Path) -> std::io::Result<u64> {
    let (mut r, _shard, _meta) = SnapshotReader::open(path)?;
    let mut items = 0u64;
    while let Some(chunk) = r.next_chunk()? {
        items += match chunk {
            ringkv_storage::snapshot::Chunk::Kvs(v) => v.len() as u64,
            ringkv_storage::snapshot::Chunk::Sessions(v) => v.len() as u64,
            ringkv_storage::snapshot::Chunk::Streams(v) => v.len() as u64,
        };
    }
    Ok(items)
}

fn valid_snapshot(dir: &std::path::Path) -> Vec<u8> {
    let path = dir.join("valid.snap");
    let meta = SnapshotMeta { last_log_id: Some(log_id(2, 50)), ..SnapshotMeta::default() };
    let mut w = SnapshotWriter::create(&path, 3, &meta).unwrap();
    for i in 0..20u8 {
        w.push(vec![b'k', i], u64::from(i) + 1, vec![i; 30]).unwrap();
    }
    let session = SessionRecord {
        last_seq: 1,
        last_index: 5,
        result: CommandResult::Delete { deleted: true },
    };
    w.push_session(11, session).unwrap();
    w.push_stream(b"p/t/0".to_vec(), vec![5; 20]).unwrap();
    w.finish().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(read_snapshot(&path).unwrap(), 22, "the unmutated snapshot reads back whole");
    bytes
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

    /// Arbitrary payloads behind a valid CRC: every decoder answers, none panics.
    #[test]
    fn arbitrary_payloads_decode_or_fail(payload in prop::collection::vec(any::<u8>(), 0..4096)) {
        decode_all(&framed(&payload));
    }

    /// Arbitrary bytes where a record is expected (any header): only a valid header and CRC
    /// get through to a decoder.
    #[test]
    fn arbitrary_records_are_refused_by_the_frame(raw in prop::collection::vec(any::<u8>(), 0..512)) {
        let valid_frame = raw.len() >= 5
            && raw[0] == 1
            && u32::from_le_bytes([raw[1], raw[2], raw[3], raw[4]]) == crc32fast::hash(&raw[5..]);
        prop_assert!(valid_frame || decode_all(&raw) == 0);
    }

    /// Valid records, mutated: with their stale CRC every mutation is caught; re-framed with a
    /// fresh CRC, the decoders face the damage themselves and still only answer or refuse.
    #[test]
    fn mutated_records_are_caught_or_decoded_safely(
        which in 0usize..6,
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let original = valid_records().swap_remove(which);
        let mut damaged = original.clone();
        for m in &mutations {
            apply(&mut damaged, m);
        }
        if damaged != original {
            prop_assert_eq!(decode_all(&damaged), 0, "a damaged record decoded");
        }
        if damaged.len() > 5 {
            decode_all(&framed(&damaged[5..]));
        }
    }

}

proptest! {
    // A file per case: fewer cases than the in-memory properties.
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// A snapshot file with any damage is refused as a whole (never read as a shorter or
    /// different snapshot), and reading it never panics.
    #[test]
    fn damaged_snapshots_are_refused(mutations in prop::collection::vec(mutation(), 1..3)) {
        let dir = tempfile::tempdir().unwrap();
        let original = valid_snapshot(dir.path());
        let mut damaged = original.clone();
        for m in &mutations {
            apply(&mut damaged, m);
        }
        let path = dir.path().join("damaged.snap");
        std::fs::write(&path, &damaged).unwrap();
        let read = read_snapshot(&path);
        if damaged != original {
            prop_assert!(read.is_err(), "a damaged snapshot read as {read:?}");
        }
    }
}

#[test]
fn a_huge_length_prefix_is_refused_without_allocating_it() {
    // A frame length of 4 GiB in a snapshot file, and a postcard length prefix of u64::MAX
    // inside a valid CRC: both must be refused, and the capped allocator proves neither was
    // allocated (the test would abort).
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = valid_snapshot(dir.path());
    bytes[..4].copy_from_slice(&u32::MAX.to_le_bytes());
    let path = dir.path().join("huge.snap");
    std::fs::write(&path, &bytes).unwrap();
    let e = read_snapshot(&path).expect_err("a 4 GiB frame");
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");

    let mut varint_max = vec![0xff; 9];
    varint_max.push(0x01);
    assert!(codec::decode::<Vec<u8>>(&framed(&varint_max)).is_err());
    assert!(codec::decode::<ChangeRecord>(&framed(&varint_max)).is_err());
}

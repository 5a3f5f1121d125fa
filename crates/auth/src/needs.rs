//! The one table of what each client RPC needs, shared by the router and the node so the two
//! cannot disagree. Health and reflection need nothing; the peer services (Raft, membership)
//! are for node certificates only and are not in this table.
//!
//! | RPCs | needs |
//! |---|---|
//! | Put, Delete, BatchWrite (every key) | write on the key |
//! | CompareAndSwap | readwrite on the key (a failed swap returns the current value) |
//! | Get, MultiGet (every key) | read on the key |
//! | Scan, Watch with `prefix` | read on the whole range, within one granted prefix |
//! | Watch of one key | read on the key |
//! | Append | write on the topic |
//! | Read, Subscribe, CommitOffset, FetchOffset | read on the topic (consumers commit their offsets) |
//! | DescribeTopic, GetPartition, GetTopics of a name | any grant on the topic (a producer looks its topic up too) |
//! | ListTopics, GetTopics of all | a known caller; the answer lists only topics it has a grant on |
//! | CreateTopic, DeleteTopic, PutTopic, RemoveTopic, CreatePartition, DropPartition | admin on the topic |
//! | GetShardMap, NodeStatus, ListNodes | a known caller (routing needs them; no data) |
//! | ShardChecksum, TransferLeader, TriggerSnapshot, DrainNode, RemoveNode, ActivateNode, SetNodeWeight | admin on the cluster |

use crate::error::AuthError;
use crate::grant::{Access, Need, prefix_end};
use ringkv_proto::v1::*;

/// A request type and what it needs: `needs` calls `check` once per resource it touches and
/// stops at the first refusal.
pub trait Guarded {
    /// The RPC's name, for refusals.
    const RPC: &'static str;
    fn needs(
        &self,
        check: &mut dyn FnMut(Need<'_>) -> Result<(), AuthError>,
    ) -> Result<(), AuthError>;
}

type Check<'c> = &'c mut dyn FnMut(Need<'_>) -> Result<(), AuthError>;

macro_rules! guarded {
    ($ty:ty, $rpc:literal, |$req:ident, $check:ident| $body:expr) => {
        impl Guarded for $ty {
            const RPC: &'static str = $rpc;
            fn needs(&self, $check: Check<'_>) -> Result<(), AuthError> {
                let $req = self;
                $body
            }
        }
    };
}

fn key_of(op: &WriteOp) -> &[u8] {
    match &op.op {
        Some(write_op::Op::Put(p)) => &p.key,
        Some(write_op::Op::Delete(d)) => &d.key,
        None => &[],
    }
}

/// The keys a scan may return, bounded exactly as the node reads them: from its continuation
/// token (or, without one, its start key) or its prefix, whichever is larger, to the smaller
/// of its end key and the end of its prefix. (The token *replaces* the start key; it is not
/// checked to lie after it, so taking the larger of the two would let a token below the
/// start read keys the check never saw.)
fn scan_range(r: &ScanRequest) -> (&[u8], Option<Vec<u8>>) {
    let start = if r.continuation_token.is_empty() { &r.start_key } else { &r.continuation_token };
    let lo: &[u8] = std::cmp::max(&start[..], &r.prefix[..]);
    let ends = [
        (!r.end_key.is_empty()).then(|| r.end_key.to_vec()),
        if r.prefix.is_empty() { None } else { prefix_end(&r.prefix) },
    ];
    (lo, ends.into_iter().flatten().min())
}

guarded!(PutRequest, "Put", |r, check| check(Need::Key(&r.key, Access::WRITE)));
guarded!(DeleteRequest, "Delete", |r, check| check(Need::Key(&r.key, Access::WRITE)));
guarded!(CompareAndSwapRequest, "CompareAndSwap", |r, check| {
    check(Need::Key(&r.key, Access::READ_WRITE))
});
guarded!(GetRequest, "Get", |r, check| check(Need::Key(&r.key, Access::READ)));
guarded!(MultiGetRequest, "MultiGet", |r, check| {
    r.keys.iter().try_for_each(|k| check(Need::Key(k, Access::READ)))
});
guarded!(BatchWriteRequest, "BatchWrite", |r, check| {
    r.ops.iter().try_for_each(|op| check(Need::Key(key_of(op), Access::WRITE)))
});
guarded!(ScanRequest, "Scan", |r, check| {
    let (lo, hi) = scan_range(r);
    check(Need::KeyRange { lo, hi: hi.as_deref(), access: Access::READ })
});
guarded!(WatchRequest, "Watch", |r, check| {
    if r.prefix {
        let hi = prefix_end(&r.key);
        check(Need::KeyRange { lo: &r.key, hi: hi.as_deref(), access: Access::READ })
    } else {
        check(Need::Key(&r.key, Access::READ))
    }
});

guarded!(AppendRequest, "Append", |r, check| check(Need::Topic(&r.topic, Access::WRITE)));
guarded!(ReadRequest, "Read", |r, check| check(Need::Topic(&r.topic, Access::READ)));
guarded!(SubscribeRequest, "Subscribe", |r, check| check(Need::Topic(&r.topic, Access::READ)));
guarded!(CommitOffsetRequest, "CommitOffset", |r, check| {
    check(Need::Topic(&r.topic, Access::READ))
});
guarded!(FetchOffsetRequest, "FetchOffset", |r, check| {
    check(Need::Topic(&r.topic, Access::READ))
});
guarded!(DescribeTopicRequest, "DescribeTopic", |r, check| {
    check(Need::Topic(&r.name, Access::NONE))
});
guarded!(GetPartitionRequest, "GetPartition", |r, check| {
    check(Need::Topic(&r.topic, Access::NONE))
});
guarded!(GetTopicsRequest, "GetTopics", |r, check| match &r.name {
    Some(name) => check(Need::Topic(name, Access::NONE)),
    None => Ok(()),
});
guarded!(ListTopicsRequest, "ListTopics", |_r, _check| Ok(()));
guarded!(CreateTopicRequest, "CreateTopic", |r, check| {
    check(Need::Topic(&r.name, Access::ADMIN))
});
guarded!(DeleteTopicRequest, "DeleteTopic", |r, check| {
    check(Need::Topic(&r.name, Access::ADMIN))
});
guarded!(PutTopicRequest, "PutTopic", |r, check| check(Need::Topic(&r.name, Access::ADMIN)));
guarded!(RemoveTopicRequest, "RemoveTopic", |r, check| {
    check(Need::Topic(&r.name, Access::ADMIN))
});
guarded!(CreatePartitionRequest, "CreatePartition", |r, check| {
    check(Need::Topic(&r.topic, Access::ADMIN))
});
guarded!(DropPartitionRequest, "DropPartition", |r, check| {
    check(Need::Topic(&r.topic, Access::ADMIN))
});

guarded!(GetShardMapRequest, "GetShardMap", |_r, _check| Ok(()));
guarded!(NodeStatusRequest, "NodeStatus", |_r, _check| Ok(()));
guarded!(ListNodesRequest, "ListNodes", |_r, _check| Ok(()));
guarded!(ShardChecksumRequest, "ShardChecksum", |_r, check| check(Need::Cluster));
guarded!(TransferLeaderRequest, "TransferLeader", |_r, check| check(Need::Cluster));
guarded!(TriggerSnapshotRequest, "TriggerSnapshot", |_r, check| check(Need::Cluster));
guarded!(SetNodeWeightRequest, "SetNodeWeight", |_r, check| check(Need::Cluster));
// `NodeRequest` serves DrainNode, RemoveNode and ActivateNode; the refusal names it so.
guarded!(NodeRequest, "DrainNode/RemoveNode/ActivateNode", |_r, check| check(Need::Cluster));

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grant::{Grant, Identity, On};

    fn allowed<T: Guarded>(who: &Identity, req: &T) -> bool {
        req.needs(&mut |n| {
            if who.allows(&n) { Ok(()) } else { Err(AuthError::Config(String::new())) }
        })
        .is_ok()
    }

    #[test]
    fn scans_are_checked_over_their_whole_range() {
        let who = Identity::new(
            "a",
            vec![Grant { on: On::Keys(b"a/".to_vec()), access: Access::READ }],
            false,
        );
        let scan = |start: &'static [u8], end: &'static [u8], prefix: &'static [u8]| ScanRequest {
            start_key: start.into(),
            end_key: end.into(),
            prefix: prefix.into(),
            ..Default::default()
        };
        assert!(allowed(&who, &scan(b"", b"", b"a/")));
        assert!(allowed(&who, &scan(b"a/x", b"a/y", b"")));
        assert!(allowed(&who, &scan(b"", b"a/z", b"a/")), "the prefix bounds the start");
        assert!(!allowed(&who, &scan(b"", b"", b"")), "the whole key space");
        assert!(!allowed(&who, &scan(b"a/", b"", b"")), "no end");
        assert!(!allowed(&who, &scan(b"", b"", b"a")), "a wider prefix");
        // A continuation token replaces the start key, even one below it: the node reads from
        // the token, so that is what is checked.
        let below =
            ScanRequest { continuation_token: b"\x00".to_vec().into(), ..scan(b"a/", b"a0", b"") };
        assert!(!allowed(&who, &below), "a token below the grant");
        let resumed =
            ScanRequest { continuation_token: b"a/m".to_vec().into(), ..scan(b"a/", b"a0", b"") };
        assert!(allowed(&who, &resumed));
        let watch = |key: &'static [u8], prefix| WatchRequest {
            key: key.into(),
            prefix,
            ..Default::default()
        };
        assert!(allowed(&who, &watch(b"a/1", false)));
        assert!(allowed(&who, &watch(b"a/", true)));
        assert!(!allowed(&who, &watch(b"a", true)));
    }

    #[test]
    fn a_batch_needs_every_key() {
        let who = Identity::new(
            "a",
            vec![Grant { on: On::Keys(b"a/".to_vec()), access: Access::WRITE }],
            false,
        );
        let put = |k: &'static [u8]| WriteOp {
            op: Some(write_op::Op::Put(PutRequest { key: k.into(), ..Default::default() })),
        };
        let ok = BatchWriteRequest { ops: vec![put(b"a/1"), put(b"a/2")], ..Default::default() };
        let mixed = BatchWriteRequest { ops: vec![put(b"a/1"), put(b"b/2")], ..Default::default() };
        assert!(allowed(&who, &ok));
        assert!(!allowed(&who, &mixed));
    }
}

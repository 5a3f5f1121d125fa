//! The cluster as the meta group records it: nodes, replica sets, moves in progress.
//!
//! A cluster's membership changes over time (nodes join, drain, fail, are replaced), so the
//! placement can no longer be a pure function of a configuration file. Instead the *meta
//! group* — a Raft group of its own, on up to five nodes, stored and replicated like any shard
//! — holds the truth as a handful of records in its key-value space:
//!
//! | key                | record            | what                                              |
//! |--------------------|-------------------|---------------------------------------------------|
//! | `cluster`          | [`ClusterRecord`] | cluster id, layout, the next node id to hand out  |
//! | `node/<id>`        | [`NodeRecord`]    | a node identity: name, address, state, weight, zone |
//! | `shard/<id>`       | [`ShardRecord`]   | a shard's replica set and its configuration epoch |
//! | `move/<id>`        | [`MoveRecord`]    | a replica move under way for that shard           |
//!
//! Every record is changed by compare-and-swap on its version (the meta log index that last
//! wrote it), so two drivers that both believe they lead can never both apply a decision.
//! The *map epoch* that clients see is the highest version of any node or shard record: it
//! grows whenever a replica set or an address changes, and never otherwise, so clients
//! refresh their routes exactly when they must. The meta group itself appears as the shard
//! [`META_SHARD`], so its replicas are placed and moved by the same code as data shards.
//!
//! Node ids are handed out from `next_node_id` and never reused: an identity that lost its
//! data has forgotten its Raft votes and logs, and must never be counted in a quorum again
//! (see `docs/architecture.md`, "Identity").

use crate::{Layout, NodeId, NodeSpec, PlacementError, ShardId, ShardMap};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The meta group's place in the shard-id space, above every data shard.
pub const META_SHARD: ShardId = u64::MAX;

/// A node's life cycle.
///
/// ```text
///   Joining ──first sync──▶ Up ◀──syncs again── Down (not heard from for --down-after)
///                           │ ▲
///                     drain │ │ (undrain: set it up again)
///                           ▼ │
///                        Draining ──remove──▶ Removed (id retired for ever)
/// ```
/// Only `Up` nodes receive replicas; every other state has its replicas moved away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum NodeState {
    /// Registered, not yet serving (its first sync makes it `Up`).
    Joining,
    Up,
    /// Leaving on the operator's request: replicas move away, the node stays registered.
    Draining,
    /// Not heard from for longer than the down-after period: its replicas are re-created
    /// elsewhere. Coming back makes it `Up` again.
    Down,
    /// Retired: the id is never used again.
    Removed,
}

impl NodeState {
    pub fn name(self) -> &'static str {
        match self {
            NodeState::Joining => "joining",
            NodeState::Up => "up",
            NodeState::Draining => "draining",
            NodeState::Down => "down",
            NodeState::Removed => "removed",
        }
    }
}

/// One node identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: NodeId,
    /// The operator's name for the node (a pod name, `--node-id`); unique among live nodes.
    pub name: String,
    /// host:port of its gRPC server.
    pub addr: String,
    pub state: NodeState,
    pub weight: u32,
    /// Failure domain label; replicas of a shard go to distinct zones when zones are given.
    pub zone: String,
    /// When `state` last changed (the meta leader's clock, Unix ms).
    pub since_unix_ms: u64,
    /// Set on a node that lost its data and came back under a new identity.
    pub replaced_by: Option<NodeId>,
}

/// One shard's replica set (its Raft voters, in placement order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRecord {
    pub replicas: Vec<NodeId>,
    /// Bumped by every recorded membership change; a removed replica's tombstone remembers
    /// it, so an out-of-date view can never re-create that replica.
    pub config_epoch: u64,
}

/// A replica move: add one replica, remove one, or both (a replacement).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveRecord {
    pub add: Option<NodeId>,
    pub remove: Option<NodeId>,
    /// The shard's configuration epoch the move was planned from.
    pub from_epoch: u64,
    pub started_unix_ms: u64,
    /// Set when the driver gave up (catch-up timed out, the target left): undo, then drop.
    pub aborting: bool,
}

impl MoveRecord {
    /// The replica set after this move, keeping placement order (the added replica takes the
    /// removed one's place).
    pub fn apply_to(&self, replicas: &[NodeId]) -> Vec<NodeId> {
        let mut out: Vec<NodeId> = Vec::with_capacity(replicas.len() + 1);
        let mut added = false;
        for &r in replicas {
            if Some(r) == self.remove {
                if let Some(a) = self.add.filter(|a| !replicas.contains(a)) {
                    out.push(a);
                    added = true;
                }
            } else {
                out.push(r);
            }
        }
        if let Some(a) = self.add.filter(|a| !added && !out.contains(a)) {
            out.push(a);
        }
        out
    }
}

/// The cluster's identity and shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    /// Random, made at bootstrap; every node stores it and every Raft message carries it.
    pub cluster_id: u64,
    pub layout: Layout,
    /// The next identity to hand out (identities are never reused).
    pub next_node_id: NodeId,
    pub created_unix_ms: u64,
}

/// Where a record lives in the meta group's key space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MetaKey {
    Cluster,
    Node(NodeId),
    Shard(ShardId),
    Move(ShardId),
}

const KEY_CLUSTER: &[u8] = b"cluster";
const PREFIX_NODE: &[u8] = b"node/";
const PREFIX_SHARD: &[u8] = b"shard/";
const PREFIX_MOVE: &[u8] = b"move/";

impl MetaKey {
    pub fn encode(&self) -> Vec<u8> {
        let (prefix, id) = match *self {
            MetaKey::Cluster => return KEY_CLUSTER.to_vec(),
            MetaKey::Node(id) => (PREFIX_NODE, id),
            MetaKey::Shard(id) => (PREFIX_SHARD, id),
            MetaKey::Move(id) => (PREFIX_MOVE, id),
        };
        let mut k = prefix.to_vec();
        k.extend_from_slice(&id.to_be_bytes());
        k
    }

    /// `None` for a key that is not a meta record's (it is ignored, not an error: a newer
    /// version may add record kinds).
    pub fn decode(key: &[u8]) -> Option<MetaKey> {
        if key == KEY_CLUSTER {
            return Some(MetaKey::Cluster);
        }
        let id = |prefix: &[u8]| -> Option<u64> {
            let rest = key.strip_prefix(prefix)?;
            Some(u64::from_be_bytes(rest.try_into().ok()?))
        };
        if let Some(id) = id(PREFIX_NODE) {
            return Some(MetaKey::Node(id));
        }
        if let Some(id) = id(PREFIX_SHARD) {
            return Some(MetaKey::Shard(id));
        }
        id(PREFIX_MOVE).map(MetaKey::Move)
    }
}

/// A meta record that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("meta record {key:?} does not decode: {reason}")]
    Decode { key: MetaKey, reason: String },
    #[error("meta state is inconsistent: {0}")]
    Inconsistent(String),
}

/// Encodes a record (postcard: compact, and the format the storage layer already uses).
pub fn encode_record<T: Serialize>(record: &T) -> Vec<u8> {
    // Serializing these plain structs to a Vec cannot fail.
    postcard::to_stdvec(record).unwrap_or_default()
}

fn decode_record<T: DeserializeOwned>(key: MetaKey, raw: &[u8]) -> Result<T, StateError> {
    postcard::from_bytes(raw).map_err(|e| StateError::Decode { key, reason: e.to_string() })
}

/// The whole cluster state at one meta revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterState {
    /// Orders states: a state with a higher version is newer. Built from records alone it is
    /// the highest version of any record, which is not enough on its own: deleting a record
    /// (a finished move) writes none, so when the deleted record was the newest the highest
    /// version goes *down*, and a node that had the state with the move kept it for good
    /// (its shard "moving" for ever: never quiesced, never balanced). Whoever reads the
    /// records at a meta log index raises it to that index ([`ClusterState::at_version`]).
    pub version: u64,
    /// The map epoch clients see: the highest version of any node or shard record.
    pub epoch: u64,
    pub cluster: ClusterRecord,
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    pub shards: BTreeMap<ShardId, ShardRecord>,
    pub moves: BTreeMap<ShardId, MoveRecord>,
    /// Each record's version, for compare-and-swap.
    pub revisions: BTreeMap<MetaKey, u64>,
}

impl ClusterState {
    /// This state as read at meta log index `version` (the meta replica's applied index, or
    /// the version a syncing node was told), which covers deletions too.
    #[must_use]
    pub fn at_version(mut self, version: u64) -> Self {
        self.version = self.version.max(version);
        self
    }

    /// Rebuilds the state from the meta group's key-value pairs `(key, value, version)`.
    /// `Ok(None)` when there is no cluster record yet (a meta group not yet seeded).
    pub fn from_records<'a>(
        records: impl IntoIterator<Item = (&'a [u8], &'a [u8], u64)>,
    ) -> Result<Option<ClusterState>, StateError> {
        let mut cluster = None;
        let mut nodes = BTreeMap::new();
        let mut shards = BTreeMap::new();
        let mut moves = BTreeMap::new();
        let mut revisions = BTreeMap::new();
        let (mut version, mut epoch) = (0, 0);
        for (key, value, rev) in records {
            let Some(k) = MetaKey::decode(key) else { continue };
            version = version.max(rev);
            revisions.insert(k, rev);
            match k {
                MetaKey::Cluster => cluster = Some(decode_record::<ClusterRecord>(k, value)?),
                MetaKey::Node(id) => {
                    epoch = epoch.max(rev);
                    nodes.insert(id, decode_record::<NodeRecord>(k, value)?);
                }
                MetaKey::Shard(id) => {
                    epoch = epoch.max(rev);
                    shards.insert(id, decode_record::<ShardRecord>(k, value)?);
                }
                MetaKey::Move(id) => {
                    moves.insert(id, decode_record::<MoveRecord>(k, value)?);
                }
            }
        }
        let Some(cluster) = cluster else { return Ok(None) };
        let state = ClusterState { version, epoch, cluster, nodes, shards, moves, revisions };
        state.check()?;
        Ok(Some(state))
    }

    fn check(&self) -> Result<(), StateError> {
        let bad = |m: String| Err(StateError::Inconsistent(m));
        for s in self.shard_ids_with_meta() {
            let Some(rec) = self.shards.get(&s) else {
                return bad(format!("no record for shard {}", shard_name(s)));
            };
            if rec.replicas.is_empty() {
                return bad(format!("shard {} has no replicas", shard_name(s)));
            }
            for r in &rec.replicas {
                if !self.nodes.contains_key(r) {
                    return bad(format!("shard {} names unknown node {r}", shard_name(s)));
                }
            }
        }
        for (s, m) in &self.moves {
            for n in m.add.iter().chain(m.remove.iter()) {
                if !self.nodes.contains_key(n) {
                    return bad(format!("move of shard {} names unknown node {n}", shard_name(*s)));
                }
            }
        }
        Ok(())
    }

    /// The records of a new cluster: every initial member up, replicas where the placement
    /// function puts them over the initial members, the meta group on up to five of them.
    pub fn initial(
        cluster_id: u64,
        layout: Layout,
        members: &[NodeSpec],
        names: &BTreeMap<NodeId, String>,
        now_unix_ms: u64,
    ) -> Result<Vec<(MetaKey, Vec<u8>)>, PlacementError> {
        let map = ShardMap::new(layout, members.to_vec(), 1)?;
        let next_node_id = members.iter().map(|m| m.id).max().unwrap_or(0) + 1;
        let mut out = vec![(
            MetaKey::Cluster,
            encode_record(&ClusterRecord {
                cluster_id,
                layout,
                next_node_id,
                created_unix_ms: now_unix_ms,
            }),
        )];
        for m in map.nodes() {
            let record = NodeRecord {
                id: m.id,
                name: names.get(&m.id).cloned().unwrap_or_else(|| m.id.to_string()),
                addr: m.addr.clone(),
                state: NodeState::Up,
                weight: m.weight,
                zone: String::new(),
                since_unix_ms: now_unix_ms,
                replaced_by: None,
            };
            out.push((MetaKey::Node(m.id), encode_record(&record)));
        }
        for s in map.shard_ids() {
            let record = ShardRecord { replicas: map.replicas(s).to_vec(), config_epoch: 1 };
            out.push((MetaKey::Shard(s), encode_record(&record)));
        }
        let meta = ShardRecord { replicas: initial_meta_replicas(members), config_epoch: 1 };
        out.push((MetaKey::Shard(META_SHARD), encode_record(&meta)));
        Ok(out)
    }

    /// Data shards, then the meta group.
    pub fn shard_ids_with_meta(&self) -> impl Iterator<Item = ShardId> + use<> {
        (0..u64::from(self.cluster.layout.shard_count)).chain(std::iter::once(META_SHARD))
    }

    pub fn replicas(&self, shard: ShardId) -> &[NodeId] {
        self.shards.get(&shard).map_or(&[], |r| r.replicas.as_slice())
    }

    pub fn meta_replicas(&self) -> &[NodeId] {
        self.replicas(META_SHARD)
    }

    pub fn node(&self, id: NodeId) -> Option<&NodeRecord> {
        self.nodes.get(&id)
    }

    /// The live identity holding `name` (not removed), if any.
    pub fn node_named(&self, name: &str) -> Option<&NodeRecord> {
        self.nodes.values().find(|n| n.name == name && n.state != NodeState::Removed)
    }

    pub fn up_nodes(&self) -> impl Iterator<Item = &NodeRecord> {
        self.nodes.values().filter(|n| n.state == NodeState::Up)
    }

    /// The groups `node` should run a replica of: where it is a replica, and where a move is
    /// adding it.
    pub fn hosted_by(&self, node: NodeId) -> BTreeSet<ShardId> {
        let mut out: BTreeSet<ShardId> = self
            .shards
            .iter()
            .filter(|(_, r)| r.replicas.contains(&node))
            .map(|(s, _)| *s)
            .collect();
        out.extend(self.moves.iter().filter(|(_, m)| m.add == Some(node)).map(|(s, _)| *s));
        out
    }

    /// How many replicas (meta group included) each node holds.
    pub fn replica_counts(&self) -> BTreeMap<NodeId, usize> {
        let mut out: BTreeMap<NodeId, usize> = self.nodes.keys().map(|&id| (id, 0)).collect();
        for r in self.shards.values() {
            for n in &r.replicas {
                *out.entry(*n).or_default() += 1;
            }
        }
        out
    }

    /// The shard map clients route by: every data shard's replicas, and the address of every
    /// node that holds one or is up.
    pub fn shard_map(&self) -> Result<ShardMap, PlacementError> {
        let layout = self.cluster.layout;
        let replicas: Vec<Vec<NodeId>> =
            (0..u64::from(layout.shard_count)).map(|s| self.replicas(s).to_vec()).collect();
        let held: BTreeSet<NodeId> = replicas.iter().flatten().copied().collect();
        let nodes = self
            .nodes
            .values()
            .filter(|n| held.contains(&n.id) || n.state == NodeState::Up)
            .map(|n| NodeSpec { id: n.id, addr: n.addr.clone(), weight: n.weight })
            .collect();
        ShardMap::with_replicas(layout, nodes, replicas, self.epoch)
    }
}

/// The meta group's first replicas: the placement function's choice over the initial
/// members (see [`crate::planner::target_replicas`]).
pub fn initial_meta_replicas(members: &[NodeSpec]) -> Vec<NodeId> {
    let candidates: Vec<crate::planner::Candidate> = members
        .iter()
        .map(|m| crate::planner::Candidate { id: m.id, weight: m.weight, zone: String::new() })
        .collect();
    crate::planner::target_replicas(
        &candidates,
        META_SHARD,
        crate::planner::meta_size(candidates.len()),
    )
}

/// How a shard is named in messages: its number, or `meta`.
pub fn shard_name(shard: ShardId) -> String {
    if shard == META_SHARD { "meta".to_string() } else { shard.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: u64) -> Vec<NodeSpec> {
        (1..=n).map(|id| NodeSpec { id, addr: format!("h{id}:1"), weight: 1 }).collect()
    }

    fn layout() -> Layout {
        Layout { shard_count: 8, replication_factor: 3, vnodes_per_shard: 64 }
    }

    /// The initial records as the meta group would return them, each at its own version.
    fn initial_state(n: u64) -> ClusterState {
        let recs = ClusterState::initial(7, layout(), &members(n), &BTreeMap::new(), 1).unwrap();
        let raw: Vec<(Vec<u8>, Vec<u8>, u64)> =
            recs.into_iter().enumerate().map(|(i, (k, v))| (k.encode(), v, i as u64 + 1)).collect();
        ClusterState::from_records(raw.iter().map(|(k, v, r)| (k.as_slice(), v.as_slice(), *r)))
            .unwrap()
            .unwrap()
    }

    #[test]
    fn keys_round_trip_and_foreign_keys_are_ignored() {
        for k in [MetaKey::Cluster, MetaKey::Node(3), MetaKey::Shard(META_SHARD), MetaKey::Move(0)]
        {
            assert_eq!(MetaKey::decode(&k.encode()), Some(k));
        }
        assert_eq!(MetaKey::decode(b"node/short"), None);
        assert_eq!(MetaKey::decode(b"other"), None);
    }

    #[test]
    fn the_initial_state_matches_the_placement_function() {
        let s = initial_state(5);
        let map = ShardMap::new(layout(), members(5), 1).unwrap();
        for shard in 0..8 {
            assert_eq!(s.replicas(shard), map.replicas(shard));
        }
        assert_eq!(s.meta_replicas().len(), 5);
        assert_eq!(s.cluster.next_node_id, 6);
        assert_eq!(s.shard_map().unwrap().epoch(), s.epoch);
        assert!(s.nodes.values().all(|n| n.state == NodeState::Up));
        // Three members: the meta group is on all of them.
        assert_eq!(initial_state(3).meta_replicas().len(), 3);
    }

    type Raw = Vec<(Vec<u8>, Vec<u8>, u64)>;

    /// `s`'s records as the meta group holds them, plus a move of shard 0 at version
    /// `move_at` when given.
    fn records_of(s: &ClusterState, move_at: Option<u64>) -> Raw {
        let mut raw = Raw::new();
        for (k, rev) in &s.revisions {
            let v = match k {
                MetaKey::Cluster => encode_record(&s.cluster),
                MetaKey::Node(id) => encode_record(&s.nodes[id]),
                MetaKey::Shard(id) => encode_record(&s.shards[id]),
                MetaKey::Move(id) => encode_record(&s.moves[id]),
            };
            raw.push((k.encode(), v, *rev));
        }
        if let Some(rev) = move_at {
            let mv = MoveRecord {
                add: Some(2),
                remove: Some(1),
                from_epoch: 1,
                started_unix_ms: 0,
                aborting: false,
            };
            raw.push((MetaKey::Move(0).encode(), encode_record(&mv), rev));
        }
        raw
    }

    fn state_of(raw: &Raw) -> ClusterState {
        ClusterState::from_records(raw.iter().map(|(k, v, r)| (k.as_slice(), v.as_slice(), *r)))
            .unwrap()
            .unwrap()
    }

    #[test]
    fn epoch_ignores_moves_but_version_does_not() {
        let s = initial_state(3);
        let s2 = state_of(&records_of(&s, Some(1_000)));
        assert_eq!(s2.version, 1_000);
        assert_eq!(s2.epoch, s.epoch);
        assert!(s2.hosted_by(2).contains(&0));
    }

    #[test]
    fn a_deleted_move_is_newer_once_read_at_its_index() {
        // The records with a move written last, then without it (the move deleted at 1,001).
        let s = initial_state(3);
        let moving = state_of(&records_of(&s, Some(1_000)));
        let done = state_of(&records_of(&s, None));
        assert!(!moving.moves.is_empty() && done.moves.is_empty());
        // From the records alone the later state looks older: it would never replace the one
        // with the move.
        assert!(done.version < moving.version);
        let moving = moving.at_version(1_000);
        let done = done.at_version(1_001);
        assert!(done.version > moving.version, "read at its index, the deletion is newer");
        assert_eq!(done.clone().at_version(3).version, 1_001, "never lowered");
    }

    #[test]
    fn inconsistent_or_undecodable_records_are_errors() {
        let bad_node = [(MetaKey::Shard(0).encode(), vec![0xff, 0xff, 0xff], 1u64)];
        let e = ClusterState::from_records(
            bad_node.iter().map(|(k, v, r)| (k.as_slice(), v.as_slice(), *r)),
        )
        .unwrap_err();
        assert!(matches!(e, StateError::Decode { key: MetaKey::Shard(0), .. }), "{e}");
        let mut s = initial_state(3);
        s.shards.get_mut(&2).unwrap().replicas.push(99);
        assert!(s.check().unwrap_err().to_string().contains("unknown node 99"));
    }

    #[test]
    fn a_move_keeps_placement_order() {
        let mv = |add, remove| MoveRecord {
            add,
            remove,
            from_epoch: 1,
            started_unix_ms: 0,
            aborting: false,
        };
        assert_eq!(mv(Some(9), Some(2)).apply_to(&[1, 2, 3]), [1, 9, 3]);
        assert_eq!(mv(Some(9), None).apply_to(&[1, 2]), [1, 2, 9]);
        assert_eq!(mv(None, Some(1)).apply_to(&[1, 2, 3]), [2, 3]);
        // Adding a node that is already there changes nothing but the removal.
        assert_eq!(mv(Some(3), Some(1)).apply_to(&[1, 2, 3]), [2, 3]);
    }
}

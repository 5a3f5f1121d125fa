//! Node configuration: a TOML file, overridden by environment variables, overridden by flags.
//!
//! Everything a node needs to start is here: its name (`node_id`: a number or a pod name),
//! where it listens and how peers reach it, where its data lives, and how to find its cluster:
//! the initial members (`members`, the same on every founding member, with the layout) or
//! seeds to join through (`join`). The members and layout matter only when a cluster is
//! founded; afterwards the cluster's own records rule (see `crate::discovery`), so adding a
//! node to the member list, or starting a node that is not in it, never breaks a running
//! cluster: a node that is not an initial member joins through the members or `join` seeds.
//!
//! ```toml
//! node_id = "ringkv-0"
//! listen = "0.0.0.0:7001"
//! advertise_addr = "ringkv-0.ringkv:7001"
//! data_dir = "/var/lib/ringkv"
//! shards = 8
//! replication_factor = 3
//! metrics_listen = "0.0.0.0:9101"
//! members = ["1=ringkv-0.ringkv:7001", "2=ringkv-1.ringkv:7001", "3=ringkv-2.ringkv:7001"]
//!
//! [raft]
//! heartbeat_interval_ms = 100
//!
//! [membership]
//! down_after_ms = 1800000
//! ```

use clap::Parser;
use ringkv_placement::shard_map::VNODES_PER_SHARD_DEFAULT;
use ringkv_placement::{Layout, NodeId, NodeSpec};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Command-line flags (each also readable from a `RINGKV_*` environment variable).
#[derive(Debug, Parser, Default)]
#[command(
    name = "ringkv-node",
    version,
    about = "A ringkv storage node: many Raft-replicated shards behind one gRPC server"
)]
pub struct Args {
    /// TOML configuration file; flags and environment variables override its values.
    #[arg(long, env = "RINGKV_CONFIG")]
    pub config: Option<PathBuf>,
    /// This node's name: a number >= 1, or a StatefulSet pod name such as `ringkv-2`. Among
    /// the initial members it also says which one this is (`ringkv-2` is member 3). The
    /// cluster hands out the node's real id; an empty data directory always gets a new one.
    #[arg(long, env = "RINGKV_NODE_ID")]
    pub node_id: Option<String>,
    /// Address the gRPC server binds (default: this node's member address).
    #[arg(long, env = "RINGKV_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// host:port peers and clients reach this node at (default: its member address, else the
    /// listen address). Keep it stable across restarts: use a DNS name where IPs change.
    #[arg(long, env = "RINGKV_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,
    /// Serve the internal services (Raft, membership) on their own port, this many above the
    /// client port, so that only peers need to reach it (0: one port for everything). Every
    /// node of a cluster must use the same value.
    #[arg(long, env = "RINGKV_RAFT_PORT_OFFSET")]
    pub raft_port_offset: Option<u16>,
    /// Seeds of a running cluster to join through (any nodes of it), comma separated. Not
    /// needed by initial members: they find the cluster through the member list.
    #[arg(long, env = "RINGKV_JOIN", value_delimiter = ',')]
    pub join: Option<Vec<String>>,
    /// Failure-domain label (rack, zone): a shard's replicas go to distinct zones.
    #[arg(long, env = "RINGKV_ZONE")]
    pub zone: Option<String>,
    /// This node's share of replicas, relative to the others (1-100) when it joins.
    #[arg(long, env = "RINGKV_WEIGHT")]
    pub weight: Option<u32>,
    /// Data directory (RocksDB and snapshots).
    #[arg(long, env = "RINGKV_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Initial members as `id=host:port[@weight]`, comma separated, the same on every node.
    #[arg(long, env = "RINGKV_MEMBERS", value_delimiter = ',')]
    pub members: Option<Vec<String>>,
    /// Number of shards (Raft groups).
    #[arg(long, env = "RINGKV_SHARDS")]
    pub shards: Option<u32>,
    /// Replicas per shard.
    #[arg(long, env = "RINGKV_REPLICATION_FACTOR")]
    pub replication_factor: Option<u32>,
    /// Address of the Prometheus `/metrics` endpoint (off when unset).
    #[arg(long, env = "RINGKV_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Raft heartbeat interval.
    #[arg(long, env = "RINGKV_HEARTBEAT_INTERVAL_MS")]
    pub heartbeat_interval_ms: Option<u64>,
    /// Lower bound of the randomized election timeout.
    #[arg(long, env = "RINGKV_ELECTION_TIMEOUT_MIN_MS")]
    pub election_timeout_min_ms: Option<u64>,
    /// Upper bound of the randomized election timeout (also the leader lease).
    #[arg(long, env = "RINGKV_ELECTION_TIMEOUT_MAX_MS")]
    pub election_timeout_max_ms: Option<u64>,
    /// Build a snapshot after this many entries since the last one.
    #[arg(long, env = "RINGKV_SNAPSHOT_AFTER_ENTRIES")]
    pub snapshot_after_entries: Option<u64>,
    /// Entries kept in the log behind a snapshot (for lagging followers).
    #[arg(long, env = "RINGKV_LOG_ENTRIES_KEPT")]
    pub log_entries_kept: Option<u64>,
    /// How often to move leaderships to their preferred replicas; 0 turns balancing off.
    #[arg(long, env = "RINGKV_LEADER_BALANCE_INTERVAL_MS")]
    pub leader_balance_interval_ms: Option<u64>,
    /// A shard idle (no request, every replica caught up) this long stops its Raft timers on
    /// every replica until a request or a Raft message wakes it; 0 keeps every group awake.
    #[arg(long, env = "RINGKV_QUIESCE_AFTER_MS")]
    pub quiesce_after_ms: Option<u64>,
    /// Send every shard's AppendEntries to a peer over one stream, packed into shared frames
    /// (the default); `false` gives each shard its own stream, and refuses packed streams
    /// from peers, as versions before packing did (for comparisons).
    #[arg(long, env = "RINGKV_PACKED_REPLICATION")]
    pub packed_replication: Option<bool>,
    /// A replica whose state may be older than this (its STALE-read staleness) makes the
    /// node not ready (`/readyz`, gRPC health): it is catching up or cut off from a quorum.
    #[arg(long, env = "RINGKV_READY_STALENESS_MAX_MS")]
    pub ready_staleness_max_ms: Option<u64>,
    /// On SIGTERM, how long the node waits for its leaderships to move to other replicas
    /// before it stops anyway (0: stop at once). Keep the pod's grace period above it.
    #[arg(long, env = "RINGKV_SHUTDOWN_HANDOFF_MS")]
    pub shutdown_handoff_ms: Option<u64>,
    /// How often shard leaders enforce topic retention and trim the watch history.
    #[arg(long, env = "RINGKV_RETENTION_INTERVAL_MS")]
    pub retention_interval_ms: Option<u64>,
    /// Revisions (log entries) of change history each shard keeps for watchers; a watch
    /// starting further back gets COMPACTED.
    #[arg(long, env = "RINGKV_WATCH_HISTORY_REVISIONS")]
    pub watch_history_revisions: Option<u64>,
    /// A node not heard from for this long is marked down and its replicas re-created on
    /// other nodes (meta leader setting; default 30 minutes). Restarts are far shorter.
    #[arg(long, env = "RINGKV_DOWN_AFTER_MS")]
    pub down_after_ms: Option<u64>,
    /// A replica move whose new replica has not caught up after this long is undone.
    #[arg(long, env = "RINGKV_MOVE_TIMEOUT_MS")]
    pub move_timeout_ms: Option<u64>,
    /// Replica moves running at once, cluster-wide.
    #[arg(long, env = "RINGKV_MOVES_MAX")]
    pub moves_max: Option<usize>,
    /// Replica moves touching any one node at once.
    #[arg(long, env = "RINGKV_MOVES_PER_NODE_MAX")]
    pub moves_per_node_max: Option<usize>,
    /// Snapshot bytes per second this node sends to peers (0: no limit).
    #[arg(long, env = "RINGKV_SNAPSHOT_SEND_BYTES_PER_SEC")]
    pub snapshot_send_bytes_per_sec: Option<u64>,
    /// How often the node tells the meta leader it is alive and asks for changes.
    #[arg(long, env = "RINGKV_SYNC_INTERVAL_MS")]
    pub sync_interval_ms: Option<u64>,
    /// Client requests (KV, Streams) served at once; more are refused at once with
    /// RESOURCE_EXHAUSTED (OVERLOADED) and a retry delay. Raft, health and admin are not counted.
    #[arg(long, env = "RINGKV_INFLIGHT_REQUESTS_MAX")]
    pub inflight_requests_max: Option<u32>,
    /// Bytes of client requests served at once (the same refusal beyond it).
    #[arg(long, env = "RINGKV_INFLIGHT_BYTES_MAX")]
    pub inflight_bytes_max: Option<u64>,
    /// Serve and dial with TLS using `ca.crt`, `tls.crt` and `tls.key` in this directory (a
    /// mounted Kubernetes TLS Secret); peers then need a certificate of that CA (mutual TLS).
    #[arg(long, env = "RINGKV_TLS_DIR")]
    pub tls_dir: Option<PathBuf>,
    /// CA bundle (PEM) peers' and clients' certificates are checked against.
    #[arg(long, env = "RINGKV_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// This node's certificate chain (PEM), naming the host of its advertised address.
    #[arg(long, env = "RINGKV_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `--tls-cert`.
    #[arg(long, env = "RINGKV_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// The CA bundle (PEM) of the nodes' certificates, when nodes have a CA of their own:
    /// only its certificates may speak Raft and membership; `--tls-ca` then vouches for
    /// routers and clients (whose certificates cannot reach the peer services).
    #[arg(long, env = "RINGKV_TLS_PEER_CA")]
    pub tls_peer_ca: Option<PathBuf>,
    /// How often the certificate files are re-read (rotated certificates are used for new
    /// connections without a restart).
    #[arg(long, env = "RINGKV_TLS_RELOAD_INTERVAL_MS")]
    pub tls_reload_interval_ms: Option<u64>,
    /// The access policy (TOML: roles, token hashes, certificate subjects; see
    /// docs/security.md): with one, every client call needs a credential it names and a grant
    /// for what it asks. Needs TLS. Re-read as often as the certificates.
    #[arg(long, env = "RINGKV_AUTH_POLICY")]
    pub auth_policy: Option<PathBuf>,
}

/// The `[auth]` section: the access policy file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFile {
    pub policy: Option<PathBuf>,
}

/// The `[tls]` section: where the certificates are, and how often they are re-read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    pub dir: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub peer_ca: Option<PathBuf>,
    pub reload_interval_ms: Option<u64>,
}

/// How often certificate files are re-read by default: cert-manager renews well before
/// expiry, so seconds of delay never matter, and the reads cost nothing.
pub const TLS_RELOAD_INTERVAL_MS_DEFAULT: u64 = 5_000;

/// Admission limits (see `crate::admission`): what a node takes on before it sheds load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionTuning {
    pub inflight_requests_max: u32,
    pub inflight_bytes_max: u64,
    /// The retry delay a refused caller is given.
    pub retry_after_ms: u64,
}

impl Default for AdmissionTuning {
    fn default() -> Self {
        use crate::admission as a;
        AdmissionTuning {
            inflight_requests_max: a::INFLIGHT_REQUESTS_MAX_DEFAULT,
            inflight_bytes_max: a::INFLIGHT_BYTES_MAX_DEFAULT,
            retry_after_ms: a::RETRY_AFTER_DEFAULT.as_millis() as u64,
        }
    }
}

/// Membership settings. The down-after period, move timeout and limits are used by whichever
/// node leads the meta group, so give every node the same values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MembershipTuning {
    pub down_after_ms: u64,
    pub move_timeout_ms: u64,
    pub moves_max: usize,
    pub moves_per_node_max: usize,
    pub snapshot_send_bytes_per_sec: u64,
    pub sync_interval_ms: u64,
}

impl Default for MembershipTuning {
    fn default() -> Self {
        MembershipTuning {
            // Long enough that a restart, a reschedule or a node reboot never moves data.
            down_after_ms: 30 * 60 * 1000,
            move_timeout_ms: 10 * 60 * 1000,
            moves_max: 8,
            moves_per_node_max: 2,
            // About half of a 2 Gbit/s link: replication and clients keep the rest.
            snapshot_send_bytes_per_sec: 128 << 20,
            sync_interval_ms: 500,
        }
    }
}

/// Raft tuning. Defaults suit a LAN; raise them for many shards per node or slow links.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftTuning {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    pub snapshot_after_entries: u64,
    pub log_entries_kept: u64,
    pub leader_balance_interval_ms: u64,
    pub quiesce_after_ms: u64,
    pub packed_replication: bool,
    pub ready_staleness_max_ms: u64,
    pub shutdown_handoff_ms: u64,
    pub retention_interval_ms: u64,
    pub watch_history_revisions: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning {
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1000,
            snapshot_after_entries: 10_000,
            log_entries_kept: 1_000,
            leader_balance_interval_ms: 3_000,
            // An awake idle group ticks every ~20 ms and flushes its metrics each time; waking
            // costs one heartbeat round (and the first request waits for it). Staying awake
            // about as long as a wake costs bounds the waste either way (the ski-rental rule):
            // half a second. A shard with two or more requests a second never sleeps; one with
            // fewer would sleep between them at 2 s too. At 1,024 shards under uniform writes,
            // 2 s kept ~half the groups awake and idle, and gave 0.35x the writes of 500 ms
            // (docs/performance.md, "Writes over many shards"). The quiescer looks every four
            // heartbeats, so a group sleeps 0.5-0.9 s after its last request.
            quiesce_after_ms: 500,
            // One stream per peer, whatever is ready packed into one frame: the per-message
            // cost of many shards' small rounds (docs/performance.md, "Packed replication").
            packed_replication: true,
            // Ten election timeouts: an election or a burst of load never makes a node
            // unready, a replica that fell behind (a restart, a partition) does.
            ready_staleness_max_ms: 10_000,
            // Moving leaderships away takes an election round per shard, done in parallel:
            // well under a second on a LAN; the rest is slack for a loaded node.
            shutdown_handoff_ms: 10_000,
            retention_interval_ms: 1_000,
            // About what etcd's default compaction keeps on a busy cluster, and at most
            // ~100k small change records per shard.
            watch_history_revisions: 100_000,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    node_id: Option<toml::Value>,
    listen: Option<SocketAddr>,
    advertise_addr: Option<String>,
    raft_port_offset: Option<u16>,
    join: Option<Vec<String>>,
    zone: Option<String>,
    weight: Option<u32>,
    membership: Option<MembershipTuning>,
    admission: Option<AdmissionTuning>,
    data_dir: Option<PathBuf>,
    members: Option<Vec<String>>,
    shards: Option<u32>,
    replication_factor: Option<u32>,
    vnodes_per_shard: Option<u32>,
    metrics_listen: Option<SocketAddr>,
    raft: Option<RaftTuning>,
    tls: Option<TlsFile>,
    auth: Option<AuthFile>,
}

/// The resolved configuration of a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The operator's name for this node.
    pub name: String,
    /// Which initial member this node is, if it is one.
    pub initial_id: Option<NodeId>,
    pub listen: SocketAddr,
    pub advertise_addr: String,
    /// Raft and membership are served this many ports above `listen`, and peers are dialed
    /// that many above their advertised port (0: everything on one port).
    pub raft_port_offset: u16,
    pub data_dir: PathBuf,
    /// The initial members (founding); may be empty for a node that only joins.
    pub members: Vec<NodeSpec>,
    pub join: Vec<String>,
    pub layout: Layout,
    /// Whether the layout was given (flag, environment or file) rather than defaulted: a
    /// given layout must match the cluster's, a default one is the cluster's to decide.
    pub layout_explicit: bool,
    pub zone: String,
    pub weight: u32,
    pub metrics_listen: Option<SocketAddr>,
    pub raft: RaftTuning,
    pub membership: MembershipTuning,
    pub admission: AdmissionTuning,
    /// TLS for every port but the HTTP one (`None`: plaintext).
    pub tls: Option<ringkv_tls::TlsPaths>,
    pub tls_reload_interval_ms: u64,
    /// The access policy file (`None`: authorization off).
    pub auth_policy: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid: {source}")]
    Parse { path: PathBuf, source: Box<toml::de::Error> },
    #[error("missing setting {0} (flag --{1}, env RINGKV_{2}, or `{0}` in the config file)")]
    Missing(&'static str, &'static str, &'static str),
    #[error("invalid node id {0:?}: expected a number >= 1 or a pod name ending in -ORDINAL")]
    NodeId(String),
    #[error("invalid member {0:?}: expected id=host:port or id=host:port@weight")]
    Member(String),
    #[error(
        "no way to find a cluster: give the initial members (--members) or seeds to join through (--join)"
    )]
    NoSeeds,
    #[error(
        "address {0:?} of this node does not resolve to a socket address to listen on; set --listen"
    )]
    Listen(String),
    #[error(
        "no address for peers to reach this node: set --advertise-addr (the listen address {0} is a wildcard)"
    )]
    Advertise(SocketAddr),
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("invalid raft timing: {0}")]
    Raft(String),
    #[error("invalid TLS settings: {0}")]
    Tls(#[from] ringkv_tls::TlsError),
}

fn parse_node_id(raw: &str) -> Result<NodeId, ConfigError> {
    let err = || ConfigError::NodeId(raw.to_string());
    if let Ok(id) = raw.parse::<NodeId>() {
        return if id >= 1 { Ok(id) } else { Err(err()) };
    }
    let ordinal =
        raw.rsplit_once('-').and_then(|(_, n)| n.parse::<NodeId>().ok()).ok_or_else(err)?;
    ordinal.checked_add(1).ok_or_else(err)
}

fn parse_member(raw: &str) -> Result<NodeSpec, ConfigError> {
    let err = || ConfigError::Member(raw.to_string());
    let (id, rest) = raw.trim().split_once('=').ok_or_else(err)?;
    let (addr, weight) = match rest.rsplit_once('@') {
        Some((a, w)) => (a, w.parse::<u32>().map_err(|_| err())?),
        None => (rest, 1),
    };
    let id = id.parse::<NodeId>().map_err(|_| err())?;
    if addr.is_empty() || !addr.contains(':') {
        return Err(err());
    }
    Ok(NodeSpec { id, addr: addr.to_string(), weight })
}

impl NodeConfig {
    /// Resolves flags/env over the config file over defaults.
    pub fn resolve(args: Args) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.clone(), source })?;
                toml::from_str::<FileConfig>(&text).map_err(|source| ConfigError::Parse {
                    path: path.clone(),
                    source: Box::new(source),
                })?
            }
            None => FileConfig::default(),
        };
        let node_id_raw = match (args.node_id, file.node_id) {
            (Some(s), _) => s,
            (None, Some(toml::Value::Integer(i))) => i.to_string(),
            (None, Some(toml::Value::String(s))) => s,
            (None, Some(other)) => other.to_string(),
            (None, None) => return Err(ConfigError::Missing("node_id", "node-id", "NODE_ID")),
        };
        let name = node_id_raw.trim().to_string();
        let ordinal = parse_node_id(&name)?;
        let members = args
            .members
            .or(file.members)
            .unwrap_or_default()
            .iter()
            .filter(|m| !m.trim().is_empty())
            .map(|m| parse_member(m))
            .collect::<Result<Vec<_>, _>>()?;
        let join: Vec<String> = args
            .join
            .or(file.join)
            .unwrap_or_default()
            .into_iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if members.is_empty() && join.is_empty() {
            return Err(ConfigError::NoSeeds);
        }
        let me = members.iter().find(|m| m.id == ordinal);
        let listen = match (args.listen.or(file.listen), me) {
            (Some(l), _) => l,
            (None, Some(me)) => {
                me.addr.parse().map_err(|_| ConfigError::Listen(me.addr.clone()))?
            }
            (None, None) => match args.advertise_addr.as_ref().or(file.advertise_addr.as_ref()) {
                Some(a) => a.parse().map_err(|_| ConfigError::Listen(a.clone()))?,
                None => return Err(ConfigError::Missing("listen", "listen", "LISTEN")),
            },
        };
        let advertise_addr = match (args.advertise_addr.or(file.advertise_addr), me) {
            (Some(a), _) => a,
            (None, Some(me)) => me.addr.clone(),
            (None, None) if listen.ip().is_unspecified() => {
                return Err(ConfigError::Advertise(listen));
            }
            (None, None) => listen.to_string(),
        };
        if !advertise_addr.contains(':') {
            return Err(ConfigError::Invalid {
                field: "advertise_addr",
                reason: format!("{advertise_addr:?} is not host:port"),
            });
        }
        let raft_port_offset = args.raft_port_offset.or(file.raft_port_offset).unwrap_or(0);
        if raft_port_offset > 0 {
            if listen.port() == 0 || listen.port().checked_add(raft_port_offset).is_none() {
                return Err(ConfigError::Invalid {
                    field: "raft_port_offset",
                    reason: format!(
                        "listen port {} plus raft_port_offset {raft_port_offset} is not a port \
                         (the peer port needs a fixed client port below 65536 - offset)",
                        listen.port()
                    ),
                });
            }
            crate::peer_addr::peer_addr(&advertise_addr, raft_port_offset)
                .map_err(|reason| ConfigError::Invalid { field: "raft_port_offset", reason })?;
        }
        let weight = args.weight.or(file.weight).unwrap_or(1);
        if !(1..=ringkv_placement::shard_map::WEIGHT_MAX).contains(&weight) {
            return Err(ConfigError::Invalid {
                field: "weight",
                reason: format!(
                    "{weight} is not between 1 and {}",
                    ringkv_placement::shard_map::WEIGHT_MAX
                ),
            });
        }
        let zone = args.zone.or(file.zone).unwrap_or_default();
        let mut membership = file.membership.unwrap_or_default();
        for (flag, slot) in [
            (args.down_after_ms, &mut membership.down_after_ms),
            (args.move_timeout_ms, &mut membership.move_timeout_ms),
            (args.snapshot_send_bytes_per_sec, &mut membership.snapshot_send_bytes_per_sec),
            (args.sync_interval_ms, &mut membership.sync_interval_ms),
        ] {
            if let Some(v) = flag {
                *slot = v;
            }
        }
        if let Some(v) = args.moves_max {
            membership.moves_max = v;
        }
        if let Some(v) = args.moves_per_node_max {
            membership.moves_per_node_max = v;
        }
        if membership.moves_max == 0 || membership.moves_per_node_max == 0 {
            return Err(ConfigError::Invalid {
                field: "moves_max",
                reason: "moves_max and moves_per_node_max must be >= 1".into(),
            });
        }
        if membership.sync_interval_ms == 0 || membership.move_timeout_ms == 0 {
            return Err(ConfigError::Invalid {
                field: "sync_interval_ms",
                reason: "sync_interval_ms and move_timeout_ms must be >= 1".into(),
            });
        }
        let mut admission = file.admission.unwrap_or_default();
        if let Some(v) = args.inflight_requests_max {
            admission.inflight_requests_max = v;
        }
        if let Some(v) = args.inflight_bytes_max {
            admission.inflight_bytes_max = v;
        }
        if admission.inflight_requests_max == 0 || admission.inflight_bytes_max == 0 {
            return Err(ConfigError::Invalid {
                field: "inflight_requests_max",
                reason: "inflight_requests_max and inflight_bytes_max must be >= 1 (a limit of \
                         0 would refuse every request)"
                    .into(),
            });
        }
        let data_dir = args
            .data_dir
            .or(file.data_dir)
            .ok_or(ConfigError::Missing("data_dir", "data-dir", "DATA_DIR"))?;
        let layout_explicit = args.shards.is_some()
            || file.shards.is_some()
            || args.replication_factor.is_some()
            || file.replication_factor.is_some()
            || file.vnodes_per_shard.is_some();
        let layout = Layout {
            shard_count: args.shards.or(file.shards).unwrap_or(8),
            replication_factor: args.replication_factor.or(file.replication_factor).unwrap_or(3),
            vnodes_per_shard: file.vnodes_per_shard.unwrap_or(VNODES_PER_SHARD_DEFAULT),
        };
        let mut raft = file.raft.unwrap_or_default();
        let overrides = [
            (args.heartbeat_interval_ms, &mut raft.heartbeat_interval_ms),
            (args.election_timeout_min_ms, &mut raft.election_timeout_min_ms),
            (args.election_timeout_max_ms, &mut raft.election_timeout_max_ms),
            (args.snapshot_after_entries, &mut raft.snapshot_after_entries),
            (args.log_entries_kept, &mut raft.log_entries_kept),
            (args.leader_balance_interval_ms, &mut raft.leader_balance_interval_ms),
            (args.quiesce_after_ms, &mut raft.quiesce_after_ms),
            (args.ready_staleness_max_ms, &mut raft.ready_staleness_max_ms),
            (args.shutdown_handoff_ms, &mut raft.shutdown_handoff_ms),
            (args.retention_interval_ms, &mut raft.retention_interval_ms),
            (args.watch_history_revisions, &mut raft.watch_history_revisions),
        ];
        for (flag, slot) in overrides {
            if let Some(v) = flag {
                *slot = v;
            }
        }
        if let Some(v) = args.packed_replication {
            raft.packed_replication = v;
        }
        if raft.heartbeat_interval_ms == 0
            || raft.election_timeout_min_ms <= raft.heartbeat_interval_ms * 2
        {
            return Err(ConfigError::Raft(format!(
                "election_timeout_min_ms ({}) must exceed twice heartbeat_interval_ms ({}), which must be > 0",
                raft.election_timeout_min_ms, raft.heartbeat_interval_ms
            )));
        }
        if raft.election_timeout_max_ms <= raft.election_timeout_min_ms {
            return Err(ConfigError::Raft(format!(
                "election_timeout_max_ms ({}) must exceed election_timeout_min_ms ({})",
                raft.election_timeout_max_ms, raft.election_timeout_min_ms
            )));
        }
        if raft.snapshot_after_entries == 0 {
            return Err(ConfigError::Raft("snapshot_after_entries must be >= 1".into()));
        }
        let tls_file = file.tls.unwrap_or_default();
        let mut tls = ringkv_tls::TlsPaths::from_settings(
            args.tls_dir.as_deref().or(tls_file.dir.as_deref()),
            args.tls_ca.or(tls_file.ca),
            args.tls_cert.or(tls_file.cert),
            args.tls_key.or(tls_file.key),
        )?;
        match (&mut tls, args.tls_peer_ca.or(tls_file.peer_ca)) {
            (Some(t), peer_ca) => t.peer_ca = peer_ca,
            (None, Some(_)) => {
                return Err(ConfigError::Invalid {
                    field: "tls_peer_ca",
                    reason: "a peer CA needs the rest of the TLS settings (--tls-dir, or \
                             --tls-ca, --tls-cert and --tls-key)"
                        .into(),
                });
            }
            (None, None) => {}
        }
        if tls.as_ref().is_some_and(|t| t.cert.is_none()) {
            return Err(ConfigError::Invalid {
                field: "tls",
                reason: "a node serves its peers, so it needs a certificate and key of its own \
                         (--tls-cert and --tls-key, or tls.crt and tls.key in --tls-dir)"
                    .into(),
            });
        }
        let auth_policy = args.auth_policy.or(file.auth.and_then(|a| a.policy));
        if auth_policy.is_some() && tls.is_none() {
            return Err(ConfigError::Invalid {
                field: "auth_policy",
                reason: "an access policy needs TLS (--tls-dir, or --tls-ca, --tls-cert and \
                         --tls-key): bearer tokens must not cross the network in plaintext"
                    .into(),
            });
        }
        // With one CA, every certificate it signed passes as a node, and a node may do
        // everything: any application's client certificate would be a superuser.
        if auth_policy.is_some() && tls.as_ref().is_some_and(|t| t.peer_ca.is_none()) {
            return Err(ConfigError::Invalid {
                field: "auth_policy",
                reason: "an access policy needs the nodes to have a CA of their own \
                         (--tls-peer-ca): with one CA every client certificate would pass as a \
                         node, and nodes may do everything"
                    .into(),
            });
        }
        let tls_reload_interval_ms = args
            .tls_reload_interval_ms
            .or(tls_file.reload_interval_ms)
            .unwrap_or(TLS_RELOAD_INTERVAL_MS_DEFAULT)
            .max(1);
        Ok(NodeConfig {
            name,
            initial_id: me.map(|m| m.id),
            listen,
            advertise_addr,
            raft_port_offset,
            data_dir,
            members,
            join,
            layout,
            layout_explicit,
            zone,
            weight,
            metrics_listen: args.metrics_listen.or(file.metrics_listen),
            raft,
            membership,
            admission,
            tls,
            tls_reload_interval_ms,
            auth_policy,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(members: &str) -> Args {
        Args {
            node_id: Some("2".into()),
            data_dir: Some("/tmp/x".into()),
            members: Some(members.split(',').map(String::from).collect()),
            ..Args::default()
        }
    }

    #[test]
    fn an_access_policy_needs_tls_and_a_ca_of_the_nodes_own() {
        let with = |tls_dir: Option<&str>, peer_ca: Option<&str>| {
            let a = Args {
                auth_policy: Some("/etc/ringkv/policy.toml".into()),
                tls_dir: tls_dir.map(PathBuf::from),
                tls_peer_ca: peer_ca.map(PathBuf::from),
                ..args("1=127.0.0.1:7001,2=127.0.0.1:7002")
            };
            NodeConfig::resolve(a)
        };
        let plaintext = with(None, None).unwrap_err().to_string();
        assert!(plaintext.contains("needs TLS"), "{plaintext}");
        let one_ca = with(Some("/tls"), None).unwrap_err().to_string();
        assert!(one_ca.contains("--tls-peer-ca"), "{one_ca}");
        let c = with(Some("/tls"), Some("/tls/peer-ca.crt")).unwrap();
        assert_eq!(c.auth_policy, Some(PathBuf::from("/etc/ringkv/policy.toml")));
    }

    #[test]
    fn parses_members_weights_and_pod_names() {
        assert_eq!(parse_node_id("ringkv-0").unwrap(), 1);
        assert_eq!(parse_node_id("7").unwrap(), 7);
        assert!(parse_node_id("0").is_err());
        assert!(parse_node_id("ringkv").is_err());
        let m = parse_member("3=host-3:7000@5").unwrap();
        assert_eq!((m.id, m.addr.as_str(), m.weight), (3, "host-3:7000", 5));
        assert!(parse_member("3:host").is_err());
        assert!(parse_member("x=h:1").is_err());
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "node_id = 1\nshards = 16\nmembers = [\"1=127.0.0.1:7001\", \"2=127.0.0.1:7002\"]\n[raft]\nheartbeat_interval_ms = 50\n",
        )
        .unwrap();
        let mut a = args("1=127.0.0.1:7001,2=127.0.0.1:7002");
        a.config = Some(path);
        a.replication_factor = Some(2);
        let c = NodeConfig::resolve(a).unwrap();
        assert_eq!((c.name.as_str(), c.initial_id), ("2", Some(2)));
        assert_eq!(c.advertise_addr, "127.0.0.1:7002");
        assert_eq!(c.layout.shard_count, 16);
        assert_eq!(c.layout.replication_factor, 2);
        assert_eq!(c.raft.heartbeat_interval_ms, 50);
        assert_eq!(c.listen, "127.0.0.1:7002".parse().unwrap());
    }

    #[test]
    fn a_node_outside_the_member_list_joins_through_it() {
        let mut a = args("1=127.0.0.1:7001");
        a.listen = Some("127.0.0.1:7009".parse().unwrap());
        let c = NodeConfig::resolve(a).unwrap();
        assert_eq!(c.initial_id, None);
        assert_eq!(c.advertise_addr, "127.0.0.1:7009");
        let mut wild = args("1=127.0.0.1:7001");
        wild.listen = Some("0.0.0.0:7009".parse().unwrap());
        assert!(matches!(NodeConfig::resolve(wild).unwrap_err(), ConfigError::Advertise(_)));
        let mut joiner = args("");
        joiner.members = None;
        joiner.join = Some(vec!["10.0.0.1:7001".into()]);
        joiner.advertise_addr = Some("10.0.0.9:7001".into());
        let c = NodeConfig::resolve(joiner).unwrap();
        assert_eq!(c.listen, "10.0.0.9:7001".parse().unwrap());
        assert!(c.members.is_empty());
        let mut lost = args("");
        lost.members = None;
        assert!(matches!(NodeConfig::resolve(lost).unwrap_err(), ConfigError::NoSeeds));
    }

    #[test]
    fn clear_errors_for_bad_settings() {
        let mut a = args("2=127.0.0.1:7002");
        a.election_timeout_min_ms = Some(100);
        a.heartbeat_interval_ms = Some(100);
        assert!(NodeConfig::resolve(a).unwrap_err().to_string().contains("must exceed twice"));
        let mut a = args("2=127.0.0.1:7002");
        a.data_dir = None;
        assert!(NodeConfig::resolve(a).unwrap_err().to_string().contains("--data-dir"));
        let mut a = args("2=127.0.0.1:65000");
        a.raft_port_offset = Some(1000);
        let e = NodeConfig::resolve(a).unwrap_err().to_string();
        assert!(e.contains("raft_port_offset"), "{e}");
        let mut a = args("2=127.0.0.1:7002");
        a.raft_port_offset = Some(1000);
        assert_eq!(NodeConfig::resolve(a).unwrap().raft_port_offset, 1000);
    }
}

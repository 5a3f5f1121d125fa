//! A harness for multi-process tests: real `ringkv-node` processes on loopback.
//!
//! Each [`Cluster`] gets its own temporary directory (data dirs and node logs) and free
//! ports, so tests run in parallel. Nodes are started from the workspace's built binary
//! (`target/<profile>/ringkv-node`, or `RINGKV_NODE_BIN`). Faults are real: `kill -9`
//! (SIGKILL) and restart on the same data directory, or SIGTERM for a clean stop.
//!
//! [`Cluster::put`] and friends route like a minimal client: compute the key's shard with
//! the real placement code, try the node believed to lead it, and follow `NOT_LEADER` hints
//! from the status details. Waiting is always on a condition with a deadline, never a bare
//! sleep.

use anyhow::{Context, Result, anyhow, bail, ensure};
use ringkv_placement::{Layout, NodeSpec, ShardMap};
use ringkv_proto::v1::admin_client::AdminClient;
use ringkv_proto::v1::kv_client::KvClient;
use ringkv_proto::v1::{
    Consistency, GetRequest, GetResponse, GetShardMapRequest, ListNodesRequest, ListNodesResponse,
    NodeStatusRequest, NodeStatusResponse, PutRequest, PutResponse, RaftRole, ShardChecksumRequest,
    ShardChecksumResponse, ShardStatus,
};
use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_types::StatusExt;

pub mod cgroup;
pub mod k8s;
pub mod netns;
pub mod netpol;
pub mod pods;
pub use netns::NetLab;

/// Raft timing for tests: short, so failover tests finish quickly, but well above loopback
/// latency so a loaded CI machine does not see spurious elections.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    pub snapshot_after_entries: u64,
    pub log_entries_kept: u64,
    /// 0 turns leader balancing off.
    pub leader_balance_ms: u64,
    /// How often leaders enforce topic retention and compact the watch history.
    pub retention_interval_ms: u64,
    pub watch_history_revisions: u64,
    /// A node silent this long is marked down and its replicas re-created elsewhere.
    pub down_after_ms: u64,
    /// A move whose learner has not caught up by then is undone.
    pub move_timeout_ms: u64,
    /// How often each node syncs with the meta leader (and reconciles its replicas).
    pub sync_interval_ms: u64,
    pub moves_max: usize,
    pub moves_per_node_max: usize,
    /// Snapshot bytes per second a node sends (0: unpaced).
    pub snapshot_send_bytes_per_sec: u64,
    /// An idle shard quiesces after this long (0: never). The node's default, so every
    /// test runs with quiescence as a user would.
    pub quiesce_after_ms: u64,
    /// A replica older than this makes its node not ready.
    pub ready_staleness_max_ms: u64,
    /// Client requests a node serves at once before it sheds load (`OVERLOADED`).
    pub inflight_requests_max: u32,
    /// `RUST_LOG` for the nodes and routers (`None`: `RINGKV_TEST_LOG`, else
    /// `info,openraft=warn`).
    pub log_filter: Option<&'static str>,
    /// Logs as JSON lines (`RINGKV_LOG_FORMAT=json`), for tests that read fields.
    pub log_json: bool,
    /// Nodes started with `--packed-replication false`: they neither send nor accept packed
    /// replication, as nodes of the version before it (a mixed cluster mid-upgrade).
    pub unpacked_nodes: &'static [u64],
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            heartbeat_ms: 100,
            election_min_ms: 600,
            election_max_ms: 1200,
            snapshot_after_entries: 10_000,
            log_entries_kept: 1000,
            leader_balance_ms: 1000,
            retention_interval_ms: 200,
            watch_history_revisions: 100_000,
            down_after_ms: 30 * 60 * 1000,
            move_timeout_ms: 120_000,
            sync_interval_ms: 200,
            moves_max: 8,
            moves_per_node_max: 2,
            snapshot_send_bytes_per_sec: 0,
            // The node's default (`RaftTuning`).
            quiesce_after_ms: 500,
            ready_staleness_max_ms: 3_000,
            inflight_requests_max: 1024,
            log_filter: None,
            log_json: false,
            unpacked_nodes: &[],
        }
    }
}

/// One node process slot. `id` is the slot (1-based, stable for the test's life) and also
/// the initial member id; a slot whose data is wiped comes back under a new cluster identity
/// (see [`Cluster::identity_of`]).
pub struct NodeProc {
    pub id: u64,
    pub addr: String,
    pub metrics_addr: String,
    pub data_dir: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    /// Drained or removed from the cluster and stopped for good (healing does not restart it).
    pub retired: bool,
}

impl NodeProc {
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<NodeProc>,
    pub map: ShardMap,
    pub tuning: Tuning,
    members_arg: String,
    layout: Layout,
    leader_cache: Mutex<HashMap<u64, u64>>,
    /// Cluster identity -> slot, as learned (see [`Cluster::learn_identities`]).
    identities: Mutex<HashMap<u64, u64>>,
    /// The network namespaces the nodes run in, if any (dropped after the nodes).
    pub net: Option<NetLab>,
    /// TLS everywhere, when started with [`Cluster::start_tls`].
    pub tls: Option<ClusterTls>,
    /// The access policy file every node and router is started with
    /// ([`Cluster::start_with_policy`]).
    pub auth_policy: Option<PathBuf>,
}

/// A test cluster's certificates, as `ringkv dev --tls` makes them: a throwaway CA and one
/// directory (a TLS Secret's files) per process under `root`.
pub struct ClusterTls {
    pub ca: ringkv_tls::DevCa,
    /// The nodes' own CA, when they have one ([`Cluster::start_tls_peer_ca`]): node
    /// certificates come from it, the router's and the harness's from `ca`.
    pub peer_ca: Option<ringkv_tls::DevCa>,
    pub root: PathBuf,
    /// What the test itself dials with (a certificate of the CA).
    pub client: ringkv_tls::Dialer,
}

impl ClusterTls {
    /// Every name a loopback process is dialed by.
    pub const NAMES: [&str; 2] = ["127.0.0.1", "localhost"];
    /// How often the test processes re-read their certificate files.
    pub const RELOAD_INTERVAL_MS: u64 = 200;

    fn new(root: PathBuf, peer_ca: bool) -> Result<Self> {
        let ca = ringkv_tls::DevCa::generate("ringkv test CA")?;
        let peer_ca =
            peer_ca.then(|| ringkv_tls::DevCa::generate("ringkv test nodes' CA")).transpose()?;
        let mut tls = ClusterTls { ca, peer_ca, root, client: ringkv_tls::Dialer::plaintext() };
        if let Some(peer) = &tls.peer_ca {
            std::fs::create_dir_all(&tls.root)?;
            std::fs::write(tls.peer_ca_file(), peer.cert_pem())?;
        }
        let paths = ringkv_tls::TlsPaths::in_dir(&tls.identity("client", "127.0.0.1")?);
        tls.client = ringkv_tls::Dialer::new(Some(ringkv_tls::Tls::load(paths)?));
        Ok(tls)
    }

    /// A dialer that trusts the cluster (the harness's CA bundle) and presents no
    /// certificate of its own: a caller whose only credential is what it sends.
    pub fn anonymous(&self) -> Result<ringkv_tls::Dialer> {
        let ca = self.identity("client", "127.0.0.1")?.join(ringkv_tls::TlsPaths::CA_FILE);
        let paths = ringkv_tls::TlsPaths { ca, cert: None, key: None, peer_ca: None };
        Ok(ringkv_tls::Dialer::new(Some(ringkv_tls::Tls::load(paths)?)))
    }

    /// Where the nodes' CA certificate is, when they have one.
    pub fn peer_ca_file(&self) -> PathBuf {
        self.root.join("peer-ca.crt")
    }

    /// The directory of `who`'s certificate, issued on first use, naming `host` (the
    /// address the process is dialed at, in a network namespace its own IP) and loopback.
    pub fn identity(&self, who: &str, host: &str) -> Result<PathBuf> {
        let dir = self.root.join(who);
        if !dir.join(ringkv_tls::TlsPaths::KEY_FILE).exists() {
            let mut names: Vec<&str> = Self::NAMES.to_vec();
            if !names.contains(&host) {
                names.push(host);
            }
            let node = who.starts_with("node-");
            let issuer = match &self.peer_ca {
                Some(peer) if node => peer,
                _ => &self.ca,
            };
            issuer.write_identity(&dir, &names, ringkv_tls::Usage::Peer)?;
            // Everyone's ca.crt is `ca`; those that dial nodes also trust the nodes' CA.
            let ca_file = dir.join(ringkv_tls::TlsPaths::CA_FILE);
            match &self.peer_ca {
                Some(peer) if !node => {
                    std::fs::write(ca_file, self.ca.cert_pem() + &peer.cert_pem())?
                }
                Some(_) => std::fs::write(ca_file, self.ca.cert_pem())?,
                None => {}
            }
        }
        Ok(dir)
    }
}

/// A workspace binary (`ringkv-node`, `ringkv-router`, `ringkv`) next to the test
/// executable's `deps/` directory.
pub fn binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // Test executables live in <profile>/deps, other binaries (the chaos harness) in <profile>.
    let dirs = [exe.parent(), exe.parent().and_then(Path::parent)];
    for dir in dirs.into_iter().flatten() {
        let bin = dir.join(name);
        if bin.is_file() {
            return Ok(bin);
        }
    }
    bail!(
        "{name} not found next to {}: build it first (cargo build --workspace --bins)",
        exe.display()
    )
}

/// The `ringkv-node` binary (or `RINGKV_NODE_BIN`).
pub fn node_binary() -> Result<PathBuf> {
    match std::env::var("RINGKV_NODE_BIN") {
        Ok(p) => Ok(PathBuf::from(p)),
        Err(_) => binary("ringkv-node"),
    }
}

/// A free port for a test's listener (see [`free_port_range`]).
pub fn free_port() -> Result<u16> {
    free_port_range(1)
}

/// Test nodes serve Raft and membership on a port of their own, the client port + 1, as the
/// Kubernetes manifests do (with their own offset): every multi-process test runs that way.
pub const RAFT_PORT_OFFSET: u16 = 1;

/// `n` consecutive free ports, for listeners a test process starts later.
///
/// A port found free must stay free until the node binds it, a second later, and between a
/// node's stop and its restart on the same port. Two things took such ports in between: outgoing connections, which the kernel gives ports of the
/// ephemeral range (so ports are taken below it), and other test processes picking the same
/// port at random (nextest runs each test in a process of its own; with hundreds of
/// multi-process tests a full run hit that about once in three, a node exiting at once with
/// "address in use"). So ports are handed out in turn, through a counter in a file that every
/// test process on the machine locks: none is handed out twice until the 12,000 below the
/// ephemeral range have gone round. Each is still checked by binding it.
pub fn free_port_range(n: u16) -> Result<u16> {
    use std::io::{Read, Seek, Write};
    const SPAN: u16 = 12_000;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok());
    let Some(low) = ephemeral_low.filter(|&low| low > SPAN + 1024) else {
        // No room below the ephemeral range: the kernel's choice, checked for the range.
        for _ in 0..100 {
            let base = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            if base.checked_add(n).is_some() && bindable(base, n) {
                return Ok(base);
            }
        }
        bail!("no range of {n} free ports found");
    };
    let first = low - SPAN;
    let path = std::env::temp_dir().join("ringkv-test-ports");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    // Released when `file` is dropped.
    file.lock()?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    let mut next =
        text.trim().parse::<u16>().ok().filter(|p| (first..low).contains(p)).unwrap_or(first);
    for _ in 0..SPAN {
        if next + n > low {
            next = first;
        }
        let base = next;
        next += n;
        if bindable(base, n) {
            file.set_len(0)?;
            file.rewind()?;
            write!(file, "{next}")?;
            return Ok(base);
        }
    }
    bail!("no range of {n} free ports found below {low}")
}

/// Whether ports `base..base + n` can all be bound on loopback now.
fn bindable(base: u16, n: u16) -> bool {
    let held: Result<Vec<_>, _> =
        (0..n).map(|i| std::net::TcpListener::bind(("127.0.0.1", base + i))).collect();
    held.is_ok()
}

/// A `ringkv-router` process.
pub struct RouterProc {
    pub addr: String,
    /// Where its stdout and stderr go.
    pub log_path: PathBuf,
    child: Child,
}

impl RouterProc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RouterProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Of a shard → leader map, the node leading the most shards (ties: the highest id).
pub fn busiest(leaders: &HashMap<u64, u64>) -> Option<u64> {
    let mut count: HashMap<u64, usize> = HashMap::new();
    for &node in leaders.values() {
        *count.entry(node).or_default() += 1;
    }
    count.into_iter().max_by_key(|&(n, k)| (k, n)).map(|(n, _)| n)
}

/// A client in router mode with a 20 s deadline per call (retries included), for tests that
/// ride out failovers.
/// What the gRPC health service at `addr` says of `service` ("" for the whole server).
pub async fn health(addr: &str, service: &str) -> Result<ServingStatus> {
    health_of(channel(addr).await?, service).await
}

/// What the gRPC health service on `channel` says of `service`.
pub async fn health_of(channel: Channel, service: &str) -> Result<ServingStatus> {
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    let reply = client
        .check(tonic_health::pb::HealthCheckRequest { service: service.to_string() })
        .await?
        .into_inner();
    Ok(ServingStatus::try_from(reply.status).unwrap_or(ServingStatus::Unknown))
}

pub async fn router_client(addr: &str) -> Result<ringkv_client::Client> {
    Ok(ringkv_client::Client::builder()
        .router(addr.to_string())
        .timeout(Duration::from_secs(20))
        .connect()
        .await?)
}

/// Polls `check` every 50 ms until it returns `Some`, or fails after `timeout` with `what`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The NOT_LEADER hint in a status's details: the leader's node id, if named.
pub fn leader_hint(status: &tonic::Status) -> Option<u64> {
    let d = status.get_error_details();
    let info = d.error_info()?;
    if info.reason != "NOT_LEADER" {
        return None;
    }
    info.metadata.get("leader_id")?.parse().ok()
}

/// The ErrorInfo reason of a status, if any.
pub fn reason(status: &tonic::Status) -> Option<String> {
    status.get_error_details().error_info().map(|i| i.reason.clone())
}

impl Cluster {
    pub async fn start(nodes: u64, shards: u32, rf: u32, tuning: Tuning) -> Result<Self> {
        Self::start_in(nodes, shards, rf, tuning, None).await
    }

    /// Starts a cluster; with a [`NetLab`], node `i` runs in the lab's namespace for `i`, on
    /// its own address, so the network between nodes can be broken.
    pub async fn start_in(
        nodes: u64,
        shards: u32,
        rf: u32,
        tuning: Tuning,
        net: Option<NetLab>,
    ) -> Result<Self> {
        Self::start_with(nodes, shards, rf, tuning, net, false).await
    }

    /// Starts a cluster with TLS everywhere (see [`ClusterTls`]): the nodes, the routers it
    /// starts and the harness's own calls all use certificates of one throwaway CA.
    pub async fn start_tls(nodes: u64, shards: u32, rf: u32, tuning: Tuning) -> Result<Self> {
        Self::start_with(nodes, shards, rf, tuning, None, true).await
    }

    /// [`Cluster::start_tls`] with a CA of the nodes' own (`--tls-peer-ca`): only node
    /// certificates may call the peer services; the router's and the harness's certificates
    /// come from the other CA.
    pub async fn start_tls_peer_ca(
        nodes: u64,
        shards: u32,
        rf: u32,
        tuning: Tuning,
    ) -> Result<Self> {
        Self::start_opts(nodes, shards, rf, tuning, None, Some(true), None).await
    }

    /// [`Cluster::start_tls_peer_ca`] with authorization: every node and router gets the
    /// access policy `policy` (TOML), written to `<dir>/policy.toml`.
    pub async fn start_with_policy(
        nodes: u64,
        shards: u32,
        rf: u32,
        tuning: Tuning,
        policy: &str,
    ) -> Result<Self> {
        Self::start_opts(nodes, shards, rf, tuning, None, Some(true), Some(policy)).await
    }

    /// Starts a cluster, in a [`NetLab`] when given, with TLS everywhere when `tls`.
    pub async fn start_with(
        nodes: u64,
        shards: u32,
        rf: u32,
        tuning: Tuning,
        net: Option<NetLab>,
        tls: bool,
    ) -> Result<Self> {
        Self::start_opts(nodes, shards, rf, tuning, net, tls.then_some(false), None).await
    }

    /// Founds a cluster of `nodes` initial members of which `missing` is never started (a
    /// member down at founding); start it later with [`Cluster::spawn`].
    pub async fn start_missing(
        nodes: u64,
        shards: u32,
        rf: u32,
        tuning: Tuning,
        missing: u64,
    ) -> Result<Self> {
        Self::prepare(nodes, shards, rf, tuning, None, None, None)?.launch(Some(missing)).await
    }

    /// `tls`: `None` plaintext, `Some(peer_ca)` TLS, the nodes with a CA of their own when
    /// `peer_ca`.
    async fn start_opts(
        nodes: u64,
        shards: u32,
        rf: u32,
        tuning: Tuning,
        net: Option<NetLab>,
        tls: Option<bool>,
        policy: Option<&str>,
    ) -> Result<Self> {
        Self::prepare(nodes, shards, rf, tuning, net, tls, policy)?.launch(None).await
    }

    /// Starts every node (but `missing`) of a prepared cluster and waits until they serve.
    async fn launch(mut self, missing: Option<u64>) -> Result<Self> {
        for id in (1..=self.nodes.len() as u64).filter(|&id| Some(id) != missing) {
            self.spawn(id)?;
        }
        self.wait_serving().await?;
        Ok(self)
    }

    /// The cluster's directories, addresses and options, before any node starts.
    fn prepare(
        nodes: u64,
        shards: u32,
        rf: u32,
        tuning: Tuning,
        net: Option<NetLab>,
        tls: Option<bool>,
        policy: Option<&str>,
    ) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("ringkv-test-").tempdir()?;
        let auth_policy = policy
            .map(|text| {
                let path = dir.path().join("policy.toml");
                std::fs::write(&path, text).map(|()| path)
            })
            .transpose()?;
        let tls =
            tls.map(|peer_ca| ClusterTls::new(dir.path().join("tls"), peer_ca)).transpose()?;
        let mut specs = Vec::new();
        let mut procs = Vec::new();
        for id in 1..=nodes {
            // In a namespace the node has its address to itself, so fixed ports do.
            let (addr, metrics_addr) = match &net {
                Some(lab) => (format!("{}:7000", lab.ip(id)), format!("{}:9100", lab.ip(id))),
                None => {
                    let port = free_port_range(RAFT_PORT_OFFSET + 1)?;
                    (format!("127.0.0.1:{port}"), format!("127.0.0.1:{}", free_port()?))
                }
            };
            specs.push(NodeSpec { id, addr: addr.clone(), weight: 1 });
            procs.push(NodeProc {
                id,
                addr,
                metrics_addr,
                data_dir: dir.path().join(format!("node-{id}")),
                log_path: dir.path().join(format!("node-{id}.log")),
                child: None,
                retired: false,
            });
        }
        let members_arg =
            specs.iter().map(|s| format!("{}={}", s.id, s.addr)).collect::<Vec<_>>().join(",");
        let layout = Layout { shard_count: shards, replication_factor: rf, vnodes_per_shard: 256 };
        let map = ShardMap::new(layout, specs, 1)?;
        Ok(Cluster {
            dir,
            nodes: procs,
            map,
            tuning,
            members_arg,
            layout,
            leader_cache: Mutex::new(HashMap::new()),
            identities: Mutex::new(HashMap::new()),
            net,
            tls,
            auth_policy,
        })
    }

    fn node(&self, id: u64) -> &NodeProc {
        &self.nodes[(id - 1) as usize]
    }

    fn node_mut(&mut self, id: u64) -> &mut NodeProc {
        &mut self.nodes[(id - 1) as usize]
    }

    /// The command line of node `id` (public so tests can vary it).
    pub fn command(&self, id: u64) -> Result<Command> {
        let n = self.node(id);
        let t = self.tuning;
        let mut cmd = Command::new(node_binary()?);
        cmd.arg("--node-id")
            .arg(id.to_string())
            .arg("--data-dir")
            .arg(&n.data_dir)
            .arg("--members")
            .arg(&self.members_arg)
            .arg("--raft-port-offset")
            .arg(RAFT_PORT_OFFSET.to_string())
            .arg("--shards")
            .arg(self.layout.shard_count.to_string())
            .arg("--replication-factor")
            .arg(self.layout.replication_factor.to_string())
            .arg("--metrics-listen")
            .arg(&n.metrics_addr)
            .arg("--heartbeat-interval-ms")
            .arg(t.heartbeat_ms.to_string())
            .arg("--election-timeout-min-ms")
            .arg(t.election_min_ms.to_string())
            .arg("--election-timeout-max-ms")
            .arg(t.election_max_ms.to_string())
            .arg("--snapshot-after-entries")
            .arg(t.snapshot_after_entries.to_string())
            .arg("--log-entries-kept")
            .arg(t.log_entries_kept.to_string())
            .arg("--leader-balance-interval-ms")
            .arg(t.leader_balance_ms.to_string())
            .arg("--retention-interval-ms")
            .arg(t.retention_interval_ms.to_string())
            .arg("--watch-history-revisions")
            .arg(t.watch_history_revisions.to_string())
            .arg("--down-after-ms")
            .arg(t.down_after_ms.to_string())
            .arg("--move-timeout-ms")
            .arg(t.move_timeout_ms.to_string())
            .arg("--sync-interval-ms")
            .arg(t.sync_interval_ms.to_string())
            .arg("--moves-max")
            .arg(t.moves_max.to_string())
            .arg("--moves-per-node-max")
            .arg(t.moves_per_node_max.to_string())
            .arg("--snapshot-send-bytes-per-sec")
            .arg(t.snapshot_send_bytes_per_sec.to_string())
            .arg("--quiesce-after-ms")
            .arg(t.quiesce_after_ms.to_string())
            .arg("--inflight-requests-max")
            .arg(t.inflight_requests_max.to_string())
            .arg("--ready-staleness-max-ms")
            .arg(t.ready_staleness_max_ms.to_string())
            .arg("--listen")
            .arg(n.addr.replace("localhost", "127.0.0.1"))
            .arg("--advertise-addr")
            .arg(&n.addr)
            .arg("--join")
            .arg(self.seeds())
            .args(match &self.tls {
                Some(tls) => {
                    let mut args: Vec<std::ffi::OsString> = vec![
                        "--tls-dir".into(),
                        tls.identity(&format!("node-{id}"), host_of(&n.addr))?.into_os_string(),
                        "--tls-reload-interval-ms".into(),
                        ClusterTls::RELOAD_INTERVAL_MS.to_string().into(),
                    ];
                    if tls.peer_ca.is_some() {
                        args.extend(["--tls-peer-ca".into(), tls.peer_ca_file().into_os_string()]);
                    }
                    args
                }
                None => Vec::new(),
            })
            .args(self.auth_args())
            .args(if t.unpacked_nodes.contains(&id) {
                &["--packed-replication", "false"][..]
            } else {
                &[]
            })
            .env("RUST_LOG", self.log_filter())
            .env("RINGKV_LOG_FORMAT", self.log_format())
            .stdin(Stdio::null());
        Ok(cmd)
    }

    /// The `RINGKV_LOG_FORMAT` of this cluster's processes ([`Tuning::log_json`]).
    fn log_format(&self) -> &'static str {
        if self.tuning.log_json { "json" } else { "text" }
    }

    /// The `RUST_LOG` of this cluster's processes ([`Tuning::log_filter`]).
    fn log_filter(&self) -> String {
        self.tuning.log_filter.map(str::to_string).unwrap_or_else(|| {
            std::env::var("RINGKV_TEST_LOG").unwrap_or_else(|_| "info,openraft=warn".into())
        })
    }

    pub fn spawn(&mut self, id: u64) -> Result<()> {
        let cmd = self.command(id)?;
        let mut cmd = match &self.net {
            Some(lab) => lab.wrap(id, &cmd),
            None => cmd,
        };
        let n = self.node(id);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&n.log_path)?;
        cmd.stdout(log.try_clone()?).stderr(log);
        let child = cmd.spawn().context("spawning ringkv-node")?;
        self.node_mut(id).child = Some(child);
        Ok(())
    }

    /// SIGKILL: no shutdown code runs, as in a power cut of the process.
    pub fn kill(&mut self, id: u64) -> Result<()> {
        if let Some(mut child) = self.node_mut(id).child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Deletes a stopped node's data directory: it comes back as an empty node, which must
    /// join under a new identity.
    pub fn wipe(&mut self, id: u64) -> Result<()> {
        ensure!(!self.node(id).is_running(), "wipe node {id} only while it is stopped");
        match std::fs::remove_dir_all(&self.node(id).data_dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Adds a node slot that is not an initial member and starts it: it joins the cluster.
    /// Returns its slot (wait for it with [`Cluster::wait_node_serving`]).
    pub fn add_node(&mut self) -> Result<u64> {
        let id = self.nodes.len() as u64 + 1;
        let (addr, metrics_addr) = match &self.net {
            Some(lab) => {
                ensure!(lab.has_node(id), "the network lab has no namespace for node {id}");
                (format!("{}:7000", lab.ip(id)), format!("{}:9100", lab.ip(id)))
            }
            None => {
                let port = free_port_range(RAFT_PORT_OFFSET + 1)?;
                (format!("127.0.0.1:{port}"), format!("127.0.0.1:{}", free_port()?))
            }
        };
        self.nodes.push(NodeProc {
            id,
            addr,
            metrics_addr,
            data_dir: self.dir.path().join(format!("node-{id}")),
            log_path: self.dir.path().join(format!("node-{id}.log")),
            child: None,
            retired: false,
        });
        self.spawn(id)?;
        Ok(id)
    }

    /// Waits until a node answers NodeStatus (an empty node answers only once it has joined).
    pub async fn wait_node_serving(&self, id: u64, timeout: Duration) -> Result<()> {
        let addr = self.node(id).addr.clone();
        wait_for(timeout, &format!("node {id} to serve"), || {
            let addr = addr.clone();
            async move {
                self.admin_at(&addr)
                    .await
                    .ok()?
                    .node_status(NodeStatusRequest {})
                    .await
                    .ok()
                    .map(|_| ())
            }
        })
        .await
        .map_err(|e| anyhow!("{e}\n{}\n{}", self.process_state(id), self.log_tail(id)))
    }

    /// What the kernel says of slot `id`'s process (`/proc/<pid>/stat` state: R running,
    /// S sleeping, D in I/O, T stopped by a signal, Z exited), for timeouts: a node that never
    /// logged a line was seen twice in CI, and whether it ran, slept or was stopped tells why.
    pub fn process_state(&self, id: u64) -> String {
        let Some(pid) = self.pid(id) else { return format!("node {id}: no process") };
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => {
                let state = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next());
                let wchan =
                    std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
                format!(
                    "node {id}: pid {pid}, state {}, waiting in {wchan:?}",
                    state.unwrap_or("?")
                )
            }
            Err(e) => format!("node {id}: pid {pid}: {e}"),
        }
    }

    /// The slot whose meta replica leads, if a running one does.
    pub async fn meta_leader(&self) -> Option<u64> {
        for slot in self.running() {
            if let Ok(st) = self.status(slot).await
                && st
                    .shards
                    .iter()
                    .any(|s| s.shard_id == u64::MAX && s.role == RaftRole::Leader as i32)
            {
                return Some(slot);
            }
        }
        None
    }

    /// The cluster identity (node id) the process in slot `id` runs as now.
    pub async fn identity_of(&self, id: u64) -> Result<u64> {
        self.status(id).await?.node.map(|n| n.id).context("NodeStatus without a node")
    }

    /// The slot running cluster identity `node_id`, if a running slot does.
    pub async fn slot_of(&self, node_id: u64) -> Option<u64> {
        for slot in self.running() {
            if self.identity_of(slot).await.ok() == Some(node_id) {
                return Some(slot);
            }
        }
        None
    }

    /// The membership as the meta leader sees it (asked through any running node).
    pub async fn list_nodes(&self) -> Result<ListNodesResponse> {
        let mut last = anyhow!("no node running");
        for id in self.running() {
            match self.admin(id).await {
                Ok(mut a) => match a.list_nodes(ListNodesRequest {}).await {
                    Ok(r) => return Ok(r.into_inner()),
                    Err(e) => last = anyhow!("node {id}: {}", e.message()),
                },
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The cluster's current shard map (asked of any running node; the newest epoch wins).
    pub async fn current_map(&self) -> Result<ringkv_proto::v1::ShardMap> {
        let mut best: Option<ringkv_proto::v1::ShardMap> = None;
        for id in self.running() {
            if let Ok(mut a) = self.admin(id).await
                && let Ok(r) = a.get_shard_map(GetShardMapRequest {}).await
                && let Some(m) = r.into_inner().map
                && best.as_ref().is_none_or(|b| b.epoch < m.epoch)
            {
                best = Some(m);
            }
        }
        best.context("no running node answered GetShardMap")
    }

    /// Waits until the cluster has settled: no moves, every shard (meta group included) on
    /// its target placement with all its replicas live.
    pub async fn wait_settled(&self, timeout: Duration) -> Result<ListNodesResponse> {
        let r = wait_for(timeout, "the placement to settle", || async {
            let l = self.list_nodes().await.ok()?;
            settled(&l).then_some(l)
        })
        .await;
        match r {
            Ok(l) => Ok(l),
            Err(e) => {
                let l = self.list_nodes().await;
                bail!("{e}; last membership: {l:?}")
            }
        }
    }

    /// Waits until the placement settled and every shard has RF replicas, each with a leader.
    pub async fn wait_for_rf(&self, timeout: Duration) -> Result<ringkv_proto::v1::ShardMap> {
        self.wait_settled(timeout).await?;
        let rf = self.layout.replication_factor as usize;
        let map = self.current_map().await?;
        for s in &map.shards {
            ensure!(s.replicas.len() == rf, "shard {} has replicas {:?}", s.shard_id, s.replicas);
        }
        self.wait_for_leaders(timeout).await?;
        Ok(map)
    }

    /// Waits until every replica of every shard, per the current map, reports the same
    /// checksum at the same applied index (writes must have stopped). The map is read again on
    /// every try: moves may still be finishing, and a replica that moved away is no longer
    /// compared. On timeout it says what each replica last answered and keeps the node logs.
    pub async fn assert_checksums_equal(&self, timeout: Duration) -> Result<()> {
        let last = Mutex::new(String::new());
        let waited = wait_for(timeout, "equal checksums on every shard", || {
            let last = &last;
            async move {
                let map = self.current_map().await.ok()?;
                for s in &map.shards {
                    let mut sums = Vec::new();
                    let mut seen = Vec::new();
                    for &r in &s.replicas {
                        let answer = match self.slot_of(r).await {
                            Some(slot) => self.checksum(slot, s.shard_id).await,
                            None => Err(anyhow!("not running")),
                        };
                        match answer {
                            Ok(x) => {
                                seen.push(format!(
                                    "node {r}: applied {} checksum {:x}",
                                    x.applied_index, x.checksum
                                ));
                                sums.push((x.applied_index, x.checksum));
                            }
                            Err(e) => seen.push(format!("node {r}: {e:#}")),
                        }
                    }
                    let equal =
                        sums.len() == s.replicas.len() && sums.windows(2).all(|w| w[0] == w[1]);
                    if !equal {
                        *last.lock().unwrap_or_else(|p| p.into_inner()) = format!(
                            "shard {} at map epoch {}: {}",
                            s.shard_id,
                            map.epoch,
                            seen.join("; ")
                        );
                        return None;
                    }
                }
                Some(())
            }
        })
        .await;
        if let Err(e) = waited {
            let seen = last.lock().unwrap_or_else(|p| p.into_inner()).clone();
            bail!("{e:#}; last seen: {seen}; {}", self.keep_logs("checksums"));
        }
        Ok(())
    }

    /// Stops slot `id` for good (SIGTERM): it left the cluster, healing must not restart it.
    pub fn retire(&mut self, id: u64) -> Result<()> {
        if self.node(id).is_running() {
            self.terminate(id)?;
        }
        self.node_mut(id).retired = true;
        Ok(())
    }

    /// The replication factor the cluster was started with.
    pub fn tuning_rf(&self) -> usize {
        self.layout.replication_factor as usize
    }

    /// Whether [`Cluster::add_node`] can add a slot (inside a network lab: a namespace is
    /// left for it).
    pub fn has_spare_slot(&self) -> bool {
        let next = self.nodes.len() as u64 + 1;
        self.net.as_ref().is_none_or(|lab| lab.has_node(next)) && next <= netns::NODES_MAX
    }

    /// Brings a retired slot back as a new node: its data is deleted and it joins again
    /// (under a new identity). Returns false when the slot was not retired.
    pub fn revive(&mut self, id: u64) -> Result<bool> {
        if !self.node(id).retired {
            return Ok(false);
        }
        self.wipe(id)?;
        self.node_mut(id).retired = false;
        self.spawn(id)?;
        Ok(true)
    }

    /// Slots that left the cluster for good.
    pub fn retired(&self) -> Vec<u64> {
        self.nodes.iter().filter(|n| n.retired).map(|n| n.id).collect()
    }

    /// Slots that are part of the cluster (not retired), running or not.
    pub fn members(&self) -> Vec<u64> {
        self.nodes.iter().filter(|n| !n.retired).map(|n| n.id).collect()
    }

    /// Node addresses, comma separated (router seeds; retired nodes left out).
    pub fn seeds(&self) -> String {
        self.nodes
            .iter()
            .filter(|n| !n.retired)
            .map(|n| n.addr.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts a `ringkv-router` in front of this cluster and waits until it serves.
    pub async fn start_router(&self, read_policy: &str) -> Result<RouterProc> {
        self.start_router_with(&["--read-policy", read_policy]).await
    }

    /// Starts a `ringkv-router` with extra flags.
    pub async fn start_router_with(&self, extra: &[&str]) -> Result<RouterProc> {
        let addr = format!("127.0.0.1:{}", free_port()?);
        let seeds = self.seeds();
        let log_path = self.dir.path().join(format!("router-{}.log", free_port()?));
        let log = std::fs::File::create(&log_path)?;
        let tls_args = match &self.tls {
            Some(tls) => vec![
                "--tls-dir".into(),
                tls.identity("router", "127.0.0.1")?.into_os_string(),
                "--tls-reload-interval-ms".into(),
                ClusterTls::RELOAD_INTERVAL_MS.to_string().into(),
            ],
            None => Vec::<std::ffi::OsString>::new(),
        };
        let child = Command::new(binary("ringkv-router")?)
            .args(["--listen", &addr, "--seeds", &seeds])
            .args(tls_args)
            .args(self.auth_args())
            .args(extra)
            .env("RUST_LOG", self.log_filter())
            .env("RINGKV_LOG_FORMAT", self.log_format())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let router = RouterProc { addr: addr.clone(), log_path, child };
        // Serving starts before the router has found the cluster; ready means it has.
        wait_for(Duration::from_secs(30), "the router to be ready", || {
            let addr = addr.clone();
            async move {
                let status = health_of(self.dial(&addr).await.ok()?, "").await.ok()?;
                (status == ServingStatus::Serving).then_some(())
            }
        })
        .await?;
        Ok(router)
    }

    /// `--auth-policy FILE` when the cluster has one.
    fn auth_args(&self) -> Vec<std::ffi::OsString> {
        match &self.auth_policy {
            Some(p) => vec!["--auth-policy".into(), p.clone().into_os_string()],
            None => Vec::new(),
        }
    }

    /// The process id of a running node.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.node(id).pid()
    }

    /// SIGSTOP / SIGCONT: freeze a node without killing it.
    pub fn signal(&self, id: u64, sig: nix::sys::signal::Signal) -> Result<()> {
        let pid = self.node(id).pid().context("node not running")?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(i32::try_from(pid)?), sig)?;
        Ok(())
    }

    /// SIGKILL every running node at (nearly) the same instant, then reap them.
    pub fn kill_all(&mut self) -> Result<Vec<u64>> {
        let mut killed = Vec::new();
        for n in &mut self.nodes {
            if let Some(child) = &n.child {
                let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
                nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL)?;
                killed.push(n.id);
            }
        }
        for n in &mut self.nodes {
            if let Some(mut child) = n.child.take() {
                child.wait()?;
            }
        }
        Ok(killed)
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self, id: u64) -> Result<std::process::ExitStatus> {
        let mut child = self.node_mut(id).child.take().context("node not running")?;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        Ok(child.wait()?)
    }

    pub async fn restart(&mut self, id: u64) -> Result<()> {
        self.spawn(id)?;
        self.wait_node_serving(id, Duration::from_secs(30)).await
    }

    /// Waits until every node serves and has the cluster's records (a map from the meta
    /// group, epoch >= 1), so tests start on a cluster that knows itself.
    async fn wait_serving(&self) -> Result<()> {
        for n in self.nodes.iter().filter(|n| !n.retired && n.child.is_some()) {
            let addr = n.addr.clone();
            wait_for(Duration::from_secs(30), &format!("node {} to serve", n.id), || {
                let addr = addr.clone();
                async move {
                    let st = self
                        .admin_at(&addr)
                        .await
                        .ok()?
                        .node_status(NodeStatusRequest {})
                        .await
                        .ok()?
                        .into_inner();
                    st.map.filter(|m| m.epoch >= 1).map(|_| ())
                }
            })
            .await
            .map_err(|e| anyhow!("{e}\n{}\n{}", self.process_state(n.id), self.log_tail(n.id)))?;
        }
        Ok(())
    }

    /// Keeps the logs of a failing test in `$TMPDIR/ringkv-<tag>-<pid>` and says where.
    pub fn keep_logs(&self, tag: &str) -> String {
        let kept = std::env::temp_dir().join(format!("ringkv-{tag}-{}", std::process::id()));
        match self.copy_logs(&kept) {
            Ok(()) => format!("node logs kept in {}", kept.display()),
            Err(c) => format!("node logs not kept: {c:#}"),
        }
    }

    /// Copies the node and router logs into `to` (the cluster's own folder is removed on drop).
    pub fn copy_logs(&self, to: &Path) -> Result<()> {
        std::fs::create_dir_all(to)?;
        for e in std::fs::read_dir(self.dir.path())? {
            let path = e?.path();
            if path.extension().is_some_and(|x| x == "log")
                && let Some(name) = path.file_name()
            {
                std::fs::copy(&path, to.join(name))?;
            }
        }
        Ok(())
    }

    /// A node's whole log so far.
    /// Where node `id`'s stdout and stderr go.
    pub fn log_path(&self, id: u64) -> &Path {
        &self.node(id).log_path
    }

    pub fn log_text(&self, id: u64) -> String {
        std::fs::read_to_string(&self.node(id).log_path).unwrap_or_default()
    }

    /// Waits until node `id`'s `/readyz` answers 200.
    pub async fn wait_node_ready(&self, id: u64, timeout: Duration) -> Result<()> {
        wait_for(timeout, &format!("node {id} to be ready"), || async move {
            (self.readyz(id).await.ok()?.0 == 200).then_some(())
        })
        .await
    }

    /// Node `id`'s `/readyz`: the HTTP status and the body.
    pub async fn readyz(&self, id: u64) -> Result<(u16, String)> {
        http_status(&self.node(id).metrics_addr, "/readyz").await
    }

    /// The last lines of a node's log, for failure messages.
    pub fn log_tail(&self, id: u64) -> String {
        let text = std::fs::read_to_string(&self.node(id).log_path).unwrap_or_default();
        // A node that exits with an error ends its log with a backtrace (RUST_BACKTRACE), whose
        // frames would fill the tail and hide the error above them.
        let frame = |l: &&str| {
            let t = l.trim_start();
            t.starts_with("at ")
                || t.split_once(": ").is_some_and(|(n, _)| n.parse::<u32>().is_ok())
        };
        let lines: Vec<&str> = text.lines().filter(|l| !frame(l)).collect();
        format!(
            "--- node {id} log (tail) ---\n{}",
            lines[lines.len().saturating_sub(30)..].join("\n")
        )
    }

    pub fn addr(&self, id: u64) -> String {
        self.node(id).addr.clone()
    }

    /// Where node `id` serves its peers (Raft, membership): its own port, as in production.
    pub fn peer_addr(&self, id: u64) -> String {
        let addr = self.addr(id);
        let (host, port) = addr.rsplit_once(':').expect("host:port");
        let port: u16 = port.parse().expect("a port");
        format!("{host}:{}", port + RAFT_PORT_OFFSET)
    }

    pub fn metrics_url(&self, id: u64) -> String {
        format!("http://{}/metrics", self.node(id).metrics_addr)
    }

    /// Node `id`'s Prometheus metrics text.
    pub async fn metrics(&self, id: u64) -> Result<String> {
        http_get(&self.node(id).metrics_addr, "/metrics").await
    }

    pub async fn kv(&self, id: u64) -> Result<KvClient<Channel>> {
        Ok(KvClient::new(self.dial(&self.addr(id)).await?))
    }

    pub async fn admin(&self, id: u64) -> Result<AdminClient<Channel>> {
        self.admin_at(&self.addr(id)).await
    }

    /// How the harness dials this cluster's processes (TLS when the cluster has it).
    pub fn dialer(&self) -> ringkv_tls::Dialer {
        self.tls.as_ref().map(|t| t.client.clone()).unwrap_or_default()
    }

    /// A channel to `addr` (a node or a router of this cluster).
    pub async fn dial(&self, addr: &str) -> Result<Channel> {
        let dialer = self.dialer();
        let endpoint = dialer
            .endpoint(addr)?
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(10));
        Ok(dialer.connect(&endpoint).await?)
    }

    pub async fn admin_at(&self, addr: &str) -> Result<AdminClient<Channel>> {
        Ok(AdminClient::new(self.dial(addr).await?))
    }

    /// A client of the router at `addr` with a 20 s deadline per call, dialing as the
    /// harness does.
    pub async fn router_client(&self, addr: &str) -> Result<ringkv_client::Client> {
        Ok(ringkv_client::Client::builder()
            .router(addr.to_string())
            .timeout(Duration::from_secs(20))
            .dialer(self.dialer())
            .connect()
            .await?)
    }

    pub async fn status(&self, id: u64) -> Result<NodeStatusResponse> {
        Ok(self.admin(id).await?.node_status(NodeStatusRequest {}).await?.into_inner())
    }

    pub fn running(&self) -> Vec<u64> {
        self.nodes.iter().filter(|n| n.is_running()).map(|n| n.id).collect()
    }

    /// data shard -> leader slot, as reported by running nodes that consider themselves leader.
    pub async fn leaders(&self) -> HashMap<u64, u64> {
        let mut out = HashMap::new();
        for id in self.running() {
            if let Ok(st) = self.status(id).await {
                for s in st.shards {
                    if s.role == RaftRole::Leader as i32 && s.shard_id < self.shard_count() {
                        out.insert(s.shard_id, id);
                    }
                }
            }
        }
        out
    }

    /// The running node that leads the most shards (ties: the highest id), if any leads.
    pub async fn busiest_leader(&self) -> Option<u64> {
        busiest(&self.leaders().await)
    }

    /// Waits until every shard has a leader that all its running replicas name, at the
    /// leader's term. One node claiming the role is not enough: right after an election
    /// another replica may still campaign and unseat it, and a test's first request would then
    /// meet a shard without a leader.
    pub async fn wait_for_leaders(&self, timeout: Duration) -> Result<HashMap<u64, u64>> {
        let shards = u64::from(self.layout.shard_count);
        wait_for(timeout, "a leader for every shard, named by all its running replicas", || async {
            let l = self.agreed_leaders().await;
            (l.len() as u64 == shards).then_some(l)
        })
        .await
    }

    /// Shard -> leader slot, for the data shards whose leader every running voter names (the
    /// voters as the leader reports them: replicas move).
    async fn agreed_leaders(&self) -> HashMap<u64, u64> {
        // slot -> (its identity, its view of each shard it holds)
        let mut views: HashMap<u64, (u64, Vec<ShardStatus>)> = HashMap::new();
        for id in self.running() {
            if let Ok(st) = self.status(id).await {
                views.insert(id, (st.node.map_or(0, |n| n.id), st.shards));
            }
        }
        let slot_of: HashMap<u64, u64> =
            views.iter().map(|(&slot, (nid, _))| (*nid, slot)).collect();
        let view = |slot: u64, shard: u64| {
            views.get(&slot).and_then(|(_, v)| v.iter().find(|s| s.shard_id == shard))
        };
        let mut out = HashMap::new();
        for (&slot, (nid, shards)) in &views {
            for s in shards.iter().filter(|s| s.role == RaftRole::Leader as i32) {
                if s.shard_id >= self.shard_count() {
                    continue;
                }
                let agreed = s.voters.iter().filter_map(|v| slot_of.get(v)).all(|&r| {
                    view(r, s.shard_id)
                        .is_some_and(|v| v.leader_id == Some(*nid) && v.term == s.term)
                });
                if agreed {
                    out.insert(s.shard_id, slot);
                }
            }
        }
        out
    }

    /// Slots to try for `shard`: the one that led it last, then every running slot (replicas
    /// move, so the initial map is no guide; nodes without the shard answer WRONG_SHARD).
    fn candidates(&self, shard: u64) -> Vec<u64> {
        let cached = self.leader_cache.lock().unwrap().get(&shard).copied();
        let mut order: Vec<u64> =
            cached.filter(|&c| self.node(c).is_running()).into_iter().collect();
        for r in self.map.replicas(shard).iter().copied().chain(self.running()) {
            if !order.contains(&r)
                && self.nodes.get((r as usize).wrapping_sub(1)).is_some_and(NodeProc::is_running)
            {
                order.push(r);
            }
        }
        order
    }

    /// Sends `call` to the shard's leader, following NOT_LEADER hints and retrying unavailable
    /// shards (elections) until `timeout`. Only for requests that are safe to repeat.
    pub async fn routed<T, F, Fut>(
        &self,
        key: &[u8],
        timeout: Duration,
        mut call: F,
    ) -> Result<T, tonic::Status>
    where
        F: FnMut(KvClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let shard = self.map.shard_of(key);
        let deadline = Instant::now() + timeout;
        let mut last = tonic::Status::unavailable("no replica tried");
        loop {
            for id in self.candidates(shard) {
                let client = match self.kv(id).await {
                    Ok(c) => c,
                    Err(e) => {
                        last = tonic::Status::unavailable(e.to_string());
                        continue;
                    }
                };
                match call(client).await {
                    Ok(resp) => {
                        self.leader_cache.lock().unwrap().insert(shard, id);
                        return Ok(resp.into_inner());
                    }
                    Err(s) => {
                        // Hints name cluster identities; slots equal them until a wipe.
                        if let Some(l) = leader_hint(&s) {
                            let slot = self.slot_of_cached(l);
                            self.leader_cache.lock().unwrap().insert(shard, slot);
                        }
                        let retry = matches!(
                            s.code(),
                            tonic::Code::FailedPrecondition
                                | tonic::Code::Unavailable
                                | tonic::Code::DeadlineExceeded
                                // A paused node: the channel's own timeout.
                                | tonic::Code::Cancelled
                        );
                        if !retry {
                            return Err(s);
                        }
                        last = s;
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(last);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The slot of identity `node_id` as last seen (the identity itself when unknown: slots
    /// equal initial ids).
    fn slot_of_cached(&self, node_id: u64) -> u64 {
        self.identities.lock().unwrap().get(&node_id).copied().unwrap_or(node_id)
    }

    /// Learns which slot runs which identity (for following hints after wipes and joins).
    pub async fn learn_identities(&self) {
        for slot in self.running() {
            if let Ok(id) = self.identity_of(slot).await {
                self.identities.lock().unwrap().insert(id, slot);
            }
        }
    }

    /// An idempotent put (same key, same value) routed to the leader.
    pub async fn put(
        &self,
        key: &[u8],
        value: &[u8],
        timeout: Duration,
    ) -> Result<PutResponse, tonic::Status> {
        let (key, value) = (key.to_vec(), value.to_vec());
        self.routed(&key.clone(), timeout, move |mut c| {
            let req =
                PutRequest { key: key.clone().into(), value: value.clone().into(), session: None };
            async move { c.put(req).await }
        })
        .await
    }

    pub async fn get(
        &self,
        key: &[u8],
        consistency: Consistency,
        timeout: Duration,
    ) -> Result<GetResponse, tonic::Status> {
        let key = key.to_vec();
        self.routed(&key.clone(), timeout, move |mut c| {
            let req = GetRequest { key: key.clone().into(), consistency: consistency as i32 };
            async move { c.get(req).await }
        })
        .await
    }

    pub async fn checksum(&self, node: u64, shard: u64) -> Result<ShardChecksumResponse> {
        Ok(self
            .admin(node)
            .await?
            .shard_checksum(ShardChecksumRequest { shard_id: shard })
            .await?
            .into_inner())
    }

    /// A key that hashes to `shard` (searching `prefix-0`, `prefix-1`, ...).
    pub fn key_in_shard(&self, shard: u64, prefix: &str) -> Vec<u8> {
        (0u64..)
            .map(|i| format!("{prefix}-{i}").into_bytes())
            .find(|k| self.map.shard_of(k) == shard)
            .unwrap_or_default()
    }

    pub fn shard_count(&self) -> u64 {
        u64::from(self.layout.shard_count)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        // A test that fails by returning an error cannot be told apart from one that passed
        // here, so keeping the logs is opt-in: for chasing a rare failure in a loop.
        if std::env::var_os("RINGKV_TEST_KEEP").is_some() {
            self.dir.disable_cleanup(true);
            eprintln!("RINGKV_TEST_KEEP: cluster files kept in {}", self.dir.path().display());
        }
    }
}

/// The body of a plain HTTP/1.0 GET, bounded in time (the metrics endpoints are the only HTTP
/// the harnesses read).
pub async fn http_get(addr: &str, path: &str) -> Result<String> {
    Ok(http_status(addr, path).await?.1)
}

/// GET `path` from `addr`: the status code and the body.
pub async fn http_status(addr: &str, path: &str) -> Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let io = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await?;
        let mut text = String::new();
        s.read_to_string(&mut text).await?;
        Ok::<_, std::io::Error>(text)
    };
    let text = tokio::time::timeout(Duration::from_secs(5), io)
        .await
        .map_err(|_| anyhow!("GET {path} from {addr} timed out"))??;
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .with_context(|| format!("GET {path} from {addr}: no status line in {text:?}"))?;
    Ok((code, text.split_once("\r\n\r\n").map_or(text.clone(), |(_, body)| body.to_string())))
}

/// Whether a membership (as the meta leader lists it) has settled: every up node heard from
/// recently by this meta leader (right after a leader change every node counts as live for a
/// moment, which says nothing), none joining, no moves, every shard (meta group included) on
/// its target placement with all its replicas live.
pub fn settled(l: &ListNodesResponse) -> bool {
    let heard = l
        .nodes
        .iter()
        .filter(|n| n.state == "up")
        .all(|n| n.last_seen_ms.is_some_and(|ms| ms < 3_000));
    let joining = l.nodes.iter().any(|n| n.state == "joining");
    heard
        && !joining
        && l.moves.is_empty()
        && l.shards_off_target == 0
        && l.under_replicated_shards == 0
}

/// The membership as the meta leader sees it, asked through the first of `addrs` (plaintext
/// nodes) that answers.
pub async fn list_nodes_at(addrs: &[String]) -> Result<ListNodesResponse> {
    let mut last = anyhow!("no address given");
    for addr in addrs {
        match admin(addr).await {
            Ok(mut a) => match a.list_nodes(ListNodesRequest {}).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(e) => last = anyhow!("{addr}: {}", e.message()),
            },
            Err(e) => last = e.context(addr.clone()),
        }
    }
    Err(last)
}

/// The host part of `host:port`.
fn host_of(addr: &str) -> &str {
    addr.rsplit_once(':').map_or(addr, |(h, _)| h)
}

pub async fn channel(addr: &str) -> Result<Channel> {
    Ok(tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(10))
        .connect()
        .await?)
}

pub async fn admin(addr: &str) -> Result<AdminClient<Channel>> {
    Ok(AdminClient::new(channel(addr).await?))
}

//! `ringkv dev`: a whole cluster on this machine in one command.
//!
//! Starts N `ringkv-node` processes on loopback (the binary next to this one), each with its
//! own data directory under `--data-dir` and its log beside it, then a router inside this
//! process. When every shard has a leader it prints the endpoints and a status table, and
//! runs until Ctrl-C or SIGTERM, then stops the router and sends SIGTERM to every node.
//! Starting it again on the same data directory brings the same cluster back, data included.
//!
//! `--tls` runs the same cluster with TLS everywhere: a throwaway CA (its key only in this
//! process's memory) issues a certificate for each node, the router and the CLI under
//! `<data-dir>/tls/`, fresh on every start; nodes speak mutual TLS to each other and to the
//! router, and `RINGKV_TLS_DIR=<data-dir>/tls/client` points the CLI at its certificate.

use crate::status;
use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use ringkv_router::RouterConfig;
use ringkv_routing::{ReadPolicy, RoutingConfig};
use ringkv_tls::{DevCa, Dialer, Tls, TlsPaths, Usage};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Debug, Args)]
pub struct DevArgs {
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    #[arg(long, default_value_t = 8)]
    pub shards: u32,
    /// Replication factor.
    #[arg(long, default_value_t = 3)]
    pub rf: u32,
    #[arg(long, default_value = "./ringkv-data")]
    pub data_dir: PathBuf,
    /// Node i listens on base-port + i - 1.
    #[arg(long, default_value_t = 7001)]
    pub base_port: u16,
    /// The router's port (the CLI's default endpoint is 127.0.0.1:6000).
    #[arg(long, default_value_t = 6000)]
    pub router_port: u16,
    /// Node i serves /metrics on metrics-port + i; the router on metrics-port.
    #[arg(long, default_value_t = 9100)]
    pub metrics_port: u16,
    /// How the router spreads STALE reads.
    #[arg(long, default_value = "least-outstanding")]
    pub read_policy: ReadPolicy,
    /// The node binary (default: ringkv-node next to this executable).
    #[arg(long, env = "RINGKV_NODE_BIN")]
    pub node_bin: Option<PathBuf>,
    /// TLS everywhere, with certificates from a throwaway CA (see above).
    #[arg(long)]
    pub tls: bool,
    /// Authorization on: an access policy (`<data-dir>/auth/policy.toml`, re-read while the
    /// cluster runs) and a fresh operator token printed for the CLI. Implies `--tls`, with a
    /// CA of the nodes' own.
    #[arg(long)]
    pub auth: bool,
}

/// Certificates of a `--tls` dev cluster: one directory per process, as TLS Secrets.
struct DevTls {
    root: PathBuf,
    /// The nodes' own CA certificate (with `--auth`).
    peer_ca: Option<PathBuf>,
}

/// The common names of the router's and the CLI's certificates with `--auth` (the policy
/// names the router's; the CLI's is in no policy, so the CLI needs the token).
const DEV_ROUTER_SUBJECT: &str = "ringkv-dev-router";
const DEV_CLI_SUBJECT: &str = "ringkv-dev-cli";

impl DevTls {
    /// Every name a loopback process is dialed by.
    const NAMES: [&str; 2] = ["127.0.0.1", "localhost"];

    /// Without `own_ca_for_nodes`, one CA issues peer certificates for all, the CLI's too,
    /// so `ringkv node add` can give its new node the CLI's identity. With it, node
    /// certificates come from a CA of the nodes' own (what an access policy needs: otherwise
    /// every certificate would pass as a node), including a spare one for `ringkv node add`.
    fn issue(data_dir: &Path, nodes: u64, own_ca_for_nodes: bool) -> Result<DevTls> {
        let root = data_dir.join("tls");
        let ca = DevCa::generate("ringkv dev CA")?;
        let peer = own_ca_for_nodes.then(|| DevCa::generate("ringkv dev nodes' CA")).transpose()?;
        let node_dirs = (1..=nodes)
            .map(|i| format!("node-{i}"))
            .chain(peer.is_some().then(|| "node-spare".to_string()));
        for dir in node_dirs {
            let dir = root.join(dir);
            match &peer {
                None => {
                    ca.write_identity(&dir, &Self::NAMES, Usage::Peer)?;
                }
                Some(peer) => {
                    peer.write_identity(&dir, &Self::NAMES, Usage::Peer)?;
                    // Nodes check routers' and clients' certificates against the other CA.
                    std::fs::write(dir.join(TlsPaths::CA_FILE), ca.cert_pem())?;
                }
            }
        }
        for (dir, subject) in [("router", DEV_ROUTER_SUBJECT), ("client", DEV_CLI_SUBJECT)] {
            let dir = root.join(dir);
            match &peer {
                None => {
                    ca.write_identity(&dir, &Self::NAMES, Usage::Peer)?;
                }
                Some(peer) => {
                    let names = [subject, Self::NAMES[0], Self::NAMES[1]];
                    ca.write_identity(&dir, &names, Usage::Peer)?;
                    // They dial nodes, whose certificates the nodes' CA issued.
                    std::fs::write(dir.join(TlsPaths::CA_FILE), ca.cert_pem() + &peer.cert_pem())?;
                }
            }
        }
        let peer_ca = match &peer {
            Some(peer) => {
                let path = root.join("peer-ca.crt");
                std::fs::write(&path, peer.cert_pem())?;
                Some(path)
            }
            None => None,
        };
        Ok(DevTls { root, peer_ca })
    }

    fn dir(&self, who: &str) -> PathBuf {
        self.root.join(who)
    }

    fn load(&self, who: &str) -> Result<Tls> {
        Ok(Tls::load(TlsPaths::in_dir(&self.dir(who)))?)
    }
}

/// `ringkv-node`: the given path, else the binary next to this executable.
pub fn node_binary(given: Option<&PathBuf>) -> Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.clone());
    }
    let me = std::env::current_exe()?;
    let bin = me.parent().context("no directory for this executable")?.join("ringkv-node");
    if !bin.exists() {
        bail!(
            "{} not found; build it with `cargo build -p ringkv-node` (or pass --node-bin)",
            bin.display()
        );
    }
    Ok(bin)
}

struct Nodes {
    children: Vec<(u64, Child)>,
    logs: Vec<PathBuf>,
}

impl Nodes {
    fn stop(&mut self) {
        for (_, c) in &mut self.children {
            // Only a child not yet reaped: the pid of one that `exited` already waited for
            // may now belong to any other process.
            if !matches!(c.try_wait(), Ok(None)) {
                continue;
            }
            if let Ok(pid) = i32::try_from(c.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for (id, c) in &mut self.children {
            loop {
                match c.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    _ => {
                        eprintln!("node {id} did not stop in time; killing it");
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                }
            }
        }
        self.children.clear();
    }

    /// A node that exited on its own, with the end of its log.
    fn exited(&mut self) -> Option<String> {
        for (i, (id, c)) in self.children.iter_mut().enumerate() {
            if let Ok(Some(status)) = c.try_wait() {
                return Some(format!("node {id} exited ({status}):\n{}", tail(&self.logs[i])));
            }
        }
        None
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The end of a node's log, from its `Error:` line if it has one: with backtraces on, a
/// plain tail would show only the backtrace and not the reason.
fn tail(path: &Path) -> String {
    tail_of(&std::fs::read_to_string(path).unwrap_or_default())
}

fn tail_of(text: &str) -> String {
    const LINES: usize = 10;
    let lines: Vec<&str> = text.lines().collect();
    let from = lines
        .iter()
        .rposition(|l| l.starts_with("Error: "))
        .unwrap_or(lines.len().saturating_sub(LINES));
    lines[from..].iter().take(LINES).copied().collect::<Vec<_>>().join("\n")
}

/// The dev cluster's access policy: an operator role held by a fresh token, and the
/// router's certificate allowed to name its callers. Written anew on every start.
fn write_policy(data_dir: &Path) -> Result<(PathBuf, ringkv_auth::Token)> {
    let token = ringkv_auth::generate_token()
        .map_err(|_| anyhow::anyhow!("the system's random generator failed"))?;
    let dir = data_dir.join("auth");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("policy.toml");
    let policy = format!(
        r#"# The access policy of a `ringkv dev --auth` cluster, re-read while it runs: add roles,
# and tokens from `ringkv auth token --subject NAME --role ROLE`. See docs/security.md.
[[role]]
name = "operator"
grants = [{{ cluster = true, access = "admin" }}]

{}
# The router: known (it reads shard maps) and may name the callers it forwards.
[[certificate]]
subject = "{DEV_ROUTER_SUBJECT}"
roles = []
delegate = true
"#,
        ringkv_auth::policy::token_entry("dev-operator", token.expose(), &["operator"])
    );
    std::fs::write(&path, policy)?;
    Ok((path, token))
}

pub async fn run(args: &DevArgs) -> Result<()> {
    if args.nodes == 0 || args.nodes > 64 {
        bail!("--nodes must be between 1 and 64");
    }
    let bin = node_binary(args.node_bin.as_ref())?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&args.data_dir)?;
    let tls = (args.tls || args.auth)
        .then(|| DevTls::issue(&data_dir, args.nodes, args.auth))
        .transpose()?;
    let auth = args.auth.then(|| write_policy(&data_dir)).transpose()?;
    // This command's own calls (readiness, status) carry the operator token.
    let forward = match &auth {
        Some((_, token)) => {
            ringkv_auth::Forward::Token(format!("Bearer {}", token.expose()).parse()?)
        }
        None => ringkv_auth::forward::current(),
    };
    ringkv_auth::forward::scope(forward, serve(args, &bin, &data_dir, tls, auth)).await
}

/// Starts the nodes and the router, waits until the cluster serves, prints how to use it,
/// and runs until Ctrl-C.
async fn serve(
    args: &DevArgs,
    bin: &Path,
    data_dir: &Path,
    tls: Option<DevTls>,
    auth: Option<(PathBuf, ringkv_auth::Token)>,
) -> Result<()> {
    let addrs: Vec<String> =
        (0..args.nodes).map(|i| format!("127.0.0.1:{}", u64::from(args.base_port) + i)).collect();
    let members: Vec<String> =
        addrs.iter().enumerate().map(|(i, a)| format!("{}={a}", i + 1)).collect();
    let mut nodes = Nodes { children: Vec::new(), logs: Vec::new() };
    for i in 1..=args.nodes {
        let log_path = data_dir.join(format!("node-{i}.log"));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
        let mut command = Command::new(bin);
        if let Some(tls) = &tls {
            command.arg("--tls-dir").arg(tls.dir(&format!("node-{i}")));
            if let Some(peer_ca) = &tls.peer_ca {
                command.arg("--tls-peer-ca").arg(peer_ca);
            }
        }
        if let Some((policy, _)) = &auth {
            command.arg("--auth-policy").arg(policy);
        }
        let child = command
            .arg("--node-id")
            .arg(i.to_string())
            .arg("--data-dir")
            .arg(data_dir.join(format!("node-{i}")))
            .arg("--members")
            .arg(members.join(","))
            .arg("--shards")
            .arg(args.shards.to_string())
            .arg("--replication-factor")
            .arg(args.rf.to_string())
            .arg("--metrics-listen")
            .arg(format!("127.0.0.1:{}", u64::from(args.metrics_port) + i))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        nodes.children.push((i, child));
        nodes.logs.push(log_path);
    }

    // The router needs a node to answer with the shard map; nodes take a moment to listen.
    let router_tls = tls.as_ref().map(|t| t.load("router")).transpose()?;
    let client_dialer = Dialer::new(tls.as_ref().map(|t| t.load("client")).transpose()?);
    let routing = RoutingConfig {
        seeds: addrs.clone(),
        read_policy: args.read_policy,
        dialer: Dialer::new(router_tls.clone()),
        ..RoutingConfig::default()
    };
    let router_cfg = RouterConfig {
        listen: format!("127.0.0.1:{}", args.router_port).parse()?,
        metrics_listen: Some(format!("127.0.0.1:{}", args.metrics_port).parse()?),
        primary: routing,
        split: None,
        inflight_requests_max: ringkv_router::admission::INFLIGHT_REQUESTS_MAX_DEFAULT,
        rate_limit: None,
        tls: router_tls,
        auth_policy: auth.as_ref().map(|(p, _)| p.clone()),
        auth_reload_interval: Duration::from_secs(1),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    // The router serves at once and finds the nodes as they come up.
    let router =
        ringkv_router::start(router_cfg.clone()).await.map_err(|e| anyhow!("router: {e}"))?;
    while let Err(why) = router.ready().check() {
        if let Some(exited) = nodes.exited() {
            router.shutdown().await;
            bail!("{exited}");
        }
        if Instant::now() > deadline {
            router.shutdown().await;
            bail!(
                "the router found no cluster within a minute ({why}); see the logs in {}",
                data_dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let client = ringkv_client::Client::builder()
        .router(router.addr.to_string())
        .dialer(client_dialer.clone())
        .connect()
        .await?;
    let map = loop {
        if let Some(why) = nodes.exited() {
            router.shutdown().await;
            bail!("{why}");
        }
        // Ready once the cluster's records are written (a map from the meta group, epoch >= 1)
        // and every shard has a leader.
        let map = client.shard_map().await?;
        let (statuses, _) = status::collect(&map, &client_dialer).await;
        let led = map
            .shards
            .iter()
            .filter(|s| {
                statuses.iter().any(|((shard, _), st)| {
                    *shard == s.shard_id && st.role == ringkv_proto::v1::RaftRole::Leader as i32
                })
            })
            .count();
        if map.epoch >= 1 && led == map.shards.len() {
            break map;
        }
        if Instant::now() > deadline {
            router.shutdown().await;
            bail!(
                "the cluster did not form (records written, a leader for every shard) within a minute; see the logs in {}",
                data_dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    println!(
        "ringkv dev cluster: {} nodes, {} shards, replication factor {}",
        args.nodes, args.shards, args.rf
    );
    println!(
        "  router   {}   (ringkv put k v; ringkv get k)   metrics http://{}/metrics",
        router.addr,
        router.metrics_addr.map(|a| a.to_string()).unwrap_or_default()
    );
    for (i, a) in addrs.iter().enumerate() {
        println!(
            "  node {}   {a}   metrics http://127.0.0.1:{}/metrics   log {}",
            i + 1,
            u64::from(args.metrics_port) + i as u64 + 1,
            nodes.logs[i].display()
        );
    }
    println!("  data     {}", data_dir.display());
    if let Some(tls) = &tls {
        println!(
            "  tls      on (mutual TLS between nodes and router); for the CLI: export RINGKV_TLS_DIR={}",
            tls.dir("client").display()
        );
    }
    if let (Some((policy, token)), Some(tls)) = (&auth, &tls) {
        println!(
            "  auth     on; policy {} (re-read while running); the operator's token, for the CLI: export RINGKV_TOKEN={}",
            policy.display(),
            token.expose()
        );
        println!(
            "           grow it: ringkv node add --node-tls-dir {} --tls-peer-ca {} --auth-policy {}",
            tls.dir("node-spare").display(),
            tls.peer_ca.as_deref().unwrap_or(Path::new("")).display(),
            policy.display()
        );
    }
    status::print(&map, false, &client_dialer).await?;
    println!("ringkv dev: ready; Ctrl-C to stop");

    let mut term = signal(SignalKind::terminate())?;
    let mut watch = tokio::time::interval(Duration::from_secs(1));
    let failure = loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break None,
            _ = term.recv() => break None,
            _ = watch.tick() => {
                if let Some(why) = nodes.exited() {
                    break Some(why);
                }
            }
        }
    };
    println!("stopping...");
    router.shutdown().await;
    nodes.stop();
    match failure {
        Some(why) => bail!("{why}"),
        None => {
            println!("stopped; data kept in {}", data_dir.display());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tail_of;

    #[test]
    fn the_tail_of_a_failed_node_shows_its_error_not_its_backtrace() {
        let mut log = String::from("INFO starting\nError: address in use\n\nStack backtrace:\n");
        for i in 0..40 {
            log.push_str(&format!("  {i}: frame\n"));
        }
        let tail = tail_of(&log);
        assert!(tail.starts_with("Error: address in use"), "{tail}");
        assert_eq!(tail.lines().count(), 10);
        let plain = tail_of("a\nb\nc\n");
        assert_eq!(plain, "a\nb\nc");
    }
}

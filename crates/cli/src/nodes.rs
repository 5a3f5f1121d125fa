//! `ringkv node ...`: the cluster's membership.
//!
//! `list`, `drain`, `remove`, `activate` and `set-weight` ask any node (found through the
//! router's shard map); nodes forward them to the meta group's leader, which decides. A
//! refusal (it would leave fewer up nodes than the replication factor, the node was removed,
//! ...) says why and changes nothing.
//!
//! `add` starts a new node on this machine that joins the cluster, in the foreground (Ctrl-C
//! stops it): the way to grow a `ringkv dev` cluster from another terminal.

use crate::Cli;
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use ringkv_auth::AuthChannel as Channel;
use ringkv_proto::v1::admin_client::AdminClient;
use ringkv_proto::v1::{
    ListNodesRequest, ListNodesResponse, NodeInfo, NodeRequest, SetNodeWeightRequest, ShardMap,
};
use ringkv_tls::Dialer;
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Nodes (state, replicas, last contact) and the moves in progress.
    List,
    /// Move every replica off a node; it stays registered (remove it once it holds nothing).
    Drain { id: u64 },
    /// Retire a node's id for ever and move its replicas away.
    Remove { id: u64 },
    /// Make a drained or down node up again (replicas move back to it).
    Activate { id: u64 },
    /// Change a node's share of replicas (1 to 100, relative to the others).
    SetWeight { id: u64, weight: u32 },
    /// Start a new node on this machine that joins the cluster (foreground; Ctrl-C stops it).
    Add(AddArgs),
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// The node's name (default: one more than the highest node id).
    #[arg(long)]
    pub name: Option<String>,
    /// Address to listen on (default: the first free port from 127.0.0.1:7001).
    #[arg(long)]
    pub listen: Option<String>,
    /// Data directory (default: ./ringkv-data/node-<name>, next to `ringkv dev`'s).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Failure-domain label.
    #[arg(long)]
    pub zone: Option<String>,
    #[arg(long)]
    pub weight: Option<u32>,
    /// The node binary (default: ringkv-node next to this executable).
    #[arg(long, env = "RINGKV_NODE_BIN")]
    pub node_bin: Option<PathBuf>,
    /// The new node's own TLS directory (ca.crt, tls.crt, tls.key), when nodes have a CA of
    /// their own (default: this command's TLS files).
    #[arg(long)]
    pub node_tls_dir: Option<PathBuf>,
    /// The nodes' CA, passed to the new node (`ringkv-node --tls-peer-ca`).
    #[arg(long)]
    pub tls_peer_ca: Option<PathBuf>,
    /// The cluster's access policy, passed to the new node (`ringkv-node --auth-policy`).
    #[arg(long)]
    pub auth_policy: Option<PathBuf>,
}

/// The shard map, through the router (or node) the CLI points at.
async fn map(cli: &Cli) -> Result<ShardMap> {
    Ok(crate::commands::client(cli).await?.shard_map().await?)
}

/// Admin clients for the cluster's nodes, in map order.
fn admins(map: &ShardMap, dialer: &Dialer) -> Vec<(u64, AdminClient<Channel>)> {
    map.nodes
        .iter()
        .filter_map(|n| {
            let endpoint = dialer
                .endpoint(&n.addr)
                .ok()?
                .connect_timeout(Duration::from_secs(1))
                .timeout(Duration::from_secs(20));
            Some((n.id, AdminClient::new(Channel::plain(dialer.lazy(&endpoint)))))
        })
        .collect()
}

/// Calls `f` on the first node that answers (a refusal is an answer).
async fn on_any<T, F, Fut>(map: &ShardMap, dialer: &Dialer, f: F) -> Result<T>
where
    F: Fn(AdminClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let mut unreachable = Vec::new();
    for (id, admin) in admins(map, dialer) {
        match f(admin).await {
            Ok(r) => return Ok(r.into_inner()),
            // Unreachable, or a node that does not know the meta leader yet: try another.
            Err(s) if s.code() == tonic::Code::Unavailable => {
                unreachable.push(format!("node {id}: {}", s.message()));
            }
            Err(s) => bail!("{}", s.message()),
        }
    }
    bail!("no node could answer: {}", unreachable.join("; "))
}

pub async fn run(cli: &Cli, command: &NodeCommand) -> Result<u8> {
    if let NodeCommand::Add(args) = command {
        return add(cli, args).await;
    }
    let map = map(cli).await?;
    let dialer = cli.dialer()?;
    // Every call names the cluster, so a node of another cluster refuses it.
    let cid = map.cluster_id;
    let req = move |msg| ringkv_proto::with_cluster_id(tonic::Request::new(msg), cid);
    let changed = match command {
        NodeCommand::List => {
            let l = on_any(&map, &dialer, |mut a| async move {
                a.list_nodes(ringkv_proto::with_cluster_id(
                    tonic::Request::new(ListNodesRequest {}),
                    cid,
                ))
                .await
            })
            .await?;
            print_list(&l, cli.json);
            return Ok(0);
        }
        NodeCommand::Drain { id } => {
            on_any(&map, &dialer, |mut a| async move {
                a.drain_node(req(NodeRequest { node_id: *id })).await
            })
            .await?
        }
        NodeCommand::Remove { id } => {
            on_any(&map, &dialer, |mut a| async move {
                a.remove_node(req(NodeRequest { node_id: *id })).await
            })
            .await?
        }
        NodeCommand::Activate { id } => {
            on_any(&map, &dialer, |mut a| async move {
                a.activate_node(req(NodeRequest { node_id: *id })).await
            })
            .await?
        }
        NodeCommand::SetWeight { id, weight } => {
            on_any(&map, &dialer, |mut a| async move {
                a.set_node_weight(ringkv_proto::with_cluster_id(
                    tonic::Request::new(SetNodeWeightRequest { node_id: *id, weight: *weight }),
                    cid,
                ))
                .await
            })
            .await?
        }
        NodeCommand::Add(_) => unreachable!("handled above"),
    };
    let n = changed.node.context("no node in the answer")?;
    if cli.json {
        println!("{}", node_json(&n));
    } else {
        println!("node {} ({}) is {}, weight {}", n.id, n.name, n.state, n.weight);
    }
    Ok(0)
}

fn node_json(n: &NodeInfo) -> serde_json::Value {
    json!({
        "id": n.id, "name": n.name, "addr": n.addr, "state": n.state, "weight": n.weight,
        "zone": n.zone, "replicas": n.replicas, "replaced_by": n.replaced_by,
        "last_seen_ms": n.last_seen_ms,
    })
}

fn node_ref(id: Option<u64>) -> String {
    id.map_or("-".into(), |n| n.to_string())
}

/// The membership table (also the head of `ringkv cluster status`).
pub fn print_list(l: &ListNodesResponse, json_out: bool) {
    if json_out {
        let moves: Vec<_> = l
            .moves
            .iter()
            .map(|m| {
                json!({ "shard": shard_name(m.shard_id), "add": m.add, "remove": m.remove,
                        "started_unix_ms": m.started_unix_ms, "aborting": m.aborting })
            })
            .collect();
        println!(
            "{}",
            json!({
                "cluster_id": format!("{:#x}", l.cluster_id), "epoch": l.epoch,
                "nodes": l.nodes.iter().map(node_json).collect::<Vec<_>>(), "moves": moves,
                "meta_replicas": l.meta_replicas,
                "under_replicated_shards": l.under_replicated_shards,
                "shards_without_quorum": l.shards_without_quorum,
                "shards_off_target": l.shards_off_target,
            })
        );
        return;
    }
    println!(
        "cluster {:#x}  epoch {}  meta group on {:?}  under-replicated {}  without quorum {}  off target {}",
        l.cluster_id,
        l.epoch,
        l.meta_replicas,
        l.under_replicated_shards,
        l.shards_without_quorum,
        l.shards_off_target
    );
    println!(
        "{:<5} {:<12} {:<22} {:<9} {:<7} {:<9} {:<8} LAST SEEN",
        "ID", "NAME", "ADDRESS", "STATE", "WEIGHT", "REPLICAS", "ZONE"
    );
    for n in &l.nodes {
        let seen = match (n.last_seen_ms, n.state.as_str()) {
            (_, "removed") => match n.replaced_by {
                Some(by) => format!("replaced by {by}"),
                None => "-".into(),
            },
            (Some(ms), _) => format!("{ms} ms ago"),
            (None, _) => "not yet".into(),
        };
        println!(
            "{:<5} {:<12} {:<22} {:<9} {:<7} {:<9} {:<8} {}",
            n.id,
            n.name,
            n.addr,
            n.state,
            n.weight,
            n.replicas,
            if n.zone.is_empty() { "-" } else { &n.zone },
            seen
        );
    }
    if l.moves.is_empty() {
        println!("no moves in progress");
    }
    for m in &l.moves {
        println!(
            "move shard {}: add {} remove {}{}",
            shard_name(m.shard_id),
            node_ref(m.add),
            node_ref(m.remove),
            if m.aborting { " (aborting)" } else { "" }
        );
    }
}

fn shard_name(id: u64) -> String {
    ringkv_placement::cluster::shard_name(id)
}

/// The first port from 7001 nobody listens on.
fn free_listen() -> Result<String> {
    for port in 7001..7200u16 {
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(format!("127.0.0.1:{port}"));
        }
    }
    bail!("no free port between 7001 and 7199; pass --listen")
}

async fn add(cli: &Cli, args: &AddArgs) -> Result<u8> {
    let map = map(cli).await?;
    let seeds: Vec<String> = map.nodes.iter().map(|n| n.addr.clone()).collect();
    if seeds.is_empty() {
        bail!("the shard map names no node to join through");
    }
    let name = match &args.name {
        Some(n) => n.clone(),
        None => (map.nodes.iter().map(|n| n.id).max().unwrap_or(0) + 1).to_string(),
    };
    let listen = match &args.listen {
        Some(l) => l.clone(),
        None => free_listen()?,
    };
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("./ringkv-data/node-{name}")));
    let mut cmd = std::process::Command::new(crate::dev::node_binary(args.node_bin.as_ref())?);
    cmd.arg("--node-id")
        .arg(&name)
        .arg("--listen")
        .arg(&listen)
        .arg("--data-dir")
        .arg(&data_dir)
        .arg("--join")
        .arg(seeds.join(","));
    if let Some(z) = &args.zone {
        cmd.arg("--zone").arg(z);
    }
    if let Some(w) = args.weight {
        cmd.arg("--weight").arg(w.to_string());
    }
    // A cluster on TLS needs the new node on TLS: it gets this command's certificate files
    // (which must then name the node's host; `ringkv dev --tls` issues such a one).
    match (&args.node_tls_dir, cli.tls_paths()?) {
        (Some(dir), _) => {
            cmd.arg("--tls-dir").arg(dir);
        }
        (None, Some(tls)) => {
            cmd.arg("--tls-ca").arg(&tls.ca);
            if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
                cmd.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
            }
        }
        (None, None) => {}
    }
    if let Some(peer_ca) = &args.tls_peer_ca {
        cmd.arg("--tls-peer-ca").arg(peer_ca);
    }
    if let Some(policy) = &args.auth_policy {
        cmd.arg("--auth-policy").arg(policy);
    }
    eprintln!(
        "starting node {name} on {listen} (data in {}), joining through {}; Ctrl-C stops it",
        data_dir.display(),
        seeds.join(",")
    );
    let mut child = cmd.spawn().context("starting ringkv-node")?;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
    let waiter = tokio::task::spawn_blocking(move || child.wait());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::pin!(waiter);
    // Ctrl-C (or SIGTERM) stops the node cleanly and then this command; a node that exits on
    // its own ends it with the node's status.
    let status = tokio::select! {
        // A node that already exited wins: its pid, reaped, may be another process's now.
        biased;
        status = &mut waiter => status??,
        _ = tokio::signal::ctrl_c() => stop(pid, waiter).await?,
        _ = term.recv() => stop(pid, waiter).await?,
    };
    Ok(if status.success() { 0 } else { crate::EXIT_ERROR })
}

/// Sends the node SIGTERM and waits for it to exit.
async fn stop(
    pid: nix::unistd::Pid,
    waiter: std::pin::Pin<&mut tokio::task::JoinHandle<std::io::Result<std::process::ExitStatus>>>,
) -> Result<std::process::ExitStatus> {
    // Already gone (it got the terminal's Ctrl-C too) is fine.
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    Ok(waiter.await??)
}

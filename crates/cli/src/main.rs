//! `ringkv`: the command line.
//!
//! `ringkv dev` starts a local cluster (nodes as child processes, a router in this process)
//! and keeps it running until Ctrl-C; `ringkv node add` grows it from another terminal and
//! `ringkv node drain` / `remove` shrink it. The other commands talk to a router, by default the one
//! `ringkv dev` starts (`127.0.0.1:6000`; `--endpoint` or `RINGKV_ENDPOINT` to change).
//!
//! `--trace` sends a command's calls in one new trace and prints its id, to find the command
//! in the routers' and nodes' logs.
//!
//! Output is a human table or line by default and JSON with `--json`. Exit codes: 0 success,
//! 1 error (message on stderr), 2 bad usage, 3 key not found, 4 compare-and-swap condition
//! not met.

mod auth;
mod commands;
mod dev;
mod events;
mod nodes;
mod status;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

pub const EXIT_ERROR: u8 = 1;
pub const EXIT_NOT_FOUND: u8 = 3;
pub const EXIT_CAS_FAILED: u8 = 4;
pub const DEFAULT_ENDPOINT: &str = "127.0.0.1:6000";

#[derive(Debug, Parser)]
#[command(name = "ringkv", version, about = "ringkv: sharded, Raft-replicated key-value store")]
pub struct Cli {
    /// Router (or node) address.
    #[arg(long, global = true, env = "RINGKV_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    pub endpoint: String,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    pub json: bool,
    /// Deadline per command, retries included.
    #[arg(long, global = true, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Connect with TLS using `ca.crt` (and `tls.crt`, `tls.key` when present) in this
    /// directory; `ringkv dev --tls` prints the one to use.
    #[arg(long, global = true, env = "RINGKV_TLS_DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Connect with TLS, checking the server against this CA bundle (PEM).
    #[arg(long, global = true, env = "RINGKV_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// A client certificate (PEM) to present, for clusters that ask for one.
    #[arg(long, global = true, env = "RINGKV_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `--tls-cert`.
    #[arg(long, global = true, env = "RINGKV_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// A bearer token of the cluster's access policy, sent with every call (prefer the
    /// environment variable: arguments are visible to other users in `ps`).
    #[arg(long, global = true, env = "RINGKV_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Send every call of this command in one new trace, and print its id on stderr first
    /// (`trace <id>`): the routers and nodes it reaches log their spans under it (with
    /// `RUST_LOG=info,ringkv_trace=debug`), so `grep <id>` over their logs finds the command.
    #[arg(long, global = true)]
    pub trace: bool,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The TLS files the flags name (a directory's `tls.crt` and `tls.key` only when they
    /// exist: a client directory may hold just the CA).
    pub fn tls_paths(&self) -> anyhow::Result<Option<ringkv_tls::TlsPaths>> {
        let present = |p: PathBuf| p.exists().then_some(p);
        let dir = self.tls_dir.as_deref();
        let cert = self
            .tls_cert
            .clone()
            .or_else(|| dir.and_then(|d| present(d.join(ringkv_tls::TlsPaths::CERT_FILE))));
        let key = self
            .tls_key
            .clone()
            .or_else(|| dir.and_then(|d| present(d.join(ringkv_tls::TlsPaths::KEY_FILE))));
        let ca = self.tls_ca.clone().or_else(|| dir.map(|d| d.join(ringkv_tls::TlsPaths::CA_FILE)));
        Ok(ringkv_tls::TlsPaths::from_settings(None, ca, cert, key)?)
    }

    /// How this command dials routers and nodes.
    pub fn dialer(&self) -> anyhow::Result<ringkv_tls::Dialer> {
        let tls = self.tls_paths()?.map(ringkv_tls::Tls::load).transpose()?;
        Ok(ringkv_tls::Dialer::new(tls))
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a local cluster and a router on loopback; Ctrl-C stops it.
    Dev(dev::DevArgs),
    /// Write a value.
    Put { key: String, value: String },
    /// Read a value (exit code 3 if the key does not exist).
    Get {
        key: String,
        /// linearizable, lease or stale.
        #[arg(long, default_value = "linearizable")]
        consistency: String,
    },
    /// Delete a key (exit code 3 if it did not exist).
    Del { key: String },
    /// Compare-and-swap (exit code 4 if the condition does not hold).
    Cas(commands::CasArgs),
    /// List keys in order across all shards.
    Scan(commands::ScanArgs),
    /// Cluster-wide views.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Membership: list, drain, remove, activate, set-weight; add a node that joins.
    Node {
        #[command(subcommand)]
        command: nodes::NodeCommand,
    },
    /// Which shard a key belongs to, and its replicas.
    ShardOf { key: String },
    /// Create, list, describe or delete event topics.
    Topic {
        #[command(subcommand)]
        command: TopicCommand,
    },
    /// Append events to a topic (payloads as arguments, or one per stdin line).
    Produce(events::ProduceArgs),
    /// Print a topic's events; with --group, resume from and commit the group's offsets.
    Consume(events::ConsumeArgs),
    /// Print changes of keys under a prefix (or one key) as they happen.
    Watch(events::WatchArgs),
    /// Access-policy helpers: make a token (and its policy entry), hash one.
    Auth {
        #[command(subcommand)]
        command: auth::AuthCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    Create(events::CreateTopicArgs),
    List,
    Describe {
        name: String,
    },
    /// Delete a topic and its events (exit code 3 if it did not exist).
    Delete {
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// The nodes and moves in progress, then every shard's replicas with leader, term,
    /// applied index and lag.
    Status,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let run = async {
        match &cli.command {
            Command::Dev(args) => dev::run(args).await.map(|()| 0),
            Command::Node { command } => nodes::run(&cli, command).await,
            Command::Auth { command } => auth::run(command),
            _ => commands::run(&cli).await,
        }
    };
    // Every call this command makes (the client's and the admin calls to nodes) carries the
    // token: they all leave through `ringkv_auth::AuthChannel`.
    let forward = match cli.token.as_deref().map(|t| format!("Bearer {t}").parse()) {
        None => ringkv_auth::Forward::Own,
        Some(Ok(header)) => ringkv_auth::Forward::Token(header),
        Some(Err(_)) => {
            eprintln!("error: the token must be printable ASCII");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let run = ringkv_auth::forward::scope(forward, run);
    let result = if cli.trace {
        let root = ringkv_trace::TraceParent::root();
        eprintln!("trace {}", root.trace_id);
        ringkv_trace::scope(root, run).await
    } else {
        run.await
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

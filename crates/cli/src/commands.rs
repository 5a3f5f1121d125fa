//! The key-value commands: they talk to a router through the client library. (Event and
//! watch commands are in `events`.)

use crate::{Cli, ClusterCommand, Command, EXIT_CAS_FAILED, EXIT_NOT_FOUND};
use anyhow::{Context, Result, bail};
use clap::Args;
use ringkv_client::{Client, Consistency, Expect, KeyValue, ScanOptions};
use serde_json::json;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct CasArgs {
    pub key: String,
    /// The new value (omit with --delete).
    pub new_value: Option<String>,
    /// Succeed only if the current value is this.
    #[arg(long, conflicts_with_all = ["expect_version", "expect_absent"])]
    pub expect_value: Option<String>,
    /// Succeed only if the current version is this.
    #[arg(long, conflicts_with = "expect_absent")]
    pub expect_version: Option<u64>,
    /// Succeed only if the key does not exist.
    #[arg(long)]
    pub expect_absent: bool,
    /// Delete the key instead of writing a value.
    #[arg(long, conflicts_with = "new_value")]
    pub delete: bool,
}

#[derive(Debug, Args)]
pub struct ScanArgs {
    #[arg(long, default_value = "")]
    pub prefix: String,
    #[arg(long, default_value = "")]
    pub start: String,
    #[arg(long, default_value = "")]
    pub end: String,
    /// Keys to list (all pages are fetched up to this many).
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn kv_json(kv: &KeyValue) -> serde_json::Value {
    json!({ "key": text(&kv.key), "value": text(&kv.value), "version": kv.version })
}

pub fn parse_consistency(s: &str) -> Result<Consistency> {
    Ok(match s {
        "linearizable" => Consistency::Linearizable,
        "lease" => Consistency::Lease,
        "stale" => Consistency::Stale,
        other => bail!("unknown consistency {other:?}: use linearizable, lease or stale"),
    })
}

pub async fn client(cli: &Cli) -> Result<Client> {
    Client::builder()
        .router(cli.endpoint.clone())
        .timeout(Duration::from_millis(cli.timeout_ms))
        .dialer(cli.dialer()?)
        .connect()
        .await
        .with_context(|| {
            format!("is a router running at {}? (`ringkv dev` starts one)", cli.endpoint)
        })
}

pub async fn run(cli: &Cli) -> Result<u8> {
    match &cli.command {
        Command::Dev(_) | Command::Node { .. } | Command::Auth { .. } => {
            unreachable!("handled by main")
        }
        Command::Put { key, value } => {
            let version = client(cli).await?.put(key.as_bytes(), value.as_bytes()).await?;
            if cli.json {
                println!("{}", json!({ "key": key, "version": version }));
            } else {
                println!("OK version {version}");
            }
            Ok(0)
        }
        Command::Get { key, consistency } => {
            let c = parse_consistency(consistency)?;
            match client(cli).await?.get_with(key.as_bytes(), c).await? {
                Some(kv) => {
                    if cli.json {
                        println!("{}", kv_json(&kv));
                    } else {
                        println!("{}", text(&kv.value));
                    }
                    Ok(0)
                }
                None => {
                    if cli.json {
                        println!("{}", json!({ "key": key, "found": false }));
                    }
                    eprintln!("not found: {key}");
                    Ok(EXIT_NOT_FOUND)
                }
            }
        }
        Command::Del { key } => {
            let deleted = client(cli).await?.delete(key.as_bytes()).await?;
            if cli.json {
                println!("{}", json!({ "key": key, "deleted": deleted }));
            } else if deleted {
                println!("OK deleted");
            }
            if deleted {
                Ok(0)
            } else {
                eprintln!("not found: {key}");
                Ok(EXIT_NOT_FOUND)
            }
        }
        Command::Cas(a) => {
            let expect = match (&a.expect_value, a.expect_version, a.expect_absent) {
                (Some(v), None, false) => Expect::Value(v.clone().into_bytes()),
                (None, Some(v), false) => Expect::Version(v),
                (None, None, true) => Expect::Absent,
                _ => {
                    bail!("give exactly one of --expect-value, --expect-version or --expect-absent")
                }
            };
            let new = match (&a.new_value, a.delete) {
                (Some(v), false) => Some(v.as_bytes()),
                (None, true) => None,
                _ => bail!("give a new value, or --delete"),
            };
            let out = client(cli).await?.cas(a.key.as_bytes(), expect, new).await?;
            if cli.json {
                println!(
                    "{}",
                    json!({ "succeeded": out.succeeded, "version": out.version, "current": out.current.as_ref().map(kv_json) })
                );
            } else if out.succeeded {
                println!("OK version {}", out.version);
            } else {
                match &out.current {
                    Some(kv) => eprintln!(
                        "condition failed: current value {:?} at version {}",
                        text(&kv.value),
                        kv.version
                    ),
                    None => eprintln!("condition failed: the key does not exist"),
                }
            }
            Ok(if out.succeeded { 0 } else { EXIT_CAS_FAILED })
        }
        Command::Scan(a) => {
            let c = client(cli).await?;
            let mut out = Vec::new();
            let mut continuation = Vec::new();
            while (out.len() as u32) < a.limit {
                let page = c
                    .scan(ScanOptions {
                        start: a.start.clone().into_bytes(),
                        end: a.end.clone().into_bytes(),
                        prefix: a.prefix.clone().into_bytes(),
                        limit: (a.limit - out.len() as u32).min(1000),
                        continuation: continuation.clone(),
                        shard: None,
                    })
                    .await?;
                out.extend(page.kvs);
                if page.continuation.is_empty() {
                    break;
                }
                continuation = page.continuation;
            }
            if cli.json {
                println!("{}", serde_json::Value::Array(out.iter().map(kv_json).collect()));
            } else {
                for kv in &out {
                    println!("{}\t{}\tv{}", text(&kv.key), text(&kv.value), kv.version);
                }
            }
            Ok(0)
        }
        Command::Cluster { command: ClusterCommand::Status } => {
            let map = client(cli).await?.shard_map().await?;
            crate::status::print(&map, cli.json, &cli.dialer()?).await?;
            Ok(0)
        }
        Command::ShardOf { key } => {
            let map = client(cli).await?.shard_map().await?;
            let placement =
                ringkv_routing::topology::map_from_proto(&map).map_err(anyhow::Error::msg)?;
            let shard = placement.shard_of(key.as_bytes());
            let replicas = placement.replicas(shard);
            if cli.json {
                println!(
                    "{}",
                    json!({ "key": key, "shard": shard, "replicas": replicas, "epoch": map.epoch })
                );
            } else {
                println!("shard {shard} (epoch {}), replicas {replicas:?}", map.epoch);
            }
            Ok(0)
        }
        Command::Topic { .. } | Command::Produce(_) | Command::Consume(_) | Command::Watch(_) => {
            crate::events::run(cli, client(cli).await?).await
        }
    }
}

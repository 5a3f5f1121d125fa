//! The event-stream and watch commands: `topic`, `produce`, `consume`, `watch`.
//!
//! `produce` uses an idempotent producer, so its own retries never duplicate an event.
//! `consume --group G` reads every partition (or one) from the group's committed offsets and
//! commits after printing each batch, so a consumer stopped and started again continues
//! where it left off (an event may be printed twice only if the process dies between printing
//! a batch and committing it: at-least-once, as with any consumer that commits after work).

use crate::{Cli, Command, TopicCommand};
use anyhow::{Context, Result, bail};
use clap::Args;
use ringkv_client::{
    Client, Event, Retention, SubscribeRequest, WatchRequest, subscribe_request, watch_event,
};
use serde_json::json;
use std::io::BufRead;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Events per append when reading from stdin.
const STDIN_BATCH_EVENTS: usize = 100;

#[derive(Debug, Args)]
pub struct CreateTopicArgs {
    pub name: String,
    #[arg(long, default_value_t = 4)]
    pub partitions: u32,
    /// Drop events older than this (0: keep).
    #[arg(long, default_value_t = 0)]
    pub max_age_ms: u64,
    /// Keep at most this many bytes per partition (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub max_bytes: u64,
    /// Keep at most this many events per partition (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub max_events: u64,
}

#[derive(Debug, Args)]
pub struct ProduceArgs {
    pub topic: String,
    /// Event payloads; one event each. Without any, every line of stdin is one event.
    pub payloads: Vec<String>,
    /// The events' key (picks the partition unless --partition is given).
    #[arg(long, default_value = "")]
    pub key: String,
    #[arg(long)]
    pub partition: Option<u32>,
}

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    pub topic: String,
    /// Consumer group: start from its committed offsets and commit as events are printed.
    #[arg(long)]
    pub group: Option<String>,
    /// Without a group: `earliest`, `latest` or an offset.
    #[arg(long, default_value = "earliest")]
    pub from: String,
    /// Only this partition (default: all).
    #[arg(long)]
    pub partition: Option<u32>,
    /// Stop after this many events (default: run until Ctrl-C).
    #[arg(long)]
    pub max: Option<u64>,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The key prefix to watch (empty: everything).
    #[arg(default_value = "")]
    pub prefix: String,
    /// Watch exactly this key instead of a prefix.
    #[arg(long)]
    pub exact: bool,
    /// Start at this revision in every shard (0: from now).
    #[arg(long, default_value_t = 0)]
    pub from: u64,
    /// Stop after this many changes.
    #[arg(long)]
    pub max: Option<u64>,
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub async fn run(cli: &Cli, client: Client) -> Result<u8> {
    match &cli.command {
        Command::Topic { command } => topic(cli, &client, command).await,
        Command::Produce(a) => produce(cli, &client, a).await,
        Command::Consume(a) => consume(cli, Arc::new(client), a).await,
        Command::Watch(a) => watch(cli, &client, a).await,
        other => bail!("not an event command: {other:?}"),
    }
}

async fn topic(cli: &Cli, client: &Client, command: &TopicCommand) -> Result<u8> {
    match command {
        TopicCommand::Create(a) => {
            let retention = Retention {
                max_age_ms: a.max_age_ms,
                max_bytes: a.max_bytes,
                max_events: a.max_events,
            };
            let resp = client.create_topic(&a.name, a.partitions, retention).await?;
            let id = resp.topic.as_ref().map_or(0, |t| t.topic_id);
            if cli.json {
                println!("{}", json!({ "topic": a.name, "created": resp.created, "topic_id": id }));
            } else if resp.created {
                println!("created topic {} with {} partitions", a.name, a.partitions);
            } else {
                println!("topic {} already exists with this configuration", a.name);
            }
        }
        TopicCommand::List => {
            let topics = client.list_topics().await?;
            for t in topics {
                let c = t.config.unwrap_or_default();
                if cli.json {
                    println!(
                        "{}",
                        json!({ "topic": t.name, "partitions": c.partitions, "deleting": t.deleting })
                    );
                } else {
                    println!(
                        "{}\t{} partitions{}",
                        t.name,
                        c.partitions,
                        if t.deleting { " (deleting)" } else { "" }
                    );
                }
            }
        }
        TopicCommand::Describe { name } => {
            let d = client.describe_topic(name).await?;
            if !cli.json {
                let r = d
                    .topic
                    .as_ref()
                    .and_then(|t| t.config)
                    .and_then(|c| c.retention)
                    .unwrap_or_default();
                println!(
                    "topic {name}: retention max_age_ms={} max_bytes={} max_events={}",
                    r.max_age_ms, r.max_bytes, r.max_events
                );
                println!("partition\tshard\tstart\tend\tbytes\tproducers\tgroups");
            }
            for p in d.partitions {
                if cli.json {
                    println!(
                        "{}",
                        json!({ "partition": p.partition, "shard": p.shard_id, "start_offset": p.start_offset,
                                "end_offset": p.end_offset, "bytes": p.bytes, "producers": p.producers, "groups": p.groups })
                    );
                } else {
                    println!(
                        "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                        p.partition,
                        p.shard_id,
                        p.start_offset,
                        p.end_offset,
                        p.bytes,
                        p.producers,
                        p.groups
                    );
                }
            }
        }
        TopicCommand::Delete { name } => {
            let deleted = client.delete_topic(name).await?;
            if cli.json {
                println!("{}", json!({ "topic": name, "deleted": deleted }));
            } else {
                println!("{}", if deleted { "deleted" } else { "no such topic" });
            }
            if !deleted {
                return Ok(crate::EXIT_NOT_FOUND);
            }
        }
    }
    Ok(0)
}

async fn produce(cli: &Cli, client: &Client, a: &ProduceArgs) -> Result<u8> {
    let producer = client.producer(&a.topic).await?;
    let event = |payload: String| Event {
        key: a.key.clone().into_bytes().into(),
        payload: payload.into_bytes().into(),
        ..Default::default()
    };
    let mut batches: Vec<Vec<Event>> = Vec::new();
    if a.payloads.is_empty() {
        let mut batch = Vec::new();
        for line in std::io::stdin().lock().lines() {
            batch.push(event(line.context("reading stdin")?));
            if batch.len() == STDIN_BATCH_EVENTS {
                batches.push(std::mem::take(&mut batch));
            }
        }
        if !batch.is_empty() {
            batches.push(batch);
        }
    } else {
        batches.push(a.payloads.iter().cloned().map(event).collect());
    }
    for batch in batches {
        let resp = match a.partition {
            Some(p) => producer.send_to(p, batch).await?,
            None => producer.send(batch).await?,
        };
        if cli.json {
            println!(
                "{}",
                json!({ "partition": resp.partition, "first_offset": resp.first_offset, "count": resp.count })
            );
        } else {
            println!(
                "partition {} offsets {}..{}",
                resp.partition,
                resp.first_offset,
                resp.first_offset + u64::from(resp.count)
            );
        }
    }
    Ok(0)
}

async fn consume(cli: &Cli, client: Arc<Client>, a: &ConsumeArgs) -> Result<u8> {
    let partitions: Vec<u32> = match a.partition {
        Some(p) => vec![p],
        None => {
            let d = client.describe_topic(&a.topic).await?;
            (0..d.partitions.len() as u32).collect()
        }
    };
    let start = match (&a.group, a.from.as_str()) {
        (Some(g), _) => subscribe_request::Start::Group(g.clone()),
        (None, "earliest") => subscribe_request::Start::Earliest(true),
        (None, "latest") => subscribe_request::Start::Latest(true),
        (None, n) => subscribe_request::Start::Offset(
            n.parse()
                .with_context(|| format!("--from {n:?}: use earliest, latest or an offset"))?,
        ),
    };
    let seen = Arc::new(AtomicU64::new(0));
    let max = a.max.unwrap_or(u64::MAX);
    let json_out = cli.json;
    let mut tasks = tokio::task::JoinSet::new();
    for p in partitions {
        let (client, seen, topic, group, start) =
            (client.clone(), seen.clone(), a.topic.clone(), a.group.clone(), start.clone());
        tasks.spawn(async move {
            let req = SubscribeRequest { topic: topic.clone(), partition: p, start: Some(start), max_batch_events: 0 };
            let mut sub = client.subscribe(req).await?;
            while let Some(batch) = sub.next().await {
                let batch = batch?;
                let mut next = batch.next_offset;
                for e in &batch.events {
                    if seen.fetch_add(1, Ordering::SeqCst) >= max {
                        next = e.offset;
                        break;
                    }
                    if json_out {
                        println!(
                            "{}",
                            json!({ "partition": p, "offset": e.offset, "key": text(&e.key), "payload": text(&e.payload), "timestamp_ms": e.timestamp_ms })
                        );
                    } else {
                        println!("{p}/{}\t{}\t{}", e.offset, text(&e.key), text(&e.payload));
                    }
                }
                if let Some(g) = &group
                    && !batch.events.is_empty()
                {
                    client.commit_offset(g, &topic, p, next).await?;
                }
                if seen.load(Ordering::SeqCst) >= max {
                    break;
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
        if seen.load(Ordering::SeqCst) >= max {
            tasks.abort_all();
            break;
        }
    }
    Ok(0)
}

async fn watch(cli: &Cli, client: &Client, a: &WatchArgs) -> Result<u8> {
    let req = WatchRequest {
        key: a.prefix.clone().into_bytes().into(),
        prefix: !a.exact,
        start_revision: a.from,
        ..Default::default()
    };
    let mut w = client.watch(req).await?;
    let mut seen = 0u64;
    let max = a.max.unwrap_or(u64::MAX);
    while let Some(msg) = w.next().await {
        let msg = msg?;
        for e in msg.events {
            let kv = e.kv.unwrap_or_default();
            let kind = if e.kind == watch_event::Kind::Delete as i32 { "DELETE" } else { "PUT" };
            if cli.json {
                println!(
                    "{}",
                    json!({ "kind": kind, "key": text(&kv.key), "value": text(&kv.value), "revision": kv.version, "shard": msg.shard_id })
                );
            } else {
                println!(
                    "{kind}\t{}\t{}\t(shard {} revision {})",
                    text(&kv.key),
                    text(&kv.value),
                    msg.shard_id,
                    kv.version
                );
            }
            seen += 1;
            if seen >= max {
                return Ok(0);
            }
        }
    }
    Ok(0)
}

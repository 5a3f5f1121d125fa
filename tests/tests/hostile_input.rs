//! Hostile bytes on every port: garbage, a truncated HTTP/2 conversation and an oversized
//! message to a node's client gRPC port, its peer port (Raft, membership), its
//! metrics/health HTTP port, the router's gRPC port and its HTTP port; garbage Raft payloads
//! with a valid envelope. Each is refused (the connection closed, an HTTP 4xx, or a gRPC
//! error), and afterwards every process is still up, healthy and serving writes.
//!
//! The decoders behind these ports have their own property tests
//! (`crates/node/tests/fuzz_inputs.rs`, `crates/storage/tests/fuzz_decoders.rs`); this is the
//! same question asked of the real processes and their transports.

use anyhow::{Context, Result, ensure};
use ringkv_proto::internal::RaftRequest;
use ringkv_proto::internal::raft_client::RaftClient;
use ringkv_proto::v1::PutRequest;
use ringkv_proto::v1::kv_client::KvClient;
use ringkv_tests::{Cluster, Tuning};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a server did with a conversation: closed it, or answered something first.
#[derive(Debug)]
enum Ending {
    Closed { answered: Vec<u8> },
    StillOpen,
}

/// Sends `bytes` (then closes our side when `half_close`) and reads until the server closes.
async fn converse(addr: &str, bytes: &[u8], half_close: bool) -> Result<Ending> {
    let mut s = TcpStream::connect(addr).await.with_context(|| format!("connect {addr}"))?;
    // The server may close while we are still writing: that is a refusal, not a test error.
    let _ = s.write_all(bytes).await;
    if half_close {
        let _ = s.shutdown().await;
    }
    let mut answered = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => answered.extend_from_slice(&buf[..n.min(4096)]),
            }
        }
    })
    .await;
    Ok(match read {
        Ok(()) => Ending::Closed { answered },
        Err(_) => Ending::StillOpen,
    })
}

fn garbage(len: usize, seed: u64) -> Vec<u8> {
    // A fixed xorshift stream: different bytes for each port, the same on every run.
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The HTTP/2 preface, an empty SETTINGS frame, then a HEADERS frame that promises 1,000
/// bytes and delivers 10.
fn truncated_http2() -> Vec<u8> {
    let mut b = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    b.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    b.extend_from_slice(&[0x00, 0x03, 0xe8, 0x01, 0x04, 0, 0, 0, 1]);
    b.extend_from_slice(&[0x82; 10]);
    b
}

async fn hostile_conversations(addr: &str, http1: bool, seed: u64) -> Result<()> {
    for (what, bytes) in [
        ("garbage", garbage(8192, seed)),
        ("truncated HTTP/2", truncated_http2()),
        ("an HTTP/2 preface cut short", b"PRI * HTTP/2.0\r\n".to_vec()),
    ] {
        match converse(addr, &bytes, true).await? {
            Ending::Closed { answered } => {
                let text = String::from_utf8_lossy(&answered);
                // An HTTP/1 server may answer 400 before closing; a gRPC (HTTP/2) server
                // sends at most a GOAWAY. Neither may answer 200 to garbage.
                ensure!(
                    !(http1 && text.starts_with("HTTP/1.1 2")),
                    "{addr} answered {what} with {text:?}"
                );
            }
            Ending::StillOpen => anyhow::bail!("{addr} kept a connection open after {what}"),
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bytes_on_every_port_are_refused_and_nothing_breaks() -> Result<()> {
    let c = Cluster::start(3, 2, 3, Tuning::default()).await?;
    c.wait_for_leaders(Duration::from_secs(30)).await?;
    let router_metrics = format!("127.0.0.1:{}", ringkv_tests::free_port()?);
    let router = c.start_router_with(&["--metrics-listen", &router_metrics]).await?;
    let node_metrics = c.nodes[0].metrics_addr.clone();

    hostile_conversations(&c.addr(1), false, 1).await.context("node gRPC port")?;
    hostile_conversations(&c.peer_addr(1), false, 5).await.context("node peer port")?;
    hostile_conversations(&node_metrics, true, 2).await.context("node HTTP port")?;
    hostile_conversations(&router.addr, false, 3).await.context("router gRPC port")?;
    hostile_conversations(&router_metrics, true, 4).await.context("router HTTP port")?;

    // An oversized message: refused by the transport before it is decoded, on both servers.
    for addr in [c.addr(1), router.addr.clone()] {
        let mut kv = KvClient::new(ringkv_tests::channel(&addr).await?)
            .max_encoding_message_size(usize::MAX);
        let huge = PutRequest {
            key: b"huge".to_vec().into(),
            value: vec![0u8; 12 << 20].into(),
            session: None,
        };
        let e = kv.put(huge).await.expect_err("a 12 MiB message must be refused");
        ensure!(
            matches!(e.code(), tonic::Code::OutOfRange | tonic::Code::ResourceExhausted),
            "{addr}: oversized message answered {:?}: {}",
            e.code(),
            e.message()
        );
    }

    // Garbage Raft payloads in a valid envelope (right cluster, right identity): each is an
    // error for that call, never a crash. (Without mTLS any peer can send these; see
    // docs/security.md.)
    let cluster_id = c.current_map().await?.cluster_id;
    let to = c.identity_of(1).await?;
    // The client port does not serve the internal services at all, and the peer port does
    // not serve the client API.
    let mut on_client_port = RaftClient::new(ringkv_tests::channel(&c.addr(1)).await?);
    let e = on_client_port
        .ping(ringkv_proto::internal::PingRequest::default())
        .await
        .expect_err("Raft on the client port");
    ensure!(e.code() == tonic::Code::Unimplemented, "Raft on the client port: {e:?}");
    let mut kv_on_peer_port = KvClient::new(ringkv_tests::channel(&c.peer_addr(1)).await?);
    let e = kv_on_peer_port
        .get(ringkv_proto::v1::GetRequest { key: b"k".to_vec().into(), ..Default::default() })
        .await
        .expect_err("KV on the peer port");
    ensure!(e.code() == tonic::Code::Unimplemented, "KV on the peer port: {e:?}");
    let mut raft = RaftClient::new(ringkv_tests::channel(&c.peer_addr(1)).await?);
    for seed in 0..50u64 {
        let mut payload = garbage(64 + seed as usize * 7, 100 + seed);
        if seed % 2 == 0 {
            payload.truncate(3);
        }
        let req = RaftRequest {
            shard_id: seed % 3,
            from_node_id: 999,
            payload: payload.into(),
            cluster_id,
            to_node_id: to,
            ..RaftRequest::default()
        };
        let answered = raft.append_entries(req).await;
        if let Ok(reply) = &answered {
            ensure!(
                matches!(
                    reply.get_ref().result,
                    Some(ringkv_proto::internal::raft_reply::Result::Error(_))
                ),
                "garbage AppendEntries (seed {seed}) was accepted: {reply:?}"
            );
        }
    }

    // Everything still up and serving.
    for id in c.running() {
        ensure!(c.pid(id).is_some(), "node {id} exited");
        let (code, body) = c.readyz(id).await?;
        ensure!(code == 200 || code == 503, "node {id} /readyz answered {code}: {body}");
        ringkv_tests::http_get(&c.nodes[(id - 1) as usize].metrics_addr, "/metrics").await?;
    }
    ringkv_tests::http_get(&router_metrics, "/metrics").await?;
    let client = ringkv_tests::router_client(&router.addr).await?;
    client.put(b"after", b"still writable").await?;
    let got = client.get(b"after").await?.map(|kv| kv.value.to_vec());
    ensure!(got.as_deref() == Some(&b"still writable"[..]), "read back {got:?}");
    Ok(())
}

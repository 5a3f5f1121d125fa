//! Direct mode: the client routes by itself to the nodes (no router hop), with stale reads
//! spread by least outstanding requests.
//!
//! `cargo run -p ringkv-client --example direct -- 127.0.0.1:7001,127.0.0.1:7002`

use ringkv_client::{Client, Consistency};
use ringkv_routing::ReadPolicy;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let seeds = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:7001".into());
    let client = Client::builder()
        .direct(seeds.split(','))
        .read_policy(ReadPolicy::LeastOutstanding)
        .connect()
        .await?;
    let map = client.shard_map().await?;
    println!(
        "cluster: {} nodes, {} shards, RF {}, epoch {}",
        map.nodes.len(),
        map.shard_count,
        map.replication_factor,
        map.epoch
    );
    for i in 0..10 {
        client.put(format!("direct/{i}").as_bytes(), b"v").await?;
    }
    let keys: Vec<Vec<u8>> = (0..10).map(|i| format!("direct/{i}").into_bytes()).collect();
    let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    println!("multi_get found {} keys", client.multi_get(&refs).await?.len());
    println!("stale read: {:?}", client.get_with(b"direct/0", Consistency::Stale).await?.is_some());
    Ok(())
}

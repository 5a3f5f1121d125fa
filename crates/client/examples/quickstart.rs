//! Put, read back at every consistency level, compare-and-swap and scan, through a router.
//!
//! Start a cluster first (`deploy/local/run-cluster.sh`), then:
//! `cargo run -p ringkv-client --example quickstart -- 127.0.0.1:6000`

use ringkv_client::{Client, Consistency, Expect, ScanOptions};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let endpoint = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:6000".into());
    let client = Client::builder().router(endpoint).connect().await?;
    let v1 = client.put(b"example/greeting", b"hello").await?;
    println!("put example/greeting at version {v1}");
    for c in [Consistency::Linearizable, Consistency::Lease, Consistency::Stale] {
        let kv = client.get_with(b"example/greeting", c).await?;
        println!("{c:?} read: {:?}", kv.map(|kv| String::from_utf8_lossy(&kv.value).to_string()));
    }
    let swapped =
        client.cas(b"example/greeting", Expect::Version(v1), Some(b"hello again")).await?;
    println!("cas on version {v1}: succeeded={}", swapped.succeeded);
    let page = client
        .scan(ScanOptions { prefix: b"example/".to_vec(), limit: 10, ..ScanOptions::default() })
        .await?;
    for kv in page.kvs {
        println!(
            "{} = {} (v{})",
            String::from_utf8_lossy(&kv.key),
            String::from_utf8_lossy(&kv.value),
            kv.version
        );
    }
    Ok(())
}

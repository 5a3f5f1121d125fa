//! `ringkv-node`: runs one storage node until SIGTERM or Ctrl-C.

use clap::Parser;
use ringkv_node::{Args, NodeConfig};
use tokio::signal::unix::{SignalKind, signal};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,openraft=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cfg = NodeConfig::resolve(Args::parse())?;
    let mut node = ringkv_node::start(cfg).await?;
    // Machine-readable line for scripts and tests that start nodes on port 0.
    println!(
        "ringkv-node listening grpc={} metrics={}",
        node.grpc_addr,
        node.metrics_addr.map(|a| a.to_string()).unwrap_or_default()
    );
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: shutting down"),
        r = node.wait() => {
            r.map_err(|e| anyhow::anyhow!("gRPC server failed: {e}"))?;
        }
    }
    node.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

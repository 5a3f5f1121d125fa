//! `ringkv-node`: runs one storage node until SIGTERM or Ctrl-C.

use clap::Parser;
use ringkv_node::{Args, NodeConfig};
use tokio::signal::unix::{SignalKind, signal};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // RINGKV_LOG_FORMAT=json: one JSON object per line, for log collectors.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,openraft=error".into());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if std::env::var("RINGKV_LOG_FORMAT").is_ok_and(|f| f == "json") {
        logs.json().init();
    } else {
        logs.init();
    }
    let cfg = NodeConfig::resolve(Args::parse())?;
    let mut node = ringkv_node::start(cfg).await?;
    // Machine-readable line for scripts and tests that start nodes on port 0.
    println!(
        "ringkv-node listening grpc={} metrics={}",
        node.grpc_addr,
        node.metrics_addr.map(|a| a.to_string()).unwrap_or_default()
    );
    let handoff = std::time::Duration::from_millis(node.handoff_ms);
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: handing leaderships off, then shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: handing leaderships off, then shutting down"),
        r = node.wait() => {
            r.map_err(|e| anyhow::anyhow!("gRPC server failed: {e}"))?;
        }
    }
    // A second signal skips the hand-off (an operator in a hurry).
    tokio::select! {
        _ = node.hand_off(handoff) => {}
        _ = term.recv() => tracing::warn!("second SIGTERM: stopping without finishing the hand-off"),
        _ = tokio::signal::ctrl_c() => tracing::warn!("second interrupt: stopping without finishing the hand-off"),
    }
    node.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

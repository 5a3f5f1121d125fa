//! `ringkv-router`: run the ambassador until SIGTERM or Ctrl-C.

use clap::Parser;
use ringkv_router::{RouterConfig, Split};
use ringkv_routing::{ReadPolicy, RoutingConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "ringkv-router",
    version,
    about = "Routes, balances and retries requests for a ringkv cluster"
)]
struct Args {
    /// Address to serve the ringkv API on (127.0.0.1 for a sidecar).
    #[arg(long, env = "RINGKV_ROUTER_LISTEN", default_value = "127.0.0.1:6000")]
    listen: SocketAddr,
    /// Node addresses to learn the cluster from, comma separated.
    #[arg(long, env = "RINGKV_ROUTER_SEEDS", value_delimiter = ',', required = true)]
    seeds: Vec<String>,
    /// How STALE reads pick a replica: round-robin, least-outstanding, peak-ewma, key-affinity.
    #[arg(long, env = "RINGKV_ROUTER_READ_POLICY", default_value = "least-outstanding")]
    read_policy: ReadPolicy,
    /// Deadline for requests whose caller set none.
    #[arg(long, env = "RINGKV_ROUTER_TIMEOUT_MS", default_value_t = 10_000)]
    timeout_ms: u64,
    /// Prometheus `/metrics` address (off when unset).
    #[arg(long, env = "RINGKV_ROUTER_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Seeds of a second cluster that receives --split-percent of the keys (sticky by key).
    #[arg(long, env = "RINGKV_ROUTER_SPLIT_SEEDS", value_delimiter = ',')]
    split_seeds: Vec<String>,
    /// Percentage of keys sent to the second cluster (0-100).
    #[arg(long, env = "RINGKV_ROUTER_SPLIT_PERCENT", default_value_t = 0)]
    split_percent: u32,
    /// Requests routed at once; more are refused at once with RESOURCE_EXHAUSTED (OVERLOADED)
    /// and a retry delay.
    #[arg(
        long,
        env = "RINGKV_ROUTER_INFLIGHT_REQUESTS_MAX",
        default_value_t = ringkv_router::admission::INFLIGHT_REQUESTS_MAX_DEFAULT
    )]
    inflight_requests_max: u32,
    /// Requests per second each caller (by IP address) may send; 0: no per-caller limit.
    #[arg(long, env = "RINGKV_ROUTER_CLIENT_RATE_PER_SEC", default_value_t = 0)]
    client_rate_per_sec: u32,
    /// Requests a caller may send at once above its rate (default: one second's worth).
    #[arg(long, env = "RINGKV_ROUTER_CLIENT_BURST")]
    client_burst: Option<u32>,
    /// TLS on both sides: `ca.crt`, `tls.crt`, `tls.key` in this directory (a mounted TLS
    /// Secret). Clients then connect with TLS; nodes are dialed with this certificate.
    #[arg(long, env = "RINGKV_ROUTER_TLS_DIR")]
    tls_dir: Option<PathBuf>,
    /// CA bundle (PEM) the nodes' and clients' certificates are checked against.
    #[arg(long, env = "RINGKV_ROUTER_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// The router's certificate chain (PEM), naming the host clients dial.
    #[arg(long, env = "RINGKV_ROUTER_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `--tls-cert`.
    #[arg(long, env = "RINGKV_ROUTER_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// How often the certificate files are re-read (cert-manager rotates them in place).
    #[arg(long, env = "RINGKV_ROUTER_TLS_RELOAD_INTERVAL_MS", default_value_t = 5_000)]
    tls_reload_interval_ms: u64,
    /// The access policy file (TOML; see docs/security.md): every call then needs a token or
    /// client certificate it names, with a grant for what it asks. Needs TLS. Re-read as
    /// often as the certificates.
    #[arg(long, env = "RINGKV_ROUTER_AUTH_POLICY")]
    auth_policy: Option<PathBuf>,
    /// The router's own bearer token, for its own calls to the nodes (shard maps) when the
    /// nodes check tokens; calls made for a caller carry the caller's credential instead.
    #[arg(long, env = "RINGKV_ROUTER_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // RINGKV_LOG_FORMAT=json: one JSON object per line, for log collectors.
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if std::env::var("RINGKV_LOG_FORMAT").is_ok_and(|f| f == "json") {
        logs.json().init();
    } else {
        logs.init();
    }
    let a = Args::parse();
    let tls_paths = ringkv_tls::TlsPaths::from_settings(
        a.tls_dir.as_deref(),
        a.tls_ca.clone(),
        a.tls_cert.clone(),
        a.tls_key.clone(),
    )?;
    let tls = tls_paths.map(ringkv_tls::Tls::load).transpose()?;
    let _watcher =
        tls.as_ref().map(|t| t.watch(Duration::from_millis(a.tls_reload_interval_ms.max(1))));
    let dialer = ringkv_tls::Dialer::new(tls.clone());
    let routing = |seeds: Vec<String>| RoutingConfig {
        seeds,
        dialer: dialer.clone(),
        token: a.token.clone().map(ringkv_auth::Token::new),
        read_policy: a.read_policy,
        default_timeout: Duration::from_millis(a.timeout_ms),
        ..RoutingConfig::default()
    };
    let split = (!a.split_seeds.is_empty())
        .then(|| Split { routing: routing(a.split_seeds.clone()), percent: a.split_percent });
    let cfg = RouterConfig {
        listen: a.listen,
        metrics_listen: a.metrics_listen,
        primary: routing(a.seeds.clone()),
        split,
        inflight_requests_max: a.inflight_requests_max,
        rate_limit: std::num::NonZeroU32::new(a.client_rate_per_sec).map(|rate| {
            ringkv_router::admission::RateLimit {
                rate_per_sec: rate,
                burst: a.client_burst.and_then(std::num::NonZeroU32::new).unwrap_or(rate),
            }
        }),
        tls,
        auth_policy: a.auth_policy.clone(),
        auth_reload_interval: Duration::from_millis(a.tls_reload_interval_ms.max(1)),
    };
    let mut router = ringkv_router::start(cfg).await?;
    println!(
        "ringkv-router listening grpc={} metrics={}",
        router.addr,
        router.metrics_addr.map(|a| a.to_string()).unwrap_or_default()
    );
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        r = router.wait() => r.map_err(|e| anyhow::anyhow!("router failed: {e}"))?,
    }
    router.shutdown().await;
    Ok(())
}

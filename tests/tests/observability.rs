//! The dashboard and the alert rules query metrics that exist.
//!
//! `deploy/k8s/observability` holds the Grafana dashboard and the Prometheus alert rules. A
//! renamed metric would leave a panel empty or an alert silent, and nothing would say so. This
//! test reads every `ringkv_*` name those files use and finds each one on the `/metrics` of a
//! live cluster's nodes and router, after a little traffic and one node failure (a labelled
//! family shows nothing, not even its `# TYPE` line, until it is used).
//!
//! And a request can be followed through the processes it passes: the router and the node
//! log it under the caller's W3C trace id, each hop naming the one before as its parent.

use anyhow::{Context, Result, ensure};
use ringkv_tests::{Cluster, Tuning, free_port, http_get, router_client};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

/// Every `ringkv_…` identifier in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("ringkv_") {
        let start = i + at;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = start
            + text[start..]
                .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(text.len() - start);
        if boundary {
            out.insert(text[start..end].to_string());
        }
        i = end.max(start + 1);
    }
    out
}

/// Family names (`# TYPE` lines) and sample names of a Prometheus text exposition.
fn exposed(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut families = BTreeSet::new();
    let mut samples = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(name) = rest.split_whitespace().next() {
                families.insert(name.to_string());
            }
        } else if !line.starts_with('#')
            && let Some(name) = line.split(['{', ' ']).next()
            && !name.is_empty()
        {
            samples.insert(name.to_string());
        }
    }
    (families, samples)
}

/// A queried name is there if a sample has it, or if it is a family's sample name
/// (`_total`, `_bucket`, `_count`, `_sum`) and the family exists.
fn is_exposed(name: &str, families: &BTreeSet<String>, samples: &BTreeSet<String>) -> bool {
    samples.contains(name)
        || families.contains(name)
        || ["_total", "_bucket", "_count", "_sum"]
            .iter()
            .any(|s| name.strip_suffix(s).is_some_and(|f| families.contains(f)))
}

#[test]
fn names_are_found_in_text() {
    let names = metric_names(
        r#"sum by (le) (rate(ringkv_request_duration_seconds_bucket{method="put"}[5m])) / data-ringkv-0 ringkv_x"#,
    );
    assert_eq!(
        names,
        BTreeSet::from(["ringkv_request_duration_seconds_bucket".into(), "ringkv_x".into()])
    );
    let (f, s) = exposed(
        "# TYPE ringkv_requests counter\nringkv_requests_total{a=\"b\"} 1\n# TYPE ringkv_h histogram\n",
    );
    assert!(is_exposed("ringkv_requests_total", &f, &s));
    assert!(is_exposed("ringkv_h_bucket", &f, &s));
    assert!(!is_exposed("ringkv_missing", &f, &s));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dashboard_and_alerts_query_metrics_that_exist() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/k8s/observability");
    let mut wanted = BTreeSet::new();
    for file in ["dashboard.json", "prometheusrule.yaml"] {
        let text = std::fs::read_to_string(root.join(file))?;
        if file.ends_with(".json") {
            // A broken dashboard would fail to import: it must at least be JSON with panels.
            let v: serde_json::Value = serde_json::from_str(&text)?;
            ensure!(v["panels"].as_array().is_some_and(|p| !p.is_empty()), "{file}: no panels");
        }
        wanted.extend(metric_names(&text));
    }
    ensure!(
        wanted.len() >= 10,
        "only {} metric names found in {}: {wanted:?}",
        wanted.len(),
        root.display()
    );

    let mut c = Cluster::start(3, 4, 3, Tuning::default()).await?;
    c.wait_for_leaders(Duration::from_secs(30)).await?;
    let router_metrics = format!("127.0.0.1:{}", free_port()?);
    let router = c.start_router_with(&["--metrics-listen", &router_metrics]).await?;
    let client = router_client(&router.addr).await?;
    for i in 0..32 {
        let key = format!("k{i}");
        client.put(key.as_bytes(), b"v").await?;
        client.get(key.as_bytes()).await?;
    }
    // A leader down: the router's next writes to its shards fail to connect there, and the
    // per-node failure counters get their first samples.
    let victim = c.busiest_leader().await.context("no leader")?;
    c.kill(victim)?;
    for i in 0..32 {
        let _ = client.put(format!("k{i}").as_bytes(), b"w").await;
    }
    // Node metrics refresh every second; the request families are set at once.
    let found = ringkv_tests::wait_for(Duration::from_secs(10), "every queried metric", || {
        let (c, wanted, router_metrics) = (&c, &wanted, &router_metrics);
        async move {
            let (families, samples) = scrape(c, router_metrics).await?;
            wanted.iter().all(|n| is_exposed(n, &families, &samples)).then_some(())
        }
    })
    .await;
    if found.is_err() {
        let (families, samples) = scrape(&c, &router_metrics).await.unwrap_or_default();
        let missing: Vec<_> =
            wanted.iter().filter(|n| !is_exposed(n, &families, &samples)).collect();
        anyhow::bail!(
            "metrics queried by deploy/k8s/observability but exposed by no node or router: {missing:?}"
        );
    }
    Ok(())
}

/// Families and samples of the router's and every node's `/metrics`, together.
async fn scrape(c: &Cluster, router_metrics: &str) -> Option<(BTreeSet<String>, BTreeSet<String>)> {
    let mut texts = vec![http_get(router_metrics, "/metrics").await.ok()?];
    for id in c.running() {
        texts.push(c.metrics(id).await.ok()?);
    }
    let (mut families, mut samples) = (BTreeSet::new(), BTreeSet::new());
    for t in &texts {
        let (f, s) = exposed(t);
        families.extend(f);
        samples.extend(s);
    }
    Some((families, samples))
}

/// The `rpc` span (the trace hop) of each JSON log line of `path` written under `trace_id`.
fn hops_in(path: &Path, trace_id: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        // The log file also holds the line a node prints on stdout when it listens.
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|l| {
            let spans = l["spans"].as_array()?;
            spans.iter().find(|s| s["name"] == "rpc" && s["trace_id"] == trace_id).cloned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_is_one_trace_through_router_and_node() -> Result<()> {
    use ringkv_proto::v1::{PutRequest, kv_client::KvClient};
    // Spans on (they are off by default); each request logs its outcome at debug level,
    // inside its spans.
    let tuning = Tuning {
        log_filter: Some(
            "info,openraft=warn,ringkv_trace=debug,ringkv_node::metrics=debug,ringkv_router::metrics=debug",
        ),
        log_json: true,
        ..Tuning::default()
    };
    let c = Cluster::start(3, 2, 3, tuning).await?;
    c.wait_for_leaders(Duration::from_secs(30)).await?;
    let router = c.start_router("round-robin").await?;
    let mut kv = KvClient::new(c.dial(&router.addr).await?);

    // The W3C specification's example: trace 4bf9…, the caller's span 00f0….
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let mut req = tonic::Request::new(PutRequest {
        key: "traced".into(),
        value: "v".into(),
        ..Default::default()
    });
    req.metadata_mut().insert("traceparent", format!("00-{trace_id}-{caller_span}-01").parse()?);
    kv.put(req).await?;

    let router_hop = ringkv_tests::wait_for(
        Duration::from_secs(10),
        "the router to log the put in the caller's trace",
        || async { hops_in(&router.log_path, trace_id).into_iter().next() },
    )
    .await?;
    ensure!(router_hop["method"] == "/ringkv.v1.KV/Put", "{router_hop}");
    ensure!(
        router_hop["parent_id"] == caller_span,
        "the router's parent is the caller: {router_hop}"
    );
    let router_span = router_hop["span_id"].as_str().context("no span id")?.to_string();
    ensure!(router_span != caller_span, "the router is a hop of its own: {router_hop}");

    // The node that served it continues the trace as the router's child.
    let node_hop = ringkv_tests::wait_for(
        Duration::from_secs(10),
        "a node to log the put as a child of the router's span",
        || async {
            let logs: Vec<_> = c.nodes.iter().map(|n| c.log_path(n.id)).collect();
            logs.iter().flat_map(|p| hops_in(p, trace_id)).find(|h| h["parent_id"] == router_span)
        },
    )
    .await?;
    ensure!(node_hop["method"] == "/ringkv.v1.KV/Put", "{node_hop}");
    ensure!(node_hop["span_id"] != router_span, "{node_hop}");

    // The CLI starts a trace of its own with --trace and says which: the router and the node
    // log the command under it.
    let out = std::process::Command::new(ringkv_tests::binary("ringkv")?)
        .args(["--endpoint", &router.addr, "--trace", "put", "cli-traced", "v"])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "ringkv --trace put failed: {stderr}");
    let cli_trace = stderr
        .lines()
        .find_map(|l| l.strip_prefix("trace "))
        .context("ringkv --trace printed no trace id")?
        .trim()
        .to_string();
    ensure!(
        cli_trace.len() == 32 && cli_trace.bytes().all(|b| b.is_ascii_hexdigit()),
        "not a W3C trace id: {cli_trace:?}"
    );
    let cli_router_hop = ringkv_tests::wait_for(
        Duration::from_secs(10),
        "the router to log the CLI's put in the CLI's trace",
        || async { hops_in(&router.log_path, &cli_trace).into_iter().next() },
    )
    .await?;
    ensure!(cli_router_hop["method"] == "/ringkv.v1.KV/Put", "{cli_router_hop}");
    let cli_router_span = cli_router_hop["span_id"].as_str().context("no span id")?.to_string();
    ringkv_tests::wait_for(
        Duration::from_secs(10),
        "a node to log the CLI's put as a child of the router's span",
        || async {
            let logs: Vec<_> = c.nodes.iter().map(|n| c.log_path(n.id)).collect();
            logs.iter()
                .flat_map(|p| hops_in(p, &cli_trace))
                .find(|h| h["parent_id"] == cli_router_span)
        },
    )
    .await?;
    Ok(())
}

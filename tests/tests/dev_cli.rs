//! `ringkv dev` and the CLI, used the way a person would: start the dev cluster, put and get
//! through the default-style endpoint, check exit codes and JSON output, stop it with Ctrl-C
//! (SIGINT), start it again on the same data directory, and find the data still there.

use anyhow::{Context, Result, bail, ensure};
use ringkv_tests::{binary, free_port, free_port_range, wait_for};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

struct Dev {
    child: Child,
    out: std::path::PathBuf,
}

impl Drop for Dev {
    /// Stops `ringkv dev` the way a person does (Ctrl-C), so it stops its nodes; SIGKILL would
    /// leave them running.
    fn drop(&mut self) {
        // A test that already waited for `ringkv dev` has reaped it: its pid may belong to
        // another process by now (a node of a test running in parallel was killed at birth
        // this way: an empty log and "timed out waiting for node 3 to serve").
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGINT,
            );
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_dev(
    dir: &std::path::Path,
    base: u16,
    router: u16,
    metrics: u16,
    run: usize,
    extra: &[&str],
) -> Result<Dev> {
    let out = dir.join(format!("dev-{run}.out"));
    let child = Command::new(binary("ringkv")?)
        .args(["dev", "--data-dir"])
        .arg(dir.join("data"))
        .args([
            "--base-port",
            &base.to_string(),
            "--router-port",
            &router.to_string(),
            "--metrics-port",
            &metrics.to_string(),
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out)?)
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut dev = Dev { child, out: out.clone() };
    // Polled rather than `wait_for`, to fail at once (with the reason ringkv dev printed on
    // stderr above) if it exits instead of becoming ready.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        if std::fs::read_to_string(&out)?.contains("ringkv dev: ready") {
            return Ok(dev);
        }
        if let Some(status) = dev.child.try_wait()? {
            bail!("ringkv dev exited ({status}) before it was ready; its error is above");
        }
        ensure!(std::time::Instant::now() < deadline, "ringkv dev not ready after 90 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn cli(endpoint: &str, args: &[&str]) -> Result<Output> {
    Ok(Command::new(binary("ringkv")?).env("RINGKV_ENDPOINT", endpoint).args(args).output()?)
}

fn cli_tls(endpoint: &str, tls_dir: &std::path::Path, args: &[&str]) -> Result<Output> {
    Ok(Command::new(binary("ringkv")?)
        .env("RINGKV_ENDPOINT", endpoint)
        .env("RINGKV_TLS_DIR", tls_dir)
        .args(args)
        .output()?)
}

/// The value `ringkv dev`'s banner tells the user to `export NAME=` for the CLI.
fn exported(banner: &str, name: &str) -> Result<String> {
    banner
        .lines()
        .find_map(|l| l.split_once(&format!("export {name}=")).map(|(_, v)| v.trim().to_string()))
        .ok_or_else(|| anyhow::anyhow!("no {name} in the banner: {banner}"))
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_cluster_cli_and_restart() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let base = free_port_range(3)?;
    let router = free_port()?;
    let metrics = free_port_range(4)?;
    let endpoint = format!("127.0.0.1:{router}");

    let mut dev = start_dev(dir.path(), base, router, metrics, 1, &[]).await?;
    let banner = std::fs::read_to_string(&dev.out)?;
    ensure!(banner.contains(&format!("router   {endpoint}")), "banner: {banner}");

    let put = cli(&endpoint, &["put", "greeting", "hello"])?;
    ensure!(put.status.success() && stdout(&put).starts_with("OK version"), "{put:?}");
    let get = cli(&endpoint, &["get", "greeting"])?;
    ensure!(get.status.code() == Some(0) && stdout(&get) == "hello", "{get:?}");
    let missing = cli(&endpoint, &["get", "nope"])?;
    ensure!(missing.status.code() == Some(3), "a missing key exits 3: {missing:?}");
    let cas = cli(&endpoint, &["cas", "greeting", "x", "--expect-value", "wrong"])?;
    ensure!(cas.status.code() == Some(4), "a failed CAS exits 4: {cas:?}");
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&cli(&endpoint, &["--json", "get", "greeting"])?))?;
    ensure!(json["value"] == "hello" && json["version"].as_u64().is_some_and(|v| v > 0), "{json}");
    // Every shard shows a leader. Leader balancing may be moving one at any moment, so the
    // status is taken until it shows all eight (it must, within a few election timeouts).
    wait_for(Duration::from_secs(30), "cluster status to show a leader for every shard", || {
        let endpoint = endpoint.clone();
        async move {
            let out = cli(&endpoint, &["--json", "cluster", "status"]).ok()?;
            let status: serde_json::Value = serde_json::from_str(&stdout(&out)).ok()?;
            let shards = status["shards"].as_array()?;
            (shards.len() == 8 && shards.iter().all(|s| s["leader"].as_u64().is_some()))
                .then_some(())
        }
    })
    .await?;
    let bad = cli(&endpoint, &["get", "k", "--consistency", "sometimes"])?;
    ensure!(
        bad.status.code() == Some(1)
            && String::from_utf8_lossy(&bad.stderr).contains("unknown consistency"),
        "{bad:?}"
    );

    // Ctrl-C stops everything cleanly.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(dev.child.id())?),
        nix::sys::signal::Signal::SIGINT,
    )?;
    let status = dev.child.wait()?;
    ensure!(status.success(), "ringkv dev exit: {status}");
    ensure!(std::fs::read_to_string(&dev.out)?.contains("stopped; data kept"));
    let down = cli(&endpoint, &["get", "greeting"])?;
    ensure!(down.status.code() == Some(1), "nothing listens after stop: {down:?}");

    let dev = start_dev(dir.path(), base, router, metrics, 2, &[]).await?;
    let again = cli(&endpoint, &["get", "greeting"])?;
    ensure!(stdout(&again) == "hello", "data after restart: {again:?}");
    drop(dev);
    // Stopping `ringkv dev` stops its nodes too: nothing listens on their ports any more.
    for port in base..base + 3 {
        ensure!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "a node still listens on {port}"
        );
    }
    Ok(())
}

/// `ringkv dev --tls`: the banner says how to point the CLI at its certificate; with it
/// every command works (router, and nodes for status and membership), without it the CLI
/// is told the port requires TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_cluster_with_tls() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let base = free_port_range(3)?;
    let router = free_port()?;
    let metrics = free_port_range(4)?;
    let endpoint = format!("127.0.0.1:{router}");
    let dev = start_dev(dir.path(), base, router, metrics, 1, &["--tls"]).await?;
    let banner = std::fs::read_to_string(&dev.out)?;
    let tls_dir = std::path::PathBuf::from(exported(&banner, "RINGKV_TLS_DIR")?);

    let put = cli_tls(&endpoint, &tls_dir, &["put", "secret", "kept"])?;
    ensure!(put.status.success(), "{put:?}");
    let get = cli_tls(&endpoint, &tls_dir, &["get", "secret"])?;
    ensure!(stdout(&get) == "kept", "{get:?}");
    let list = cli_tls(&endpoint, &tls_dir, &["--json", "node", "list"])?;
    let nodes: serde_json::Value = serde_json::from_str(&stdout(&list))?;
    ensure!(nodes["nodes"].as_array().is_some_and(|n| n.len() == 3), "{list:?}");
    let status = cli_tls(&endpoint, &tls_dir, &["--json", "cluster", "status"])?;
    let status: serde_json::Value = serde_json::from_str(&stdout(&status))?;
    ensure!(status["shards"].as_array().is_some_and(|s| s.len() == 8), "{status}");

    let plain = cli(&endpoint, &["get", "secret"])?;
    ensure!(
        plain.status.code() == Some(1)
            && String::from_utf8_lossy(&plain.stderr).contains("this port requires TLS"),
        "plaintext is told what is wrong: {plain:?}"
    );
    drop(dev);
    Ok(())
}

/// `ringkv dev --auth`: the banner gives the operator's token; with it (and the TLS
/// directory) every command works, without it the CLI is told it is unauthenticated, and a
/// token made by `ringkv auth token` for a role added to the policy while the cluster runs
/// gets what the role grants and no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_cluster_with_auth() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let base = free_port_range(3)?;
    let router = free_port()?;
    let metrics = free_port_range(4)?;
    let endpoint = format!("127.0.0.1:{router}");
    let dev = start_dev(dir.path(), base, router, metrics, 1, &["--auth"]).await?;
    let banner = std::fs::read_to_string(&dev.out)?;
    let tls_dir = std::path::PathBuf::from(exported(&banner, "RINGKV_TLS_DIR")?);
    let token = exported(&banner, "RINGKV_TOKEN")?;
    let as_ = |token: Option<&str>, args: &[&str]| -> Result<Output> {
        let mut cmd = Command::new(binary("ringkv")?);
        cmd.env("RINGKV_ENDPOINT", &endpoint).env("RINGKV_TLS_DIR", &tls_dir).args(args);
        if let Some(t) = token {
            cmd.env("RINGKV_TOKEN", t);
        }
        Ok(cmd.output()?)
    };

    let put = as_(Some(&token), &["put", "orders/1", "kept"])?;
    ensure!(put.status.success(), "{put:?}");
    let status = as_(Some(&token), &["--json", "cluster", "status"])?;
    ensure!(status.status.success(), "the operator reaches the nodes too: {status:?}");
    let anonymous = as_(None, &["get", "orders/1"])?;
    ensure!(
        anonymous.status.code() == Some(1)
            && String::from_utf8_lossy(&anonymous.stderr).contains("unauthenticated"),
        "no token: told so: {anonymous:?}"
    );

    // A reader of orders/, added to the running cluster's policy.
    let made = as_(None, &["auth", "token", "--subject", "orders-reader", "--role", "orders-ro"])?;
    ensure!(made.status.success(), "{made:?}");
    let made = stdout(&made);
    let reader = made
        .lines()
        .nth(1)
        .and_then(|l| l.strip_prefix("# "))
        .ok_or_else(|| anyhow::anyhow!("no token printed: {made}"))?
        .to_string();
    let policy = dir.path().join("data").join("auth").join("policy.toml");
    let mut text = std::fs::read_to_string(&policy)
        .with_context(|| format!("the dev policy at {}", policy.display()))?;
    text +=
        "\n[[role]]\nname = \"orders-ro\"\ngrants = [{ keys = \"orders/\", access = \"read\" }]\n";
    text += &made.lines().filter(|l| !l.starts_with('#')).collect::<Vec<_>>().join("\n");
    std::fs::write(&policy, text)?;
    let got = wait_for(Duration::from_secs(20), "the new token to be known", || async {
        let o = as_(Some(&reader), &["get", "orders/1"]).ok()?;
        o.status.success().then(|| stdout(&o))
    })
    .await?;
    ensure!(got == "kept", "{got}");
    let denied = as_(Some(&reader), &["put", "orders/1", "changed"])?;
    ensure!(
        denied.status.code() == Some(1)
            && String::from_utf8_lossy(&denied.stderr).contains("permission denied"),
        "{denied:?}"
    );
    let other = as_(Some(&reader), &["get", "users/1"])?;
    ensure!(String::from_utf8_lossy(&other.stderr).contains("permission denied"), "{other:?}");
    drop(dev);
    Ok(())
}

/// Membership as JSON, when the CLI can get it.
fn node_list(endpoint: &str) -> Option<serde_json::Value> {
    let out = cli(endpoint, &["--json", "node", "list"]).ok()?;
    serde_json::from_str(&stdout(&out)).ok()
}

/// A person grows the dev cluster from another terminal (`ringkv node add`), watches the
/// replicas move (`ringkv node list`), then drains and removes the node again; an unsafe drain
/// is refused with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_cluster_grows_and_shrinks_from_another_terminal() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let base = free_port_range(3)?;
    let router = free_port()?;
    let metrics = free_port_range(4)?;
    let endpoint = format!("127.0.0.1:{router}");
    let _dev = start_dev(dir.path(), base, router, metrics, 1, &[]).await?;

    let refused = cli(&endpoint, &["node", "drain", "1"])?;
    ensure!(
        refused.status.code() == Some(1)
            && String::from_utf8_lossy(&refused.stderr)
                .contains("fewer than the replication factor"),
        "{refused:?}"
    );

    let listen = format!("127.0.0.1:{}", free_port()?);
    let added = Command::new(binary("ringkv")?)
        .env("RINGKV_ENDPOINT", &endpoint)
        .args(["node", "add", "--listen", &listen, "--data-dir"])
        .arg(dir.path().join("node-4"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("node-4.log"))?)
        .spawn()?;
    let mut added = Dev { child: added, out: dir.path().join("node-4.log") };
    let id = wait_for(Duration::from_secs(120), "the new node to take replicas", || {
        let (endpoint, listen) = (endpoint.clone(), listen.clone());
        async move {
            let l = node_list(&endpoint)?;
            let n = l["nodes"].as_array()?.iter().find(|n| n["addr"] == listen.as_str())?;
            let settled = l["moves"].as_array()?.is_empty() && l["shards_off_target"] == 0;
            (n["state"] == "up" && n["replicas"].as_u64()? > 0 && settled)
                .then(|| n["id"].as_u64())?
        }
    })
    .await?;

    let drain = cli(&endpoint, &["node", "drain", &id.to_string()])?;
    ensure!(drain.status.success() && stdout(&drain).contains("draining"), "{drain:?}");
    wait_for(Duration::from_secs(120), "the drained node to hold nothing", || {
        let endpoint = endpoint.clone();
        async move {
            let l = node_list(&endpoint)?;
            let n = l["nodes"].as_array()?.iter().find(|n| n["id"] == id)?;
            (n["replicas"] == 0 && l["moves"].as_array()?.is_empty()).then_some(())
        }
    })
    .await?;
    let remove = cli(&endpoint, &["node", "remove", &id.to_string()])?;
    ensure!(remove.status.success() && stdout(&remove).contains("removed"), "{remove:?}");
    // Ctrl-C in the other terminal stops the node.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(added.child.id())?),
        nix::sys::signal::Signal::SIGINT,
    )?;
    let status = added.child.wait()?;
    ensure!(status.success(), "ringkv node add exit: {status}");
    let get = cli(&endpoint, &["put", "after", "shrink"])?;
    ensure!(get.status.success(), "{get:?}");
    Ok(())
}

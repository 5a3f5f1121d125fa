//! A three-member etcd cluster on loopback, for side-by-side runs.
//!
//! Started from the system's `etcd` binary (Debian's `etcd-server`, 3.4; or `ETCD_BIN`), each
//! member with its own data directory and ports and etcd's defaults otherwise (fsync on every
//! commit included), so the comparison is with etcd as users run it. Stopped (SIGKILL, then
//! the data removed) on drop.

use anyhow::{Context, Result, bail};
use ringkv_tests::{free_port, wait_for};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct EtcdCluster {
    pub client_addrs: Vec<String>,
    children: Vec<Child>,
    _dir: tempfile::TempDir,
}

/// The etcd binary: `ETCD_BIN`, else `etcd` on the PATH (or /usr/bin/etcd).
pub fn etcd_binary() -> Result<String> {
    if let Ok(b) = std::env::var("ETCD_BIN") {
        return Ok(b);
    }
    for candidate in ["etcd", "/usr/bin/etcd"] {
        if Command::new(candidate)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
        {
            return Ok(candidate.to_string());
        }
    }
    bail!("etcd not found: install it (apt-get install etcd-server) or set ETCD_BIN")
}

impl EtcdCluster {
    pub async fn start(members: usize) -> Result<EtcdCluster> {
        let bin = etcd_binary()?;
        let dir = tempfile::Builder::new().prefix("ringkv-bench-etcd-").tempdir()?;
        let mut peers = Vec::new();
        let mut clients = Vec::new();
        for _ in 0..members {
            peers.push(format!("127.0.0.1:{}", free_port()?));
            clients.push(format!("127.0.0.1:{}", free_port()?));
        }
        let initial: Vec<String> =
            peers.iter().enumerate().map(|(i, p)| format!("m{i}=http://{p}")).collect();
        let mut children = Vec::new();
        for i in 0..members {
            let log = std::fs::File::create(dir.path().join(format!("m{i}.log")))?;
            let child = Command::new(&bin)
                .args(["--name", &format!("m{i}")])
                .arg("--data-dir")
                .arg(dir.path().join(format!("m{i}")))
                .args(["--listen-client-urls", &format!("http://{}", clients[i])])
                .args(["--advertise-client-urls", &format!("http://{}", clients[i])])
                .args(["--listen-peer-urls", &format!("http://{}", peers[i])])
                .args(["--initial-advertise-peer-urls", &format!("http://{}", peers[i])])
                .args(["--initial-cluster", &initial.join(",")])
                .args(["--initial-cluster-state", "new", "--initial-cluster-token", "ringkv-bench"])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting {bin}"))?;
            children.push(child);
        }
        let c = EtcdCluster { client_addrs: clients, children, _dir: dir };
        for addr in &c.client_addrs {
            let a = addr.clone();
            wait_for(Duration::from_secs(60), &format!("etcd member {a} to serve"), || {
                let a = a.clone();
                async move {
                    let conn = crate::target::Conn::open(
                        crate::target::TargetKind::Etcd,
                        &a,
                        ringkv_client::Consistency::Linearizable,
                    )
                    .await
                    .ok()?;
                    conn.read(b"ping", ringkv_client::Consistency::Linearizable)
                        .await
                        .ok()
                        .map(|_| ())
                }
            })
            .await?;
        }
        Ok(c)
    }
}

impl EtcdCluster {
    /// The members' process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

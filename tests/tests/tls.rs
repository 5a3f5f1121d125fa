//! TLS with real processes: a cluster whose nodes speak mutual TLS to each other and to the
//! router, refusing peers of another CA and plaintext with a clear error, and picking up
//! rotated certificates without a restart. (The API over TLS is `router_api.rs` and
//! `api.rs`, run once plaintext and once with TLS.)

use anyhow::{Context, Result, ensure};
use ringkv_proto::internal::HelloRequest;
use ringkv_proto::internal::membership_client::MembershipClient;
use ringkv_tests::{Cluster, ClusterTls, Tuning, node_binary, wait_for};
use ringkv_tls::{DevCa, Dialer, PLAINTEXT_REFUSED, Tls, TlsPaths, Usage};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

fn tls(c: &Cluster) -> &ClusterTls {
    c.tls.as_ref().expect("a TLS cluster")
}

/// The Membership service's `Hello` on `addr`, dialed by `dialer`: peers only.
async fn hello(dialer: &Dialer, addr: &str) -> Result<(), tonic::Status> {
    let endpoint = dialer
        .endpoint(addr)
        .map_err(|e| tonic::Status::internal(e.to_string()))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5));
    let channel =
        dialer.connect(&endpoint).await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let request =
        HelloRequest { name: "probe".into(), addr: "127.0.0.1:1".into(), ..Default::default() };
    MembershipClient::new(channel).hello(request).await.map(|_| ())
}

/// The leaf certificate `addr` presents to a new connection (checked against `ca`).
async fn presented_certificate(addr: &str, ca: &Path) -> Result<Vec<u8>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (host, _) = addr.rsplit_once(':').context("no port")?;
    let name = ServerName::try_from(host.to_string())?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await?;
    let certs = stream.get_ref().1.peer_certificates().context("no certificate presented")?;
    Ok(certs[0].to_vec())
}

/// Node `id`'s `ringkv_tls_handshake_failures_total`.
async fn handshake_failures(c: &Cluster, id: u64) -> Result<u64> {
    let text = c.metrics(id).await?;
    let line = text
        .lines()
        .find(|l| l.starts_with("ringkv_tls_handshake_failures_total "))
        .context("no ringkv_tls_handshake_failures_total on /metrics")?;
    Ok(line.rsplit(' ').next().unwrap_or_default().parse()?)
}

fn leaf_of(dir: &Path) -> Result<Vec<u8>> {
    Ok(CertificateDer::from_pem_file(dir.join(TlsPaths::CERT_FILE))?.to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_to_any_tls_port_is_told_to_use_tls_and_changes_nothing() -> Result<()> {
    let c = Cluster::start_tls(1, 2, 1, Tuning::default()).await?;
    c.wait_for_leaders(T).await?;
    let router = c.start_router("round-robin").await?;
    for (what, addr) in
        [("client port", c.addr(1)), ("peer port", c.peer_addr(1)), ("router", router.addr.clone())]
    {
        let mut kv =
            ringkv_proto::v1::kv_client::KvClient::new(ringkv_tests::channel(&addr).await?);
        let put = ringkv_proto::v1::PutRequest {
            key: b"plain".to_vec().into(),
            value: b"text".to_vec().into(),
            ..Default::default()
        };
        let e = kv.put(put).await.expect_err("a plaintext write to a TLS port");
        ensure!(e.code() == tonic::Code::Unauthenticated, "{what}: {e:?}");
        ensure!(e.message() == PLAINTEXT_REFUSED, "{what}: {}", e.message());
    }
    let client = c.router_client(&router.addr).await?;
    ensure!(client.get(b"plain").await?.is_none(), "a refused plaintext write changed nothing");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_of_another_ca_can_neither_call_peer_services_nor_join() -> Result<()> {
    let mut c = Cluster::start_tls(3, 4, 3, Tuning::default()).await?;
    c.wait_for_leaders(T).await?;
    let dir = c.dir.path().join("tls").join("intruder");
    // A certificate of another CA that trusts the cluster's CA, so that refusing it is the
    // cluster's doing, not the intruder's.
    let paths =
        DevCa::generate("intruder CA")?.write_identity(&dir, &ClusterTls::NAMES, Usage::Peer)?;
    std::fs::write(&paths.ca, tls(&c).ca.cert_pem())?;
    let intruder = Dialer::new(Some(Tls::load(paths)?));
    // A client that trusts the CA but has no certificate of its own.
    let anonymous = tls(&c).anonymous()?;

    let peer_port = c.peer_addr(1);
    hello(&tls(&c).client, &peer_port).await.context("a certificate of the CA is a peer")?;
    // The node refuses the handshake (with TLS 1.3 the client learns it from an alert or a
    // closed connection on its first request): an unknown CA, or no certificate where one
    // is required. The node's counter says it was the node that refused.
    let refused = |n: u64| {
        let c = &c;
        async move { handshake_failures(c, 1).await.ok().filter(|&got| got >= n) }
    };
    let before = handshake_failures(&c, 1).await?;
    hello(&intruder, &peer_port).await.expect_err("another CA's certificate");
    wait_for(T, "node 1 to count the intruder's refused handshake", || refused(before + 1)).await?;
    hello(&anonymous, &peer_port).await.expect_err("no certificate");
    wait_for(T, "node 1 to count a refused handshake without a certificate", || {
        refused(before + 2)
    })
    .await?;
    // The client port takes clients without certificates, but not into peer services.
    let e = hello(&anonymous, &c.addr(1)).await.expect_err("peer service on the client port");
    ensure!(matches!(e.code(), tonic::Code::Unauthenticated | tonic::Code::Unimplemented), "{e:?}");

    // A node process with the intruder's certificate tries to join through every node.
    let port = ringkv_tests::free_port_range(2)?;
    let log = std::fs::File::create(c.dir.path().join("intruder.log"))?;
    let mut child = std::process::Command::new(node_binary()?)
        .args(["--node-id", "intruder-9", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--raft-port-offset", "1", "--join", &c.seeds()])
        .arg("--data-dir")
        .arg(c.dir.path().join("intruder-data"))
        .arg("--tls-dir")
        .arg(&dir)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let refusals = || async {
        let mut sum = 0;
        for id in 1..=3 {
            sum += handshake_failures(&c, id).await.ok()?;
        }
        Some(sum)
    };
    let before = refusals().await.context("every node's metrics")?;
    // Several refused attempts: the intruder kept trying, and the cluster kept saying no.
    let waited = wait_for(T, "the cluster to refuse the intruder's handshakes", || async {
        (refusals().await? >= before + 3).then_some(())
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    waited?;
    let nodes = c.list_nodes().await?;
    ensure!(nodes.nodes.len() == 3, "the intruder was not admitted: {:?}", nodes.nodes);
    ensure!(
        nodes.nodes.iter().all(|n| !n.name.contains("intruder")),
        "no node of another CA is a member"
    );
    // The cluster is unharmed: a restarted node is dialed afresh by its peers and rejoins.
    c.kill(1)?;
    c.restart(1).await?;
    c.wait_for_leaders(T).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_certificates_are_served_without_a_restart_and_writes_go_on() -> Result<()> {
    let mut c = Cluster::start_tls(3, 4, 3, Tuning::default()).await?;
    c.wait_for_leaders(T).await?;
    let router = c.start_router("round-robin").await?;
    let client = c.router_client(&router.addr).await?;
    client.put(b"before", b"1").await?;

    // What cert-manager does on renewal: a new key and certificate of the same CA, written
    // over the old files while everything runs.
    let t = tls(&c);
    let ca_file = t.root.join("client").join(TlsPaths::CA_FILE);
    let mut renewed = Vec::new();
    for (who, addr) in (1..=3)
        .map(|id| (format!("node-{id}"), c.addr(id)))
        .chain([("router".to_string(), router.addr.clone())])
    {
        let dir = t.root.join(&who);
        let old = leaf_of(&dir)?;
        t.ca.write_identity(&dir, &ClusterTls::NAMES, Usage::Peer)?;
        let new = leaf_of(&dir)?;
        ensure!(old != new);
        renewed.push((who, addr, new));
    }
    for (who, addr, new) in &renewed {
        wait_for(T, &format!("{who} to present its renewed certificate"), || async {
            (presented_certificate(addr, &ca_file).await.ok()? == *new).then_some(())
        })
        .await?;
    }
    // Open connections carry on; new ones, between the nodes too, use the new certificates:
    // a restarted node dials its peers and is dialed by them afresh.
    client.put(b"after", b"2").await?;
    c.kill(3)?;
    c.restart(3).await?;
    c.wait_for_leaders(T).await?;
    let fresh = c.router_client(&router.addr).await?;
    for key in [&b"before"[..], b"after"] {
        ensure!(fresh.get(key).await?.is_some(), "{:?} readable after the rotation", key);
    }
    fresh.put(b"later", b"3").await?;
    c.assert_checksums_equal(T).await?;
    Ok(())
}

/// With a CA of the nodes' own (`--tls-peer-ca`), a certificate of the cluster's other CA
/// (the router's, an application's) is good for the client API but not for the peer
/// services: the peer port refuses it in the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_ca_of_their_own_only_nodes_reach_the_peer_services() -> Result<()> {
    let c = Cluster::start_tls_peer_ca(3, 4, 3, Tuning::default()).await?;
    c.wait_for_leaders(T).await?;
    let router = c.start_router("round-robin").await?;
    let client = c.router_client(&router.addr).await?;
    client.put(b"k", b"v").await.context("the router's certificate serves the client API")?;
    ensure!(client.get(b"k").await?.is_some());

    let t = tls(&c);
    let router_identity = Dialer::new(Some(Tls::load(TlsPaths::in_dir(&t.root.join("router")))?));
    let before = handshake_failures(&c, 1).await?;
    hello(&router_identity, &c.peer_addr(1)).await.expect_err("not a node's certificate");
    wait_for(T, "node 1 to count the refused handshake", || async {
        (handshake_failures(&c, 1).await.ok()? > before).then_some(())
    })
    .await?;
    // A node's certificate is let in (the positive control).
    let node_paths =
        TlsPaths { peer_ca: Some(t.peer_ca_file()), ..TlsPaths::in_dir(&t.root.join("node-2")) };
    let node_identity = Dialer::new(Some(Tls::load(node_paths)?));
    hello(&node_identity, &c.peer_addr(1)).await.context("a node's certificate is a peer")?;
    Ok(())
}

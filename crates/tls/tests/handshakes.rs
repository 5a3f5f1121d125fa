//! Real TLS over real sockets: a gRPC health server behind [`ringkv_tls::accept`], dialed by
//! [`ringkv_tls::Dialer`]s holding various certificates.

use ringkv_tls::{ClientAuth, DevCa, Dialer, PLAINTEXT_REFUSED, Tls, TlsPaths, Usage};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// A health server on port 0 serving through `tls` (plaintext when `None`), until the test
/// ends (the runtime stops it).
async fn serve(tls: Option<Tls>, auth: ClientAuth) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_reporter, service) = tonic_health::server::health_reporter();
    let tcp = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let router = tonic::transport::Server::builder().add_service(service);
    tokio::spawn(async move {
        match tls {
            Some(tls) => router.serve_with_incoming(ringkv_tls::accept(tls, auth, tcp)).await,
            None => router.serve_with_incoming(tcp).await,
        }
    });
    addr
}

async fn check(dialer: &Dialer, addr: &str) -> Result<(), tonic::Status> {
    let endpoint = dialer.endpoint(addr).unwrap().connect_timeout(Duration::from_secs(5));
    let channel = match dialer.connect(&endpoint).await {
        Ok(c) => c,
        Err(e) => {
            use std::error::Error;
            let mut msg = e.to_string();
            let mut source = e.source();
            while let Some(s) = source {
                msg.push_str(&format!(": {s}"));
                source = s.source();
            }
            return Err(tonic::Status::unavailable(msg));
        }
    };
    HealthClient::new(channel)
        .check(HealthCheckRequest { service: String::new() })
        .await
        .map(|_| ())
}

/// Waits (bounded) for `counter` to reach `n`: the server counts a refusal just after
/// sending its alert, so the client may see the alert first.
async fn counts_to(counter: &prometheus_client::metrics::counter::Counter, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while counter.get() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} refusals counted, want {n}",
            counter.get()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(counter.get(), n);
}

fn identity(ca: &DevCa, dir: &Path, names: &[&str], usage: Usage) -> Tls {
    Tls::load(ca.write_identity(dir, names, usage).unwrap()).unwrap()
}

/// Trusts `ca` and has no certificate of its own.
fn anonymous(ca: &DevCa, dir: &Path) -> Tls {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("ca.crt");
    std::fs::write(&path, ca.cert_pem()).unwrap();
    Tls::load(TlsPaths { ca: path, cert: None, key: None, peer_ca: None }).unwrap()
}

#[tokio::test]
async fn mutual_tls_admits_only_certificates_of_the_cluster_ca() {
    let dir = TempDir::new().unwrap();
    let ca = DevCa::generate("cluster").unwrap();
    let other = DevCa::generate("intruder").unwrap();
    let server = identity(&ca, &dir.path().join("server"), &["127.0.0.1"], Usage::Peer);
    let addr = serve(Some(server.clone()), ClientAuth::Required).await.to_string();

    let peer = identity(&ca, &dir.path().join("peer"), &["127.0.0.1"], Usage::Peer);
    check(&Dialer::new(Some(peer)), &addr).await.expect("a peer of the CA is served");

    // A certificate of another CA, even one that trusts this server's CA.
    let intruder_dir = dir.path().join("intruder");
    let intruder = identity(&other, &intruder_dir, &["127.0.0.1"], Usage::Peer);
    std::fs::write(intruder_dir.join("ca.crt"), ca.cert_pem()).unwrap();
    intruder.reload().unwrap();
    // TLS 1.3: the client finishes its half of the handshake first, so it learns of the
    // server's refusal from an alert, or a closed connection, on its first request; the
    // server's count says it was the server that refused.
    let refused = server.handshake_failures();
    check(&Dialer::new(Some(intruder)), &addr).await.expect_err("another CA");
    counts_to(&refused, 1).await;

    // No certificate at all.
    let anon = Dialer::new(Some(anonymous(&ca, &dir.path().join("anon"))));
    check(&anon, &addr).await.expect_err("a client without a certificate");
    counts_to(&refused, 2).await;
}

#[tokio::test]
async fn client_certificates_are_optional_on_client_ports_but_the_server_is_verified() {
    let dir = TempDir::new().unwrap();
    let ca = DevCa::generate("cluster").unwrap();
    let server = identity(&ca, &dir.path().join("server"), &["127.0.0.1"], Usage::Peer);
    let addr = serve(Some(server), ClientAuth::Optional).await.to_string();
    check(&Dialer::new(Some(anonymous(&ca, &dir.path().join("anon")))), &addr)
        .await
        .expect("server TLS without a client certificate");

    // A client trusting another CA refuses the server.
    let other = DevCa::generate("other").unwrap();
    let e = check(&Dialer::new(Some(anonymous(&other, &dir.path().join("other")))), &addr)
        .await
        .unwrap_err();
    assert!(e.message().contains("certificate"), "{e:?}");
}

#[tokio::test]
async fn the_name_dialed_must_be_in_the_server_certificate() {
    let dir = TempDir::new().unwrap();
    let ca = DevCa::generate("cluster").unwrap();
    let server = identity(&ca, &dir.path().join("server"), &["ringkv-0.ringkv"], Usage::Peer);
    let addr = serve(Some(server), ClientAuth::Optional).await;
    let client = Dialer::new(Some(anonymous(&ca, &dir.path().join("anon"))));
    let e = check(&client, &addr.to_string()).await.unwrap_err();
    assert!(e.message().contains("certificate"), "{e:?}");
}

#[tokio::test]
async fn plaintext_to_a_tls_port_is_told_to_use_tls() {
    let dir = TempDir::new().unwrap();
    let ca = DevCa::generate("cluster").unwrap();
    let server = identity(&ca, &dir.path().join("server"), &["127.0.0.1"], Usage::Peer);
    for auth in [ClientAuth::Optional, ClientAuth::Required] {
        let addr = serve(Some(server.clone()), auth).await.to_string();
        let e = check(&Dialer::plaintext(), &addr).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
        assert_eq!(e.message(), PLAINTEXT_REFUSED);
    }
}

#[tokio::test]
async fn tls_to_a_plaintext_port_says_the_server_does_not_speak_tls() {
    let dir = TempDir::new().unwrap();
    let ca = DevCa::generate("cluster").unwrap();
    let addr = serve(None, ClientAuth::Optional).await.to_string();
    let client = Dialer::new(Some(anonymous(&ca, &dir.path().join("anon"))));
    let e = check(&client, &addr).await.unwrap_err();
    assert!(e.message().contains("does not seem to speak TLS"), "{e:?}");
}

#[tokio::test]
async fn rotated_files_are_served_to_new_connections_without_a_restart() {
    let dir = TempDir::new().unwrap();
    let server_dir = dir.path().join("server");
    let old_ca = DevCa::generate("old").unwrap();
    let new_ca = DevCa::generate("new").unwrap();
    let server = identity(&old_ca, &server_dir, &["127.0.0.1"], Usage::Peer);
    let watcher = server.watch(Duration::from_millis(50));
    let addr = serve(Some(server.clone()), ClientAuth::Optional).await.to_string();

    let old_client = Dialer::new(Some(anonymous(&old_ca, &dir.path().join("old"))));
    let new_client = Dialer::new(Some(anonymous(&new_ca, &dir.path().join("new"))));
    check(&old_client, &addr).await.unwrap();
    assert!(check(&new_client, &addr).await.is_err(), "not rotated yet");

    // A half-written rotation (a new key, the old certificate) is refused and the old set
    // kept: the server still serves.
    let (_, stray_key) = new_ca.issue(&["127.0.0.1"], Usage::Peer).unwrap();
    std::fs::write(server_dir.join("tls.key"), stray_key).unwrap();
    assert!(server.reload().is_err());
    check(&old_client, &addr).await.expect("a bad rotation keeps the old certificate");

    new_ca.write_identity(&server_dir, &["127.0.0.1"], Usage::Peer).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while server.reloads() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the watcher never reloaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check(&new_client, &addr).await.expect("new connections get the new certificate");
    let now_unix =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let not_after = server.certificate_not_after().get();
    assert!(
        not_after > now_unix as i64,
        "the expiry gauge names the renewed certificate's: {not_after}"
    );
    assert!(check(&old_client, &addr).await.is_err(), "the old CA no longer vouches for it");
    watcher.abort();
}

#[test]
fn unreadable_or_broken_files_name_the_file_and_the_problem() {
    let dir = TempDir::new().unwrap();
    let missing = TlsPaths::in_dir(&dir.path().join("nowhere"));
    let e = Tls::load(missing).unwrap_err().to_string();
    assert!(e.contains("cannot read CA bundle") && e.contains("nowhere/ca.crt"), "{e}");

    let ca = DevCa::generate("cluster").unwrap();
    let paths = ca.write_identity(dir.path(), &["127.0.0.1"], Usage::Peer).unwrap();
    std::fs::write(&paths.ca, "not a certificate").unwrap();
    let e = Tls::load(paths.clone()).unwrap_err().to_string();
    assert!(e.contains("CA bundle") && e.contains("no PEM CERTIFICATE"), "{e}");

    std::fs::write(&paths.ca, ca.cert_pem()).unwrap();
    std::fs::write(
        paths.key.as_ref().unwrap(),
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let e = Tls::load(paths).unwrap_err().to_string();
    assert!(e.contains("tls.key") || e.contains("do not make a usable identity"), "{e}");
}

#[test]
fn with_a_peer_ca_only_its_certificates_are_peers() {
    let dir = TempDir::new().unwrap();
    let ca = DevCa::generate("clients").unwrap();
    let nodes = DevCa::generate("nodes").unwrap();
    let peer_ca = dir.path().join("peer-ca.crt");
    std::fs::write(&peer_ca, nodes.cert_pem()).unwrap();
    let mut paths = ca.write_identity(&dir.path().join("me"), &["127.0.0.1"], Usage::Peer).unwrap();
    paths.peer_ca = Some(peer_ca);
    let tls = Tls::load(paths).unwrap();
    let leaf = |ca: &DevCa| {
        let (cert, _) = ca.issue(&["127.0.0.1"], Usage::Peer).unwrap();
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()
    };
    assert!(tls.is_peer(&[leaf(&nodes)]), "a certificate of the peer CA is a node's");
    assert!(!tls.is_peer(&[leaf(&ca)]), "the other CA's certificates are not");
    assert!(!tls.is_peer(&[]));

    // Without a peer CA, the one CA vouches for nodes.
    let one =
        Tls::load(ca.write_identity(&dir.path().join("one"), &["127.0.0.1"], Usage::Peer).unwrap())
            .unwrap();
    assert!(one.is_peer(&[leaf(&ca)]));
    assert!(!one.is_peer(&[leaf(&nodes)]));
}

/// Clients that connect and say nothing hold every handshake slot: a connection past them is
/// closed at once instead of waiting behind them, and once their first-byte timeout has
/// passed a real client is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_cannot_stall_accepting() {
    use tokio::io::AsyncReadExt;
    let dir = TempDir::new().unwrap();
    let ca = DevCa::generate("cluster").unwrap();
    let server = identity(&ca, &dir.path().join("server"), &["127.0.0.1"], Usage::Peer);
    let addr = serve(Some(server), ClientAuth::Optional).await;
    let mut silent = Vec::new();
    for _ in 0..ringkv_tls::HANDSHAKES_MAX {
        silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let mut extra = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 1];
    // Accepted in order, so the silent ones hold the slots; this one is closed (EOF or a
    // reset), well before the silent ones' first-byte timeout would free a slot for it.
    let closed =
        tokio::time::timeout(ringkv_tls::FIRST_BYTE_TIMEOUT / 2, extra.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "a connection past the slots must be closed at once: {closed:?}"
    );

    let client = Dialer::new(Some(anonymous(&ca, &dir.path().join("anon"))));
    let deadline = tokio::time::Instant::now() + ringkv_tls::HANDSHAKE_TIMEOUT;
    while check(&client, &addr.to_string()).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no client served after the silent ones timed out"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(silent);
}

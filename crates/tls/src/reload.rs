//! The current TLS configuration of a process, and the task that keeps it in step with the
//! files.

use crate::material::{Files, Material};
use crate::{TlsError, TlsPaths};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// A process's TLS configuration: cheap to clone, shared by its listeners and dialers.
#[derive(Clone)]
pub struct Tls {
    inner: Arc<Inner>,
}

struct Inner {
    paths: TlsPaths,
    current: RwLock<Arc<Material>>,
    /// Successful reloads since start (for tests and the logs).
    reloads: AtomicU64,
    /// Connections whose TLS handshake this process refused or that failed (another CA, no
    /// certificate where one is required, an expired one, a scanner).
    handshake_failures: Counter,
    /// When this process's certificate expires, Unix seconds (0: it has none).
    not_after: Gauge,
    /// When a refused handshake was last logged.
    last_refusal_log: Mutex<Option<Instant>>,
    /// Client certificates (DER) already judged: whether each is a node's. A certificate
    /// is judged once, near its handshake, and the verdict kept: re-checking it on every
    /// request would cost a signature check each, and would start refusing a long-lived
    /// peer connection the day its certificate expires (cert-manager renews before that,
    /// but open connections keep the certificate they were opened with).
    verdicts: Mutex<Verdicts>,
}

/// Judged certificates: nodes' are few (one per node and renewal), others are bounded and
/// forgotten wholesale past [`NOT_PEERS_MAX`].
#[derive(Default)]
struct Verdicts {
    peers: HashSet<Vec<u8>>,
    not_peers: HashSet<Vec<u8>>,
}

const PEERS_MAX: usize = 4096;
const NOT_PEERS_MAX: usize = 1024;

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("paths", &self.inner.paths).finish()
    }
}

impl Tls {
    /// Loads the files; every error names the file and what is wrong with it.
    pub fn load(paths: TlsPaths) -> Result<Tls, TlsError> {
        let files = Files::read(&paths)?;
        let material = Material::build(&paths, files)?;
        let not_after = Gauge::default();
        not_after.set(material.not_after_unix.unwrap_or(0));
        Ok(Tls {
            inner: Arc::new(Inner {
                not_after,
                paths,
                current: RwLock::new(Arc::new(material)),
                reloads: AtomicU64::new(0),
                handshake_failures: Counter::default(),
                last_refusal_log: Mutex::new(None),
                verdicts: Mutex::new(Verdicts::default()),
            }),
        })
    }

    pub fn paths(&self) -> &TlsPaths {
        &self.inner.paths
    }

    /// Whether this process has a certificate of its own (it can serve, and dial with mutual
    /// TLS).
    pub fn has_identity(&self) -> bool {
        self.material().server_required.is_some()
    }

    pub(crate) fn material(&self) -> Arc<Material> {
        self.inner.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether `certs` (a verified client's chain, leaf first) is a node's: issued by the
    /// nodes' CA (the peer CA when one is configured, else the CA).
    /// A verdict once given for a certificate stands for this process's life (see
    /// `verdicts`); a certificate the CA files no longer vouch for cannot open a new
    /// connection anyway, since every handshake checks it against the current files.
    pub fn is_peer(&self, certs: &[rustls::pki_types::CertificateDer<'_>]) -> bool {
        let Some((leaf, intermediates)) = certs.split_first() else { return false };
        {
            let v = self.inner.verdicts.lock().unwrap_or_else(|p| p.into_inner());
            if v.peers.contains(leaf.as_ref()) {
                return true;
            }
            if v.not_peers.contains(leaf.as_ref()) {
                return false;
            }
        }
        let peer = self
            .material()
            .peer_verifier
            .verify_client_cert(leaf, intermediates, rustls::pki_types::UnixTime::now())
            .is_ok();
        let mut v = self.inner.verdicts.lock().unwrap_or_else(|p| p.into_inner());
        let set = if peer { &mut v.peers } else { &mut v.not_peers };
        if set.len() >= if peer { PEERS_MAX } else { NOT_PEERS_MAX } {
            set.clear();
        }
        set.insert(leaf.to_vec());
        peer
    }

    /// Whether a refused handshake may be logged now (at most one per `interval`).
    pub(crate) fn may_log_refusal(&self, interval: Duration) -> bool {
        let mut last = self.inner.last_refusal_log.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < interval) {
            return false;
        }
        *last = Some(now);
        true
    }

    /// Re-reads the files; swaps the configuration in when they changed and load. `Ok(true)`
    /// when it changed. Blocking (file reads): call from a blocking context.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let files = Files::read(&self.inner.paths)?;
        if files == self.material().files {
            return Ok(false);
        }
        let material = Material::build(&self.inner.paths, files)?;
        self.inner.not_after.set(material.not_after_unix.unwrap_or(0));
        *self.inner.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(material);
        // A certificate refused under the old files may be a node's under the new ones.
        self.inner.verdicts.lock().unwrap_or_else(|p| p.into_inner()).not_peers.clear();
        self.inner.reloads.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    /// Handshakes refused or failed on this process's TLS listeners (a Prometheus counter,
    /// `ringkv_tls_handshake_failures_total` on nodes and routers).
    pub fn handshake_failures(&self) -> Counter {
        self.inner.handshake_failures.clone()
    }

    /// When the certificate in use expires, Unix seconds (0: none), following reloads: the
    /// gauge `ringkv_tls_certificate_not_after_seconds`, which an alert watches (a renewal
    /// that never comes ends in refused handshakes on the day it expires).
    pub fn certificate_not_after(&self) -> Gauge {
        self.inner.not_after.clone()
    }

    /// Configurations swapped in by [`Tls::reload`] since start.
    pub fn reloads(&self) -> u64 {
        self.inner.reloads.load(Ordering::Relaxed)
    }

    /// Re-reads the files every `interval` until every handle of this `Tls` is dropped.
    /// Polling (not inotify) because a Kubernetes Secret volume swaps a symlink to a new
    /// directory, which watches on the old files never see; three small reads every few
    /// seconds cost nothing.
    pub fn watch(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        // Re-reading faster than this buys nothing (cert-manager writes files seconds apart).
        let interval = interval.max(Duration::from_millis(100));
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut failing = false;
            loop {
                tokio::time::sleep(interval).await;
                let Some(inner) = weak.upgrade() else { return };
                let tls = Tls { inner };
                let paths = tls.inner.paths.clone();
                let outcome = tokio::task::spawn_blocking(move || tls.reload()).await;
                match outcome {
                    Ok(Ok(true)) => {
                        failing = false;
                        tracing::info!(ca = %paths.ca.display(), "TLS certificates reloaded");
                    }
                    Ok(Ok(false)) => failing = false,
                    // Said once per failing spell: cert-manager writes the files one by one,
                    // so a mismatch for one poll is normal; one that lasts is not.
                    Ok(Err(e)) if !failing => {
                        failing = true;
                        tracing::warn!(error = %e, "new TLS files do not load; keeping the current ones");
                    }
                    Ok(Err(_)) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "the TLS reload task failed; certificates are no longer re-read");
                        return;
                    }
                }
            }
        })
    }
}

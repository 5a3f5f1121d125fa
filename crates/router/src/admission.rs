//! The router's admission control: a bound on the requests it routes at once, and an optional
//! rate limit per caller, so one noisy application cannot take the cluster from the others.
//!
//! Both refuse at once, before anything is sent to the cluster, with `RESOURCE_EXHAUSTED`,
//! reason `OVERLOADED` (metadata `limit_kind`: `requests` or `rate`, and `limit`) and a
//! `RetryInfo` delay: for the rate limit, the time until the caller's bucket holds a token
//! again; for the in-flight bound, a short fixed delay. The write outcome is NOT_APPLIED.
//!
//! A caller is known by its subject when the router has an access policy and the request's
//! token (or client certificate) is one the policy knows, so a caller's bucket follows it
//! across addresses and callers behind one NAT do not share one; otherwise by its IP address.
//! (An unchecked token is never a key: a caller could make one up per request and get a fresh
//! bucket each time.) Each caller gets a GCRA token bucket (governor's keyed limiter): `rate_per_sec` tokens a
//! second, up to `burst` at once. Buckets of callers idle long enough to be full again are
//! dropped every [`PRUNE_EVERY`], and sooner whenever more than [`CALLERS_MAX`] are held, so
//! the memory they take follows the callers of the last seconds, not every caller ever seen.
//!
//! Streams (subscriptions, watches) hold their admission only while they are set up; they are
//! bounded by the nodes' open-stream limits.

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use ringkv_routing::RoutingError;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Requests a router routes at once by default. Each holds a few KiB and a slot of the
/// nodes' own admission; 4,096 is several times what a 16-core cluster keeps busy.
pub const INFLIGHT_REQUESTS_MAX_DEFAULT: u32 = 4096;
/// The retry delay of a refusal by the in-flight bound (a routed request takes ms).
pub const RETRY_AFTER_INFLIGHT: Duration = Duration::from_millis(20);
/// How often idle callers' buckets are dropped.
pub const PRUNE_EVERY: Duration = Duration::from_secs(10);
/// Callers' buckets held before a prune is forced (each is a few dozen bytes).
pub const CALLERS_MAX: usize = 100_000;

/// A caller's rate limit: `rate_per_sec` requests a second, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub rate_per_sec: NonZeroU32,
    pub burst: NonZeroU32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabel {
    limit: &'static str,
}

/// The router's limits.
#[derive(Clone, Debug)]
pub struct RouterAdmission {
    inflight: Arc<Semaphore>,
    inflight_max: u32,
    rate: Option<(Arc<DefaultKeyedRateLimiter<CallerKey>>, RateLimit)>,
    /// Who callers are, for the rate limit's key (off: by address only).
    auth: ringkv_auth::Auth,
    clock: DefaultClock,
    rejected: Family<LimitLabel, Counter>,
    inflight_gauge: Gauge,
}

/// Whose bucket a request draws from.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum CallerKey {
    Subject(String),
    Address(IpAddr),
}

/// What an admitted request holds until it is answered.
#[derive(Debug)]
pub struct Admitted {
    _permit: OwnedSemaphorePermit,
    gauge: Gauge,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

impl RouterAdmission {
    pub fn new(inflight_max: u32, rate: Option<RateLimit>) -> Self {
        let inflight_max = inflight_max.max(1);
        RouterAdmission {
            inflight: Arc::new(Semaphore::new(inflight_max as usize)),
            inflight_max,
            rate: rate.map(|r| {
                let quota = Quota::per_second(r.rate_per_sec).allow_burst(r.burst);
                (Arc::new(DefaultKeyedRateLimiter::dashmap(quota)), r)
            }),
            clock: DefaultClock::default(),
            rejected: Family::default(),
            inflight_gauge: Gauge::default(),
            auth: ringkv_auth::Auth::disabled(),
        }
    }

    /// Keys the rate limit by the subjects `auth` knows (see the module docs).
    pub fn with_auth(mut self, auth: ringkv_auth::Auth) -> Self {
        self.auth = auth;
        self
    }

    pub fn register(&self, reg: &mut Registry) {
        // Both series from the start, at 0: an alert's rate() needs them before the first
        // refusal.
        for limit in ["requests", "rate"] {
            let _ = self.rejected.get_or_create(&LimitLabel { limit });
        }
        let r = reg.sub_registry_with_prefix("ringkv_router");
        r.register(
            "admission_rejected",
            "Requests refused with RESOURCE_EXHAUSTED (OVERLOADED) by the router, by limit",
            self.rejected.clone(),
        );
        r.register(
            "admission_inflight_requests",
            "Requests being routed (bounded by --inflight-requests-max)",
            self.inflight_gauge.clone(),
        );
    }

    /// Admits a request of `subject` (see [`RouterAdmission::with_auth`]) from `peer`
    /// (unknown peers share one bucket), or refuses it at once.
    pub fn admit(
        &self,
        subject: Option<String>,
        peer: Option<SocketAddr>,
    ) -> Result<Admitted, RoutingError> {
        if let Some((limiter, limit)) = &self.rate {
            if limiter.len() > CALLERS_MAX {
                limiter.retain_recent();
            }
            let caller = match subject {
                Some(s) => CallerKey::Subject(s),
                None => {
                    CallerKey::Address(peer.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |p| p.ip()))
                }
            };
            if let Err(not_until) = limiter.check_key(&caller) {
                self.rejected.get_or_create(&LimitLabel { limit: "rate" }).inc();
                return Err(RoutingError::Overloaded {
                    limit_kind: "rate",
                    limit: u64::from(limit.rate_per_sec.get()),
                    retry_after: not_until.wait_time_from(self.clock.now()),
                });
            }
        }
        let Ok(permit) = self.inflight.clone().try_acquire_owned() else {
            self.rejected.get_or_create(&LimitLabel { limit: "requests" }).inc();
            return Err(RoutingError::Overloaded {
                limit_kind: "requests",
                limit: u64::from(self.inflight_max),
                retry_after: RETRY_AFTER_INFLIGHT,
            });
        };
        self.inflight_gauge.inc();
        Ok(Admitted { _permit: permit, gauge: self.inflight_gauge.clone() })
    }

    /// Drops idle callers' buckets every [`PRUNE_EVERY`] (a no-op without a rate limit).
    pub fn spawn_pruner(&self) -> Option<tokio::task::JoinHandle<()>> {
        let (limiter, _) = self.rate.clone()?;
        Some(tokio::spawn(async move {
            let mut every = tokio::time::interval(PRUNE_EVERY);
            loop {
                every.tick().await;
                limiter.retain_recent();
                limiter.shrink_to_fit();
            }
        }))
    }
}

/// The gRPC services admission applies to: the client API. Health checks, reflection and the
/// shard map (Admin) pass untouched, so probes and operators are never locked out by load.
const ADMITTED_SERVICES: [&str; 3] = ["/ringkv.v1.KV/", "/ringkv.v1.Events/", "/ringkv.v1.Watch/"];

/// A tower layer that runs [`RouterAdmission`] in front of every client RPC: one place for
/// every method, unary or streaming, instead of a line in each handler.
#[derive(Clone, Debug)]
pub struct AdmissionLayer(pub RouterAdmission);

impl<S> tower_layer::Layer<S> for AdmissionLayer {
    type Service = AdmissionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AdmissionService { inner, admission: self.0.clone() }
    }
}

/// The service [`AdmissionLayer`] wraps around the router's routes.
#[derive(Clone, Debug)]
pub struct AdmissionService<S> {
    inner: S,
    admission: RouterAdmission,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// A refused request is read to its end before the refusal is sent, up to this many bytes...
const REFUSED_BODY_BYTES_MAX: usize = 1 << 20;
/// ...and for at most this long (a unary request's body is there at once; a client stream's
/// may never end).
const REFUSED_BODY_WAIT: std::time::Duration = std::time::Duration::from_millis(250);
/// Refused requests being read at once; past it, refusals are sent without reading.
const REFUSED_DRAINS_MAX: usize = 256;

/// Reads a refused request's body to its end (bounded), so the refusal closes the stream
/// cleanly. Answering first would make the server reset a stream the client may still be
/// sending on; at thousands of refusals a second some of the client's late frames land on
/// streams h2 has already forgotten, each counted as a reset the server caused, and past
/// 1,024 of those h2 closes the whole connection (its defence against clients that provoke
/// resets): shedding load would then fail every request on the caller's connection.
async fn drain<B: http_body::Body>(body: B) {
    use http_body_util::BodyExt;
    // Drains in progress hold no admission slot; bound them, and skip the wait when the
    // request already ended (a unary request usually has).
    static DRAINS: std::sync::LazyLock<std::sync::Arc<tokio::sync::Semaphore>> =
        std::sync::LazyLock::new(|| {
            std::sync::Arc::new(tokio::sync::Semaphore::new(REFUSED_DRAINS_MAX))
        });
    if body.is_end_stream() {
        return;
    }
    let Ok(_draining) = DRAINS.clone().try_acquire_owned() else { return };
    let mut body = std::pin::pin!(body);
    let mut read = 0usize;
    let _ = tokio::time::timeout(REFUSED_BODY_WAIT, async {
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                read += bytes::Buf::remaining(data);
                if read > REFUSED_BODY_BYTES_MAX {
                    return;
                }
            }
        }
    })
    .await;
}

impl<S, B, R> tower_service::Service<http::Request<B>> for AdmissionService<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Default + Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        if !ADMITTED_SERVICES.iter().any(|s| path.starts_with(s)) {
            return Box::pin(self.inner.call(req));
        }
        // Plaintext connections carry TCP connection info, TLS ones wrap it.
        let ext = req.extensions();
        let tls = ext.get::<tonic::transport::server::TlsConnectInfo<
            tonic::transport::server::TcpConnectInfo,
        >>();
        let peer = ext
            .get::<tonic::transport::server::TcpConnectInfo>()
            .and_then(|i| i.remote_addr())
            .or_else(|| tls.and_then(|i| i.get_ref().remote_addr()));
        // Only with a rate limit: the policy lookup is a hash per request.
        let subject = self.admission.rate.as_ref().and_then(|_| {
            let certs = tls.and_then(|i| i.peer_certs());
            self.admission.auth.subject_of(req.headers(), certs.as_ref().map(|c| c.as_slice()))
        });
        match self.admission.admit(subject, peer) {
            // A gRPC error is an HTTP 200 with the status in its headers: what tonic sends.
            Err(e) => {
                let refusal = e.to_status().into_http();
                let body = req.into_body();
                Box::pin(async move {
                    drain(body).await;
                    Ok(refusal)
                })
            }
            Ok(held) => {
                let answer = self.inner.call(req);
                // Held until the handler answers (for a stream: until it is set up).
                Box::pin(async move {
                    let r = answer.await;
                    drop(held);
                    r
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringkv_routing::WriteOutcome;
    use tonic_types::StatusExt;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    fn peer(last: u8) -> Option<SocketAddr> {
        Some(SocketAddr::from(([10, 0, 0, last], 5000)))
    }

    #[test]
    fn a_caller_over_its_rate_is_refused_with_the_time_to_wait_and_others_are_not() {
        let a = RouterAdmission::new(100, Some(RateLimit { rate_per_sec: nz(10), burst: nz(3) }));
        for _ in 0..3 {
            drop(a.admit(None, peer(1)).expect("within the burst"));
        }
        let e = a.admit(None, peer(1)).expect_err("the burst is spent");
        let s = e.to_status();
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        let d = s.get_error_details();
        let info = d.error_info().expect("error info");
        assert_eq!(info.reason, "OVERLOADED");
        assert_eq!(info.metadata.get("limit_kind").map(String::as_str), Some("rate"));
        let wait = d.retry_info().and_then(|r| r.retry_delay).expect("a retry delay");
        // One token every 100 ms: the wait is at most that, and not nothing.
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(100), "{wait:?}");
        assert_eq!(WriteOutcome::of(&s), WriteOutcome::NotApplied, "nothing was sent");
        // Another caller has its own bucket.
        drop(a.admit(None, peer(2)).expect("another caller"));
    }

    #[test]
    fn requests_in_flight_are_bounded_without_a_rate_limit() {
        let a = RouterAdmission::new(2, None);
        let first = a.admit(None, peer(1)).expect("first");
        let _second = a.admit(None, peer(2)).expect("second");
        let e = a.admit(None, peer(3)).expect_err("over the bound").to_status();
        let info = e.get_error_details().error_info().cloned().expect("info");
        assert_eq!(info.metadata.get("limit_kind").map(String::as_str), Some("requests"));
        assert_eq!(info.metadata.get("limit").map(String::as_str), Some("2"));
        drop(first);
        a.admit(None, peer(3)).expect("a finished request frees its place");
    }

    #[test]
    fn callers_the_policy_knows_have_buckets_of_their_own() {
        use ringkv_auth::policy::token_entry;
        let dir = tempfile::TempDir::new().unwrap();
        let ca = ringkv_tls::DevCa::generate("test").unwrap();
        let paths = ca.write_identity(dir.path(), &["127.0.0.1"], ringkv_tls::Usage::Peer).unwrap();
        let policy = dir.path().join("policy.toml");
        let policy_text = token_entry("a", "token-a", &[]) + &token_entry("b", "token-b", &[]);
        std::fs::write(&policy, policy_text).unwrap();
        let tls = ringkv_tls::Tls::load(paths).unwrap();
        let auth = ringkv_auth::Auth::load(&policy, Some(tls), ringkv_auth::Side::Router).unwrap();
        let one_per_sec = RateLimit { rate_per_sec: nz(1), burst: nz(1) };
        let a = RouterAdmission::new(100, Some(one_per_sec)).with_auth(auth.clone());
        let subject = |token: &str| {
            let mut h = http::HeaderMap::new();
            h.insert("authorization", format!("Bearer {token}").parse().unwrap());
            auth.subject_of(&h, None)
        };
        assert_eq!(subject("token-a").as_deref(), Some("a"));
        assert_eq!(subject("made-up"), None, "a token the policy does not know names nobody");
        drop(a.admit(subject("token-a"), peer(1)).expect("a's first request"));
        drop(a.admit(subject("token-b"), peer(1)).expect("b, same address, has its own bucket"));
        a.admit(subject("token-a"), peer(2)).expect_err("a's bucket follows it to another address");
        drop(
            a.admit(subject("made-up"), peer(1)).expect("unknown tokens use the address's bucket"),
        );
        a.admit(subject("made-up-2"), peer(1))
            .expect_err("one bucket per address, whatever the token");
    }

    #[test]
    fn idle_callers_are_forgotten() {
        let a = RouterAdmission::new(100, Some(RateLimit { rate_per_sec: nz(1000), burst: nz(1) }));
        for i in 0..50 {
            drop(a.admit(None, peer(i)).expect("first request of each"));
        }
        let (limiter, _) = a.rate.clone().unwrap();
        assert_eq!(limiter.len(), 50);
        // A bucket of burst 1 at 1000/s is full again after 1 ms.
        std::thread::sleep(Duration::from_millis(5));
        limiter.retain_recent();
        assert_eq!(limiter.len(), 0, "buckets that are full again hold nothing worth keeping");
    }
}

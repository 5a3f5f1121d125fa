//! Who is calling: the interceptor that turns a request's credential into a [`Caller`], and
//! the policy it consults, kept in step with its file.
//!
//! Resolution, in order (the first that applies decides):
//! 1. an `authorization: Bearer` token: the identity the policy gives its hash, or
//!    `UNAUTHENTICATED` if it gives none (a revoked or mistyped token is never silently
//!    ignored in favour of a weaker credential);
//! 2. on a node, a caller named by a router ([`crate::CALLER_SUBJECT_HEADER`]), honoured only
//!    when the connection's own certificate is a node's or a `delegate`'s;
//! 3. on a node, a node certificate: a node may do everything;
//! 4. a client certificate whose common name the policy lists under `[[certificate]]`;
//! 5. otherwise `UNAUTHENTICATED`, saying what would be accepted.
//!
//! With authorization off ([`Auth::disabled`]) every caller may do everything, but a token it
//! sent is still forwarded, so a router without a policy in front of nodes with one passes
//! its callers' tokens on.

use crate::error::AuthError;
use crate::forward::{CALLER_SUBJECT_HEADER, Forward};
use crate::grant::Identity;
use crate::needs::Guarded;
use crate::policy::Policy;
use crate::token::TOKEN_BYTES_MAX;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use ringkv_tls::Tls;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tonic::Request;
use tonic::metadata::MetadataMap;

/// Which process checks: a node trusts node certificates and routers' delegation; a router
/// trusts neither (it knows no peer CA, and its callers are applications).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Node,
    Router,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabel {
    reason: &'static str,
}

/// The authorization of one process: off, or a policy file (re-read while running).
#[derive(Clone, Debug, Default)]
pub struct Auth {
    inner: Option<Arc<Inner>>,
    counters: Counters,
}

/// The refusal counters, each taken out of its family once: every request passes here, and
/// a family lookup is a lock and a hash.
#[derive(Clone, Debug)]
struct Counters {
    refused: Family<RefusedLabel, Counter>,
    unauthenticated: Counter,
    denied: Counter,
    reload_failures: Counter,
    /// The caller of every request without a token when authorization is off, made once:
    /// that path runs on every request of a cluster without a policy (the default).
    open: Arc<Caller>,
}

impl Default for Counters {
    fn default() -> Counters {
        let refused = Family::<RefusedLabel, Counter>::default();
        let unauthenticated =
            refused.get_or_create(&RefusedLabel { reason: "unauthenticated" }).clone();
        let denied = refused.get_or_create(&RefusedLabel { reason: "permission_denied" }).clone();
        let open = Arc::new(Caller::open());
        Counters { refused, unauthenticated, denied, reload_failures: Counter::default(), open }
    }
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    /// The text the policy in use was parsed from, when it was loaded.
    loaded_text: String,
    policy: RwLock<Arc<Policy>>,
    tls: Option<Tls>,
    side: Side,
}

impl Auth {
    /// Authorization off: everyone may do everything.
    pub fn disabled() -> Auth {
        Auth::default()
    }

    /// Loads the policy at `path`. Refused without TLS: tokens would cross the network in
    /// the clear, and node certificates could not be told from anyone else.
    pub fn load(path: &Path, tls: Option<Tls>, side: Side) -> Result<Auth, AuthError> {
        if tls.is_none() {
            return Err(AuthError::Config(format!(
                "an access policy ({}) needs TLS (--tls-dir, or --tls-ca/--tls-cert/--tls-key): \
                 bearer tokens must not cross the network in plaintext",
                path.display()
            )));
        }
        let (policy, loaded_text) = Policy::load_with_text(path)?;
        Ok(Auth {
            inner: Some(Arc::new(Inner {
                path: path.to_path_buf(),
                loaded_text,
                policy: RwLock::new(Arc::new(policy)),
                tls,
                side,
            })),
            ..Auth::default()
        })
    }

    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Registers `auth_refused_total{reason}` and `auth_policy_reload_failures_total` under
    /// `registry` (prefixed by the caller: `ringkv_` on nodes, `ringkv_router_` on routers).
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "auth_refused",
            "Requests refused by authorization: unauthenticated (no or unknown credential) or permission_denied (a known caller without the grant)",
            self.counters.refused.clone(),
        );
        registry.register(
            "auth_policy_reload_failures",
            "Re-reads of the access policy file that failed to load (the previous policy stays in use)",
            self.counters.reload_failures.clone(),
        );
    }

    /// Re-reads the policy file every `interval`; a changed file that loads replaces the
    /// policy for every request from then on, one that does not is logged and the old one
    /// kept. Stops when the last clone of this `Auth` is dropped.
    pub fn watch(&self, interval: Duration) -> Option<tokio::task::JoinHandle<()>> {
        let weak = Arc::downgrade(self.inner.as_ref()?);
        let failures = self.counters.reload_failures.clone();
        let interval = interval.max(Duration::from_millis(100));
        let mut seen = self.inner.as_ref()?.loaded_text.clone().into_bytes();
        Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(inner) = weak.upgrade() else { return };
                // Cheap when nothing changed (the file is small; reads are seconds apart).
                match std::fs::read(&inner.path) {
                    Ok(bytes) if bytes != seen => seen = bytes,
                    _ => continue,
                }
                match Policy::load_with_text(&inner.path) {
                    Ok((p, text)) => {
                        seen = text.into_bytes();
                        tracing::info!(path = %inner.path.display(), tokens = p.token_count(), "access policy reloaded");
                        *inner.policy.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(p);
                    }
                    Err(e) => {
                        failures.inc();
                        tracing::warn!(error = %e, "access policy not reloaded; the previous one stays in use");
                    }
                }
            }
        }))
    }

    /// The interceptor for every client-facing service: resolves the caller and puts it in
    /// the request's extensions for the handler ([`caller`]), or refuses `UNAUTHENTICATED`.
    pub fn interceptor(
        &self,
    ) -> impl tonic::service::Interceptor + Clone + Send + Sync + 'static + use<> {
        let auth = self.clone();
        move |mut req: Request<()>| {
            let caller = auth.resolve(&req).inspect_err(|_| {
                auth.counters.unauthenticated.inc();
            })?;
            req.extensions_mut().insert(caller);
            Ok(req)
        }
    }

    /// The subject a request's credential names, if the policy knows it (a token, else a
    /// client certificate's common name): what the router's per-caller rate limit keys on,
    /// so one caller's buckets follow it across addresses. `None` with authorization off (a
    /// token nobody checks could be made up per request to get a fresh bucket each time).
    pub fn subject_of(
        &self,
        headers: &http::HeaderMap,
        certs: Option<&[tonic::transport::CertificateDer<'_>]>,
    ) -> Option<String> {
        let inner = self.inner.as_ref()?;
        let policy = inner.policy.read().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(v) = headers.get(http::header::AUTHORIZATION) {
            let (token, _) = bearer_of(v.as_bytes()).ok()?;
            return policy.by_token(&token).map(|i| i.subject.clone());
        }
        let cn = common_name(certs?.first()?)?;
        policy.by_certificate(&cn).map(|i| i.subject.clone())
    }

    fn resolve<T>(&self, req: &Request<T>) -> Result<Arc<Caller>, AuthError> {
        let token = bearer(req.metadata())?;
        let denied = &self.counters.denied;
        let caller = |identity: Option<Arc<Identity>>, forward: Forward| {
            Arc::new(Caller { identity, forward, denied: denied.clone() })
        };
        let Some(inner) = &self.inner else {
            return Ok(match token {
                Some((_, header)) => caller(None, Forward::Token(header)),
                None => self.counters.open.clone(),
            });
        };
        let policy = inner.policy.read().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some((token, header)) = token {
            let identity = policy.by_token(&token).ok_or_else(|| {
                AuthError::unauthenticated(
                    "the bearer token is not in this cluster's access policy (revoked, mistyped, or another cluster's)",
                )
            })?;
            return Ok(caller(Some(identity), Forward::Token(header)));
        }
        let certs = req.peer_certs();
        let leaf = certs.as_ref().and_then(|c| c.first());
        let is_node = inner.side == Side::Node
            && inner.tls.as_ref().is_some_and(|tls| ringkv_tls::from_peer(tls, req));
        if inner.side == Side::Node
            && let Some(named) = req.metadata().get(CALLER_SUBJECT_HEADER)
        {
            let delegate = is_node
                || leaf
                    .and_then(|c| common_name(c))
                    .and_then(|cn| policy.by_certificate(&cn))
                    .is_some_and(|i| i.delegate);
            if !delegate {
                return Err(AuthError::unauthenticated(format!(
                    "{CALLER_SUBJECT_HEADER} is honoured only from nodes and routers (a [[certificate]] with delegate = true)"
                )));
            }
            let subject = named.to_str().map_err(|_| {
                AuthError::unauthenticated(format!(
                    "{CALLER_SUBJECT_HEADER} is not printable ASCII"
                ))
            })?;
            let identity = policy.by_certificate(subject).ok_or_else(|| {
                AuthError::unauthenticated(format!(
                    "the router named caller {subject:?}, which has no [[certificate]] entry here"
                ))
            })?;
            let header = http::HeaderValue::from_bytes(named.as_bytes()).map_err(|_| {
                AuthError::unauthenticated("the named caller is not a valid header")
            })?;
            return Ok(caller(Some(identity), Forward::Subject(header)));
        }
        if is_node {
            return Ok(caller(Some(Arc::new(Identity::node())), Forward::Own));
        }
        if let Some(leaf) = leaf {
            let Some(cn) = common_name(leaf) else {
                return Err(AuthError::unauthenticated(
                    "the client certificate has no printable common name to look up",
                ));
            };
            let identity = policy.by_certificate(&cn).ok_or_else(|| {
                AuthError::unauthenticated(format!(
                    "the client certificate's subject {cn:?} has no [[certificate]] entry in the access policy"
                ))
            })?;
            let header = http::HeaderValue::from_str(&cn).map_err(|_| {
                AuthError::unauthenticated("the client certificate's subject cannot be forwarded")
            })?;
            return Ok(caller(Some(identity), Forward::Subject(header)));
        }
        Err(AuthError::unauthenticated(
            "this cluster requires authentication and the request carried no credential",
        ))
    }
}

/// The bearer token of a request, if it has an `authorization` header; a header that is not
/// `Bearer <token>` is refused rather than ignored.
fn bearer(md: &MetadataMap) -> Result<Option<(String, http::HeaderValue)>, AuthError> {
    md.get("authorization").map(|v| bearer_of(v.as_bytes())).transpose()
}

fn bearer_of(raw: &[u8]) -> Result<(String, http::HeaderValue), AuthError> {
    let bad = || AuthError::unauthenticated("the authorization header must be `Bearer <token>`");
    let s = std::str::from_utf8(raw).map_err(|_| bad())?;
    let (scheme, token) = s.split_once(' ').ok_or_else(bad)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(bad());
    }
    if token.len() > TOKEN_BYTES_MAX {
        return Err(AuthError::unauthenticated(format!(
            "the bearer token is longer than {TOKEN_BYTES_MAX} bytes"
        )));
    }
    let header = http::HeaderValue::from_str(s).map_err(|_| bad())?;
    Ok((token.to_string(), header))
}

/// The first common name of a certificate's subject, if printable.
fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    Some(cn.to_string())
}

/// Who made a request and what it may do; put in the request's extensions by
/// [`Auth::interceptor`].
#[derive(Debug, Clone)]
pub struct Caller {
    /// `None`: authorization is off.
    identity: Option<Arc<Identity>>,
    forward: Forward,
    denied: Counter,
}

impl Caller {
    /// A caller of a process without authorization: may do everything.
    pub fn open() -> Caller {
        Caller { identity: None, forward: Forward::Own, denied: Counter::default() }
    }

    /// `PERMISSION_DENIED` (naming the first missing grant) unless the caller holds every
    /// grant `msg` needs.
    pub fn require<T: Guarded>(&self, rpc: &'static str, msg: &T) -> Result<(), AuthError> {
        let Some(identity) = &self.identity else { return Ok(()) };
        if identity.superuser {
            return Ok(());
        }
        msg.needs(&mut |need| {
            if identity.allows(&need) {
                Ok(())
            } else {
                self.denied.inc();
                Err(AuthError::denied(&identity.subject, rpc, &need))
            }
        })
    }

    /// Whether the caller may learn that `topic` exists (what topic lists keep).
    pub fn sees_topic(&self, topic: &str) -> bool {
        self.identity.as_ref().is_none_or(|i| i.sees_topic(topic))
    }

    /// The subject, for logs (`anonymous` with authorization off).
    pub fn subject(&self) -> &str {
        self.identity.as_ref().map_or("anonymous", |i| i.subject.as_str())
    }

    /// What a router sends on the calls it makes for this caller.
    pub fn forward(&self) -> Forward {
        self.forward.clone()
    }
}

/// The caller of `req`. A request that did not pass [`Auth::interceptor`] is refused: a
/// service wired without it must fail closed, not open.
pub fn caller<T>(req: &Request<T>) -> Result<Arc<Caller>, AuthError> {
    req.extensions().get::<Arc<Caller>>().cloned().ok_or_else(|| {
        AuthError::unauthenticated("internal: this service was not wired through the authenticator")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataValue;

    #[test]
    fn bearer_headers_are_parsed_or_refused() {
        let mut md = MetadataMap::new();
        assert!(bearer(&md).unwrap().is_none());
        md.insert("authorization", MetadataValue::from_static("Bearer abc"));
        assert_eq!(bearer(&md).unwrap().unwrap().0, "abc");
        md.insert("authorization", MetadataValue::from_static("bearer  abc "));
        assert_eq!(bearer(&md).unwrap().unwrap().0, "abc");
        for bad in ["Basic abc", "Bearer", "Bearer ", "abc"] {
            md.insert("authorization", MetadataValue::from_static(bad));
            assert!(bearer(&md).is_err(), "{bad}");
        }
        let long = format!("Bearer {}", "x".repeat(TOKEN_BYTES_MAX + 1));
        md.insert("authorization", long.parse().unwrap());
        assert!(bearer(&md).unwrap_err().to_string().contains("longer than"));
    }

    #[test]
    fn a_policy_needs_tls() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, "").unwrap();
        let e = Auth::load(&path, None, Side::Node).unwrap_err();
        assert!(e.to_string().contains("needs TLS"), "{e}");
    }

    #[test]
    fn services_without_the_interceptor_fail_closed() {
        let e = caller(&Request::new(())).unwrap_err();
        assert_eq!(e.to_status().code(), tonic::Code::Unauthenticated);
    }
}

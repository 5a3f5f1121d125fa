//! Carrying a caller's credential onward: how a router (or a node forwarding an admin call)
//! makes its calls *as* the caller, so the node checks the caller, not the router.
//!
//! The routing core builds its requests deep inside retry loops, far from the handler that
//! knows the caller. Rather than thread a credential through every function, the handler
//! runs the routed call inside [`scope`], and every request leaving through an
//! [`AuthChannel`] picks the credential up from there: the caller's token, or for a caller
//! known by its certificate its subject in [`CALLER_SUBJECT_HEADER`]. A call made outside any
//! scope (the router's own shard-map refreshes, the client library's calls) carries the
//! channel's own token, if it has one. A forwarded credential always wins over the
//! channel's own: a router must never lend its own rights to a caller.
//!
//! A task-local does not follow `tokio::spawn`; [`propagate`] wraps a future so a spawned
//! task (a followed subscription) keeps the credential of the call that started it.
//!
//! The request's trace context (`ringkv_trace`) leaves through the same channel: an
//! [`AuthChannel`] is the one way the router and the client library call a node.

use http::HeaderValue;
use std::future::Future;
use std::task::{Context, Poll};
use tonic::body::Body;
use tonic::transport::Channel;

/// The header naming, on a router's call to a node, the caller it makes the call for when
/// that caller was known by its client certificate.
pub const CALLER_SUBJECT_HEADER: &str = "ringkv-caller-subject";

/// What a call made for a caller carries.
#[derive(Clone, Debug, Default)]
pub enum Forward {
    /// Nothing of the caller's: the channel's own token, if any.
    #[default]
    Own,
    /// The caller's `authorization` header, as it came.
    Token(HeaderValue),
    /// The caller's certificate subject.
    Subject(HeaderValue),
}

tokio::task_local! {
    static FORWARD: Forward;
}

/// Runs `fut` with every request it sends through an [`AuthChannel`] carrying `forward`.
pub async fn scope<F: Future>(forward: Forward, fut: F) -> F::Output {
    FORWARD.scope(forward, fut).await
}

/// `fut` with the credential of the current scope (if any), for `tokio::spawn`; it keeps
/// the request's trace too ([`ringkv_trace::propagate`]), the other thing a call carries.
pub fn propagate<F: Future>(fut: F) -> impl Future<Output = F::Output> {
    let forward = current();
    FORWARD.scope(forward, ringkv_trace::propagate(fut))
}

/// The credential of the current scope ([`Forward::Own`] outside any).
pub fn current() -> Forward {
    FORWARD.try_with(Clone::clone).unwrap_or_default()
}

/// Adds `forward`'s headers (or, for [`Forward::Own`], `own`'s token) to `headers`. A request
/// that already carries an `authorization` header keeps it.
pub fn apply(forward: &Forward, own: Option<&HeaderValue>, headers: &mut http::HeaderMap) {
    if headers.contains_key(http::header::AUTHORIZATION) {
        return;
    }
    match forward {
        Forward::Token(v) => {
            headers.insert(http::header::AUTHORIZATION, v.clone());
        }
        Forward::Subject(v) => {
            headers.insert(CALLER_SUBJECT_HEADER, v.clone());
        }
        Forward::Own => {
            if let Some(v) = own {
                headers.insert(http::header::AUTHORIZATION, v.clone());
            }
        }
    }
}

/// A gRPC channel that adds the credential of the call (see the module docs) to every
/// request. Cheap to clone, like the channel it wraps.
#[derive(Clone, Debug)]
pub struct AuthChannel {
    inner: Channel,
    own: Option<HeaderValue>,
}

impl AuthChannel {
    /// `channel`, sending `token` (a bearer token) on calls made outside a [`scope`].
    pub fn new(
        channel: Channel,
        token: Option<&crate::Token>,
    ) -> Result<AuthChannel, crate::AuthError> {
        let own = token
            .map(|t| {
                HeaderValue::from_str(&format!("Bearer {}", t.expose())).map_err(|_| {
                    crate::AuthError::Config(
                        "the token has characters a header cannot carry (it must be printable ASCII)".into(),
                    )
                })
            })
            .transpose()?;
        Ok(AuthChannel { inner: channel, own })
    }

    /// `channel` without a token of its own.
    pub fn plain(channel: Channel) -> AuthChannel {
        AuthChannel { inner: channel, own: None }
    }
}

impl tower_service::Service<http::Request<Body>> for AuthChannel {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = tonic::transport::channel::ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower_service::Service::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        // Called by tonic's client in the calling task, where the scope is visible. The
        // request's trace goes along the same way (`ringkv_trace`).
        apply(&current(), self.own.as_ref(), req.headers_mut());
        ringkv_trace::inject(req.headers_mut());
        tower_service::Service::call(&mut self.inner, req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_callers_credential_wins_over_the_channels_own() {
        fn headers(f: &Forward) -> http::HeaderMap {
            let mut h = http::HeaderMap::new();
            apply(f, Some(&HeaderValue::from_static("Bearer router")), &mut h);
            h
        }
        let caller = HeaderValue::from_static("Bearer caller");
        assert_eq!(headers(&current())["authorization"], "Bearer router");
        let inside = scope(Forward::Token(caller.clone()), async { headers(&current()) }).await;
        assert_eq!(inside["authorization"], "Bearer caller");
        let named = headers(&Forward::Subject(HeaderValue::from_static("app")));
        assert_eq!(named[CALLER_SUBJECT_HEADER], "app");
        assert!(!named.contains_key("authorization"), "never the router's own token");
        // A spawned task keeps the scope it was started in.
        let spawned = scope(Forward::Token(caller), async {
            tokio::spawn(propagate(async { headers(&current()) })).await.unwrap()
        })
        .await;
        assert_eq!(spawned["authorization"], "Bearer caller");
    }
}

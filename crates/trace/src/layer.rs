//! The server side: a tower layer that makes every RPC a hop of a trace.
//!
//! It sits in front of all of a server's services (one place for every method, unary or
//! streaming). For a streaming RPC the span covers the handler up to its response head; the
//! messages streamed after that are sent by tasks the handler spawned, which carry the trace
//! when spawned through [`crate::propagate`].

use crate::scope::Hop;
use crate::{TRACEPARENT_HEADER, TraceParent, TraceState};
use std::task::{Context, Poll};
use tokio::task::futures::TaskLocalFuture;
use tracing::instrument::Instrumented;

/// Wraps a server's routes in [`TraceService`].
#[derive(Clone, Copy, Debug, Default)]
pub struct TraceLayer;

impl<S> tower_layer::Layer<S> for TraceLayer {
    type Service = TraceService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TraceService { inner }
    }
}

/// Runs each request as a hop of the caller's trace (or of a new one): see the crate docs.
#[derive(Clone, Debug)]
pub struct TraceService<S> {
    inner: S,
}

impl<S, B> tower_service::Service<http::Request<B>> for TraceService<S>
where
    S: tower_service::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    // Named, not boxed: no allocation per request beyond the span's own.
    type Future = Instrumented<TaskLocalFuture<Hop, S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let parent = req
            .headers()
            .get(TRACEPARENT_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(TraceParent::parse);
        // A `tracestate` belongs to its `traceparent`: without a valid one it is not read.
        let state = parent.and_then(|_| TraceState::from_headers(req.headers()));
        let (hop, span) = match parent {
            Some(parent) => {
                let hop = parent.child();
                let span = tracing::debug_span!(
                    "rpc",
                    method = req.uri().path(),
                    trace_id = %hop.trace_id,
                    span_id = %hop.span_id,
                    parent_id = %parent.span_id,
                );
                (hop, span)
            }
            None => {
                let hop = TraceParent::root();
                let span = tracing::debug_span!(
                    "rpc",
                    method = req.uri().path(),
                    trace_id = %hop.trace_id,
                    span_id = %hop.span_id,
                );
                (hop, span)
            }
        };
        // Entered while calling in: interceptors and the handler's synchronous start log in it.
        let hop = Hop { context: hop, state };
        let fut = span.in_scope(|| crate::scope::scoped(hop, || self.inner.call(req)));
        tracing::Instrument::instrument(fut, span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower_layer::Layer;
    use tower_service::Service;

    /// A service that answers with the hop it ran as.
    #[derive(Clone)]
    struct Echo;

    impl Service<http::Request<()>> for Echo {
        type Response = Option<Hop>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Option<Hop>, Infallible>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            std::future::ready(Ok(crate::scope::current_hop()))
        }
    }

    async fn full_hop_for(parent: Option<&'static str>, state: Option<&'static str>) -> Hop {
        let mut req = http::Request::new(());
        if let Some(h) = parent {
            req.headers_mut().insert(TRACEPARENT_HEADER, http::HeaderValue::from_static(h));
        }
        if let Some(s) = state {
            req.headers_mut().insert(crate::TRACESTATE_HEADER, http::HeaderValue::from_static(s));
        }
        TraceLayer.layer(Echo).call(req).await.unwrap().expect("the handler runs inside a hop")
    }

    async fn hop_for(header: Option<&'static str>) -> TraceParent {
        full_hop_for(header, None).await.context
    }

    #[tokio::test]
    async fn tracestate_is_passed_on_only_with_a_valid_traceparent() {
        let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let state = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";
        let hop = full_hop_for(Some(caller), Some(state)).await;
        assert_eq!(hop.state.map(|s| s.to_string()).as_deref(), Some(state));
        let hop = full_hop_for(Some(caller), Some(state)).await;
        let onward = crate::scope::scoped(hop, || async {
            let mut h = http::HeaderMap::new();
            crate::inject(&mut h);
            h
        })
        .await;
        assert_eq!(onward[crate::TRACESTATE_HEADER], state, "sent on unchanged");
        let orphan = full_hop_for(Some("00-broken"), Some(state)).await;
        assert_eq!(orphan.state, None, "a new trace does not inherit another's state");
        let invalid = full_hop_for(Some(caller), Some("Rojo=1")).await;
        assert_eq!(invalid.state, None);
    }

    #[tokio::test]
    async fn a_request_continues_its_callers_trace_as_a_new_span() {
        let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parent = TraceParent::parse(caller).unwrap();
        let hop = hop_for(Some(caller)).await;
        assert_eq!(hop.trace_id, parent.trace_id);
        assert_ne!(hop.span_id, parent.span_id);
    }

    #[tokio::test]
    async fn a_request_without_a_valid_header_starts_a_trace() {
        let a = hop_for(None).await;
        let b = hop_for(Some("00-not-a-trace")).await;
        assert_ne!(a.trace_id, b.trace_id, "each one a trace of its own");
    }
}

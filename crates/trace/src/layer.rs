//! The server side: a tower layer that makes every RPC a hop of a trace.
//!
//! It sits in front of all of a server's services (one place for every method, unary or
//! streaming). For a streaming RPC the span covers the handler up to its response head; the
//! messages streamed after that are sent by tasks the handler spawned, which carry the trace
//! when spawned through [`crate::propagate`].

use crate::{TRACEPARENT_HEADER, TraceParent};
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
    type Future = Instrumented<TaskLocalFuture<TraceParent, S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let parent = req
            .headers()
            .get(TRACEPARENT_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(TraceParent::parse);
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
        type Response = Option<TraceParent>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Option<TraceParent>, Infallible>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            std::future::ready(Ok(crate::current()))
        }
    }

    async fn hop_for(header: Option<&'static str>) -> TraceParent {
        let mut req = http::Request::new(());
        if let Some(h) = header {
            req.headers_mut().insert(TRACEPARENT_HEADER, http::HeaderValue::from_static(h));
        }
        TraceLayer.layer(Echo).call(req).await.unwrap().expect("the handler runs inside a hop")
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

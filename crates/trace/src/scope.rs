//! The current request's trace context, where code far from the handler can find it.
//!
//! Calls onward are made deep inside the routing core's retry loops; rather than pass a
//! context through every function, the server layer sets it as a task-local for the RPC and
//! the outgoing channel reads it ([`inject`]). The same pattern carries credentials
//! (`ringkv_auth::forward`).

use crate::{TRACEPARENT_HEADER, TRACESTATE_HEADER, TraceParent, TraceState};
use std::future::Future;

/// One hop of a trace: its context, and the caller's `tracestate` to pass on.
#[derive(Clone, Debug)]
pub struct Hop {
    pub context: TraceParent,
    pub state: Option<TraceState>,
}

tokio::task_local! {
    static CURRENT: Hop;
}

/// Runs `fut` as the hop `context` (its calls onward name `context.span_id` as their parent).
pub async fn scope<F: Future>(context: TraceParent, fut: F) -> F::Output {
    CURRENT.scope(Hop { context, state: None }, fut).await
}

/// The future `start` makes, started and run as `hop` (a tower service's `call` does work
/// before its future is first polled), as a named future type.
pub(crate) fn scoped<F: Future>(
    hop: Hop,
    start: impl FnOnce() -> F,
) -> tokio::task::futures::TaskLocalFuture<Hop, F> {
    let fut = CURRENT.sync_scope(hop.clone(), start);
    CURRENT.scope(hop, fut)
}

/// The current hop's context, if this task serves a traced request.
pub fn current() -> Option<TraceParent> {
    CURRENT.try_with(|h| h.context).ok()
}

/// The current hop's context and `tracestate`.
pub fn current_hop() -> Option<Hop> {
    CURRENT.try_with(Hop::clone).ok()
}

/// `fut` with the current context (if any) and the current `tracing` span, for
/// `tokio::spawn`: a spawned task's logs and calls stay in the request's trace.
pub fn propagate<F: Future>(fut: F) -> impl Future<Output = F::Output> {
    let context = current_hop();
    let fut = tracing::Instrument::in_current_span(fut);
    async move {
        match context {
            Some(c) => CURRENT.scope(c, fut).await,
            None => fut.await,
        }
    }
}

/// Adds the current context's `traceparent` (and the caller's `tracestate`, if any) to an
/// outgoing request's headers, unless it has a `traceparent` already (a caller that set its
/// own knows better) or there is no current context.
pub fn inject(headers: &mut http::HeaderMap) {
    if headers.contains_key(TRACEPARENT_HEADER) {
        return;
    }
    let _ = CURRENT.try_with(|hop| {
        if let Some(state) = &hop.state {
            headers.insert(TRACESTATE_HEADER, state.header_value().clone());
        }
        // Always ASCII (hex and dashes): the conversion cannot fail.
        if let Ok(mut v) = http::HeaderValue::from_str(&hop.context.to_string()) {
            // A value new on every request: "sensitive" makes HTTP/2 send it as a literal
            // never indexed, instead of inserting it into the connection's header table,
            // where each one would push out entries that later requests could have reused.
            v.set_sensitive(true);
            headers.insert(TRACEPARENT_HEADER, v);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_onward_carry_the_hop_and_spawned_tasks_keep_it() {
        let mut outside = http::HeaderMap::new();
        inject(&mut outside);
        assert!(outside.is_empty(), "no context, no header");

        let hop = TraceParent::root();
        let (inside, spawned) = scope(hop, async {
            let mut h = http::HeaderMap::new();
            inject(&mut h);
            let spawned = tokio::spawn(propagate(async { current() })).await.unwrap();
            (h, spawned)
        })
        .await;
        assert_eq!(inside[TRACEPARENT_HEADER], hop.to_string().as_str());
        assert!(inside[TRACEPARENT_HEADER].is_sensitive(), "kept out of HPACK's table");
        assert_eq!(spawned, Some(hop));

        let mut own = http::HeaderMap::new();
        own.insert(TRACEPARENT_HEADER, http::HeaderValue::from_static("mine"));
        scope(hop, async { inject(&mut own) }).await;
        assert_eq!(own[TRACEPARENT_HEADER], "mine", "a header set by the caller is kept");
    }
}

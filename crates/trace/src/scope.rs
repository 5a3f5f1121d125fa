//! The current request's trace context, where code far from the handler can find it.
//!
//! Calls onward are made deep inside the routing core's retry loops; rather than pass a
//! context through every function, the server layer sets it as a task-local for the RPC and
//! the outgoing channel reads it ([`inject`]). The same pattern carries credentials
//! (`ringkv_auth::forward`).

use crate::{TRACEPARENT_HEADER, TraceParent};
use std::future::Future;

tokio::task_local! {
    static CURRENT: TraceParent;
}

/// Runs `fut` as the hop `context` (its calls onward name `context.span_id` as their parent).
pub async fn scope<F: Future>(context: TraceParent, fut: F) -> F::Output {
    CURRENT.scope(context, fut).await
}

/// The future `start` makes, started and run as the hop `context` (a tower service's `call`
/// does work before its future is first polled), as a named future type.
pub(crate) fn scoped<F: Future>(
    context: TraceParent,
    start: impl FnOnce() -> F,
) -> tokio::task::futures::TaskLocalFuture<TraceParent, F> {
    let fut = CURRENT.sync_scope(context, start);
    CURRENT.scope(context, fut)
}

/// The current hop's context, if this task serves a traced request.
pub fn current() -> Option<TraceParent> {
    CURRENT.try_with(|c| *c).ok()
}

/// `fut` with the current context (if any) and the current `tracing` span, for
/// `tokio::spawn`: a spawned task's logs and calls stay in the request's trace.
pub fn propagate<F: Future>(fut: F) -> impl Future<Output = F::Output> {
    let context = current();
    let fut = tracing::Instrument::in_current_span(fut);
    async move {
        match context {
            Some(c) => CURRENT.scope(c, fut).await,
            None => fut.await,
        }
    }
}

/// Adds the current context's `traceparent` to an outgoing request's headers, unless it has
/// one already (a caller that set its own knows better) or there is no current context.
pub fn inject(headers: &mut http::HeaderMap) {
    if headers.contains_key(TRACEPARENT_HEADER) {
        return;
    }
    if let Some(c) = current() {
        // Always ASCII (hex and dashes): the conversion cannot fail.
        if let Ok(mut v) = http::HeaderValue::from_str(&c.to_string()) {
            // A value new on every request: "sensitive" makes HTTP/2 send it as a literal
            // never indexed, instead of inserting it into the connection's header table,
            // where each one would push out entries that later requests could have reused.
            v.set_sensitive(true);
            headers.insert(TRACEPARENT_HEADER, v);
        }
    }
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

//! Request tracing: one span per RPC on every process a request passes through, all carrying
//! the same trace id, so the log lines of one request can be found on the router and on each
//! node it reached.
//!
//! **The wire format is W3C Trace Context** (`traceparent: 00-<trace id>-<parent id>-<flags>`),
//! the header OpenTelemetry, Envoy, Linkerd and most tracing back ends speak, so a trace that
//! starts in an application (or its sidecar) continues through ringkv, and ringkv's ids can be
//! looked up in the application's tracing system. [`TraceParent`] parses and writes it.
//!
//! **In a server**, [`TraceLayer`] wraps every RPC (unary or streaming): it takes the
//! caller's `traceparent` (or starts a new trace when there is none, or it does not parse:
//! the W3C rule, so a broken header never fails a request), gives this hop a span id of its
//! own, and runs the handler inside a `tracing` span (when enabled: see below) named `rpc` with fields `method`,
//! `trace_id`, `span_id` and `parent_id`. Every log line the handler writes carries them
//! (`RINGKV_LOG_FORMAT=json` puts them in each line's `spans`).
//!
//! The caller's `tracestate` (vendor data of the trace, [`TraceState`]) is passed on unchanged
//! with it, when it and the `traceparent` are valid.
//!
//! **Onward**, the layer also sets the hop's context as a task-local ([`current`]); a channel
//! that makes calls for the request (`ringkv_auth::AuthChannel`, through which the router and
//! the client library send everything) adds [`inject`]'s header, naming this hop's span as
//! the parent. A task-local does not follow `tokio::spawn`: [`propagate`] carries it into a
//! spawned task (a followed subscription).
//!
//! **Cost and control.** The span is at `DEBUG`: off unless asked for
//! (`RUST_LOG=info,ringkv_trace=debug`), as tracing is in etcd, TiKV and CockroachDB. On, it
//! cost ~3.5% of the CPU of the cheapest request (stale reads: a span on the router and one on
//! the node, formatted fields, a registry slot, enter and exit on every poll; measured in
//! docs/performance.md). Off, the context is still read, made and passed on (a parse and a
//! random id per request), so turning spans on in one process shows its part of every trace.
//! Exporting spans to an OpenTelemetry collector is not built in: the ids are W3C ones, so a
//! `tracing-opentelemetry` layer in the binaries could add it without changing this crate.

mod context;
mod layer;
mod scope;
mod state;

pub use context::{SpanId, TraceId, TraceParent};
pub use layer::{TraceLayer, TraceService};
pub use scope::{Hop, current, current_hop, inject, propagate, scope};
pub use state::{TRACESTATE_BYTES_MAX, TraceState};

/// The header that carries the trace context (W3C Trace Context, lower case as HTTP/2 sends it).
pub const TRACEPARENT_HEADER: &str = "traceparent";
/// The header that carries the trace's vendor data (W3C Trace Context).
pub const TRACESTATE_HEADER: &str = "tracestate";

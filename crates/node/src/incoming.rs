//! Accepting connections from one listener for two servers in turn.
//!
//! A node with an empty data directory first serves only the discovery half of the
//! membership protocol (see [`crate::discovery`]), then, once it has an identity, the full
//! set of services, on the same address. Both servers accept from one shared listener, one
//! after the other, so the port is never released in between (a peer would otherwise see
//! "connection refused" and a racing process could take it).

use futures::Stream;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};

/// Accepted connections of `listener`, with `TCP_NODELAY` set (small responses must not wait
/// for a delayed ACK: a 40 ms stall per request otherwise).
pub fn incoming(listener: Arc<TcpListener>) -> impl Stream<Item = std::io::Result<TcpStream>> {
    futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.and_then(|(stream, _)| {
            stream.set_nodelay(true)?;
            Ok(stream)
        });
        Some((accepted, listener))
    })
}

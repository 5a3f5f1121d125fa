//! Where a node's peers reach its internal services.
//!
//! A node serves clients (KV, Streams, Admin, health) on its advertised address. Its peers'
//! traffic, the Raft transport and the membership protocol (and the Admin calls the placement
//! driver makes, such as leader transfers), can have a port of its own:
//! the same host, `raft_port_offset` ports above the client port (as Redis Cluster's bus is
//! its client port + 10,000). One advertised address is then still all a peer needs, and a
//! firewall or NetworkPolicy can let clients reach the client port while only nodes reach
//! the peer port, so a client cannot speak Raft.
//!
//! Every node of a cluster must use the same offset: a node dials its peers at their
//! advertised port plus its own offset. An offset of 0 (the default) serves everything on one
//! port, as single-port deployments always have; changing it means restarting every node.

/// The address peers dial for the internal services of the node advertised at `addr`.
pub fn peer_addr(addr: &str, offset: u16) -> Result<String, String> {
    if offset == 0 {
        return Ok(addr.to_string());
    }
    let (host, port) =
        addr.rsplit_once(':').ok_or_else(|| format!("address {addr:?} has no port"))?;
    let port: u16 = port.parse().map_err(|_| format!("address {addr:?} has no valid port"))?;
    let peer = port.checked_add(offset).ok_or_else(|| {
        format!("port {port} of {addr} plus raft_port_offset {offset} is above 65535")
    })?;
    Ok(format!("{host}:{peer}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peer_port_is_the_client_port_plus_the_offset() {
        assert_eq!(peer_addr("ringkv-0.ringkv:7001", 0).unwrap(), "ringkv-0.ringkv:7001");
        assert_eq!(peer_addr("ringkv-0.ringkv:7001", 1000).unwrap(), "ringkv-0.ringkv:8001");
        assert_eq!(peer_addr("10.0.0.5:7000", 1).unwrap(), "10.0.0.5:7001");
        assert_eq!(peer_addr("[::1]:7001", 1000).unwrap(), "[::1]:8001");
    }

    #[test]
    fn bad_addresses_are_clear_errors() {
        assert!(peer_addr("no-port", 1).unwrap_err().contains("no port"));
        assert!(peer_addr("host:http", 1).unwrap_err().contains("no valid port"));
        assert!(peer_addr("host:65000", 1000).unwrap_err().contains("above 65535"));
    }
}

//! A cache's byte count that is also counted in a node-wide gauge.
//!
//! The shards' entry and session caches are each bounded per shard, but what a node holds is
//! their sum over every shard, which is what an operator (and the entry caches' node budget)
//! needs to see. Each cache keeps its own count in one of these; every change goes to the
//! shared gauge in the same call, and a dropped cache takes its bytes out again, so the gauge
//! cannot drift from what the caches hold.

use prometheus_client::metrics::gauge::Gauge;

#[derive(Debug, Default)]
pub(crate) struct CountedBytes {
    bytes: usize,
    node: Gauge,
}

impl CountedBytes {
    /// Zero bytes, counted in `node` too.
    pub(crate) fn in_node(node: Gauge) -> Self {
        CountedBytes { bytes: 0, node }
    }

    pub(crate) fn get(&self) -> usize {
        self.bytes
    }

    /// What every cache counted in the same gauge holds.
    pub(crate) fn node(&self) -> i64 {
        self.node.get()
    }

    pub(crate) fn add(&mut self, n: usize) {
        self.bytes += n;
        self.node.inc_by(as_gauge(n));
    }

    pub(crate) fn sub(&mut self, n: usize) {
        self.bytes -= n;
        self.node.dec_by(as_gauge(n));
    }

    pub(crate) fn clear(&mut self) {
        self.sub(self.bytes);
    }
}

impl Drop for CountedBytes {
    fn drop(&mut self) {
        self.clear();
    }
}

/// A byte count as a gauge value (caches are bounded far below `i64::MAX`).
pub(crate) fn as_gauge(bytes: usize) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_gauge_is_the_sum_of_the_live_counts() {
        let node = Gauge::default();
        let mut a = CountedBytes::in_node(node.clone());
        let mut b = CountedBytes::in_node(node.clone());
        a.add(10);
        b.add(5);
        a.sub(3);
        assert_eq!((a.get(), b.get(), node.get()), (7, 5, 12));
        drop(b);
        assert_eq!(node.get(), 7, "a dropped count leaves the sum");
        a.clear();
        assert_eq!((a.get(), a.node()), (0, 0));
    }
}

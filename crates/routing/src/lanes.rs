//! Session lanes: what makes every write safe to retry.
//!
//! A shard applies a write tagged (client id, sequence) at most once, remembering only each
//! client's latest sequence number; so a client id may have only one write in flight. A lane
//! is such a client id with its next sequence number. Each write takes a free lane for its
//! whole life (all its retries use the same sequence number) and returns it afterwards with
//! the number advanced. Lanes are created on demand with random 64-bit ids, up to
//! `write_lanes_max`; beyond that, writes wait for a free lane (bounded concurrency).

use ringkv_proto::v1::WriteSession;
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug)]
struct Lane {
    client_id: u64,
    next_seq: u64,
}

#[derive(Debug)]
pub struct Lanes {
    free: Arc<Mutex<Vec<Lane>>>,
    permits: Arc<Semaphore>,
}

/// A lane held by one write.
#[derive(Debug)]
pub struct LaneGuard {
    lane: Option<Lane>,
    free: Arc<Mutex<Vec<Lane>>>,
    _permit: OwnedSemaphorePermit,
}

impl LaneGuard {
    pub fn session(&self) -> WriteSession {
        let lane = self.lane.as_ref().map_or((0, 0), |l| (l.client_id, l.next_seq));
        WriteSession { client_id: lane.0, sequence: lane.1 }
    }
}

impl Drop for LaneGuard {
    fn drop(&mut self) {
        if let Some(mut lane) = self.lane.take() {
            lane.next_seq += 1;
            self.free.lock().unwrap_or_else(|p| p.into_inner()).push(lane);
        }
    }
}

impl Lanes {
    pub fn new(max: usize) -> Self {
        Lanes {
            free: Arc::new(Mutex::new(Vec::new())),
            permits: Arc::new(Semaphore::new(max.max(1))),
        }
    }

    pub async fn acquire(&self) -> LaneGuard {
        // The semaphore is never closed, so acquiring only waits.
        let permit =
            self.permits.clone().acquire_owned().await.expect("the lane semaphore is never closed");
        let lane =
            self.free.lock().unwrap_or_else(|p| p.into_inner()).pop().unwrap_or_else(|| Lane {
                // 0 is not a valid client id.
                client_id: rand::random::<u64>().max(1),
                next_seq: 1,
            });
        LaneGuard { lane: Some(lane), free: self.free.clone(), _permit: permit }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_lane_is_never_shared_and_its_sequence_advances() {
        let lanes = Lanes::new(2);
        let a = lanes.acquire().await;
        let b = lanes.acquire().await;
        assert_ne!(a.session().client_id, b.session().client_id);
        let (id, seq) = (a.session().client_id, a.session().sequence);
        drop(a);
        let c = lanes.acquire().await;
        assert_eq!((c.session().client_id, c.session().sequence), (id, seq + 1));
        // Both lanes busy: a third write waits.
        let waiting =
            tokio::time::timeout(std::time::Duration::from_millis(50), lanes.acquire()).await;
        assert!(waiting.is_err());
    }
}

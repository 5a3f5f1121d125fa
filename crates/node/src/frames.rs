//! Packing whatever is ready into one message: the batching rule of packed replication.
//!
//! [`Frames`] turns a stream of items into a stream of `Vec`s. Each time it is polled it takes
//! every item its source has ready, up to [`FRAME_ITEMS_MAX`] items and
//! [`FRAME_BYTES_MAX`] bytes, and yields them together; it never waits for more. So an idle
//! link sends each message alone and at once (no Nagle-style delay on a heartbeat or a lone
//! write), and a busy one, whose sender is still writing the last frame while shards queue the
//! next messages, sends them in one frame: one gRPC message, one HTTP/2 DATA frame, one
//! wake-up of the connection and of the receiver, where each shard's message cost all of
//! those alone.
//!
//! An item that would take a frame past the byte bound starts the next frame; an item bigger
//! than the bound travels alone (the gRPC message limit still applies to it).

use futures::Stream;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Items in one frame: enough for every shard of a busy node to share a frame, small enough
/// that one frame's decode does not hold the receiver's reader for long.
pub const FRAME_ITEMS_MAX: usize = 1024;
/// Bytes of items in one frame (one item may exceed it alone), far below the gRPC message
/// limit ([`crate::wire::PAYLOAD_BYTES_MAX`]) so packing never makes a message too big.
pub const FRAME_BYTES_MAX: usize = 4 << 20;

/// How many bytes an item adds to a frame.
pub trait FrameSize {
    fn frame_bytes(&self) -> usize;
}

/// See the module documentation.
pub struct Frames<S: Stream> {
    source: S,
    /// The item that did not fit the last frame.
    held: Option<S::Item>,
    ended: bool,
}

impl<S: Stream> Frames<S> {
    pub fn new(source: S) -> Self {
        Frames { source, held: None, ended: false }
    }
}

impl<S> Stream for Frames<S>
where
    S: Stream + Unpin,
    S::Item: FrameSize + Unpin,
{
    type Item = Vec<S::Item>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let mut frame = Vec::new();
        let mut bytes = 0usize;
        if let Some(item) = this.held.take() {
            bytes += item.frame_bytes();
            frame.push(item);
        }
        while !this.ended && frame.len() < FRAME_ITEMS_MAX && bytes < FRAME_BYTES_MAX {
            match Pin::new(&mut this.source).poll_next(cx) {
                Poll::Ready(Some(item)) => {
                    let n = item.frame_bytes();
                    if !frame.is_empty() && bytes + n > FRAME_BYTES_MAX {
                        this.held = Some(item);
                        break;
                    }
                    bytes += n;
                    frame.push(item);
                }
                Poll::Ready(None) => this.ended = true,
                Poll::Pending => break,
            }
        }
        if !frame.is_empty() {
            Poll::Ready(Some(frame))
        } else if this.ended {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    impl FrameSize for usize {
        fn frame_bytes(&self) -> usize {
            *self
        }
    }

    /// Whatever is ready goes in one frame; nothing waits for more.
    #[tokio::test]
    async fn ready_items_share_a_frame_and_a_lone_item_goes_at_once() {
        let (tx, rx) = tokio::sync::mpsc::channel::<usize>(16);
        let mut frames = Frames::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        for n in [1, 2, 3] {
            tx.send(n).await.unwrap();
        }
        assert_eq!(frames.next().await, Some(vec![1, 2, 3]));
        tx.send(4).await.unwrap();
        assert_eq!(frames.next().await, Some(vec![4]), "a lone item waits for nothing");
        drop(tx);
        assert_eq!(frames.next().await, None);
    }

    /// The byte bound splits frames without losing or reordering an item, and an item bigger
    /// than the bound travels alone.
    #[tokio::test]
    async fn the_byte_bound_splits_frames_in_order() {
        let big = FRAME_BYTES_MAX / 2 + 1;
        let items = vec![big, big, 10, FRAME_BYTES_MAX * 2, 5];
        let frames: Vec<Vec<usize>> =
            Frames::new(futures::stream::iter(items.clone())).collect().await;
        assert_eq!(frames, vec![vec![big], vec![big, 10], vec![FRAME_BYTES_MAX * 2], vec![5]]);
        assert_eq!(frames.concat(), items);
    }

    /// The item bound holds too.
    #[tokio::test]
    async fn the_item_bound_splits_frames() {
        let frames: Vec<Vec<usize>> =
            Frames::new(futures::stream::iter(vec![0usize; FRAME_ITEMS_MAX + 3])).collect().await;
        assert_eq!(frames.iter().map(Vec::len).collect::<Vec<_>>(), vec![FRAME_ITEMS_MAX, 3]);
    }
}

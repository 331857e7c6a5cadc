use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::mpsc;
use vpn_api::PeerId;
use vpn_api::{StreamService, VpnStream};
use vpn_errors::{NetworkError, NetworkErrorKind, VpnError};

use crate::{Faults, FaultyStream, MemoryStream, memory_stream_pair};

/// A stream the remote side accepted: the far end of a stream opened to `peer`.
#[derive(Debug)]
pub struct Accepted {
    /// The peer the stream was opened to (the acceptor).
    pub peer: PeerId,
    /// The acceptor's end; its `peer_id()` is the opener.
    pub stream: MemoryStream,
}

/// An in-memory [`StreamService`]: every stream it opens is a [`memory_stream_pair`]
/// whose far end is handed to the test through the receiver returned by
/// [`MemoryStreams::new`]. It can refuse opens and inject [`Faults`] into the streams it
/// opens, and counts the streams it opened and those still alive on the opener's side.
#[derive(Debug)]
pub struct MemoryStreams {
    local: PeerId,
    capacity: usize,
    accepted: mpsc::UnboundedSender<Accepted>,
    fail_opens: AtomicU32,
    faults: Mutex<VecDeque<Faults>>,
    opened: AtomicU64,
    live: Arc<AtomicUsize>,
}

impl MemoryStreams {
    /// Streams opened by `local`, each able to hold `capacity` bytes in flight per direction.
    pub fn new(local: PeerId, capacity: usize) -> (Self, mpsc::UnboundedReceiver<Accepted>) {
        let (accepted, rx) = mpsc::unbounded_channel();
        let streams = Self {
            local,
            capacity,
            accepted,
            fail_opens: AtomicU32::new(0),
            faults: Mutex::new(VecDeque::new()),
            opened: AtomicU64::new(0),
            live: Arc::new(AtomicUsize::new(0)),
        };
        (streams, rx)
    }

    /// The next `n` opens fail as unreachable.
    pub fn fail_next_opens(&self, n: u32) {
        self.fail_opens.store(n, Ordering::SeqCst);
    }

    /// The next streams opened get these faults, one entry per stream, in order.
    pub fn inject(&self, faults: impl IntoIterator<Item = Faults>) {
        self.faults.lock().unwrap().extend(faults);
    }

    /// Streams opened so far.
    pub fn opened(&self) -> u64 {
        self.opened.load(Ordering::SeqCst)
    }

    /// Streams opened whose opener's end is still alive (not dropped).
    pub fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl StreamService for MemoryStreams {
    async fn open_stream(&self, peer: PeerId) -> Result<Box<dyn VpnStream>, VpnError> {
        let refuse =
            self.fail_opens.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if refuse.is_ok() {
            let err =
                NetworkError::new(NetworkErrorKind::Unreachable, "open stream").with_peer(peer);
            return Err(VpnError::Network(err));
        }
        let (ours, theirs) = memory_stream_pair(self.local, peer, self.capacity);
        if self.accepted.send(Accepted { peer, stream: theirs }).is_err() {
            let err = NetworkError::new(NetworkErrorKind::ConnectionRefused, "open stream")
                .with_peer(peer);
            return Err(VpnError::Network(err));
        }
        self.opened.fetch_add(1, Ordering::SeqCst);
        let ours = ours.counted(self.live.clone());
        let faults = self.faults.lock().unwrap().pop_front();
        Ok(match faults {
            Some(faults) => Box::new(FaultyStream::new(ours, faults)),
            None => Box::new(ours),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn opens_pairs_refuses_and_counts() {
        let (me, them) = (PeerId::random(), PeerId::random());
        let (streams, mut accepted) = MemoryStreams::new(me, 1024);
        streams.fail_next_opens(1);
        assert!(streams.open_stream(them).await.is_err());
        let mut ours = streams.open_stream(them).await.unwrap();
        assert_eq!(ours.peer_id(), them);
        let mut far = accepted.recv().await.unwrap();
        assert_eq!((far.peer, far.stream.peer_id()), (them, me));
        ours.write_all(b"hi").await.unwrap();
        let mut buf = [0u8; 2];
        far.stream.read_exact(&mut buf).await.unwrap();
        assert_eq!((streams.opened(), streams.live()), (1, 1));
        drop(ours);
        assert_eq!(streams.live(), 0);
    }

    #[tokio::test]
    async fn injects_faults_in_order() {
        let (streams, _accepted) = MemoryStreams::new(PeerId::random(), 1024);
        streams.inject([Faults::fail_writes_from(1)]);
        let mut faulty = streams.open_stream(PeerId::random()).await.unwrap();
        assert!(faulty.write_all(b"x").await.is_err());
        let mut fine = streams.open_stream(PeerId::random()).await.unwrap();
        fine.write_all(b"x").await.unwrap();
    }
}

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use vpn_api::PeerId;
use vpn_api::VpnStream;

/// One end of an in-memory stream pair; see [`memory_stream_pair`].
#[derive(Debug)]
pub struct MemoryStream {
    inner: Option<DuplexStream>,
    remote: PeerId,
    reset: Arc<AtomicBool>,
    live: Option<LiveGuard>,
}

/// Counts a stream as alive until it is dropped.
#[derive(Debug)]
struct LiveGuard(Arc<AtomicUsize>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Two connected in-memory streams: what one end writes, the other reads. `a` is the end
/// held by peer `a_id` (so its `peer_id()` is `b_id`) and the other way round.
/// `capacity` bytes may be in flight in each direction before writes wait.
pub fn memory_stream_pair(
    a_id: PeerId,
    b_id: PeerId,
    capacity: usize,
) -> (MemoryStream, MemoryStream) {
    let (a, b) = tokio::io::duplex(capacity);
    let reset = Arc::new(AtomicBool::new(false));
    (
        MemoryStream { inner: Some(a), remote: b_id, reset: reset.clone(), live: None },
        MemoryStream { inner: Some(b), remote: a_id, reset, live: None },
    )
}

impl MemoryStream {
    /// The same stream, counted in `live` until it is dropped.
    pub fn counted(mut self, live: Arc<AtomicUsize>) -> Self {
        live.fetch_add(1, Ordering::SeqCst);
        self.live = Some(LiveGuard(live));
        self
    }

    fn reset_error() -> io::Error {
        io::Error::from(io::ErrorKind::ConnectionReset)
    }

    fn is_reset(&self) -> bool {
        self.reset.load(Ordering::SeqCst)
    }

    fn inner(&mut self) -> io::Result<Pin<&mut DuplexStream>> {
        if self.is_reset() {
            return Err(Self::reset_error());
        }
        self.inner.as_mut().map(Pin::new).ok_or_else(Self::reset_error)
    }
}

impl AsyncRead for MemoryStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let inner = match self.inner() {
            Ok(inner) => inner,
            Err(e) => return Poll::Ready(Err(e)),
        };
        match inner.poll_read(cx, buf) {
            // End of stream because the other end reset: report the reset, not an EOF.
            Poll::Ready(Ok(())) if buf.filled().len() == before && self.is_reset() => {
                Poll::Ready(Err(Self::reset_error()))
            }
            other => other,
        }
    }
}

impl AsyncWrite for MemoryStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.inner() {
            Ok(inner) => inner.poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.inner() {
            Ok(inner) => inner.poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.inner() {
            Ok(inner) => inner.poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl VpnStream for MemoryStream {
    fn peer_id(&self) -> PeerId {
        self.remote
    }

    fn reset(&mut self) {
        self.reset.store(true, Ordering::SeqCst);
        // Dropping our half wakes the other end, which then sees the reset.
        self.inner = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_cross_and_peer_ids_point_across() {
        let (a_id, b_id) = (PeerId::random(), PeerId::random());
        let (mut a, mut b) = memory_stream_pair(a_id, b_id, 64);
        assert_eq!(a.peer_id(), b_id);
        assert_eq!(b.peer_id(), a_id);
        a.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        b.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
    }

    #[tokio::test]
    async fn reset_fails_both_ends() {
        let (mut a, mut b) = memory_stream_pair(PeerId::random(), PeerId::random(), 64);
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 1];
            b.read(&mut buf).await
        });
        a.reset();
        let err = reader.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(a.write(b"x").await.unwrap_err().kind(), io::ErrorKind::ConnectionReset);
    }

    #[tokio::test]
    async fn shutdown_is_a_clean_end_of_stream() {
        let (mut a, mut b) = memory_stream_pair(PeerId::random(), PeerId::random(), 64);
        a.write_all(b"x").await.unwrap();
        a.shutdown().await.unwrap();
        let mut all = Vec::new();
        b.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"x");
    }
}

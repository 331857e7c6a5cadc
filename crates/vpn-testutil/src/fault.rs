use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;
use vpn_api::PeerId;
use vpn_api::VpnStream;

/// What a [`FaultyStream`] does wrong. Writes are counted from 1: each call of
/// `poll_write` that completes (or fails) is one write.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// From this write on, every write fails with `ConnectionReset`.
    pub fail_writes_from: Option<u64>,
    /// At this write the stream resets itself (both ends see `ConnectionReset`).
    pub reset_at_write: Option<u64>,
    /// Every write waits this long first.
    pub write_delay: Option<Duration>,
}

impl Faults {
    /// Fail the `n`th write and every one after.
    pub fn fail_writes_from(n: u64) -> Self {
        Self { fail_writes_from: Some(n), ..Self::default() }
    }

    /// Reset the stream at the `n`th write.
    pub fn reset_at_write(n: u64) -> Self {
        Self { reset_at_write: Some(n), ..Self::default() }
    }

    /// Delay every write by `delay`.
    pub fn delay_writes(delay: Duration) -> Self {
        Self { write_delay: Some(delay), ..Self::default() }
    }
}

/// A stream wrapper that injects [`Faults`] into writes; reads pass through.
pub struct FaultyStream<S> {
    inner: S,
    faults: Faults,
    writes: u64,
    delay: Option<Pin<Box<Sleep>>>,
}

impl<S: VpnStream> FaultyStream<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, faults: Faults) -> Self {
        Self { inner, faults, writes: 0, delay: None }
    }

    /// Writes attempted so far (completed or failed).
    pub fn writes(&self) -> u64 {
        self.writes
    }
}

impl<S: VpnStream> AsyncRead for FaultyStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: VpnStream> AsyncWrite for FaultyStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let Some(delay) = this.faults.write_delay {
            let sleep = this.delay.get_or_insert_with(|| Box::pin(tokio::time::sleep(delay)));
            ready!(sleep.as_mut().poll(cx));
        }
        let n = this.writes + 1;
        let result = if this.faults.reset_at_write == Some(n) {
            this.inner.reset();
            Poll::Ready(Err(io::Error::from(io::ErrorKind::ConnectionReset)))
        } else if this.faults.fail_writes_from.is_some_and(|from| n >= from) {
            Poll::Ready(Err(io::Error::from(io::ErrorKind::ConnectionReset)))
        } else {
            Pin::new(&mut this.inner).poll_write(cx, buf)
        };
        if result.is_ready() {
            this.writes = n;
            this.delay = None;
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: VpnStream> VpnStream for FaultyStream<S> {
    fn peer_id(&self) -> PeerId {
        self.inner.peer_id()
    }

    fn reset(&mut self) {
        self.inner.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory_stream_pair;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn fails_from_the_nth_write() {
        let (a, mut b) = memory_stream_pair(PeerId::random(), PeerId::random(), 1024);
        let mut a = FaultyStream::new(a, Faults::fail_writes_from(3));
        a.write_all(b"1").await.unwrap();
        a.write_all(b"2").await.unwrap();
        let err = a.write_all(b"3").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        assert!(a.write_all(b"4").await.is_err());
        assert_eq!(a.writes(), 4);
        let mut got = [0u8; 2];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"12");
    }

    #[tokio::test]
    async fn resets_both_ends_at_the_nth_write() {
        let (a, mut b) = memory_stream_pair(PeerId::random(), PeerId::random(), 1024);
        let mut a = FaultyStream::new(a, Faults::reset_at_write(2));
        a.write_all(b"1").await.unwrap();
        assert!(a.write_all(b"2").await.is_err());
        // A reset discards what was in flight: the other end sees the reset, not the byte.
        let mut got = [0u8; 1];
        assert_eq!(b.read(&mut got).await.unwrap_err().kind(), io::ErrorKind::ConnectionReset);
    }

    #[tokio::test(start_paused = true)]
    async fn delays_each_write() {
        let (a, _b) = memory_stream_pair(PeerId::random(), PeerId::random(), 1024);
        let mut a = FaultyStream::new(a, Faults::delay_writes(Duration::from_secs(3)));
        let start = tokio::time::Instant::now();
        a.write_all(b"1").await.unwrap();
        a.write_all(b"2").await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(6));
    }
}

//! A QUIC connection as libp2p's stream multiplexer: each substream a bidirectional QUIC
//! stream.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use futures::{AsyncRead, AsyncWrite, FutureExt};
use libp2p_core::muxing::{StreamMuxer, StreamMuxerEvent};

use crate::QuicError;
use crate::links::Registration;

type Opening = BoxFuture<'static, Result<(quinn::SendStream, quinn::RecvStream), QuicError>>;

/// One QUIC connection, multiplexing libp2p's substreams. Dropping it takes its datagram
/// link out of [`crate::Links`].
pub struct QuicMuxer {
    conn: quinn::Connection,
    inbound: Option<Opening>,
    outbound: Option<Opening>,
    closing: Option<BoxFuture<'static, quinn::ConnectionError>>,
    _registration: Registration,
}

impl QuicMuxer {
    pub(crate) fn new(conn: quinn::Connection, registration: Registration) -> Self {
        Self { conn, inbound: None, outbound: None, closing: None, _registration: registration }
    }
}

/// Polls the stream-opening future in `slot`, starting it with `start` when empty.
fn poll_opening(
    slot: &mut Option<Opening>,
    cx: &mut Context<'_>,
    start: impl FnOnce() -> Opening,
) -> Poll<Result<QuicStream, QuicError>> {
    let opening = slot.get_or_insert_with(start);
    let result = futures::ready!(opening.poll_unpin(cx));
    *slot = None;
    Poll::Ready(result.map(|(send, recv)| QuicStream { send, recv }))
}

impl StreamMuxer for QuicMuxer {
    type Substream = QuicStream;
    type Error = QuicError;

    fn poll_inbound(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        let this = self.get_mut();
        let conn = this.conn.clone();
        poll_opening(&mut this.inbound, cx, move || {
            async move { conn.accept_bi().await.map_err(QuicError::Connection) }.boxed()
        })
    }

    fn poll_outbound(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        let this = self.get_mut();
        let conn = this.conn.clone();
        poll_opening(&mut this.outbound, cx, move || {
            async move { conn.open_bi().await.map_err(QuicError::Connection) }.boxed()
        })
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = self.get_mut();
        let conn = this.conn.clone();
        let closing = this.closing.get_or_insert_with(move || {
            conn.close(0u32.into(), &[]);
            async move { conn.closed().await }.boxed()
        });
        match futures::ready!(closing.poll_unpin(cx)) {
            quinn::ConnectionError::LocallyClosed => Poll::Ready(Ok(())),
            e => Poll::Ready(Err(QuicError::Connection(e))),
        }
    }

    fn poll(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Result<StreamMuxerEvent, Self::Error>> {
        // Nothing to report: the connection's end shows as its streams' errors.
        Poll::Pending
    }
}

/// One bidirectional QUIC stream.
pub struct QuicStream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl AsyncRead for QuicStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        AsyncRead::poll_read(Pin::new(&mut self.get_mut().recv), cx, buf)
    }
}

impl AsyncWrite for QuicStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(&mut self.get_mut().send), cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.get_mut().send), cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match futures::ready!(AsyncWrite::poll_close(Pin::new(&mut this.send), cx)) {
            // Finishing twice is no fault: the stream is closed either way.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Poll::Ready(Ok(())),
            other => Poll::Ready(other),
        }
    }
}

//! VPN streams over `libp2p-stream`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use futures::StreamExt;
use libp2p::{Stream, StreamProtocol};
use libp2p_stream::{Control, OpenStreamError};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt};
use vpn_api::PeerId;
use vpn_api::{MetricsService, StreamService, VpnStream};
use vpn_errors::{NetworkError, NetworkErrorKind, ServiceError, ServiceErrorKind, VpnError};
use vpn_types::WarnGate;

/// The packet stream protocol of docs/protocol.md (section 3).
pub const PACKET_PROTOCOL: StreamProtocol = StreamProtocol::new(vpn_wire::PROTOCOL_ID);

/// Decides whether a peer may open VPN streams to us.
pub type PeerFilter = Arc<dyn Fn(&PeerId) -> bool + Send + Sync>;

/// One libp2p stream speaking `/vpn-node/packet/1`.
pub struct Libp2pStream {
    inner: Option<Compat<Stream>>,
    peer: PeerId,
}

impl Libp2pStream {
    /// Wraps a negotiated stream with `peer`.
    pub fn new(stream: Stream, peer: PeerId) -> Self {
        Self { inner: Some(stream.compat()), peer }
    }

    fn inner(&mut self) -> io::Result<Pin<&mut Compat<Stream>>> {
        self.inner
            .as_mut()
            .map(Pin::new)
            .ok_or_else(|| io::Error::from(io::ErrorKind::ConnectionReset))
    }
}

impl AsyncRead for Libp2pStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.inner() {
            Ok(inner) => inner.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Libp2pStream {
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

impl VpnStream for Libp2pStream {
    fn peer_id(&self) -> PeerId {
        self.peer
    }

    fn reset(&mut self) {
        // A libp2p stream dropped before it is closed is reset.
        self.inner = None;
    }
}

/// The node's [`StreamService`]: opens `/vpn-node/packet/1` streams through the swarm's
/// stream control, dialing the peer first when there is no connection.
#[derive(Clone)]
pub struct Libp2pStreamService {
    control: Control,
}

impl Libp2pStreamService {
    /// Opens streams through `control`.
    pub fn new(control: Control) -> Self {
        Self { control }
    }
}

#[async_trait]
impl StreamService for Libp2pStreamService {
    async fn open_stream(&self, peer: PeerId) -> Result<Box<dyn VpnStream>, VpnError> {
        let mut control = self.control.clone();
        match control.open_stream(peer, PACKET_PROTOCOL).await {
            Ok(stream) => Ok(Box::new(Libp2pStream::new(stream, peer))),
            Err(OpenStreamError::UnsupportedProtocol(_)) => Err(VpnError::Network(
                NetworkError::new(NetworkErrorKind::ConnectionRefused, "open stream")
                    .with_peer(peer),
            )),
            Err(OpenStreamError::Io(e)) => {
                let kind = match NetworkErrorKind::from_io_kind(e.kind()) {
                    NetworkErrorKind::Io => NetworkErrorKind::Unreachable,
                    kind => kind,
                };
                Err(VpnError::Network(
                    NetworkError::new(kind, "open stream").with_peer(peer).with_source(e),
                ))
            }
            Err(other) => Err(VpnError::Network(
                NetworkError::new(NetworkErrorKind::Unreachable, "open stream")
                    .with_peer(peer)
                    .with_source(other),
            )),
        }
    }
}

/// Accepts `/vpn-node/packet/1` streams for as long as the returned receiver lives. The
/// accept loop is always polled (libp2p drops inbound streams nobody takes); streams from
/// peers `allow` refuses are reset at once, and streams the receiver is too slow to take
/// are reset too, both counted as stream errors.
///
/// Returns the accepted streams and the accept loop, which the caller runs (spawns, under
/// whatever owns its tasks); the loop ends when the swarm stops or the receiver is dropped.
///
/// Errors: a service error when something else already accepts the protocol.
pub fn accept_streams(
    control: &mut Control,
    allow: PeerFilter,
    metrics: Arc<dyn MetricsService>,
    backlog: usize,
) -> Result<(mpsc::Receiver<Box<dyn VpnStream>>, impl Future<Output = ()> + Send + 'static), VpnError>
{
    let mut incoming = control.accept(PACKET_PROTOCOL).map_err(|_| {
        VpnError::Service(ServiceError::new(
            ServiceErrorKind::AlreadyStarted,
            "stream service",
            "accept streams",
        ))
    })?;
    let (tx, rx) = mpsc::channel(backlog.max(1));
    let accept = async move {
        let warnings = WarnGate::per_peer();
        while let Some((peer, stream)) = incoming.next().await {
            if !allow(&peer) {
                metrics.record_stream_error();
                if let Some(held_back) = warnings.admit(peer) {
                    tracing::warn!(%peer, held_back, "refused a VPN stream from a peer that is not allowed");
                }
                continue;
            }
            let stream: Box<dyn VpnStream> = Box::new(Libp2pStream::new(stream, peer));
            match tx.try_send(stream) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    metrics.record_stream_error();
                    if let Some(held_back) = warnings.admit(peer) {
                        tracing::warn!(%peer, held_back, "too many streams waiting to be served; resetting one");
                    }
                }
                Err(mpsc::error::TrySendError::Closed(_)) => break,
            }
        }
    };
    Ok((rx, accept))
}

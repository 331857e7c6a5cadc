//! `vpn-node ping`: round trips to a peer over the tunnel's own PING frames.

use std::net::IpAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use vpn_api::{Multiaddr, PeerId, VpnStream};
use vpn_errors::{NetworkError, NetworkErrorKind, VpnError};
use vpn_wire::{Frame, FrameDecoder};

/// Most PINGs one request may send.
pub const MAX_PINGS: u32 = 100;

/// What to ping: an overlay address (its owner is looked up) or a peer ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PingTarget {
    /// The peer that holds this overlay address.
    Address(IpAddr),
    /// This peer.
    Peer(PeerId),
}

impl std::str::FromStr for PingTarget {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(Self::Address(ip));
        }
        text.parse::<PeerId>()
            .map(Self::Peer)
            .map_err(|_| format!("{text:?} is neither an overlay address nor a peer ID"))
    }
}

/// The outcome of one ping request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PingReport {
    /// The peer that answered (or was asked).
    pub peer: PeerId,
    /// The overlay address asked for, when the target was one.
    pub address: Option<IpAddr>,
    /// The underlay addresses of our connections to the peer (empty without a swarm).
    pub path: Vec<Multiaddr>,
    /// Time to open the stream the PINGs went over.
    pub open: Duration,
    /// The round trip of each PING, `None` for one not answered in time.
    pub rtts: Vec<Option<Duration>>,
}

impl PingReport {
    /// The report as one line of JSON (times in milliseconds).
    pub fn to_json(&self) -> String {
        let ms = |d: Duration| format!("{:.3}", d.as_secs_f64() * 1000.0);
        let rtts: Vec<String> =
            self.rtts.iter().map(|r| r.map_or_else(|| "null".to_owned(), ms)).collect();
        let path: Vec<String> =
            self.path.iter().map(|a| crate::json::string(&a.to_string())).collect();
        format!(
            "{{\"peer_id\":{},\"address\":{},\"path\":[{}],\"open_ms\":{},\"sent\":{},\"received\":{},\"rtt_ms\":[{}]}}",
            crate::json::string(&self.peer.to_string()),
            self.address.map_or_else(|| "null".to_owned(), |a| crate::json::string(&a.to_string())),
            path.join(","),
            ms(self.open),
            self.rtts.len(),
            self.rtts.iter().flatten().count(),
            rtts.join(",")
        )
    }
}

/// Sends `count` PINGs over `stream`, `interval` apart, each waiting at most `timeout` for
/// its PONG. A late PONG is not counted for a later PING: nonces tell them apart.
pub(crate) async fn ping_over(
    stream: &mut Box<dyn VpnStream>,
    count: u32,
    interval: Duration,
    timeout: Duration,
) -> Result<Vec<Option<Duration>>, VpnError> {
    let mut rtts = Vec::new();
    let (mut decoder, mut inbound) = (FrameDecoder::new(), BytesMut::new());
    let peer = stream.peer_id();
    let failed =
        |e: std::io::Error| VpnError::Network(NetworkError::from_io("ping", e).with_peer(peer));
    for n in 0..count.min(MAX_PINGS) {
        if n > 0 {
            tokio::time::sleep(interval).await;
        }
        let nonce = fastrand::u64(..).to_be_bytes();
        let mut out = BytesMut::new();
        vpn_wire::encode_ping(&mut out, nonce);
        let sent = Instant::now();
        stream.write_all(&out).await.map_err(failed)?;
        stream.flush().await.map_err(failed)?;
        let answer = tokio::time::timeout(timeout, async {
            loop {
                while let Some(frame) = decoder.decode(&mut inbound).map_err(|e| {
                    VpnError::Network(
                        NetworkError::new(NetworkErrorKind::Protocol, "ping")
                            .with_peer(peer)
                            .with_source(e),
                    )
                })? {
                    if frame == Frame::Pong(nonce) {
                        return Ok(sent.elapsed());
                    }
                }
                if stream.read_buf(&mut inbound).await.map_err(failed)? == 0 {
                    return Err(failed(std::io::ErrorKind::UnexpectedEof.into()));
                }
            }
        })
        .await;
        match answer {
            Ok(Ok(rtt)) => rtts.push(Some(rtt)),
            Ok(Err(e)) => return Err(e),
            Err(_) => rtts.push(None),
        }
    }
    Ok(rtts)
}

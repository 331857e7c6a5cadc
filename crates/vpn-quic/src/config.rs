//! Settings of the QUIC transport and the quinn configurations made from them.

use std::sync::Arc;
use std::time::Duration;

use libp2p_identity::Keypair;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};

use crate::QuicError;

/// The UDP payload a connection starts with and never goes below: 1440 bytes, which fits a
/// 1500-byte link under IPv4 and IPv6 and a PPPoE link (1492) under both, and carries a
/// datagram of 1408 bytes, so a 1400-byte TUN packet rides one datagram from the first
/// packet on. Handshake packets are padded to it, so a path that cannot carry it makes no
/// QUIC connection at all (its packets take TCP streams) rather than one whose large
/// packets vanish. quinn's path MTU discovery raises it where the path allows (to 1452);
/// its black-hole detection, which random loss can fool, never lowers it below this.
pub const INITIAL_MTU: u16 = 1440;

/// How the QUIC transport behaves. `QuicConfig::default()` gives the defaults; `with_*` change one.
#[derive(Debug, Clone)]
pub struct QuicConfig {
    /// A handshake (QUIC and TLS) may take this long.
    pub handshake_timeout: Duration,
    /// A connection that hears nothing for this long is closed.
    pub idle_timeout: Duration,
    /// A connection with nothing to send sends a keep-alive this often.
    pub keep_alive: Duration,
    /// Most bidirectional streams the peer may have open at once.
    pub max_streams: u32,
    /// Most bytes of datagrams waiting to be sent on one connection; a sender waits for
    /// room rather than building a standing queue.
    pub datagram_send_buffer: usize,
    /// Most bytes of datagrams received and not read yet on one connection (the excess is
    /// dropped by QUIC, oldest first). The default, 8 MiB, is about 27 ms of a 2.5 Gbit/s
    /// flow: room for the reader to be kept off the CPU for a moment without a loss the
    /// tunnelled TCP would take for congestion (2 MiB lost about 0.2% of a bulk flow's
    /// packets on a busy 2-core machine and halved its rate).
    pub datagram_receive_buffer: usize,
    /// The congestion controller: BBR (`true`, the default: it paces and does not take
    /// random loss for congestion) or CUBIC.
    pub bbr: bool,
}

impl Default for QuicConfig {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(5),
            max_streams: 256,
            datagram_send_buffer: 256 * 1024,
            datagram_receive_buffer: 8 * 1024 * 1024,
            bbr: true,
        }
    }
}

impl QuicConfig {
    /// The handshake time limit.
    pub fn with_handshake_timeout(mut self, limit: Duration) -> Self {
        self.handshake_timeout = limit;
        self
    }

    /// The idle time limit.
    pub fn with_idle_timeout(mut self, limit: Duration) -> Self {
        self.idle_timeout = limit;
        self
    }

    /// The congestion controller (`true`: BBR, `false`: CUBIC).
    pub fn with_bbr(mut self, bbr: bool) -> Self {
        self.bbr = bbr;
        self
    }
}

/// The quinn configurations one transport uses.
#[derive(Clone)]
pub(crate) struct QuinnConfigs {
    pub(crate) client: quinn::ClientConfig,
    pub(crate) server: quinn::ServerConfig,
    pub(crate) endpoint: quinn::EndpointConfig,
}

impl QuinnConfigs {
    /// Configurations proving `key`'s peer ID, with datagrams on.
    pub(crate) fn new(key: &Keypair, config: &QuicConfig) -> Result<Self, QuicError> {
        let tls = |e: &dyn std::fmt::Display| QuicError::Tls(e.to_string());
        let client_tls =
            QuicClientConfig::try_from(crate::tls::client(key)?).map_err(|e| tls(&e))?;
        let server_tls =
            QuicServerConfig::try_from(crate::tls::server(key)?).map_err(|e| tls(&e))?;

        let mut transport = quinn::TransportConfig::default();
        transport
            .max_concurrent_uni_streams(0u32.into())
            .max_concurrent_bidi_streams(config.max_streams.into())
            .keep_alive_interval(Some(config.keep_alive))
            .max_idle_timeout(Some(
                config.idle_timeout.try_into().map_err(|_| QuicError::Config("idle timeout"))?,
            ))
            .allow_spin(false)
            .initial_mtu(INITIAL_MTU)
            .min_mtu(INITIAL_MTU)
            .datagram_send_buffer_size(config.datagram_send_buffer)
            .datagram_receive_buffer_size(Some(config.datagram_receive_buffer))
            .stream_receive_window(10_000_000u32.into())
            .receive_window(15_000_000u32.into());
        if config.bbr {
            transport
                .congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()));
        }
        let transport = Arc::new(transport);

        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_tls));
        server.transport_config(transport.clone());
        server.migration(false);
        let mut client = quinn::ClientConfig::new(Arc::new(client_tls));
        client.transport_config(transport);
        let mut endpoint = quinn::EndpointConfig::default();
        endpoint.supported_versions(vec![1]);
        Ok(Self { client, server, endpoint })
    }
}

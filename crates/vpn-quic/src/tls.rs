//! TLS for QUIC connections, as libp2p's TLS handshake (ALPN `libp2p`, TLS 1.3 only,
//! each side one self-signed certificate whose libp2p extension carries its identity key
//! and that key's signature over the certificate key), with the cipher suites in the order
//! that is fastest on this CPU.
//!
//! Every packet of a connection is sealed with the suite the handshake picks, so the suite
//! decides much of a datagram's cost: AES-128-GCM runs several times faster than
//! ChaCha20-Poly1305 where the CPU has AES instructions, ChaCha20 faster where it has none.
//! libp2p's own configurations offer ChaCha20 first on every CPU; these offer AES-GCM first
//! where the CPU has AES instructions. Both suites stay offered, so any libp2p peer still
//! connects.

use std::sync::Arc;

use libp2p_identity::Keypair;
use libp2p_tls::certificate;
#[cfg(test)]
use quinn::rustls::CipherSuite;
use quinn::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use quinn::rustls::crypto::CryptoProvider;
use quinn::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use quinn::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use quinn::rustls::{
    self, DigitallySignedStruct, DistinguishedName, SignatureScheme, SupportedCipherSuite,
};

use crate::QuicError;

/// The protocol name both sides must agree on, as libp2p's.
const ALPN: &[u8] = b"libp2p";

/// The signature schemes a peer's handshake signature may use.
const SCHEMES: &[SignatureScheme] = &[
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ED25519,
    SignatureScheme::RSA_PSS_SHA512,
    SignatureScheme::RSA_PSS_SHA384,
    SignatureScheme::RSA_PSS_SHA256,
    SignatureScheme::RSA_PKCS1_SHA512,
    SignatureScheme::RSA_PKCS1_SHA384,
    SignatureScheme::RSA_PKCS1_SHA256,
];

/// Whether this CPU has AES instructions (and carry-less multiplication, for GCM).
fn aes_in_hardware() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// The TLS 1.3 suites in the order offered: AES-GCM first with AES instructions,
/// ChaCha20-Poly1305 first without.
pub(crate) fn suites(aes: bool) -> Vec<SupportedCipherSuite> {
    use rustls::crypto::aws_lc_rs::cipher_suite::{
        TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
    };
    if aes {
        vec![TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256]
    } else {
        vec![TLS13_CHACHA20_POLY1305_SHA256, TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384]
    }
}

fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites = suites(aes_in_hardware());
    Arc::new(provider)
}

fn tls_error(e: impl std::fmt::Display) -> QuicError {
    QuicError::Tls(e.to_string())
}

/// The client side's configuration: proves `key`'s peer ID, takes any peer that proves one.
pub(crate) fn client(key: &Keypair) -> Result<rustls::ClientConfig, QuicError> {
    let provider = provider();
    let ours = OurCertificate::new(key, &provider)?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PeerCertificate))
        .with_client_cert_resolver(Arc::new(ours));
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// The server side's configuration: proves `key`'s peer ID, requires the client to prove
/// one.
pub(crate) fn server(key: &Keypair) -> Result<rustls::ServerConfig, QuicError> {
    let provider = provider();
    let ours = OurCertificate::new(key, &provider)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .with_client_cert_verifier(Arc::new(PeerCertificate))
        .with_cert_resolver(Arc::new(ours));
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// Our certificate and its key, presented to every peer (whatever name or hints it asks
/// for: a peer is known by the key the certificate carries, not by a name). rustls's own
/// loaders would refuse it: they check it as a web certificate, which knows nothing of the
/// libp2p extension.
#[derive(Debug)]
struct OurCertificate(Arc<rustls::sign::CertifiedKey>);

impl OurCertificate {
    fn new(key: &Keypair, provider: &CryptoProvider) -> Result<Self, QuicError> {
        let (cert, private) = certificate::generate(key).map_err(tls_error)?;
        let signing = provider.key_provider.load_private_key(private).map_err(tls_error)?;
        Ok(Self(Arc::new(rustls::sign::CertifiedKey::new(vec![cert], signing))))
    }
}

impl rustls::client::ResolvesClientCert for OurCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _schemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl rustls::server::ResolvesServerCert for OurCertificate {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The suite a configuration would pick first (for tests).
#[cfg(test)]
pub(crate) fn first_suite(config: &rustls::ClientConfig) -> Option<CipherSuite> {
    config.crypto_provider().cipher_suites.first().map(|s| s.suite())
}

/// Checks the peer's certificate as libp2p does: exactly one, self-signed, with a valid
/// libp2p extension (the identity key's signature over the certificate's key). Which peer
/// it proves is checked once the handshake is done.
#[derive(Debug)]
struct PeerCertificate;

fn check_chain(end: &CertificateDer<'_>, rest: &[CertificateDer<'_>]) -> Result<(), rustls::Error> {
    if !rest.is_empty() {
        return Err(rustls::Error::General("a peer presents exactly one certificate".into()));
    }
    certificate::parse(end)?;
    Ok(())
}

fn check_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    certificate::parse(cert)?.verify_signature(dss.scheme, message, dss.signature())?;
    Ok(HandshakeSignatureValid::assertion())
}

fn no_tls12() -> rustls::Error {
    rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered)
}

/// The handshake signature checks, the same for both sides: TLS 1.3 only.
macro_rules! handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Err(no_tls12())
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            check_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            SCHEMES.to_vec()
        }
    };
}

impl ServerCertVerifier for PeerCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        check_chain(end_entity, intermediates)?;
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures!();
}

impl ClientCertVerifier for PeerCertificate {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        check_chain(end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    handshake_signatures!();
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};

    use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};

    use super::*;

    #[test]
    fn aes_gcm_goes_first_only_with_aes_instructions() {
        assert_eq!(suites(true)[0].suite(), CipherSuite::TLS13_AES_128_GCM_SHA256);
        assert_eq!(suites(false)[0].suite(), CipherSuite::TLS13_CHACHA20_POLY1305_SHA256);
        assert_eq!(suites(true).len(), 3);
        assert_eq!(suites(false).len(), 3);
        let key = Keypair::generate_ed25519();
        let expected = suites(aes_in_hardware())[0].suite();
        assert_eq!(first_suite(&client(&key).unwrap()), Some(expected));
    }

    /// Connects a client with `client_tls` to a server with `server_tls` on loopback;
    /// returns the peer ID each side proved to the other.
    async fn handshake(
        client_tls: rustls::ClientConfig,
        server_tls: rustls::ServerConfig,
    ) -> Result<(PeerId, PeerId), String> {
        let server_tls = QuicServerConfig::try_from(server_tls).map_err(|e| e.to_string())?;
        let client_tls = QuicClientConfig::try_from(client_tls).map_err(|e| e.to_string())?;
        let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let server = quinn::Endpoint::server(
            quinn::ServerConfig::with_crypto(Arc::new(server_tls)),
            loopback,
        )
        .map_err(|e| e.to_string())?;
        let client = quinn::Endpoint::client(loopback).map_err(|e| e.to_string())?;
        let to = server.local_addr().map_err(|e| e.to_string())?;
        let connecting = client
            .connect_with(quinn::ClientConfig::new(Arc::new(client_tls)), to, "l")
            .map_err(|e| e.to_string())?;
        let accept = async {
            let incoming = server.accept().await.ok_or("no connection came")?;
            incoming.await.map_err(|e| e.to_string())
        };
        let (dialed, accepted) = tokio::join!(connecting, accept);
        let (dialed, accepted) = (dialed.map_err(|e| e.to_string())?, accepted?);
        let proved = |c: &quinn::Connection| -> Result<PeerId, String> {
            let identity = c.peer_identity().ok_or("no certificate")?;
            let certs = identity
                .downcast::<Vec<CertificateDer<'static>>>()
                .map_err(|_| "not a certificate chain")?;
            let first = certs.first().ok_or("an empty chain")?;
            Ok(certificate::parse(first).map_err(|e| e.to_string())?.peer_id())
        };
        Ok((proved(&dialed)?, proved(&accepted)?))
    }

    use libp2p_identity::PeerId;

    #[test]
    fn only_one_valid_libp2p_certificate_passes() {
        let key = Keypair::generate_ed25519();
        let (cert, _) = certificate::generate(&key).unwrap();
        let (other, _) = certificate::generate(&Keypair::generate_ed25519()).unwrap();
        assert!(check_chain(&cert, &[]).is_ok());
        assert!(check_chain(&cert, std::slice::from_ref(&other)).is_err(), "a chain of two");
        let garbage = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x01]);
        assert!(check_chain(&garbage, &[]).is_err(), "not a certificate");
    }

    #[tokio::test]
    async fn peers_with_libp2p_s_own_configurations_connect_either_way() {
        let (a, b) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let (a_id, b_id) = (a.public().to_peer_id(), b.public().to_peer_id());
        let theirs_client = || libp2p_tls::make_client_config(&a, None).unwrap();
        let theirs_server = || libp2p_tls::make_server_config(&b).unwrap();
        let pairs = [
            (client(&a).unwrap(), server(&b).unwrap()),
            (theirs_client(), server(&b).unwrap()),
            (client(&a).unwrap(), theirs_server()),
        ];
        for (client_tls, server_tls) in pairs {
            // The client sees the server's peer ID, the server the client's.
            assert_eq!(handshake(client_tls, server_tls).await, Ok((b_id, a_id)));
        }
    }
}

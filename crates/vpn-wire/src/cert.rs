//! Membership certificates: a network CA's signed statement that a peer ID is a member and
//! holds these overlay addresses and routes, until a time. The CA's key signs offline; nodes
//! only verify, against the CA public keys they trust.

use libp2p_core::SignedEnvelope;
use libp2p_core::signed_envelope::ReadPayloadError;
use libp2p_identity::{Keypair, PublicKey};
use prost::Message;
use vpn_api::{IpNet, PeerId};

use crate::record::{MAX_CLOCK_SKEW_SECS, net_from_text, net_to_text};

/// The signed envelope's domain separation string.
pub const CERT_DOMAIN: &str = "vpn-node-certificate";
/// The signed envelope's payload type.
pub const CERT_PAYLOAD_TYPE: &[u8] = b"/vpn-node/certificate/1";
/// The certificate format this code writes and reads.
pub const CERT_VERSION: u32 = 1;
/// Most addresses, and most routes, one certificate may name.
pub const MAX_CERT_NETS: usize = 64;
/// Longest name, in bytes.
pub const MAX_CERT_NAME: usize = 64;
/// Largest encoded certificate read.
pub const MAX_CERT_BYTES: usize = 8 * 1024;

/// The protobuf payload of a certificate (docs/protocol.md, section 10).
#[derive(Clone, PartialEq, Message)]
struct CertificateProto {
    #[prost(uint32, tag = "1")]
    version: u32,
    #[prost(bytes = "vec", tag = "2")]
    peer_id: Vec<u8>,
    #[prost(string, repeated, tag = "3")]
    addresses: Vec<String>,
    #[prost(string, repeated, tag = "4")]
    routes: Vec<String>,
    #[prost(string, tag = "5")]
    name: String,
    #[prost(uint64, tag = "6")]
    not_before_unix: u64,
    #[prost(uint64, tag = "7")]
    not_after_unix: u64,
}

/// Why a certificate was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// The bytes are no signed envelope (or too many of them).
    #[error("not a signed certificate: {0}")]
    Envelope(String),
    /// The envelope holds something else.
    #[error("envelope payload type is not /vpn-node/certificate/1")]
    PayloadType,
    /// The CA's signature does not verify.
    #[error("certificate signature does not verify")]
    BadSignature,
    /// The payload does not decode.
    #[error("payload is not a certificate: {0}")]
    Payload(String),
    /// A version this code does not know.
    #[error("certificate version {0} is not {CERT_VERSION}")]
    Version(u32),
    /// The peer ID field does not decode.
    #[error("certificate peer_id is not a valid peer ID")]
    BadPeerId,
    /// An address or route is not canonical text of an address or prefix.
    #[error("certificate names a bad address or prefix \"{0}\"")]
    BadAddress(String),
    /// Too many addresses or routes, or too long a name.
    #[error("certificate is too large: {0}")]
    TooLarge(&'static str),
    /// Revoked by its CA's revocation list.
    #[error("certificate was revoked by its CA")]
    Revoked,
    /// Signed by a key that is not a trusted CA.
    #[error("certificate is signed by a CA this network does not trust")]
    UntrustedIssuer,
    /// Presented by (or for) another peer.
    #[error("certificate is for {certified}, presented for {presented}")]
    WrongPeer {
        /// The peer the certificate names.
        certified: PeerId,
        /// The peer it was presented for.
        presented: PeerId,
    },
    /// Not valid yet.
    #[error("certificate is valid from {not_before_unix}, now is {now_unix}")]
    NotYetValid {
        /// Start of validity.
        not_before_unix: u64,
        /// The time of the check.
        now_unix: u64,
    },
    /// A revocation list signed later than now (beyond the clock skew allowed): held, it
    /// could never be replaced by the CA's next list.
    #[error("revocation list issued at {issued_unix}, after now ({now_unix})")]
    IssuedLater {
        /// When the list says it was signed.
        issued_unix: u64,
        /// The time of the check.
        now_unix: u64,
    },
    /// Expired.
    #[error("certificate expired at {not_after_unix}, now is {now_unix}")]
    Expired {
        /// End of validity.
        not_after_unix: u64,
        /// The time of the check.
        now_unix: u64,
    },
    /// The CA key cannot sign (not the key kind the envelope takes).
    #[error("cannot sign: {0}")]
    Signing(String),
}

/// `payload` in an envelope of `domain` and `payload_type`, signed with `key`.
pub(crate) fn seal(
    key: &Keypair,
    domain: &str,
    payload_type: &[u8],
    payload: Vec<u8>,
) -> Result<Vec<u8>, CertError> {
    let envelope = SignedEnvelope::new(key, domain.to_owned(), payload_type.to_vec(), payload)
        .map_err(|e| CertError::Signing(e.to_string()))?;
    Ok(envelope.into_protobuf_encoding())
}

/// The payload and signer of an envelope of `domain` and `payload_type` (at most `max`
/// bytes) whose signature verifies.
pub(crate) fn unseal(
    bytes: &[u8],
    max: usize,
    domain: &str,
    payload_type: &[u8],
) -> Result<(Vec<u8>, PublicKey), CertError> {
    if bytes.len() > max {
        return Err(CertError::Envelope(format!("{} bytes", bytes.len())));
    }
    let envelope = SignedEnvelope::from_protobuf_encoding(bytes)
        .map_err(|e| CertError::Envelope(e.to_string()))?;
    let (payload, signer) =
        envelope.payload_and_signing_key(domain.to_owned(), payload_type).map_err(|e| match e {
            ReadPayloadError::InvalidSignature => CertError::BadSignature,
            _ => CertError::PayloadType,
        })?;
    Ok((payload.to_vec(), signer.clone()))
}

/// The envelope's part naming its signer; the rest is skipped.
#[derive(Clone, PartialEq, Message)]
struct NamedSigner {
    #[prost(bytes = "vec", tag = "1")]
    public_key: Vec<u8>,
}

/// Refuses `bytes` at once when the envelope names a signer outside `trusted`, before any
/// signature is checked: a stranger's made-up certificates cost a decode each, not a
/// signature check. Envelopes that do not decode go on to [`unseal`], which says why.
pub(crate) fn untrusted_signer(bytes: &[u8], trusted: &[PublicKey]) -> Result<(), CertError> {
    let named = NamedSigner::decode(bytes).ok();
    let key = named.and_then(|n| PublicKey::try_decode_protobuf(&n.public_key).ok());
    match key {
        Some(key) if !trusted.contains(&key) => Err(CertError::UntrustedIssuer),
        _ => Ok(()),
    }
}

/// What a network CA certifies about one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    /// The member.
    pub peer_id: PeerId,
    /// Its overlay addresses (host prefixes) and prefixes it may hold.
    pub addresses: Vec<IpNet>,
    /// Prefixes it routes into the overlay.
    pub routes: Vec<IpNet>,
    /// A name for people (`laptop`); may be empty.
    pub name: String,
    /// Seconds since the epoch from which it is valid.
    pub not_before_unix: u64,
    /// Seconds since the epoch after which it is void.
    pub not_after_unix: u64,
}

impl Certificate {
    /// Whether the certificate lets its peer hold `net` (inside one of its addresses or
    /// routes).
    pub fn holds(&self, net: &IpNet) -> bool {
        self.addresses.iter().chain(&self.routes).any(|held| held.contains(net))
    }

    /// Checks the limits a certificate must keep (number of addresses and routes, name).
    fn check_size(&self) -> Result<(), CertError> {
        if self.addresses.len() > MAX_CERT_NETS || self.routes.len() > MAX_CERT_NETS {
            return Err(CertError::TooLarge("more than 64 addresses or routes"));
        }
        if self.name.len() > MAX_CERT_NAME {
            return Err(CertError::TooLarge("a name longer than 64 bytes"));
        }
        Ok(())
    }

    /// The certificate signed by the CA `ca`, as envelope bytes.
    ///
    /// Errors: too many addresses or routes, too long a name, or a key that cannot sign.
    pub fn sign(&self, ca: &Keypair) -> Result<Vec<u8>, CertError> {
        self.check_size()?;
        let payload = CertificateProto {
            version: CERT_VERSION,
            peer_id: self.peer_id.to_bytes(),
            addresses: self.addresses.iter().map(net_to_text).collect(),
            routes: self.routes.iter().map(net_to_text).collect(),
            name: self.name.clone(),
            not_before_unix: self.not_before_unix,
            not_after_unix: self.not_after_unix,
        }
        .encode_to_vec();
        seal(ca, CERT_DOMAIN, CERT_PAYLOAD_TYPE, payload)
    }

    /// Decodes envelope bytes, checks the signature, and returns the certificate with its
    /// issuer's key. Nothing else is checked; see [`Certificate::verify`].
    pub fn open(bytes: &[u8]) -> Result<(Self, PublicKey), CertError> {
        let (payload, issuer) = unseal(bytes, MAX_CERT_BYTES, CERT_DOMAIN, CERT_PAYLOAD_TYPE)?;
        let proto =
            CertificateProto::decode(&*payload).map_err(|e| CertError::Payload(e.to_string()))?;
        if proto.version != CERT_VERSION {
            return Err(CertError::Version(proto.version));
        }
        let peer_id = PeerId::from_bytes(&proto.peer_id).map_err(|_| CertError::BadPeerId)?;
        let nets = |texts: &[String]| -> Result<Vec<IpNet>, CertError> {
            texts
                .iter()
                .map(|t| {
                    net_from_text(t)
                        .map_err(|_| CertError::BadAddress(vpn_types::PeerText(t).to_string()))
                })
                .collect()
        };
        let cert = Self {
            peer_id,
            addresses: nets(&proto.addresses)?,
            routes: nets(&proto.routes)?,
            name: proto.name,
            not_before_unix: proto.not_before_unix,
            not_after_unix: proto.not_after_unix,
        };
        cert.check_size()?;
        Ok((cert, issuer))
    }

    /// Every rule a certificate presented for `peer` must pass at `now_unix`: a valid
    /// signature by one of the `trusted` CA keys, naming `peer`, and valid now (with 60 s of
    /// clock skew either way).
    pub fn verify(
        bytes: &[u8],
        peer: &PeerId,
        trusted: &[PublicKey],
        now_unix: u64,
    ) -> Result<Self, CertError> {
        Self::verify_issued(bytes, peer, trusted, now_unix).map(|(cert, _)| cert)
    }

    /// [`Certificate::verify`], returning the issuer (the trusted CA that signed it) too.
    pub fn verify_issued(
        bytes: &[u8],
        peer: &PeerId,
        trusted: &[PublicKey],
        now_unix: u64,
    ) -> Result<(Self, PublicKey), CertError> {
        if bytes.len() <= MAX_CERT_BYTES {
            untrusted_signer(bytes, trusted)?;
        }
        let (cert, issuer) = Self::open(bytes)?;
        if !trusted.contains(&issuer) {
            return Err(CertError::UntrustedIssuer);
        }
        if cert.peer_id != *peer {
            return Err(CertError::WrongPeer { certified: cert.peer_id, presented: *peer });
        }
        if cert.not_before_unix > now_unix.saturating_add(MAX_CLOCK_SKEW_SECS) {
            let not_before_unix = cert.not_before_unix;
            return Err(CertError::NotYetValid { not_before_unix, now_unix });
        }
        if cert.not_after_unix.saturating_add(MAX_CLOCK_SKEW_SECS) < now_unix {
            let not_after_unix = cert.not_after_unix;
            return Err(CertError::Expired { not_after_unix, now_unix });
        }
        Ok((cert, issuer))
    }

    /// Whether the certificate is valid at `now_unix` (with the clock skew allowed).
    pub fn is_valid_at(&self, now_unix: u64) -> bool {
        self.not_before_unix <= now_unix.saturating_add(MAX_CLOCK_SKEW_SECS)
            && now_unix <= self.not_after_unix.saturating_add(MAX_CLOCK_SKEW_SECS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;
    const DAY: u64 = 24 * 60 * 60;

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    fn cert(peer: PeerId) -> Certificate {
        Certificate {
            peer_id: peer,
            addresses: vec![net("100.64.0.5/32"), net("fd00::5/128")],
            routes: vec![net("10.1.0.0/16")],
            name: "laptop".to_owned(),
            not_before_unix: NOW - DAY,
            not_after_unix: NOW + 90 * DAY,
        }
    }

    #[test]
    fn a_signed_certificate_verifies_for_its_peer_under_a_trusted_ca() {
        let (ca, peer) = (Keypair::generate_ed25519(), PeerId::random());
        let bytes = cert(peer).sign(&ca).unwrap();
        let got = Certificate::verify(&bytes, &peer, &[ca.public()], NOW).unwrap();
        assert_eq!(got, cert(peer));
        assert!(got.holds(&net("100.64.0.5/32")) && got.holds(&net("10.1.2.0/24")));
        assert!(!got.holds(&net("100.64.0.6/32")), "a member holds only what it was given");
    }

    #[test]
    fn certificates_from_strangers_for_others_or_out_of_time_are_refused() {
        let (ca, other_ca, peer) =
            (Keypair::generate_ed25519(), Keypair::generate_ed25519(), PeerId::random());
        let bytes = cert(peer).sign(&ca).unwrap();
        let verify = |bytes: &[u8], peer: &PeerId, now| {
            Certificate::verify(bytes, peer, &[other_ca.public(), ca.public()], now)
        };
        let mut forged = cert(peer).sign(&Keypair::generate_ed25519()).unwrap();
        assert_eq!(verify(&forged, &peer, NOW), Err(CertError::UntrustedIssuer));
        // The issuer is asked first: a broken signature by a stranger is not even checked.
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert_eq!(verify(&forged, &peer, NOW), Err(CertError::UntrustedIssuer));
        let stranger = PeerId::random();
        let presented = verify(&bytes, &stranger, NOW);
        assert_eq!(presented, Err(CertError::WrongPeer { certified: peer, presented: stranger }));
        assert!(matches!(verify(&bytes, &peer, NOW + 91 * DAY), Err(CertError::Expired { .. })));
        assert!(matches!(verify(&bytes, &peer, NOW - 2 * DAY), Err(CertError::NotYetValid { .. })));
        // Within the clock skew either way it still holds.
        assert!(verify(&bytes, &peer, NOW + 90 * DAY + 30).is_ok());
    }

    #[test]
    fn tampered_oversized_or_malformed_bytes_are_refused() {
        let (ca, peer) = (Keypair::generate_ed25519(), PeerId::random());
        let mut bytes = cert(peer).sign(&ca).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(Certificate::verify(&bytes, &peer, &[ca.public()], NOW).is_err());
        assert!(matches!(Certificate::open(&[0u8; 3]), Err(CertError::Envelope(_))));
        let huge = vec![0u8; MAX_CERT_BYTES + 1];
        assert!(matches!(Certificate::open(&huge), Err(CertError::Envelope(_))));
        let mut many = cert(peer);
        many.routes = (0..65u32).map(|i| net(&format!("10.{i}.0.0/16"))).collect();
        assert!(matches!(many.sign(&ca), Err(CertError::TooLarge(_))));
        let mut named = cert(peer);
        named.name = "x".repeat(65);
        assert!(matches!(named.sign(&ca), Err(CertError::TooLarge(_))));
    }

    #[test]
    fn a_bad_address_is_told_escaped_and_cut() {
        let (ca, peer) = (Keypair::generate_ed25519(), PeerId::random());
        let proto = CertificateProto {
            version: CERT_VERSION,
            peer_id: peer.to_bytes(),
            addresses: vec![format!("1.2.3.4\nWARN forged{}", "x".repeat(1500))],
            routes: Vec::new(),
            name: String::new(),
            not_before_unix: NOW - DAY,
            not_after_unix: NOW + DAY,
        };
        let envelope = seal(&ca, CERT_DOMAIN, CERT_PAYLOAD_TYPE, proto.encode_to_vec()).unwrap();
        let error = Certificate::verify(&envelope, &peer, &[ca.public()], NOW).unwrap_err();
        let text = error.to_string();
        assert!(matches!(error, CertError::BadAddress(_)), "{text}");
        assert!(!text.contains('\n') && text.len() < 300, "{text}");
    }

    #[test]
    fn a_record_signed_by_a_member_is_no_certificate() {
        // Envelopes are domain-separated: an IP record cannot pass as a certificate.
        let key = Keypair::generate_ed25519();
        let peer = key.public().to_peer_id();
        let record = crate::IpRecord::new(peer, vec![net("100.64.0.5/32")], 1, NOW + DAY);
        let bytes = record.sign(&key).unwrap();
        assert_eq!(
            Certificate::verify(&bytes, &peer, &[key.public()], NOW),
            Err(CertError::PayloadType)
        );
    }
}

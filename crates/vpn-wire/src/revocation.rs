//! Revocation lists: a network CA's signed statement that certificates it gave some peers
//! before a time no longer count. A newer list (a higher `issued_unix`) replaces an older
//! one from the same CA; a certificate issued for the peer again after the revocation
//! counts once more (re-issuing after a key is replaced on the same identity is possible).

use libp2p_identity::{Keypair, PublicKey};
use prost::Message;
use vpn_api::PeerId;

use crate::Certificate;
use crate::cert::{CertError, seal, unseal};

/// The signed envelope's domain separation string.
pub const REVOCATION_DOMAIN: &str = "vpn-node-revocations";
/// The signed envelope's payload type.
pub const REVOCATION_PAYLOAD_TYPE: &[u8] = b"/vpn-node/revocations/1";
/// The revocation list format this code writes and reads.
pub const REVOCATION_VERSION: u32 = 1;
/// The DHT key of a CA's revocation list is this prefix followed by the CA's public key
/// (protobuf encoding) in lower-case hex.
pub const REVOCATION_KEY_PREFIX: &str = "/vpn-node/revocations/";
/// Most entries one list may hold.
pub const MAX_REVOKED: usize = 1024;
/// Largest encoded list read (fits a DHT record).
pub const MAX_REVOCATION_BYTES: usize = 60 * 1024;

#[derive(Clone, PartialEq, Message)]
struct RevocationListProto {
    #[prost(uint32, tag = "1")]
    version: u32,
    #[prost(uint64, tag = "2")]
    issued_unix: u64,
    #[prost(message, repeated, tag = "3")]
    revoked: Vec<RevokedProto>,
}

#[derive(Clone, PartialEq, Message)]
struct RevokedProto {
    #[prost(bytes = "vec", tag = "1")]
    peer_id: Vec<u8>,
    #[prost(uint64, tag = "2")]
    before_unix: u64,
}

/// The DHT key of the revocation list of the CA `ca`.
pub fn revocation_key(ca: &PublicKey) -> Vec<u8> {
    let hex: String = ca.encode_protobuf().iter().map(|b| format!("{b:02x}")).collect();
    format!("{REVOCATION_KEY_PREFIX}{hex}").into_bytes()
}

/// One revoked member: its certificates valid from before `before_unix` are void.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Revoked {
    /// The member.
    pub peer_id: PeerId,
    /// Certificates whose `not_before_unix` is earlier than this are revoked.
    pub before_unix: u64,
}

/// A CA's revocation list.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RevocationList {
    /// When the CA signed it; a list replaces any older one of the same CA.
    pub issued_unix: u64,
    /// The revoked members.
    pub revoked: Vec<Revoked>,
}

impl RevocationList {
    /// Whether `cert` is revoked by this list.
    pub fn revokes(&self, cert: &Certificate) -> bool {
        self.revoked
            .iter()
            .any(|r| r.peer_id == cert.peer_id && cert.not_before_unix < r.before_unix)
    }

    /// The list signed by the CA `ca`, as envelope bytes.
    ///
    /// Errors: more than [`MAX_REVOKED`] entries, or a key that cannot sign.
    pub fn sign(&self, ca: &Keypair) -> Result<Vec<u8>, CertError> {
        if self.revoked.len() > MAX_REVOKED {
            return Err(CertError::TooLarge("more than 1024 revoked members"));
        }
        let payload = RevocationListProto {
            version: REVOCATION_VERSION,
            issued_unix: self.issued_unix,
            revoked: self
                .revoked
                .iter()
                .map(|r| RevokedProto { peer_id: r.peer_id.to_bytes(), before_unix: r.before_unix })
                .collect(),
        }
        .encode_to_vec();
        seal(ca, REVOCATION_DOMAIN, REVOCATION_PAYLOAD_TYPE, payload)
    }

    /// Decodes envelope bytes and checks the signature; returns the list and its issuer.
    /// Whether the issuer is trusted is the caller's question.
    pub fn open(bytes: &[u8]) -> Result<(Self, PublicKey), CertError> {
        let (payload, issuer) =
            unseal(bytes, MAX_REVOCATION_BYTES, REVOCATION_DOMAIN, REVOCATION_PAYLOAD_TYPE)?;
        let proto = RevocationListProto::decode(&*payload)
            .map_err(|e| CertError::Payload(e.to_string()))?;
        if proto.version != REVOCATION_VERSION {
            return Err(CertError::Version(proto.version));
        }
        if proto.revoked.len() > MAX_REVOKED {
            return Err(CertError::TooLarge("more than 1024 revoked members"));
        }
        let revoked = proto
            .revoked
            .into_iter()
            .map(|r| {
                let peer_id = PeerId::from_bytes(&r.peer_id).map_err(|_| CertError::BadPeerId)?;
                Ok(Revoked { peer_id, before_unix: r.before_unix })
            })
            .collect::<Result<_, CertError>>()?;
        Ok((Self { issued_unix: proto.issued_unix, revoked }, issuer))
    }

    /// Opens `bytes` and requires the issuer to be one of `trusted`.
    pub fn verify(bytes: &[u8], trusted: &[PublicKey]) -> Result<(Self, PublicKey), CertError> {
        crate::cert::untrusted_signer(bytes, trusted)?;
        let (list, issuer) = Self::open(bytes)?;
        if !trusted.contains(&issuer) {
            return Err(CertError::UntrustedIssuer);
        }
        Ok((list, issuer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(peer: PeerId, not_before_unix: u64) -> Certificate {
        Certificate {
            peer_id: peer,
            addresses: vec!["100.64.0.5/32".parse().unwrap()],
            routes: Vec::new(),
            name: String::new(),
            not_before_unix,
            not_after_unix: not_before_unix + 1000,
        }
    }

    #[test]
    fn a_list_revokes_certificates_issued_before_it_and_not_later_ones() {
        let (ca, peer, other) = (Keypair::generate_ed25519(), PeerId::random(), PeerId::random());
        let list = RevocationList {
            issued_unix: 500,
            revoked: vec![Revoked { peer_id: peer, before_unix: 500 }],
        };
        let bytes = list.sign(&ca).unwrap();
        let (opened, issuer) = RevocationList::verify(&bytes, &[ca.public()]).unwrap();
        assert_eq!((opened.clone(), issuer), (list, ca.public()));
        assert!(opened.revokes(&cert(peer, 100)));
        assert!(!opened.revokes(&cert(peer, 600)), "re-issued after the revocation");
        assert!(!opened.revokes(&cert(other, 100)));
    }

    #[test]
    fn lists_from_strangers_tampered_or_of_another_kind_are_refused() {
        let ca = Keypair::generate_ed25519();
        let list = RevocationList {
            issued_unix: 1,
            revoked: vec![Revoked { peer_id: PeerId::random(), before_unix: 1 }],
        };
        let bytes = list.sign(&ca).unwrap();
        let stranger = Keypair::generate_ed25519().public();
        assert_eq!(RevocationList::verify(&bytes, &[stranger]), Err(CertError::UntrustedIssuer));
        let mut tampered = bytes.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(RevocationList::open(&tampered).is_err());
        let certificate = cert(PeerId::random(), 1).sign(&ca).unwrap();
        assert_eq!(RevocationList::open(&certificate), Err(CertError::PayloadType));
        let many = RevocationList {
            issued_unix: 1,
            revoked: vec![Revoked { peer_id: PeerId::random(), before_unix: 1 }; MAX_REVOKED + 1],
        };
        assert!(matches!(many.sign(&ca), Err(CertError::TooLarge(_))));
    }
}

//! Members by certificate: the CAs a node trusts, its own certificate, the certificates it
//! has checked (in the membership exchange or inside IP records), and the CAs' revocation
//! lists.

// A CertError names up to two peers (large), but certificates are checked off the packet path.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

use libp2p_identity::PublicKey;
use vpn_api::{IpNet, PeerId};
use vpn_wire::{CertError, Certificate, RevocationList};

/// Most certificates remembered at once: a network larger than this still works, the
/// oldest-expiring certificates are checked again when next presented.
pub const MAX_CERTIFIED: usize = 4096;

/// A checked certificate and the CA that signed it.
#[derive(Debug, Clone)]
struct Certified {
    cert: Certificate,
    issuer: PublicKey,
}

#[derive(Debug, Default)]
struct State {
    certified: HashMap<PeerId, Certified>,
    /// The newest revocation list of each trusted CA (by the CA's encoded key), with its
    /// signed bytes (passed on to other members through the DHT).
    revocations: HashMap<Vec<u8>, (RevocationList, Vec<u8>)>,
}

impl State {
    fn revoked(&self, cert: &Certificate, issuer: &PublicKey) -> bool {
        self.revocations.get(&issuer.encode_protobuf()).is_some_and(|(list, _)| list.revokes(cert))
    }
}

/// The certificate side of membership. Every answer is about now: an expired certificate
/// stops counting the second it expires.
#[derive(Debug)]
pub struct Membership {
    trusted: Vec<PublicKey>,
    own: Vec<u8>,
    state: RwLock<State>,
}

impl Membership {
    /// Trusting the CA keys `trusted`, presenting `own` (empty: no certificate).
    pub fn new(trusted: Vec<PublicKey>, own: Vec<u8>) -> Self {
        Self { trusted, own, state: RwLock::new(State::default()) }
    }

    /// The CA keys trusted.
    pub fn trusted(&self) -> &[PublicKey] {
        &self.trusted
    }

    /// This node's certificate (empty: none).
    pub fn own_certificate(&self) -> &[u8] {
        &self.own
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Checks `bytes`, a certificate presented by (or for) `peer` at `now_unix`: signed by a
    /// trusted CA, naming `peer`, valid now and not revoked. A valid one is remembered (the
    /// peer is a member from then on, until it expires or is revoked).
    pub fn admit(
        &self,
        peer: &PeerId,
        bytes: &[u8],
        now_unix: u64,
    ) -> Result<Certificate, CertError> {
        let (cert, issuer) = Certificate::verify_issued(bytes, peer, &self.trusted, now_unix)?;
        let mut state = self.write();
        if state.revoked(&cert, &issuer) {
            return Err(CertError::Revoked);
        }
        if !state.certified.contains_key(peer) && state.certified.len() >= MAX_CERTIFIED {
            state.certified.retain(|_, c| c.cert.is_valid_at(now_unix));
            if state.certified.len() >= MAX_CERTIFIED {
                // Room for the newcomer: the certificate that runs out first goes.
                let first = state.certified.iter().min_by_key(|(_, c)| c.cert.not_after_unix);
                if let Some(first) = first.map(|(peer, _)| *peer) {
                    state.certified.remove(&first);
                }
            }
        }
        let keep = state.certified.get(peer).is_some_and(|held| {
            // A peer presenting an older certificate than the one known keeps the newer.
            held.cert.not_before_unix > cert.not_before_unix && held.cert.is_valid_at(now_unix)
        });
        if !keep {
            state.certified.insert(*peer, Certified { cert: cert.clone(), issuer });
        }
        Ok(cert)
    }

    /// Whether `peer` holds a valid certificate now.
    pub fn is_member(&self, peer: &PeerId, now_unix: u64) -> bool {
        self.read().certified.get(peer).is_some_and(|c| c.cert.is_valid_at(now_unix))
    }

    /// What `peer`'s valid certificate says about `net`: `None` when it has none, else
    /// whether the certificate lets it hold `net`.
    pub fn holds(&self, peer: &PeerId, net: &IpNet, now_unix: u64) -> Option<bool> {
        let state = self.read();
        let certified = state.certified.get(peer).filter(|c| c.cert.is_valid_at(now_unix))?;
        Some(certified.cert.holds(net))
    }

    /// Takes a revocation list (`bytes`) from a trusted CA if it is newer than the one held;
    /// certificates it revokes stop counting at once. Returns the peers it cut off.
    pub fn revoke(&self, bytes: &[u8], now_unix: u64) -> Result<Vec<PeerId>, CertError> {
        let (list, issuer) = self.verify_list(bytes, now_unix)?;
        let key = issuer.encode_protobuf();
        let mut state = self.write();
        if state.revocations.get(&key).is_some_and(|(held, _)| held.issued_unix >= list.issued_unix)
        {
            return Ok(Vec::new());
        }
        let cut: Vec<PeerId> = state
            .certified
            .iter()
            .filter(|(_, c)| c.issuer == issuer && list.revokes(&c.cert))
            .map(|(peer, _)| *peer)
            .collect();
        for peer in &cut {
            state.certified.remove(peer);
        }
        state.revocations.insert(key, (list, bytes.to_vec()));
        Ok(cut)
    }

    /// The revocation list held for each trusted CA that has one: the CA and the list's
    /// signed bytes.
    pub fn revocation_lists(&self) -> Vec<(PublicKey, Vec<u8>)> {
        let state = self.read();
        self.trusted
            .iter()
            .filter_map(|ca| {
                let (_, bytes) = state.revocations.get(&ca.encode_protobuf())?;
                Some((ca.clone(), bytes.clone()))
            })
            .collect()
    }

    /// Whether `bytes` is a revocation list from the trusted CA `ca` at least as new as
    /// the one held for it (a DHT store takes nothing else under that CA's key).
    pub fn is_current_list(&self, ca: &PublicKey, bytes: &[u8], now_unix: u64) -> bool {
        let Ok((list, issuer)) = self.verify_list(bytes, now_unix) else {
            return false;
        };
        let state = self.read();
        let held = state.revocations.get(&ca.encode_protobuf());
        issuer == *ca && held.is_none_or(|(held, _)| list.issued_unix >= held.issued_unix)
    }

    /// A revocation list from a trusted CA, signed no later than `now_unix` (with the clock
    /// skew allowed): a list dated ahead would outrank every list the CA signs until then.
    fn verify_list(
        &self,
        bytes: &[u8],
        now_unix: u64,
    ) -> Result<(RevocationList, PublicKey), CertError> {
        let (list, issuer) = RevocationList::verify(bytes, &self.trusted)?;
        if list.issued_unix > now_unix.saturating_add(vpn_wire::MAX_CLOCK_SKEW_SECS) {
            return Err(CertError::IssuedLater { issued_unix: list.issued_unix, now_unix });
        }
        Ok((list, issuer))
    }

    /// Peers with a certificate remembered now (valid or not).
    pub fn certified_count(&self) -> usize {
        self.read().certified.len()
    }
}

#[cfg(test)]
mod tests {
    use libp2p_identity::Keypair;
    use vpn_wire::Revoked;

    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    fn signed(ca: &Keypair, peer: PeerId, address: &str, not_before_unix: u64) -> Vec<u8> {
        let cert = Certificate {
            peer_id: peer,
            addresses: vec![net(address)],
            routes: Vec::new(),
            name: String::new(),
            not_before_unix,
            not_after_unix: not_before_unix + 1000,
        };
        cert.sign(ca).unwrap()
    }

    #[test]
    fn a_certified_peer_is_a_member_holding_what_it_was_given_until_it_expires() {
        let (ca, peer) = (Keypair::generate_ed25519(), PeerId::random());
        let members = Membership::new(vec![ca.public()], Vec::new());
        assert!(!members.is_member(&peer, NOW));
        assert_eq!(members.holds(&peer, &net("100.64.0.5/32"), NOW), None);
        members.admit(&peer, &signed(&ca, peer, "100.64.0.5/32", NOW), NOW).unwrap();
        assert!(members.is_member(&peer, NOW));
        assert_eq!(members.holds(&peer, &net("100.64.0.5/32"), NOW), Some(true));
        assert_eq!(members.holds(&peer, &net("100.64.0.6/32"), NOW), Some(false));
        assert!(!members.is_member(&peer, NOW + 2000), "expired");
        assert_eq!(members.holds(&peer, &net("100.64.0.5/32"), NOW + 2000), None);
    }

    #[test]
    fn strangers_and_other_cas_are_refused() {
        let (ca, other, peer) =
            (Keypair::generate_ed25519(), Keypair::generate_ed25519(), PeerId::random());
        let members = Membership::new(vec![ca.public()], Vec::new());
        let foreign = signed(&other, peer, "100.64.0.5/32", NOW);
        assert_eq!(members.admit(&peer, &foreign, NOW), Err(CertError::UntrustedIssuer));
        assert!(members.admit(&peer, &[], NOW).is_err(), "no certificate");
        let theirs = signed(&ca, PeerId::random(), "100.64.0.5/32", NOW);
        assert!(matches!(members.admit(&peer, &theirs, NOW), Err(CertError::WrongPeer { .. })));
        assert!(!members.is_member(&peer, NOW));
    }

    #[test]
    fn a_revocation_cuts_a_member_off_and_a_newer_certificate_brings_it_back() {
        let (ca, peer, other) = (Keypair::generate_ed25519(), PeerId::random(), PeerId::random());
        let members = Membership::new(vec![ca.public()], Vec::new());
        let old = signed(&ca, peer, "100.64.0.5/32", NOW);
        members.admit(&peer, &old, NOW).unwrap();
        members.admit(&other, &signed(&ca, other, "100.64.0.7/32", NOW), NOW).unwrap();
        let list = RevocationList {
            issued_unix: NOW + 10,
            revoked: vec![Revoked { peer_id: peer, before_unix: NOW + 10 }],
        };
        assert_eq!(members.revoke(&list.sign(&ca).unwrap(), NOW + 20).unwrap(), vec![peer]);
        assert!(!members.is_member(&peer, NOW + 20) && members.is_member(&other, NOW + 20));
        assert_eq!(members.admit(&peer, &old, NOW + 20), Err(CertError::Revoked));
        // An older list changes nothing.
        let older = RevocationList { issued_unix: NOW, revoked: Vec::new() };
        assert!(members.revoke(&older.sign(&ca).unwrap(), NOW + 20).unwrap().is_empty());
        assert_eq!(members.admit(&peer, &old, NOW + 20), Err(CertError::Revoked));
        // A list from a CA not trusted is refused.
        let stranger = Keypair::generate_ed25519();
        let untrusted = members.revoke(&list.sign(&stranger).unwrap(), NOW + 20);
        assert_eq!(untrusted, Err(CertError::UntrustedIssuer));
        // A list dated ahead of the clock is refused: held, it would outrank the CA's next.
        let ahead = RevocationList { issued_unix: NOW + 3600, revoked: Vec::new() };
        let refused = members.revoke(&ahead.sign(&ca).unwrap(), NOW + 20);
        assert!(matches!(refused, Err(CertError::IssuedLater { .. })), "{refused:?}");
        assert!(!members.is_current_list(&ca.public(), &ahead.sign(&ca).unwrap(), NOW + 20));
        assert!(members.revoke(&ahead.sign(&ca).unwrap(), NOW + 3600).is_ok(), "in its time");
        // Re-issued after the revocation, it counts again.
        members.admit(&peer, &signed(&ca, peer, "100.64.0.5/32", NOW + 30), NOW + 40).unwrap();
        assert!(members.is_member(&peer, NOW + 40));
    }

    #[test]
    fn the_table_is_bounded() {
        let ca = Keypair::generate_ed25519();
        let members = Membership::new(vec![ca.public()], Vec::new());
        for _ in 0..MAX_CERTIFIED + 10 {
            let peer = PeerId::random();
            members.admit(&peer, &signed(&ca, peer, "100.64.0.5/32", NOW), NOW).unwrap();
        }
        assert_eq!(members.certified_count(), MAX_CERTIFIED);
    }
}

use std::collections::BTreeMap;
use std::net::IpAddr;

use libp2p_core::SignedEnvelope;
use libp2p_core::signed_envelope::ReadPayloadError;
use libp2p_identity::Keypair;
use prost::Message;
use vpn_api::IpRegistry;
use vpn_api::{IpNet, PeerId};

use crate::RecordError;

/// The signed envelope's domain separation string.
pub const RECORD_DOMAIN: &str = "vpn-node-ip-record";
/// The signed envelope's payload type.
pub const RECORD_PAYLOAD_TYPE: &[u8] = b"/vpn-node/ip-record/2";
/// The DHT key of an address is this prefix followed by the address's canonical text.
pub const RECORD_KEY_PREFIX: &str = "/vpn-node/ip2/";
/// Clock skew tolerated when checking expiry.
pub const MAX_CLOCK_SKEW_SECS: u64 = 60;
/// How far ahead a record may expire.
pub const MAX_LIFETIME_SECS: u64 = 7 * 24 * 60 * 60;

/// The protobuf payload of docs/protocol.md, section 7.1.
#[derive(Clone, PartialEq, Message)]
struct IpRecordProto {
    #[prost(bytes = "vec", tag = "1")]
    peer_id: Vec<u8>,
    #[prost(string, repeated, tag = "2")]
    addresses: Vec<String>,
    #[prost(uint64, tag = "3")]
    seq: u64,
    #[prost(uint64, tag = "4")]
    expires_unix: u64,
    #[prost(bytes = "vec", tag = "5")]
    certificate: Vec<u8>,
}

/// A peer's claim to overlay addresses and prefixes, as stored in the DHT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpRecord {
    /// The owner.
    pub peer_id: PeerId,
    /// The addresses (as /32 or /128) and prefixes it holds.
    pub addresses: Vec<IpNet>,
    /// Strictly increasing per owner.
    pub seq: u64,
    /// Seconds since the epoch after which the record is void.
    pub expires_unix: u64,
    /// The owner's membership certificate (empty: none), so that a node that never met
    /// the owner can check what it may hold.
    pub certificate: Vec<u8>,
}

/// The DHT key for `addr`: `/vpn-node/ip2/` and the address in canonical text (RFC 5952
/// for IPv6).
pub fn record_key(addr: IpAddr) -> Vec<u8> {
    format!("{RECORD_KEY_PREFIX}{addr}").into_bytes()
}

/// Canonical text of an address or prefix: a bare address for a host prefix.
pub(crate) fn net_to_text(net: &IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() { net.addr().to_string() } else { net.to_string() }
}

/// Parses canonical text; anything that would print differently is refused.
pub(crate) fn net_from_text(text: &str) -> Result<IpNet, RecordError> {
    let bad = || RecordError::BadAddress(vpn_types::PeerText(text).to_string());
    let net = if text.contains('/') {
        let net: IpNet = text.parse().map_err(|_| bad())?;
        if net.trunc() != net {
            return Err(bad());
        }
        net
    } else {
        IpNet::from(text.parse::<IpAddr>().map_err(|_| bad())?)
    };
    if net_to_text(&net) != text {
        return Err(bad());
    }
    Ok(net)
}

impl IpRecord {
    /// A record of `peer_id` holding `addresses`.
    pub fn new(peer_id: PeerId, addresses: Vec<IpNet>, seq: u64, expires_unix: u64) -> Self {
        Self { peer_id, addresses, seq, expires_unix, certificate: Vec::new() }
    }

    /// The same record, carrying the owner's membership certificate.
    pub fn with_certificate(mut self, certificate: Vec<u8>) -> Self {
        self.certificate = certificate;
        self
    }

    /// Whether one of the record's addresses or prefixes contains `addr`.
    pub fn covers(&self, addr: IpAddr) -> bool {
        self.addresses.iter().any(|net| net.contains(&addr))
    }

    /// The record signed with `keypair`, as envelope bytes for the DHT.
    ///
    /// Errors: [`RecordError::WrongKey`] when `keypair` is not the owner's.
    pub fn sign(&self, keypair: &Keypair) -> Result<Vec<u8>, RecordError> {
        let signer = keypair.public().to_peer_id();
        if signer != self.peer_id {
            return Err(RecordError::WrongKey { signer, claimed: self.peer_id });
        }
        let payload = IpRecordProto {
            peer_id: self.peer_id.to_bytes(),
            addresses: self.addresses.iter().map(net_to_text).collect(),
            seq: self.seq,
            expires_unix: self.expires_unix,
            certificate: self.certificate.clone(),
        }
        .encode_to_vec();
        let envelope = SignedEnvelope::new(
            keypair,
            RECORD_DOMAIN.to_owned(),
            RECORD_PAYLOAD_TYPE.to_vec(),
            payload,
        )
        .map_err(|e| RecordError::Envelope(e.to_string()))?;
        Ok(envelope.into_protobuf_encoding())
    }

    /// Decodes envelope bytes and checks the signature and the signer: the envelope must
    /// verify and be signed by the peer the record names. The record's contents are not
    /// checked yet; see [`IpRecord::validate`], or use [`IpRecord::open`] for both.
    pub fn from_envelope(bytes: &[u8]) -> Result<Self, RecordError> {
        let envelope = SignedEnvelope::from_protobuf_encoding(bytes)
            .map_err(|e| RecordError::Envelope(e.to_string()))?;
        let (payload, key) = envelope
            .payload_and_signing_key(RECORD_DOMAIN.to_owned(), RECORD_PAYLOAD_TYPE)
            .map_err(|e| match e {
                ReadPayloadError::InvalidSignature => RecordError::BadSignature,
                _ => RecordError::PayloadType,
            })?;
        let proto =
            IpRecordProto::decode(payload).map_err(|e| RecordError::Payload(e.to_string()))?;
        let claimed = PeerId::from_bytes(&proto.peer_id).map_err(|_| RecordError::BadPeerId)?;
        let signer = key.to_peer_id();
        if signer != claimed {
            return Err(RecordError::SignerMismatch { signer, claimed });
        }
        let addresses =
            proto.addresses.iter().map(|a| net_from_text(a)).collect::<Result<_, _>>()?;
        if proto.certificate.len() > crate::MAX_CERT_BYTES {
            return Err(RecordError::Payload("certificate over 8 KiB".to_owned()));
        }
        Ok(Self {
            peer_id: claimed,
            addresses,
            seq: proto.seq,
            expires_unix: proto.expires_unix,
            certificate: proto.certificate,
        })
    }

    /// Checks a record found under the key of `key_addr` at `now_unix`: not expired (with
    /// 60 s of clock skew), expiring no more than 7 days ahead, covering `key_addr`, and
    /// every address allowed for the owner by `registry`.
    pub fn validate(
        &self,
        key_addr: IpAddr,
        now_unix: u64,
        registry: &dyn IpRegistry,
    ) -> Result<(), RecordError> {
        let expired = RecordError::Expired { expires_unix: self.expires_unix, now_unix };
        if self.expires_unix.saturating_add(MAX_CLOCK_SKEW_SECS) < now_unix {
            return Err(expired);
        }
        if self.expires_unix > now_unix.saturating_add(MAX_LIFETIME_SECS + MAX_CLOCK_SKEW_SECS) {
            return Err(RecordError::TooFarAhead { expires_unix: self.expires_unix, now_unix });
        }
        if !self.covers(key_addr) {
            return Err(RecordError::NotCovered(key_addr));
        }
        if !self.certificate.is_empty() {
            registry.present(&self.peer_id, &self.certificate);
        }
        if let Some(net) = self.addresses.iter().find(|net| !registry.may_hold(&self.peer_id, net))
        {
            return Err(RecordError::NotAllowed { peer: self.peer_id, net: *net });
        }
        Ok(())
    }

    /// [`IpRecord::from_envelope`] and [`IpRecord::validate`] in one: every rule a stored
    /// or fetched record must pass.
    pub fn open(
        bytes: &[u8],
        key_addr: IpAddr,
        now_unix: u64,
        registry: &dyn IpRegistry,
    ) -> Result<Self, RecordError> {
        let record = Self::from_envelope(bytes)?;
        record.validate(key_addr, now_unix, registry)?;
        Ok(record)
    }
}

/// What a set of valid records for one address comes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// No record.
    None,
    /// One owner; its record with the highest `seq`.
    Owner(IpRecord),
    /// Two or more owners claim the address: none of them is used.
    Conflict {
        /// The claiming peers, in order.
        owners: Vec<PeerId>,
    },
}

/// Picks among valid records for one address: per owner the highest `seq` wins; more than
/// one owner is a conflict.
pub fn select_record(records: impl IntoIterator<Item = IpRecord>) -> Selection {
    let mut best: BTreeMap<PeerId, IpRecord> = BTreeMap::new();
    for record in records {
        match best.get(&record.peer_id) {
            Some(kept) if kept.seq >= record.seq => {}
            _ => {
                best.insert(record.peer_id, record);
            }
        }
    }
    if best.len() > 1 {
        return Selection::Conflict { owners: best.into_keys().collect() };
    }
    best.into_values().next().map_or(Selection::None, Selection::Owner)
}

#[cfg(test)]
mod tests;

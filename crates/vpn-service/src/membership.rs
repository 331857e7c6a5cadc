//! Who is a member, as the swarm's membership exchange asks it: configured peers, bootstrap
//! peers and allowed peers by their ID; everyone else by a certificate from a trusted CA.

use std::path::Path;
use std::sync::Arc;

use vpn_api::{MetricsService, PeerId};
use vpn_config::{MembershipSettings, parse_ca_key};
use vpn_discovery::{LiveRegistry, Membership, unix_now};
use vpn_errors::{ConfigError, VpnError};
use vpn_p2p::{Admission, PeerRefusal};
use vpn_wire::Certificate;

fn config_error(key: &str, value: impl std::fmt::Display, rule: impl Into<String>) -> VpnError {
    VpnError::Config(ConfigError::new(key, value, rule))
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>, VpnError> {
    std::fs::read(path)
        .map_err(|e| config_error(key, path.display(), format!("cannot be read: {e}")))
}

/// The certificate side of membership from `[membership]`, for the node `local`: the
/// trusted CAs, its own certificate (which must be valid for it now) and the revocation
/// list. `None` when no CA is configured.
pub(crate) fn load(
    settings: &MembershipSettings,
    local: &PeerId,
    own_addresses: &[vpn_api::IpNet],
) -> Result<Option<Arc<Membership>>, VpnError> {
    if settings.ca.is_empty() {
        return Ok(None);
    }
    let trusted = settings
        .ca
        .iter()
        .map(|text| parse_ca_key(text).map_err(|rule| config_error("membership.ca", text, rule)))
        .collect::<Result<Vec<_>, _>>()?;
    let own = match &settings.certificate {
        Some(path) => {
            let bytes = read("membership.certificate", path)?;
            let cert = Certificate::verify(&bytes, local, &trusted, unix_now()).map_err(|e| {
                config_error(
                    "membership.certificate",
                    path.display(),
                    format!("is not a valid certificate for this node ({local}): {e}; ask the CA for a new one"),
                )
            })?;
            tracing::info!(name = %cert.name, expires = cert.not_after_unix, "membership certificate loaded");
            for own in own_addresses {
                if !cert.holds(own) {
                    tracing::error!(
                        address = %own,
                        "this node's certificate does not hold its address: members will refuse its records and its packets from that address"
                    );
                }
            }
            bytes
        }
        None => Vec::new(),
    };
    let membership = Membership::new(trusted, own);
    if let Some(path) = &settings.revocations {
        let bytes = read("membership.revocations", path)?;
        membership.revoke(&bytes, unix_now()).map_err(|e| {
            config_error(
                "membership.revocations",
                path.display(),
                format!("is not a revocation list of a trusted CA: {e}"),
            )
        })?;
    }
    Ok(Some(Arc::new(membership)))
}

/// The pre-shared key in `path` (the libp2p `swarm.key` format).
pub(crate) fn load_psk(path: &Path) -> Result<vpn_p2p::PreSharedKey, VpnError> {
    // As for the identity: a key others can read is no secret.
    let shared = crate::identity::shared_secret_file(path).map_err(|e| {
        config_error("network.psk_file", path.display(), format!("cannot be read: {e}"))
    })?;
    if let Some(why) = shared {
        return Err(config_error("network.psk_file", path.display(), why));
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        config_error("network.psk_file", path.display(), format!("cannot be read: {e}"))
    })?;
    text.parse().map_err(|e| {
        config_error(
            "network.psk_file",
            path.display(),
            format!("is not a pre-shared key (vpn-node psk): {e}"),
        )
    })
}

/// The swarm's [`Admission`]: the node's registry decides, refusals are counted.
pub(crate) struct NodeAdmission {
    pub(crate) registry: Arc<LiveRegistry>,
    pub(crate) metrics: Arc<dyn MetricsService>,
}

impl Admission for NodeAdmission {
    fn certificate(&self) -> Vec<u8> {
        self.registry.membership().map(|m| m.own_certificate().to_vec()).unwrap_or_default()
    }

    fn admit(&self, peer: &PeerId, certificate: &[u8]) -> Result<(), String> {
        if self.registry.is_member(peer) {
            return Ok(());
        }
        match (self.registry.membership(), certificate.is_empty()) {
            (Some(membership), false) => {
                membership.admit(peer, certificate, unix_now()).map(drop).map_err(|e| e.to_string())
            }
            (Some(_), true) => Err("no certificate, and not a configured peer".to_owned()),
            (None, _) => {
                Err("not a configured peer (this network takes no certificates)".to_owned())
            }
        }
    }

    fn refused(&self, _peer: &PeerId, why: PeerRefusal) {
        self.metrics.record_peer_refused(why);
    }
}

//! Revocation lists travel between members through the DHT: each node publishes the newest
//! list it holds for each trusted CA under that CA's key and takes newer ones it finds there,
//! so a revocation given to one member reaches all of them.

use std::sync::Arc;
use std::time::Duration;

use vpn_api::DhtRecords;
use vpn_discovery::{Membership, unix_now};
use vpn_p2p::P2pHandle;
use vpn_wire::{REVOCATION_KEY_PREFIX, RevocationList, revocation_key};

/// Whether a peer may store `value` under `key` with us, for keys under
/// [`REVOCATION_KEY_PREFIX`]: a list signed by the trusted CA the key names, no older than
/// the one we hold nor than the one stored.
pub(crate) fn store_allows(
    membership: Option<&Membership>,
    key: &[u8],
    value: &[u8],
    stored: Option<&[u8]>,
) -> bool {
    let Some(membership) = membership else { return false };
    let Some(ca) = membership.trusted().iter().find(|ca| revocation_key(ca) == key) else {
        return false;
    };
    let older_than_stored =
        stored.and_then(|old| RevocationList::open(old).ok()).is_some_and(|(old, _)| {
            RevocationList::open(value).is_ok_and(|(new, _)| new.issued_unix < old.issued_unix)
        });
    membership.is_current_list(ca, value, unix_now()) && !older_than_stored
}

/// Whether `key` is a revocation list's.
pub(crate) fn is_revocation_key(key: &[u8]) -> bool {
    key.starts_with(REVOCATION_KEY_PREFIX.as_bytes())
}

/// Every `every`: takes the newer lists found in the DHT (cutting off the members they
/// revoke) and publishes the lists held, each for `ttl`.
pub(crate) async fn share(
    membership: Arc<Membership>,
    p2p: P2pHandle,
    every: Duration,
    ttl: Duration,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        for ca in membership.trusted().to_vec() {
            let key = revocation_key(&ca);
            let found = tokio::time::timeout(every, DhtRecords::get_records(&p2p, key)).await;
            for value in found.ok().and_then(Result::ok).unwrap_or_default() {
                match membership.revoke(&value, unix_now()) {
                    Ok(cut) if !cut.is_empty() => {
                        tracing::info!(peers = ?cut, "a revocation list from the DHT cut members off");
                        for peer in cut {
                            let _ = p2p.expel(peer).await;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "a revocation list in the DHT was refused")
                    }
                }
            }
        }
        for (ca, bytes) in membership.revocation_lists() {
            let put = DhtRecords::put_record(&p2p, revocation_key(&ca), bytes, ttl);
            if let Ok(Err(e)) = tokio::time::timeout(every, put).await {
                tracing::debug!(error = %e, "publishing a revocation list failed; trying again later");
            }
        }
    }
}

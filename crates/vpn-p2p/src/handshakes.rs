//! Handshakes under way on incoming connections, shared fairly by source.
//!
//! Before its handshake ends nothing is known of a connection but the address it comes
//! from, and the node takes at most `max_pending_incoming` such connections at once. One
//! stranger holding them all (silent TCP connections, reopened as they time out, or QUIC
//! Initials from spoofed addresses) would keep members out. So a source (an IPv4 address,
//! an IPv6 /64) holds at most [`Handshakes::per_source`] of them, and sources not known as
//! members' (configured endpoints, bootstrap peers, addresses members came from before)
//! hold at most [`Handshakes::strangers`] in all: the rest are kept for members.

use std::collections::HashMap;
use std::net::IpAddr;

use libp2p::swarm::ConnectionId;

use crate::dial_policy::{Source, source_of};

/// Why an incoming handshake was not begun.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Crowded {
    /// Its source holds its share already.
    #[error("too many handshakes from one address")]
    Source,
    /// Strangers hold their share already.
    #[error("too many handshakes from unknown addresses")]
    Strangers,
}

/// The handshakes under way, by source. Plain state.
#[derive(Debug)]
pub(crate) struct Handshakes {
    /// Most at once from one source.
    pub(crate) per_source: usize,
    /// Most at once from sources not known as members'.
    pub(crate) strangers: usize,
    under_way: HashMap<ConnectionId, (Option<Source>, bool)>,
    by_source: HashMap<Source, usize>,
    from_strangers: usize,
}

impl Handshakes {
    /// At most `per_source` from one source and `strangers` from unknown ones.
    pub(crate) fn new(per_source: usize, strangers: usize) -> Self {
        Self {
            per_source,
            strangers,
            under_way: HashMap::new(),
            by_source: HashMap::new(),
            from_strangers: 0,
        }
    }

    /// A handshake from `ip` (known as a member's address, or not) begins on `id`, if
    /// there is room for it.
    pub(crate) fn begin(
        &mut self,
        id: ConnectionId,
        ip: Option<IpAddr>,
        known: bool,
    ) -> Result<(), Crowded> {
        let source = ip.map(source_of);
        if let Some(source) = source
            && self.by_source.get(&source).copied().unwrap_or(0) >= self.per_source
        {
            return Err(Crowded::Source);
        }
        if !known && self.from_strangers >= self.strangers {
            return Err(Crowded::Strangers);
        }
        if let Some(source) = source {
            *self.by_source.entry(source).or_default() += 1;
        }
        self.from_strangers += usize::from(!known);
        self.under_way.insert(id, (source, known));
        Ok(())
    }

    /// The handshake on `id` ended (the connection is established, or failed).
    pub(crate) fn end(&mut self, id: ConnectionId) {
        let Some((source, known)) = self.under_way.remove(&id) else { return };
        if let Some(source) = source
            && let Some(n) = self.by_source.get_mut(&source)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.by_source.remove(&source);
            }
        }
        if !known {
            self.from_strangers = self.from_strangers.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: usize) -> ConnectionId {
        ConnectionId::new_unchecked(n)
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().expect("test address"))
    }

    #[test]
    fn one_source_holds_its_share_and_gets_it_back() {
        let mut h = Handshakes::new(2, 10);
        assert_eq!(h.begin(id(1), ip("198.18.0.9"), false), Ok(()));
        assert_eq!(h.begin(id(2), ip("198.18.0.9"), false), Ok(()));
        assert_eq!(h.begin(id(3), ip("198.18.0.9"), false), Err(Crowded::Source));
        assert_eq!(h.begin(id(4), ip("198.18.0.10"), false), Ok(()), "another source");
        h.end(id(1));
        assert_eq!(h.begin(id(5), ip("198.18.0.9"), false), Ok(()));
        h.end(id(99));
        assert_eq!(h.begin(id(6), ip("198.18.0.9"), false), Err(Crowded::Source));
    }

    #[test]
    fn an_ipv6_64_is_one_source() {
        let mut h = Handshakes::new(2, 10);
        assert_eq!(h.begin(id(1), ip("2001:db8:1:2::1"), false), Ok(()));
        assert_eq!(h.begin(id(2), ip("2001:db8:1:2:ffff::7"), false), Ok(()));
        assert_eq!(h.begin(id(3), ip("2001:db8:1:2::99"), false), Err(Crowded::Source));
        assert_eq!(h.begin(id(4), ip("2001:db8:1:3::1"), false), Ok(()));
    }

    #[test]
    fn strangers_leave_room_for_members() {
        let mut h = Handshakes::new(1, 3);
        for n in 0..3 {
            assert_eq!(h.begin(id(n), ip(&format!("198.18.1.{n}")), false), Ok(()));
        }
        assert_eq!(h.begin(id(10), ip("198.18.1.10"), false), Err(Crowded::Strangers));
        assert_eq!(h.begin(id(11), ip("198.18.2.1"), true), Ok(()), "a member's address");
        h.end(id(11));
        h.end(id(0));
        assert_eq!(h.begin(id(12), ip("198.18.1.12"), false), Ok(()));
    }
}

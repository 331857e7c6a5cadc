use std::fmt;

/// Why a packet was dropped. Every drop is counted under exactly one reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum DropReason {
    /// The flow's worker queue was full.
    QueueFull,
    /// The worker limit was reached and no worker could take the flow.
    WorkerLimit,
    /// No peer owns the destination address.
    NoPeer,
    /// The destination peer's circuit breaker is open.
    CircuitOpen,
    /// Opening or writing the stream failed.
    StreamError,
    /// The packet could not be sent within its time bound.
    Timeout,
    /// The packet could not be parsed (bad version, lengths or headers).
    Malformed,
    /// The source address does not belong to the peer that sent the packet.
    Spoofed,
    /// The destination address is neither ours nor inside a prefix we route.
    NotOurs,
    /// The firewall denied the packet.
    Firewall,
    /// The packet was larger than the interface or the frame allows.
    TooLarge,
    /// The node is shutting down.
    Shutdown,
    /// The kernel did not take the packet from the TUN device (refused, no buffer space,
    /// interface down).
    TunError,
    /// The sending peer was over one of its budgets (see [`Budget`]).
    OverBudget,
    /// The sending peer is no longer a member (a reload took it out); its stream is reset.
    NotMember,
}

impl DropReason {
    /// Every reason, in a fixed order (the index of a reason is its position here).
    pub const ALL: [DropReason; 15] = [
        DropReason::QueueFull,
        DropReason::WorkerLimit,
        DropReason::NoPeer,
        DropReason::CircuitOpen,
        DropReason::StreamError,
        DropReason::Timeout,
        DropReason::Malformed,
        DropReason::Spoofed,
        DropReason::NotOurs,
        DropReason::Firewall,
        DropReason::TooLarge,
        DropReason::Shutdown,
        DropReason::TunError,
        DropReason::OverBudget,
        DropReason::NotMember,
    ];

    /// The number of reasons.
    pub const COUNT: usize = Self::ALL.len();

    /// A stable index in `0..COUNT`, for counter arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The label used in logs and metrics (`queue_full`, `no_peer`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::WorkerLimit => "worker_limit",
            DropReason::NoPeer => "no_peer",
            DropReason::CircuitOpen => "circuit_open",
            DropReason::StreamError => "stream_error",
            DropReason::Timeout => "timeout",
            DropReason::Malformed => "malformed",
            DropReason::Spoofed => "spoofed",
            DropReason::NotOurs => "not_ours",
            DropReason::Firewall => "firewall",
            DropReason::TooLarge => "too_large",
            DropReason::Shutdown => "shutdown",
            DropReason::TunError => "tun_error",
            DropReason::OverBudget => "over_budget",
            DropReason::NotMember => "not_member",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one peer may make the node hold, each bounded by a setting of
/// `[limits]` (`vpn_config::LimitSettings`; for the record store, of `[discovery]`,
/// `vpn_config::DiscoverySettings`). Every time one bites it is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Budget {
    /// Streams one peer has open to us (`limits.inbound_streams_per_peer`).
    InboundStreams,
    /// Bytes of one peer's packets waiting for a lookup (`limits.lookup_bytes_per_peer`).
    LookupBytes,
    /// Lookups one peer's packets start per second (`limits.lookups_per_second`).
    LookupRate,
    /// Owners remembered by discovery (`discovery.cache_entries`): the least recently used
    /// one was forgotten.
    DiscoveryCache,
    /// An inbound stream sent nothing for `limits.inbound_idle_timeout`.
    IdleStream,
    /// An inbound stream did not take our reply within `limits.inbound_write_timeout`.
    StalledStream,
    /// Records one publisher may keep in our store (`discovery.records_per_publisher`).
    StoreQuota,
}

impl Budget {
    /// Every budget, in a fixed order (the index of a budget is its position here).
    pub const ALL: [Budget; 7] = [
        Budget::InboundStreams,
        Budget::LookupBytes,
        Budget::LookupRate,
        Budget::DiscoveryCache,
        Budget::IdleStream,
        Budget::StalledStream,
        Budget::StoreQuota,
    ];

    /// The number of budgets.
    pub const COUNT: usize = Self::ALL.len();

    /// A stable index in `0..COUNT`, for counter arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The label used in logs and metrics (`inbound_streams`, `lookup_rate`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Budget::InboundStreams => "inbound_streams",
            Budget::LookupBytes => "lookup_bytes",
            Budget::LookupRate => "lookup_rate",
            Budget::DiscoveryCache => "discovery_cache",
            Budget::IdleStream => "idle_stream",
            Budget::StalledStream => "stalled_stream",
            Budget::StoreQuota => "store_quota",
        }
    }
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a peer's connection was closed before it proved itself a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PeerRefusal {
    /// It is no member: no certificate, an invalid, expired or revoked one, or one from a
    /// CA this node does not trust.
    NotMember,
    /// It did not finish the membership exchange in time.
    Timeout,
    /// It does not take us for a member.
    RefusedUs,
    /// Too many connections were waiting for proof already (in all, or from its address).
    Crowded,
}

impl PeerRefusal {
    /// Every reason, in a fixed order (the index of a reason is its position here).
    pub const ALL: [PeerRefusal; 4] = [
        PeerRefusal::NotMember,
        PeerRefusal::Timeout,
        PeerRefusal::RefusedUs,
        PeerRefusal::Crowded,
    ];

    /// The number of reasons.
    pub const COUNT: usize = Self::ALL.len();

    /// A stable index in `0..COUNT`, for counter arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The label used in logs and metrics (`not_member`, `timeout`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            PeerRefusal::NotMember => "not_member",
            PeerRefusal::Timeout => "timeout",
            PeerRefusal::RefusedUs => "refused_us",
            PeerRefusal::Crowded => "crowded",
        }
    }
}

impl fmt::Display for PeerRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the node would not dial an address (one a peer gave it, as a rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DialRefusal {
    /// An address that names no host: unspecified, multicast, broadcast or reserved.
    NoHost,
    /// A link-local address (it means a different host on every link).
    LinkLocal,
    /// A loopback address, on a node that does not listen on one itself.
    Loopback,
    /// An address inside the overlay (the connection would ride its own tunnel).
    Overlay,
    /// A private address in a network the node has no address in.
    Private,
    /// Too many dials under way to that peer, or in all.
    Budget,
}

impl DialRefusal {
    /// Every reason, in a fixed order (the index of a reason is its position here).
    pub const ALL: [DialRefusal; 6] = [
        DialRefusal::NoHost,
        DialRefusal::LinkLocal,
        DialRefusal::Loopback,
        DialRefusal::Overlay,
        DialRefusal::Private,
        DialRefusal::Budget,
    ];

    /// The number of reasons.
    pub const COUNT: usize = Self::ALL.len();

    /// A stable index in `0..COUNT`, for counter arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The label used in logs and metrics (`no_host`, `loopback`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            DialRefusal::NoHost => "no_host",
            DialRefusal::LinkLocal => "link_local",
            DialRefusal::Loopback => "loopback",
            DialRefusal::Overlay => "overlay",
            DialRefusal::Private => "private",
            DialRefusal::Budget => "budget",
        }
    }
}

impl fmt::Display for DialRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn index_matches_position_in_all() {
        for (i, reason) in DropReason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i, "{reason}");
        }
    }

    #[test]
    fn budget_index_matches_position_in_all() {
        for (i, budget) in Budget::ALL.iter().enumerate() {
            assert_eq!(budget.index(), i, "{budget}");
        }
        for (i, refusal) in PeerRefusal::ALL.iter().enumerate() {
            assert_eq!(refusal.index(), i, "{refusal}");
        }
        for (i, refusal) in DialRefusal::ALL.iter().enumerate() {
            assert_eq!(refusal.index(), i, "{refusal}");
        }
    }

    fn snake_case_and_unique(labels: &[&str]) {
        let unique: HashSet<_> = labels.iter().collect();
        assert_eq!(unique.len(), labels.len());
        for label in labels {
            assert!(label.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{label}");
        }
    }

    #[test]
    fn labels_are_unique_snake_case() {
        snake_case_and_unique(&DropReason::ALL.map(DropReason::as_str));
        snake_case_and_unique(&Budget::ALL.map(Budget::as_str));
        snake_case_and_unique(&PeerRefusal::ALL.map(PeerRefusal::as_str));
        snake_case_and_unique(&DialRefusal::ALL.map(DialRefusal::as_str));
    }
}

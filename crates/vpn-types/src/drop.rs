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
}

impl DropReason {
    /// Every reason, in a fixed order (the index of a reason is its position here).
    pub const ALL: [DropReason; 13] = [
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
        }
    }
}

impl fmt::Display for DropReason {
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
    fn labels_are_unique_snake_case() {
        let labels: HashSet<_> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), DropReason::COUNT);
        for label in labels {
            assert!(label.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{label}");
        }
    }
}

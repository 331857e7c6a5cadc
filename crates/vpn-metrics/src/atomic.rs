use std::fmt;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use vpn_api::MetricsService;
use vpn_api::MetricsSnapshot;
use vpn_types::{Budget, DialRefusal, DropReason, PeerRefusal};

/// The label of a counter kept per reason (drops, refusals).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BudgetLabels {
    budget: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathLabels {
    path: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PunchLabels {
    result: String,
}

/// Lock-free counters, registered for Prometheus exposition.
///
/// One counter per reason in `reasons`, registered as `name` with a `reason` label.
fn by_reason<const N: usize>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    reasons: [&str; N],
) -> [Counter; N] {
    let family = Family::<ReasonLabels, Counter>::default();
    registry.register(name, help, family.clone());
    reasons.map(|r| family.get_or_create(&ReasonLabels { reason: r.to_owned() }).clone())
}

/// Every counter is an atomic shared with the registry; the per-reason drop counters are
/// created once up front, so recording never touches the registry's locks.
pub struct AtomicMetrics {
    registry: Registry,
    packets_sent: Counter,
    bytes_sent: Counter,
    packets_received: Counter,
    bytes_received: Counter,
    stream_errors: Counter,
    /// Packets sent, and received, as datagrams.
    datagrams: [Counter; 2],
    records_refused: Counter,
    drops: [Counter; DropReason::COUNT],
    budgets: [Counter; Budget::COUNT],
    refusals: [Counter; PeerRefusal::COUNT],
    dials_refused: [Counter; DialRefusal::COUNT],
    active_workers: Gauge,
    active_streams: Gauge,
    /// Peers connected directly, and through a relay only.
    paths: [Gauge; 2],
    /// Hole punches that succeeded, and failed.
    punches: [Counter; 2],
}

impl Default for AtomicMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for AtomicMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AtomicMetrics").field("snapshot", &self.snapshot()).finish()
    }
}

fn counter(registry: &mut Registry, name: &str, help: &str) -> Counter {
    let counter = Counter::default();
    registry.register(name, help, counter.clone());
    counter
}

fn gauge(registry: &mut Registry, name: &str, help: &str) -> Gauge {
    let gauge = Gauge::default();
    registry.register(name, help, gauge.clone());
    gauge
}

impl AtomicMetrics {
    /// Every counter at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("vpn");
        let packets_sent = counter(&mut registry, "packets_sent", "Packets written to peers");
        let bytes_sent = counter(&mut registry, "bytes_sent", "Bytes of packets written to peers");
        let packets_received =
            counter(&mut registry, "packets_received", "Packets received from peers and accepted");
        let bytes_received = counter(
            &mut registry,
            "bytes_received",
            "Bytes of packets received from peers and accepted",
        );
        let stream_errors = counter(
            &mut registry,
            "stream_errors",
            "Stream open, write, read or protocol failures",
        );
        let datagrams = [
            counter(&mut registry, "datagram_packets_sent", "Packets sent to peers as datagrams"),
            counter(
                &mut registry,
                "datagram_packets_received",
                "Packets received from peers as datagrams and accepted",
            ),
        ];
        let records_refused = counter(
            &mut registry,
            "records_refused",
            "DHT records peers asked us to store that were refused",
        );
        let drops = by_reason(
            &mut registry,
            "packets_dropped",
            "Packets dropped, by reason",
            DropReason::ALL.map(DropReason::as_str),
        );
        let family = Family::<BudgetLabels, Counter>::default();
        registry.register(
            "budget_exceeded",
            "Times a peer's budget bit (stream refused, packet dropped, entry forgotten), by budget",
            family.clone(),
        );
        let budgets = Budget::ALL
            .map(|b| family.get_or_create(&BudgetLabels { budget: b.as_str().to_owned() }).clone());
        let refusals = by_reason(
            &mut registry,
            "peers_refused",
            "Connections closed before their peer proved itself a member, by reason",
            PeerRefusal::ALL.map(PeerRefusal::as_str),
        );
        let dials_refused = by_reason(
            &mut registry,
            "dials_refused",
            "Addresses not dialed (most given by peers), by reason",
            DialRefusal::ALL.map(DialRefusal::as_str),
        );
        let active_workers = gauge(&mut registry, "active_workers", "Flow workers alive");
        let active_streams = gauge(&mut registry, "active_streams", "Streams open to peers");
        let family = Family::<PathLabels, Gauge>::default();
        registry.register(
            "peers_connected",
            "Peers connected now, by path: direct, or through a relay only",
            family.clone(),
        );
        let paths = ["direct", "relayed"]
            .map(|p| family.get_or_create(&PathLabels { path: p.to_owned() }).clone());
        let family = Family::<PunchLabels, Counter>::default();
        registry.register(
            "hole_punches",
            "Hole punches through NATs that ended, by result",
            family.clone(),
        );
        let punches = ["succeeded", "failed"]
            .map(|r| family.get_or_create(&PunchLabels { result: r.to_owned() }).clone());
        Self {
            registry,
            packets_sent,
            bytes_sent,
            packets_received,
            bytes_received,
            stream_errors,
            datagrams,
            records_refused,
            drops,
            budgets,
            refusals,
            dials_refused,
            active_workers,
            active_streams,
            paths,
            punches,
        }
    }

    /// Every counter in the Prometheus text exposition format.
    pub fn render_prometheus(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

fn gauge_value(gauge: &Gauge) -> u64 {
    u64::try_from(gauge.get()).unwrap_or(0)
}

impl MetricsService for AtomicMetrics {
    fn record_stream_error(&self) {
        self.stream_errors.inc();
    }

    fn record_sent(&self, packets: u64, bytes: u64) {
        self.packets_sent.inc_by(packets);
        self.bytes_sent.inc_by(bytes);
    }

    fn record_received(&self, packets: u64, bytes: u64) {
        self.packets_received.inc_by(packets);
        self.bytes_received.inc_by(bytes);
    }

    fn record_datagrams(&self, sent: u64, received: u64) {
        let [out, inbound] = &self.datagrams;
        out.inc_by(sent);
        inbound.inc_by(received);
    }

    fn record_drops(&self, reason: DropReason, packets: u64) {
        if let Some(counter) = self.drops.get(reason.index()) {
            counter.inc_by(packets);
        }
    }

    fn record_budget_exceeded(&self, budget: Budget) {
        if let Some(counter) = self.budgets.get(budget.index()) {
            counter.inc();
        }
    }

    fn record_peer_refused(&self, why: PeerRefusal) {
        if let Some(counter) = self.refusals.get(why.index()) {
            counter.inc();
        }
    }

    fn record_dial_refused(&self, why: DialRefusal) {
        if let Some(counter) = self.dials_refused.get(why.index()) {
            counter.inc();
        }
    }

    fn record_refused_record(&self) {
        self.records_refused.inc();
    }

    fn set_active_workers(&self, workers: u64) {
        self.active_workers.set(i64::try_from(workers).unwrap_or(i64::MAX));
    }

    fn set_active_streams(&self, streams: u64) {
        self.active_streams.set(i64::try_from(streams).unwrap_or(i64::MAX));
    }

    fn set_peer_paths(&self, direct: u64, relayed: u64) {
        for (gauge, n) in self.paths.iter().zip([direct, relayed]) {
            gauge.set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    fn record_hole_punch(&self, succeeded: bool) {
        let [ok, failed] = &self.punches;
        if succeeded {
            ok.inc()
        } else {
            failed.inc()
        };
    }

    fn snapshot(&self) -> MetricsSnapshot {
        let ([direct, relayed], [punched, not_punched]) = (&self.paths, &self.punches);
        let [datagrams_sent, datagrams_received] = &self.datagrams;
        let drops = self.drops.each_ref().map(Counter::get);
        MetricsSnapshot {
            packets_sent: self.packets_sent.get(),
            bytes_sent: self.bytes_sent.get(),
            packets_received: self.packets_received.get(),
            bytes_received: self.bytes_received.get(),
            stream_errors: self.stream_errors.get(),
            datagrams_sent: datagrams_sent.get(),
            datagrams_received: datagrams_received.get(),
            circuit_open_drops: drops.get(DropReason::CircuitOpen.index()).copied().unwrap_or(0),
            drops,
            budgets: self.budgets.each_ref().map(Counter::get),
            peers_refused: self.refusals.each_ref().map(Counter::get),
            dials_refused: self.dials_refused.each_ref().map(Counter::get),
            records_refused: self.records_refused.get(),
            active_workers: gauge_value(&self.active_workers),
            active_streams: gauge_value(&self.active_streams),
            peers_direct: gauge_value(direct),
            peers_relayed: gauge_value(relayed),
            hole_punches_succeeded: punched.get(),
            hole_punches_failed: not_punched.get(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn counts_show_in_snapshot() {
        let m = AtomicMetrics::new();
        m.record_sent(3, 300);
        m.record_received(1, 60);
        m.record_stream_error();
        m.record_drops(DropReason::Spoofed, 4);
        m.record_circuit_open_drop();
        m.set_active_workers(7);
        m.set_active_streams(2);
        m.set_peer_paths(3, 1);
        m.record_hole_punch(true);
        m.record_hole_punch(false);
        m.record_hole_punch(false);
        m.record_budget_exceeded(Budget::LookupRate);
        m.record_budget_exceeded(Budget::LookupRate);
        let s = m.snapshot();
        assert_eq!(s.exceeded(Budget::LookupRate), 2);
        assert_eq!(s.exceeded(Budget::InboundStreams), 0);
        assert_eq!((s.packets_sent, s.bytes_sent), (3, 300));
        assert_eq!((s.packets_received, s.bytes_received), (1, 60));
        assert_eq!(s.stream_errors, 1);
        assert_eq!(s.dropped(DropReason::Spoofed), 4);
        assert_eq!(s.circuit_open_drops, 1);
        assert_eq!(s.dropped(DropReason::CircuitOpen), 1);
        assert_eq!((s.active_workers, s.active_streams), (7, 2));
        assert_eq!((s.peers_direct, s.peers_relayed), (3, 1));
        assert_eq!((s.hole_punches_succeeded, s.hole_punches_failed), (1, 2));
        let text = m.render_prometheus();
        assert!(text.contains("vpn_peers_connected{path=\"relayed\"} 1"), "{text}");
        assert!(text.contains("vpn_hole_punches_total{result=\"failed\"} 2"), "{text}");
    }

    #[test]
    fn prometheus_text_has_every_metric_once() {
        let m = AtomicMetrics::new();
        m.record_sent(5, 500);
        m.record_drop(DropReason::NoPeer);
        m.record_budget_exceeded(Budget::InboundStreams);
        m.record_dial_refused(DialRefusal::Loopback);
        let text = m.render_prometheus();
        assert_eq!(m.snapshot().dial_refused(DialRefusal::Loopback), 1);
        for line in [
            "vpn_packets_sent_total 5",
            "vpn_bytes_sent_total 500",
            "vpn_packets_received_total 0",
            "vpn_stream_errors_total 0",
            "vpn_records_refused_total 0",
            "vpn_packets_dropped_total{reason=\"no_peer\"} 1",
            "vpn_packets_dropped_total{reason=\"queue_full\"} 0",
            "vpn_budget_exceeded_total{budget=\"inbound_streams\"} 1",
            "vpn_budget_exceeded_total{budget=\"store_quota\"} 0",
            "vpn_dials_refused_total{reason=\"loopback\"} 1",
            "vpn_dials_refused_total{reason=\"overlay\"} 0",
            "vpn_active_workers 0",
            "vpn_active_streams 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert_eq!(text.matches("# TYPE vpn_packets_dropped counter").count(), 1);
        for reason in DropReason::ALL {
            assert!(text.contains(&format!("reason=\"{reason}\"")), "{reason}");
        }
    }

    #[test]
    fn concurrent_counting_loses_nothing() {
        let m = Arc::new(AtomicMetrics::new());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        m.record_sent(1, 10);
                        m.record_drop(DropReason::Timeout);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let s = m.snapshot();
        assert_eq!((s.packets_sent, s.bytes_sent), (40_000, 400_000));
        assert_eq!(s.dropped(DropReason::Timeout), 40_000);
    }
}

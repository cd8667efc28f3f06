//! The agent's Prometheus metrics, all prefixed `wireway_agent_`.
//!
//! Labels are few and fixed (an error's category, a pass's result, a handshake's age
//! class), and the WireGuard metrics are per interface (names the operator gives). The
//! metrics port is on the node's network, where any pod may scrape it, so metrics carry
//! counts and never who: no peer's name, key or endpoint, no member, no namespace.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use wireway_runtime::clock;

/// Categories of errors, the values of the `category` label: the appliers' own
/// (`netlink`, `wireguard`, `system`) and these.
pub mod category {
    /// A part of the NodeState could not be applied (a namespace not there yet, an
    /// endpoint that does not resolve, a value that does not parse).
    pub const STATE: &str = "state";
    /// Talking to the operator failed (connect, stream, report).
    pub const OPERATOR: &str = "operator";
    /// The last applied state could not be saved or read.
    pub const STORE: &str = "store";
    /// A member's DNS listener could not be opened.
    pub const DNS: &str = "dns";
}

/// A label set with one label.
type Label = [(&'static str, &'static str); 1];

/// The agent's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Converge passes by result: `ok`, or `failed` (an operation failed).
    pub passes: Family<Label, Counter>,
    /// How long a pass took (look up, read the kernel, apply).
    pub pass_duration: Histogram,
    /// Operations applied.
    pub operations: Counter,
    /// Version of the NodeState in the kernel.
    pub applied_version: Gauge,
    /// Version of the newest NodeState received.
    pub desired_version: Gauge,
    /// Errors by category.
    pub errors: Family<Label, Counter>,
    /// 1 while a stream from the operator is open.
    pub operator_connected: Gauge,
    /// The WireGuard peers' health, as last read.
    pub peers: Arc<Peers>,
    /// DNS queries from members, by `transport` (`udp`, `tcp`).
    pub dns_queries: Family<Label, Counter>,
    /// DNS answers the agent made, by `rcode` (`NOERROR`, `NXDOMAIN`, `REFUSED`,
    /// `SERVFAIL`, ...); forwarded ones are not among them.
    pub dns_answers: Family<Label, Counter>,
    /// Queries relayed to the upstream resolver, by `result` (`answered`, `failed`,
    /// `overloaded`, `no_upstream`).
    pub dns_forwards: Family<Label, Counter>,
    /// Time from a query's arrival to its reply, by `answered_by` (`agent`, `upstream`).
    pub dns_duration: Family<Label, Histogram, fn() -> Histogram>,
}

/// The DNS latency buckets: 25 µs to ~1.6 s.
fn dns_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_025, 2.0, 17))
}

impl Metrics {
    /// The metrics, registered in a new registry; `backend` is the WireGuard backend.
    pub fn new(backend: &'static str) -> (Self, Registry) {
        let metrics = Self {
            passes: Family::default(),
            // 1 ms to ~16 s.
            pass_duration: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            operations: Counter::default(),
            applied_version: Gauge::default(),
            desired_version: Gauge::default(),
            errors: Family::default(),
            operator_connected: Gauge::default(),
            peers: Arc::default(),
            dns_queries: Family::default(),
            dns_answers: Family::default(),
            dns_forwards: Family::default(),
            dns_duration: Family::new_with_constructor(dns_histogram),
        };
        let mut registry = Registry::with_prefix("wireway_agent");
        registry.register(
            "backend",
            "The WireGuard implementation the agent drives",
            Info::new([("backend", backend)]),
        );
        registry.register(
            "passes",
            "Converge passes by result (failed: an operation failed)",
            metrics.passes.clone(),
        );
        registry.register_with_unit(
            "pass_duration",
            "Time of one converge pass",
            Unit::Seconds,
            metrics.pass_duration.clone(),
        );
        registry.register(
            "operations",
            "Kernel and WireGuard operations applied",
            metrics.operations.clone(),
        );
        registry.register(
            "applied_version",
            "Version of the NodeState in the kernel",
            metrics.applied_version.clone(),
        );
        registry.register(
            "desired_version",
            "Version of the newest NodeState received from the operator",
            metrics.desired_version.clone(),
        );
        registry.register("errors", "Errors by category", metrics.errors.clone());
        registry.register(
            "operator_connected",
            "1 while a stream from the operator is open",
            metrics.operator_connected.clone(),
        );
        registry.register_collector(Box::new(metrics.peers.clone()));
        registry.register(
            "dns_queries",
            "DNS queries from members to their gateway, by transport",
            metrics.dns_queries.clone(),
        );
        registry.register(
            "dns_answers",
            "DNS answers the agent made (not forwarded), by response code",
            metrics.dns_answers.clone(),
        );
        registry.register(
            "dns_forwards",
            "DNS queries relayed to the upstream resolver, by result",
            metrics.dns_forwards.clone(),
        );
        registry.register_with_unit(
            "dns_duration",
            "Time from a member's DNS query to its reply, by who answered",
            Unit::Seconds,
            metrics.dns_duration.clone(),
        );
        (metrics, registry)
    }

    /// Counts an error of `category`.
    pub fn error(&self, category: &'static str) {
        self.errors.get_or_create(&[("category", category)]).inc();
    }
}

/// How long a peer counts as active after a handshake: WireGuard re-handshakes every
/// 2 minutes while packets flow, and a session without one for 180 s is over.
pub const ACTIVE_FOR_SECONDS: i64 = 180;

/// One WireGuard peer's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSample {
    /// The service's WireGuard interface.
    pub interface: String,
    /// The peer: a node name or an external Endpoint (its public key if unknown). Not
    /// exported: the metrics count peers, they do not name them.
    pub peer: String,
    /// Unix time of the last handshake; `None` if none yet.
    pub last_handshake: Option<i64>,
    /// Bytes received from the peer.
    pub rx_bytes: u64,
    /// Bytes sent to the peer.
    pub tx_bytes: u64,
}

/// The peers' health, replaced after each read, encoded at each scrape.
#[derive(Debug, Default)]
pub struct Peers(Mutex<Vec<PeerSample>>);

impl Peers {
    /// Replaces the samples.
    pub fn set(&self, samples: Vec<PeerSample>) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = samples;
    }
}

/// One interface's peers, as the metrics show them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct InterfaceTotals {
    /// Peers with a handshake in the last [`ACTIVE_FOR_SECONDS`].
    recent: i64,
    /// Peers whose last handshake is older.
    stale: i64,
    /// Peers without a handshake yet.
    none: i64,
    /// Bytes received from all of them.
    rx_bytes: u64,
    /// Bytes sent to all of them.
    tx_bytes: u64,
}

/// The samples summed per interface, at `now` (Unix seconds).
fn totals(samples: &[PeerSample], now: i64) -> BTreeMap<&str, InterfaceTotals> {
    let mut out: BTreeMap<&str, InterfaceTotals> = BTreeMap::new();
    for s in samples {
        let t = out.entry(s.interface.as_str()).or_default();
        match s.last_handshake {
            Some(at) if now - at <= ACTIVE_FOR_SECONDS => t.recent += 1,
            Some(_) => t.stale += 1,
            None => t.none += 1,
        }
        t.rx_bytes = t.rx_bytes.saturating_add(s.rx_bytes);
        t.tx_bytes = t.tx_bytes.saturating_add(s.tx_bytes);
    }
    out
}

impl Collector for Peers {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let samples = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let totals = totals(&samples, clock::unix_seconds());
        let mut peers = encoder.encode_descriptor(
            "peers",
            "WireGuard peers of the interface by their last handshake: recent (in the last 180 s), stale (older), none (not yet)",
            None,
            MetricType::Gauge,
        )?;
        for (interface, t) in &totals {
            for (handshake, count) in [("recent", t.recent), ("stale", t.stale), ("none", t.none)] {
                let labels = [("interface", *interface), ("handshake", handshake)];
                ConstGauge::new(count).encode(peers.encode_family(&labels)?)?;
            }
        }
        let mut received = encoder.encode_descriptor(
            "peer_receive",
            "Bytes received from the interface's WireGuard peers (their sum: it drops when a peer leaves)",
            Some(&Unit::Bytes),
            MetricType::Counter,
        )?;
        for (interface, t) in &totals {
            ConstCounter::new(t.rx_bytes)
                .encode(received.encode_family(&[("interface", *interface)])?)?;
        }
        let mut sent = encoder.encode_descriptor(
            "peer_transmit",
            "Bytes sent to the interface's WireGuard peers (their sum: it drops when a peer leaves)",
            Some(&Unit::Bytes),
            MetricType::Counter,
        )?;
        for (interface, t) in &totals {
            ConstCounter::new(t.tx_bytes)
                .encode(sent.encode_family(&[("interface", *interface)])?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(interface: &str, peer: &str, handshake: Option<i64>, rx: u64) -> PeerSample {
        PeerSample {
            interface: interface.into(),
            peer: peer.into(),
            last_handshake: handshake,
            rx_bytes: rx,
            tx_bytes: 2 * rx,
        }
    }

    fn scrape(peers: Vec<PeerSample>) -> String {
        let (metrics, registry) = Metrics::new("userspace");
        metrics.peers.set(peers);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn peers_are_counted_per_interface_by_handshake_age() {
        let now = 1_000_000;
        let samples = [
            sample("ww-red", "node-b", Some(now - 5), 100),
            sample("ww-red", "node-c", Some(now - ACTIVE_FOR_SECONDS - 1), 10),
            sample("ww-red", "red/vm", None, 0),
            sample("ww-green", "node-b", Some(now), 7),
        ];
        let totals = totals(&samples, now);
        assert_eq!(
            totals["ww-red"],
            InterfaceTotals {
                recent: 1,
                stale: 1,
                none: 1,
                rx_bytes: 110,
                tx_bytes: 220
            }
        );
        assert_eq!(totals["ww-green"].recent, 1);
    }

    #[test]
    fn the_metrics_port_names_no_peer() {
        let now = clock::unix_seconds();
        let text = scrape(vec![
            sample("ww-red", "node-b", Some(now), 100),
            sample("ww-red", "other/intruder-vm", None, 0),
            sample(
                "ww-red",
                "dHEACKy9pHe/WJDy6Je75HLyxPWUcAOcyVFPe3AIlTg=",
                None,
                0,
            ),
        ]);
        for secret in ["node-b", "intruder", "dHEACKy9", "peer=\""] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(
            text.contains("wireway_agent_peers{interface=\"ww-red\",handshake=\"recent\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("wireway_agent_peers{interface=\"ww-red\",handshake=\"none\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("wireway_agent_peer_receive_bytes_total{interface=\"ww-red\"} 100"),
            "{text}"
        );
    }
}

//! The agent's Prometheus metrics, all prefixed `wireway_agent_`.
//!
//! Labels are few and fixed (an error's category, a pass's result), except the per-peer
//! metrics, labelled by interface and peer: one series per WireGuard peer of the node,
//! which is what an operator watches tunnels by.

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
        (metrics, registry)
    }

    /// Counts an error of `category`.
    pub fn error(&self, category: &'static str) {
        self.errors.get_or_create(&[("category", category)]).inc();
    }
}

/// One WireGuard peer's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSample {
    /// The service's WireGuard interface.
    pub interface: String,
    /// The peer: a node name or an external Endpoint (its public key if unknown).
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

impl Collector for Peers {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let samples = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let labels =
            |s: &PeerSample| [("interface", s.interface.clone()), ("peer", s.peer.clone())];
        let now = clock::unix_seconds();
        let mut ages = encoder.encode_descriptor(
            "peer_last_handshake_age",
            "Seconds since the last WireGuard handshake with the peer (absent before the first)",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        for s in samples.iter() {
            if let Some(at) = s.last_handshake {
                ConstGauge::new((now - at).max(0)).encode(ages.encode_family(&labels(s))?)?;
            }
        }
        let mut received = encoder.encode_descriptor(
            "peer_receive",
            "Bytes received from the WireGuard peer",
            Some(&Unit::Bytes),
            MetricType::Counter,
        )?;
        for s in samples.iter() {
            ConstCounter::new(s.rx_bytes).encode(received.encode_family(&labels(s))?)?;
        }
        let mut sent = encoder.encode_descriptor(
            "peer_transmit",
            "Bytes sent to the WireGuard peer",
            Some(&Unit::Bytes),
            MetricType::Counter,
        )?;
        for s in samples.iter() {
            ConstCounter::new(s.tx_bytes).encode(sent.encode_family(&labels(s))?)?;
        }
        Ok(())
    }
}

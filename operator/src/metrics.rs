//! The operator's Prometheus metrics, all prefixed `wireway_operator_`.
//!
//! Labels are few and fixed: an error's category, an object's kind, a node's rollout
//! state. Never a node or object name (that is what `/status` is for), never an error's
//! text.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// Categories of errors, the values of the `category` label.
pub mod category {
    /// A manifest file or object is not in effect (it does not parse or is invalid).
    pub const MANIFEST: &str = "manifest";
    /// An agent's hello or report was refused (identity, malformed values).
    pub const AGENT_REFUSED: &str = "agent_refused";
    /// A request for the status was refused (not an administrator, or no credentials).
    pub const STATUS_REFUSED: &str = "status_refused";
    /// The operator's state could not be saved, or did not parse and was set aside.
    pub const STORE: &str = "store";
    /// An agent's report was dropped: its node reports faster than the node API allows.
    pub const REPORT_THROTTLED: &str = "report_throttled";
    /// A status (or an invalid-spec condition) could not be written.
    pub const STATUS_WRITE: &str = "status_write";
    /// A finalizer could not be added or removed.
    pub const FINALIZER: &str = "finalizer";
    /// An event could not be published.
    pub const EVENT: &str = "event";
    /// A round of leader election failed.
    pub const LEADER_ELECTION: &str = "leader_election";
    /// A node's state was not sent: encoded, it exceeds the node API's limit.
    pub const STATE_TOO_LARGE: &str = "state_too_large";
}

/// A label set with one label.
type Label = [(&'static str, &'static str); 1];

/// The operator's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Plans made.
    pub plans: Counter,
    /// How long each plan took.
    pub plan_duration: Histogram,
    /// NodeStates sent to agents.
    pub pushes: Counter,
    /// Reports received from agents.
    pub reports: Counter,
    /// Agents with a stream open.
    pub agents_connected: Gauge,
    /// Nodes by rollout state: `current` (applied the state planned for it) or `behind`.
    pub nodes: Family<Label, Gauge>,
    /// The largest difference between a node's planned and applied version.
    pub version_lag_max: Gauge,
    /// Objects by kind.
    pub objects: Family<Label, Gauge>,
    /// Source problems now (files or objects not in effect).
    pub source_problems: Gauge,
    /// Errors by category.
    pub errors: Family<Label, Counter>,
}

impl Metrics {
    /// The metrics, registered in a new registry.
    pub fn new() -> (Self, Registry) {
        let metrics = Self {
            plans: Counter::default(),
            // 100 µs to ~3 s.
            plan_duration: Histogram::new(exponential_buckets(0.0001, 2.0, 15)),
            pushes: Counter::default(),
            reports: Counter::default(),
            agents_connected: Gauge::default(),
            nodes: Family::default(),
            version_lag_max: Gauge::default(),
            objects: Family::default(),
            source_problems: Gauge::default(),
            errors: Family::default(),
        };
        let mut registry = Registry::with_prefix("wireway_operator");
        registry.register("plans", "Plans made", metrics.plans.clone());
        registry.register_with_unit(
            "plan_duration",
            "Time to plan the changes of one batch",
            Unit::Seconds,
            metrics.plan_duration.clone(),
        );
        registry.register(
            "pushes",
            "NodeStates sent to agents",
            metrics.pushes.clone(),
        );
        registry.register(
            "reports",
            "Reports received from agents",
            metrics.reports.clone(),
        );
        registry.register(
            "agents_connected",
            "Agents with a stream open",
            metrics.agents_connected.clone(),
        );
        registry.register(
            "nodes",
            "Nodes by rollout state: current (applied what is planned for it) or behind",
            metrics.nodes.clone(),
        );
        registry.register(
            "version_lag_max",
            "Largest difference between a node's planned and applied NodeState version",
            metrics.version_lag_max.clone(),
        );
        registry.register(
            "objects",
            "Wireway objects by kind",
            metrics.objects.clone(),
        );
        registry.register(
            "source_problems",
            "Files or objects of the sources not in effect",
            metrics.source_problems.clone(),
        );
        registry.register("errors", "Errors by category", metrics.errors.clone());
        (metrics, registry)
    }

    /// Counts an error of `category`.
    pub fn error(&self, category: &'static str) {
        self.errors.get_or_create(&[("category", category)]).inc();
    }
}

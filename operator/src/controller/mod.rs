//! The Kubernetes glue: leader election, the status writer, events and agents' tokens.
//! Thin by design: what to write comes from the engine ([`Published`]) and the planner
//! (events); this module only talks to the API server, and only while leading.

pub mod auth;
pub mod events;
pub mod lease;
pub mod status;

use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use tokio::sync::{mpsc, watch};

use crate::engine::{Addressed, Hub, Leadership, Published};
use crate::metrics::Metrics;

/// Where the operator runs in the cluster.
#[derive(Debug, Clone)]
pub struct Config {
    /// Its namespace (the Lease's, and its agents' service account's).
    pub namespace: String,
    /// Its pod's name: its identity in the election and on its events.
    pub identity: String,
    /// How long the Lease holds without renewal.
    pub lease_duration: Duration,
}

/// Starts leader election, the status writer and the event publisher. Returns whether
/// this operator leads, as it changes.
///
/// Until it wins the election this operator is a standby, and the engine is told so
/// ([`Hub::set_leadership`]): a standby's statuses follow what the objects hold, and it
/// serves no agent.
pub fn start(
    client: Client,
    hub: &Arc<Hub>,
    events: mpsc::Receiver<Addressed>,
    config: Config,
    metrics: Metrics,
) -> watch::Receiver<bool> {
    let (elected, mut told) = watch::channel(Leadership::UNKNOWN);
    let (writes, leader) = watch::channel(false);
    hub.set_leadership(Leadership::UNKNOWN);
    let engine = hub.clone();
    tokio::spawn(async move {
        loop {
            let leadership = told.borrow_and_update().clone();
            // The writers are told first: a lost Lease stops their writes before anything.
            writes.send_replace(leadership.leading);
            engine.set_leadership(leadership);
            if told.changed().await.is_err() {
                return;
            }
        }
    });
    let election = lease::Election {
        namespace: config.namespace.clone(),
        lease: "wireway-operator".into(),
        identity: config.identity.clone(),
        duration: config.lease_duration,
    };
    tokio::spawn(election.run(client.clone(), elected, metrics.clone()));
    let published: watch::Receiver<Arc<Published>> = hub.subscribe_controller();
    let writer = status::StatusWriter::new(client.clone(), metrics.clone());
    tokio::spawn(writer.run(published, leader.clone()));
    tokio::spawn(events::run(
        client,
        Some(config.identity),
        events,
        leader.clone(),
        metrics,
    ));
    leader
}

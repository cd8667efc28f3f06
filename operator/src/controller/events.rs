//! Publishes the engine's events on the objects (kube-runtime's recorder), only while
//! this operator leads. Events are best effort: one that cannot be published is logged
//! and counted, never retried.

use kube::Client;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use tokio::sync::{mpsc, watch};
use wireway_runtime::errors::chain;

use crate::engine::Addressed;
use crate::kind::Kind;
use crate::metrics::{Metrics, category};
use crate::plan::events::Event;

/// The `action` of an event: what the operator did.
fn action(event: &Event) -> &'static str {
    match event.kind {
        Kind::Endpoint if event.reason != "Ready" && !event.reason.is_empty() => "Admit",
        _ => "Plan",
    }
}

/// Publishes events from `events` while `leader` is true; drops them otherwise (a
/// standby has nothing to say).
pub async fn run(
    client: Client,
    instance: Option<String>,
    mut events: mpsc::Receiver<Addressed>,
    leader: watch::Receiver<bool>,
    metrics: Metrics,
) {
    let reporter = Reporter {
        controller: super::status::FIELD_MANAGER.into(),
        instance,
    };
    let recorder = Recorder::new(client, reporter);
    while let Some((event, reference)) = events.recv().await {
        if !*leader.borrow() {
            continue;
        }
        let published = KubeEvent {
            type_: if event.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: event.reason.clone(),
            note: Some(event.note.clone()),
            action: action(&event).into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&published, &reference).await {
            metrics.error(category::EVENT);
            tracing::warn!(object = %event.key, reason = event.reason, error = %chain(&e), "event not published");
        }
    }
}

//! The status writer: puts the statuses in effect on the objects, adds and removes the
//! NetworkService finalizer, and marks objects that do not decode — only while this
//! operator leads.
//!
//! * Statuses go with server-side apply on the status subresource, one field manager
//!   (`wireway-operator`), and only when they differ from what the object holds.
//! * A failed write is retried by what failed (`category`): a vanished object is
//!   forgotten; a refused write (invalid, forbidden) waits until the status to write
//!   changes; anything else backs off per object, exponentially (1 s to 5 min), and a
//!   success resets it.
//! * An object that does not decode gets `Ready=False, InvalidSpec` by a merge patch of
//!   its conditions alone, so the allocations its status records are kept for when it is
//!   mended.
//! * Finalizer changes carry the resourceVersion they were computed from: they fail
//!   rather than overwrite another controller's change to the list.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;
use wireway_crds::FINALIZER;
use wireway_crds::conditions::{READY, reason};
use wireway_runtime::backoff::Backoff;
use wireway_runtime::errors::chain;

use crate::engine::{FinalizerAction, Published};
use crate::kind::Kind;
use crate::metrics::{Metrics, category};
use crate::plan::ObjectKey;
use crate::plan::status::condition_time;
use crate::source::kubernetes::resource;

/// The field manager of every write of the operator's.
pub const FIELD_MANAGER: &str = "wireway-operator";

/// How a failed write backs off: 1 s, doubling up to 5 min.
const BACKOFF: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));

/// A merge patch's parameters: under [`FIELD_MANAGER`] too (without one, the API server
/// books the fields to "unknown", and nobody can tell who set the finalizer).
fn merge_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    }
}

/// What a failed write means for retrying it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The object is gone: nothing to write.
    Gone,
    /// The API server refused the write itself (invalid, forbidden): the same write
    /// would fail again, so it waits until what to write changes.
    Refused,
    /// Anything else (conflicts, throttling, server errors, the network): retried with
    /// backoff.
    Transient,
}

/// Sorts an error for retrying.
pub fn failure(error: &kube::Error) -> Failure {
    match error {
        kube::Error::Api(status) => match status.code {
            404 => Failure::Gone,
            400 | 403 | 405 | 415 | 422 => Failure::Refused,
            _ => Failure::Transient,
        },
        _ => Failure::Transient,
    }
}

/// Which write: an object's status, its finalizers, or its invalid-spec condition.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Write {
    Status(Kind, ObjectKey),
    Finalizers(ObjectKey),
    Invalid(Kind, ObjectKey),
}

/// A write that failed: what it wrote, when it may be tried again (`None`: not until
/// what to write changes), and how the next failure backs off.
#[derive(Debug, Clone)]
struct Retry {
    body: Value,
    at: Option<Instant>,
    backoff: Backoff,
}

/// The writer's state.
pub struct StatusWriter {
    client: Client,
    metrics: Metrics,
    retries: BTreeMap<Write, Retry>,
    /// Invalid-spec conditions written, by object: the message.
    marked: BTreeMap<(Kind, ObjectKey), String>,
}

impl std::fmt::Debug for StatusWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusWriter")
            .field("retries", &self.retries)
            .field("marked", &self.marked)
            .finish_non_exhaustive()
    }
}

fn api(client: &Client, kind: Kind, key: &ObjectKey) -> Api<DynamicObject> {
    if kind.namespaced() {
        Api::namespaced_with(client.clone(), &key.namespace, &resource(kind))
    } else {
        Api::all_with(client.clone(), &resource(kind))
    }
}

impl StatusWriter {
    /// A writer through `client`.
    pub fn new(client: Client, metrics: Metrics) -> Self {
        Self {
            client,
            metrics,
            retries: BTreeMap::new(),
            marked: BTreeMap::new(),
        }
    }

    /// Writes while `leader` says this operator leads, whenever `published` changes or a
    /// retry is due, until either channel closes.
    pub async fn run(
        mut self,
        mut published: watch::Receiver<Arc<Published>>,
        mut leader: watch::Receiver<bool>,
    ) {
        loop {
            let next = if *leader.borrow_and_update() {
                let current = published.borrow_and_update().clone();
                self.sync(&current).await
            } else {
                // A standby writes nothing; a new leader starts from what objects hold.
                self.retries.clear();
                self.marked.clear();
                None
            };
            let wake = next.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                changed = published.changed() => if changed.is_err() { return },
                changed = leader.changed() => if changed.is_err() { return },
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// Makes one pass over everything published; returns when the next retry is due.
    pub async fn sync(&mut self, published: &Published) -> Option<Instant> {
        let p = published;
        for (key, desired) in &p.statuses.network_services {
            let live = p.live.network_services.get(key);
            self.status(Kind::NetworkService, key, desired, live).await;
        }
        for (key, desired) in &p.statuses.endpoints {
            self.status(Kind::Endpoint, key, desired, p.live.endpoints.get(key))
                .await;
        }
        for (key, desired) in &p.statuses.admissions {
            self.status(Kind::Admission, key, desired, p.live.admissions.get(key))
                .await;
        }
        for (key, desired) in &p.statuses.identity_grants {
            let live = p.live.identity_grants.get(key);
            self.status(Kind::IdentityGrant, key, desired, live).await;
        }
        for (key, desired) in &p.statuses.peer_clusters {
            let live = p.live.peer_clusters.get(key);
            self.status(Kind::PeerCluster, key, desired, live).await;
        }
        for action in &p.finalizers {
            self.finalizer(action).await;
        }
        for problem in &p.invalid {
            let Some(object) = &problem.object else {
                continue;
            };
            let kind = object.kind;
            let key = ObjectKey::new(&object.namespace, &object.name);
            if self.marked.get(&(kind, key.clone())) == Some(&problem.message) {
                continue;
            }
            let condition = json!({
                "type": READY,
                "status": "False",
                "reason": reason::INVALID_SPEC,
                "message": problem.message,
                "observedGeneration": object.generation,
                "lastTransitionTime": condition_time(Timestamp::now()),
            });
            let body = json!({"status": {"conditions": [condition], "observedGeneration": object.generation}});
            let write = Write::Invalid(kind, key.clone());
            let api = api(&self.client, kind, &key);
            let params = merge_params();
            if self
                .attempt(write, body, |body| async move {
                    api.patch_status(&key.name, &params, &Patch::Merge(body))
                        .await
                })
                .await
            {
                let key = ObjectKey::new(&object.namespace, &object.name);
                self.marked.insert((kind, key), problem.message.clone());
            }
        }
        // Objects that decode again are no longer marked.
        self.marked.retain(|(kind, key), _| {
            p.invalid.iter().any(|i| {
                i.object.as_ref().is_some_and(|o| {
                    o.kind == *kind && o.namespace == key.namespace && o.name == key.name
                })
            })
        });
        self.retries.values().filter_map(|r| r.at).min()
    }

    /// Applies `desired` to an object's status unless the object holds it already.
    async fn status<S: Serialize + PartialEq>(
        &mut self,
        kind: Kind,
        key: &ObjectKey,
        desired: &S,
        live: Option<&S>,
    ) {
        let write = Write::Status(kind, key.clone());
        if live == Some(desired) {
            self.retries.remove(&write);
            return;
        }
        let body = json!({
            "apiVersion": kind.api_version(),
            "kind": kind.name(),
            "status": desired,
        });
        let api = api(&self.client, kind, key);
        let name = key.name.clone();
        let params = PatchParams::apply(FIELD_MANAGER).force();
        self.attempt(write, body, |body| async move {
            api.patch_status(&name, &params, &Patch::Apply(body)).await
        })
        .await;
    }

    /// Adds or removes the operator's finalizer on a NetworkService.
    async fn finalizer(&mut self, action: &FinalizerAction) {
        let mut finalizers: Vec<String> = action
            .current
            .iter()
            .filter(|f| *f != FINALIZER)
            .cloned()
            .collect();
        if action.add {
            finalizers.push(FINALIZER.to_owned());
        }
        let body = json!({
            "metadata": {"finalizers": finalizers, "resourceVersion": action.resource_version},
        });
        let api = api(&self.client, Kind::NetworkService, &action.key);
        let name = action.key.name.clone();
        let write = Write::Finalizers(action.key.clone());
        self.attempt(write, body, |body| async move {
            api.patch(&name, &merge_params(), &Patch::Merge(body)).await
        })
        .await;
    }

    /// Tries a write unless it waits for a retry; books the outcome. True on success.
    /// Each write that is tried is a span (`write`: which one).
    #[tracing::instrument(name = "write", skip(self, body, send))]
    async fn attempt<F, Fut>(&mut self, write: Write, body: Value, send: F) -> bool
    where
        F: FnOnce(Value) -> Fut,
        Fut: Future<Output = Result<DynamicObject, kube::Error>>,
    {
        let now = Instant::now();
        if let Some(retry) = self.retries.get(&write)
            && retry.body == body
            && retry.at.is_none_or(|at| at > now)
        {
            return false;
        }
        match send(body.clone()).await {
            Ok(_) => {
                tracing::debug!("written");
                self.retries.remove(&write);
                true
            }
            Err(e) => {
                let what = match &write {
                    Write::Finalizers(_) => category::FINALIZER,
                    _ => category::STATUS_WRITE,
                };
                self.metrics.error(what);
                let failure = failure(&e);
                tracing::warn!(write = ?write, ?failure, error = %chain(&e), "write failed");
                match failure {
                    Failure::Gone => {
                        self.retries.remove(&write);
                    }
                    Failure::Refused | Failure::Transient => {
                        // Both count as a failure; a refusal starts the backoff over, and
                        // waits for a new body rather than for the delay.
                        let mut backoff = match (failure, self.retries.get(&write)) {
                            (Failure::Transient, Some(retry)) => retry.backoff,
                            _ => BACKOFF,
                        };
                        let delay = backoff.fail();
                        let at = (failure == Failure::Transient).then(|| now + delay);
                        self.retries.insert(write, Retry { body, at, backoff });
                    }
                }
                false
            }
        }
    }
}

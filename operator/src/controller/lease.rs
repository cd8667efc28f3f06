//! Leader election on a `coordination.k8s.io` Lease: one operator writes statuses,
//! events and finalizers and serves agents; the others plan, write nothing and send
//! agents away.
//!
//! The leader renews the Lease every `renew` (a third of its duration); a standby takes
//! it over once it has not been renewed for its duration. Every write is a `replace`
//! carrying the resourceVersion that was read, so two candidates can never both win.
//! A leader that fails to renew before the Lease would expire steps down first.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use tokio::sync::watch;
use wireway_runtime::errors::chain;

use crate::engine::Leadership;
use crate::metrics::{Metrics, category};

/// Who runs for leader, and on which Lease.
#[derive(Debug, Clone)]
pub struct Election {
    /// The Lease's namespace (the operator's own).
    pub namespace: String,
    /// The Lease's name.
    pub lease: String,
    /// This candidate (its pod's name).
    pub identity: String,
    /// How long a Lease holds without renewal.
    pub duration: Duration,
}

/// What one round of the election found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Round {
    /// This candidate holds the Lease; `epoch` is its term (see [`epoch`]).
    Leader {
        /// The Lease's acquireTime in microseconds since the Unix epoch.
        epoch: u64,
    },
    /// Another does, and it is fresh: `holder` names it.
    Standby {
        /// The Lease's holder.
        holder: Option<String>,
    },
}

fn micro(t: Timestamp) -> MicroTime {
    MicroTime(t)
}

/// A holder's term: the Lease's acquireTime (as stored) in microseconds since the Unix
/// epoch. Every replica reads the same one, and it grows with every takeover: a standby
/// takes over only once the Lease's renewTime is a duration behind its own clock, so its
/// acquireTime is later than the previous holder's (a Lease deleted and made again
/// keeps that too, as its leaseTransitions would not).
pub fn epoch(lease: &Lease) -> u64 {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.acquire_time.as_ref())
        .map_or(0, |t| u64::try_from(t.0.as_microsecond()).unwrap_or(0))
}

impl Election {
    fn seconds(&self) -> i32 {
        i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX)
    }

    fn spec(&self, now: Timestamp, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.seconds()),
            acquire_time: Some(acquired.unwrap_or_else(|| micro(now))),
            renew_time: Some(micro(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// One round: take, renew or respect the Lease.
    pub async fn round(&self, api: &Api<Lease>, now: Timestamp) -> Result<Round, kube::Error> {
        let Some(mut lease) = api.get_opt(&self.lease).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.lease.clone()),
                    namespace: Some(self.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(now, None, 0)),
            };
            let created = api.create(&PostParams::default(), &lease).await?;
            return Ok(Round::Leader {
                epoch: epoch(&created),
            });
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let mine = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        let duration = i64::from(
            spec.lease_duration_seconds
                .unwrap_or_else(|| self.seconds()),
        );
        let expired = spec
            .renew_time
            .as_ref()
            .is_none_or(|renewed| renewed.0 + SignedDuration::from_secs(duration) < now);
        if !mine && !expired {
            return Ok(Round::Standby {
                holder: spec.holder_identity,
            });
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
        let acquired = if mine { spec.acquire_time } else { None };
        lease.spec = Some(self.spec(now, acquired, transitions));
        // The resourceVersion read above makes this a compare-and-swap.
        let stored = api
            .replace(&lease.name_any(), &PostParams::default(), &lease)
            .await?;
        Ok(Round::Leader {
            epoch: epoch(&stored),
        })
    }

    /// Runs the election until `leader` has no receivers, telling it who leads.
    pub async fn run(self, client: Client, leader: watch::Sender<Leadership>, metrics: Metrics) {
        let api: Api<Lease> = Api::namespaced(client, &self.namespace);
        let renew = self.duration / 3;
        let mut last_renewed: Option<tokio::time::Instant> = None;
        loop {
            let outcome = self.round(&api, Timestamp::now()).await;
            let now = match outcome {
                Ok(Round::Leader { epoch }) => {
                    last_renewed = Some(tokio::time::Instant::now());
                    Leadership {
                        leading: true,
                        leader: Some(self.identity.clone()),
                        epoch,
                    }
                }
                Ok(Round::Standby { holder }) => Leadership {
                    leader: holder,
                    ..Leadership::UNKNOWN
                },
                Err(e) => {
                    // A conflict means someone else wrote first; anything else: keep
                    // leading only while the Lease we hold is surely still ours.
                    metrics.error(category::LEADER_ELECTION);
                    tracing::warn!(error = %chain(&e), "leader election round failed");
                    let before = leader.borrow().clone();
                    if before.leading
                        && last_renewed.is_some_and(|t| t.elapsed() < self.duration - renew)
                    {
                        before
                    } else if before.leading {
                        Leadership::UNKNOWN
                    } else {
                        before
                    }
                }
            };
            if now.leading != leader.borrow().leading {
                tracing::info!(
                    identity = self.identity,
                    leader = now.leading,
                    "leadership changed"
                );
            }
            if leader.send(now).is_err() {
                return;
            }
            tokio::time::sleep(renew).await;
        }
    }
}

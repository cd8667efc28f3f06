//! The kernel side: read back what the agent owns and apply the converger's operations,
//! behind one trait, [`Dataplane`], so the agent's pass runs the same against the real
//! kernel ([`kernel::Kernel`]: netlink and a WireGuard backend) and, in tests without
//! root, against a fake kernel held in memory (`fake`).
//!
//! Every read goes to the kernel, never to a cache: the kernel drops routes when links
//! change, and people run `ip` and `wg` by hand.

#[cfg(any(test, feature = "testing"))]
pub mod fake;
pub mod kernel;
pub mod netlink;
pub mod netns;
pub mod nftables;
pub mod pods;
pub mod wireguard;

use std::collections::BTreeSet;
use std::future::Future;

use crate::converge::{Op, Plane};
use netlink::NetlinkError;
use netns::Namespaces;
use nftables::NftError;
use wireguard::{PeerChange, PeerStats, WireGuardError};

/// Why applying an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A netlink request failed.
    #[error("failed to {action}")]
    Netlink {
        /// What was being done.
        action: String,
        /// The cause.
        #[source]
        source: NetlinkError,
    },
    /// WireGuard refused.
    #[error("failed to {action}")]
    WireGuard {
        /// What was being done.
        action: String,
        /// The cause.
        #[source]
        source: WireGuardError,
    },
    /// A link the operation needs is not there.
    #[error("failed to {action}: link {link} is missing")]
    Missing {
        /// What was being done.
        action: String,
        /// The link.
        link: String,
    },
    /// An interface of the name the operation needs is there but is not the agent's (not
    /// the peer of its veth): it is left alone.
    #[error("failed to {action}: the interface {link} there is not the agent's, and is left alone")]
    Foreign {
        /// What was being done.
        action: String,
        /// The interface.
        link: String,
    },
    /// `nft` refused or could not be run.
    #[error("failed to {action}")]
    Firewall {
        /// What was being done.
        action: String,
        /// The cause.
        #[source]
        source: NftError,
    },
    /// A file (namespace, sysctl) could not be used.
    #[error("failed to {action}")]
    Io {
        /// What was being done.
        action: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl ApplyError {
    /// A fixed category for metrics and reports.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Netlink { .. } | Self::Missing { .. } | Self::Foreign { .. } => "netlink",
            Self::WireGuard { .. } => "wireguard",
            Self::Firewall { .. } => "nftables",
            Self::Io { .. } => "system",
        }
    }
}

/// A node's data plane as the agent's pass sees it: read what the agent owns, apply
/// operations. Implemented by the kernel, and by a fake kernel for tests.
pub trait Dataplane: Send + Sync {
    /// The WireGuard backend in use, for reports and metrics: `kernel`, `userspace`.
    fn backend(&self) -> &'static str;

    /// Writes made so far (netlink's; WireGuard configuration is not counted): a pass
    /// in sync makes none.
    fn writes(&self) -> u64;

    /// What the data plane holds of the agent's objects. Workload sides are looked up in
    /// the namespaces `desired` names for them, as opened for this pass (`namespaces`).
    fn observe(
        &self,
        desired: &Plane,
        namespaces: &Namespaces,
    ) -> impl Future<Output = Result<Plane, ApplyError>> + Send;

    /// Every peer of every WireGuard interface of the agent's, with its health:
    /// (interface, public key, stats).
    fn peer_stats(
        &self,
    ) -> impl Future<Output = Result<Vec<(String, String, PeerStats)>, ApplyError>> + Send;

    /// Applies one operation; a workload's namespace is reached through `namespaces`
    /// only. ([`Dataplane::apply`] sends peer changes to [`Dataplane::configure_peers`]
    /// instead, batched.)
    fn apply_op(
        &self,
        op: &Op,
        namespaces: &Namespaces,
    ) -> impl Future<Output = Result<(), ApplyError>> + Send;

    /// Adds, updates (in place) and removes peers of one interface, in one transaction.
    fn configure_peers(
        &self,
        interface: &str,
        changes: &[PeerChange<'_>],
    ) -> impl Future<Output = Result<(), WireGuardError>> + Send;

    /// Applies operations in order. A failed operation is reported and the next ones are
    /// still tried: what does not depend on it still converges. What does depend on it is
    /// not tried (its failure says enough): the changes of a link whose creation failed,
    /// and every new link when the nftables table could not be made (no gate opens
    /// without its fence). Consecutive peer changes of one interface go to the device as one
    /// transaction (a node with a thousand peers is configured in one exchange, not a
    /// thousand).
    fn apply(
        &self,
        ops: &[Op],
        namespaces: &Namespaces,
    ) -> impl Future<Output = Vec<ApplyError>> + Send {
        async move {
            let mut errors = Vec::new();
            let mut failed = Failed::default();
            for step in steps(ops) {
                if failed.needed_by(&step) {
                    continue;
                }
                let result = match &step {
                    Step::Peers { interface, changes } => self
                        .configure_peers(interface, changes)
                        .await
                        .map_err(|source| ApplyError::WireGuard {
                            action: format!("configure {} peers of {interface}", changes.len()),
                            source,
                        }),
                    Step::One(op) => self.apply_op(op, namespaces).await,
                };
                if let Err(e) = result {
                    failed.record(&step);
                    errors.push(e);
                }
            }
            errors
        }
    }
}

/// What failed so far in a [`Dataplane::apply`], for the operations that need it.
#[derive(Debug, Default)]
struct Failed {
    /// The nftables table could not be made.
    firewall: bool,
    /// Links that could not be created.
    links: BTreeSet<String>,
}

impl Failed {
    fn record(&mut self, step: &Step<'_>) {
        let Step::One(op) = step else { return };
        self.firewall |= matches!(op, Op::ReplaceFirewall { .. });
        if let Some(link) = op.creates() {
            self.links.insert(link.to_owned());
        }
    }

    /// Whether `step` needs what failed.
    fn needed_by(&self, step: &Step<'_>) -> bool {
        match step {
            Step::One(op) if op.creates().is_some() => self.firewall,
            Step::One(op) => op.link().is_some_and(|l| self.links.contains(l)),
            Step::Peers { interface, .. } => self.links.contains(*interface),
        }
    }
}

/// One step of applying: an operation, or a run of peer changes of one interface.
#[derive(Debug)]
enum Step<'a> {
    One(&'a Op),
    Peers {
        interface: &'a str,
        changes: Vec<PeerChange<'a>>,
    },
}

/// `ops` in steps: each run of consecutive peer changes of one interface is one step.
fn steps(ops: &[Op]) -> Vec<Step<'_>> {
    let mut steps: Vec<Step<'_>> = Vec::new();
    for op in ops {
        match (peer_change(op), steps.last_mut()) {
            (
                Some((interface, change)),
                Some(Step::Peers {
                    interface: run,
                    changes,
                }),
            ) if *run == interface => {
                changes.push(change);
            }
            (Some((interface, change)), _) => steps.push(Step::Peers {
                interface,
                changes: vec![change],
            }),
            (None, _) => steps.push(Step::One(op)),
        }
    }
    steps
}

/// The peer change an operation is, with its interface; `None` for other operations.
fn peer_change(op: &Op) -> Option<(&str, PeerChange<'_>)> {
    match op {
        Op::SetPeer {
            interface,
            public_key,
            peer,
            replace_allowed_ips,
        } => Some((
            interface,
            PeerChange {
                public_key,
                peer: Some(peer),
                replace_allowed_ips: *replace_allowed_ips,
            },
        )),
        Op::RemovePeer {
            interface,
            public_key,
        } => Some((
            interface,
            PeerChange {
                public_key,
                peer: None,
                replace_allowed_ips: false,
            },
        )),
        _ => None,
    }
}

//! Peer endpoints given by host name, looked up off the converge path.
//!
//! A pass only reads what is known ([`Resolver::endpoints`]) and never waits for a lookup:
//! a name it asks for that is not followed yet starts being looked up in the background,
//! and its peer is set without an endpoint meanwhile (it can still dial in to this node).
//! Each followed name is looked up again [`Limits::refresh`] after an answer, and after a
//! failure when [`Limits::retry`] says, so a name that never resolves costs a lookup now
//! and then, never a pass.
//!
//! Guarantees:
//! * at most [`Limits::concurrent`] lookups run at once. A lookup is given up after
//!   [`Limits::timeout`], but keeps its place until it really ends: the system's
//!   resolver cannot be cancelled, and the bound is also one on the threads it holds;
//! * a name's last good address is kept until a new one arrives: a failed lookup changes
//!   nothing a pass sees;
//! * a name whose address changes (its first one included) wakes [`Resolver::changed`]:
//!   one wake-up for any number of changes until it is awaited;
//! * a name that a pass no longer asks for is forgotten and no longer looked up.
//!
//! The system's resolver (getaddrinfo: `/etc/hosts`, nsswitch and `resolv.conf`, as for
//! every program on the node) does not say how long an answer is valid, so answers are
//! refreshed at a fixed interval rather than by their TTL (`docs/agent.md`).

use std::collections::{BTreeMap, BTreeSet, btree_map};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio::task::AbortHandle;
use wireway_runtime::backoff::Backoff;

/// One lookup's answer, to come: the address of a name, `None` if it has none.
pub type Answer = Pin<Box<dyn Future<Output = io::Result<Option<SocketAddr>>> + Send>>;

/// How a `host:port` is looked up: [`System`], or in tests a resolver the test answers.
pub trait Resolve: Send + Sync + 'static {
    /// Looks `host_port` up.
    fn resolve(&self, host_port: &str) -> Answer;
}

/// The system's resolver (getaddrinfo, on tokio's blocking threads); the first address it
/// gives (in the order of RFC 6724, as getaddrinfo sorts them).
#[derive(Debug, Clone, Copy)]
pub struct System;

impl Resolve for System {
    fn resolve(&self, host_port: &str) -> Answer {
        let host_port = host_port.to_owned();
        Box::pin(async move { Ok(tokio::net::lookup_host(host_port).await?.next()) })
    }
}

/// How many lookups, how long, how often.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Lookups running at once.
    pub concurrent: usize,
    /// How long a lookup may take before it counts as failed.
    pub timeout: Duration,
    /// How long an answer is used before the name is looked up again.
    pub refresh: Duration,
    /// Waits before a failed name is looked up again.
    pub retry: Backoff,
}

impl Default for Limits {
    /// 8 lookups at once, 2 s each; answers refreshed every 60 s; failures retried from
    /// 1 s, doubling, up to 5 min.
    fn default() -> Self {
        Self {
            concurrent: 8,
            timeout: Duration::from_secs(2),
            refresh: Duration::from_secs(60),
            retry: Backoff::new(Duration::from_secs(1), Duration::from_secs(300)),
        }
    }
}

/// The names the passes ask for, followed in the background. Clones share them.
#[derive(Clone)]
pub struct Resolver {
    shared: Arc<Shared>,
}

struct Shared {
    resolve: Box<dyn Resolve>,
    limits: Limits,
    permits: Arc<Semaphore>,
    followed: Mutex<BTreeMap<String, Followed>>,
    /// An address changed: a pass is due.
    changed: Notify,
    /// A lookup ended, for [`Resolver::answered`].
    answered: Notify,
}

/// A name being followed: what is known, and the task that looks it up.
struct Followed {
    /// The last good address.
    address: Option<SocketAddr>,
    /// Whether a lookup of it has ended yet (with an address or not).
    answered: bool,
    task: AbortHandle,
}

impl Drop for Followed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("limits", &self.shared.limits)
            .field("followed", &lock(&self.shared.followed).len())
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Resolver {
    /// A resolver that looks names up with `resolve`, within `limits`.
    pub fn new(resolve: impl Resolve, limits: Limits) -> Self {
        Self {
            shared: Arc::new(Shared {
                resolve: Box::new(resolve),
                limits,
                permits: Arc::new(Semaphore::new(limits.concurrent)),
                followed: Mutex::default(),
                changed: Notify::new(),
                answered: Notify::new(),
            }),
        }
    }

    /// The addresses known now of `names` (`host:port`), without waiting. Names not
    /// followed yet start being looked up (in tasks of the calling runtime); followed
    /// names not among `names` are forgotten.
    pub fn endpoints(&self, names: &BTreeSet<String>) -> BTreeMap<String, SocketAddr> {
        let mut followed = lock(&self.shared.followed);
        followed.retain(|name, _| names.contains(name));
        let mut known = BTreeMap::new();
        for name in names {
            match followed.entry(name.clone()) {
                btree_map::Entry::Occupied(entry) => {
                    if let Some(address) = entry.get().address {
                        known.insert(name.clone(), address);
                    }
                }
                btree_map::Entry::Vacant(entry) => {
                    let task = tokio::spawn(follow(Arc::downgrade(&self.shared), name.clone()));
                    entry.insert(Followed {
                        address: None,
                        answered: false,
                        task: task.abort_handle(),
                    });
                }
            }
        }
        known
    }

    /// Completes when an address has changed since it last completed (at once if one
    /// has): a pass then sets the new one.
    pub async fn changed(&self) {
        self.shared.changed.notified().await;
    }

    /// Follows `names` and waits until each has had an answer, an address or a failure
    /// (at most [`Limits::timeout`] per lookup): for a single pass, which has no later
    /// one to set an endpoint that arrives.
    pub async fn answered(&self, names: &BTreeSet<String>) {
        self.endpoints(names);
        loop {
            let answered = self.shared.answered.notified();
            tokio::pin!(answered);
            // Registered before looking, so an answer in between is not missed.
            answered.as_mut().enable();
            let all = {
                let followed = lock(&self.shared.followed);
                names
                    .iter()
                    .all(|name| followed.get(name).is_none_or(|f| f.answered))
            };
            if all {
                return;
            }
            answered.await;
        }
    }
}

/// Looks `name` up, again and again, while the resolver lives (the task is aborted when
/// the name is forgotten).
async fn follow(shared: Weak<Shared>, name: String) {
    let Some(mut retry) = shared.upgrade().map(|s| s.limits.retry) else {
        return;
    };
    loop {
        // Held only during a lookup, so a resolver that is dropped ends its tasks.
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let wait = match shared.look_up(&name).await {
            Ok(Some(address)) => {
                retry.reset();
                shared.record(&name, Some(address));
                shared.limits.refresh
            }
            answer => {
                let wait = retry.fail();
                match answer {
                    Err(e) => tracing::debug!(name, error = %e, retry_in = ?wait, "lookup failed"),
                    _ => tracing::debug!(name, retry_in = ?wait, "the name has no address"),
                }
                shared.record(&name, None);
                wait
            }
        };
        drop(shared);
        tokio::time::sleep(wait).await;
    }
}

impl Shared {
    /// One lookup of `name`, within the limits.
    async fn look_up(&self, name: &str) -> io::Result<Option<SocketAddr>> {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(io::Error::other)?;
        let answer = self.resolve.resolve(name);
        // The lookup holds its place to its end, even once given up on.
        let lookup = tokio::spawn(async move {
            let answer = answer.await;
            drop(permit);
            answer
        });
        match tokio::time::timeout(self.limits.timeout, lookup).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(join)) => Err(io::Error::other(join)),
            Err(_) => Err(io::ErrorKind::TimedOut.into()),
        }
    }

    /// Keeps what a lookup of `name` gave (an address, or `None` for a failure, which
    /// keeps the last good address).
    fn record(&self, name: &str, address: Option<SocketAddr>) {
        let mut followed = lock(&self.followed);
        // Forgotten meanwhile: nobody asks for it any more.
        let Some(entry) = followed.get_mut(name) else {
            return;
        };
        entry.answered = true;
        if let Some(address) = address
            && entry.address != Some(address)
        {
            entry.address = Some(address);
            self.changed.notify_one();
        }
        drop(followed);
        self.answered.notify_waiters();
    }
}

#[cfg(test)]
mod tests;

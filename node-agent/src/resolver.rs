//! Peer endpoints given by host name, looked up off the converge path.
//!
//! A pass only reads what is known ([`Resolver::endpoints`]) and never waits for a lookup:
//! a name it asks for that is not followed yet starts being looked up in the background,
//! and its peer is set without an endpoint meanwhile (it can still dial in to this node).
//! Each followed name is looked up again when its answer expires (its DNS TTL, within
//! [`Limits::shortest_refresh`] and [`Limits::refresh`]; an answer without one, from
//! `/etc/hosts`, is used [`Limits::refresh`]), and after a failure when [`Limits::retry`]
//! says, so a name that never resolves costs a lookup now and then, never a pass.
//!
//! Guarantees:
//! * at most [`Limits::concurrent`] lookups run at once. A lookup is given up after
//!   [`Limits::timeout`], but keeps its place until it really ends, so the bound is also
//!   one on what lookups hold;
//! * a name's last good address is kept until a new one arrives: a failed lookup changes
//!   nothing a pass sees;
//! * a name whose address changes (its first one included) wakes [`Resolver::changed`]:
//!   one wake-up for any number of changes until it is awaited;
//! * a name that a pass no longer asks for is forgotten and no longer looked up.
//!
//! [`System`] asks as every program on the node would through `/etc/resolv.conf` (name
//! servers, search domains, `ndots`) and `/etc/hosts`, but with DNS itself rather than
//! getaddrinfo, which does not say how long an answer is valid (`docs/agent.md`).

use std::collections::{BTreeMap, BTreeSet, btree_map};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::{ResolverBuilder, TokioResolver};
use tokio::sync::{Notify, Semaphore};
use tokio::task::AbortHandle;
use wireway_runtime::backoff::Backoff;

/// What a lookup found: an address, and how long the answer is valid when the resolver
/// says (a DNS answer's TTL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// The address.
    pub address: SocketAddr,
    /// How long it may be used before the name is looked up again; `None`: not said.
    pub valid_for: Option<Duration>,
}

/// One lookup's answer, to come: what a name has, `None` if it has no address.
pub type Answer = Pin<Box<dyn Future<Output = io::Result<Option<Found>>> + Send>>;

/// How a `host:port` is looked up: [`System`], or in tests a resolver the test answers.
pub trait Resolve: Send + Sync + 'static {
    /// Looks `host_port` up.
    fn resolve(&self, host_port: &str) -> Answer;
}

/// The node's resolver configuration, asked with DNS: `/etc/resolv.conf` (its name
/// servers, search domains and options) and `/etc/hosts`, as for every program on the
/// node, but with each answer's TTL, which getaddrinfo does not give. The first address
/// of the answer is taken. Where `/etc/resolv.conf` cannot be read, getaddrinfo (answers
/// then have no TTL).
#[derive(Clone)]
pub struct System {
    dns: Option<TokioResolver>,
}

impl std::fmt::Debug for System {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.dns.is_some() {
            "System(DNS)"
        } else {
            "System(getaddrinfo)"
        })
    }
}

impl System {
    /// The node's configuration, read now.
    pub fn configured() -> Self {
        let dns = TokioResolver::builder_tokio().and_then(ResolverBuilder::build);
        if let Err(e) = &dns {
            tracing::warn!(
                error = %e,
                "cannot use /etc/resolv.conf; peers' host names are looked up with getaddrinfo, \
                 refreshed every interval rather than by their TTL"
            );
        }
        Self { dns: dns.ok() }
    }

    /// Asking the name servers at `servers` (UDP), no search domains, no hosts file.
    pub fn with_name_servers(servers: &[SocketAddr]) -> io::Result<Self> {
        let name_servers = servers
            .iter()
            .map(|server| {
                let mut udp = ConnectionConfig::udp();
                udp.port = server.port();
                NameServerConfig::new(server.ip(), true, vec![udp])
            })
            .collect();
        let mut builder = TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(name_servers),
            TokioRuntimeProvider::default(),
        );
        builder.options_mut().use_hosts_file = ResolveHosts::Never;
        let dns = builder.build().map_err(io::Error::other)?;
        Ok(Self { dns: Some(dns) })
    }
}

impl Resolve for System {
    fn resolve(&self, host_port: &str) -> Answer {
        let host_port = host_port.to_owned();
        let dns = self.dns.clone();
        Box::pin(async move {
            if let Ok(address) = host_port.parse() {
                return Ok(Some(Found {
                    address,
                    valid_for: None,
                }));
            }
            let Some(dns) = dns else {
                let address = tokio::net::lookup_host(host_port).await?.next();
                return Ok(address.map(|address| Found {
                    address,
                    valid_for: None,
                }));
            };
            let (host, port) = host_port
                .rsplit_once(':')
                .and_then(|(host, port)| Some((host, port.parse().ok()?)))
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not HOST:PORT"))?;
            match dns.lookup_ip(host).await {
                Ok(lookup) => Ok(lookup.iter().next().map(|ip| Found {
                    address: SocketAddr::new(ip, port),
                    valid_for: Some(
                        lookup
                            .valid_until()
                            .saturating_duration_since(Instant::now()),
                    ),
                })),
                Err(e) if e.is_no_records_found() => Ok(None),
                Err(e) => Err(io::Error::other(e)),
            }
        })
    }
}

/// How many lookups, how long, how often.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Lookups running at once.
    pub concurrent: usize,
    /// How long a lookup may take before it counts as failed.
    pub timeout: Duration,
    /// How long an answer is used before the name is looked up again, at most: an
    /// answer valid for longer (its TTL) is looked up again after this, one without a TTL
    /// (`/etc/hosts`) too.
    pub refresh: Duration,
    /// How long an answer is used at least: one valid for less (TTL 0 included) is used
    /// this long, so a short TTL is no lookup loop.
    pub shortest_refresh: Duration,
    /// Waits before a failed name is looked up again.
    pub retry: Backoff,
}

impl Default for Limits {
    /// 8 lookups at once, 2 s each; answers used for their TTL, from 5 s to 60 s;
    /// failures retried from 1 s, doubling, up to 5 min.
    fn default() -> Self {
        Self {
            concurrent: 8,
            timeout: Duration::from_secs(2),
            refresh: Duration::from_secs(60),
            shortest_refresh: Duration::from_secs(5),
            retry: Backoff::new(Duration::from_secs(1), Duration::from_secs(300)),
        }
    }
}

impl Limits {
    /// How long what `found` says is used before the name is looked up again.
    fn reuse(&self, found: &Found) -> Duration {
        found.valid_for.map_or(self.refresh, |ttl| {
            ttl.max(self.shortest_refresh).min(self.refresh)
        })
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
            Ok(Some(found)) => {
                retry.reset();
                shared.record(&name, Some(found.address));
                shared.limits.reuse(&found)
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
    async fn look_up(&self, name: &str) -> io::Result<Option<Found>> {
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

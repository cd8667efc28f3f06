//! The manifest-directory source: the World from YAML files instead of an API server.
//!
//! It reads the Wireway kinds (IdentityGrants and PeerClusters, cluster-scoped, included) and the core/v1
//! objects that describe where workloads run: `Namespace` (labels, for Admission
//! namespace selectors), `Node` (its pod ranges and addresses too), `Pod` (labels, service
//! account, node, and the network namespace in the `wireway.dev/netns` annotation, or its
//! UID when something else finds it) and `Binding` (a pod's node, as a scheduler records
//! it); and networking.k8s.io/v1 `ServiceCIDR` (Service ranges no service may overlap).
//! Other kinds are skipped, so the manifests a user applies to a cluster work unchanged.
//!
//! Guarantees:
//! * an object is accepted only if a cluster would accept it: Wireway objects pass the
//!   CRDs' schema and CEL rules, transition rules included (against the object as last
//!   accepted);
//! * a file that does not parse, or holds an object a cluster would refuse, is reported by
//!   file and line, and its last good content stays in effect; other files are
//!   unaffected;
//! * only what differs from the last scan is delivered as a change.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1 as core;
use serde_json::Value;
use tokio::sync::mpsc;
use wireway_crds::manifest::{documents, yaml_files};
use wireway_crds::validation::{SchemaError, Validator};
use wireway_crds::{API_VERSION, Admission, Endpoint, IdentityGrant, NetworkService, PeerCluster};

pub use super::items::pod_uid;
use super::items::{self, Item, Key, diff};
use super::{Event, Problem};
use crate::kind::Kind;
use crate::plan::{Change, Namespace, Node, ObjectKey, Pod, ServiceCidr};

/// The namespace of an object that names none, as `kubectl apply` would use it.
const DEFAULT_NAMESPACE: &str = "default";

/// How long the watcher waits for a burst of file events to end before it reads.
const SETTLE: Duration = Duration::from_millis(5);
/// The longest it lets a stream of events delay a read.
const SETTLE_AT_MOST: Duration = Duration::from_millis(50);
/// How often it reads everything even without events (a safety net for missed events).
const RESCAN_EVERY: Duration = Duration::from_secs(10);

/// A kind the source reads: one the operator reads anywhere, or a Binding (a pod's node,
/// as a scheduler records it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Known {
    Kind(Kind),
    Binding,
}

impl Known {
    /// The kind of a document's `apiVersion` and `kind`, if the source reads it.
    fn of(api_version: &str, kind: &str) -> Option<Self> {
        match (api_version, kind) {
            ("v1", "Binding") => Some(Known::Binding),
            _ => Kind::of(api_version, kind).map(Known::Kind),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Known::Kind(kind) => kind.name(),
            Known::Binding => "Binding",
        }
    }

    fn namespaced(self) -> bool {
        match self {
            Known::Kind(kind) => kind.namespaced(),
            Known::Binding => true,
        }
    }
}

/// Which object: kind, namespace (empty for cluster-scoped kinds) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ObjectId {
    kind: Known,
    namespace: String,
    name: String,
}

impl ObjectId {
    fn describe(&self) -> String {
        if self.namespace.is_empty() {
            format!("{} {}", self.kind.name(), self.name)
        } else {
            format!("{} {}/{}", self.kind.name(), self.namespace, self.name)
        }
    }
}

/// An object the source understands.
#[derive(Debug, Clone, PartialEq)]
enum Object {
    Namespace(Namespace),
    Node(Node),
    Pod(Pod),
    /// A pod's node, as a scheduler records it.
    Binding(String),
    NetworkService(NetworkService),
    Endpoint(Endpoint),
    Admission(Admission),
    IdentityGrant(IdentityGrant),
    PeerCluster(PeerCluster),
    ServiceCidr(ServiceCidr),
}

/// One accepted document.
#[derive(Debug, Clone)]
struct Accepted {
    id: ObjectId,
    line: usize,
    /// The object as written, for transition rules when it changes.
    raw: Value,
    object: Object,
}

/// What the source holds of one file.
#[derive(Debug, Clone, Default)]
struct FileState {
    /// The text last read (good or not), so an unchanged file is not parsed again.
    text: Option<String>,
    /// The last good content.
    accepted: Vec<Accepted>,
    /// Why the text last read is not in effect.
    problems: Vec<Problem>,
}

/// What one scan found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scan {
    /// Changes to the World since the last scan.
    pub changes: Vec<Change>,
    /// Every problem now, in file order.
    pub problems: Vec<Problem>,
}

/// The objects of a set of files and directories, kept up to date by [`Manifests::scan`].
///
/// A file event costs what the files that changed hold, not what all of them do: only a
/// changed text is parsed, and only the objects it held or holds (with the pods their
/// Bindings place) are decided again.
#[derive(Debug)]
pub struct Manifests {
    roots: Vec<PathBuf>,
    validator: Validator,
    files: BTreeMap<PathBuf, FileState>,
    /// Where each accepted object is written: (file, index in its accepted objects), in
    /// path order then file order. The first is in effect; any other is a conflict.
    holders: BTreeMap<ObjectId, Vec<(PathBuf, usize)>>,
    /// The problems of objects defined more than once, by object.
    conflicts: BTreeMap<ObjectId, Vec<Problem>>,
    world: BTreeMap<Key, Item>,
    problems: Vec<Problem>,
}

impl Manifests {
    /// A source over `roots` (YAML files, or directories searched for them), not read yet.
    pub fn new(roots: Vec<PathBuf>) -> Result<Self, SchemaError> {
        Ok(Self {
            roots,
            validator: Validator::new()?,
            files: BTreeMap::new(),
            holders: BTreeMap::new(),
            conflicts: BTreeMap::new(),
            world: BTreeMap::new(),
            problems: Vec::new(),
        })
    }

    /// Reads the roots and returns what changed since the last scan.
    pub fn scan(&mut self) -> Scan {
        let mut texts = BTreeMap::new();
        let mut unreadable = Vec::new();
        for root in &self.roots {
            let mut files = Vec::new();
            match yaml_files(root, &mut files) {
                Ok(()) => {
                    for file in files {
                        match std::fs::read_to_string(&file) {
                            // Removed since it was listed: gone, as it will be next time
                            // (a link to nothing is still there, and reported).
                            Err(e)
                                if e.kind() == std::io::ErrorKind::NotFound
                                    && std::fs::symlink_metadata(&file).is_err() => {}
                            text => {
                                texts.insert(file, text);
                            }
                        }
                    }
                }
                Err(e) => unreadable.push(Problem {
                    location: root.display().to_string(),
                    line: None,
                    message: format!("failed to read the directory: {e}"),
                    object: None,
                }),
            }
        }
        let mut scan = self.update(texts);
        if !unreadable.is_empty() {
            unreadable.append(&mut scan.problems);
            scan.problems = unreadable;
            self.problems.clone_from(&scan.problems);
        }
        scan
    }

    /// Takes the files' current texts (a file left out is gone) and returns what changed.
    pub fn update(&mut self, texts: BTreeMap<PathBuf, std::io::Result<String>>) -> Scan {
        // Each file whose content in effect changes, with its new content (none: gone).
        let mut replaced: Vec<(PathBuf, Vec<Accepted>)> = Vec::new();
        for (path, state) in &mut self.files {
            if !texts.contains_key(path) {
                // Forgotten whole, so the same text written again is read again.
                state.text = None;
                state.problems.clear();
                replaced.push((path.clone(), Vec::new()));
            }
        }
        let mut read: Vec<(PathBuf, Result<String, Problem>)> = Vec::new();
        for (path, text) in texts {
            let state = self.files.get(&path);
            match text {
                Ok(text) if state.and_then(|f| f.text.as_deref()) == Some(text.as_str()) => {}
                Ok(text) => read.push((path, Ok(text))),
                Err(e) => {
                    let problem = Problem {
                        location: path.display().to_string(),
                        line: None,
                        message: format!("failed to read: {e}"),
                        object: None,
                    };
                    read.push((path, Err(problem)));
                }
            }
        }
        let mut problems_changed = !replaced.is_empty();
        for (path, text) in read {
            problems_changed = true;
            let (text, accepted, problems) = match text {
                Ok(text) => {
                    let (accepted, problems) = parse_file(&self.validator, &path, &text, |id| {
                        self.in_effect(id).map(|a| &a.raw)
                    });
                    (
                        Some(text),
                        problems.is_empty().then_some(accepted),
                        problems,
                    )
                }
                Err(problem) => (None, None, vec![problem]),
            };
            let state = self.files.entry(path.clone()).or_default();
            state.text = text;
            state.problems = problems;
            if let Some(accepted) = accepted {
                replaced.push((path, accepted));
            }
        }
        let changes = self.replace(replaced);
        if problems_changed || !changes.is_empty() {
            let mut problems: Vec<Problem> = self
                .files
                .values()
                .flat_map(|f| f.problems.iter().cloned())
                .chain(self.conflicts.values().flatten().cloned())
                .collect();
            problems.sort();
            self.problems = problems;
        }
        Scan {
            changes,
            problems: self.problems.clone(),
        }
    }

    /// The accepted object in effect under `id`: the first written.
    fn in_effect(&self, id: &ObjectId) -> Option<&Accepted> {
        let (path, index) = self.holders.get(id)?.first()?;
        self.files.get(path)?.accepted.get(*index)
    }

    /// Puts each file's new content in place of its old (an empty one removes the file),
    /// decides again the objects either held, and returns the World's changes.
    fn replace(&mut self, replaced: Vec<(PathBuf, Vec<Accepted>)>) -> Vec<Change> {
        let mut affected: BTreeSet<ObjectId> = BTreeSet::new();
        for (path, accepted) in replaced {
            let state = self.files.entry(path.clone()).or_default();
            let old = std::mem::replace(&mut state.accepted, accepted);
            for a in &old {
                if let Some(holders) = self.holders.get_mut(&a.id) {
                    holders.retain(|(p, _)| *p != path);
                    if holders.is_empty() {
                        self.holders.remove(&a.id);
                    }
                }
            }
            affected.extend(old.into_iter().map(|a| a.id));
            let state = self.files.entry(path.clone()).or_default();
            for (index, a) in state.accepted.iter().enumerate() {
                let holders = self.holders.entry(a.id.clone()).or_default();
                let at = holders.partition_point(|(p, i)| (p, *i) < (&path, index));
                holders.insert(at, (path.clone(), index));
                affected.insert(a.id.clone());
            }
            if state.text.is_none() && state.accepted.is_empty() && state.problems.is_empty() {
                self.files.remove(&path);
            }
        }
        // A Binding places a pod: the pod is decided again with it.
        let placed: Vec<ObjectId> = affected
            .iter()
            .filter(|id| id.kind == Known::Binding)
            .map(|id| ObjectId {
                kind: Known::Kind(Kind::Pod),
                ..id.clone()
            })
            .collect();
        affected.extend(placed);
        let mut before = BTreeMap::new();
        let mut after = BTreeMap::new();
        for id in affected {
            self.decide_conflicts(&id);
            let Some(key) = key(&id) else { continue };
            if let Some(item) = self.world.remove(&key) {
                before.insert(key.clone(), item);
            }
            if let Some(item) = self.in_effect(&id).and_then(|a| self.item(a)) {
                after.insert(key, item);
            }
        }
        let changes = diff(&before, &after);
        self.world.extend(after);
        changes
    }

    /// The conflicts of `id`: every definition after the first.
    fn decide_conflicts(&mut self, id: &ObjectId) {
        let holders = self.holders.get(id).map(Vec::as_slice).unwrap_or_default();
        let line = |(path, index): &(PathBuf, usize)| {
            self.files
                .get(path)
                .and_then(|f| f.accepted.get(*index))
                .map_or(0, |a| a.line)
        };
        let problems: Vec<Problem> = match holders {
            [first, others @ ..] => others
                .iter()
                .map(|other| Problem {
                    location: other.0.display().to_string(),
                    line: Some(line(other)),
                    message: format!(
                        "{} is also defined at {}:{}; this one is ignored",
                        id.describe(),
                        first.0.display(),
                        line(first)
                    ),
                    object: None,
                })
                .collect(),
            [] => Vec::new(),
        };
        if problems.is_empty() {
            self.conflicts.remove(id);
        } else {
            self.conflicts.insert(id.clone(), problems);
        }
    }

    /// The World's item of an accepted object (a pod with the node its Binding gives, if
    /// its manifest names none); a Binding is none.
    fn item(&self, a: &Accepted) -> Option<Item> {
        Some(match &a.object {
            Object::Namespace(ns) => Item::Namespace(ns.clone()),
            Object::Node(node) => Item::Node(node.clone()),
            Object::Pod(pod) => {
                let mut pod = pod.clone();
                if pod.node.is_none() {
                    let binding = ObjectId {
                        kind: Known::Binding,
                        ..a.id.clone()
                    };
                    pod.node = match self.in_effect(&binding).map(|b| &b.object) {
                        Some(Object::Binding(node)) => Some(node.clone()),
                        _ => None,
                    };
                }
                Item::Pod(pod)
            }
            Object::NetworkService(o) => Item::NetworkService(Box::new(o.clone())),
            Object::Endpoint(o) => Item::Endpoint(Box::new(o.clone())),
            Object::Admission(o) => Item::Admission(Box::new(o.clone())),
            Object::IdentityGrant(o) => Item::IdentityGrant(Box::new(o.clone())),
            Object::PeerCluster(o) => Item::PeerCluster(Box::new(o.clone())),
            Object::ServiceCidr(c) => Item::ServiceCidr(c.clone()),
            Object::Binding(_) => return None,
        })
    }

    /// The pods in effect.
    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.world.values().filter_map(|item| match item {
            Item::Pod(p) => Some(p),
            _ => None,
        })
    }

    /// The NetworkServices in effect.
    pub fn network_services(&self) -> impl Iterator<Item = &NetworkService> {
        self.world.values().filter_map(|item| match item {
            Item::NetworkService(s) => Some(&**s),
            _ => None,
        })
    }

    /// The nodes in effect.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.world.values().filter_map(|item| match item {
            Item::Node(n) => Some(n),
            _ => None,
        })
    }

    /// Scans, delivers the result and `Synced`, then scans again whenever a file below
    /// the roots changes, delivering what changed, until `events` is closed.
    pub async fn watch<T: From<Event> + Send>(mut self, events: mpsc::Sender<T>) {
        let (wake, mut woken) = mpsc::unbounded_channel::<()>();
        let watcher = self.watch_roots(wake);
        let first = self.scan();
        let delivered = events
            .send(Event::Changes(first.changes).into())
            .await
            .is_ok()
            && events
                .send(Event::Problems(first.problems).into())
                .await
                .is_ok()
            && events.send(Event::Synced.into()).await.is_ok();
        if !delivered {
            return;
        }
        if let Err(problem) = watcher {
            // Without file events the periodic rescan still follows the files, slowly.
            tracing::warn!(%problem, "failed to watch the manifests; reading them every {RESCAN_EVERY:?}");
        }
        loop {
            tokio::select! {
                woke = woken.recv() => if woke.is_none() { return },
                () = tokio::time::sleep(RESCAN_EVERY) => {}
            }
            // Files are often written in several steps: read once the burst is over.
            let deadline = tokio::time::Instant::now() + SETTLE_AT_MOST;
            while tokio::time::Instant::now() < deadline {
                match tokio::time::timeout(SETTLE, woken.recv()).await {
                    Ok(Some(())) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            let before = self.problems.clone();
            let scan = self.scan();
            if !scan.changes.is_empty()
                && events
                    .send(Event::Changes(scan.changes).into())
                    .await
                    .is_err()
            {
                return;
            }
            if scan.problems != before {
                for problem in &scan.problems {
                    tracing::warn!(%problem, "manifest not in effect; its last good content is kept");
                }
                if events
                    .send(Event::Problems(scan.problems).into())
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }

    /// Watches the roots (a root that is a file through its directory, so a file replaced
    /// by a rename is still followed). The watcher lives as long as `wake` is open. A file
    /// opened, read or closed unwritten wakes nothing: reading the files is what a wake
    /// does, so such events (inotify's `IN_OPEN`, `IN_ACCESS`, `IN_CLOSE_NOWRITE`) woke
    /// the next read, and every process watching the files (the lab's supervisor, the
    /// operator) read them again every few milliseconds, forever.
    fn watch_roots(&self, wake: mpsc::UnboundedSender<()>) -> Result<(), String> {
        use notify::event::{AccessKind, AccessMode};
        use notify::{EventKind, RecursiveMode, Watcher};
        let closed = wake.clone();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let read = event.as_ref().is_ok_and(|e| match e.kind {
                    EventKind::Access(AccessKind::Close(AccessMode::Write)) => false,
                    EventKind::Access(_) => true,
                    _ => false,
                });
                if event.is_ok() && !read {
                    let _ = wake.send(());
                }
            })
            .map_err(|e| e.to_string())?;
        for root in &self.roots {
            let (path, mode) = if root.is_dir() {
                (root.as_path(), RecursiveMode::Recursive)
            } else {
                (
                    root.parent().unwrap_or(Path::new(".")),
                    RecursiveMode::NonRecursive,
                )
            };
            watcher
                .watch(path, mode)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        // The watcher stops when dropped: keep it until nobody listens any more.
        tokio::spawn(async move {
            closed.closed().await;
            drop(watcher);
        });
        Ok(())
    }
}

/// The World's key of an object; a Binding has none (it places a pod).
fn key(id: &ObjectId) -> Option<Key> {
    let (namespace, name) = (id.namespace.clone(), id.name.clone());
    let Known::Kind(kind) = id.kind else {
        return None;
    };
    Some(match kind {
        Kind::Namespace => Key::Namespace(name),
        Kind::Node => Key::Node(name),
        Kind::Pod => Key::Pod(namespace, name),
        Kind::NetworkService => Key::NetworkService(ObjectKey { namespace, name }),
        Kind::Endpoint => Key::Endpoint(ObjectKey { namespace, name }),
        Kind::Admission => Key::Admission(ObjectKey { namespace, name }),
        Kind::IdentityGrant => Key::IdentityGrant(name),
        Kind::PeerCluster => Key::PeerCluster(name),
        Kind::ServiceCidr => Key::ServiceCidr(name),
    })
}

/// Parses one file: every document, or the problems that keep the file out.
/// `accepted` gives the object as last accepted under an identity, for transition rules.
fn parse_file<'a>(
    validator: &Validator,
    path: &Path,
    text: &str,
    accepted: impl Fn(&ObjectId) -> Option<&'a Value>,
) -> (Vec<Accepted>, Vec<Problem>) {
    let location = path.display().to_string();
    let problem = |line, message| Problem {
        location: location.clone(),
        line: Some(line),
        message,
        object: None,
    };
    let mut objects = Vec::new();
    let mut problems = Vec::new();
    for document in documents(text) {
        match document {
            Err(e) => problems.push(problem(e.line, format!("invalid YAML: {}", e.message))),
            Ok(doc) => match parse_object(validator, doc.value, &accepted) {
                Ok(Some((id, raw, object))) => objects.push(Accepted {
                    id,
                    line: doc.line,
                    raw,
                    object,
                }),
                Ok(None) => {}
                Err(message) => problems.push(problem(doc.line, message)),
            },
        }
    }
    (objects, problems)
}

/// One document: the object, `None` for a kind the source does not read, or why it is
/// refused.
fn parse_object<'a>(
    validator: &Validator,
    mut raw: Value,
    accepted: impl Fn(&ObjectId) -> Option<&'a Value>,
) -> Result<Option<(ObjectId, Value, Object)>, String> {
    let text = |pointer: &str| {
        raw.pointer(pointer)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let (Some(api_version), Some(kind)) = (text("/apiVersion"), text("/kind")) else {
        return Err("not a Kubernetes object: apiVersion and kind are required".to_owned());
    };
    let kind = match Known::of(&api_version, &kind) {
        Some(known) => known,
        None if api_version.starts_with("wireway.dev/") => {
            return Err(format!(
                "{kind} of {api_version} is not served: the Wireway kinds are NetworkService, Endpoint, Admission, IdentityGrant and PeerCluster of {API_VERSION}"
            ));
        }
        None => return Ok(None),
    };
    let namespaced = kind.namespaced();
    if namespaced
        && raw.pointer("/metadata/namespace").is_none()
        && let Some(meta) = raw.get_mut("metadata").and_then(Value::as_object_mut)
    {
        meta.insert("namespace".into(), DEFAULT_NAMESPACE.into());
    }
    let text = |pointer: &str| {
        raw.pointer(pointer)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let id = ObjectId {
        kind,
        namespace: if namespaced {
            text("/metadata/namespace").unwrap_or_default()
        } else {
            String::new()
        },
        name: text("/metadata/name").unwrap_or_default(),
    };
    if id.name.is_empty() {
        return Err(format!("{}: metadata.name is required", kind.name()));
    }
    let refused = |message: String| format!("{} refused: {message}", id.describe());
    if let Err(violations) = validator.validate(&raw, accepted(&id)) {
        let all: Vec<String> = violations.iter().map(ToString::to_string).collect();
        return Err(refused(all.join("; ")));
    }
    let object = convert(kind, &id, raw.clone()).map_err(refused)?;
    Ok(Some((id, raw, object)))
}

/// The typed object of a valid document.
fn convert(kind: Known, id: &ObjectId, raw: Value) -> Result<Object, String> {
    fn typed<T: serde::de::DeserializeOwned>(raw: Value) -> Result<T, String> {
        serde_json::from_value(raw).map_err(|e| e.to_string())
    }
    Ok(match kind {
        Known::Kind(Kind::Namespace) => Object::Namespace(items::namespace(&typed(raw)?)),
        Known::Kind(Kind::Node) => Object::Node(items::node(&id.name, typed(raw)?)?),
        Known::Kind(Kind::Pod) => Object::Pod(items::pod_in_manifests(
            &id.namespace,
            &id.name,
            typed(raw)?,
        )),
        Known::Binding => {
            let binding: core::Binding = typed(raw)?;
            if binding.target.kind.as_deref().is_some_and(|k| k != "Node") {
                return Err("a Binding's target must be a Node".to_owned());
            }
            match binding.target.name {
                Some(node) if !node.is_empty() => Object::Binding(node),
                _ => return Err("target.name (the node) is required".to_owned()),
            }
        }
        Known::Kind(Kind::NetworkService) => Object::NetworkService(typed(raw)?),
        Known::Kind(Kind::Endpoint) => Object::Endpoint(typed(raw)?),
        Known::Kind(Kind::Admission) => Object::Admission(typed(raw)?),
        Known::Kind(Kind::IdentityGrant) => Object::IdentityGrant(typed(raw)?),
        Known::Kind(Kind::PeerCluster) => Object::PeerCluster(typed(raw)?),
        Known::Kind(Kind::ServiceCidr) => {
            Object::ServiceCidr(items::service_cidr(&id.name, typed(raw)?))
        }
    })
}

#[cfg(test)]
mod tests;

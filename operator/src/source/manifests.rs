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

use std::collections::BTreeMap;
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
#[derive(Debug)]
pub struct Manifests {
    roots: Vec<PathBuf>,
    validator: Validator,
    files: BTreeMap<PathBuf, FileState>,
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
                        let text = std::fs::read_to_string(&file);
                        texts.insert(file, text);
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
        self.files.retain(|path, _| texts.contains_key(path));
        let mut accepted_raw: BTreeMap<ObjectId, Value> = BTreeMap::new();
        for a in self.files.values().flat_map(|f| &f.accepted) {
            accepted_raw
                .entry(a.id.clone())
                .or_insert_with(|| a.raw.clone());
        }
        for (path, text) in texts {
            let state = self.files.entry(path.clone()).or_default();
            match text {
                Ok(text) if state.text.as_deref() == Some(text.as_str()) => {}
                Ok(text) => {
                    let (accepted, problems) =
                        parse_file(&self.validator, &path, &text, &accepted_raw);
                    if problems.is_empty() {
                        state.accepted = accepted;
                    }
                    state.problems = problems;
                    state.text = Some(text);
                }
                Err(e) => {
                    state.text = None;
                    state.problems = vec![Problem {
                        location: path.display().to_string(),
                        line: None,
                        message: format!("failed to read: {e}"),
                        object: None,
                    }];
                }
            }
        }
        let (world, conflicts) = self.assemble();
        let changes = diff(&self.world, &world);
        self.world = world;
        let mut problems: Vec<Problem> = self
            .files
            .values()
            .flat_map(|f| f.problems.iter().cloned())
            .collect();
        problems.extend(conflicts);
        problems.sort();
        self.problems.clone_from(&problems);
        Scan { changes, problems }
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

    /// The World's items from the accepted objects of every file; of two objects with one
    /// identity, the one in the file first in path order wins and the other is a problem.
    fn assemble(&self) -> (BTreeMap<Key, Item>, Vec<Problem>) {
        let mut seen: BTreeMap<&ObjectId, (&Path, usize)> = BTreeMap::new();
        let mut conflicts = Vec::new();
        let mut objects: Vec<&Accepted> = Vec::new();
        for (path, file) in &self.files {
            for a in &file.accepted {
                match seen.get(&a.id) {
                    Some((first, line)) => conflicts.push(Problem {
                        location: path.display().to_string(),
                        line: Some(a.line),
                        message: format!(
                            "{} is also defined at {}:{line}; this one is ignored",
                            a.id.describe(),
                            first.display()
                        ),
                        object: None,
                    }),
                    None => {
                        seen.insert(&a.id, (path, a.line));
                        objects.push(a);
                    }
                }
            }
        }
        let bindings: BTreeMap<(&str, &str), &str> = objects
            .iter()
            .filter_map(|a| match &a.object {
                Object::Binding(node) => {
                    Some(((a.id.namespace.as_str(), a.id.name.as_str()), node.as_str()))
                }
                _ => None,
            })
            .collect();
        let mut world = BTreeMap::new();
        for a in objects {
            let (key, item) = match &a.object {
                Object::Binding(_) => continue,
                Object::Namespace(ns) => {
                    (Key::Namespace(ns.name.clone()), Item::Namespace(ns.clone()))
                }
                Object::Node(node) => (Key::Node(node.name.clone()), Item::Node(node.clone())),
                Object::Pod(pod) => {
                    let mut pod = pod.clone();
                    if pod.node.is_none() {
                        pod.node = bindings
                            .get(&(pod.namespace.as_str(), pod.name.as_str()))
                            .map(|n| (*n).to_owned());
                    }
                    (
                        Key::Pod(pod.namespace.clone(), pod.name.clone()),
                        Item::Pod(pod),
                    )
                }
                Object::NetworkService(o) => (
                    Key::NetworkService(ObjectKey::of(&o.metadata)),
                    Item::NetworkService(Box::new(o.clone())),
                ),
                Object::Endpoint(o) => (
                    Key::Endpoint(ObjectKey::of(&o.metadata)),
                    Item::Endpoint(Box::new(o.clone())),
                ),
                Object::Admission(o) => (
                    Key::Admission(ObjectKey::of(&o.metadata)),
                    Item::Admission(Box::new(o.clone())),
                ),
                Object::IdentityGrant(o) => (
                    Key::IdentityGrant(a.id.name.clone()),
                    Item::IdentityGrant(Box::new(o.clone())),
                ),
                Object::PeerCluster(o) => (
                    Key::PeerCluster(a.id.name.clone()),
                    Item::PeerCluster(Box::new(o.clone())),
                ),
                Object::ServiceCidr(c) => (
                    Key::ServiceCidr(c.name.clone()),
                    Item::ServiceCidr(c.clone()),
                ),
            };
            world.insert(key, item);
        }
        (world, conflicts)
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
    /// by a rename is still followed). The watcher lives as long as `wake` is open.
    fn watch_roots(&self, wake: mpsc::UnboundedSender<()>) -> Result<(), String> {
        use notify::{RecursiveMode, Watcher};
        let closed = wake.clone();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok() {
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

/// Parses one file: every document, or the problems that keep the file out.
fn parse_file(
    validator: &Validator,
    path: &Path,
    text: &str,
    accepted: &BTreeMap<ObjectId, Value>,
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
            Ok(doc) => match parse_object(validator, doc.value, accepted) {
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
fn parse_object(
    validator: &Validator,
    mut raw: Value,
    accepted: &BTreeMap<ObjectId, Value>,
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
    if let Err(violations) = validator.validate(&raw, accepted.get(&id)) {
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

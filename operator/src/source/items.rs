//! What the sources share: the World's items keyed for diffing, and core/v1 objects as
//! the World knows them.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as networking;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use wireway_crds::{
    Admission, Cidr, Endpoint, IdentityGrant, NetworkService, PeerCluster, annotations,
};

use crate::plan::names::stable_hash;
use crate::plan::{Change, Namespace, Node, ObjectKey, Pod, ServiceCidr};

/// The UID of a pod whose manifest gives none: stable for its namespace and name, in the
/// shape of a Kubernetes UID, so whatever finds a pod's network namespace by UID (the
/// lab, a VM's own tooling) can compute it too.
pub fn pod_uid(namespace: &str, name: &str) -> String {
    let high = stable_hash(&["wireway.dev/pod-uid", namespace, name]);
    let low = stable_hash(&["wireway.dev/pod-uid/low", namespace, name]);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        high >> 32,
        (high >> 16) & 0xffff,
        high & 0xffff,
        low >> 48,
        low & 0xffff_ffff_ffff
    )
}

/// One item of the World, keyed for diffing.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    Namespace(String),
    Node(String),
    Pod(String, String),
    NetworkService(ObjectKey),
    Endpoint(ObjectKey),
    Admission(ObjectKey),
    IdentityGrant(String),
    PeerCluster(String),
    ServiceCidr(String),
}

/// The World's items as a source describes them.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Namespace(Namespace),
    Node(Node),
    Pod(Pod),
    NetworkService(Box<NetworkService>),
    Endpoint(Box<Endpoint>),
    Admission(Box<Admission>),
    IdentityGrant(Box<IdentityGrant>),
    PeerCluster(Box<PeerCluster>),
    ServiceCidr(ServiceCidr),
}

/// The changes that take `old` to `new`.
pub fn diff(old: &BTreeMap<Key, Item>, new: &BTreeMap<Key, Item>) -> Vec<Change> {
    let mut changes = Vec::new();
    for (key, _) in old.iter().filter(|(k, _)| !new.contains_key(*k)) {
        changes.push(match key.clone() {
            Key::Namespace(name) => Change::NamespaceDeleted(name),
            Key::Node(name) => Change::NodeDeleted(name),
            Key::Pod(namespace, name) => Change::PodDeleted(namespace, name),
            Key::NetworkService(k) => Change::NetworkServiceDeleted(k),
            Key::Endpoint(k) => Change::EndpointDeleted(k),
            Key::Admission(k) => Change::AdmissionDeleted(k),
            Key::IdentityGrant(name) => Change::IdentityGrantDeleted(name),
            Key::PeerCluster(name) => Change::PeerClusterDeleted(name),
            Key::ServiceCidr(name) => Change::ServiceCidrDeleted(name),
        });
    }
    for (key, item) in new {
        if old.get(key) == Some(item) {
            continue;
        }
        changes.push(match item.clone() {
            Item::Namespace(ns) => Change::Namespace(ns),
            Item::Node(node) => Change::Node(node),
            Item::Pod(pod) => Change::Pod(pod),
            Item::NetworkService(o) => Change::NetworkService(*o),
            Item::Endpoint(o) => Change::Endpoint(*o),
            Item::Admission(o) => Change::Admission(*o),
            Item::IdentityGrant(o) => Change::IdentityGrant(*o),
            Item::PeerCluster(o) => Change::PeerCluster(o),
            Item::ServiceCidr(c) => Change::ServiceCidr(c),
        });
    }
    changes
}

/// A core/v1 Namespace as the World knows it.
pub fn namespace(ns: &core::Namespace) -> Namespace {
    Namespace {
        name: ns.metadata.name.clone().unwrap_or_default(),
        labels: ns.metadata.labels.clone().unwrap_or_default(),
    }
}

fn annotation<'a>(meta: &'a ObjectMeta, name: &str) -> Option<&'a str> {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(name))
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

/// A prefix as the API server writes it, host bits cleared; `None` if it is none.
fn prefix(text: &str) -> Option<Cidr> {
    text.parse::<IpNet>().ok().map(Cidr::from)
}

/// A core/v1 Node as the World knows it: its key and underlay from its annotations (or
/// its InternalIP) until its agent says them; its pod ranges and addresses, which no
/// service may overlap; when it was created.
pub fn node(name: &str, node: core::Node) -> Result<Node, String> {
    let addresses: Vec<(String, IpAddr)> = node
        .status
        .and_then(|s| s.addresses)
        .unwrap_or_default()
        .into_iter()
        .filter(|a| matches!(a.type_.as_str(), "InternalIP" | "ExternalIP"))
        .filter_map(|a| Some((a.type_, a.address.parse().ok()?)))
        .collect();
    let underlay = match annotation(&node.metadata, annotations::UNDERLAY_ADDRESS) {
        Some(text) => Some(text.parse::<IpAddr>().map_err(|_| {
            format!(
                "annotation {}: {text:?} is not an IP address",
                annotations::UNDERLAY_ADDRESS
            )
        })?),
        None => addresses
            .iter()
            .find(|(kind, _)| kind == "InternalIP")
            .map(|(_, a)| *a),
    };
    let pod_cidrs = node
        .spec
        .and_then(|s| s.pod_cidrs)
        .unwrap_or_default()
        .iter()
        .filter_map(|c| prefix(c))
        .collect();
    Ok(Node {
        name: name.to_owned(),
        public_key: annotation(&node.metadata, annotations::PUBLIC_KEY).map(str::to_owned),
        underlay,
        underlay_mtu: None,
        seen_version: 0,
        pod_cidrs,
        addresses: addresses.into_iter().map(|(_, a)| a).collect(),
        created: node.metadata.creation_timestamp,
    })
}

/// A networking.k8s.io/v1 ServiceCIDR as the World knows it: its ranges.
pub fn service_cidr(name: &str, object: networking::ServiceCIDR) -> ServiceCidr {
    let cidrs = object.spec.and_then(|s| s.cidrs).unwrap_or_default();
    ServiceCidr {
        name: name.to_owned(),
        cidrs: cidrs.iter().filter_map(|c| prefix(c)).collect(),
    }
}

/// A core/v1 Pod as the World knows it. Its namespace is found from its UID: the
/// `wireway.dev/netns` annotation is for manifests only (see [`pod_in_manifests`]), since
/// in a cluster anyone who may edit a pod could aim it at another pod's namespace.
pub fn pod(namespace: &str, name: &str, pod: core::Pod) -> Pod {
    let spec = pod.spec.unwrap_or_default();
    let service_account = spec
        .service_account_name
        .or(spec.service_account)
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".to_owned());
    Pod {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        uid: pod
            .metadata
            .uid
            .clone()
            .unwrap_or_else(|| pod_uid(namespace, name)),
        node: spec.node_name.filter(|n| !n.is_empty()),
        service_account,
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        netns: None,
    }
}

/// A Pod of a manifest (the lab, hosts without Kubernetes): as [`pod`], and in the
/// namespace its `wireway.dev/netns` annotation names, if any (the agent opens only
/// paths beneath its `--netns-path-prefix` directories).
pub fn pod_in_manifests(namespace: &str, name: &str, raw: core::Pod) -> Pod {
    let netns = annotation(&raw.metadata, annotations::NETNS).map(str::to_owned);
    Pod {
        netns,
        ..pod(namespace, name, raw)
    }
}

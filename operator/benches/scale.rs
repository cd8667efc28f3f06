//! A synthetic World at a chosen scale, shared by the planner's benchmark and the
//! `plan_scale` example: a module of both, not a benchmark of its own (Cargo.toml sets
//! `autobenches = false`).
//!
//! Shape: `services` NetworkServices (IPv4 /16, /24 per node), each in its own namespace
//! with one Endpoint; `members` pods spread evenly over the services; each service's pods
//! on `span` nodes (a window of the node list, shifted per service so every node carries
//! some services). Peers per node and service grow with `span`, not with the cluster.
//!
//! With `daemonset`, besides (or instead of, with `services` 0) that: one more
//! NetworkService, `net` in namespace `daemonset` (IPv4 100.64.0.0/10, /24 per node),
//! whose Endpoint selects with `podSelector: {}` (every pod of its namespace), and one
//! pod of a DaemonSet on every node (`ds-{node}`). It spans the whole cluster: every node carries it
//! with `nodes - 1` peers, so its peer term is `nodes²`.

use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use wireway_crds::{Endpoint, EndpointSpec, NetworkService, NetworkServiceRef, NetworkServiceSpec};
use wireway_operator::plan::{Bounds, Node, Pod, World};

/// The size of a synthetic World.
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    pub nodes: usize,
    pub services: usize,
    pub members: usize,
    /// Nodes each service's members run on.
    pub span: usize,
    /// Adds the DaemonSet-wide service: one pod on every node, all selected.
    pub daemonset: bool,
}

/// The namespace of the DaemonSet-wide service and its pods.
pub const DAEMONSET_NAMESPACE: &str = "daemonset";

fn meta(ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(ns.into()),
        name: Some(name.into()),
        generation: Some(1),
        ..ObjectMeta::default()
    }
}

/// The pod `i` of service `s` under `scale`.
pub fn pod(scale: Scale, s: usize, i: usize) -> Pod {
    let node = (s * scale.nodes / scale.services + i % scale.span) % scale.nodes;
    Pod {
        namespace: format!("svc-{s}"),
        name: format!("pod-{i}"),
        uid: format!("uid-{s}-{i}"),
        node: Some(format!("node-{node}")),
        service_account: "default".into(),
        labels: [("app".to_owned(), "member".to_owned())].into(),
        netns: None,
    }
}

/// The DaemonSet's pod named `name` on node `node` (the DaemonSet's own pods are
/// `ds-{node}`; any other name is one more member on that node).
pub fn daemon_pod(name: &str, node: usize) -> Pod {
    Pod {
        namespace: DAEMONSET_NAMESPACE.into(),
        name: name.into(),
        uid: format!("uid-{DAEMONSET_NAMESPACE}-{name}"),
        node: Some(format!("node-{node}")),
        service_account: "default".into(),
        labels: [("app".to_owned(), "daemon".to_owned())].into(),
        netns: None,
    }
}

/// A NetworkService `net` in `ns`.
fn network_service(ns: &str, cidr: String) -> NetworkService {
    NetworkService {
        metadata: meta(ns, "net"),
        spec: NetworkServiceSpec {
            cidr,
            node_prefix_length: 24,
            cluster_prefix: None,
            mtu: None,
            listen_port: None,
            dns: None,
        },
        status: None,
    }
}

/// An Endpoint `members` in `ns` selecting pods of `ns` for its service `net`.
fn endpoint(ns: &str, selector: LabelSelector) -> Endpoint {
    Endpoint {
        metadata: meta(ns, "members"),
        spec: EndpointSpec {
            network_service: NetworkServiceRef {
                name: "net".into(),
                namespace: None,
            },
            pod_selector: Some(selector),
            external: None,
            interface_name: None,
        },
        status: None,
    }
}

/// Builds the World.
pub fn world(scale: Scale) -> World {
    let nodes = (0..scale.nodes)
        .map(|n| Node {
            name: format!("node-{n}"),
            public_key: Some(format!("key-{n:040}")),
            // The benchmarking range 198.18.0.0/15, clear of every service's range.
            underlay: Some(IpAddr::from([
                198,
                18 + (n / 65536) as u8,
                (n / 256 % 256) as u8,
                (n % 256) as u8,
            ])),
            underlay_mtu: Some(1500),
            ..Node::default()
        })
        .collect();
    let per_service = scale.members.checked_div(scale.services).unwrap_or(0);
    let mut pods = Vec::with_capacity(scale.members);
    let mut services = Vec::new();
    let mut endpoints = Vec::new();
    for s in 0..scale.services {
        let ns = format!("svc-{s}");
        // One service alone may be as large as the scale: it takes all of 10.0.0.0/8.
        let cidr = if scale.services == 1 {
            "10.0.0.0/8".to_owned()
        } else {
            format!("10.{}.0.0/16", 100 + s % 150)
        };
        services.push(network_service(&ns, cidr));
        endpoints.push(endpoint(
            &ns,
            LabelSelector {
                match_labels: Some([("app".to_owned(), "member".to_owned())].into()),
                match_expressions: None,
            },
        ));
        pods.extend((0..per_service).map(|i| pod(scale, s, i)));
    }
    if scale.daemonset {
        let ns = DAEMONSET_NAMESPACE;
        services.push(network_service(ns, "100.64.0.0/10".into()));
        // `podSelector: {}`: every pod of the namespace.
        endpoints.push(endpoint(ns, LabelSelector::default()));
        pods.extend((0..scale.nodes).map(|n| daemon_pod(&format!("ds-{n}"), n)));
    }
    World {
        trust_domain: "cluster.local".into(),
        now: Time(Timestamp::UNIX_EPOCH),
        nodes,
        namespaces: Vec::new(),
        pods,
        network_services: services,
        endpoints,
        admissions: Vec::new(),
        identity_grants: Vec::new(),
        service_cidrs: Vec::new(),
        bounds: Bounds::default(),
        peers: Vec::new(),
    }
}

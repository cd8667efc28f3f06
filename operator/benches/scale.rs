//! A synthetic World at a chosen scale, shared by the planner's benchmark and the
//! `plan_scale` example: a module of both, not a benchmark of its own (Cargo.toml sets
//! `autobenches = false`).
//!
//! Shape: `services` NetworkServices (IPv4 /16, /24 per node), each in its own namespace
//! with one Endpoint; `members` pods spread evenly over the services; each service's pods
//! on `span` nodes (a window of the node list, shifted per service so every node carries
//! some services). Peers per node and service grow with `span`, not with the cluster.

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
}

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

/// Builds the World.
pub fn world(scale: Scale) -> World {
    let nodes = (0..scale.nodes)
        .map(|n| Node {
            name: format!("node-{n}"),
            public_key: Some(format!("key-{n:040}")),
            underlay: Some(IpAddr::from([10, 0, (n / 256) as u8, (n % 256) as u8])),
            underlay_mtu: Some(1500),
            ..Node::default()
        })
        .collect();
    let per_service = scale.members / scale.services;
    let mut pods = Vec::with_capacity(scale.members);
    let mut services = Vec::new();
    let mut endpoints = Vec::new();
    for s in 0..scale.services {
        let ns = format!("svc-{s}");
        services.push(NetworkService {
            metadata: meta(&ns, "net"),
            spec: NetworkServiceSpec {
                cidr: format!("10.{}.0.0/16", 100 + s % 150),
                node_prefix_length: 24,
                cluster_prefix: None,
                mtu: None,
                listen_port: None,
            },
            status: None,
        });
        endpoints.push(Endpoint {
            metadata: meta(&ns, "members"),
            spec: EndpointSpec {
                network_service: NetworkServiceRef {
                    name: "net".into(),
                    namespace: None,
                },
                pod_selector: Some(LabelSelector {
                    match_labels: Some([("app".to_owned(), "member".to_owned())].into()),
                    match_expressions: None,
                }),
                external: None,
                interface_name: None,
            },
            status: None,
        });
        pods.extend((0..per_service).map(|i| pod(scale, s, i)));
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
    }
}

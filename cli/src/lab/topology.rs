//! Where the lab puts things (pure): which nodes it makes, and on which node each pod
//! runs. The lab is the scheduler of the manifests it runs: a pod pinned with
//! `spec.nodeName` runs there; any other keeps the node it was given, or goes to the
//! node with the fewest pods.

use std::collections::{BTreeMap, BTreeSet};

/// A pod, by `namespace/name`, and the node its manifest pins it to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSpec {
    /// `namespace/name`.
    pub key: String,
    /// `spec.nodeName`, if set.
    pub pinned: Option<String>,
}

/// What the lab must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    /// Every node: declared in the manifests, named by a pod, or made by the lab.
    pub nodes: BTreeSet<String>,
    /// Nodes the manifests do not declare (the lab writes their Node objects).
    pub made_nodes: BTreeSet<String>,
    /// Every pod's node.
    pub placement: BTreeMap<String, String>,
    /// The placement of pods the manifests do not pin (the lab writes their Bindings).
    pub bindings: BTreeMap<String, String>,
}

/// The name of the lab's `n`th own node (from 1).
pub fn lab_node(n: usize) -> String {
    format!("node-{n}")
}

/// Places `pods` on the nodes: `declared` Node objects, nodes pods are pinned to, and
/// `own_nodes` nodes of the lab's own. `previous` is the placement so far, kept where
/// its node still exists.
pub fn place(
    declared: &BTreeSet<String>,
    own_nodes: usize,
    pods: &[PodSpec],
    previous: &BTreeMap<String, String>,
) -> Topology {
    let mut nodes: BTreeSet<String> = declared.clone();
    nodes.extend(pods.iter().filter_map(|p| p.pinned.clone()));
    nodes.extend((1..=own_nodes).map(lab_node));
    let mut placement = BTreeMap::new();
    let mut load: BTreeMap<&str, usize> = nodes.iter().map(|n| (n.as_str(), 0)).collect();
    let mut unplaced = Vec::new();
    for pod in pods {
        let node = pod
            .pinned
            .as_ref()
            .or_else(|| previous.get(&pod.key).filter(|n| nodes.contains(*n)));
        match node {
            Some(node) => {
                *load.entry(node).or_default() += 1;
                placement.insert(pod.key.clone(), node.clone());
            }
            None => unplaced.push(pod),
        }
    }
    unplaced.sort_by(|a, b| a.key.cmp(&b.key));
    for pod in unplaced {
        let Some((node, _)) = load.iter().min_by_key(|(name, count)| (**count, **name)) else {
            continue;
        };
        let node = (*node).to_owned();
        if let Some(count) = load.get_mut(node.as_str()) {
            *count += 1;
        }
        placement.insert(pod.key.clone(), node);
    }
    let bindings = pods
        .iter()
        .filter(|p| p.pinned.is_none())
        .filter_map(|p| Some((p.key.clone(), placement.get(&p.key)?.clone())))
        .collect();
    let made_nodes = nodes.difference(declared).cloned().collect();
    Topology {
        nodes,
        made_nodes,
        placement,
        bindings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(key: &str, pinned: Option<&str>) -> PodSpec {
        PodSpec {
            key: key.into(),
            pinned: pinned.map(Into::into),
        }
    }

    #[test]
    fn spreads_unpinned_pods_over_the_least_loaded_nodes() {
        let pods = [
            pod("red/a", None),
            pod("red/b", None),
            pod("red/c", Some("edge")),
            pod("red/d", None),
        ];
        let t = place(&BTreeSet::new(), 2, &pods, &BTreeMap::new());
        assert_eq!(
            t.nodes,
            BTreeSet::from(["edge".into(), "node-1".into(), "node-2".into()])
        );
        assert_eq!(t.made_nodes, t.nodes);
        assert_eq!(t.placement["red/c"], "edge");
        // edge already holds c: a, b and d go to the emptiest, in name order.
        assert_eq!(t.placement["red/a"], "node-1");
        assert_eq!(t.placement["red/b"], "node-2");
        assert_eq!(t.placement["red/d"], "edge");
        assert!(
            !t.bindings.contains_key("red/c"),
            "pinned pods need no Binding"
        );
        assert_eq!(t.bindings.len(), 3);
    }

    #[test]
    fn keeps_placements_while_their_node_exists() {
        let declared = BTreeSet::from(["a".to_owned(), "b".to_owned()]);
        let previous = BTreeMap::from([
            ("ns/x".to_owned(), "b".to_owned()),
            ("ns/y".to_owned(), "gone".to_owned()),
        ]);
        let pods = [pod("ns/x", None), pod("ns/y", None), pod("ns/z", None)];
        let t = place(&declared, 0, &pods, &previous);
        assert_eq!(t.placement["ns/x"], "b");
        assert_eq!(t.placement["ns/y"], "a", "its node is gone: rescheduled");
        assert_eq!(t.placement["ns/z"], "a");
        assert!(t.made_nodes.is_empty());
    }

    #[test]
    fn without_nodes_pods_stay_unplaced() {
        let t = place(&BTreeSet::new(), 0, &[pod("ns/x", None)], &BTreeMap::new());
        assert!(t.placement.is_empty());
        assert!(t.nodes.is_empty());
    }
}

//! The Wireway operator.
//!
//! It watches NetworkService, Endpoint and Admission objects (and the pods, nodes and
//! namespaces they refer to), turns them into a desired state per node with the pure
//! planner in [`plan`], serves those states to the node agents, and writes every object's
//! status. The planner holds all decisions; everything that talks to the API server or
//! the network is a thin layer around it.

pub mod plan;

//! The Wireway operator.
//!
//! It watches NetworkService, Endpoint and Admission objects (and the pods, nodes and
//! namespaces they refer to), turns them into a desired state per node with the pure
//! planner in [`plan`], serves those states to the node agents over gRPC ([`serve`]), and
//! publishes every object's status. The planner holds all decisions; the sources
//! ([`source`]), the [`engine`] that drives the planner, and the servers are a thin
//! layer around it.

pub mod controller;
pub mod engine;
pub mod kind;
pub mod metrics;
pub mod plan;
pub mod serve;
pub mod snapshot;
pub mod source;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

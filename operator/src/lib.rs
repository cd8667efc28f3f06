//! The Wireway operator.
//!
//! It watches NetworkService, Endpoint and Admission objects (and the pods, nodes and
//! namespaces they refer to), turns them into a desired state per node with the pure
//! planner in [`plan`], serves those states to the node agents over gRPC ([`serve`]), and
//! publishes every object's status. The planner holds all decisions; the sources
//! ([`source`]), the [`engine`] that drives the planner, and the servers are a thin
//! layer around it.
//!
//! Each module uses only the modules listed after it (`tests/layers.rs` checks this):
//! * [`controller`]: the Kubernetes glue (leader election, the status writer, events,
//!   agents' tokens), writing only while this operator leads;
//! * [`serve`]: the node API over gRPC, and the status API for administrators;
//! * [`engine`]: the one task that owns the planner, and the hub it publishes on;
//! * [`snapshot`]: what the status API returns;
//! * [`source`]: where the World comes from: the API server, or a directory of manifests;
//! * [`plan`]: the pure planner, World to Plan;
//! * [`kind`] (the kinds of object the operator reads) and [`metrics`].
//!
//! `testing` holds the tests' fixtures, and is compiled for tests only.

pub mod controller;
pub mod engine;
pub mod federation;
pub mod kind;
pub mod metrics;
pub mod plan;
pub mod serve;
pub mod snapshot;
pub mod source;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

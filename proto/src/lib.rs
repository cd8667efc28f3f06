//! The Wireway node API (`wireway.node.v1alpha1`): the messages and gRPC service between
//! the operator and the node agents, generated from `proto/wireway/node/v1alpha1/node.proto`.
//!
//! It knows nothing of Kubernetes; every field is documented in the `.proto`.

#![allow(
    missing_docs,
    clippy::all,
    unused_qualifications,
    missing_debug_implementations
)]

tonic::include_proto!("wireway.node.v1alpha1");

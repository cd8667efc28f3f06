//! `wireway-operator`: turns NetworkService, Endpoint and Admission objects into a desired
//! state per node (the planner, `src/plan/`) and serves it to the node agents over gRPC.
//!
//! This version only identifies itself; the planner and its sources land next.

fn main() {
    println!("wireway-operator {}", env!("CARGO_PKG_VERSION"));
}

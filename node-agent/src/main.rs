//! `wireway-agent`: converges a node's kernel (WireGuard, veths, addresses, routes, policy
//! rules) to the NodeState the operator serves.
//!
//! This version only identifies itself; the converger and its appliers land next.

fn main() {
    println!("wireway-agent {}", env!("CARGO_PKG_VERSION"));
}

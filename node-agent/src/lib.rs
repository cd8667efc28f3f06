//! The Wireway node agent.
//!
//! It receives the desired state of its node (a `NodeState` from the operator) and keeps
//! the kernel there: one WireGuard interface per network service with its peers, one veth
//! pair per local member into the member's network namespace, the service's routing
//! table, and policy rules that keep each service's packets in its own table.
//!
//! [`converge`] holds the logic and is pure: from the desired state and what the kernel
//! reports now, it derives the ordered operations to apply. The appliers that talk to the
//! kernel are a thin shell around it.

pub mod agent;
pub mod converge;
pub mod dataplane;
pub mod link;
pub mod metrics;
pub mod node;

pub use wireway_runtime::errors::chain;

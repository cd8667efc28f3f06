//! The Wireway node agent.
//!
//! It receives the desired state of its node (a `NodeState` from the operator) and keeps
//! the kernel there: one WireGuard interface per network service with its peers, one veth
//! pair per local member into the member's network namespace, the service's routing
//! table, and policy rules that keep each service's packets in its own table.
//!
//! [`converge`] holds the logic and is pure: from the desired state and what the kernel
//! reports now, it derives the ordered operations to apply. The appliers that talk to the
//! kernel ([`dataplane`]) are a thin shell around it, behind a trait; [`agent`] runs one
//! pass (desired, observe, converge, apply) on them; [`session`] follows the operator's
//! stream of states and reports back; [`node`] annotates the node's Kubernetes Node.
//!
//! Modules and what each may import (dependencies point one way):
//! * `converge`: pure; imports only the node API (`wireway-proto`);
//! * `dataplane`: the kernel (netlink, WireGuard, namespaces) behind [`dataplane::Dataplane`];
//!   imports `converge`;
//! * `agent`: one pass; imports `converge`, `dataplane` and `resolver`;
//! * `session`: the operator's stream; imports `agent`, `dataplane` (the trait) and
//!   `metrics`;
//! * `resolver`: peers' host names, looked up in the background; imports nothing of the
//!   agent's;
//! * `dns`: members' DNS; its answers (`dns::answer`) are pure and import only the node API;
//! * `metrics`, `node`: import nothing of the agent's;
//! * `testing` (tests only): fixtures; imports `converge`, `dataplane` and `resolver`.

pub mod agent;
pub mod converge;
pub mod dataplane;
pub mod dns;
pub mod metrics;
pub mod node;
pub mod resolver;
pub mod session;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use wireway_runtime::errors::chain;

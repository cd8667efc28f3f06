//! The DNS the agent serves to members, on the gateway address inside each member.
//!
//! A member's queries for names of its services' zones are answered from the NodeState
//! ([`answer`], pure); names of other services' zones and under the reserved suffix are
//! refused; every other name is relayed to the node's upstream resolver ([`server`]: the
//! listeners on members' veths and the relay, a thin shell).

pub mod answer;
pub mod server;

#[cfg(test)]
mod tests;

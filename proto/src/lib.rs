//! The Wireway node API: the messages between the operator and the node agents.

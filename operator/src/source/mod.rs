//! Where the World comes from.
//!
//! A source delivers [`Event`]s: changes to the World, its current problems (what it
//! cannot use, and where that is), and once, that everything that existed when it started
//! has been delivered (synced). The operator plans only after its sources have synced, so
//! it never serves a state made from half a World.

pub mod items;
pub mod kubernetes;
pub mod manifests;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::kind::Kind;
use crate::plan::Change;

/// What a source tells the operator.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Objects changed.
    Changes(Vec<Change>),
    /// The source's problems now (replacing the ones it reported before).
    Problems(Vec<Problem>),
    /// Everything that existed when the source started has been delivered.
    Synced,
}

/// Something a source cannot use, for a person: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    /// Where: a file, or an object (`Endpoint red/red-members`).
    pub location: String,
    /// Line in the file, when the problem is in one (from 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
    /// The object, when the problem is one object's (it then gets a condition or an
    /// event saying so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<ProblemObject>,
}

/// An object a problem is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProblemObject {
    /// Its kind.
    pub kind: Kind,
    /// Its namespace (empty for cluster-scoped kinds).
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its metadata.generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.location, self.message),
            None => write!(f, "{}: {}", self.location, self.message),
        }
    }
}

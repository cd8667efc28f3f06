//! Which identities a namespace may claim for its external Endpoints.
//!
//! A pod's identity is proven by the cluster (its service account); an external host's is
//! only declared, in its Endpoint. So a declared identity is confined to the Endpoint's
//! namespace's own path of this cluster's trust domain,
//! `spiffe://<trust-domain>/ns/<namespace>` or below it (whole segments), unless an
//! IdentityGrant, which only cluster administrators write, gives that namespace more.
//! Confinement runs before any Admission rule: an identity a namespace may not claim is
//! refused whatever the Admissions say, so claiming another ID cannot sidestep a deny
//! rule either.

use wireway_crds::conditions::reason;
use wireway_crds::{GrantedIdentity, IdentityGrant, IdentityGrantStatus, SpiffeId, TrustDomain};

use super::index::Index;
use super::{ObjectKey, status};

/// One granted identity, in a form that can be evaluated.
#[derive(Debug, Clone)]
enum Matcher {
    Prefix(SpiffeId),
    TrustDomain(TrustDomain),
}

impl Matcher {
    fn matches(&self, identity: &SpiffeId) -> bool {
        match self {
            Matcher::Prefix(prefix) => identity.has_prefix(prefix),
            Matcher::TrustDomain(td) => identity.trust_domain() == td.as_str(),
        }
    }
}

/// The granted identities of a grant that compile, and why the others do not (each with
/// its place, `identities[1]`). The API server should have refused the latter.
fn compile(grant: &IdentityGrant) -> (Vec<Matcher>, Vec<String>) {
    let mut matchers = Vec::new();
    let mut invalid = Vec::new();
    for (i, identity) in grant.spec.identities.iter().enumerate() {
        match compile_one(identity) {
            Ok(m) => matchers.push(m),
            Err(e) => invalid.push(format!("spec.identities[{i}]: {e}")),
        }
    }
    (matchers, invalid)
}

fn compile_one(identity: &GrantedIdentity) -> Result<Matcher, String> {
    match (&identity.spiffe_id_prefix, &identity.trust_domain) {
        (Some(prefix), None) => prefix
            .parse()
            .map(Matcher::Prefix)
            .map_err(|e| format!("spiffeIdPrefix {prefix:?}: {e}")),
        (None, Some(td)) => td
            .parse()
            .map(Matcher::TrustDomain)
            .map_err(|e| format!("trustDomain {td:?}: {e}")),
        _ => Err("exactly one of spiffeIdPrefix or trustDomain must be set".to_owned()),
    }
}

/// How an external Endpoint's identity may be claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// It lies in the namespace's own path.
    Own,
    /// The IdentityGrant of this name gives the namespace this identity.
    Granted(String),
}

/// Whether an external Endpoint of `namespace` may claim `identity`: how, or the message
/// of its refusal (reason `IdentityNotGranted`).
pub fn confine(index: &Index, namespace: &str, identity: &SpiffeId) -> Result<Claim, String> {
    let own = index.trust_domain.as_ref().ok().and_then(|td| {
        format!("spiffe://{td}/ns/{namespace}")
            .parse::<SpiffeId>()
            .ok()
    });
    if let Some(own) = &own
        && identity.has_prefix(own)
    {
        return Ok(Claim::Own);
    }
    let granted = index.grants_for(namespace).find(|grant| {
        let (matchers, _) = compile(grant);
        matchers.iter().any(|m| m.matches(identity))
    });
    if let Some(grant) = granted {
        return Ok(Claim::Granted(ObjectKey::of(&grant.metadata).name));
    }
    let own = own.map_or_else(
        || "its own path of this cluster's trust domain".to_owned(),
        |own| format!("its own identities ({own}/...)"),
    );
    Err(format!(
        "namespace {namespace} may not claim {identity}: it lies outside {own}, and claiming it needs an IdentityGrant for namespace {namespace} that matches it, which only a cluster administrator can write"
    ))
}

/// The status of a grant: in effect, or which of its entries do not parse.
pub fn grant_status(index: &Index, grant: &IdentityGrant) -> IdentityGrantStatus {
    let (matchers, invalid) = compile(grant);
    let namespace = &grant.spec.namespace;
    let (ready, why, message) = if invalid.is_empty() {
        let granted = status::count_of(matchers.len(), "identity rule");
        let message = format!("in effect: namespace {namespace} may claim {granted}");
        (true, reason::READY, message)
    } else {
        let message = format!(
            "{}; the other entries are in effect for namespace {namespace}",
            invalid.join("; ")
        );
        (false, reason::INVALID_SPEC, message)
    };
    let previous = grant.status.as_ref().map(|s| s.conditions.as_slice());
    let generation = grant.metadata.generation;
    IdentityGrantStatus {
        observed_generation: generation,
        conditions: status::ready(
            ready,
            why,
            message,
            generation,
            previous.unwrap_or_default(),
            &index.now,
        ),
    }
}

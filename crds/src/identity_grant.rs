//! `IdentityGrant`: the identities a namespace's external Endpoints may claim beyond its
//! own.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::schema::{
    self, DNS_LABEL, MAX_RULES, SPIFFE_ID, SPIFFE_ID_MAX_LEN, TRUST_DOMAIN, TRUST_DOMAIN_MAX_LEN,
};

/// Lets one namespace claim identities outside its own for its external Endpoints.
///
/// An external Endpoint declares its host's SPIFFE ID (spec.external.spiffeId), and nothing
/// proves it: so by default a namespace may claim only identities of its own path in this
/// cluster's trust domain, spiffe://<trust-domain>/ns/<namespace> or below it. Any other
/// identity (another namespace's, a /vm/... path outside /ns/<namespace>, another trust
/// domain's) is refused with reason IdentityNotGranted, and never reaches a node, unless
/// an IdentityGrant for that namespace matches it. Only then do the service's Admissions
/// decide whether it may join.
///
/// Cluster-scoped and written only by cluster administrators: Wireway's RBAC gives no one
/// but the operator (which only reads it) any right on identitygrants, and the built-in
/// admin and edit roles do not cover it. Grant a namespace only identities its owners
/// vouch for.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "wireway.dev",
    version = "v1alpha1",
    kind = "IdentityGrant",
    doc = "Lets one namespace's external Endpoints claim identities outside its own path (spiffe://<trust-domain>/ns/<namespace>/...): SPIFFE ID prefixes or whole trust domains. Cluster-scoped; written only by cluster administrators.",
    shortname = "nsgrant",
    category = "wireway",
    status = "IdentityGrantStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Namespace","type":"string","jsonPath":".spec.namespace","description":"Namespace given the identities"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct IdentityGrantSpec {
    /// The namespace whose external Endpoints may claim these identities. One namespace
    /// per grant: to give two namespaces the same identities, write two grants.
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL))]
    pub namespace: String,

    /// The identities granted: an external Endpoint of the namespace may claim a SPIFFE ID
    /// that any of these matches. At least one.
    #[schemars(length(min = 1, max = MAX_RULES))]
    pub identities: Vec<GrantedIdentity>,
}

/// Identities granted to a namespace. Exactly one field is set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.spiffeIdPrefix) != has(self.trustDomain)").message("exactly one of spiffeIdPrefix or trustDomain must be set"))]
pub struct GrantedIdentity {
    /// This SPIFFE ID and every ID below it, whole path segments at a time (as an
    /// Admission's spiffeIdPrefix): spiffe://cluster.local/vm/backup grants
    /// spiffe://cluster.local/vm/backup/agent but not spiffe://cluster.local/vm/backupx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = SPIFFE_ID_MAX_LEN), regex(pattern = SPIFFE_ID))]
    pub spiffe_id_prefix: Option<String>,

    /// Every SPIFFE ID of this trust domain, such as partner.example: the namespace may
    /// speak for a whole company or cluster. (Members of other clusters will arrive
    /// through federation, vouched for by their own operator; this grant is for hosts a
    /// namespace's owners configure themselves.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = TRUST_DOMAIN_MAX_LEN), regex(pattern = TRUST_DOMAIN))]
    pub trust_domain: Option<String>,
}

/// What the operator made of an IdentityGrant.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IdentityGrantStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Current state: `Ready` is True (reason Ready) when the grant is in effect; False
    /// with reason InvalidSpec when an entry of spec.identities does not parse (an object
    /// stored before a validation rule existed): that entry grants nothing, the others
    /// stay in effect.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::conditions")]
    pub conditions: Vec<Condition>,
}

//! `Admission`: who may join a NetworkService.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::schema::{
    self, DNS_SUBDOMAIN, MAX_RULES, SPIFFE_ID, SPIFFE_ID_MAX_LEN, TRUST_DOMAIN,
    TRUST_DOMAIN_MAX_LEN,
};

/// Decides which workloads from outside a NetworkService's namespace may join it. Lives in
/// the service's namespace: the owner of a service decides who joins. Workloads in the
/// service's own namespace are admitted without one; everything else (other namespaces,
/// external hosts, other trust domains and clusters) needs an allow rule that matches it
/// and no deny rule that does: deny beats allow, across all Admissions of the service.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "wireway.dev",
    version = "v1alpha1",
    kind = "Admission",
    doc = "Who may join a NetworkService from outside its namespace: allow and deny rules on SPIFFE identities, trust domains and namespaces. Deny beats allow.",
    namespaced,
    shortname = "nsadm",
    category = "wireway",
    status = "AdmissionStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Service","type":"string","jsonPath":".spec.networkService","description":"NetworkService this Admission governs"}"#,
    printcolumn = r#"{"name":"Admitted","type":"integer","jsonPath":".status.admittedCount","description":"Workloads an allow rule admitted"}"#,
    printcolumn = r#"{"name":"Denied","type":"integer","jsonPath":".status.deniedCount","description":"Workloads a deny rule kept out"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("size(self.allow) + size(self.deny) > 0").message("at least one allow or deny rule is needed"))]
pub struct AdmissionSpec {
    /// Name of the NetworkService, in this Admission's namespace, that these rules govern.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN))]
    pub network_service: String,

    /// Workloads matching any of these rules may join (unless a deny rule matches them).
    #[serde(default)]
    #[schemars(length(max = MAX_RULES))]
    pub allow: Vec<AdmissionRule>,

    /// Workloads matching any of these rules may not join, whatever any allow rule says,
    /// including workloads of the service's own namespace.
    #[serde(default)]
    #[schemars(length(max = MAX_RULES))]
    pub deny: Vec<AdmissionRule>,
}

/// Matches workloads by identity. Exactly one field is set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.spiffeId), has(self.spiffeIdPrefix), has(self.trustDomain), has(self.namespaceSelector)].filter(x, x).size() == 1").message("exactly one of spiffeId, spiffeIdPrefix, trustDomain or namespaceSelector must be set"))]
pub struct AdmissionRule {
    /// Matches the workload with exactly this SPIFFE ID, such as
    /// spiffe://cluster.local/ns/red/sa/bridge (a pod's ID is
    /// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = SPIFFE_ID_MAX_LEN), regex(pattern = SPIFFE_ID))]
    pub spiffe_id: Option<String>,

    /// Matches workloads whose SPIFFE ID is this one or lies below it, whole path
    /// segments at a time: spiffe://partner.example/ns/db matches
    /// spiffe://partner.example/ns/db/sa/replica but not spiffe://partner.example/ns/dbx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = SPIFFE_ID_MAX_LEN), regex(pattern = SPIFFE_ID))]
    pub spiffe_id_prefix: Option<String>,

    /// Matches every workload of this SPIFFE trust domain, such as partner.example: a
    /// whole cluster or company.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = TRUST_DOMAIN_MAX_LEN), regex(pattern = TRUST_DOMAIN))]
    pub trust_domain: Option<String>,

    /// Matches pods of this cluster whose namespace carries these labels. An empty
    /// selector ({}) matches every namespace of this cluster; it never matches external
    /// hosts or workloads of other clusters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
}

/// What an Admission decided.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Current state: `Ready` is True when the rules are in effect; False with reason
    /// NetworkServiceNotFound when the service does not exist in this namespace, or
    /// InvalidSpec.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::conditions")]
    pub conditions: Vec<Condition>,

    /// Number of workloads admitted by one of this Admission's allow rules.
    #[serde(default)]
    pub admitted_count: i32,

    /// Number of workloads kept out by one of this Admission's deny rules.
    #[serde(default)]
    pub denied_count: i32,
}

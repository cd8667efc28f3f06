//! Schema fragments shared by the kinds: patterns, bounds and list-map markers.
//!
//! Patterns are written for both regex dialects that check them: RE2 in the API server
//! and ECMA-262 in the local validator (no look-around, no backreferences).

use schemars::{Schema, SchemaGenerator};

/// A DNS-1123 subdomain, the form of most Kubernetes object names.
pub const DNS_SUBDOMAIN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// A DNS-1123 label, the form of namespace names.
pub const DNS_LABEL: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// A SPIFFE ID per the SPIFFE ID spec: lowercase trust domain of `[a-z0-9._-]`, then path
/// segments of `[a-zA-Z0-9._-]` that are neither empty nor `.` nor `..`; no trailing slash,
/// query, fragment, port or user info.
pub const SPIFFE_ID: &str = r"^spiffe://[a-z0-9._-]+(/([a-zA-Z0-9_-][a-zA-Z0-9._-]*|\.[a-zA-Z0-9_-][a-zA-Z0-9._-]*|\.\.[a-zA-Z0-9._-]+))*$";
/// A SPIFFE trust domain name.
pub const TRUST_DOMAIN: &str = r"^[a-z0-9._-]+$";
/// A WireGuard public key: 32 bytes in standard base64 (44 characters, one `=` of padding;
/// the last data character carries only 4 bits, hence its restricted alphabet).
pub const WIREGUARD_KEY: &str = r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw480]=$";
/// `host:port`, where host is an IPv4 address, a bracketed IPv6 address or a DNS name, and
/// port is 1-65535.
pub const HOST_PORT: &str = r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?):([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$";
/// A Linux interface name: at most 15 bytes (IFNAMSIZ less the NUL), no `/`, `:` or
/// whitespace, and not `.` or `..`.
pub const INTERFACE_NAME: &str = r"^([a-zA-Z0-9_-][a-zA-Z0-9_.-]{0,14}|\.[a-zA-Z0-9_-][a-zA-Z0-9_.-]{0,13}|\.\.[a-zA-Z0-9_.-]{1,13})$";

/// Most rules one list may hold (Admission allow and deny, IdentityGrant identities);
/// bounds the cost of the CEL rules the API server runs.
pub const MAX_RULES: u32 = 64;
/// Longest SPIFFE ID the spec allows, in bytes.
pub const SPIFFE_ID_MAX_LEN: u32 = 2048;
/// Longest trust domain the spec allows, in bytes.
pub const TRUST_DOMAIN_MAX_LEN: u32 = 255;
/// Longest textual CIDR (a full IPv6 address with an IPv4 tail and `/128`).
pub const CIDR_MAX_LEN: u32 = 49;
/// Longest textual IP address.
pub const IP_MAX_LEN: u32 = 45;

/// Marks a `Vec<metav1.Condition>` as a list-map keyed by `type`, as every Kubernetes
/// API does, so server-side apply merges conditions by type.
pub fn conditions(generator: &mut SchemaGenerator) -> Schema {
    let mut schema =
        generator.subschema_for::<Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>>();
    list_map(&mut schema, "type");
    schema
}

/// Sets `x-kubernetes-list-type: map` keyed by `key` on an array schema.
pub fn list_map(schema: &mut Schema, key: &str) {
    list_map_keyed(schema, &[key]);
}

/// Sets `x-kubernetes-list-type: map` keyed by `keys` (together) on an array schema.
pub fn list_map_keyed(schema: &mut Schema, keys: &[&str]) {
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert("x-kubernetes-list-map-keys".into(), serde_json::json!(keys));
}

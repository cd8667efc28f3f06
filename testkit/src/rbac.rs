//! RBAC, read both ways: the permission a request to the API server needs, and the
//! permissions a role grants. The operator's and the agent's tests record every request
//! they make against a mock API server and check them against `config/rbac/`.

use std::collections::BTreeSet;

/// A permission: (apiGroup, resource, verb); `resource` includes a subresource
/// (`networkservices/status`).
pub type Permission = (String, String, String);

/// The permission a request needs: `GET /apis/g/v/namespaces/ns/rs/name/status` is
/// (g, rs/status, get); a collection GET is `list`, or `watch` when `watch` is set.
pub fn permission(method: &str, path: &str, watch: bool) -> Result<Permission, String> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] => (String::new(), rest),
        ["apis", group, _version, rest @ ..] => ((*group).to_owned(), rest),
        _ => return Err(format!("not an API path: {path}")),
    };
    let rest = match rest {
        ["namespaces", _namespace, rest @ ..] if !rest.is_empty() => rest,
        other => other,
    };
    let (resource, named) = match rest {
        [resource] => ((*resource).to_owned(), false),
        [resource, _name] => ((*resource).to_owned(), true),
        [resource, _name, sub] => (format!("{resource}/{sub}"), true),
        _ => return Err(format!("not a resource path: {path}")),
    };
    let verb = match (method, named, watch) {
        ("GET", _, true) => "watch",
        ("GET", false, false) => "list",
        ("GET", true, false) => "get",
        ("POST", _, _) => "create",
        ("PUT", _, _) => "update",
        ("PATCH", _, _) => "patch",
        ("DELETE", true, _) => "delete",
        ("DELETE", false, _) => "deletecollection",
        _ => return Err(format!("not an API method: {method}")),
    };
    Ok((group, resource, verb.to_owned()))
}

/// The permissions the ClusterRoles and Roles named `name` (or starting with `name-`)
/// in a YAML file grant.
pub fn granted(yaml: &str, name: &str) -> BTreeSet<Permission> {
    let mut out = BTreeSet::new();
    for doc in yaml.split("\n---") {
        let Ok(value) = serde_saphyr::from_str::<serde_json::Value>(doc) else {
            continue;
        };
        let kind = value["kind"].as_str().unwrap_or_default();
        let role = value["metadata"]["name"].as_str().unwrap_or_default();
        if !matches!(kind, "ClusterRole" | "Role")
            || !(role == name || role.starts_with(&format!("{name}-")))
        {
            continue;
        }
        let strings = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        for rule in value["rules"].as_array().into_iter().flatten() {
            for group in strings(&rule["apiGroups"]) {
                for resource in strings(&rule["resources"]) {
                    for verb in strings(&rule["verbs"]) {
                        out.insert((group.clone(), resource.clone(), verb));
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(group: &str, resource: &str, verb: &str) -> Permission {
        (group.into(), resource.into(), verb.into())
    }

    #[test]
    fn requests_map_to_permissions() {
        let cases = [
            ("GET", "/api/v1/nodes/a", false, p("", "nodes", "get")),
            ("GET", "/api/v1/pods", true, p("", "pods", "watch")),
            (
                "GET",
                "/api/v1/namespaces",
                false,
                p("", "namespaces", "list"),
            ),
            (
                "PATCH",
                "/apis/wireway.dev/v1alpha1/namespaces/red/networkservices/red/status",
                false,
                p("wireway.dev", "networkservices/status", "patch"),
            ),
            (
                "POST",
                "/apis/coordination.k8s.io/v1/namespaces/ww/leases",
                false,
                p("coordination.k8s.io", "leases", "create"),
            ),
        ];
        for (method, path, watch, want) in cases {
            assert_eq!(permission(method, path, watch), Ok(want), "{method} {path}");
        }
        assert!(permission("GET", "/healthz", false).is_err());
    }

    #[test]
    fn roles_grant_their_rules() {
        let yaml = "kind: ClusterRole\nmetadata: {name: ww}\nrules:\n- apiGroups: ['']\n  resources: [nodes, pods]\n  verbs: [get]\n---\nkind: Role\nmetadata: {name: ww-leases}\nrules:\n- apiGroups: [coordination.k8s.io]\n  resources: [leases]\n  verbs: [update]\n---\nkind: ClusterRole\nmetadata: {name: other}\nrules:\n- apiGroups: ['']\n  resources: [secrets]\n  verbs: [get]\n";
        assert_eq!(
            granted(yaml, "ww"),
            BTreeSet::from([
                p("", "nodes", "get"),
                p("", "pods", "get"),
                p("coordination.k8s.io", "leases", "update"),
            ])
        );
    }
}

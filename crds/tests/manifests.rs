//! The samples users apply and the corpus of invalid manifests, checked with the
//! generated CRDs' OpenAPI schema and CEL rules (see `wireway_crds::validation`).

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly by panicking

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use wireway_crds::manifest::{Document, documents};
use wireway_crds::validation::{Checked, Validator, Violation};

static VALIDATOR: LazyLock<Validator> =
    LazyLock::new(|| Validator::new().expect("the generated CRD schemas compile"));

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read_documents(path: &Path) -> Vec<Document> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    documents(&text)
        .into_iter()
        .map(|d| d.unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .collect()
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("readable directory entry").path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yaml") && !p.ends_with("kustomization.yaml")
        })
        .collect();
    files.sort();
    files
}

#[test]
fn every_sample_is_valid() {
    let mut wireway_objects = 0;
    for path in yaml_files(&repo().join("config/samples")) {
        for doc in read_documents(&path) {
            let kind = doc.value["kind"].as_str().unwrap_or_default().to_owned();
            match VALIDATOR.validate(&doc.value, None) {
                Ok(Checked::Valid) => wireway_objects += 1,
                Ok(Checked::Foreign) => assert!(
                    ["Namespace", "Pod", "ServiceAccount"].contains(&kind.as_str()),
                    "{}:{}: unexpected kind {kind} in the samples",
                    path.display(),
                    doc.line
                ),
                Err(violations) => panic!(
                    "{}:{}: {kind} is invalid:\n{}",
                    path.display(),
                    doc.line,
                    violations
                        .iter()
                        .map(|v| format!("  {v}\n"))
                        .collect::<String>()
                ),
            }
        }
    }
    assert!(
        wireway_objects >= 10,
        "only {wireway_objects} Wireway objects in the samples"
    );
}

/// The violations of an invalid-corpus file. One document is a create; two documents are
/// the stored object and an update to it (for transition rules).
fn rejections(file: &str) -> Vec<Violation> {
    let docs = read_documents(&repo().join("tests/invalid").join(file));
    let (old, new) = match docs.as_slice() {
        [new] => (None, new),
        [old, new] => {
            assert_eq!(
                VALIDATOR.validate(&old.value, None),
                Ok(Checked::Valid),
                "{file}: the stored object must be valid"
            );
            (Some(&old.value), new)
        }
        _ => panic!("{file}: expected one or two documents"),
    };
    match VALIDATOR.validate(&new.value, old) {
        Ok(checked) => panic!("{file} was accepted ({checked:?})"),
        Err(violations) => violations,
    }
}

/// Declares, for every file of the invalid corpus, a test naming the field and the rule
/// that must reject it; `every_invalid_file_has_a_test` keeps the list complete.
macro_rules! rejected {
    ($($test:ident: $file:literal => $field:literal by $rule:literal;)*) => {
        $(
            #[test]
            fn $test() {
                let violations = rejections($file);
                assert!(
                    violations.iter().any(|v| v.field == $field && v.rule.contains($rule)),
                    "{} should be rejected at {} by {}, got:\n{}",
                    $file, $field, $rule,
                    violations.iter().map(|v| format!("  {v}\n")).collect::<String>()
                );
            }
        )*
        const CORPUS: &[&str] = &[$($file),*];
    };
}

rejected! {
    cidr_malformed: "nsvc-cidr-malformed.yaml" => "spec.cidr" by "isCIDR(self)";
    cidr_host_bits: "nsvc-cidr-host-bits.yaml" => "spec.cidr" by "cidr(self) == cidr(self).masked()";
    cidr_immutable: "nsvc-cidr-changed.yaml" => "spec.cidr" by "self == oldSelf";
    node_prefix_shorter_than_cidr: "nsvc-node-prefix-shorter-than-cidr.yaml" => "spec.nodePrefixLength" by "self.nodePrefixLength >= cidr(self.cidr).prefixLength()";
    node_prefix_beyond_ipv4: "nsvc-node-prefix-beyond-ipv4.yaml" => "spec.nodePrefixLength" by "family() == 4 ? 32 : 128";
    node_prefix_out_of_bounds: "nsvc-node-prefix-out-of-bounds.yaml" => "spec.nodePrefixLength" by "maximum";
    node_prefix_length_required: "nsvc-missing-node-prefix-length.yaml" => "spec" by "required";
    cluster_prefix_outside_cidr: "nsvc-cluster-prefix-outside-cidr.yaml" => "spec.clusterPrefix" by "containsCIDR(self.clusterPrefix)";
    cluster_prefix_fixed_at_creation: "nsvc-cluster-prefix-added.yaml" => "spec.clusterPrefix" by "has(self.clusterPrefix) == has(oldSelf.clusterPrefix)";
    ipv6_mtu_minimum: "nsvc-ipv6-mtu-too-small.yaml" => "spec.mtu" by "self.mtu >= 1280";
    dns_zone_outside_suffix: "nsvc-dns-zone-outside-suffix.yaml" => "spec.dns.zone" by "wireway[.]internal$";
    unknown_field: "nsvc-unknown-field.yaml" => "spec" by "additionalProperties";
    selector_and_external: "nsep-both-selector-and-external.yaml" => "spec" by "has(self.podSelector) != has(self.external)";
    neither_selector_nor_external: "nsep-neither-selector-nor-external.yaml" => "spec" by "has(self.podSelector) != has(self.external)";
    endpoint_network_service_required: "nsep-missing-network-service.yaml" => "spec" by "required";
    public_key_malformed: "nsep-bad-public-key.yaml" => "spec.external.publicKey" by "pattern";
    public_key_impossible_last_char: "nsep-public-key-bad-last-char.yaml" => "spec.external.publicKey" by "pattern";
    endpoint_without_port: "nsep-endpoint-without-port.yaml" => "spec.external.endpoint" by "pattern";
    endpoint_port_out_of_range: "nsep-endpoint-port-out-of-range.yaml" => "spec.external.endpoint" by "pattern";
    address_not_an_ip: "nsep-address-not-an-ip.yaml" => "spec.external.address" by "isIP(self)";
    external_spiffe_id_malformed: "nsep-external-spiffe-id-malformed.yaml" => "spec.external.spiffeId" by "pattern";
    interface_name_too_long: "nsep-interface-name-too-long.yaml" => "spec.interfaceName" by "maxLength";
    interface_name_bad_characters: "nsep-interface-name-bad-characters.yaml" => "spec.interfaceName" by "pattern";
    interface_name_only_for_pods: "nsep-interface-name-on-external.yaml" => "spec.interfaceName" by "!has(self.interfaceName) || has(self.podSelector)";
    spiffe_id_dot_segment: "nsadm-spiffe-id-dot-segment.yaml" => "spec.allow[0].spiffeId" by "pattern";
    spiffe_id_wrong_scheme: "nsadm-spiffe-id-wrong-scheme.yaml" => "spec.allow[0].spiffeIdPrefix" by "pattern";
    rule_with_two_matchers: "nsadm-rule-with-two-matchers.yaml" => "spec.allow[0]" by ".filter(x, x).size() == 1";
    rule_with_no_matcher: "nsadm-rule-with-no-matcher.yaml" => "spec.deny[0]" by ".filter(x, x).size() == 1";
    admission_without_rules: "nsadm-no-rules.yaml" => "spec" by "size(self.allow) + size(self.deny) > 0";
    trust_domain_uppercase: "nsadm-bad-trust-domain.yaml" => "spec.allow[0].trustDomain" by "pattern";
    admission_network_service_required: "nsadm-missing-network-service.yaml" => "spec" by "required";
    grant_identity_with_two_matchers: "nsgrant-identity-with-two-matchers.yaml" => "spec.identities[0]" by "has(self.spiffeIdPrefix) != has(self.trustDomain)";
    grant_identity_with_no_matcher: "nsgrant-identity-with-no-matcher.yaml" => "spec.identities[0]" by "has(self.spiffeIdPrefix) != has(self.trustDomain)";
    grant_without_identities: "nsgrant-no-identities.yaml" => "spec.identities" by "minItems";
    grant_trust_domain_malformed: "nsgrant-bad-trust-domain.yaml" => "spec.identities[0].trustDomain" by "pattern";
    grant_spiffe_id_prefix_malformed: "nsgrant-spiffe-id-prefix-malformed.yaml" => "spec.identities[0].spiffeIdPrefix" by "pattern";
    grant_namespace_required: "nsgrant-missing-namespace.yaml" => "spec" by "required";
    grant_namespace_not_a_label: "nsgrant-bad-namespace.yaml" => "spec.namespace" by "pattern";
    peer_trust_domain_malformed: "nspeer-bad-trust-domain.yaml" => "spec.trustDomain" by "pattern";
    peer_operator_outside_its_trust_domain: "nspeer-operator-identity-outside-trust-domain.yaml" => "spec.operatorIdentity" by "startsWith('spiffe://' + self.trustDomain + '/')";
    peer_address_without_port: "nspeer-address-without-port.yaml" => "spec.address" by "pattern";
    peer_slice_host_bits: "nspeer-slice-host-bits.yaml" => "spec.services[0].prefix" by "cidr(self) == cidr(self).masked()";
    peer_trust_bundle_not_pem: "nspeer-trust-bundle-not-pem.yaml" => "spec.trustBundle" by "-----BEGIN CERTIFICATE-----";
    name_required: "metadata-name-missing.yaml" => "metadata.name" by "required";
    unknown_kind: "unknown-kind.yaml" => "kind" by "kind";
}

#[test]
fn every_invalid_file_has_a_test() {
    let on_disk: Vec<String> = yaml_files(&repo().join("tests/invalid"))
        .iter()
        .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
        .collect();
    let mut declared: Vec<&str> = CORPUS.to_vec();
    declared.sort_unstable();
    assert_eq!(
        on_disk, declared,
        "every file in tests/invalid needs a line in rejected! {{}}"
    );
}

/// The rules that the corpus expects to reject must not reject valid neighbours: a valid
/// update of a NetworkService (same cidr, new mtu) passes the transition rules.
#[test]
fn valid_update_passes_transition_rules() {
    let docs = read_documents(&repo().join("tests/invalid/nsvc-cidr-changed.yaml"));
    let old = &docs[0].value;
    let mut new = old.clone();
    new["spec"]["mtu"] = 1400.into();
    assert_eq!(VALIDATOR.validate(&new, Some(old)), Ok(Checked::Valid));
}

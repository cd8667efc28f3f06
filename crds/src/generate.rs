//! The CustomResourceDefinitions, as the checked-in files under `crds/` hold them.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::{Admission, Endpoint, IdentityGrant, NetworkService, PeerCluster};

/// A CRD and the file under `crds/` that holds it.
#[derive(Debug, Clone)]
pub struct CrdFile {
    /// File name, relative to the `crds/` directory.
    pub file_name: &'static str,
    /// The definition.
    pub crd: CustomResourceDefinition,
}

impl CrdFile {
    /// The file's content: a header saying how it was made, then the CRD as YAML.
    pub fn render(&self) -> Result<String, serde_saphyr::SerializeError> {
        let body = serde_saphyr::to_string(&self.crd)?;
        Ok(format!(
            "# Generated from the Rust types in crds/src by `make crds`; do not edit.\n{body}"
        ))
    }
}

/// Every Wireway CRD, in a fixed order.
pub fn crd_files() -> Vec<CrdFile> {
    vec![
        CrdFile {
            file_name: "networkservices.yaml",
            crd: NetworkService::crd(),
        },
        CrdFile {
            file_name: "endpoints.yaml",
            crd: Endpoint::crd(),
        },
        CrdFile {
            file_name: "admissions.yaml",
            crd: Admission::crd(),
        },
        CrdFile {
            file_name: "identitygrants.yaml",
            crd: IdentityGrant::crd(),
        },
        CrdFile {
            file_name: "peerclusters.yaml",
            crd: PeerCluster::crd(),
        },
    ]
}

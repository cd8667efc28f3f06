//! The lab's certificates: one CA, the operator's certificate, one per node, and an
//! administrator's (which reads the operator's status); and the flags that hand them to
//! the operator and the agents (mutual TLS between them).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use wireway_runtime::pki::{self as certs, CertError, Subject};

use super::Lab;

impl Lab {
    /// The CA's directory, with every certificate below it.
    fn pki(&self) -> PathBuf {
        self.dir.join("pki")
    }

    /// The CA's certificate: the lab's trust bundle.
    pub(super) fn pki_ca(&self) -> PathBuf {
        self.pki().join("ca.crt")
    }

    fn operator_pki(&self) -> PathBuf {
        self.pki().join("operator")
    }

    pub(super) fn node_pki(&self, node: &str) -> PathBuf {
        self.pki().join("nodes").join(node)
    }

    /// The administrator's certificate (`tls.crt`, `tls.key`, `ca.crt`): `wireway status`
    /// uses it by default.
    pub(super) fn admin_pki(&self) -> PathBuf {
        self.pki().join("admin")
    }

    /// Makes the CA, the operator's certificate and the administrator's.
    pub fn create_pki(&self) -> Result<(), CertError> {
        let td = &self.record.trust_domain;
        certs::create_ca_in(&self.pki(), td)?;
        let names = certs::OPERATOR_DNS_NAMES.map(str::to_owned).to_vec();
        certs::issue_into(
            &self.pki(),
            &self.operator_pki(),
            td,
            &Subject::Operator(names),
        )?;
        certs::issue_into(&self.pki(), &self.admin_pki(), td, &Subject::Admin)
    }

    /// Issues a node's certificate, unless it has one.
    pub(super) fn issue_node_certificate(&self, node: &str) -> Result<(), CertError> {
        let dir = self.node_pki(node);
        if dir.join("tls.crt").exists() {
            return Ok(());
        }
        let subject = Subject::Node(node.to_owned());
        certs::issue_into(&self.pki(), &dir, &self.record.trust_domain, &subject)
    }

    /// The operator's TLS flags.
    pub(super) fn operator_tls_args(&self) -> Vec<OsString> {
        tls_args(&self.operator_pki())
    }

    /// A node agent's TLS flags.
    pub(super) fn agent_tls_args(&self, node: &str) -> Vec<OsString> {
        tls_args(&self.node_pki(node))
    }
}

fn tls_args(dir: &Path) -> Vec<OsString> {
    let mut args = Vec::new();
    for (flag, file) in [
        ("--tls-ca", "ca.crt"),
        ("--tls-cert", "tls.crt"),
        ("--tls-key", "tls.key"),
    ] {
        args.push(flag.into());
        args.push(dir.join(file).into());
    }
    args
}

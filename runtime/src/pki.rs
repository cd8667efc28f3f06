//! Issuing the certificates of mutual TLS between the operator and the agents (`wireway
//! certs`, the lab, tests).
//!
//! One CA signs everything. The operator's certificate carries the DNS names agents dial
//! and `spiffe://<trust-domain>/wireway/operator`, and serves it as a server and as a
//! client (dialling peer clusters' operators); a node's carries
//! `spiffe://<trust-domain>/wireway/node/<node>`, which the operator checks against the
//! node an agent claims; an administrator's `spiffe://<trust-domain>/wireway/admin`, the
//! only identity the operator shows its status to. Private keys are written 0600.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::errors::FileError;
use crate::tls::{OPERATOR_SERVER_NAME, admin_identity, node_identity, operator_identity};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// Why a certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// Generating or signing failed.
    #[error("failed to {action}")]
    Generate {
        /// What was being done.
        action: String,
        /// The cause.
        #[source]
        source: rcgen::Error,
    },
    /// A file could not be read or written.
    #[error(transparent)]
    File(#[from] FileError),
}

/// The DNS names of the operator's certificate by default: what agents dial in the lab,
/// and the operator's Service in a cluster.
pub const OPERATOR_DNS_NAMES: [&str; 4] = [
    OPERATOR_SERVER_NAME,
    "wireway-operator.wireway-system",
    "wireway-operator.wireway-system.svc",
    "localhost",
];

/// How many years certificates are valid: from the first of January of this year.
const CA_YEARS: i32 = 10;
const LEAF_YEARS: i32 = 2;

fn this_year() -> i32 {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Days since 1970 → year, good to a day around New Year, which the backdating absorbs.
    1970 + i32::try_from(seconds / 31_556_952).unwrap_or(0)
}

fn validity(params: &mut CertificateParams, years: i32) {
    let year = this_year();
    params.not_before = rcgen::date_time_ymd(year - 1, 12, 1);
    params.not_after = rcgen::date_time_ymd(year + years, 1, 1);
}

fn generate(action: &str) -> impl Fn(rcgen::Error) -> CertError + '_ {
    move |source| CertError::Generate {
        action: action.to_owned(),
        source,
    }
}

/// A new CA for `trust_domain`: (certificate PEM, key PEM).
pub fn new_ca(trust_domain: &str) -> Result<(String, String), CertError> {
    let key = KeyPair::generate().map_err(generate("generate the CA key"))?;
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params
        .distinguished_name
        .push(DnType::CommonName, format!("Wireway CA ({trust_domain})"));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params, CA_YEARS);
    let cert = params
        .self_signed(&key)
        .map_err(generate("sign the CA certificate"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Who a leaf certificate is for.
#[derive(Debug, Clone)]
pub enum Subject {
    /// The operator, with the DNS names agents dial.
    Operator(Vec<String>),
    /// A node's agent.
    Node(String),
    /// An administrator, who may read the operator's status (`wireway status`).
    Admin,
}

/// A certificate for `subject`, signed by the CA: (certificate PEM, key PEM).
pub fn issue(
    ca_cert: &str,
    ca_key: &str,
    trust_domain: &str,
    subject: &Subject,
) -> Result<(String, String), CertError> {
    let ca_key = KeyPair::from_pem(ca_key).map_err(generate("read the CA key"))?;
    let issuer =
        Issuer::from_ca_cert_pem(ca_cert, ca_key).map_err(generate("read the CA certificate"))?;
    let (common_name, dns, uri, usages) = match subject {
        Subject::Operator(names) => (
            "wireway-operator".to_owned(),
            names.clone(),
            operator_identity(trust_domain),
            // A client too: it dials peer clusters' operators (federation).
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        ),
        Subject::Node(node) => (
            format!("wireway-agent {node}"),
            Vec::new(),
            node_identity(trust_domain, node),
            vec![ExtendedKeyUsagePurpose::ClientAuth],
        ),
        Subject::Admin => (
            "wireway admin".to_owned(),
            Vec::new(),
            admin_identity(trust_domain),
            vec![ExtendedKeyUsagePurpose::ClientAuth],
        ),
    };
    let mut params =
        CertificateParams::new(dns).map_err(generate("use the certificate's DNS names"))?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    let uri = uri
        .try_into()
        .map_err(generate("use the certificate's identity"))?;
    params.subject_alt_names.push(SanType::URI(uri));
    params.extended_key_usages = usages;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut params, LEAF_YEARS);
    let key = KeyPair::generate().map_err(generate("generate a key"))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(generate("sign the certificate"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Reads a file.
pub fn read(path: &Path) -> Result<String, CertError> {
    Ok(std::fs::read_to_string(path).map_err(FileError::on("read", path))?)
}

/// Writes `text` to `path`, 0600 when `private`, creating the directory: whole or not at
/// all, durably, never through a symbolic link ([`crate::files::write_file`]).
pub fn write(path: &Path, text: &str, private: bool) -> Result<(), CertError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(FileError::on("create the directory of", path))?;
    }
    let mode = if private { 0o600 } else { 0o644 };
    crate::files::write_file(path, text.as_bytes(), mode).map_err(FileError::on("write", path))?;
    Ok(())
}

/// Issues a certificate into `dir` as `tls.crt` and `tls.key`, with the CA's certificate
/// beside them as `ca.crt` (the layout of a Kubernetes TLS secret).
pub fn issue_into(
    ca_dir: &Path,
    dir: &Path,
    trust_domain: &str,
    subject: &Subject,
) -> Result<(), CertError> {
    let ca_cert = read(&ca_dir.join("ca.crt"))?;
    let ca_key = read(&ca_dir.join("ca.key"))?;
    let (cert, key) = issue(&ca_cert, &ca_key, trust_domain, subject)?;
    write(&dir.join("tls.key"), &key, true)?;
    write(&dir.join("tls.crt"), &cert, false)?;
    write(&dir.join("ca.crt"), &ca_cert, false)
}

/// Creates a CA in `dir` as `ca.crt` and `ca.key`.
pub fn create_ca_in(dir: &Path, trust_domain: &str) -> Result<(), CertError> {
    let (cert, key) = new_ca(trust_domain)?;
    write(&dir.join("ca.key"), &key, true)?;
    write(&dir.join("ca.crt"), &cert, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der(pem: &str) -> Vec<u8> {
        use base64::Engine;
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap()
    }

    #[test]
    fn a_key_is_never_written_through_a_planted_link_and_only_its_owner_reads_it() {
        use std::os::unix::fs::{PermissionsExt, symlink};
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("someone-elses");
        std::fs::write(&elsewhere, "theirs").unwrap();
        let key = dir.path().join("pki/tls.key");
        std::fs::create_dir_all(key.parent().unwrap()).unwrap();
        symlink(&elsewhere, &key).unwrap();
        write(&key, "KEY", true).unwrap();
        assert_eq!(std::fs::read_to_string(&elsewhere).unwrap(), "theirs");
        assert_eq!(std::fs::read_to_string(&key).unwrap(), "KEY");
        let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&key), 0o600);
        let cert = dir.path().join("pki/tls.crt");
        write(&cert, "CERT", false).unwrap();
        assert_eq!(mode(&cert), 0o644);
    }

    #[test]
    fn each_certificate_carries_its_identity() {
        let (ca_cert, ca_key) = new_ca("cluster.local").unwrap();
        let (cert, key) = issue(
            &ca_cert,
            &ca_key,
            "cluster.local",
            &Subject::Node("node-a".into()),
        )
        .unwrap();
        assert!(key.contains("PRIVATE KEY"));
        let uris = crate::tls::uris(&der(&cert));
        assert_eq!(uris, ["spiffe://cluster.local/wireway/node/node-a"]);
        let (operator, _) = issue(
            &ca_cert,
            &ca_key,
            "cluster.local",
            &Subject::Operator(vec!["wireway-operator".into()]),
        )
        .unwrap();
        assert_eq!(
            crate::tls::uris(&der(&operator)),
            ["spiffe://cluster.local/wireway/operator"]
        );
        let (admin, _) = issue(&ca_cert, &ca_key, "cluster.local", &Subject::Admin).unwrap();
        assert_eq!(
            crate::tls::uris(&der(&admin)),
            ["spiffe://cluster.local/wireway/admin"]
        );
    }
}

//! Mutual TLS between the operator and the agents, from PEM files, and the identities the
//! certificates carry.
//!
//! Every Wireway certificate is signed by one CA. The operator's certificate names the
//! DNS names agents dial (`wireway-operator`, and the in-cluster service name); an
//! agent's certificate carries the URI `spiffe://<trust-domain>/wireway/node/<node>`, and
//! the operator serves a node's state only to the agent that proves that node's identity;
//! an administrator's carries `spiffe://<trust-domain>/wireway/admin`, the only identity
//! the operator shows its status to.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// The DNS name agents expect in the operator's certificate unless told otherwise.
pub const OPERATOR_SERVER_NAME: &str = "wireway-operator";

/// Where a binary finds its TLS files, and whether TLS is off.
#[derive(Debug, Clone, clap::Args)]
pub struct TlsArgs {
    /// PEM file of the CA that signs every Wireway certificate (the operator's and the
    /// agents').
    #[arg(
        long = "tls-ca",
        env = "WIREWAY_TLS_CA",
        default_value = "/etc/wireway/tls/ca.crt"
    )]
    pub ca: PathBuf,
    /// PEM file of this binary's certificate.
    #[arg(
        long = "tls-cert",
        env = "WIREWAY_TLS_CERT",
        default_value = "/etc/wireway/tls/tls.crt"
    )]
    pub cert: PathBuf,
    /// PEM file of this binary's private key.
    #[arg(
        long = "tls-key",
        env = "WIREWAY_TLS_KEY",
        default_value = "/etc/wireway/tls/tls.key"
    )]
    pub key: PathBuf,
    /// Talk gRPC without TLS. Anyone who reaches the port can then claim to be any node:
    /// for debugging only.
    #[arg(long, env = "WIREWAY_INSECURE_PLAINTEXT")]
    pub insecure_plaintext: bool,
}

/// Why the TLS files are unusable.
#[derive(Debug, thiserror::Error)]
#[error("failed to read the TLS {what} {} (or pass --insecure-plaintext to run without TLS, for debugging)", path.display())]
pub struct TlsError {
    what: &'static str,
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// The PEM contents of a CA, and of a certificate and its key (absent for a client that
/// proves itself otherwise, with a token).
#[derive(Debug, Clone)]
pub struct Pem {
    ca: Vec<u8>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsArgs {
    /// The CA alone (for a client that proves itself with a token), or `None` in
    /// plaintext mode.
    pub fn load_ca(&self) -> Result<Option<Pem>, TlsError> {
        if self.insecure_plaintext {
            return Ok(None);
        }
        let ca = std::fs::read(&self.ca).map_err(|source| TlsError {
            what: "CA certificate",
            path: self.ca.clone(),
            source,
        })?;
        Ok(Some(Pem { ca, identity: None }))
    }

    /// The files' contents, or `None` in plaintext mode.
    pub fn load(&self) -> Result<Option<Pem>, TlsError> {
        if self.insecure_plaintext {
            return Ok(None);
        }
        let read = |what, path: &Path| {
            std::fs::read(path).map_err(|source| TlsError {
                what,
                path: path.to_owned(),
                source,
            })
        };
        Ok(Some(Pem {
            ca: read("CA certificate", &self.ca)?,
            identity: Some((
                read("certificate", &self.cert)?,
                read("private key", &self.key)?,
            )),
        }))
    }
}

impl Pem {
    /// This binary's certificate and key, PEM, if it has them.
    pub fn certificate_and_key(&self) -> Option<(&[u8], &[u8])> {
        self.identity
            .as_ref()
            .map(|(cert, key)| (cert.as_slice(), key.as_slice()))
    }

    /// A server that presents this certificate; with `client_certificates`, it requires
    /// clients signed by the CA (otherwise clients prove themselves some other way).
    pub fn server(&self, client_certificates: bool) -> ServerTlsConfig {
        let mut config = ServerTlsConfig::new();
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        if client_certificates {
            config.client_ca_root(Certificate::from_pem(&self.ca))
        } else {
            config
        }
    }

    /// A client that presents this certificate (if it has one) and accepts a server
    /// signed by the CA under `server_name`.
    pub fn client(&self, server_name: &str) -> ClientTlsConfig {
        let config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .domain_name(server_name);
        match &self.identity {
            Some((cert, key)) => config.identity(Identity::from_pem(cert, key)),
            None => config,
        }
    }
}

/// The identity a node agent proves: `spiffe://<trust-domain>/wireway/node/<node>`.
pub fn node_identity(trust_domain: &str, node: &str) -> String {
    format!("spiffe://{trust_domain}/wireway/node/{node}")
}

/// The operator's identity: `spiffe://<trust-domain>/wireway/operator`.
pub fn operator_identity(trust_domain: &str) -> String {
    format!("spiffe://{trust_domain}/wireway/operator")
}

/// An administrator's identity, the only one that may read the operator's status:
/// `spiffe://<trust-domain>/wireway/admin`.
pub fn admin_identity(trust_domain: &str) -> String {
    format!("spiffe://{trust_domain}/wireway/admin")
}

/// The node a URI names, if it is a node identity of `trust_domain`.
pub fn node_of<'a>(uri: &'a str, trust_domain: &str) -> Option<&'a str> {
    let node = uri
        .strip_prefix("spiffe://")?
        .strip_prefix(trust_domain)?
        .strip_prefix("/wireway/node/")?;
    (!node.is_empty() && !node.contains('/')).then_some(node)
}

/// The URIs in the subject alternative names of the client's certificate, when the
/// request came over mutual TLS (TCP or Unix socket); empty otherwise.
pub fn peer_uris<T>(request: &tonic::Request<T>) -> Vec<String> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo, UdsConnectInfo};
    let extensions = request.extensions();
    let certs = extensions
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(TlsConnectInfo::peer_certs)
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<UdsConnectInfo>>()
                .and_then(TlsConnectInfo::peer_certs)
        });
    certs
        .and_then(|certs| certs.first().map(|leaf| uris(leaf.as_ref())))
        .unwrap_or_default()
}

/// Adds `authorization: Bearer <token>` to every call, the token read from its file at
/// each call (the kubelet rotates projected tokens in place); without a file, nothing.
#[derive(Debug, Clone)]
pub struct BearerToken(pub Option<PathBuf>);

impl tonic::service::Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(path) = &self.0 {
            let token = std::fs::read_to_string(path).map_err(|e| {
                tonic::Status::unauthenticated(format!(
                    "cannot read the token {}: {e}",
                    path.display()
                ))
            })?;
            let value = format!("Bearer {}", token.trim())
                .parse()
                .map_err(|_| tonic::Status::unauthenticated("the token is not a header value"))?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

/// The URI subject alternative names of a DER certificate.
pub fn uris(der: &[u8]) -> Vec<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some((*uri).to_owned()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_identities_round_trip() {
        let id = node_identity("cluster.local", "node-a");
        assert_eq!(id, "spiffe://cluster.local/wireway/node/node-a");
        assert_eq!(node_of(&id, "cluster.local"), Some("node-a"));
        assert_eq!(node_of(&id, "other.example"), None);
        assert_eq!(
            node_of("spiffe://cluster.local/wireway/node/", "cluster.local"),
            None
        );
        assert_eq!(
            node_of("spiffe://cluster.local/wireway/node/a/b", "cluster.local"),
            None
        );
        assert_eq!(
            node_of(&operator_identity("cluster.local"), "cluster.local"),
            None
        );
        assert_eq!(
            node_of(&admin_identity("cluster.local"), "cluster.local"),
            None
        );
    }
}

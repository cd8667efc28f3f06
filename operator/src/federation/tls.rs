//! Mutual TLS between peer clusters' operators, by SPIFFE identity.
//!
//! Each operator presents its certificate (`--tls-cert`), which names it
//! `spiffe://<trust-domain>/wireway/operator` and is signed by its cluster's CA. A peer is
//! accepted only if its certificate's URI names the operator identity of a PeerCluster
//! *and* chains to that PeerCluster's own trust bundle: a CA trusted for one peer proves
//! nothing for another, and a workload certificate of the peer's trust domain is no
//! operator. Server names play no part (SPIFFE verification is by URI), so a peer's
//! address may be any host name or IP.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{
    CryptoProvider, WebPkiSupportedAlgorithms, ring, verify_tls12_signature, verify_tls13_signature,
};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{
    CertificateDer, PrivateKeyDer, ServerName, TrustAnchor, UnixTime,
};
use tokio_rustls::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio_rustls::rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, Error, ServerConfig, SignatureScheme,
};
use wireway_runtime::tls::uris;

/// Why a peer's trust cannot be used, or this operator's own certificate.
#[derive(Debug, thiserror::Error)]
pub enum TlsProblem {
    /// The trust bundle holds no certificate that parses.
    #[error("spec.trustBundle holds no usable PEM certificate")]
    EmptyBundle,
    /// A certificate of the bundle is not a usable CA.
    #[error("spec.trustBundle: a certificate is not a usable CA: {0}")]
    BadAnchor(webpki::Error),
    /// This operator's own certificate or key.
    #[error("this operator's TLS certificate or key: {0}")]
    Own(String),
    /// The TLS configuration.
    #[error(transparent)]
    Config(#[from] Error),
}

/// What one peer is trusted with: its name and the CAs of its trust bundle.
#[derive(Debug, Clone)]
struct PeerTrust {
    name: String,
    anchors: Vec<TrustAnchor<'static>>,
}

/// Every peer's operator identity and trust bundle: whom this operator accepts.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    by_identity: BTreeMap<String, PeerTrust>,
}

/// A peer as its PeerCluster declares it, for TLS: its name, the identity its operator
/// proves, and its trust bundle (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The PeerCluster's name.
    pub name: String,
    /// The SPIFFE ID its operator proves.
    pub identity: String,
    /// Its trust bundle, PEM.
    pub bundle: String,
}

impl Trust {
    /// The trust of `peers`, with the peers whose bundle is unusable and why (they are
    /// left out: nobody proves them).
    pub fn new(peers: &[PeerIdentity]) -> (Self, Vec<(String, TlsProblem)>) {
        let mut trust = Self::default();
        let mut problems = Vec::new();
        for peer in peers {
            match anchors(&peer.bundle) {
                Ok(anchors) => {
                    let entry = PeerTrust {
                        name: peer.name.clone(),
                        anchors,
                    };
                    trust.by_identity.insert(peer.identity.clone(), entry);
                }
                Err(problem) => problems.push((peer.name.clone(), problem)),
            }
        }
        (trust, problems)
    }

    /// Verifies a presented chain: the leaf must name the operator identity of a peer,
    /// chain to that peer's bundle and be valid for `usage`. Returns the peer's name.
    pub fn verify(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
    ) -> Result<String, Error> {
        let peer = uris(leaf.as_ref())
            .iter()
            .find_map(|uri| self.by_identity.get(uri))
            .ok_or_else(|| {
                Error::General(
                    "the certificate names no peer cluster's operator identity".to_owned(),
                )
            })?;
        let cert = webpki::EndEntityCert::try_from(leaf)
            .map_err(|e| Error::General(format!("the certificate does not parse: {e}")))?;
        cert.verify_for_usage(
            ring::default_provider()
                .signature_verification_algorithms
                .all,
            &peer.anchors,
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(|e| {
            Error::General(format!(
                "the certificate of peer cluster {}'s operator does not chain to its trust bundle: {e}",
                peer.name
            ))
        })?;
        Ok(peer.name.clone())
    }

    /// The peer a verified leaf certificate names, if any (after the handshake).
    pub fn peer_of(&self, leaf: &CertificateDer<'_>) -> Option<String> {
        uris(leaf.as_ref())
            .iter()
            .find_map(|uri| self.by_identity.get(uri))
            .map(|p| p.name.clone())
    }
}

fn anchors(bundle: &str) -> Result<Vec<TrustAnchor<'static>>, TlsProblem> {
    let anchors = CertificateDer::pem_slice_iter(bundle.as_bytes())
        .filter_map(Result::ok)
        .map(|der| {
            webpki::anchor_from_trusted_cert(&der)
                .map(|a| a.to_owned())
                .map_err(TlsProblem::BadAnchor)
        })
        .collect::<Result<Vec<_>, _>>()?;
    if anchors.is_empty() {
        return Err(TlsProblem::EmptyBundle);
    }
    Ok(anchors)
}

/// The trust in effect, shared with every handshake: replaced as PeerClusters change.
pub type SharedTrust = Arc<RwLock<Trust>>;

fn algorithms() -> WebPkiSupportedAlgorithms {
    ring::default_provider().signature_verification_algorithms
}

fn trust_of(shared: &SharedTrust) -> Trust {
    shared.read().map(|t| t.clone()).unwrap_or_default()
}

/// Accepts a client whose certificate proves a peer's operator.
#[derive(Debug)]
struct PeerClients {
    trust: SharedTrust,
}

impl ClientCertVerifier for PeerClients {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        trust_of(&self.trust).verify(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
        )?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}

/// Accepts a server only if it proves the operator of one peer cluster.
#[derive(Debug)]
struct PeerServer {
    trust: SharedTrust,
    peer: String,
}

impl ServerCertVerifier for PeerServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let proven = trust_of(&self.trust).verify(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
        )?;
        if proven != self.peer {
            return Err(Error::General(format!(
                "dialled peer cluster {} but the server proves peer cluster {proven}",
                self.peer
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}

/// This operator's certificate chain and key, PEM.
#[derive(Debug, Clone)]
pub struct OwnIdentity {
    /// Certificate chain, PEM.
    pub cert: String,
    /// Private key, PEM.
    pub key: String,
}

impl OwnIdentity {
    fn parts(&self) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsProblem> {
        let chain = CertificateDer::pem_slice_iter(self.cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsProblem::Own(e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(self.key.as_bytes())
            .map_err(|e| TlsProblem::Own(e.to_string()))?;
        Ok((chain, key))
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// The server side: presents `own`, requires a client proving a peer's operator.
pub fn server_config(own: &OwnIdentity, trust: SharedTrust) -> Result<ServerConfig, TlsProblem> {
    let (chain, key) = own.parts()?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(PeerClients { trust }))
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The client side, dialling `peer`: presents `own`, requires the server to prove that
/// peer's operator.
pub fn client_config(
    own: &OwnIdentity,
    trust: SharedTrust,
    peer: &str,
) -> Result<ClientConfig, TlsProblem> {
    let (chain, key) = own.parts()?;
    let verifier = PeerServer {
        trust,
        peer: peer.to_owned(),
    };
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

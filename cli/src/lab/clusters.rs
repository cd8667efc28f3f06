//! A lab of several clusters that federate: `wireway lab up DIR` where `DIR/clusters.yaml`
//! names the clusters, each with its own manifests directory beside the file.
//!
//! Each cluster is a lab of its own (its CA and trust domain, operator, nodes, pods and
//! underlay, in `<lab dir>/clusters/<cluster>`), its operator serving federation on a port
//! of 127.0.0.1. A router namespace sits on every cluster's underlay bridge; nodes reach
//! the other clusters' underlays through it. A cluster `behindNat` is masqueraded there:
//! what its nodes send out leaves with the router's address, nothing gets in that they did
//! not start, its operator sends its nodes without endpoints, and its peers are told an
//! operator address that refuses (it dials them; they cannot dial it). The lab writes each
//! cluster a PeerCluster for every other one (its trust bundle, its federation address,
//! and for each NetworkService both clusters hold, the other's `clusterPrefix` as its
//! slice). Which workloads join stays the manifests' Admissions' decision.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use wireway_crds::NetworkService;
use wireway_operator::plan::ObjectKey;
use wireway_operator::snapshot::Snapshot;
use wireway_operator::source::manifests::Manifests;
use wireway_runtime::errors::FileError;

use super::commands::{Up, UpError, step};
use super::matrix::{self, ClusterView, Matrix};
use super::measure::{self, MeasureError};
use super::net::{self, NetError};
use super::record::FederationRecord;
use super::underlay::{router_address, underlay_prefix};
use super::{CreateError, Lab};

/// The file that makes a lab of several clusters.
pub const FILE: &str = "clusters.yaml";
/// Most clusters one lab holds (underlays 172.31/16 down to 172.22/16).
pub const MAX_CLUSTERS: usize = 10;
/// The address a cluster behind NAT is given to its peers: nothing listens there, so
/// dialling it is refused at once (it dials them).
const UNREACHABLE: &str = "127.0.0.1:9";

/// `clusters.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClustersFile {
    /// The clusters, two or more.
    pub clusters: Vec<ClusterSpec>,
}

/// One cluster of the lab.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterSpec {
    /// Its name: what the other clusters' PeerClusters call it (a DNS label).
    pub name: String,
    /// Its SPIFFE trust domain (each cluster its own).
    pub trust_domain: String,
    /// Its manifests, a directory relative to `clusters.yaml`.
    pub manifests: PathBuf,
    /// Nodes the lab makes of its own for it (default: 3 when its manifests declare none).
    #[serde(default)]
    pub nodes: Option<usize>,
    /// Whether its nodes are behind NAT.
    #[serde(default)]
    pub behind_nat: bool,
}

/// Why a lab of several clusters could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClustersError {
    /// The file could not be read.
    #[error(transparent)]
    Read(FileError),
    /// The file says something impossible.
    #[error("{}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The router could not be made.
    #[error(
        "failed to make the router between the clusters (`wireway lab down` removes what was made)"
    )]
    Router(#[source] NetError),
    /// A cluster's PeerClusters could not be written.
    #[error("failed to write the PeerClusters of cluster {cluster}")]
    Peers {
        /// The cluster.
        cluster: String,
        /// The cause.
        #[source]
        source: FileError,
    },
    /// A cluster's lab failed.
    #[error("cluster {cluster}")]
    Cluster {
        /// The cluster.
        cluster: String,
        /// The cause.
        #[source]
        source: Box<UpError>,
    },
}

/// The clusters file among `manifests`: given one directory holding [`FILE`].
pub fn find(manifests: &[PathBuf]) -> Option<PathBuf> {
    match manifests {
        [dir] if dir.join(FILE).is_file() => Some(dir.join(FILE)),
        _ => None,
    }
}

/// Reads and checks a clusters file.
pub fn read(path: &Path) -> Result<ClustersFile, ClustersError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ClustersError::Read(FileError::on("read", path)(e)))?;
    let invalid = |message: String| ClustersError::Invalid {
        path: path.to_owned(),
        message,
    };
    let file: ClustersFile = serde_saphyr::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    if !(2..=MAX_CLUSTERS).contains(&file.clusters.len()) {
        return Err(invalid(format!(
            "a lab of several clusters holds 2 to {MAX_CLUSTERS} clusters, not {}",
            file.clusters.len()
        )));
    }
    let mut names = BTreeSet::new();
    let mut domains = BTreeSet::new();
    for c in &file.clusters {
        let label = !c.name.is_empty()
            && c.name.len() <= 63
            && c.name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !label {
            return Err(invalid(format!(
                "cluster name {:?} is not a DNS label",
                c.name
            )));
        }
        if !names.insert(&c.name) {
            return Err(invalid(format!("cluster {} is named twice", c.name)));
        }
        if !domains.insert(&c.trust_domain) {
            return Err(invalid(format!(
                "trust domain {} is two clusters': each has its own",
                c.trust_domain
            )));
        }
    }
    Ok(file)
}

/// The lab name of the `index`th cluster of lab `name`: at most 8 characters.
fn cluster_lab_name(name: &str, index: usize) -> String {
    let stem: String = name.chars().take(7).collect();
    format!("{stem}{index}")
}

/// A port of 127.0.0.1 free right now.
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The router's link to cluster `index`'s underlay.
fn router_leg(index: usize) -> String {
    format!("c{index}")
}

impl Lab {
    /// The router between the clusters' underlays.
    fn router(&self) -> String {
        self.record.netns("router")
    }

    /// Makes the router's namespace, forwarding.
    fn create_router(&mut self) -> Result<(), ClustersError> {
        let router = self.router();
        self.record.namespaces.insert(router.clone());
        self.save().map_err(|e| {
            ClustersError::Router(NetError::Ip {
                command: "save the record".into(),
                said: e.to_string(),
            })
        })?;
        net::add_netns(&router).map_err(ClustersError::Router)?;
        net::ip(&[
            "netns",
            "exec",
            &router,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ])
        .map_err(ClustersError::Router)
    }

    /// Links the router to `cluster`'s underlay bridge (the `index`th), at the top of its
    /// range; behind NAT, masquerades what leaves it and lets in only replies.
    fn route(&self, cluster: &Lab, index: usize, behind_nat: bool) -> Result<(), ClustersError> {
        let router = self.router();
        let leg = router_leg(index);
        let switch = cluster.switch();
        let underlay = u8::try_from(index).unwrap_or(u8::MAX);
        let (address, length) = router_address(underlay);
        let link = || {
            if net::ip(&["-n", &router, "link", "show", &leg]).is_err() {
                net::ip(&[
                    "link", "add", &leg, "netns", &router, "type", "veth", "peer", "name", "rt",
                    "netns", &switch,
                ])?;
            }
            net::ip(&["-n", &switch, "link", "set", "rt", "master", "br0", "up"])?;
            let _ = net::ip(&[
                "-n",
                &router,
                "addr",
                "add",
                &format!("{address}/{length}"),
                "dev",
                &leg,
            ]);
            net::ip(&["-n", &router, "link", "set", &leg, "up"])
        };
        link().map_err(ClustersError::Router)?;
        if behind_nat {
            let prefix = underlay_prefix(underlay);
            let rules = format!(
                "table ip wwnat{index} {{\n\
                 chain out {{ type nat hook postrouting priority srcnat; ip saddr {prefix} oifname != \"{leg}\" masquerade; }}\n\
                 chain in {{ type filter hook forward priority filter; oifname \"{leg}\" ct state new drop; }}\n\
                 }}\n"
            );
            nft(&router, &rules).map_err(ClustersError::Router)?;
        }
        Ok(())
    }
}

/// Loads an nftables ruleset in a namespace.
fn nft(netns: &str, rules: &str) -> Result<(), NetError> {
    use std::io::Write as _;
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", netns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(NetError::RunIp)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(rules.as_bytes()).map_err(NetError::RunIp)?;
    }
    let out = child.wait_with_output().map_err(NetError::RunIp)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetError::Ip {
            command: format!("netns exec {netns} nft -f -"),
            said: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// A cluster as the lab made it.
#[derive(Debug)]
pub struct Made {
    /// The cluster.
    pub spec: ClusterSpec,
    /// Its lab.
    pub lab: Lab,
    /// Its NetworkServices' slices (`clusterPrefix`), by service.
    pub slices: BTreeMap<ObjectKey, String>,
}

/// The PeerClusters cluster `me` holds: one per other cluster, with its trust bundle, its
/// federation address, and its slice of every service both hold.
fn peer_clusters(me: &Made, all: &[Made]) -> Result<String, FileError> {
    let mut out = String::from(
        "# Written by `wireway lab up`: this cluster's peers in the lab, one PeerCluster each.\n",
    );
    for other in all.iter().filter(|o| o.spec.name != me.spec.name) {
        let Some(federation) = &other.lab.record.federation else {
            continue;
        };
        let ca_path = other.lab.pki_ca();
        let ca = std::fs::read_to_string(&ca_path).map_err(FileError::on("read", &ca_path))?;
        let bundle: String = ca.lines().map(|l| format!("    {l}\n")).collect();
        let address = if federation.behind_nat {
            UNREACHABLE.to_owned()
        } else {
            federation.listen.to_string()
        };
        let mut services = String::new();
        for (key, slice) in &other.slices {
            if me.slices.contains_key(key) {
                let _ = writeln!(
                    services,
                    "    - {{namespace: {}, name: {}, prefix: {slice}}}",
                    key.namespace, key.name
                );
            }
        }
        let _ = write!(
            out,
            "---\napiVersion: wireway.dev/v1alpha1\nkind: PeerCluster\nmetadata:\n  name: {}\nspec:\n  trustDomain: {}\n  address: \"{address}\"\n  trustBundle: |\n{bundle}",
            other.spec.name, other.spec.trust_domain
        );
        if !services.is_empty() {
            let _ = write!(out, "  services:\n{services}");
        }
    }
    Ok(out)
}

/// The slices of the NetworkServices in `manifests`.
fn slices(manifests: &Path) -> Result<BTreeMap<ObjectKey, String>, UpError> {
    let mut source = Manifests::new(vec![manifests.to_owned()]).map_err(UpError::Manifests)?;
    source.scan();
    Ok(source
        .network_services()
        .filter_map(|s: &NetworkService| {
            Some((ObjectKey::of(&s.metadata), s.spec.cluster_prefix.clone()?))
        })
        .collect())
}

impl Up {
    /// Makes a lab of the clusters `path` names, starts it and waits until every cluster
    /// has converged with its peers' members: returns the lab and each cluster's lab with
    /// its operator's statuses.
    pub(super) async fn start_clusters(
        &self,
        path: &Path,
    ) -> Result<(Lab, Vec<(Made, Snapshot)>), UpError> {
        let file = read(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let binaries = super::supervision::binaries(self.bin_dir.as_deref())?;
        let root = std::path::absolute(base).unwrap_or_else(|_| base.to_owned());
        let mut lab = Lab::create(self.dir.clone(), &self.name, vec![root], "", 0, binaries)?;
        eprintln!("lab {}: {} clusters", self.name, file.clusters.len());
        lab.create_router()?;
        let mut made: Vec<Made> = Vec::new();
        let mut inventories = Vec::new();
        for (index, spec) in file.clusters.iter().enumerate() {
            let dir = self.dir.join("clusters").join(&spec.name);
            lab.record.clusters.insert(spec.name.clone(), dir.clone());
            lab.save().map_err(CreateError::from)?;
            let in_cluster = |source: UpError| ClustersError::Cluster {
                cluster: spec.name.clone(),
                source: Box::new(source),
            };
            let manifests = base.join(&spec.manifests);
            let up = Up {
                name: cluster_lab_name(&self.name, index),
                dir,
                manifests: vec![manifests.clone()],
                nodes: spec.nodes,
                trust_domain: spec.trust_domain.clone(),
                bin_dir: self.bin_dir.clone(),
                timeout: self.timeout,
                json: self.json,
                dns_upstream: self.dns_upstream,
                kubernetes: None,
            };
            let listen = free_port().map(|port| SocketAddr::from(([127, 0, 0, 1], port)));
            let listen = listen.map_err(|e| {
                in_cluster(UpError::Create(CreateError::Directory(FileError::on(
                    "find a free port for",
                    &up.dir,
                )(e))))
            })?;
            let federation = FederationRecord {
                cluster: spec.name.clone(),
                underlay: u8::try_from(index).unwrap_or(u8::MAX),
                listen,
                behind_nat: spec.behind_nat,
            };
            let (cluster, inventory) = up.make(Some(federation)).await.map_err(in_cluster)?;
            lab.route(&cluster, index, spec.behind_nat)?;
            step(&format!(
                "cluster {} ({}): underlay {}{}, federation on {listen}",
                spec.name,
                spec.trust_domain,
                underlay_prefix(u8::try_from(index).unwrap_or(u8::MAX)),
                if spec.behind_nat { ", behind NAT" } else { "" }
            ));
            let slices = slices(&manifests).map_err(in_cluster)?;
            made.push(Made {
                spec: spec.clone(),
                lab: cluster,
                slices,
            });
            inventories.push(inventory);
        }
        for cluster in &made {
            let peers = peer_clusters(cluster, &made).and_then(|text| {
                let path = cluster.lab.own_manifests().join("peers.yaml");
                std::fs::write(&path, text).map_err(FileError::on("write", &path))
            });
            peers.map_err(|source| ClustersError::Peers {
                cluster: cluster.spec.name.clone(),
                source,
            })?;
        }
        step("PeerClusters written: each cluster peers with every other");
        for (cluster, inventory) in made.iter_mut().zip(&inventories) {
            let name = cluster.spec.name.clone();
            self.launch(&mut cluster.lab, inventory)
                .map_err(|source| ClustersError::Cluster {
                    cluster: name,
                    source: Box::new(source),
                })?;
        }
        let mut converged = Vec::new();
        for cluster in made {
            let snapshot = wait_federated(&cluster, self.timeout)
                .await
                .map_err(|source| ClustersError::Cluster {
                    cluster: cluster.spec.name.clone(),
                    source: Box::new(UpError::Converge(source)),
                })?;
            converged.push((cluster, snapshot));
        }
        Ok((lab, converged))
    }
}

/// Waits until `cluster` has converged and has heard from every peer it can hear from
/// (every PeerCluster of its service statuses connected, or behind NAT and dialling in).
async fn wait_federated(
    cluster: &Made,
    timeout: std::time::Duration,
) -> Result<Snapshot, MeasureError> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let snapshot = cluster.lab.wait_converged(left, |_| {}).await?;
        let synced = snapshot
            .network_services
            .iter()
            .flat_map(|s| s.status.iter().flat_map(|st| &st.peers))
            .all(|p| p.last_sync.is_some());
        if synced || left.is_zero() {
            return Ok(snapshot);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// The matrix of every cluster's workloads against every cluster's members, as the
/// clusters' statuses call for it, measured.
pub async fn measure_clusters(clusters: &[(Made, Snapshot)]) -> Result<Matrix, MeasureError> {
    let workloads: Vec<BTreeSet<String>> = clusters
        .iter()
        .map(|(c, _)| c.lab.record.pods.keys().cloned().collect())
        .collect();
    let views: Vec<ClusterView<'_>> = clusters
        .iter()
        .zip(&workloads)
        .map(|((c, snapshot), workloads)| ClusterView {
            name: Some(c.spec.name.as_str()),
            workloads,
            snapshot,
        })
        .collect();
    let expectation = matrix::expect_clusters(&views);
    measure::measure(expectation, |row| {
        let (cluster, pod) = row.split_once(':')?;
        let (made, _) = clusters.iter().find(|(c, _)| c.spec.name == cluster)?;
        made.lab.record.pods.get(pod).map(|p| p.netns.clone())
    })
    .await
}

/// The clusters of the lab of several clusters `lab`, each waited for: for `wireway lab
/// matrix`.
pub async fn open(
    lab: &Lab,
    timeout: std::time::Duration,
) -> Result<Vec<(Made, Snapshot)>, ClustersError> {
    let mut clusters = Vec::new();
    for (name, dir) in &lab.record.clusters {
        let failed = |source: UpError| ClustersError::Cluster {
            cluster: name.clone(),
            source: Box::new(source),
        };
        let cluster =
            Lab::open(dir.clone()).map_err(|e| failed(UpError::Create(CreateError::Record(e))))?;
        let manifests = cluster
            .record
            .manifests
            .first()
            .cloned()
            .unwrap_or_default();
        let behind_nat = cluster
            .record
            .federation
            .as_ref()
            .is_some_and(|f| f.behind_nat);
        let made = Made {
            spec: ClusterSpec {
                name: name.clone(),
                trust_domain: cluster.record.trust_domain.clone(),
                manifests: manifests.clone(),
                nodes: Some(cluster.record.own_nodes),
                behind_nat,
            },
            slices: slices(&manifests).map_err(failed)?,
            lab: cluster,
        };
        let snapshot = wait_federated(&made, timeout)
            .await
            .map_err(|e| failed(UpError::Converge(e)))?;
        clusters.push((made, snapshot));
    }
    Ok(clusters)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> Result<ClustersFile, ClustersError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        std::fs::write(&path, text).unwrap();
        read(&path)
    }

    fn message(result: Result<ClustersFile, ClustersError>) -> String {
        result.map(|_| ()).unwrap_err().to_string()
    }

    #[test]
    fn a_lab_of_clusters_needs_two_named_clusters_with_trust_domains_of_their_own() {
        let two = "clusters:\n- {name: east, trustDomain: e.example, manifests: east}\n- {name: west, trustDomain: w.example, manifests: west, behindNat: true}\n";
        let parsed = file(two).unwrap();
        assert!(parsed.clusters[1].behind_nat);
        assert!(
            message(file(
                "clusters:\n- {name: east, trustDomain: e.example, manifests: east}\n"
            ))
            .contains("2 to 10 clusters")
        );
        assert!(message(file("clusters:\n- {name: east, trustDomain: e.example, manifests: a}\n- {name: east, trustDomain: w.example, manifests: b}\n")).contains("named twice"));
        assert!(message(file("clusters:\n- {name: east, trustDomain: x.example, manifests: a}\n- {name: west, trustDomain: x.example, manifests: b}\n")).contains("each has its own"));
        assert!(message(file("clusters:\n- {name: East, trustDomain: e.example, manifests: a}\n- {name: west, trustDomain: w.example, manifests: b}\n")).contains("not a DNS label"));
        assert!(message(file("clusters:\n- {name: east, trustDomain: e.example, manifests: a, nat: true}\n- {name: west, trustDomain: w.example, manifests: b}\n")).contains("nat"));
    }

    #[test]
    fn cluster_labs_have_names_of_eight_characters_at_most() {
        assert_eq!(cluster_lab_name("lab", 0), "lab0");
        assert_eq!(cluster_lab_name("t1234567", 9), "t1234569");
        assert!(cluster_lab_name("abcdefgh", 3).len() <= 8);
    }
}

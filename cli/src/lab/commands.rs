//! The `wireway lab` subcommands: arguments, what each one prints, its exit code.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use wireway_crds::validation::SchemaError;
use wireway_operator::snapshot::Snapshot;
use wireway_operator::source::manifests::Manifests;
use wireway_runtime::errors::{FileError, chain, is_root};
use wireway_runtime::pki::CertError;

use super::bench;
use super::clusters::{self, ClustersError, Made};
use super::forward::forward;
use super::kubernetes::{self, KubeError};
use super::matrix::{Matrix, render_matrix};
use super::measure::MeasureError;
use super::reconcile::{Inventory, ReconcileError, supervise};
use super::record::{FederationRecord, KubernetesRecord};
use super::service::{self, Backend};
use super::supervision::{BinariesError, SupervisionError, binaries};
use super::underlay::UnderlayError;
use super::{CreateError, Lab, lab_dir};
use crate::status::render_snapshot;

/// Which lab.
#[derive(Debug, Args)]
pub struct LabArgs {
    /// The lab's name; its network namespaces are called ww<name>-*.
    #[arg(long, global = true, default_value = "lab", value_parser = lab_name)]
    pub name: String,
    /// The lab's directory (default /run/wireway/<name>).
    #[arg(long, global = true)]
    pub dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: LabCommand,
}

fn lab_name(name: &str) -> Result<String, String> {
    let ok = !name.is_empty()
        && name.len() <= 8
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(name.to_owned())
    } else {
        Err("1 to 8 lowercase letters or digits".to_owned())
    }
}

/// How `up --kubernetes` reaches an API server.
#[derive(Debug, Clone, Args)]
pub struct KubernetesArgs {
    /// Play kubelet around a real API server instead of handing the operator the
    /// manifests: the manifests are applied to the API server (server-side apply), the
    /// lab registers its nodes as Node objects, binds pods and runs them in cgroups named
    /// after their UIDs, and the operator and agents run in Kubernetes mode with their
    /// ServiceAccounts' tokens. `kubectl` with the kubeconfig in the lab's directory
    /// shows the objects.
    #[arg(long)]
    pub kubernetes: bool,
    /// With --kubernetes: use the API server of this kubeconfig (a cluster
    /// administrator's) instead of starting the test control plane. The lab registers
    /// Nodes and binds pods there: give it a throw-away cluster.
    #[arg(long, requires = "kubernetes")]
    pub kubeconfig: Option<PathBuf>,
    /// With --kubernetes: how many operators to run. With more than one they share the
    /// Lease, only the leader is ready, and the lab sends agents to the ready one, as the
    /// operator's Service does (`kubectl get lease -n wireway-system` shows who leads).
    #[arg(long, default_value_t = 1, requires = "kubernetes")]
    pub operators: usize,
    /// With --kubernetes: the test control plane to start (`make control-plane` builds
    /// it; tests/control-plane/README.md says what it is).
    #[arg(
        long,
        default_value = ".tools/bin/control-plane",
        env = "WIREWAY_CONTROL_PLANE"
    )]
    pub control_plane: PathBuf,
    /// With --kubernetes: the kubectl to run.
    #[arg(long, default_value = "kubectl", env = "WIREWAY_KUBECTL")]
    pub kubectl: PathBuf,
    /// With --kubernetes: Wireway's config/ directory, whose namespace, CRDs and RBAC
    /// are installed.
    #[arg(long, default_value = "config", env = "WIREWAY_CONFIG")]
    pub config: PathBuf,
}

/// What to do with the lab.
#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Make a mesh on this machine from the manifests in DIR, wait until every agent has
    /// applied its state, and print who reaches whom. Exits 1 when that differs from what
    /// the plan and the admission rules say.
    Up {
        /// Manifest files or directories (the ones you would `kubectl apply`).
        #[arg(required = true, value_name = "DIR")]
        manifests: Vec<PathBuf>,
        /// Nodes the lab makes of its own (default: 3 when the manifests declare no Node).
        #[arg(long)]
        nodes: Option<usize>,
        /// The SPIFFE trust domain of the lab's cluster.
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        /// Where wireway-operator and wireway-agent are (default: beside this program).
        #[arg(long, env = "WIREWAY_BIN_DIR")]
        bin_dir: Option<PathBuf>,
        /// Seconds to wait for the agents.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        /// Print the matrix as JSON.
        #[arg(long)]
        json: bool,
        /// Where the agents relay members' DNS queries for names outside their services'
        /// zones (IP:PORT, reachable from the lab's nodes, such as an address on the
        /// underlay bridge). Without it those queries get SERVFAIL, unless a lab node can
        /// reach the first nameserver of this host's /etc/resolv.conf.
        #[arg(long, value_name = "IP:PORT")]
        dns_upstream: Option<std::net::SocketAddr>,
        #[command(flatten)]
        kubernetes: KubernetesArgs,
    },
    /// Measure the reachability matrix again (after the agents have converged).
    Matrix {
        /// Seconds to wait for the agents.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// Print the matrix as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Start whatever of the lab is not running (after a crash, or after stopping a part
    /// of it to see what happens).
    Start,
    /// Remove everything the lab made, and only that; also after a crash.
    Down,
    /// Measure how fast changes take effect: make a lab of NODES nodes running one
    /// service, make CHANGES changes to its manifests one after another, and print the
    /// latency from each file written to the last agent's report of the state it
    /// produced (p50, p99, max), and to the changed pod's name answered (or NXDOMAIN) at
    /// a member on another node. Removes the lab afterwards.
    Bench {
        /// Nodes in the lab.
        #[arg(long, default_value_t = 20)]
        nodes: usize,
        /// Changes to make.
        #[arg(long, default_value_t = 52)]
        changes: usize,
        /// Where wireway-operator and wireway-agent are (default: beside this program).
        #[arg(long, env = "WIREWAY_BIN_DIR")]
        bin_dir: Option<PathBuf>,
        /// Print every change's latency as JSON.
        #[arg(long)]
        json: bool,
        /// Leave the lab up afterwards.
        #[arg(long)]
        keep: bool,
    },
    /// Follow the manifests and keep the lab in step (started by `up`).
    #[command(hide = true)]
    Supervise,
    /// Send each connection to LISTEN on to the first ready BACKEND (started by `up
    /// --kubernetes --operators N`).
    #[command(hide = true)]
    Service {
        /// The socket agents dial.
        #[arg(long)]
        listen: PathBuf,
        /// An operator: GRPC_SOCKET=HTTP_SOCKET (repeatable).
        #[arg(long)]
        backend: Vec<Backend>,
    },
    /// Make the API server at ADDRESS reachable at the same address inside the network
    /// namespace NETNS (started by `up --kubernetes`, one per node).
    #[command(hide = true)]
    Forward {
        /// The node's network namespace.
        #[arg(long)]
        netns: String,
        /// The API server's address.
        #[arg(long)]
        address: std::net::SocketAddr,
    },
}

/// Why `wireway lab up` (or `bench`, which starts the same way) failed.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    /// A manifest path does not exist.
    #[error("failed to find the manifests {}: it does not exist", path.display())]
    NoManifests {
        /// The path given.
        path: PathBuf,
    },
    /// The operator's or the agent's binary is missing.
    #[error(transparent)]
    Binaries(#[from] BinariesError),
    /// The manifests could not be read: the CRDs' schemas did not compile.
    #[error("failed to read the manifests")]
    Manifests(#[source] SchemaError),
    /// The lab's record could not be made.
    #[error(transparent)]
    Create(#[from] CreateError),
    /// The certificates could not be made.
    #[error("failed to make the lab's certificates (`wireway lab down` removes what was made)")]
    Certificates(#[source] CertError),
    /// The underlay could not be made.
    #[error("failed to make the lab's underlay (`wireway lab down` removes what was made)")]
    Underlay(#[source] UnderlayError),
    /// The nodes and pods could not be made.
    #[error("failed to make the lab's nodes and pods (`wireway lab down` removes what was made)")]
    Reconcile(#[source] ReconcileError),
    /// A process could not be started.
    #[error(transparent)]
    Start(#[from] SupervisionError),
    /// The lab did not converge.
    #[error(transparent)]
    Converge(#[from] MeasureError),
    /// The test control plane is not built.
    #[error(
        "failed to find the test control plane at {}: build it with `make control-plane`, or give --control-plane or --kubeconfig",
        path.display()
    )]
    NoControlPlane {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The lab's part around the API server failed.
    #[error(
        "failed to set the lab up around the API server (`wireway lab down` removes what was made)"
    )]
    Kubernetes(#[source] KubeError),
    /// A lab of several clusters could not be made.
    #[error(transparent)]
    Clusters(#[from] ClustersError),
}

fn fail(error: &dyn std::error::Error) -> ExitCode {
    eprintln!("error: {}", chain(error));
    ExitCode::FAILURE
}

/// Runs a lab subcommand.
pub async fn run(args: LabArgs) -> ExitCode {
    let dir = args.dir.clone().unwrap_or_else(|| lab_dir(&args.name));
    if !is_root() {
        eprintln!("error: the lab makes network namespaces: run it as root (sudo)");
        return ExitCode::FAILURE;
    }
    match args.command {
        LabCommand::Up {
            manifests,
            nodes,
            trust_domain,
            bin_dir,
            timeout,
            json,
            dns_upstream,
            kubernetes,
        } => {
            let up = Up {
                name: args.name,
                dir,
                manifests,
                nodes,
                trust_domain,
                bin_dir,
                timeout: Duration::from_secs(timeout),
                json,
                dns_upstream,
                kubernetes: kubernetes.kubernetes.then_some(kubernetes),
            };
            up.run().await
        }
        LabCommand::Matrix { timeout, json } => match Lab::open(dir) {
            Ok(lab) if !lab.record.clusters.is_empty() => {
                match clusters::open(&lab, Duration::from_secs(timeout)).await {
                    Ok(clusters) => report_clusters(&clusters, json).await,
                    Err(e) => fail(&e),
                }
            }
            Ok(lab) => matrix(&lab, Duration::from_secs(timeout), json).await,
            Err(e) => fail(&e),
        },
        LabCommand::Start => {
            let mut started = Vec::new();
            for dir in lab_dirs(&dir) {
                match Lab::open_to_change(dir)
                    .map_err(SupervisionError::from)
                    .and_then(|(mut lab, _held)| lab.start_all())
                {
                    Ok(more) => started.extend(more),
                    Err(e) => return fail(&e),
                }
            }
            if started.is_empty() {
                println!("everything runs");
            } else {
                println!("started {}", started.join(", "));
            }
            ExitCode::SUCCESS
        }
        LabCommand::Down => {
            let mut failed = false;
            // A lab of several clusters: each cluster's lab first, then the router.
            for dir in lab_dirs(&dir) {
                match down(dir) {
                    Ok(name) => println!("lab {name} removed"),
                    Err(e) => {
                        eprintln!("error: {e}");
                        failed = true;
                    }
                }
            }
            if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        LabCommand::Bench {
            nodes,
            changes,
            bin_dir,
            json,
            keep,
        } => {
            let manifests = dir.join("bench-manifests");
            if let Err(e) = bench::write_manifests(&manifests, nodes.max(4)) {
                return fail(&FileError::on("write", &manifests)(e));
            }
            let up = Up {
                name: args.name,
                dir,
                manifests: vec![manifests.clone()],
                nodes: Some(0),
                trust_domain: "cluster.local".into(),
                bin_dir,
                timeout: Duration::from_secs(300),
                json,
                dns_upstream: None,
                kubernetes: None,
            };
            let (lab, _) = match up.start().await {
                Ok(up) => up,
                Err(e) => return fail(&e),
            };
            eprintln!("making {changes} changes");
            let results = bench::run(&lab, &manifests, nodes.max(4), changes).await;
            if !keep {
                for e in lab.down() {
                    eprintln!("error: {}", chain(&e));
                }
            }
            match results {
                Ok(r) if json => match serde_json::to_string_pretty(&r) {
                    Ok(text) => {
                        println!("{text}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(&e),
                },
                Ok(r) => {
                    print!("{}", r.render());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
        LabCommand::Supervise => match supervise(dir).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        },
        LabCommand::Service { listen, backend } => {
            match tokio::task::spawn_blocking(move || service::serve(&listen, backend)).await {
                Ok(Ok(())) => ExitCode::SUCCESS,
                Ok(Err(e)) => fail(&e),
                Err(e) => fail(&e),
            }
        }
        LabCommand::Forward { netns, address } => {
            match tokio::task::spawn_blocking(move || forward(&netns, address)).await {
                Ok(Ok(())) => ExitCode::SUCCESS,
                Ok(Err(e)) => fail(&e),
                Err(e) => fail(&e),
            }
        }
    }
}

/// `wireway lab up`.
pub(super) struct Up {
    pub(super) name: String,
    pub(super) dir: PathBuf,
    pub(super) manifests: Vec<PathBuf>,
    pub(super) nodes: Option<usize>,
    pub(super) trust_domain: String,
    pub(super) bin_dir: Option<PathBuf>,
    pub(super) timeout: Duration,
    pub(super) json: bool,
    pub(super) dns_upstream: Option<std::net::SocketAddr>,
    /// Set with `--kubernetes`.
    pub(super) kubernetes: Option<KubernetesArgs>,
}

pub(super) fn step(what: &str) {
    eprintln!("  {what}");
}

impl Up {
    async fn run(self) -> ExitCode {
        if let Some(path) = clusters::find(&self.manifests) {
            return self.run_clusters(&path).await;
        }
        let started = Instant::now();
        let (lab, snapshot) = match self.start().await {
            Ok(up) => up,
            Err(e) => return fail(&e),
        };
        eprintln!("converged in {:.1} s\n", started.elapsed().as_secs_f64());
        if !self.json {
            println!("{}", render_snapshot(&snapshot, false));
        }
        report(&lab, &snapshot, self.json).await
    }

    /// Makes the lab, starts it and waits until it has converged.
    pub(super) async fn start(&self) -> Result<(Lab, Snapshot), UpError> {
        let (mut lab, inventory) = self.make(None).await?;
        self.launch(&mut lab, &inventory)?;
        let snapshot = lab.wait_converged(self.timeout, step).await?;
        Ok((lab, snapshot))
    }

    /// Makes the lab's record, certificates and underlay (for a cluster of a lab of
    /// several, `federation` says how it federates), and the part around the API server;
    /// returns the lab and what its manifests hold.
    pub(super) async fn make(
        &self,
        federation: Option<FederationRecord>,
    ) -> Result<(Lab, Inventory), UpError> {
        let mut roots = Vec::new();
        for path in &self.manifests {
            match std::path::absolute(path) {
                Ok(p) if p.exists() => roots.push(p),
                _ => return Err(UpError::NoManifests { path: path.clone() }),
            }
        }
        let binaries = binaries(self.bin_dir.as_deref())?;
        let mut manifests = Manifests::new(roots.clone()).map_err(UpError::Manifests)?;
        for problem in manifests.scan().problems {
            eprintln!("warning: {problem} (not in effect)");
        }
        let mut inventory = Inventory::of(&manifests);
        if self.kubernetes.is_some() {
            // Node objects are the lab's own there.
            inventory.nodes.clear();
        }
        let own_nodes = self
            .nodes
            .unwrap_or(if inventory.nodes.is_empty() { 3 } else { 0 });
        let sources: Vec<String> = self
            .manifests
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        eprintln!(
            "lab {}: {} pods from {}, on {own_nodes} nodes of its own and {} declared",
            self.name,
            inventory.pods.len(),
            sources.join(" "),
            inventory.nodes.len(),
        );
        let mut lab = Lab::create(
            self.dir.clone(),
            &self.name,
            roots,
            &self.trust_domain,
            own_nodes,
            binaries,
        )?;
        lab.record.dns_upstream = self.dns_upstream;
        lab.record.federation = federation;
        lab.create_pki().map_err(UpError::Certificates)?;
        lab.create_underlay().map_err(UpError::Underlay)?;
        step("certificates (one CA; the operator's, one per node) and the underlay bridge");
        if let Some(args) = &self.kubernetes {
            inventory = self.around_api_server(&mut lab, args).await?;
        }
        Ok((lab, inventory))
    }

    /// Makes the lab's nodes and pods and starts its processes.
    pub(super) fn launch(&self, lab: &mut Lab, inventory: &Inventory) -> Result<(), UpError> {
        let made = lab
            .reconcile(inventory, false)
            .map_err(UpError::Reconcile)?;
        for line in made {
            step(&line);
        }
        let started = lab.start_all()?;
        step(&format!(
            "started {} (logs in {})",
            started.join(", "),
            lab.dir.display()
        ));
        Ok(())
    }

    /// The lab's part around an API server before its nodes and pods are made: the
    /// control plane started (unless given), Wireway and the manifests installed, the
    /// operator's credentials issued. Returns the pods the API server holds.
    async fn around_api_server(
        &self,
        lab: &mut Lab,
        args: &KubernetesArgs,
    ) -> Result<Inventory, UpError> {
        let control_plane = match &args.kubeconfig {
            Some(_) => None,
            None => match std::path::absolute(&args.control_plane) {
                Ok(path) if path.is_file() => Some(path),
                _ => {
                    return Err(UpError::NoControlPlane {
                        path: args.control_plane.clone(),
                    });
                }
            },
        };
        lab.record.kubernetes = Some(KubernetesRecord {
            kubectl: args.kubectl.clone(),
            operators: args.operators,
            control_plane: control_plane.clone(),
            ..KubernetesRecord::default()
        });
        let kubeconfig = match (&args.kubeconfig, &control_plane) {
            (Some(kubeconfig), _) => {
                std::path::absolute(kubeconfig).unwrap_or_else(|_| kubeconfig.clone())
            }
            (None, Some(program)) => {
                lab.save()
                    .map_err(|e| UpError::Kubernetes(KubeError::Record(e)))?;
                let kubeconfig = lab
                    .start_control_plane(program)
                    .map_err(UpError::Kubernetes)?;
                step(&format!(
                    "the test control plane (etcd, kube-apiserver, kube-controller-manager): kubectl --kubeconfig {}",
                    kubeconfig.display()
                ));
                kubeconfig
            }
            (None, None) => unreachable!("a control plane or a kubeconfig"),
        };
        if let Some(record) = lab.record.kubernetes.as_mut() {
            record.kubeconfig.clone_from(&kubeconfig);
        }
        let api_server = lab.api_server().map_err(UpError::Kubernetes)?;
        if let Some(record) = lab.record.kubernetes.as_mut() {
            record.api_server = Some(api_server);
        }
        lab.save()
            .map_err(|e| UpError::Kubernetes(KubeError::Record(e)))?;
        lab.check_no_foreign_nodes().map_err(UpError::Kubernetes)?;
        lab.install(&args.config).map_err(UpError::Kubernetes)?;
        step(
            "Wireway's namespace, CRDs and RBAC from config/, and the manifests, applied (server-side)",
        );
        lab.issue_credentials().map_err(UpError::Kubernetes)?;
        kubernetes::inventory(&kubeconfig)
            .await
            .map_err(UpError::Kubernetes)
    }
}

/// Measures and prints the matrix; the exit code says whether it is as planned.
async fn report(lab: &Lab, snapshot: &Snapshot, json: bool) -> ExitCode {
    match lab.measure(lab.expectation(snapshot)).await {
        Ok(measured) => verdict(&measured, json),
        Err(e) => fail(&e),
    }
}

impl Up {
    /// `wireway lab up DIR` with `DIR/clusters.yaml`: every cluster's statuses and matrix,
    /// then the matrix across clusters.
    async fn run_clusters(self, path: &std::path::Path) -> ExitCode {
        if self.kubernetes.is_some() {
            eprintln!("error: a lab of several clusters runs on manifests: drop --kubernetes");
            return ExitCode::FAILURE;
        }
        let started = Instant::now();
        let (_, clusters) = match self.start_clusters(path).await {
            Ok(up) => up,
            Err(e) => return fail(&e),
        };
        eprintln!("converged in {:.1} s\n", started.elapsed().as_secs_f64());
        report_clusters(&clusters, self.json).await
    }
}

/// Every cluster's statuses, then the matrix across all of them.
async fn report_clusters(clusters: &[(Made, Snapshot)], json: bool) -> ExitCode {
    if !json {
        for (cluster, snapshot) in clusters {
            println!(
                "cluster {} ({})",
                cluster.spec.name, cluster.spec.trust_domain
            );
            println!("{}", render_snapshot(snapshot, false));
        }
    }
    match clusters::measure_clusters(clusters).await {
        Ok(measured) => verdict(&measured, json),
        Err(e) => fail(&e),
    }
}

/// Prints a measured matrix; success when it is as expected.
fn verdict(measured: &Matrix, json: bool) -> ExitCode {
    if json {
        #[derive(serde::Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Verdict<'a> {
            as_expected: bool,
            #[serde(flatten)]
            matrix: &'a Matrix,
        }
        let verdict = Verdict {
            as_expected: measured.as_expected(),
            matrix: measured,
        };
        match serde_json::to_string_pretty(&verdict) {
            Ok(text) => println!("{text}"),
            Err(e) => return fail(&e),
        }
    } else {
        print!("{}", render_matrix(measured));
    }
    if measured.as_expected() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The lab in `dir`, after the labs of its clusters if it has several.
fn lab_dirs(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Lab::open(dir.to_owned())
        .map(|lab| lab.record.clusters.into_values().collect())
        .unwrap_or_default();
    dirs.push(dir.to_owned());
    dirs
}

/// Removes the lab in `dir`: its name, or what went wrong.
fn down(dir: PathBuf) -> Result<String, String> {
    let (lab, _held) = Lab::open(dir.clone())
        .map(|lab| lab.stop_supervisor())
        .and_then(|()| Lab::open_to_change(dir))
        .map_err(|e| chain(&e))?;
    let name = lab.record.name.clone();
    let errors: Vec<String> = lab.down().iter().map(|e| chain(e)).collect();
    if errors.is_empty() {
        Ok(name)
    } else {
        Err(errors.join("\nerror: "))
    }
}

/// `wireway lab matrix`.
async fn matrix(lab: &Lab, timeout: Duration, json: bool) -> ExitCode {
    match lab.wait_converged(timeout, step).await {
        Ok(snapshot) => report(lab, &snapshot, json).await,
        Err(e) => fail(&e),
    }
}

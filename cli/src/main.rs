//! `wireway`: the Wireway command line.
//!
//! * `wireway validate PATH...` checks manifests against the Wireway CRDs (schema and CEL
//!   rules) without a cluster, the way the API server will: for pre-commit hooks and CI of
//!   GitOps repositories; `--old-rev origin/main` also checks each object as an update of
//!   the one at that revision (transition rules such as an immutable cidr).
//! * `wireway status` prints the operator's view of every node and object.
//! * `wireway certs` issues the certificates of mutual TLS between the operator, the
//!   agents and administrators.
//! * `wireway lab` runs a whole mesh on this machine from the same manifests.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use wireway_runtime::pki;

mod lab;
mod status;
mod table;
mod validate;

use wireway_runtime::errors::chain;

/// Wireway: flat L3 network services over WireGuard, across nodes, clusters and companies.
#[derive(Debug, Parser)]
#[command(name = "wireway", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check NetworkService, Endpoint and Admission manifests against the CRDs' schema and
    /// CEL rules, as the API server would; objects of other API groups are listed and
    /// skipped. With --old or --old-rev (the manifests as last synced), an object found
    /// there too is checked as an update, with the transition rules. Exits 1 if any
    /// object is invalid.
    Validate(validate::ValidateArgs),
    /// Show every node, NetworkService, Endpoint and Admission with its Ready condition,
    /// as the operator sees them (its status API, for administrators: an administrator's
    /// certificate or token).
    Status {
        #[command(flatten)]
        access: status::Access,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: status::Output,
    },
    /// Issue the certificates of mutual TLS between the operator, the agents and
    /// administrators.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// A whole Wireway mesh on this machine: one network namespace per node and per pod,
    /// the real operator and agents, real WireGuard and real packets.
    Lab(lab::commands::LabArgs),
}

/// Where a certificate goes, and for which trust domain.
#[derive(Debug, Args)]
struct Issue {
    /// The CA's directory (ca.crt, ca.key).
    #[arg(long)]
    ca: PathBuf,
    /// Directory to write to.
    #[arg(long)]
    out: PathBuf,
    /// The SPIFFE trust domain.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Create a CA: OUT/ca.crt and OUT/ca.key.
    Ca {
        /// Directory to write to.
        #[arg(long)]
        out: PathBuf,
        /// The SPIFFE trust domain.
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
    },
    /// Issue the operator's certificate: OUT/tls.crt, OUT/tls.key and OUT/ca.crt.
    Operator {
        #[command(flatten)]
        issue: Issue,
        /// DNS names agents dial (default: wireway-operator and its in-cluster names).
        #[arg(long = "dns-name")]
        dns_names: Vec<String>,
    },
    /// Issue a node agent's certificate, proving spiffe://<trust-domain>/wireway/node/NODE.
    Node {
        /// The node's name.
        node: String,
        #[command(flatten)]
        issue: Issue,
    },
    /// Issue an administrator's certificate, proving spiffe://<trust-domain>/wireway/admin:
    /// the only certificate the operator shows its status to (`wireway status --tls-cert
    /// OUT/tls.crt --tls-key OUT/tls.key --tls-ca OUT/ca.crt`).
    Admin {
        #[command(flatten)]
        issue: Issue,
    },
    /// Print, for `kubectl apply -f -`, the operator's serving certificate as the Secret
    /// wireway-operator-tls and its CA as the ConfigMap wireway-ca (which agents trust),
    /// from a new CA whose key is not kept: run it again to rotate both.
    Kubernetes {
        /// The namespace Wireway is installed in.
        #[arg(long, default_value = "wireway-system")]
        namespace: String,
        /// The SPIFFE trust domain.
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
    },
}

impl Issue {
    fn issue(&self, subject: pki::Subject) -> Result<(), pki::CertError> {
        pki::issue_into(&self.ca, &self.out, &self.trust_domain, &subject)
    }
}

/// The operator's Secret and the CA's ConfigMap, as YAML.
fn kubernetes_certificates(namespace: &str, trust_domain: &str) -> Result<String, pki::CertError> {
    let (ca_cert, ca_key) = pki::new_ca(trust_domain)?;
    let names = pki::OPERATOR_DNS_NAMES.map(str::to_owned).to_vec();
    let (cert, key) = pki::issue(
        &ca_cert,
        &ca_key,
        trust_domain,
        &pki::Subject::Operator(names),
    )?;
    let secret = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": "wireway-operator-tls", "namespace": namespace},
        "stringData": {"tls.crt": cert, "tls.key": key, "ca.crt": ca_cert},
    });
    let config_map = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "wireway-ca", "namespace": namespace},
        "data": {"ca.crt": ca_cert},
    });
    Ok(format!(
        "# The operator's serving certificate and the CA agents trust (JSON is YAML).\n{secret}\n---\n{config_map}\n"
    ))
}

fn certs(command: CertsCommand) -> ExitCode {
    let result = match command {
        CertsCommand::Kubernetes {
            namespace,
            trust_domain,
        } => kubernetes_certificates(&namespace, &trust_domain).map(|yaml| print!("{yaml}")),
        CertsCommand::Ca { out, trust_domain } => pki::create_ca_in(&out, &trust_domain),
        CertsCommand::Operator { issue, dns_names } => {
            let names = if dns_names.is_empty() {
                pki::OPERATOR_DNS_NAMES.map(str::to_owned).to_vec()
            } else {
                dns_names
            };
            issue.issue(pki::Subject::Operator(names))
        }
        CertsCommand::Node { node, issue } => issue.issue(pki::Subject::Node(node)),
        CertsCommand::Admin { issue } => issue.issue(pki::Subject::Admin),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            ExitCode::FAILURE
        }
    }
}

async fn status(access: &status::Access, output: status::Output) -> ExitCode {
    // A lab of several clusters where the lab's operator would be: every cluster's.
    let clusters = access
        .operator
        .strip_prefix("unix:")
        .and_then(|socket| std::path::Path::new(socket).parent())
        .and_then(|dir| lab::Lab::open(dir.to_owned()).ok())
        .map(|lab| lab.record.clusters)
        .unwrap_or_default();
    if !clusters.is_empty() {
        let mut failed = false;
        for (name, dir) in clusters {
            let access = match lab::Lab::open(dir) {
                Ok(cluster) => cluster.status_access(),
                Err(e) => {
                    eprintln!("error: cluster {name}: {}", chain(&e));
                    failed = true;
                    continue;
                }
            };
            println!("cluster {name}");
            failed |= show_status(&access, output).await != ExitCode::SUCCESS;
        }
        return if failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        };
    }
    show_status(access, output).await
}

/// One operator's status, printed.
async fn show_status(access: &status::Access, output: status::Output) -> ExitCode {
    match status::fetch(access).await {
        Ok(snapshot) => {
            match output {
                status::Output::Json => match serde_json::to_string_pretty(&snapshot) {
                    Ok(text) => println!("{text}"),
                    Err(e) => eprintln!("error: {e}"),
                },
                status::Output::Table => print!("{}", status::render_snapshot(&snapshot, false)),
                status::Output::Wide => print!("{}", status::render_snapshot(&snapshot, true)),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    match cli.command {
        Command::Validate(args) => validate::run(&args),
        Command::Certs(command) => certs(command),
        Command::Status { access, output } => match runtime() {
            Ok(rt) => rt.block_on(status(&access, output)),
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Lab(args) => match runtime() {
            Ok(rt) => rt.block_on(lab::commands::run(args)),
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

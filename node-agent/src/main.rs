//! `wireway-agent`: converges a node's kernel (WireGuard, veths, addresses, routes, policy
//! rules) to the NodeState the operator serves.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use wireway_agent::agent::{Agent, StateDir};
use wireway_agent::dataplane::netns::NetnsFinder;
use wireway_agent::dataplane::pods::Cgroups;
use wireway_agent::dataplane::wireguard::{self, userspace};
use wireway_agent::dns;
use wireway_agent::metrics::Metrics;
use wireway_agent::node::{self, NodeFacts};
use wireway_agent::session::{self, Session, store::StateFile};
use wireway_proto::NodeState;
use wireway_runtime::http::{self, Readiness};
use wireway_runtime::listen::Address;
use wireway_runtime::tls::{OPERATOR_SERVER_NAME, TlsArgs};

/// The Wireway node agent.
#[derive(Debug, Parser)]
#[command(name = "wireway-agent", version)]
struct Cli {
    /// Directory for the node's private key (0600) and WireGuard control sockets.
    #[arg(
        long,
        global = true,
        default_value = "/var/lib/wireway",
        env = "WIREWAY_STATE_DIR"
    )]
    state_dir: PathBuf,
    /// A directory beneath which members' network namespace paths are accepted
    /// (repeatable; the lab and manifest mode: /run/netns). Without one, every path is
    /// refused. A path must begin with DIR as written, and nothing below DIR may be a
    /// symbolic link.
    #[arg(
        long = "netns-path-prefix",
        global = true,
        value_name = "DIR",
        env = "WIREWAY_NETNS_PATH_PREFIX",
        value_delimiter = ':'
    )]
    netns_path_prefixes: Vec<PathBuf>,
    /// A directory in which each pod's network namespace is the file named by its UID
    /// (or a link to a namespace file beneath a --netns-path-prefix), for pods the
    /// operator names by UID outside Kubernetes.
    #[arg(long, global = true, env = "WIREWAY_NETNS_DIR")]
    netns_dir: Option<PathBuf>,
    /// The host's cgroup tree, to find a pod's network namespace from its UID in a
    /// cluster (with the host's PID namespace: /proc/<pid>/ns/net of a process in the
    /// pod's cgroup).
    #[arg(long, global = true, env = "WIREWAY_CGROUP_ROOT")]
    cgroup_root: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// How `run` reaches the operator and serves its metrics.
#[derive(Debug, Args)]
struct RunArgs {
    /// This node's name, as the operator knows it.
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// The operator's node API: a URL such as
    /// https://wireway-operator.wireway-system.svc:9443, or unix:PATH.
    #[arg(long, env = "WIREWAY_OPERATOR")]
    operator: String,
    /// The DNS name the operator's certificate must carry.
    #[arg(long, default_value = OPERATOR_SERVER_NAME, env = "WIREWAY_OPERATOR_NAME")]
    operator_name: String,
    /// The address other nodes reach this node's WireGuard ports at; by default the
    /// source address of this node's default route.
    #[arg(long, env = "WIREWAY_UNDERLAY_ADDRESS")]
    underlay_address: Option<IpAddr>,
    /// Where metrics (/metrics) and health (/healthz, /readyz) are served: HOST:PORT or
    /// unix:PATH.
    #[arg(long, default_value = "0.0.0.0:9090", env = "WIREWAY_LISTEN_HTTP")]
    listen_http: Address,
    /// Seconds between re-applications of the applied state (repairs what was changed by
    /// hand).
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    resync_interval: u64,
    /// Seconds between reports of tunnel health to the operator.
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    report_interval: u64,
    /// Prove this node to the operator with the token in this file (in a cluster: a
    /// projected service-account token for audience wireway-operator) instead of a
    /// client certificate; TLS then needs only --tls-ca.
    #[arg(long, env = "WIREWAY_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Publish this node's public key and underlay address as wireway.dev/ annotations
    /// on its Node (default: when running in a cluster).
    #[arg(long, env = "WIREWAY_PUBLISH_NODE")]
    publish_node: Option<bool>,
    /// Where members' DNS queries for names outside their services' zones go
    /// (IP:PORT); by default the first nameserver of /etc/resolv.conf (in a cluster,
    /// with dnsPolicy ClusterFirstWithHostNet: the cluster's DNS Service).
    #[arg(long, env = "WIREWAY_DNS_UPSTREAM")]
    dns_upstream: Option<SocketAddr>,
    #[command(flatten)]
    tls: TlsArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Follow the operator: converge the kernel to each NodeState it serves for this node,
    /// and report back. The long-running mode of a node.
    Run(Box<RunArgs>),
    /// Converge the kernel once to a NodeState read from a file (JSON or YAML), and print
    /// what changed.
    Apply {
        /// The NodeState file.
        #[arg(long)]
        node_state: PathBuf,
    },
    /// Print what the kernel holds of the agent's objects.
    Show,
    /// Print this node's WireGuard public key.
    PublicKey,
    /// Run one userspace WireGuard device (started by the agent itself).
    #[command(hide = true)]
    WireguardUserspace {
        /// Interface name.
        #[arg(long)]
        interface: String,
        /// Control socket path.
        #[arg(long)]
        socket: PathBuf,
    },
}

fn read_state(path: &PathBuf) -> Result<NodeState, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("failed to read {}: {e}", path.display()))?;
    let parsed = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).map_err(|e| e.to_string())
    } else {
        serde_saphyr::from_str(&text).map_err(|e| e.to_string())
    };
    parsed.map_err(|e| format!("failed to parse {} as a NodeState: {e}", path.display()))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::WireguardUserspace { interface, socket } = &cli.command {
        return match userspace::run_device(interface, socket) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let state = StateDir(cli.state_dir.clone());
    let cgroups = cli.cgroup_root.clone().map(|root| Cgroups {
        root,
        proc: PathBuf::from("/proc"),
    });
    let netns = NetnsFinder::new(
        cli.netns_path_prefixes.clone(),
        cli.netns_dir.clone(),
        cgroups,
    );
    if let Command::PublicKey = &cli.command {
        return match state.private_key().map(|k| wireguard::public_key(&k)) {
            Ok(Ok(public)) => {
                println!("{public}");
                ExitCode::SUCCESS
            }
            Ok(Err(e)) => fail(&e),
            Err(e) => fail(&e),
        };
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    if let Command::Run(args) = cli.command {
        wireway_runtime::logging::init();
        return runtime.block_on(run(&state, netns, *args));
    }
    runtime.block_on(async {
        let program = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("wireway-agent"));
        let agent = match Agent::start(&state, &program, netns).await {
            Ok(a) => a,
            Err(e) => return fail(&e),
        };
        match cli.command {
            Command::Apply { node_state } => {
                let desired = match read_state(&node_state) {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::FAILURE;
                    }
                };
                // One pass, with no later one to set an endpoint whose name resolves
                // after it: it waits for the names' first answers.
                let names = wireway_agent::converge::endpoint_names(&desired);
                agent.resolver().answered(&names).await;
                match agent.converge(&desired).await {
                    Ok(pass) => {
                        for op in &pass.ops {
                            println!("{op}");
                        }
                        for e in &pass.desired_errors {
                            eprintln!("skipped: {e}");
                        }
                        for e in &pass.apply_errors {
                            eprintln!("error: {}", chain(e));
                        }
                        println!(
                            "{} operations, {} netlink writes, {} errors ({} WireGuard)",
                            pass.ops.len(),
                            pass.writes,
                            pass.apply_errors.len(),
                            agent.backend()
                        );
                        if pass.apply_errors.is_empty() {
                            ExitCode::SUCCESS
                        } else {
                            ExitCode::FAILURE
                        }
                    }
                    Err(e) => fail(&e),
                }
            }
            Command::Show => match agent.show().await {
                Ok(plane) => {
                    println!("{plane:#?}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            },
            Command::Run(_) | Command::PublicKey | Command::WireguardUserspace { .. } => {
                ExitCode::SUCCESS
            }
        }
    })
}

use wireway_agent::chain;

/// The address this node's default route leaves from (no packet is sent).
fn default_source_address() -> Option<IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    Some(socket.local_addr().ok()?.ip())
}

/// `wireway-agent run`.
async fn run(state: &StateDir, netns: NetnsFinder, args: RunArgs) -> ExitCode {
    let pem = match &args.token_file {
        Some(_) => args.tls.load_ca(),
        None => args.tls.load(),
    };
    let pem = match pem {
        Ok(pem) => pem,
        Err(e) => return fail(&e),
    };
    let Some(underlay) = args.underlay_address.or_else(default_source_address) else {
        eprintln!(
            "error: this node has no default route to take its underlay address from; pass --underlay-address"
        );
        return ExitCode::FAILURE;
    };
    let public_key = match state.private_key().map(|k| wireguard::public_key(&k)) {
        Ok(Ok(key)) => key,
        Ok(Err(e)) => return fail(&e),
        Err(e) => return fail(&e),
    };
    let program = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("wireway-agent"));
    let agent = match Agent::start(state, &program, netns).await {
        Ok(a) => a,
        Err(e) => return fail(&e),
    };
    let underlay_mtu = agent.mtu_of(underlay).await.unwrap_or(1500);
    let listener = match args.listen_http.bind().await {
        Ok(l) => l,
        Err(e) => return fail(&e),
    };
    let (metrics, registry) = Metrics::new(agent.backend());
    let readiness = Readiness::new("waiting for a first state from the operator");
    let router = http::router(Arc::new(registry), readiness.clone());
    tokio::spawn(http::serve(listener, router, std::future::pending()));
    tracing::info!(
        node = args.node_name,
        operator = args.operator,
        %underlay,
        backend = agent.backend(),
        "wireway-agent {} started",
        env!("CARGO_PKG_VERSION")
    );
    let config = session::Config {
        operator: args.operator,
        server_name: args.operator_name,
        tls: pem,
        node: args.node_name,
        underlay,
        underlay_mtu,
        public_key,
        resync: Duration::from_secs(args.resync_interval.max(1)),
        report_every: Duration::from_secs(args.report_interval.max(1)),
        token_file: args.token_file,
    };
    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    if args.publish_node.unwrap_or(in_cluster) {
        let facts = NodeFacts {
            node: config.node.clone(),
            public_key: config.public_key.clone(),
            underlay,
        };
        match kube::Client::try_default().await {
            Ok(client) => {
                tokio::spawn(node::keep_publishing(client, facts));
            }
            Err(e) => {
                tracing::error!(error = %chain(&e), "cannot reach the Kubernetes API server; the Node is not annotated")
            }
        }
    }
    let upstream = args.dns_upstream.or_else(|| {
        let resolv_conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        dns::server::first_nameserver(&resolv_conf)
    });
    if upstream.is_none() {
        tracing::warn!(
            "no DNS upstream (--dns-upstream, or a nameserver in /etc/resolv.conf): members' queries for other names get SERVFAIL"
        );
    }
    let dns = dns::server::Server::new(upstream, metrics.clone());
    let file = StateFile(state.0.join("node-state.json"));
    Session::new(agent, config, metrics, readiness, file)
        .with_dns(dns)
        .run(wireway_runtime::signal::terminated())
        .await;
    ExitCode::SUCCESS
}

fn fail(e: &dyn std::error::Error) -> ExitCode {
    eprintln!("error: {}", chain(e));
    ExitCode::FAILURE
}

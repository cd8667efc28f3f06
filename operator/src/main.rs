//! `wireway-operator`: turns NetworkService, Endpoint and Admission objects into a desired
//! state per node (the planner, `src/plan/`) and serves it to the node agents over gRPC.
//!
//! Its source is the Kubernetes API server, or with `--manifests` a directory of
//! manifests: the same YAML a user applies to a cluster, plus core/v1 Nodes and Pods that
//! say where workloads run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use tokio::sync::mpsc;
use wireway_crds::Cidr;
use wireway_crds::validation::SchemaError;
use wireway_operator::controller::{self, auth::TokenReviewer};
use wireway_operator::engine::{self, Config, Engine, Hub, store::StoreError};
use wireway_operator::federation::{Federation, tls::OwnIdentity};
use wireway_operator::metrics::Metrics;
use wireway_operator::plan::{Bounds, ListenPorts, bounds};
use wireway_operator::serve::{Auth, NodeApiService, StatusApiServer, StatusApiService};
use wireway_operator::source::{kubernetes, manifests::Manifests};
use wireway_runtime::backoff::Backoff;
use wireway_runtime::errors::chain;
use wireway_runtime::http::{self, Readiness};
use wireway_runtime::listen::{Address, BindError, serve_grpc};
use wireway_runtime::logging;
use wireway_runtime::tls::{Pem, TlsArgs, TlsError};

/// How agents prove which node they run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum AgentAuth {
    /// A client certificate naming spiffe://<trust-domain>/wireway/node/<node>
    /// (`wireway certs node`): the default without a cluster.
    Mtls,
    /// A projected service-account token for audience wireway-operator, checked with a
    /// TokenReview: the default in a cluster.
    Token,
}

/// The Wireway operator.
#[derive(Debug, Parser)]
#[command(name = "wireway-operator", version)]
struct Args {
    /// Read the World from manifests instead of the Kubernetes API server: a file or
    /// directory of NetworkService, Endpoint, Admission and core/v1 Namespace, Node, Pod
    /// and Binding objects; repeat for more. Files are watched.
    #[arg(long = "manifests", value_name = "PATH")]
    manifests: Vec<PathBuf>,
    /// Where the node API (gRPC) listens: HOST:PORT or unix:PATH.
    #[arg(long, default_value = "0.0.0.0:9443", env = "WIREWAY_LISTEN_GRPC")]
    listen_grpc: Address,
    /// Where metrics (/metrics) and health (/healthz, /readyz) are served: HOST:PORT or
    /// unix:PATH. (The status is on the gRPC port, for administrators only.)
    #[arg(long, default_value = "0.0.0.0:8080", env = "WIREWAY_LISTEN_HTTP")]
    listen_http: Address,
    /// With --manifests: directory for the operator's own state (agents' keys, served
    /// states, statuses), so a restart serves exactly what was served before.
    #[arg(
        long,
        default_value = "/var/lib/wireway-operator",
        env = "WIREWAY_STATE_DIR"
    )]
    state_dir: PathBuf,
    /// This cluster's SPIFFE trust domain: pods are spiffe://<trust-domain>/ns/<ns>/sa/<sa>.
    #[arg(long, default_value = "cluster.local", env = "WIREWAY_TRUST_DOMAIN")]
    trust_domain: String,
    /// Seconds the first plan waits for agents of nodes whose WireGuard key is not known
    /// yet (so a fresh operator does not serve states without their peers).
    #[arg(long, default_value_t = 15, value_name = "SECONDS")]
    agent_grace: u64,
    /// How agents prove their node (default: token in a cluster, mtls with --manifests).
    #[arg(long, value_enum)]
    agent_auth: Option<AgentAuth>,
    /// In a cluster: the operator's namespace (its Lease; its agents' service account).
    #[arg(long, default_value = "wireway-system", env = "POD_NAMESPACE")]
    namespace: String,
    /// In a cluster: this replica's name in leader election (its pod's name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Serve the federation API on this address (such as 0.0.0.0:7443) and dial the peer
    /// clusters that PeerCluster objects name. Needs TLS: the operator's certificate
    /// (--tls-cert) proves it to peers. Off when unset.
    #[arg(long, env = "WIREWAY_FEDERATION_LISTEN", value_name = "ADDRESS")]
    federation_listen: Option<SocketAddr>,
    /// This cluster's nodes cannot be reached from peer clusters (they are behind NAT):
    /// send them without endpoints, so peers wait for them to dial in (keepalives keep
    /// the path open).
    #[arg(long, env = "WIREWAY_FEDERATION_BEHIND_NAT")]
    federation_behind_nat: bool,
    #[command(flatten)]
    bounds: BoundsArgs,
    #[command(flatten)]
    tls: TlsArgs,
}

/// The administrator's bounds on every NetworkService: a service outside them is refused
/// with a reason and installs nothing (docs/operations.md).
#[derive(Debug, clap::Args)]
struct BoundsArgs {
    /// CIDRs every NetworkService's cidr must lie inside, comma-separated.
    #[arg(
        long,
        env = "WIREWAY_SERVICE_POOLS",
        value_delimiter = ',',
        default_value = bounds::DEFAULT_SERVICE_POOLS,
        value_name = "CIDRS"
    )]
    service_pools: Vec<Cidr>,
    /// CIDRs no NetworkService may overlap, comma-separated, beyond those always reserved
    /// (loopback, link-local, multicast, unspecified) and those found in the cluster (the
    /// nodes' pod ranges and addresses, the ServiceCIDRs): say the Service range here on
    /// a cluster that does not show it.
    #[arg(
        long,
        env = "WIREWAY_RESERVED_RANGES",
        value_delimiter = ',',
        value_name = "CIDRS"
    )]
    reserved_ranges: Vec<Cidr>,
    /// UDP ports the services' WireGuard interfaces may listen on, FIRST-LAST; services
    /// that pin none get the lowest free one.
    #[arg(
        long,
        env = "WIREWAY_LISTEN_PORTS",
        default_value = bounds::DEFAULT_LISTEN_PORTS,
        value_name = "FIRST-LAST"
    )]
    listen_ports: ListenPorts,
}

impl BoundsArgs {
    fn bounds(&self) -> Bounds {
        Bounds {
            service_pools: self.service_pools.clone(),
            reserved_ranges: self.reserved_ranges.clone(),
            listen_ports: self.listen_ports,
        }
    }
}

/// Why the operator cannot start, or stopped on its own.
#[derive(Debug, thiserror::Error)]
enum Error {
    /// The TLS files do not load.
    #[error("cannot start")]
    Tls(#[source] TlsError),
    /// A manifest root is missing or unreadable.
    #[error("cannot read the manifests at {}", path.display())]
    Manifests {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The HTTP port cannot be had.
    #[error("cannot serve HTTP")]
    HttpListener(#[source] BindError),
    /// The state directory cannot be used.
    #[error("cannot open the state directory")]
    StateDir(#[source] StoreError),
    /// No kubeconfig, no service account.
    #[error(
        "cannot find the Kubernetes API server (in a pod: its service account; elsewhere: KUBECONFIG or ~/.kube/config; or pass --manifests to run without a cluster)"
    )]
    NoCluster(#[source] kube::config::InferConfigError),
    /// The kubeconfig does not make a client.
    #[error("cannot configure the Kubernetes client")]
    Client(#[source] kube::Error),
    /// The CRDs' schemas (for validating manifests) do not compile.
    #[error("cannot compile the CRD schemas")]
    Schemas(#[source] SchemaError),
    /// Token authentication asked for without a cluster to review tokens.
    #[error(
        "--agent-auth token needs a cluster (it checks tokens with TokenReviews); drop --manifests or use --agent-auth mtls"
    )]
    TokenWithoutCluster,
    /// Federation without the operator's certificate.
    #[error(
        "--federation-listen needs the operator's TLS certificate and key (--tls-cert, --tls-key): peers accept only an operator that proves its trust domain; drop --insecure-plaintext"
    )]
    FederationWithoutTls,
    /// The federation API's port cannot be had.
    #[error("cannot serve the federation API on {address}")]
    FederationListener {
        /// The address.
        address: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The node API's port cannot be had.
    #[error("cannot serve the node API")]
    GrpcListener(#[source] BindError),
    /// The server certificate does not suit the gRPC server.
    #[error("cannot use the TLS certificate")]
    Certificate(#[source] tonic::transport::Error),
    /// A server stopped while nobody asked it to.
    #[error("{server} stopped: {cause}")]
    Stopped { server: &'static str, cause: String },
}

/// Why a server's task ended, for [`Error::Stopped`].
fn ended<E: std::fmt::Display>(result: Result<Result<(), E>, tokio::task::JoinError>) -> String {
    match result {
        Ok(Ok(())) => "it ended".to_owned(),
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    }
}

/// The Kubernetes client, once the API server answers. Until then it says why it cannot
/// reach it and retries (the operator stays unready, and its liveness probe answers).
async fn kubernetes_client() -> Result<kube::Client, Error> {
    let config = kube::Config::infer().await.map_err(Error::NoCluster)?;
    let url = config.cluster_url.clone();
    let client = kube::Client::try_from(config).map_err(Error::Client)?;
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        match client.apiserver_version().await {
            Ok(version) => {
                tracing::info!(%url, version = version.git_version, "the Kubernetes API server answers");
                return Ok(client);
            }
            Err(e) => {
                let delay = backoff.fail();
                tracing::error!(
                    %url,
                    error = %chain(&e),
                    retry_in = ?delay,
                    "cannot reach the Kubernetes API server"
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    logging::init();
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// Serves the federation API on `address`, dials the peers, and passes what they send to
/// the engine.
async fn federate(
    address: SocketAddr,
    behind_nat: bool,
    pem: Option<&Pem>,
    hub: &Arc<Hub>,
    inputs: mpsc::Sender<engine::Input>,
) -> Result<(), Error> {
    let (cert, key) = pem
        .and_then(Pem::certificate_and_key)
        .ok_or(Error::FederationWithoutTls)?;
    let own = OwnIdentity {
        cert: String::from_utf8_lossy(cert).into_owned(),
        key: String::from_utf8_lossy(key).into_owned(),
    };
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| Error::FederationListener { address, source })?;
    let (events, mut sent) = mpsc::channel(256);
    let federation = Federation::new(own, behind_nat, events);
    let serving = federation.clone();
    tokio::spawn(async move {
        if let Err(e) = serving.serve(listener).await {
            tracing::error!(error = %chain(&e), "the federation API stopped");
        }
    });
    tokio::spawn(federation.clone().dial());
    tokio::spawn(federation.follow(hub.clone()));
    tokio::spawn(async move {
        while let Some(peer_sent) = sent.recv().await {
            if inputs
                .send(engine::Input::PeerSent(peer_sent))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    tracing::info!(%address, "serving federation");
    Ok(())
}

/// Runs the operator until it is told to stop (`Ok`) or cannot go on.
async fn run(args: Args) -> Result<(), Error> {
    let in_cluster = args.manifests.is_empty();
    let agent_auth = args.agent_auth.unwrap_or(if in_cluster {
        AgentAuth::Token
    } else {
        AgentAuth::Mtls
    });
    let pem = args.tls.load().map_err(Error::Tls)?;
    for root in &args.manifests {
        std::fs::metadata(root).map_err(|source| Error::Manifests {
            path: root.clone(),
            source,
        })?;
    }
    let (metrics, registry) = Metrics::new();
    let hub = Arc::new(Hub::default());
    let readiness = Readiness::new("starting");

    // Health first: a liveness probe must answer while the API server is away.
    let web = args.listen_http.bind().await.map_err(Error::HttpListener)?;
    let web_router = http::router(Arc::new(registry), readiness.clone());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    let mut web_task = tokio::spawn(http::serve(web, web_router, until_stopped(stopped.clone())));

    let config = Config {
        trust_domain: args.trust_domain.clone(),
        state_dir: (!in_cluster).then(|| args.state_dir.clone()),
        agent_grace: Duration::from_secs(args.agent_grace),
        kubernetes: in_cluster,
        bounds: args.bounds.bounds(),
    };
    let mut engine = Engine::new(config, hub.clone(), metrics.clone(), readiness.clone())
        .map_err(Error::StateDir)?;
    let (inputs, received) = mpsc::channel::<engine::Input>(1024);
    let client = if in_cluster {
        readiness.set_not_ready("waiting for the Kubernetes API server");
        let client = tokio::select! {
            client = kubernetes_client() => client?,
            () = wireway_runtime::signal::terminated() => return Ok(()),
        };
        let (events, published) = mpsc::channel(1024);
        engine.tell_events(events);
        let identity = args.identity.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map_or_else(|_| "wireway-operator".to_owned(), |h| h.trim().to_owned())
        });
        let controller_config = controller::Config {
            namespace: args.namespace.clone(),
            identity,
            lease_duration: Duration::from_secs(15),
        };
        controller::start(
            client.clone(),
            &hub,
            published,
            controller_config,
            metrics.clone(),
        );
        tokio::spawn(kubernetes::watch(client.clone(), inputs.clone()));
        Some(client)
    } else {
        let manifests = Manifests::new(args.manifests.clone()).map_err(Error::Schemas)?;
        tokio::spawn(manifests.watch(inputs.clone()));
        None
    };
    if let Some(address) = args.federation_listen {
        let behind_nat = args.federation_behind_nat;
        federate(address, behind_nat, pem.as_ref(), &hub, inputs.clone()).await?;
    }
    tokio::spawn(engine.run(received));

    let auth = match (&pem, agent_auth, client) {
        (None, _, _) => {
            tracing::warn!("serving the node API without TLS: any client can claim any node");
            Auth::Plaintext
        }
        (Some(_), AgentAuth::Token, Some(client)) => {
            Auth::Token(Arc::new(TokenReviewer::new(client, &args.namespace)))
        }
        (Some(_), AgentAuth::Token, None) => return Err(Error::TokenWithoutCluster),
        (Some(_), AgentAuth::Mtls, _) => Auth::MutualTls {
            trust_domain: args.trust_domain.clone(),
        },
    };
    let client_certificates = matches!(auth, Auth::MutualTls { .. });
    let grpc = args.listen_grpc.bind().await.map_err(Error::GrpcListener)?;
    let status = StatusApiService::new(hub.clone(), auth.clone(), metrics.clone());
    let service = NodeApiService::new(hub.clone(), inputs, auth, metrics);
    let mut server = tonic::transport::Server::builder()
        // Finds agents that vanished without closing their stream.
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)));
    if let Some(pem) = &pem {
        server = server
            .tls_config(pem.server(client_certificates))
            .map_err(Error::Certificate)?;
    }
    let router = server
        .add_service(service.server())
        .add_service(StatusApiServer::new(status));
    tracing::info!(
        node_api = %args.listen_grpc,
        http = %args.listen_http,
        source = if in_cluster { "kubernetes" } else { "manifests" },
        agent_auth = ?agent_auth,
        "wireway-operator {} started",
        env!("CARGO_PKG_VERSION")
    );
    let mut grpc_task = tokio::spawn(serve_grpc(router, grpc, until_stopped(stopped)));
    let outcome = tokio::select! {
        () = wireway_runtime::signal::terminated() => Ok(()),
        r = &mut grpc_task => Err(Error::Stopped { server: "the node API", cause: ended(r) }),
        r = &mut web_task => Err(Error::Stopped { server: "the HTTP server", cause: ended(r) }),
    };
    let _ = stop.send(true);
    if outcome.is_ok() {
        tracing::info!("stopped");
    }
    outcome
}

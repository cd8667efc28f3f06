//! `wireway-operator`: turns NetworkService, Endpoint and Admission objects into a desired
//! state per node (the planner, `src/plan/`) and serves it to the node agents over gRPC.
//!
//! Its source is the Kubernetes API server, or with `--manifests` a directory of
//! manifests: the same YAML a user applies to a cluster, plus core/v1 Nodes and Pods that
//! say where workloads run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use tokio::sync::mpsc;
use wireway_operator::controller::{self, auth::TokenReviewer};
use wireway_operator::engine::{self, Config, Engine, Hub};
use wireway_operator::metrics::Metrics;
use wireway_operator::serve::{Auth, NodeApiServer, NodeApiService, status_route};
use wireway_operator::source::{kubernetes, manifests::Manifests};
use wireway_runtime::errors::chain;
use wireway_runtime::http::{self, Readiness};
use wireway_runtime::listen::{Address, serve_grpc};
use wireway_runtime::{logging, tls::TlsArgs};

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
    /// Where metrics (/metrics), health (/healthz, /readyz) and object statuses
    /// (/status) are served: HOST:PORT or unix:PATH.
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
    #[command(flatten)]
    tls: TlsArgs,
}

fn fail(message: &str, error: &dyn std::error::Error) -> ExitCode {
    eprintln!("error: {message}: {}", chain(error));
    ExitCode::FAILURE
}

/// The Kubernetes client, once the API server answers. Until then it says why it cannot
/// reach it and retries (the operator stays unready, and its liveness probe answers).
async fn kubernetes_client() -> Result<kube::Client, ExitCode> {
    let config = match kube::Config::infer().await {
        Ok(c) => c,
        Err(e) => {
            return Err(fail(
                "cannot find the Kubernetes API server (in a pod: its service account; elsewhere: KUBECONFIG or ~/.kube/config; or pass --manifests to run without a cluster)",
                &e,
            ));
        }
    };
    let url = config.cluster_url.clone();
    let client = match kube::Client::try_from(config) {
        Ok(c) => c,
        Err(e) => return Err(fail("cannot configure the Kubernetes client", &e)),
    };
    let mut delay = Duration::from_secs(1);
    loop {
        match client.apiserver_version().await {
            Ok(version) => {
                tracing::info!(%url, version = version.git_version, "the Kubernetes API server answers");
                return Ok(client);
            }
            Err(e) => {
                tracing::error!(
                    %url,
                    error = %chain(&e),
                    retry_in = ?delay,
                    "cannot reach the Kubernetes API server"
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    logging::init();
    let args = Args::parse();
    let in_cluster = args.manifests.is_empty();
    let agent_auth = args.agent_auth.unwrap_or(if in_cluster {
        AgentAuth::Token
    } else {
        AgentAuth::Mtls
    });
    let pem = match args.tls.load() {
        Ok(pem) => pem,
        Err(e) => return fail("cannot start", &e),
    };
    for root in &args.manifests {
        if let Err(e) = std::fs::metadata(root) {
            return fail(
                &format!("cannot read the manifests at {}", root.display()),
                &e,
            );
        }
    }
    let (metrics, registry) = Metrics::new();
    let hub = Arc::new(Hub::default());
    let readiness = Readiness::new("starting");

    // Health first: a liveness probe must answer while the API server is away.
    let web = match args.listen_http.bind().await {
        Ok(l) => l,
        Err(e) => return fail("cannot serve HTTP", &e),
    };
    let web_router =
        http::router(Arc::new(registry), readiness.clone()).merge(status_route(hub.clone()));
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
    };
    let mut engine = match Engine::new(config, hub.clone(), metrics.clone(), readiness.clone()) {
        Ok(e) => e,
        Err(e) => return fail("cannot open the state directory", &e),
    };
    let (inputs, received) = mpsc::channel::<engine::Input>(1024);
    let client = if in_cluster {
        readiness.set_not_ready("waiting for the Kubernetes API server");
        let client = tokio::select! {
            client = kubernetes_client() => client,
            () = wireway_runtime::signal::terminated() => return ExitCode::SUCCESS,
        };
        let client = match client {
            Ok(c) => c,
            Err(code) => return code,
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
        let manifests = match Manifests::new(args.manifests.clone()) {
            Ok(m) => m,
            Err(e) => return fail("cannot compile the CRD schemas", &e),
        };
        tokio::spawn(manifests.watch(inputs.clone()));
        None
    };
    tokio::spawn(engine.run(received));

    let auth = match (&pem, agent_auth, client) {
        (None, _, _) => {
            tracing::warn!("serving the node API without TLS: any client can claim any node");
            Auth::Plaintext
        }
        (Some(_), AgentAuth::Token, Some(client)) => {
            Auth::Token(Arc::new(TokenReviewer::new(client, &args.namespace)))
        }
        (Some(_), AgentAuth::Token, None) => {
            eprintln!(
                "error: --agent-auth token needs a cluster (it checks tokens with TokenReviews); drop --manifests or use --agent-auth mtls"
            );
            return ExitCode::FAILURE;
        }
        (Some(_), AgentAuth::Mtls, _) => Auth::MutualTls {
            trust_domain: args.trust_domain.clone(),
        },
    };
    let client_certificates = matches!(auth, Auth::MutualTls { .. });
    let grpc = match args.listen_grpc.bind().await {
        Ok(l) => l,
        Err(e) => return fail("cannot serve the node API", &e),
    };
    let service = NodeApiService::new(hub.clone(), inputs, auth, metrics);
    let mut server = tonic::transport::Server::builder()
        // Finds agents that vanished without closing their stream.
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)));
    if let Some(pem) = &pem {
        server = match server.tls_config(pem.server(client_certificates)) {
            Ok(s) => s,
            Err(e) => return fail("cannot use the TLS certificate", &e),
        };
    }
    let router = server.add_service(NodeApiServer::new(service));
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
        r = &mut grpc_task => Err(("the node API stopped", r.map(|r| r.map_err(|e| e.to_string())))),
        r = &mut web_task => Err(("the HTTP server stopped", r.map(|r| r.map_err(|e| e.to_string())))),
    };
    let _ = stop.send(true);
    match outcome {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err((what, result)) => {
            let cause = match result {
                Ok(Ok(())) => "it ended".to_owned(),
                Ok(Err(e)) => e,
                Err(e) => e.to_string(),
            };
            eprintln!("error: {what}: {cause}");
            ExitCode::FAILURE
        }
    }
}

//! `wireway-operator`: turns NetworkService, Endpoint and Admission objects into a desired
//! state per node (the planner, `src/plan/`) and serves it to the node agents over gRPC.
//!
//! Its source is a directory of manifests (`--manifests`): the same YAML a user applies
//! to a cluster, plus core/v1 Nodes and Pods that say where workloads run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio::sync::mpsc;
use wireway_operator::engine::{self, Config, Engine, Hub, chain};
use wireway_operator::metrics::Metrics;
use wireway_operator::serve::{Auth, NodeApiServer, NodeApiService, status_route};
use wireway_operator::source::manifests::Manifests;
use wireway_runtime::http::{self, Readiness};
use wireway_runtime::listen::{Address, serve_grpc};
use wireway_runtime::{logging, tls::TlsArgs};

/// The Wireway operator.
#[derive(Debug, Parser)]
#[command(name = "wireway-operator", version)]
struct Args {
    /// A file or directory of manifests to read the World from (NetworkService, Endpoint,
    /// Admission, and core/v1 Namespace, Node, Pod and Binding objects); repeat for more.
    /// Files are watched: a change is planned within milliseconds.
    #[arg(long = "manifests", required = true, value_name = "PATH")]
    manifests: Vec<PathBuf>,
    /// Where the node API (gRPC) listens: HOST:PORT or unix:PATH.
    #[arg(long, default_value = "0.0.0.0:9443", env = "WIREWAY_LISTEN_GRPC")]
    listen_grpc: Address,
    /// Where metrics (/metrics), health (/healthz, /readyz) and object statuses
    /// (/status) are served: HOST:PORT or unix:PATH.
    #[arg(long, default_value = "0.0.0.0:8080", env = "WIREWAY_LISTEN_HTTP")]
    listen_http: Address,
    /// Directory for the operator's own state (agents' keys, served states, statuses), so
    /// a restart serves exactly what was served before.
    #[arg(
        long,
        default_value = "/var/lib/wireway-operator",
        env = "WIREWAY_STATE_DIR"
    )]
    state_dir: PathBuf,
    /// This cluster's SPIFFE trust domain: pods are spiffe://<trust-domain>/ns/<ns>/sa/<sa>
    /// and agents prove spiffe://<trust-domain>/wireway/node/<node>.
    #[arg(long, default_value = "cluster.local", env = "WIREWAY_TRUST_DOMAIN")]
    trust_domain: String,
    /// Seconds the first plan waits for agents of nodes whose WireGuard key is not known
    /// yet (so a fresh operator does not serve states without their peers).
    #[arg(long, default_value_t = 15, value_name = "SECONDS")]
    agent_grace: u64,
    #[command(flatten)]
    tls: TlsArgs,
}

fn fail(message: &str, error: &dyn std::error::Error) -> ExitCode {
    eprintln!("error: {message}: {}", chain(error));
    ExitCode::FAILURE
}

#[tokio::main]
async fn main() -> ExitCode {
    logging::init();
    let args = Args::parse();
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
    let manifests = match Manifests::new(args.manifests.clone()) {
        Ok(m) => m,
        Err(e) => return fail("cannot compile the CRD schemas", &e),
    };
    let (metrics, registry) = Metrics::new();
    let hub = Arc::new(Hub::default());
    let readiness = Readiness::new("starting");
    let config = Config {
        trust_domain: args.trust_domain.clone(),
        state_dir: Some(args.state_dir.clone()),
        agent_grace: Duration::from_secs(args.agent_grace),
        kubernetes: false,
    };
    let engine = match Engine::new(config, hub.clone(), metrics.clone(), readiness.clone()) {
        Ok(e) => e,
        Err(e) => return fail("cannot open the state directory", &e),
    };
    let grpc = match args.listen_grpc.bind().await {
        Ok(l) => l,
        Err(e) => return fail("cannot serve the node API", &e),
    };
    let web = match args.listen_http.bind().await {
        Ok(l) => l,
        Err(e) => return fail("cannot serve HTTP", &e),
    };

    let (inputs, received) = mpsc::channel::<engine::Input>(1024);
    tokio::spawn(engine.run(received));
    tokio::spawn(manifests.watch(inputs.clone()));

    let auth = match &pem {
        Some(_) => Auth::MutualTls {
            trust_domain: args.trust_domain.clone(),
        },
        None => {
            tracing::warn!("serving the node API without TLS: any client can claim any node");
            Auth::Plaintext
        }
    };
    let service = NodeApiService::new(hub.clone(), inputs, auth, metrics);
    let mut server = tonic::transport::Server::builder()
        // Finds agents that vanished without closing their stream.
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)));
    if let Some(pem) = &pem {
        server = match server.tls_config(pem.server()) {
            Ok(s) => s,
            Err(e) => return fail("cannot use the TLS certificate", &e),
        };
    }
    let router = server.add_service(NodeApiServer::new(service));
    let web_router = http::router(Arc::new(registry), readiness).merge(status_route(hub));
    tracing::info!(
        node_api = %args.listen_grpc,
        http = %args.listen_http,
        manifests = ?args.manifests,
        "wireway-operator {} started",
        env!("CARGO_PKG_VERSION")
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    let mut grpc_task = tokio::spawn(serve_grpc(router, grpc, until_stopped(stopped.clone())));
    let mut web_task = tokio::spawn(http::serve(web, web_router, until_stopped(stopped)));
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

//! The node API's limit on a NodeState (`MAX_NODE_STATE_BYTES`, 64 MiB encoded), over
//! real gRPC: a state of exactly the limit is sent and taken by a client with the agent's
//! limit; one byte more is not sent at all (sent, it would end the stream, and the
//! agent would reconnect to the same state again and again): the operator counts it as
//! `state_too_large`, the agent's stream stays open, and the next state that fits
//! arrives on it. A report is taken up to the same limit.
//!
//! `node-agent/tests/big_state.rs` shows the same with a real agent and a node of 10,000
//! peers.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly by panicking

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::sync::mpsc;
use wireway_operator::engine::{Hub, Input};
use wireway_operator::metrics::{Metrics, category};
use wireway_operator::serve::{Auth, NodeApiService};
use wireway_operator::testing::hello;
use wireway_proto::node_api_client::NodeApiClient;
use wireway_proto::{AgentReport, MAX_NODE_STATE_BYTES, NodeState, Peer, PeerStatus, ServiceState};
use wireway_runtime::listen::{Address, grpc_channel, serve_grpc};

const NODE: &str = "node-a";

/// A state of `node-a` at `version` that takes exactly `bytes` encoded (a peer's name
/// takes up the room).
fn state_of(version: u64, bytes: usize) -> NodeState {
    let mut state = NodeState {
        node: NODE.into(),
        version,
        epoch: 0,
        services: vec![ServiceState {
            name: "red/red".into(),
            interface_name: "ww-red".into(),
            listen_port: 51820,
            peers: vec![Peer {
                name: String::new(),
                public_key: "V1dXV1dXV1dXV1dXV1dXV1dXV1dXV1dXV1dXV1dXV1c=".into(),
                endpoint: "192.0.2.2:51820".into(),
                allowed_ips: vec!["10.100.1.0/24".into()],
                persistent_keepalive: 0,
            }],
            ..ServiceState::default()
        }],
    };
    // The name's length prefixes grow by a byte at a time: a step or two finds it.
    let mut name = bytes.saturating_sub(state.encoded_len());
    loop {
        state.services[0].peers[0].name = "x".repeat(name);
        match state.encoded_len() {
            n if n == bytes => return state,
            n if n > bytes => name -= n - bytes,
            n => name += bytes - n,
        }
    }
}

/// The stream's next message, if one comes within `seconds`.
async fn next(
    stream: &mut tonic::Streaming<NodeState>,
    seconds: u64,
) -> Result<Result<Option<NodeState>, tonic::Status>, tokio::time::error::Elapsed> {
    tokio::time::timeout(Duration::from_secs(seconds), stream.message()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_over_the_limit_is_not_sent_the_stream_stays_and_the_next_that_fits_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("operator.sock");
    let hub = Arc::new(Hub::default());
    let (metrics, _registry) = Metrics::new();
    let (inputs, mut received) = mpsc::channel(64);
    let (closed, mut disconnected) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(input) = received.recv().await {
            if let Input::Disconnected(node) = input {
                let _ = closed.send(node);
            }
        }
    });
    let service = NodeApiService::new(hub.clone(), inputs, Auth::Plaintext, metrics.clone());
    // As the operator binary serves it.
    let router = tonic::transport::Server::builder().add_service(service.server());
    let listener = Address::Unix(socket.clone()).bind().await.unwrap();
    tokio::spawn(serve_grpc(router, listener, std::future::pending()));

    // A client with the agent's limit.
    let channel = grpc_channel(&format!("unix:{}", socket.display()), None, |e| e)
        .await
        .unwrap();
    let mut client = NodeApiClient::new(channel).max_decoding_message_size(MAX_NODE_STATE_BYTES);
    let mut stream = client.watch(hello(NODE)).await.unwrap().into_inner();

    // Exactly the limit: sent, and taken.
    hub.publish(state_of(1, MAX_NODE_STATE_BYTES));
    let first = next(&mut stream, 30)
        .await
        .expect("within 30 s")
        .unwrap()
        .unwrap();
    assert_eq!(first.version, 1);
    assert_eq!(first.encoded_len(), MAX_NODE_STATE_BYTES);
    drop(first);

    // A byte more: not sent, counted, and the stream stays open.
    let refused = metrics
        .errors
        .get_or_create(&[("category", category::STATE_TOO_LARGE)])
        .clone();
    assert_eq!(refused.get(), 0);
    hub.publish(state_of(2, MAX_NODE_STATE_BYTES + 1));
    let nothing = next(&mut stream, 3).await;
    assert!(
        nothing.is_err(),
        "nothing arrives, and the stream does not end: {:?}",
        nothing.map(|r| r.map(|s| s.map(|s| s.version)))
    );
    assert_eq!(refused.get(), 1, "the state too large is counted");
    assert!(
        disconnected.try_recv().is_err(),
        "the agent is still connected"
    );

    // The next state that fits arrives on that stream.
    hub.publish(state_of(3, 1000));
    let third = next(&mut stream, 10)
        .await
        .expect("within 10 s")
        .unwrap()
        .unwrap();
    assert_eq!(third.version, 3);
    assert_eq!(metrics.pushes.get(), 2);
    assert_eq!(refused.get(), 1);
    assert!(disconnected.try_recv().is_err());

    // The other way: a report naming 100,000 peers (over 4 MiB) is taken.
    let peers = (0..100_000)
        .map(|i| PeerStatus {
            interface_name: "ww-red".into(),
            public_key: format!("{i:0>43}="),
            last_handshake_unix_seconds: 1,
            ..PeerStatus::default()
        })
        .collect();
    let report = AgentReport {
        node: NODE.into(),
        applied_version: 3,
        peers,
        ..AgentReport::default()
    };
    assert!(report.encoded_len() > 4 << 20, "{}", report.encoded_len());
    client
        .report(report)
        .await
        .expect("a report over 4 MiB is taken");
}

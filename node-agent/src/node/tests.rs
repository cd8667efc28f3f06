//! The Node annotation against a mock API server.

use http::{Request, Response};
use kube::client::Body;

use super::*;
use crate::testing::test_key;

fn facts() -> NodeFacts {
    NodeFacts {
        node: "node-a".into(),
        public_key: test_key(1),
        underlay: "192.0.2.7".parse().unwrap(),
    }
}

fn node(annotations: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "node-a", "annotations": annotations},
    }))
    .unwrap()
}

async fn body(request: Request<Body>) -> serde_json::Value {
    let bytes = http_body_util::BodyExt::collect(request.into_body())
        .await
        .unwrap()
        .to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

/// The permission a request needs.
fn needs(request: &Request<Body>) -> wireway_testkit::rbac::Permission {
    let method = request.method().as_str();
    wireway_testkit::rbac::permission(method, request.uri().path(), false).unwrap()
}

#[tokio::test]
async fn annotates_its_node_once_with_exactly_the_permissions_it_is_granted() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let server = tokio::spawn(async move {
        let mut called = std::collections::BTreeSet::new();
        // Not annotated yet: read, then one server-side apply of the two annotations.
        let (request, send) = handle.next_request().await.unwrap();
        called.insert(needs(&request));
        assert_eq!(
            (request.method().as_str(), request.uri().path()),
            ("GET", "/api/v1/nodes/node-a")
        );
        send.send_response(Response::new(Body::from(node(json!({"other": "kept"})))));
        let (request, send) = handle.next_request().await.unwrap();
        called.insert(needs(&request));
        assert_eq!(request.method().as_str(), "PATCH");
        assert_eq!(request.uri().path(), "/api/v1/nodes/node-a");
        let query = request.uri().query().unwrap_or_default().to_owned();
        assert!(
            query.contains("fieldManager=wireway-agent") && query.contains("force=true"),
            "{query}"
        );
        assert_eq!(
            request.headers()["content-type"],
            "application/apply-patch+yaml"
        );
        let patch = body(request).await;
        assert_eq!(
            patch["metadata"]["annotations"],
            json!({
                "wireway.dev/public-key": test_key(1),
                "wireway.dev/underlay-address": "192.0.2.7",
            })
        );
        assert!(patch.get("spec").is_none() && patch["metadata"].get("labels").is_none());
        send.send_response(Response::new(Body::from(node(json!({})))));
        // Already annotated: only read.
        let (request, send) = handle.next_request().await.unwrap();
        called.insert(needs(&request));
        send.send_response(Response::new(Body::from(node(json!({
            "wireway.dev/public-key": test_key(1),
            "wireway.dev/underlay-address": "192.0.2.7",
        })))));
        called
    });
    assert!(publish(&client, &facts()).await.unwrap());
    assert!(!publish(&client, &facts()).await.unwrap());
    let called = server.await.unwrap();
    // config/rbac/agent.yaml grants exactly what the agent calls.
    let yaml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/rbac/agent.yaml"
    ))
    .unwrap();
    assert_eq!(
        called,
        wireway_testkit::rbac::granted(&yaml, "wireway-agent")
    );
}

//! Two operators' federation over real mutual TLS on loopback.

use std::time::Duration;

use wireway_runtime::pki::{self, Subject};

use super::*;
use crate::plan::{Half, HalfMember};

/// A cluster's CA and its operator's identity: (CA PEM, operator certificate and key).
fn cluster(trust_domain: &str) -> (String, OwnIdentity) {
    let (ca, ca_key) = pki::new_ca(trust_domain).unwrap();
    let (cert, key) = pki::issue(&ca, &ca_key, trust_domain, &Subject::Operator(vec![])).unwrap();
    (ca, OwnIdentity { cert, key })
}

fn red() -> ObjectKey {
    ObjectKey::new("red", "red")
}

fn peer(name: &str, trust_domain: &str, bundle: &str, address: &str) -> PeerSpec {
    PeerSpec {
        identity: PeerIdentity {
            name: name.into(),
            identity: format!("spiffe://{trust_domain}/wireway/operator"),
            bundle: bundle.into(),
        },
        address: address.into(),
        shared: [red()].into(),
    }
}

fn half(member: &str) -> Halves {
    let half = Half {
        cidr: "10.100.0.0/16".into(),
        members: vec![HalfMember {
            name: format!("red/{member}"),
            identity: format!("spiffe://x/ns/red/sa/{member}"),
            address: "10.100.128.1".into(),
            node: "n".into(),
        }],
        ..Half::default()
    };
    [(red(), half)].into()
}

/// Waits for an event `want` accepts.
async fn expect(
    events: &mut mpsc::Receiver<PeerSent>,
    what: &str,
    want: impl Fn(&PeerSent) -> bool,
) {
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(event) = events.recv().await {
            if want(&event) {
                return;
            }
        }
        panic!("the events ended before {what}");
    })
    .await;
    assert!(found.is_ok(), "no {what} within 20 s");
}

fn members_of(event: &PeerSent, peer: &str) -> Option<Vec<String>> {
    let halves = event.halves.as_ref().filter(|_| event.peer == peer)?;
    assert!(event.connected && event.last_sync.is_some(), "{event:?}");
    Some(
        halves
            .values()
            .flat_map(|h| &h.members)
            .map(|m| m.name.clone())
            .collect(),
    )
}

/// The peer's last connection closed.
fn disconnected(event: &PeerSent, peer: &str) -> bool {
    event.peer == peer && !event.connected && event.halves.is_none()
}

async fn listen() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    (listener, address)
}

#[tokio::test]
async fn two_operators_exchange_their_halves_both_ways_when_only_one_can_be_reached() {
    let (ca_a, own_a) = cluster("a.example");
    let (ca_b, own_b) = cluster("b.example");
    let (events_a, mut from_b) = mpsc::channel(64);
    let (events_b, mut from_a) = mpsc::channel(64);
    let a = Federation::new(own_a, false, events_a);
    let b = Federation::new(own_b, false, events_b);
    let (listener, address) = listen().await;
    // A cannot reach B (no address that answers); B reaches A.
    assert!(
        a.set_peers(vec![peer("b", "b.example", &ca_b, "127.0.0.1:9")])
            .is_empty()
    );
    assert!(
        b.set_peers(vec![peer("a", "a.example", &ca_a, &address)])
            .is_empty()
    );
    a.set_outgoing([("b".to_owned(), half("a-1"))].into());
    b.set_outgoing([("a".to_owned(), half("b-1"))].into());
    let server = a.clone();
    tokio::spawn(async move { server.serve(listener).await });
    tokio::spawn(b.clone().dial());

    expect(&mut from_b, "B's half at A", |e| {
        members_of(e, "b") == Some(vec!["red/b-1".into()])
    })
    .await;
    expect(&mut from_a, "A's half at B", |e| {
        members_of(e, "a") == Some(vec!["red/a-1".into()])
    })
    .await;

    // A change goes over the same connection.
    a.set_outgoing([("b".to_owned(), half("a-2"))].into());
    expect(&mut from_a, "A's new half at B", |e| {
        members_of(e, "a") == Some(vec!["red/a-2".into()])
    })
    .await;

    // B removes A: the connection closes and A hears it.
    b.set_peers(Vec::new());
    expect(&mut from_b, "B's connection closing at A", |e| {
        disconnected(e, "b") && e.last_sync.is_some()
    })
    .await;
}

/// `federation` serving on `listener` in a runtime of its own, as an operator process:
/// sending on the returned channel (or dropping it) kills it, closing every connection.
fn process(federation: Federation, listener: std::net::TcpListener) -> std::sync::mpsc::Sender<()> {
    let (kill, killed) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.spawn(async move {
            let listener = TcpListener::from_std(listener).unwrap();
            federation.serve(listener).await
        });
        let _ = killed.recv();
        runtime.shutdown_background();
    });
    kill
}

/// A listener on `address`, retried while a killed process's listener there is still
/// being torn down.
fn std_listener(address: &str) -> std::net::TcpListener {
    let start = std::time::Instant::now();
    let listener = loop {
        match std::net::TcpListener::bind(address) {
            Ok(listener) => break listener,
            Err(e) if start.elapsed() < Duration::from_secs(10) => {
                eprintln!("binding {address} again: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("cannot bind {address}: {e}"),
        }
    };
    listener.set_nonblocking(true).unwrap();
    listener
}

#[tokio::test]
async fn an_operator_reconnects_after_its_peer_restarts() {
    let (ca_a, own_a) = cluster("a.example");
    let (ca_b, own_b) = cluster("b.example");
    let (events_a, _from_b) = mpsc::channel(64);
    let (events_b, mut from_a) = mpsc::channel(64);
    let a = Federation::new(own_a, false, events_a);
    let b = Federation::new(own_b, false, events_b);
    let listener = std_listener("127.0.0.1:0");
    let address = listener.local_addr().unwrap().to_string();
    a.set_peers(vec![peer("b", "b.example", &ca_b, "127.0.0.1:9")]);
    b.set_peers(vec![peer("a", "a.example", &ca_a, &address)]);
    a.set_outgoing([("b".to_owned(), half("a-1"))].into());
    let kill = process(a.clone(), listener);
    tokio::spawn(b.clone().dial());
    expect(&mut from_a, "the first connection", |e| {
        members_of(e, "a").is_some()
    })
    .await;

    drop(kill);
    expect(&mut from_a, "the connection lost", |e| disconnected(e, "a")).await;
    let _restarted = process(a.clone(), std_listener(&address));
    expect(&mut from_a, "A's half again after the restart", |e| {
        members_of(e, "a") == Some(vec!["red/a-1".into()])
    })
    .await;
}

/// B dials A with a certificate that proves something else than A's PeerCluster for B
/// says: the handshake fails and neither side hears from the other.
async fn refused(b_trust_domain: &str, own_b: OwnIdentity, bundle_of_b_at_a: &str) {
    let (ca_a, own_a) = cluster("a.example");
    let (events_a, mut at_a) = mpsc::channel(64);
    let (events_b, mut at_b) = mpsc::channel(64);
    let a = Federation::new(own_a, false, events_a);
    let b = Federation::new(own_b, false, events_b);
    let (listener, address) = listen().await;
    a.set_peers(vec![peer(
        "b",
        "b.example",
        bundle_of_b_at_a,
        "127.0.0.1:9",
    )]);
    b.set_peers(vec![peer("a", "a.example", &ca_a, &address)]);
    a.set_outgoing([("b".to_owned(), half("a-1"))].into());
    let server = a.clone();
    tokio::spawn(async move { server.serve(listener).await });
    tokio::spawn(b.clone().dial());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(at_a.try_recv().is_err(), "A heard from {b_trust_domain}");
    assert!(at_b.try_recv().is_err(), "B heard from A");
}

#[tokio::test]
async fn an_operator_signed_by_another_ca_than_its_peer_clusters_bundle_is_refused() {
    let (ca_b, _) = cluster("b.example");
    // An impostor: a certificate naming B's operator, from a CA of its own.
    let (_, impostor) = cluster("b.example");
    refused("an impostor of b.example", impostor, &ca_b).await;
}

#[tokio::test]
async fn a_workload_of_the_peers_trust_domain_is_no_operator() {
    let (ca_b, ca_key_b) = pki::new_ca("b.example").unwrap();
    let (cert, key) = pki::issue(&ca_b, &ca_key_b, "b.example", &Subject::Admin).unwrap();
    refused("b.example's admin", OwnIdentity { cert, key }, &ca_b).await;
}

#[test]
fn a_bundle_without_a_certificate_proves_nobody() {
    let (_, problems) = Trust::new(&[PeerIdentity {
        name: "b".into(),
        identity: "spiffe://b.example/wireway/operator".into(),
        bundle: "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n".into(),
    }]);
    assert!(
        matches!(problems.as_slice(), [(name, TlsProblem::EmptyBundle)] if name == "b"),
        "{problems:?}"
    );
}

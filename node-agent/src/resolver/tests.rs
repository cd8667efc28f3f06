//! The resolver with lookups the test answers ([`Held`]), on tokio's paused clock where
//! the timing is the point (waits are then exact, and nothing waits in real time), and
//! with the system's resolver.

use super::*;
use crate::testing::Held;

const DAY: Duration = Duration::from_secs(86_400);

fn names(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|&n| n.to_owned()).collect()
}

fn held(limits: Limits) -> (Held, Resolver) {
    let held = Held::default();
    (held.clone(), Resolver::new(held, limits))
}

#[tokio::test]
async fn a_name_is_looked_up_in_the_background_and_its_address_wakes_a_pass() {
    let (dns, resolver) = held(Limits::default());
    let vm = names(&["vm.example:51820"]);

    assert_eq!(resolver.endpoints(&vm), BTreeMap::new(), "not known yet");
    assert_eq!(dns.waiting(1).await, ["vm.example:51820"]);
    assert_eq!(
        resolver.endpoints(&vm),
        BTreeMap::new(),
        "still not known, and not asked again"
    );
    assert_eq!(
        dns.answer(
            "vm.example:51820",
            Some("192.0.2.10:51820".parse().unwrap())
        ),
        1
    );
    resolver.changed().await;
    assert_eq!(
        resolver.endpoints(&vm),
        BTreeMap::from([(
            "vm.example:51820".to_owned(),
            "192.0.2.10:51820".parse().unwrap()
        )])
    );
    assert_eq!(dns.asked(), 1);
}

#[tokio::test]
async fn many_names_are_looked_up_at_once_up_to_the_bound() {
    let limits = Limits {
        concurrent: 8,
        ..Limits::default()
    };
    let (dns, resolver) = held(limits);
    let all: BTreeSet<String> = (0..20).map(|n| format!("host-{n}.example:51820")).collect();

    resolver.endpoints(&all);
    // Eight wait at once: none waits for another's answer.
    let mut waiting = dns.waiting(8).await;
    let mut answered = 0;
    while answered < all.len() {
        let name = waiting.remove(0);
        dns.answer(&name, Some("192.0.2.1:51820".parse().unwrap()));
        answered += 1;
        // The next one takes the freed place.
        waiting = dns.waiting((all.len() - answered).min(8)).await;
    }
    resolver.answered(&all).await;
    assert_eq!(dns.asked(), 20);
    assert_eq!(dns.most_in_flight(), 8, "never more than the bound");
    assert_eq!(resolver.endpoints(&all).len(), 20);
}

#[tokio::test(start_paused = true)]
async fn a_lookup_that_takes_too_long_fails_but_keeps_its_place_until_it_ends() {
    let limits = Limits {
        concurrent: 1,
        timeout: Duration::from_secs(2),
        ..Limits::default()
    };
    let (dns, resolver) = held(limits);
    let slow = names(&["slow.example:51820"]);

    resolver.endpoints(&slow);
    assert_eq!(dns.waiting(1).await, ["slow.example:51820"]);
    let started = tokio::time::Instant::now();
    resolver.answered(&slow).await;
    assert_eq!(
        started.elapsed(),
        limits.timeout,
        "given up on after the timeout"
    );
    assert_eq!(resolver.endpoints(&slow), BTreeMap::new());

    // The given-up lookup still holds the only place: another name waits for it.
    let both = names(&["slow.example:51820", "next.example:51820"]);
    resolver.endpoints(&both);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(dns.asked(), 1, "nothing else looked up while it runs");
    dns.answer("slow.example:51820", None);
    assert_eq!(dns.waiting(1).await.len(), 1);
    assert_eq!(dns.most_in_flight(), 1);
}

#[tokio::test(start_paused = true)]
async fn failures_are_retried_with_backoff_and_keep_the_last_good_address() {
    let limits = Limits {
        concurrent: 8,
        timeout: DAY,
        refresh: Duration::from_secs(5),
        shortest_refresh: Duration::from_secs(1),
        retry: Backoff::new(Duration::from_secs(1), Duration::from_secs(4)),
    };
    let (dns, resolver) = held(limits);
    let vm = names(&["vm.example:51820"]);
    let at =
        |address: &str| BTreeMap::from([("vm.example:51820".to_owned(), address.parse().unwrap())]);

    resolver.endpoints(&vm);
    dns.waiting(1).await;
    dns.answer(
        "vm.example:51820",
        Some("192.0.2.10:51820".parse().unwrap()),
    );
    resolver.changed().await;
    let answered = tokio::time::Instant::now();

    // Looked up again after the refresh interval; it fails, and fails again (each wait
    // below 10 s, which `waiting` allows on the paused clock too).
    let mut asked_at = Vec::new();
    for _ in 0..4 {
        dns.waiting(1).await;
        asked_at.push(answered.elapsed().as_secs());
        dns.answer("vm.example:51820", None);
        assert_eq!(resolver.endpoints(&vm), at("192.0.2.10:51820"), "kept");
    }
    dns.waiting(1).await;
    asked_at.push(answered.elapsed().as_secs());
    // 5 s, then 1, 2, 4 and 4 s (the cap) later.
    assert_eq!(asked_at, [5, 6, 8, 12, 16]);

    // A new address wakes a pass; the backoff starts again after the success.
    dns.answer(
        "vm.example:51820",
        Some("192.0.2.11:51820".parse().unwrap()),
    );
    resolver.changed().await;
    assert_eq!(resolver.endpoints(&vm), at("192.0.2.11:51820"));
    dns.waiting(1).await;
    assert_eq!(answered.elapsed().as_secs(), 21, "refreshed after 5 s");
    dns.answer("vm.example:51820", None);
    dns.waiting(1).await;
    assert_eq!(answered.elapsed().as_secs(), 22, "retried after 1 s again");
}

#[tokio::test(start_paused = true)]
async fn a_name_no_pass_asks_for_is_forgotten_and_no_longer_looked_up() {
    let (dns, resolver) = held(Limits::default());
    let vm = names(&["vm.example:51820"]);

    resolver.endpoints(&vm);
    dns.waiting(1).await;
    dns.answer(
        "vm.example:51820",
        Some("192.0.2.10:51820".parse().unwrap()),
    );
    resolver.changed().await;

    resolver.endpoints(&BTreeSet::new());
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(dns.asked(), 1, "not refreshed once forgotten");
    assert_eq!(resolver.endpoints(&vm), BTreeMap::new(), "followed anew");
    dns.waiting(1).await;
}

#[tokio::test]
async fn the_systems_resolver_finds_localhost_and_nothing_under_invalid() {
    let resolver = Resolver::new(System::configured(), Limits::default());
    // RFC 6761: `.invalid` never resolves; `localhost` is in /etc/hosts.
    let asked = names(&["localhost:51820", "nothing.invalid:51820"]);
    assert_eq!(
        resolver.endpoints(&asked),
        BTreeMap::new(),
        "looked up in the background"
    );
    resolver.answered(&asked).await;
    let found = resolver.endpoints(&asked);
    assert_eq!(found.keys().collect::<Vec<_>>(), ["localhost:51820"]);
    let localhost = found["localhost:51820"];
    assert!(localhost.ip().is_loopback(), "{localhost}");
    assert_eq!(localhost.port(), 51820);
}

/// An answer is used for its TTL, within the shortest and longest refresh, and one
/// without a TTL for the longest (each wait below the 10 s `waiting` allows).
#[tokio::test(start_paused = true)]
async fn an_answer_is_used_for_its_ttl_within_bounds() {
    let limits = Limits {
        refresh: Duration::from_secs(9),
        shortest_refresh: Duration::from_secs(2),
        ..Limits::default()
    };
    let (dns, resolver) = held(limits);
    let vm = names(&["vm.example:51820"]);
    let address = "192.0.2.10:51820".parse().unwrap();
    resolver.endpoints(&vm);
    let mut asked_after = Vec::new();
    for ttl in [Some(7), Some(0), Some(86_400), None, Some(7)] {
        dns.waiting(1).await;
        let answered = tokio::time::Instant::now();
        dns.answer_found(
            "vm.example:51820",
            Some(Found {
                address,
                valid_for: ttl.map(Duration::from_secs),
            }),
        );
        dns.waiting(1).await;
        asked_after.push(answered.elapsed().as_secs());
    }
    // 7 s; 0 -> 2 s (the shortest); a day -> 9 s (the longest); none -> 9 s.
    assert_eq!(asked_after, [7, 2, 9, 9, 7]);
}

/// A name server on loopback: `A` queries for `vm.example.` get what the test sets
/// (address, TTL), every other name NXDOMAIN.
struct NameServer {
    address: SocketAddr,
    answer: Arc<Mutex<(std::net::Ipv4Addr, u32)>>,
    task: tokio::task::JoinHandle<()>,
}

impl NameServer {
    async fn start(address: std::net::Ipv4Addr, ttl: u32) -> Self {
        use hickory_proto::op::{Message, Metadata, ResponseCode};
        use hickory_proto::rr::{RData, Record, RecordType, rdata::A};
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let address_served = socket.local_addr().unwrap();
        let answer = Arc::new(Mutex::new((address, ttl)));
        let served = Arc::clone(&answer);
        let task = tokio::spawn(async move {
            let mut buffer = [0; 512];
            loop {
                let (n, from) = socket.recv_from(&mut buffer).await.unwrap();
                let query = Message::from_vec(&buffer[..n]).unwrap();
                let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
                reply.metadata = Metadata::response_from_request(&query.metadata);
                for question in &query.queries {
                    reply.add_query(question.clone());
                    if question.name().to_ascii() != "vm.example." {
                        reply.metadata.response_code = ResponseCode::NXDomain;
                    } else if question.query_type() == RecordType::A {
                        let (address, ttl) = *lock(&served);
                        let a = RData::A(A(address));
                        reply.add_answer(Record::from_rdata(question.name().clone(), ttl, a));
                    }
                }
                socket
                    .send_to(&reply.to_vec().unwrap(), from)
                    .await
                    .unwrap();
            }
        });
        Self {
            address: address_served,
            answer,
            task,
        }
    }

    fn set(&self, address: std::net::Ipv4Addr, ttl: u32) {
        *lock(&self.answer) = (address, ttl);
    }
}

impl Drop for NameServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The system resolver asks DNS and takes each answer's TTL: a name found, with how long
/// it is valid; a name that does not exist is no address, not a failure. Followed, a
/// name with a short TTL is looked up again when it expires and its new address wakes a
/// pass (the longest refresh, a day here, does not hold it).
#[tokio::test]
async fn the_system_resolver_takes_each_answers_ttl_from_dns() {
    let server = NameServer::start([192, 0, 2, 10].into(), 300).await;
    let system = System::with_name_servers(&[server.address]).unwrap();
    let found = system.resolve("vm.example:51820").await.unwrap().unwrap();
    assert_eq!(found.address, "192.0.2.10:51820".parse().unwrap());
    let ttl = found.valid_for.expect("a DNS answer has a TTL");
    assert!(
        ttl <= Duration::from_secs(300) && ttl >= Duration::from_secs(290),
        "{ttl:?}"
    );
    assert_eq!(system.resolve("nothing.example:51820").await.unwrap(), None);

    server.set([192, 0, 2, 11].into(), 1);
    let limits = Limits {
        refresh: DAY,
        shortest_refresh: Duration::from_millis(100),
        ..Limits::default()
    };
    let resolver = Resolver::new(
        System::with_name_servers(&[server.address]).unwrap(),
        limits,
    );
    let vm = names(&["vm.example:51820"]);
    resolver.endpoints(&vm);
    resolver.changed().await;
    assert_eq!(
        resolver.endpoints(&vm)["vm.example:51820"],
        "192.0.2.11:51820".parse().unwrap()
    );
    server.set([192, 0, 2, 12].into(), 1);
    tokio::time::timeout(Duration::from_secs(30), resolver.changed())
        .await
        .expect("looked up again when the TTL of 1 s expired");
    assert_eq!(
        resolver.endpoints(&vm)["vm.example:51820"],
        "192.0.2.12:51820".parse().unwrap()
    );
}

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
    let resolver = Resolver::new(System, Limits::default());
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

//! Members' DNS, as members see it: queries encoded and replies decoded with hickory, on a
//! node that holds three services.

use std::net::IpAddr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use proptest::prelude::*;
use wireway_proto::{DnsRecord, NodeState, ServiceDns, ServiceState};

use super::answer::*;
use crate::testing::*;

/// A service's zone, built up.
trait DnsFixture {
    /// Its zone is `zone`, with no records yet.
    fn zone(self, zone: &str) -> Self;
    /// With a record `name` (relative to the zone) holding `addresses`.
    fn record(self, name: &str, addresses: &[&str]) -> Self;
}

impl DnsFixture for ServiceState {
    fn zone(mut self, zone: &str) -> Self {
        self.dns = Some(ServiceDns {
            zone: zone.to_owned(),
            records: Default::default(),
        });
        self
    }

    fn record(mut self, name: &str, addresses: &[&str]) -> Self {
        let record = DnsRecord {
            name: name.to_owned(),
            addresses: addresses.iter().map(|a| (*a).to_owned()).collect(),
        };
        self.dns.get_or_insert_default().records.push(record.into());
        self
    }
}

const RED: &str = "red.red.wireway.internal";
const GREEN: &str = "green.green.wireway.internal";
const BLUE: &str = "blue.blue.wireway.internal";

/// red/web-0's veth in red; its veth in blue is [`WEB_0_IN_BLUE`].
const WEB_0: &str = "wwv0000000a";
/// red/web-1's veth in red (in no other service).
const WEB_1: &str = "wwv0000000b";
/// green/api-0's veth in green.
const API_0: &str = "wwv0000000c";
const WEB_0_IN_BLUE: &str = "wwv0000000d";

/// Node-1 with three services: red (IPv4; pods web-0 and web-1 behind Endpoint web),
/// green (IPv6; pod api-0 behind api) and blue (IPv4; pod red/web-0 is a member too,
/// and an external host db).
fn three_services() -> NodeState {
    node("node-1")
        .with(
            service("red/red")
                .cidr("10.100.0.0/16")
                .member(member("red/web-0").host_side(WEB_0).at("10.100.0.1"))
                .member(member("red/web-1").host_side(WEB_1).at("10.100.0.2"))
                .zone(RED)
                .record("web-0.web.red", &["10.100.0.1"])
                .record("web-1.web.red", &["10.100.0.2"])
                .record("web.red", &["10.100.0.1", "10.100.0.2"]),
        )
        .with(
            service("green/green")
                .cidr("fd00:200::/48")
                .member(member("green/api-0").host_side(API_0).at("fd00:200::1"))
                .zone(GREEN)
                .record("api-0.api.green", &["fd00:200::1"])
                .record("api.green", &["fd00:200::1"]),
        )
        .with(
            service("blue/blue")
                .cidr("10.200.0.0/16")
                .member(
                    member("red/web-0")
                        .host_side(WEB_0_IN_BLUE)
                        .at("10.200.0.1"),
                )
                .zone(BLUE)
                .record("db.blue", &["10.200.9.9"]),
        )
}

fn query(name: &str, kind: RecordType) -> Message {
    let mut message = Message::new(0x1234, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
    message
}

fn with_edns(mut message: Message, payload: u16) -> Message {
    let mut edns = Edns::new();
    edns.set_max_payload(payload);
    message.set_edns(edns);
    message
}

/// What `zones` replies to `message` on `veth` over UDP (panics on Forward or Drop), and
/// checks that the reported code is the reply's.
fn ask_over(zones: &Zones, veth: &str, message: &Message, udp: bool) -> Message {
    match zones.respond(veth, &message.to_vec().unwrap(), udp) {
        Response::Reply { bytes, rcode } => {
            let reply = Message::from_vec(&bytes).unwrap();
            assert_eq!(u16::from(reply.metadata.response_code), u16::from(rcode));
            assert!(bytes.len() <= if udp { 1232 } else { 65535 });
            reply
        }
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn ask(zones: &Zones, veth: &str, name: &str, kind: RecordType) -> Message {
    ask_over(zones, veth, &query(name, kind), true)
}

fn addresses(reply: &Message) -> Vec<IpAddr> {
    reply
        .answers
        .iter()
        .map(|record| match &record.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(aaaa) => IpAddr::V6(aaaa.0),
            other => panic!("unexpected answer {other:?}"),
        })
        .collect()
}

fn ips(texts: &[&str]) -> Vec<IpAddr> {
    texts.iter().map(|t| t.parse().unwrap()).collect()
}

/// The reply is an authoritative negative answer (`code`) with `zone`'s SOA in authority.
fn assert_negative(reply: &Message, code: ResponseCode, zone: &str) {
    assert_eq!(reply.metadata.response_code, code);
    assert!(reply.metadata.authoritative);
    assert!(reply.answers.is_empty(), "{:?}", reply.answers);
    let [soa] = reply.authorities.as_slice() else {
        panic!("expected one SOA, got {:?}", reply.authorities);
    };
    assert_soa(soa, zone);
}

fn assert_soa(record: &Record, zone: &str) {
    let RData::SOA(soa) = &record.data else {
        panic!("expected a SOA, got {record:?}");
    };
    let apex = Name::from_ascii(format!("{zone}.")).unwrap();
    assert_eq!(record.name, apex);
    assert_eq!(record.ttl, TTL);
    assert_eq!(soa.mname, apex);
    assert_eq!(
        soa.rname,
        Name::from_ascii(format!("hostmaster.{zone}.")).unwrap()
    );
    assert_eq!(soa.minimum, TTL);
}

fn assert_refused(reply: &Message) {
    assert_eq!(reply.metadata.response_code, ResponseCode::Refused);
    assert!(!reply.metadata.authoritative);
    assert!(reply.answers.is_empty() && reply.authorities.is_empty());
}

#[test]
fn a_member_resolves_its_services_names_and_no_other_services() {
    let zones = Zones::new(&three_services());

    let reply = ask(
        &zones,
        WEB_1,
        "web-0.web.red.red.red.wireway.internal.",
        RecordType::A,
    );
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addresses(&reply), ips(&["10.100.0.1"]));
    assert!(reply.answers.iter().all(|r| r.ttl == TTL));

    assert_refused(&ask(
        &zones,
        WEB_1,
        "api.green.green.green.wireway.internal.",
        RecordType::AAAA,
    ));
    assert_refused(&ask(
        &zones,
        WEB_1,
        "db.blue.blue.blue.wireway.internal.",
        RecordType::A,
    ));
    // Refused whether or not the name exists there: nothing leaks.
    assert_refused(&ask(
        &zones,
        WEB_1,
        "nope.blue.blue.blue.wireway.internal.",
        RecordType::A,
    ));
    assert_refused(&ask(
        &zones,
        WEB_1,
        "blue.blue.wireway.internal.",
        RecordType::SOA,
    ));
    assert_refused(&ask(
        &zones,
        API_0,
        "web.red.red.red.wireway.internal.",
        RecordType::A,
    ));
}

#[test]
fn replies_are_authoritative_with_recursion_available_and_echo_id_rd_and_question() {
    let zones = Zones::new(&three_services());
    let mut message = query("web.red.red.red.wireway.internal.", RecordType::A);
    message.metadata.recursion_desired = false;

    let reply = ask_over(&zones, WEB_0, &message, true);

    assert_eq!(reply.metadata.id, 0x1234);
    assert_eq!(reply.metadata.message_type, MessageType::Response);
    assert_eq!(reply.metadata.op_code, OpCode::Query);
    assert!(reply.metadata.authoritative);
    assert!(reply.metadata.recursion_available);
    assert!(!reply.metadata.recursion_desired);
    assert!(!reply.metadata.truncation);
    assert_eq!(reply.queries, message.queries);
    assert!(reply.edns.is_none());
    assert!(
        reply
            .answers
            .iter()
            .all(|r| r.dns_class == DNSClass::IN && r.name == *message.queries[0].name())
    );
}

#[test]
fn an_ipv6_service_answers_aaaa() {
    let zones = Zones::new(&three_services());

    let reply = ask(
        &zones,
        API_0,
        "api-0.api.green.green.green.wireway.internal.",
        RecordType::AAAA,
    );

    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addresses(&reply), ips(&["fd00:200::1"]));
}

#[test]
fn a_headless_name_answers_every_address() {
    let zones = Zones::new(&three_services());

    let reply = ask(
        &zones,
        WEB_0,
        "web.red.red.red.wireway.internal.",
        RecordType::A,
    );

    assert_eq!(addresses(&reply), ips(&["10.100.0.1", "10.100.0.2"]));
}

/// The operator holds a name's addresses in one record per block of 256 (an Endpoint's
/// name can hold thousands): a name's records are merged into one answer.
#[test]
fn a_name_held_in_several_records_answers_all_their_addresses() {
    let state = node("node-1").with(
        service("red/red")
            .cidr("10.100.0.0/16")
            .member(member("red/web-0").host_side(WEB_0).at("10.100.0.1"))
            .zone(RED)
            .record("web.red", &["10.100.0.1", "10.100.0.2"])
            .record("web.red", &["10.100.1.1"])
            .record("web.red", &["10.100.2.1"]),
    );
    let zones = Zones::new(&state);

    let reply = ask(
        &zones,
        WEB_0,
        "web.red.red.red.wireway.internal.",
        RecordType::A,
    );

    let want = ips(&["10.100.0.1", "10.100.0.2", "10.100.1.1", "10.100.2.1"]);
    let mut got = addresses(&reply);
    got.sort();
    assert_eq!(got, want);
}

#[test]
fn any_answers_both_families() {
    let state = node("node-1").with(
        service("red/red")
            .member(member("red/web-0").host_side(WEB_0))
            .zone(RED)
            .record("dual.red", &["fd00::7", "10.0.0.7", "10.0.0.7"]),
    );
    let zones = Zones::new(&state);

    let reply = ask(
        &zones,
        WEB_0,
        "dual.red.red.red.wireway.internal.",
        RecordType::ANY,
    );

    assert_eq!(addresses(&reply), ips(&["10.0.0.7", "fd00::7"]));
    let a = ask(
        &zones,
        WEB_0,
        "dual.red.red.red.wireway.internal.",
        RecordType::A,
    );
    assert_eq!(addresses(&a), ips(&["10.0.0.7"]));
}

#[test]
fn a_name_without_an_address_of_the_asked_type_is_nodata_with_the_soa() {
    let zones = Zones::new(&three_services());

    let aaaa = ask(
        &zones,
        WEB_0,
        "web.red.red.red.wireway.internal.",
        RecordType::AAAA,
    );
    assert_negative(&aaaa, ResponseCode::NoError, RED);
    let a = ask(
        &zones,
        API_0,
        "api.green.green.green.wireway.internal.",
        RecordType::A,
    );
    assert_negative(&a, ResponseCode::NoError, GREEN);
    let txt = ask(
        &zones,
        WEB_0,
        "web.red.red.red.wireway.internal.",
        RecordType::TXT,
    );
    assert_negative(&txt, ResponseCode::NoError, RED);
}

#[test]
fn an_empty_non_terminal_is_nodata() {
    let zones = Zones::new(&three_services());

    // "red" is a suffix of "web.red" and of "web-0.web.red", with no record of its own.
    let reply = ask(
        &zones,
        WEB_0,
        "red.red.red.wireway.internal.",
        RecordType::A,
    );

    assert_negative(&reply, ResponseCode::NoError, RED);
}

#[test]
fn the_apex_is_nodata_except_for_soa() {
    let zones = Zones::new(&three_services());

    let a = ask(&zones, WEB_0, "red.red.wireway.internal.", RecordType::A);
    assert_negative(&a, ResponseCode::NoError, RED);
    let ns = ask(&zones, WEB_0, "red.red.wireway.internal.", RecordType::NS);
    assert_negative(&ns, ResponseCode::NoError, RED);

    let soa = ask(&zones, WEB_0, "red.red.wireway.internal.", RecordType::SOA);
    assert_eq!(soa.metadata.response_code, ResponseCode::NoError);
    assert!(soa.metadata.authoritative);
    assert!(soa.authorities.is_empty());
    let [record] = soa.answers.as_slice() else {
        panic!("expected the SOA, got {:?}", soa.answers);
    };
    assert_soa(record, RED);
}

#[test]
fn a_name_missing_from_the_zone_is_nxdomain_with_the_soa() {
    let zones = Zones::new(&three_services());

    for name in [
        "web-2.web.red.red.red.wireway.internal.",
        "x.web-0.web.red.red.red.wireway.internal.",
        "blue.red.red.wireway.internal.",
    ] {
        let reply = ask(&zones, WEB_0, name, RecordType::A);
        assert_negative(&reply, ResponseCode::NXDomain, RED);
    }
}

#[test]
fn names_under_the_reserved_suffix_outside_the_members_zones_are_refused() {
    let zones = Zones::new(&three_services());

    for name in [
        "wireway.internal.",
        "red.wireway.internal.",
        "web.red.green.wireway.internal.",
        "x.y.z.WireWay.Internal.",
    ] {
        assert_refused(&ask(&zones, WEB_0, name, RecordType::A));
    }
}

#[test]
fn names_outside_every_zone_are_forwarded() {
    let zones = Zones::new(&three_services());

    for name in [
        "example.com.",
        "internal.",
        "notwireway.internal.",
        "kubernetes.default.svc.cluster.local.",
        ".",
    ] {
        let bytes = query(name, RecordType::A).to_vec().unwrap();
        assert_eq!(
            zones.respond(WEB_0, &bytes, true),
            Response::Forward,
            "{name}"
        );
    }
    // Zone transfers too: they are not ours to refuse there.
    let axfr = query("example.com.", RecordType::AXFR).to_vec().unwrap();
    assert_eq!(zones.respond(WEB_0, &axfr, false), Response::Forward);
}

#[test]
fn zone_transfers_of_the_members_zones_are_refused() {
    let zones = Zones::new(&three_services());

    for kind in [RecordType::AXFR, RecordType::IXFR] {
        for name in [
            "red.red.wireway.internal.",
            "web.red.red.red.wireway.internal.",
        ] {
            let reply = ask_over(&zones, WEB_0, &query(name, kind), false);
            assert_refused(&reply);
        }
    }
}

#[test]
fn classes_other_than_internet_are_refused_in_a_members_zone() {
    let zones = Zones::new(&three_services());
    let mut message = query("web.red.red.red.wireway.internal.", RecordType::A);
    message.queries[0].set_query_class(DNSClass::CH);

    assert_refused(&ask_over(&zones, WEB_0, &message, true));
}

#[test]
fn an_unknown_veth_is_refused_everything() {
    let zones = Zones::new(&three_services());

    for name in [
        "web.red.red.red.wireway.internal.",
        "red.red.wireway.internal.",
        "example.com.",
    ] {
        assert_refused(&ask(&zones, "wwv99999999", name, RecordType::A));
    }
    assert_refused(&ask(
        &Zones::default(),
        WEB_0,
        "example.com.",
        RecordType::A,
    ));
}

#[test]
fn names_match_case_insensitively_and_are_answered_as_asked() {
    let zones = Zones::new(&three_services());
    let asked = "WEB-0.Web.RED.red.Red.WireWay.INTERNAL.";

    let reply = ask(&zones, WEB_0, asked, RecordType::A);

    assert_eq!(addresses(&reply), ips(&["10.100.0.1"]));
    assert!(
        reply.queries[0]
            .name()
            .eq_case(&Name::from_ascii(asked).unwrap())
    );
    assert!(
        reply.answers[0]
            .name
            .eq_case(&Name::from_ascii(asked).unwrap())
    );
    assert_negative(
        &ask(
            &zones,
            WEB_0,
            "NOPE.RED.RED.WIREWAY.INTERNAL.",
            RecordType::A,
        ),
        ResponseCode::NXDomain,
        RED,
    );
}

#[test]
fn a_pod_in_two_services_sees_both_zones_from_either_veth() {
    let zones = Zones::new(&three_services());

    for veth in [WEB_0, WEB_0_IN_BLUE] {
        let red = ask(
            &zones,
            veth,
            "web-1.web.red.red.red.wireway.internal.",
            RecordType::A,
        );
        assert_eq!(addresses(&red), ips(&["10.100.0.2"]), "{veth}");
        let blue = ask(
            &zones,
            veth,
            "db.blue.blue.blue.wireway.internal.",
            RecordType::A,
        );
        assert_eq!(addresses(&blue), ips(&["10.200.9.9"]), "{veth}");
        assert_refused(&ask(
            &zones,
            veth,
            "api.green.green.green.wireway.internal.",
            RecordType::AAAA,
        ));
    }
}

#[test]
fn the_longest_zone_that_holds_a_name_decides() {
    // Nested zones: the member sees the outer and the innermost, not the middle one.
    let state = node("node-1")
        .with(
            service("a/outer")
                .member(member("a/pod").host_side(WEB_0))
                .zone("outer.wireway.internal")
                .record("x.inner", &["10.0.0.1"]),
        )
        .with(
            service("b/middle")
                .member(member("b/other").host_side(WEB_1))
                .zone("middle.outer.wireway.internal")
                .record("y", &["10.0.0.2"]),
        )
        .with(
            service("a/inner")
                .member(member("a/pod").host_side(WEB_0_IN_BLUE))
                .zone("inner.middle.outer.wireway.internal")
                .record("z", &["10.0.0.3"]),
        );
    let zones = Zones::new(&state);

    let outer = ask(
        &zones,
        WEB_0,
        "x.inner.outer.wireway.internal.",
        RecordType::A,
    );
    assert_eq!(addresses(&outer), ips(&["10.0.0.1"]));
    let inner = ask(
        &zones,
        WEB_0,
        "z.inner.middle.outer.wireway.internal.",
        RecordType::A,
    );
    assert_eq!(addresses(&inner), ips(&["10.0.0.3"]));
    let inner_miss = ask(
        &zones,
        WEB_0,
        "q.inner.middle.outer.wireway.internal.",
        RecordType::A,
    );
    assert_negative(
        &inner_miss,
        ResponseCode::NXDomain,
        "inner.middle.outer.wireway.internal",
    );
    // In the middle zone, not the member's: refused, though the outer zone holds it too.
    assert_refused(&ask(
        &zones,
        WEB_0,
        "y.middle.outer.wireway.internal.",
        RecordType::A,
    ));
}

/// A state where `web.red` has `count` IPv4 addresses.
fn many_addresses(count: u8) -> Zones {
    let addresses: Vec<String> = (1..=count).map(|i| format!("10.100.0.{i}")).collect();
    let addresses: Vec<&str> = addresses.iter().map(String::as_str).collect();
    Zones::new(
        &node("node-1").with(
            service("red/red")
                .member(member("red/web-0").host_side(WEB_0))
                .zone(RED)
                .record("web.red", &addresses),
        ),
    )
}

#[test]
fn a_reply_too_long_for_udp_is_truncated_and_whole_over_tcp() {
    // 40 addresses: 40 × 16 bytes of A records with the name compressed, over 512.
    let zones = many_addresses(40);
    let message = query("web.red.red.red.wireway.internal.", RecordType::A);

    let udp = ask_over(&zones, WEB_0, &message, true);
    assert!(udp.metadata.truncation);
    assert_eq!(udp.metadata.response_code, ResponseCode::NoError);
    assert!(udp.answers.is_empty() && udp.authorities.is_empty());
    assert_eq!(udp.queries, message.queries);
    assert_eq!(udp.metadata.id, message.metadata.id);

    let tcp = ask_over(&zones, WEB_0, &message, false);
    assert!(!tcp.metadata.truncation);
    assert_eq!(tcp.answers.len(), 40);
}

#[test]
fn edns_is_echoed_with_our_payload_and_raises_the_udp_limit() {
    let zones = many_addresses(40);
    let message = with_edns(
        query("web.red.red.red.wireway.internal.", RecordType::A),
        4096,
    );

    let reply = ask_over(&zones, WEB_0, &message, true);

    assert!(!reply.metadata.truncation);
    assert_eq!(reply.answers.len(), 40);
    let edns = reply.edns.as_ref().expect("an OPT in the reply");
    assert_eq!(edns.max_payload(), 1232);
    assert_eq!(edns.version(), 0);
    assert!(edns.options().as_ref().is_empty());

    // Beyond 1232 bytes (76 A records) even EDNS truncates, and keeps its OPT.
    let zones = many_addresses(76);
    let reply = ask_over(&zones, WEB_0, &message, true);
    assert!(reply.metadata.truncation);
    assert!(reply.answers.is_empty());
    assert!(reply.edns.is_some());

    // A client that advertises less than 512 still gets 512.
    let zones = many_addresses(25);
    let small = with_edns(
        query("web.red.red.red.wireway.internal.", RecordType::A),
        100,
    );
    let reply = ask_over(&zones, WEB_0, &small, true);
    assert!(!reply.metadata.truncation);
    assert_eq!(reply.answers.len(), 25);
}

#[test]
fn edns_on_a_refusal_is_echoed_too() {
    let zones = Zones::new(&three_services());
    let message = with_edns(
        query("db.blue.blue.blue.wireway.internal.", RecordType::A),
        1232,
    );

    let reply = ask_over(&zones, WEB_1, &message, true);

    assert_refused(&reply);
    assert_eq!(reply.edns.map(|e| e.max_payload()), Some(1232));
}

#[test]
fn an_unknown_edns_version_is_badvers() {
    let zones = Zones::new(&three_services());
    let mut message = with_edns(
        query("web.red.red.red.wireway.internal.", RecordType::A),
        1232,
    );
    message.edns.as_mut().unwrap().set_version(1);

    let reply = ask_over(&zones, WEB_0, &message, true);

    // 16 is both BADVERS and BADSIG: hickory decodes it as the latter.
    assert_eq!(u16::from(reply.metadata.response_code), 16);
    assert_eq!(reply.edns.map(|e| e.version()), Some(0));
}

#[test]
fn garbage_is_dropped() {
    let zones = Zones::new(&three_services());

    for bytes in [&b""[..], b"\x12", b"not dns", &[0u8; 11]] {
        assert_eq!(
            zones.respond(WEB_0, bytes, true),
            Response::Drop,
            "{bytes:?}"
        );
    }
}

#[test]
fn a_response_is_dropped() {
    let zones = Zones::new(&three_services());
    let mut message = query("web.red.red.red.wireway.internal.", RecordType::A);
    message.metadata.message_type = MessageType::Response;

    assert_eq!(
        zones.respond(WEB_0, &message.to_vec().unwrap(), true),
        Response::Drop
    );
}

#[test]
fn a_query_that_is_not_exactly_one_question_is_formerr() {
    let zones = Zones::new(&three_services());
    let mut two = query("web.red.red.red.wireway.internal.", RecordType::A);
    two.add_query(Query::query(
        Name::from_ascii("example.com.").unwrap(),
        RecordType::A,
    ));
    let none = Message::new(7, MessageType::Query, OpCode::Query);

    for message in [two, none] {
        let reply = ask_over(&zones, WEB_0, &message, true);
        assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
        assert_eq!(reply.metadata.id, message.metadata.id);
        assert!(reply.queries.is_empty() && reply.answers.is_empty());
    }

    // A header that parses, then a body that does not.
    let mut cut = query("web.red.red.red.wireway.internal.", RecordType::A)
        .to_vec()
        .unwrap();
    cut.truncate(20);
    let Response::Reply { bytes, rcode } = zones.respond(WEB_0, &cut, true) else {
        panic!("expected a reply");
    };
    assert_eq!(rcode, ResponseCode::FormErr);
    assert_eq!(Message::from_vec(&bytes).unwrap().metadata.id, 0x1234);
}

#[test]
fn opcodes_other_than_query_are_notimp() {
    let zones = Zones::new(&three_services());

    for op_code in [OpCode::Notify, OpCode::Update, OpCode::Status] {
        let mut message = query("red.red.wireway.internal.", RecordType::SOA);
        message.metadata.op_code = op_code;
        let reply = ask_over(&zones, WEB_0, &message, true);
        assert_eq!(reply.metadata.response_code, ResponseCode::NotImp);
        assert_eq!(reply.metadata.op_code, op_code);
        assert!(reply.answers.is_empty());
    }
}

#[test]
fn invalid_names_and_addresses_are_skipped() {
    let long_label = "a".repeat(64);
    let long_name = vec!["b".repeat(60); 4].join(".");
    let state = node("node-1")
        .with(
            service("red/red")
                .member(member("red/web-0").host_side(WEB_0))
                .zone(RED)
                .record(
                    "ok",
                    &["10.0.0.1", "not an address", "10.0.0.300", "fd00::1"],
                )
                .record(&long_label, &["10.0.0.2"])
                .record(&long_name, &["10.0.0.3"])
                .record("empty..label", &["10.0.0.4"])
                .record("", &["10.0.0.5"])
                .record("trailing.", &["10.0.0.6"])
                .record("UPPER", &["10.0.0.7"])
                .record("none", &[]),
        )
        .with(
            service("bad/bad")
                .member(member("bad/pod").host_side(WEB_1))
                .zone("")
                .record("x", &["10.0.0.8"]),
        )
        .with(
            service("worse/worse")
                .member(member("bad/pod").host_side(API_0))
                .zone("double..dot.wireway.internal")
                .record("x", &["10.0.0.9"]),
        );
    let zones = Zones::new(&state);

    let ok = ask(
        &zones,
        WEB_0,
        "ok.red.red.wireway.internal.",
        RecordType::ANY,
    );
    assert_eq!(addresses(&ok), ips(&["10.0.0.1", "fd00::1"]));
    // Records' names are lower-cased.
    let upper = ask(
        &zones,
        WEB_0,
        "upper.red.red.wireway.internal.",
        RecordType::A,
    );
    assert_eq!(addresses(&upper), ips(&["10.0.0.7"]));
    // A record without a valid address still names something.
    let none = ask(
        &zones,
        WEB_0,
        "none.red.red.wireway.internal.",
        RecordType::A,
    );
    assert_negative(&none, ResponseCode::NoError, RED);
    // The apex holds only its SOA.
    let apex = ask(&zones, WEB_0, "red.red.wireway.internal.", RecordType::A);
    assert_negative(&apex, ResponseCode::NoError, RED);
    for name in [
        "trailing.red.red.wireway.internal.",
        "label.red.red.wireway.internal.",
        "empty.label.red.red.wireway.internal.",
    ] {
        let reply = ask(&zones, WEB_0, name, RecordType::A);
        assert_negative(&reply, ResponseCode::NXDomain, RED);
    }
    // Services without a valid zone have none: their names are the reserved suffix's.
    assert_refused(&ask(
        &zones,
        WEB_1,
        "x.double.dot.wireway.internal.",
        RecordType::A,
    ));
    assert_eq!(
        zones.respond(
            WEB_1,
            &query("example.com.", RecordType::A).to_vec().unwrap(),
            true
        ),
        Response::Forward
    );
}

/// A query for a member's name, as bytes, to mutate.
fn valid_query() -> Vec<u8> {
    with_edns(
        query("web-0.web.red.red.red.wireway.internal.", RecordType::A),
        1232,
    )
    .to_vec()
    .unwrap()
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600), udp: bool) {
        let zones = Zones::new(&three_services());
        check_reply(&zones.respond(WEB_0, &bytes, udp), udp);
    }

    #[test]
    fn mutated_queries_never_panic(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        udp: bool,
    ) {
        let zones = Zones::new(&three_services());
        let mut bytes = valid_query();
        for (at, value) in flips {
            let at = at.index(bytes.len());
            bytes[at] = value;
        }
        bytes.truncate(cut.index(bytes.len() + 1));
        check_reply(&zones.respond(WEB_0, &bytes, udp), udp);
    }
}

/// A reply, if any, parses as a response that fits its transport.
fn check_reply(response: &Response, udp: bool) {
    if let Response::Reply { bytes, rcode } = response {
        assert!(bytes.len() <= if udp { 1232 } else { 65535 });
        let reply = Message::from_vec(bytes).unwrap();
        assert_eq!(reply.metadata.message_type, MessageType::Response);
        assert_eq!(u16::from(reply.metadata.response_code), u16::from(*rcode));
    }
}

#[test]
fn a_reply_too_long_even_for_tcp_is_servfail() {
    // 5000 A records: 80 000 bytes, over TCP's 65 535.
    let addresses: Vec<String> = (0..5000u32)
        .map(|i| format!("10.1.{}.{}", i / 256, i % 256))
        .collect();
    let addresses: Vec<&str> = addresses.iter().map(String::as_str).collect();
    let zones = Zones::new(
        &node("node-1").with(
            service("red/red")
                .member(member("red/web-0").host_side(WEB_0))
                .zone(RED)
                .record("web.red", &addresses),
        ),
    );
    let message = query("web.red.red.red.wireway.internal.", RecordType::A);

    let tcp = ask_over(&zones, WEB_0, &message, false);

    assert_eq!(tcp.metadata.response_code, ResponseCode::ServFail);
    assert!(tcp.answers.is_empty());
    assert_eq!(tcp.queries, message.queries);
    assert!(ask_over(&zones, WEB_0, &message, true).metadata.truncation);
}

#[test]
fn response_codes_have_fixed_metric_labels() {
    assert_eq!(rcode_label(ResponseCode::NoError), "NOERROR");
    assert_eq!(rcode_label(ResponseCode::NXDomain), "NXDOMAIN");
    assert_eq!(rcode_label(ResponseCode::Refused), "REFUSED");
    assert_eq!(rcode_label(ResponseCode::BADVERS), "BADVERS");
    assert_eq!(rcode_label(ResponseCode::Unknown(3841)), "OTHER");
}

#[test]
fn the_upstream_is_the_first_nameserver_of_resolv_conf() {
    use super::server::first_nameserver;
    let text = "# generated\nsearch svc.cluster.local\nnameserver bogus\nnameserver 10.96.0.10\nnameserver 8.8.8.8\n";
    assert_eq!(
        first_nameserver(text),
        Some("10.96.0.10:53".parse().unwrap())
    );
    assert_eq!(
        first_nameserver("nameserver fd00::a\n"),
        Some("[fd00::a]:53".parse().unwrap())
    );
    assert_eq!(first_nameserver("options ndots:5\n"), None);
}

#[test]
fn zones_after_a_change_take_the_unchanged_zones_and_answer_as_new_ones() {
    let before = Zones::new(&three_services());
    let mut state = three_services();
    // A member joins red: red's names change, green's and blue's do not.
    let red = state
        .services
        .iter_mut()
        .find(|s| s.name == "red/red")
        .unwrap();
    *red = red.clone().record("web-2.web.red", &["10.100.0.3"]);

    let after = Zones::after(&state, &before);
    let fresh = Zones::new(&state);

    assert_eq!(after.zones_shared_with(&before), 2);
    assert_eq!(fresh.zones_shared_with(&before), 0);
    let asked = [
        (WEB_0, "web-2.web.red.red.red.wireway.internal."),
        (WEB_1, "web-0.web.red.red.red.wireway.internal."),
        (WEB_0, "red.red.red.wireway.internal."),
        (WEB_0, "gone.red.red.red.wireway.internal."),
        (API_0, "api-0.api.green.green.green.wireway.internal."),
        (API_0, "web.red.red.red.wireway.internal."),
        (WEB_0_IN_BLUE, "db.blue.blue.blue.wireway.internal."),
    ];
    for (veth, name) in asked {
        for kind in [RecordType::A, RecordType::AAAA, RecordType::SOA] {
            assert_eq!(
                ask(&after, veth, name, kind).to_vec().unwrap(),
                ask(&fresh, veth, name, kind).to_vec().unwrap(),
                "{veth} {name} {kind}"
            );
        }
    }
    assert_eq!(
        addresses(&ask(
            &after,
            WEB_0,
            "web-2.web.red.red.red.wireway.internal.",
            RecordType::A
        )),
        ips(&["10.100.0.3"])
    );
}

/// A record's name: one to three labels from a few (in two cases, so that two texts may
/// be one name), or not a valid name.
fn record_name() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => proptest::collection::vec(prop::sample::select(&["a", "b", "A", "web"][..]), 1..4)
            .prop_map(|labels| labels.join(".")),
        1 => prop::sample::select(&["", "a..b", ".a"][..]).prop_map(str::to_owned),
    ]
}

/// A few records, some of them repeated or with addresses that do not parse.
fn records() -> impl Strategy<Value = Vec<(String, Vec<&'static str>)>> {
    let address = prop::sample::select(&["10.0.0.1", "10.0.0.2", "fd00::1", "junk"][..]);
    proptest::collection::vec(
        (record_name(), proptest::collection::vec(address, 0..3)),
        0..10,
    )
}

fn with_records(records: &[(String, Vec<&str>)]) -> NodeState {
    let red = records.iter().fold(
        ServiceState {
            name: "red/red".into(),
            ..ServiceState::default()
        }
        .zone(RED),
        |service, (name, addresses)| service.record(name, addresses),
    );
    NodeState {
        services: vec![red],
        ..NodeState::default()
    }
}

proptest! {
    /// `after` is `before` with some records kept (as `kept` says) and some added, so
    /// that a few records change, as when members come and go, and sometimes most.
    #[test]
    fn a_zone_changed_by_its_records_is_the_zone_made_anew(
        before in records(),
        kept in proptest::collection::vec(any::<bool>(), 10),
        added in records(),
    ) {
        let previous = Zones::new(&with_records(&before));
        let after: Vec<_> = before
            .iter()
            .zip(&kept)
            .filter(|(_, keep)| **keep)
            .map(|(record, _)| record.clone())
            .chain(added)
            .collect();
        let state = with_records(&after);
        let changed = Zones::after(&state, &previous);
        prop_assert!(changed.same_names_as(&Zones::new(&state)));
    }
}

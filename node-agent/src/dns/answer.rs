//! The answer to one DNS query from a member: from its services' zones, a refusal, or
//! "forward it upstream". Pure: [`Zones`] is built from a `NodeState` after each pass, and
//! [`Zones::respond`] turns the bytes of one query into the bytes of its reply; the
//! sockets and the upstream relay are the caller's.
//!
//! A query arrives on a member's host veth, which says which pod asks. The pod sees the
//! zone of every service it is a member of on this node (its member `id` is the same in
//! each), and nothing else the agent knows.
//!
//! Guarantees:
//! * a name in (equal to or under) one of the pod's zones is answered here, with AA set,
//!   from that zone's records only: exact names, compared case-insensitively, no
//!   wildcards. Where zones nest, the longest zone the name is in decides;
//! * a name in another service's zone, or under [`RESERVED_SUFFIX`] and in none of the
//!   pod's zones, is REFUSED: a pod learns nothing of services it is not in, not even
//!   whether a name exists. So is every query on a veth that is no member's, and a zone
//!   transfer (AXFR, IXFR) of the pod's zones;
//! * every other name is [`Response::Forward`]ed, unchanged, to the upstream resolver;
//! * negative answers (NXDOMAIN, and NOERROR without an answer) carry the zone's SOA, and
//!   every record, the SOA's minimum included, lives [`TTL`] seconds: members see a
//!   change at most that late;
//! * replies fit their transport: over UDP 512 bytes, or with EDNS the client's payload
//!   size up to [`EDNS_PAYLOAD`]; a longer reply goes without its records and with TC set,
//!   so the client asks again over TCP;
//! * nothing panics on any bytes or any `NodeState`: a message whose header does not
//!   parse, or that is itself a response, is dropped (never answer an answer: no loops);
//!   records whose name is not a valid DNS name, and addresses that do not parse, are
//!   skipped when the zones are built.
//!
//! All parsing and serialising is hickory-proto's.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use hickory_proto::op::{Edns, Header, Message, MessageType, Metadata, OpCode, Query};
use hickory_proto::rr::rdata::{A, AAAA, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use wireway_proto::{Member, NodeState, ServiceDns};

pub use hickory_proto::op::ResponseCode;

/// The suffix every service's zone is under. A name under it that is in none of the
/// asking member's zones is refused, never forwarded: it is no upstream's to answer.
pub const RESERVED_SUFFIX: &str = "wireway.internal";

/// Seconds every answer may be cached, negative answers included (the SOA's minimum and
/// its own TTL): short, since members come and go.
pub const TTL: u32 = 5;

/// The UDP payload size a reply's OPT advertises, and the most a reply over UDP ever
/// holds: the size that avoids IP fragmentation on common paths (DNS flag day 2020).
pub const EDNS_PAYLOAD: u16 = 1232;

/// The most a reply over UDP holds when its query had no EDNS (RFC 1035).
const UDP_PAYLOAD: usize = 512;

/// The longest name, as text without the final dot (255 bytes on the wire).
const MAX_NAME_TEXT: usize = 253;

/// The most a reply over TCP holds: its length prefix is two bytes.
const TCP_PAYLOAD: usize = u16::MAX as usize;

/// The synthesized SOA's serial: the zones are never transferred, so it need only be
/// stable.
const SERIAL: u32 = 1;

/// The SOA's refresh, retry and expire, in seconds: plausible values for a zone that is
/// never transferred.
const REFRESH: i32 = 60;
const RETRY: i32 = 10;
const EXPIRE: i32 = 3600;

/// What [`Zones::respond`] decided for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// Answered here: the reply's bytes and its response code (for metrics, as
    /// [`rcode_label`]).
    Reply {
        /// The reply, as it goes on the wire (without TCP's length prefix).
        bytes: Vec<u8>,
        /// Its response code.
        rcode: ResponseCode,
    },
    /// A name outside every zone the member may see and outside [`RESERVED_SUFFIX`]:
    /// relay the query, unchanged, to the upstream resolver.
    Forward,
    /// Not a DNS query (its header does not parse, or it is a response): send nothing.
    Drop,
}

/// The zones of a node's services and which member sees which: what the agent answers
/// from. Built from a `NodeState` after each pass; cheap to query.
///
/// The default has no zones and no members: it refuses every query.
#[derive(Debug, Clone, Default)]
pub struct Zones {
    /// Every zone of the state that has a valid name.
    zones: Vec<Arc<Zone>>,
    /// Each zone's apex, to its index in `zones` (more than one only if services share a
    /// zone, which the operator never plans; each is then seen only by its own members).
    by_apex: HashMap<Name, Vec<usize>>,
    /// Each member's host veth, to the indices of the zones its pod sees.
    by_veth: HashMap<String, BTreeSet<usize>>,
}

/// One service's zone.
#[derive(Debug, Clone)]
struct Zone {
    /// What it was made from.
    source: ServiceDns,
    /// Its apex, lower case, absolute.
    apex: Name,
    /// Every name under the apex that exists, lower case, absolute: records' names with
    /// their addresses, and empty non-terminals (proper suffixes of records' names) with
    /// none.
    names: HashMap<Name, Held>,
    /// The zone's SOA record, owned by the apex.
    soa: Record,
}

/// A name of a zone: its addresses, and what makes it exist. Counted, so that a zone
/// changes by the records that changed (see [`Zone::changed`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Held {
    /// Its addresses by family, sorted, each with the number of its records that hold it.
    v4: BTreeMap<Ipv4Addr, u32>,
    v6: BTreeMap<Ipv6Addr, u32>,
    /// How many records have this name.
    records: u32,
    /// How many names directly beneath it exist: while any do, it exists (an empty
    /// non-terminal, when it has no records of its own).
    below: u32,
}

impl Held {
    /// Whether its name is in the zone.
    fn exists(&self) -> bool {
        self.records > 0 || self.below > 0
    }
}

/// One more (`up`) or one fewer, never past the ends.
fn step(count: u32, up: bool) -> u32 {
    if up {
        count.saturating_add(1)
    } else {
        count.saturating_sub(1)
    }
}

/// The zone a question's name falls in, for one member.
enum Owner<'a> {
    /// One of the member's zones.
    Member(&'a Zone),
    /// A zone of a service the member is not in.
    Other,
    /// No zone of the state.
    None,
}

impl Zones {
    /// The zones of `state`'s services, and for each member's host veth the zones of
    /// every service its pod (its member `id`) is in on this node.
    ///
    /// A service without `dns`, or whose zone is not a valid name, has no zone; its
    /// members' veths are still known (and refused its siblings' zones).
    pub fn new(state: &NodeState) -> Self {
        Self::after(state, &Self::default())
    }

    /// The zones of `state`, as [`Zones::new`] makes them, taking from `previous` each
    /// zone whose service's names did not change, and changing a zone whose names did by
    /// the records that changed (a member joining one service adds its records to that
    /// service's zone alone).
    pub fn after(state: &NodeState, previous: &Self) -> Self {
        let zone_of = |dns: &ServiceDns| {
            if let Some(same) = previous.zones.iter().find(|zone| zone.source == *dns) {
                return Some(same.clone());
            }
            let changed = previous
                .zones
                .iter()
                .find(|zone| zone.source.zone == dns.zone)
                .and_then(|zone| zone.changed(dns));
            changed.or_else(|| Zone::new(dns)).map(Arc::new)
        };
        let mut zones = Vec::new();
        let mut by_apex: HashMap<Name, Vec<usize>> = HashMap::new();
        // The zone of each service, in the state's order.
        let mut of_service = Vec::with_capacity(state.services.len());
        for service in &state.services {
            let zone = service.dns.as_ref().and_then(zone_of).map(|zone| {
                let index = zones.len();
                by_apex.entry(zone.apex.clone()).or_default().push(index);
                zones.push(zone);
                index
            });
            of_service.push(zone);
        }

        // A pod's zones are those of every service it is in: gathered by member id first,
        // since a pod has one veth per service. A member without an id is its own pod.
        let pod = |member: &Member| -> (bool, String) {
            if member.id.is_empty() {
                (false, member.host_interface_name.clone())
            } else {
                (true, member.id.clone())
            }
        };
        let mut by_pod: HashMap<(bool, String), BTreeSet<usize>> = HashMap::new();
        for (service, zone) in state.services.iter().zip(&of_service) {
            for member in &service.members {
                by_pod.entry(pod(member)).or_default().extend(*zone);
            }
        }
        let mut by_veth: HashMap<String, BTreeSet<usize>> = HashMap::new();
        for service in &state.services {
            for member in &service.members {
                if member.host_interface_name.is_empty() {
                    continue;
                }
                let seen = by_pod.get(&pod(member)).cloned().unwrap_or_default();
                by_veth
                    .entry(member.host_interface_name.clone())
                    .or_default()
                    .extend(seen);
            }
        }

        Self {
            zones,
            by_apex,
            by_veth,
        }
    }

    /// How many of these zones are `other`'s very own (taken by [`Zones::after`]).
    #[cfg(test)]
    pub fn zones_shared_with(&self, other: &Zones) -> usize {
        self.zones
            .iter()
            .filter(|zone| other.zones.iter().any(|o| Arc::ptr_eq(zone, o)))
            .count()
    }

    /// Whether these zones hold the same names, addresses and counts as `other`'s, in
    /// the same order.
    #[cfg(test)]
    pub fn same_names_as(&self, other: &Zones) -> bool {
        self.zones.len() == other.zones.len()
            && self
                .zones
                .iter()
                .zip(&other.zones)
                .all(|(a, b)| a.apex == b.apex && a.names == b.names)
    }

    /// The answer to one DNS message (its wire bytes, without TCP's length prefix) that
    /// arrived on host veth `veth`, over UDP (`udp: true`: the reply is cut to the
    /// client's limit) or TCP.
    ///
    /// Guarantees: never panics; a reply has the query's id and opcode, QR and RA set, RD
    /// and CD copied, and the question echoed as asked (unless it is a FORMERR or
    /// NOTIMP); it carries an OPT (payload [`EDNS_PAYLOAD`], no options, DO copied)
    /// exactly when the query did and parsed.
    pub fn respond(&self, veth: &str, query: &[u8], udp: bool) -> Response {
        let Ok(header) = Header::read(&mut BinDecoder::new(query)) else {
            return Response::Drop;
        };
        if header.metadata.message_type == MessageType::Response {
            return Response::Drop;
        }
        // A header that parses with a body that does not is a query we cannot read:
        // FORMERR, from the header alone.
        let message = Message::from_vec(query).ok();
        let Some(reply) = self.reply(veth, &header.metadata, message.as_ref()) else {
            return Response::Forward;
        };
        let edns = message.as_ref().and_then(|m| m.edns.as_ref());
        let limit = match (udp, edns) {
            (false, _) => TCP_PAYLOAD,
            (true, None) => UDP_PAYLOAD,
            (true, Some(edns)) => {
                usize::from(edns.max_payload().clamp(UDP_PAYLOAD as u16, EDNS_PAYLOAD))
            }
        };
        encode(&reply, udp, limit)
    }

    /// The reply to a query with header `request` and, if it parsed, `message`; `None`
    /// to forward it.
    fn reply(&self, veth: &str, request: &Metadata, message: Option<&Message>) -> Option<Message> {
        let mut reply = Message::response(request.id, request.op_code);
        reply.metadata = Metadata::response_from_request(request);
        reply.metadata.recursion_available = true;
        let Some(message) = message else {
            return Some(rcode_only(reply, ResponseCode::FormErr));
        };
        if let Some(edns) = &message.edns {
            let mut ours = Edns::new();
            ours.set_max_payload(EDNS_PAYLOAD);
            // RFC 3225: the DO bit is copied (we hold no signatures either way).
            ours.set_dnssec_ok(edns.flags().dnssec_ok);
            reply.set_edns(ours);
        }
        if request.op_code != OpCode::Query {
            return Some(rcode_only(reply, ResponseCode::NotImp));
        }
        let [question] = message.queries.as_slice() else {
            return Some(rcode_only(reply, ResponseCode::FormErr));
        };
        reply.add_query(question.clone());
        if message.edns.as_ref().is_some_and(|edns| edns.version() > 0) {
            return Some(rcode_only(reply, ResponseCode::BADVERS));
        }
        let Some(seen) = self.by_veth.get(veth) else {
            return Some(rcode_only(reply, ResponseCode::Refused));
        };
        match self.owner(seen, question.name()) {
            Owner::Member(zone) => Some(zone.answer(question, reply)),
            Owner::Other => Some(rcode_only(reply, ResponseCode::Refused)),
            Owner::None if is_reserved(question.name()) => {
                Some(rcode_only(reply, ResponseCode::Refused))
            }
            Owner::None => None,
        }
    }

    /// The zone `name` is in, as the member that sees the zones `seen` may learn it: the
    /// longest zone of the state that holds the name decides.
    fn owner(&self, seen: &BTreeSet<usize>, name: &Name) -> Owner<'_> {
        let mut candidate = name.to_lowercase();
        candidate.set_fqdn(true);
        loop {
            if let Some(indices) = self.by_apex.get(&candidate) {
                return indices
                    .iter()
                    .find(|index| seen.contains(index))
                    .and_then(|&index| self.zones.get(index))
                    .map_or(Owner::Other, |zone| Owner::Member(zone));
            }
            if candidate.is_root() {
                return Owner::None;
            }
            candidate = candidate.base_name();
        }
    }
}

impl Zone {
    /// The zone of `dns`, or `None` if its name is not a valid DNS name. Records whose
    /// names are not valid are skipped, and so are addresses that do not parse.
    fn new(dns: &ServiceDns) -> Option<Self> {
        let apex = name(&labels(&dns.zone)?)?;
        let rname = apex
            .prepend_label("hostmaster")
            .unwrap_or_else(|_| apex.clone());
        let soa = Record::from_rdata(
            apex.clone(),
            TTL,
            RData::SOA(SOA::new(
                apex.clone(),
                rname,
                SERIAL,
                REFRESH,
                RETRY,
                EXPIRE,
                TTL,
            )),
        );
        let mut zone = Self {
            source: dns.clone(),
            apex,
            names: HashMap::with_capacity(dns.records.len() + 1),
            soa,
        };
        for record in dns.records.iter() {
            zone.count(&record.name, &record.addresses, true);
        }
        Some(zone)
    }

    /// This zone with the records of `dns` instead of its own (the same zone): the
    /// records it lacks are added and those `dns` lacks taken away, each as often as it
    /// is there more or less. What it answers is what [`Zone::new`] of `dns` would.
    /// `None` when more records changed than `dns` holds: made anew, it costs less.
    fn changed(&self, dns: &ServiceDns) -> Option<Self> {
        let mut difference: HashMap<(&str, &[String]), i64> = HashMap::new();
        for (records, sign) in [(&self.source.records, -1), (&dns.records, 1)] {
            for record in records.iter() {
                *difference
                    .entry((record.name.as_str(), record.addresses.as_slice()))
                    .or_default() += sign;
            }
        }
        let mut changes: Vec<_> = difference.into_iter().filter(|(_, n)| *n != 0).collect();
        let changed: u64 = changes.iter().map(|(_, n)| n.unsigned_abs()).sum();
        if changed > dns.records.len() as u64 {
            return None;
        }
        let mut zone = Self {
            source: dns.clone(),
            ..self.clone()
        };
        // Added first, so that a name whose record only changes its addresses is not let
        // go and made again with the names above it (the counts end the same either way).
        changes.sort_by_key(|(_, n)| *n < 0);
        for ((name, addresses), n) in changes {
            for _ in 0..n.unsigned_abs() {
                zone.count(name, addresses, n > 0);
            }
        }
        Some(zone)
    }

    /// Counts one record with `addresses` for the name `text` (relative to the apex) in,
    /// or out: a name exists while records have it or names beneath it, and an address
    /// is its name's while a record holds it. A name that is not valid counts nothing.
    fn count(&mut self, text: &str, addresses: &[String], into: bool) {
        let apex_len = self.apex.len().saturating_sub(1);
        let Some(full) = labels(text)
            .filter(|l| text_len(l) + 1 + apex_len <= MAX_NAME_TEXT)
            .and_then(|l| Name::from_labels(l.iter().map(Vec::as_slice)).ok())
            .and_then(|relative| relative.append_domain(&self.apex).ok())
        else {
            return;
        };
        let held = self.names.entry(full.clone()).or_default();
        let existed = held.exists();
        for address in addresses {
            match address.parse::<IpAddr>() {
                Ok(IpAddr::V4(v4)) => tally(&mut held.v4, v4, into),
                Ok(IpAddr::V6(v6)) => tally(&mut held.v6, v6, into),
                Err(_) => {}
            }
        }
        held.records = step(held.records, into);
        let exists = held.exists();
        if !exists {
            self.names.remove(&full);
        }
        if existed != exists {
            self.came_or_went(full, exists);
        }
    }

    /// `name` came into the zone or went from it (`came`): its parent has one child more
    /// or fewer, and so on up while a parent comes or goes with it (a name already there
    /// has every name above it there too, so the walk stops at the first).
    fn came_or_went(&mut self, mut name: Name, came: bool) {
        loop {
            let parent = name.base_name();
            if parent.num_labels() <= self.apex.num_labels() {
                return;
            }
            let held = self.names.entry(parent.clone()).or_default();
            let existed = held.exists();
            held.below = step(held.below, came);
            let exists = held.exists();
            if !exists {
                self.names.remove(&parent);
            }
            if existed == exists {
                return;
            }
            name = parent;
        }
    }

    /// The reply to `question`, a name in this zone, built on `reply`.
    fn answer(&self, question: &Query, mut reply: Message) -> Message {
        if !matches!(question.query_class(), DNSClass::IN | DNSClass::ANY)
            || matches!(question.query_type(), RecordType::AXFR | RecordType::IXFR)
        {
            return rcode_only(reply, ResponseCode::Refused);
        }
        reply.metadata.authoritative = true;
        // Answers are owned by the name as asked (resolvers may check its case).
        let owner = question.name().clone();
        let asked = question.query_type();
        let mut name = owner.to_lowercase();
        name.set_fqdn(true);
        if name == self.apex {
            if matches!(asked, RecordType::SOA | RecordType::ANY) {
                let mut soa = self.soa.clone();
                soa.name = owner;
                reply.add_answer(soa);
            }
        } else if let Some(addresses) = self.names.get(&name) {
            let (v4, v6) = match asked {
                RecordType::A => (true, false),
                RecordType::AAAA => (false, true),
                RecordType::ANY => (true, true),
                _ => (false, false),
            };
            if v4 {
                for &address in addresses.v4.keys() {
                    reply.add_answer(Record::from_rdata(owner.clone(), TTL, RData::A(A(address))));
                }
            }
            if v6 {
                for &address in addresses.v6.keys() {
                    reply.add_answer(Record::from_rdata(
                        owner.clone(),
                        TTL,
                        RData::AAAA(AAAA(address)),
                    ));
                }
            }
        } else {
            reply.metadata.response_code = ResponseCode::NXDomain;
        }
        if reply.answers.is_empty() {
            // NXDOMAIN or NODATA: the SOA says how long to remember it (RFC 2308).
            reply.add_authority(self.soa.clone());
        }
        reply
    }
}

/// `rcode` as a metric label: its mnemonic (`"NOERROR"`, `"NXDOMAIN"`, ...) for the
/// codes [`Zones::respond`] gives, `"OTHER"` for any other.
pub fn rcode_label(rcode: ResponseCode) -> &'static str {
    match rcode {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::BADVERS => "BADVERS",
        _ => "OTHER",
    }
}

/// The reply to `query` that carries only `rcode` and the question (SERVFAIL when the
/// upstream resolver does not answer); `None` when `query` is no query.
pub fn failure(query: &[u8], rcode: ResponseCode) -> Option<Vec<u8>> {
    let header = Header::read(&mut BinDecoder::new(query)).ok()?;
    if header.metadata.message_type == MessageType::Response {
        return None;
    }
    let mut reply = Message::response(header.metadata.id, header.metadata.op_code);
    reply.metadata = Metadata::response_from_request(&header.metadata);
    reply.metadata.recursion_available = true;
    if let Ok(message) = Message::from_vec(query) {
        for question in message.queries {
            reply.add_query(question);
        }
    }
    rcode_only(reply, rcode).to_vec().ok()
}

/// `reply` with no records and response code `code`.
fn rcode_only(mut reply: Message, code: ResponseCode) -> Message {
    reply.metadata.response_code = code;
    reply
}

/// `reply`'s bytes if they fit in `limit`; otherwise, over UDP, the reply without its
/// records and with TC set (the client asks again over TCP), over TCP a SERVFAIL.
fn encode(reply: &Message, udp: bool, limit: usize) -> Response {
    // hickory's encoder stops at 65 535 bytes on its own, setting TC and leaving out the
    // records that did not fit: such a reply is too long too, never sent as a partial set.
    if let Ok(bytes) = reply.to_vec()
        && bytes.len() <= limit
        && !truncated(&bytes)
    {
        return Response::Reply {
            bytes,
            rcode: reply.metadata.response_code,
        };
    }
    let mut cut = reply.truncate();
    if !udp {
        cut.metadata.truncation = false;
        cut.metadata.authoritative = false;
        cut.metadata.response_code = ResponseCode::ServFail;
    }
    match cut.to_vec() {
        Ok(bytes) if bytes.len() <= limit => Response::Reply {
            bytes,
            rcode: cut.metadata.response_code,
        },
        // The question alone fits any limit (a name is at most 255 bytes); unreachable.
        _ => Response::Drop,
    }
}

/// Whether the encoded message `bytes` has TC set.
fn truncated(bytes: &[u8]) -> bool {
    Header::read(&mut BinDecoder::new(bytes)).map_or(true, |header| header.metadata.truncation)
}

/// One record more (`into`) or fewer holding `address`: it stays while any does.
fn tally<A: Ord + Copy>(held: &mut BTreeMap<A, u32>, address: A, into: bool) {
    match step(held.get(&address).copied().unwrap_or(0), into) {
        0 => held.remove(&address),
        count => held.insert(address, count),
    };
}

/// The labels of `text` (dot-separated, relative, no trailing dot), lower case, or
/// `None` if it is not a valid name: an empty label, a label over 63 bytes, or over 253
/// characters in all.
fn labels(text: &str) -> Option<Vec<Vec<u8>>> {
    if text.len() > MAX_NAME_TEXT {
        return None;
    }
    text.split('.')
        .map(|label| {
            (!label.is_empty() && label.len() <= 63)
                .then(|| label.to_ascii_lowercase().into_bytes())
        })
        .collect()
}

/// The absolute name made of `labels`, or `None` if it is too long for DNS (253
/// characters as text, 255 bytes on the wire).
fn name(labels: &[Vec<u8>]) -> Option<Name> {
    if text_len(labels) > MAX_NAME_TEXT {
        return None;
    }
    Name::from_labels(labels.iter().map(Vec::as_slice)).ok()
}

/// The length of the name made of `labels`, as text without the final dot.
fn text_len(labels: &[Vec<u8>]) -> usize {
    labels.iter().map(Vec::len).sum::<usize>() + labels.len().saturating_sub(1)
}

/// Whether `name` is equal to or under [`RESERVED_SUFFIX`], in any case.
fn is_reserved(name: &Name) -> bool {
    let mut labels = name.iter().rev();
    RESERVED_SUFFIX.split('.').rev().all(|suffix| {
        labels
            .next()
            .is_some_and(|label| label.eq_ignore_ascii_case(suffix.as_bytes()))
    })
}

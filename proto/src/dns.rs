//! `ServiceDns`, written by hand rather than generated: its records are shared. Every
//! node carrying a service holds the same names (a record per member), so the operator's
//! states of those nodes share one list instead of a copy each; and the list is held in
//! shared parts of shared records ([`DnsRecords`]), so a list edited while another holds
//! it (the operator's hub, the last version sent) copies the part and the record edited,
//! not the list. On the wire and in files it is the message `node.proto` describes.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use prost::bytes::{Buf, BufMut};
use prost::encoding::{self, DecodeContext, WireType};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::DnsRecord;

/// A service's names: a zone private to its members (message `ServiceDns` of
/// `node.proto`). Cloning it shares the records.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ServiceDns {
    /// The zone, lower case, without a trailing dot ("red.red.wireway.internal").
    pub zone: String,
    /// Its names, sorted by name and relative to the zone: "<member>.<endpoint>.<namespace>"
    /// for each pod member and "<endpoint>.<namespace>" for each Endpoint (all its members;
    /// an external host's only name). A name may have several records, sorted by address
    /// (the operator writes one per block of 256 addresses); they are answered together.
    pub records: DnsRecords,
}

/// Half the most records of a part: a part over twice this many is split in two, so an
/// edit of a shared list copies at most twice this many record pointers (and one pointer
/// per part).
const PART: usize = 64;

/// A list of records held in shared parts of shared records: cloning it shares the
/// list, and an edit of a shared list copies a pointer per part, the part it edits and
/// the record it edits, not every record. Kept in the order it is given.
#[derive(Clone, Default)]
pub struct DnsRecords {
    parts: Arc<Vec<Arc<Vec<Arc<DnsRecord>>>>>,
    len: usize,
}

/// A place in a [`DnsRecords`]: a part, and a record in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct At {
    part: usize,
    record: usize,
}

impl DnsRecords {
    /// How many records.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The records, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<DnsRecord>> {
        self.parts.iter().flat_map(|p| p.iter())
    }

    /// Binary search in a list sorted as `f` says (`f` tells how a record compares to
    /// the one sought), as [`slice::binary_search_by`]: where the record is, or where it
    /// would be inserted.
    pub fn search_by(&self, f: impl Fn(&DnsRecord) -> Ordering) -> Result<At, At> {
        let part = self
            .parts
            .partition_point(|p| p.first().is_some_and(|r| f(r) != Ordering::Greater))
            .saturating_sub(1);
        let Some(records) = self.parts.get(part) else {
            return Err(At { part, record: 0 });
        };
        match records.binary_search_by(|r| f(r)) {
            Ok(record) => Ok(At { part, record }),
            Err(record) => Err(At { part, record }),
        }
    }

    /// The record at `at`.
    pub fn get(&self, at: At) -> Option<&DnsRecord> {
        self.parts.get(at.part)?.get(at.record).map(|r| &**r)
    }

    /// The record at `at`, to edit: its part and it are copied first if shared.
    pub fn get_mut(&mut self, at: At) -> Option<&mut DnsRecord> {
        let parts = Arc::make_mut(&mut self.parts);
        let part = Arc::make_mut(parts.get_mut(at.part)?);
        part.get_mut(at.record).map(Arc::make_mut)
    }

    /// Inserts `record` at `at` (from [`Self::search_by`]).
    pub fn insert(&mut self, at: At, record: DnsRecord) {
        let parts = Arc::make_mut(&mut self.parts);
        if parts.is_empty() {
            parts.push(Arc::new(vec![Arc::new(record)]));
            self.len = 1;
            return;
        }
        let Some(shared) = parts.get_mut(at.part) else {
            return;
        };
        let part = Arc::make_mut(shared);
        part.insert(at.record.min(part.len()), Arc::new(record));
        self.len += 1;
        if part.len() > 2 * PART {
            let rest = part.split_off(PART);
            parts.insert(at.part + 1, Arc::new(rest));
        }
    }

    /// Removes the record at `at`.
    pub fn remove(&mut self, at: At) {
        if self.get(at).is_none() {
            return;
        }
        let parts = Arc::make_mut(&mut self.parts);
        let Some(shared) = parts.get_mut(at.part) else {
            return;
        };
        let part = Arc::make_mut(shared);
        part.remove(at.record);
        self.len -= 1;
        if part.is_empty() {
            parts.remove(at.part);
        }
    }

    /// Adds `record` at the end.
    pub fn push(&mut self, record: Arc<DnsRecord>) {
        let parts = Arc::make_mut(&mut self.parts);
        match parts.last_mut() {
            Some(last) if last.len() < PART => Arc::make_mut(last).push(record),
            _ => parts.push(Arc::new(vec![record])),
        }
        self.len += 1;
    }
}

impl FromIterator<Arc<DnsRecord>> for DnsRecords {
    fn from_iter<I: IntoIterator<Item = Arc<DnsRecord>>>(iter: I) -> Self {
        let mut records = Self::default();
        for record in iter {
            records.push(record);
        }
        records
    }
}

impl From<Vec<Arc<DnsRecord>>> for DnsRecords {
    fn from(records: Vec<Arc<DnsRecord>>) -> Self {
        records.into_iter().collect()
    }
}

impl From<Vec<DnsRecord>> for DnsRecords {
    fn from(records: Vec<DnsRecord>) -> Self {
        records.into_iter().map(Arc::new).collect()
    }
}

impl PartialEq for DnsRecords {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.parts, &other.parts)
            || (self.len == other.len && self.iter().eq(other.iter()))
    }
}

impl Eq for DnsRecords {}

impl fmt::Debug for DnsRecords {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Serialize for DnsRecords {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for DnsRecords {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Vec::<DnsRecord>::deserialize(deserializer).map(Self::from)
    }
}

const ZONE: u32 = 1;
const RECORDS: u32 = 2;

impl prost::Message for ServiceDns {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if !self.zone.is_empty() {
            encoding::string::encode(ZONE, &self.zone, buf);
        }
        for record in self.records.iter() {
            encoding::message::encode(RECORDS, &**record, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        match tag {
            ZONE => encoding::string::merge(wire_type, &mut self.zone, buf, ctx),
            RECORDS => {
                let mut record = DnsRecord::default();
                encoding::message::merge(wire_type, &mut record, buf, ctx)?;
                self.records.push(Arc::new(record));
                Ok(())
            }
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        let zone = if self.zone.is_empty() {
            0
        } else {
            encoding::string::encoded_len(ZONE, &self.zone)
        };
        let records: usize = self
            .records
            .iter()
            .map(|r| encoding::message::encoded_len(RECORDS, &**r))
            .sum();
        zone + records
    }

    fn clear(&mut self) {
        self.zone.clear();
        self.records = DnsRecords::default();
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    /// The message as prost would generate it from `node.proto`.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Generated {
        #[prost(string, tag = "1")]
        zone: String,
        #[prost(message, repeated, tag = "2")]
        records: Vec<DnsRecord>,
    }

    fn record(name: &str, addresses: &[&str]) -> DnsRecord {
        DnsRecord {
            name: name.into(),
            addresses: addresses.iter().map(|a| (*a).to_owned()).collect(),
        }
    }

    /// Encodes as the generated message does and decodes what it encodes, unknown
    /// fields skipped; a clone shares the records.
    #[test]
    fn is_the_message_of_node_proto() {
        let cases = [
            Generated::default(),
            Generated {
                zone: "red.red.wireway.internal".into(),
                records: Vec::new(),
            },
            Generated {
                zone: String::new(),
                records: vec![record("a", &[])],
            },
            Generated {
                zone: "red.red.wireway.internal".into(),
                records: vec![
                    record("a.members.red", &["10.100.0.1"]),
                    record("members.red", &["10.100.0.1", "fd00::1"]),
                ],
            },
        ];
        for generated in cases {
            let ours = ServiceDns {
                zone: generated.zone.clone(),
                records: generated.records.clone().into(),
            };
            let bytes = generated.encode_to_vec();
            assert_eq!(ours.encode_to_vec(), bytes);
            assert_eq!(ours.encoded_len(), bytes.len());
            assert_eq!(ServiceDns::decode(bytes.as_slice()), Ok(ours.clone()));
            let shared = ours.clone();
            assert!(Arc::ptr_eq(&shared.records.parts, &ours.records.parts));
        }
        // Field 3 is no field of ServiceDns: skipped, as a generated message skips it.
        let mut bytes = vec![0x1a, 0x01, b'x'];
        bytes.extend(
            Generated {
                zone: "z".into(),
                records: vec![record("a", &["10.0.0.1"])],
            }
            .encode_to_vec(),
        );
        let decoded = ServiceDns::decode(bytes.as_slice()).map(|d| (d.zone, d.records.len()));
        assert_eq!(decoded, Ok(("z".to_owned(), 1)));
        let mut cleared = ServiceDns::decode(bytes.as_slice()).unwrap_or_default();
        cleared.clear();
        assert_eq!(cleared, ServiceDns::default());
    }

    proptest::proptest! {
        /// Inserts, removes and edits found by search, on a list held in parts and
        /// shared with a clone, leave it as a plain sorted list would be; the clone taken
        /// before is as it was.
        #[test]
        fn edits_agree_with_a_plain_sorted_list(
            start in proptest::collection::btree_set(0u16..700, 0..300),
            edits in proptest::collection::vec((0u16..700, 0u8..3), 0..300),
        ) {
            let name = |n: u16| format!("pod-{n:03}");
            let mut plain: Vec<DnsRecord> =
                start.iter().map(|n| record(&name(*n), &["10.0.0.1"])).collect();
            let mut records = DnsRecords::from(plain.clone());
            let (before, before_plain) = (records.clone(), plain.clone());
            for (n, op) in edits {
                let sought = name(n);
                let at = records.search_by(|r| r.name.cmp(&sought));
                let expected = plain.binary_search_by(|r| r.name.cmp(&sought));
                proptest::prop_assert_eq!(at.is_ok(), expected.is_ok());
                match (at, expected, op) {
                    (Ok(at), Ok(i), 0) => {
                        records.remove(at);
                        plain.remove(i);
                    }
                    (Ok(at), Ok(i), _) => {
                        let address = format!("10.0.0.{op}");
                        if let Some(r) = records.get_mut(at) {
                            r.addresses.push(address.clone());
                        }
                        plain[i].addresses.push(address);
                    }
                    (Err(at), Err(i), _) => {
                        records.insert(at, record(&sought, &["10.0.0.1"]));
                        plain.insert(i, record(&sought, &["10.0.0.1"]));
                    }
                    _ => proptest::prop_assert!(false, "the search disagrees with the plain list"),
                }
            }
            let listed: Vec<DnsRecord> = records.iter().map(|r| (**r).clone()).collect();
            proptest::prop_assert_eq!(&listed, &plain);
            proptest::prop_assert_eq!(records.len(), plain.len());
            let kept: Vec<DnsRecord> = before.iter().map(|r| (**r).clone()).collect();
            proptest::prop_assert_eq!(kept, before_plain);
            proptest::prop_assert!(records.parts.iter().all(|p| (1..=2 * PART).contains(&p.len())));
            proptest::prop_assert_eq!(records, DnsRecords::from(plain));
        }
    }
}

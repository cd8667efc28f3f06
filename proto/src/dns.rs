//! `ServiceDns`, written by hand rather than generated: its records are shared. Every
//! node carrying a service holds the same names (a record per member), so the operator's
//! states of those nodes share one list instead of a copy each; and each record is shared
//! on its own, so a list edited while another holds it (the operator's hub, the last
//! version sent) copies its pointers and the records edited, not every record. On the
//! wire and in files it is the message `node.proto` describes.

use std::sync::Arc;

use prost::bytes::{Buf, BufMut};
use prost::encoding::{self, DecodeContext, WireType};

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
    pub records: Arc<Vec<Arc<DnsRecord>>>,
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
                Arc::make_mut(&mut self.records).push(Arc::new(record));
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
        self.records = Arc::default();
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
                records: Arc::new(generated.records.iter().cloned().map(Arc::new).collect()),
            };
            let bytes = generated.encode_to_vec();
            assert_eq!(ours.encode_to_vec(), bytes);
            assert_eq!(ours.encoded_len(), bytes.len());
            assert_eq!(ServiceDns::decode(bytes.as_slice()), Ok(ours.clone()));
            let shared = ours.clone();
            assert!(Arc::ptr_eq(&shared.records, &ours.records));
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
}

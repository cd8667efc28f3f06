//! A burst of packets a peer sent, decrypted, as the userspace device writes them to its
//! TUN interface: staged as the device's writer stages them and coalesced by the code it
//! runs (`tun-rs`'s receive offload).

use std::collections::BTreeMap;

use tun_rs::{
    VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_GSO_UDP_L4,
    VIRTIO_NET_HDR_LEN, VirtioNetHdr, checksum, checksum_no_fold, gso_split, handle_gro,
};
use wireway_agent::dataplane::wireguard::tun::{HEADROOM, stage};

/// The flows a burst's packets belong to: two TCP flows over IPv4 (one port apart), one
/// over IPv6, one UDP flow over IPv4.
const FLOWS: [Flow; 4] = [
    Flow::new(false, 6, 40000),
    Flow::new(false, 6, 40001),
    Flow::new(true, 6, 40000),
    Flow::new(false, 17, 40000),
];

#[derive(Clone, Copy)]
struct Flow {
    v6: bool,
    protocol: u8,
    source_port: u16,
}

impl Flow {
    const fn new(v6: bool, protocol: u8, source_port: u16) -> Self {
        Self {
            v6,
            protocol,
            source_port,
        }
    }

    fn addresses(self) -> (Vec<u8>, Vec<u8>) {
        if self.v6 {
            let mut source = vec![0xfd, 0, 0, 0xb, 0, 0, 0, 2];
            source.extend([0; 7]);
            source.push(1);
            let mut destination = source.clone();
            destination[7] = 1;
            (source, destination)
        } else {
            (vec![10, 100, 2, 1], vec![10, 100, 1, 1])
        }
    }
}

/// What a packet of a flow says, as the reader of the input took it.
struct Spec {
    flow: Flow,
    tos: u8,
    ttl: u8,
    more_fragments: bool,
    seq: u32,
    ack: u32,
    flags: u8,
    timestamps: bool,
    payload: Vec<u8>,
    corrupt: bool,
}

/// The internet checksum field for `segment` (its own field zero) under the pseudo-header
/// of `source`, `destination` and `protocol`.
fn transport_checksum(source: &[u8], destination: &[u8], protocol: u8, segment: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(40);
    pseudo.extend_from_slice(source);
    pseudo.extend_from_slice(destination);
    pseudo.extend([0, protocol]);
    pseudo.extend(
        u16::try_from(segment.len())
            .unwrap_or(u16::MAX)
            .to_be_bytes(),
    );
    !checksum(segment, checksum_no_fold(&pseudo, 0))
}

/// The packet `spec` describes, its checksums right unless it asks for a corrupt one.
fn packet(spec: &Spec) -> Vec<u8> {
    let Spec { flow, .. } = *spec;
    let (source, destination) = flow.addresses();
    let mut segment = Vec::new();
    segment.extend(flow.source_port.to_be_bytes());
    segment.extend(80u16.to_be_bytes());
    if flow.protocol == 6 {
        segment.extend(spec.seq.to_be_bytes());
        segment.extend(spec.ack.to_be_bytes());
        let words: u8 = if spec.timestamps { 8 } else { 5 };
        segment.extend([words << 4, spec.flags]);
        segment.extend([0xff, 0xff, 0, 0, 0, 0]);
        if spec.timestamps {
            segment.extend([1, 1, 8, 10, 0, 0, 0, 7, 0, 0, 0, 9]);
        }
    } else {
        let len = 8 + spec.payload.len();
        segment.extend(u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes());
        segment.extend([0, 0]);
    }
    segment.extend_from_slice(&spec.payload);
    let at = if flow.protocol == 6 { 16 } else { 6 };
    let sum = transport_checksum(&source, &destination, flow.protocol, &segment);
    segment[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    if spec.corrupt {
        segment[at] ^= 0x10;
    }
    let mut packet = Vec::new();
    if flow.v6 {
        packet.extend([0x60 | (spec.tos >> 4), spec.tos << 4, 0, 0]);
        packet.extend(
            u16::try_from(segment.len())
                .unwrap_or(u16::MAX)
                .to_be_bytes(),
        );
        packet.extend([flow.protocol, spec.ttl]);
        packet.extend(&source);
        packet.extend(&destination);
    } else {
        let len = u16::try_from(20 + segment.len()).unwrap_or(u16::MAX);
        packet.extend([0x45, spec.tos]);
        packet.extend(len.to_be_bytes());
        packet.extend([0, 1, if spec.more_fragments { 0x20 } else { 0x40 }, 0]);
        packet.extend([spec.ttl, flow.protocol, 0, 0]);
        packet.extend(&source);
        packet.extend(&destination);
        let sum = !checksum(&packet, 0);
        packet[10..12].copy_from_slice(&sum.to_be_bytes());
    }
    packet.extend(segment);
    packet
}

/// Reads a burst from the fuzzer's bytes: most packets are built from a few bytes each
/// (a flow, its next sequence number or another, flags, a length), so that bursts of
/// packets that may be coalesced are common; some are the bytes as they come.
fn burst(data: &[u8]) -> Vec<Vec<u8>> {
    let mut bytes = data.iter().copied();
    let mut next_seq = [1000u32; FLOWS.len()];
    let mut packets = Vec::new();
    while packets.len() < tun_rs::IDEAL_BATCH_SIZE {
        let (Some(op), Some(bits), Some(size)) = (bytes.next(), bytes.next(), bytes.next()) else {
            break;
        };
        if op & 0x80 != 0 {
            let raw: Vec<u8> = bytes.by_ref().take(usize::from(size)).collect();
            if !raw.is_empty() {
                packets.push(raw);
            }
            continue;
        }
        let index = usize::from(op & 3);
        let len = usize::from(size) * 6;
        let seq = match (op >> 2) & 3 {
            0 | 1 => next_seq[index],
            2 => next_seq[index].wrapping_sub(u32::try_from(len).unwrap_or(0)),
            _ => u32::from_be_bytes([op, bits, size, 7]),
        };
        let spec = Spec {
            flow: FLOWS[index],
            tos: if bits & 1 != 0 { 4 } else { 0 },
            ttl: if bits & 2 != 0 { 63 } else { 64 },
            more_fragments: op & 0x40 != 0,
            seq,
            ack: if bits & 4 != 0 { 2 } else { 1 },
            // ACK, with PSH, FIN or SYN by the bits.
            flags: 0x10 | (bits & 0x08) | ((bits >> 4) & 0x03),
            timestamps: bits & 0x40 != 0,
            payload: (0..len)
                .map(|i| (i as u8) ^ (packets.len() as u8))
                .collect(),
            corrupt: bits & 0x80 != 0,
        };
        next_seq[index] = seq.wrapping_add(u32::try_from(len).unwrap_or(0));
        packets.push(packet(&spec));
    }
    packets
}

/// What identifies a packet's bytes in its flow: addresses, ports, protocol, and the
/// sequence number and payload (TCP) or the payload (UDP).
type Key = (Vec<u8>, u32, Vec<u8>);

/// The key of an IP packet, and whether its transport checksum is right; `None` for what
/// is not TCP or UDP over IPv4 or IPv6 with headers that fit.
fn key(packet: &[u8]) -> Option<(Key, bool)> {
    let (header, protocol, addresses) = match packet.first()? >> 4 {
        4 => (
            usize::from(packet[0] & 0x0f) * 4,
            *packet.get(9)?,
            packet.get(12..20)?,
        ),
        6 => (40, *packet.get(6)?, packet.get(8..40)?),
        _ => return None,
    };
    let segment = packet.get(header..)?;
    let half = addresses.len() / 2;
    // As the coalescing checks it: the sum over the segment, its checksum field included.
    let right = transport_checksum(&addresses[..half], &addresses[half..], protocol, segment) == 0;
    let mut flow = addresses.to_vec();
    flow.extend(segment.get(..4)?);
    flow.push(protocol);
    match protocol {
        6 => {
            let offset = usize::from(segment.get(12)? >> 4) * 4;
            let seq = u32::from_be_bytes(segment.get(4..8)?.try_into().ok()?);
            Some(((flow, seq, segment.get(offset..)?.to_vec()), right))
        }
        17 => Some(((flow, 0, segment.get(8..)?.to_vec()), right)),
        _ => None,
    }
}

/// A burst as the device's writer coalesces it: the packets, their buffers (each a
/// virtio-net header before [`HEADROOM`], then what is written), and the buffers written.
struct Written {
    packets: Vec<Vec<u8>>,
    bufs: Vec<Vec<u8>>,
    written: Vec<usize>,
}

/// Reads a burst from `data` (its first byte says whether the kernel takes UDP segments)
/// and coalesces it; `None` for no input, a panic if the burst is refused.
fn write(data: &[u8]) -> Option<Written> {
    let (&first, rest) = data.split_first()?;
    let packets = burst(rest);
    let mut bufs = Vec::new();
    let n = stage(&mut bufs, packets.iter());
    bufs.truncate(n);
    let mut written = Vec::new();
    handle_gro(
        &mut bufs,
        HEADROOM,
        &mut Default::default(),
        &mut Default::default(),
        first & 1 != 0,
        &mut written,
    )
    .unwrap_or_else(|e| panic!("a burst of {n} packets was refused: {e}"));
    Some(Written {
        packets,
        bufs,
        written,
    })
}

/// A peer's burst, written as the device writes it: whatever the packets, coalescing
/// neither fails the burst nor panics, and what is written is each packet exactly once:
/// as it came, or (only when its TCP or UDP checksum is right) as a segment of a
/// coalesced packet that splits back into the same flow, sequence number and payload. A
/// peer's packet with a wrong checksum never rides in on a good one, whose checksum the
/// kernel would take on trust.
pub fn tun_writes(data: &[u8]) {
    let Some(Written {
        packets,
        bufs,
        written,
    }) = write(data)
    else {
        return;
    };
    // Each packet not yet seen written, by its bytes.
    let mut unseen: BTreeMap<&[u8], usize> = BTreeMap::new();
    for packet in &packets {
        *unseen.entry(packet.as_slice()).or_default() += 1;
    }
    let mut take = |packet: &[u8], what: &str| match unseen.get_mut(packet) {
        Some(count) if *count > 0 => *count -= 1,
        _ => panic!("{what}: {packet:02x?}"),
    };
    let mut segments = Vec::new();
    for &i in &written {
        let buf = &bufs[i];
        let hdr = VirtioNetHdr::decode(&buf[HEADROOM - VIRTIO_NET_HDR_LEN..HEADROOM])
            .unwrap_or_else(|e| panic!("no header before packet {i}: {e}"));
        let packet = &buf[HEADROOM..];
        let v6 = match hdr.gso_type {
            // VIRTIO_NET_HDR_GSO_NONE, which tun-rs does not export.
            0 => {
                take(packet, "written, but not sent so (or twice)");
                continue;
            }
            VIRTIO_NET_HDR_GSO_TCPV4 => false,
            VIRTIO_NET_HDR_GSO_TCPV6 => true,
            VIRTIO_NET_HDR_GSO_UDP_L4 => packet[0] >> 4 == 6,
            other => panic!("packet {i} written with GSO type {other}"),
        };
        // Segments are no longer than the packets a burst is made of (at most 1,602 bytes).
        let mut split = vec![vec![0u8; 2048]; tun_rs::IDEAL_BATCH_SIZE];
        let mut sizes = vec![0; tun_rs::IDEAL_BATCH_SIZE];
        let count = gso_split(&mut packet.to_vec(), hdr, &mut split, &mut sizes, 0, v6)
            .unwrap_or_else(|e| panic!("coalesced packet {i} does not split: {e}"));
        assert!(count > 1, "packet {i} is coalesced from {count} segment(s)");
        segments.extend((0..count).map(|s| split[s][..sizes[s]].to_vec()));
    }
    // The coalesced segments: each one a packet sent with a right checksum, once.
    let mut sent: BTreeMap<Key, Vec<usize>> = BTreeMap::new();
    for (j, packet) in packets.iter().enumerate() {
        if let Some((key, true)) = key(packet) {
            sent.entry(key).or_default().push(j);
        }
    }
    for segment in &segments {
        let (key, _) = key(segment).unwrap_or_else(|| panic!("a segment is not TCP or UDP"));
        let j = sent.get_mut(&key).and_then(Vec::pop).unwrap_or_else(|| {
            let (flow, seq, payload) = &key;
            let len = payload.len();
            panic!(
                "a segment no packet with a right checksum sent: {flow:?} seq {seq} ({len} bytes)"
            )
        });
        take(&packets[j], "a packet written twice");
    }
    let lost: usize = unseen.values().sum();
    assert_eq!(lost, 0, "{lost} of {} packets not written", packets.len());
}

/// How many packets of the burst in `data` were coalesced into others: the corpus replay
/// checks some input makes the device coalesce.
pub fn tun_writes_coalesced(data: &[u8]) -> usize {
    write(data).map_or(0, |w| w.packets.len() - w.written.len())
}

//! The userspace device's TUN interface, opened with the kernel's offloads.
//!
//! Without them, every packet a workload sends through the tunnel is one read of the TUN
//! device and one trip through the sending kernel's TCP stack, and every packet received
//! is one write and one trip through the receiving stack: that, not the cryptography,
//! bounded the device (`docs/benchmarks.md`, "Userspace WireGuard throughput"). With them
//! (`IFF_VNET_HDR` and TSO/checksum offload on the device, as wireguard-go does):
//!
//! * the kernel hands the device TCP segments of up to 64 KiB with a virtio-net header,
//!   which are split here into packets of the interface's MTU before they are encrypted
//!   (segmentation offload), and partial checksums are completed;
//! * packets decrypted in a burst are written back coalesced per TCP flow, one write for
//!   many segments (receive offload). A segment is coalesced only if its own checksum is
//!   right: the kernel takes a coalesced packet's checksum on trust, so a peer's corrupt
//!   segment must not ride in on a good one. Everything else is written as it came.
//!
//! The splitting and coalescing are `tun-rs`'s port of wireguard-go's.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use gotatun::packet::{Ip, Packet, PacketBufPool};
use gotatun::tun::{IpRecv, IpSend, MtuWatcher};
use nix::errno::Errno;
use tokio::sync::{mpsc, watch};
use tun_rs::{AsyncDevice, DeviceBuilder, GROTable, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

use crate::dataplane::netlink::Netlink;

/// The largest segment the kernel hands over, with its virtio-net header.
const LARGEST_READ: usize = VIRTIO_NET_HDR_LEN + u16::MAX as usize;

/// Room before a packet to be written, for the virtio-net header the coalescing writes.
pub const HEADROOM: usize = 16;

/// Packets decrypted and waiting for the TUN device: a burst is written coalesced.
const QUEUE: usize = 1024;

/// How often the interface's MTU is read again (it is set by the agent after the device
/// starts, and may change).
const MTU_EVERY: Duration = Duration::from_secs(3);

/// Makes the TUN interface `name` with offloads and gives its two halves: what the device
/// writes decrypted packets to and what it reads packets to encrypt from. The link is
/// left down, as the agent brings it up once it is configured.
///
/// The kernel is told to hand it no packet of more segments than a read is split into
/// ([`IDEAL_BATCH_SIZE`]; it splits larger ones itself): a sender that makes a stream's
/// segments small (a 64 KiB packet of 200-byte segments is 328 of them) would otherwise
/// have every read of its stream refused, and the stream stall.
pub async fn open(name: &str) -> io::Result<(TunWriter, TunReader)> {
    let tun = Arc::new(
        DeviceBuilder::new()
            .name(name)
            .offload(true)
            .inherit_enable_state()
            .build_async()?,
    );
    Netlink::connect()
        .map_err(io::Error::other)?
        .limit_gso_segments(tun.if_index()?, IDEAL_BATCH_SIZE as u32)
        .await
        .map_err(io::Error::other)?;
    let (mtu_changed, mtu) = watch::channel(tun.mtu()?);
    tokio::spawn(watch_mtu(Arc::downgrade(&tun), mtu_changed));
    let (queue, queued) = mpsc::channel(QUEUE);
    tokio::spawn(write(Arc::clone(&tun), queued));
    let reader = TunReader {
        tun,
        read: vec![0; LARGEST_READ],
        slots: Vec::with_capacity(IDEAL_BATCH_SIZE),
        sizes: vec![0; IDEAL_BATCH_SIZE],
        mtu: mtu.into(),
    };
    Ok((TunWriter { queue }, reader))
}

/// Reads the MTU of the interface every few seconds while it exists.
async fn watch_mtu(tun: std::sync::Weak<AsyncDevice>, changed: watch::Sender<u16>) {
    loop {
        tokio::time::sleep(MTU_EVERY).await;
        let Some(mtu) = tun.upgrade().and_then(|tun| tun.mtu().ok()) else {
            return;
        };
        if changed.is_closed() {
            return;
        }
        changed.send_if_modified(|current| std::mem::replace(current, mtu) != mtu);
    }
}

/// What the device reads from: packets the kernel routed into the tunnel, split.
pub struct TunReader {
    tun: Arc<AsyncDevice>,
    /// One read of the device: a virtio-net header and a packet of up to 64 KiB.
    read: Vec<u8>,
    /// Buffers of the device's pool the read is split into, kept between reads.
    slots: Vec<Slot>,
    sizes: Vec<usize>,
    mtu: MtuWatcher,
}

impl std::fmt::Debug for TunReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunReader").finish_non_exhaustive()
    }
}

/// A buffer of the device's pool as `tun-rs` takes one.
struct Slot(Packet);

impl AsRef<[u8]> for Slot {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl AsMut<[u8]> for Slot {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

impl IpRecv for TunReader {
    async fn recv<'a>(
        &'a mut self,
        pool: &mut PacketBufPool,
    ) -> io::Result<impl Iterator<Item = Packet<Ip>> + Send + 'a> {
        self.slots
            .resize_with(IDEAL_BATCH_SIZE, || Slot(pool.get()));
        let n = loop {
            match self
                .tun
                .recv_multiple(&mut self.read, &mut self.slots, &mut self.sizes, 0)
                .await
            {
                Ok(n) => break n,
                // A read that could not be split (more segments than a read holds, on a
                // kernel that ignored `gso_max_segs`; a header that makes no sense) is
                // lost, as a NIC drops a frame it cannot take. Returned, it would end
                // the device (GotaTun takes an invalid-input error for a TUN device gone),
                // and with it every peer's traffic, for one sender's packet.
                Err(e) if e.raw_os_error().is_none() => {}
                Err(e) => return Err(e),
            }
        };
        let sizes = &self.sizes[..n];
        // Not IP (the kernel gives a TUN device nothing else): dropped, as GotaTun's own
        // reader dropped it.
        Ok(self
            .slots
            .drain(..n)
            .zip(sizes)
            .filter_map(|(Slot(mut packet), &size)| {
                packet.truncate(size);
                packet.try_into_ip().ok()
            }))
    }

    fn mtu(&self) -> MtuWatcher {
        self.mtu.clone()
    }
}

/// What the device writes decrypted packets to: a queue the writer empties in bursts.
#[derive(Debug, Clone)]
pub struct TunWriter {
    queue: mpsc::Sender<Packet<Ip>>,
}

impl IpSend for TunWriter {
    async fn send(&mut self, packet: Packet<Ip>) -> io::Result<()> {
        // The writer ends only when the interface is gone: the device ends with it.
        self.queue
            .send(packet)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the TUN interface is gone"))
    }
}

/// Writes what is queued, each burst coalesced, until the interface is gone.
async fn write(tun: Arc<AsyncDevice>, mut queued: mpsc::Receiver<Packet<Ip>>) {
    let mut packets = Vec::with_capacity(IDEAL_BATCH_SIZE);
    let mut bufs = Vec::with_capacity(IDEAL_BATCH_SIZE);
    let mut table = GROTable::default();
    while queued.recv_many(&mut packets, IDEAL_BATCH_SIZE).await > 0 {
        let n = stage(&mut bufs, packets.drain(..).map(Packet::into_bytes));
        // A packet the kernel refused (the link down, say) is lost, as on any link.
        if let Err(e) = tun
            .send_multiple(&mut table, &mut bufs[..n], HEADROOM)
            .await
            && gone(&e)
        {
            return;
        }
    }
}

/// Puts each packet of a burst into a buffer of its own after [`HEADROOM`] bytes, as
/// `tun-rs` coalesces them (each buffer with room for a coalesced 64 KiB packet; buffers
/// are kept between bursts); the number of packets.
pub fn stage<P: AsRef<[u8]>>(bufs: &mut Vec<Vec<u8>>, packets: impl Iterator<Item = P>) -> usize {
    let mut n = 0;
    for (i, packet) in packets.enumerate() {
        if bufs.len() == i {
            bufs.push(Vec::with_capacity(2 * HEADROOM + u16::MAX as usize));
        }
        let buf = &mut bufs[i];
        buf.clear();
        buf.resize(HEADROOM, 0);
        buf.extend_from_slice(packet.as_ref());
        n = i + 1;
    }
    n
}

/// Whether a TUN device's error means the interface is gone (deleted, or its descriptor
/// no longer valid), so the device must end and be made again.
fn gone(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error().map(Errno::from_raw),
        Some(Errno::EBADF | Errno::EBADFD | Errno::ENODEV)
    )
}

//! The userspace device's UDP socket, sending with the kernel's segmentation offload.
//!
//! GotaTun sends a burst of encrypted packets with one `sendmmsg`, but the kernel still
//! takes each datagram through its UDP and IP output on its own (a fifth of the devices'
//! CPU in the throughput rig). Consecutive packets of a burst to one peer, all of one
//! size but the last (a TCP stream's full segments, each encrypted to the same length),
//! go instead as one `sendmsg` with `UDP_SEGMENT`: one trip through the stack, split by
//! the NIC or at the last moment, and received by a peer that asked for UDP GRO (GotaTun
//! does) as one. A kernel or route that cannot (`EIO`: no checksum offload on the way
//! out) turns it off for the socket, and the burst goes as GotaTun sends it.

use std::io;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use gotatun::packet::Packet;
use gotatun::udp::socket::{UdpSocket, UdpSocketFactory};
use gotatun::udp::{UdpSend, UdpTransportFactory, UdpTransportFactoryParams};
use nix::errno::Errno;
use nix::sys::socket::{ControlMessage, MsgFlags, SockaddrStorage, sendmsg};
use tokio::io::Interest;

/// The most datagrams one `UDP_SEGMENT` send may carry (the kernel's `UDP_MAX_SEGMENTS`
/// before Linux 6.9, which raised it).
const MOST_SEGMENTS: usize = 64;

/// The most bytes of datagrams one send may carry: an IP packet's length less the UDP
/// header and the IPv6 header (the longer).
const MOST_BYTES: usize = u16::MAX as usize - 8 - 40;

/// GotaTun's sockets, sending with segmentation offload.
#[derive(Debug, Default)]
pub struct Sockets(UdpSocketFactory);

impl UdpTransportFactory for Sockets {
    type Send = Socket;
    type Recv = UdpSocket;

    async fn bind(
        &mut self,
        params: &UdpTransportFactoryParams,
    ) -> io::Result<(Self::Send, Self::Recv)> {
        let (send, receive) = self.0.bind(params).await?;
        let send = Socket {
            socket: send,
            segmenting: Arc::new(AtomicBool::new(true)),
        };
        Ok((send, receive))
    }
}

/// The sending half of a device's socket.
#[derive(Clone)]
pub struct Socket {
    socket: UdpSocket,
    /// Whether sends may still be segmented by the kernel (until it refuses one).
    segmenting: Arc<AtomicBool>,
}

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket")
            .field("segmenting", &self.segmenting)
            .finish_non_exhaustive()
    }
}

impl UdpSend for Socket {
    type SendManyBuf = <UdpSocket as UdpSend>::SendManyBuf;

    async fn send_to(&self, packet: Packet, destination: SocketAddr) -> io::Result<()> {
        self.socket.send_to(packet, destination).await
    }

    fn max_number_of_packets_to_send(&self) -> usize {
        self.socket.max_number_of_packets_to_send()
    }

    async fn send_many_to(
        &self,
        buf: &mut Self::SendManyBuf,
        packets: &mut Vec<(Packet, SocketAddr)>,
    ) -> io::Result<()> {
        if self.segmenting.load(Ordering::Relaxed) {
            let mut sent = 0;
            for run in runs(packets) {
                match self.send_run(&packets[run.clone()]).await {
                    Ok(()) => sent = run.end,
                    Err(e) if e.raw_os_error() == Some(Errno::EIO as i32) => {
                        self.segmenting.store(false, Ordering::Relaxed);
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            packets.drain(..sent);
            if packets.is_empty() {
                return Ok(());
            }
        }
        self.socket.send_many_to(buf, packets).await
    }

    fn local_addr(&self) -> io::Result<Option<SocketAddr>> {
        UdpSend::local_addr(&self.socket)
    }

    fn set_fwmark(&self, mark: u32) -> io::Result<()> {
        self.socket.set_fwmark(mark)
    }
}

impl Socket {
    /// Sends packets to one destination, all of the first one's size but the last, with
    /// one `sendmsg` (segmented by the kernel when there are more than one).
    async fn send_run(&self, run: &[(Packet, SocketAddr)]) -> io::Result<()> {
        let Some((first, destination)) = run.first() else {
            return Ok(());
        };
        let destination = SockaddrStorage::from(*destination);
        let slices: Vec<IoSlice<'_>> = run.iter().map(|(p, _)| IoSlice::new(p)).collect();
        let size = u16::try_from(first.len()).unwrap_or(u16::MAX);
        let segments = [ControlMessage::UdpGsoSegments(&size)];
        let control: &[ControlMessage<'_>] = if run.len() > 1 { &segments } else { &[] };
        let socket = self.socket.socket();
        socket
            .async_io(Interest::WRITABLE, || {
                sendmsg(
                    socket.as_raw_fd(),
                    &slices,
                    control,
                    MsgFlags::MSG_DONTWAIT,
                    Some(&destination),
                )
                .map_err(io::Error::from)
            })
            .await?;
        Ok(())
    }
}

/// Splits a burst into runs the kernel may send as one: consecutive packets to one
/// destination, each of the first one's size but the last (which may be shorter), at
/// most [`MOST_SEGMENTS`] of them and [`MOST_BYTES`] in all.
fn runs<P: AsRef<[u8]>>(packets: &[(P, SocketAddr)]) -> Vec<Range<usize>> {
    let mut runs: Vec<Range<usize>> = Vec::new();
    let mut bytes = 0;
    for (i, (packet, destination)) in packets.iter().enumerate() {
        let size = packet.as_ref().len();
        let joins = runs.last().is_some_and(|run| {
            let (first, to) = &packets[run.start];
            let (last, _) = &packets[run.end - 1];
            let first = first.as_ref().len();
            to == destination
                && last.as_ref().len() == first
                && size <= first
                && size > 0
                && run.len() < MOST_SEGMENTS
                && bytes + size <= MOST_BYTES
        });
        if joins {
            if let Some(run) = runs.last_mut() {
                run.end = i + 1;
            }
            bytes += size;
        } else {
            runs.push(i..i + 1);
            bytes = size;
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    fn burst(sizes_and_ports: &[(usize, u16)]) -> Vec<(Vec<u8>, SocketAddr)> {
        sizes_and_ports
            .iter()
            .map(|&(size, port)| (vec![0; size], to(port)))
            .collect()
    }

    #[test]
    fn a_stream_of_full_segments_ending_short_is_one_run() {
        let packets = burst(&[(1452, 1), (1452, 1), (1452, 1), (600, 1)]);
        assert_eq!(runs(&packets), vec![0..4]);
    }

    #[test]
    fn nothing_follows_a_shorter_packet_and_nothing_longer_joins() {
        let packets = burst(&[(1452, 1), (600, 1), (600, 1), (700, 1), (1452, 1)]);
        assert_eq!(runs(&packets), vec![0..2, 2..3, 3..4, 4..5]);
    }

    #[test]
    fn another_destination_starts_a_run() {
        let packets = burst(&[(1452, 1), (1452, 2), (1452, 2), (1452, 1)]);
        assert_eq!(runs(&packets), vec![0..1, 1..3, 3..4]);
    }

    #[test]
    fn a_run_stops_at_the_kernels_limits() {
        let packets = burst(&[(100, 1); 150]);
        assert_eq!(runs(&packets), vec![0..64, 64..128, 128..150]);
        // 45 packets of 1452 bytes fill 65,340 of the 65,487 one send may carry.
        let packets = burst(&[(1452, 1); 50]);
        assert_eq!(runs(&packets), vec![0..45, 45..50]);
    }

    #[test]
    fn an_empty_datagram_is_sent_alone() {
        let packets = burst(&[(32, 1), (0, 1), (0, 1)]);
        assert_eq!(runs(&packets), vec![0..1, 1..2, 2..3]);
        assert!(runs::<Vec<u8>>(&[]).is_empty());
    }
}

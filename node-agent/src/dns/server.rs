//! The agent's DNS service, the thin shell around [`Zones`]: a UDP and a TCP listener on
//! the gateway address of every member veth whose service has names, answering from the
//! zones of the state last applied and relaying every other name to the upstream
//! resolver.
//!
//! Guarantees:
//! * a listener hears one member: it is bound to the member's host veth (and to the
//!   gateway address, port 53), so the veth a query arrives on names the member; and it
//!   is transparent, the one kind of socket the nftables table lets a member's DNS reach
//!   (port 53 on the gateway, to a transparent socket; everything else is dropped), so no
//!   other socket of the node answers a member, also while the agent is down;
//! * the zones are replaced whole after each pass, so a name appears and disappears with
//!   the state that carries it; answers live [`TTL`](super::answer::TTL) seconds;
//! * a member cannot make the agent hold more than [`MAX_FORWARDS`] queries upstream at a
//!   time, nor more than [`MAX_TCP_CONNECTIONS`] TCP connections: beyond that it gets
//!   SERVFAIL or a closed connection, and the other members are served;
//! * a listener that cannot be opened is reported (the pass's problems) and tried again
//!   after the next pass; the others are unaffected.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use ipnet::IpNet;
use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage, bind, listen, setsockopt, socket,
    sockopt,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use wireway_proto::NodeState;

use super::answer::{Response, Zones, failure, rcode_label};
use crate::converge::{GATEWAY_V4, GATEWAY_V6};
use crate::metrics::Metrics;

/// The port members ask on.
pub const PORT: u16 = 53;
/// Queries the node holds upstream at once, all members together.
pub const MAX_FORWARDS: usize = 256;
/// TCP connections one member may hold open.
pub const MAX_TCP_CONNECTIONS: usize = 16;
/// How long the upstream resolver has to answer.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a TCP connection may sit idle, or take to send one message.
pub const TCP_IDLE: Duration = Duration::from_secs(10);

/// The upstream resolver: the first `nameserver` of a resolv.conf text.
pub fn first_nameserver(resolv_conf: &str) -> Option<SocketAddr> {
    resolv_conf.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next() == Some("nameserver"))
            .then(|| words.next()?.parse::<IpAddr>().ok())
            .flatten()
            .map(|ip| SocketAddr::new(ip, PORT))
    })
}

/// What every listener shares.
#[derive(Debug)]
struct Shared {
    zones: RwLock<Arc<Zones>>,
    upstream: Option<SocketAddr>,
    metrics: Metrics,
    forwards: Semaphore,
}

impl Shared {
    fn zones(&self) -> Arc<Zones> {
        self.zones
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The reply to `query` from `veth`, answered here or upstream; `None` sends nothing.
    async fn reply(&self, veth: &str, query: &[u8], udp: bool) -> Option<Vec<u8>> {
        let started = Instant::now();
        let transport = if udp { "udp" } else { "tcp" };
        self.metrics
            .dns_queries
            .get_or_create(&[("transport", transport)])
            .inc();
        let (bytes, answered_by) = match self.zones().respond(veth, query, udp) {
            Response::Reply { bytes, rcode } => {
                self.metrics
                    .dns_answers
                    .get_or_create(&[("rcode", rcode_label(rcode))])
                    .inc();
                (bytes, "agent")
            }
            Response::Forward => {
                let (reply, result) = self.forward(query, udp).await;
                self.metrics
                    .dns_forwards
                    .get_or_create(&[("result", result)])
                    .inc();
                match reply {
                    Some(bytes) => (bytes, "upstream"),
                    None => {
                        self.metrics
                            .dns_answers
                            .get_or_create(&[("rcode", "SERVFAIL")])
                            .inc();
                        (failure(query, ResponseCode::ServFail)?, "agent")
                    }
                }
            }
            Response::Drop => return None,
        };
        self.metrics
            .dns_duration
            .get_or_create(&[("answered_by", answered_by)])
            .observe(started.elapsed().as_secs_f64());
        Some(bytes)
    }

    /// Relays `query` to the upstream resolver (over UDP or TCP, as it came): its reply,
    /// and the result for the metrics.
    async fn forward(&self, query: &[u8], udp: bool) -> (Option<Vec<u8>>, &'static str) {
        let Some(upstream) = self.upstream else {
            return (None, "no_upstream");
        };
        let Ok(_permit) = self.forwards.try_acquire() else {
            return (None, "overloaded");
        };
        let exchange = async {
            if udp {
                exchange_udp(upstream, query).await
            } else {
                exchange_tcp(upstream, query).await
            }
        };
        match timeout(FORWARD_TIMEOUT, exchange).await {
            Ok(Ok(reply)) => (Some(reply), "answered"),
            Ok(Err(_)) | Err(_) => (None, "failed"),
        }
    }
}

/// One query to `upstream` over UDP, from a socket of its own: its reply (the first
/// datagram from `upstream` with the query's id).
async fn exchange_udp(upstream: SocketAddr, query: &[u8]) -> io::Result<Vec<u8>> {
    let any: IpAddr = match upstream {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = UdpSocket::bind(SocketAddr::new(any, 0)).await?;
    socket.connect(upstream).await?;
    socket.send(query).await?;
    let mut buffer = vec![0; 65535];
    loop {
        let n = socket.recv(&mut buffer).await?;
        if n >= 2 && query.len() >= 2 && buffer[..2] == query[..2] {
            buffer.truncate(n);
            return Ok(buffer);
        }
    }
}

/// One query to `upstream` over TCP: its reply.
async fn exchange_tcp(upstream: SocketAddr, query: &[u8]) -> io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(upstream).await?;
    write_message(&mut stream, query).await?;
    read_message(&mut stream).await
}

/// Writes one DNS message with TCP's two-byte length.
async fn write_message(stream: &mut TcpStream, message: &[u8]) -> io::Result<()> {
    let length = u16::try_from(message.len()).map_err(|_| io::ErrorKind::InvalidData)?;
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&length.to_be_bytes());
    framed.extend_from_slice(message);
    stream.write_all(&framed).await
}

/// Reads one DNS message with TCP's two-byte length.
async fn read_message(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let length = stream.read_u16().await?;
    let mut message = vec![0; usize::from(length)];
    stream.read_exact(&mut message).await?;
    Ok(message)
}

/// The listeners of one member veth; dropping it stops them.
#[derive(Debug)]
struct Listener {
    /// The veth's index when they were opened: a veth made anew gets new listeners.
    index: u32,
    ipv4: bool,
    tasks: [JoinHandle<()>; 2],
}

impl Drop for Listener {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The agent's DNS service.
#[derive(Debug)]
pub struct Server {
    shared: Arc<Shared>,
    listeners: Mutex<BTreeMap<String, Listener>>,
}

impl Server {
    /// A service relaying other names to `upstream` (SERVFAIL for them without one).
    pub fn new(upstream: Option<SocketAddr>, metrics: Metrics) -> Self {
        Self {
            shared: Arc::new(Shared {
                zones: RwLock::default(),
                upstream,
                metrics,
                forwards: Semaphore::new(MAX_FORWARDS),
            }),
            listeners: Mutex::default(),
        }
    }

    /// Follows the state just applied: answers from its names from now on, listens on
    /// every member veth of a service with names, and stops listening on the others.
    /// Returns what could not be opened, for the pass's problems.
    pub fn follow(&self, state: &NodeState) -> Vec<String> {
        // Built outside the lock: queries are answered from the zones before meanwhile.
        let previous = Arc::clone(
            &self
                .shared
                .zones
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let zones = Arc::new(Zones::after(state, &previous));
        *self
            .shared
            .zones
            .write()
            .unwrap_or_else(PoisonError::into_inner) = zones;
        let wanted: BTreeMap<&str, bool> = state
            .services
            .iter()
            .filter(|s| s.dns.is_some())
            .flat_map(|s| {
                let ipv4 = matches!(s.cidr.parse::<IpNet>(), Ok(IpNet::V4(_)));
                s.members
                    .iter()
                    .map(move |m| (m.host_interface_name.as_str(), ipv4))
            })
            .collect();
        let mut listeners = self
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        listeners.retain(|veth, _| wanted.contains_key(veth.as_str()));
        let mut problems = Vec::new();
        for (veth, ipv4) in wanted {
            // A veth the pass could not make is reported by the pass.
            let Ok(index) = nix::net::if_::if_nametoindex(veth) else {
                listeners.remove(veth);
                continue;
            };
            if listeners
                .get(veth)
                .is_some_and(|l| l.index == index && l.ipv4 == ipv4)
            {
                continue;
            }
            listeners.remove(veth);
            match self.listen(veth, index, ipv4) {
                Ok(listener) => {
                    listeners.insert(veth.to_owned(), listener);
                }
                Err(e) => problems.push(format!(
                    "DNS: cannot listen on the gateway of {veth}: {e}; its member's names are not answered"
                )),
            }
        }
        problems
    }

    /// Opens the UDP and TCP listeners of `veth` (index `index`).
    fn listen(&self, veth: &str, index: u32, ipv4: bool) -> io::Result<Listener> {
        let udp = UdpSocket::from_std(bound(veth, index, ipv4, SockType::Datagram)?.into())?;
        let tcp = TcpListener::from_std(bound(veth, index, ipv4, SockType::Stream)?.into())?;
        let udp = tokio::spawn(serve_udp(udp, veth.to_owned(), self.shared.clone()));
        let tcp = tokio::spawn(serve_tcp(tcp, veth.to_owned(), self.shared.clone()));
        Ok(Listener {
            index,
            ipv4,
            tasks: [udp, tcp],
        })
    }
}

/// A socket of `kind` on the gateway address, port 53, bound to `veth` (index `index`):
/// listening, for a stream.
fn bound(veth: &str, index: u32, ipv4: bool, kind: SockType) -> io::Result<OwnedFd> {
    let (family, address) = if ipv4 {
        let address = SocketAddrV4::new(GATEWAY_V4, PORT);
        (AddressFamily::Inet, SockaddrStorage::from(address))
    } else {
        let address = SocketAddrV6::new(GATEWAY_V6, PORT, 0, index);
        (AddressFamily::Inet6, SockaddrStorage::from(address))
    };
    let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
    let fd = socket(family, kind, flags, None)?;
    setsockopt(&fd, sockopt::BindToDevice, &OsString::from(veth))?;
    // Transparent: nobody holds the IPv4 gateway (the DNS table's local route delivers
    // to it), and binding it and answering from it take a transparent socket (freebind
    // binds, but replies from an address no link holds would find no route). And the
    // nftables table lets members' DNS through only to a transparent socket, which other
    // processes of the node (a resolver on 0.0.0.0:53) are not.
    setsockopt(&fd, sockopt::IpTransparent, &true)?;
    if kind == SockType::Stream {
        setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    }
    bind(fd.as_raw_fd(), &address)?;
    if kind == SockType::Stream {
        listen(&fd, Backlog::new(64)?)?;
    }
    Ok(fd)
}

/// Answers the UDP queries that arrive on `veth`.
async fn serve_udp(socket: UdpSocket, veth: String, shared: Arc<Shared>) {
    let socket = Arc::new(socket);
    let mut buffer = vec![0; 65535];
    loop {
        let (n, from) = match socket.recv_from(&mut buffer).await {
            Ok(received) => received,
            Err(e) => {
                tracing::debug!(veth, error = %e, "DNS: receive failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let query = buffer[..n].to_vec();
        let (socket, veth, shared) = (socket.clone(), veth.clone(), shared.clone());
        tokio::spawn(async move {
            if let Some(reply) = shared.reply(&veth, &query, true).await {
                let _ = socket.send_to(&reply, from).await;
            }
        });
    }
}

/// Answers the TCP connections made on `veth`, at most [`MAX_TCP_CONNECTIONS`] at once.
async fn serve_tcp(listener: TcpListener, veth: String, shared: Arc<Shared>) {
    let connections = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::debug!(veth, error = %e, "DNS: accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            continue;
        };
        let (veth, shared) = (veth.clone(), shared.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let _ = connection(stream, &veth, &shared).await;
        });
    }
}

/// Answers the queries of one TCP connection, one at a time, until it goes quiet.
async fn connection(mut stream: TcpStream, veth: &str, shared: &Shared) -> io::Result<()> {
    loop {
        let Ok(query) = timeout(TCP_IDLE, read_message(&mut stream)).await else {
            return Ok(());
        };
        let Some(reply) = shared.reply(veth, &query?, false).await else {
            return Ok(());
        };
        write_message(&mut stream, &reply).await?;
    }
}

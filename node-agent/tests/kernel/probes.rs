//! One-way UDP probes, not pings: a datagram that reaches a socket is counted even when
//! nothing could answer it (a ping's reply may have no way back, a datagram needs none).
//! Sockets are made in a namespace by a thread that enters it, and then used from anywhere.

use std::fs::File;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket};
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use nix::sched::{CloneFlags, setns};
use nix::sys::socket::{setsockopt, sockopt};

/// The port every probe goes to and every listener listens on.
pub const PORT: u16 = 40404;

/// Runs `f` on a thread that has entered the network namespace `ns` (`ip netns` name).
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = File::open(format!("/run/netns/{ns}")).unwrap();
    std::thread::spawn(move || {
        setns(&file, CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// Listeners on [`PORT`] in namespaces, both families, bound to the wildcard addresses.
pub struct Listeners {
    sockets: Vec<(String, UdpSocket)>,
}

impl Listeners {
    /// One IPv4 and one IPv6 listener in each of `namespaces`, checked to hear what their
    /// own namespace sends them over loopback (a listener that hears nothing proves
    /// nothing).
    pub fn new(namespaces: &[String]) -> Self {
        Self::on(namespaces, PORT)
    }

    /// As [`Listeners::new`], on `port`.
    pub fn on(namespaces: &[String], port: u16) -> Self {
        let mut sockets = Vec::new();
        for ns in namespaces {
            let pair = in_netns(ns, move || {
                let v4 = UdpSocket::bind(("0.0.0.0", port)).unwrap();
                let v6 = v6_only_listener(port);
                for s in [&v4, &v6] {
                    s.set_nonblocking(true).unwrap();
                }
                let probe = UdpSocket::bind(("127.0.0.1", 0)).unwrap();
                probe.send_to(b"loopback", ("127.0.0.1", port)).unwrap();
                let probe = UdpSocket::bind(("::1", 0)).unwrap();
                probe.send_to(b"loopback", ("::1", port)).unwrap();
                (v4, v6)
            });
            sockets.push((format!("{ns} (IPv4)"), pair.0));
            sockets.push((format!("{ns} (IPv6)"), pair.1));
        }
        let listeners = Self { sockets };
        let heard = listeners.received();
        assert_eq!(
            heard.len(),
            listeners.sockets.len(),
            "every listener hears its own loopback: {heard:#?}"
        );
        listeners
    }

    /// What arrived since the last call: (listener, sender, payload), after a moment for
    /// datagrams in flight.
    pub fn received(&self) -> Vec<String> {
        std::thread::sleep(Duration::from_millis(700));
        let mut heard = Vec::new();
        let mut buffer = [0u8; 512];
        for (name, socket) in &self.sockets {
            while let Ok((n, from)) = socket.recv_from(&mut buffer) {
                heard.push(format!(
                    "{name} heard {from}: {}",
                    String::from_utf8_lossy(&buffer[..n])
                ));
            }
        }
        heard
    }
}

/// An IPv6-only socket on `[::]:port` (`IPV6_V6ONLY` must be set before `bind`, which
/// std does not offer), beside the IPv4 one.
fn v6_only_listener(port: u16) -> UdpSocket {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn6, bind, socket};
    let fd = socket(
        AddressFamily::Inet6,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    setsockopt(&fd, sockopt::Ipv6V6Only, &true).unwrap();
    let any = SockaddrIn6::from(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0));
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &any).unwrap();
    UdpSocket::from(fd)
}

/// Sends one datagram from the namespace `ns` out of its interface `dev` to each target
/// (from `source` when given, else from whatever the kernel picks), naming itself in the
/// payload. A datagram the kernel will not send counts as not delivered: what matters is
/// what arrives.
pub fn send(ns: &str, dev: &str, source: Option<IpAddr>, targets: &[IpAddr]) -> Vec<String> {
    send_to_port(ns, dev, source, targets, PORT)
}

/// As [`send`], to `port`.
pub fn send_to_port(
    ns: &str,
    dev: &str,
    source: Option<IpAddr>,
    targets: &[IpAddr],
    port: u16,
) -> Vec<String> {
    let (ns_name, dev) = (ns.to_owned(), dev.to_owned());
    let targets = targets.to_vec();
    in_netns(ns, move || {
        let index = nix::net::if_::if_nametoindex(dev.as_str()).unwrap_or(0);
        let mut refused = Vec::new();
        for target in targets {
            let local: SocketAddr = match (source, target) {
                (Some(s), _) => SocketAddr::new(s, 0),
                (None, IpAddr::V4(_)) => "0.0.0.0:0".parse().unwrap(),
                (None, IpAddr::V6(_)) => "[::]:0".parse().unwrap(),
            };
            let to = match target {
                IpAddr::V6(v6) if is_link_scope(&v6) => {
                    SocketAddr::V6(SocketAddrV6::new(v6, port, 0, index))
                }
                other => SocketAddr::new(other, port),
            };
            let sent = UdpSocket::bind(local).and_then(|socket| {
                setsockopt(
                    &socket,
                    sockopt::BindToDevice,
                    &std::ffi::OsStr::from_bytes(dev.as_bytes()).to_owned(),
                )?;
                socket.set_broadcast(true)?;
                let payload = format!("from {ns_name} via {dev} ({local}) to {to}");
                socket.send_to(payload.as_bytes(), to)
            });
            if let Err(e) = sent {
                refused.push(format!("{to}: {e}"));
            }
        }
        refused
    })
}

/// Link-local and link-scope multicast addresses need the interface named.
fn is_link_scope(address: &Ipv6Addr) -> bool {
    let first = address.segments()[0];
    first & 0xffc0 == 0xfe80 || first & 0xff0f == 0xff02
}

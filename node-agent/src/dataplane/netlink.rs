//! A thin layer over rtnetlink: read links, addresses, routes and rules back from the
//! kernel, and write them, counting every write.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_core::{NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use rtnetlink::packet_route::link::{
    AfSpecInet6, AfSpecUnspec, InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::nsid::{NsidAttribute, NsidMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage, RulePortRange};
use rtnetlink::packet_route::{AddressFamily, IpProtocol, RouteNetlinkMessage};
use rtnetlink::{Handle, IpVersion, LinkUnspec, LinkVeth, LinkWireguard, RouteMessageBuilder};

/// Why a netlink call failed.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The kernel refused a request.
    #[error("netlink request failed")]
    Request(#[from] rtnetlink::Error),
    /// The socket could not be opened, or a namespace entered.
    #[error("failed to open a netlink socket")]
    Io(#[from] std::io::Error),
    /// A route could not be expressed (a family mismatch).
    #[error("invalid route: {0}")]
    Route(String),
}

/// A link as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// MTU.
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
    /// For a veth, the index of its peer (in the peer's namespace).
    pub peer_index: Option<u32>,
    /// For a veth whose peer is in another namespace: that namespace's id as this
    /// namespace knows it (`IFLA_LINK_NETNSID`).
    pub peer_netnsid: Option<i32>,
    /// Whether IPv6 is enabled on it (`disable_ipv6` is 0).
    pub ipv6: bool,
    /// The link kind (`veth`, `wireguard`, `tun`, ...), if it has one.
    pub kind: Option<String>,
}

/// A route as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRoute {
    /// Table.
    pub table: u32,
    /// Destination.
    pub destination: IpNet,
    /// Output interface index.
    pub oif: Option<u32>,
    /// Gateway.
    pub gateway: Option<IpAddr>,
    /// Whether it is a `local` route (delivers to the node).
    pub local: bool,
}

/// A policy rule as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRule {
    /// IPv4 or IPv6.
    pub ipv4: bool,
    /// Priority.
    pub priority: u32,
    /// Input interface name.
    pub iif: Option<String>,
    /// Table looked up (for `lookup` rules).
    pub table: u32,
    /// Whether it is an `unreachable` rule.
    pub unreachable: bool,
    /// The protocol and destination port it matches, if it matches one port.
    pub port: Option<(IpProtocol, u16)>,
}

/// A policy rule the agent writes: `iif <iif> [ipproto <p> dport <port>] lookup <table>`
/// (`table` given) or `iif <iif> unreachable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleSpec<'a> {
    /// IPv4 or IPv6.
    pub ipv4: bool,
    /// Priority.
    pub priority: u32,
    /// Input interface name.
    pub iif: &'a str,
    /// The table to look up; `None` for `unreachable`.
    pub table: Option<u32>,
    /// The protocol and destination port it matches, if any.
    pub port: Option<(IpProtocol, u16)>,
}

/// A netlink connection in one network namespace.
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: Handle,
    writes: Arc<AtomicU64>,
}

impl Netlink {
    /// Connects in the calling thread's network namespace. Needs a Tokio runtime.
    pub fn connect() -> Result<Self, NetlinkError> {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        Ok(Self {
            handle,
            writes: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Connects in the network namespace open as `netns`, sharing this connection's
    /// write counter. The socket is opened by a short-lived thread that enters the
    /// namespace, so no thread of the runtime ever leaves its own.
    pub async fn connect_in(&self, netns: &OwnedFd) -> Result<Self, NetlinkError> {
        let runtime = tokio::runtime::Handle::current();
        let handle = on_thread_in(netns, move || {
            let _enter = runtime.enter();
            let (connection, handle, _) = rtnetlink::new_connection()?;
            runtime.spawn(connection);
            Ok(handle)
        })
        .await?;
        Ok(Self {
            handle,
            writes: Arc::clone(&self.writes),
        })
    }

    /// The id this namespace gives the namespace open as `netns` (what a veth whose peer
    /// is there reports as [`Link::peer_netnsid`]); `None` when it has given it none.
    pub async fn nsid_of(&self, netns: &OwnedFd) -> Result<Option<i32>, NetlinkError> {
        let fd = u32::try_from(netns.as_raw_fd())
            .map_err(|_| std::io::Error::other("a negative file descriptor"))?;
        let mut message = NsidMessage::default();
        message.header.family = AddressFamily::Unspec;
        message.attributes.push(NsidAttribute::Fd(fd));
        let mut request = NetlinkMessage::from(RouteNetlinkMessage::GetNsId(message));
        request.header.flags = NLM_F_REQUEST;
        let mut handle = self.handle.clone();
        let mut replies = handle.request(request)?;
        while let Some(reply) = futures_util::StreamExt::next(&mut replies).await {
            match reply.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(m)) => {
                    let id = m.attributes.iter().find_map(|a| match a {
                        NsidAttribute::Id(id) => Some(*id),
                        _ => None,
                    });
                    // -1: none assigned.
                    return Ok(id.filter(|id| *id >= 0));
                }
                NetlinkPayload::Error(e) => {
                    return Err(rtnetlink::Error::NetlinkError(e).into());
                }
                _ => {}
            }
        }
        Ok(None)
    }

    /// Writes made so far (by this connection and those made from it).
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    fn count(&self) {
        self.writes.fetch_add(1, Ordering::Relaxed);
    }

    /// Every link.
    pub async fn links(&self) -> Result<Vec<Link>, NetlinkError> {
        let messages: Vec<LinkMessage> = self.handle.link().get().execute().try_collect().await?;
        Ok(messages.iter().map(link_of).collect())
    }

    /// One link, by name; `None` if there is none.
    pub async fn link(&self, name: &str) -> Result<Option<Link>, NetlinkError> {
        let found: Result<Vec<LinkMessage>, _> = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute()
            .try_collect()
            .await;
        match found {
            Ok(messages) => Ok(messages.first().map(link_of)),
            // The kernel answers "no such device" for a name it does not have.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -19 => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// One link, by index; `None` if there is none.
    pub async fn link_at(&self, index: u32) -> Result<Option<Link>, NetlinkError> {
        let found: Result<Vec<LinkMessage>, _> = self
            .handle
            .link()
            .get()
            .match_index(index)
            .execute()
            .try_collect()
            .await;
        match found {
            Ok(messages) => Ok(messages.first().map(link_of)),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -19 => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Addresses of one link.
    pub async fn addresses(&self, index: u32) -> Result<BTreeSet<IpNet>, NetlinkError> {
        let messages: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await?;
        Ok(messages
            .iter()
            .filter(|m| m.header.index == index)
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => IpNet::new(*ip, m.header.prefix_len).ok(),
                    _ => None,
                })
            })
            .collect())
    }

    /// Routes of both families in every table.
    pub async fn routes(&self) -> Result<Vec<KernelRoute>, NetlinkError> {
        let mut routes = Vec::new();
        for ipv4 in [true, false] {
            let mut query = if ipv4 {
                RouteMessageBuilder::<std::net::Ipv4Addr>::new().build()
            } else {
                RouteMessageBuilder::<std::net::Ipv6Addr>::new().build()
            };
            // Table 0 in the header and no table attribute: every table.
            query.header.table = 0;
            let messages: Vec<RouteMessage> = self
                .handle
                .route()
                .get(query)
                .execute()
                .try_collect()
                .await?;
            routes.extend(messages.iter().filter_map(|m| route_of(m, ipv4)));
        }
        Ok(routes)
    }

    /// Policy rules of both families.
    pub async fn rules(&self) -> Result<Vec<KernelRule>, NetlinkError> {
        let mut rules = Vec::new();
        for version in [IpVersion::V4, IpVersion::V6] {
            let messages: Vec<RuleMessage> = self
                .handle
                .rule()
                .get(version)
                .execute()
                .try_collect()
                .await?;
            rules.extend(messages.iter().map(rule_of));
        }
        Ok(rules)
    }

    /// Creates a veth pair.
    pub async fn create_veth(&self, name: &str, peer: &str) -> Result<(), NetlinkError> {
        self.count();
        self.handle
            .link()
            .add(LinkVeth::new(name, peer).build())
            .execute()
            .await?;
        Ok(())
    }

    /// Creates a kernel WireGuard interface.
    pub async fn create_wireguard(&self, name: &str) -> Result<(), NetlinkError> {
        self.count();
        self.handle
            .link()
            .add(LinkWireguard::new(name).build())
            .execute()
            .await?;
        Ok(())
    }

    /// Moves a link into the network namespace open as `netns`.
    pub async fn move_to(&self, index: u32, netns: &OwnedFd) -> Result<(), NetlinkError> {
        self.count();
        let message = LinkUnspec::new_with_index(index)
            .setns_by_fd(netns.as_raw_fd())
            .build();
        self.handle.link().set(message).execute().await?;
        Ok(())
    }

    /// Sets a link's name (if given), MTU and state.
    pub async fn set_link(
        &self,
        index: u32,
        name: Option<&str>,
        mtu: u32,
        up: bool,
    ) -> Result<(), NetlinkError> {
        self.count();
        let mut builder = LinkUnspec::new_with_index(index).mtu(mtu);
        if let Some(name) = name {
            builder = builder.name(name);
        }
        builder = if up { builder.up() } else { builder.down() };
        self.handle.link().set(builder.build()).execute().await?;
        Ok(())
    }

    /// Caps the segments of one offloaded packet the kernel hands link `index`
    /// (`gso_max_segs`; larger ones it splits itself before).
    pub async fn limit_gso_segments(&self, index: u32, segments: u32) -> Result<(), NetlinkError> {
        self.count();
        let mut message = LinkUnspec::new_with_index(index).build();
        message.attributes.push(LinkAttribute::GsoMaxSegs(segments));
        self.handle.link().set(message).execute().await?;
        Ok(())
    }

    /// Deletes a link.
    pub async fn delete_link(&self, index: u32) -> Result<(), NetlinkError> {
        self.count();
        self.handle.link().del(index).execute().await?;
        Ok(())
    }

    /// Adds an address.
    ///
    /// IPv6 addresses skip duplicate address detection (`nodad`): they are usable as soon
    /// as they are added, so an applied state passes packets at once. The planner hands
    /// each address out once, and the gateway `fe80::77:1` is alone on its link.
    pub async fn add_address(&self, index: u32, net: IpNet) -> Result<(), NetlinkError> {
        self.count();
        let mut request = self
            .handle
            .address()
            .add(index, net.addr(), net.prefix_len());
        if net.addr().is_ipv6() {
            let message = request.message_mut();
            message.header.flags = AddressHeaderFlags::Nodad;
            message
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        request.execute().await?;
        Ok(())
    }

    /// Removes an address.
    pub async fn remove_address(&self, index: u32, net: IpNet) -> Result<(), NetlinkError> {
        let messages: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .set_address_filter(net.addr())
            .execute()
            .try_collect()
            .await?;
        for message in messages {
            self.count();
            self.handle.address().del(message).execute().await?;
        }
        Ok(())
    }

    fn route_message(
        table: u32,
        destination: IpNet,
        oif: u32,
        gateway: Option<IpAddr>,
        local: bool,
    ) -> Result<RouteMessage, NetlinkError> {
        let mut builder = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(destination.addr(), destination.prefix_len())
            .map_err(|e| NetlinkError::Route(e.to_string()))?
            .output_interface(oif)
            .table_id(table);
        if local {
            builder = builder.kind(RouteType::Local).scope(RouteScope::Host);
        }
        if let Some(gateway) = gateway {
            builder = builder
                .gateway(gateway)
                .map_err(|e| NetlinkError::Route(e.to_string()))?;
            if gateway.is_ipv4() {
                // The IPv4 gateway is in no subnet of the link: it is on-link by fiat.
                builder = builder.onlink();
            }
        }
        Ok(builder.build())
    }

    /// Adds a route; a `local` one delivers what it routes to the node.
    pub async fn add_route(
        &self,
        table: u32,
        destination: IpNet,
        oif: u32,
        gateway: Option<IpAddr>,
        local: bool,
    ) -> Result<(), NetlinkError> {
        self.count();
        let message = Self::route_message(table, destination, oif, gateway, local)?;
        self.handle.route().add(message).execute().await?;
        Ok(())
    }

    /// Removes a route.
    pub async fn remove_route(
        &self,
        table: u32,
        destination: IpNet,
        oif: u32,
        gateway: Option<IpAddr>,
    ) -> Result<(), NetlinkError> {
        self.count();
        let mut message = Self::route_message(table, destination, oif, gateway, false)?;
        // Whoever added it (`ip route` says `proto boot`), in whatever scope and of
        // whatever type (a `local` route too): the kernel matches a deletion on these
        // only when they are given.
        message.header.protocol = RouteProtocol::Unspec;
        message.header.scope = RouteScope::NoWhere;
        message.header.kind = RouteType::Unspec;
        self.handle.route().del(message).execute().await?;
        Ok(())
    }

    /// Adds a rule.
    pub async fn add_rule(&self, rule: RuleSpec<'_>) -> Result<(), NetlinkError> {
        let RuleSpec {
            ipv4,
            priority,
            iif,
            table,
            port,
        } = rule;
        self.count();
        let mut request = self
            .handle
            .rule()
            .add()
            .priority(priority)
            .input_interface(iif);
        request = match table {
            Some(table) => request.table_id(table).action(RuleAction::ToTable),
            None => request.action(RuleAction::Unreachable),
        };
        if let Some((protocol, port)) = port {
            let attributes = &mut request.message_mut().attributes;
            attributes.push(RuleAttribute::IpProtocol(protocol));
            attributes.push(RuleAttribute::DestinationPortRange(RulePortRange {
                start: port,
                end: port,
            }));
        }
        if ipv4 {
            request.v4().execute().await?;
        } else {
            request.v6().execute().await?;
        }
        Ok(())
    }

    /// Removes a rule.
    pub async fn remove_rule(&self, rule: RuleSpec<'_>) -> Result<(), NetlinkError> {
        let RuleSpec {
            ipv4,
            priority,
            iif,
            table,
            port,
        } = rule;
        let version = if ipv4 { IpVersion::V4 } else { IpVersion::V6 };
        let messages: Vec<RuleMessage> = self
            .handle
            .rule()
            .get(version)
            .execute()
            .try_collect()
            .await?;
        for message in messages {
            let found = rule_of(&message);
            let same = found.priority == priority
                && found.iif.as_deref() == Some(iif)
                && found.unreachable == table.is_none()
                && table.is_none_or(|t| found.table == t)
                && found.port == port;
            if same {
                self.count();
                self.handle.rule().del(message).execute().await?;
            }
        }
        Ok(())
    }
}

fn link_of(m: &LinkMessage) -> Link {
    let mut link = Link {
        index: m.header.index,
        name: String::new(),
        mtu: 0,
        up: m.header.flags.contains(LinkFlags::Up),
        peer_index: None,
        peer_netnsid: None,
        ipv6: false,
        kind: None,
    };
    for attribute in &m.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name.clone_from(name),
            LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
            LinkAttribute::Link(peer) => link.peer_index = Some(*peer),
            LinkAttribute::LinkNetNsId(id) => link.peer_netnsid = Some(*id),
            LinkAttribute::AfSpecUnspec(specs) => {
                link.ipv6 = specs.iter().any(|spec| match spec {
                    AfSpecUnspec::Inet6(inet6) => inet6
                        .iter()
                        .any(|a| matches!(a, AfSpecInet6::DevConf(c) if c.disable_ipv6 == 0)),
                    _ => false,
                });
            }
            LinkAttribute::LinkInfo(infos) => {
                link.kind = infos.iter().find_map(|i| match i {
                    LinkInfo::Kind(InfoKind::Veth) => Some("veth".to_owned()),
                    LinkInfo::Kind(InfoKind::Wireguard) => Some("wireguard".to_owned()),
                    LinkInfo::Kind(InfoKind::Tun) => Some("tun".to_owned()),
                    LinkInfo::Kind(other) => Some(format!("{other:?}").to_lowercase()),
                    _ => None,
                });
            }
            _ => {}
        }
    }
    link
}

fn route_of(m: &RouteMessage, ipv4: bool) -> Option<KernelRoute> {
    let mut table = u32::from(m.header.table);
    let mut destination = None;
    let mut oif = None;
    let mut gateway = None;
    for attribute in &m.attributes {
        match attribute {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(address) => destination = ip_of(address),
            RouteAttribute::Oif(index) => oif = Some(*index),
            RouteAttribute::Gateway(address) => gateway = ip_of(address),
            _ => {}
        }
    }
    let unspecified = if ipv4 {
        IpAddr::from([0, 0, 0, 0])
    } else {
        IpAddr::from([0u16; 8])
    };
    let destination = IpNet::new(
        destination.unwrap_or(unspecified),
        m.header.destination_prefix_length,
    )
    .ok()?;
    Some(KernelRoute {
        table,
        destination,
        oif,
        gateway,
        local: m.header.kind == RouteType::Local,
    })
}

fn ip_of(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

fn rule_of(m: &RuleMessage) -> KernelRule {
    let mut rule = KernelRule {
        ipv4: m.header.family == AddressFamily::Inet,
        priority: 0,
        iif: None,
        table: u32::from(m.header.table),
        unreachable: m.header.action == RuleAction::Unreachable,
        port: None,
    };
    let mut protocol = None;
    let mut ports = None;
    for attribute in &m.attributes {
        match attribute {
            RuleAttribute::Priority(p) => rule.priority = *p,
            RuleAttribute::Iifname(name) => rule.iif = Some(name.clone()),
            RuleAttribute::Table(t) => rule.table = *t,
            RuleAttribute::IpProtocol(p) => protocol = Some(*p),
            RuleAttribute::DestinationPortRange(r) => ports = Some((r.start, r.end)),
            _ => {}
        }
    }
    // One port of one protocol is what the agent writes. Anything else reads as raw IP
    // port 0, which the agent never writes: the rule is not its.
    rule.port = match (protocol, ports) {
        (Some(p), Some((start, end))) if start == end => Some((p, start)),
        (None, None) => None,
        _ => Some((IpProtocol::Raw, 0)),
    };
    rule
}

/// Runs `f` on a short-lived thread of its own that has entered the network namespace open
/// as `netns`, and returns what it returns: no thread of the caller ever leaves its
/// namespace. What `f` opens by path (`/proc/sys/net/...`) is that namespace's.
pub async fn on_thread_in<T: Send + 'static>(
    netns: &OwnedFd,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let netns = netns.try_clone()?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let result = nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(std::io::Error::from)
            .and_then(|()| f());
        let _ = tx.send(result);
    });
    rx.await
        .map_err(|_| std::io::Error::other("namespace thread died"))?
}

//! WireGuard, userspace backend: one GotaTun device per interface, each in a child
//! process of its own.
//!
//! Why GotaTun: it was measured against boringtun (which it forks) and wireguard-go in
//! one rig (`bench/throughput.sh`, `docs/benchmarks.md`); it is maintained, and its
//! library changes a peer it has in place (boringtun 0.7 panicked on that and stopped the
//! device; GotaTun's own UAPI `set` makes the peer anew, ending its session, so the
//! device process changes peers it has through the library instead).
//!
//! Why a child process: a device's teardown, its threads and its signals stay out of
//! the agent. The child outlives the agent on purpose, so an agent restart drops no
//! packet; the next agent finds it by its control socket and carries on. A device that
//! fails (its TUN or socket gone) ends its child, and the next pass makes it again.
//!
//! Why not a control socket in `/var/run/wireguard`: that directory is shared by every
//! network namespace of the machine, so two nodes of a lab (or a test) could not both
//! have `ww-red`. The child hands the device one end of a socket pair instead, and
//! serves the WireGuard UAPI text protocol on a socket in the agent's own state
//! directory, passing each request through.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use gotatun::device::DeviceBuilder;
use gotatun::device::uapi::UapiServer;
use gotatun::device::uapi::command::{Request, Response, Set, SetPeer, SetResponse, SetUnset};
use gotatun::device::{Device, DeviceTransports};
use gotatun::x25519::StaticSecret;
use ipnet::IpNet;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use tokio::sync::oneshot;

use super::{
    DeviceState, PeerChange, PeerStats, WireGuardError, endpoint_address, handshake_age, key_bytes,
};
use crate::converge::Peer;

/// The userspace backend: devices run as children of `program` (the agent binary, with
/// the `wireguard-userspace` subcommand), controlled through sockets in `socket_dir`.
#[derive(Debug, Clone)]
pub struct Userspace {
    /// The agent binary.
    pub program: PathBuf,
    /// Where control sockets live (the agent's state directory).
    pub socket_dir: PathBuf,
}

/// The least time between two starts of one device's process: one that failed at
/// once (its TUN name still held by one ending) is not retried in a busy loop.
const RESPAWN_AFTER: Duration = Duration::from_millis(20);

/// How long a device may take to answer a request, or between two lines of its answer:
/// one that takes longer is taken as not answering. A device answers a `set` once it has
/// made all of it, which takes time in proportion to its peers (a node's first 10,000
/// took 2 s in a release build, 6 s in a debug one on two busy cores; with a fixed 5 s
/// for the whole, the pass failed while the device carried on): so it makes a `set` in
/// parts, and writes a line after each ([`PROGRESS`]).
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

impl Userspace {
    fn socket(&self, interface: &str) -> PathBuf {
        self.socket_dir.join(format!("{interface}.sock"))
    }

    /// The interfaces whose device answers.
    pub fn interfaces(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.socket_dir) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|n| n.strip_suffix(".sock").map(str::to_owned))
            .filter(|n| self.request(n, "get=1\n\n").is_ok())
            .collect();
        names.sort();
        names
    }

    /// Starts a device named `interface` with `private_key` (base64), in the calling
    /// thread's network namespace, and waits until it answers.
    ///
    /// A device process may already live without answering yet: one started by an agent
    /// killed a moment ago, still making its TUN device. Each device process holds a lock
    /// on `<interface>.lock` for its whole life, so a new one is started only when none
    /// holds it, and the one that lives is waited for, never doubled (a second would find
    /// the TUN name taken, and the first would be left running with no one to find it).
    pub fn create(&self, interface: &str, private_key: &str) -> Result<(), WireGuardError> {
        let io = |source| WireGuardError::Io {
            interface: interface.to_owned(),
            source,
        };
        std::fs::create_dir_all(&self.socket_dir).map_err(io)?;
        let lock = lock_path(&self.socket(interface));
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut child: Option<Child> = None;
        let (mut attempts, mut ended) = (0, None);
        // A device answers within some milliseconds of its start: asked again soon, then
        // less often.
        let mut wait = Duration::from_millis(1);
        let mut spawned: Option<Instant> = None;
        loop {
            if self.request(interface, "get=1\n\n").is_ok() {
                return Ok(());
            }
            // Ours ended: it lost the lock to another device process (which is waited
            // for), or it failed.
            if let Some(status) = child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                (child, ended) = (None, Some(status));
            }
            let respawn = spawned.is_none_or(|at| at.elapsed() >= RESPAWN_AFTER);
            if child.is_none() && respawn && !device_process_lives(&lock).map_err(io)? {
                if let (3, Some(status)) = (attempts, ended) {
                    return Err(self.not_started(interface, &format!("its process {status}")));
                }
                child = Some(self.spawn(interface, private_key)?);
                (attempts, spawned) = (attempts + 1, Some(Instant::now()));
            }
            if Instant::now() > deadline {
                return Err(self.not_started(interface, "no answer within 10 s"));
            }
            std::thread::sleep(wait);
            wait = (wait * 2).min(Duration::from_millis(20));
        }
    }

    /// Starts a device process for `interface` and hands it the key.
    fn spawn(&self, interface: &str, private_key: &str) -> Result<Child, WireGuardError> {
        let io = |source| WireGuardError::Io {
            interface: interface.to_owned(),
            source,
        };
        // The device outlives the agent, so it must not hold the agent's output open (a
        // caller waiting for the agent's output would wait for the device too): it logs to
        // a file beside its socket.
        let log = std::fs::File::create(self.log(interface)).map_err(io)?;
        let key = hex(&key_bytes(private_key)?);
        let mut command = Command::new(&self.program);
        command
            .args(["wireguard-userspace", "--interface", interface, "--socket"])
            .arg(self.socket(interface))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log)
            // GotaTun's UAPI parser makes an error value for every line it reads, even one
            // it takes; with `RUST_BACKTRACE=1` in the agent's environment each took a
            // backtrace: 40% of the device's time for a node's first 10,000 peers. A
            // panic still prints one.
            .env("RUST_LIB_BACKTRACE", "0");
        // Its own process group: a Ctrl-C or SIGTERM to the agent's group leaves it be.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command.spawn().map_err(io)?;
        // The key goes on the child's stdin (never its arguments), and the child sets it
        // before its control socket exists: a device that answers always has its key, even
        // when the agent is killed right after starting it (a device without one would
        // take the next agent's peers and carry nothing).
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(format!("{key}\n").as_bytes()).map_err(io)?;
        }
        Ok(child)
    }

    fn log(&self, interface: &str) -> PathBuf {
        self.socket_dir.join(format!("{interface}.log"))
    }

    /// Why the device did not start: `what` happened, and the last line its process
    /// logged.
    fn not_started(&self, interface: &str, what: &str) -> WireGuardError {
        let logged = std::fs::read_to_string(self.log(interface)).unwrap_or_default();
        let last = logged.lines().rev().find(|l| !l.trim().is_empty());
        WireGuardError::Start {
            interface: interface.to_owned(),
            reason: match last {
                Some(line) => format!("{what}; it logged: {}", line.trim()),
                None => what.to_owned(),
            },
        }
    }

    /// Stops the device: the child exits and the kernel removes its TUN interface.
    pub fn delete(&self, interface: &str) -> Result<(), WireGuardError> {
        // The child ends on a request to quit; the kernel removes its TUN interface.
        let result = self.request(interface, "quit=1\n\n");
        let _ = std::fs::remove_file(self.socket(interface));
        match result {
            Ok(_) | Err(WireGuardError::Io { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The device's state; `None` if no device answers.
    pub fn get(&self, interface: &str) -> Option<DeviceState> {
        let response = self.request(interface, "get=1\n\n").ok()?;
        Some(parse_get(&response))
    }

    /// Sets the listen port.
    pub fn set_listen_port(&self, interface: &str, port: u16) -> Result<(), WireGuardError> {
        self.set(interface, &format!("listen_port={port}\n"))
    }

    /// Adds, updates and removes peers, all in one request: a node with a thousand peers
    /// is configured in one exchange, not a thousand (the device makes it in [`parts`]).
    /// `peer: None` removes the peer.
    pub fn configure_peers(
        &self,
        interface: &str,
        changes: &[PeerChange<'_>],
    ) -> Result<(), WireGuardError> {
        self.set(interface, &transaction(changes)?)
    }

    fn set(&self, interface: &str, body: &str) -> Result<(), WireGuardError> {
        let response = self.request(interface, &format!("set=1\n{body}\n"))?;
        match errno(&response) {
            0 => Ok(()),
            errno => Err(WireGuardError::Refused {
                interface: interface.to_owned(),
                errno,
            }),
        }
    }

    /// One UAPI exchange: the request (ending in an empty line), the response (likewise).
    fn request(&self, interface: &str, request: &str) -> Result<String, WireGuardError> {
        let io = |source| WireGuardError::Io {
            interface: interface.to_owned(),
            source,
        };
        let mut stream = UnixStream::connect(self.socket(interface)).map_err(io)?;
        // For each read: a device making a `set` in parts writes a line after each.
        stream.set_read_timeout(Some(ANSWER_WITHIN)).map_err(io)?;
        stream.write_all(request.as_bytes()).map_err(io)?;
        read_message(&mut BufReader::new(stream)).map_err(io)
    }
}

/// The body of a `set` that makes `changes`: each peer once (the device refuses a key
/// named twice). A peer it has is changed in place: its allowed IPs replaced (or added
/// to, when that is all the change asks), and its endpoint kept when it is wanted without one (it dials in from behind NAT, and the
/// device learned where from).
pub fn transaction(changes: &[PeerChange<'_>]) -> Result<String, WireGuardError> {
    let mut body = String::new();
    for change in changes {
        body.push_str(&format!(
            "public_key={}\n",
            hex(&key_bytes(change.public_key)?)
        ));
        let Some(peer) = change.peer else {
            body.push_str("remove=true\n");
            continue;
        };
        if change.replace_allowed_ips {
            body.push_str("replace_allowed_ips=true\n");
        }
        if let Some(endpoint) = &peer.endpoint {
            body.push_str(&format!("endpoint={}\n", endpoint_address(endpoint)?));
        }
        body.push_str(&format!(
            "persistent_keepalive_interval={}\n",
            peer.persistent_keepalive
        ));
        for ip in &peer.allowed_ips {
            body.push_str(&format!("allowed_ip={ip}\n"));
        }
    }
    Ok(body)
}

/// Reads lines up to and including an empty line.
fn read_message(reader: &mut impl BufRead) -> std::io::Result<String> {
    let mut message = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        message.push_str(&line);
        if line == "\n" {
            return Ok(message);
        }
    }
}

fn errno(response: &str) -> i32 {
    response
        .lines()
        .find_map(|l| l.strip_prefix("errno="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1)
}

/// The lock a device process holds for its life, beside its control socket.
fn lock_path(socket: &Path) -> PathBuf {
    socket.with_extension("lock")
}

/// Opens the lock file (never through a link planted at its path).
fn open_lock(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)
}

/// Takes `lock` if no one holds it: `Ok(None)` when a device process does (one lives for
/// that interface). The lock is held until the returned guard is dropped.
fn try_lock(lock: &Path) -> std::io::Result<Option<Flock<std::fs::File>>> {
    match Flock::lock(open_lock(lock)?, FlockArg::LockExclusiveNonblock) {
        Ok(guard) => Ok(Some(guard)),
        Err((_, Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, errno)) => Err(errno.into()),
    }
}

/// Whether a device process holds `lock` (one lives for that interface).
fn device_process_lives(lock: &Path) -> std::io::Result<bool> {
    Ok(try_lock(lock)?.is_none())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A key written as 64 hexadecimal digits, nothing else (`from_str_radix` alone would
/// also take a sign).
fn key_of_hex(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(key)
}

fn base64_of_hex(hex: &str) -> Option<String> {
    key_of_hex(hex).map(|key| BASE64.encode(key))
}

/// Parses a `get=1` response (what the device process answers: anything, to the parser).
pub fn parse_get(response: &str) -> DeviceState {
    let mut state = DeviceState::default();
    // The peer being read: its lines follow its `public_key` line, up to the next one.
    let mut current: Option<(String, Peer, PeerStats)> = None;
    let keep = |state: &mut DeviceState, peer: Option<(String, Peer, PeerStats)>| {
        if let Some((key, peer, stats)) = peer {
            state.peers.insert(key.clone(), peer);
            state.stats.insert(key, stats);
        }
    };
    for line in response.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if key == "public_key" {
            let next = base64_of_hex(value).map(|key| {
                let peer = Peer {
                    endpoint: None,
                    allowed_ips: BTreeSet::new(),
                    persistent_keepalive: 0,
                };
                (key, peer, PeerStats::default())
            });
            keep(&mut state, std::mem::replace(&mut current, next));
            continue;
        }
        let Some((_, p, s)) = current.as_mut() else {
            if key == "listen_port" {
                state.listen_port = value.parse().unwrap_or(0);
            }
            continue;
        };
        match key {
            "endpoint" => p.endpoint = Some(value.to_owned()),
            "allowed_ip" => {
                if let Ok(net) = value.parse::<IpNet>() {
                    p.allowed_ips.insert(net);
                }
            }
            "persistent_keepalive_interval" => p.persistent_keepalive = value.parse().unwrap_or(0),
            "last_handshake_time_sec" => {
                s.handshake_age = value.parse().ok().and_then(handshake_age);
            }
            "rx_bytes" => s.rx_bytes = value.parse().unwrap_or(0),
            "tx_bytes" => s.tx_bytes = value.parse().unwrap_or(0),
            _ => {}
        }
    }
    keep(&mut state, current);
    state
}

/// The child process: runs one GotaTun device with the private key (hex) read from the
/// first line of its stdin, and serves its control socket until asked to quit. The socket
/// is made only once the key is set. Never returns on success; a device that fails ends
/// the process (the agent's next pass makes it again).
pub fn run_device(interface: &str, socket: &Path) -> Result<(), WireGuardError> {
    let io = |source| WireGuardError::Io {
        interface: interface.to_owned(),
        source,
    };
    // Held until the process ends: while it is, no other device process starts for
    // this interface, and an agent waits for this one instead.
    let Some(_lock) = try_lock(&lock_path(socket)).map_err(io)? else {
        return Err(WireGuardError::Start {
            interface: interface.to_owned(),
            reason: "another device process serves it".to_owned(),
        });
    };
    let mut key = String::new();
    std::io::stdin().read_line(&mut key).map_err(io)?;
    // Nothing readable: the agent died before it could hand the key over, so no device.
    let key = key_of_hex(key.trim()).ok_or(WireGuardError::Key)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(device_threads())
        .thread_name("wireguard")
        .enable_all()
        .build()
        .map_err(io)?;
    // Requests go to the device in-process and its answer comes back whole: GotaTun's
    // own stream server writes an answer in many small pieces (a `get` of 100 peers
    // cost about 11 ms and a thousand wakeups of this thread, which slowed every node's
    // pass in a lab of a hundred devices on two cores).
    let (uapi, server) = UapiServer::new();
    let failed = |e: gotatun::device::Error| io(std::io::Error::other(e.to_string()));
    let mut device = {
        // The TUN device registers with the runtime's reactor as it is made.
        runtime.block_on(async {
            let (writer, reader) = super::tun::open(interface).await.map_err(io)?;
            DeviceBuilder::new()
                .with_udp(super::udp::Sockets::default())
                .with_ip_pair(writer, reader)
                .with_private_key(StaticSecret::from(key))
                .with_uapi(server)
                .build()
                .await
                .map_err(failed)
        })?
    };
    // The device is owned by one task: it changes peers in place when asked, and ends
    // the process when the device fails.
    let (in_place, mut asked) = tokio::sync::mpsc::channel::<(Set, oneshot::Sender<Set>)>(1);
    let name = interface.to_owned();
    runtime.spawn(async move {
        loop {
            tokio::select! {
                () = device.wait() => break,
                Some((set, answer)) = asked.recv() => {
                    match change_in_place(&mut device, set).await {
                        Ok(rest) => {
                            let _ = answer.send(rest);
                        }
                        Err(e) => {
                            eprintln!("error: the WireGuard device {name} failed a change: {e}");
                            break;
                        }
                    }
                }
            }
        }
        eprintln!("error: the WireGuard device {name} failed; it ends, to be made again");
        std::process::exit(1);
    });
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket).map_err(io)?;
    for connection in listener.incoming() {
        let Ok(connection) = connection else { continue };
        let mut client = BufReader::new(connection);
        let Ok(request) = read_message(&mut client) else {
            continue;
        };
        if request.starts_with("quit=1") {
            let _ = std::fs::remove_file(socket);
            std::process::exit(0);
        }
        let response = match request
            .strip_suffix('\n')
            .unwrap_or(&request)
            .parse::<Request>()
        {
            Ok(Request::Set(set)) => {
                let (mut part, more) = parts(set);
                let mut more = more.into_iter();
                let mut made = 0;
                loop {
                    made += part.peers.len();
                    let (answer, answered) = oneshot::channel();
                    // The task ends only with the process.
                    let _ = in_place.blocking_send((part, answer));
                    let rest = answered
                        .blocking_recv()
                        .map_err(|e| io(std::io::Error::other(e)))?;
                    let response = uapi
                        .send_sync(Request::Set(rest))
                        .map_err(|e| io(std::io::Error::other(e.to_string())))?;
                    let refused = !matches!(response, Response::Set(SetResponse { errno: 0, .. }));
                    match more.next() {
                        Some(next) if !refused => part = next,
                        _ => break format!("{response}\n"),
                    }
                    // The agent waits for the device as long as it makes progress, however
                    // long the whole takes; a client gone is told nothing more, and the
                    // device makes the rest all the same (see below).
                    let _ = client
                        .get_mut()
                        .write_all(format!("{PROGRESS}={made}\n").as_bytes());
                }
            }
            Ok(request) => {
                let response = uapi
                    .send_sync(request)
                    .map_err(|e| io(std::io::Error::other(e.to_string())))?;
                format!("{response}\n")
            }
            // Not a request the device knows: refused, as the kernel refuses it.
            Err(_) => format!("errno={}\n\n", Errno::EINVAL as i32),
        };
        // A client gone before its answer (an agent killed in the middle of a pass) is no
        // reason to stop the device: that would drop the tunnel's traffic until the next
        // agent made it again.
        let _ = client.get_mut().write_all(response.as_bytes());
    }
    Ok(())
}

/// Peers a `set` is made in at a time ([`parts`]). The device holds its lock while it
/// makes a part, and no packet crosses it meanwhile: a node's first 10,000 peers in one
/// part held it for about a second (a release build; each new peer costs the device two
/// Curve25519 multiplications, and each one changed in place or removed a walk over every
/// allowed IP it holds: some 12 ms at 200,000). A part of 16 new peers holds it a few
/// milliseconds.
const PART: usize = 16;

/// The line the device process writes after each part of a `set` but the last
/// (`progress=<peers made>`), before its answer: the agent waits as long as the device
/// makes progress ([`ANSWER_WITHIN`] between two lines), not for the whole `set` at
/// once.
const PROGRESS: &str = "progress";

/// `set` in parts of [`PART`] peers, in its order, the first with the device's own
/// settings: each part is made under the device's lock on its own, so packets cross the
/// device between parts. A `set` the device would refuse (a key named twice, an unknown
/// protocol version) or one that replaces every peer stays whole, for the device to
/// answer as it does. Returns the first part and the rest.
fn parts(mut set: Set) -> (Set, Vec<Set>) {
    let mut keys = BTreeSet::new();
    let whole = set.replace_peers
        || set.protocol_version.as_deref().is_some_and(|v| v != "1")
        || !set.peers.iter().all(|p| keys.insert(p.peer.public_key.0));
    if whole || set.peers.len() <= PART {
        return (set, Vec::new());
    }
    let mut peers = std::mem::take(&mut set.peers).into_iter().peekable();
    set.peers = peers.by_ref().take(PART).collect();
    let mut rest = Vec::new();
    while peers.peek().is_some() {
        let mut part = Set::default();
        part.peers = peers.by_ref().take(PART).collect();
        rest.push(part);
    }
    (set, rest)
}

/// The device's worker threads: half the cores this process may use, at least one. The
/// kernel's share of a tunnel's traffic (TCP, UDP, the TUN device, softirqs) is as large
/// as the device's own, and on two cores one worker moved more than two
/// (`docs/benchmarks.md`, "Userspace WireGuard throughput").
fn device_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// Makes the changes of `set` to peers the device has, in place, and gives back the rest
/// of it for the device's own `set`. GotaTun's `set` removes a peer it has and adds it
/// anew: the peer's session ends and packets wait for a new handshake (the kernel tests
/// lost a ping to each allowed-IP change). A `set` the device would refuse (a key named
/// twice, an unknown protocol version) or one that replaces every peer is given back
/// whole, for the device to answer as it does.
async fn change_in_place<T: DeviceTransports>(
    device: &mut Device<T>,
    mut set: Set,
) -> Result<Set, gotatun::device::Error> {
    let mut keys = BTreeSet::new();
    if set.replace_peers
        || set.protocol_version.as_deref().is_some_and(|v| v != "1")
        || !set.peers.iter().all(|p| keys.insert(p.peer.public_key.0))
    {
        return Ok(set);
    }
    let mut rest = Vec::new();
    for change in std::mem::take(&mut set.peers) {
        if change.remove || !modify(device, &change).await? {
            rest.push(change);
        }
    }
    set.peers = rest;
    Ok(set)
}

/// Changes the peer `change` names as it asks; `false` if the device has no such peer.
async fn modify<T: DeviceTransports>(
    device: &mut Device<T>,
    change: &SetPeer,
) -> Result<bool, gotatun::device::Error> {
    let wanted = &change.peer;
    let key = gotatun::x25519::PublicKey::from(wanted.public_key.0);
    device
        .modify_peer(&key, |peer| {
            if change.replace_allowed_ips {
                peer.clear_allowed_ips();
            }
            peer.add_allowed_ips(wanted.allowed_ip.iter().copied());
            if let Some(endpoint) = wanted.endpoint {
                peer.set_endpoint(Some(endpoint));
            }
            if let Some(seconds) = wanted.persistent_keepalive_interval {
                peer.set_keepalive(Some(seconds));
            }
            match &wanted.preshared_key {
                // All zero removes it, as in the protocol.
                Some(SetUnset::Set(key)) if key.0 != [0; 32] => peer.set_preshared_key(Some(key.0)),
                Some(_) => peer.set_preshared_key(None),
                None => {}
            }
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::super::{generate_key, public_key};
    use super::*;
    use crate::testing::test_key;

    fn wanted(endpoint: Option<&str>, allowed: &[&str]) -> Peer {
        Peer {
            endpoint: endpoint.map(Into::into),
            allowed_ips: allowed.iter().map(|a| a.parse().unwrap()).collect(),
            persistent_keepalive: 25,
        }
    }

    /// The peer sections of a `set` body: (key, its lines).
    fn sections(body: &str) -> Vec<(String, Vec<&str>)> {
        let mut out: Vec<(String, Vec<&str>)> = Vec::new();
        for line in body.lines() {
            match line.strip_prefix("public_key=") {
                Some(key) => out.push((key.to_owned(), Vec::new())),
                None => out.last_mut().unwrap().1.push(line),
            }
        }
        out
    }

    /// A transaction names each peer once (the device refuses a key named twice): a
    /// removal says so and nothing else; a change replaces the allowed IPs when it must
    /// (only adds them otherwise) and leaves out an endpoint it is not given (the device
    /// keeps the one it learned).
    #[test]
    fn each_peer_once_removals_say_remove_and_changes_replace_allowed_ips_when_they_must() {
        let (a, b, c) = (test_key(1), test_key(2), test_key(3));
        let with_endpoint = wanted(Some("192.0.2.1:52000"), &["10.100.1.0/24"]);
        let behind_nat = wanted(None, &["10.100.64.1/32", "10.100.64.2/32"]);
        let change = |public_key, peer, replace_allowed_ips| PeerChange {
            public_key,
            peer,
            replace_allowed_ips,
        };
        let changes = [
            change(&a, Some(&with_endpoint), true),
            change(&b, Some(&behind_nat), false),
            change(&c, None, false),
        ];
        let body = transaction(&changes).unwrap();
        let hex_of = |k: &str| hex(&key_bytes(k).unwrap());
        let sections = sections(&body);
        assert_eq!(
            sections.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
            [hex_of(&a), hex_of(&b), hex_of(&c)],
            "{body}"
        );
        assert_eq!(
            sections[0].1,
            [
                "replace_allowed_ips=true",
                "endpoint=192.0.2.1:52000",
                "persistent_keepalive_interval=25",
                "allowed_ip=10.100.1.0/24"
            ]
        );
        assert_eq!(
            sections[1].1,
            [
                "persistent_keepalive_interval=25",
                "allowed_ip=10.100.64.1/32",
                "allowed_ip=10.100.64.2/32"
            ]
        );
        assert_eq!(sections[2].1, ["remove=true"]);
    }

    /// A `set` as the device process takes it: `settings` then the peers of `changes`.
    fn set_of(settings: &str, changes: &[PeerChange<'_>]) -> Set {
        let request = format!("set=1\n{settings}{}", transaction(changes).unwrap());
        match request.parse::<Request>().unwrap() {
            Request::Set(set) => set,
            Request::Get(_) => unreachable!("a set"),
        }
    }

    /// A big `set` is made in parts of 16 peers, in its order, the device's own settings
    /// with the first; one the device must refuse, or one that replaces every peer, stays
    /// whole.
    #[test]
    fn a_set_is_made_in_parts_of_sixteen_peers_in_order_but_one_the_device_refuses_stays_whole() {
        let keys: Vec<String> = (0..40).map(test_key).collect();
        let peer = wanted(Some("192.0.2.1:51820"), &["10.100.1.0/24"]);
        let changes: Vec<PeerChange<'_>> = keys
            .iter()
            .map(|key| PeerChange {
                public_key: key,
                peer: Some(&peer),
                replace_allowed_ips: false,
            })
            .collect();
        let (first, rest) = parts(set_of("listen_port=51820\n", &changes));
        let made: Vec<Set> = std::iter::once(first).chain(rest).collect();
        let sizes: Vec<usize> = made.iter().map(|p| p.peers.len()).collect();
        assert_eq!(sizes, [16, 16, 8]);
        let ports: Vec<Option<u16>> = made.iter().map(|p| p.listen_port).collect();
        assert_eq!(ports, [Some(51820), None, None]);
        let order: Vec<[u8; 32]> = made
            .iter()
            .flat_map(|p| &p.peers)
            .map(|p| p.peer.public_key.0)
            .collect();
        let sent: Vec<[u8; 32]> = keys.iter().map(|k| key_bytes(k).unwrap()).collect();
        assert_eq!(order, sent);

        assert!(parts(set_of("", &changes[..16])).1.is_empty());
        let mut twice = changes.clone();
        twice.push(changes[0]);
        for (whole, peers) in [
            (set_of("", &twice), 41),
            (set_of("replace_peers=true\n", &changes), 40),
            (set_of("protocol_version=2\n", &changes), 40),
        ] {
            let (first, rest) = parts(whole);
            assert!(rest.is_empty());
            assert_eq!(first.peers.len(), peers);
        }
    }

    /// Found by the `uapi` fuzz target: a device that answers a key of the wrong length,
    /// or with signs among its digits, reports no peer (the agent would otherwise try to
    /// remove a peer that cannot exist).
    #[test]
    fn a_key_that_is_not_32_bytes_of_hex_is_no_peer() {
        let plus = "+0".repeat(32);
        for key in ["000000", &"0".repeat(62), &"0".repeat(66), &plus] {
            let state = parse_get(&format!("public_key={key}\nrx_bytes=1\n"));
            assert!(state.peers.is_empty(), "{key}: {:?}", state.peers);
            assert!(state.stats.is_empty());
        }
    }

    #[test]
    fn parses_what_the_device_reports() {
        let key = test_key(1);
        let hex_key = hex(&key_bytes(&key).unwrap());
        let handshake = wireway_runtime::clock::unix_seconds() - 3;
        let response = format!(
            "private_key={}\nlisten_port=51820\npublic_key={hex_key}\nendpoint=192.0.2.1:51820\npersistent_keepalive_interval=25\nlast_handshake_time_sec={handshake}\nlast_handshake_time_nsec=5\nrx_bytes=10\ntx_bytes=20\nallowed_ip=10.100.1.0/24\nerrno=0\n\n",
            "0".repeat(64)
        );
        let state = parse_get(&response);
        assert_eq!(state.listen_port, 51820);
        let peer = &state.peers[&key];
        assert_eq!(peer.endpoint.as_deref(), Some("192.0.2.1:51820"));
        assert_eq!(
            peer.allowed_ips,
            BTreeSet::from(["10.100.1.0/24".parse().unwrap()])
        );
        assert_eq!(peer.persistent_keepalive, 25);
        // The device reports a time; the agent keeps its age (3 s, 4 if a second turned).
        let stats = &state.stats[&key];
        assert!(matches!(stats.handshake_age, Some(3 | 4)), "{stats:?}");
        assert_eq!((stats.rx_bytes, stats.tx_bytes), (10, 20));
        assert_eq!(errno(&response), 0);
    }

    #[test]
    fn keys_round_trip() {
        let (private, public) = generate_key().unwrap();
        assert_eq!(public_key(&private).unwrap(), public);
        assert_eq!(
            base64_of_hex(&hex(&key_bytes(&public).unwrap())).as_deref(),
            Some(public.as_str())
        );
    }
}

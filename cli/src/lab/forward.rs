//! `wireway lab forward`: the API server within a node's reach. A node of the lab is a
//! network namespace of its own, so its agent cannot reach an API server on the host's
//! loopback (in a cluster the agent runs on the host's network). This process, started
//! in the host's namespace, listens on the API server's address inside the node's
//! namespace (a socket stays in the namespace it was made in) and carries every
//! connection to the API server: the agent's kubeconfig names the same address, and TLS
//! is end to end, between the agent and the API server.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;

use nix::sched::{CloneFlags, setns};
use wireway_runtime::errors::FileError;

/// Why the forwarder could not start.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// A namespace could not be opened.
    #[error(transparent)]
    Open(FileError),
    /// The namespace could not be entered or left.
    #[error("failed to enter the network namespace {netns}")]
    Enter {
        /// The namespace.
        netns: String,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// The address is taken in the node's namespace.
    #[error("failed to listen on {address} in the network namespace {netns}")]
    Listen {
        /// The address.
        address: SocketAddr,
        /// The namespace.
        netns: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Listens on `address` inside the network namespace `netns` (of `ip netns`) and carries
/// each connection to `address` in this process's namespace, until killed.
pub fn forward(netns: &str, address: SocketAddr) -> Result<(), ForwardError> {
    let open = |path: &Path| {
        std::fs::File::open(path).map_err(|e| ForwardError::Open(FileError::on("open", path)(e)))
    };
    let enter = |file: &std::fs::File| {
        setns(file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| ForwardError::Enter {
            netns: netns.to_owned(),
            source,
        })
    };
    let home = open(Path::new("/proc/thread-self/ns/net"))?;
    enter(&open(&Path::new("/run/netns").join(netns))?)?;
    let listener = TcpListener::bind(address);
    enter(&home)?;
    let listener = listener.map_err(|source| ForwardError::Listen {
        address,
        netns: netns.to_owned(),
        source,
    })?;
    for inbound in listener.incoming() {
        match inbound {
            Ok(inbound) => {
                std::thread::spawn(move || match TcpStream::connect(address) {
                    Ok(outbound) => carry(inbound, outbound),
                    Err(e) => eprintln!("error: connecting to {address}: {e}"),
                });
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => eprintln!("error: accepting a connection: {e}"),
        }
    }
    Ok(())
}

/// A connection that can be read and written at once from two threads, and half
/// closed: TCP or Unix.
pub(super) trait Duplex: Read + Write + Send + Sized + 'static {
    /// Another handle of the same connection.
    fn handle(&self) -> std::io::Result<Self>;
    /// Says the end of what this side writes.
    fn close_write(&self);
}

impl Duplex for TcpStream {
    fn handle(&self) -> std::io::Result<Self> {
        self.try_clone()
    }
    fn close_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

impl Duplex for UnixStream {
    fn handle(&self) -> std::io::Result<Self> {
        self.try_clone()
    }
    fn close_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

/// Carries one connection both ways until both sides have closed.
pub(super) fn carry<A: Duplex, B: Duplex>(inbound: A, outbound: B) {
    let (Ok(mut inbound_reader), Ok(mut outbound_reader)) = (inbound.handle(), outbound.handle())
    else {
        return;
    };
    let (mut inbound_writer, mut outbound_writer) = (inbound, outbound);
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut inbound_reader, &mut outbound_writer);
        outbound_writer.close_write();
    });
    let _ = std::io::copy(&mut outbound_reader, &mut inbound_writer);
    inbound_writer.close_write();
    let _ = up.join();
}

//! `wireway lab service`: the lab's stand-in for the operator's Kubernetes Service when it
//! runs several operators (`up --kubernetes --operators N`). It listens on the operator
//! port agents dial and carries each connection to a ready operator (its `/readyz` says
//! 200), as a Service sends traffic only to ready endpoints. Only the leader is ready, so
//! agents reach the leader; a connection that finds none ready is closed, and the agent
//! tries again with its backoff.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use wireway_runtime::errors::FileError;

use super::forward::carry;

/// How long a readiness check may take.
const READINESS_TIMEOUT: Duration = Duration::from_secs(1);

/// An operator behind the service: its gRPC socket and its HTTP socket.
#[derive(Debug, Clone)]
pub struct Backend {
    /// Where agents' connections go.
    pub grpc: PathBuf,
    /// Where `/readyz` is asked.
    pub http: PathBuf,
}

impl std::str::FromStr for Backend {
    type Err = String;

    /// `GRPC_SOCKET=HTTP_SOCKET`.
    fn from_str(text: &str) -> Result<Self, String> {
        let (grpc, http) = text
            .split_once('=')
            .ok_or_else(|| format!("{text:?} is not GRPC_SOCKET=HTTP_SOCKET"))?;
        Ok(Self {
            grpc: grpc.into(),
            http: http.into(),
        })
    }
}

/// Whether the operator behind `http` answers `/readyz` with 200.
fn ready(http: &Path) -> bool {
    let Ok(mut stream) = UnixStream::connect(http) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(READINESS_TIMEOUT));
    let _ = stream.set_write_timeout(Some(READINESS_TIMEOUT));
    if stream
        .write_all(b"GET /readyz HTTP/1.0\r\nHost: operator\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0_u8; 12];
    stream.read_exact(&mut head).is_ok() && head.ends_with(b" 200")
}

/// Serves `listen` until killed, carrying each connection to the first ready backend.
pub fn serve(listen: &Path, backends: Vec<Backend>) -> Result<(), FileError> {
    // A socket file left by an earlier run is in the way.
    let _ = std::fs::remove_file(listen);
    let listener = UnixListener::bind(listen).map_err(FileError::on("listen on", listen))?;
    for inbound in listener.incoming() {
        match inbound {
            Ok(inbound) => {
                let backends = backends.clone();
                std::thread::spawn(move || {
                    let outbound = backends
                        .iter()
                        .filter(|b| ready(&b.http))
                        .find_map(|b| UnixStream::connect(&b.grpc).ok());
                    if let Some(outbound) = outbound {
                        carry(inbound, outbound);
                    }
                });
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => eprintln!("error: accepting a connection: {e}"),
        }
    }
    Ok(())
}

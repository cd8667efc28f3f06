//! Listen and connect addresses: `HOST:PORT` (TCP) or `unix:PATH` (a Unix socket).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use tokio::net::{TcpListener, UnixListener};

/// Where a server listens, or where a client connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A TCP address, such as `0.0.0.0:9443` or `[::1]:9090`.
    Tcp(SocketAddr),
    /// A Unix socket, written `unix:/run/wireway/operator.sock`.
    Unix(PathBuf),
}

/// An address that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an address: expected HOST:PORT (such as 0.0.0.0:9443) or unix:PATH")]
pub struct AddressError(String);

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(AddressError(s.to_owned()));
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        s.parse()
            .map(Self::Tcp)
            .map_err(|_| AddressError(s.to_owned()))
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => write!(f, "{addr}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// A bound listener.
#[derive(Debug)]
pub enum Listener {
    /// TCP.
    Tcp(TcpListener),
    /// A Unix socket.
    Unix(UnixListener),
}

/// Why an address could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("failed to listen on {address}")]
pub struct BindError {
    address: Address,
    #[source]
    source: std::io::Error,
}

impl Address {
    /// Binds the address. A Unix socket's directory is created, and a socket file left by
    /// an earlier process is replaced (only a socket: any other file is an error).
    pub async fn bind(&self) -> Result<Listener, BindError> {
        let error = |source| BindError {
            address: self.clone(),
            source,
        };
        match self {
            Self::Tcp(addr) => TcpListener::bind(addr)
                .await
                .map(Listener::Tcp)
                .map_err(error),
            Self::Unix(path) => {
                remove_stale_socket(path).map_err(error)?;
                UnixListener::bind(path).map(Listener::Unix).map_err(error)
            }
        }
    }
}

fn remove_stale_socket(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path),
        Ok(_) => Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "a file that is not a socket is in the way",
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Serves a tonic router on `listener` until `shutdown` completes.
pub async fn serve_grpc(
    router: tonic::transport::server::Router,
    listener: Listener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    match listener {
        Listener::Tcp(tcp) => {
            let incoming =
                tonic::transport::server::TcpIncoming::from(tcp).with_nodelay(Some(true));
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
        Listener::Unix(unix) => {
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(unix);
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
    }
}

/// A gRPC channel to `target`: a URL (`https://wireway-operator.wireway-system.svc:9443`;
/// `HOST:PORT` alone gets `https://`, or `http://` without TLS) or `unix:PATH`; over
/// mutual TLS when `tls` is given.
///
/// tonic refuses TLS on its own Unix-socket endpoints, so a Unix socket is dialled by a
/// connector of ours, and TLS runs over it as over TCP (the server name comes from `tls`).
pub async fn grpc_channel(
    target: &str,
    tls: Option<tonic::transport::ClientTlsConfig>,
    configure: impl FnOnce(tonic::transport::Endpoint) -> tonic::transport::Endpoint,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    use tonic::transport::Endpoint;
    let socket = target.strip_prefix("unix:").map(|p| {
        let p = p.strip_prefix("//").unwrap_or(p);
        PathBuf::from(p)
    });
    let uri = match (&socket, tls.is_some()) {
        (Some(_), true) => "https://wireway-operator".to_owned(),
        (Some(path), false) => format!("unix:{}", path.display()),
        (None, _) if target.contains("://") => target.to_owned(),
        (None, true) => format!("https://{target}"),
        (None, false) => format!("http://{target}"),
    };
    let mut endpoint = configure(Endpoint::from_shared(uri)?);
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls)?;
    }
    match socket {
        Some(path) if endpoint.uri().scheme_str() == Some("https") => {
            let connector = tower::service_fn(move |_: tonic::transport::Uri| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            });
            endpoint.connect_with_connector(connector).await
        }
        _ => endpoint.connect().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcp_and_unix_addresses() {
        assert_eq!(
            "127.0.0.1:9443".parse(),
            Ok(Address::Tcp(SocketAddr::from(([127, 0, 0, 1], 9443))))
        );
        assert_eq!(
            "unix:/run/ww.sock".parse(),
            Ok(Address::Unix(PathBuf::from("/run/ww.sock")))
        );
        assert_eq!(
            "unix:///run/ww.sock".parse(),
            Ok(Address::Unix(PathBuf::from("/run/ww.sock")))
        );
        let err = "localhost".parse::<Address>().unwrap_err();
        assert!(err.to_string().contains("HOST:PORT"), "{err}");
        assert!("unix:".parse::<Address>().is_err());
    }
}

//! A minimal HTTP GET, over TCP or a Unix socket, for the operator's and agents' HTTP
//! ports (`/status`, `/metrics`, `/readyz`).

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use wireway_runtime::listen::Address;

/// Why a GET failed.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    /// No connection.
    #[error("failed to connect to {address}")]
    Connect {
        /// Where.
        address: Address,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The exchange failed.
    #[error("failed to GET {path} from {address}")]
    Http {
        /// Where.
        address: Address,
        /// The path.
        path: String,
        /// The cause.
        #[source]
        source: hyper::Error,
    },
}

/// `GET path` from `address`: the status code and the body.
pub async fn get(address: &Address, path: &str) -> Result<(u16, String), GetError> {
    let connect = |source| GetError::Connect {
        address: address.clone(),
        source,
    };
    match address {
        Address::Tcp(addr) => {
            let stream = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(connect)?;
            exchange(TokioIo::new(stream), address, path).await
        }
        Address::Unix(socket) => {
            let stream = tokio::net::UnixStream::connect(socket)
                .await
                .map_err(connect)?;
            exchange(TokioIo::new(stream), address, path).await
        }
    }
}

async fn exchange<T>(io: T, address: &Address, path: &str) -> Result<(u16, String), GetError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let http = |source| GetError::Http {
        address: address.clone(),
        path: path.to_owned(),
        source,
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(http)?;
    tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap_or_default();
    let response = sender.send_request(request).await.map_err(http)?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(http)?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

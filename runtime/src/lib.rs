//! What the Wireway binaries share, so the operator and the agent listen, prove who they
//! are, expose metrics and log the same way:
//!
//! * [`listen`]: a listen address is `HOST:PORT` or `unix:PATH`, for gRPC and HTTP alike
//!   (the lab runs every server on Unix sockets, so it needs no ports and no address in
//!   the host's network namespace);
//! * [`tls`]: mutual TLS from PEM files, and the SPIFFE identities in certificates (a node
//!   agent proves `spiffe://<trust-domain>/wireway/node/<node>`);
//! * [`pki`]: issuing those certificates;
//! * [`http`]: `/metrics` (Prometheus text), `/healthz` and `/readyz`;
//! * [`backoff`]: exponential backoff for retry loops; [`limit`]: a token bucket per
//!   caller; [`clock`]: the wall clock;
//! * [`errors`]: a file error that names the file, an error chain on one line;
//! * [`files`]: files written whole or not at all (write, `fsync`, rename, `fsync` the
//!   directory), 0600, never through a symbolic link;
//! * [`logging`]: structured logs through `tracing`; [`signal`]: when to stop.

pub mod backoff;
pub mod clock;
pub mod errors;
pub mod files;
pub mod http;
pub mod limit;
pub mod listen;
pub mod logging;
pub mod pki;
pub mod signal;
pub mod tls;

//! One converge pass: NodeState → desired data plane → observe → operations → apply.

use std::path::{Path, PathBuf};

use wireway_proto::NodeState;

use crate::converge::{self, DesiredError, Op};
use crate::dataplane::netlink::Netlink;
use crate::dataplane::wireguard::{self, Userspace};
use crate::dataplane::{ApplyError, Backend, Kernel, resolve};

/// Where the agent keeps what must survive it: the node's private key, and the control
/// sockets of its userspace WireGuard devices.
#[derive(Debug, Clone)]
pub struct StateDir(pub PathBuf);

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The state directory or the key in it is unusable.
    #[error("failed to use the state directory {path}")]
    State {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Netlink is not available.
    #[error("failed to open netlink")]
    Netlink(#[from] crate::dataplane::netlink::NetlinkError),
}

impl StateDir {
    /// The node's private key (base64), generated on first use and stored 0600. It never
    /// leaves this file and the agent's memory.
    pub fn private_key(&self) -> Result<String, StartError> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let path = self.0.join("private.key");
        let error = |source| StartError::State {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&self.0).map_err(error)?;
        std::fs::set_permissions(&self.0, std::fs::Permissions::from_mode(0o700)).map_err(error)?;
        match std::fs::read_to_string(&path) {
            Ok(key) => Ok(key.trim().to_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (private, _) = wireguard::generate_key().map_err(error)?;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(error)?;
                std::io::Write::write_all(&mut file, private.as_bytes()).map_err(error)?;
                Ok(private)
            }
            Err(e) => Err(error(e)),
        }
    }

    /// Where the userspace WireGuard devices' control sockets are.
    pub fn sockets(&self) -> PathBuf {
        self.0.join("wireguard")
    }
}

/// What one pass did.
#[derive(Debug, Default)]
pub struct Pass {
    /// Operations applied (or tried).
    pub ops: Vec<Op>,
    /// Parts of the NodeState that could not be applied.
    pub desired_errors: Vec<DesiredError>,
    /// Operations that failed.
    pub apply_errors: Vec<ApplyError>,
    /// Netlink writes made.
    pub writes: u64,
}

/// The agent's hold on its node's kernel.
#[derive(Debug)]
pub struct Agent {
    kernel: Kernel,
}

impl Agent {
    /// An agent for the calling thread's network namespace, keeping its state in
    /// `state`; `program` is the agent binary (run again for userspace WireGuard devices).
    pub async fn new(state: &StateDir, program: &Path) -> Result<Self, StartError> {
        let private_key = state.private_key()?;
        let userspace = Userspace {
            program: program.to_owned(),
            socket_dir: state.sockets(),
        };
        let backend = Backend::detect(userspace).await;
        Ok(Self {
            kernel: Kernel::new(Netlink::connect()?, backend, private_key),
        })
    }

    /// The WireGuard backend in use: `kernel` or `userspace`.
    pub fn backend(&self) -> &'static str {
        self.kernel.backend()
    }

    /// Converges the kernel to `state` once.
    pub async fn converge(&self, state: &NodeState) -> Result<Pass, ApplyError> {
        let before = self.kernel.writes();
        self.kernel.prepare()?;
        let (desired, desired_errors) = converge::desired(state, resolve);
        let observed = self.kernel.observe(&desired).await?;
        let ops = converge::converge(&desired, &observed);
        let apply_errors = self.kernel.apply(&ops).await;
        Ok(Pass {
            ops,
            desired_errors,
            apply_errors,
            writes: self.kernel.writes() - before,
        })
    }

    /// What the kernel holds of the agent's objects (workload sides are not looked up).
    pub async fn show(&self) -> Result<converge::Dataplane, ApplyError> {
        self.kernel.observe(&converge::Dataplane::default()).await
    }
}

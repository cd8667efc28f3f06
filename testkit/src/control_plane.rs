//! The test control plane (`tests/control-plane/`, built by `make control-plane`): a real
//! etcd, kube-apiserver and kube-controller-manager in one process on 127.0.0.1, for the
//! tests that must meet the API server itself (CEL cost budgets, structural schemas,
//! server-side apply, RBAC, TokenReview, 410 Gone).
//!
//! [`ControlPlane::start`] runs one in a fresh directory and stops it on drop;
//! [`ControlPlane::shared`] runs one per test process, for tests that can share it (each
//! in its own namespaces, [`unique_name`]). Starting costs seconds (3–10 s to ready on a
//! 2-core machine, more under load), so tests that only read or dry-run share one.
//! Note that `cargo nextest` runs every test in its own process: there "one per process"
//! is one per test, and only `cargo test` shares it between tests.
//!
//! Guarantees:
//! * Nothing outlives the test process. The control plane runs with
//!   `--exit-on-stdin-close` and its stdin is a pipe only this process holds, so a test
//!   process that ends, even by SIGKILL, takes it along; a small `sh` wrapper waits for it
//!   and removes its directory (etcd's data, ~120 MB) after it exits. This is also what
//!   happens to the shared one, which is never dropped (statics are not).
//! * Drop stops it in order (SIGTERM, as the control plane expects), waits, then kills.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long the control plane may take to be ready: 3–10 s is usual on a 2-core machine,
/// a minute when the machine is busy compiling.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a stopping control plane may take (1.4–3 s measured) before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Lines of the control plane's log kept for messages.
const LOG_LINES: usize = 200;

/// Runs the control plane in `$1` with the flags after it, stdin from this process's pipe,
/// and removes the directory once it has exited. An asynchronous command of a
/// non-interactive shell gets /dev/null as stdin, hence the pipe kept on fd 3. The control
/// plane's pid comes first on stdout, so Drop can signal it rather than the shell.
const WRAPPER: &str = r#"exec 3<&0
cp=$0 dir=$1
shift
"$cp" --dir "$dir" --exit-on-stdin-close "$@" <&3 3<&- &
echo "pid $!"
wait $!
status=$?
rm -rf "$dir"
exit $status
"#;

/// A running test control plane.
#[derive(Debug)]
pub struct ControlPlane {
    dir: PathBuf,
    kubeconfig: PathBuf,
    /// The control plane itself (signalled to stop).
    pid: Pid,
    /// The `sh` wrapper; it holds our pipe as stdin, so the control plane stops when it
    /// is dropped.
    wrapper: Child,
    log: Log,
}

/// The last lines the control plane wrote to stderr.
#[derive(Debug, Clone, Default)]
struct Log(Arc<Mutex<VecDeque<String>>>);

impl Log {
    fn follow(&self, stream: impl Read + Send + 'static) {
        let log = self.clone();
        thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                let mut lines = log.0.lock().unwrap_or_else(|e| e.into_inner());
                if lines.len() == LOG_LINES {
                    lines.pop_front();
                }
                lines.push_back(line);
            }
        });
    }

    fn tail(&self) -> String {
        let lines = self.0.lock().unwrap_or_else(|e| e.into_inner());
        lines.iter().map(|l| format!("    {l}\n")).collect()
    }
}

static SHARED: OnceLock<Option<ControlPlane>> = OnceLock::new();

impl ControlPlane {
    /// The built binary, `.tools/bin/control-plane` of this repository.
    pub fn binary() -> PathBuf {
        tool("control-plane")
    }

    /// Whether a test that needs the control plane runs. Without the binary it is skipped,
    /// saying so, except under CI (`CI` set), where it fails naming the command that builds
    /// it: there a test must run, not pass unseen. (`make test` builds it first.)
    pub fn available(test: &str) -> bool {
        let built = Self::binary().is_file();
        if !built {
            assert!(
                std::env::var_os("CI").is_none(),
                "{test} needs the test control plane: run `make control-plane` (it builds {})",
                Self::binary().display()
            );
            eprintln!(
                "skipped {test}: needs the test control plane (`make control-plane` builds it)"
            );
        }
        built
    }

    /// A control plane for this test process, started on first use and shared by every
    /// test in it; `None` (skipped) when the binary is not built. Use [`unique_name`]
    /// namespaces. It stops when the process ends.
    pub fn shared(test: &str) -> Option<&'static ControlPlane> {
        if !Self::available(test) {
            return None;
        }
        SHARED.get_or_init(|| Some(Self::launch(&[]))).as_ref()
    }

    /// A control plane of the test's own, in a fresh directory; `None` (skipped) when the
    /// binary is not built.
    pub fn start(test: &str) -> Option<Self> {
        Self::start_with(test, &[])
    }

    /// [`start`](Self::start) with further flags, such as
    /// `--apiserver-arg=--watch-cache=false` (for a test that must see 410 Gone).
    pub fn start_with(test: &str, args: &[&str]) -> Option<Self> {
        Self::available(test).then(|| Self::launch(args))
    }

    fn launch(args: &[&str]) -> Self {
        let dir = fresh_dir();
        let started = Instant::now();
        let mut wrapper = Command::new("sh")
            .args(["-c", WRAPPER])
            .arg(Self::binary())
            .arg(&dir)
            .arg(format!("--ready-timeout={}s", READY_TIMEOUT.as_secs()))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("failed to run sh for the test control plane: {e}"));
        let log = Log::default();
        if let Some(stderr) = wrapper.stderr.take() {
            log.follow(stderr);
        }
        // Lines of stdout: "pid N", then "ready KUBECONFIG" (the only two it writes).
        let (lines, wait) = mpsc::channel();
        if let Some(stdout) = wrapper.stdout.take() {
            thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if lines.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let mut pid = None;
        let mut kubeconfig = None;
        while kubeconfig.is_none() {
            let left = READY_TIMEOUT
                .saturating_add(Duration::from_secs(5))
                .saturating_sub(started.elapsed());
            match wait.recv_timeout(left) {
                Ok(line) => {
                    if let Some(n) = line.strip_prefix("pid ").and_then(|n| n.parse().ok()) {
                        pid = Some(Pid::from_raw(n));
                    } else if let Some(path) = line.strip_prefix("ready ") {
                        kubeconfig = Some(PathBuf::from(path));
                    }
                }
                Err(e) => {
                    let why = match e {
                        mpsc::RecvTimeoutError::Timeout => {
                            format!("was not ready within {} s", READY_TIMEOUT.as_secs())
                        }
                        mpsc::RecvTimeoutError::Disconnected => "exited before ready".to_owned(),
                    };
                    let tail = log.tail();
                    if let Some(pid) = pid {
                        let _ = kill(pid, Signal::SIGKILL);
                    }
                    let _ = wrapper.kill();
                    let _ = wrapper.wait();
                    let _ = std::fs::remove_dir_all(&dir);
                    panic!(
                        "the test control plane ({}) {why}; the end of its log:\n{tail}",
                        Self::binary().display()
                    );
                }
            }
        }
        let (Some(pid), Some(kubeconfig)) = (pid, kubeconfig) else {
            unreachable!("the loop ends with a kubeconfig, after the pid line")
        };
        eprintln!(
            "test control plane ready in {:.1} s: {}",
            started.elapsed().as_secs_f64(),
            kubeconfig.display()
        );
        Self {
            dir,
            kubeconfig,
            pid,
            wrapper,
            log,
        }
    }

    /// The directory of its files (certificates, `etcd/`), removed when it stops.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The admin's kubeconfig (`system:masters`).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// A client with the admin's kubeconfig. A `kube::Client` serves only while the tokio
    /// runtime it was made on runs, so each test makes its own (it costs milliseconds).
    pub async fn client(&self) -> kube::Client {
        client_for(&self.kubeconfig).await
    }

    /// `kubectl` (`.tools/bin/kubectl`, from `make tools`) with the admin's kubeconfig, to
    /// add arguments and input to.
    pub fn kubectl_command(&self) -> Command {
        let kubectl = tool("kubectl");
        assert!(
            kubectl.is_file(),
            "{} is missing: run `make tools`",
            kubectl.display()
        );
        let mut command = Command::new(kubectl);
        command.env("KUBECONFIG", &self.kubeconfig);
        command
    }

    /// Runs `kubectl ARGS`: its stdout when it succeeds, its stderr when it fails.
    pub fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        let out = self
            .kubectl_command()
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("failed to run kubectl: {e}"));
        text_of(&out)
    }

    /// `kubectl apply --server-side -f` of `objects` (JSON is YAML), as the admin.
    pub fn apply(&self, objects: &[serde_json::Value]) {
        let text: String = objects.iter().map(|o| format!("---\n{o}\n")).collect();
        let file = self.dir.join(format!("{}.yaml", unique_name("objects")));
        std::fs::write(&file, text)
            .unwrap_or_else(|e| panic!("failed to write {}: {e}", file.display()));
        let path = file.to_string_lossy();
        self.kubectl(&["apply", "--server-side", "-f", &path])
            .unwrap_or_else(|e| panic!("kubectl apply: {e}"));
    }

    /// A token of a service account (`kubectl create token`), with `args` (audience,
    /// bound object, duration).
    pub fn token(&self, namespace: &str, account: &str, args: &[&str]) -> String {
        let mut all = vec!["create", "token", account, "-n", namespace];
        all.extend(args);
        self.kubectl(&all)
            .unwrap_or_else(|e| panic!("kubectl create token: {e}"))
            .trim()
            .to_owned()
    }

    /// A kubeconfig (a new file in [`dir`](Self::dir)) that authenticates with `token`
    /// alone (the admin's also carries a client certificate, which the API server would
    /// prefer), for the API server at `server` (its own URL when `None`).
    pub fn kubeconfig_for(&self, token: &str, server: Option<&str>) -> PathBuf {
        let view = self
            .kubectl(&["config", "view", "--raw", "--minify", "-o", "json"])
            .unwrap_or_else(|e| panic!("kubectl config view: {e}"));
        let admin: serde_json::Value = serde_json::from_str(&view)
            .unwrap_or_else(|e| panic!("kubectl config view said {view:?}: {e}"));
        let mut cluster = admin["clusters"][0]["cluster"].clone();
        if let Some(server) = server {
            cluster["server"] = server.into();
        }
        let config = serde_json::json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "c", "cluster": cluster}],
            "users": [{"name": "u", "user": {"token": token}}],
            "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "x",
        });
        let path = self
            .dir
            .join(format!("{}.kubeconfig", unique_name("token")));
        std::fs::write(&path, config.to_string())
            .unwrap_or_else(|e| panic!("failed to write {}: {e}", path.display()));
        path
    }

    /// The API server's URL (`https://127.0.0.1:PORT`).
    pub fn server(&self) -> String {
        self.kubectl(&[
            "config",
            "view",
            "--minify",
            "-o",
            "jsonpath={.clusters[0].cluster.server}",
        ])
        .unwrap_or_else(|e| panic!("kubectl config view: {e}"))
        .trim()
        .to_owned()
    }

    /// `kubectl ARGS` as the holder of `kubeconfig`.
    pub fn kubectl_as(&self, kubeconfig: &Path, args: &[&str]) -> Result<String, String> {
        let out = self
            .kubectl_command()
            .env("KUBECONFIG", kubeconfig)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("failed to run kubectl: {e}"));
        text_of(&out)
    }

    /// Compacts etcd to its current revision (`control-plane compact`), and returns it.
    /// With the apiserver's watch cache on, watches do not see this; see
    /// `tests/control-plane/README.md` for provoking 410 Gone.
    pub fn compact(&self) -> u64 {
        let out = Command::new(Self::binary())
            .arg("compact")
            .arg("--dir")
            .arg(&self.dir)
            .output()
            .unwrap_or_else(|e| panic!("failed to run control-plane compact: {e}"));
        let text = text_of(&out).unwrap_or_else(|e| panic!("control-plane compact failed: {e}"));
        text.trim()
            .strip_prefix("compacted ")
            .and_then(|rev| rev.parse().ok())
            .unwrap_or_else(|| panic!("control-plane compact said {text:?}"))
    }

    /// The last lines of its log (stderr), for a failing test's message.
    pub fn log_tail(&self) -> String {
        self.log.tail()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = kill(self.pid, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        // The wrapper exits once the control plane has and its directory is gone.
        while Instant::now() < deadline {
            match self.wrapper.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => thread::sleep(Duration::from_millis(50)),
            }
        }
        eprintln!(
            "the test control plane did not stop within {} s of SIGTERM: killed",
            STOP_TIMEOUT.as_secs()
        );
        let _ = kill(self.pid, Signal::SIGKILL);
        let _ = self.wrapper.kill();
        let _ = self.wrapper.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A client for the holder of `kubeconfig` (see [`ControlPlane::client`] on runtimes).
pub async fn client_for(kubeconfig: &Path) -> kube::Client {
    let path = kubeconfig;
    let kubeconfig = kube::config::Kubeconfig::read_from(path)
        .unwrap_or_else(|e| panic!("failed to read {}: {e}", path.display()));
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap_or_else(|e| panic!("failed to load {}: {e}", path.display()));
    kube::Client::try_from(config)
        .unwrap_or_else(|e| panic!("failed to make a client for {}: {e}", path.display()))
}

/// A name no other test of this process uses: `PREFIX-N`, for namespaces and
/// cluster-scoped objects on a shared control plane.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(1);
    format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// `.tools/bin/NAME` of the repository under test: the workspace of the package whose
/// tests run (cargo and nextest set `CARGO_MANIFEST_DIR` when they run a test), else of
/// this crate as it was compiled. Worktrees that share one target directory share this
/// crate's build, so the compile-time path alone may name another checkout.
fn tool(name: &str) -> PathBuf {
    let relative = Path::new(".tools/bin").join(name);
    let running = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .and_then(|dir| {
            dir.ancestors()
                .find(|d| d.join("Cargo.lock").is_file())
                .map(Path::to_owned)
        });
    let compiled = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let candidates: Vec<PathBuf> = running
        .into_iter()
        .chain([compiled])
        .map(|root| root.join(&relative))
        .collect();
    candidates
        .iter()
        .find(|path| path.is_file())
        .unwrap_or(&candidates[0])
        .to_owned()
}

/// A new empty directory for one control plane.
fn fresh_dir() -> PathBuf {
    let base = std::env::temp_dir();
    for n in 0.. {
        let dir = base.join(format!("wireway-control-plane-{}-{n}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return dir,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("failed to create {}: {e}", dir.display()),
        }
    }
    unreachable!("some directory name is free")
}

fn text_of(out: &Output) -> Result<String, String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

//! Measuring the lab: the operator's view of it, waiting until every agent has applied
//! the state planned for it, and pinging every workload's addresses from every workload
//! to compare with the [`super::matrix`] the statuses call for.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use wireway_operator::snapshot::Snapshot;

use super::Lab;
use super::matrix::{self, Expectation, Matrix};
use super::supervision::DeadProcess;
use crate::status::{Access, FetchError, StatusClient};

/// Why the lab could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    /// A process of the lab died while waiting.
    #[error(transparent)]
    Died(#[from] DeadProcess),
    /// The lab did not converge in time.
    #[error("failed to converge within {timeout:?}: {last}; see the logs in {}", dir.display())]
    Timeout {
        /// How long it waited.
        timeout: Duration,
        /// How far it got.
        last: String,
        /// The lab's directory.
        dir: std::path::PathBuf,
    },
    /// `ping` could not be run.
    #[error("failed to run ping (install iputils-ping)")]
    Ping(#[source] std::io::Error),
    /// `ping -V` failed: not the ping the lab needs.
    #[error("failed to run `ping -V` (install iputils-ping)")]
    PingVersion,
}

impl Lab {
    /// How to read the operator's status: its gRPC port, with the lab's administrator
    /// certificate (with `--kubernetes`: the lab's status-reader token).
    pub fn status_access(&self) -> Access {
        let pki = self.admin_pki();
        Access {
            operator: self.operator_grpc().to_string(),
            operator_name: wireway_runtime::tls::OPERATOR_SERVER_NAME.to_owned(),
            ca: pki.join("ca.crt"),
            cert: pki.join("tls.crt"),
            key: pki.join("tls.key"),
            token_file: self.is_kubernetes().then(|| self.status_token()),
            insecure_plaintext: false,
        }
    }

    /// A connection to the operator's status, to ask again and again.
    pub async fn status_client(&self) -> Result<StatusClient, FetchError> {
        StatusClient::connect(&self.status_access()).await
    }

    /// Waits until the operator serves, every node's agent is connected and at the
    /// version planned for it, and that holds for a moment (a change just written has
    /// been planned). `progress` is told each new state of the wait.
    pub async fn wait_converged(
        &self,
        timeout: Duration,
        mut progress: impl FnMut(&str),
    ) -> Result<Snapshot, MeasureError> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        let mut settled: Option<(u64, Instant)> = None;
        let mut client: Option<StatusClient> = None;
        loop {
            let fetched = match client.as_mut() {
                Some(c) => c.fetch().await,
                None => match self.status_client().await {
                    Ok(mut c) => {
                        let fetched = c.fetch().await;
                        client = Some(c);
                        fetched
                    }
                    Err(e) => Err(e),
                },
            };
            let (done, summary, plans, snapshot) = match fetched {
                Ok(s) => {
                    let (done, summary) = self.convergence(&s);
                    (done, summary, s.plans, Some(s))
                }
                Err(e) => {
                    // Connect afresh next time (the operator may have restarted).
                    client = None;
                    let why = wireway_runtime::errors::chain(&e);
                    (
                        false,
                        format!("waiting for the operator to answer ({why})"),
                        0,
                        None,
                    )
                }
            };
            if summary != last {
                progress(&summary);
                last = summary;
            }
            if let Some(dead) = self.dead_process() {
                return Err(dead.into());
            }
            match (done, settled, snapshot) {
                (true, Some((p, since)), Some(s))
                    if p == plans && since.elapsed() >= Duration::from_millis(300) =>
                {
                    return Ok(s);
                }
                (true, Some((p, _)), _) if p == plans => {}
                (true, _, _) => settled = Some((plans, Instant::now())),
                (false, _, _) => settled = None,
            }
            if Instant::now() > deadline {
                return Err(MeasureError::Timeout {
                    timeout,
                    last,
                    dir: self.dir.clone(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether the lab has converged, and a line saying how far it is.
    fn convergence(&self, snapshot: &Snapshot) -> (bool, String) {
        let nodes = &self.record.nodes;
        let of_lab = || {
            snapshot
                .nodes
                .iter()
                .filter(|n| nodes.contains_key(&n.name))
        };
        let connected = of_lab().filter(|n| n.connected).count();
        let current = of_lab()
            .filter(|n| n.desired_version > 0 && n.applied_version >= n.desired_version)
            .count();
        let total = nodes.len();
        let mut summary = format!(
            "agents: {connected}/{total} connected, {current}/{total} at the current version"
        );
        if let Some(waiting) = &snapshot.waiting_for {
            summary = format!("operator: {waiting}; {summary}");
        }
        let done = snapshot.ready && connected == total && current == total;
        (done, summary)
    }

    /// The matrix the operator's statuses call for.
    pub fn expectation(&self, snapshot: &Snapshot) -> Expectation {
        let workloads: BTreeSet<String> = self.record.pods.keys().cloned().collect();
        matrix::expect(&workloads, snapshot)
    }

    /// Pings every column from every row, all at once.
    pub async fn measure(&self, expectation: Expectation) -> Result<Matrix, MeasureError> {
        measure(expectation, |row| {
            self.record.pods.get(row).map(|p| p.netns.clone())
        })
        .await
    }
}

/// Pings every column of `expectation` from every row, all at once, each row from the
/// network namespace `netns` gives it.
pub async fn measure(
    expectation: Expectation,
    netns: impl Fn(&str) -> Option<String>,
) -> Result<Matrix, MeasureError> {
    let ping = std::process::Command::new("ping")
        .arg("-V")
        .output()
        .map_err(MeasureError::Ping)?;
    if !ping.status.success() {
        return Err(MeasureError::PingVersion);
    }
    let mut pings = Vec::new();
    for (r, row) in expectation.rows.iter().enumerate() {
        let Some(netns) = netns(row) else {
            continue;
        };
        for (c, column) in expectation.columns.iter().enumerate() {
            if column.workload == *row {
                continue;
            }
            let mut command = tokio::process::Command::new("ip");
            command
                .args([
                    "netns", "exec", &netns, "ping", "-n", "-q", "-c", "1", "-i", "0.2", "-w", "3",
                ])
                .arg(&column.address)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            pings.push((r, c, command.status()));
        }
    }
    let mut reached: Vec<Vec<Option<bool>>> =
        vec![vec![None; expectation.columns.len()]; expectation.rows.len()];
    for (r, c, status) in pings {
        reached[r][c] = Some(status.await.is_ok_and(|s| s.success()));
    }
    Ok(Matrix {
        expectation,
        reached,
    })
}

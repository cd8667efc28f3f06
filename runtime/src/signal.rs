//! Waiting for the signal to stop.

/// Completes when the process receives SIGTERM (Kubernetes stopping a pod) or SIGINT
/// (Ctrl-C). Without signal handling (it could not be installed) it never completes.
pub async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

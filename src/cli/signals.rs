//! The signals that stop a command: SIGINT (Ctrl-C) and SIGTERM (`kill`, `timeout`, systemd,
//! container runtimes). Every long-running command stops the same way on either.

use super::output::Interrupted;

/// Completes on the first SIGINT or SIGTERM, saying which. A signal whose handler cannot be
/// installed (SIGTERM off Unix) never completes.
pub async fn stop_signal() -> Interrupted {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => Interrupted::Interrupt,
        () = terminate => Interrupted::Terminate,
    }
}

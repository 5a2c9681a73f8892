//! The signals that stop a command: SIGINT (Ctrl-C), SIGTERM (`kill`, `timeout`, systemd,
//! container runtimes) and SIGHUP (a closed terminal, a dropped ssh session). Every
//! long-running command stops the same way on each.

use super::output::Interrupted;

/// Completes on the first SIGINT, SIGTERM or SIGHUP, saying which. A signal whose handler
/// cannot be installed (SIGTERM and SIGHUP off Unix) never completes.
pub async fn stop_signal() -> Interrupted {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = interrupt => Interrupted::Interrupt,
        () = unix_signal(UnixSignal::Terminate) => Interrupted::Terminate,
        () = unix_signal(UnixSignal::Hangup) => Interrupted::Hangup,
    }
}

enum UnixSignal {
    Terminate,
    Hangup,
}

/// Completes when the signal arrives; never when its handler cannot be installed.
#[cfg(unix)]
async fn unix_signal(which: UnixSignal) {
    use tokio::signal::unix::{SignalKind, signal};
    let kind = match which {
        UnixSignal::Terminate => SignalKind::terminate(),
        UnixSignal::Hangup => SignalKind::hangup(),
    };
    match signal(kind) {
        Ok(mut stream) => {
            stream.recv().await;
        }
        Err(_) => std::future::pending::<()>().await,
    }
}

#[cfg(not(unix))]
async fn unix_signal(_: UnixSignal) {
    std::future::pending::<()>().await
}

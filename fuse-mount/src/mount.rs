//! Mounting: recover what a crashed mount left persisted, mount with `fusermount3` (no libfuse
//! C library), serve until unmounted (`fusermount3 -u`) or signalled (SIGTERM, SIGINT), then
//! commit every file still open.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fuser::{Config, MountOption, Session, SessionACL};
use tokio::signal::unix::{SignalKind, signal};

use crate::adapter::Adapter;
use crate::fs::Filesystem;

/// Options of the mount itself (the file system's own are in [`crate::FsConfig`]).
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Let other users access the mount (needs `user_allow_other` in /etc/fuse.conf for
    /// non-root users).
    pub allow_other: bool,
    /// The source name shown in /proc/mounts.
    pub fs_name: String,
    /// How long one file-system operation may wait for the store before failing with EIO.
    pub op_timeout: Duration,
}

impl Default for MountOptions {
    fn default() -> Self {
        Self {
            allow_other: false,
            fs_name: "rivulet".into(),
            op_timeout: Duration::from_secs(300),
        }
    }
}

fn fuse_config(fs: &Filesystem, opts: &MountOptions) -> Config {
    let mut mount_options = vec![
        // Mount options are comma-separated: a comma (or blank) in a URL would split it.
        MountOption::FSName(opts.fs_name.replace([',', ' ', '\t', '\n'], "_")),
        MountOption::Subtype("rivulet".into()),
        // Modes and owners are the mount's (--file-mode, --uid, ...): let the kernel check them.
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
    ];
    mount_options.push(if fs.config().read_only {
        MountOption::RO
    } else {
        MountOption::RW
    });
    let mut config = Config::default();
    config.mount_options = mount_options;
    config.acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    // One thread: operations on a file are ordered as the kernel sent them.
    config.n_threads = Some(1);
    config
}

/// Mounts `fs` at `mountpoint` and serves it until it is unmounted or the process gets
/// SIGTERM or SIGINT; then commits the files still open. `on_mounted` runs once the kernel
/// has the mount (for a "ready" message). Must be called inside a multi-threaded tokio runtime.
pub async fn serve(
    fs: Arc<Filesystem>,
    mountpoint: &Path,
    opts: &MountOptions,
    on_mounted: impl FnOnce(),
) -> io::Result<()> {
    let config = fuse_config(&fs, opts);
    let adapter = Adapter::new(
        fs.clone(),
        tokio::runtime::Handle::current(),
        opts.op_timeout,
    );
    let path = mountpoint.to_path_buf();
    let (mounted_tx, mounted_rx) = tokio::sync::oneshot::channel();
    let (ended_tx, mut ended_rx) = tokio::sync::oneshot::channel();
    // The session blocks its thread on /dev/fuse. A plain thread, not `spawn_blocking`: after a
    // lazy unmount it may stay blocked until the process exits, and the runtime's shutdown
    // waits for its blocking tasks.
    std::thread::Builder::new()
        .name("rivulet-fuse".into())
        .spawn(move || {
            let result = Session::new(adapter, &path, &config).and_then(|mut session| {
                let _ = mounted_tx.send(session.unmount_callable());
                session.run()
            });
            let _ = ended_tx.send(result);
        })?;
    let mut unmounter = match mounted_rx.await {
        Ok(unmounter) => unmounter,
        // Mounting failed: the thread ended with the reason.
        Err(_) => return join(ended_rx.await),
    };
    on_mounted();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let result = tokio::select! {
        ended = &mut ended_rx => join(ended),
        _ = term.recv() => stop(&fs, &mut unmounter, mountpoint, ended_rx).await,
        _ = int.recv() => stop(&fs, &mut unmounter, mountpoint, ended_rx).await,
    };
    // The session's destroy commits too; this covers a session that ended without one.
    fs.shutdown().await;
    result
}

/// How long a signalled mount waits for its session to end after committing open files.
const SESSION_END_WAIT: Duration = Duration::from_secs(3);

type SessionEnd = tokio::sync::oneshot::Receiver<io::Result<()>>;

fn join(ended: Result<io::Result<()>, tokio::sync::oneshot::error::RecvError>) -> io::Result<()> {
    ended.map_err(|_| io::Error::other("the FUSE session thread ended without a result"))?
}

/// Unmounts after a signal, commits the open files, and waits (a while) for the session to end.
async fn stop(
    fs: &Filesystem,
    unmounter: &mut fuser::SessionUnmounter,
    mountpoint: &Path,
    session_end: SessionEnd,
) -> io::Result<()> {
    tracing::info!("signal received: unmounting {}", mountpoint.display());
    if let Err(e) = unmounter.unmount() {
        // Busy (a process has a file open there): detach it lazily.
        tracing::warn!("unmount failed ({e}); detaching lazily");
        lazy_unmount(mountpoint.to_path_buf()).await?;
    }
    // A lazily detached mount lives on until its last open file is closed, which may be never:
    // commit now rather than after the session ends. Handles still open get EBADF afterwards.
    fs.shutdown().await;
    match tokio::time::timeout(SESSION_END_WAIT, session_end).await {
        Ok(ended) => join(ended),
        Err(_) => {
            // Exiting closes /dev/fuse, which ends the detached mount for its remaining users.
            tracing::warn!(
                "files are still open on the detached mount; exiting (their handles fail from now on)"
            );
            // The session thread still holds the file system, so its read cache would never be
            // dropped: its blocks go now.
            fs.discard_read_cache();
            Ok(())
        }
    }
}

async fn lazy_unmount(mountpoint: PathBuf) -> io::Result<()> {
    let status = tokio::process::Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg(&mountpoint)
        .status()
        .await?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "fusermount3 -u -z {} failed ({status})",
            mountpoint.display()
        )))
    }
}

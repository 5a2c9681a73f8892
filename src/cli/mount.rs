//! `mount`: the store as a file system (FUSE), until unmounted or signalled: in the
//! foreground (`--foreground`), or as a background process that this command starts and
//! returns from once the file system is mounted.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use fs_core::store::ListRequest;
use fs_core::{RecoverableWriter, WriterConfig};
use fuse_mount::cache::BlockCache;
use fuse_mount::{Filesystem, FsConfig, MountOptions, recover_open_files};

use super::{Env, MountArgs, location};

/// Set in the environment of the background process that `mount` starts: it serves in the
/// foreground of its own (detached) session.
const DAEMON_ENV: &str = "RIVULET_MOUNT_DAEMON";

/// How long `mount` waits for its background process to mount.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(60);

/// `rivulet mount URL MOUNTPOINT [--foreground] [...]`.
pub async fn mount(env: &Env, args: &MountArgs) -> Result<()> {
    let mountpoint = Path::new(&args.mountpoint);
    if !mountpoint.is_dir() {
        bail!(
            "the mount point {} is not a directory",
            mountpoint.display()
        );
    }
    let store_url = location::store(&args.url)?;
    if !args.foreground && std::env::var_os(DAEMON_ENV).is_none() {
        return start_in_background(args, mountpoint);
    }
    let store = env.open_store(&store_url).await?;
    // A store the mount cannot use (a missing bucket, nothing at the endpoint, no credentials)
    // is refused here: mounted, it would answer every operation with EIO and say why only in
    // its log.
    let probe = ListRequest {
        prefix: String::new(),
        delimiter: Some("/".into()),
        continuation: None,
        max_keys: Some(1),
    };
    env.retry_for(&store_url)
        .run(|| store.list(probe.clone()))
        .await
        .with_context(|| format!("{store_url} cannot be listed, so it was not mounted"))?;
    let index = env.index().await?;
    let mut config = WriterConfig {
        part_size: env.global.part_size,
        max_in_flight: env.global.max_in_flight,
        retry: env.retry_for(&store_url),
        // Reads of a file open for writing come from the parts it uploaded: keep them.
        cache_parts: true,
        ..WriterConfig::default()
    };
    if let Some(dir) = &env.global.cache_dir {
        config.cache_dir = dir.clone();
    }
    let writer = RecoverableWriter::new(store, index, config)?;
    if args.read_only {
        env.say("read-only mount: files left open by an earlier mount are not recovered");
    } else {
        // What a killed mount fsynced is committed before anything else sees the store.
        let recovered = recover_open_files(&writer)
            .await
            .context("recovering the files an earlier mount left open failed")?;
        for file in &recovered {
            eprintln!(
                "rivulet: recovered {} ({} bytes) left open by an earlier mount",
                file.key, file.size
            );
        }
    }
    let defaults = FsConfig::default();
    let fs_config = FsConfig {
        read_only: args.read_only,
        uid: args.uid.unwrap_or(defaults.uid),
        gid: args.gid.unwrap_or(defaults.gid),
        file_mode: args.file_mode,
        dir_mode: args.dir_mode,
        ttl: args.metadata_ttl,
    };
    let cache_dir = writer.config().cache_dir.clone();
    let mut fs = Filesystem::new(writer, fs_config);
    if let Some(cache) = BlockCache::open(&cache_dir, args.cache_size)
        .context("opening the read cache (--cache-dir, --cache-size)")?
    {
        fs = fs.with_read_cache(Arc::new(cache));
    }
    let fs = Arc::new(fs);
    let opts = MountOptions {
        allow_other: args.allow_other,
        fs_name: format!("rivulet:{store_url}"),
        ..MountOptions::default()
    };
    let url = store_url.to_string();
    fuse_mount::serve(fs, mountpoint, &opts, || {
        eprintln!(
            "rivulet: mounted {url} at {} (unmount with `fusermount3 -u {}` or Ctrl-C)",
            mountpoint.display(),
            mountpoint.display()
        );
    })
    .await
    .context("the mount failed")?;
    env.say(format_args!("unmounted {}", mountpoint.display()));
    Ok(())
}

/// Where a background mount logs: `--log-file`, else `mount.log` in the state directory.
fn log_path(args: &MountArgs) -> PathBuf {
    args.log_file
        .clone()
        .unwrap_or_else(|| fs_core::Index::default_path().with_file_name("mount.log"))
}

fn is_mounted(mountpoint: &Path) -> bool {
    let Ok(canonical) = mountpoint.canonicalize() else {
        return false;
    };
    let wanted = canonical.to_string_lossy();
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|line| line.split(' ').nth(1) == Some(wanted.as_ref()))
}

/// Starts this same command as a detached background process (its own process group, no
/// terminal, output to the log file) and returns once it has mounted, or with its error.
fn start_in_background(args: &MountArgs, mountpoint: &Path) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let log = log_path(args);
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the log directory {}", dir.display()))?;
    }
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("opening the log file {}", log.display()))?;
    let start = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let exe = std::env::current_exe().context("finding the rivulet binary")?;
    let mut child = Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(DAEMON_ENV, "1")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().context("opening the log file")?)
        .stderr(log_file)
        // Out of the terminal's process group: Ctrl-C in the shell does not reach it.
        .process_group(0)
        .spawn()
        .context("starting the background mount")?;
    let started = Instant::now();
    loop {
        if is_mounted(mountpoint) {
            eprintln!(
                "rivulet: mounted {} at {} in the background (pid {}, log {}); unmount with \
                 `fusermount3 -u {}`",
                args.url,
                mountpoint.display(),
                child.id(),
                log.display(),
                mountpoint.display()
            );
            return Ok(());
        }
        if let Some(status) = child.try_wait().context("watching the background mount")? {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail = text.get(start as usize..).unwrap_or("").trim();
            bail!("the background mount exited ({status}) without mounting: {tail}");
        }
        if started.elapsed() > MOUNT_TIMEOUT {
            let _ = child.kill();
            bail!(
                "the background mount did not mount within {MOUNT_TIMEOUT:?}; see {}",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

//! `mount`: the store as a file system (FUSE), in the foreground until unmounted or signalled.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use fs_core::{RecoverableWriter, WriterConfig};
use fuse_mount::{Filesystem, FsConfig, MountOptions, recover_open_files};

use super::{Env, MountArgs, location};

/// `rivulet mount URL MOUNTPOINT --foreground [...]`.
pub async fn mount(env: &Env, args: &MountArgs) -> Result<()> {
    if !args.foreground {
        bail!(
            "running in the background is not implemented yet: pass --foreground (and start it \
             with your service manager, or with `&` in a shell)"
        );
    }
    let mountpoint = Path::new(&args.mountpoint);
    if !mountpoint.is_dir() {
        bail!(
            "the mount point {} is not a directory",
            mountpoint.display()
        );
    }
    let store_url = location::store(&args.url)?;
    let store = env.open_store(&store_url).await?;
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
    let fs = Arc::new(Filesystem::new(writer, fs_config));
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

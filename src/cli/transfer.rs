//! `cp` and `cat`: moving bytes between local files, stdin/stdout and store objects.
//!
//! Reads are parallel ranged GETs of `--part-size` bytes, at most `--max-in-flight` at a time,
//! delivered in order (so memory stays bounded by their product) and checked against the ETag
//! the object had when the read began. Writes go through the recoverable writer (see `write`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use fs_core::retry::RetryPolicy;
use fs_core::store::{DynStore, ObjectMeta, ObjectStoreExt, StoreUrl};
use futures::{Stream, StreamExt};
use indicatif::ProgressBar;
use tokio::io::AsyncWriteExt;

use super::location::{self, has_scheme};
use super::output::{Usage, progress, stdout_error};
use super::write::{Session, interruptible, open_input};
use super::{Env, size};

/// `rivulet cp SRC DST`.
pub async fn cp(env: &Env, src: &str, dst: &str) -> Result<()> {
    match (has_scheme(src), has_scheme(dst)) {
        (false, false) => Err(Usage(format!(
            "neither '{src}' nor '{dst}' is a store object: in cp, store objects are URLs with a \
             scheme (s3://, file://, memory://); plain paths and - are local files"
        ))
        .into()),
        (false, true) => upload(env, src, dst).await,
        (true, false) => download(env, src, dst).await,
        (true, true) => copy_between(env, src, dst).await,
    }
}

/// A destination URL ending in `/` gets the source's name appended (like `aws s3 cp`).
fn object_destination(dst: &str, source_name: Option<&str>) -> Result<String> {
    if !location::ends_with_slash(dst) {
        return Ok(dst.to_string());
    }
    match source_name {
        Some(name) if !name.is_empty() => Ok(location::join_name(dst, name)),
        _ => Err(Usage(format!(
            "'{dst}' ends with '/': give the object's full key when copying from stdin"
        ))
        .into()),
    }
}

async fn upload(env: &Env, src: &str, dst: &str) -> Result<()> {
    let name = (src != "-")
        .then(|| Path::new(src).file_name().and_then(|n| n.to_str()))
        .flatten();
    let dst = object_destination(dst, name)?;
    let (url, key) = location::object(&dst)?;
    let (input, len) = open_input(src).await?;
    let session = Session::open(env, url).await?;
    let mut file = session.writer.open(&key).await?;
    let bar = progress(env.progress(), len, &format!("upload {key}"));
    let what = if src == "-" { "stdin" } else { src };
    let pumped = interruptible(session.pump(&mut file, input, what, &bar)).await;
    bar.finish_and_clear();
    if let Err(e) = pumped {
        session.abandon(file).await;
        return Err(e);
    }
    let outcome = session.finish(file).await?;
    env.say(format_args!(
        "copied {} ({}) to {key} in {}, ETag {}",
        size::human(outcome.size),
        outcome.size,
        session.url,
        outcome.etag
    ));
    Ok(())
}

async fn copy_between(env: &Env, src: &str, dst: &str) -> Result<()> {
    let (src_url, src_key) = location::object(src)?;
    let source = open_source(env, &src_url, &src_key).await?;
    let dst = object_destination(dst, Some(location::key_basename(&src_key)))?;
    let (dst_url, dst_key) = location::object(&dst)?;
    let session = Session::open(env, dst_url).await?;
    let mut file = session.writer.open(&dst_key).await?;
    let bar = progress(
        env.progress(),
        Some(source.meta.size),
        &format!("copy {dst_key}"),
    );
    let pumped = interruptible(session.pump_stream(&mut file, source.chunks(env), &bar)).await;
    bar.finish_and_clear();
    if let Err(e) = pumped {
        session.abandon(file).await;
        return Err(e);
    }
    let outcome = session.finish(file).await?;
    env.say(format_args!(
        "copied {} ({}) to {dst_key} in {}, ETag {}",
        size::human(outcome.size),
        outcome.size,
        session.url,
        outcome.etag
    ));
    Ok(())
}

/// An object being read: its store, key and the metadata it had when the read began.
struct Source {
    store: DynStore,
    retry: RetryPolicy,
    key: String,
    meta: ObjectMeta,
}

async fn open_source(env: &Env, url: &StoreUrl, key: &str) -> Result<Source> {
    let missing = || Env::no_such_object(url, key);
    let store = env.open_store_to_read(url).await?.ok_or_else(missing)?;
    let retry = env.retry_for(url);
    let Some(meta) = retry.run(|| store.head_opt(key)).await? else {
        return Err(env.missing_object(&store, url, key).await);
    };
    Ok(Source {
        store,
        retry,
        key: key.to_string(),
        meta,
    })
}

impl Source {
    /// The object's bytes in order, as parallel ranged GETs.
    fn chunks(&self, env: &Env) -> impl Stream<Item = Result<Bytes>> + use<> {
        let (size, part) = (self.meta.size, env.part_size());
        let ranges = (0..size.div_ceil(part)).map(move |i| i * part..((i + 1) * part).min(size));
        let (store, key, etag, retry) = (
            self.store.clone(),
            self.key.clone(),
            self.meta.etag.clone(),
            self.retry.clone(),
        );
        futures::stream::iter(ranges)
            .map(move |range| {
                let (store, key, etag, retry) = (store.clone(), key.clone(), etag.clone(), retry.clone());
                let task = tokio::spawn(async move {
                    let got = retry.run(|| store.get(&key, Some(range.clone()))).await?;
                    if got.meta.etag != etag {
                        bail!(
                            "the object changed while it was being read (ETag {etag}, then {})",
                            got.meta.etag
                        );
                    }
                    let expected = range.end - range.start;
                    if got.body.len() as u64 != expected {
                        bail!(
                            "short read at offset {}: got {} bytes, expected {expected} (did the object change?)",
                            range.start,
                            got.body.len()
                        );
                    }
                    Ok(got.body)
                });
                async move { task.await.context("a read task failed")? }
            })
            .buffered(env.max_in_flight())
    }
}

async fn download(env: &Env, src: &str, dst: &str) -> Result<()> {
    let (url, key) = location::object(src)?;
    let source = open_source(env, &url, &key).await?;
    if dst == "-" {
        return write_stdout(env, &source).await;
    }
    let target = local_target(dst, &key);
    let bar = progress(
        env.progress(),
        Some(source.meta.size),
        &format!("download {key}"),
    );
    let written = interruptible(write_local(env, &source, &target, &bar)).await;
    bar.finish_and_clear();
    written?;
    env.say(format_args!(
        "copied {key} ({}) to {}",
        size::human(source.meta.size),
        target.display()
    ));
    Ok(())
}

/// A local destination that is a directory (or ends with `/`) gets the key's last segment.
fn local_target(dst: &str, key: &str) -> PathBuf {
    let path = PathBuf::from(dst);
    if dst.ends_with('/') || path.is_dir() {
        path.join(location::key_basename(key))
    } else {
        path
    }
}

/// Downloads into a temporary file next to `target` and renames it into place, so `target`
/// never holds a partial download. Special files (`/dev/null`, FIFOs) are written directly.
async fn write_local(env: &Env, source: &Source, target: &Path, bar: &ProgressBar) -> Result<()> {
    let special = std::fs::metadata(target).is_ok_and(|m| !m.is_file());
    if special {
        let mut out = tokio::fs::OpenOptions::new()
            .write(true)
            .open(target)
            .await
            .with_context(|| format!("cannot open {}", target.display()))?;
        return copy_into(env, source, &mut out, bar, target).await;
    }
    let name = target
        .file_name()
        .ok_or_else(|| anyhow!("{} names no file", target.display()))?
        .to_string_lossy();
    if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.is_dir()
    {
        bail!(
            "the directory {} does not exist (cp creates the file, not its directories)",
            dir.display()
        );
    }
    remove_stale_temps(target, &name);
    let temp = target.with_file_name(format!(".{name}.rivulet-{}.tmp", std::process::id()));
    let result = async {
        let mut out = tokio::fs::File::create(&temp)
            .await
            .with_context(|| format!("cannot create {}", temp.display()))?;
        copy_into(env, source, &mut out, bar, target).await?;
        out.sync_all()
            .await
            .with_context(|| format!("cannot write {}", target.display()))?;
        drop(out);
        tokio::fs::rename(&temp, target)
            .await
            .with_context(|| format!("cannot rename {} to {}", temp.display(), target.display()))
    };
    // Removes the temporary file on failure, and on Ctrl-C (when this future is dropped).
    let guard = RemoveOnDrop(Some(temp.clone()));
    let result = result.await;
    if result.is_ok() {
        guard.disarm();
    }
    result
}

struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

async fn copy_into(
    env: &Env,
    source: &Source,
    out: &mut tokio::fs::File,
    bar: &ProgressBar,
    shown: &Path,
) -> Result<()> {
    let mut chunks = std::pin::pin!(source.chunks(env));
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        out.write_all(&chunk)
            .await
            .with_context(|| format!("cannot write {}", shown.display()))?;
        bar.inc(chunk.len() as u64);
    }
    out.flush()
        .await
        .with_context(|| format!("cannot write {}", shown.display()))
}

async fn write_stdout(env: &Env, source: &Source) -> Result<()> {
    let mut out = tokio::io::stdout();
    let mut chunks = std::pin::pin!(source.chunks(env));
    let copy = async {
        while let Some(chunk) = chunks.next().await {
            out.write_all(&chunk?).await.map_err(stdout_error)?;
        }
        out.flush().await.map_err(stdout_error)
    };
    interruptible(copy).await
}

/// `rivulet cat URL`.
pub async fn cat(env: &Env, url: &str) -> Result<()> {
    let (store_url, key) = location::object(url)?;
    let source = open_source(env, &store_url, &key).await?;
    write_stdout(env, &source).await
}

/// Removes the temporary files that earlier downloads to `target` left when they were killed
/// (`.NAME.rivulet-PID.tmp` of a process that is gone): each would otherwise stay, hidden, as
/// big as what it had received.
fn remove_stale_temps(target: &Path, name: &str) {
    let Some(dir) = target.parent() else { return };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let prefix = format!(".{name}.rivulet-");
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(pid) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|n| n.strip_suffix(".tmp"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !process_exists(pid) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Whether process `pid` exists; `true` where that cannot be known (nothing is then removed).
fn process_exists(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new("/proc").join(pid.to_string()).exists()
    } else {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_ending_in_a_slash_get_the_source_name() {
        assert_eq!(
            object_destination("s3://b/k", Some("x")).unwrap(),
            "s3://b/k"
        );
        assert_eq!(
            object_destination("s3://b/dir/", Some("x.txt")).unwrap(),
            "s3://b/dir/x.txt"
        );
        let err = object_destination("s3://b/dir/", None).unwrap_err();
        assert!(err.downcast_ref::<Usage>().is_some(), "{err}");
        assert_eq!(
            local_target("out/", "a/b/c.bin"),
            PathBuf::from("out/c.bin")
        );
        assert_eq!(
            local_target("/nonexistent-rivulet/f", "a/b"),
            PathBuf::from("/nonexistent-rivulet/f")
        );
        assert_eq!(
            local_target(&std::env::temp_dir().display().to_string(), "a/b"),
            std::env::temp_dir().join("b")
        );
    }
}

//! Writing objects through the recoverable writer: the session shared by `cp` (uploads),
//! `append` and `truncate`, and those two commands.

use std::future::Future;

use anyhow::{Context, Result, anyhow};
use bytes::{BufMut, Bytes, BytesMut};
use fs_core::store::{DynStore, ObjectStoreExt, StoreUrl};
use fs_core::{CommitOutcome, FileWriter, RecoverableWriter, WriterError};
use futures::{Stream, StreamExt};
use indicatif::ProgressBar;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};

use super::output::{chain, progress};
use super::size::TruncateLen;
use super::{Env, location};

/// The read buffer's size where the part size does not fit in `usize` (32-bit targets).
const READ_CHUNK: usize = 1 << 20;

/// Runs `fut` unless SIGINT (Ctrl-C) or SIGTERM comes first: then it is dropped, which
/// aborts what it started, and the result is [`Interrupted`].
pub async fn interruptible<T>(fut: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::select! {
        result = fut => result,
        signal = super::signals::stop_signal() => Err(signal.into()),
    }
}

/// A store opened for writing, with its writer service.
pub struct Session {
    pub url: StoreUrl,
    pub store: DynStore,
    pub writer: RecoverableWriter,
}

impl Session {
    pub async fn open(env: &Env, url: StoreUrl) -> Result<Self> {
        let store = env.open_store(&url).await?;
        let (writer, _index) = env.writer(&url, store.clone()).await?;
        Ok(Self { url, store, writer })
    }

    /// Appends everything `input` yields to `file`. The input is read into buffers of the
    /// part size, which the writer uploads as they are, without a copy (`write_bytes`).
    pub async fn pump(
        &self,
        file: &mut FileWriter,
        mut input: impl AsyncRead + Unpin,
        what: &str,
        bar: &ProgressBar,
    ) -> Result<u64> {
        let part_size = usize::try_from(self.writer.config().part_size).unwrap_or(READ_CHUNK);
        let mut buf = BytesMut::with_capacity(part_size);
        let mut total = 0u64;
        loop {
            let room = part_size - buf.len();
            let n = input
                .read_buf(&mut (&mut buf).limit(room))
                .await
                .with_context(|| format!("read {what}"))?;
            total += n as u64;
            bar.inc(n as u64);
            if n == 0 || buf.len() == part_size {
                file.write_bytes(buf.split().freeze()).await?;
                // The full buffer now belongs to the writer: read on into a new one.
                buf.reserve(part_size);
            }
            if n == 0 {
                return Ok(total);
            }
        }
    }

    /// Appends every chunk of `chunks` to `file`.
    pub async fn pump_stream(
        &self,
        file: &mut FileWriter,
        chunks: impl Stream<Item = Result<Bytes>>,
        bar: &ProgressBar,
    ) -> Result<u64> {
        let mut chunks = std::pin::pin!(chunks);
        let mut total = 0u64;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            let len = chunk.len() as u64;
            file.write_bytes(chunk).await?;
            total += len;
            bar.inc(len);
        }
        Ok(total)
    }

    /// Gives up a file that was never persisted: aborts its upload and forgets it in the index.
    pub async fn abandon(&self, file: FileWriter) {
        if let Err(e) = file.abort().await {
            tracing::warn!(error = %e, "could not abort the upload; `rivulet gc` will");
        }
    }

    async fn forget(&self, key: &str, upload: &str) {
        if let Err(e) = self.writer.abort_upload(key, upload).await {
            tracing::warn!(error = %e, "could not abort the upload; `rivulet gc` will");
        }
    }

    /// Closes and commits a file. If closing fails the upload is abandoned; if the commit finds
    /// the object changed under it the upload is aborted; if the commit fails otherwise (the store
    /// is unreachable) the closed upload stays in the index for `rivulet recover --commit`.
    pub async fn finish(&self, mut file: FileWriter) -> Result<CommitOutcome> {
        let committer = match file.close_for_commit().await {
            Ok(c) => c,
            Err(e) => {
                self.abandon(file).await;
                return Err(e.into());
            }
        };
        drop(file);
        match committer.commit().await {
            Ok(outcome) => Ok(outcome),
            // Refused for good (the object changed, or the key cannot hold it): a retry from
            // `recover --commit` would fail the same way, so the upload goes.
            Err(e) if e.is_permanent_commit_failure() => {
                let token = committer.token();
                self.forget(&token.key, &token.upload_id).await;
                let again = if matches!(e, WriterError::Commit { .. }) {
                    ": run the command again"
                } else {
                    ""
                };
                Err(anyhow!(
                    "{}; nothing was written (the upload was aborted){again}",
                    chain(&e.into())
                ))
            }
            Err(e) => Err(anyhow!(
                "{}; the closed upload is kept: `rivulet recover {} --commit` retries the commit",
                chain(&e.into()),
                self.url
            )),
        }
    }
}

/// Where input comes from: a local file or stdin.
pub async fn open_input(path: &str) -> Result<(Box<dyn AsyncRead + Unpin + Send>, Option<u64>)> {
    if path == "-" {
        return Ok((Box::new(tokio::io::stdin()), None));
    }
    let file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("cannot open {path}"))?;
    let meta = file
        .metadata()
        .await
        .with_context(|| format!("cannot read {path}"))?;
    if meta.is_dir() {
        anyhow::bail!("{path} is a directory");
    }
    let len = meta.is_file().then_some(meta.len());
    Ok((Box::new(file), len))
}

/// `rivulet append URL [FILE|-]`.
pub async fn append(env: &Env, url: &str, input_path: &str) -> Result<()> {
    let (store_url, key) = location::object(url)?;
    let (input, len) = open_input(input_path).await?;
    let what = if input_path == "-" {
        "stdin"
    } else {
        input_path
    };
    // Nothing to append leaves an existing object as it is: a new upload would copy all of it
    // server-side to give back the same bytes under a new ETag.
    let mut input = BufReader::new(input);
    let empty = match len {
        Some(len) => len == 0,
        None => {
            interruptible(async {
                let ahead = input.fill_buf().await;
                Ok(ahead.with_context(|| format!("read {what}"))?.is_empty())
            })
            .await?
        }
    };
    let session = Session::open(env, store_url).await?;
    if empty {
        let retry = env.retry_for(&session.url);
        if let Some(meta) = retry.run(|| session.store.head_opt(&key)).await? {
            env.say(format_args!(
                "nothing to append: {key} is unchanged ({} bytes, ETag {})",
                meta.size, meta.etag
            ));
            return Ok(());
        }
    }
    let mut file = session.writer.open_append(&key).await?;
    let start = file.len();
    let bar = progress(env.progress(), len, &format!("append {key}"));
    let pumped = interruptible(session.pump(&mut file, input, what, &bar)).await;
    bar.finish_and_clear();
    let appended = match pumped {
        Ok(n) => n,
        Err(e) => {
            session.abandon(file).await;
            return Err(e);
        }
    };
    let outcome = session.finish(file).await?;
    env.say(format_args!(
        "appended {appended} bytes to {key} ({start} -> {} bytes, ETag {})",
        outcome.size, outcome.etag
    ));
    Ok(())
}

/// `rivulet truncate URL LEN [--no-create]`.
pub async fn truncate(env: &Env, url: &str, len: TruncateLen, no_create: bool) -> Result<()> {
    let (store_url, key) = location::object(url)?;
    if no_create {
        let exists = match env.open_store_to_read(&store_url).await? {
            Some(store) => env
                .retry_for(&store_url)
                .run(|| store.head_opt(&key))
                .await?
                .is_some(),
            None => false,
        };
        if !exists {
            env.say(format_args!(
                "{key} does not exist; not created (--no-create)"
            ));
            return Ok(());
        }
    }
    let session = Session::open(env, store_url).await?;
    let existing = env
        .retry_for(&session.url)
        .run(|| session.store.head_opt(&key))
        .await?;
    let current = existing.as_ref().map_or(0, |meta| meta.size);
    let len = len.resolve(current).map_err(|e| anyhow!("{key}: {e}"))?;
    let file = match existing {
        Some(meta) if meta.size == len => {
            env.say(format_args!(
                "{key} is already {len} bytes; unchanged (ETag {})",
                meta.etag
            ));
            return Ok(());
        }
        // Keeps the first `len` bytes (server-side copies) or pads with zeros; commits only over
        // the version it copied.
        Some(_) => session.writer.open_truncate(&key, len).await?,
        None => {
            // Creates it: an append to a missing object commits only if it is still missing.
            let mut file = session.writer.open_append(&key).await?;
            let zeros =
                interruptible(async { file.truncate(len).await.map_err(anyhow::Error::from) })
                    .await;
            if let Err(e) = zeros {
                session.abandon(file).await;
                return Err(e);
            }
            file
        }
    };
    let outcome = session.finish(file).await?;
    env.say(format_args!(
        "{key} is now {} bytes (ETag {})",
        outcome.size, outcome.etag
    ));
    Ok(())
}

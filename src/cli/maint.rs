//! `gc` and `recover`: tidying a store, and finishing files after a crash.

use std::time::Duration;

use anyhow::{Context, Result};
use fs_core::index::IndexEntry;
use fs_core::writer::GcOptions;
use fs_core::{Index, RecoverableWriter, Token, WriterError};

use super::output::{Out, Reported, chain, report};
use super::{Env, location};

/// `rivulet gc STORE_URL [--dry-run] [--older-than DUR] [--all-uploads]`.
pub async fn gc(
    env: &Env,
    url: &str,
    dry_run: bool,
    older_than: Duration,
    all_uploads: bool,
) -> Result<()> {
    let store_url = location::store(url)?;
    let store = env.open_store(&store_url).await?;
    let (writer, _) = env.writer(&store_url, store).await?;
    let report = writer
        .gc(&GcOptions {
            older_than,
            dry_run,
            all_uploads,
        })
        .await?;
    let mut out = Out::new();
    let (abort, delete) = if dry_run {
        ("would abort", "would delete")
    } else {
        ("aborted", "deleted")
    };
    for (key, upload) in &report.aborted_uploads {
        out.line(format_args!("{abort} upload {key} (upload id {upload})"))?;
    }
    for tail in &report.deleted_tails {
        out.line(format_args!("{delete} tail {tail}"))?;
    }
    if let Some(why) = &report.uploads_not_listed {
        out.line(format_args!(
            "note: {store_url} cannot list multipart uploads ({why}): only tails were collected; \
             abort leftover uploads with the store's own tools or a lifecycle rule"
        ))?;
    }
    let (uploads, tails) = (report.aborted_uploads.len(), report.deleted_tails.len());
    out.line(format_args!(
        "{}{abort} {uploads} upload{}, {delete} {tails} tail{} (older than {})",
        if dry_run { "dry run: " } else { "" },
        plural(uploads),
        plural(tails),
        humantime::format_duration(older_than)
    ))?;
    out.flush()
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

async fn entries(index: &Index, store_name: &str) -> Result<Vec<IndexEntry>> {
    let (index, name) = (index.clone(), store_name.to_string());
    Ok(tokio::task::spawn_blocking(move || index.entries(&name))
        .await
        .context("reading the index failed")??)
}

/// What an entry's latest token says: its kind and the file's length at that point.
fn describe(entry: &IndexEntry) -> (&'static str, String) {
    match &entry.latest {
        Some(Token::Resume(t)) => ("resume", t.len().to_string()),
        Some(Token::Commit(t)) => ("commit", t.len().to_string()),
        None => ("none", "-".to_string()),
    }
}

/// What `rivulet recover` does with the open uploads it lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// Only list them.
    List,
    /// Commit each at its last token.
    Commit,
    /// Abort each: nothing is published (a cancelled job's files in progress, a copy not wanted).
    Abort,
}

/// `rivulet recover STORE_URL [--commit | --abort] [--prefix P] [--rebuild-index]`.
pub async fn recover(
    env: &Env,
    url: &str,
    action: Finish,
    prefix: Option<&str>,
    rebuild_index: bool,
) -> Result<()> {
    let store_url = location::store(url)?;
    let store = env.open_store(&store_url).await?;
    let store_name = store.describe();
    let (writer, index) = env.writer(&store_url, store).await?;
    let mut out = Out::new();
    if rebuild_index {
        let rebuilt = writer
            .rebuild_index()
            .await
            .context("rebuilding the index failed")?;
        out.line(format_args!(
            "rebuilt the index from {store_url}: {} upload{} restored, {} stale tail group{} left for gc",
            rebuilt.restored.len(),
            plural(rebuilt.restored.len()),
            rebuilt.stale_tail_groups,
            plural(rebuilt.stale_tail_groups)
        ))?;
        for (key, upload) in &rebuilt.untracked_uploads {
            out.line(format_args!(
                "upload {upload} of {key} never persisted: nothing can resume it ('rivulet gc --all-uploads' aborts it)"
            ))?;
        }
        if let Some(why) = &rebuilt.uploads_not_listed {
            out.line(format_args!(
                "uploads without tails were not looked for: the store cannot list uploads ({why})"
            ))?;
        }
    }
    let mut entries = entries(&index, &store_name).await?;
    entries.retain(|e| prefix.is_none_or(|p| e.key.starts_with(p)));
    entries.sort_by(|a, b| (&a.key, a.opened_at).cmp(&(&b.key, b.opened_at)));
    if entries.is_empty() {
        let under = prefix.map(|p| format!(" under '{p}'")).unwrap_or_default();
        out.line(format_args!(
            "no open uploads{under} for {store_url} in the index {}",
            index.path()
        ))?;
        return out.flush();
    }
    let key_width = entries
        .iter()
        .map(|e| e.key.len())
        .max()
        .unwrap_or(3)
        .max(3);
    out.line(format_args!(
        "{:<6}  {:>14}  {:<key_width$}  UPLOAD ID",
        "TOKEN", "LENGTH", "KEY"
    ))?;
    for entry in &entries {
        let (kind, len) = describe(entry);
        out.line(format_args!(
            "{kind:<6}  {len:>14}  {:<key_width$}  {}",
            entry.key, entry.upload_id
        ))?;
    }
    if action == Finish::List {
        return out.flush();
    }
    out.flush()?;
    let mut failed = false;
    for entry in &entries {
        let done = if action == Finish::Abort {
            writer
                .abort_upload(&entry.key, &entry.upload_id)
                .await
                .map(|()| None)
                .map_err(anyhow::Error::from)
        } else {
            // `Some(None)`: never persisted, skipped (`None` means aborted).
            finish(&writer, entry).await.map(Some)
        };
        match done {
            Ok(None) => out.line(format_args!("aborted {}", entry.key))?,
            Ok(Some(Some(size))) => {
                out.line(format_args!("committed {} ({size} bytes)", entry.key))?
            }
            Ok(Some(None)) => out.line(format_args!(
                "skipped {}: never persisted, nothing to resume (gc aborts it)",
                entry.key
            ))?,
            Err(e) => {
                out.flush()?;
                // A commit the key can never take fails the same way on every retry.
                let hopeless = e
                    .downcast_ref::<WriterError>()
                    .is_some_and(WriterError::is_permanent_commit_failure);
                let e = if hopeless && action == Finish::Commit {
                    anyhow::anyhow!(
                        "{}; retrying cannot help: `rivulet recover {url} --abort --prefix '{}'` \
                         drops the upload",
                        chain(&e),
                        entry.key
                    )
                } else {
                    e
                };
                report(&format!("recover {url}: {}", entry.key), &e);
                failed = true;
            }
        }
    }
    out.flush()?;
    if failed { Err(Reported.into()) } else { Ok(()) }
}

/// Commits one open upload at its last token; `None` when it has no token.
async fn finish(writer: &RecoverableWriter, entry: &IndexEntry) -> Result<Option<u64>> {
    let outcome = match &entry.latest {
        None => return Ok(None),
        Some(Token::Resume(token)) => {
            let mut file = writer.recover(token).await?;
            file.close_for_commit().await?.commit().await?
        }
        Some(Token::Commit(token)) => writer.recover_for_commit(token).commit().await?,
    };
    Ok(Some(outcome.size))
}

//! `gc` and `recover`: tidying a store, and finishing files after a crash.

use std::time::Duration;

use anyhow::{Context, Result};
use fs_core::index::IndexEntry;
use fs_core::store::local::LocalStore;
use fs_core::store::{DynStore, StoreUrl};
use fs_core::writer::GcOptions;
use fs_core::{Index, RecoverableWriter, Token, WriterError};

use super::output::{Out, Reported, chain, report};
use super::{Env, location, size};

/// `rivulet gc STORE_URL [--dry-run] [--older-than DUR] [--all-uploads]`.
pub async fn gc(
    env: &Env,
    url: &str,
    dry_run: bool,
    older_than: Duration,
    all_uploads: bool,
) -> Result<()> {
    let store_url = location::store(url)?;
    let store = open(env, &store_url, !dry_run).await?;
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
    let temp_files = local_temp_files(&store_url, older_than, dry_run)?;
    for (path, bytes) in &temp_files {
        out.line(format_args!(
            "{delete} temporary file {} ({})",
            path.display(),
            size::human(*bytes)
        ))?;
    }
    if let Some(why) = &report.uploads_not_listed {
        out.line(format_args!(
            "note: {store_url} cannot list multipart uploads ({why}): only tails were collected; \
             abort leftover uploads with the store's own tools or a lifecycle rule"
        ))?;
    }
    let (uploads, tails) = (report.aborted_uploads.len(), report.deleted_tails.len());
    let temps = if temp_files.is_empty() {
        String::new()
    } else {
        format!(
            " and {} temporary file{}",
            temp_files.len(),
            plural(temp_files.len())
        )
    };
    out.line(format_args!(
        "{}{abort} {uploads} upload{}, {delete} {tails} tail{}{temps} (older than {})",
        if dry_run { "dry run: " } else { "" },
        plural(uploads),
        plural(tails),
        humantime::format_duration(older_than)
    ))?;
    out.flush()
}

/// Opens the store `gc` or `recover` works on. One they only look at (a dry run, a listing) is
/// opened read-only, as is a local directory that is no store yet: nothing there to collect or
/// finish, and opening it to write would make it a store's root (which changes where later
/// paths below it belong).
async fn open(env: &Env, url: &StoreUrl, changes: bool) -> Result<DynStore> {
    let is_store = match url {
        StoreUrl::Local(root) => root.join(location::LOCAL_STATE_DIR).is_dir(),
        _ => true,
    };
    if changes && is_store {
        return env.open_store(url).await;
    }
    env.open_store_to_read(url)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no such directory {url}"))
}

/// A local store's temporary files left by killed processes (not written for `older_than`).
fn local_temp_files(
    url: &StoreUrl,
    older_than: Duration,
    dry_run: bool,
) -> Result<Vec<(std::path::PathBuf, u64)>> {
    let StoreUrl::Local(root) = url else {
        return Ok(Vec::new());
    };
    if !root.join(location::LOCAL_STATE_DIR).is_dir() {
        return Ok(Vec::new());
    }
    let store = if dry_run {
        LocalStore::open_for_reading(root)?
    } else {
        LocalStore::open(root)?
    };
    Ok(store.collect_temp_files(older_than, dry_run))
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

/// Which open uploads `rivulet recover` takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keys {
    All,
    /// `--prefix P`: the keys that start with P.
    Prefix(String),
    /// `--key K`: exactly K.
    Exact(String),
}

impl Keys {
    fn take(&self, key: &str) -> bool {
        match self {
            Keys::All => true,
            Keys::Prefix(p) => key.starts_with(p.as_str()),
            Keys::Exact(k) => key == k,
        }
    }

    fn describe(&self) -> String {
        match self {
            Keys::All => String::new(),
            Keys::Prefix(p) => format!(" under '{p}'"),
            Keys::Exact(k) => format!(" of '{k}'"),
        }
    }
}

/// `rivulet recover STORE_URL [--commit | --abort] [--prefix P | --key K] [--rebuild-index]`.
pub async fn recover(
    env: &Env,
    url: &str,
    action: Finish,
    keys: &Keys,
    rebuild_index: bool,
) -> Result<()> {
    let store_url = location::store(url)?;
    let store = open(env, &store_url, action != Finish::List).await?;
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
    entries.retain(|e| keys.take(&e.key));
    entries.sort_by(|a, b| (&a.key, a.opened_at).cmp(&(&b.key, b.opened_at)));
    // The same bucket opened another way (`s3://bkt` and `s3://bkt/logs`) is another store in
    // the index: its uploads are only finished through that opening, so say where they are.
    for (other, count) in other_openings(&index, &store_name).await? {
        let other_url = location::reopened(&store_url, &other)
            .map_or_else(|| other.clone(), |u| shell_quote(&u.to_string()));
        out.line(format_args!(
            "note: {count} open upload{} of this bucket or directory are in the index under the \
             store {other}: see them with `rivulet recover {other_url}`",
            plural(count)
        ))?;
    }
    if entries.is_empty() {
        out.line(format_args!(
            "no open uploads{} for {store_url} in the index {}",
            keys.describe(),
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
                        "{}; retrying cannot help: `rivulet recover {} --abort --key {}` drops \
                         the upload",
                        chain(&e),
                        shell_quote(url),
                        shell_quote(&entry.key)
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

/// The stores in the index that are another opening of `store_name`'s bucket or directory
/// (one encloses the other), with how many open uploads each holds that lie inside
/// `store_name`'s view, or, for a store inside it, all of them.
async fn other_openings(index: &Index, store_name: &str) -> Result<Vec<(String, usize)>> {
    let index = index.clone();
    let every = tokio::task::spawn_blocking(move || index.all_entries())
        .await
        .context("reading the index failed")??;
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for e in &every {
        let inside = if let Some(rest) = store_name.strip_prefix(&format!("{}/", e.store)) {
            // An enclosing store: only its keys under this store's prefix.
            e.key.starts_with(&format!("{rest}/"))
        } else {
            e.store.starts_with(&format!("{store_name}/"))
        };
        if inside {
            *counts.entry(e.store.clone()).or_default() += 1;
        }
    }
    Ok(counts.into_iter().collect())
}

/// `s` as one shell word: as it is when it holds nothing a shell would read, else in single
/// quotes.
fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggested_commands_paste_as_one_shell_word() {
        assert_eq!(shell_quote("s3://bkt/a.bin"), "s3://bkt/a.bin");
        assert_eq!(
            shell_quote("s3://bkt?endpoint=http://h:1&region=r"),
            "'s3://bkt?endpoint=http://h:1&region=r'"
        );
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[tokio::test]
    async fn other_openings_of_a_bucket_are_found_both_ways() {
        let index = Index::temporary().unwrap();
        index.record_open("s3://bkt", "logs/a.bin", "u1").unwrap();
        index.record_open("s3://bkt", "other/b.bin", "u2").unwrap();
        index
            .record_open("s3://bkt/logs/deep", "c.bin", "u3")
            .unwrap();
        index.record_open("s3://bkt2", "logs/d.bin", "u4").unwrap();
        let found = other_openings(&index, "s3://bkt/logs").await.unwrap();
        assert_eq!(
            found,
            [
                ("s3://bkt".to_string(), 1),
                ("s3://bkt/logs/deep".to_string(), 1)
            ]
        );
        let from_root = other_openings(&index, "s3://bkt").await.unwrap();
        assert_eq!(from_root, [("s3://bkt/logs/deep".to_string(), 1)]);
    }
}

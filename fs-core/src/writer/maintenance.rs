//! Keeping the store and the index tidy: deleting the tails of finished uploads, garbage
//! collection of what nothing references, and rebuilding a lost index from the store.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, SystemTime};

use super::{Shared, WriterError, tail};
use crate::error::StoreErrorKind;
use crate::store::{ObjectStoreExt, ObjectSummary, UploadInfo};
use crate::token::Token;

/// What `gc` may remove.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Only what is older than this (protects writers in other processes that are mid-way).
    pub older_than: Duration,
    /// List what would be removed, remove nothing.
    pub dry_run: bool,
    /// Also abort unreferenced uploads that Rivulet did not stage tails for (uploads of other
    /// tools, or Rivulet uploads that crashed before their first persist).
    pub all_uploads: bool,
}

impl Default for GcOptions {
    fn default() -> Self {
        Self {
            older_than: Duration::from_secs(24 * 3600),
            dry_run: false,
            all_uploads: false,
        }
    }
}

/// What `gc` removed (or, in a dry run, would remove).
#[derive(Debug, Clone, Default)]
pub struct GcReport {
    /// `(key, upload id)` of aborted uploads.
    pub aborted_uploads: Vec<(String, String)>,
    pub deleted_tails: Vec<String>,
    /// Set when the store cannot list uploads (s3s-fs): only tails were collected.
    pub uploads_not_listed: Option<String>,
}

/// What `rebuild_index` found.
#[derive(Debug, Clone, Default)]
pub struct RebuildReport {
    /// `(key, upload id)` of uploads restored into the index with their latest token.
    pub restored: Vec<(String, String)>,
    /// Tail groups whose upload no longer exists (left for gc).
    pub stale_tail_groups: usize,
    /// `(key, upload id)` of uploads in the store with no tail: they never persisted (or are
    /// not Rivulet's), so no token can resume them. Not put in the index; `gc --all-uploads`
    /// aborts them once they are past the grace period.
    pub untracked_uploads: Vec<(String, String)>,
    /// Set when the store cannot list uploads (s3s-fs): each tail group's upload was checked
    /// with ListParts instead, and uploads without tails could not be found.
    pub uploads_not_listed: Option<String>,
}

fn older_than(time: Option<SystemTime>, age: Duration) -> bool {
    time.and_then(|t| t.elapsed().ok())
        .is_some_and(|elapsed| elapsed >= age)
}

/// Which tails of a finished upload to look for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TailsToDelete {
    /// The tails the index knows when it knows any (this process staged them all), else the
    /// listed ones: a commit of the file this process wrote, where a listing would be one more
    /// request per file.
    Known,
    /// The known tails and the listed ones. For an upload this process took over from a token
    /// or aborts (a cancel, gc, `rivulet recover --abort`): the process that wrote it, a task
    /// manager since lost for instance, may have staged tails after that token.
    All,
}

/// Deletes the tails of an upload that is gone; failures are logged, since gc catches
/// leftovers.
pub(crate) async fn delete_upload_tails(shared: &Shared, upload_id: &str, which: TailsToDelete) {
    let store = &shared.store;
    let (index, name, upload) = (
        shared.index.clone(),
        shared.store_name.clone(),
        upload_id.to_string(),
    );
    let known = tokio::task::spawn_blocking(move || index.get(&name, &upload)).await;
    let mut tails: BTreeSet<String> = match known {
        Ok(Ok(Some(entry))) => entry.live_tails.into_iter().collect(),
        _ => BTreeSet::new(),
    };
    if tails.is_empty() || which == TailsToDelete::All {
        let dir = tail::tail_dir(&shared.config.tail_prefix, upload_id);
        match shared.config.retry.run(|| store.list_all(&dir)).await {
            Ok(found) => tails.extend(found.into_iter().map(|t| t.key)),
            Err(e) => tracing::warn!(error = %e, "could not list tails to delete; gc will"),
        }
    }
    let tails: Vec<String> = tails.into_iter().collect();
    for batch in tails.chunks(1000) {
        if let Err(e) = shared.config.retry.run(|| store.delete_many(batch)).await {
            tracing::warn!(error = %e, "could not delete tails; gc will");
        }
    }
}

pub(crate) async fn abort_upload(
    shared: &Shared,
    key: &str,
    upload_id: &str,
) -> Result<(), WriterError> {
    let store = &shared.store;
    match shared
        .config
        .retry
        .run(|| store.abort_multipart(key, upload_id))
        .await
    {
        Ok(()) => {}
        Err(e) if e.kind() == StoreErrorKind::NoSuchUpload => {}
        Err(e) => return Err(e.into()),
    }
    delete_upload_tails(shared, upload_id, TailsToDelete::All).await;
    // Parts a crashed process cached for this upload are worthless now.
    super::cache::remove_upload_dir(&shared.config.cache_dir, upload_id);
    let upload = upload_id.to_string();
    shared.index_update(move |i, s| i.remove(s, &upload)).await
}

async fn all_uploads(shared: &Shared) -> Result<Vec<UploadInfo>, crate::error::StoreError> {
    let store = &shared.store;
    shared.config.retry.run(|| store.list_all_uploads("")).await
}

/// Tails grouped by their upload folder.
async fn tail_groups(shared: &Shared) -> Result<BTreeMap<String, Vec<ObjectSummary>>, WriterError> {
    let prefix = &shared.config.tail_prefix;
    let store = &shared.store;
    let tails = shared.config.retry.run(|| store.list_all(prefix)).await?;
    let mut groups: BTreeMap<String, Vec<ObjectSummary>> = BTreeMap::new();
    for t in tails {
        let rest = &t.key[prefix.len()..];
        if let Some((group, _)) = rest.split_once('/') {
            groups.entry(group.to_string()).or_default().push(t);
        }
    }
    Ok(groups)
}

pub(crate) async fn gc(shared: &Shared, opts: &GcOptions) -> Result<GcReport, WriterError> {
    let index = shared.index.clone();
    let every = tokio::task::spawn_blocking(move || index.all_entries())
        .await
        .map_err(|e| WriterError::Config(format!("index task failed: {e}")))??;
    // Any entry protects its upload, whichever store it was recorded under: the same upload is
    // also listed through another opening of its bucket (a gc of `s3://bkt/logs` sees the
    // uploads a writer of `s3://bkt` has open under `logs/`).
    let live_uploads: HashSet<String> = every.iter().map(|e| e.upload_id.clone()).collect();
    let live_groups: HashSet<String> = every
        .iter()
        .map(|e| tail::upload_hash(&e.upload_id))
        .collect();
    let entries: Vec<_> = every
        .into_iter()
        .filter(|e| e.store == shared.store_name)
        .collect();
    let mut report = GcReport::default();

    let groups = tail_groups(shared).await?;
    for (group, tails) in &groups {
        if live_groups.contains(group) {
            continue;
        }
        for t in tails {
            if older_than(t.last_modified, opts.older_than) {
                report.deleted_tails.push(t.key.clone());
            }
        }
    }

    match all_uploads(shared).await {
        Ok(uploads) => {
            for u in uploads {
                if live_uploads.contains(&u.upload_id) || !older_than(u.initiated, opts.older_than)
                {
                    continue;
                }
                let has_tails = groups.contains_key(&tail::upload_hash(&u.upload_id));
                if has_tails || opts.all_uploads {
                    report.aborted_uploads.push((u.key, u.upload_id));
                }
            }
        }
        Err(e) if e.kind() == StoreErrorKind::NotSupported => {
            report.uploads_not_listed = Some(e.to_string());
        }
        Err(e) => return Err(e.into()),
    }
    // Uploads the index knows that never persisted and are older than the grace period are
    // leftovers of crashed writers: nothing can resume them.
    for e in &entries {
        let opened = SystemTime::UNIX_EPOCH + Duration::from_secs(e.opened_at);
        if e.latest.is_none() && older_than(Some(opened), opts.older_than) {
            report
                .aborted_uploads
                .push((e.key.clone(), e.upload_id.clone()));
        }
    }

    if opts.dry_run {
        return Ok(report);
    }
    let store = &shared.store;
    for t in &report.deleted_tails {
        shared.config.retry.run(|| store.delete(t)).await?;
    }
    for (key, upload) in &report.aborted_uploads {
        abort_upload(shared, key, upload).await?;
    }
    Ok(report)
}

pub(crate) async fn rebuild_index(shared: &Shared) -> Result<RebuildReport, WriterError> {
    let mut report = RebuildReport::default();
    let store = &shared.store;
    // Tails first, then uploads: an upload completed between the two listings then counts as
    // stale (it is done), never as restored.
    let groups = tail_groups(shared).await?;
    let uploads = match all_uploads(shared).await {
        Ok(uploads) => Some(uploads),
        Err(e) if e.kind() == StoreErrorKind::NotSupported => {
            report.uploads_not_listed = Some(e.to_string());
            None
        }
        Err(e) => return Err(e.into()),
    };
    let listed_ids: Option<HashSet<&str>> = uploads
        .as_ref()
        .map(|u| u.iter().map(|u| u.upload_id.as_str()).collect());
    for mut tails in groups.values().cloned() {
        // The newest persist is the last one written (two writers recovered from one token can
        // share a sequence number, so time decides, then the key).
        tails.sort_by(|a, b| (a.last_modified, &a.key).cmp(&(b.last_modified, &b.key)));
        let Some(newest) = tails.last() else { continue };
        let got = shared
            .config
            .retry
            .run(|| store.get(&newest.key, None))
            .await?;
        let Ok((_, token)) = tail::decode(&got.body) else {
            tracing::warn!(key = %newest.key, "skipping an unreadable tail object");
            continue;
        };
        let upload_exists = match &listed_ids {
            Some(ids) => ids.contains(token.upload_id.as_str()),
            // Some servers (s3s-fs) list the parts of any upload id, even one long completed,
            // so the token's parts must also be there.
            None => match super::listed_parts(shared, &token.key, &token.upload_id).await {
                Ok(listed) => token.parts.iter().all(|p| {
                    listed
                        .iter()
                        .any(|l| l.number == p.number && l.size == p.size)
                }),
                Err(e) if e.kind() == StoreErrorKind::NoSuchUpload => false,
                Err(e) => return Err(e.into()),
            },
        };
        if !upload_exists {
            report.stale_tail_groups += 1;
            continue;
        }
        let tail_keys: Vec<String> = tails.iter().map(|t| t.key.clone()).collect();
        let (key, upload) = (token.key.clone(), token.upload_id.clone());
        report.restored.push((key.clone(), upload.clone()));
        let recorded = Token::Resume(token);
        shared
            .index_update(move |i, s| {
                if i.get(s, &upload)?.is_none() {
                    i.record_open(s, &key, &upload)?;
                }
                i.record_token(s, &recorded)?;
                // Every tail still in the store may back a token someone kept: all stay live.
                i.add_live_tails(s, &upload, &tail_keys)
            })
            .await?;
    }
    for u in uploads.into_iter().flatten() {
        if !groups.contains_key(&tail::upload_hash(&u.upload_id)) {
            report.untracked_uploads.push((u.key, u.upload_id));
        }
    }
    Ok(report)
}

//! Completing a closed file's upload, atomically and idempotently.
//!
//! S3's CompleteMultipartUpload makes the object appear whole or not at all. What needs care is
//! a commit that is retried (an answer lost in a timeout, a process that crashed after
//! completing but before recording it): the upload is gone then, and a conditional complete
//! may fail against our own object. So on `NoSuchUpload` or `PreconditionFailed` the committer
//! checks ownership itself: the object must exist with the token's size and carry this
//! writer's id (or, on stores that drop metadata, the multipart ETag of the token's parts).
//! Flink accepts any object of the right length; a replaced object is an error here.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::cache::{self, CachedParts};
use super::{Shared, WRITER_ID_METADATA, WriterError, maintenance};
use crate::error::StoreErrorKind;
use crate::store::{CompletedPart, ObjectStoreExt, PutCondition, PutOptions, rules};
use crate::token::CommitToken;

/// What a successful commit produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitOutcome {
    pub key: String,
    pub size: u64,
    pub etag: String,
    /// True when the object had already been committed by an earlier call.
    pub already_committed: bool,
}

/// Completes one file's upload. Cheap to clone; every method may be called any number of
/// times, in any process that has the token.
#[derive(Clone)]
pub struct Committer {
    shared: Arc<Shared>,
    token: CommitToken,
    /// The writer's part files, when it was closed with
    /// [`close_for_commit_keeping_cache`](super::FileWriter::close_for_commit_keeping_cache):
    /// shared by the clones, taken by the first successful commit, deleted with the last clone
    /// otherwise.
    kept: Option<Arc<Mutex<Option<CachedParts>>>>,
    /// Made from a token (`recover_for_commit`), or by closing a file this process resumed
    /// from one: a process that wrote the file before may have staged tails this index does
    /// not know.
    from_token: bool,
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer")
            .field("token", &self.token)
            .finish()
    }
}

impl Committer {
    pub(crate) fn new(shared: Arc<Shared>, token: CommitToken) -> Self {
        Self {
            shared,
            token,
            kept: None,
            from_token: false,
        }
    }

    pub(crate) fn with_cache(shared: Arc<Shared>, token: CommitToken, kept: CachedParts) -> Self {
        Self {
            kept: Some(Arc::new(Mutex::new(Some(kept)))),
            ..Self::new(shared, token)
        }
    }

    /// Marks a committer made from a token (`recover_for_commit`), or for a file that was
    /// resumed from one before it was closed.
    pub(crate) fn resumed(self, resumed: bool) -> Self {
        Self {
            from_token: self.from_token || resumed,
            ..self
        }
    }

    fn take_kept(&self) -> CachedParts {
        self.kept
            .as_ref()
            .and_then(|k| k.lock().unwrap_or_else(|e| e.into_inner()).take())
            .unwrap_or_default()
    }

    /// The token that lets another process finish this commit.
    pub fn token(&self) -> &CommitToken {
        &self.token
    }

    /// Publishes the file: the object appears whole, atomically. Idempotent.
    pub async fn commit(&self) -> Result<CommitOutcome, WriterError> {
        let outcome = self.publish().await?;
        // Nobody asked for the part files: they go now rather than with the last clone.
        drop(self.take_kept());
        Ok(outcome)
    }

    /// [`commit`](Self::commit), handing over the part files the writer cached when it was
    /// closed with
    /// [`close_for_commit_keeping_cache`](super::FileWriter::close_for_commit_keeping_cache)
    /// (none otherwise, and none to a second successful call). They hold the bytes of the
    /// object whose ETag the outcome gives. On failure they stay with the committer, for a
    /// retry, and are deleted with it.
    pub async fn commit_keeping_cache(&self) -> Result<(CommitOutcome, CachedParts), WriterError> {
        let outcome = self.publish().await?;
        Ok((outcome, self.take_kept()))
    }

    async fn publish(&self) -> Result<CommitOutcome, WriterError> {
        let outcome = if self.token.parts.is_empty() {
            self.commit_empty().await?
        } else {
            self.complete().await?
        };
        self.forget_upload().await?;
        Ok(outcome)
    }

    /// Flink's name for a commit after a restore: it first checks whether this token's object
    /// was already published (some servers, moto among them, accept a second complete of a
    /// completed upload, so asking the store to complete again would prove nothing), then
    /// commits. It fails if the object was replaced since.
    pub async fn commit_after_recovery(&self) -> Result<CommitOutcome, WriterError> {
        let t = &self.token;
        let store = &self.shared.store;
        if let Some(meta) = self
            .shared
            .config
            .retry
            .run(|| store.head_opt(&t.key))
            .await?
            && self.is_ours(&meta)
        {
            self.forget_upload().await?;
            return Ok(CommitOutcome {
                key: t.key.clone(),
                size: meta.size,
                etag: meta.etag,
                already_committed: true,
            });
        }
        self.commit().await
    }

    /// Abandons the closed file instead of committing it: aborts the upload, deletes its tails
    /// and forgets it in the index.
    pub async fn abort(&self) -> Result<(), WriterError> {
        drop(self.take_kept());
        maintenance::abort_upload(&self.shared, &self.token.key, &self.token.upload_id).await
    }

    /// The upload is gone: no token of it can be resumed any more, so its tails, its index
    /// entry and its local part cache go too.
    async fn forget_upload(&self) -> Result<(), WriterError> {
        self.shared.activity.forget(&self.token.upload_id);
        if self.kept.is_none() {
            // A committer made from a token: a process that crashed after closing the file
            // with its cache kept may have left the upload's cache directory behind.
            cache::remove_upload_dir(&self.shared.config.cache_dir, &self.token.upload_id);
        }
        let tails = if self.from_token {
            maintenance::TailsToDelete::All
        } else {
            maintenance::TailsToDelete::Known
        };
        maintenance::delete_upload_tails(&self.shared, &self.token.upload_id, tails).await;
        let upload = self.token.upload_id.clone();
        self.shared
            .index_update(move |i, s| i.remove(s, &upload))
            .await
    }

    /// Whether `meta` is this token's committed object: the same size and the multipart ETag
    /// of the token's parts. The writer id in the object's metadata is no proof: writers
    /// recovered from one token share it (and the upload) while writing different parts. Only
    /// where the ETag cannot tell does the id decide: an empty file (every empty object has the
    /// same ETag), or parts whose ETags the token does not know (an index rebuilt from a store
    /// that lists parts without them).
    fn is_ours(&self, meta: &crate::store::ObjectMeta) -> bool {
        let t = &self.token;
        if meta.size != t.len() {
            return false;
        }
        let ours_by_id = || meta.metadata.get(WRITER_ID_METADATA) == Some(&t.writer_id);
        if t.parts.is_empty() || t.parts.iter().any(|p| p.etag.is_empty()) {
            return ours_by_id();
        }
        rules::multipart_etag(t.parts.iter().map(|p| p.etag.as_str())).as_deref()
            == Some(meta.etag.as_str())
    }

    /// Checks a conditional commit's condition (`If-Match` of appends and truncates,
    /// `If-None-Match` of new files that must not replace one, as the engine's part files) against
    /// the object before completing. CompleteMultipartUpload carries the condition too, but
    /// S3-compatible servers that ignore it there exist (moto and s3s-fs do): without this check,
    /// an append that overlapped another append of the same key would replace it silently. It
    /// narrows the window to the time between the HEAD and the completion; only a server that
    /// enforces the condition closes it. Where the object no longer fits the condition, it may
    /// be this commit's own (a retry after a lost answer), which `verify_committed` tells. It
    /// costs one HEAD per conditional commit; stores that enforce conditions skip it.
    async fn condition_holds(&self) -> Result<Option<CommitOutcome>, WriterError> {
        let t = &self.token;
        let store = &self.shared.store;
        if matches!(t.condition, PutCondition::None) || store.enforces_complete_conditions() {
            return Ok(None);
        }
        let current = self
            .shared
            .config
            .retry
            .run(|| store.head_opt(&t.key))
            .await?;
        let why = match (&t.condition, &current) {
            (PutCondition::IfMatch(etag), Some(meta)) if &meta.etag == etag => return Ok(None),
            (PutCondition::IfNoneMatch, None) => return Ok(None),
            (PutCondition::IfMatch(etag), Some(meta)) => format!(
                "checked before completing: the object's ETag is {}, not {etag}",
                meta.etag
            ),
            (PutCondition::IfMatch(_), None) => {
                "checked before completing: the object was deleted".to_string()
            }
            _ => "checked before completing: the object was created meanwhile".to_string(),
        };
        self.verify_committed(&why).await.map(Some)
    }

    async fn complete(&self) -> Result<CommitOutcome, WriterError> {
        if let Some(done) = self.condition_holds().await? {
            return Ok(done);
        }
        let t = &self.token;
        let parts: Vec<CompletedPart> = t
            .parts
            .iter()
            .map(|p| CompletedPart {
                number: p.number,
                etag: p.etag.clone(),
            })
            .collect();
        let store = &self.shared.store;
        let result = self
            .shared
            .config
            .retry
            .run(|| store.complete_multipart(&t.key, &t.upload_id, &parts, t.condition.clone()))
            .await;
        match result {
            Ok(put) => Ok(CommitOutcome {
                key: t.key.clone(),
                size: t.len(),
                etag: put.etag,
                already_committed: false,
            }),
            Err(e)
                if matches!(
                    e.kind(),
                    StoreErrorKind::NoSuchUpload
                        | StoreErrorKind::PreconditionFailed
                        | StoreErrorKind::NotFound
                ) =>
            {
                self.verify_committed(&e.to_string()).await
            }
            // s3s-fs answers 403 for an upload that no longer exists: it may be ours, done.
            Err(e) if e.kind() == StoreErrorKind::AccessDenied => self
                .verify_committed(&e.to_string())
                .await
                .map_err(|_| e.into()),
            Err(e) => Err(e.into()),
        }
    }

    /// An empty file: S3 cannot complete an upload without parts, so it is a PUT of an empty
    /// object (under the same condition) and the upload is aborted.
    async fn commit_empty(&self) -> Result<CommitOutcome, WriterError> {
        let t = &self.token;
        // The upload is aborted right after the PUT: if it is gone, this commit already ran,
        // and a second PUT could overwrite a newer object.
        match super::listed_parts(&self.shared, &t.key, &t.upload_id).await {
            Err(e) if e.kind() == StoreErrorKind::NoSuchUpload => {
                return self.verify_committed("the upload is gone").await;
            }
            Err(e) => return Err(e.into()),
            Ok(_) => {}
        }
        let store = &self.shared.store;
        // An append or truncate keeps its source's Content-Type and metadata (see
        // `new_upload`); a commit through a PUT finds them on the source it replaces.
        let mut opts = match &t.condition {
            PutCondition::IfMatch(etag) => match self
                .shared
                .config
                .retry
                .run(|| store.head_opt(&t.key))
                .await?
            {
                Some(source) if &source.etag == etag => super::carried_attributes(&source),
                _ => PutOptions::default(),
            },
            _ => PutOptions::default(),
        };
        opts.condition = t.condition.clone();
        opts.metadata
            .insert(WRITER_ID_METADATA.into(), t.writer_id.clone());
        let result = self
            .shared
            .config
            .retry
            .run(|| store.put(&t.key, Bytes::new(), opts.clone()))
            .await;
        let outcome = match result {
            Ok(put) => CommitOutcome {
                key: t.key.clone(),
                size: 0,
                etag: put.etag,
                already_committed: false,
            },
            Err(e)
                if matches!(
                    e.kind(),
                    StoreErrorKind::PreconditionFailed | StoreErrorKind::NotFound
                ) =>
            {
                self.verify_committed(&e.to_string()).await?
            }
            Err(e) => return Err(e.into()),
        };
        match store.abort_multipart(&t.key, &t.upload_id).await {
            Ok(()) => {}
            Err(e) if e.kind() == StoreErrorKind::NoSuchUpload => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not abort the upload of an empty file; gc will")
            }
        }
        Ok(outcome)
    }

    /// Whether the object at the token's key is this token's commit.
    async fn verify_committed(&self, why: &str) -> Result<CommitOutcome, WriterError> {
        let t = &self.token;
        let store = &self.shared.store;
        let meta = self
            .shared
            .config
            .retry
            .run(|| store.head_opt(&t.key))
            .await?;
        let fail = |detail: String| WriterError::Commit {
            key: t.key.clone(),
            detail,
        };
        let Some(meta) = meta else {
            return Err(fail(format!(
                "the upload is gone and no object exists ({why}): it was aborted or expired before it was committed"
            )));
        };
        if self.is_ours(&meta) {
            return Ok(CommitOutcome {
                key: t.key.clone(),
                size: meta.size,
                etag: meta.etag,
                already_committed: true,
            });
        }
        Err(fail(format!(
            "the object was not written by this commit ({why}; it has {} bytes and ETag {}, this commit has {} bytes): it was replaced, or changed since the file was opened",
            meta.size,
            meta.etag,
            t.len()
        )))
    }
}

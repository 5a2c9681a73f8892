//! Appendable objects: PutObject with `x-amz-write-offset-bytes`.
//!
//! Each key being appended to has an open [`FileWriter`] (a multipart upload of fs-core's
//! recoverable writer). An append writes its body and `persist()`s before it is acknowledged,
//! so an acknowledged append survives a crash of the gateway: the writer's token is in the sled
//! index, and [`Appends::recover`] finishes every open object at the next start. Appends are
//! coalesced into upload parts by the writer, so the number of appends is not limited by S3's
//! 10,000 parts; when the writer runs out of part numbers the object is sealed and reopened.
//!
//! The backend object is only replaced when the open object is *sealed* (its upload committed):
//! after `seal_after` without an append, before any other write to the key, and at shutdown.
//! Until then the gateway serves the open object itself (size, content, a synthetic ETag).
//!
//! Every key has at most one entry here, guarded by an async mutex: appends, seals and the
//! gateway's other writes to the key hold it, which orders them (two appends at the same offset:
//! the second sees the new length and fails with `InvalidWriteOffset`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use fs_core::store::{
    ContentHeaders, DynStore, ObjectMeta, ObjectStoreExt, PutCondition, PutOptions,
};
use fs_core::token::{ResumeToken, Token};
use fs_core::writer::{FileWriter, RecoverableWriter, WriterError};
use fs_core::{Index, StoreErrorKind};
use s3s::{S3Error, S3ErrorCode, S3Result};
use tokio::sync::OwnedMutexGuard;

use crate::errors::{s3_err, to_s3};

/// How long an appendable object stays open without appends before it is sealed.
pub const DEFAULT_SEAL_AFTER: Duration = Duration::from_secs(5);

/// What the gateway shows of an open (appendable, not yet sealed) object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenView {
    pub size: u64,
    /// Synthetic: see [`open_etag`].
    pub etag: String,
    pub last_modified: SystemTime,
    pub upload_id: String,
    /// The writer id the sealed object will carry in its metadata: a read that finds the
    /// object sealed under it can go on from the store.
    pub writer_id: String,
    /// The standard headers and user metadata the object keeps while appended to.
    pub headers: ContentHeaders,
    pub metadata: BTreeMap<String, String>,
}

impl OpenView {
    /// The object's metadata as reads and conditions see it.
    pub fn meta(&self, key: &str) -> ObjectMeta {
        ObjectMeta {
            key: key.to_string(),
            size: self.size,
            etag: self.etag.clone(),
            last_modified: Some(self.last_modified),
            headers: self.headers.clone(),
            metadata: self.metadata.clone(),
        }
    }
}

/// The ETag of an open object: an MD5 of its upload id and length, with an `-open` suffix.
/// An MD5 of the content would cost a pass over the whole object per append; this changes with
/// every append (and at sealing, when the object gets its real, multipart ETag).
pub fn open_etag(upload_id: &str, len: u64) -> String {
    format!(
        "{}-open",
        fs_core::store::rules::md5_hex(format!("{upload_id}:{len}").as_bytes())
    )
}

/// The `InvalidWriteOffset` error (400), as S3 Express answers an append at the wrong offset.
pub fn invalid_write_offset(msg: impl Into<String>) -> S3Error {
    let mut err =
        S3Error::with_message(S3ErrorCode::Custom("InvalidWriteOffset".into()), msg.into());
    err.set_status_code(http::StatusCode::BAD_REQUEST);
    err
}

/// A writer error as an S3 error: store failures keep their mapping (transient ones are 503);
/// the rest are internal errors, logged.
fn writer_err(err: WriterError) -> S3Error {
    match err {
        WriterError::Store(e) => to_s3(e),
        other => {
            tracing::warn!(error = %other, "append writer error");
            s3_err(S3ErrorCode::InternalError, other.to_string())
        }
    }
}

/// A key's append state.
enum Slot {
    /// Nothing open: the store's object is the truth.
    Idle,
    Open(Box<OpenFile>),
    /// Acknowledged appends exist only behind this token (a writer failed, a commit did not go
    /// through): it must be finished (committed) before anything else happens to the key.
    Pending(Token),
    /// Removed from the map: look the key up again.
    Retired,
}

struct OpenFile {
    file: FileWriter,
    /// The last persist's token (`None` only before the first append is persisted).
    token: Option<ResumeToken>,
    /// Earlier tokens, whose tail objects only the latest token's recovery no longer needs.
    stale: Vec<ResumeToken>,
    /// This writer put the empty stand-in for a new key (see [`PLACEHOLDER_METADATA`]) and no
    /// append is acknowledged yet: if the first append fails, the stand-in goes too.
    placeholder: bool,
}

/// User metadata of the empty object that stands in the store for a new appendable object
/// until its first seal, so that listings (which read the store) show it. The mark tells it
/// from an empty object a client put: only a stand-in whose first append was never
/// acknowledged is ever deleted (after a failed first append, and at recovery after a crash).
pub const PLACEHOLDER_METADATA: &str = "rivulet-append-placeholder";

/// The standard headers and user metadata of an object an append creates; the stand-in
/// carries them, and the writer carries them from it to the sealed object.
#[derive(Debug, Clone, Default)]
pub struct NewObject {
    pub headers: ContentHeaders,
    /// Names without the `x-amz-meta-` prefix, lower case.
    pub metadata: std::collections::BTreeMap<String, String>,
}

/// Stale tails are deleted in batches of this many, inside an append (see `append`).
const STALE_TAILS_BATCH: usize = 16;

struct Status {
    touched: Instant,
    view: Option<OpenView>,
    /// Open or pending: the idle sealer and the shutdown have work here.
    unsealed: bool,
}

struct Entry {
    slot: Arc<tokio::sync::Mutex<Slot>>,
    /// Published for readers that must not wait for the key's lock (listings, the sealer).
    status: Mutex<Status>,
}

struct Inner {
    writer: RecoverableWriter,
    store: DynStore,
    index: Index,
    seal_after: Duration,
    entries: Mutex<HashMap<String, Arc<Entry>>>,
    /// Per key, the ETag its object showed while open before its last seal here, and the one
    /// the seal gave it: a client that appended holds the first (see [`Appends::sealed_as`]).
    sealed_as: Mutex<HashMap<String, SealedAs>>,
}

/// The ETags of one object around its seal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedAs {
    /// What appends and reads returned while it was open (`…-open`).
    pub open_etag: String,
    /// Its ETag in the store once sealed.
    pub etag: String,
}

/// At most this many keys' seals are remembered (then the memory starts over): a condition
/// naming an open ETag comes soon after the append that returned it.
const SEALS_REMEMBERED: usize = 65_536;

/// The gateway's open appendable objects. Cheap to clone.
#[derive(Clone)]
pub struct Appends {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Appends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Appends")
            .field("seal_after", &self.inner.seal_after)
            .finish_non_exhaustive()
    }
}

/// What recovery at start did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Open objects committed with every acknowledged append.
    pub sealed: usize,
    /// Uploads opened but never persisted (no append was acknowledged): aborted.
    pub aborted: usize,
    /// Objects that could not be finished now (left pending: retried by the sealer; reads and
    /// writes of the key answer 503 meanwhile).
    pub failed: usize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere while holding it leaves plain data behind: still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Appends {
    /// `writer` writes the store's objects and records its tokens in `index`.
    pub fn new(writer: RecoverableWriter, index: Index, seal_after: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                store: writer.store().clone(),
                writer,
                index,
                seal_after,
                entries: Mutex::new(HashMap::new()),
                sealed_as: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn seal_after(&self) -> Duration {
        self.inner.seal_after
    }

    /// Locks `key`'s entry (creating it), waiting for whatever holds it.
    pub async fn lock(&self, key: &str) -> KeyGuard {
        loop {
            let entry = lock(&self.inner.entries)
                .entry(key.to_string())
                .or_insert_with(|| {
                    Arc::new(Entry {
                        slot: Arc::new(tokio::sync::Mutex::new(Slot::Idle)),
                        status: Mutex::new(Status {
                            touched: Instant::now(),
                            view: None,
                            unsealed: false,
                        }),
                    })
                })
                .clone();
            let slot = entry.slot.clone().lock_owned().await;
            if matches!(*slot, Slot::Retired) {
                continue;
            }
            return KeyGuard {
                appends: self.clone(),
                key: key.to_string(),
                entry,
                slot,
            };
        }
    }

    /// Locks `key` with its open object sealed: for the gateway's other writes to the key,
    /// which hold the guard while they run so that no append slips in between.
    pub async fn lock_sealed(&self, key: &str) -> S3Result<KeyGuard> {
        let (appends, key) = (self.clone(), key.to_string());
        detached(async move {
            let mut guard = appends.lock(&key).await;
            guard.seal().await?;
            Ok(guard)
        })
        .await
    }

    /// Locks several keys (sorted, once each: two callers cannot deadlock) with their open
    /// objects sealed. A key whose seal fails is returned with its error instead.
    pub async fn lock_sealed_many(
        &self,
        keys: &[String],
    ) -> (Vec<KeyGuard>, HashMap<String, S3Error>) {
        let unique: BTreeSet<&String> = keys.iter().collect();
        let mut guards = Vec::new();
        let mut failed = HashMap::new();
        for key in unique {
            match self.lock_sealed(key).await {
                Ok(g) => guards.push(g),
                Err(e) => {
                    failed.insert(key.clone(), e);
                }
            }
        }
        (guards, failed)
    }

    /// The ETags `key`'s object had while open and got when this gateway last sealed it.
    pub fn sealed_as(&self, key: &str) -> Option<SealedAs> {
        lock(&self.inner.sealed_as).get(key).cloned()
    }

    /// Seals `key` if it is open (a copy source must be read from the store).
    pub async fn seal_key(&self, key: &str) -> S3Result<()> {
        if !lock(&self.inner.entries).contains_key(key) {
            return Ok(());
        }
        self.lock_sealed(key).await.map(drop)
    }

    /// The open object at `key`, if there is one; waits for an append in progress. A pending
    /// object is finished first (a 503 if that fails: the store's object is not the truth).
    pub async fn view(&self, key: &str) -> S3Result<Option<OpenView>> {
        if !lock(&self.inner.entries).contains_key(key) {
            return Ok(None);
        }
        let (appends, key) = (self.clone(), key.to_string());
        detached(async move {
            let mut guard = appends.lock(&key).await;
            guard.settle().await?;
            Ok(guard.view())
        })
        .await
    }

    /// Reads `range` of the open object `upload_id` at `key`: `None` when that upload is no
    /// longer open there (sealed, or replaced).
    pub async fn read_open(
        &self,
        key: &str,
        upload_id: &str,
        range: std::ops::Range<u64>,
    ) -> S3Result<Option<Bytes>> {
        if !lock(&self.inner.entries).contains_key(key) {
            return Ok(None);
        }
        let guard = self.lock(key).await;
        match &*guard.slot {
            Slot::Open(open)
                if open.file.upload_id() == upload_id && open.file.len() >= range.end =>
            {
                let bytes = open
                    .file
                    .read_at(range.start, range.end - range.start)
                    .await
                    .map_err(writer_err)?;
                Ok(Some(bytes))
            }
            _ => Ok(None),
        }
    }

    /// The open objects whose store keys start with `prefix`, as listings show them. Reads the
    /// published views only: a listing never waits for an append.
    pub fn open_views(&self, prefix: &str) -> HashMap<String, OpenView> {
        lock(&self.inner.entries)
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .filter_map(|(k, e)| Some((k.clone(), lock(&e.status).view.clone()?)))
            .collect()
    }

    /// Appends `body` at `offset` of `key` and makes it durable; returns the object as it is
    /// now. `offset` must be the object's current size.
    pub async fn append(&self, key: &str, offset: u64, body: Bytes) -> S3Result<OpenView> {
        self.append_with(key, offset, body, NewObject::default())
            .await
    }

    /// [`append`](Self::append), with the Content-Type and user metadata the object gets if
    /// this append creates it (an existing object keeps its own).
    pub async fn append_with(
        &self,
        key: &str,
        offset: u64,
        body: Bytes,
        new_object: NewObject,
    ) -> S3Result<OpenView> {
        let (appends, key) = (self.clone(), key.to_string());
        detached(async move {
            appends
                .lock(&key)
                .await
                .append(offset, body, new_object)
                .await
        })
        .await
    }

    /// Seals the open objects idle for `seal_after`, and retries pending ones. Keys busy with a
    /// request are left for the next round.
    pub async fn seal_idle(&self) {
        let due: Vec<(String, Arc<Entry>)> = lock(&self.inner.entries)
            .iter()
            .filter(|(_, e)| {
                let s = lock(&e.status);
                s.unsealed && s.touched.elapsed() >= self.inner.seal_after
            })
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
        for (key, entry) in due {
            let Ok(slot) = entry.slot.clone().try_lock_owned() else {
                continue;
            };
            if matches!(*slot, Slot::Retired) {
                continue;
            }
            let mut guard = KeyGuard {
                appends: self.clone(),
                key,
                entry,
                slot,
            };
            if let Err(e) = guard.seal().await {
                tracing::warn!(key = %guard.key, error = %e, "sealing an idle appendable object failed; retrying later");
                guard.touch();
            }
        }
    }

    /// Runs [`Appends::seal_idle`] in the background until [`Sealer::stop`].
    pub fn spawn_sealer(&self) -> Sealer {
        let appends = self.clone();
        // Often enough that an object is sealed within about a quarter of seal_after of its
        // deadline, and not more than 10 times a second.
        let tick =
            (self.inner.seal_after / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            loop {
                // Stopping is only noticed between rounds: a seal is never cut in half.
                tokio::select! {
                    () = tokio::time::sleep(tick) => appends.seal_idle().await,
                    _ = &mut stopped => return,
                }
            }
        });
        Sealer { stop, task }
    }

    /// Seals every open object (at shutdown): waits for each key's lock. Returns how many could
    /// not be sealed (they stay in the index, and the next start finishes them).
    pub async fn seal_all(&self) -> usize {
        let keys: Vec<String> = lock(&self.inner.entries).keys().cloned().collect();
        let mut failed = 0;
        for key in keys {
            let mut guard = self.lock(&key).await;
            if let Err(e) = guard.seal().await {
                tracing::warn!(key = %key, error = %e, "sealing an appendable object at shutdown failed; the next start finishes it");
                failed += 1;
            }
        }
        failed
    }

    /// Finishes what a previous run left open (from the index): every upload with a token is
    /// committed with all its acknowledged appends; uploads never persisted are aborted.
    pub async fn recover(&self) -> Result<RecoveryReport, WriterError> {
        let mut report = RecoveryReport::default();
        let index = self.inner.index.clone();
        let store_name = self.inner.store.describe();
        let entries = tokio::task::spawn_blocking(move || index.entries(&store_name))
            .await
            .map_err(|e| WriterError::Config(format!("index task failed: {e}")))??;
        for entry in entries {
            match entry.latest {
                None => {
                    self.inner
                        .writer
                        .abort_upload(&entry.key, &entry.upload_id)
                        .await?;
                    // A first append that was never acknowledged leaves its stand-in behind.
                    remove_placeholder(&self.inner.store, &entry.key).await;
                    report.aborted += 1;
                }
                Some(token) => {
                    let mut guard = self.lock(&entry.key).await;
                    guard.set(Slot::Pending(token));
                    match guard.seal().await {
                        Ok(()) => report.sealed += 1,
                        Err(e) => {
                            tracing::warn!(key = %entry.key, error = %e, "recovering an appendable object failed; retrying later");
                            report.failed += 1;
                        }
                    }
                }
            }
        }
        Ok(report)
    }
}

/// The background task sealing idle objects.
pub struct Sealer {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Sealer {
    /// Stops it after the round in progress.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Runs a step that changes a key's state in a task of its own: a client that goes away must
/// not cut it in half (an append persisted but not recorded, a seal half done). The client
/// then sees no answer, and the step completes as S3 would complete a request whose answer was
/// lost.
async fn detached<T: Send + 'static>(
    step: impl std::future::Future<Output = S3Result<T>> + Send + 'static,
) -> S3Result<T> {
    tokio::spawn(step).await.unwrap_or_else(|e| {
        Err(s3_err(
            S3ErrorCode::InternalError,
            format!("an append task failed: {e}"),
        ))
    })
}

/// A key's lock. While it is held, nothing else appends to, seals or writes the key through
/// the gateway.
pub struct KeyGuard {
    appends: Appends,
    key: String,
    entry: Arc<Entry>,
    slot: OwnedMutexGuard<Slot>,
}

impl KeyGuard {
    fn inner(&self) -> &Inner {
        &self.appends.inner
    }

    fn touch(&self) {
        lock(&self.entry.status).touched = Instant::now();
    }

    /// Replaces the slot and publishes what readers without the lock see.
    fn set(&mut self, slot: Slot) {
        *self.slot = slot;
        let view = self.view();
        let mut status = lock(&self.entry.status);
        status.unsealed = matches!(*self.slot, Slot::Open(_) | Slot::Pending(_));
        status.view = view;
    }

    fn view(&self) -> Option<OpenView> {
        let Slot::Open(open) = &*self.slot else {
            return None;
        };
        let token = open.token.as_ref()?;
        let size = open.file.len();
        let last_modified = lock(&self.entry.status)
            .view
            .as_ref()
            .filter(|v| v.size == size && v.upload_id == token.upload_id)
            .map_or_else(SystemTime::now, |v| v.last_modified);
        // Every open file here was opened by this process (`open`), so it has its attributes.
        let (headers, metadata) = open
            .file
            .attributes()
            .map(|(h, m)| (h.clone(), m.clone()))
            .unwrap_or_default();
        Some(OpenView {
            size,
            etag: open_etag(&token.upload_id, size),
            last_modified,
            upload_id: token.upload_id.clone(),
            writer_id: token.writer_id.clone(),
            headers,
            metadata,
        })
    }

    /// Finishes a pending object, so that the store's object is the truth again.
    async fn settle(&mut self) -> S3Result<()> {
        let Slot::Pending(token) = &*self.slot else {
            return Ok(());
        };
        let token = token.clone();
        let writer = &self.inner().writer;
        let result = match &token {
            Token::Resume(resume) => match writer.recover(resume).await {
                Ok(mut file) => match file.close_for_commit().await {
                    Ok(committer) => committer.commit().await.map(drop),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            },
            Token::Commit(commit) => writer
                .recover_for_commit(commit)
                .commit_after_recovery()
                .await
                .map(drop),
        };
        match result {
            Ok(()) => {
                self.set(Slot::Idle);
                Ok(())
            }
            Err(e) if is_superseded(&e) => {
                // The upload is gone or the object it would replace was replaced by another
                // writer: the appends were overtaken by a later write (or lost outside the
                // gateway). Nothing can bring them back; drop the upload and go on.
                tracing::warn!(key = %self.key, error = %e, "an open appendable object cannot be committed; giving it up");
                let (key, upload) = (token.key().to_string(), token.upload_id().to_string());
                if let Err(e) = writer.abort_upload(&key, &upload).await {
                    tracing::warn!(key = %key, error = %e, "aborting the upload failed; gc will");
                }
                self.set(Slot::Idle);
                Ok(())
            }
            Err(e) => {
                // Still pending: the token is in the index, a later call or start retries.
                let mut err = writer_err(e);
                if err.code() == &S3ErrorCode::InternalError {
                    err.set_code(S3ErrorCode::ServiceUnavailable);
                }
                Err(err)
            }
        }
    }

    /// Commits the open object (if any): the store's object gets every acknowledged append.
    pub async fn seal(&mut self) -> S3Result<()> {
        self.settle().await?;
        let Slot::Open(open) = std::mem::replace(&mut *self.slot, Slot::Idle) else {
            return Ok(());
        };
        // Stale tails go with the upload's other tails when it is committed.
        let OpenFile {
            mut file, token, ..
        } = *open;
        let Some(token) = token else {
            // Nothing acknowledged: dropping the writer aborts its upload.
            self.set(Slot::Idle);
            return Ok(());
        };
        let open_etag = open_etag(&token.upload_id, file.len());
        let committer = match file.close_for_commit().await {
            Ok(c) => c,
            Err(_) => {
                drop(file);
                self.set(Slot::Pending(Token::Resume(token)));
                return self.settle().await;
            }
        };
        drop(file);
        match committer.commit().await {
            Ok(outcome) => {
                self.set(Slot::Idle);
                let mut sealed = lock(&self.inner().sealed_as);
                if sealed.len() >= SEALS_REMEMBERED {
                    sealed.clear();
                }
                sealed.insert(
                    self.key.clone(),
                    SealedAs {
                        open_etag,
                        etag: outcome.etag,
                    },
                );
                Ok(())
            }
            Err(_) => {
                self.set(Slot::Pending(Token::Commit(committer.token().clone())));
                self.settle().await
            }
        }
    }

    /// The object's current size and whether it is open here, after finishing a pending one.
    async fn current_size(&mut self) -> S3Result<Option<u64>> {
        self.settle().await?;
        match &*self.slot {
            Slot::Open(open) => Ok(Some(open.file.len())),
            _ => {
                let store = &self.inner().store;
                Ok(store
                    .head_opt(&self.key)
                    .await
                    .map_err(to_s3)?
                    .map(|m| m.size))
            }
        }
    }

    /// Opens the writer of an object that is not open, at `offset` (its size, 0 if missing);
    /// a missing one is created with `new_object`'s attributes.
    async fn open(&mut self, offset: u64, exists: bool, new_object: NewObject) -> S3Result<()> {
        if !exists {
            // An empty object stands for the open one in the store, so that listings (which
            // read the store) show it; the writer then appends to it, committing only over it.
            let store = &self.inner().store;
            let mut opts = PutOptions {
                condition: PutCondition::IfNoneMatch,
                headers: new_object.headers,
                metadata: new_object.metadata,
            };
            opts.metadata
                .insert(PLACEHOLDER_METADATA.to_string(), "1".to_string());
            match store.put(&self.key, Bytes::new(), opts).await {
                Ok(_) => {}
                Err(e) if e.kind() == StoreErrorKind::PreconditionFailed => {
                    return Err(invalid_write_offset(
                        "the object was created by another writer meanwhile",
                    ));
                }
                Err(e) => return Err(to_s3(e)),
            }
        }
        let file = match self.inner().writer.open_append(&self.key).await {
            Ok(file) => file,
            Err(e) => {
                if !exists {
                    remove_placeholder(&self.inner().store, &self.key).await;
                }
                return Err(writer_err(e));
            }
        };
        if file.len() != offset {
            // Changed between the size check and the open (a writer outside the gateway).
            return Err(invalid_write_offset(format!(
                "the write offset {offset} is not the object's size {}",
                file.len()
            )));
        }
        self.set(Slot::Open(Box::new(OpenFile {
            file,
            token: None,
            stale: Vec::new(),
            placeholder: !exists,
        })));
        Ok(())
    }

    async fn append(
        &mut self,
        offset: u64,
        body: Bytes,
        new_object: NewObject,
    ) -> S3Result<OpenView> {
        let size = self.current_size().await?;
        if size.unwrap_or(0) != offset {
            return Err(invalid_write_offset(match size {
                Some(size) => format!("the write offset {offset} is not the object's size {size}"),
                None => {
                    format!("the object does not exist: the write offset must be 0, not {offset}")
                }
            }));
        }
        if !matches!(*self.slot, Slot::Open(_)) {
            self.open(offset, size.is_some(), new_object).await?;
        }
        let mut resealed = false;
        loop {
            let Slot::Open(open) = &mut *self.slot else {
                return Err(s3_err(
                    S3ErrorCode::InternalError,
                    "the append writer is gone",
                ));
            };
            match open.file.write(&body).await {
                Ok(()) => break,
                Err(WriterError::TooManyParts { .. }) if !resealed => {
                    // Out of part numbers: commit what is there and go on in a new upload that
                    // starts with it (copied server-side), transparently.
                    resealed = true;
                    self.seal().await?;
                    self.open(offset, true, NewObject::default()).await?;
                }
                Err(WriterError::TooManyParts { part_size, .. }) => {
                    self.fail_open().await;
                    return Err(s3_err(
                        S3ErrorCode::EntityTooLarge,
                        format!(
                            "an append of {} bytes needs more than 10,000 parts of {part_size} bytes",
                            body.len()
                        ),
                    ));
                }
                Err(e) => {
                    self.fail_open().await;
                    return Err(writer_err(e));
                }
            }
        }
        let Slot::Open(open) = &mut *self.slot else {
            return Err(s3_err(
                S3ErrorCode::InternalError,
                "the append writer is gone",
            ));
        };
        match open.file.persist().await {
            Ok(token) => {
                open.placeholder = false;
                open.stale.extend(open.token.replace(token));
                // Only the latest token is ever recovered, so older tails can go; without this
                // a key appended to without pause would gather one tail object per append
                // until it is sealed. Deleting a tail updates the index entry the persists
                // update too (read, modify, write): done here, under the key's lock, never
                // beside a persist. In batches, so that most appends do not pay for it.
                if open.stale.len() >= STALE_TAILS_BATCH {
                    let writer = &self.appends.inner.writer;
                    for stale in open.stale.drain(..) {
                        if let Err(e) = writer.cleanup(&stale).await {
                            tracing::debug!(error = %e, "deleting an old tail failed; the commit will");
                        }
                    }
                }
            }
            Err(e) => {
                self.fail_open().await;
                return Err(writer_err(e));
            }
        }
        // Publish with a fresh modification time.
        lock(&self.entry.status).view = None;
        let slot = std::mem::replace(&mut *self.slot, Slot::Idle);
        self.set(slot);
        self.touch();
        self.view().ok_or_else(|| {
            s3_err(
                S3ErrorCode::InternalError,
                "the appended object has no view",
            )
        })
    }

    /// The open writer failed (its state is unknown): go back to the last acknowledged point,
    /// which a later call finishes from its token; with none, nothing was acknowledged, and a
    /// stand-in this writer put for a new key goes too.
    async fn fail_open(&mut self) {
        let slot = std::mem::replace(&mut *self.slot, Slot::Idle);
        let next = match slot {
            Slot::Open(open) => match open.token {
                Some(token) => Slot::Pending(Token::Resume(token)),
                None => {
                    if open.placeholder {
                        remove_placeholder(&self.inner().store, &self.key).await;
                    }
                    Slot::Idle
                }
            },
            other => other,
        };
        self.set(next);
    }
}

impl Drop for KeyGuard {
    /// An idle entry leaves the map (waiters see `Retired` and look the key up again).
    fn drop(&mut self) {
        if !matches!(*self.slot, Slot::Idle) {
            return;
        }
        *self.slot = Slot::Retired;
        let mut entries = lock(&self.appends.inner.entries);
        if entries
            .get(&self.key)
            .is_some_and(|e| Arc::ptr_eq(e, &self.entry))
        {
            entries.remove(&self.key);
        }
    }
}

/// Deletes `key` if it is still an empty stand-in (see [`PLACEHOLDER_METADATA`]). Failures are
/// logged: a stand-in left behind is an empty object, not lost data.
async fn remove_placeholder(store: &DynStore, key: &str) {
    let still_placeholder = match store.head_opt(key).await {
        Ok(Some(meta)) => meta.size == 0 && meta.metadata.contains_key(PLACEHOLDER_METADATA),
        Ok(None) => false,
        Err(e) => {
            tracing::warn!(%key, error = %e, "could not check an append's empty stand-in");
            false
        }
    };
    if still_placeholder && let Err(e) = store.delete(key).await {
        tracing::warn!(%key, error = %e, "could not delete an append's empty stand-in");
    }
}

/// Whether a failure to finish an open object means it can never be finished: its upload is
/// gone, or the object it was to replace was replaced.
fn is_superseded(err: &WriterError) -> bool {
    match err {
        WriterError::Commit { .. } | WriterError::Recover { .. } => true,
        WriterError::Store(e) => matches!(
            e.kind(),
            StoreErrorKind::NoSuchUpload | StoreErrorKind::PreconditionFailed
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fs_core::WriterConfig;
    use fs_core::store::memory::MemoryStore;

    /// Appends over a memory store with parts of `part_size` bytes (the store accepts parts
    /// that small, and reads an upload's parts back).
    fn appends_over(store: &DynStore, index: &Index, part_size: u64) -> Appends {
        let config = WriterConfig {
            part_size,
            // Many tiny parts: more of them in flight at once keeps the test quick.
            max_in_flight: 64,
            // As the gateway's server configures it: appendable objects are readable.
            cache_parts: true,
            ..WriterConfig::default()
        };
        let writer = RecoverableWriter::new(store.clone(), index.clone(), config).unwrap();
        Appends::new(writer, index.clone(), Duration::from_secs(3600))
    }

    fn small_store() -> DynStore {
        Arc::new(MemoryStore::new().with_min_part_size(1).with_part_reads())
    }

    fn chunk(i: usize, len: usize) -> Vec<u8> {
        (0..len).map(|j| (i * 7 + j) as u8).collect()
    }

    async fn stored(store: &DynStore, key: &str) -> Vec<u8> {
        store.get(key, None).await.unwrap().body.to_vec()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_past_the_part_limit_reseal_transparently() {
        let store = small_store();
        let index = Index::temporary().unwrap();
        // 16-byte parts: 10,000 parts hold 160,000 bytes, less than these 14 appends of 750
        // parts each (the 14th finds no part numbers left).
        let appends = appends_over(&store, &index, 16);
        let mut want = Vec::new();
        let mut uploads = BTreeSet::new();
        for i in 0..14 {
            let body = chunk(i, 12_000);
            let view = appends
                .append("b/k", want.len() as u64, Bytes::from(body.clone()))
                .await
                .unwrap_or_else(|e| panic!("append {i}: {e}"));
            want.extend_from_slice(&body);
            assert_eq!(view.size, want.len() as u64);
            uploads.insert(view.upload_id);
        }
        assert!(uploads.len() >= 2, "resealed into new uploads: {uploads:?}");
        // Everything is readable while open, across the reseal.
        let view = appends.view("b/k").await.unwrap().unwrap();
        let read = appends
            .read_open("b/k", &view.upload_id, 0..want.len() as u64)
            .await
            .unwrap()
            .unwrap();
        assert!(read == want, "read back {} bytes", read.len());
        assert_eq!(appends.seal_all().await, 0);
        assert!(stored(&store, "b/k").await == want);
        assert!(appends.view("b/k").await.unwrap().is_none(), "sealed");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_of_several_appends_at_the_same_offset_wins() {
        let store = small_store();
        let index = Index::temporary().unwrap();
        let appends = appends_over(&store, &index, 1024);
        appends
            .append("b/k", 0, Bytes::from_static(b"start"))
            .await
            .unwrap();
        let tasks: Vec<_> = (0..8u8)
            .map(|i| {
                let appends = appends.clone();
                tokio::spawn(async move { appends.append("b/k", 5, Bytes::from(vec![i; 3])).await })
            })
            .collect();
        let mut winners = Vec::new();
        for (i, task) in tasks.into_iter().enumerate() {
            match task.await.unwrap() {
                Ok(view) => winners.push((i as u8, view.size)),
                Err(e) => assert_eq!(e.code().as_str(), "InvalidWriteOffset"),
            }
        }
        assert_eq!(winners.len(), 1, "{winners:?}");
        let (winner, size) = winners[0];
        assert_eq!(size, 8);
        appends.seal_all().await;
        let mut want = b"start".to_vec();
        want.extend_from_slice(&[winner; 3]);
        assert_eq!(stored(&store, "b/k").await, want);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restart_commits_what_was_acknowledged() {
        let store = small_store();
        let index = Index::temporary().unwrap();
        let mut want = Vec::new();
        {
            let appends = appends_over(&store, &index, 64);
            for i in 0..20 {
                let body = chunk(i, 50);
                appends
                    .append("b/k", want.len() as u64, Bytes::from(body.clone()))
                    .await
                    .unwrap();
                want.extend_from_slice(&body);
            }
            // Older tails were deleted along the way: one per append would be 20.
            let tails = store.list_all(".rivulet/tails/").await.unwrap();
            assert!(tails.len() <= STALE_TAILS_BATCH, "{} tails", tails.len());
            // A second object opened and never acknowledged: nothing to keep.
            let never = appends.inner.writer.open("b/never").await.unwrap();
            // A killed process runs no destructor (which would abort the upload).
            std::mem::forget(never);
            // Dropped without sealing, as a killed process would leave it (only the empty
            // stand-in object is in the store).
            assert_eq!(stored(&store, "b/k").await, b"");
        }
        let appends = appends_over(&store, &index, 64);
        let report = appends.recover().await.unwrap();
        assert_eq!(report.sealed, 1, "{report:?}");
        assert_eq!(report.aborted, 1, "{report:?}");
        assert_eq!(report.failed, 0, "{report:?}");
        assert_eq!(stored(&store, "b/k").await, want);
        // And appending goes on from there.
        appends
            .append("b/k", want.len() as u64, Bytes::from_static(b"more"))
            .await
            .unwrap();
        assert_eq!(appends.seal_all().await, 0);
        want.extend_from_slice(b"more");
        assert_eq!(stored(&store, "b/k").await, want);
        assert!(store.list_all(".rivulet/tails/").await.unwrap().is_empty());
        assert!(index.entries(&store.describe()).unwrap().is_empty());
    }

    /// The empty stand-in of a new key goes when its first append is never acknowledged:
    /// at once when that append fails, and at recovery after a crash. An empty object a
    /// client put stays.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_first_append_never_acknowledged_leaves_no_empty_object() {
        use fs_core::store::fault::{FaultConfig, FaultStore, Op};

        let mem = small_store();
        let faults = Arc::new(FaultStore::new(mem.clone(), FaultConfig::default()));
        let store: DynStore = faults.clone();
        let index = Index::temporary().unwrap();
        let config = WriterConfig {
            part_size: 64,
            retry: fs_core::retry::RetryPolicy {
                max_attempts: 1,
                ..Default::default()
            },
            ..WriterConfig::default()
        };
        let writer = RecoverableWriter::new(store.clone(), index.clone(), config).unwrap();
        let appends = Appends::new(writer, index.clone(), Duration::from_secs(3600));
        // The first append's persist fails (its tail PUT): the stand-in goes with it.
        faults.set_config(FaultConfig {
            fail_nth: [(Op::Put, faults.calls(Op::Put) + 2)].into_iter().collect(),
            ..Default::default()
        });
        let failed = appends
            .append("b/failed", 0, Bytes::from_static(b"never acknowledged"))
            .await;
        assert!(failed.is_err(), "the tail PUT was to fail");
        assert!(mem.head_opt("b/failed").await.unwrap().is_none());
        faults.set_config(FaultConfig::default());
        // The key is free for the next writer.
        appends
            .append("b/failed", 0, Bytes::from_static(b"second try"))
            .await
            .unwrap();
        appends.seal_all().await;
        assert_eq!(stored(&mem, "b/failed").await, b"second try");

        // A crash during a first append (stand-in put, upload opened, nothing persisted), and
        // one during a first append to an empty object a client put.
        let mut opts = PutOptions::default();
        opts.metadata
            .insert(PLACEHOLDER_METADATA.to_string(), "1".to_string());
        mem.put("b/crashed", Bytes::new(), opts).await.unwrap();
        mem.put("b/client-empty", Bytes::new(), PutOptions::default())
            .await
            .unwrap();
        for key in ["b/crashed", "b/client-empty"] {
            let w = appends.inner.writer.open_append(key).await.unwrap();
            std::mem::forget(w); // a killed process runs no destructor
        }
        let restarted = appends_over(&store, &index, 64);
        let report = restarted.recover().await.unwrap();
        // The two crashed ones, and the failed first append's upload if its writer's
        // background abort has not run yet.
        assert!(report.aborted >= 2, "{report:?}");
        assert!(index.entries(&store.describe()).unwrap().is_empty());
        assert!(mem.head_opt("b/crashed").await.unwrap().is_none());
        assert_eq!(stored(&mem, "b/client-empty").await, b"");
    }

    #[test]
    fn open_etags_change_with_the_length_and_say_they_are_open() {
        assert_ne!(open_etag("u", 1), open_etag("u", 2));
        assert_ne!(open_etag("u", 1), open_etag("v", 1));
        assert!(open_etag("u", 1).ends_with("-open"));
        let err = invalid_write_offset("x");
        assert_eq!(err.code().as_str(), "InvalidWriteOffset");
        assert_eq!(err.status_code(), Some(http::StatusCode::BAD_REQUEST));
    }
}

//! One file being written: an open multipart upload, the parts uploaded or in flight, and the
//! tail of bytes not yet in a part.
//!
//! ```text
//!            write / truncate / persist / read_at
//!              ┌────┐
//!              ▼    │
//! open ──▶  Open ───┘ ──close_for_commit──▶ Closed ──▶ (Committer)
//!  recover ──▶ │
//!              └── part upload fails for good ──▶ Failed (recover from the last token)
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::task::JoinSet;

use super::cache::{self, CachedPart, CachedParts, PartCache};
use super::pipeline::{PartBoard, PendingPersist};
use super::{Committer, Shared, WRITER_ID_METADATA, WriterError, listed_parts, max_file_len, tail};
use crate::error::{StoreError, StoreErrorKind};
use crate::store::{ContentHeaders, ObjectStoreExt, PutCondition, PutOptions, limits};
use crate::token::{CommitToken, PartRecord, ResumeToken, Token};

/// Where the bytes of an uploaded part can be read back from while the upload is open.
#[derive(Debug, Clone)]
enum PartSource {
    /// Being uploaded or written to the cache: the bytes are in memory until both have ended
    /// (until the upload has, for a writer without part cache), then read as `Remote`.
    InFlight(Arc<PartBytes>),
    /// In the local part cache.
    Cached(PathBuf),
    /// Copied server-side from `key` (at ETag `etag`) starting at `offset`: read from there.
    Copied {
        key: String,
        etag: String,
        offset: u64,
    },
    /// Uploaded before this writer was recovered, and not in the cache: unreadable until commit.
    Remote,
}

impl PartSource {
    /// Whether the part can only be read from the store, as an uploaded part.
    fn is_uploaded_only(&self) -> bool {
        match self {
            PartSource::Remote => true,
            PartSource::InFlight(bytes) => bytes.get().is_err(),
            PartSource::Cached(_) | PartSource::Copied { .. } => false,
        }
    }
}

/// The bytes of a part in flight, shared by the writer (for reads of the open file) and the
/// part's upload task. A writer without part cache keeps no use for them once the part is
/// uploaded, so its upload task lets go of them at once and hands the buffer back for the next
/// part: a writer left idle (an engine sink's bucket of a past hour) does not keep its last
/// parts in memory until it is next written, persisted or closed.
#[derive(Debug)]
struct PartBytes(std::sync::Mutex<PartMemory>);

#[derive(Debug)]
enum PartMemory {
    Held(Bytes),
    /// Let go of after the upload, which gave this ETag (reads go to the store with it).
    Uploaded {
        etag: String,
    },
}

impl PartBytes {
    fn new(bytes: Bytes) -> Arc<Self> {
        Arc::new(Self(std::sync::Mutex::new(PartMemory::Held(bytes))))
    }

    /// The bytes, or the ETag of the upload they were let go of after.
    fn get(&self) -> Result<Bytes, String> {
        match &*self.lock() {
            PartMemory::Held(bytes) => Ok(bytes.clone()),
            PartMemory::Uploaded { etag } => Err(etag.clone()),
        }
    }

    /// Lets go of the bytes once the part is uploaded as `etag`; returns them if still held.
    fn release(&self, etag: &str) -> Option<Bytes> {
        let uploaded = PartMemory::Uploaded { etag: etag.into() };
        match std::mem::replace(&mut *self.lock(), uploaded) {
            PartMemory::Held(bytes) => Some(bytes),
            PartMemory::Uploaded { .. } => None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PartMemory> {
        // Nothing panics while holding the lock; a poisoned one still holds a whole value.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[derive(Debug, Clone)]
struct Part {
    number: u32,
    size: u64,
    /// `None` while the upload is in flight.
    etag: Option<String>,
    source: PartSource,
}

/// Where a [`FileWriter`] is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriterState {
    /// Accepts writes, persists, truncates and reads.
    Open,
    /// `close_for_commit` was called: a committer owns the upload now.
    Closed,
    /// A part upload failed for good; the writer refuses everything but drop.
    Failed(String),
}

/// What a background task of the writer reports.
enum TaskDone {
    /// A part upload (or server-side copy) ended, with the part's ETag.
    Upload {
        number: u32,
        result: Result<String, StoreError>,
    },
    /// A part's cache write ended: where the bytes are (`None` if the write failed).
    Cache { number: u32, path: Option<PathBuf> },
}

/// A part whose bytes the writer still holds in memory: until its upload and its cache write
/// have both ended. The cache write is separate from the upload so that a `persist()`, which
/// needs only the uploads, never waits for the local disk.
#[derive(Debug)]
struct Held {
    size: u64,
    uploading: bool,
    caching: bool,
    /// The cache file, once its write has ended well.
    cached: Option<PathBuf>,
}

/// One file being written. Not `Clone`: exactly one writer owns an upload at a time.
pub struct FileWriter {
    shared: Arc<Shared>,
    key: String,
    upload_id: String,
    writer_id: String,
    condition: PutCondition,
    parts: Vec<Part>,
    parts_len: u64,
    tail: BytesMut,
    next_part: u32,
    seq: u64,
    /// Random per writer instance, part of tail keys: see `tail::tail_key`.
    session: String,
    /// Part uploads, server-side copies and cache writes running in the background.
    in_flight: JoinSet<TaskDone>,
    /// How many of `in_flight` are uploads or copies (the rest are cache writes).
    uploading: usize,
    /// Parts whose bytes are held in memory, by part number.
    held: HashMap<u32, Held>,
    peak_buffered: u64,
    state: WriterState,
    /// Whether a token was handed out: then dropping the writer must not abort the upload,
    /// since someone may recover from that token (Flink's close-after-persist bug).
    persisted: bool,
    cache: PartCache,
    /// The store needs part numbers without gaps, so numbers are reused (see `reuse_numbers_from`).
    contiguous: bool,
    /// Resumed from a token (`recover`): its committer must look for tails another process
    /// staged after that token.
    resumed: bool,
    /// Tail keys of the tokens this writer handed out or resumed from, with the highest part
    /// number each references: on a contiguous store, reusing a number invalidates them.
    issued: Vec<(String, u32)>,
    /// How part uploads ended, for pending (pipelined) persists.
    board: Arc<PartBoard>,
    /// The standard headers and user metadata the object gets at commit; `None` when resumed
    /// from a token (they were given to the upload, and S3 has no call to read them back).
    attributes: Option<Box<PutOptions>>,
}

impl std::fmt::Debug for FileWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWriter")
            .field("key", &self.key)
            .field("upload_id", &self.upload_id)
            .field("len", &self.len())
            .field("state", &self.state)
            .finish()
    }
}

static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

impl FileWriter {
    /// Starts a new upload for `key` whose commit will be made under `condition`.
    /// `attributes` are the standard headers and user metadata the object will have (those of the
    /// object an append or truncate starts from).
    pub(super) async fn new_upload(
        shared: Arc<Shared>,
        key: &str,
        condition: PutCondition,
        attributes: PutOptions,
    ) -> Result<Self, WriterError> {
        let writer_id = uuid::Uuid::new_v4().simple().to_string();
        let mut opts = attributes;
        opts.metadata
            .insert(WRITER_ID_METADATA.into(), writer_id.clone());
        let kept_attributes = opts.clone();
        // Retried like everything else. S3 has no idempotency key for this call, so a create
        // whose answer was lost leaves an empty upload behind (no parts, no storage cost) for
        // an abort-incomplete-uploads lifecycle rule or `rivulet gc --all-uploads`.
        let store = &shared.store;
        let upload_id = shared
            .config
            .retry
            .run(|| store.create_multipart(key, opts.clone()))
            .await?;
        let (k, u) = (key.to_string(), upload_id.clone());
        shared
            .index_update(move |i, s| i.record_open(s, &k, &u))
            .await?;
        let cache = PartCache::open(
            &shared.config.cache_dir,
            &upload_id,
            needs_part_cache(&shared),
        )
        .await?;
        let shared_contiguous = shared.store.requires_contiguous_parts();
        Ok(Self {
            shared,
            key: key.to_string(),
            upload_id,
            writer_id,
            condition,
            parts: Vec::new(),
            parts_len: 0,
            tail: BytesMut::new(),
            next_part: 1,
            seq: 0,
            session: new_session(),
            in_flight: JoinSet::new(),
            uploading: 0,
            held: HashMap::new(),
            peak_buffered: 0,
            state: WriterState::Open,
            persisted: false,
            cache,
            contiguous: shared_contiguous,
            resumed: false,
            issued: Vec::new(),
            board: Arc::default(),
            attributes: Some(Box::new(kept_attributes)),
        })
    }

    /// Opens `key` with its current content (all of it, or the first `keep` bytes, extended
    /// with zeros if `keep` is longer), copying it server-side.
    pub(super) async fn open_existing(
        shared: Arc<Shared>,
        key: &str,
        keep: Option<u64>,
    ) -> Result<Self, WriterError> {
        let existing = shared
            .config
            .retry
            .run(|| shared.store.head_opt(key))
            .await?;
        let Some(meta) = existing else {
            if keep.is_some() {
                return Err(WriterError::Truncate {
                    key: key.to_string(),
                    detail: "the object does not exist".into(),
                });
            }
            return Self::new_upload(
                shared,
                key,
                PutCondition::IfNoneMatch,
                PutOptions::default(),
            )
            .await;
        };
        let target = keep.unwrap_or(meta.size);
        if target > max_file_len(shared.config.part_size).max(meta.size) {
            return Err(WriterError::TooManyParts {
                key: key.to_string(),
                part_size: shared.config.part_size,
                max_len: max_file_len(shared.config.part_size),
            });
        }
        let mut file = Self::new_upload(
            shared,
            key,
            PutCondition::IfMatch(meta.etag.clone()),
            super::carried_attributes(&meta),
        )
        .await?;
        let kept = target.min(meta.size);
        let prepared = match file.copy_prefix(key, &meta.etag, kept).await {
            Ok(()) if target > kept => file.write_zeros(target - kept).await,
            other => other,
        };
        match prepared {
            Ok(()) => Ok(file),
            Err(e) => {
                // Nothing was handed out: the half-made upload goes now, not at the next gc.
                let _ = file.abort().await;
                Err(e)
            }
        }
    }

    /// Makes `source[0..len)` the file's start: server-side copies in parts of at least the
    /// part size, or a download into the tail when it is below the minimum part size.
    async fn copy_prefix(&mut self, source: &str, etag: &str, len: u64) -> Result<(), WriterError> {
        if len < self.shared.store.min_part_size() {
            if len > 0 {
                let got = self
                    .shared
                    .config
                    .retry
                    .run(|| self.shared.store.get(source, Some(0..len)))
                    .await?;
                check_source_etag(&self.key, source, etag, &got.meta.etag)?;
                self.tail.extend_from_slice(&got.body);
            }
            return Ok(());
        }
        // Enough parts of at least part_size; the last one absorbs the remainder so that
        // nothing needs downloading. Very large objects get larger parts to stay under the cap.
        let reserve = u64::from(limits::MAX_PART_NUMBER) - 1000;
        let chunk = self.shared.config.part_size.max(len.div_ceil(reserve));
        let count = (len / chunk).max(1);
        for i in 0..count {
            let start = i * chunk;
            let end = if i + 1 == count { len } else { start + chunk };
            self.spawn_copy(source, etag, start..end).await?;
        }
        Ok(())
    }

    pub(super) async fn recover(
        shared: Arc<Shared>,
        token: &ResumeToken,
    ) -> Result<Self, WriterError> {
        let fail = |detail: String| WriterError::Recover {
            key: token.key.clone(),
            detail,
        };
        // 0. An earlier writer of this upload in this process may still have part uploads
        //    landing: wait for them, so that they cannot overwrite what this one uploads.
        shared.activity.quiesce(&token.upload_id).await;
        // 1. The upload must still exist and hold the token's parts.
        let listed = match listed_parts(&shared, &token.key, &token.upload_id).await {
            Ok(parts) => parts,
            Err(e) if e.kind() == StoreErrorKind::NoSuchUpload => {
                return Err(fail(format!(
                    "upload {} no longer exists (aborted, completed, or expired by a lifecycle rule); if it was committed, use its commit token",
                    token.upload_id
                )));
            }
            Err(e) => return Err(e.into()),
        };
        let by_number: HashMap<u32, &crate::store::PartInfo> =
            listed.iter().map(|p| (p.number, p)).collect();
        for part in &token.parts {
            match by_number.get(&part.number) {
                None => {
                    return Err(fail(format!(
                        "part {} of the upload is missing",
                        part.number
                    )));
                }
                Some(p) if p.size != part.size => {
                    return Err(fail(format!(
                        "part {} has {} bytes in the store, the token says {}",
                        part.number, p.size, part.size
                    )));
                }
                Some(p) if p.etag.as_deref().is_some_and(|e| e != part.etag) => {
                    return Err(fail(format!(
                        "part {} was overwritten (ETag {}, the token says {})",
                        part.number,
                        p.etag.as_deref().unwrap_or_default(),
                        part.etag
                    )));
                }
                Some(_) => {}
            }
        }
        // 2. The tail must be there, with the recorded length and checksum.
        let got = match shared
            .config
            .retry
            .run(|| shared.store.get(&token.tail_key, None))
            .await
        {
            Ok(got) => got,
            Err(e) if e.kind() == StoreErrorKind::NotFound => {
                return Err(fail(format!(
                    "tail object {} is missing (was the token cleaned up?)",
                    token.tail_key
                )));
            }
            Err(e) => return Err(e.for_file(&token.key).into()),
        };
        let (tail_bytes, embedded) = tail::decode(&got.body)
            .map_err(|e| fail(format!("tail object {} is unreadable: {e}", token.tail_key)))?;
        if tail_bytes.len() as u64 != token.tail_len || embedded != *token {
            return Err(fail(format!(
                "tail object {} does not match the token (length {} vs {})",
                token.tail_key,
                tail_bytes.len(),
                token.tail_len
            )));
        }
        if crc32c::crc32c(&tail_bytes) != token.tail_crc32c {
            return Err(fail(format!(
                "tail object {} fails its checksum",
                token.tail_key
            )));
        }
        // 3. Resume: later parts are ignored (and their numbers skipped, so that every older
        //    token of this upload stays valid).
        let cache = PartCache::open(
            &shared.config.cache_dir,
            &token.upload_id,
            needs_part_cache(&shared),
        )
        .await?;
        let parts = token
            .parts
            .iter()
            .map(|p| Part {
                number: p.number,
                size: p.size,
                etag: Some(p.etag.clone()),
                source: cache
                    .cached(p.number, p.size)
                    .map_or(PartSource::Remote, PartSource::Cached),
            })
            .collect();
        let token_highest = token.parts.iter().map(|p| p.number).max().unwrap_or(0);
        let contiguous = shared.store.requires_contiguous_parts();
        let next_part = if contiguous {
            // Numbers after the token's are reused: tokens persisted after this one (or beside
            // it, by another writer resumed from it) would resume onto overwritten parts, and
            // stores that need contiguous numbers (s3s-fs) do not list part ETags to catch
            // that. Their tails go, so such a token fails cleanly at recover.
            invalidate_later_tails(&shared, token).await?;
            token_highest + 1
        } else {
            // Skip every number the upload holds, so every token of this upload stays valid.
            listed
                .iter()
                .map(|p| p.number)
                .max()
                .unwrap_or(0)
                .max(token_highest)
                .max(shared.activity.highest_allocated(&token.upload_id))
                + 1
        };
        let mut tail = shared.buffers.take();
        tail.extend_from_slice(&tail_bytes);
        let (key, upload) = (token.key.clone(), token.upload_id.clone());
        let recorded = Token::Resume(token.clone());
        shared
            .index_update(move |i, s| {
                if i.get(s, &upload)?.is_none() {
                    i.record_open(s, &key, &upload)?;
                }
                i.record_token(s, &recorded)
            })
            .await?;
        Ok(Self {
            shared,
            key: token.key.clone(),
            upload_id: token.upload_id.clone(),
            writer_id: token.writer_id.clone(),
            condition: token.condition.clone(),
            parts,
            parts_len: token.parts_len(),
            tail,
            next_part,
            seq: token.seq,
            session: new_session(),
            in_flight: JoinSet::new(),
            uploading: 0,
            held: HashMap::new(),
            peak_buffered: token.tail_len,
            state: WriterState::Open,
            persisted: true,
            cache,
            contiguous,
            resumed: true,
            issued: vec![(token.tail_key.clone(), token_highest)],
            board: Arc::default(),
            attributes: None,
        })
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn upload_id(&self) -> &str {
        &self.upload_id
    }

    /// The file's current length.
    pub fn len(&self) -> u64 {
        self.parts_len + self.tail.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn state(&self) -> &WriterState {
        &self.state
    }

    /// The standard headers and user metadata (Rivulet's own names included) the object will
    /// have once committed; `None` for a writer resumed from a token.
    pub fn attributes(&self) -> Option<(&ContentHeaders, &BTreeMap<String, String>)> {
        self.attributes.as_ref().map(|a| (&a.headers, &a.metadata))
    }

    /// The most bytes this writer has held in memory at once (tail plus in-flight parts).
    pub fn peak_buffered_bytes(&self) -> u64 {
        self.peak_buffered
    }

    fn check_open(&self, op: &str) -> Result<(), WriterError> {
        match &self.state {
            WriterState::Open => Ok(()),
            WriterState::Closed => Err(WriterError::State {
                key: self.key.clone(),
                detail: format!("cannot {op}: the file was closed for commit"),
            }),
            WriterState::Failed(detail) => Err(WriterError::Failed {
                key: self.key.clone(),
                detail: detail.clone(),
            }),
        }
    }

    /// Lets go of the part-sized buffer behind the tail when the tail fills less than half of
    /// it, keeping the tail's bytes in a buffer of their own size; returns the bytes of memory
    /// let go. For a file that may get nothing for a while (a sink's bucket of a past minute):
    /// its buffer goes back to the writers of this service, so the next file to fill a part
    /// reuses it instead of faulting in a fresh one, and an idle file holds only its tail. The
    /// next write moves the tail into a part buffer again (a copy of the tail).
    pub fn shrink_idle_buffer(&mut self) -> usize {
        let capacity = self.tail.capacity();
        let part_size = self.shared.config.part_size as usize;
        if capacity < part_size || self.tail.len() > capacity / 2 {
            return 0;
        }
        let own_size = BytesMut::from(&self.tail[..]);
        let buffer = std::mem::replace(&mut self.tail, own_size);
        self.shared.buffers.give_back(buffer.freeze());
        capacity - self.tail.len()
    }

    fn note_buffered(&mut self) {
        let now = self.tail.len() as u64 + self.held.values().map(|h| h.size).sum::<u64>();
        self.peak_buffered = self.peak_buffered.max(now);
    }

    /// Appends `data` at the end of the file. Full parts are uploaded in the background; when
    /// `max_in_flight` uploads are running this waits for one to finish.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), WriterError> {
        self.check_open("write")?;
        self.check_part_limit(data.len() as u64)?;
        let part_size = self.shared.config.part_size as usize;
        let mut rest = data;
        while !rest.is_empty() {
            // No room for a whole part: the last part took the buffer, or the tail is a small
            // one (recovered, cut by a truncate, or shrunk while the file was idle). A part
            // buffer takes over, with the tail's bytes.
            if self.tail.capacity() < part_size {
                let mut buffer = self.shared.buffers.take();
                buffer.extend_from_slice(&self.tail);
                self.tail = buffer;
            }
            let take = (part_size - self.tail.len()).min(rest.len());
            super::stream_copy::extend(&mut self.tail, &rest[..take]);
            rest = &rest[take..];
            self.note_buffered();
            self.flush_full_parts().await?;
        }
        Ok(())
    }

    /// Appends `data` like [`write`](Self::write), without copying the whole parts it holds
    /// from a part boundary on: each goes to the store as a slice of `data`. For callers that
    /// already hold their bytes in [`Bytes`] (a file read in part-sized pieces, a relayed
    /// body), this saves a copy of every byte. The slices keep `data`'s buffer alive until
    /// their parts are uploaded; the rest is copied as by `write`.
    pub async fn write_bytes(&mut self, mut data: Bytes) -> Result<(), WriterError> {
        self.check_open("write")?;
        self.check_part_limit(data.len() as u64)?;
        let part_size = self.shared.config.part_size as usize;
        while self.tail.is_empty() && data.len() >= part_size {
            let part = data.split_to(part_size);
            self.spawn_upload(part).await?;
        }
        self.write(&data).await
    }

    /// Fails before anything is written if `len` more bytes would take the file past the last
    /// part number. One part number stays reserved for the final tail.
    fn check_part_limit(&self, len: u64) -> Result<(), WriterError> {
        let part_size = self.shared.config.part_size;
        let new_parts = (self.tail.len() as u64).saturating_add(len) / part_size;
        if u64::from(self.next_part).saturating_add(new_parts) > u64::from(limits::MAX_PART_NUMBER)
        {
            return Err(WriterError::TooManyParts {
                key: self.key.clone(),
                part_size,
                max_len: max_file_len(part_size),
            });
        }
        Ok(())
    }

    async fn write_zeros(&mut self, mut n: u64) -> Result<(), WriterError> {
        while n > 0 {
            let take = n.min(ZEROS.len() as u64) as usize;
            self.write(&ZEROS[..take]).await?;
            n -= take as u64;
        }
        Ok(())
    }

    /// Uploads every full part sitting in the tail.
    async fn flush_full_parts(&mut self) -> Result<(), WriterError> {
        let part_size = self.shared.config.part_size as usize;
        while self.tail.len() >= part_size {
            let body = self.tail.split_to(part_size).freeze();
            self.spawn_upload(body).await?;
        }
        Ok(())
    }

    fn take_part_number(&mut self) -> Result<u32, WriterError> {
        if self.next_part > limits::MAX_PART_NUMBER {
            return Err(WriterError::TooManyParts {
                key: self.key.clone(),
                part_size: self.shared.config.part_size,
                max_len: max_file_len(self.shared.config.part_size),
            });
        }
        let n = self.next_part;
        self.next_part += 1;
        self.shared.activity.allocated(&self.upload_id, n);
        self.board.starting(n);
        Ok(n)
    }

    /// Waits until fewer than `max_in_flight` uploads run and fewer than `max_in_flight` parts
    /// are held in memory (uploading, or waiting for their cache write): the memory bound.
    async fn make_room(&mut self) -> Result<(), WriterError> {
        let max = self.shared.config.max_in_flight;
        while self.uploading >= max || self.held.len() >= max {
            self.join_one().await?;
        }
        Ok(())
    }

    async fn spawn_upload(&mut self, body: Bytes) -> Result<(), WriterError> {
        self.make_room().await?;
        let number = self.take_part_number()?;
        let size = body.len() as u64;
        let in_memory = PartBytes::new(body.clone());
        self.parts.push(Part {
            number,
            size,
            etag: None,
            source: PartSource::InFlight(in_memory.clone()),
        });
        self.parts_len += size;
        let caching = self.cache.is_enabled();
        self.held.insert(
            number,
            Held {
                size,
                uploading: true,
                caching,
                cached: None,
            },
        );
        self.note_buffered();
        if caching {
            // Off the upload's path: a persist waits for the upload only. Until both have ended
            // the part is read from memory.
            let cache = self.cache.clone();
            let body = body.clone();
            self.in_flight.spawn(async move {
                let path = match cache.write(number, body).await {
                    Ok(path) => Some(path),
                    Err(e) => {
                        tracing::warn!(error = %e, part = number, "cannot cache a part; it stays unreadable until commit");
                        None
                    }
                };
                TaskDone::Cache { number, path }
            });
        }
        let (shared, key, upload) = (
            self.shared.clone(),
            self.key.clone(),
            self.upload_id.clone(),
        );
        let board = self.board.clone();
        let running = self.shared.activity.start(&self.upload_id);
        self.uploading += 1;
        self.in_flight.spawn(async move {
            let result = shared
                .config
                .retry
                .run(|| {
                    shared
                        .store
                        .upload_part(&key, &upload, number, body.clone())
                })
                .await;
            board.record(number, &result);
            drop(running);
            drop(body);
            if let Ok(etag) = &result
                && !caching
                && let Some(bytes) = in_memory.release(etag)
            {
                shared.buffers.give_back(bytes);
            }
            TaskDone::Upload { number, result }
        });
        Ok(())
    }

    async fn spawn_copy(
        &mut self,
        source: &str,
        etag: &str,
        range: std::ops::Range<u64>,
    ) -> Result<(), WriterError> {
        self.make_room().await?;
        let number = self.take_part_number()?;
        let size = range.end - range.start;
        self.parts.push(Part {
            number,
            size,
            etag: None,
            source: PartSource::Copied {
                key: source.into(),
                etag: etag.into(),
                offset: range.start,
            },
        });
        self.parts_len += size;
        let (shared, key, upload) = (
            self.shared.clone(),
            self.key.clone(),
            self.upload_id.clone(),
        );
        let (source, etag) = (source.to_string(), etag.to_string());
        let board = self.board.clone();
        let running = self.shared.activity.start(&self.upload_id);
        self.uploading += 1;
        self.in_flight.spawn(async move {
            let result = shared
                .config
                .retry
                .run(|| {
                    shared.store.upload_part_copy(
                        &key,
                        &upload,
                        number,
                        &source,
                        range.clone(),
                        Some(&etag),
                    )
                })
                .await;
            board.record(number, &result);
            drop(running);
            TaskDone::Upload { number, result }
        });
        Ok(())
    }

    /// Waits for one background task and records its outcome.
    async fn join_one(&mut self) -> Result<(), WriterError> {
        let Some(joined) = self.in_flight.join_next().await else {
            return Ok(());
        };
        let failure = match joined {
            Ok(TaskDone::Upload {
                number,
                result: Ok(etag),
            }) => {
                self.uploading -= 1;
                if let Some(part) = self.parts.iter_mut().find(|p| p.number == number) {
                    part.etag = Some(etag);
                }
                if let Some(held) = self.held.get_mut(&number) {
                    held.uploading = false;
                }
                self.release_if_done(number);
                return Ok(());
            }
            Ok(TaskDone::Cache { number, path }) => {
                if let Some(held) = self.held.get_mut(&number) {
                    held.caching = false;
                    held.cached = path;
                }
                self.release_if_done(number);
                return Ok(());
            }
            Ok(TaskDone::Upload {
                number,
                result: Err(e),
            }) => {
                self.uploading -= 1;
                self.held.remove(&number);
                WriterError::Store(e)
            }
            Err(join) => WriterError::State {
                key: self.key.clone(),
                detail: format!("a part upload task failed: {join}"),
            },
        };
        self.state = WriterState::Failed(failure.to_string());
        self.in_flight.abort_all();
        self.fail_pending_parts(&failure.to_string());
        Err(failure)
    }

    /// Lets go of a part's bytes once its upload and its cache write have both ended: it is
    /// read from the cache from then on, or not at all until commit.
    fn release_if_done(&mut self, number: u32) {
        let done = self
            .held
            .get(&number)
            .is_some_and(|h| !h.uploading && !h.caching);
        if !done {
            return;
        }
        let cached = self.held.remove(&number).and_then(|h| h.cached);
        if let Some(part) = self.parts.iter_mut().find(|p| p.number == number)
            && matches!(part.source, PartSource::InFlight(_))
        {
            let source = cached.map_or(PartSource::Remote, PartSource::Cached);
            let etag = part.etag.as_deref().unwrap_or_default();
            if let PartSource::InFlight(in_memory) = std::mem::replace(&mut part.source, source)
                && let Some(bytes) = in_memory.release(etag)
            {
                self.shared.buffers.give_back(bytes);
            }
        }
    }

    /// Waits for every upload (what a token needs); cache writes may still be running.
    async fn wait_uploads(&mut self) -> Result<(), WriterError> {
        while self.uploading > 0 {
            self.join_one().await?;
        }
        Ok(())
    }

    /// Waits for every background task, cache writes included.
    async fn wait_all(&mut self) -> Result<(), WriterError> {
        while !self.in_flight.is_empty() {
            self.join_one().await?;
        }
        Ok(())
    }

    fn part_records(&self) -> Vec<PartRecord> {
        self.parts
            .iter()
            .map(|p| PartRecord {
                number: p.number,
                etag: p.etag.clone().unwrap_or_default(),
                size: p.size,
            })
            .collect()
    }

    /// Makes everything written so far durable and returns a token to resume exactly here:
    /// waits for in-flight parts, stages the tail as a new small object, records the token in
    /// the index (flushed). Costs O(tail), never O(file).
    pub async fn persist(&mut self) -> Result<ResumeToken, WriterError> {
        self.check_open("persist")?;
        self.wait_uploads().await?;
        self.begin_persist()?.wait().await
    }

    /// Starts a persist of everything written so far and returns at once: writing may go on
    /// while the parts it needs finish uploading. The returned [`PendingPersist`] resolves to
    /// the same token `persist()` would have returned, durable in the same way. Its memory is a
    /// copy of the tail (less than one part).
    pub fn begin_persist(&mut self) -> Result<PendingPersist, WriterError> {
        self.check_open("persist")?;
        let seq = self.seq + 1;
        let prefix = &self.shared.config.tail_prefix;
        let token = ResumeToken {
            key: self.key.clone(),
            upload_id: self.upload_id.clone(),
            writer_id: self.writer_id.clone(),
            condition: self.condition.clone(),
            parts: self.part_records(),
            tail_key: tail::tail_key(prefix, &self.upload_id, seq, &self.session),
            tail_len: self.tail.len() as u64,
            tail_crc32c: crc32c::crc32c(&self.tail),
            seq,
        };
        self.seq = seq;
        self.persisted = true;
        let highest = token.parts.iter().map(|p| p.number).max().unwrap_or(0);
        self.issued.push((token.tail_key.clone(), highest));
        Ok(PendingPersist {
            shared: self.shared.clone(),
            board: self.board.clone(),
            token,
            tail: Bytes::copy_from_slice(&self.tail),
            invalidations_seen: self.board.invalidation_count(),
            started: std::time::Instant::now(),
        })
    }

    /// Tells pending persists that the parts still in flight will never finish.
    fn fail_pending_parts(&self, why: &str) {
        for part in self.parts.iter().filter(|p| p.etag.is_none()) {
            self.board.abandon(part.number, why);
        }
    }

    /// Cuts the file to `len` bytes, or extends it with zeros. Cutting into an uploaded part
    /// re-makes that part: server-side for a copied part when the kept piece is big enough,
    /// otherwise from the local cache (or the copy source) into the tail.
    pub async fn truncate(&mut self, len: u64) -> Result<(), WriterError> {
        self.check_open("truncate")?;
        let current = self.len();
        if len >= current {
            // All at once, before any zeros are written: growing past the last part number
            // would otherwise upload up to the limit's worth of zeros, then fail.
            self.check_part_limit(len - current)?;
            return self.write_zeros(len - current).await;
        }
        self.wait_all().await?;
        if len >= self.parts_len {
            self.tail.truncate((len - self.parts_len) as usize);
            return Ok(());
        }
        // Find the part that holds byte `len`.
        let mut start = 0u64;
        let mut index = 0usize;
        for (i, p) in self.parts.iter().enumerate() {
            if len < start + p.size {
                index = i;
                break;
            }
            start += p.size;
        }
        let cut = self.parts[index].clone();
        let kept = len - start;
        let min_part = self.shared.store.min_part_size();
        if kept > 0 && cut.source.is_uploaded_only() && !self.shared.store.reads_parts() {
            let why = if self.cache.is_enabled() {
                "was uploaded before this writer was recovered and is not in the local cache"
            } else {
                "is uploaded and this writer runs without a part cache (cache_parts = false)"
            };
            return Err(WriterError::Truncate {
                key: self.key.clone(),
                detail: format!(
                    "part {} {why}; commit the file, then truncate the object",
                    cut.number
                ),
            });
        }
        // Read what is kept of the cut part before forgetting anything.
        let kept_bytes = match (&cut.source, kept) {
            (_, 0) => Some(Bytes::new()),
            (PartSource::Copied { .. }, k) if k >= min_part => None,
            _ => Some(self.read_part(&cut, 0..kept).await?),
        };
        for dropped in self.parts.drain(index..) {
            self.cache.remove_part(dropped.number);
        }
        self.parts_len = start;
        if self.contiguous {
            self.reuse_numbers_from(self.parts.last().map_or(1, |p| p.number + 1))
                .await?;
        }
        self.tail.clear();
        match kept_bytes {
            Some(bytes) => {
                self.tail.extend_from_slice(&bytes);
                self.flush_full_parts().await?;
            }
            None => {
                let PartSource::Copied { key, etag, offset } = cut.source else {
                    unreachable!("only copied parts are re-copied")
                };
                self.spawn_copy(&key, &etag, offset..offset + kept).await?;
            }
        }
        Ok(())
    }

    /// On a contiguous store, continues numbering at `next` and deletes the tails of the
    /// tokens that reference a number from `next` on: those parts are about to be replaced.
    async fn reuse_numbers_from(&mut self, next: u32) -> Result<(), WriterError> {
        self.next_part = next;
        // First void the pending persists that need these numbers, then delete the tails.
        self.board.invalidate_from(next);
        let (stale, kept): (Vec<_>, Vec<_>) = self
            .issued
            .drain(..)
            .partition(|(_, highest)| *highest >= next);
        self.issued = kept;
        for (tail_key, _) in stale {
            delete_tail(&self.shared, &self.upload_id, &tail_key).await?;
        }
        Ok(())
    }

    async fn read_part(
        &self,
        part: &Part,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes, WriterError> {
        match &part.source {
            PartSource::InFlight(in_memory) => match in_memory.get() {
                Ok(bytes) => Ok(bytes.slice(range.start as usize..range.end as usize)),
                Err(etag) => self.read_uploaded(part.number, &etag, range).await,
            },
            PartSource::Cached(path) => cache::read_range(path.clone(), range).await,
            PartSource::Copied { key, etag, offset } => {
                let abs = offset + range.start..offset + range.end;
                let store = &self.shared.store;
                let got = self
                    .shared
                    .config
                    .retry
                    .run(|| store.get(key, Some(abs.clone())))
                    .await?;
                check_source_etag(&self.key, key, etag, &got.meta.etag)?;
                Ok(got.body)
            }
            PartSource::Remote => {
                let etag = part.etag.as_deref().unwrap_or_default();
                self.read_uploaded(part.number, etag, range).await
            }
        }
    }

    /// Reads a part that is only in the store: from its upload where the store reads parts of
    /// open uploads, else not until the file is committed.
    async fn read_uploaded(
        &self,
        number: u32,
        etag: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes, WriterError> {
        if self.shared.store.reads_parts() {
            let store = &self.shared.store;
            let (key, upload) = (&self.key, &self.upload_id);
            return Ok(self
                .shared
                .config
                .retry
                .run(|| store.read_part(key, upload, number, etag, range.clone()))
                .await?);
        }
        let why = if self.cache.is_enabled() {
            "was uploaded before this writer was recovered and is not in the local cache"
        } else {
            "is uploaded and this writer runs without a part cache (cache_parts = false)"
        };
        Err(WriterError::Read {
            key: self.key.clone(),
            detail: format!("part {number} {why}; it is readable once the file is committed"),
        })
    }

    /// Reads up to `len` bytes at `offset` of the open file (what was written so far).
    pub async fn read_at(&self, offset: u64, len: u64) -> Result<Bytes, WriterError> {
        self.check_open("read")?;
        let end = offset.saturating_add(len).min(self.len());
        if offset >= end {
            return Ok(Bytes::new());
        }
        let mut out = BytesMut::with_capacity((end - offset) as usize);
        let mut start = 0u64;
        for part in &self.parts {
            let part_end = start + part.size;
            if part_end > offset && start < end {
                let from = offset.max(start) - start;
                let to = end.min(part_end) - start;
                out.extend_from_slice(&self.read_part(part, from..to).await?);
            }
            start = part_end;
            if start >= end {
                break;
            }
        }
        if end > self.parts_len {
            let from = offset.max(self.parts_len) - self.parts_len;
            let to = end - self.parts_len;
            out.extend_from_slice(&self.tail[from as usize..to as usize]);
        }
        Ok(out.freeze())
    }

    /// Abandons the file: aborts its upload, deletes its tails and forgets it in the index.
    /// Every token of it becomes unrecoverable. Dropping a writer that never persisted does
    /// the same in the background; this does it now and reports failures.
    pub async fn abort(mut self) -> Result<(), WriterError> {
        self.in_flight.abort_all();
        while self.in_flight.join_next().await.is_some() {}
        self.state = WriterState::Closed; // Drop must not abort a second time.
        super::maintenance::abort_upload(&self.shared, &self.key, &self.upload_id).await
    }

    /// Ends writing: uploads the tail as the last part and returns the committer that
    /// completes the upload. The writer refuses everything afterwards.
    pub async fn close_for_commit(&mut self) -> Result<Committer, WriterError> {
        self.close(false).await
    }

    /// Like [`close_for_commit`](Self::close_for_commit), but the local part cache (with the
    /// tail cached too) goes to the committer instead of being deleted, so that
    /// [`Committer::commit_keeping_cache`] can hand the part files to the caller, e.g. to keep
    /// serving reads of the committed object from local disk. A failed or aborted commit, or
    /// a committer dropped without one, still deletes them.
    pub async fn close_for_commit_keeping_cache(&mut self) -> Result<Committer, WriterError> {
        self.close(true).await
    }

    async fn close(&mut self, keep_cache: bool) -> Result<Committer, WriterError> {
        self.check_open("close")?;
        self.wait_all().await?;
        if !self.tail.is_empty() {
            let number = self.take_part_number()?;
            let body = self.tail.split().freeze();
            let (store, key, upload) = (&self.shared.store, &self.key, &self.upload_id);
            let uploaded = self
                .shared
                .config
                .retry
                .run(|| store.upload_part(key, upload, number, body.clone()));
            // Cached only when the files are kept: otherwise the write would be deleted unread.
            let cache = &self.cache;
            let cached = async {
                if !keep_cache || !cache.is_enabled() {
                    return None;
                }
                match cache.write(number, body.clone()).await {
                    Ok(path) => Some(path),
                    Err(e) => {
                        tracing::warn!(error = %e, part = number, "cannot cache the last part; reads will fetch it");
                        None
                    }
                }
            };
            let (etag, cached) = tokio::join!(uploaded, cached);
            let etag = match etag {
                Ok(etag) => etag,
                Err(e) => {
                    if cached.is_some() {
                        self.cache.remove_part(number);
                    }
                    return Err(e.into());
                }
            };
            self.parts.push(Part {
                number,
                size: body.len() as u64,
                etag: Some(etag),
                source: cached.map_or(PartSource::Remote, PartSource::Cached),
            });
            self.parts_len += body.len() as u64;
        }
        let token = CommitToken {
            key: self.key.clone(),
            upload_id: self.upload_id.clone(),
            writer_id: self.writer_id.clone(),
            condition: self.condition.clone(),
            parts: self.part_records(),
        };
        let recorded = Token::Commit(token.clone());
        self.shared
            .index_update(move |i, s| i.record_token(s, &recorded))
            .await?;
        self.state = WriterState::Closed;
        self.board.close();
        if keep_cache && let Some(dir) = self.cache.dir() {
            let kept = CachedParts::new(dir.to_path_buf(), self.cached_parts());
            // The committer owns the directory now: the writer's drop must leave it.
            self.cache = PartCache::none();
            return Ok(
                Committer::with_cache(self.shared.clone(), token, kept).resumed(self.resumed)
            );
        }
        self.cache.remove_all();
        Ok(Committer::new(self.shared.clone(), token).resumed(self.resumed))
    }

    /// The parts whose cache file is complete, with their offsets in the file.
    fn cached_parts(&self) -> Vec<CachedPart> {
        let mut offset = 0;
        let mut cached = Vec::new();
        for part in &self.parts {
            if let PartSource::Cached(path) = &part.source
                && std::fs::metadata(path).is_ok_and(|m| m.len() == part.size)
            {
                cached.push(CachedPart {
                    path: path.clone(),
                    offset,
                    len: part.size,
                });
            }
            offset += part.size;
        }
        cached
    }
}

/// Deletes one tail and forgets it in the index.
async fn delete_tail(
    shared: &Arc<Shared>,
    upload_id: &str,
    tail_key: &str,
) -> Result<(), WriterError> {
    shared
        .config
        .retry
        .run(|| shared.store.delete(tail_key))
        .await?;
    let (upload, tail) = (upload_id.to_string(), tail_key.to_string());
    shared
        .index_update(move |i, s| i.release_tail(s, &upload, &tail))
        .await
}

/// Deletes the tails of `token`'s upload persisted after it (a higher sequence number, or the
/// same one by a sibling writer).
async fn invalidate_later_tails(
    shared: &Arc<Shared>,
    token: &ResumeToken,
) -> Result<(), WriterError> {
    let dir = tail::tail_dir(&shared.config.tail_prefix, &token.upload_id);
    let store = &shared.store;
    let tails = shared.config.retry.run(|| store.list_all(&dir)).await?;
    for t in tails {
        let seq = t.key[dir.len()..]
            .get(..16)
            .and_then(|h| u64::from_str_radix(h, 16).ok());
        let later = match seq {
            Some(seq) => seq > token.seq || (seq == token.seq && t.key != token.tail_key),
            None => false,
        };
        if later {
            delete_tail(shared, &token.upload_id, &t.key).await?;
        }
    }
    Ok(())
}

fn new_session() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_string()
}

fn check_source_etag(
    key: &str,
    source: &str,
    expected: &str,
    found: &str,
) -> Result<(), WriterError> {
    if expected == found {
        Ok(())
    } else {
        Err(WriterError::Read {
            key: key.to_string(),
            detail: format!(
                "the object {source} this file copies from was replaced (ETag {found}, expected {expected})"
            ),
        })
    }
}

impl Drop for FileWriter {
    /// A writer dropped without `close_for_commit` publishes nothing. If it never handed out a
    /// token, its upload is aborted (in the background) and forgotten; if it did, the upload
    /// stays for whoever holds the token. The local cache goes either way.
    fn drop(&mut self) {
        self.in_flight.abort_all();
        self.board.close();
        self.fail_pending_parts("the writer was dropped before this part finished uploading");
        self.cache.remove_all();
        if self.state == WriterState::Closed || self.persisted {
            return;
        }
        let (shared, key, upload) = (
            self.shared.clone(),
            self.key.clone(),
            self.upload_id.clone(),
        );
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = shared.store.abort_multipart(&key, &upload).await;
                let _ = shared.index_update(move |i, s| i.remove(s, &upload)).await;
            });
        }
    }
}

/// Whether a writer keeps its own copy of uploaded parts for reads of the open file: only when
/// asked to and when the store cannot read the parts back itself (S3 cannot; a local directory
/// can, and a copy there would write every byte twice to the same disk).
fn needs_part_cache(shared: &Shared) -> bool {
    shared.config.cache_parts && !shared.store.reads_parts()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use crate::store::local::LocalStore;
    use crate::{Index, RecoverableWriter, WriterConfig};

    /// A writer without part cache gives its part's buffer back when the upload ends, while
    /// the writer itself is left alone (an engine sink's bucket nobody writes to any more).
    /// On the local store: the memory store keeps the uploaded bytes themselves.
    #[tokio::test]
    async fn an_idle_writer_lets_go_of_its_uploaded_parts() {
        const PART: usize = 5 << 20;
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(LocalStore::open(dir.path()).unwrap());
        let config = WriterConfig {
            part_size: PART as u64,
            cache_parts: false,
            ..Default::default()
        };
        let service = RecoverableWriter::new(store, Index::temporary().unwrap(), config).unwrap();
        let mut file = service.open("idle").await.unwrap();
        file.write(&vec![1; PART + 10]).await.unwrap();

        let deadline = Instant::now() + Duration::from_secs(10);
        while service.shared.buffers.spare() == 0 {
            assert!(
                Instant::now() < deadline,
                "the uploaded part's buffer never came back"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The part now reads from the store, and the next part fills the buffer again.
        assert_eq!(
            &file.read_at(PART as u64 - 6, 12).await.unwrap()[..],
            &[1; 12]
        );
        file.write(&vec![2; PART]).await.unwrap();
        let committer = file.close_for_commit().await.unwrap();
        committer.commit().await.unwrap();
        let got = service.store().get("idle", None).await.unwrap().body;
        assert_eq!(got.len(), 2 * PART + 10);
        assert!(got[..PART + 10].iter().all(|&b| b == 1));
        assert!(got[PART + 10..].iter().all(|&b| b == 2));
    }
}

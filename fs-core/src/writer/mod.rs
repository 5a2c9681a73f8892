//! The recoverable writer: Flink's `RecoverableWriter` contract over any [`ObjectStore`], with
//! the fixes listed in `docs/design.md`.
//!
//! - [`RecoverableWriter`] is the service: it opens files ([`FileWriter`]), recovers them from
//!   tokens, builds committers, cleans up tails, and maintains the index.
//! - [`FileWriter`] is one file being written (an open multipart upload).
//! - [`Committer`] completes a closed file's upload, idempotently.

mod activity;
mod buffers;
mod cache;
mod commit;
mod file;
mod maintenance;
mod pipeline;
mod stream_copy;
pub mod tail;

use std::path::PathBuf;
use std::sync::Arc;

use thiserror::Error;

pub use self::cache::{CachedPart, CachedParts};
pub use self::commit::{CommitOutcome, Committer};
pub use self::file::{FileWriter, WriterState};
pub use self::maintenance::{GcOptions, GcReport, RebuildReport};
pub use self::pipeline::PendingPersist;
use crate::error::{StoreError, StoreErrorKind};
use crate::index::{Index, IndexEntry, IndexError};
use crate::retry::RetryPolicy;
use crate::store::{DynStore, ObjectStoreExt, PutOptions, limits};
use crate::token::{CommitToken, ResumeToken, Token, TokenError};

/// Metadata name under which an object records the writer that committed it.
pub const WRITER_ID_METADATA: &str = "rivulet-writer-id";

/// User metadata names with this prefix are Rivulet's own (the writer id, the gateway's marks):
/// an append or truncate does not carry them over to the new object.
pub const INTERNAL_METADATA_PREFIX: &str = "rivulet-";

/// Whether a user metadata name is Rivulet's own (see [`INTERNAL_METADATA_PREFIX`]).
pub fn is_internal_metadata(name: &str) -> bool {
    name.starts_with(INTERNAL_METADATA_PREFIX)
}

/// What an append or truncate keeps of the object it starts from: its standard headers
/// (Content-Type, Content-Encoding, ...) and its user metadata, but for Rivulet's own names.
pub(crate) fn carried_attributes(meta: &crate::store::ObjectMeta) -> PutOptions {
    PutOptions {
        headers: meta.headers.clone(),
        metadata: meta
            .metadata
            .iter()
            .filter(|(name, _)| !is_internal_metadata(name))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect(),
        ..PutOptions::default()
    }
}

/// Tuning of a [`RecoverableWriter`].
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Size of the parts uploaded as the file grows (>= the store's minimum, 5 MiB on S3).
    pub part_size: u64,
    /// Parts uploaded concurrently per file; a writer that has this many in flight waits
    /// (backpressure) instead of buffering more.
    pub max_in_flight: usize,
    /// Hidden key prefix of staged tails.
    pub tail_prefix: String,
    /// Keep a local copy of every uploaded part, so that an open file can be read (and cut
    /// into an uploaded part) anywhere: S3 serves no part of an upload until it completes.
    /// On by default, so that every writer reads its own writes. Writers that never read back
    /// (the CLI's uploads, the engine's sinks) turn it off: the copy costs a local disk write
    /// of every byte. Stores that read parts back (the local store) never need it, and the
    /// writer keeps no copy there whatever this says.
    pub cache_parts: bool,
    /// Where uploaded parts are cached for reads of open files.
    pub cache_dir: PathBuf,
    /// Retries of store calls on transient failures.
    pub retry: RetryPolicy,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            part_size: 8 * 1024 * 1024,
            max_in_flight: 4,
            tail_prefix: ".rivulet/tails/".into(),
            cache_parts: true,
            cache_dir: std::env::temp_dir().join("rivulet-cache"),
            retry: RetryPolicy::default(),
        }
    }
}

/// Largest part size accepted: a copied prefix part may reach twice this, which must stay under
/// S3's 5 GiB part limit.
const MAX_CONFIG_PART_SIZE: u64 = 2 * 1024 * 1024 * 1024;

/// What went wrong in the writer. Store failures keep their kind; the others say which file
/// and what to do.
#[derive(Debug, Error)]
pub enum WriterError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("invalid resume or commit token: {0}")]
    Token(#[from] TokenError),
    #[error("invalid writer configuration: {0}")]
    Config(String),
    #[error("{key}: {detail}")]
    State { key: String, detail: String },
    #[error(
        "{key}: the file would need more than 10,000 parts of {part_size} bytes (about {max_len} bytes at most); write it with a larger part size (parts of at most 5 GiB hold files of up to about {} bytes)",
        max_file_len(limits::MAX_PART_SIZE)
    )]
    TooManyParts {
        key: String,
        part_size: u64,
        max_len: u64,
    },
    #[error("recover {key}: {detail}")]
    Recover { key: String, detail: String },
    #[error("commit {key}: {detail}")]
    Commit { key: String, detail: String },
    #[error("read {key}: {detail}")]
    Read { key: String, detail: String },
    #[error("truncate {key}: {detail}")]
    Truncate { key: String, detail: String },
    #[error("local part cache {path}: {source}")]
    Cache {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{key}: the writer failed earlier ({detail}); recover the file from its last resume token"
    )]
    Failed { key: String, detail: String },
}

impl WriterError {
    /// The store error behind this one, if any.
    pub fn store_kind(&self) -> Option<StoreErrorKind> {
        match self {
            WriterError::Store(e) => Some(e.kind()),
            _ => None,
        }
    }

    /// Whether a commit that failed with this error would fail the same way on every retry:
    /// the object changed under its condition, or the key cannot hold the object.
    pub fn is_permanent_commit_failure(&self) -> bool {
        matches!(self, WriterError::Commit { .. })
            || matches!(
                self.store_kind(),
                Some(StoreErrorKind::InvalidKey | StoreErrorKind::InvalidArgument)
            )
    }
}

pub(crate) struct Shared {
    pub(crate) store: DynStore,
    pub(crate) store_name: String,
    pub(crate) index: Index,
    pub(crate) config: WriterConfig,
    /// Part numbers used and uploads running per upload, across this service's writers.
    pub(crate) activity: Arc<activity::Activity>,
    /// Buffers of uploaded parts, filled again by the next part of any of its writers.
    pub(crate) buffers: buffers::PartBuffers,
}

impl Shared {
    /// Runs an index update off the async threads (sled flushes with fsync).
    pub(crate) async fn index_update(
        &self,
        update: impl FnOnce(&Index, &str) -> Result<(), IndexError> + Send + 'static,
    ) -> Result<(), WriterError> {
        let index = self.index.clone();
        let store = self.store_name.clone();
        tokio::task::spawn_blocking(move || update(&index, &store))
            .await
            .map_err(|e| WriterError::Config(format!("index task failed: {e}")))?
            .map_err(WriterError::from)
    }
}

/// The writer service over one store. Cheap to clone.
#[derive(Clone)]
pub struct RecoverableWriter {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RecoverableWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecoverableWriter")
            .field("store", &self.shared.store_name)
            .field("index", &self.shared.index.path())
            .field("config", &self.shared.config)
            .finish()
    }
}

impl RecoverableWriter {
    /// A writer service over `store`, recording tokens in `index`.
    pub fn new(store: DynStore, index: Index, config: WriterConfig) -> Result<Self, WriterError> {
        let min = store.min_part_size();
        if config.part_size < min {
            return Err(WriterError::Config(format!(
                "part size {} is below the store's minimum part size {min}",
                config.part_size
            )));
        }
        if config.part_size > MAX_CONFIG_PART_SIZE {
            return Err(WriterError::Config(format!(
                "part size {} is above the maximum {MAX_CONFIG_PART_SIZE}",
                config.part_size
            )));
        }
        if config.max_in_flight == 0 {
            return Err(WriterError::Config(
                "max_in_flight must be at least 1".into(),
            ));
        }
        if config.tail_prefix.is_empty() || !config.tail_prefix.ends_with('/') {
            return Err(WriterError::Config(format!(
                "tail prefix {:?} must be non-empty and end with '/'",
                config.tail_prefix
            )));
        }
        let store_name = store.describe();
        let buffers = buffers::PartBuffers::new(config.part_size as usize, config.max_in_flight);
        Ok(Self {
            shared: Arc::new(Shared {
                store,
                store_name,
                index,
                config,
                activity: Arc::default(),
                buffers,
            }),
        })
    }

    pub fn store(&self) -> &DynStore {
        &self.shared.store
    }

    pub fn config(&self) -> &WriterConfig {
        &self.shared.config
    }

    /// Opens a new file at `key`; committing it replaces whatever object is there.
    pub async fn open(&self, key: &str) -> Result<FileWriter, WriterError> {
        FileWriter::new_upload(
            self.shared.clone(),
            key,
            crate::store::PutCondition::None,
            PutOptions::default(),
        )
        .await
    }

    /// Opens `key` for appending: the existing object's bytes are the file's start (copied
    /// server-side), and the commit replaces exactly that version of the object (If-Match), or
    /// creates it (If-None-Match) when there was none.
    pub async fn open_append(&self, key: &str) -> Result<FileWriter, WriterError> {
        FileWriter::open_existing(self.shared.clone(), key, None).await
    }

    /// Opens the existing object `key` cut or extended (with zeros) to `len` bytes.
    pub async fn open_truncate(&self, key: &str, len: u64) -> Result<FileWriter, WriterError> {
        FileWriter::open_existing(self.shared.clone(), key, Some(len)).await
    }

    /// Truncates (or extends with zeros) a committed object to `len` bytes and commits it.
    pub async fn truncate_object(&self, key: &str, len: u64) -> Result<CommitOutcome, WriterError> {
        let mut file = self.open_truncate(key, len).await?;
        file.close_for_commit().await?.commit().await
    }

    /// Resumes a file exactly at a persisted point. Checks first that the upload still exists
    /// with the token's parts and that the tail object is intact; bytes written after the
    /// token are gone.
    pub async fn recover(&self, token: &ResumeToken) -> Result<FileWriter, WriterError> {
        FileWriter::recover(self.shared.clone(), token).await
    }

    /// A committer for a file closed (possibly in another process) with this token.
    pub fn recover_for_commit(&self, token: &CommitToken) -> Committer {
        Committer::new(self.shared.clone(), token.clone()).resumed(true)
    }

    /// Deletes the tail that `token` staged, once no one needs to resume from it. Succeeds if
    /// it is already gone. Tails are never deleted implicitly while their upload is open, so
    /// any token handed out stays recoverable until it is cleaned up.
    ///
    /// The upload's latest token in the index keeps its tail (this succeeds and deletes
    /// nothing): `recover_all` hands that token out after a crash, so it must stay
    /// recoverable. Its tail goes when the file is committed or aborted.
    pub async fn cleanup(&self, token: &ResumeToken) -> Result<(), WriterError> {
        let (index, name, upload) = (
            self.shared.index.clone(),
            self.shared.store_name.clone(),
            token.upload_id.clone(),
        );
        let entry = tokio::task::spawn_blocking(move || index.get(&name, &upload))
            .await
            .map_err(|e| WriterError::Config(format!("index task failed: {e}")))??;
        if let Some(IndexEntry {
            latest: Some(Token::Resume(latest)),
            ..
        }) = &entry
            && latest.tail_key == token.tail_key
        {
            tracing::debug!(tail = %token.tail_key, "kept: the tail of the upload's latest token");
            return Ok(());
        }
        let store = &self.shared.store;
        self.shared
            .config
            .retry
            .run(|| store.delete(&token.tail_key))
            .await?;
        let (upload, tail) = (token.upload_id.clone(), token.tail_key.clone());
        self.shared
            .index_update(move |i, s| i.release_tail(s, &upload, &tail))
            .await
    }

    /// The latest token of every upload this index knows as open on this store, for a process
    /// that restarts after a crash: resume each resume token, commit each commit token.
    pub async fn recover_all(&self) -> Result<Vec<Token>, WriterError> {
        let index = self.shared.index.clone();
        let store = self.shared.store_name.clone();
        let entries = tokio::task::spawn_blocking(move || index.entries(&store))
            .await
            .map_err(|e| WriterError::Config(format!("index task failed: {e}")))??;
        Ok(entries.into_iter().filter_map(|e| e.latest).collect())
    }

    /// Rebuilds the index from the store (tail objects and their uploads) after it was lost.
    pub async fn rebuild_index(&self) -> Result<RebuildReport, WriterError> {
        maintenance::rebuild_index(&self.shared).await
    }

    /// Aborts uploads and deletes tails that nothing references (see [`GcOptions`]).
    pub async fn gc(&self, opts: &GcOptions) -> Result<GcReport, WriterError> {
        maintenance::gc(&self.shared, opts).await
    }

    /// Aborts the upload behind a resume token and deletes its tails: the file is abandoned.
    pub async fn abort(&self, token: &ResumeToken) -> Result<(), WriterError> {
        self.abort_upload(&token.key, &token.upload_id).await
    }

    /// Aborts an upload by key and id (e.g. one the index lists without a token), deletes its
    /// tails and forgets it in the index. An upload that is already gone is not an error.
    pub async fn abort_upload(&self, key: &str, upload_id: &str) -> Result<(), WriterError> {
        maintenance::abort_upload(&self.shared, key, upload_id).await
    }
}

/// The largest file a writer can produce with `part_size` parts.
pub(crate) fn max_file_len(part_size: u64) -> u64 {
    part_size.saturating_mul(u64::from(limits::MAX_PART_NUMBER) - 1)
}

/// Every part of an upload as the store lists it; `NoSuchUpload` passes through.
pub(crate) async fn listed_parts(
    shared: &Shared,
    key: &str,
    upload_id: &str,
) -> Result<Vec<crate::store::PartInfo>, StoreError> {
    shared
        .config
        .retry
        .run(|| shared.store.list_all_parts(key, upload_id))
        .await
}

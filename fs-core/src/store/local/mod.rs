//! The local-directory store: Rivulet's embedded default backend (`file:///dir`).
//!
//! Objects are plain files, so users see their data as-is: the key `a/b/c.txt` is the file
//! `<root>/a/b/c.txt`. The store follows S3's rules exactly like the other backends (5 MiB
//! minimum for non-last parts, 10,000 parts, conditional writes, NoSuchUpload for finished
//! uploads, byte-ordered listings), so code tested against it works against S3.
//!
//! # On-disk layout
//!
//! ```text
//! <root>/a/b/c.txt                          object `a/b/c.txt`
//! <root>/dir/.rivulet-dir-marker            object `dir/` (a directory marker, e.g. from mkdir)
//! <root>/.rivulet-store/                    the store's own state, never listed
//!     lock                                  lock file (File::lock) for conditional writes
//!     tmp/                                  temporary files, renamed into place when complete
//!     meta/<hh>/<md5(key)>.json             metadata sidecar of an object
//!     uploads/<upload-id>/manifest.json     a multipart upload: key, content type, metadata, time
//!     uploads/<upload-id>/data              the parts' slots: part n at (n - 1) x slot size
//!     uploads/<upload-id>/slot-size         the slot size, fixed by the upload's first part
//!     uploads/<upload-id>/slot-00001        the record of a part in its slot (offset, size, ETag)
//!     uploads/<upload-id>/part-00001        a part's own file (one that does not fit a slot)
//!     uploads/<upload-id>/part-00001.etag   cached ETag of the part file (checked against it)
//!     trash/                                finished uploads being removed
//! ```
//!
//! A sidecar holds the object's ETag, content type and user metadata, together with the identity
//! of the data file it describes (inode, size and modification time). It is only believed when
//! that identity matches the data file; otherwise (a file copied or edited by hand, or no sidecar
//! at all) the ETag is the MD5 of the file, computed on demand and cached, and the metadata is
//! empty. Last-Modified is the file's mtime.
//!
//! # Durability
//!
//! Every acknowledged write is durable: data goes to a temporary file that is fsynced, then
//! renamed into place, then the directory is fsynced (so are directories created on the way).
//! The sidecar is written durably *before* the data is renamed, with a record for the new file
//! and one for the file it replaces, so a crash at any point leaves the object that is on disk
//! described by its own record. A put's record that holds nothing but the file's MD5 (no content
//! type, no metadata) is written without fsync: lost or left stale by a crash, it matches no new
//! file, and the ETag is computed back from the file. Deleting removes the file and its
//! sidecar and then the parent directories that became empty (S3 has no empty directories),
//! never the root. A part written into its upload's data file is fsynced there before its
//! record is written and fsynced (see `slots.rs`), and completing an upload links that file
//! into place when it holds the object.
//!
//! Object writes (put, complete, delete) and upload aborts hold an exclusive lock: an in-process
//! mutex plus `File::lock` on `.rivulet-store/lock`, which also excludes other processes using
//! the same directory. Conditional writes check and rename under that lock.
//!
//! # Limitations
//!
//! - A file system cannot hold a file and a directory of the same name, so the object `a` and
//!   keys under `a/` (like `a/b`) cannot coexist: writing one while the other exists fails with
//!   `InvalidKey` and a message naming the conflict. (The marker `a/` and keys under `a/` are
//!   fine: the marker lives inside the directory.)
//! - Keys with an empty segment (`a//b`), a segment longer than 255 bytes, anything under
//!   `.rivulet-store/`, or a segment named `.rivulet-dir-marker` are rejected with `InvalidKey`.
//! - Files whose names are not UTF-8, symbolic links to directories, and special files (FIFOs,
//!   sockets, devices) are not listed. On a case-insensitive file system keys differing only by
//!   case collide.
//! - Sidecars are tied to inodes: copying the store's directory with a tool that does not keep
//!   inodes (cp, rsync), or touching a file, drops its content type and user metadata and turns
//!   a multipart ETag into the file's MD5. A sidecar of a file deleted by hand stays behind
//!   (harmless: it no longer matches anything).
//! - Temporary files left by a crash are removed when a store is opened if they are older than
//!   a day (other processes may be using younger ones).

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::rules;
use super::{
    BodyStream, CompletedPart, ContentHeaders, GetResult, ListPage, ListRequest, ObjectMeta,
    ObjectStore, ObjectSummary, PartInfo, PartsPage, PutCondition, PutOptions, PutResult,
    UploadInfo, UploadsMarker, UploadsPage, limits,
};
use crate::error::{StoreError, StoreErrorKind};
use crate::md5::Md5;

/// The reserved directory under the root that holds the store's own state.
/// The reserved directory under a local store's root that holds its internal state.
pub const SYS_DIR: &str = ".rivulet-store";
/// The file inside `dir/` that stores the directory-marker object `dir/`.
const DIR_MARKER: &str = ".rivulet-dir-marker";
/// The longest file name most file systems accept.
const MAX_NAME_LEN: usize = 255;
/// Longest upload id accepted (ours are 32 hex digits).
const MAX_UPLOAD_ID_LEN: usize = 128;
/// Temporary files older than this are removed when a store is opened.
const TMP_MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);
const MANIFEST: &str = "manifest.json";
const COPY_BUF: usize = 1 << 20;

/// A store in a local directory. Cloning shares the handle.
#[derive(Clone)]
pub struct LocalStore {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    sys: PathBuf,
    /// `.rivulet-store/lock`, locked with `File::lock` to exclude other processes; `None` for
    /// a store opened for reading, which writes nothing (not even cached ETags).
    lock_file: Option<File>,
    /// Excludes other threads of this process (a file lock is held per open file, not thread).
    mutex: Mutex<()>,
}

impl fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalStore")
            .field("root", &self.inner.root)
            .finish()
    }
}

impl LocalStore {
    /// Opens (creating it if missing) the store in the directory `root`.
    pub fn open(root: impl AsRef<Path>) -> Result<LocalStore, StoreError> {
        const OP: &str = "open local store";
        let given = root.as_ref();
        let name = given.display().to_string();
        let io = |e| StoreError::io(OP, name.clone(), e);
        fs::create_dir_all(given).map_err(io)?;
        let root = given.canonicalize().map_err(io)?;
        if !fs::metadata(&root).map_err(io)?.is_dir() {
            return Err(StoreError::new(
                StoreErrorKind::Other,
                OP,
                name.clone(),
                "not a directory",
            ));
        }
        let sys = root.join(SYS_DIR);
        for dir in [
            sys.clone(),
            sys.join("tmp"),
            sys.join("meta"),
            sys.join("uploads"),
            sys.join("trash"),
        ] {
            create_dir_durable(&dir).map_err(io)?;
        }
        let lock_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(sys.join("lock"))
            .map_err(io)?;
        let inner = Inner {
            root,
            sys,
            lock_file: Some(lock_file),
            mutex: Mutex::new(()),
        };
        inner.sweep();
        Ok(LocalStore {
            inner: Arc::new(inner),
        })
    }

    /// Opens the store in the existing directory `root` for reading only: nothing is created
    /// or written there (a directory that holds no store does not become one, and a reader
    /// needs no write permission), no leftovers are swept, and every write fails.
    pub fn open_for_reading(root: impl AsRef<Path>) -> Result<LocalStore, StoreError> {
        const OP: &str = "open local store";
        let given = root.as_ref();
        let name = given.display().to_string();
        let root = given
            .canonicalize()
            .map_err(|e| StoreError::io(OP, name.clone(), e))?;
        if !fs::metadata(&root)
            .map_err(|e| StoreError::io(OP, name.clone(), e))?
            .is_dir()
        {
            return Err(StoreError::new(
                StoreErrorKind::Other,
                OP,
                name,
                "not a directory",
            ));
        }
        let sys = root.join(SYS_DIR);
        Ok(LocalStore {
            inner: Arc::new(Inner {
                root,
                sys,
                lock_file: None,
                mutex: Mutex::new(()),
            }),
        })
    }

    /// Removes (or with `dry_run` only lists) the temporary files last written more than
    /// `older_than` ago, with their sizes: what processes killed mid-write left in
    /// `.rivulet-store/tmp/`. Opening a store removes those older than a day; `rivulet gc`
    /// calls this with its own grace period.
    pub fn collect_temp_files(&self, older_than: Duration, dry_run: bool) -> Vec<(PathBuf, u64)> {
        self.inner.stale_temp_files(older_than, !dry_run)
    }

    /// The store's directory (absolute).
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Runs blocking file work on tokio's blocking pool.
    /// [`run`](Self::run) for work that changes the store.
    async fn run_write<T, F>(&self, op: &'static str, key: &str, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    {
        if !self.inner.writable() {
            return Err(self.inner.read_only(op, key));
        }
        self.run(op, key, work).await
    }

    async fn run<T, F>(&self, op: &'static str, key: &str, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        match tokio::task::spawn_blocking(move || work(&inner)).await {
            Ok(result) => result,
            Err(e) => Err(StoreError::new(
                StoreErrorKind::Other,
                op,
                key,
                format!("the blocking file task failed: {e}"),
            )),
        }
    }
}

// One module a job; each extends `Inner` or serves those that do.
mod files;
mod keys;
mod multipart;
mod objects;
mod records;
mod slots;
mod walk;

use files::*;
use keys::*;
use records::*;

use walk::{Walker, start_dir};

// ---------------------------------------------------------------------------------------------
// The trait

#[async_trait]
impl ObjectStore for LocalStore {
    fn describe(&self) -> String {
        format!("file://{}", self.inner.root.display())
    }

    /// Complete checks its condition under the store's write lock.
    fn enforces_complete_conditions(&self) -> bool {
        true
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<GetResult, StoreError> {
        let k = key.to_string();
        self.run("get", key, move |s| s.get(&k, range)).await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        let k = key.to_string();
        self.run("head", key, move |s| s.head(&k)).await
    }

    async fn put(&self, key: &str, body: Bytes, opts: PutOptions) -> Result<PutResult, StoreError> {
        let k = key.to_string();
        self.run_write("put", key, move |s| s.put(&k, &body, opts))
            .await
    }

    /// Written to a temporary file as the body arrives (hashed on the way), then synced and
    /// placed like [`put`](Self::put): memory stays at about one write batch, and the ETag is
    /// the body's MD5 whatever its size. A body that fails or brings more or fewer bytes than
    /// declared leaves nothing.
    async fn put_stream(
        &self,
        key: &str,
        size: u64,
        mut body: BodyStream,
        opts: PutOptions,
    ) -> Result<PutResult, StoreError> {
        use futures::StreamExt;
        const OP: &str = "put";
        /// Bytes gathered before each write of the file (one blocking task each).
        const WRITE_BATCH: usize = 1 << 20;
        let k = key.to_string();
        let (tmp, mut file) = self.run_write(OP, key, move |s| s.begin_put(&k)).await?;
        let mut md5 = Md5::new();
        let mut written = 0u64;
        let mut batch: Vec<Bytes> = Vec::new();
        let mut batched = 0usize;
        let short = |written: u64| {
            StoreError::new(
                StoreErrorKind::InvalidArgument,
                OP,
                key,
                format!("the body does not hold the {size} bytes it declared ({written} came)"),
            )
        };
        loop {
            let next = body.next().await;
            let end = next.is_none();
            if let Some(chunk) = next {
                let chunk = chunk.map_err(|e| {
                    StoreError::new(
                        StoreErrorKind::Transient,
                        OP,
                        key,
                        format!("reading the body: {e}"),
                    )
                })?;
                written += chunk.len() as u64;
                if written > size {
                    return Err(short(written));
                }
                md5.update(&chunk);
                batched += chunk.len();
                batch.push(chunk);
            }
            if batched >= WRITE_BATCH || (end && batched > 0) {
                let chunks = std::mem::take(&mut batch);
                batched = 0;
                let k = key.to_string();
                // The file goes to the blocking task and comes back with its result.
                file = self
                    .run(OP, key, move |_| {
                        for chunk in &chunks {
                            file.write_all(chunk)
                                .map_err(|e| StoreError::io(OP, &k, e))?;
                        }
                        Ok(file)
                    })
                    .await?;
            }
            if end {
                break;
            }
        }
        if written != size {
            return Err(short(written));
        }
        let etag = hex::encode(md5.finalize());
        let k = key.to_string();
        self.run(OP, key, move |s| s.finish_put(&k, tmp, file, etag, opts))
            .await
    }

    fn streams_puts(&self) -> bool {
        true
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let k = key.to_string();
        self.run_write("delete", key, move |s| s.delete(&k)).await
    }

    async fn list(&self, req: ListRequest) -> Result<ListPage, StoreError> {
        let prefix = req.prefix.clone();
        self.run("list", &prefix, move |s| s.list(&req)).await
    }

    async fn create_multipart(&self, key: &str, opts: PutOptions) -> Result<String, StoreError> {
        let k = key.to_string();
        self.run_write("create multipart upload", key, move |s| {
            s.create_multipart(&k, opts)
        })
        .await
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Bytes,
    ) -> Result<String, StoreError> {
        let (k, id) = (key.to_string(), upload_id.to_string());
        self.run_write("upload part", key, move |s| {
            s.upload_part(&k, &id, part_number, &body)
        })
        .await
    }

    async fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        source_key: &str,
        range: Range<u64>,
        source_if_match: Option<&str>,
    ) -> Result<String, StoreError> {
        let (k, id, src) = (
            key.to_string(),
            upload_id.to_string(),
            source_key.to_string(),
        );
        let if_match = source_if_match.map(str::to_string);
        self.run_write("upload part copy", key, move |s| {
            s.upload_part_copy(&k, &id, part_number, &src, range, if_match.as_deref())
        })
        .await
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
        condition: PutCondition,
    ) -> Result<PutResult, StoreError> {
        let (k, id, parts) = (key.to_string(), upload_id.to_string(), parts.to_vec());
        let min_part_size = self.min_part_size();
        self.run_write("complete multipart upload", key, move |s| {
            s.complete_multipart(&k, &id, &parts, &condition, min_part_size)
        })
        .await
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        let (k, id) = (key.to_string(), upload_id.to_string());
        self.run_write("abort multipart upload", key, move |s| {
            s.abort_multipart(&k, &id)
        })
        .await
    }

    fn reads_parts(&self) -> bool {
        true
    }

    async fn read_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        etag: &str,
        range: Range<u64>,
    ) -> Result<Bytes, StoreError> {
        let (k, id, e) = (key.to_string(), upload_id.to_string(), etag.to_string());
        self.run("read part", key, move |s| {
            s.read_part(&k, &id, number, &e, range)
        })
        .await
    }

    async fn list_parts(
        &self,
        key: &str,
        upload_id: &str,
        marker: Option<u32>,
    ) -> Result<PartsPage, StoreError> {
        let (k, id) = (key.to_string(), upload_id.to_string());
        self.run("list parts", key, move |s| s.list_parts(&k, &id, marker))
            .await
    }

    async fn list_multipart_uploads(
        &self,
        prefix: &str,
        marker: Option<UploadsMarker>,
    ) -> Result<UploadsPage, StoreError> {
        let p = prefix.to_string();
        self.run("list multipart uploads", prefix, move |s| {
            s.list_multipart_uploads(&p, marker)
        })
        .await
    }
}

#[cfg(test)]
mod tests;

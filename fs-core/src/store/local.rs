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
//!     uploads/<upload-id>/part-00001        a part's bytes
//!     uploads/<upload-id>/part-00001.etag   cached ETag of the part (checked against the file)
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
//! described by its own record. Deleting removes the file and its sidecar and then the parent
//! directories that became empty (S3 has no empty directories), never the root.
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
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

use super::rules;
use super::{
    CompletedPart, GetResult, ListPage, ListRequest, ObjectMeta, ObjectStore, ObjectSummary,
    PartInfo, PartsPage, PutCondition, PutOptions, PutResult, UploadInfo, UploadsMarker,
    UploadsPage, limits,
};
use crate::error::{StoreError, StoreErrorKind};

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
    /// `.rivulet-store/lock`, locked with `File::lock` to exclude other processes.
    lock_file: File,
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
            lock_file,
            mutex: Mutex::new(()),
        };
        inner.sweep();
        Ok(LocalStore {
            inner: Arc::new(inner),
        })
    }

    /// The store's directory (absolute).
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Runs blocking file work on tokio's blocking pool.
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

// ---------------------------------------------------------------------------------------------
// On-disk records

/// What identifies a version of a data file: a sidecar or cached ETag is believed only while
/// the file still has this identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct FileId {
    ino: u64,
    size: u64,
    mtime_sec: i64,
    mtime_nsec: i64,
}

#[cfg(unix)]
fn file_id(md: &fs::Metadata) -> FileId {
    use std::os::unix::fs::MetadataExt;
    FileId {
        ino: md.ino(),
        size: md.len(),
        mtime_sec: md.mtime(),
        mtime_nsec: md.mtime_nsec(),
    }
}

#[cfg(not(unix))]
fn file_id(md: &fs::Metadata) -> FileId {
    let (sec, nsec) = md
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| {
            (
                i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                i64::from(d.subsec_nanos()),
            )
        })
        .unwrap_or((0, 0));
    FileId {
        ino: 0,
        size: md.len(),
        mtime_sec: sec,
        mtime_nsec: nsec,
    }
}

/// An object's metadata, valid for the data file `file`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct MetaRecord {
    file: FileId,
    etag: String,
    content_type: Option<String>,
    metadata: BTreeMap<String, String>,
}

/// The sidecar of one key: records for the current data file and, while a write is in flight
/// (or after a crash in the middle of one), for the file it replaces.
#[derive(Debug, Serialize, Deserialize)]
struct Sidecar {
    key: String,
    records: Vec<MetaRecord>,
}

/// A multipart upload's manifest.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    key: String,
    content_type: Option<String>,
    metadata: BTreeMap<String, String>,
    initiated_secs: u64,
    initiated_nanos: u32,
}

impl Manifest {
    fn initiated(&self) -> Option<SystemTime> {
        UNIX_EPOCH.checked_add(Duration::new(self.initiated_secs, self.initiated_nanos))
    }
}

/// The cached ETag of a part file.
#[derive(Debug, Serialize, Deserialize)]
struct PartCache {
    file: FileId,
    etag: String,
}

/// What a key holds right now, as far as a conditional write needs to know.
enum Current {
    Absent,
    /// The object exists; its record when one is known (or was asked to be computed).
    Present(Option<MetaRecord>),
}

// ---------------------------------------------------------------------------------------------
// Keys and paths

/// Checks a key against S3's rules and the local store's own: no empty segment, nothing under
/// `.rivulet-store/`, no segment named like the directory-marker file, no segment too long to
/// be a file name.
fn check_key(op: &'static str, key: &str) -> Result<(), StoreError> {
    rules::validate_key(op, key)?;
    let fail = |why: String| Err(StoreError::new(StoreErrorKind::InvalidKey, op, key, why));
    let body = key.strip_suffix('/').unwrap_or(key);
    for (i, seg) in body.split('/').enumerate() {
        if seg.is_empty() {
            return fail(
                "the key has an empty segment ('//'), which cannot be a file name in a local store"
                    .into(),
            );
        }
        if i == 0 && seg == SYS_DIR {
            return fail(format!(
                "keys under '{SYS_DIR}/' are reserved for the local store's state"
            ));
        }
        if seg == DIR_MARKER {
            return fail(format!("'{DIR_MARKER}' is reserved for directory markers"));
        }
        if seg.len() > MAX_NAME_LEN {
            return fail(format!(
                "a segment is {} bytes long; file names are limited to {MAX_NAME_LEN}",
                seg.len()
            ));
        }
    }
    Ok(())
}

/// The directories (as key segments) that hold a key's file: `a/b/c` -> `[a, b]`, `a/b/` ->
/// `[a, b]` (the marker file lives inside `a/b`).
fn parent_segments(key: &str) -> Vec<&str> {
    match key.strip_suffix('/') {
        Some(dir) => dir.split('/').collect(),
        None => {
            let mut segs: Vec<&str> = key.split('/').collect();
            segs.pop();
            segs
        }
    }
}

/// Checks an upload id: only ASCII letters and digits, so it can never name a path outside the
/// uploads directory.
fn check_upload_id(op: &'static str, key: &str, upload_id: &str) -> Result<(), StoreError> {
    if upload_id.is_empty()
        || upload_id.len() > MAX_UPLOAD_ID_LEN
        || !upload_id.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(StoreError::new(
            StoreErrorKind::NoSuchUpload,
            op,
            key,
            format!("malformed upload id {upload_id:?}"),
        ));
    }
    Ok(())
}

fn no_such_upload(op: &'static str, key: &str, upload_id: &str, why: &str) -> StoreError {
    StoreError::new(
        StoreErrorKind::NoSuchUpload,
        op,
        key,
        format!("upload id {upload_id}: {why}"),
    )
}

/// A key that cannot be stored because a file and a directory would need the same name.
fn conflict(op: &'static str, key: &str, detail: String) -> StoreError {
    StoreError::new(StoreErrorKind::InvalidKey, op, key, detail)
}

/// Whether an I/O error means "the path does not exist" (including through a file where a
/// directory was expected).
fn is_missing(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

fn check_condition(
    op: &'static str,
    key: &str,
    current: &Current,
    condition: &PutCondition,
) -> Result<(), StoreError> {
    match (condition, current) {
        (PutCondition::None, _) | (PutCondition::IfNoneMatch, Current::Absent) => Ok(()),
        (PutCondition::IfNoneMatch, Current::Present(_)) => Err(StoreError::new(
            StoreErrorKind::PreconditionFailed,
            op,
            key,
            "If-None-Match: the key already exists",
        )),
        (PutCondition::IfMatch(_), Current::Absent) => Err(StoreError::new(
            StoreErrorKind::NotFound,
            op,
            key,
            "If-Match: the key does not exist",
        )),
        (PutCondition::IfMatch(etag), Current::Present(record)) => {
            let actual = record.as_ref().map(|r| r.etag.as_str()).unwrap_or("");
            if actual == etag.trim_matches('"') {
                Ok(())
            } else {
                Err(StoreError::new(
                    StoreErrorKind::PreconditionFailed,
                    op,
                    key,
                    format!("If-Match: the object's ETag is {actual}, not {etag}"),
                ))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// File helpers

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

/// Creates a directory if missing, making its entry durable; `Ok(true)` if it was created.
fn create_dir_durable(dir: &Path) -> io::Result<bool> {
    match fs::create_dir(dir) {
        Ok(()) => {
            sync_parent(dir)?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(false),
        Err(e) => Err(e),
    }
}

/// The MD5 hex of a whole file.
fn md5_file(file: &File) -> io::Result<String> {
    let mut reader = file;
    reader.seek(SeekFrom::Start(0))?;
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; COPY_BUF];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(buf.get(..n).unwrap_or_default()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    let bytes = fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn to_json<T: Serialize>(op: &'static str, key: &str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| {
        StoreError::new(
            StoreErrorKind::Other,
            op,
            key,
            format!("cannot encode state: {e}"),
        )
    })
}

/// A temporary file or directory under `.rivulet-store/tmp/`, removed on drop unless kept.
struct TempPath {
    path: PathBuf,
    is_dir: bool,
    keep: bool,
}

impl TempPath {
    fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if !self.keep {
            let _ = if self.is_dir {
                fs::remove_dir_all(&self.path)
            } else {
                fs::remove_file(&self.path)
            };
        }
    }
}

/// Holds the store's exclusive lock (in-process mutex and file lock).
struct StoreLock<'a> {
    file: &'a File,
    _guard: MutexGuard<'a, ()>,
}

impl Drop for StoreLock<'_> {
    fn drop(&mut self) {
        // Unlock the file before the mutex guard (a field) is released.
        if let Err(e) = self.file.unlock() {
            tracing::warn!("local store: cannot unlock the lock file: {e}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The blocking implementation

impl Inner {
    fn data_path(&self, key: &str) -> PathBuf {
        match key.strip_suffix('/') {
            Some(dir) => self.root.join(dir).join(DIR_MARKER),
            None => self.root.join(key),
        }
    }

    fn sidecar_path(&self, key: &str) -> PathBuf {
        let hash = rules::md5_hex(key.as_bytes());
        let fan = hash.get(..2).unwrap_or("00").to_string();
        self.sys.join("meta").join(fan).join(format!("{hash}.json"))
    }

    fn tmp_dir(&self) -> PathBuf {
        self.sys.join("tmp")
    }

    fn uploads_dir(&self) -> PathBuf {
        self.sys.join("uploads")
    }

    fn upload_dir(&self, upload_id: &str) -> PathBuf {
        self.uploads_dir().join(upload_id)
    }

    fn lock(&self, op: &'static str, key: &str) -> Result<StoreLock<'_>, StoreError> {
        // Nothing guarded by the mutex can be left half-updated by a panic: it only orders.
        let guard = self.mutex.lock().unwrap_or_else(|p| p.into_inner());
        self.lock_file
            .lock()
            .map_err(|e| StoreError::io(op, key, e))?;
        Ok(StoreLock {
            file: &self.lock_file,
            _guard: guard,
        })
    }

    /// Removes what crashed processes left behind: the trash, and temporaries older than a day.
    fn sweep(&self) {
        if let Ok(entries) = fs::read_dir(self.sys.join("trash")) {
            for entry in entries.flatten() {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
        let Some(cutoff) = SystemTime::now().checked_sub(TMP_MAX_AGE) else {
            return;
        };
        if let Ok(entries) = fs::read_dir(self.tmp_dir()) {
            for entry in entries.flatten() {
                let Ok(md) = entry.metadata() else { continue };
                if md.modified().is_ok_and(|t| t < cutoff) {
                    let _ = if md.is_dir() {
                        fs::remove_dir_all(entry.path())
                    } else {
                        fs::remove_file(entry.path())
                    };
                }
            }
        }
    }

    fn new_temp(&self, op: &'static str, key: &str) -> Result<(TempPath, File), StoreError> {
        let path = self
            .tmp_dir()
            .join(uuid::Uuid::new_v4().simple().to_string());
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| StoreError::io(op, key, e))?;
        Ok((
            TempPath {
                path,
                is_dir: false,
                keep: false,
            },
            file,
        ))
    }

    /// Writes a small file through a temporary and a rename; with `durable`, fsyncs the file
    /// and the destination directory.
    fn write_small(
        &self,
        op: &'static str,
        key: &str,
        dest: &Path,
        bytes: &[u8],
        durable: bool,
    ) -> Result<(), StoreError> {
        let io = |e| StoreError::io(op, key, e);
        let (tmp, mut file) = self.new_temp(op, key)?;
        file.write_all(bytes).map_err(io)?;
        if durable {
            file.sync_all().map_err(io)?;
        }
        drop(file);
        fs::rename(&tmp.path, dest).map_err(io)?;
        tmp.keep();
        if durable {
            sync_parent(dest).map_err(io)?;
        }
        Ok(())
    }

    fn read_sidecar(&self, key: &str) -> Option<Sidecar> {
        read_json::<Sidecar>(&self.sidecar_path(key)).filter(|s| s.key == key)
    }

    fn write_sidecar(
        &self,
        op: &'static str,
        key: &str,
        records: Vec<MetaRecord>,
        durable: bool,
    ) -> Result<(), StoreError> {
        let path = self.sidecar_path(key);
        if let Some(dir) = path.parent() {
            create_dir_durable(dir).map_err(|e| StoreError::io(op, key, e))?;
        }
        let bytes = to_json(
            op,
            key,
            &Sidecar {
                key: key.to_string(),
                records,
            },
        )?;
        self.write_small(op, key, &path, &bytes, durable)
    }

    /// Opens an object's data file; `None` if there is no object (missing, a directory, or not
    /// a regular file).
    fn open_object(
        &self,
        op: &'static str,
        key: &str,
    ) -> Result<Option<(File, fs::Metadata)>, StoreError> {
        let path = self.data_path(key);
        let io = |e| StoreError::io(op, key, e);
        // Look before opening, so a FIFO placed in the tree cannot block the open.
        match fs::metadata(&path) {
            Ok(md) if md.is_file() => {}
            Ok(_) => return Ok(None),
            Err(e) if is_missing(&e) => return Ok(None),
            Err(e) => return Err(io(e)),
        }
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if is_missing(&e) => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let md = file.metadata().map_err(io)?;
        Ok(md.is_file().then_some((file, md)))
    }

    /// The metadata record describing the open data file: from the sidecar when it matches the
    /// file, else the file's MD5 with empty metadata (cached in the sidecar when `cache`; never
    /// pass `cache` while holding the lock).
    fn record_for(
        &self,
        op: &'static str,
        key: &str,
        file: &File,
        md: &fs::Metadata,
        cache: bool,
    ) -> Result<MetaRecord, StoreError> {
        let id = file_id(md);
        if let Some(record) = self
            .read_sidecar(key)
            .and_then(|s| s.records.into_iter().find(|r| r.file == id))
        {
            return Ok(record);
        }
        let etag = md5_file(file).map_err(|e| StoreError::io(op, key, e))?;
        let record = MetaRecord {
            file: id,
            etag,
            content_type: None,
            metadata: BTreeMap::new(),
        };
        if cache {
            self.cache_record(key, &record);
        }
        Ok(record)
    }

    /// Best effort: remembers a computed ETag for a file that had no valid sidecar.
    fn cache_record(&self, key: &str, record: &MetaRecord) {
        const OP: &str = "cache ETag";
        let result = (|| -> Result<(), StoreError> {
            let _lock = self.lock(OP, key)?;
            let md = fs::metadata(self.data_path(key)).map_err(|e| StoreError::io(OP, key, e))?;
            if file_id(&md) != record.file {
                return Ok(()); // replaced meanwhile
            }
            if self
                .read_sidecar(key)
                .is_some_and(|s| s.records.iter().any(|r| r.file == record.file))
            {
                return Ok(());
            }
            // The cache need not be durable: a lost or torn sidecar only means recomputing.
            self.write_sidecar(OP, key, vec![record.clone()], false)
        })();
        if let Err(e) = result {
            tracing::debug!("local store: not caching the ETag: {e}");
        }
    }

    fn meta_of(key: &str, md: &fs::Metadata, record: MetaRecord) -> ObjectMeta {
        ObjectMeta {
            key: key.to_string(),
            size: md.len(),
            etag: record.etag,
            last_modified: md.modified().ok(),
            content_type: record.content_type,
            metadata: record.metadata,
        }
    }

    /// What the key holds now (call under the lock). With `hash`, an object without a valid
    /// sidecar gets its MD5 computed.
    fn current(&self, op: &'static str, key: &str, hash: bool) -> Result<Current, StoreError> {
        let Some((file, md)) = self.open_object(op, key)? else {
            return Ok(Current::Absent);
        };
        let id = file_id(&md);
        if let Some(record) = self
            .read_sidecar(key)
            .and_then(|s| s.records.into_iter().find(|r| r.file == id))
        {
            return Ok(Current::Present(Some(record)));
        }
        if hash {
            return self
                .record_for(op, key, &file, &md, false)
                .map(|r| Current::Present(Some(r)));
        }
        Ok(Current::Present(None))
    }

    /// Creates the directories that hold a key's file (durably); `Ok(true)` if any was created.
    fn make_parent_dirs(&self, op: &'static str, key: &str) -> Result<bool, StoreError> {
        let segs = parent_segments(key);
        let mut dir = self.root.clone();
        let mut created = false;
        for (i, seg) in segs.iter().enumerate() {
            dir.push(seg);
            match fs::create_dir(&dir) {
                Ok(()) => {
                    created = true;
                    sync_parent(&dir).map_err(|e| StoreError::io(op, key, e))?;
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if !dir.is_dir() {
                        let holder = segs.get(..=i).unwrap_or_default().join("/");
                        return Err(conflict(
                            op,
                            key,
                            format!(
                                "the object '{holder}' is a file, so there cannot be keys under \
                                 '{holder}/' in a local store (a file and a directory cannot \
                                 share a name)"
                            ),
                        ));
                    }
                }
                Err(e) => return Err(StoreError::io(op, key, e)),
            }
        }
        Ok(created)
    }

    /// Removes the directories holding a key's file that are now empty, deepest first, never
    /// the root (S3 has no empty directories).
    fn prune_empty_dirs(&self, key: &str) {
        let segs = parent_segments(key);
        for n in (1..=segs.len()).rev() {
            let dir = self.root.join(segs.get(..n).unwrap_or_default().join("/"));
            if fs::remove_dir(&dir).is_err() {
                break;
            }
            let _ = sync_parent(&dir);
        }
    }

    /// Puts a fully written and fsynced temporary file in place as `key` (call under the lock):
    /// checks the condition, creates parent directories, writes the sidecar, renames.
    fn place(
        &self,
        op: &'static str,
        key: &str,
        tmp: TempPath,
        record: MetaRecord,
        condition: &PutCondition,
    ) -> Result<(), StoreError> {
        let current = self.current(op, key, matches!(condition, PutCondition::IfMatch(_)))?;
        check_condition(op, key, &current, condition)?;
        let target = self.data_path(key);
        let created = self.make_parent_dirs(op, key)?;
        let result = (|| {
            if fs::symlink_metadata(&target).is_ok_and(|md| md.is_dir()) {
                return Err(conflict(
                    op,
                    key,
                    format!(
                        "'{key}' is a directory because keys under '{key}/' exist; a local store \
                         cannot hold the object '{key}' next to them (a file and a directory \
                         cannot share a name)"
                    ),
                ));
            }
            let mut records = vec![record];
            if let Current::Present(Some(old)) = current {
                records.push(old); // still describes the file on disk until the rename
            }
            self.write_sidecar(op, key, records, true)?;
            fs::rename(&tmp.path, &target).map_err(|e| StoreError::io(op, key, e))?;
            tmp.keep();
            sync_parent(&target).map_err(|e| StoreError::io(op, key, e))
        })();
        if result.is_err() && created {
            self.prune_empty_dirs(key);
        }
        result
    }

    // --- objects ---

    fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<GetResult, StoreError> {
        const OP: &str = "get";
        check_key(OP, key)?;
        let Some((file, md)) = self.open_object(OP, key)? else {
            return Err(StoreError::new(StoreErrorKind::NotFound, OP, key, ""));
        };
        let record = self.record_for(OP, key, &file, &md, true)?;
        let meta = Self::meta_of(key, &md, record);
        let range = rules::resolve_range(OP, key, range, meta.size)?;
        let len = range.end.saturating_sub(range.start);
        let want = usize::try_from(len).map_err(|_| {
            StoreError::new(
                StoreErrorKind::InvalidRange,
                OP,
                key,
                "range too large for memory",
            )
        })?;
        let mut body = Vec::new();
        body.try_reserve_exact(want).map_err(|_| {
            StoreError::new(
                StoreErrorKind::Other,
                OP,
                key,
                format!("cannot allocate {want} bytes for the range"),
            )
        })?;
        let io = |e| StoreError::io(OP, key, e);
        let mut reader = &file;
        reader.seek(SeekFrom::Start(range.start)).map_err(io)?;
        reader.take(len).read_to_end(&mut body).map_err(io)?;
        if body.len() != want {
            return Err(StoreError::new(
                StoreErrorKind::Other,
                OP,
                key,
                "the file shrank while it was read (edited in place?)",
            ));
        }
        Ok(GetResult {
            meta,
            range,
            body: Bytes::from(body),
        })
    }

    fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        const OP: &str = "head";
        check_key(OP, key)?;
        let Some((file, md)) = self.open_object(OP, key)? else {
            return Err(StoreError::new(StoreErrorKind::NotFound, OP, key, ""));
        };
        let record = self.record_for(OP, key, &file, &md, true)?;
        Ok(Self::meta_of(key, &md, record))
    }

    fn put(&self, key: &str, body: &[u8], opts: PutOptions) -> Result<PutResult, StoreError> {
        const OP: &str = "put";
        check_key(OP, key)?;
        let io = |e| StoreError::io(OP, key, e);
        let etag = rules::md5_hex(body);
        let (tmp, mut file) = self.new_temp(OP, key)?;
        file.write_all(body).map_err(io)?;
        file.sync_all().map_err(io)?;
        let id = file_id(&file.metadata().map_err(io)?);
        drop(file);
        let record = MetaRecord {
            file: id,
            etag: etag.clone(),
            content_type: opts.content_type,
            metadata: opts.metadata,
        };
        let _lock = self.lock(OP, key)?;
        self.place(OP, key, tmp, record, &opts.condition)?;
        Ok(PutResult { etag })
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        const OP: &str = "delete";
        check_key(OP, key)?;
        let target = self.data_path(key);
        let io = |e| StoreError::io(OP, key, e);
        let _lock = self.lock(OP, key)?;
        let removed = match fs::symlink_metadata(&target) {
            Ok(md) if md.is_dir() => false, // keys under `key/`, not an object
            Ok(_) => match fs::remove_file(&target) {
                Ok(()) => true,
                Err(e) if is_missing(&e) => false,
                Err(e) => return Err(io(e)),
            },
            Err(e) if is_missing(&e) => false,
            Err(e) => return Err(io(e)),
        };
        if removed {
            sync_parent(&target).map_err(io)?;
        }
        match fs::remove_file(self.sidecar_path(key)) {
            Ok(()) => {}
            Err(e) if is_missing(&e) => {}
            // The object is gone; a stale sidecar matches no file, so this is not an error.
            Err(e) => tracing::warn!("local store: cannot remove the sidecar of '{key}': {e}"),
        }
        if removed {
            self.prune_empty_dirs(key);
        }
        Ok(())
    }

    fn list(&self, req: &ListRequest) -> Result<ListPage, StoreError> {
        const OP: &str = "list";
        let Some(start) = start_dir(&req.prefix) else {
            return Ok(ListPage::default()); // no valid key can start with this prefix
        };
        let mut walker = Walker::new(&self.root, req);
        walker.enter(start, false);
        let mut page = rules::list_page(&mut walker, req);
        if let Some((dir, e)) = walker.error {
            return Err(StoreError::io(OP, dir, e));
        }
        let mut objects = Vec::with_capacity(page.objects.len());
        for entry in page.objects {
            // Skip objects removed since the walk saw them.
            if let Some((file, md)) = self.open_object(OP, &entry.key)? {
                let record = self.record_for(OP, &entry.key, &file, &md, true)?;
                objects.push(ObjectSummary {
                    key: entry.key,
                    size: md.len(),
                    etag: record.etag,
                    last_modified: md.modified().ok(),
                });
            }
        }
        page.objects = objects;
        Ok(page)
    }

    // --- multipart ---

    fn load_upload(
        &self,
        op: &'static str,
        key: &str,
        upload_id: &str,
    ) -> Result<Manifest, StoreError> {
        check_upload_id(op, key, upload_id)?;
        let path = self.upload_dir(upload_id).join(MANIFEST);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if is_missing(&e) => {
                return Err(no_such_upload(op, key, upload_id, "not found"));
            }
            Err(e) => return Err(StoreError::io(op, key, e)),
        };
        let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
            StoreError::new(
                StoreErrorKind::Other,
                op,
                key,
                format!("the manifest of upload {upload_id} is corrupt: {e}"),
            )
        })?;
        if manifest.key != key {
            return Err(no_such_upload(
                op,
                key,
                upload_id,
                "the upload belongs to another key",
            ));
        }
        Ok(manifest)
    }

    fn create_multipart(&self, key: &str, opts: PutOptions) -> Result<String, StoreError> {
        const OP: &str = "create multipart upload";
        check_key(OP, key)?;
        let io = |e| StoreError::io(OP, key, e);
        let upload_id = uuid::Uuid::new_v4().simple().to_string();
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let manifest = Manifest {
            key: key.to_string(),
            content_type: opts.content_type,
            metadata: opts.metadata,
            initiated_secs: since.as_secs(),
            initiated_nanos: since.subsec_nanos(),
        };
        let bytes = to_json(OP, key, &manifest)?;
        // Build the upload's directory aside, then rename it in whole.
        let staging = TempPath {
            path: self.tmp_dir().join(format!("upload-{upload_id}")),
            is_dir: true,
            keep: false,
        };
        fs::create_dir(&staging.path).map_err(io)?;
        let mut file = File::create(staging.path.join(MANIFEST)).map_err(io)?;
        file.write_all(&bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
        drop(file);
        sync_dir(&staging.path).map_err(io)?;
        fs::rename(&staging.path, self.upload_dir(&upload_id)).map_err(io)?;
        staging.keep();
        sync_dir(&self.uploads_dir()).map_err(io)?;
        Ok(upload_id)
    }

    fn part_path(&self, upload_id: &str, number: u32) -> PathBuf {
        self.upload_dir(upload_id).join(format!("part-{number:05}"))
    }

    fn part_cache_path(&self, upload_id: &str, number: u32) -> PathBuf {
        self.upload_dir(upload_id)
            .join(format!("part-{number:05}.etag"))
    }

    /// Moves a written and fsynced temporary file into an upload as part `number`.
    fn install_part(
        &self,
        op: &'static str,
        key: &str,
        upload_id: &str,
        number: u32,
        tmp: TempPath,
        cache: PartCache,
    ) -> Result<(), StoreError> {
        let dest = self.part_path(upload_id, number);
        let gone = |e: io::Error| {
            if is_missing(&e) {
                no_such_upload(op, key, upload_id, "aborted or completed meanwhile")
            } else {
                StoreError::io(op, key, e)
            }
        };
        fs::rename(&tmp.path, &dest).map_err(gone)?;
        tmp.keep();
        sync_dir(&self.upload_dir(upload_id)).map_err(gone)?;
        // The ETag cache is checked against the part file, so it need not be durable.
        if let Ok(bytes) = serde_json::to_vec(&cache) {
            let _ = self.write_small(
                op,
                key,
                &self.part_cache_path(upload_id, number),
                &bytes,
                false,
            );
        }
        Ok(())
    }

    /// The ETag and identity of an uploaded part; `None` if it was not uploaded.
    fn part_etag(
        &self,
        op: &'static str,
        key: &str,
        upload_id: &str,
        number: u32,
    ) -> Result<Option<(String, FileId)>, StoreError> {
        let io = |e| StoreError::io(op, key, e);
        let file = match File::open(self.part_path(upload_id, number)) {
            Ok(file) => file,
            Err(e) if is_missing(&e) => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let id = file_id(&file.metadata().map_err(io)?);
        let cache_path = self.part_cache_path(upload_id, number);
        if let Some(cache) = read_json::<PartCache>(&cache_path).filter(|c| c.file == id) {
            return Ok(Some((cache.etag, id)));
        }
        let etag = md5_file(&file).map_err(io)?;
        if let Ok(bytes) = serde_json::to_vec(&PartCache {
            file: id,
            etag: etag.clone(),
        }) {
            let _ = self.write_small(op, key, &cache_path, &bytes, false);
        }
        Ok(Some((etag, id)))
    }

    /// The part numbers uploaded so far, ascending.
    fn part_numbers(
        &self,
        op: &'static str,
        key: &str,
        upload_id: &str,
    ) -> Result<Vec<u32>, StoreError> {
        let entries = match fs::read_dir(self.upload_dir(upload_id)) {
            Ok(entries) => entries,
            Err(e) if is_missing(&e) => {
                return Err(no_such_upload(op, key, upload_id, "not found"));
            }
            Err(e) => return Err(StoreError::io(op, key, e)),
        };
        let mut numbers = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io(op, key, e))?;
            let name = entry.file_name();
            let Some(digits) = name.to_str().and_then(|n| n.strip_prefix("part-")) else {
                continue;
            };
            if digits.len() == 5
                && digits.bytes().all(|b| b.is_ascii_digit())
                && let Ok(n) = digits.parse::<u32>()
                && (1..=limits::MAX_PART_NUMBER).contains(&n)
            {
                numbers.push(n);
            }
        }
        numbers.sort_unstable();
        Ok(numbers)
    }

    fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        body: &[u8],
    ) -> Result<String, StoreError> {
        const OP: &str = "upload part";
        check_key(OP, key)?;
        rules::validate_part_number(OP, key, number)?;
        rules::validate_part_size(OP, key, body.len() as u64)?;
        self.load_upload(OP, key, upload_id)?;
        let io = |e| StoreError::io(OP, key, e);
        let etag = rules::md5_hex(body);
        let (tmp, mut file) = self.new_temp(OP, key)?;
        file.write_all(body).map_err(io)?;
        file.sync_all().map_err(io)?;
        let id = file_id(&file.metadata().map_err(io)?);
        drop(file);
        self.install_part(
            OP,
            key,
            upload_id,
            number,
            tmp,
            PartCache {
                file: id,
                etag: etag.clone(),
            },
        )?;
        Ok(etag)
    }

    fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        source_key: &str,
        range: Range<u64>,
        source_if_match: Option<&str>,
    ) -> Result<String, StoreError> {
        const OP: &str = "upload part copy";
        check_key(OP, key)?;
        check_key(OP, source_key)?;
        rules::validate_part_number(OP, key, number)?;
        rules::validate_part_size(OP, key, range.end.saturating_sub(range.start))?;
        self.load_upload(OP, key, upload_id)?;
        let Some((source, md)) = self.open_object(OP, source_key)? else {
            return Err(StoreError::new(
                StoreErrorKind::NotFound,
                OP,
                source_key,
                "the copy source does not exist",
            ));
        };
        let record = self.record_for(OP, source_key, &source, &md, true)?;
        if let Some(etag) = source_if_match
            && record.etag != etag.trim_matches('"')
        {
            return Err(StoreError::new(
                StoreErrorKind::PreconditionFailed,
                OP,
                source_key,
                format!("copy source ETag is {}, not {etag}", record.etag),
            ));
        }
        let size = md.len();
        if range.start >= range.end || range.end > size {
            return Err(StoreError::new(
                StoreErrorKind::InvalidRange,
                OP,
                source_key,
                format!(
                    "range {}..{} is outside the source's {size} bytes",
                    range.start, range.end
                ),
            ));
        }
        let len = range.end - range.start;
        let io = |e| StoreError::io(OP, key, e);
        let (tmp, mut out) = self.new_temp(OP, key)?;
        let mut reader = &source;
        reader.seek(SeekFrom::Start(range.start)).map_err(io)?;
        let mut reader = reader.take(len);
        let mut hasher = Md5::new();
        let mut buf = vec![0u8; usize::try_from(len).unwrap_or(COPY_BUF).min(COPY_BUF)];
        let mut copied = 0u64;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(StoreError::io(OP, source_key, e)),
            };
            let chunk = buf.get(..n).unwrap_or_default();
            hasher.update(chunk);
            out.write_all(chunk).map_err(io)?;
            copied += n as u64;
        }
        if copied != len {
            return Err(StoreError::new(
                StoreErrorKind::Other,
                OP,
                source_key,
                "the copy source shrank while it was read (edited in place?)",
            ));
        }
        out.sync_all().map_err(io)?;
        let id = file_id(&out.metadata().map_err(io)?);
        drop(out);
        let etag = hex::encode(hasher.finalize());
        self.install_part(
            OP,
            key,
            upload_id,
            number,
            tmp,
            PartCache {
                file: id,
                etag: etag.clone(),
            },
        )?;
        Ok(etag)
    }

    fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
        condition: &PutCondition,
        min_part_size: u64,
    ) -> Result<PutResult, StoreError> {
        const OP: &str = "complete multipart upload";
        check_key(OP, key)?;
        let manifest = self.load_upload(OP, key, upload_id)?;
        // Gather the requested parts that exist (the rules check presence, ETags and sizes).
        let mut uploaded: BTreeMap<u32, (String, u64)> = BTreeMap::new();
        let mut ids: BTreeMap<u32, FileId> = BTreeMap::new();
        for part in parts {
            if uploaded.contains_key(&part.number)
                || !(1..=limits::MAX_PART_NUMBER).contains(&part.number)
            {
                continue;
            }
            if let Some((etag, id)) = self.part_etag(OP, key, upload_id, part.number)? {
                uploaded.insert(part.number, (etag, id.size));
                ids.insert(part.number, id);
            }
        }
        if uploaded.len() < parts.len() {
            // A missing part may mean the whole upload went away meanwhile.
            self.load_upload(OP, key, upload_id)?;
        }
        rules::validate_completion(key, min_part_size, parts, &uploaded)?;
        let etags: Vec<&str> = parts
            .iter()
            .filter_map(|p| uploaded.get(&p.number).map(|(etag, _)| etag.as_str()))
            .collect();
        let etag = rules::multipart_etag(etags).ok_or_else(|| {
            StoreError::new(
                StoreErrorKind::Other,
                OP,
                key,
                "a part's ETag is not an MD5",
            )
        })?;

        // Concatenate the parts into a temporary file (copy_file_range where available).
        let io = |e| StoreError::io(OP, key, e);
        let (tmp, mut out) = self.new_temp(OP, key)?;
        let mut total = 0u64;
        for part in parts {
            let changed = || {
                StoreError::new(
                    StoreErrorKind::Conflict,
                    OP,
                    key,
                    format!("part {} changed during completion; retry", part.number),
                )
            };
            let mut file = match File::open(self.part_path(upload_id, part.number)) {
                Ok(file) => file,
                Err(e) if is_missing(&e) => return Err(changed()),
                Err(e) => return Err(io(e)),
            };
            let id = file_id(&file.metadata().map_err(io)?);
            if ids.get(&part.number) != Some(&id) {
                return Err(changed());
            }
            total += io::copy(&mut file, &mut out).map_err(io)?;
        }
        out.sync_all().map_err(io)?;
        let id = file_id(&out.metadata().map_err(io)?);
        drop(out);
        let expected: u64 = ids.values().map(|id| id.size).sum();
        if total != expected || id.size != expected {
            return Err(StoreError::new(
                StoreErrorKind::Conflict,
                OP,
                key,
                "the parts changed size during completion; retry",
            ));
        }
        let record = MetaRecord {
            file: id,
            etag: etag.clone(),
            content_type: manifest.content_type,
            metadata: manifest.metadata,
        };

        let lock = self.lock(OP, key)?;
        // Completed or aborted by someone else since we looked?
        self.load_upload(OP, key, upload_id)?;
        self.place(OP, key, tmp, record, condition)?;
        let trash = self.retire_upload(OP, key, upload_id);
        drop(lock);
        match trash {
            Ok(trash) => {
                let _ = fs::remove_dir_all(trash);
            }
            // The object is in place; the upload lingers until aborted.
            Err(e) => tracing::warn!("local store: completed, but cannot retire the upload: {e}"),
        }
        Ok(PutResult { etag })
    }

    /// Moves an upload's directory to the trash (call under the lock), so the upload id is gone
    /// at once; returns where it went, for removal after the lock is released.
    fn retire_upload(
        &self,
        op: &'static str,
        key: &str,
        upload_id: &str,
    ) -> Result<PathBuf, StoreError> {
        let trash = self
            .sys
            .join("trash")
            .join(format!("{upload_id}-{}", uuid::Uuid::new_v4().simple()));
        match fs::rename(self.upload_dir(upload_id), &trash) {
            Ok(()) => {}
            Err(e) if is_missing(&e) => {
                return Err(no_such_upload(op, key, upload_id, "not found"));
            }
            Err(e) => return Err(StoreError::io(op, key, e)),
        }
        sync_dir(&self.uploads_dir()).map_err(|e| StoreError::io(op, key, e))?;
        Ok(trash)
    }

    fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        const OP: &str = "abort multipart upload";
        check_key(OP, key)?;
        let lock = self.lock(OP, key)?;
        self.load_upload(OP, key, upload_id)?;
        let trash = self.retire_upload(OP, key, upload_id)?;
        drop(lock);
        let _ = fs::remove_dir_all(trash);
        Ok(())
    }

    fn list_parts(
        &self,
        key: &str,
        upload_id: &str,
        marker: Option<u32>,
    ) -> Result<PartsPage, StoreError> {
        const OP: &str = "list parts";
        check_key(OP, key)?;
        self.load_upload(OP, key, upload_id)?;
        let after = marker.unwrap_or(0);
        let mut numbers = self.part_numbers(OP, key, upload_id)?;
        numbers.retain(|&n| n > after);
        let next_marker = if numbers.len() > rules::MAX_LIST_KEYS {
            numbers.truncate(rules::MAX_LIST_KEYS);
            numbers.last().copied()
        } else {
            None
        };
        let mut parts = Vec::with_capacity(numbers.len());
        for number in numbers {
            if let Some((etag, id)) = self.part_etag(OP, key, upload_id, number)? {
                parts.push(PartInfo {
                    number,
                    etag: Some(etag),
                    size: id.size,
                });
            }
        }
        Ok(PartsPage { parts, next_marker })
    }

    fn list_multipart_uploads(
        &self,
        prefix: &str,
        marker: Option<UploadsMarker>,
    ) -> Result<UploadsPage, StoreError> {
        const OP: &str = "list multipart uploads";
        let entries =
            fs::read_dir(self.uploads_dir()).map_err(|e| StoreError::io(OP, prefix, e))?;
        let mut uploads = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io(OP, prefix, e))?;
            let Ok(upload_id) = entry.file_name().into_string() else {
                continue;
            };
            if check_upload_id(OP, prefix, &upload_id).is_err() {
                continue;
            }
            // An upload finished meanwhile, or a damaged one, is not listed.
            let Some(manifest) = read_json::<Manifest>(&entry.path().join(MANIFEST)) else {
                continue;
            };
            if manifest.key.starts_with(prefix) {
                uploads.push(UploadInfo {
                    initiated: manifest.initiated(),
                    key: manifest.key,
                    upload_id,
                });
            }
        }
        uploads.sort_by(|a, b| (&a.key, &a.upload_id).cmp(&(&b.key, &b.upload_id)));
        if let Some(m) = marker {
            uploads.retain(|u| (&u.key, &u.upload_id) > (&m.key, &m.upload_id));
        }
        let mut next = None;
        if uploads.len() > rules::MAX_LIST_KEYS {
            uploads.truncate(rules::MAX_LIST_KEYS);
            next = uploads.last().map(|u| UploadsMarker {
                key: u.key.clone(),
                upload_id: u.upload_id.clone(),
            });
        }
        Ok(UploadsPage { uploads, next })
    }
}

// ---------------------------------------------------------------------------------------------
// Listing: a lazy walk of the tree in key (byte) order

/// The deepest directory fully named by a listing prefix, as a key prefix (`""` or ending in
/// `/`); `None` when no valid key can start with the prefix.
fn start_dir(prefix: &str) -> Option<String> {
    let dir = match prefix.rfind('/') {
        Some(i) => prefix.get(..=i)?,
        None => return Some(String::new()),
    };
    let body = dir.strip_suffix('/').unwrap_or(dir);
    for (i, seg) in body.split('/').enumerate() {
        if seg.is_empty()
            || seg == "."
            || seg == ".."
            || seg == DIR_MARKER
            || seg.contains('\0')
            || seg.len() > MAX_NAME_LEN
            || (i == 0 && seg == SYS_DIR)
        {
            return None;
        }
    }
    Some(dir.to_string())
}

/// One entry of a directory: a file's key, or a subdirectory's key prefix (ending in `/`).
struct WalkEntry {
    key: String,
    is_dir: bool,
}

/// Yields the keys of the tree in byte order, pruning subtrees that the prefix or the
/// continuation exclude, and (with the `/` delimiter) only the first key of each subtree that
/// becomes one common prefix. Sizes and ETags are filled in later for the page's objects only.
struct Walker<'a> {
    root: &'a Path,
    prefix: &'a str,
    after: Option<&'a str>,
    collapse: bool,
    stack: Vec<std::vec::IntoIter<WalkEntry>>,
    /// Stack index of the subtree being collapsed into one common prefix.
    collapsing: Option<usize>,
    error: Option<(String, io::Error)>,
}

impl<'a> Walker<'a> {
    fn new(root: &'a Path, req: &'a ListRequest) -> Self {
        Walker {
            root,
            prefix: &req.prefix,
            after: req.continuation.as_deref(),
            collapse: req.delimiter.as_deref() == Some("/"),
            stack: Vec::new(),
            collapsing: None,
            error: None,
        }
    }

    /// Pushes the directory `dir_key` (`""` for the root); a missing directory is empty.
    fn enter(&mut self, dir_key: String, collapse: bool) {
        match read_entries(self.root, &dir_key) {
            Ok(entries) => {
                if collapse && self.collapsing.is_none() {
                    self.collapsing = Some(self.stack.len());
                }
                self.stack.push(entries.into_iter());
            }
            Err(e) if is_missing(&e) => {}
            Err(e) => {
                self.error = Some((dir_key, e));
                self.stack.clear();
            }
        }
    }

    fn wants_dir(&self, key: &str) -> bool {
        (key.starts_with(self.prefix) || self.prefix.starts_with(key))
            && key.len() <= limits::MAX_KEY_LEN
            // Every key under `key` sorts before a continuation past the whole subtree.
            && !self.after.is_some_and(|c| c > key && !c.starts_with(key))
    }

    fn wants_file(&self, key: &str) -> bool {
        key.starts_with(self.prefix)
            && self.after.is_none_or(|c| key > c)
            && check_key("list", key).is_ok()
    }
}

impl Iterator for Walker<'_> {
    type Item = ObjectSummary;

    fn next(&mut self) -> Option<ObjectSummary> {
        loop {
            let entry = match self.stack.last_mut()?.next() {
                Some(entry) => entry,
                None => {
                    self.stack.pop();
                    if self.collapsing == Some(self.stack.len()) {
                        self.collapsing = None;
                    }
                    continue;
                }
            };
            if entry.is_dir {
                if self.wants_dir(&entry.key) {
                    let collapse = self.collapse
                        && entry.key.len() > self.prefix.len()
                        && entry.key.starts_with(self.prefix);
                    self.enter(entry.key, collapse);
                }
                continue;
            }
            if !self.wants_file(&entry.key) {
                continue;
            }
            if let Some(depth) = self.collapsing.take() {
                // One key stands for the whole common prefix: skip the rest of the subtree.
                self.stack.truncate(depth);
            }
            return Some(ObjectSummary {
                key: entry.key,
                size: 0,
                etag: String::new(),
                last_modified: None,
            });
        }
    }
}

/// The entries of one directory of the tree, sorted by key: a subdirectory `d` sorts as `d/`,
/// which orders the whole walk like S3 (for example `a-b` < `a/x` < `a0`).
fn read_entries(root: &Path, dir_key: &str) -> io::Result<Vec<WalkEntry>> {
    let path = match dir_key.strip_suffix('/') {
        Some(rel) => root.join(rel),
        None => root.to_path_buf(),
    };
    let mut out = Vec::new();
    for entry in fs::read_dir(&path)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue; // not UTF-8: cannot be a key
        };
        if dir_key.is_empty() && name == SYS_DIR {
            continue;
        }
        let Ok(file_type) = entry.file_type() else {
            continue;
        };
        let (is_file, is_dir) = if file_type.is_symlink() {
            // Follow links to files; never links to directories (they could loop).
            match fs::metadata(entry.path()) {
                Ok(md) => (md.is_file(), false),
                Err(_) => continue,
            }
        } else {
            (file_type.is_file(), file_type.is_dir())
        };
        if name == DIR_MARKER {
            if is_file && !dir_key.is_empty() {
                out.push(WalkEntry {
                    key: dir_key.to_string(),
                    is_dir: false,
                });
            }
        } else if is_dir {
            out.push(WalkEntry {
                key: format!("{dir_key}{name}/"),
                is_dir: true,
            });
        } else if is_file {
            out.push(WalkEntry {
                key: format!("{dir_key}{name}"),
                is_dir: false,
            });
        }
    }
    out.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// The trait

#[async_trait]
impl ObjectStore for LocalStore {
    fn describe(&self) -> String {
        format!("file://{}", self.inner.root.display())
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
        self.run("put", key, move |s| s.put(&k, &body, opts)).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let k = key.to_string();
        self.run("delete", key, move |s| s.delete(&k)).await
    }

    async fn list(&self, req: ListRequest) -> Result<ListPage, StoreError> {
        let prefix = req.prefix.clone();
        self.run("list", &prefix, move |s| s.list(&req)).await
    }

    async fn create_multipart(&self, key: &str, opts: PutOptions) -> Result<String, StoreError> {
        let k = key.to_string();
        self.run("create multipart upload", key, move |s| {
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
        self.run("upload part", key, move |s| {
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
        self.run("upload part copy", key, move |s| {
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
        self.run("complete multipart upload", key, move |s| {
            s.complete_multipart(&k, &id, &parts, &condition, min_part_size)
        })
        .await
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        let (k, id) = (key.to_string(), upload_id.to_string());
        self.run("abort multipart upload", key, move |s| {
            s.abort_multipart(&k, &id)
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
mod tests {
    use std::collections::BTreeSet;

    use futures::StreamExt;
    use proptest::prelude::*;

    use super::*;
    use crate::store::ObjectStoreExt;

    const MIB: usize = 1024 * 1024;

    fn open() -> (tempfile::TempDir, LocalStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::open(dir.path().join("data")).expect("open");
        (dir, store)
    }

    fn opts(content_type: Option<&str>, meta: &[(&str, &str)]) -> PutOptions {
        PutOptions {
            condition: PutCondition::None,
            content_type: content_type.map(str::to_string),
            metadata: meta
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn cond(condition: PutCondition) -> PutOptions {
        PutOptions {
            condition,
            ..Default::default()
        }
    }

    async fn put(store: &LocalStore, key: &str, body: &[u8]) -> String {
        store
            .put(key, Bytes::copy_from_slice(body), PutOptions::default())
            .await
            .expect("put")
            .etag
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut out: Vec<String> = fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    fn sys(store: &LocalStore, sub: &str) -> PathBuf {
        store.root().join(SYS_DIR).join(sub)
    }

    fn keys(objects: &[ObjectSummary]) -> Vec<&str> {
        objects.iter().map(|o| o.key.as_str()).collect()
    }

    /// Every page of a listing, as (objects, common prefixes, next) per page.
    async fn all_pages(
        store: &LocalStore,
        prefix: &str,
        delimiter: Option<&str>,
        max_keys: usize,
    ) -> Vec<(Vec<String>, Vec<String>, Option<String>)> {
        let mut pages = Vec::new();
        let mut continuation = None;
        loop {
            let page = store
                .list(ListRequest {
                    prefix: prefix.to_string(),
                    delimiter: delimiter.map(str::to_string),
                    continuation: continuation.take(),
                    max_keys: Some(max_keys),
                })
                .await
                .expect("list");
            let next = page.next.clone();
            pages.push((
                page.objects.iter().map(|o| o.key.clone()).collect(),
                page.common_prefixes.clone(),
                next.clone(),
            ));
            assert!(pages.len() < 10_000, "listing does not terminate");
            match next {
                Some(n) => continuation = Some(n),
                None => return pages,
            }
        }
    }

    /// The same pages computed by the shared rules over a sorted in-memory key set.
    fn model_pages(
        all: &BTreeSet<String>,
        prefix: &str,
        delimiter: Option<&str>,
        max_keys: usize,
    ) -> Vec<(Vec<String>, Vec<String>, Option<String>)> {
        let mut pages = Vec::new();
        let mut continuation = None;
        loop {
            let req = ListRequest {
                prefix: prefix.to_string(),
                delimiter: delimiter.map(str::to_string),
                continuation: continuation.take(),
                max_keys: Some(max_keys),
            };
            let entries = all.iter().map(|k| ObjectSummary {
                key: k.clone(),
                size: 0,
                etag: String::new(),
                last_modified: None,
            });
            let page = rules::list_page(entries, &req);
            let next = page.next.clone();
            pages.push((
                page.objects.iter().map(|o| o.key.clone()).collect(),
                page.common_prefixes.clone(),
                next.clone(),
            ));
            match next {
                Some(n) => continuation = Some(n),
                None => return pages,
            }
        }
    }

    #[tokio::test]
    async fn put_get_head_round_trip_as_plain_files() {
        let (_dir, store) = open();
        let body = b"hello world";
        let res = store
            .put(
                "docs/readme.txt",
                Bytes::from_static(body),
                opts(Some("text/plain"), &[("owner", "me")]),
            )
            .await
            .unwrap();
        assert_eq!(res.etag, rules::md5_hex(body));
        // The object is the plain file users see.
        assert_eq!(
            fs::read(store.root().join("docs/readme.txt")).unwrap(),
            body
        );

        let got = store.get("docs/readme.txt", None).await.unwrap();
        assert_eq!(&got.body[..], body);
        assert_eq!(got.range, 0..11);
        assert_eq!(got.meta.size, 11);
        assert_eq!(got.meta.etag, res.etag);
        assert_eq!(got.meta.content_type.as_deref(), Some("text/plain"));
        assert_eq!(
            got.meta.metadata.get("owner").map(String::as_str),
            Some("me")
        );
        assert!(got.meta.last_modified.is_some());
        assert_eq!(store.head("docs/readme.txt").await.unwrap(), got.meta);

        // Overwriting replaces data and metadata.
        let etag2 = put(&store, "docs/readme.txt", b"bye").await;
        let head = store.head("docs/readme.txt").await.unwrap();
        assert_eq!(head.etag, etag2);
        assert_eq!(head.size, 3);
        assert_eq!(head.content_type, None);
        assert!(head.metadata.is_empty());
        assert_eq!(
            &store.get("docs/readme.txt", None).await.unwrap().body[..],
            b"bye"
        );
    }

    #[tokio::test]
    async fn ranged_reads_follow_s3() {
        let (_dir, store) = open();
        put(&store, "r", b"0123456789").await;
        let got = store.get("r", Some(2..5)).await.unwrap();
        assert_eq!((&got.body[..], got.range), (&b"234"[..], 2..5));
        assert_eq!(got.meta.size, 10);
        let got = store.get("r", Some(8..100)).await.unwrap();
        assert_eq!((&got.body[..], got.range), (&b"89"[..], 8..10));
        for bad in [10..12, 11..20] {
            let err = store.get("r", Some(bad)).await.unwrap_err();
            assert_eq!(err.kind(), StoreErrorKind::InvalidRange);
        }
        #[allow(clippy::reversed_empty_ranges)]
        let reversed = 5..3;
        assert_eq!(
            store.get("r", Some(reversed)).await.unwrap_err().kind(),
            StoreErrorKind::InvalidRange
        );
        put(&store, "empty", b"").await;
        let got = store.get("empty", Some(0..5)).await.unwrap();
        assert!(got.body.is_empty());
        assert_eq!(got.range, 0..0);
    }

    #[tokio::test]
    async fn missing_objects_and_directories_are_not_found() {
        let (_dir, store) = open();
        put(&store, "a/b", b"x").await;
        for key in ["nope", "a", "a/", "a/b/c", "a/b/"] {
            assert_eq!(
                store.get(key, None).await.unwrap_err().kind(),
                StoreErrorKind::NotFound,
                "{key}"
            );
            assert_eq!(
                store.head(key).await.unwrap_err().kind(),
                StoreErrorKind::NotFound,
                "{key}"
            );
        }
    }

    #[tokio::test]
    async fn delete_removes_file_sidecar_and_empty_parents_but_never_the_root() {
        let (_dir, store) = open();
        put(&store, "x/y/z/f", b"1").await;
        put(&store, "x/keep", b"2").await;
        let sidecar = store.inner.sidecar_path("x/y/z/f");
        assert!(sidecar.exists());

        store.delete("x/y/z/f").await.unwrap();
        assert_eq!(
            store.head("x/y/z/f").await.unwrap_err().kind(),
            StoreErrorKind::NotFound
        );
        assert!(!sidecar.exists());
        assert!(
            !store.root().join("x/y").exists(),
            "empty parents are removed"
        );
        assert!(store.root().join("x/keep").is_file());

        store.delete("x/y/z/f").await.unwrap(); // missing is fine
        store.delete("never/was").await.unwrap();

        store.delete("x/keep").await.unwrap();
        assert!(!store.root().join("x").exists());
        assert!(store.root().is_dir());
        assert_eq!(names(store.root()), vec![SYS_DIR.to_string()]);

        // Deleting a key that names a directory of other keys deletes nothing.
        put(&store, "d/e", b"3").await;
        store.delete("d").await.unwrap();
        assert_eq!(&store.get("d/e", None).await.unwrap().body[..], b"3");
    }

    #[tokio::test]
    async fn listing_is_in_byte_order_with_delimiter_and_paging() {
        let (_dir, store) = open();
        // '-' < '.' < '/' < '0': a directory must sort as "a/", not as "a".
        let all = ["a-b", "a.b", "a/x", "a/y/z", "a0", "b", "c/d/e", "c/f"];
        for (i, key) in all.iter().enumerate() {
            put(&store, key, &vec![b'x'; i + 1]).await;
        }
        let flat = store.list_all("").await.unwrap();
        assert_eq!(keys(&flat), all.to_vec());
        for (i, o) in flat.iter().enumerate() {
            assert_eq!(o.size, i as u64 + 1);
            assert_eq!(o.etag, rules::md5_hex(&vec![b'x'; i + 1]));
            assert!(o.last_modified.is_some());
        }

        let page = store
            .list(ListRequest {
                delimiter: Some("/".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(keys(&page.objects), vec!["a-b", "a.b", "a0", "b"]);
        assert_eq!(page.common_prefixes, vec!["a/", "c/"]);
        assert!(page.next.is_none());

        let pages = all_pages(&store, "", Some("/"), 2).await;
        let flat_names: Vec<Vec<String>> = pages
            .iter()
            .map(|(o, p, _)| {
                let mut v: Vec<String> = o.iter().chain(p).cloned().collect();
                v.sort();
                v
            })
            .collect();
        assert_eq!(
            flat_names,
            vec![vec!["a-b", "a.b"], vec!["a/", "a0"], vec!["b", "c/"]]
                .into_iter()
                .map(|v| v.into_iter().map(String::from).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        );
        let set: BTreeSet<String> = all.iter().map(|k| k.to_string()).collect();
        for (prefix, delimiter, max) in [
            ("", None, 3),
            ("", Some("/"), 1),
            ("a", None, 2),
            ("a", Some("/"), 2),
            ("a/", Some("/"), 1),
            ("c/d", Some("/"), 5),
            ("c/d", None, 5),
            ("c/", Some("-"), 1),
            ("zzz", Some("/"), 5),
        ] {
            assert_eq!(
                all_pages(&store, prefix, delimiter, max).await,
                model_pages(&set, prefix, delimiter, max),
                "prefix {prefix:?} delimiter {delimiter:?} max {max}"
            );
        }
        let page = store
            .list(ListRequest {
                prefix: "a/".into(),
                delimiter: Some("/".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(keys(&page.objects), vec!["a/x"]);
        assert_eq!(page.common_prefixes, vec!["a/y/"]);
    }

    #[tokio::test]
    async fn directory_markers_are_objects_ending_in_slash() {
        let (_dir, store) = open();
        let etag = put(&store, "photos/", b"").await;
        assert!(store.root().join("photos").join(DIR_MARKER).is_file());
        let head = store.head("photos/").await.unwrap();
        assert_eq!(
            (head.size, head.etag.as_str()),
            (0, rules::md5_hex(b"").as_str())
        );
        assert_eq!(head.etag, etag);

        let root = store
            .list(ListRequest {
                delimiter: Some("/".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(root.objects.is_empty());
        assert_eq!(root.common_prefixes, vec!["photos/"]);
        let inside = store
            .list(ListRequest {
                prefix: "photos/".into(),
                delimiter: Some("/".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(keys(&inside.objects), vec!["photos/"]);
        assert_eq!(inside.objects[0].size, 0);

        put(&store, "photos/a.jpg", b"jpg").await;
        put(&store, "photos/2024/", b"").await;
        let inside = store
            .list(ListRequest {
                prefix: "photos/".into(),
                delimiter: Some("/".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(keys(&inside.objects), vec!["photos/", "photos/a.jpg"]);
        assert_eq!(inside.common_prefixes, vec!["photos/2024/"]);
        assert_eq!(
            keys(&store.list_all("").await.unwrap()),
            vec!["photos/", "photos/2024/", "photos/a.jpg"]
        );

        store.delete("photos/a.jpg").await.unwrap();
        store.delete("photos/2024/").await.unwrap();
        assert!(!store.root().join("photos/2024").exists());
        assert!(
            store.root().join("photos").is_dir(),
            "the marker keeps the directory"
        );
        store.delete("photos/").await.unwrap();
        assert!(!store.root().join("photos").exists());
        assert!(store.list_all("").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn invalid_and_reserved_keys_are_rejected() {
        let (_dir, store) = open();
        let long_segment = format!("d/{}", "s".repeat(256));
        let long_key = "k/".repeat(513);
        let bad = [
            "",
            "/abs",
            "..",
            "../x",
            "a/../b",
            "a/./b",
            "a\0b",
            ".rivulet-store",
            ".rivulet-store/",
            ".rivulet-store/x",
            ".rivulet-store/meta/x",
            "a//b",
            "a//",
            "x/.rivulet-dir-marker",
            ".rivulet-dir-marker/y",
            long_segment.as_str(),
            long_key.as_str(),
        ];
        for key in bad {
            let kind = |r: Result<(), StoreError>| r.unwrap_err().kind();
            let body = Bytes::from_static(b"x");
            assert_eq!(
                kind(store.put(key, body, PutOptions::default()).await.map(drop)),
                StoreErrorKind::InvalidKey,
                "put {key:?}"
            );
            assert_eq!(
                kind(store.get(key, None).await.map(drop)),
                StoreErrorKind::InvalidKey
            );
            assert_eq!(
                kind(store.head(key).await.map(drop)),
                StoreErrorKind::InvalidKey
            );
            assert_eq!(kind(store.delete(key).await), StoreErrorKind::InvalidKey);
            assert_eq!(
                kind(
                    store
                        .create_multipart(key, PutOptions::default())
                        .await
                        .map(drop)
                ),
                StoreErrorKind::InvalidKey
            );
        }
        let err = store
            .put("a//b", Bytes::new(), PutOptions::default())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("empty segment"), "{err}");
        // Nothing was created, and the store's own files are untouched.
        assert_eq!(names(store.root()), vec![SYS_DIR.to_string()]);
        assert!(sys(&store, "lock").is_file());
    }

    #[tokio::test]
    async fn internal_directory_is_never_listed() {
        let (_dir, store) = open();
        put(&store, "z", b"1").await;
        store
            .create_multipart("up", PutOptions::default())
            .await
            .unwrap();
        assert_eq!(keys(&store.list_all("").await.unwrap()), vec!["z"]);
        let page = store
            .list(ListRequest {
                delimiter: Some("/".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(keys(&page.objects), vec!["z"]);
        assert!(page.common_prefixes.is_empty());
        for prefix in [".rivulet-store/", ".rivulet-store/meta/", ".rivulet", "../"] {
            assert!(store.list_all(prefix).await.unwrap().is_empty(), "{prefix}");
        }
    }

    #[tokio::test]
    async fn keys_that_conflict_with_the_file_system_fail_clearly() {
        let (_dir, store) = open();
        put(&store, "a/b", b"inner").await;
        let err = store
            .put("a", Bytes::from_static(b"x"), PutOptions::default())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::InvalidKey);
        assert!(err.to_string().contains("'a/'"), "{err}");

        let err = store
            .put("a/b/c", Bytes::from_static(b"x"), PutOptions::default())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::InvalidKey);
        assert!(err.to_string().contains("'a/b' is a file"), "{err}");
        let err = store
            .put("a/b/c/d", Bytes::from_static(b"x"), PutOptions::default())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::InvalidKey);
        assert!(!store.root().join("a/b/c").exists());

        // Nothing was damaged.
        assert_eq!(&store.get("a/b", None).await.unwrap().body[..], b"inner");
        assert_eq!(keys(&store.list_all("").await.unwrap()), vec!["a/b"]);
        assert!(fs::read_dir(sys(&store, "tmp")).unwrap().next().is_none());
    }

    #[tokio::test]
    async fn conditional_puts_follow_s3() {
        let (_dir, store) = open();
        let body = |b: &'static [u8]| Bytes::from_static(b);
        let first = store
            .put("k", body(b"one"), cond(PutCondition::IfNoneMatch))
            .await
            .unwrap();
        let err = store
            .put("k", body(b"two"), cond(PutCondition::IfNoneMatch))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::PreconditionFailed);
        assert_eq!(&store.get("k", None).await.unwrap().body[..], b"one");

        let second = store
            .put(
                "k",
                body(b"two"),
                cond(PutCondition::IfMatch(first.etag.clone())),
            )
            .await
            .unwrap();
        let err = store
            .put(
                "k",
                body(b"three"),
                cond(PutCondition::IfMatch(first.etag.clone())),
            )
            .await
            .unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::PreconditionFailed);
        assert_eq!(&store.get("k", None).await.unwrap().body[..], b"two");
        // Quoted ETags are accepted.
        store
            .put(
                "k",
                body(b"three"),
                cond(PutCondition::IfMatch(format!("\"{}\"", second.etag))),
            )
            .await
            .unwrap();
        assert_eq!(&store.get("k", None).await.unwrap().body[..], b"three");

        let err = store
            .put(
                "missing",
                body(b"x"),
                cond(PutCondition::IfMatch(first.etag)),
            )
            .await
            .unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::NotFound);
        assert!(!store.root().join("missing").exists());

        // A file placed by hand is matched on its MD5.
        fs::write(store.root().join("manual"), b"by hand").unwrap();
        let err = store
            .put("manual", body(b"x"), cond(PutCondition::IfNoneMatch))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::PreconditionFailed);
        store
            .put(
                "manual",
                body(b"x"),
                cond(PutCondition::IfMatch(rules::md5_hex(b"by hand"))),
            )
            .await
            .unwrap();
        assert_eq!(&store.get("manual", None).await.unwrap().body[..], b"x");
        // Failed conditions leave no temporary files behind.
        assert!(fs::read_dir(sys(&store, "tmp")).unwrap().next().is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_create_only_puts_have_one_winner_across_handles() {
        let (dir, a) = open();
        // A second, independently opened store on the same directory: only the file lock
        // excludes it (as it would another process).
        let b = LocalStore::open(dir.path().join("data")).unwrap();
        let tasks: Vec<_> = (0..16u8)
            .map(|i| {
                let store = if i % 2 == 0 { a.clone() } else { b.clone() };
                tokio::spawn(async move {
                    let r = store
                        .put(
                            "race",
                            Bytes::from(vec![i; 64]),
                            cond(PutCondition::IfNoneMatch),
                        )
                        .await;
                    (i, r)
                })
            })
            .collect();
        let mut winners = Vec::new();
        for task in tasks {
            let (i, r) = task.await.unwrap();
            match r {
                Ok(_) => winners.push(i),
                Err(e) => assert_eq!(e.kind(), StoreErrorKind::PreconditionFailed),
            }
        }
        assert_eq!(winners.len(), 1, "{winners:?}");
        assert_eq!(
            &a.get("race", None).await.unwrap().body[..],
            &vec![winners[0]; 64][..]
        );
    }

    #[tokio::test]
    async fn multipart_happy_path_gives_s3_etag_and_leaves_nothing_behind() {
        let (_dir, store) = open();
        let key = "big/file.bin";
        let id = store
            .create_multipart(key, opts(Some("application/x-test"), &[("origin", "mpu")]))
            .await
            .unwrap();
        assert!(
            id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{id}"
        );
        let p1 = pattern(5 * MIB, 1);
        let p2 = pattern(1234, 2);
        // Parts may arrive in any order; re-uploading a part replaces it.
        let e2 = store
            .upload_part(key, &id, 2, Bytes::from(p2.clone()))
            .await
            .unwrap();
        store
            .upload_part(key, &id, 1, Bytes::from_static(b"stale"))
            .await
            .unwrap();
        let e1 = store
            .upload_part(key, &id, 1, Bytes::from(p1.clone()))
            .await
            .unwrap();
        assert_eq!(e1, rules::md5_hex(&p1));
        assert_eq!(e2, rules::md5_hex(&p2));
        // Parts are not objects.
        assert_eq!(
            store.head(key).await.unwrap_err().kind(),
            StoreErrorKind::NotFound
        );

        let parts = [
            CompletedPart {
                number: 1,
                etag: format!("\"{e1}\""),
            },
            CompletedPart {
                number: 2,
                etag: e2.clone(),
            },
        ];
        let done = store
            .complete_multipart(key, &id, &parts, PutCondition::IfNoneMatch)
            .await
            .unwrap();
        let expected = rules::multipart_etag([e1.as_str(), e2.as_str()]).unwrap();
        assert_eq!(done.etag, expected);
        assert!(done.etag.ends_with("-2"));

        let got = store.get(key, None).await.unwrap();
        assert_eq!(got.body.len(), p1.len() + p2.len());
        assert_eq!(&got.body[..p1.len()], &p1[..]);
        assert_eq!(&got.body[p1.len()..], &p2[..]);
        assert_eq!(got.meta.etag, expected);
        assert_eq!(got.meta.content_type.as_deref(), Some("application/x-test"));
        assert_eq!(
            got.meta.metadata.get("origin").map(String::as_str),
            Some("mpu")
        );
        assert_eq!(store.list_all("big/").await.unwrap()[0].etag, expected);

        // Nothing left: no temporaries, no upload directory, empty trash.
        assert!(names(&sys(&store, "tmp")).is_empty());
        assert!(names(&sys(&store, "uploads")).is_empty());
        assert!(names(&sys(&store, "trash")).is_empty());

        // The upload id is finished.
        let kind = |e: StoreError| e.kind();
        assert_eq!(
            kind(
                store
                    .upload_part(key, &id, 3, Bytes::from_static(b"x"))
                    .await
                    .unwrap_err()
            ),
            StoreErrorKind::NoSuchUpload
        );
        assert_eq!(
            kind(
                store
                    .complete_multipart(key, &id, &parts, PutCondition::None)
                    .await
                    .unwrap_err()
            ),
            StoreErrorKind::NoSuchUpload
        );
        assert_eq!(
            kind(store.abort_multipart(key, &id).await.unwrap_err()),
            StoreErrorKind::NoSuchUpload
        );
        assert_eq!(
            kind(store.list_parts(key, &id, None).await.unwrap_err()),
            StoreErrorKind::NoSuchUpload
        );
        assert_eq!(
            kind(
                store
                    .upload_part_copy(key, &id, 3, key, 0..10, None)
                    .await
                    .unwrap_err()
            ),
            StoreErrorKind::NoSuchUpload
        );
    }

    #[tokio::test]
    async fn completion_enforces_part_rules_and_conditions() {
        let (_dir, store) = open();
        let key = "mp";
        let id = store
            .create_multipart(key, PutOptions::default())
            .await
            .unwrap();
        let e1 = store
            .upload_part(key, &id, 1, Bytes::from(vec![1u8; 1024]))
            .await
            .unwrap();
        let e2 = store
            .upload_part(key, &id, 2, Bytes::from(vec![2u8; 1024]))
            .await
            .unwrap();
        let part = |n: u32, e: &str| CompletedPart {
            number: n,
            etag: e.to_string(),
        };
        let complete = |parts: Vec<CompletedPart>, c: PutCondition| {
            let store = store.clone();
            let id = id.clone();
            async move { store.complete_multipart(key, &id, &parts, c).await }
        };
        let kind = |r: Result<PutResult, StoreError>| r.unwrap_err().kind();
        assert_eq!(
            kind(complete(vec![part(1, &e1), part(2, &e2)], PutCondition::None).await),
            StoreErrorKind::EntityTooSmall
        );
        // (The order check needs a big first part: a small one is EntityTooSmall first.)
        let e3 = store
            .upload_part(key, &id, 3, Bytes::from(pattern(5 * MIB, 3)))
            .await
            .unwrap();
        assert_eq!(
            kind(complete(vec![part(3, &e3), part(1, &e1)], PutCondition::None).await),
            StoreErrorKind::InvalidPartOrder
        );
        assert_eq!(
            kind(complete(vec![part(1, &e2)], PutCondition::None).await),
            StoreErrorKind::InvalidPart
        );
        assert_eq!(
            kind(complete(vec![part(3, &e1)], PutCondition::None).await),
            StoreErrorKind::InvalidPart
        );
        assert_eq!(
            kind(complete(vec![], PutCondition::None).await),
            StoreErrorKind::InvalidPartOrder
        );
        assert_eq!(
            store.head(key).await.unwrap_err().kind(),
            StoreErrorKind::NotFound
        );
        // Failed completions keep the upload (as S3 does) and leave no temporaries.
        assert_eq!(
            store.list_parts(key, &id, None).await.unwrap().parts.len(),
            3
        );
        assert!(names(&sys(&store, "tmp")).is_empty());

        // Conditions apply at completion; a failed one keeps the upload too.
        put(&store, key, b"existing").await;
        assert_eq!(
            kind(complete(vec![part(2, &e2)], PutCondition::IfNoneMatch).await),
            StoreErrorKind::PreconditionFailed
        );
        assert_eq!(
            kind(complete(vec![part(2, &e2)], PutCondition::IfMatch("0".repeat(32))).await),
            StoreErrorKind::PreconditionFailed
        );
        assert_eq!(&store.get(key, None).await.unwrap().body[..], b"existing");
        // A single (last) part may be small, and skipping part numbers is allowed.
        let done = complete(
            vec![part(2, &e2)],
            PutCondition::IfMatch(rules::md5_hex(b"existing")),
        )
        .await
        .unwrap();
        assert_eq!(done.etag, rules::multipart_etag([e2.as_str()]).unwrap());
        assert_eq!(
            &store.get(key, None).await.unwrap().body[..],
            &[2u8; 1024][..]
        );
        assert!(names(&sys(&store, "tmp")).is_empty());
        assert!(names(&sys(&store, "uploads")).is_empty());
    }

    #[tokio::test]
    async fn abort_frees_the_upload() {
        let (_dir, store) = open();
        let id = store
            .create_multipart("k", PutOptions::default())
            .await
            .unwrap();
        store
            .upload_part("k", &id, 1, Bytes::from_static(b"part"))
            .await
            .unwrap();
        store.abort_multipart("k", &id).await.unwrap();
        assert!(names(&sys(&store, "uploads")).is_empty());
        assert!(names(&sys(&store, "trash")).is_empty());
        let kind = |e: StoreError| e.kind();
        assert_eq!(
            kind(
                store
                    .upload_part("k", &id, 2, Bytes::from_static(b"x"))
                    .await
                    .unwrap_err()
            ),
            StoreErrorKind::NoSuchUpload
        );
        assert_eq!(
            kind(store.abort_multipart("k", &id).await.unwrap_err()),
            StoreErrorKind::NoSuchUpload
        );
        assert_eq!(
            kind(store.list_parts("k", &id, None).await.unwrap_err()),
            StoreErrorKind::NoSuchUpload
        );
        let parts = [CompletedPart {
            number: 1,
            etag: rules::md5_hex(b"part"),
        }];
        assert_eq!(
            kind(
                store
                    .complete_multipart("k", &id, &parts, PutCondition::None)
                    .await
                    .unwrap_err()
            ),
            StoreErrorKind::NoSuchUpload
        );
        assert_eq!(
            store.head("k").await.unwrap_err().kind(),
            StoreErrorKind::NotFound
        );
    }

    #[tokio::test]
    async fn upload_ids_and_part_numbers_are_validated() {
        let (_dir, store) = open();
        let id = store
            .create_multipart("k", PutOptions::default())
            .await
            .unwrap();
        for bad in [
            "",
            "../../etc",
            "..",
            "a/b",
            "abc.def",
            "0123456789abcdef0123456789abcdef",
            &"a".repeat(200),
        ] {
            let err = store
                .upload_part("k", bad, 1, Bytes::from_static(b"x"))
                .await
                .unwrap_err();
            assert_eq!(err.kind(), StoreErrorKind::NoSuchUpload, "{bad:?}");
            let err = store.list_parts("k", bad, None).await.unwrap_err();
            assert_eq!(err.kind(), StoreErrorKind::NoSuchUpload, "{bad:?}");
            let err = store.abort_multipart("k", bad).await.unwrap_err();
            assert_eq!(err.kind(), StoreErrorKind::NoSuchUpload, "{bad:?}");
        }
        // An upload id used with another key is unknown there.
        let err = store
            .upload_part("other", &id, 1, Bytes::from_static(b"x"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::NoSuchUpload);
        assert_eq!(
            store
                .abort_multipart("other", &id)
                .await
                .unwrap_err()
                .kind(),
            StoreErrorKind::NoSuchUpload
        );
        for n in [0, limits::MAX_PART_NUMBER + 1] {
            let err = store
                .upload_part("k", &id, n, Bytes::from_static(b"x"))
                .await
                .unwrap_err();
            assert_eq!(err.kind(), StoreErrorKind::InvalidArgument, "part {n}");
        }
        let err = store
            .upload_part_copy("k", &id, 1, "src", 0..limits::MAX_PART_SIZE + 1, None)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::InvalidArgument);
        store
            .upload_part("k", &id, limits::MAX_PART_NUMBER, Bytes::from_static(b"x"))
            .await
            .unwrap();
        // The upload is still intact.
        let parts = store.list_all_parts("k", &id).await.unwrap();
        assert_eq!(
            parts.iter().map(|p| p.number).collect::<Vec<_>>(),
            vec![limits::MAX_PART_NUMBER]
        );
    }

    #[tokio::test]
    async fn upload_part_copy_copies_ranges_of_a_matching_source() {
        let (_dir, store) = open();
        let src = pattern(6 * MIB, 7);
        let src_etag = put(&store, "src", &src).await;
        let id = store
            .create_multipart("dst", opts(Some("x/y"), &[]))
            .await
            .unwrap();
        let split = 5 * MIB as u64;
        let e1 = store
            .upload_part_copy("dst", &id, 1, "src", 0..split, Some(&src_etag))
            .await
            .unwrap();
        assert_eq!(e1, rules::md5_hex(&src[..5 * MIB]));
        let quoted = format!("\"{src_etag}\"");
        let e2 = store
            .upload_part_copy("dst", &id, 2, "src", split..src.len() as u64, Some(&quoted))
            .await
            .unwrap();
        assert_eq!(e2, rules::md5_hex(&src[5 * MIB..]));

        let kind = |r: Result<String, StoreError>| r.unwrap_err().kind();
        assert_eq!(
            kind(
                store
                    .upload_part_copy("dst", &id, 3, "src", 0..10, Some("deadbeef"))
                    .await
            ),
            StoreErrorKind::PreconditionFailed
        );
        assert_eq!(
            kind(
                store
                    .upload_part_copy("dst", &id, 3, "src", 0..src.len() as u64 + 1, None)
                    .await
            ),
            StoreErrorKind::InvalidRange
        );
        assert_eq!(
            kind(
                store
                    .upload_part_copy("dst", &id, 3, "src", 10..10, None)
                    .await
            ),
            StoreErrorKind::InvalidRange
        );
        assert_eq!(
            kind(
                store
                    .upload_part_copy("dst", &id, 3, "nope", 0..1, None)
                    .await
            ),
            StoreErrorKind::NotFound
        );
        // Failed copies made no part.
        let listed = store.list_all_parts("dst", &id).await.unwrap();
        assert_eq!(
            listed.iter().map(|p| p.number).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(listed[1].size, (src.len() - 5 * MIB) as u64);

        let parts = [
            CompletedPart {
                number: 1,
                etag: e1.clone(),
            },
            CompletedPart {
                number: 2,
                etag: e2.clone(),
            },
        ];
        let done = store
            .complete_multipart("dst", &id, &parts, PutCondition::None)
            .await
            .unwrap();
        assert_eq!(
            done.etag,
            rules::multipart_etag([e1.as_str(), e2.as_str()]).unwrap()
        );
        let got = store.get("dst", None).await.unwrap();
        assert!(got.body[..] == src[..]);
        assert_eq!(got.meta.content_type.as_deref(), Some("x/y"));
        // A completed multipart object can itself be a copy source, matched on its MPU ETag.
        let id2 = store
            .create_multipart("dst2", PutOptions::default())
            .await
            .unwrap();
        let e = store
            .upload_part_copy("dst2", &id2, 1, "dst", 100..200, Some(&done.etag))
            .await
            .unwrap();
        assert_eq!(e, rules::md5_hex(&src[100..200]));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn list_parts_pages_at_1000_with_etags() {
        let (_dir, store) = open();
        let id = store
            .create_multipart("many", PutOptions::default())
            .await
            .unwrap();
        let results: Vec<_> = futures::stream::iter(1..=1005u32)
            .map(|n| {
                let store = store.clone();
                let id = id.clone();
                async move {
                    store
                        .upload_part("many", &id, n, Bytes::from(n.to_string()))
                        .await
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        assert!(results.iter().all(Result::is_ok));

        let first = store.list_parts("many", &id, None).await.unwrap();
        assert_eq!(first.parts.len(), 1000);
        assert_eq!(first.next_marker, Some(1000));
        for (i, p) in first.parts.iter().enumerate() {
            let n = i as u32 + 1;
            assert_eq!(p.number, n);
            assert_eq!(
                p.etag.as_deref(),
                Some(rules::md5_hex(n.to_string().as_bytes()).as_str())
            );
            assert_eq!(p.size, n.to_string().len() as u64);
        }
        let second = store
            .list_parts("many", &id, first.next_marker)
            .await
            .unwrap();
        assert_eq!(
            second.parts.iter().map(|p| p.number).collect::<Vec<_>>(),
            (1001..=1005).collect::<Vec<_>>()
        );
        assert_eq!(second.next_marker, None);
        assert_eq!(store.list_all_parts("many", &id).await.unwrap().len(), 1005);

        // Replacing a part shows its new ETag.
        store
            .upload_part("many", &id, 3, Bytes::from_static(b"replaced"))
            .await
            .unwrap();
        let page = store.list_parts("many", &id, Some(2)).await.unwrap();
        assert_eq!(page.parts[0].number, 3);
        assert_eq!(
            page.parts[0].etag.as_deref(),
            Some(rules::md5_hex(b"replaced").as_str())
        );
        // A lost ETag cache is recomputed from the part.
        fs::remove_file(store.inner.part_cache_path(&id, 4)).unwrap();
        let page = store.list_parts("many", &id, Some(3)).await.unwrap();
        assert_eq!(
            page.parts[0].etag.as_deref(),
            Some(rules::md5_hex(b"4").as_str())
        );
        store.abort_multipart("many", &id).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn list_multipart_uploads_sorted_filtered_and_paged() {
        let (_dir, store) = open();
        let mut expected = Vec::new();
        for key in ["b", "a", "a", "c/x", "ab"] {
            let id = store
                .create_multipart(key, PutOptions::default())
                .await
                .unwrap();
            expected.push((key.to_string(), id));
        }
        expected.sort();
        let page = store.list_multipart_uploads("", None).await.unwrap();
        let got: Vec<_> = page
            .uploads
            .iter()
            .map(|u| (u.key.clone(), u.upload_id.clone()))
            .collect();
        assert_eq!(got, expected);
        assert!(page.next.is_none());
        assert!(page.uploads.iter().all(|u| u.initiated.is_some()));

        let a = store.list_multipart_uploads("a", None).await.unwrap();
        assert_eq!(
            a.uploads.iter().map(|u| u.key.as_str()).collect::<Vec<_>>(),
            vec!["a", "a", "ab"]
        );
        let marker = UploadsMarker {
            key: expected[0].0.clone(),
            upload_id: expected[0].1.clone(),
        };
        let rest = store
            .list_multipart_uploads("", Some(marker))
            .await
            .unwrap();
        assert_eq!(rest.uploads.len(), expected.len() - 1);
        assert_eq!(rest.uploads[0].upload_id, expected[1].1);

        // Finished uploads disappear from the listing.
        store
            .abort_multipart(&expected[0].0, &expected[0].1)
            .await
            .unwrap();
        let page = store.list_multipart_uploads("", None).await.unwrap();
        assert_eq!(page.uploads.len(), expected.len() - 1);

        // Pages of 1,000.
        let results: Vec<_> = futures::stream::iter(0..1000)
            .map(|i| {
                let store = store.clone();
                async move {
                    store
                        .create_multipart(&format!("p/{i:04}"), PutOptions::default())
                        .await
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        assert!(results.iter().all(Result::is_ok));
        let first = store.list_multipart_uploads("p/", None).await.unwrap();
        assert_eq!(first.uploads.len(), 1000);
        assert!(first.next.is_none());
        let first = store.list_multipart_uploads("", None).await.unwrap();
        assert_eq!(first.uploads.len(), 1000);
        let next = first.next.clone().expect("a second page");
        assert_eq!(next.key, first.uploads[999].key);
        let second = store.list_multipart_uploads("", Some(next)).await.unwrap();
        assert_eq!(second.uploads.len(), 1000 + expected.len() - 1 - 1000);
        assert!(second.next.is_none());
        assert!(
            first.uploads.last().map(|u| (&u.key, &u.upload_id))
                < second.uploads.first().map(|u| (&u.key, &u.upload_id))
        );
    }

    #[tokio::test]
    async fn files_placed_by_hand_get_md5_etags_and_no_metadata() {
        let (_dir, store) = open();
        fs::create_dir_all(store.root().join("manual")).unwrap();
        fs::write(store.root().join("manual/notes.txt"), b"by hand").unwrap();
        let head = store.head("manual/notes.txt").await.unwrap();
        assert_eq!(head.etag, rules::md5_hex(b"by hand"));
        assert_eq!(head.size, 7);
        assert!(head.content_type.is_none() && head.metadata.is_empty());
        assert!(head.last_modified.is_some());
        let listed = store.list_all("manual/").await.unwrap();
        assert_eq!(keys(&listed), vec!["manual/notes.txt"]);
        assert_eq!(listed[0].etag, head.etag);
        assert_eq!(
            &store
                .get("manual/notes.txt", Some(3..7))
                .await
                .unwrap()
                .body[..],
            b"hand"
        );

        // A stored object edited by hand in place (same inode) loses its stale sidecar.
        store
            .put(
                "k",
                Bytes::from_static(b"original"),
                opts(Some("text/plain"), &[("a", "b")]),
            )
            .await
            .unwrap();
        fs::write(store.root().join("k"), b"edited by hand").unwrap();
        let head = store.head("k").await.unwrap();
        assert_eq!(head.etag, rules::md5_hex(b"edited by hand"));
        assert!(head.content_type.is_none() && head.metadata.is_empty());

        // Same size, same inode, different content: the modification time tells.
        store
            .put(
                "s",
                Bytes::from_static(b"aaaa"),
                opts(Some("text/plain"), &[]),
            )
            .await
            .unwrap();
        let path = store.root().join("s");
        let before = fs::metadata(&path).unwrap().modified().unwrap();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        (&file).write_all(b"bbbb").unwrap();
        file.set_modified(before + Duration::from_secs(5)).unwrap();
        drop(file);
        assert_eq!(store.head("s").await.unwrap().etag, rules::md5_hex(b"bbbb"));
    }

    #[tokio::test]
    async fn a_crash_between_sidecar_and_rename_keeps_each_file_described() {
        let (_dir, store) = open();
        // A multipart object: losing its record would turn its ETag into a plain MD5.
        let id = store
            .create_multipart("k", opts(Some("old/type"), &[("v", "1")]))
            .await
            .unwrap();
        let e1 = store
            .upload_part("k", &id, 1, Bytes::from_static(b"old"))
            .await
            .unwrap();
        let parts = [CompletedPart {
            number: 1,
            etag: e1,
        }];
        let old = store
            .complete_multipart("k", &id, &parts, PutCondition::None)
            .await
            .unwrap();

        // Replay a put up to the durable sidecar write, and "crash" before the rename.
        let inner = &store.inner;
        let (tmp, mut file) = inner.new_temp("put", "k").unwrap();
        file.write_all(b"new body").unwrap();
        file.sync_all().unwrap();
        let new_id = file_id(&file.metadata().unwrap());
        drop(file);
        let Current::Present(Some(current)) = inner.current("put", "k", false).unwrap() else {
            panic!("the object and its record exist");
        };
        let new = MetaRecord {
            file: new_id,
            etag: rules::md5_hex(b"new body"),
            content_type: Some("new/type".into()),
            metadata: BTreeMap::new(),
        };
        inner
            .write_sidecar("put", "k", vec![new, current], true)
            .unwrap();
        let head = store.head("k").await.unwrap();
        assert_eq!(
            head.etag, old.etag,
            "the old file is still described by its record"
        );
        assert_eq!(head.content_type.as_deref(), Some("old/type"));
        assert_eq!(head.metadata.get("v").map(String::as_str), Some("1"));

        // Had the rename happened, the new file would be described by its own record.
        fs::rename(&tmp.path, store.root().join("k")).unwrap();
        tmp.keep();
        let head = store.head("k").await.unwrap();
        assert_eq!(head.etag, rules::md5_hex(b"new body"));
        assert_eq!(head.content_type.as_deref(), Some("new/type"));
        assert!(head.metadata.is_empty());
        assert_eq!(&store.get("k", None).await.unwrap().body[..], b"new body");
    }

    #[tokio::test]
    async fn state_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        let (id, e1) = {
            let store = LocalStore::open(&root).unwrap();
            store
                .put(
                    "obj",
                    Bytes::from_static(b"kept"),
                    opts(Some("text/plain"), &[("x", "y")]),
                )
                .await
                .unwrap();
            let id = store
                .create_multipart("mp", opts(Some("a/b"), &[]))
                .await
                .unwrap();
            let e1 = store
                .upload_part("mp", &id, 1, Bytes::from_static(b"part one"))
                .await
                .unwrap();
            (id, e1)
        };
        let store = LocalStore::open(&root).unwrap();
        let head = store.head("obj").await.unwrap();
        assert_eq!(head.content_type.as_deref(), Some("text/plain"));
        assert_eq!(head.metadata.get("x").map(String::as_str), Some("y"));
        let parts = store.list_all_parts("mp", &id).await.unwrap();
        assert_eq!(
            parts,
            vec![PartInfo {
                number: 1,
                etag: Some(e1.clone()),
                size: 8
            }]
        );
        let done = store
            .complete_multipart(
                "mp",
                &id,
                &[CompletedPart {
                    number: 1,
                    etag: e1.clone(),
                }],
                PutCondition::None,
            )
            .await
            .unwrap();
        assert_eq!(done.etag, rules::multipart_etag([e1.as_str()]).unwrap());
        assert_eq!(
            store.head("mp").await.unwrap().content_type.as_deref(),
            Some("a/b")
        );
        // Leftovers of a crash: the trash is emptied when a store is opened.
        fs::create_dir(sys(&store, "trash").join("leftover")).unwrap();
        drop(store);
        let store = LocalStore::open(&root).unwrap();
        assert!(names(&sys(&store, "trash")).is_empty());
    }

    #[tokio::test]
    async fn describe_and_debug_name_the_directory() {
        let (dir, store) = open();
        let root = dir.path().join("data").canonicalize().unwrap();
        assert_eq!(store.describe(), format!("file://{}", root.display()));
        assert!(store.describe().starts_with("file:///"));
        assert!(format!("{store:?}").contains(&root.display().to_string()));
        assert_eq!(store.min_part_size(), limits::MIN_PART_SIZE);
    }

    fn segment() -> impl Strategy<Value = String> {
        proptest::collection::vec(prop::sample::select(vec!['a', 'b', '-', '.', '0']), 1..3)
            .prop_map(|chars| chars.into_iter().collect())
    }

    fn key() -> impl Strategy<Value = String> {
        (proptest::collection::vec(segment(), 1..4), any::<bool>()).prop_map(|(segs, dir)| {
            let mut k = segs.join("/");
            if dir {
                k.push('/');
            }
            k
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Listings of the file tree match the shared listing rules over the sorted key set,
        /// for any prefix, delimiter and page size.
        #[test]
        fn listing_matches_the_rules_over_sorted_keys(
            raw in proptest::collection::btree_set(key(), 1..12),
            prefix_len in 0usize..6,
            max in 1usize..5,
        ) {
            // Keep the keys a file system can hold together: no object `k` with keys under `k/`.
            let valid: Vec<String> = raw.iter().filter(|k| check_key("put", k).is_ok()).cloned().collect();
            let set: BTreeSet<String> = valid
                .iter()
                .filter(|k| k.ends_with('/') || !valid.iter().any(|o| o.starts_with(&format!("{k}/"))))
                .cloned()
                .collect();
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let (_dir, store) = open();
                for k in &set {
                    put(&store, k, k.as_bytes()).await;
                }
                let first = set.iter().next().cloned().unwrap_or_default();
                let prefix: String = first.chars().take(prefix_len).collect();
                for p in ["", prefix.as_str()] {
                    for d in [None, Some("/"), Some("-")] {
                        assert_eq!(all_pages(&store, p, d, max).await, model_pages(&set, p, d, max), "prefix {p:?} delimiter {d:?}");
                    }
                }
            });
        }
    }
}

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

/// Bodies from this size on are hashed on a second thread while the disk syncs them.
const PARALLEL_HASH_MIN: usize = 1 << 20;

/// Writes `body` to `file`, fsyncs it and returns the body's MD5 hex (its ETag). For a large
/// body the hash runs during the fsync on a second thread, so acknowledging a part costs the
/// disk's time rather than the disk's time plus the hash's: that is most of a `persist()`.
fn write_synced_md5(file: &mut File, body: &[u8]) -> io::Result<String> {
    file.write_all(body)?;
    if body.len() < PARALLEL_HASH_MIN {
        let etag = rules::md5_hex(body);
        file.sync_all()?;
        return Ok(etag);
    }
    std::thread::scope(|scope| {
        let hashing = scope.spawn(|| rules::md5_hex(body));
        let synced = file.sync_all();
        let etag = hashing
            .join()
            .map_err(|_| io::Error::other("the thread hashing the body panicked"))?;
        synced.map(|()| etag)
    })
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
        let (tmp, mut file) = self.new_temp(OP, key)?;
        let etag = write_synced_md5(&mut file, body).map_err(io)?;
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

    /// Reads back a byte range of an uploaded part, checked against the ETag its upload
    /// returned. The file is opened once, so the bytes read are those of the part checked.
    fn read_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        etag: &str,
        range: Range<u64>,
    ) -> Result<Bytes, StoreError> {
        const OP: &str = "read part";
        use std::os::unix::fs::FileExt;
        check_key(OP, key)?;
        rules::validate_part_number(OP, key, number)?;
        self.load_upload(OP, key, upload_id)?;
        let io = |e| StoreError::io(OP, key, e);
        let file = match File::open(self.part_path(upload_id, number)) {
            Ok(file) => file,
            Err(e) if is_missing(&e) => {
                return Err(StoreError::new(
                    StoreErrorKind::InvalidPart,
                    OP,
                    key,
                    format!("upload {upload_id} has no part {number}"),
                ));
            }
            Err(e) => return Err(io(e)),
        };
        let md = file.metadata().map_err(io)?;
        let id = file_id(&md);
        let actual = match read_json::<PartCache>(&self.part_cache_path(upload_id, number))
            .filter(|c| c.file == id)
        {
            Some(cache) => cache.etag,
            None => md5_file(&file).map_err(io)?,
        };
        if actual.trim_matches('"') != etag.trim_matches('"') {
            return Err(StoreError::new(
                StoreErrorKind::PreconditionFailed,
                OP,
                key,
                format!(
                    "part {number} of upload {upload_id} was replaced (ETag {actual}, expected {etag})"
                ),
            ));
        }
        let end = range.end.min(md.len());
        if range.start > end {
            return Err(StoreError::new(
                StoreErrorKind::InvalidRange,
                OP,
                key,
                format!(
                    "range {}..{} starts past part {number}'s {} bytes",
                    range.start,
                    range.end,
                    md.len()
                ),
            ));
        }
        let mut buf = vec![0u8; (end - range.start) as usize];
        file.read_exact_at(&mut buf, range.start).map_err(io)?;
        Ok(Bytes::from(buf))
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
        let (tmp, mut file) = self.new_temp(OP, key)?;
        let etag = write_synced_md5(&mut file, body).map_err(io)?;
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

mod walk;

use walk::{Walker, start_dir};

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

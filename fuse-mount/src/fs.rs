//! The file system over a store, independent of FUSE: names, attributes, directories and open
//! files, as async operations returning [`FsError`]s. The FUSE adapter (`adapter.rs`) only
//! translates calls and replies.
//!
//! Mapping: a file is the object with its path as key; a directory `a/b` exists when some key
//! starts with `a/b/` (implicit) or the empty marker object `a/b/` exists (`mkdir`). When a name
//! is both an object and a prefix, the file wins. The writer's hidden tail prefix (`.rivulet/`)
//! is not shown.
//!
//! Open files: every inode open for writing has one [`OpenFile`], shared by its handles. Its
//! fs-core [`FileWriter`] is started lazily at the first change: `open` for a new or truncated
//! file, `open_append` to extend an existing object (its bytes are copied server-side),
//! `open_truncate` to cut or extend one. Reads of an open file go through the writer
//! (`read_at`), so they see unflushed writes. `fsync` persists (durable, resumable after a
//! crash), `flush` (every `close`) commits: the object is whole in the store when `close`
//! returns, and the next write starts a new writer with `open_append`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use fs_core::store::{
    CompletedPart, DynStore, ListRequest, ObjectMeta, ObjectStoreExt, PutCondition, PutOptions,
};
use fs_core::writer::CachedParts;
use fs_core::{FileWriter, RecoverableWriter, StoreErrorKind, WriterError};
use tokio::sync::Mutex as AsyncMutex;

use crate::cache::{AdoptFile, BLOCK, BlockCache};
use crate::error::{FsError, FsResult, io_error};
use crate::inode::{Ino, Inodes, Kind, Node, ROOT};
use crate::prefetch::{ReadAhead, Source};

/// How the mount presents itself.
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// Refuse every change with EROFS.
    pub read_only: bool,
    pub uid: u32,
    pub gid: u32,
    pub file_mode: u16,
    pub dir_mode: u16,
    /// How long attributes and names may be trusted without asking the store again (by the
    /// kernel and by this layer), so changes made outside the mount show up after it.
    pub ttl: Duration,
}

impl Default for FsConfig {
    fn default() -> Self {
        // SAFETY: geteuid and getegid cannot fail and touch no memory.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        Self {
            read_only: false,
            uid,
            gid,
            file_mode: 0o644,
            dir_mode: 0o755,
            ttl: Duration::from_secs(1),
        }
    }
}

/// The attributes of a file or directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ino: Ino,
    pub kind: Kind,
    pub size: u64,
    pub mtime: SystemTime,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: Ino,
    pub kind: Kind,
    pub name: String,
}

/// An object a commit published.
struct Committed {
    size: u64,
    etag: String,
    /// Its bytes as they are still at hand locally, for the read cache.
    local: Local,
}

enum Local {
    Nothing,
    /// The part files the writer cached while uploading.
    Parts(CachedParts),
    /// The whole object, held in memory until its single PUT.
    Bytes(Bytes),
}

/// What an open file's content is based on when it has no writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Base {
    /// Nothing: a new file, or one truncated to zero. The next writer is a fresh `open`.
    Empty,
    /// The committed object of this length. The next writer is `open_append`/`open_truncate`.
    Object(u64),
}

/// The longest name of a file or directory, in bytes (the `namelen` that `statfs` reports).
pub const NAME_MAX: usize = 255;

/// How much of an unlinked file's content is copied to its [`Orphan`] at a time.
const ORPHAN_CHUNK: u64 = 8 << 20;

/// The largest open file whose content is copied to an [`Orphan`] when its name goes. The copy
/// runs inside the `unlink` (or `rename`) that removes the name, so a larger one would stall
/// that call for seconds per GiB; its handles lose the content instead (reads fail with
/// ENOENT, writes are dropped), as they did before orphans existed.
const ORPHAN_MAX: u64 = 256 << 20;

/// The most names remembered as absent before the stale ones are dropped.
const ABSENT_MAX: usize = 4096;

/// The largest rewritten end of a file ([`Shadow`]) kept in memory; beyond it the rewrite is
/// handed to the writer at once.
const SHADOW_LIMIT: u64 = 32 << 20;

/// The end of an open file from `start` on, rewritten in memory and not yet handed to the
/// writer. A write before the end of a file cannot change the upload in place: the file has to
/// be cut at the write's offset and everything after it re-appended. Doing that per write moves
/// the whole end of the file every time; collecting the writes (and truncates) here does it
/// once, at the next `fsync` or commit, from the lowest offset changed.
struct Shadow {
    start: u64,
    bytes: Vec<u8>,
}

impl Shadow {
    fn end(&self) -> u64 {
        self.start + self.bytes.len() as u64
    }

    /// Sets the length to `len` bytes, adding zeros or cutting.
    fn resize(&mut self, len: usize) {
        self.bytes.truncate(len);
        self.grow_to(len);
    }

    fn grow_to(&mut self, len: usize) {
        if self.bytes.len() < len {
            // Zeros from a zeroed allocation: `Vec::resize` fills byte by byte in debug builds.
            self.bytes
                .extend_from_slice(&vec![0u8; len - self.bytes.len()]);
        }
    }

    /// Writes `data` at absolute `offset` (>= `start`), filling a gap with zeros.
    fn write_at(&mut self, offset: u64, data: &[u8]) {
        let at = (offset - self.start) as usize;
        self.grow_to(at + data.len());
        self.bytes[at..at + data.len()].copy_from_slice(data);
    }
}

/// An inode open for writing, shared by all its write handles.
struct OpenFile {
    key: String,
    handles: usize,
    base: Base,
    writer: Option<FileWriter>,
    /// Writes before the end not yet given to the writer; it then starts at `start`, which is
    /// never beyond the end of the writer's (or the base object's) content.
    shadow: Option<Shadow>,
    /// Changed since the last commit (a created or truncated file with no writer still needs
    /// its empty object written).
    dirty: bool,
    /// Set while an operation changes the writer. An operation cancelled half-way (the adapter
    /// times out) leaves it set, and every later change fails with EIO instead of building on
    /// a writer in an unknown state.
    busy: bool,
    /// The commit of its writer failed: what was written lives on only in the upload (kept in
    /// the index for the next mount to finish, or aborted when no retry could commit it).
    /// Nothing more is committed from this open file, and every later change or commit fails
    /// with EIO: a later commit must never publish the file as if it had been emptied.
    lost: bool,
    /// Unlinked while open: nothing is committed any more.
    unlinked: bool,
    /// The content of an unlinked file, for its handles still open (see [`Orphan`]).
    orphan: Option<Orphan>,
    mtime: SystemTime,
}

/// The content of a file whose name went away while handles had it open (`unlink`, or a
/// `rename` over it). As on a local disk, those handles keep reading and writing it until the
/// last one is closed, but nothing of it reaches the store any more: it lives in a local file
/// under `--cache-dir`, deleted from its directory at once and closed with the last handle.
struct Orphan {
    file: std::fs::File,
    len: u64,
}

impl Orphan {
    /// A new, empty one under `dir`.
    fn create(dir: &std::path::Path) -> std::io::Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        std::fs::create_dir_all(dir)?;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("unlinked-{}-{n}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        std::fs::remove_file(&path)?;
        Ok(Self { file, len: 0 })
    }

    fn read(&self, offset: u64, size: u32) -> std::io::Result<Bytes> {
        use std::os::unix::fs::FileExt;
        let end = offset.saturating_add(u64::from(size)).min(self.len);
        if offset >= end {
            return Ok(Bytes::new());
        }
        let mut buf = vec![0u8; (end - offset) as usize];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(Bytes::from(buf))
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.write_all_at(data, offset)?;
        self.len = self.len.max(offset + data.len() as u64);
        Ok(())
    }

    fn set_len(&mut self, len: u64) -> std::io::Result<()> {
        self.file.set_len(len)?;
        self.len = len;
        Ok(())
    }
}

impl OpenFile {
    fn len(&self) -> u64 {
        if let Some(orphan) = &self.orphan {
            return orphan.len;
        }
        if let Some(shadow) = &self.shadow {
            return shadow.end();
        }
        self.base_len()
    }

    /// The length of the content without the shadow: the writer's, or the base object's.
    fn base_len(&self) -> u64 {
        match (&self.writer, self.base) {
            (Some(w), _) => w.len(),
            (None, Base::Empty) => 0,
            (None, Base::Object(len)) => len,
        }
    }

    /// A new (or emptied) file with no writer yet: its whole content is the shadow (from 0),
    /// held in memory while it fits in one part, and published by one PUT at commit.
    fn is_small_new(&self) -> bool {
        self.writer.is_none() && self.base == Base::Empty
    }

    fn begin(&mut self) -> FsResult<()> {
        if self.lost {
            tracing::error!(
                key = %self.key,
                "the commit of this open file failed; close it and open the file again"
            );
            return Err(FsError::Io);
        }
        if self.busy {
            tracing::error!(
                key = %self.key,
                "an earlier operation on this open file was interrupted; close and reopen it"
            );
            return Err(FsError::Io);
        }
        self.busy = true;
        Ok(())
    }

    fn end(&mut self) {
        self.busy = false;
    }
}

#[derive(Debug, Clone, Copy)]
struct Handle {
    ino: Ino,
    write: bool,
    append: bool,
}

/// Flags of `open`/`create` that matter here.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenMode {
    pub write: bool,
    pub append: bool,
    pub truncate: bool,
    pub exclusive: bool,
}

impl OpenMode {
    /// From open(2) flags.
    pub fn from_flags(flags: i32) -> Self {
        Self {
            write: flags & libc::O_ACCMODE != libc::O_RDONLY,
            append: flags & libc::O_APPEND != 0,
            truncate: flags & libc::O_TRUNC != 0,
            exclusive: flags & libc::O_EXCL != 0,
        }
    }
}

/// The file system. All methods take `&self`; share it with `Arc`.
pub struct Filesystem {
    store: DynStore,
    writer: RecoverableWriter,
    config: FsConfig,
    /// First segment of the writer's tail prefix, hidden at the root.
    hidden: String,
    inodes: Mutex<Inodes>,
    open: Mutex<HashMap<Ino, Arc<AsyncMutex<OpenFile>>>>,
    handles: Mutex<HashMap<u64, Handle>>,
    dirs: Mutex<HashMap<u64, Vec<DirEntry>>>,
    /// Read-ahead of the handles reading committed objects.
    readers: Mutex<HashMap<u64, Arc<AsyncMutex<ReadAhead>>>>,
    /// Names the store said were absent, and when: a `create` right after the kernel's lookup
    /// of the same name need not ask again (see [`Filesystem::create`]).
    absent: Mutex<HashMap<String, Instant>>,
    /// Blocks of committed objects already read (`--cache-size`), if enabled.
    cache: Option<Arc<BlockCache>>,
    next_fh: AtomicU64,
}

impl std::fmt::Debug for Filesystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filesystem")
            .field("store", &self.store.describe())
            .field("config", &self.config)
            .finish()
    }
}

/// Locks a std mutex; a poisoned one is still usable (the tables stay consistent because no
/// code panics while holding them).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}

fn dir_prefix(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!("{path}/")
    }
}

fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

fn writer_error(op: &str, key: &str, err: WriterError) -> FsError {
    if err.store_kind() == Some(StoreErrorKind::NotFound) {
        return FsError::NotFound;
    }
    io_error(op, key, err)
}

fn store_error(op: &str, key: &str, err: fs_core::StoreError) -> FsError {
    if err.kind() == StoreErrorKind::NotFound {
        return FsError::NotFound;
    }
    io_error(op, key, err)
}

impl Filesystem {
    pub fn new(writer: RecoverableWriter, config: FsConfig) -> Self {
        let hidden = writer
            .config()
            .tail_prefix
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        Self {
            store: writer.store().clone(),
            writer,
            config,
            hidden,
            inodes: Mutex::new(Inodes::default()),
            open: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            readers: Mutex::new(HashMap::new()),
            absent: Mutex::new(HashMap::new()),
            cache: None,
            next_fh: AtomicU64::new(1),
        }
    }

    /// Serves reads of committed objects through `cache` (see [`crate::cache`]).
    pub fn with_read_cache(mut self, cache: Arc<BlockCache>) -> Self {
        self.cache = Some(cache);
        self
    }

    /// Deletes the read cache's files now (see [`BlockCache::remove_files`]): for a mount that
    /// ends while its session still holds the file system.
    pub fn discard_read_cache(&self) {
        if let Some(cache) = &self.cache {
            cache.remove_files();
        }
    }

    /// Drops the cached blocks of `key`: it was changed or removed through the mount.
    async fn invalidate(&self, key: &str) {
        if let Some(cache) = &self.cache {
            cache.invalidate(key).await;
        }
    }

    pub fn config(&self) -> &FsConfig {
        &self.config
    }

    fn check_writable(&self) -> FsResult<()> {
        if self.config.read_only {
            Err(FsError::ReadOnly)
        } else {
            Ok(())
        }
    }

    fn attr(&self, ino: Ino, kind: Kind, size: u64, mtime: SystemTime) -> Attr {
        let perm = match kind {
            Kind::File => self.config.file_mode,
            Kind::Dir => self.config.dir_mode,
        };
        Attr {
            ino,
            kind,
            size,
            mtime,
            perm,
            uid: self.config.uid,
            gid: self.config.gid,
        }
    }

    /// Names the store cannot hold or that this layer hides.
    fn check_name(&self, parent: &str, name: &str) -> FsResult<()> {
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            return Err(FsError::Invalid);
        }
        // NAME_MAX, as `statfs` says: no local file system could hold a longer name, and a
        // local store cannot store it (an S3 key could, but the mount keeps to one rule).
        if name.len() > NAME_MAX {
            return Err(FsError::NameTooLong);
        }
        if parent.is_empty() && self.is_hidden(name) {
            return Err(FsError::Invalid);
        }
        Ok(())
    }

    fn is_hidden(&self, root_name: &str) -> bool {
        root_name == self.hidden || root_name == fs_core::store::local::SYS_DIR
    }

    fn new_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    /// The path of a directory inode.
    fn dir_path(&self, ino: Ino) -> FsResult<String> {
        let inodes = lock(&self.inodes);
        let node = inodes.get(ino).ok_or(FsError::NotFound)?;
        match node.kind {
            Kind::Dir => Ok(node.path.clone()),
            Kind::File => Err(FsError::NotDir),
        }
    }

    fn child(&self, parent: Ino, name: &str) -> FsResult<String> {
        let parent_path = self.dir_path(parent)?;
        self.check_name(&parent_path, name)?;
        let path = join(&parent_path, name);
        // A directory's marker is its path and a `/`: that key must fit too.
        if path.len() >= fs_core::store::limits::MAX_KEY_LEN {
            return Err(FsError::NameTooLong);
        }
        Ok(path)
    }

    fn open_file(&self, ino: Ino) -> Option<Arc<AsyncMutex<OpenFile>>> {
        lock(&self.open).get(&ino).cloned()
    }

    fn open_file_at(&self, path: &str) -> Option<(Ino, Arc<AsyncMutex<OpenFile>>)> {
        let ino = lock(&self.inodes).ino_of(path)?;
        self.open_file(ino).map(|f| (ino, f))
    }

    async fn head(&self, key: &str) -> FsResult<Option<ObjectMeta>> {
        match self.store.head_opt(key).await {
            Ok(meta) => Ok(meta),
            // A name the store cannot hold (a local store's reserved names): not a failure
            // of the store.
            Err(e) if e.kind() == StoreErrorKind::InvalidKey => Err(FsError::Invalid),
            Err(e) => Err(io_error("head", key, e)),
        }
    }

    /// Whether anything (a marker or any key) lives under `path/`.
    async fn has_children(&self, path: &str, delimiter: bool) -> FsResult<bool> {
        let prefix = dir_prefix(path);
        let page = self
            .store
            .list(ListRequest {
                prefix: prefix.clone(),
                delimiter: delimiter.then(|| "/".to_string()),
                continuation: None,
                max_keys: Some(1),
            })
            .await
            .map_err(|e| io_error("list", &prefix, e))?;
        Ok(!page.objects.is_empty() || !page.common_prefixes.is_empty())
    }

    /// A directory's only trace may be a key inside it: keep it when that key goes (POSIX
    /// keeps a directory after its last file is removed; S3 would not).
    async fn keep_dir(&self, path: &str) -> FsResult<()> {
        if path.is_empty() || self.has_children(path, false).await? {
            return Ok(());
        }
        let marker = dir_prefix(path);
        self.store
            .put(&marker, Bytes::new(), PutOptions::default())
            .await
            .map_err(|e| io_error("put", &marker, e))?;
        Ok(())
    }

    /// What `path` is in the store (or as a file being written), interned.
    async fn resolve(&self, path: &str) -> FsResult<Attr> {
        if let Some((ino, file)) = self.open_file_at(path) {
            let file = file.lock().await;
            return Ok(self.attr(ino, Kind::File, file.len(), file.mtime));
        }
        if let Some(meta) = self.head(path).await? {
            let mtime = meta.last_modified.unwrap_or(SystemTime::UNIX_EPOCH);
            let ino =
                lock(&self.inodes).intern(path, Kind::File, meta.size, mtime, Some(meta.etag));
            return Ok(self.attr(ino, Kind::File, meta.size, mtime));
        }
        if self.has_children(path, true).await? {
            let now = SystemTime::now();
            let ino = lock(&self.inodes).intern(path, Kind::Dir, 0, now, None);
            return Ok(self.attr(ino, Kind::Dir, 0, now));
        }
        lock(&self.inodes).remove_path(path);
        let mut absent = lock(&self.absent);
        if absent.len() >= ABSENT_MAX {
            // Names looked up and never created: forget the old ones.
            absent.retain(|_, seen| seen.elapsed() < self.config.ttl);
        }
        absent.insert(path.to_string(), Instant::now());
        Err(FsError::NotFound)
    }

    /// Whether the store said `path` was absent less than the metadata TTL ago, and nothing
    /// has given it an inode since (mkdir, rename). Forgets it either way.
    fn recently_absent(&self, path: &str) -> bool {
        let seen = lock(&self.absent).remove(path);
        seen.is_some_and(|seen| seen.elapsed() < self.config.ttl)
            && lock(&self.inodes).ino_of(path).is_none()
    }

    pub async fn lookup(&self, parent: Ino, name: &str) -> FsResult<Attr> {
        let path = self.child(parent, name)?;
        self.resolve(&path).await
    }

    pub async fn getattr(&self, ino: Ino) -> FsResult<Attr> {
        if let Some(file) = self.open_file(ino) {
            let file = file.lock().await;
            return Ok(self.attr(ino, Kind::File, file.len(), file.mtime));
        }
        let node = lock(&self.inodes)
            .get(ino)
            .cloned()
            .ok_or(FsError::NotFound)?;
        if node.kind == Kind::Dir || node.checked.elapsed() < self.config.ttl {
            return Ok(self.attr(ino, node.kind, node.size, node.mtime));
        }
        match self.head(&node.path).await? {
            Some(meta) => {
                let mtime = meta.last_modified.unwrap_or(SystemTime::UNIX_EPOCH);
                lock(&self.inodes).intern(
                    &node.path,
                    Kind::File,
                    meta.size,
                    mtime,
                    Some(meta.etag),
                );
                Ok(self.attr(ino, Kind::File, meta.size, mtime))
            }
            None => Err(FsError::NotFound),
        }
    }

    /// Lists a directory (all pages), interning every entry; `.` and `..` first.
    pub async fn list_dir(&self, ino: Ino) -> FsResult<Vec<DirEntry>> {
        let path = self.dir_path(ino)?;
        let prefix = dir_prefix(&path);
        let mut names: BTreeMap<String, (Kind, u64, SystemTime, Option<String>)> = BTreeMap::new();
        let mut continuation = None;
        loop {
            let page = self
                .store
                .list(ListRequest {
                    prefix: prefix.clone(),
                    delimiter: Some("/".into()),
                    continuation: continuation.take(),
                    max_keys: None,
                })
                .await
                .map_err(|e| io_error("list", &prefix, e))?;
            for common in &page.common_prefixes {
                let Some(name) = common.strip_prefix(&prefix) else {
                    continue;
                };
                let name = name.trim_end_matches('/');
                if !name.is_empty() && !name.contains('/') {
                    names.insert(name.to_string(), (Kind::Dir, 0, SystemTime::now(), None));
                }
            }
            for object in &page.objects {
                let Some(name) = object.key.strip_prefix(&prefix) else {
                    continue;
                };
                // The directory's own marker, or a key with an empty segment (`a//b`).
                if name.is_empty() || name.contains('/') {
                    continue;
                }
                let mtime = object.last_modified.unwrap_or(SystemTime::UNIX_EPOCH);
                names.insert(
                    name.to_string(),
                    (Kind::File, object.size, mtime, Some(object.etag.clone())),
                );
            }
            match page.next {
                Some(next) => continuation = Some(next),
                None => break,
            }
        }
        if path.is_empty() {
            names.retain(|name, _| !self.is_hidden(name));
        }
        // Files being written that are not in the store yet.
        let open: Vec<(Ino, Arc<AsyncMutex<OpenFile>>)> = lock(&self.open)
            .iter()
            .map(|(ino, f)| (*ino, f.clone()))
            .collect();
        for (_, file) in open {
            let file = file.lock().await;
            if !file.unlinked
                && parent_of(&file.key) == path
                && let Some(name) = file.key.strip_prefix(&prefix)
            {
                names.insert(name.to_string(), (Kind::File, file.len(), file.mtime, None));
            }
        }
        let mut inodes = lock(&self.inodes);
        let parent_ino = inodes.ino_of(parent_of(&path)).unwrap_or(ROOT);
        let mut entries = vec![
            DirEntry {
                ino,
                kind: Kind::Dir,
                name: ".".into(),
            },
            DirEntry {
                ino: parent_ino,
                kind: Kind::Dir,
                name: "..".into(),
            },
        ];
        for (name, (kind, size, mtime, etag)) in names {
            let ino = inodes.intern(&join(&path, &name), kind, size, mtime, etag);
            entries.push(DirEntry { ino, kind, name });
        }
        Ok(entries)
    }

    /// Opens a directory: its listing is taken now and served by `readdir` from offsets.
    pub async fn opendir(&self, ino: Ino) -> FsResult<u64> {
        let entries = self.list_dir(ino).await?;
        let fh = self.new_fh();
        lock(&self.dirs).insert(fh, entries);
        Ok(fh)
    }

    /// Up to `limit` entries of an open directory from `offset` on (an entry's offset is its
    /// index + 1). The kernel reads a directory in many small calls: each copies only a window.
    pub fn readdir(&self, fh: u64, offset: u64, limit: usize) -> FsResult<Vec<DirEntry>> {
        let dirs = lock(&self.dirs);
        let entries = dirs.get(&fh).ok_or(FsError::BadHandle)?;
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        Ok(entries.iter().skip(start).take(limit).cloned().collect())
    }

    pub fn releasedir(&self, fh: u64) {
        lock(&self.dirs).remove(&fh);
    }

    pub async fn mkdir(&self, parent: Ino, name: &str) -> FsResult<Attr> {
        self.check_writable()?;
        let path = self.child(parent, name)?;
        match self.resolve(&path).await {
            Ok(_) => return Err(FsError::Exists),
            Err(FsError::NotFound) => {}
            Err(e) => return Err(e),
        }
        let marker = dir_prefix(&path);
        self.store
            .put(&marker, Bytes::new(), PutOptions::default())
            .await
            .map_err(|e| io_error("put", &marker, e))?;
        let now = SystemTime::now();
        let ino = lock(&self.inodes).intern(&path, Kind::Dir, 0, now, None);
        Ok(self.attr(ino, Kind::Dir, 0, now))
    }

    pub async fn rmdir(&self, parent: Ino, name: &str) -> FsResult<()> {
        self.check_writable()?;
        let path = self.child(parent, name)?;
        if self.open_file_at(&path).is_some() || self.head(&path).await?.is_some() {
            return Err(FsError::NotDir);
        }
        let marker = dir_prefix(&path);
        let page = self
            .store
            .list(ListRequest {
                prefix: marker.clone(),
                delimiter: None,
                continuation: None,
                max_keys: Some(2),
            })
            .await
            .map_err(|e| io_error("list", &marker, e))?;
        let has_marker = page.objects.iter().any(|o| o.key == marker);
        if page.objects.iter().any(|o| o.key != marker) {
            return Err(FsError::NotEmpty);
        }
        let open_inside = {
            let open: Vec<_> = lock(&self.open).values().cloned().collect();
            let mut found = false;
            for file in open {
                let file = file.lock().await;
                if !file.unlinked && file.key.starts_with(&marker) {
                    found = true;
                }
            }
            found
        };
        if open_inside {
            return Err(FsError::NotEmpty);
        }
        let known_dir = {
            let inodes = lock(&self.inodes);
            inodes
                .ino_of(&path)
                .and_then(|i| inodes.get(i))
                .is_some_and(|n| n.kind == Kind::Dir)
        };
        if !has_marker && !known_dir {
            return Err(FsError::NotFound);
        }
        if has_marker {
            self.store
                .delete(&marker)
                .await
                .map_err(|e| io_error("delete", &marker, e))?;
        }
        lock(&self.inodes).remove_path(&path);
        self.keep_dir(parent_of(&path)).await
    }

    pub async fn unlink(&self, parent: Ino, name: &str) -> FsResult<()> {
        self.check_writable()?;
        let path = self.child(parent, name)?;
        let open = self.open_file_at(&path);
        let meta = self.head(&path).await?;
        let exists = meta.is_some();
        if !exists && open.is_none() {
            return Err(if self.has_children(&path, true).await? {
                FsError::IsDir
            } else {
                FsError::NotFound
            });
        }
        // Handles still open keep the content (before the object goes).
        self.orphan_at(&path, meta.map(|m| m.size)).await?;
        if exists {
            self.store
                .delete(&path)
                .await
                .map_err(|e| io_error("delete", &path, e))?;
        }
        self.invalidate(&path).await;
        lock(&self.inodes).remove_path(&path);
        self.keep_dir(parent_of(&path)).await
    }

    fn add_handle(&self, ino: Ino, mode: OpenMode) -> u64 {
        let fh = self.new_fh();
        let handle = Handle {
            ino,
            write: mode.write,
            append: mode.append,
        };
        lock(&self.handles).insert(fh, handle);
        fh
    }

    fn handle(&self, fh: u64) -> FsResult<Handle> {
        lock(&self.handles)
            .get(&fh)
            .copied()
            .ok_or(FsError::BadHandle)
    }

    /// The open file of `ino`, created with `base` if none; counts one more handle.
    fn attach(&self, ino: Ino, key: &str, base: Base, dirty: bool) -> Arc<AsyncMutex<OpenFile>> {
        let mut open = lock(&self.open);
        let file = open.entry(ino).or_insert_with(|| {
            Arc::new(AsyncMutex::new(OpenFile {
                key: key.to_string(),
                handles: 0,
                base,
                writer: None,
                shadow: None,
                dirty,
                busy: false,
                lost: false,
                unlinked: false,
                orphan: None,
                mtime: SystemTime::now(),
            }))
        });
        file.clone()
    }

    pub async fn create(&self, parent: Ino, name: &str, mode: OpenMode) -> FsResult<(Attr, u64)> {
        self.check_writable()?;
        let path = self.child(parent, name)?;
        // The kernel creates only names its lookup did not find: when that lookup just asked
        // the store, asking again (HEAD + LIST) would double the cost of creating a small
        // file. O_EXCL always asks, so that it fails on a name created meanwhile elsewhere.
        if mode.exclusive || !self.recently_absent(&path) {
            match self.resolve(&path).await {
                Ok(attr) if attr.kind == Kind::Dir => return Err(FsError::IsDir),
                Ok(_) if mode.exclusive => return Err(FsError::Exists),
                Ok(_) | Err(FsError::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        let now = SystemTime::now();
        let ino = lock(&self.inodes).intern(&path, Kind::File, 0, now, None);
        let file = self.attach(ino, &path, Base::Empty, true);
        let mut file = file.lock().await;
        file.handles += 1;
        // An earlier handle may have it open: creating truncates it.
        let result = self.set_len(&mut file, 0).await;
        drop(file);
        let mode = OpenMode {
            write: true,
            ..mode
        };
        let fh = self.add_handle(ino, mode);
        if let Err(e) = result {
            self.release(fh).await.ok();
            return Err(e);
        }
        Ok((self.attr(ino, Kind::File, 0, now), fh))
    }

    /// `mknod`: a regular file is created empty (committed at once, like `create` + `close`);
    /// FIFOs, sockets and devices cannot be stored (EPERM, as for links).
    pub async fn mknod(&self, parent: Ino, name: &str, mode: u32) -> FsResult<Attr> {
        if mode & libc::S_IFMT != libc::S_IFREG && mode & libc::S_IFMT != 0 {
            self.child(parent, name)?;
            return Err(FsError::NotPermitted);
        }
        let exclusive = OpenMode {
            write: true,
            exclusive: true,
            ..OpenMode::default()
        };
        let (attr, fh) = self.create(parent, name, exclusive).await?;
        self.release(fh).await?;
        Ok(attr)
    }

    /// The inode `ino`, which must be a file: `ENOENT` if unknown, `EISDIR` for a directory.
    fn file_node(&self, ino: Ino) -> FsResult<Node> {
        let node = lock(&self.inodes)
            .get(ino)
            .cloned()
            .ok_or(FsError::NotFound)?;
        if node.kind == Kind::Dir {
            return Err(FsError::IsDir);
        }
        Ok(node)
    }

    pub async fn open(&self, ino: Ino, mode: OpenMode) -> FsResult<u64> {
        let node = self.file_node(ino)?;
        if !mode.write {
            return Ok(self.add_handle(ino, mode));
        }
        self.check_writable()?;
        let file = match self.open_file(ino) {
            Some(file) => file,
            None => {
                let size = match self.head(&node.path).await? {
                    Some(meta) => meta.size,
                    None => return Err(FsError::NotFound),
                };
                self.attach(ino, &node.path, Base::Object(size), false)
            }
        };
        let mut file = file.lock().await;
        file.handles += 1;
        let result = if mode.truncate {
            self.set_len(&mut file, 0).await
        } else {
            Ok(())
        };
        drop(file);
        let fh = self.add_handle(ino, mode);
        if let Err(e) = result {
            self.release(fh).await.ok();
            return Err(e);
        }
        Ok(fh)
    }

    /// The largest new file kept in memory until its commit (one part: larger ones are
    /// multipart uploads anyway).
    fn small_limit(&self) -> u64 {
        self.writer.config().part_size.min(SHADOW_LIMIT)
    }

    /// Starts the writer of an open file if it has none.
    async fn ensure_writer(&self, file: &mut OpenFile) -> FsResult<()> {
        if file.writer.is_some() {
            return Ok(());
        }
        let writer = match file.base {
            Base::Empty => self.writer.open(&file.key).await,
            Base::Object(_) => self.writer.open_append(&file.key).await,
        }
        .map_err(|e| writer_error("open", &file.key, e))?;
        file.writer = Some(writer);
        Ok(())
    }

    /// Cuts or extends (with zeros) an open file.
    async fn set_len(&self, file: &mut OpenFile, len: u64) -> FsResult<()> {
        file.begin()?;
        let result = self.set_len_inner(file, len).await;
        if result.is_ok() {
            file.mtime = SystemTime::now();
        }
        file.end();
        result
    }

    async fn set_len_inner(&self, file: &mut OpenFile, len: u64) -> FsResult<()> {
        if let Some(orphan) = &mut file.orphan {
            return orphan
                .set_len(len)
                .map_err(|e| io_error("truncate", &file.key, e));
        }
        if len > 0 && file.is_small_new() {
            if len <= self.small_limit() {
                file.shadow
                    .get_or_insert_with(|| Shadow {
                        start: 0,
                        bytes: Vec::new(),
                    })
                    .resize(len as usize);
                file.dirty = true;
                return Ok(());
            }
            // Too large to keep in memory: the writer takes over.
            self.apply_shadow(file).await?;
        }
        if len > 0
            && let Some(shadow) = &file.shadow
            && len > shadow.start.saturating_add(SHADOW_LIMIT)
        {
            // Growing the rewrite past what memory holds: hand it over first.
            self.apply_shadow(file).await?;
        }
        if len > 0
            && let Some(shadow) = &mut file.shadow
        {
            if len >= shadow.start {
                shadow.resize((len - shadow.start) as usize);
            } else {
                shadow.start = len;
                shadow.bytes.clear();
            }
            file.dirty = true;
            return Ok(());
        }
        if len > 0 && len < file.len() {
            // Cutting waits for the next fsync or commit, so the writes that follow (often
            // right at the new end) join the same rewrite.
            file.shadow = Some(Shadow {
                start: len,
                bytes: Vec::new(),
            });
            file.dirty = true;
            return Ok(());
        }
        if len == 0 {
            file.shadow = None;
            // Nothing of the old content is kept: a fresh upload at the next write.
            if let Some(writer) = file.writer.take()
                && let Err(e) = writer.abort().await
            {
                tracing::warn!(key = %file.key, "aborting a truncated file's upload: {e}");
            }
            file.base = Base::Empty;
            file.dirty = true;
            return Ok(());
        }
        match (&mut file.writer, file.base) {
            (Some(writer), _) => writer
                .truncate(len)
                .await
                .map_err(|e| writer_error("truncate", &file.key, e))?,
            (None, Base::Object(current)) if current == len => return Ok(()),
            (None, Base::Object(_)) => {
                let writer = self
                    .writer
                    .open_truncate(&file.key, len)
                    .await
                    .map_err(|e| writer_error("truncate", &file.key, e))?;
                file.writer = Some(writer);
            }
            (None, Base::Empty) => {
                self.ensure_writer(file).await?;
                if let Some(writer) = &mut file.writer {
                    writer
                        .truncate(len)
                        .await
                        .map_err(|e| writer_error("truncate", &file.key, e))?;
                }
            }
        }
        file.dirty = true;
        Ok(())
    }

    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Bytes> {
        let handle = self.handle(fh)?;
        if let Some(file) = self.open_file(handle.ino) {
            let file = file.lock().await;
            return self.read_open(&file, offset, size).await;
        }
        let (path, len, etag) = lock(&self.inodes)
            .get(handle.ino)
            .map(|n| (n.path.clone(), n.size, n.etag.clone()))
            .ok_or(FsError::NotFound)?;
        let source = || Source {
            store: self.store.clone(),
            key: path.clone(),
            cache: self.cache.clone(),
            etag: etag.clone(),
        };
        let reader = {
            let mut readers = lock(&self.readers);
            let reader = readers
                .entry(fh)
                .or_insert_with(|| Arc::new(AsyncMutex::new(ReadAhead::new(source(), len))));
            reader.clone()
        };
        let mut reader = reader.lock().await;
        if reader.key() != path || reader.size() != len || reader.etag() != etag.as_deref() {
            // Renamed while open (read the new name from now on), or the file changed since
            // this handle started reading (a commit through the mount, or a change in the
            // store seen by a lookup): read the version known now, to its new end.
            *reader = ReadAhead::new(source(), len);
        }
        reader.read(offset, size).await
    }

    /// Up to `size` bytes at `offset` of a file open for writing (or unlinked while open).
    async fn read_open(&self, file: &OpenFile, offset: u64, size: u32) -> FsResult<Bytes> {
        if let Some(orphan) = &file.orphan {
            return orphan
                .read(offset, size)
                .map_err(|e| io_error("read", &file.key, e));
        }
        let end = offset.saturating_add(u64::from(size)).min(file.len());
        if offset >= end {
            // At or past the end.
            return Ok(Bytes::new());
        }
        let Some(shadow) = &file.shadow else {
            return self.read_base(file, offset, end).await;
        };
        // Below the shadow from the writer or object, the rest from the shadow.
        let mut out = self
            .read_base(file, offset, end.min(shadow.start))
            .await?
            .to_vec();
        if end > shadow.start {
            let from = (offset.max(shadow.start) - shadow.start) as usize;
            out.extend_from_slice(&shadow.bytes[from..(end - shadow.start) as usize]);
        }
        Ok(Bytes::from(out))
    }

    /// Bytes `offset..end` of an open file without its shadow: from the writer (what was
    /// written so far) or the committed object.
    async fn read_base(&self, file: &OpenFile, offset: u64, end: u64) -> FsResult<Bytes> {
        if offset >= end {
            return Ok(Bytes::new());
        }
        match (&file.writer, file.base) {
            (Some(writer), _) => writer
                .read_at(offset, end - offset)
                .await
                .map_err(|e| io_error("read", &file.key, e)),
            (None, Base::Empty) => Ok(Bytes::new()),
            (None, Base::Object(_)) => match self.store.get(&file.key, Some(offset..end)).await {
                Ok(got) => Ok(got.body),
                Err(e) if e.kind() == StoreErrorKind::InvalidRange => Ok(Bytes::new()),
                Err(e) => Err(store_error("get", &file.key, e)),
            },
        }
    }

    /// Writes `data` at `offset` (at the end for O_APPEND handles); returns the bytes written.
    pub async fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let handle = self.handle(fh)?;
        if !handle.write {
            return Err(FsError::BadHandle);
        }
        let file = self.open_file(handle.ino).ok_or(FsError::BadHandle)?;
        let mut file = file.lock().await;
        file.begin()?;
        let result = self
            .write_inner(&mut file, handle.append, offset, data)
            .await;
        if result.is_ok() {
            file.mtime = SystemTime::now();
            file.dirty = true;
        }
        file.end();
        result?;
        u32::try_from(data.len()).map_err(|_| FsError::Invalid)
    }

    async fn write_inner(
        &self,
        file: &mut OpenFile,
        append: bool,
        offset: u64,
        data: &[u8],
    ) -> FsResult<()> {
        let offset = if append { file.len() } else { offset };
        let end = offset + data.len() as u64;
        if let Some(orphan) = &mut file.orphan {
            return orphan
                .write(offset, data)
                .map_err(|e| io_error("write", &file.key, e));
        }
        if file.is_small_new() {
            if end.max(file.len()) <= self.small_limit() {
                file.shadow
                    .get_or_insert_with(|| Shadow {
                        start: 0,
                        bytes: Vec::new(),
                    })
                    .write_at(offset, data);
                return Ok(());
            }
            // Larger than a part: the writer takes over what was held, as a multipart upload.
            self.apply_shadow(file).await?;
        }
        if let Some(shadow) = &file.shadow {
            let (low, high) = (offset.min(shadow.start), end.max(shadow.end()));
            if high - low <= SHADOW_LIMIT {
                let below = self.read_base(file, low, shadow.start).await?;
                if let Some(shadow) = &mut file.shadow {
                    if low < shadow.start {
                        // The rewrite now starts lower: take the bytes in between from below.
                        let mut bytes = below.to_vec();
                        bytes.append(&mut shadow.bytes);
                        shadow.bytes = bytes;
                        shadow.start = low;
                    }
                    shadow.write_at(offset, data);
                }
                return Ok(());
            }
            // Too much to hold: hand the rewrite over, then write as without one.
            self.apply_shadow(file).await?;
        }
        let len = file.len();
        if offset < len && end.max(len) - offset <= SHADOW_LIMIT {
            // A write before the end: start a rewrite of the end in memory.
            let rest = self.read_base(file, offset, len).await?;
            let mut shadow = Shadow {
                start: offset,
                bytes: rest.to_vec(),
            };
            shadow.write_at(offset, data);
            file.shadow = Some(shadow);
            return Ok(());
        }
        // Writing at the start of a file truncated to zero, or past the end of an object,
        // needs no copy of what is there: set the length first, then append.
        self.ensure_writer(file).await?;
        let key = file.key.clone();
        let Some(writer) = file.writer.as_mut() else {
            return Err(FsError::Io);
        };
        let len = writer.len();
        let offset = if append { len } else { offset };
        let werr = |e| writer_error("write", &key, e);
        if offset >= len {
            if offset > len {
                writer.truncate(offset).await.map_err(werr)?;
            }
            return writer.write(data).await.map_err(werr);
        }
        // A write before the end too far from it to rewrite in memory: S3 objects cannot be
        // changed in place, so the file is cut at `offset`, the new bytes are appended, then
        // the old bytes after them are re-appended. Costs reading and re-uploading everything
        // after `offset` (see docs/fuse.md).
        let end = offset + data.len() as u64;
        let rest = if end < len {
            writer.read_at(end, len - end).await.map_err(werr)?
        } else {
            Bytes::new()
        };
        writer.truncate(offset).await.map_err(werr)?;
        writer.write(data).await.map_err(werr)?;
        writer.write(&rest).await.map_err(werr)
    }

    /// Hands the shadow (writes before the end) to the writer: cuts the content at the
    /// shadow's start and appends the shadow. Without a writer the new one starts from the
    /// committed object cut there (`open_truncate`: only what is kept is copied).
    async fn apply_shadow(&self, file: &mut OpenFile) -> FsResult<()> {
        let Some(shadow) = file.shadow.take() else {
            return Ok(());
        };
        let key = file.key.clone();
        let werr = |e| writer_error("write", &key, e);
        if file.writer.is_none() {
            let writer = match file.base {
                Base::Object(len) if shadow.start == len => self.writer.open_append(&key).await,
                Base::Object(_) if shadow.start > 0 => {
                    self.writer.open_truncate(&key, shadow.start).await
                }
                Base::Object(_) | Base::Empty => self.writer.open(&key).await,
            }
            .map_err(|e| writer_error("open", &key, e))?;
            file.writer = Some(writer);
        }
        let Some(writer) = file.writer.as_mut() else {
            return Err(FsError::Io);
        };
        if writer.len() != shadow.start {
            writer.truncate(shadow.start).await.map_err(werr)?;
        }
        writer.write(&shadow.bytes).await.map_err(werr)
    }

    /// Commits an open file: the object is whole in the store when this returns.
    async fn commit(&self, ino: Ino, file: &mut OpenFile) -> FsResult<()> {
        if file.unlinked {
            return Ok(());
        }
        file.begin()?;
        let result = self.commit_inner(file).await;
        file.end();
        let committed = result?;
        if let Some(Committed { size, etag, local }) = committed {
            self.invalidate(&file.key).await;
            // After the invalidation, which drops every version of the key: the new one's
            // blocks are the bytes just committed, served by ETag, so a later writer of the
            // same file (another ETag) can never be served them.
            self.keep_committed(&file.key, &etag, size, local).await;
            let mut inodes = lock(&self.inodes);
            if inodes.ino_of(&file.key) == Some(ino) {
                inodes.intern(&file.key, Kind::File, size, file.mtime, Some(etag));
            }
        }
        Ok(())
    }

    /// Hands what a commit left locally to the read cache, so that reading the file back right
    /// after closing it needs no GET. Without a read cache the part files are deleted (by
    /// dropping them).
    async fn keep_committed(&self, key: &str, etag: &str, size: u64, local: Local) {
        let Some(cache) = &self.cache else {
            return;
        };
        match local {
            Local::Nothing => {}
            Local::Parts(parts) => {
                let files = parts
                    .parts()
                    .iter()
                    .map(|p| AdoptFile {
                        path: p.path.clone(),
                        offset: p.offset,
                        len: p.len,
                    })
                    .collect();
                let blocks = cache.adopt(key, etag, size, files).await;
                tracing::debug!(key, blocks, "read cache: adopted the parts just written");
                // Deletes the writer's cache directory with whatever was not adopted.
                drop(parts);
            }
            Local::Bytes(bytes) => {
                // Only as much as the cache holds, from the start, like `adopt`.
                let mut room = cache.capacity();
                for (block, start) in (0..size).step_by(BLOCK as usize).enumerate() {
                    let end = (start + BLOCK).min(size);
                    if end - start > room {
                        break;
                    }
                    room -= end - start;
                    let data = bytes.slice(start as usize..end as usize);
                    cache.put(key, etag, block as u64, data).await;
                }
            }
        }
    }

    /// What was committed, if anything was.
    async fn commit_inner(&self, file: &mut OpenFile) -> FsResult<Option<Committed>> {
        if file.writer.is_none()
            && let Some(shadow) = &mut file.shadow
            && shadow.start == 0
        {
            // The whole content is in memory (a small new file, or a rewrite from the first
            // byte): one PUT, with no multipart upload, staged tail or index entry.
            let bytes = Bytes::from(std::mem::take(&mut shadow.bytes));
            let size = bytes.len() as u64;
            match self
                .store
                .put(&file.key, bytes.clone(), PutOptions::default())
                .await
            {
                Ok(put) => {
                    file.shadow = None;
                    file.base = Base::Object(size);
                    file.dirty = false;
                    return Ok(Some(Committed {
                        size,
                        etag: put.etag,
                        local: Local::Bytes(bytes),
                    }));
                }
                Err(e) => {
                    // Kept for a later fsync or close.
                    shadow.bytes = bytes.to_vec();
                    return Err(io_error("put", &file.key, e));
                }
            }
        }
        self.apply_shadow(file).await?;
        if let Some(mut writer) = file.writer.take() {
            let key = file.key.clone();
            // Whatever happens next, the writer is spent: a failed close or commit leaves its
            // token in the index for the recovery at the next mount.
            // With a read cache, the parts the writer cached while uploading are kept for it;
            // a failed commit deletes them with the committer.
            let closed = if self.cache.is_some() {
                writer.close_for_commit_keeping_cache().await
            } else {
                writer.close_for_commit().await
            };
            let committer = match closed {
                Ok(committer) => committer,
                Err(e) => {
                    file.lost = true;
                    return Err(io_error("commit", &key, e));
                }
            };
            // Without kept files (no read cache) the hand-over is empty and nothing is kept.
            let (outcome, parts) = match committer.commit_keeping_cache().await {
                Ok(committed) => committed,
                Err(e) => {
                    file.lost = true;
                    // Refused for good (the object changed under this writer, or the key cannot
                    // hold it): the next mount's recovery would only fail again, so the upload
                    // goes now. Any other failure leaves it for that recovery.
                    if e.is_permanent_commit_failure()
                        && let Err(abort) = committer.abort().await
                    {
                        tracing::warn!(key, error = %abort, "could not abort the refused upload");
                    }
                    return Err(io_error("commit", &key, e));
                }
            };
            let local = Local::Parts(parts);
            file.base = Base::Object(outcome.size);
            file.dirty = false;
            return Ok(Some(Committed {
                size: outcome.size,
                etag: outcome.etag,
                local,
            }));
        }
        if file.dirty {
            let put = self
                .store
                .put(&file.key, Bytes::new(), PutOptions::default())
                .await
                .map_err(|e| io_error("put", &file.key, e))?;
            file.base = Base::Object(0);
            file.dirty = false;
            return Ok(Some(Committed {
                size: 0,
                etag: put.etag,
                local: Local::Nothing,
            }));
        }
        Ok(None)
    }

    /// `close` of a descriptor: commits what was written through any handle of the file.
    pub async fn flush(&self, fh: u64) -> FsResult<()> {
        let handle = self.handle(fh)?;
        if !handle.write {
            return Ok(());
        }
        let Some(file) = self.open_file(handle.ino) else {
            return Ok(());
        };
        let mut file = file.lock().await;
        self.commit(handle.ino, &mut file).await
    }

    /// Makes everything written durable (a persist): it survives a crash of the mount.
    pub async fn fsync(&self, fh: u64) -> FsResult<()> {
        let handle = self.handle(fh)?;
        let Some(file) = self.open_file(handle.ino) else {
            return Ok(());
        };
        let mut file = file.lock().await;
        if file.unlinked {
            return Ok(());
        }
        if file.shadow.is_some() {
            file.begin()?;
            let applied = self.apply_shadow(&mut file).await;
            file.end();
            applied?;
        }
        match file.writer.as_mut() {
            Some(writer) => {
                let key = writer.key().to_string();
                writer
                    .persist()
                    .await
                    .map_err(|e| io_error("fsync", &key, e))?;
                Ok(())
            }
            // A new or emptied file with nothing written: its empty object is its durable state.
            None => self.commit(handle.ino, &mut file).await,
        }
    }

    /// The last close of a handle: commits if needed and forgets the handle.
    pub async fn release(&self, fh: u64) -> FsResult<()> {
        let handle = lock(&self.handles).remove(&fh).ok_or(FsError::BadHandle)?;
        lock(&self.readers).remove(&fh);
        if !handle.write {
            self.forget_orphan(handle.ino).await;
            return Ok(());
        }
        let Some(file) = self.open_file(handle.ino) else {
            return Ok(());
        };
        let mut guard = file.lock().await;
        guard.handles = guard.handles.saturating_sub(1);
        if guard.handles > 0 {
            return Ok(());
        }
        let result = self.commit(handle.ino, &mut guard).await;
        let unlinked = guard.unlinked;
        drop(guard);
        if unlinked {
            // Read-only handles may still read it.
            self.forget_orphan(handle.ino).await;
        } else {
            lock(&self.open).remove(&handle.ino);
        }
        result
    }

    /// Whether any handle (reading or writing) is open on `ino`.
    fn has_handles(&self, ino: Ino) -> bool {
        lock(&self.handles).values().any(|h| h.ino == ino)
    }

    /// Drops the open file of `ino` if it was unlinked and no handle is left on it.
    async fn forget_orphan(&self, ino: Ino) {
        let Some(file) = self.open_file(ino) else {
            return;
        };
        let unlinked = file.lock().await.unlinked;
        if unlinked && !self.has_handles(ino) {
            lock(&self.open).remove(&ino);
        }
    }

    /// The name `path` is about to go (unlink, or replaced by a rename): if handles have it
    /// open, its content moves to a local [`Orphan`] that they go on reading and writing, and
    /// nothing of it is committed any more. `size` is the object's, when known (for a file
    /// open for reading only). Runs before the object is deleted or replaced.
    async fn orphan_at(&self, path: &str, size: Option<u64>) -> FsResult<()> {
        let Some(ino) = lock(&self.inodes).ino_of(path) else {
            return Ok(());
        };
        let (file, attached) = match self.open_file(ino) {
            Some(file) => (file, false),
            None if self.has_handles(ino) => {
                // Open for reading only: the committed object is the content.
                let size = match size {
                    Some(size) => size,
                    None => match self.head(path).await? {
                        Some(meta) => meta.size,
                        None => return Ok(()),
                    },
                };
                (self.attach(ino, path, Base::Object(size), false), true)
            }
            None => return Ok(()),
        };
        let mut guard = file.lock().await;
        if guard.unlinked {
            return Ok(());
        }
        let orphan = if guard.len() > ORPHAN_MAX {
            tracing::warn!(
                key = %path,
                len = guard.len(),
                "a file larger than {} MiB went away while open: its open handles lose it",
                ORPHAN_MAX >> 20
            );
            None
        } else {
            match self.copy_to_orphan(path, &guard).await {
                Ok(orphan) => Some(orphan),
                Err(e) => {
                    drop(guard);
                    if attached {
                        lock(&self.open).remove(&ino);
                    }
                    return Err(e);
                }
            }
        };
        let lost = orphan.is_none();
        guard.unlinked = true;
        guard.shadow = None;
        guard.orphan = orphan;
        if let Some(writer) = guard.writer.take()
            && let Err(e) = writer.abort().await
        {
            tracing::warn!(key = %path, "aborting the upload of an unlinked file: {e}");
        }
        drop(guard);
        if lost && attached {
            // Nothing kept for the reading handles: they read the (deleted) object as before.
            lock(&self.open).remove(&ino);
        }
        Ok(())
    }

    /// A local copy of an open file's content (written or committed), for [`Filesystem::orphan_at`].
    async fn copy_to_orphan(&self, path: &str, file: &OpenFile) -> FsResult<Orphan> {
        let fail = |e| io_error("unlink", path, e);
        let mut orphan = Orphan::create(&self.writer.config().cache_dir).map_err(fail)?;
        let len = file.len();
        let mut at = 0u64;
        while at < len {
            let chunk = (len - at).min(ORPHAN_CHUNK);
            let data = self.read_open(file, at, chunk as u32).await?;
            if data.is_empty() {
                break;
            }
            orphan.write(at, &data).map_err(fail)?;
            at += data.len() as u64;
        }
        orphan.set_len(len).map_err(fail)?;
        Ok(orphan)
    }

    /// Changes the size (truncate, ftruncate); other attributes are accepted and ignored.
    pub async fn setattr(&self, ino: Ino, size: Option<u64>) -> FsResult<Attr> {
        if let Some(size) = size {
            self.check_writable()?;
            if let Some(file) = self.open_file(ino) {
                // Before the inode table: a file unlinked while open is no longer there.
                let mut file = file.lock().await;
                self.set_len(&mut file, size).await?;
            } else {
                let node = self.file_node(ino)?;
                let outcome = self
                    .writer
                    .truncate_object(&node.path, size)
                    .await
                    .map_err(|e| writer_error("truncate", &node.path, e))?;
                self.invalidate(&node.path).await;
                lock(&self.inodes).intern(
                    &node.path,
                    Kind::File,
                    outcome.size,
                    SystemTime::now(),
                    Some(outcome.etag),
                );
            }
        }
        self.getattr(ino).await
    }

    /// Renames a file (copy, then delete the old key) or a directory (every key under it, see
    /// [`Filesystem::rename_dir`]).
    pub async fn rename(
        &self,
        parent: Ino,
        name: &str,
        new_parent: Ino,
        new_name: &str,
        no_replace: bool,
    ) -> FsResult<()> {
        self.check_writable()?;
        let from = self.child(parent, name)?;
        let to = self.child(new_parent, new_name)?;
        let source = self.resolve(&from).await?;
        if source.kind == Kind::Dir {
            return self.rename_dir(&from, &to, no_replace).await;
        }
        if from == to {
            return Ok(());
        }
        match self.resolve(&to).await {
            Ok(attr) if attr.kind == Kind::Dir => return Err(FsError::IsDir),
            Ok(_) if no_replace => return Err(FsError::Exists),
            Ok(_) | Err(FsError::NotFound) => {}
            Err(e) => return Err(e),
        }
        // The replaced file's open handles keep its content (before the copy replaces it).
        self.orphan_at(&to, None).await?;
        let open = self.open_file(source.ino);
        let mut guard = match &open {
            Some(file) => Some(file.lock().await),
            None => None,
        };
        if let Some(file) = guard.as_deref_mut() {
            // The copy must see the whole file: commit what was written so far.
            self.commit(source.ino, file).await?;
        }
        self.copy_object(&from, &to).await?;
        self.store
            .delete(&from)
            .await
            .map_err(|e| io_error("delete", &from, e))?;
        self.invalidate(&from).await;
        self.invalidate(&to).await;
        if let Some(file) = guard.as_deref_mut() {
            file.key = to.clone();
        }
        drop(guard);
        lock(&self.inodes).rename(&from, &to);
        self.keep_dir(parent_of(&from)).await
    }

    /// Renames the directory `from` to `to`: copies every key under `from/` (files, the
    /// directory's marker and those of nested directories) to the same place under `to/`, then
    /// deletes the old keys. Not atomic: other clients of the store see both trees for a while,
    /// and a failure half-way (EIO, logged) leaves the keys copied so far under both names,
    /// nothing lost. Files open for writing under `from` are committed first and go on under
    /// their new names. As rename(2): `to` may be an empty directory (it is replaced), not a
    /// file (ENOTDIR), a non-empty directory (ENOTEMPTY) or inside `from` (EINVAL).
    async fn rename_dir(&self, from: &str, to: &str, no_replace: bool) -> FsResult<()> {
        if from == to {
            return Ok(());
        }
        let from_prefix = dir_prefix(from);
        let to_prefix = dir_prefix(to);
        if to.starts_with(&from_prefix) {
            return Err(FsError::Invalid);
        }
        match self.resolve(to).await {
            Ok(attr) if attr.kind == Kind::File => return Err(FsError::NotDir),
            Ok(_) if no_replace => return Err(FsError::Exists),
            Ok(_) => {
                if self.has_entries(to).await? {
                    return Err(FsError::NotEmpty);
                }
            }
            Err(FsError::NotFound) => {}
            Err(e) => return Err(e),
        }
        // The open files inside, locked in inode order (so two renames cannot deadlock) for the
        // whole move: no write lands between their commit and the change of their key.
        let mut inside: Vec<(Ino, Arc<AsyncMutex<OpenFile>>)> = Vec::new();
        let open: Vec<(Ino, Arc<AsyncMutex<OpenFile>>)> = lock(&self.open)
            .iter()
            .map(|(ino, f)| (*ino, f.clone()))
            .collect();
        for (ino, file) in open {
            if file.lock().await.key.starts_with(&from_prefix) {
                inside.push((ino, file));
            }
        }
        inside.sort_by_key(|(ino, _)| *ino);
        let mut guards = Vec::with_capacity(inside.len());
        for (ino, file) in &inside {
            guards.push((*ino, file.lock().await));
        }
        for (ino, file) in &mut guards {
            // The copy must see everything written so far.
            if file.key.starts_with(&from_prefix) {
                self.commit(*ino, file).await?;
            }
        }
        let keys = self
            .store
            .list_all(&from_prefix)
            .await
            .map_err(|e| io_error("list", &from_prefix, e))?;
        let mut copied = Vec::with_capacity(keys.len());
        for object in &keys {
            let Some(rest) = object.key.strip_prefix(&from_prefix) else {
                continue;
            };
            let new_key = format!("{to_prefix}{rest}");
            if object.key.ends_with('/') {
                // A directory marker (the renamed one's or a nested one's): an empty object.
                self.store
                    .put(&new_key, Bytes::new(), PutOptions::default())
                    .await
                    .map_err(|e| io_error("put", &new_key, e))?;
            } else {
                self.copy_object(&object.key, &new_key).await?;
            }
            copied.push(object.key.clone());
        }
        if copied.is_empty() {
            // Known only from the inode table (nothing in the store): the new name still needs
            // to exist as a directory.
            self.store
                .put(&to_prefix, Bytes::new(), PutOptions::default())
                .await
                .map_err(|e| io_error("put", &to_prefix, e))?;
        }
        self.store
            .delete_many(&copied)
            .await
            .map_err(|e| io_error("delete", &from_prefix, e))?;
        if let Some(cache) = &self.cache {
            cache.invalidate_prefix(&from_prefix).await;
            cache.invalidate_prefix(&to_prefix).await;
        }
        for (_, file) in &mut guards {
            if let Some(rest) = file.key.strip_prefix(&from_prefix) {
                file.key = format!("{to_prefix}{rest}");
            }
        }
        drop(guards);
        lock(&self.inodes).rename_tree(from, to);
        self.keep_dir(parent_of(from)).await
    }

    /// Whether the directory `path` has any entry: a key under it other than its own marker,
    /// or a file open for writing in it that is not in the store yet.
    async fn has_entries(&self, path: &str) -> FsResult<bool> {
        let marker = dir_prefix(path);
        let page = self
            .store
            .list(ListRequest {
                prefix: marker.clone(),
                delimiter: None,
                continuation: None,
                max_keys: Some(2),
            })
            .await
            .map_err(|e| io_error("list", &marker, e))?;
        if page.objects.iter().any(|o| o.key != marker) {
            return Ok(true);
        }
        let open: Vec<_> = lock(&self.open).values().cloned().collect();
        for file in open {
            let file = file.lock().await;
            if !file.unlinked && file.key.starts_with(&marker) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Copies an object: small ones by GET and PUT, larger ones server-side, part by part.
    async fn copy_object(&self, from: &str, to: &str) -> FsResult<()> {
        let meta = self.head(from).await?.ok_or(FsError::NotFound)?;
        let part_size = self.writer.config().part_size;
        if meta.size <= part_size {
            let got = self
                .store
                .get(from, None)
                .await
                .map_err(|e| store_error("get", from, e))?;
            self.store
                .put(to, got.body, PutOptions::default())
                .await
                .map_err(|e| io_error("put", to, e))?;
            return Ok(());
        }
        let upload = self
            .store
            .create_multipart(to, PutOptions::default())
            .await
            .map_err(|e| io_error("copy", to, e))?;
        let result = self.copy_parts(from, to, &upload, &meta, part_size).await;
        if result.is_err()
            && let Err(e) = self.store.abort_multipart(to, &upload).await
        {
            tracing::warn!(key = to, "aborting a failed copy's upload: {e}");
        }
        result
    }

    async fn copy_parts(
        &self,
        from: &str,
        to: &str,
        upload: &str,
        meta: &ObjectMeta,
        part_size: u64,
    ) -> FsResult<()> {
        let mut parts = Vec::new();
        let mut start = 0u64;
        let mut number = 1u32;
        while start < meta.size {
            let end = (start + part_size).min(meta.size);
            let etag = self
                .store
                .upload_part_copy(to, upload, number, from, start..end, Some(&meta.etag))
                .await
                .map_err(|e| io_error("copy", from, e))?;
            parts.push(CompletedPart { number, etag });
            start = end;
            number += 1;
        }
        self.store
            .complete_multipart(to, upload, &parts, PutCondition::None)
            .await
            .map_err(|e| io_error("copy", to, e))?;
        Ok(())
    }

    /// Commits every open file (at unmount): nothing written is left unpublished.
    pub async fn shutdown(&self) {
        let open: Vec<(Ino, Arc<AsyncMutex<OpenFile>>)> = lock(&self.open).drain().collect();
        for (ino, file) in open {
            let mut file = file.lock().await;
            let key = file.key.clone();
            if let Err(e) = self.commit(ino, &mut file).await {
                tracing::error!(key = %key, "committing at unmount failed: {e}");
            }
        }
        lock(&self.handles).clear();
    }
}

//! A bounded on-disk cache of committed objects' bytes, in blocks of [`BLOCK`] bytes, so that
//! reading a file again does not fetch it from the store again.
//!
//! - A block is keyed by the object's key, its ETag and the block's number: a changed object
//!   has another ETag, so its old blocks are never served for it (they age out, or go at once
//!   when a read or a local change notices the change, see [`BlockCache::invalidate`]).
//! - The cache keeps the total size of its blocks at or under its capacity by dropping the
//!   least recently used blocks.
//! - A block is a byte range of a file: a file of its own when it was fetched, or a range of a
//!   part file the writer cached while uploading, adopted at the commit ([`BlockCache::adopt`])
//!   so that a file just written is read back from local disk. A file shared by several blocks
//!   is deleted when the last of them goes; each block evicted before then has its range
//!   punched out of the file, so that the disk used follows the blocks kept.
//! - Blocks live in files under a directory of their own in the cache directory, which this
//!   process holds with a lock for its lifetime. The cache is not kept across restarts: its
//!   index is in memory, and the directory of a process that is gone (its lock is free) is
//!   deleted by the next cache opened in the same cache directory. Nothing is `fsync`ed: the
//!   blocks are only a copy of what the store holds.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;

/// The size of one cached block (the last block of an object may be shorter).
pub const BLOCK: u64 = 1 << 20;

/// The name of the cache's directories inside the cache directory: `read-cache-PID`.
const DIR_PREFIX: &str = "read-cache-";
/// A cache directory being made (`making-read-cache-PID`), renamed once locked.
const MAKING_PREFIX: &str = "making-read-cache-";
const LOCK_FILE: &str = "lock";

/// Why the cache could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("read cache {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One block: which object version and which block of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Version {
    etag: String,
    block: u64,
}

#[derive(Debug)]
struct Entry {
    /// The file holding the block (a number unique in this cache's directory, never reused).
    file: u64,
    /// Where the block starts in its file.
    offset: u64,
    len: u64,
    /// Its position in [`State::lru`].
    tick: u64,
}

/// Disk space to give back once a block is dropped from the tables.
#[derive(Debug, PartialEq, Eq)]
enum Freed {
    /// The last block of a file went: delete the file.
    File(u64),
    /// A block of a file that other blocks still use: punch its range out.
    Range { file: u64, offset: u64, len: u64 },
}

#[derive(Debug, Default)]
struct State {
    /// Blocks by object key, then version and block number.
    keys: HashMap<String, HashMap<Version, Entry>>,
    /// Least recently used first: tick -> (key, version).
    lru: BTreeMap<u64, (String, Version)>,
    /// How many blocks use each file.
    refs: HashMap<u64, usize>,
    used: u64,
    next_tick: u64,
    next_file: u64,
}

impl State {
    fn tick(&mut self) -> u64 {
        self.next_tick += 1;
        self.next_tick
    }

    fn new_file(&mut self) -> u64 {
        self.next_file += 1;
        self.next_file
    }

    fn insert(&mut self, key: &str, version: Version, entry: Entry) -> Option<Freed> {
        // Another reader may have cached the same block meanwhile: keep the newer copy.
        let replaced = self.remove(key, &version);
        self.lru
            .insert(entry.tick, (key.to_string(), version.clone()));
        *self.refs.entry(entry.file).or_default() += 1;
        self.used += entry.len;
        self.keys
            .entry(key.to_string())
            .or_default()
            .insert(version, entry);
        replaced
    }

    /// Removes one block from the tables; returns what to free.
    fn remove(&mut self, key: &str, version: &Version) -> Option<Freed> {
        let blocks = self.keys.get_mut(key)?;
        let entry = blocks.remove(version)?;
        if blocks.is_empty() {
            self.keys.remove(key);
        }
        self.lru.remove(&entry.tick);
        Some(self.release(entry))
    }

    /// Removes one block if it is still the one at `offset` of `file` (a reader's lookup may be
    /// stale by the time it acts on it).
    fn remove_if(&mut self, key: &str, version: &Version, file: u64, offset: u64) -> Option<Freed> {
        let entry = self.keys.get(key)?.get(version)?;
        if (entry.file, entry.offset) != (file, offset) {
            return None;
        }
        self.remove(key, version)
    }

    /// Accounts for an entry taken out of `keys` and `lru`.
    fn release(&mut self, entry: Entry) -> Freed {
        self.used -= entry.len;
        let refs = self.refs.entry(entry.file).or_default();
        *refs = refs.saturating_sub(1);
        if *refs == 0 {
            self.refs.remove(&entry.file);
            Freed::File(entry.file)
        } else {
            Freed::Range {
                file: entry.file,
                offset: entry.offset,
                len: entry.len,
            }
        }
    }

    /// Whether the block is still the one at `offset` of `file`.
    fn holds(&self, key: &str, version: &Version, file: u64, offset: u64) -> bool {
        self.keys
            .get(key)
            .and_then(|blocks| blocks.get(version))
            .is_some_and(|e| (e.file, e.offset) == (file, offset))
    }

    /// Drops least recently used blocks until the blocks fit in `capacity`.
    fn evict_to(&mut self, capacity: u64, gone: &mut Vec<Freed>) {
        while self.used > capacity {
            let Some((_, (k, v))) = self.lru.pop_first() else {
                break;
            };
            // `remove` finds its tick already gone from the LRU order: no matter.
            gone.extend(self.remove(&k, &v));
        }
    }
}

/// A file of an object's bytes that the cache may take over: bytes `offset..offset + len` of
/// the object are in the file at `path`. See [`BlockCache::adopt`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdoptFile {
    pub path: PathBuf,
    pub offset: u64,
    pub len: u64,
}

/// The blocks of an object of `object_len` bytes that lie wholly inside its bytes
/// `offset..offset + len`. A block is `BLOCK` bytes, except the object's last one, which ends
/// at the object's end.
fn whole_blocks(offset: u64, len: u64, object_len: u64) -> std::ops::Range<u64> {
    let end = offset.saturating_add(len);
    let first = offset.div_ceil(BLOCK);
    if end > object_len {
        // Not bytes of this object: nothing in it can be trusted.
        return first..first;
    }
    let last = if end == object_len {
        object_len.div_ceil(BLOCK)
    } else {
        end / BLOCK
    };
    first..last.max(first)
}

fn block_len(block: u64, object_len: u64) -> u64 {
    BLOCK.min(object_len - block * BLOCK)
}

/// The cache. Share it with `Arc`; every method takes `&self`.
#[derive(Debug)]
pub struct BlockCache {
    dir: PathBuf,
    capacity: u64,
    state: Mutex<State>,
    /// Held (flock) for the cache's lifetime: tells other processes the directory is in use.
    _lock: File,
}

impl BlockCache {
    /// Deletes the cached blocks from the disk, as dropping the cache does, for a mount that
    /// ends while something still holds the cache (a detached mount's session thread, blocked
    /// until the process exits). Reads after this find nothing cached and go to the store.
    pub fn remove_files(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Ok(mut state) = self.state.lock() {
            *state = State::default();
        }
    }
}

impl Drop for BlockCache {
    fn drop(&mut self) {
        // The blocks are worthless to anyone else: free the disk now rather than at the next
        // mount.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Takes an exclusive lock on `file` without waiting; false when another process holds it.
fn try_lock(file: &File) -> io::Result<bool> {
    // SAFETY: flock on a file descriptor this `File` owns; no memory is passed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(err)
    }
}

impl BlockCache {
    /// A cache of at most `capacity` bytes in a new directory under `cache_dir`, after deleting
    /// the directories of caches whose process is gone. `capacity` 0 means no cache: `None`.
    pub fn open(cache_dir: &Path, capacity: u64) -> Result<Option<Self>, CacheError> {
        if capacity == 0 {
            return Ok(None);
        }
        std::fs::create_dir_all(cache_dir).map_err(io_err(cache_dir))?;
        remove_stale(cache_dir)?;
        let dir = cache_dir.join(format!("{DIR_PREFIX}{}", std::process::id()));
        // A directory of ours from a process with the same pid that died: start empty.
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&dir)(e)),
        }
        // Made and locked under another name, then renamed: another mount starting at the same
        // time must never see it unlocked (it would delete it as stale).
        let making = cache_dir.join(format!("{MAKING_PREFIX}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&making);
        std::fs::create_dir_all(&making).map_err(io_err(&making))?;
        let lock_path = making.join(LOCK_FILE);
        let lock_file = File::create(&lock_path).map_err(io_err(&lock_path))?;
        if !try_lock(&lock_file).map_err(io_err(&lock_path))? {
            return Err(CacheError::Io {
                path: lock_path,
                source: io::Error::new(io::ErrorKind::WouldBlock, "locked by another process"),
            });
        }
        std::fs::rename(&making, &dir).map_err(io_err(&dir))?;
        Ok(Some(Self {
            dir,
            capacity,
            state: Mutex::new(State::default()),
            _lock: lock_file,
        }))
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The bytes the cached blocks take.
    pub fn used(&self) -> u64 {
        lock(&self.state).used
    }

    /// The directory holding the blocks.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, file: u64) -> PathBuf {
        self.dir.join(file.to_string())
    }

    /// Block `block` of the object `key` at version `etag`, if cached. Reads only the block's
    /// range of its file. A block whose file cannot be read (deleted from under the cache) is
    /// dropped and is a miss.
    pub async fn get(&self, key: &str, etag: &str, block: u64) -> Option<Bytes> {
        let version = Version {
            etag: etag.to_string(),
            block,
        };
        let (file, offset, len) = {
            let mut state = lock(&self.state);
            let tick = state.tick();
            let entry = state.keys.get_mut(key)?.get_mut(&version)?;
            let old = std::mem::replace(&mut entry.tick, tick);
            let found = (entry.file, entry.offset, entry.len);
            state.lru.remove(&old);
            state.lru.insert(tick, (key.to_string(), version.clone()));
            found
        };
        let path = self.path(file);
        let read = tokio::task::spawn_blocking(move || -> io::Result<Vec<u8>> {
            let mut buf = vec![0u8; len as usize];
            File::open(&path)?.read_exact_at(&mut buf, offset)?;
            Ok(buf)
        })
        .await;
        match read {
            // Evicted since the lookup, its range punched out (read as zeros) or its file
            // deleted: what was read is only good if the block is still there.
            Ok(Ok(bytes)) if lock(&self.state).holds(key, &version, file, offset) => {
                Some(Bytes::from(bytes))
            }
            Ok(Ok(_)) => None,
            // Deleted from under the cache, or damaged: a miss.
            _ => {
                let freed = lock(&self.state).remove_if(key, &version, file, offset);
                self.free(freed).await;
                None
            }
        }
    }

    /// Stores block `block` of `key` at version `etag`, evicting the least recently used blocks
    /// to stay within the capacity. A failure to write is logged and leaves the block uncached.
    pub async fn put(&self, key: &str, etag: &str, block: u64, data: Bytes) {
        let len = data.len() as u64;
        if len > self.capacity {
            return;
        }
        let file = lock(&self.state).new_file();
        let path = self.path(file);
        // Written through the page cache: an O_DIRECT write (tried 2026-11-26) made every
        // fetch wait for the disk and cold reads 20% slower (docs/benchmarks.md).
        if let Err(e) = tokio::fs::write(&path, &data).await {
            tracing::warn!(key, path = %path.display(), "read cache: not caching a block: {e}");
            let _ = tokio::fs::remove_file(&path).await;
            return;
        }
        let version = Version {
            etag: etag.to_string(),
            block,
        };
        let mut gone = Vec::new();
        {
            let mut state = lock(&self.state);
            let tick = state.tick();
            let entry = Entry {
                file,
                offset: 0,
                len,
                tick,
            };
            gone.extend(state.insert(key, version, entry));
            state.evict_to(self.capacity, &mut gone);
        }
        self.free(gone).await;
    }

    /// Takes over `files` holding bytes of the object `key` at version `etag` (`object_len`
    /// bytes long), typically the part files the writer cached while uploading it: each is
    /// moved into the cache's directory and every block that lies wholly inside it is served
    /// from it. Returns the number of blocks adopted.
    ///
    /// Blocks are adopted from the object's start, up to the capacity: sequential reads start
    /// there, and a read that begins by missing would fetch ahead from the store anyway. The
    /// files are the cache's from here on: those it does not keep (no whole block, over the
    /// capacity, or not movable, e.g. on another filesystem) are deleted.
    pub async fn adopt(
        &self,
        key: &str,
        etag: &str,
        object_len: u64,
        mut files: Vec<AdoptFile>,
    ) -> usize {
        files.sort_by_key(|f| f.offset);
        let mut budget = self.capacity;
        // Blocks below this one are taken: files that overlap cannot register a block twice.
        let mut next_block = 0;
        // (file number, the file's object offset, its blocks)
        let mut adopted: Vec<(u64, u64, std::ops::Range<u64>)> = Vec::new();
        for f in files {
            let all = whole_blocks(f.offset, f.len, object_len);
            let first = all.start.max(next_block);
            let mut end = first;
            while end < all.end && block_len(end, object_len) <= budget {
                budget -= block_len(end, object_len);
                end += 1;
            }
            if end == first {
                let _ = tokio::fs::remove_file(&f.path).await;
                continue;
            }
            next_block = end;
            let file = lock(&self.state).new_file();
            let dest = self.path(file);
            if let Err(e) = tokio::fs::rename(&f.path, &dest).await {
                tracing::debug!(key, path = %f.path.display(), "read cache: not adopting a file: {e}");
                let _ = tokio::fs::remove_file(&f.path).await;
                // Its blocks are free for the files after it.
                budget += (first..end).map(|b| block_len(b, object_len)).sum::<u64>();
                next_block = first;
                continue;
            }
            if end < all.end {
                // Over the capacity: what follows the last block kept is not counted, so it
                // must not take disk space either.
                let keep = end * BLOCK - f.offset;
                if let Err(e) = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&dest)
                    .and_then(|file| file.set_len(keep))
                {
                    tracing::debug!(path = %dest.display(), "read cache: cutting an adopted file: {e}");
                }
            }
            adopted.push((file, f.offset, first..end));
        }
        let mut gone = Vec::new();
        let mut count = 0;
        {
            let mut state = lock(&self.state);
            // The first blocks get the most recent ticks: when room is needed later, the
            // object's end goes before its start, where the next sequential read begins.
            for (file, start, blocks) in adopted.into_iter().rev() {
                for block in blocks.rev() {
                    let tick = state.tick();
                    let entry = Entry {
                        file,
                        offset: block * BLOCK - start,
                        len: block_len(block, object_len),
                        tick,
                    };
                    let version = Version {
                        etag: etag.to_string(),
                        block,
                    };
                    gone.extend(state.insert(key, version, entry));
                    count += 1;
                }
            }
            state.evict_to(self.capacity, &mut gone);
        }
        self.free(gone).await;
        count
    }

    /// Gives back the disk space of blocks dropped from the tables. Best effort: a file that
    /// cannot be deleted or punched only wastes space until the cache's directory goes.
    async fn free(&self, gone: impl IntoIterator<Item = Freed>) {
        let mut punch = Vec::new();
        for freed in gone {
            match freed {
                Freed::File(file) => {
                    let _ = tokio::fs::remove_file(self.path(file)).await;
                }
                Freed::Range { file, offset, len } => punch.push((self.path(file), offset, len)),
            }
        }
        if punch.is_empty() {
            return;
        }
        let punched = tokio::task::spawn_blocking(move || {
            for (path, offset, len) in punch {
                if let Err(e) = punch_hole(&path, offset, len) {
                    tracing::debug!(path = %path.display(), "read cache: punching out an evicted block: {e}");
                }
            }
        })
        .await;
        if let Err(e) = punched {
            tracing::debug!("read cache: punching out evicted blocks: {e}");
        }
    }

    /// Drops every cached block of `key` (all versions): the object was changed or removed.
    pub async fn invalidate(&self, key: &str) {
        let gone: Vec<Freed> = {
            let mut state = lock(&self.state);
            let Some(blocks) = state.keys.remove(key) else {
                return;
            };
            let mut gone = Vec::with_capacity(blocks.len());
            for entry in blocks.into_values() {
                state.lru.remove(&entry.tick);
                gone.push(state.release(entry));
            }
            gone
        };
        self.free(gone).await;
    }

    /// Drops the blocks of every key starting with `prefix` (a renamed or removed directory).
    pub async fn invalidate_prefix(&self, prefix: &str) {
        let keys: Vec<String> = lock(&self.state)
            .keys
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        for key in keys {
            self.invalidate(&key).await;
        }
    }
}

/// Frees the disk blocks of `offset..offset + len` of the file at `path`, keeping its size.
fn punch_hole(path: &Path, offset: u64, len: u64) -> io::Result<()> {
    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    // SAFETY: fallocate on a file descriptor this `File` owns; no memory is passed.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Deletes the cache directories under `cache_dir` whose process is gone (their lock is free).
fn remove_stale(cache_dir: &Path) -> Result<(), CacheError> {
    let entries = std::fs::read_dir(cache_dir).map_err(io_err(cache_dir))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        let dir = entry.path();
        let stale = if let Some(pid) = name.strip_prefix(MAKING_PREFIX) {
            // Not locked yet while being made: stale only when its process is gone.
            pid.parse::<libc::pid_t>().is_ok_and(|pid| {
                // SAFETY: kill with signal 0 only checks that the process exists.
                let rc = unsafe { libc::kill(pid, 0) };
                rc != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
            })
        } else if name.starts_with(DIR_PREFIX) {
            match File::open(dir.join(LOCK_FILE)) {
                Ok(file) => try_lock(&file).unwrap_or(false),
                Err(e) => e.kind() == io::ErrorKind::NotFound,
            }
        } else {
            continue;
        };
        if stale && let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), "read cache: removing a stale cache: {e}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(len: usize, seed: u8) -> Bytes {
        Bytes::from(
            (0..len)
                .map(|i| (i as u8).wrapping_add(seed))
                .collect::<Vec<_>>(),
        )
    }

    fn files_in(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name() != LOCK_FILE)
            .count()
    }

    #[tokio::test]
    async fn a_stored_block_is_served_for_its_version_only() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = BlockCache::open(tmp.path(), 10 * BLOCK).unwrap().unwrap();
        let data = block(1000, 7);
        cache.put("a/b", "etag1", 3, data.clone()).await;
        assert_eq!(cache.get("a/b", "etag1", 3).await, Some(data));
        assert_eq!(cache.get("a/b", "etag2", 3).await, None);
        assert_eq!(cache.get("a/b", "etag1", 2).await, None);
        assert_eq!(cache.get("a/c", "etag1", 3).await, None);
        assert_eq!(cache.used(), 1000);
    }

    #[tokio::test]
    async fn a_cache_still_held_at_the_end_of_a_mount_can_free_its_disk() {
        // A detached mount's session thread may hold the file system until the process
        // exits, so the cache is never dropped: its blocks must go without a drop.
        let tmp = tempfile::tempdir().unwrap();
        let cache = BlockCache::open(tmp.path(), 10 * BLOCK).unwrap().unwrap();
        cache.put("k", "e", 0, block(1000, 1)).await;
        let dir = cache.dir().to_path_buf();
        assert!(dir.is_dir());
        cache.remove_files();
        assert!(!dir.exists());
        assert_eq!(cache.get("k", "e", 0).await, None);
        assert_eq!(cache.used(), 0);
    }

    #[tokio::test]
    async fn least_recently_used_blocks_go_to_stay_within_the_capacity() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = BlockCache::open(tmp.path(), 3000).unwrap().unwrap();
        for b in 0..3 {
            cache.put("k", "e", b, block(1000, b as u8)).await;
        }
        assert_eq!(cache.used(), 3000);
        // Block 0 used last: block 1 is now the least recently used.
        assert!(cache.get("k", "e", 0).await.is_some());
        cache.put("k", "e", 3, block(1000, 3)).await;
        assert_eq!(cache.used(), 3000);
        assert!(cache.get("k", "e", 1).await.is_none());
        for b in [0, 2, 3] {
            assert_eq!(cache.get("k", "e", b).await, Some(block(1000, b as u8)));
        }
        assert_eq!(files_in(cache.dir()), 3);
        // Larger than everything: evicts the rest, and a block over the capacity is not kept.
        cache.put("k", "e", 9, block(2500, 9)).await;
        assert!(cache.used() <= 3000);
        cache.put("k", "e", 10, block(3001, 1)).await;
        assert!(cache.get("k", "e", 10).await.is_none());
        assert!(cache.used() <= 3000);
        assert_eq!(files_in(cache.dir()), 1);
    }

    #[tokio::test]
    async fn invalidation_drops_every_version_of_a_key() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = BlockCache::open(tmp.path(), 10 * BLOCK).unwrap().unwrap();
        cache.put("d/x", "e1", 0, block(10, 1)).await;
        cache.put("d/x", "e2", 0, block(10, 2)).await;
        cache.put("d/y", "e1", 0, block(10, 3)).await;
        cache.put("other", "e1", 0, block(10, 4)).await;
        cache.invalidate("d/x").await;
        assert!(cache.get("d/x", "e1", 0).await.is_none());
        assert!(cache.get("d/x", "e2", 0).await.is_none());
        assert!(cache.get("d/y", "e1", 0).await.is_some());
        cache.invalidate_prefix("d/").await;
        assert!(cache.get("d/y", "e1", 0).await.is_none());
        assert!(cache.get("other", "e1", 0).await.is_some());
        assert_eq!(cache.used(), 10);
        assert_eq!(files_in(cache.dir()), 1);
    }

    #[tokio::test]
    async fn a_block_deleted_from_under_the_cache_is_a_miss() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = BlockCache::open(tmp.path(), 10 * BLOCK).unwrap().unwrap();
        cache.put("k", "e", 0, block(10, 1)).await;
        for entry in std::fs::read_dir(cache.dir()).unwrap().flatten() {
            if entry.file_name() != LOCK_FILE {
                std::fs::remove_file(entry.path()).unwrap();
            }
        }
        assert!(cache.get("k", "e", 0).await.is_none());
        assert_eq!(cache.used(), 0);
    }

    #[test]
    fn zero_capacity_is_no_cache_and_stale_directories_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(BlockCache::open(tmp.path(), 0).unwrap().is_none());
        // A directory left by a process that is gone: its lock file is not locked.
        let stale = tmp.path().join(format!("{DIR_PREFIX}999999999"));
        std::fs::create_dir_all(&stale).unwrap();
        File::create(stale.join(LOCK_FILE)).unwrap();
        std::fs::write(stale.join("1"), b"old").unwrap();
        // Half-made by a process that is gone (no pid is this large), and by a live one.
        let half_made = tmp.path().join(format!("{MAKING_PREFIX}2147483646"));
        std::fs::create_dir_all(&half_made).unwrap();
        let live = tmp.path().join(format!("{MAKING_PREFIX}1"));
        std::fs::create_dir_all(&live).unwrap();
        let cache = BlockCache::open(tmp.path(), BLOCK).unwrap().unwrap();
        assert!(!stale.exists());
        assert!(!half_made.exists());
        assert!(live.exists(), "pid 1 is alive");
        assert!(cache.dir().exists());
        let dir = cache.dir().to_path_buf();
        drop(cache);
        assert!(!dir.exists());
    }

    /// Writes `data` to a file under `dir` named `name`, as the writer's part cache does.
    fn part_file(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, data).unwrap();
        path
    }

    /// The object cut at `cuts` (offsets, first 0, last its length) into part files in `dir`.
    fn part_files(dir: &Path, object: &[u8], cuts: &[u64]) -> Vec<AdoptFile> {
        cuts.windows(2)
            .enumerate()
            .map(|(i, w)| AdoptFile {
                path: part_file(
                    dir,
                    &format!("part-{i}"),
                    &object[w[0] as usize..w[1] as usize],
                ),
                offset: w[0],
                len: w[1] - w[0],
            })
            .collect()
    }

    /// Disk bytes allocated to the cache's files.
    fn allocated(dir: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.metadata().unwrap().blocks() * 512)
            .sum()
    }

    #[test]
    fn whole_blocks_are_those_inside_the_range_or_ending_the_object() {
        // Aligned parts of 8 blocks.
        assert_eq!(whole_blocks(0, 8 * BLOCK, 20 * BLOCK), 0..8);
        assert_eq!(whole_blocks(8 * BLOCK, 8 * BLOCK, 20 * BLOCK), 8..16);
        // The last part, with a short last block.
        assert_eq!(
            whole_blocks(16 * BLOCK, 2 * BLOCK + 5, 18 * BLOCK + 5),
            16..19
        );
        // Unaligned: only the blocks wholly inside.
        assert_eq!(whole_blocks(BLOCK / 2, 3 * BLOCK, 10 * BLOCK), 1..3);
        assert_eq!(whole_blocks(100, BLOCK, 10 * BLOCK), 1..1);
        // A short block that is not the object's last is not whole.
        assert_eq!(whole_blocks(0, BLOCK + 5, 3 * BLOCK), 0..1);
        // Bytes past the object's end: none.
        assert_eq!(whole_blocks(0, 2 * BLOCK, BLOCK), 0..0);
    }

    #[tokio::test]
    async fn adopted_aligned_parts_serve_every_block_and_are_deleted_with_the_last() {
        let tmp = tempfile::tempdir().unwrap();
        let parts = tempfile::tempdir().unwrap();
        let cache = BlockCache::open(tmp.path(), 64 * BLOCK).unwrap().unwrap();
        // Two parts of 2 blocks and a last one of 1 block and a bit.
        let object = block((5 * BLOCK + 300) as usize, 9);
        let cuts = [0, 2 * BLOCK, 4 * BLOCK, object.len() as u64];
        let files = part_files(parts.path(), &object, &cuts);
        let adopted = cache.adopt("k", "e", object.len() as u64, files).await;
        assert_eq!(adopted, 6);
        assert_eq!(cache.used(), object.len() as u64);
        assert_eq!(files_in(parts.path()), 0, "moved into the cache");
        assert_eq!(
            files_in(cache.dir()),
            3,
            "one file per part, shared by its blocks"
        );
        for b in 0..6u64 {
            let start = (b * BLOCK) as usize;
            let end = (start + BLOCK as usize).min(object.len());
            assert_eq!(
                cache.get("k", "e", b).await.as_deref(),
                Some(&object[start..end])
            );
        }
        assert_eq!(cache.get("k", "other", 0).await, None);
        cache.invalidate("k").await;
        assert_eq!(cache.used(), 0);
        assert_eq!(files_in(cache.dir()), 0, "deleted with their last block");
    }

    #[tokio::test]
    async fn unaligned_parts_give_the_blocks_wholly_inside_one_file() {
        let tmp = tempfile::tempdir().unwrap();
        let parts = tempfile::tempdir().unwrap();
        let cache = BlockCache::open(tmp.path(), 64 * BLOCK).unwrap().unwrap();
        let object = block((4 * BLOCK + 10) as usize, 3);
        // Parts of 1.5 blocks: [0, 1.5) [1.5, 3) [3, 4 + 10 bytes).
        let cuts = [0, 3 * BLOCK / 2, 3 * BLOCK, object.len() as u64];
        let files = part_files(parts.path(), &object, &cuts);
        let adopted = cache.adopt("k", "e", object.len() as u64, files).await;
        // Block 0 in part 0, block 2 in part 1, blocks 3 and 4 (short, the last) in part 2.
        assert_eq!(adopted, 4);
        assert_eq!(cache.get("k", "e", 1).await, None, "straddles two parts");
        for b in [0u64, 2, 3, 4] {
            let start = (b * BLOCK) as usize;
            let end = (start + BLOCK as usize).min(object.len());
            assert_eq!(
                cache.get("k", "e", b).await.as_deref(),
                Some(&object[start..end])
            );
        }
        assert_eq!(cache.used(), 3 * BLOCK + 10);
        // A file with no whole block is not kept.
        let small = AdoptFile {
            path: part_file(parts.path(), "small", &object[100..200]),
            offset: 100,
            len: 100,
        };
        assert_eq!(
            cache
                .adopt("s", "e", object.len() as u64, vec![small])
                .await,
            0
        );
        assert_eq!(files_in(parts.path()), 0, "dropped");
        assert_eq!(files_in(cache.dir()), 3);
    }

    #[tokio::test]
    async fn evicting_a_block_of_a_shared_file_punches_it_out_and_the_last_deletes_it() {
        let tmp = tempfile::tempdir().unwrap();
        let parts = tempfile::tempdir().unwrap();
        let cache = BlockCache::open(tmp.path(), 4 * BLOCK).unwrap().unwrap();
        let object = block((4 * BLOCK) as usize, 1);
        let file = AdoptFile {
            path: part_file(parts.path(), "part", &object),
            offset: 0,
            len: 4 * BLOCK,
        };
        assert_eq!(cache.adopt("k", "e", 4 * BLOCK, vec![file]).await, 4);
        let full = allocated(cache.dir());
        assert!(full >= 4 * BLOCK, "{full}");
        // The object's end is evicted first: its start is where a sequential read begins.
        cache.put("x", "e", 0, block(BLOCK as usize, 2)).await;
        assert_eq!(cache.used(), 4 * BLOCK);
        assert!(cache.get("k", "e", 3).await.is_none());
        for b in 0..3u64 {
            assert!(cache.get("k", "e", b).await.is_some(), "block {b}");
        }
        assert_eq!(files_in(cache.dir()), 2);
        // Without the punch, x's block would come on top of the four adopted ones.
        let punched = allocated(cache.dir());
        assert!(
            punched <= full,
            "the evicted block's range is given back ({punched} vs {full})"
        );
        // The rest go, the shared file with its last block.
        for b in 0..4 {
            cache.put("y", "e", b, block(BLOCK as usize, 3)).await;
        }
        assert_eq!(cache.used(), 4 * BLOCK);
        for b in 0..3u64 {
            assert!(cache.get("k", "e", b).await.is_none(), "block {b}");
        }
        assert_eq!(files_in(cache.dir()), 4, "only the blocks of y");
    }

    #[tokio::test]
    async fn adoption_takes_the_first_blocks_up_to_the_capacity() {
        let tmp = tempfile::tempdir().unwrap();
        let parts = tempfile::tempdir().unwrap();
        let cache = BlockCache::open(tmp.path(), 3 * BLOCK).unwrap().unwrap();
        cache.put("old", "e", 0, block(BLOCK as usize, 5)).await;
        let object = block((6 * BLOCK) as usize, 4);
        let files = part_files(parts.path(), &object, &[0, 2 * BLOCK, 4 * BLOCK, 6 * BLOCK]);
        assert_eq!(cache.adopt("k", "e", 6 * BLOCK, files).await, 3);
        assert_eq!(cache.used(), 3 * BLOCK);
        assert!(cache.get("old", "e", 0).await.is_none(), "evicted for them");
        for b in 0..3u64 {
            assert!(cache.get("k", "e", b).await.is_some(), "block {b}");
        }
        for b in 3..6u64 {
            assert!(cache.get("k", "e", b).await.is_none(), "block {b}");
        }
        // The part cut by the capacity keeps only its adopted block on disk; the last part
        // is not kept at all.
        assert_eq!(files_in(parts.path()), 0);
        assert_eq!(files_in(cache.dir()), 2);
        assert!(allocated(cache.dir()) <= 3 * BLOCK + 64 * 1024);
    }

    #[tokio::test]
    async fn a_file_that_cannot_be_moved_is_not_adopted() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = BlockCache::open(tmp.path(), 8 * BLOCK).unwrap().unwrap();
        let missing = AdoptFile {
            path: tmp.path().join("no-such-part"),
            offset: 0,
            len: 2 * BLOCK,
        };
        assert_eq!(cache.adopt("k", "e", 2 * BLOCK, vec![missing]).await, 0);
        assert_eq!(cache.used(), 0);
        assert!(cache.get("k", "e", 0).await.is_none());
    }
}

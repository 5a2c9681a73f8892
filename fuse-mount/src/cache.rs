//! A bounded on-disk cache of committed objects' bytes, in blocks of [`BLOCK`] bytes, so that
//! reading a file again does not fetch it from the store again.
//!
//! - A block is keyed by the object's key, its ETag and the block's number: a changed object
//!   has another ETag, so its old blocks are never served for it (they age out, or go at once
//!   when a read or a local change notices the change, see [`BlockCache::invalidate`]).
//! - The cache keeps the total size of its blocks at or under its capacity by dropping the
//!   least recently used blocks.
//! - Blocks live in files under a directory of their own in the cache directory, which this
//!   process holds with a lock for its lifetime. The cache is not kept across restarts: its
//!   index is in memory, and the directory of a process that is gone (its lock is free) is
//!   deleted by the next cache opened in the same cache directory. Nothing is `fsync`ed: the
//!   blocks are only a copy of what the store holds.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
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
    /// The block's file name (a number unique in this cache's directory).
    file: u64,
    len: u64,
    /// Its position in [`State::lru`].
    tick: u64,
}

#[derive(Debug, Default)]
struct State {
    /// Blocks by object key, then version and block number.
    keys: HashMap<String, HashMap<Version, Entry>>,
    /// Least recently used first: tick -> (key, version).
    lru: BTreeMap<u64, (String, Version)>,
    used: u64,
    next_tick: u64,
    next_file: u64,
}

impl State {
    fn tick(&mut self) -> u64 {
        self.next_tick += 1;
        self.next_tick
    }

    /// Removes one block from the tables; returns its file number.
    fn remove(&mut self, key: &str, version: &Version) -> Option<u64> {
        let blocks = self.keys.get_mut(key)?;
        let entry = blocks.remove(version)?;
        if blocks.is_empty() {
            self.keys.remove(key);
        }
        self.lru.remove(&entry.tick);
        self.used -= entry.len;
        Some(entry.file)
    }
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

    /// Block `block` of the object `key` at version `etag`, if cached. A block whose file
    /// cannot be read (deleted from under the cache) is dropped and is a miss.
    pub async fn get(&self, key: &str, etag: &str, block: u64) -> Option<Bytes> {
        let version = Version {
            etag: etag.to_string(),
            block,
        };
        let (file, len) = {
            let mut state = lock(&self.state);
            let tick = state.tick();
            let entry = state.keys.get_mut(key)?.get_mut(&version)?;
            let old = std::mem::replace(&mut entry.tick, tick);
            let (file, len) = (entry.file, entry.len);
            state.lru.remove(&old);
            state.lru.insert(tick, (key.to_string(), version.clone()));
            (file, len)
        };
        match tokio::fs::read(self.path(file)).await {
            Ok(bytes) if bytes.len() as u64 == len => Some(Bytes::from(bytes)),
            // Evicted (and its file deleted) since the lookup, or damaged: a miss.
            _ => {
                let removed = lock(&self.state).remove(key, &version);
                if removed == Some(file) {
                    let _ = tokio::fs::remove_file(self.path(file)).await;
                }
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
        let file = {
            let mut state = lock(&self.state);
            state.next_file += 1;
            state.next_file
        };
        let path = self.path(file);
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
            // Another reader may have cached the same block meanwhile: keep the newer copy.
            if let Some(old) = state.remove(key, &version) {
                gone.push(old);
            }
            let tick = state.tick();
            state
                .keys
                .entry(key.to_string())
                .or_default()
                .insert(version.clone(), Entry { file, len, tick });
            state.lru.insert(tick, (key.to_string(), version));
            state.used += len;
            while state.used > self.capacity {
                let Some((_, (k, v))) = state.lru.pop_first() else {
                    break;
                };
                // `remove` finds its tick already gone from the LRU order: no matter.
                if let Some(f) = state.remove(&k, &v) {
                    gone.push(f);
                }
            }
        }
        for f in gone {
            let _ = tokio::fs::remove_file(self.path(f)).await;
        }
    }

    /// Drops every cached block of `key` (all versions): the object was changed or removed.
    pub async fn invalidate(&self, key: &str) {
        let gone: Vec<u64> = {
            let mut state = lock(&self.state);
            let Some(blocks) = state.keys.remove(key) else {
                return;
            };
            let mut gone = Vec::with_capacity(blocks.len());
            for entry in blocks.into_values() {
                state.lru.remove(&entry.tick);
                state.used -= entry.len;
                gone.push(entry.file);
            }
            gone
        };
        for f in gone {
            let _ = tokio::fs::remove_file(self.path(f)).await;
        }
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
}

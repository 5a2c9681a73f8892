//! File-system primitives with the durability the store promises: directory syncs, durable
//! directory creation, synced writes that hash on the side, temporaries removed unless kept.

use super::*;

#[cfg(unix)]
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
pub(super) fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

pub(super) fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

/// Creates a directory if missing, making its entry durable; `Ok(true)` if it was created.
pub(super) fn create_dir_durable(dir: &Path) -> io::Result<bool> {
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
pub(super) const PARALLEL_HASH_MIN: usize = 1 << 20;

/// Writes `body` to `file`, fsyncs it and returns the body's MD5 hex (its ETag).
pub(super) fn write_synced_md5(file: &mut File, body: &[u8]) -> io::Result<String> {
    file.write_all(body)?;
    synced_md5(file, body)
}

/// Fsyncs `file`, which has just been given `body`, and returns the body's MD5 hex (its ETag).
/// For a large body the hash runs during the fsync on a second thread, so acknowledging a part
/// costs the disk's time rather than the disk's time plus the hash's: that is most of a
/// `persist()`.
pub(super) fn synced_md5(file: &File, body: &[u8]) -> io::Result<String> {
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
pub(super) fn md5_file(file: &File) -> io::Result<String> {
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

pub(super) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    let bytes = fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

pub(super) fn to_json<T: Serialize>(
    op: &'static str,
    key: &str,
    value: &T,
) -> Result<Vec<u8>, StoreError> {
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
pub(super) struct TempPath {
    pub(super) path: PathBuf,
    pub(super) is_dir: bool,
    pub(super) keep: bool,
}

impl TempPath {
    pub(super) fn keep(mut self) {
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
pub(super) struct StoreLock<'a> {
    pub(super) file: &'a File,
    pub(super) _guard: MutexGuard<'a, ()>,
}

impl Drop for StoreLock<'_> {
    fn drop(&mut self) {
        // Unlock the file before the mutex guard (a field) is released.
        if let Err(e) = self.file.unlock() {
            tracing::warn!("local store: cannot unlock the lock file: {e}");
        }
    }
}

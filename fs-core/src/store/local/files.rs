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

/// Bodies from this size on are hashed on a second thread while they are written and synced.
pub(super) const PARALLEL_HASH_MIN: usize = 1 << 20;

/// Writes `body` to `file` (from its current position), fsyncs it and returns the body's MD5
/// hex (its ETag).
pub(super) fn write_synced_md5(file: &mut File, body: &[u8]) -> io::Result<String> {
    stored_with_md5(body, || {
        let offset = file.stream_position()?;
        write_at_with_writeback(file, offset, body)?;
        file.seek(SeekFrom::Start(offset + body.len() as u64))?;
        file.sync_all()
    })
}

/// Writes `body` into `file` at `offset`, fsyncs it and returns the body's MD5 hex.
pub(super) fn write_at_synced_md5(file: &File, offset: u64, body: &[u8]) -> io::Result<String> {
    stored_with_md5(body, || {
        write_at_with_writeback(file, offset, body)?;
        file.sync_all()
    })
}

/// Bytes written between two starts of writeback of a large body.
const WRITEBACK_CHUNK: usize = 1 << 20;

/// Writes `body` at `offset` a chunk at a time, asking the kernel to start writing each chunk
/// to the disk once it is in the page cache. Otherwise the disk stays idle until the fsync that
/// follows, which then waits for the whole body: a blocking `persist()` waits for its last parts
/// that way, with the disk idle while they are copied in.
fn write_at_with_writeback(file: &File, mut offset: u64, body: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    for chunk in body.chunks(WRITEBACK_CHUNK) {
        file.write_all_at(chunk, offset)?;
        start_writeback(file, offset, chunk.len());
        offset += chunk.len() as u64;
    }
    Ok(())
}

/// Starts writing back `len` bytes from `offset` without waiting (`sync_file_range` with
/// `SYNC_FILE_RANGE_WRITE`). A hint only: it makes nothing durable, and a failure loses only the
/// head start, since the fsync after it still writes everything.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: usize) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: a system call on the descriptor `file` keeps open for the call; no memory is
    // handed to the kernel.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: u64, _len: usize) {}

/// Runs `store` (which writes `body` and syncs it) and returns the body's MD5 hex. For a large
/// body the hash runs on a second thread from the start, so acknowledging a part costs the
/// longer of the two (the write and sync, or the hash) rather than their sum: that is most of
/// a blocking `persist()`, which waits for its last parts.
fn stored_with_md5(body: &[u8], store: impl FnOnce() -> io::Result<()>) -> io::Result<String> {
    if body.len() < PARALLEL_HASH_MIN {
        store()?;
        return Ok(rules::md5_hex(body));
    }
    std::thread::scope(|scope| {
        let hashing = scope.spawn(|| rules::md5_hex(body));
        let stored = store();
        let etag = hashing
            .join()
            .map_err(|_| io::Error::other("the thread hashing the body panicked"))?;
        stored.map(|()| etag)
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

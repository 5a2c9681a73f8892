//! The writer's local disk cache of uploaded parts, which makes an open file readable at any
//! offset (S3 serves no part of an upload until it completes). One directory per upload, named
//! after the upload so that a writer recovered in a new process on the same cache directory can
//! adopt the parts a crashed one left behind. Removed at close and when a writer is dropped,
//! unless the writer's owner asked to keep it ([`CachedParts`]): then it goes when the commit
//! fails, when the committer is dropped, or when the owner is done with the files.
//!
//! The cache is not fsynced: it is a read cache, never the source of truth. A part whose file is
//! missing or has the wrong size is treated as not cached.

use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::WriterError;

#[derive(Debug, Clone)]
pub(crate) struct PartCache {
    /// `None` when the writer runs without a part cache.
    dir: Option<PathBuf>,
}

fn cache_err(path: &Path, source: std::io::Error) -> WriterError {
    WriterError::Cache {
        path: path.display().to_string(),
        source,
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, WriterError> + Send + 'static,
) -> Result<T, WriterError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| WriterError::Cache {
            path: "<cache task>".into(),
            source: std::io::Error::other(e.to_string()),
        })?
}

impl PartCache {
    /// The cache of one upload under `root` (creating its directory), or no cache at all.
    pub(crate) async fn open(
        root: &Path,
        upload_id: &str,
        enabled: bool,
    ) -> Result<Self, WriterError> {
        if !enabled {
            return Ok(Self { dir: None });
        }
        let dir = root.join(super::tail::upload_hash(upload_id));
        let create = dir.clone();
        blocking(move || std::fs::create_dir_all(&create).map_err(|e| cache_err(&create, e)))
            .await?;
        Ok(Self { dir: Some(dir) })
    }

    /// No cache: what a writer holds once it handed its cache over to its committer.
    pub(crate) fn none() -> Self {
        Self { dir: None }
    }

    /// The upload's cache directory, if there is a cache.
    pub(crate) fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    pub(crate) fn is_enabled(&self) -> bool {
        self.dir.is_some()
    }

    fn part_path(&self, number: u32) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|d| d.join(format!("part-{number:05}")))
    }

    /// The path of a part cached with the expected size, if it is.
    pub(crate) fn cached(&self, number: u32, size: u64) -> Option<PathBuf> {
        self.part_path(number)
            .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() == size))
    }

    /// Writes a part's bytes; returns the file's path.
    pub(crate) async fn write(&self, number: u32, body: Bytes) -> Result<PathBuf, WriterError> {
        let Some(path) = self.part_path(number) else {
            return Err(WriterError::Config(
                "the writer runs without a part cache".into(),
            ));
        };
        let target = path.clone();
        blocking(move || {
            // Through the page cache, not past it (O_DIRECT, tried 2026-11-26): most part files
            // are deleted at commit before the kernel writes them back, so a buffered write
            // never reaches the disk, where a direct one always does and then delays the
            // index's fsync of every persist (cache-on ratio 0.70 direct against 0.85
            // buffered, docs/benchmarks.md).
            let mut file = std::fs::File::create(&target).map_err(|e| cache_err(&target, e))?;
            file.write_all(&body).map_err(|e| cache_err(&target, e))?;
            Ok(())
        })
        .await?;
        Ok(path)
    }

    pub(crate) fn remove_part(&self, number: u32) {
        if let Some(path) = self.part_path(number) {
            let _ = std::fs::remove_file(path);
        }
    }

    pub(crate) fn remove_all(&self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Deletes the cache directory of `upload_id` under `root`, if there is one: the upload is gone
/// (committed or aborted, possibly by another process than the one that cached its parts).
pub(crate) fn remove_upload_dir(root: &Path, upload_id: &str) {
    let _ = std::fs::remove_dir_all(root.join(super::tail::upload_hash(upload_id)));
}

/// One cached part of a committed object: its bytes `offset..offset + len` of the object are in
/// the file at `path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedPart {
    pub path: PathBuf,
    pub offset: u64,
    pub len: u64,
}

/// The part files a successful commit hands over (see [`super::Committer::commit_keeping_cache`]):
/// the caller may move any of them elsewhere (a rename, on the same filesystem); whatever is
/// still in the upload's cache directory when this is dropped is deleted with it. Parts copied
/// server-side, and parts whose cache write failed, are not listed.
#[derive(Debug, Default)]
pub struct CachedParts {
    dir: Option<PathBuf>,
    parts: Vec<CachedPart>,
}

impl CachedParts {
    pub(crate) fn new(dir: PathBuf, parts: Vec<CachedPart>) -> Self {
        Self {
            dir: Some(dir),
            parts,
        }
    }

    /// The cached parts, by increasing offset.
    pub fn parts(&self) -> &[CachedPart] {
        &self.parts
    }

    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }
}

impl Drop for CachedParts {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Reads `range` of a cached part file.
pub(crate) async fn read_range(path: PathBuf, range: Range<u64>) -> Result<Bytes, WriterError> {
    blocking(move || {
        let mut file = std::fs::File::open(&path).map_err(|e| cache_err(&path, e))?;
        file.seek(SeekFrom::Start(range.start))
            .map_err(|e| cache_err(&path, e))?;
        let mut buf = vec![0u8; (range.end - range.start) as usize];
        file.read_exact(&mut buf).map_err(|e| cache_err(&path, e))?;
        Ok(Bytes::from(buf))
    })
    .await
}

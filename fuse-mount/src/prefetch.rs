//! Sequential read-ahead for committed objects. The kernel asks a FUSE file system for at most
//! 128 KiB per read, one read at a time per file: one GET each would make the store's latency
//! set the pace. A handle that keeps reading where its last read ended gets the next chunks
//! fetched ahead by concurrent ranged GETs, with a window that doubles per sequential read up
//! to [`MAX_WINDOW`] (the memory bound per reading handle). A read elsewhere drops what was
//! fetched and is served by a GET of its own range.
//!
//! With a read cache ([`crate::cache`]) and the object's ETag known, every fetch is served from
//! the cache's blocks where it has them; the rest is fetched as whole blocks and cached.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use fs_core::StoreErrorKind;
use fs_core::store::DynStore;
use tokio::task::JoinHandle;

use crate::cache::{BLOCK, BlockCache};
use crate::error::{FsError, FsResult, io_error};

/// The size of one read-ahead GET.
pub const CHUNK: u64 = 4 << 20;
/// The most bytes fetched ahead of a reader (fetched or in flight).
pub const MAX_WINDOW: u64 = 32 << 20;

/// Where a reader's bytes come from: the store, through the read cache when there is one and
/// the version read (`etag`) is known.
#[derive(Clone)]
pub struct Source {
    pub store: DynStore,
    pub key: String,
    pub cache: Option<Arc<BlockCache>>,
    /// The ETag of the version being read, as last seen in the store (a HEAD, a listing, a
    /// commit); `None` when unknown, and then the cache is filled but not read.
    pub etag: Option<String>,
}

impl Source {
    /// Bytes `range` of the object; a range starting at or past the end is an empty read.
    pub async fn fetch(&self, range: Range<u64>) -> FsResult<Bytes> {
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        let Some(cache) = &self.cache else {
            return get(&self.store, &self.key, range).await;
        };
        let first = range.start / BLOCK;
        let last = (range.end - 1) / BLOCK;
        // The blocks cached from the start of the range.
        let mut cached = Vec::new();
        if let Some(etag) = &self.etag {
            for block in first..=last {
                match cache.get(&self.key, etag, block).await {
                    Some(data) => cached.push(data),
                    None => break,
                }
            }
        }
        let missing = first + cached.len() as u64;
        if missing <= last {
            // The rest as whole blocks, so that they can be cached.
            let from = missing * BLOCK;
            let got = match self
                .store
                .get(&self.key, Some(from..(last + 1) * BLOCK))
                .await
            {
                Ok(got) => got,
                Err(e) if e.kind() == StoreErrorKind::InvalidRange => return Ok(Bytes::new()),
                Err(e) if e.kind() == StoreErrorKind::NotFound => {
                    cache.invalidate(&self.key).await;
                    return Err(FsError::NotFound);
                }
                Err(e) => return Err(io_error("get", &self.key, e)),
            };
            if self.etag.as_deref().is_some_and(|e| e != got.meta.etag) {
                // Changed in the store since its ETag was seen: the cached blocks are of
                // another version. Nothing of them is served with the new bytes.
                cache.invalidate(&self.key).await;
                cached.clear();
                if missing != first {
                    return get(&self.store, &self.key, range).await;
                }
            }
            // The blocks are the version the answer names, whatever was expected.
            let mut block = missing;
            let mut at = 0usize;
            while at < got.body.len() {
                let len = (got.body.len() - at).min(BLOCK as usize);
                let data = got.body.slice(at..at + len);
                // A short block that is not the object's last would be wrong to cache.
                let whole = len as u64 == BLOCK || block * BLOCK + len as u64 == got.meta.size;
                if whole {
                    cache
                        .put(&self.key, &got.meta.etag, block, data.clone())
                        .await;
                }
                cached.push(data);
                at += len;
                block += 1;
            }
        }
        let mut out = BytesMut::with_capacity((range.end - range.start) as usize);
        let mut pos = first * BLOCK;
        for data in cached {
            let end = pos + data.len() as u64;
            if end > range.start && pos < range.end {
                let from = range.start.saturating_sub(pos) as usize;
                let to = (range.end.min(end) - pos) as usize;
                out.extend_from_slice(&data[from..to]);
            }
            if (data.len() as u64) < BLOCK {
                // The object's end.
                break;
            }
            pos = end;
        }
        Ok(out.freeze())
    }
}

enum Data {
    Pending(JoinHandle<FsResult<Bytes>>),
    Ready(Bytes),
}

struct Chunk {
    range: Range<u64>,
    data: Data,
}

/// One reading handle's stream of chunks.
pub struct ReadAhead {
    source: Source,
    /// The object's size when the handle was opened: nothing is fetched beyond it.
    size: u64,
    /// Where the next read continues the sequence.
    next: u64,
    window: u64,
    /// Consecutive chunks, the first one holding `next` (or starting at it).
    chunks: VecDeque<Chunk>,
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.reset();
    }
}

impl ReadAhead {
    pub fn new(source: Source, size: u64) -> Self {
        Self {
            source,
            size,
            next: 0,
            window: 0,
            chunks: VecDeque::new(),
        }
    }

    pub fn key(&self) -> &str {
        &self.source.key
    }

    /// The object's size this reader was made for.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The ETag of the version this reader was made for, if known.
    pub fn etag(&self) -> Option<&str> {
        self.source.etag.as_deref()
    }

    fn reset(&mut self) {
        for chunk in self.chunks.drain(..) {
            if let Data::Pending(task) = chunk.data {
                task.abort();
            }
        }
        self.window = 0;
    }

    /// Up to `size` bytes at `offset`.
    pub async fn read(&mut self, offset: u64, size: u32) -> FsResult<Bytes> {
        let mut end = offset.saturating_add(u64::from(size));
        if self.source.cache.is_some() && self.source.etag.is_some() {
            // The version read is known, and so is its size: nothing to ask the store past it.
            if offset >= self.size {
                return Ok(Bytes::new());
            }
            end = end.min(self.size);
        }
        if offset != self.next || end > self.size {
            // Not the continuation of the sequence, or past the end known at open (the object
            // may have grown): one GET of exactly this range.
            self.reset();
            self.next = end;
            return self.source.fetch(offset..end).await;
        }
        self.window = (self.window * 2).clamp(CHUNK, MAX_WINDOW);
        while self.chunks.front().is_some_and(|c| c.range.end <= offset) {
            self.chunks.pop_front();
        }
        // With a cache, chunks start on block boundaries so that they are whole blocks.
        let start = if self.source.cache.is_some() {
            offset - offset % BLOCK
        } else {
            offset
        };
        let mut fetched_to = self.chunks.back().map_or(start, |c| c.range.end);
        let ahead = offset.saturating_add(self.window).min(self.size);
        while fetched_to < ahead {
            let range = fetched_to..(fetched_to + CHUNK).min(self.size);
            let (source, r) = (self.source.clone(), range.clone());
            let task = tokio::spawn(async move { source.fetch(r).await });
            fetched_to = range.end;
            self.chunks.push_back(Chunk {
                range,
                data: Data::Pending(task),
            });
        }
        let mut out = BytesMut::with_capacity(size as usize);
        match self.collect(offset, end, &mut out).await {
            Ok(()) => {
                self.next = end;
                Ok(out.freeze())
            }
            Err(e) => {
                self.reset();
                self.next = u64::MAX;
                Err(e)
            }
        }
    }

    /// Copies `offset..end` out of the chunks, waiting for those still in flight.
    async fn collect(&mut self, offset: u64, end: u64, out: &mut BytesMut) -> FsResult<()> {
        let mut pos = offset;
        for chunk in self.chunks.iter_mut() {
            if pos >= end {
                break;
            }
            if chunk.range.end <= pos {
                continue;
            }
            if let Data::Pending(task) = &mut chunk.data {
                let body = match task.await {
                    Ok(Ok(body)) => body,
                    Ok(Err(e)) => return Err(e),
                    Err(e) => return Err(io_error("read", &self.source.key, e)),
                };
                chunk.data = Data::Ready(body);
            }
            let Data::Ready(body) = &chunk.data else {
                continue;
            };
            let from = (pos - chunk.range.start) as usize;
            let to = (end.min(chunk.range.end) - chunk.range.start) as usize;
            if from >= body.len() {
                // The object is shorter than when it was opened.
                break;
            }
            out.extend_from_slice(&body[from..to.min(body.len())]);
            pos = chunk.range.start + to as u64;
        }
        Ok(())
    }
}

/// One ranged GET; a range starting at or past the end is an empty read.
pub async fn get(store: &DynStore, key: &str, range: Range<u64>) -> FsResult<Bytes> {
    if range.is_empty() {
        return Ok(Bytes::new());
    }
    match store.get(key, Some(range)).await {
        Ok(got) => Ok(got.body),
        Err(e) if e.kind() == StoreErrorKind::InvalidRange => Ok(Bytes::new()),
        Err(e) if e.kind() == StoreErrorKind::NotFound => Err(FsError::NotFound),
        Err(e) => Err(io_error("get", key, e)),
    }
}

//! Sequential read-ahead for committed objects. The kernel asks a FUSE file system for at most
//! 128 KiB per read, one read at a time per file: one GET each would make the store's latency
//! set the pace. A handle that keeps reading where its last read ended gets the next chunks
//! fetched ahead by concurrent ranged GETs, with a window that doubles per sequential read up
//! to [`MAX_WINDOW`] (the memory bound per reading handle). A read elsewhere drops what was
//! fetched and is served by a GET of its own range.

use std::collections::VecDeque;
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use fs_core::StoreErrorKind;
use fs_core::store::DynStore;
use tokio::task::JoinHandle;

use crate::error::{FsError, FsResult, io_error};

/// The size of one read-ahead GET.
pub const CHUNK: u64 = 4 << 20;
/// The most bytes fetched ahead of a reader (fetched or in flight).
pub const MAX_WINDOW: u64 = 32 << 20;

enum Data {
    Pending(JoinHandle<Result<Bytes, fs_core::StoreError>>),
    Ready(Bytes),
}

struct Chunk {
    range: Range<u64>,
    data: Data,
}

/// One reading handle's stream of chunks.
pub struct ReadAhead {
    store: DynStore,
    key: String,
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
    pub fn new(store: DynStore, key: &str, size: u64) -> Self {
        Self {
            store,
            key: key.to_string(),
            size,
            next: 0,
            window: 0,
            chunks: VecDeque::new(),
        }
    }

    pub fn key(&self) -> &str {
        &self.key
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
        let end = offset.saturating_add(u64::from(size));
        if offset != self.next || end > self.size {
            // Not the continuation of the sequence, or past the end known at open (the object
            // may have grown): one GET of exactly this range.
            self.reset();
            self.next = end;
            return get(&self.store, &self.key, offset..end).await;
        }
        self.window = (self.window * 2).clamp(CHUNK, MAX_WINDOW);
        while self.chunks.front().is_some_and(|c| c.range.end <= offset) {
            self.chunks.pop_front();
        }
        let mut fetched_to = self.chunks.back().map_or(offset, |c| c.range.end);
        let ahead = offset.saturating_add(self.window).min(self.size);
        while fetched_to < ahead {
            let range = fetched_to..(fetched_to + CHUNK).min(self.size);
            let (store, key, r) = (self.store.clone(), self.key.clone(), range.clone());
            let task = tokio::spawn(async move { store.get(&key, Some(r)).await.map(|g| g.body) });
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
                    Ok(Err(e)) => return Err(io_error("read", &self.key, e)),
                    Err(e) => return Err(io_error("read", &self.key, e)),
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

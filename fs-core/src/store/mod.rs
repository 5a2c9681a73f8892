//! The object-store abstraction: one small async trait with S3's semantics, and one module per
//! backend.
//!
//! Every backend follows S3's rules, including the ones that make S3 awkward (no append, a
//! 5 MiB minimum for every multipart part but the last, at most 10,000 parts, parts unreadable
//! until the upload completes), so that code which works against the memory or local store also
//! works against a real S3 API. Keys are relative to the store's root (the bucket and prefix of an
//! `s3://` URL, the directory of a local store).
//!
//! Bodies are whole [`Bytes`]: callers that move large objects split them into ranges (ranged
//! GETs, multipart parts), which keeps every call bounded in memory by what the caller asked for.
//! A store that can move a body as it arrives (S3, over HTTP) also says so with
//! [`ObjectStore::streams_bodies`]; a proxy (the gateway) then passes a client's body through
//! its `*_stream` calls in one request instead of buffering and splitting it.

pub mod fault;
pub mod local;
pub mod memory;
pub mod rules;
pub mod s3;
mod url;

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};

pub use self::url::{StoreUrl, open_store, open_store_for_reading};
pub use crate::error::{StoreError, StoreErrorKind};

/// S3's limits that every backend enforces and the writer plans around.
pub mod limits {
    /// Every multipart part but the last must be at least this large (S3: 5 MiB).
    pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
    /// A part may be at most this large (S3: 5 GiB).
    pub const MAX_PART_SIZE: u64 = 5 * 1024 * 1024 * 1024;
    /// Part numbers run from 1 to this (S3: 10,000).
    pub const MAX_PART_NUMBER: u32 = 10_000;
    /// A key is at most this many bytes of UTF-8 (S3: 1,024).
    pub const MAX_KEY_LEN: usize = 1024;
}

/// A shared handle to any backend.
pub type DynStore = Arc<dyn ObjectStore>;

/// The condition a write is made under (S3's conditional writes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum PutCondition {
    /// Write unconditionally (replace whatever is there).
    #[default]
    None,
    /// `If-None-Match: *`: create only; fail with `PreconditionFailed` if the key exists.
    IfNoneMatch,
    /// `If-Match: <etag>`: replace only the object with this ETag; `PreconditionFailed` if the
    /// ETag differs, `NotFound` if the key is missing.
    IfMatch(String),
}

/// The standard HTTP headers S3 keeps with an object and returns on every GET and HEAD. Each is
/// stored as the client sent it; `None` means the object has no such header.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ContentHeaders {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_disposition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_language: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<String>,
    /// `Expires`: an HTTP date, as the client wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

impl ContentHeaders {
    /// Headers with only a content type.
    pub fn with_type(content_type: impl Into<String>) -> Self {
        Self {
            content_type: Some(content_type.into()),
            ..Self::default()
        }
    }

    /// True when the object carries none of these headers.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Options of a PUT or of a multipart upload's creation.
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    pub condition: PutCondition,
    pub headers: ContentHeaders,
    /// User metadata (`x-amz-meta-*`), names without the prefix, lower case.
    pub metadata: BTreeMap<String, String>,
}

/// What a successful PUT or CompleteMultipartUpload returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutResult {
    /// The object's ETag without quotes: MD5 hex for a single PUT, `md5-of-md5s-N` for an MPU.
    pub etag: String,
}

/// An object's metadata (HEAD).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    /// ETag without quotes.
    pub etag: String,
    pub last_modified: Option<SystemTime>,
    pub headers: ContentHeaders,
    /// User metadata, names without the `x-amz-meta-` prefix, lower case.
    pub metadata: BTreeMap<String, String>,
}

/// A GET's answer: the bytes of the requested range and the whole object's metadata.
#[derive(Debug, Clone)]
pub struct GetResult {
    pub meta: ObjectMeta,
    /// The byte range of the object that `body` holds.
    pub range: Range<u64>,
    pub body: Bytes,
}

/// A body moved as it arrives, in chunks of whatever size the network hands over. An error
/// ends it: a request it feeds is then aborted, never completed with fewer bytes.
pub type BodyStream = std::pin::Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send + Sync>>;

/// A streamed GET's answer: the whole object's metadata and the requested range's bytes, as the
/// store sends them.
pub struct GetStream {
    pub meta: ObjectMeta,
    /// The byte range of the object that `body` carries.
    pub range: Range<u64>,
    pub body: BodyStream,
}

impl fmt::Debug for GetStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GetStream")
            .field("meta", &self.meta)
            .field("range", &self.range)
            .finish_non_exhaustive()
    }
}

impl From<GetResult> for GetStream {
    fn from(got: GetResult) -> Self {
        GetStream {
            meta: got.meta,
            range: got.range,
            body: Box::pin(futures::stream::once(std::future::ready(Ok(got.body)))),
        }
    }
}

/// A body held to the `size` bytes it declared: a chunk past them, or an end before them, is
/// an error instead (so that a request it feeds is aborted, not cut short or overrun). The S3
/// store sends it as an HTTP body of that exact size.
pub struct ExactBody {
    body: BodyStream,
    left: u64,
}

impl ExactBody {
    pub fn new(size: u64, body: BodyStream) -> Self {
        ExactBody { body, left: size }
    }

    /// The bytes still to come.
    pub fn remaining(&self) -> u64 {
        self.left
    }
}

impl Stream for ExactBody {
    type Item = std::io::Result<Bytes>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        if self.left == 0 {
            // Not polled further: the source may hold back its end (a final check) and every
            // declared byte is already out.
            return Poll::Ready(None);
        }
        match self.body.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                let len = chunk.len() as u64;
                if len > self.left {
                    self.left = 0;
                    return Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "the body is longer than it declared",
                    ))));
                }
                self.left -= len;
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.left = 0;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                let left = std::mem::take(&mut self.left);
                Poll::Ready(Some(Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("the body ended {left} bytes short of what it declared"),
                ))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Gathers a streamed body of exactly `size` bytes (the `*_stream` calls' default, for stores
/// that take bodies whole): more or fewer bytes than declared is `InvalidArgument`, a body error
/// is `Transient` and names its cause.
pub async fn gather_body(
    op: &'static str,
    key: &str,
    size: u64,
    mut body: BodyStream,
) -> Result<Bytes, StoreError> {
    let capacity = usize::try_from(size.min(limits::MAX_PART_SIZE)).unwrap_or(usize::MAX);
    let mut buf = BytesMut::with_capacity(capacity);
    let mut overflow = false;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| {
            StoreError::new(
                StoreErrorKind::Transient,
                op,
                key,
                format!("reading the body: {e}"),
            )
        })?;
        if buf.len() as u64 + chunk.len() as u64 > size {
            overflow = true;
            break;
        }
        buf.extend_from_slice(&chunk);
    }
    if overflow || buf.len() as u64 != size {
        return Err(StoreError::new(
            StoreErrorKind::InvalidArgument,
            op,
            key,
            format!("the body does not hold the {size} bytes it declared"),
        ));
    }
    Ok(buf.freeze())
}

/// A listing request (ListObjectsV2).
#[derive(Debug, Clone, Default)]
pub struct ListRequest {
    pub prefix: String,
    /// Group keys by this delimiter into common prefixes (usually `/`); `None` lists every key.
    pub delimiter: Option<String>,
    /// The `next` of the previous page; opaque to callers.
    pub continuation: Option<String>,
    /// Page size; backends cap it at 1,000 like S3.
    pub max_keys: Option<usize>,
}

/// One entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectSummary {
    pub key: String,
    pub size: u64,
    pub etag: String,
    pub last_modified: Option<SystemTime>,
}

/// One page of a listing, keys in lexicographic (byte) order.
#[derive(Debug, Clone, Default)]
pub struct ListPage {
    pub objects: Vec<ObjectSummary>,
    pub common_prefixes: Vec<String>,
    /// Set when more entries follow: pass it as the next request's `continuation`.
    pub next: Option<String>,
}

/// A part as ListParts reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartInfo {
    pub number: u32,
    /// Some servers (s3s-fs) report no ETag here.
    pub etag: Option<String>,
    pub size: u64,
}

/// One page of ListParts.
#[derive(Debug, Clone, Default)]
pub struct PartsPage {
    pub parts: Vec<PartInfo>,
    /// Set when more parts follow: the part-number marker for the next call.
    pub next_marker: Option<u32>,
}

/// A part named in CompleteMultipartUpload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletedPart {
    pub number: u32,
    pub etag: String,
}

/// An upload as ListMultipartUploads reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadInfo {
    pub key: String,
    pub upload_id: String,
    pub initiated: Option<SystemTime>,
}

/// Where a ListMultipartUploads page ends (key marker and upload-id marker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadsMarker {
    pub key: String,
    pub upload_id: String,
}

/// One page of ListMultipartUploads.
#[derive(Debug, Clone, Default)]
pub struct UploadsPage {
    pub uploads: Vec<UploadInfo>,
    pub next: Option<UploadsMarker>,
}

/// The object-store operations Rivulet needs, with S3's semantics.
///
/// Errors carry a [`StoreErrorKind`] that callers match on (`NotFound`, `NoSuchUpload`,
/// `PreconditionFailed`, ...) and name the operation and key.
#[async_trait]
pub trait ObjectStore: Send + Sync + fmt::Debug + 'static {
    /// A URL-like name of this store, for messages and for namespacing the local index
    /// (`s3://bucket/prefix`, `file:///dir`, `memory://name`).
    fn describe(&self) -> String;

    /// The smallest size this store accepts for a multipart part that is not the last.
    /// S3 and the local store: 5 MiB. The memory store may be configured lower for fast tests.
    fn min_part_size(&self) -> u64 {
        limits::MIN_PART_SIZE
    }

    /// Whether CompleteMultipartUpload needs part numbers 1, 2, 3, … without gaps (s3s-fs).
    /// S3 only needs them ascending, which lets the writer keep every older token valid; on
    /// stores that need contiguous numbers it reuses numbers instead (see `docs/design.md`).
    fn requires_contiguous_parts(&self) -> bool {
        false
    }

    /// Whether CompleteMultipartUpload applies its `If-Match` / `If-None-Match` atomically, so
    /// that a writer need not check the condition itself first (one HEAD per conditional
    /// commit). Not assumed of S3 APIs (moto and s3s-fs ignore them on complete); the local and
    /// memory stores enforce them.
    fn enforces_complete_conditions(&self) -> bool {
        false
    }

    /// Reads the whole object, or `range` of it (end exclusive, clamped to the object's size).
    /// A range that starts at or past the end is `InvalidRange` (except `0..` of an empty object).
    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<GetResult, StoreError>;

    /// Whether the `*_stream` calls move bodies as they arrive. When false they gather the
    /// whole body first (their default implementations), so a caller that must bound its
    /// memory splits large bodies itself instead.
    fn streams_bodies(&self) -> bool {
        false
    }

    /// Whether [`put_stream`](Self::put_stream) writes bodies as they arrive, with the body's
    /// MD5 as ETag whatever its size (so a caller need not split a large PUT into parts to
    /// bound its memory). The stores that stream every body do; the local store streams puts.
    fn streams_puts(&self) -> bool {
        self.streams_bodies()
    }

    /// [`get`](Self::get), the body handed over as the store sends it. Errors before the body
    /// (a missing key, a bad range) are those of `get`; one while the body streams ends it.
    async fn get_stream(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<GetStream, StoreError> {
        self.get(key, range).await.map(GetStream::from)
    }

    /// [`put`](Self::put) of a body of exactly `size` bytes sent as it arrives. A body that
    /// fails, or brings more or fewer bytes, writes nothing.
    async fn put_stream(
        &self,
        key: &str,
        size: u64,
        body: BodyStream,
        opts: PutOptions,
    ) -> Result<PutResult, StoreError> {
        let body = gather_body("put", key, size, body).await?;
        self.put(key, body, opts).await
    }

    /// [`upload_part`](Self::upload_part) of a body of exactly `size` bytes sent as it
    /// arrives. A body that fails, or brings more or fewer bytes, uploads no part.
    async fn upload_part_stream(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        size: u64,
        body: BodyStream,
    ) -> Result<String, StoreError> {
        let body = gather_body("upload part", key, size, body).await?;
        self.upload_part(key, upload_id, part_number, body).await
    }

    /// The object's metadata; `NotFound` if missing.
    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError>;

    /// Writes a whole object atomically, under `opts.condition`.
    async fn put(&self, key: &str, body: Bytes, opts: PutOptions) -> Result<PutResult, StoreError>;

    /// Deletes an object; deleting a missing key succeeds (as on S3).
    async fn delete(&self, key: &str) -> Result<(), StoreError>;

    /// Deletes several objects (S3: DeleteObjects, up to 1,000 keys a request); missing keys
    /// succeed. The default deletes one by one.
    async fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        for key in keys {
            self.delete(key).await?;
        }
        Ok(())
    }

    /// One page of keys under a prefix.
    async fn list(&self, req: ListRequest) -> Result<ListPage, StoreError>;

    /// Starts a multipart upload; returns its upload id. `opts.condition` is ignored here (it
    /// applies at completion); content type and metadata are those of the final object.
    async fn create_multipart(&self, key: &str, opts: PutOptions) -> Result<String, StoreError>;

    /// Uploads one part (1..=10,000), replacing an earlier part of the same number; returns its
    /// ETag. `NoSuchUpload` if the upload is gone.
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Bytes,
    ) -> Result<String, StoreError>;

    /// Makes a part from `range` (end exclusive) of the completed object `source_key`,
    /// server-side. With `source_if_match`, fails with `PreconditionFailed` unless the source's
    /// ETag matches, so a copy never mixes two versions of an object.
    async fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        source_key: &str,
        range: Range<u64>,
        source_if_match: Option<&str>,
    ) -> Result<String, StoreError>;

    /// Completes an upload from `parts` (ascending numbers): the object appears whole, atomically.
    /// `EntityTooSmall` if a part but the last is under [`ObjectStore::min_part_size`],
    /// `InvalidPart` if a part is missing or its ETag differs, `NoSuchUpload` if the upload is gone.
    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
        condition: PutCondition,
    ) -> Result<PutResult, StoreError>;

    /// Aborts an upload and frees its parts; `NoSuchUpload` if it is already gone.
    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StoreError>;

    /// Whether [`read_part`](Self::read_part) works here. S3 has no call to read a part of an
    /// upload in progress; a local directory keeps each part as a file it can read back, so a
    /// writer over it needs no local copy of its uploaded parts to read its own writes.
    fn reads_parts(&self) -> bool {
        false
    }

    /// Reads `range` (end exclusive, clamped to the part's size) of part `number` of an upload
    /// in progress, if that part is still the one whose upload returned `etag`: a part since
    /// replaced is `PreconditionFailed`, never other bytes. Stores where
    /// [`reads_parts`](Self::reads_parts) is false answer `NotSupported`.
    async fn read_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        etag: &str,
        range: Range<u64>,
    ) -> Result<Bytes, StoreError> {
        let _ = (upload_id, number, etag, range);
        Err(StoreError::new(
            StoreErrorKind::NotSupported,
            "read part",
            key,
            "this store cannot read the parts of an upload in progress",
        ))
    }

    /// One page (up to 1,000) of an upload's parts, after part number `marker`.
    async fn list_parts(
        &self,
        key: &str,
        upload_id: &str,
        marker: Option<u32>,
    ) -> Result<PartsPage, StoreError>;

    /// One page of the uploads in progress under `prefix`. Backends without it (s3s-fs) answer
    /// `NotSupported`.
    async fn list_multipart_uploads(
        &self,
        prefix: &str,
        marker: Option<UploadsMarker>,
    ) -> Result<UploadsPage, StoreError>;
}

/// Helpers built on the trait's primitives, available on every store.
#[async_trait]
pub trait ObjectStoreExt: ObjectStore {
    /// Every part of an upload, following ListParts' pages.
    async fn list_all_parts(
        &self,
        key: &str,
        upload_id: &str,
    ) -> Result<Vec<PartInfo>, StoreError> {
        let mut parts = Vec::new();
        let mut marker = None;
        loop {
            let page = self.list_parts(key, upload_id, marker).await?;
            parts.extend(page.parts);
            match page.next_marker {
                Some(m) if Some(m) != marker => marker = Some(m),
                _ => return Ok(parts),
            }
        }
    }

    /// Every open multipart upload under `prefix`, following ListMultipartUploads' pages.
    async fn list_all_uploads(&self, prefix: &str) -> Result<Vec<UploadInfo>, StoreError> {
        let mut uploads = Vec::new();
        let mut marker = None;
        loop {
            let page = self.list_multipart_uploads(prefix, marker.clone()).await?;
            uploads.extend(page.uploads);
            match page.next {
                Some(next) if Some(&next) != marker.as_ref() => marker = Some(next),
                _ => return Ok(uploads),
            }
        }
    }

    /// Every object under `prefix` (no delimiter), following the listing's pages.
    async fn list_all(&self, prefix: &str) -> Result<Vec<ObjectSummary>, StoreError> {
        let mut objects = Vec::new();
        let mut continuation = None;
        loop {
            let page = self
                .list(ListRequest {
                    prefix: prefix.to_string(),
                    delimiter: None,
                    continuation: continuation.take(),
                    max_keys: None,
                })
                .await?;
            objects.extend(page.objects);
            match page.next {
                Some(next) => continuation = Some(next),
                None => return Ok(objects),
            }
        }
    }

    /// The object's metadata, or `None` if it does not exist.
    async fn head_opt(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        match self.head(key).await {
            Ok(meta) => Ok(Some(meta)),
            Err(e) if e.kind() == StoreErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl<T: ObjectStore + ?Sized> ObjectStoreExt for T {}

#[cfg(test)]
mod stream_tests {
    use super::*;

    fn body(chunks: &[&'static [u8]], fail: bool) -> BodyStream {
        let mut items: Vec<std::io::Result<Bytes>> =
            chunks.iter().map(|c| Ok(Bytes::from_static(c))).collect();
        if fail {
            items.push(Err(std::io::Error::other("cut")));
        }
        Box::pin(futures::stream::iter(items))
    }

    async fn drain(mut exact: ExactBody) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        while let Some(item) = exact.next().await {
            match item {
                Ok(chunk) => out.extend_from_slice(&chunk),
                Err(_) => return (out, true),
            }
        }
        (out, false)
    }

    #[tokio::test]
    async fn an_exact_body_fails_unless_it_brings_its_size() {
        let exact = ExactBody::new(5, body(&[b"ab", b"cde"], false));
        assert_eq!(exact.remaining(), 5);
        assert_eq!(drain(exact).await, (b"abcde".to_vec(), false));
        // Short, long, or cut: an error instead of an end (the long chunk is not handed on).
        assert_eq!(
            drain(ExactBody::new(6, body(&[b"ab", b"cde"], false))).await,
            (b"abcde".to_vec(), true)
        );
        assert_eq!(
            drain(ExactBody::new(4, body(&[b"ab", b"cde"], false))).await,
            (b"ab".to_vec(), true)
        );
        assert_eq!(
            drain(ExactBody::new(9, body(&[b"ab"], true))).await,
            (b"ab".to_vec(), true)
        );
        // Once its size is out it ends, without waiting on the source's end.
        let done = ExactBody::new(2, body(&[b"ab"], true));
        assert_eq!(drain(done).await, (b"ab".to_vec(), false));
    }

    #[tokio::test]
    async fn gathering_a_body_checks_its_size() {
        let got = gather_body("put", "k", 5, body(&[b"ab", b"cde"], false)).await;
        assert_eq!(got.unwrap(), Bytes::from_static(b"abcde"));
        for (size, fail) in [(4, false), (6, false), (5, true)] {
            let chunks: &[&'static [u8]] = if fail { &[b"ab"] } else { &[b"ab", b"cde"] };
            let err = gather_body("put", "k", size, body(chunks, fail))
                .await
                .unwrap_err();
            let want = if fail {
                StoreErrorKind::Transient
            } else {
                StoreErrorKind::InvalidArgument
            };
            assert_eq!(err.kind(), want, "{size} {fail}");
        }
    }
}

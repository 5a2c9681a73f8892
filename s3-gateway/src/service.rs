//! The S3 operations: each maps its request onto [`ObjectStore`] calls through the bucket
//! mapping, and the store's answer (or error) back onto S3's.
//!
//! Over a store that streams bodies (S3 on HTTPS or loopback), PutObject bodies larger than one
//! part, UploadPart bodies and GET bodies are relayed as they arrive, one store request each
//! (see [`crate::bodies::Relay`]). Over other stores, PutObject bodies larger than one part are
//! streamed into a multipart upload of the store (see [`crate::bodies`]); an UploadPart body is
//! held whole, because such a store takes a part whole (at most 5 GiB, S3's limit, enforced
//! here); GET bodies are streamed in ranged reads of [`GatewayService::read_chunk`] bytes. Either
//! way memory stays bounded whatever the object's size. An append and a CopyObject source are
//! held whole.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use fs_core::store::{
    CompletedPart as StoreCompletedPart, DynStore, ObjectMeta, PutCondition, PutOptions,
    StoreErrorKind, UploadsMarker, limits,
};
use s3s::dto::{self, CopySource, ETag, ETagCondition, StreamingBlob, Timestamp};
use s3s::{S3, S3Error, S3ErrorCode, S3Request, S3Response, S3Result};

use crate::appends::{Appends, KeyGuard, NewObject, OpenView};
use crate::bodies::{BodyDigest, BodyReader, MAX_OBJECT_SIZE, Relay, StreamedUpload, Streaming};
use crate::buckets::{Buckets, bucket_prefix, no_such_bucket};
use crate::errors::{s3_err, to_s3};
use crate::headers::{apply_overrides, request_headers, set_object_headers, take_overrides};
use crate::listing::{self, Cursor, MAX_KEYS, Query, url_encode};

/// How many bytes a GET reads from the store at a time (the default of
/// [`GatewayService::read_chunk`]).
pub const DEFAULT_READ_CHUNK: u64 = 8 * 1024 * 1024;

/// GET bodies relayed from a store that streams them are gathered first up to this size (see
/// [`GatewayService::get_relayed`]).
const GATHERED_GET_MAX: u64 = 1024 * 1024;

/// PutObject bodies up to this size are stored with one PUT; larger ones are streamed into a
/// multipart upload in parts of this size (the default of the writer's part size).
pub const DEFAULT_STREAM_PART: u64 = 8 * 1024 * 1024;

/// Parts of a streamed PUT uploading at once while the next is read.
pub const DEFAULT_STREAM_IN_FLIGHT: usize = 4;

/// The gateway's implementation of the S3 API over one store.
#[derive(Debug, Clone)]
pub struct GatewayService {
    store: DynStore,
    buckets: Buckets,
    region: String,
    read_chunk: u64,
    /// How PutObject bodies larger than one part are streamed to the store.
    streaming: Streaming,
    /// Open appendable objects: reads see them, other writes to their keys seal them first.
    appends: Appends,
}

impl GatewayService {
    /// A service whose buckets are the top-level folders of `store`.
    pub fn new(store: DynStore, region: impl Into<String>, appends: Appends) -> Self {
        Self::with_buckets(Buckets::new(store.clone()), region, appends)
    }

    /// A service over `buckets` (folders of a store, or a backend's buckets one to one).
    pub fn with_buckets(buckets: Buckets, region: impl Into<String>, appends: Appends) -> Self {
        let store = buckets.store().clone();
        Self {
            buckets,
            store,
            region: region.into(),
            read_chunk: DEFAULT_READ_CHUNK,
            streaming: Streaming {
                part_size: DEFAULT_STREAM_PART as usize,
                in_flight: DEFAULT_STREAM_IN_FLIGHT,
            },
            appends,
        }
    }

    /// The declared size of a body to relay to the store as it arrives: when the store streams
    /// bodies and the client declared the length (which the relay holds the body to).
    fn relayed_size(&self, content_length: Option<i64>) -> Option<u64> {
        if !self.store.streams_bodies() {
            return None;
        }
        content_length.and_then(|n| u64::try_from(n).ok())
    }

    /// One page of a bucket's listing that starts after `marker` (ListObjects v1 and
    /// ListObjectVersions page by key), with the open appendable objects as they are now.
    async fn list_after_marker(
        &self,
        bucket: &str,
        prefix: Option<&str>,
        delimiter: Option<&str>,
        max: usize,
        marker: Option<&str>,
    ) -> S3Result<listing::Page> {
        let mut page = listing::list_bucket(
            &self.store,
            bucket,
            Query {
                prefix: prefix.unwrap_or_default().to_string(),
                delimiter: delimiter.map(str::to_string),
                max_keys: max,
                cursor: Cursor {
                    store_token: None,
                    after: marker.filter(|s| !s.is_empty()).map(str::to_string),
                },
            },
        )
        .await?;
        self.overlay_open(bucket, &mut page);
        Ok(page)
    }

    /// [`relayed_size`](Self::relayed_size) for a PutObject body: also over stores that stream
    /// only puts (the local store), so that a large PUT is one store PUT with an MD5 ETag.
    fn relayed_put_size(&self, content_length: Option<i64>) -> Option<u64> {
        if !self.store.streams_puts() {
            return None;
        }
        content_length.and_then(|n| u64::try_from(n).ok())
    }

    /// Before a PUT replaces `key`: its lock (an open appendable object is committed first, and
    /// no append lands until the lock is dropped) and the store's condition for the headers.
    async fn lock_for_put(
        &self,
        key: &str,
        if_match: Option<&ETagCondition>,
        if_none_match: Option<&ETagCondition>,
    ) -> S3Result<(KeyGuard, PutCondition)> {
        let key_lock = self.appends.lock_sealed(key).await?;
        let if_match = self.as_sealed(key, if_match);
        let condition = put_condition(&self.store, key, if_match.as_ref(), if_none_match).await?;
        Ok((key_lock, condition))
    }

    /// An ETag condition on `key` with the `-open` ETag its appends returned read as the ETag
    /// its last seal gave it (the same bytes, committed under a new ETag), so that a client
    /// can make a write conditional on what it appended. Anything else is left as it is.
    fn as_sealed(&self, key: &str, cond: Option<&ETagCondition>) -> Option<ETagCondition> {
        let cond = cond?.clone();
        let Some(sealed) = self.appends.sealed_as(key) else {
            return Some(cond);
        };
        Some(match cond {
            ETagCondition::ETag(ETag::Strong(tags)) if tags.contains(&sealed.open_etag) => {
                ETagCondition::ETag(ETag::Strong(tags.replace(&sealed.open_etag, &sealed.etag)))
            }
            other => other,
        })
    }

    /// A PutObject body larger than one part, relayed to the store in one PUT as it arrives
    /// (memory stays bounded by the connections' buffers, and the ETag is the body's MD5, as
    /// S3's). The key lock and the condition are taken first, since the store's PUT is the
    /// commit.
    async fn put_relayed(
        &self,
        key: String,
        size: u64,
        input: dto::PutObjectInput,
    ) -> S3Result<S3Response<dto::PutObjectOutput>> {
        let (relay, outcome) = Relay::new(input.body, size, input.content_md5.as_deref())?;
        let (_key_lock, condition) = self
            .lock_for_put(&key, input.if_match.as_ref(), input.if_none_match.as_ref())
            .await?;
        let opts = PutOptions {
            condition,
            headers: request_headers!(input),
            metadata: user_metadata(input.metadata),
        };
        let result = self
            .store
            .put_stream(&key, size, Box::pin(relay), opts)
            .await
            .map_err(|e| outcome.error(e))?;
        Ok(S3Response::new(dto::PutObjectOutput {
            e_tag: strong(result.etag),
            ..Default::default()
        }))
    }

    /// A GET over a store that streams bodies: one store GET, its body relayed to the client as
    /// it arrives (its pace is the client's: the connections' buffers bound the memory, and a
    /// client that goes away drops the store's answer with it).
    async fn get_relayed(
        &self,
        bucket: &str,
        key: &str,
        range: Option<Range<u64>>,
        conds: &Conditions<'_>,
        ranged: bool,
    ) -> S3Result<S3Response<dto::GetObjectOutput>> {
        let got = match self.store.get_stream(key, range).await {
            Ok(got) => got,
            Err(e) => return Err(self.object_error(bucket, e).await),
        };
        // The object may have changed since a HEAD: the answer must hold for what is sent.
        conds.evaluate(&got.meta)?;
        if ranged && got.meta.size == 0 {
            return Err(unsatisfiable());
        }
        let meta = got.meta;
        let sent = got.range;
        let content_range = ranged.then(|| {
            format!(
                "bytes {}-{}/{}",
                sent.start,
                sent.end.saturating_sub(1),
                meta.size
            )
        });
        let len = sent.end - sent.start;
        let body = if len <= GATHERED_GET_MAX {
            // Gathered first, a small body leaves with its headers in one write instead of
            // trailing them in a packet of its own.
            let bytes = fs_core::store::gather_body("get", key, len, got.body)
                .await
                .map_err(to_s3)?;
            StreamingBlob::from(s3s::Body::from(bytes))
        } else {
            StreamingBlob::wrap(got.body)
        };
        Ok(S3Response::new(get_output(&meta, body, len, content_range)))
    }

    /// Shows the open appendable objects of a listing page as they are (size, ETag, time).
    fn overlay_open(&self, bucket: &str, page: &mut listing::Page) {
        let root = bucket_prefix(bucket);
        let open = self.appends.open_views(&root);
        if open.is_empty() {
            return;
        }
        for o in &mut page.objects {
            if let Some(view) = open.get(&format!("{root}{}", o.key)) {
                o.size = view.size;
                o.etag = view.etag.clone();
                o.last_modified = Some(view.last_modified);
            }
        }
    }

    /// PutObject with `x-amz-write-offset-bytes`: an append (see [`crate::appends`]).
    async fn append_object(
        &self,
        input: dto::PutObjectInput,
        offset: i64,
    ) -> S3Result<S3Response<dto::PutObjectOutput>> {
        let offset = u64::try_from(offset).map_err(|_| {
            s3_err(
                S3ErrorCode::InvalidArgument,
                "x-amz-write-offset-bytes must not be negative",
            )
        })?;
        if input.if_match.is_some() || input.if_none_match.is_some() {
            return Err(s3_err(
                S3ErrorCode::NotImplemented,
                "conditional headers cannot be combined with x-amz-write-offset-bytes",
            ));
        }
        let key = self.existing_key(&input.bucket, &input.key).await?;
        let mut reader = BodyReader::new(
            input.body,
            input.content_length,
            input.content_md5.as_deref(),
        );
        let body = reader.read_all().await?;
        if body.is_empty() {
            return Err(s3_err(
                S3ErrorCode::InvalidRequest,
                "an append (x-amz-write-offset-bytes) needs a non-empty body",
            ));
        }
        reader.check_md5(input.content_md5.as_deref())?;
        let new_object = NewObject {
            headers: request_headers!(input),
            metadata: user_metadata(input.metadata),
        };
        let view = self
            .appends
            .append_with(&key, offset, body, new_object)
            .await?;
        Ok(S3Response::new(dto::PutObjectOutput {
            e_tag: strong(view.etag),
            size: Some(to_i64(view.size)),
            ..Default::default()
        }))
    }

    /// Sets how many bytes a GET reads from the store at a time (at least 1).
    pub fn with_read_chunk(mut self, bytes: u64) -> Self {
        self.read_chunk = bytes.max(1);
        self
    }

    /// Sets the part size (at least 1 byte; the store's minimum part size is the caller's
    /// business) and the parts in flight of PUT bodies streamed into multipart uploads.
    pub fn with_streaming(mut self, part_size: u64, in_flight: usize) -> Self {
        self.streaming = Streaming {
            part_size: usize::try_from(part_size.max(1)).unwrap_or(usize::MAX),
            in_flight: in_flight.max(1),
        };
        self
    }

    /// The bytes a GET reads from the store at a time.
    pub fn read_chunk(&self) -> u64 {
        self.read_chunk
    }

    /// The store key of an object of a bucket that must exist.
    async fn existing_key(&self, bucket: &str, key: &str) -> S3Result<String> {
        let full = self.buckets.store_key(bucket, key)?;
        self.buckets.require(bucket).await?;
        Ok(full)
    }

    /// A store error of an operation on an object: a missing key is `NoSuchBucket` when the
    /// bucket is what is missing (checked only then, to spare the common path a listing).
    async fn object_error(&self, bucket: &str, err: fs_core::StoreError) -> S3Error {
        if err.kind() == StoreErrorKind::NotFound {
            match self.buckets.exists(bucket).await {
                Ok(false) => return no_such_bucket(bucket),
                Ok(true) => {}
                Err(e) => return e,
            }
            return s3_err(S3ErrorCode::NoSuchKey, "The specified key does not exist.");
        }
        if err.kind() == StoreErrorKind::InvalidRange {
            // The store's message names the range it was asked for, which is the gateway's
            // first read (up to a read chunk), not the client's range.
            return unsatisfiable();
        }
        to_s3(err)
    }

    /// Seals the source of a copy if it is an open appendable object (unless it is `dest`,
    /// which the caller seals and holds): a copy reads the store's object.
    async fn seal_copy_source(&self, source: &CopySource, dest: &str) -> S3Result<()> {
        if let CopySource::Bucket { bucket, key, .. } = source
            && let Ok(full) = self.buckets.store_key(bucket, key)
            && full != dest
        {
            self.appends.seal_key(&full).await?;
        }
        Ok(())
    }

    /// GetObject of an open appendable object: served from its writer (see [`open_body`]).
    fn get_open(
        &self,
        key: String,
        view: OpenView,
        conds: &Conditions<'_>,
        range: Option<&dto::Range>,
    ) -> S3Result<S3Response<dto::GetObjectOutput>> {
        let meta = view.meta(&key);
        conds.evaluate(&meta)?;
        let whole = match range {
            None => 0..meta.size,
            Some(r) => satisfiable(r, meta.size)?,
        };
        let content_range = range.map(|_| {
            format!(
                "bytes {}-{}/{}",
                whole.start,
                whole.end.saturating_sub(1),
                meta.size
            )
        });
        let body = open_body(
            self.appends.clone(),
            self.store.clone(),
            key,
            view,
            whole.clone(),
            self.read_chunk,
        );
        Ok(S3Response::new(get_output(
            &meta,
            body,
            whole.end - whole.start,
            content_range,
        )))
    }

    /// GetObject but for the `response-*` overrides.
    async fn read_object(
        &self,
        input: dto::GetObjectInput,
    ) -> S3Result<S3Response<dto::GetObjectOutput>> {
        let key = self.buckets.store_key(&input.bucket, &input.key)?;
        unversioned(input.version_id.as_deref())?;
        let conds = Conditions {
            if_match: input.if_match.as_ref(),
            if_none_match: input.if_none_match.as_ref(),
            if_modified_since: input.if_modified_since.as_ref(),
            if_unmodified_since: input.if_unmodified_since.as_ref(),
        };
        // Conditions and suffix ranges need the metadata before the read; evaluating them there
        // spares reading a body that is not sent.
        if let Some(view) = self.appends.view(&key).await? {
            return self.get_open(key, view, &conds, input.range.as_ref());
        }
        let needs_head = conds.any() || matches!(input.range, Some(dto::Range::Suffix { .. }));
        let known_size = if needs_head {
            let meta = match self.store.head(&key).await {
                Ok(meta) => meta,
                Err(e) => return Err(self.object_error(&input.bucket, e).await),
            };
            conds.evaluate(&meta)?;
            Some(meta.size)
        } else {
            None
        };
        let range = store_range(input.range.as_ref(), known_size)?;
        if self.store.streams_bodies() {
            return self
                .get_relayed(&input.bucket, &key, range, &conds, input.range.is_some())
                .await;
        }
        // The first chunk brings the metadata (and the size an open range ends at).
        let wanted = range.clone().unwrap_or(0..u64::MAX);
        let first_end = wanted.start.saturating_add(self.read_chunk).min(wanted.end);
        let first = match self.store.get(&key, Some(wanted.start..first_end)).await {
            Ok(got) => got,
            Err(e) => return Err(self.object_error(&input.bucket, e).await),
        };
        // The object may have changed since the HEAD: the answer must hold for what is sent.
        conds.evaluate(&first.meta)?;
        if input.range.is_some() && first.meta.size == 0 {
            return Err(unsatisfiable());
        }
        let meta = first.meta;
        let whole = wanted.start..wanted.end.min(meta.size);
        let content_range = input.range.map(|_| {
            format!(
                "bytes {}-{}/{}",
                whole.start,
                whole.end.saturating_sub(1),
                meta.size
            )
        });
        let body = if first.range.end >= whole.end {
            StreamingBlob::from(s3s::Body::from(first.body))
        } else {
            chunked_body(
                self.store.clone(),
                key,
                meta.etag.clone(),
                first.body,
                first.range.end..whole.end,
                self.read_chunk,
            )
        };
        Ok(S3Response::new(get_output(
            &meta,
            body,
            whole.end - whole.start,
            content_range,
        )))
    }

    /// The source object of a copy: its store key and current metadata, after the
    /// `x-amz-copy-source-if-*` conditions (a failed one is 412, as S3 answers for copies).
    async fn copy_source(
        &self,
        source: &CopySource,
        if_match: Option<&ETagCondition>,
        if_none_match: Option<&ETagCondition>,
        if_modified_since: Option<&Timestamp>,
        if_unmodified_since: Option<&Timestamp>,
    ) -> S3Result<(String, ObjectMeta)> {
        let CopySource::Bucket {
            bucket,
            key,
            version_id,
        } = source
        else {
            return Err(s3_err(
                S3ErrorCode::NotImplemented,
                "copy sources must be bucket/key (access points and outposts are not supported)",
            ));
        };
        unversioned(version_id.as_deref())?;
        let full = self.buckets.store_key(bucket, key)?;
        let (if_match, if_none_match) = (
            self.as_sealed(&full, if_match),
            self.as_sealed(&full, if_none_match),
        );
        let meta = match self.store.head(&full).await {
            Ok(meta) => meta,
            Err(e) => return Err(self.object_error(bucket, e).await),
        };
        let conds = Conditions {
            if_match: if_match.as_ref(),
            if_none_match: if_none_match.as_ref(),
            if_modified_since,
            if_unmodified_since,
        };
        if conds.evaluate(&meta).is_err() {
            return Err(s3_err(
                S3ErrorCode::PreconditionFailed,
                "At least one of the pre-conditions you specified did not hold",
            ));
        }
        Ok((full, meta))
    }
}

/// The conditions of a delete: `If-Match`, `x-amz-if-match-size` and
/// `x-amz-if-match-last-modified-time` on DeleteObject, or an object's `ETag`, `Size` and
/// `LastModifiedTime` in DeleteObjects. The object is deleted only if every one given holds.
struct DeleteCondition<'a> {
    etag: Option<&'a ETagCondition>,
    size: Option<i64>,
    last_modified: Option<&'a Timestamp>,
}

impl DeleteCondition<'_> {
    fn any(&self) -> bool {
        self.etag.is_some() || self.size.is_some() || self.last_modified.is_some()
    }

    /// `412 PreconditionFailed` unless `meta` (the object as it is now) meets every condition.
    fn check(&self, meta: &ObjectMeta) -> S3Result<()> {
        let etag_holds = self
            .etag
            .is_none_or(|cond| etag_matches(cond, &meta.etag, Comparison::Strong));
        let size_holds = self.size.is_none_or(|size| size == to_i64(meta.size));
        let time_holds = self.last_modified.is_none_or(|t| {
            meta.last_modified
                .is_some_and(|m| unix_secs(m) == timestamp_secs(t))
        });
        if etag_holds && size_holds && time_holds {
            Ok(())
        } else {
            Err(s3_err(
                S3ErrorCode::PreconditionFailed,
                "At least one of the pre-conditions you specified did not hold",
            ))
        }
    }
}

/// The conditional headers of a read (GET, HEAD, copy source).
struct Conditions<'a> {
    if_match: Option<&'a ETagCondition>,
    if_none_match: Option<&'a ETagCondition>,
    if_modified_since: Option<&'a Timestamp>,
    if_unmodified_since: Option<&'a Timestamp>,
}

impl Conditions<'_> {
    fn any(&self) -> bool {
        self.if_match.is_some()
            || self.if_none_match.is_some()
            || self.if_modified_since.is_some()
            || self.if_unmodified_since.is_some()
    }

    /// RFC 9110's order, which S3 follows: If-Match (else If-Unmodified-Since) can fail with
    /// 412; then If-None-Match (else If-Modified-Since) with 304.
    fn evaluate(&self, meta: &ObjectMeta) -> S3Result<()> {
        let precondition_failed = || {
            s3_err(
                S3ErrorCode::PreconditionFailed,
                "At least one of the pre-conditions you specified did not hold",
            )
        };
        let not_modified = || S3Error::new(S3ErrorCode::NotModified);
        let modified_secs = meta.last_modified.map(unix_secs);
        if let Some(cond) = self.if_match {
            if !etag_matches(cond, &meta.etag, Comparison::Strong) {
                return Err(precondition_failed());
            }
        } else if let (Some(since), Some(modified)) = (self.if_unmodified_since, modified_secs)
            && modified > timestamp_secs(since)
        {
            return Err(precondition_failed());
        }
        if let Some(cond) = self.if_none_match {
            if etag_matches(cond, &meta.etag, Comparison::Weak) {
                return Err(not_modified());
            }
        } else if let (Some(since), Some(modified)) = (self.if_modified_since, modified_secs)
            && modified <= timestamp_secs(since)
        {
            return Err(not_modified());
        }
        Ok(())
    }
}

/// How entity tags compare (RFC 9110, 8.8.3.2): `If-Match` uses the strong comparison, where a
/// weak tag (`W/"..."`) matches nothing; `If-None-Match` the weak one, which ignores `W/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Comparison {
    Strong,
    Weak,
}

/// Whether the condition (`*` or a list of entity tags, RFC 9110's `#entity-tag`) holds for an
/// object whose ETag is `etag`.
fn etag_matches(cond: &ETagCondition, etag: &str, comparison: Comparison) -> bool {
    condition_tags(cond).is_none_or(|tags| {
        tags.iter()
            .any(|(weak, value)| value == etag && !(*weak && comparison == Comparison::Strong))
    })
}

/// The entity tags of a condition header, each with whether it is weak; `None` for `*`.
///
/// s3s parses the header as one tag: a list (`"a", W/"b"`) arrives as the strong tag whose
/// value is everything between the first and the last quote. The header is rebuilt from it and
/// read as the list it is; an unquoted value (which some S3 clients send) is one strong tag.
fn condition_tags(cond: &ETagCondition) -> Option<Vec<(bool, String)>> {
    let header = match cond {
        ETagCondition::Any => return None,
        ETagCondition::ETag(ETag::Strong(v)) => format!("\"{v}\""),
        ETagCondition::ETag(ETag::Weak(v)) => format!("W/\"{v}\""),
    };
    let mut tags = Vec::new();
    let mut rest = header.as_str();
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            break;
        }
        let (weak, tail) = match rest.strip_prefix("W/") {
            Some(tail) => (true, tail),
            None => (false, rest),
        };
        if let Some(quoted) = tail.strip_prefix('"') {
            let end = quoted.find('"').unwrap_or(quoted.len());
            tags.push((weak, quoted[..end].to_string()));
            rest = quoted.get(end + 1..).unwrap_or_default();
        } else {
            let end = tail.find(',').unwrap_or(tail.len());
            tags.push((weak, tail[..end].trim().to_string()));
            rest = &tail[end..];
        }
    }
    Some(tags)
}

/// Whole seconds since the epoch: HTTP dates have no finer resolution, so comparisons with them
/// drop the object's sub-second part.
fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

fn timestamp_secs(t: &Timestamp) -> i64 {
    time::OffsetDateTime::from(t.clone()).unix_timestamp()
}

fn timestamp(t: Option<SystemTime>) -> Option<Timestamp> {
    t.map(Timestamp::from)
}

fn strong(etag: impl Into<String>) -> Option<ETag> {
    Some(ETag::Strong(etag.into()))
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A GET body: `first`, then `rest` of the object read `chunk` bytes at a time. A task reads
/// ahead by one chunk into a channel, so at most a few chunks are in memory, and it stops when the
/// client goes away (the channel closes). Every read is checked against `etag`: if the object is
/// replaced while it is sent, the body ends with an error (the client sees a short read) rather
/// than splice two versions.
fn chunked_body(
    store: DynStore,
    key: String,
    etag: String,
    first: Bytes,
    rest: Range<u64>,
    chunk: u64,
) -> StreamingBlob {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    tokio::spawn(async move {
        if tx.send(Ok(first)).await.is_err() {
            return;
        }
        let mut pos = rest.start;
        while pos < rest.end {
            let end = pos.saturating_add(chunk).min(rest.end);
            let next = match store.get(&key, Some(pos..end)).await {
                Ok(got) if got.meta.etag != etag => Err(std::io::Error::other(format!(
                    "{key} changed while it was read (ETag {etag} became {})",
                    got.meta.etag
                ))),
                Ok(got) if got.body.is_empty() => Err(std::io::Error::other(format!(
                    "{key} is shorter than its size said while it was read"
                ))),
                Ok(got) => {
                    pos += got.body.len() as u64;
                    Ok(got.body)
                }
                Err(e) => Err(std::io::Error::other(e)),
            };
            let failed = next.is_err();
            if failed {
                tracing::warn!(key = %key, "a GET body stopped early");
            }
            if tx.send(next).await.is_err() || failed {
                return;
            }
        }
    });
    StreamingBlob::wrap(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

/// A GET body of an open appendable object: `range` read `chunk` bytes at a time from its
/// writer (what was appended, read-your-writes). When the object is sealed while it is sent,
/// the rest is read from the store, but only from the object that seal committed (it carries
/// the writer's id): anything else ends the body early, as [`chunked_body`] does.
fn open_body(
    appends: Appends,
    store: DynStore,
    key: String,
    view: OpenView,
    range: Range<u64>,
    chunk: u64,
) -> StreamingBlob {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    tokio::spawn(async move {
        let mut pos = range.start;
        while pos < range.end {
            let end = pos.saturating_add(chunk).min(range.end);
            let next = match appends.read_open(&key, &view.upload_id, pos..end).await {
                Ok(Some(bytes)) => Ok(bytes),
                Ok(None) => match store.get(&key, Some(pos..end)).await {
                    Ok(got)
                        if got.meta.metadata.get(fs_core::writer::WRITER_ID_METADATA)
                            == Some(&view.writer_id)
                            && got.body.len() as u64 == end - pos =>
                    {
                        Ok(got.body)
                    }
                    Ok(_) => Err(std::io::Error::other(format!(
                        "{key} was replaced while it was read"
                    ))),
                    Err(e) => Err(std::io::Error::other(e)),
                },
                Err(e) => Err(std::io::Error::other(e.to_string())),
            };
            let failed = next.is_err();
            if let Ok(bytes) = &next {
                pos += bytes.len() as u64;
            }
            if failed {
                tracing::warn!(key = %key, "a GET body of an open object stopped early");
            }
            if tx.send(next).await.is_err() || failed {
                return;
            }
        }
    });
    StreamingBlob::wrap(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

/// A GetObject answer: `len` bytes of `body` (the range `content_range` names, if any) of the
/// object `meta` describes.
fn get_output(
    meta: &ObjectMeta,
    body: StreamingBlob,
    len: u64,
    content_range: Option<String>,
) -> dto::GetObjectOutput {
    let mut output = dto::GetObjectOutput {
        body: Some(body),
        content_length: Some(to_i64(len)),
        content_range,
        accept_ranges: Some("bytes".into()),
        e_tag: strong(meta.etag.clone()),
        last_modified: timestamp(meta.last_modified),
        metadata: response_metadata(&meta.metadata),
        ..Default::default()
    };
    set_object_headers!(output, &meta.headers);
    output
}

/// The store's condition for a write with these headers. S3 supports `If-None-Match: *` only,
/// and `If-Match` with an ETag (`*`: whatever exists now).
async fn put_condition(
    store: &DynStore,
    key: &str,
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
) -> S3Result<PutCondition> {
    match (if_match, if_none_match) {
        (None, None) => Ok(PutCondition::None),
        (Some(_), Some(_)) => Err(s3_err(
            S3ErrorCode::NotImplemented,
            "If-Match and If-None-Match cannot be combined on a write",
        )),
        (None, Some(ETagCondition::Any)) => Ok(PutCondition::IfNoneMatch),
        (None, Some(ETagCondition::ETag(_))) => Err(s3_err(
            S3ErrorCode::NotImplemented,
            "If-None-Match on a write supports only '*'",
        )),
        (Some(cond @ ETagCondition::ETag(_)), None) => {
            // One strong tag is the store's condition as it is; a list (or a weak tag, which
            // If-Match never matches) is checked against the current ETag, which the store's
            // condition then pins.
            let tags = condition_tags(cond).unwrap_or_default();
            if let [(false, etag)] = tags.as_slice() {
                return Ok(PutCondition::IfMatch(etag.clone()));
            }
            let meta = store.head(key).await.map_err(to_s3)?;
            if !etag_matches(cond, &meta.etag, Comparison::Strong) {
                return Err(s3_err(
                    S3ErrorCode::PreconditionFailed,
                    "At least one of the pre-conditions you specified did not hold",
                ));
            }
            Ok(PutCondition::IfMatch(meta.etag))
        }
        (Some(ETagCondition::Any), None) => match store.head(key).await {
            Ok(meta) => Ok(PutCondition::IfMatch(meta.etag)),
            Err(e) => Err(to_s3(e)),
        },
    }
}

fn user_metadata(metadata: Option<HashMap<String, String>>) -> BTreeMap<String, String> {
    metadata
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect()
}

/// The user metadata clients see: Rivulet's own names (the writer id of objects committed by
/// fs-core's writer, the mark of an append's stand-in) are not theirs.
fn response_metadata(metadata: &BTreeMap<String, String>) -> Option<HashMap<String, String>> {
    let shown: HashMap<String, String> = clients_metadata(metadata).collect();
    (!shown.is_empty()).then_some(shown)
}

fn clients_metadata(
    metadata: &BTreeMap<String, String>,
) -> impl Iterator<Item = (String, String)> + '_ {
    metadata
        .iter()
        .filter(|(k, _)| !fs_core::writer::is_internal_metadata(k))
        .map(|(k, v)| (k.clone(), v.clone()))
}

/// A GET's range for the store (end exclusive; fs-core clamps the end to the size), and whether
/// it needs the object's size first (a suffix range).
fn store_range(range: Option<&dto::Range>, size: Option<u64>) -> S3Result<Option<Range<u64>>> {
    match (range, size) {
        (None, _) => Ok(None),
        (Some(r), Some(size)) => Ok(Some(satisfiable(r, size)?)),
        (Some(dto::Range::Int { first, last }), None) => {
            let end = last.map_or(u64::MAX, |l| l.saturating_add(1));
            if end <= *first {
                return Err(S3Error::new(S3ErrorCode::InvalidRange));
            }
            Ok(Some(*first..end))
        }
        // A suffix range needs the size; callers head first.
        (Some(dto::Range::Suffix { .. }), None) => Err(S3Error::new(S3ErrorCode::InternalError)),
    }
}

/// The bytes `range` selects of an object of `size` bytes; `416 InvalidRange` if it selects none.
/// An empty object has no byte to select: any range of it is unsatisfiable (RFC 9110, 14.1.1;
/// s3s would take a suffix range of it as the empty range, answered as `bytes 0-0/0`).
fn satisfiable(range: &dto::Range, size: u64) -> S3Result<Range<u64>> {
    if size == 0 {
        return Err(unsatisfiable());
    }
    range.check(size).map_err(|_| unsatisfiable())
}

fn unsatisfiable() -> S3Error {
    s3_err(
        S3ErrorCode::InvalidRange,
        "The requested range is not satisfiable",
    )
}

/// A copy's `x-amz-copy-source-range: bytes=first-last` (inclusive) as an end-exclusive range
/// inside an object of `size` bytes; anything else is `InvalidArgument`, outside is
/// `InvalidRange`.
fn copy_range(header: Option<&str>, size: u64) -> S3Result<Range<u64>> {
    let Some(header) = header else {
        return Ok(0..size);
    };
    let invalid = || {
        s3_err(
            S3ErrorCode::InvalidArgument,
            "The x-amz-copy-source-range value must be of the form bytes=first-last",
        )
    };
    let spec = header.trim().strip_prefix("bytes=").ok_or_else(invalid)?;
    let (first, last) = spec.split_once('-').ok_or_else(invalid)?;
    let first: u64 = first.trim().parse().map_err(|_| invalid())?;
    let last: u64 = last.trim().parse().map_err(|_| invalid())?;
    if first > last || last >= size {
        return Err(s3_err(
            S3ErrorCode::InvalidRange,
            format!("The copy range {first}-{last} is outside the source's {size} bytes"),
        ));
    }
    Ok(first..last + 1)
}

fn part_number(n: i32) -> S3Result<u32> {
    u32::try_from(n)
        .ok()
        .filter(|n| (1..=limits::MAX_PART_NUMBER).contains(n))
        .ok_or_else(|| {
            s3_err(
                S3ErrorCode::InvalidArgument,
                "Part number must be an integer between 1 and 10000, inclusive",
            )
        })
}

/// Refuses a version id other than `null`. The gateway's buckets are unversioned: the current
/// object is the only version, its id `null`, as S3 answers for an unversioned bucket. Any other
/// id names a version that does not exist, and must not be served (or deleted) as the current
/// object.
fn unversioned(version_id: Option<&str>) -> S3Result<()> {
    match version_id {
        None | Some("null") => Ok(()),
        Some(_) => Err(s3_err(
            S3ErrorCode::InvalidArgument,
            "Invalid version id specified: the bucket is unversioned, its only version id is null",
        )),
    }
}

fn max_keys(requested: Option<i32>) -> S3Result<usize> {
    match requested {
        None => Ok(MAX_KEYS),
        Some(n) if n < 0 => Err(s3_err(
            S3ErrorCode::InvalidArgument,
            "max-keys must not be negative",
        )),
        Some(n) => Ok(usize::try_from(n).unwrap_or(MAX_KEYS).min(MAX_KEYS)),
    }
}

/// How listed keys are written: percent-encoded for `encoding-type=url`, else as they are.
fn key_encoder(encoding: Option<&dto::EncodingType>) -> S3Result<fn(&str) -> String> {
    match encoding {
        None => Ok(str::to_string),
        Some(e) if e.as_str() == dto::EncodingType::URL => Ok(url_encode),
        Some(e) => Err(s3_err(
            S3ErrorCode::InvalidArgument,
            format!(
                "Invalid Encoding Method specified in Request: {}",
                e.as_str()
            ),
        )),
    }
}

fn listed_objects(page: &listing::Page, encode: &dyn Fn(&str) -> String) -> Vec<dto::Object> {
    page.objects
        .iter()
        .map(|o| dto::Object {
            key: Some(encode(&o.key)),
            size: Some(to_i64(o.size)),
            // s3s-fs lists no ETags; S3 clients expect the element, so an empty one is kept out.
            e_tag: (!o.etag.is_empty()).then(|| ETag::Strong(o.etag.clone())),
            last_modified: Some(Timestamp::from(o.last_modified.unwrap_or(UNIX_EPOCH))),
            storage_class: Some(dto::ObjectStorageClass::from_static(
                dto::ObjectStorageClass::STANDARD,
            )),
            ..Default::default()
        })
        .collect()
}

fn listed_prefixes(
    page: &listing::Page,
    encode: &dyn Fn(&str) -> String,
) -> Vec<dto::CommonPrefix> {
    page.common_prefixes
        .iter()
        .map(|p| dto::CommonPrefix {
            prefix: Some(encode(p)),
        })
        .collect()
}

#[async_trait::async_trait]
impl S3 for GatewayService {
    async fn list_buckets(
        &self,
        _req: S3Request<dto::ListBucketsInput>,
    ) -> S3Result<S3Response<dto::ListBucketsOutput>> {
        let buckets = self
            .buckets
            .list()
            .await?
            .into_iter()
            .map(|b| dto::Bucket {
                name: Some(b.name),
                creation_date: Some(Timestamp::from(b.created.unwrap_or(UNIX_EPOCH))),
                bucket_region: Some(self.region.clone()),
            })
            .collect();
        Ok(S3Response::new(dto::ListBucketsOutput {
            buckets: Some(buckets),
            owner: Some(dto::Owner {
                display_name: Some("rivulet".into()),
                id: Some("rivulet".into()),
            }),
            ..Default::default()
        }))
    }

    async fn create_bucket(
        &self,
        req: S3Request<dto::CreateBucketInput>,
    ) -> S3Result<S3Response<dto::CreateBucketOutput>> {
        // A gateway serves one region: a bucket asked for in another would not be there, and
        // S3 refuses such a request the same way.
        let constraint = req
            .input
            .create_bucket_configuration
            .as_ref()
            .and_then(|c| c.location_constraint.as_ref());
        if let Some(constraint) = constraint
            && constraint.as_str() != self.region
        {
            return Err(s3_err(
                S3ErrorCode::IllegalLocationConstraintException,
                format!(
                    "The {} location constraint is incompatible with this gateway's region, {} \
                     (its --region)",
                    constraint.as_str(),
                    self.region
                ),
            ));
        }
        self.buckets.create(&req.input.bucket).await?;
        Ok(S3Response::new(dto::CreateBucketOutput {
            location: Some(format!("/{}", req.input.bucket)),
        }))
    }

    async fn delete_bucket(
        &self,
        req: S3Request<dto::DeleteBucketInput>,
    ) -> S3Result<S3Response<dto::DeleteBucketOutput>> {
        self.buckets.delete(&req.input.bucket).await?;
        Ok(S3Response::new(dto::DeleteBucketOutput::default()))
    }

    async fn head_bucket(
        &self,
        req: S3Request<dto::HeadBucketInput>,
    ) -> S3Result<S3Response<dto::HeadBucketOutput>> {
        // Asked of the store: HeadBucket is how clients check, so it sees changes made behind
        // the gateway's back at once.
        if !self.buckets.exists_in_store(&req.input.bucket).await? {
            return Err(no_such_bucket(&req.input.bucket));
        }
        Ok(S3Response::new(dto::HeadBucketOutput {
            bucket_region: Some(self.region.clone()),
            ..Default::default()
        }))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<dto::GetBucketLocationInput>,
    ) -> S3Result<S3Response<dto::GetBucketLocationOutput>> {
        self.buckets.require(&req.input.bucket).await?;
        // S3 reports us-east-1 as no constraint at all.
        let location_constraint = (self.region != "us-east-1")
            .then(|| dto::BucketLocationConstraint::from(self.region.clone()));
        Ok(S3Response::new(dto::GetBucketLocationOutput {
            location_constraint,
        }))
    }

    async fn put_object(
        &self,
        req: S3Request<dto::PutObjectInput>,
    ) -> S3Result<S3Response<dto::PutObjectOutput>> {
        let input = req.input;
        if let Some(offset) = input.write_offset_bytes {
            return self.append_object(input, offset).await;
        }
        let key = self.existing_key(&input.bucket, &input.key).await?;
        let part_size = self.streaming.part_size;
        if let Some(size) = self.relayed_put_size(input.content_length)
            && size > part_size as u64
        {
            return self.put_relayed(key, size, input).await;
        }
        let mut reader = BodyReader::new(
            input.body,
            input.content_length,
            input.content_md5.as_deref(),
        );
        let first = reader.read_chunk(part_size).await?;
        let second = if first.len() == part_size {
            reader.read_chunk(part_size).await?
        } else {
            Bytes::new()
        };
        let opts = PutOptions {
            condition: PutCondition::None,
            headers: request_headers!(input),
            metadata: user_metadata(input.metadata),
        };
        // A body of more than one part is streamed into a multipart upload of the store (see
        // docs/gateway.md: its ETag is then the store's multipart ETag); the key is locked only
        // to complete it.
        let streamed = if second.is_empty() {
            reader.check_md5(input.content_md5.as_deref())?;
            None
        } else {
            let upload = StreamedUpload::write(
                &self.store,
                &key,
                opts.clone(),
                vec![first.clone(), second],
                &mut reader,
                self.streaming,
            )
            .await?;
            if let Err(e) = reader.check_md5(input.content_md5.as_deref()) {
                upload.abort().await;
                return Err(e);
            }
            Some(upload)
        };
        // An open appendable object is committed first, then replaced: held until the PUT is
        // done, so that no append lands in between.
        let prepared = self
            .lock_for_put(&key, input.if_match.as_ref(), input.if_none_match.as_ref())
            .await;
        let (_key_lock, condition) = match prepared {
            Ok(prepared) => prepared,
            Err(e) => {
                if let Some(upload) = &streamed {
                    upload.abort().await;
                }
                return Err(e);
            }
        };
        let result = match streamed {
            Some(upload) => upload.complete(condition).await?,
            None => self
                .store
                .put(&key, first, PutOptions { condition, ..opts })
                .await
                .map_err(to_s3)?,
        };
        Ok(S3Response::new(dto::PutObjectOutput {
            e_tag: strong(result.etag),
            ..Default::default()
        }))
    }

    async fn get_object(
        &self,
        req: S3Request<dto::GetObjectInput>,
    ) -> S3Result<S3Response<dto::GetObjectOutput>> {
        let mut input = req.input;
        let overrides = take_overrides!(input);
        let mut response = self.read_object(input).await?;
        apply_overrides!(response.output, overrides);
        Ok(response)
    }

    async fn head_object(
        &self,
        req: S3Request<dto::HeadObjectInput>,
    ) -> S3Result<S3Response<dto::HeadObjectOutput>> {
        let mut input = req.input;
        let overrides = take_overrides!(input);
        let key = self.buckets.store_key(&input.bucket, &input.key)?;
        unversioned(input.version_id.as_deref())?;
        let meta = match self.appends.view(&key).await? {
            Some(view) => view.meta(&key),
            None => match self.store.head(&key).await {
                Ok(meta) => meta,
                Err(e) => return Err(self.object_error(&input.bucket, e).await),
            },
        };
        Conditions {
            if_match: input.if_match.as_ref(),
            if_none_match: input.if_none_match.as_ref(),
            if_modified_since: input.if_modified_since.as_ref(),
            if_unmodified_since: input.if_unmodified_since.as_ref(),
        }
        .evaluate(&meta)?;
        let mut output = dto::HeadObjectOutput {
            content_length: Some(to_i64(meta.size)),
            accept_ranges: Some("bytes".into()),
            e_tag: strong(meta.etag.clone()),
            last_modified: timestamp(meta.last_modified),
            metadata: response_metadata(&meta.metadata),
            ..Default::default()
        };
        set_object_headers!(output, &meta.headers);
        apply_overrides!(output, overrides);
        Ok(S3Response::new(output))
    }

    async fn delete_object(
        &self,
        req: S3Request<dto::DeleteObjectInput>,
    ) -> S3Result<S3Response<dto::DeleteObjectOutput>> {
        let input = &req.input;
        unversioned(input.version_id.as_deref())?;
        let key = self.existing_key(&input.bucket, &input.key).await?;
        // Sealed first: the delete then removes the committed object (see docs/gateway.md).
        let _key_lock = self.appends.lock_sealed(&key).await?;
        // A conditional delete checks the object under the key's lock, so no write through
        // the gateway lands between the check and the delete.
        let if_match = self.as_sealed(&key, input.if_match.as_ref());
        let condition = DeleteCondition {
            etag: if_match.as_ref(),
            size: input.if_match_size,
            last_modified: input.if_match_last_modified_time.as_ref(),
        };
        if condition.any() {
            let meta = match self.store.head(&key).await {
                Ok(meta) => meta,
                Err(e) => return Err(self.object_error(&input.bucket, e).await),
            };
            condition.check(&meta)?;
        }
        let deleted = self.store.delete(&key).await.map_err(to_s3);
        // A bucket without a marker vanishes with its last object.
        self.buckets.forget(&req.input.bucket);
        deleted?;
        Ok(S3Response::new(dto::DeleteObjectOutput::default()))
    }

    async fn delete_objects(
        &self,
        req: S3Request<dto::DeleteObjectsInput>,
    ) -> S3Result<S3Response<dto::DeleteObjectsOutput>> {
        BodyDigest::check(&req)?;
        let input = req.input;
        self.buckets.require(&input.bucket).await?;
        let objects = input.delete.objects;
        if objects.len() > 1000 {
            return Err(s3_err(
                S3ErrorCode::MalformedXML,
                "A DeleteObjects request names at most 1000 keys",
            ));
        }
        let quiet = input.delete.quiet.unwrap_or(false);
        let mut errors = Vec::new();
        let mut keys: Vec<String> = Vec::new();
        let mut names: Vec<String> = Vec::new();
        let mut conditional = Vec::new();
        for object in objects {
            // A bad key (or version id) fails alone, as S3 reports per-key errors.
            let checked = unversioned(object.version_id.as_deref())
                .and_then(|()| self.buckets.store_key(&input.bucket, &object.key));
            match checked {
                Ok(full) => {
                    if object.e_tag.is_some()
                        || object.size.is_some()
                        || object.last_modified_time.is_some()
                    {
                        conditional.push((
                            full.clone(),
                            object.e_tag.map(ETagCondition::ETag),
                            object.size,
                            object.last_modified_time,
                        ));
                    }
                    keys.push(full);
                    names.push(object.key);
                }
                Err(e) => errors.push(dto::Error {
                    code: Some(e.code().as_str().to_string()),
                    key: Some(object.key),
                    message: e.message().map(str::to_string),
                    version_id: object.version_id,
                }),
            }
        }
        // Open appendable objects are sealed first (and their keys held until the delete is
        // done); one that cannot be sealed is reported and kept.
        let (_key_locks, mut unsealed) = self.appends.lock_sealed_many(&keys).await;
        // Objects named with conditions are checked under their keys' locks; one whose
        // condition does not hold (or that is missing) is reported and kept.
        for (full, etag, size, last_modified) in &conditional {
            if unsealed.contains_key(full) {
                continue;
            }
            let etag = self.as_sealed(full, etag.as_ref());
            let condition = DeleteCondition {
                etag: etag.as_ref(),
                size: *size,
                last_modified: last_modified.as_ref(),
            };
            let checked = match self.store.head(full).await {
                Ok(meta) => condition.check(&meta),
                Err(e) => Err(to_s3(e)),
            };
            if let Err(e) = checked {
                unsealed.insert(full.clone(), e);
            }
        }
        if !unsealed.is_empty() {
            let (kept_keys, kept_names): (Vec<String>, Vec<String>) = keys
                .into_iter()
                .zip(names)
                .filter(|(full, name)| match unsealed.get(full) {
                    Some(e) => {
                        errors.push(dto::Error {
                            code: Some(e.code().as_str().to_string()),
                            key: Some(name.clone()),
                            message: e.message().map(str::to_string),
                            version_id: None,
                        });
                        false
                    }
                    None => true,
                })
                .unzip();
            keys = kept_keys;
            names = kept_names;
        }
        let mut deleted = Vec::new();
        let result = self.store.delete_many(&keys).await;
        // A bucket without a marker vanishes with its last object.
        self.buckets.forget(&input.bucket);
        match result {
            Ok(()) => {
                if !quiet {
                    deleted = names
                        .into_iter()
                        .map(|k| dto::DeletedObject {
                            key: Some(k),
                            ..Default::default()
                        })
                        .collect();
                }
            }
            Err(e) => {
                // The store does not say which keys went: report every one as failed, which a
                // client may retry safely (deleting a missing key succeeds).
                let err = to_s3(e);
                errors.extend(names.into_iter().map(|k| dto::Error {
                    code: Some(err.code().as_str().to_string()),
                    key: Some(k),
                    message: err.message().map(str::to_string),
                    version_id: None,
                }));
            }
        }
        Ok(S3Response::new(dto::DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: Some(errors),
            ..Default::default()
        }))
    }

    async fn copy_object(
        &self,
        req: S3Request<dto::CopyObjectInput>,
    ) -> S3Result<S3Response<dto::CopyObjectOutput>> {
        let input = req.input;
        let dest = self.existing_key(&input.bucket, &input.key).await?;
        self.seal_copy_source(&input.copy_source, &dest).await?;
        let _key_lock = self.appends.lock_sealed(&dest).await?;
        let (source, meta) = self
            .copy_source(
                &input.copy_source,
                input.copy_source_if_match.as_ref(),
                input.copy_source_if_none_match.as_ref(),
                input.copy_source_if_modified_since.as_ref(),
                input.copy_source_if_unmodified_since.as_ref(),
            )
            .await?;
        let replace = match input.metadata_directive.as_ref().map(|d| d.as_str()) {
            None | Some(dto::MetadataDirective::COPY) => false,
            Some(dto::MetadataDirective::REPLACE) => true,
            Some(other) => {
                return Err(s3_err(
                    S3ErrorCode::InvalidArgument,
                    format!("Unknown metadata directive: {other}"),
                ));
            }
        };
        if source == dest && !replace {
            return Err(s3_err(
                S3ErrorCode::InvalidRequest,
                "This copy request is illegal because it is trying to copy an object to itself \
                 without changing the object's metadata",
            ));
        }
        if meta.size > MAX_OBJECT_SIZE {
            return Err(s3_err(
                S3ErrorCode::InvalidRequest,
                "The source is larger than 5 GiB, the most CopyObject copies: use UploadPartCopy",
            ));
        }
        let got = self.store.get(&source, None).await.map_err(to_s3)?;
        // Copy the version whose conditions were checked, not one written in between.
        if got.meta.etag != meta.etag {
            return Err(s3_err(
                S3ErrorCode::PreconditionFailed,
                "The source object changed while it was copied",
            ));
        }
        let opts = if replace {
            PutOptions {
                condition: PutCondition::None,
                headers: request_headers!(input),
                metadata: user_metadata(input.metadata),
            }
        } else {
            PutOptions {
                condition: PutCondition::None,
                headers: got.meta.headers.clone(),
                metadata: clients_metadata(&got.meta.metadata).collect(),
            }
        };
        let result = self.store.put(&dest, got.body, opts).await.map_err(to_s3)?;
        Ok(S3Response::new(dto::CopyObjectOutput {
            copy_object_result: Some(dto::CopyObjectResult {
                e_tag: strong(result.etag),
                last_modified: Some(Timestamp::from(SystemTime::now())),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<dto::ListObjectsV2Input>,
    ) -> S3Result<S3Response<dto::ListObjectsV2Output>> {
        let input = req.input;
        self.buckets.require(&input.bucket).await?;
        let encode = key_encoder(input.encoding_type.as_ref())?;
        let max = max_keys(input.max_keys)?;
        let cursor = match &input.continuation_token {
            Some(token) => Cursor::decode(token)?,
            None => Cursor {
                store_token: None,
                after: input.start_after.clone().filter(|s| !s.is_empty()),
            },
        };
        let page = listing::list_bucket(
            &self.store,
            &input.bucket,
            Query {
                prefix: input.prefix.clone().unwrap_or_default(),
                delimiter: input.delimiter.clone(),
                max_keys: max,
                cursor,
            },
        )
        .await?;
        let mut page = page;
        self.overlay_open(&input.bucket, &mut page);
        let contents = listed_objects(&page, &encode);
        let common_prefixes = listed_prefixes(&page, &encode);
        let key_count = i32::try_from(contents.len() + common_prefixes.len()).unwrap_or(i32::MAX);
        Ok(S3Response::new(dto::ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: Some(encode(input.prefix.as_deref().unwrap_or_default())),
            delimiter: input.delimiter.as_deref().map(encode),
            start_after: input.start_after.as_deref().map(encode),
            max_keys: Some(i32::try_from(max).unwrap_or(i32::MAX)),
            key_count: Some(key_count),
            continuation_token: input.continuation_token,
            is_truncated: Some(page.next.is_some()),
            next_continuation_token: page.next.as_ref().map(Cursor::encode),
            contents: Some(contents),
            common_prefixes: Some(common_prefixes),
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }

    async fn list_objects(
        &self,
        req: S3Request<dto::ListObjectsInput>,
    ) -> S3Result<S3Response<dto::ListObjectsOutput>> {
        let input = req.input;
        self.buckets.require(&input.bucket).await?;
        let encode = key_encoder(input.encoding_type.as_ref())?;
        let max = max_keys(input.max_keys)?;
        let page = self
            .list_after_marker(
                &input.bucket,
                input.prefix.as_deref(),
                input.delimiter.as_deref(),
                max,
                input.marker.as_deref(),
            )
            .await?;
        let truncated = page.next.is_some();
        Ok(S3Response::new(dto::ListObjectsOutput {
            name: Some(input.bucket),
            prefix: Some(encode(input.prefix.as_deref().unwrap_or_default())),
            delimiter: input.delimiter.as_deref().map(encode),
            marker: Some(encode(input.marker.as_deref().unwrap_or_default())),
            max_keys: Some(i32::try_from(max).unwrap_or(i32::MAX)),
            is_truncated: Some(truncated),
            // Always given when truncated (S3 gives it only with a delimiter; clients use it
            // when present and the last key otherwise, which is the same name).
            next_marker: if truncated {
                page.last_name.as_deref().map(encode)
            } else {
                None
            },
            contents: Some(listed_objects(&page, &encode)),
            common_prefixes: Some(listed_prefixes(&page, &encode)),
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }

    /// The answer of an unversioned bucket, as S3 gives it: every object once, as its only
    /// version (`VersionId` `null`, latest), no delete markers; paged like ListObjects by key.
    async fn list_object_versions(
        &self,
        req: S3Request<dto::ListObjectVersionsInput>,
    ) -> S3Result<S3Response<dto::ListObjectVersionsOutput>> {
        let input = req.input;
        self.buckets.require(&input.bucket).await?;
        let key_marker = input.key_marker.clone().filter(|s| !s.is_empty());
        match input.version_id_marker.as_deref() {
            None | Some("") | Some("null") => {}
            Some(_) => {
                return Err(s3_err(
                    S3ErrorCode::InvalidArgument,
                    "Invalid version id specified: the bucket is unversioned, its only version id is null",
                ));
            }
        }
        if key_marker.is_none()
            && input
                .version_id_marker
                .as_deref()
                .is_some_and(|v| !v.is_empty())
        {
            return Err(s3_err(
                S3ErrorCode::InvalidArgument,
                "A version-id marker cannot be specified without a key marker.",
            ));
        }
        let encode = key_encoder(input.encoding_type.as_ref())?;
        let max = max_keys(input.max_keys)?;
        let page = self
            .list_after_marker(
                &input.bucket,
                input.prefix.as_deref(),
                input.delimiter.as_deref(),
                max,
                key_marker.as_deref(),
            )
            .await?;
        let truncated = page.next.is_some();
        let versions = listed_objects(&page, &encode)
            .into_iter()
            .map(|o| dto::ObjectVersion {
                key: o.key,
                size: o.size,
                e_tag: o.e_tag,
                last_modified: o.last_modified,
                is_latest: Some(true),
                version_id: Some("null".to_string()),
                storage_class: Some(dto::ObjectVersionStorageClass::from_static(
                    dto::ObjectVersionStorageClass::STANDARD,
                )),
                ..Default::default()
            })
            .collect();
        Ok(S3Response::new(dto::ListObjectVersionsOutput {
            name: Some(input.bucket),
            prefix: Some(encode(input.prefix.as_deref().unwrap_or_default())),
            delimiter: input.delimiter.as_deref().map(encode),
            key_marker: Some(encode(input.key_marker.as_deref().unwrap_or_default())),
            version_id_marker: Some(input.version_id_marker.unwrap_or_default()),
            max_keys: Some(i32::try_from(max).unwrap_or(i32::MAX)),
            is_truncated: Some(truncated),
            next_key_marker: if truncated {
                page.last_name.as_deref().map(encode)
            } else {
                None
            },
            next_version_id_marker: truncated.then(|| "null".to_string()),
            versions: Some(versions),
            common_prefixes: Some(listed_prefixes(&page, &encode)),
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<dto::CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<dto::CreateMultipartUploadOutput>> {
        let input = req.input;
        let key = self.existing_key(&input.bucket, &input.key).await?;
        let opts = PutOptions {
            condition: PutCondition::None,
            headers: request_headers!(input),
            metadata: user_metadata(input.metadata),
        };
        let upload_id = self
            .store
            .create_multipart(&key, opts)
            .await
            .map_err(to_s3)?;
        Ok(S3Response::new(dto::CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(upload_id),
            ..Default::default()
        }))
    }

    async fn upload_part(
        &self,
        req: S3Request<dto::UploadPartInput>,
    ) -> S3Result<S3Response<dto::UploadPartOutput>> {
        let input = req.input;
        let key = self.existing_key(&input.bucket, &input.key).await?;
        let number = part_number(input.part_number)?;
        if let Some(size) = self.relayed_size(input.content_length) {
            // Relayed as it arrives: one copy less, and no whole part (up to 5 GiB) in memory.
            let (relay, outcome) = Relay::new(input.body, size, input.content_md5.as_deref())?;
            let etag = self
                .store
                .upload_part_stream(&key, &input.upload_id, number, size, Box::pin(relay))
                .await
                .map_err(|e| outcome.error(e))?;
            return Ok(S3Response::new(dto::UploadPartOutput {
                e_tag: strong(etag),
                ..Default::default()
            }));
        }
        // A part is one store part, which a store that does not stream bodies takes whole.
        let mut reader = BodyReader::new(
            input.body,
            input.content_length,
            input.content_md5.as_deref(),
        );
        let body = reader.read_all().await?;
        reader.check_md5(input.content_md5.as_deref())?;
        let etag = self
            .store
            .upload_part(&key, &input.upload_id, number, body)
            .await
            .map_err(to_s3)?;
        Ok(S3Response::new(dto::UploadPartOutput {
            e_tag: strong(etag),
            ..Default::default()
        }))
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<dto::UploadPartCopyInput>,
    ) -> S3Result<S3Response<dto::UploadPartCopyOutput>> {
        let input = req.input;
        let key = self.existing_key(&input.bucket, &input.key).await?;
        let number = part_number(input.part_number)?;
        self.seal_copy_source(&input.copy_source, "").await?;
        let (source, meta) = self
            .copy_source(
                &input.copy_source,
                input.copy_source_if_match.as_ref(),
                input.copy_source_if_none_match.as_ref(),
                input.copy_source_if_modified_since.as_ref(),
                input.copy_source_if_unmodified_since.as_ref(),
            )
            .await?;
        // The range is checked here against the size just read, because some stores clamp an
        // out-of-range copy instead of refusing it.
        let range = copy_range(input.copy_source_range.as_deref(), meta.size)?;
        if range.end - range.start > MAX_OBJECT_SIZE {
            return Err(s3_err(
                S3ErrorCode::InvalidArgument,
                "A copied part is at most 5 GiB: give x-amz-copy-source-range",
            ));
        }
        // Pinning the ETag read above makes the copy fail rather than mix in a newer version.
        let etag = self
            .store
            .upload_part_copy(
                &key,
                &input.upload_id,
                number,
                &source,
                range,
                Some(&meta.etag),
            )
            .await
            .map_err(to_s3)?;
        Ok(S3Response::new(dto::UploadPartCopyOutput {
            copy_part_result: Some(dto::CopyPartResult {
                e_tag: strong(etag),
                last_modified: Some(Timestamp::from(SystemTime::now())),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<dto::CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<dto::CompleteMultipartUploadOutput>> {
        BodyDigest::check(&req)?;
        let input = req.input;
        let key = self.existing_key(&input.bucket, &input.key).await?;
        let parts = input
            .multipart_upload
            .and_then(|m| m.parts)
            .unwrap_or_default()
            .into_iter()
            .map(|p| {
                let (Some(n), Some(etag)) = (p.part_number, p.e_tag) else {
                    return Err(s3_err(
                        S3ErrorCode::InvalidPart,
                        "Every part needs a PartNumber and an ETag",
                    ));
                };
                Ok(StoreCompletedPart {
                    number: part_number(n)?,
                    etag: etag.value().to_string(),
                })
            })
            .collect::<S3Result<Vec<_>>>()?;
        if parts.is_empty() {
            return Err(s3_err(
                S3ErrorCode::MalformedXML,
                "You must specify at least one part",
            ));
        }
        // The upload replaces the key's open appendable object: sealed first, then replaced.
        let _key_lock = self.appends.lock_sealed(&key).await?;
        let if_match = self.as_sealed(&key, input.if_match.as_ref());
        let condition = put_condition(
            &self.store,
            &key,
            if_match.as_ref(),
            input.if_none_match.as_ref(),
        )
        .await?;
        let result = self
            .store
            .complete_multipart(&key, &input.upload_id, &parts, condition)
            .await
            .map_err(to_s3)?;
        Ok(S3Response::new(dto::CompleteMultipartUploadOutput {
            bucket: Some(input.bucket.clone()),
            key: Some(input.key.clone()),
            location: Some(format!("/{}/{}", input.bucket, input.key)),
            e_tag: strong(result.etag),
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<dto::AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<dto::AbortMultipartUploadOutput>> {
        let input = req.input;
        let key = self.existing_key(&input.bucket, &input.key).await?;
        self.store
            .abort_multipart(&key, &input.upload_id)
            .await
            .map_err(to_s3)?;
        Ok(S3Response::new(dto::AbortMultipartUploadOutput::default()))
    }

    async fn list_parts(
        &self,
        req: S3Request<dto::ListPartsInput>,
    ) -> S3Result<S3Response<dto::ListPartsOutput>> {
        let input = req.input;
        let key = self.existing_key(&input.bucket, &input.key).await?;
        let max = match input.max_parts {
            None => 1000,
            Some(n) if n <= 0 => {
                return Err(s3_err(
                    S3ErrorCode::InvalidArgument,
                    "max-parts must be a positive integer",
                ));
            }
            Some(n) => usize::try_from(n).unwrap_or(1000).min(1000),
        };
        let marker = match input.part_number_marker {
            None | Some(0) => None,
            Some(n) => Some(u32::try_from(n).map_err(|_| {
                s3_err(
                    S3ErrorCode::InvalidArgument,
                    "part-number-marker must not be negative",
                )
            })?),
        };
        let page = self
            .store
            .list_parts(&key, &input.upload_id, marker)
            .await
            .map_err(to_s3)?;
        let mut parts = page.parts;
        parts.sort_by_key(|p| p.number);
        // A smaller max-parts than the store's page cuts it; the next page starts after the last
        // part shown.
        let truncated = parts.len() > max || page.next_marker.is_some();
        parts.truncate(max);
        let next = if truncated {
            parts.last().map(|p| p.number)
        } else {
            None
        };
        Ok(S3Response::new(dto::ListPartsOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(input.upload_id),
            max_parts: Some(i32::try_from(max).unwrap_or(1000)),
            part_number_marker: input.part_number_marker,
            is_truncated: Some(truncated),
            next_part_number_marker: next.and_then(|n| i32::try_from(n).ok()),
            parts: Some(
                parts
                    .into_iter()
                    .map(|p| dto::Part {
                        part_number: i32::try_from(p.number).ok(),
                        e_tag: p.etag.map(ETag::Strong),
                        size: Some(to_i64(p.size)),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }))
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<dto::ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<dto::ListMultipartUploadsOutput>> {
        let input = req.input;
        self.buckets.require(&input.bucket).await?;
        let root = bucket_prefix(&input.bucket);
        let max = match input.max_uploads {
            None => 1000,
            Some(n) if n <= 0 => {
                return Err(s3_err(
                    S3ErrorCode::InvalidArgument,
                    "max-uploads must be a positive integer",
                ));
            }
            Some(n) => usize::try_from(n).unwrap_or(1000).min(1000),
        };
        let mut marker = match input.key_marker.as_deref().filter(|k| !k.is_empty()) {
            Some(k) => Some(UploadsMarker {
                key: self.buckets.store_key(&input.bucket, k)?,
                upload_id: input.upload_id_marker.clone().unwrap_or_default(),
            }),
            None => None,
        };
        // A key-marker alone skips every upload of that key (S3); the store's marker orders by
        // (key, upload id), where an empty id would keep them.
        let skip_key = marker
            .as_ref()
            .filter(|m| m.upload_id.is_empty())
            .map(|m| m.key.clone());
        let prefix = format!("{root}{}", input.prefix.as_deref().unwrap_or_default());
        let mut uploads = Vec::new();
        let mut truncated = false;
        // Gather pages until `max` uploads are found or the store has no more.
        loop {
            let page = self
                .store
                .list_multipart_uploads(&prefix, marker.clone())
                .await
                .map_err(to_s3)?;
            uploads.extend(
                page.uploads
                    .into_iter()
                    .filter(|u| Some(&u.key) != skip_key.as_ref()),
            );
            if uploads.len() > max {
                truncated = true;
                break;
            }
            match page.next {
                Some(next) if Some(&next) != marker.as_ref() => marker = Some(next),
                _ => break,
            }
            if uploads.len() == max {
                truncated = true;
                break;
            }
        }
        uploads.truncate(max);
        let (next_key, next_id) = match (truncated, uploads.last()) {
            (true, Some(u)) => (
                u.key.strip_prefix(&root).map(str::to_string),
                Some(u.upload_id.clone()),
            ),
            _ => (None, None),
        };
        let listed = uploads
            .into_iter()
            .filter_map(|u| {
                Some(dto::MultipartUpload {
                    key: Some(u.key.strip_prefix(&root)?.to_string()),
                    upload_id: Some(u.upload_id),
                    initiated: timestamp(u.initiated),
                    ..Default::default()
                })
            })
            .collect();
        Ok(S3Response::new(dto::ListMultipartUploadsOutput {
            bucket: Some(input.bucket),
            prefix: input.prefix,
            key_marker: input.key_marker,
            upload_id_marker: input.upload_id_marker,
            max_uploads: Some(i32::try_from(max).unwrap_or(1000)),
            is_truncated: Some(next_key.is_some()),
            next_key_marker: next_key,
            next_upload_id_marker: next_id,
            uploads: Some(listed),
            ..Default::default()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fs_core::store::memory::MemoryStore;
    use futures::StreamExt;
    use std::sync::Arc;

    async fn collect(mut body: StreamingBlob) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        while let Some(chunk) = body.next().await {
            out.extend_from_slice(&chunk.map_err(|e| e.to_string())?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn chunked_bodies_read_the_rest_in_ranges_and_stop_on_a_new_version() {
        let store: DynStore = Arc::new(MemoryStore::new());
        let data: Vec<u8> = (0..100u8).collect();
        let etag = store
            .put("b/k", Bytes::from(data.clone()), PutOptions::default())
            .await
            .unwrap()
            .etag;
        let body = chunked_body(
            store.clone(),
            "b/k".into(),
            etag.clone(),
            Bytes::copy_from_slice(&data[..10]),
            10..95,
            7,
        );
        assert_eq!(collect(body).await.unwrap(), &data[..95]);

        // Replaced between the first chunk and the rest: the body fails instead of mixing.
        store
            .put("b/k", Bytes::from(vec![0u8; 100]), PutOptions::default())
            .await
            .unwrap();
        let body = chunked_body(
            store.clone(),
            "b/k".into(),
            etag,
            Bytes::copy_from_slice(&data[..10]),
            10..100,
            7,
        );
        let err = collect(body).await.unwrap_err();
        assert!(err.contains("changed while it was read"), "{err}");
    }

    #[test]
    fn copy_ranges_are_inclusive_and_checked() {
        assert_eq!(copy_range(Some("bytes=0-9"), 10).unwrap(), 0..10);
        assert_eq!(copy_range(None, 10).unwrap(), 0..10);
        assert_eq!(
            copy_range(Some("bytes=5-10"), 10)
                .unwrap_err()
                .code()
                .as_str(),
            "InvalidRange"
        );
        assert_eq!(
            copy_range(Some("5-6"), 10).unwrap_err().code().as_str(),
            "InvalidArgument"
        );
    }

    #[test]
    fn read_conditions_follow_rfc_9110_order() {
        let meta = ObjectMeta {
            key: "k".into(),
            size: 1,
            etag: "abc".into(),
            last_modified: Some(UNIX_EPOCH + std::time::Duration::from_secs(1000)),
            headers: Default::default(),
            metadata: BTreeMap::new(),
        };
        let same = ETagCondition::ETag(ETag::Strong("abc".into()));
        let other = ETagCondition::ETag(ETag::Strong("xyz".into()));
        let before = Timestamp::from(UNIX_EPOCH + std::time::Duration::from_secs(500));
        let after = Timestamp::from(UNIX_EPOCH + std::time::Duration::from_secs(2000));
        let code = |c: Conditions<'_>| {
            c.evaluate(&meta)
                .err()
                .map(|e| e.code().as_str().to_string())
        };
        let none = || Conditions {
            if_match: None,
            if_none_match: None,
            if_modified_since: None,
            if_unmodified_since: None,
        };
        assert_eq!(code(none()), None);
        assert_eq!(
            code(Conditions {
                if_match: Some(&other),
                ..none()
            })
            .as_deref(),
            Some("PreconditionFailed")
        );
        assert_eq!(
            code(Conditions {
                if_none_match: Some(&same),
                ..none()
            })
            .as_deref(),
            Some("NotModified")
        );
        assert_eq!(
            code(Conditions {
                if_none_match: Some(&other),
                ..none()
            }),
            None
        );
        assert_eq!(
            code(Conditions {
                if_modified_since: Some(&after),
                ..none()
            })
            .as_deref(),
            Some("NotModified")
        );
        assert_eq!(
            code(Conditions {
                if_modified_since: Some(&before),
                ..none()
            }),
            None
        );
        assert_eq!(
            code(Conditions {
                if_unmodified_since: Some(&before),
                ..none()
            })
            .as_deref(),
            Some("PreconditionFailed")
        );
        // If-Match that holds overrides a failing If-Unmodified-Since, as on S3.
        assert_eq!(
            code(Conditions {
                if_match: Some(&same),
                if_unmodified_since: Some(&before),
                ..none()
            }),
            None
        );
        // If-None-Match that does not match overrides If-Modified-Since.
        assert_eq!(
            code(Conditions {
                if_none_match: Some(&other),
                if_modified_since: Some(&after),
                ..none()
            }),
            None
        );
    }
}

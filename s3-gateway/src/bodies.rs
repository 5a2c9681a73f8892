//! Request bodies: read in bounded chunks with their MD5 computed on the way, and PutObject
//! bodies larger than one part streamed into a multipart upload of the store, so that the
//! memory a PUT needs is bounded by a few parts whatever its size. Over a store that streams
//! bodies (S3), a body is instead relayed to the store as it arrives ([`Relay`]), in one request.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::{Bytes, BytesMut};
use fs_core::md5::Md5;
use fs_core::store::{
    CompletedPart, DynStore, PutCondition, PutOptions, PutResult, StoreError, limits,
};
use futures::StreamExt;
use s3s::dto::StreamingBlob;
use s3s::{S3Error, S3ErrorCode, S3Result};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::task::JoinSet;

use crate::errors::{s3_err, to_s3};

/// S3's largest single PUT (and part): 5 GiB.
pub const MAX_OBJECT_SIZE: u64 = limits::MAX_PART_SIZE;

/// The most a body buffer reserves ahead from the declared length.
const MAX_RESERVE: u64 = 64 * 1024 * 1024;

/// A request body read in chunks, with the MD5 of everything read so far.
pub struct BodyReader {
    body: Option<StreamingBlob>,
    /// Bytes received but not yet handed out (a network chunk can straddle two reads).
    pending: Bytes,
    /// The MD5 of what was handed out, when there is a `Content-MD5` to check it against (a
    /// pass over every byte that is spared otherwise).
    md5: Option<Md5>,
    /// Bytes handed out so far.
    total: u64,
    /// The body's declared length, to size buffers (never trusted beyond that).
    declared: Option<u64>,
}

impl BodyReader {
    /// A reader of `body`; `content_md5` is the header the body will be checked against.
    pub fn new(
        body: Option<StreamingBlob>,
        content_length: Option<i64>,
        content_md5: Option<&str>,
    ) -> Self {
        Self {
            body,
            pending: Bytes::new(),
            md5: content_md5.map(|_| Md5::new()),
            total: 0,
            declared: content_length.and_then(|n| u64::try_from(n).ok()),
        }
    }

    /// The next `n` bytes of the body; fewer only at its end (empty once it is all read).
    /// More than [`MAX_OBJECT_SIZE`] in all is `EntityTooLarge`, before the excess is kept.
    pub async fn read_chunk(&mut self, n: usize) -> S3Result<Bytes> {
        let mut buf = BytesMut::new();
        while buf.len() < n {
            if self.pending.is_empty() {
                let Some(body) = self.body.as_mut() else {
                    break;
                };
                match body.next().await {
                    Some(Ok(chunk)) => self.pending = chunk,
                    Some(Err(e)) => {
                        let (code, message) = body_error(&*e);
                        return Err(s3_err(code, message));
                    }
                    None => self.body = None,
                }
                continue;
            }
            let piece = self
                .pending
                .split_to((n - buf.len()).min(self.pending.len()));
            self.account(&piece)?;
            if buf.is_empty() && piece.len() == n {
                // A whole chunk from one network chunk: handed out without a copy.
                return Ok(piece);
            }
            if buf.is_empty() {
                let left = self.declared.map_or(0, |d| d.saturating_sub(self.total));
                // Capped: a declared length is a hint from the client, not a promise.
                let hint = (piece.len() as u64 + left).min(n as u64).min(MAX_RESERVE);
                buf.reserve(hint as usize);
            }
            buf.extend_from_slice(&piece);
        }
        Ok(buf.freeze())
    }

    fn account(&mut self, piece: &[u8]) -> S3Result<()> {
        self.total += piece.len() as u64;
        if self.total > MAX_OBJECT_SIZE {
            return Err(s3_err(
                S3ErrorCode::EntityTooLarge,
                "Your proposed upload exceeds the maximum allowed object size (5 GiB)",
            ));
        }
        if let Some(md5) = &mut self.md5 {
            md5.update(piece);
        }
        Ok(())
    }

    /// The whole (rest of the) body, at most [`MAX_OBJECT_SIZE`] bytes.
    pub async fn read_all(&mut self) -> S3Result<Bytes> {
        // One past the limit, so that an oversize body fails instead of being cut.
        self.read_chunk(MAX_OBJECT_SIZE as usize + 1).await
    }

    /// Checks `Content-MD5` against the MD5 of everything read (see [`check_content_md5`]);
    /// give the header passed to [`BodyReader::new`].
    pub fn check_md5(&self, content_md5: Option<&str>) -> S3Result<()> {
        match &self.md5 {
            Some(md5) => check_content_md5(content_md5, md5.clone().finalize().as_slice()),
            None => check_content_md5(content_md5, &[]),
        }
    }
}

/// The S3 error for a request body that failed while it was read: a chunk of a signed
/// aws-chunked body whose signature does not match its bytes is `403 SignatureDoesNotMatch`,
/// as S3 answers it; anything else is `400 IncompleteBody`.
fn body_error(err: &(dyn std::error::Error + 'static)) -> (S3ErrorCode, String) {
    // s3s 0.14 keeps its aws-chunked error type private: its text is all there is to go by
    // (the gateway's tests send a tampered signed chunk, so a change of that text shows).
    if err
        .to_string()
        .contains("AwsChunkedStreamError: SignatureMismatch")
    {
        return (
            S3ErrorCode::SignatureDoesNotMatch,
            "The signature of a chunk of the aws-chunked body does not match its bytes".into(),
        );
    }
    (
        S3ErrorCode::IncompleteBody,
        format!("reading the request body: {err}"),
    )
}

/// Checks `Content-MD5` (base64 of the body's binary MD5) against `digest`: `InvalidDigest` if
/// it is not one, `BadDigest` if it differs.
pub fn check_content_md5(content_md5: Option<&str>, digest: &[u8]) -> S3Result<()> {
    let Some(expected) = content_md5 else {
        return Ok(());
    };
    if decode_content_md5(expected)?.as_slice() != digest {
        return Err(s3_err(
            S3ErrorCode::BadDigest,
            "The Content-MD5 you specified did not match what was received",
        ));
    }
    Ok(())
}

/// The MD5 of a request body that s3s reads and parses itself (the XML of DeleteObjects and
/// CompleteMultipartUpload), computed by the HTTP layer as the bytes go by (see
/// [`BodyDigest::wrap`]) and carried to the operation in the request's extensions, so that it
/// can check `Content-MD5` ([`BodyDigest::check`]): s3s does not, and the operation only sees
/// the parsed XML.
#[derive(Clone, Default)]
pub struct BodyDigest(Arc<Mutex<Md5>>);

impl BodyDigest {
    /// `body`, hashed into the returned digest as it is read.
    pub fn wrap(body: s3s::Body) -> (s3s::Body, BodyDigest) {
        use http_body_util::BodyExt;
        let digest = BodyDigest::default();
        let md5 = digest.0.clone();
        let body = body.map_frame(move |frame| {
            if let Some(data) = frame.data_ref() {
                md5.lock().unwrap_or_else(|e| e.into_inner()).update(data);
            }
            frame
        });
        (s3s::Body::http_body(body), digest)
    }

    /// Checks the request's `Content-MD5` (if any) against the MD5 of its body, which the
    /// operation has received whole (s3s reads these bodies before it calls the operation).
    /// Without a digest (the service called without the gateway's HTTP layer) there is nothing
    /// to check against.
    pub fn check<T>(req: &s3s::S3Request<T>) -> S3Result<()> {
        let Some(header) = req.headers.get("content-md5") else {
            return Ok(());
        };
        let Some(digest) = req.extensions.get::<BodyDigest>() else {
            return Ok(());
        };
        let header = header.to_str().map_err(|_| {
            s3_err(
                S3ErrorCode::InvalidDigest,
                "The Content-MD5 you specified is not valid base64",
            )
        })?;
        let md5 = digest.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        check_content_md5(Some(header), md5.finalize().as_slice())
    }
}

/// The digest a `Content-MD5` header holds; `InvalidDigest` if it is not base64 of 16 bytes.
fn decode_content_md5(expected: &str) -> S3Result<Vec<u8>> {
    let decoded = BASE64.decode(expected.trim()).map_err(|_| {
        s3_err(
            S3ErrorCode::InvalidDigest,
            "The Content-MD5 you specified is not valid base64",
        )
    })?;
    if decoded.len() != 16 {
        return Err(s3_err(
            S3ErrorCode::InvalidDigest,
            "The Content-MD5 you specified is not an MD5 digest",
        ));
    }
    Ok(decoded)
}

/// A request body relayed to a store as it arrives (see [`fs_core::store::BodyStream`]): held to
/// its declared length, its `Content-MD5` checked before its last chunk is handed on. A body
/// that fails (the client went away, a bad signature or digest, a wrong length) ends with an
/// error instead of that chunk, so the store's request is aborted and nothing is written; why
/// it failed is kept for the answer to the client ([`RelayOutcome::error`]).
pub struct Relay {
    body: Option<StreamingBlob>,
    left: u64,
    md5: Option<(Md5, Vec<u8>)>,
    outcome: RelayOutcome,
}

/// Why a [`Relay`] failed, once it has.
#[derive(Clone, Default)]
pub struct RelayOutcome(Arc<Mutex<Option<(S3ErrorCode, String)>>>);

impl RelayOutcome {
    fn fail(&self, code: S3ErrorCode, message: String) {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert((code, message));
    }

    /// The error to answer when the store call fed by the relay failed: the body's own
    /// failure if it had one, else the store's.
    pub fn error(&self, store_error: StoreError) -> S3Error {
        let slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match slot.as_ref() {
            Some((code, message)) => s3_err(code.clone(), message.clone()),
            None => to_s3(store_error),
        }
    }
}

impl Relay {
    /// A relay of `body`, which declared `size` bytes; a malformed `content_md5` or a size over
    /// [`MAX_OBJECT_SIZE`] fails here, before anything is sent.
    pub fn new(
        body: Option<StreamingBlob>,
        size: u64,
        content_md5: Option<&str>,
    ) -> S3Result<(Relay, RelayOutcome)> {
        if size > MAX_OBJECT_SIZE {
            return Err(s3_err(
                S3ErrorCode::EntityTooLarge,
                "Your proposed upload exceeds the maximum allowed object size (5 GiB)",
            ));
        }
        let md5 = match content_md5 {
            Some(header) => Some((Md5::new(), decode_content_md5(header)?)),
            None => None,
        };
        let outcome = RelayOutcome::default();
        let relay = Relay {
            body,
            left: size,
            md5,
            outcome: outcome.clone(),
        };
        Ok((relay, outcome))
    }

    fn fail(&mut self, code: S3ErrorCode, message: String) -> Poll<Option<std::io::Result<Bytes>>> {
        self.body = None;
        self.left = 0;
        let err = std::io::Error::other(message.clone());
        self.outcome.fail(code, message);
        Poll::Ready(Some(Err(err)))
    }
}

impl futures::Stream for Relay {
    type Item = std::io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            let Some(body) = this.body.as_mut() else {
                return Poll::Ready(None);
            };
            let chunk = match body.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => chunk,
                Poll::Ready(Some(Err(e))) => {
                    let (code, message) = body_error(&*e);
                    return this.fail(code, message);
                }
                Poll::Ready(None) if this.left > 0 => {
                    return this.fail(
                        S3ErrorCode::IncompleteBody,
                        format!("the request body ended {} bytes short", this.left),
                    );
                }
                Poll::Ready(None) => {
                    this.body = None;
                    return Poll::Ready(None);
                }
            };
            if chunk.is_empty() {
                continue;
            }
            let len = chunk.len() as u64;
            if len > this.left {
                return this.fail(
                    S3ErrorCode::IncompleteBody,
                    "the request body is longer than its Content-Length".to_string(),
                );
            }
            this.left -= len;
            if let Some((md5, _)) = &mut this.md5 {
                md5.update(&chunk);
            }
            if this.left == 0
                && let Some((md5, expected)) = this.md5.take()
                && md5.finalize().as_slice() != expected.as_slice()
            {
                return this.fail(
                    S3ErrorCode::BadDigest,
                    "The Content-MD5 you specified did not match what was received".to_string(),
                );
            }
            return Poll::Ready(Some(Ok(chunk)));
        }
    }
}

/// How a PutObject body larger than one part is written: parts of `part_size`, at most
/// `in_flight` of them uploading at once while the next one is read.
#[derive(Debug, Clone, Copy)]
pub struct Streaming {
    pub part_size: usize,
    pub in_flight: usize,
}

/// A multipart upload of the store that a streamed PUT is writing.
pub struct StreamedUpload {
    store: DynStore,
    key: String,
    upload_id: String,
    parts: Vec<CompletedPart>,
    /// Completed or aborted. An upload dropped unsettled (the request was cancelled: its client
    /// went away) is aborted in the background, so that no orphan parts stay in the store.
    settled: AtomicBool,
}

impl Drop for StreamedUpload {
    fn drop(&mut self) {
        if self.settled.load(Ordering::SeqCst) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (store, key, id) = (self.store.clone(), self.key.clone(), self.upload_id.clone());
        runtime.spawn(async move {
            if let Err(e) = store.abort_multipart(&key, &id).await {
                tracing::warn!(key = %key, upload_id = %id, error = %e,
                    "could not abort the upload of a cancelled streamed PUT");
            }
        });
    }
}

impl StreamedUpload {
    /// Starts the store's upload and writes `first` (whole parts already read) and the rest of
    /// `reader` into it. On any failure (the client goes away, a store error) the upload is
    /// aborted, so that nothing of the body remains.
    pub async fn write(
        store: &DynStore,
        key: &str,
        opts: PutOptions,
        first: Vec<Bytes>,
        reader: &mut BodyReader,
        streaming: Streaming,
    ) -> S3Result<StreamedUpload> {
        let upload_id = store.create_multipart(key, opts).await.map_err(to_s3)?;
        let mut upload = StreamedUpload {
            store: store.clone(),
            key: key.to_string(),
            upload_id,
            parts: Vec::new(),
            settled: AtomicBool::new(false),
        };
        match upload.upload_parts(first, reader, streaming).await {
            Ok(()) => Ok(upload),
            Err(e) => {
                upload.abort().await;
                Err(e)
            }
        }
    }

    async fn upload_parts(
        &mut self,
        first: Vec<Bytes>,
        reader: &mut BodyReader,
        streaming: Streaming,
    ) -> S3Result<()> {
        let mut running: JoinSet<Result<CompletedPart, StoreError>> = JoinSet::new();
        let mut queued = first.into_iter();
        let mut number: u32 = 0;
        loop {
            let part = match queued.next() {
                Some(part) => part,
                None => reader.read_chunk(streaming.part_size).await?,
            };
            if part.is_empty() {
                break;
            }
            number += 1;
            if number > limits::MAX_PART_NUMBER {
                return Err(s3_err(
                    S3ErrorCode::EntityTooLarge,
                    "The body needs more than 10,000 parts of the gateway's part size",
                ));
            }
            while running.len() >= streaming.in_flight.max(1) {
                self.finish_one(&mut running).await?;
            }
            let (store, key, id) = (self.store.clone(), self.key.clone(), self.upload_id.clone());
            running.spawn(async move {
                let etag = store.upload_part(&key, &id, number, part).await?;
                Ok(CompletedPart { number, etag })
            });
        }
        while !running.is_empty() {
            self.finish_one(&mut running).await?;
        }
        self.parts.sort_by_key(|p| p.number);
        Ok(())
    }

    async fn finish_one(
        &mut self,
        running: &mut JoinSet<Result<CompletedPart, StoreError>>,
    ) -> S3Result<()> {
        match running.join_next().await {
            Some(Ok(Ok(part))) => {
                self.parts.push(part);
                Ok(())
            }
            Some(Ok(Err(e))) => Err(to_s3(e)),
            Some(Err(e)) => Err(s3_err(
                S3ErrorCode::InternalError,
                format!("a part upload stopped: {e}"),
            )),
            None => Ok(()),
        }
    }

    /// Completes the upload under `condition`: the object appears whole, atomically. A failed
    /// completion aborts the upload.
    pub async fn complete(self, condition: PutCondition) -> S3Result<PutResult> {
        match self
            .store
            .complete_multipart(&self.key, &self.upload_id, &self.parts, condition)
            .await
        {
            Ok(result) => {
                self.settled.store(true, Ordering::SeqCst);
                Ok(result)
            }
            Err(e) => {
                self.abort().await;
                Err(to_s3(e))
            }
        }
    }

    /// Aborts the upload; a failure is logged (the store's own cleanup of stale uploads, or
    /// `rivulet gc`, removes what is left).
    pub async fn abort(&self) {
        self.settled.store(true, Ordering::SeqCst);
        if let Err(e) = self.store.abort_multipart(&self.key, &self.upload_id).await {
            tracing::warn!(key = %self.key, upload_id = %self.upload_id, error = %e,
                "could not abort the upload of a failed streamed PUT");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(chunks: &[&'static [u8]]) -> Option<StreamingBlob> {
        let items: Vec<Result<Bytes, std::io::Error>> =
            chunks.iter().map(|c| Ok(Bytes::from_static(c))).collect();
        Some(StreamingBlob::wrap(futures::stream::iter(items)))
    }

    #[tokio::test]
    async fn chunks_are_exact_across_network_chunks() {
        let mut r = BodyReader::new(blob(&[b"abc", b"defgh", b"", b"ij"]), Some(10), Some("x"));
        assert_eq!(&r.read_chunk(4).await.unwrap()[..], b"abcd");
        assert_eq!(&r.read_chunk(4).await.unwrap()[..], b"efgh");
        assert_eq!(&r.read_chunk(4).await.unwrap()[..], b"ij");
        assert!(r.read_chunk(4).await.unwrap().is_empty());
        let digest = Md5::digest(b"abcdefghij");
        r.check_md5(Some(&BASE64.encode(digest))).unwrap();
        assert_eq!(
            r.check_md5(Some(&BASE64.encode(Md5::digest(b"x"))))
                .unwrap_err()
                .code()
                .as_str(),
            "BadDigest"
        );
    }

    #[tokio::test]
    async fn read_all_returns_the_whole_body() {
        let mut r = BodyReader::new(blob(&[b"he", b"llo"]), None, None);
        assert_eq!(&r.read_all().await.unwrap()[..], b"hello");
        assert!(
            BodyReader::new(None, None, None)
                .read_all()
                .await
                .unwrap()
                .is_empty()
        );
    }

    /// Everything a relay hands on, and its error if it ended with one.
    async fn drain(mut relay: Relay) -> (Vec<u8>, Option<std::io::Error>) {
        let mut out = Vec::new();
        while let Some(item) = relay.next().await {
            match item {
                Ok(chunk) => out.extend_from_slice(&chunk),
                Err(e) => return (out, Some(e)),
            }
        }
        (out, None)
    }

    #[tokio::test]
    async fn a_relay_hands_on_a_good_body_whole() {
        let md5 = BASE64.encode(Md5::digest(b"abcdefgh"));
        let (relay, outcome) = Relay::new(blob(&[b"abc", b"", b"defgh"]), 8, Some(&md5)).unwrap();
        let (out, err) = drain(relay).await;
        assert_eq!((out.as_slice(), err.is_none()), (&b"abcdefgh"[..], true));
        let fallback = fs_core::store::StoreError::new(
            fs_core::store::StoreErrorKind::Transient,
            "put",
            "k",
            "the store failed",
        );
        assert_eq!(
            outcome.error(fallback).code().as_str(),
            "ServiceUnavailable"
        );
    }

    #[tokio::test]
    async fn a_relay_holds_back_the_last_chunk_of_a_bad_digest() {
        let md5 = BASE64.encode(Md5::digest(b"something else"));
        let (relay, outcome) = Relay::new(blob(&[b"abc", b"defgh"]), 8, Some(&md5)).unwrap();
        let (out, err) = drain(relay).await;
        assert_eq!(out, b"abc", "the last chunk is not handed on");
        assert!(err.is_some());
        let store_err = fs_core::store::StoreError::new(
            fs_core::store::StoreErrorKind::Other,
            "put",
            "k",
            "aborted",
        );
        assert_eq!(outcome.error(store_err).code().as_str(), "BadDigest");
    }

    #[tokio::test]
    async fn a_relay_holds_a_body_to_its_length() {
        for (chunks, size) in [(&[&b"abc"[..], b"de"][..], 4), (&[&b"abc"[..]][..], 4)] {
            let (relay, outcome) = Relay::new(blob(chunks), size, None).unwrap();
            let (out, err) = drain(relay).await;
            assert!(out.len() < 5 && err.is_some(), "{chunks:?} as {size} bytes");
            let store_err = fs_core::store::StoreError::new(
                fs_core::store::StoreErrorKind::Other,
                "put",
                "k",
                "aborted",
            );
            assert_eq!(outcome.error(store_err).code().as_str(), "IncompleteBody");
        }
        // A malformed Content-MD5 or an oversize declaration fails before anything is sent.
        let bad = Relay::new(blob(&[b"x"]), 1, Some("AAAA")).err().unwrap();
        assert_eq!(bad.code().as_str(), "InvalidDigest");
        let big = Relay::new(None, MAX_OBJECT_SIZE + 1, None).err().unwrap();
        assert_eq!(big.code().as_str(), "EntityTooLarge");
    }

    #[test]
    fn content_md5_must_be_an_md5() {
        let digest = Md5::digest(b"x");
        check_content_md5(None, &digest).unwrap();
        check_content_md5(Some(&BASE64.encode(digest)), &digest).unwrap();
        for (bad, code) in [("not base64!", "InvalidDigest"), ("AAAA", "InvalidDigest")] {
            let err = check_content_md5(Some(bad), &digest).unwrap_err();
            assert_eq!(err.code().as_str(), code, "{bad}");
        }
    }
}

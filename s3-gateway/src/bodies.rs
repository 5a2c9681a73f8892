//! Request bodies: read in bounded chunks with their MD5 computed on the way, and PutObject
//! bodies larger than one part streamed into a multipart upload of the store, so that the
//! memory a PUT needs is bounded by a few parts whatever its size.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::{Bytes, BytesMut};
use fs_core::store::{
    CompletedPart, DynStore, PutCondition, PutOptions, PutResult, StoreError, limits,
};
use futures::StreamExt;
use md5::{Digest, Md5};
use s3s::dto::StreamingBlob;
use s3s::{S3ErrorCode, S3Result};
use std::sync::atomic::{AtomicBool, Ordering};

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
                        return Err(s3_err(
                            S3ErrorCode::IncompleteBody,
                            format!("reading the request body: {e}"),
                        ));
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

/// Checks `Content-MD5` (base64 of the body's binary MD5) against `digest`: `InvalidDigest` if
/// it is not one, `BadDigest` if it differs.
pub fn check_content_md5(content_md5: Option<&str>, digest: &[u8]) -> S3Result<()> {
    let Some(expected) = content_md5 else {
        return Ok(());
    };
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
    if decoded.as_slice() != digest {
        return Err(s3_err(
            S3ErrorCode::BadDigest,
            "The Content-MD5 you specified did not match what was received",
        ));
    }
    Ok(())
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

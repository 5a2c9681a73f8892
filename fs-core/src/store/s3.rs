//! The S3 backend, on `aws-sdk-s3`: any S3-compatible server (AWS S3, MinIO, moto, s3s-fs, ...).
//!
//! Keys map to `prefix/key` in the bucket. Credentials, region and endpoint come from
//! [`S3Config`] when set there, otherwise the AWS way (environment, profile files, IMDS,
//! `AWS_ENDPOINT_URL`). Requests are retried by the SDK's standard retry strategy (exponential
//! backoff with jitter on 5xx, SlowDown/throttling, timeouts and connection failures), and every
//! error is mapped to a precise [`StoreErrorKind`] that keeps the server's code and message.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::RequestId;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart as SdkCompletedPart, Delete, ObjectIdentifier,
};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::stalled_stream_protection::StalledStreamProtectionConfig;
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;
use bytes::Bytes;

use super::rules::{self, MAX_LIST_KEYS};
use super::{
    BodyStream, CompletedPart, ContentHeaders, ExactBody, GetResult, GetStream, ListPage,
    ListRequest, ObjectMeta, ObjectStore, ObjectSummary, PartInfo, PartsPage, PutCondition,
    PutOptions, PutResult, UploadInfo, UploadsMarker, UploadsPage, limits,
};
use crate::error::{StoreError, StoreErrorKind};

/// The slowest rate (bytes a second) an upload's body is given time for, on top of the read
/// timeout: a body sent slower than this (a gateway client's stream, or a slow link) fails its
/// upload.
const STREAM_FLOOR_RATE: u64 = 64 * 1024;

/// How many read timeouts a request that makes the server copy or join parts may wait for its
/// answer (see `S3Store::server_work_timeouts`).
const SERVER_WORK_FACTOR: u32 = 4;

/// The region used when none is configured anywhere (S3-compatible servers mostly ignore it, but
/// requests must be signed for some region).
pub const DEFAULT_REGION: &str = "us-east-1";

/// Default number of attempts per request (the first one included).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// Timeouts of the S3 client. `None` disables a timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct S3Timeouts {
    /// Establishing a TCP (and TLS) connection.
    pub connect: Option<Duration>,
    /// From the start of an attempt to the first byte of the response (`read_timeout=` in a
    /// URL). Requests with a body get the body's transfer time at [`STREAM_FLOOR_RATE`] on top:
    /// the server answers only once the body has arrived.
    pub read: Option<Duration>,
    /// One attempt of an operation; a timed-out attempt is retried.
    pub attempt: Option<Duration>,
    /// A whole operation, all its retries included.
    pub operation: Option<Duration>,
}

impl Default for S3Timeouts {
    fn default() -> Self {
        Self {
            connect: Some(Duration::from_secs(5)),
            // Without a body, a server answers in well under a second; 30 s leaves room for a
            // loaded one, while a hung endpoint (connection accepted, no answer) fails within
            // about 2.5 minutes with the default 5 attempts, not 10 as with 120 s.
            read: Some(Duration::from_secs(30)),
            attempt: None,
            operation: None,
        }
    }
}

/// Where and how to reach an S3 bucket.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Config {
    pub bucket: String,
    /// Keys are stored as `prefix/key`; leading and trailing slashes are ignored, an empty prefix
    /// puts keys at the bucket's root.
    pub prefix: String,
    /// An S3-compatible endpoint (`http://127.0.0.1:9000`); `None`: `AWS_ENDPOINT_URL` or AWS.
    pub endpoint: Option<String>,
    /// `None`: the AWS region chain (`AWS_REGION`, profile), else [`DEFAULT_REGION`].
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which most S3-compatible servers need.
    pub path_style: bool,
    /// `(access key id, secret access key)`; `None`: the AWS credential chain.
    pub credentials: Option<(String, String)>,
    /// Attempts per request, the first included (at least 1).
    pub max_attempts: u32,
    pub timeouts: S3Timeouts,
    /// The server needs multipart part numbers 1, 2, 3, … without gaps (s3s-fs); see
    /// [`ObjectStore::requires_contiguous_parts`].
    pub contiguous_parts: bool,
}

impl S3Config {
    /// A configuration for `bucket` with every other setting at its default.
    pub fn new(bucket: impl Into<String>) -> Self {
        Self {
            bucket: bucket.into(),
            prefix: String::new(),
            endpoint: None,
            region: None,
            path_style: false,
            credentials: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            timeouts: S3Timeouts::default(),
            contiguous_parts: false,
        }
    }
}

impl Default for S3Config {
    fn default() -> Self {
        Self::new("")
    }
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            // Never print the secret key.
            .field("access_key", &self.credentials.as_ref().map(|(ak, _)| ak))
            .field("max_attempts", &self.max_attempts)
            .field("timeouts", &self.timeouts)
            .field("contiguous_parts", &self.contiguous_parts)
            .finish()
    }
}

/// An [`ObjectStore`] on an S3 bucket (and prefix).
#[derive(Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    /// Normalized: no leading or trailing slash; empty for the bucket's root.
    prefix: String,
    endpoint: Option<String>,
    region: String,
    max_attempts: u32,
    contiguous_parts: bool,
    timeouts: S3Timeouts,
    /// Send bodies with `UNSIGNED-PAYLOAD` instead of their SHA-256 in the signature: when
    /// the connection itself protects them (HTTPS) or never leaves the host (loopback). The
    /// hash was one full pass over every byte uploaded, as much CPU as the rest of the client.
    /// Over plain HTTP to another host, bodies stay signed: the signature is then their only
    /// integrity check (the AWS SDKs follow the same rule).
    unsigned_payload: bool,
}

/// Whether bodies sent to `endpoint` (`None`: AWS itself, over HTTPS) may go unsigned.
fn payload_is_protected(endpoint: Option<&str>) -> bool {
    let Some(endpoint) = endpoint else {
        return true;
    };
    let Some((scheme, rest)) = endpoint.split_once("://") else {
        return false;
    };
    if scheme.eq_ignore_ascii_case("https") {
        return true;
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host_port.split(':').next().unwrap_or_default(),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Store")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

const OP_GET: &str = "get";
const OP_HEAD: &str = "head";
const OP_PUT: &str = "put";
const OP_DELETE: &str = "delete";
const OP_LIST: &str = "list";
const OP_CREATE: &str = "create multipart upload";
const OP_PART: &str = "upload part";
const OP_PART_COPY: &str = "upload part copy";
const OP_COMPLETE: &str = "complete multipart upload";
const OP_ABORT: &str = "abort multipart upload";
const OP_LIST_PARTS: &str = "list parts";
const OP_LIST_UPLOADS: &str = "list multipart uploads";
const OP_OPEN: &str = "open S3 store";

impl S3Store {
    /// Builds the client. Loads the AWS configuration (environment, profile) for whatever
    /// `config` leaves unset; no request is sent.
    pub async fn new(config: S3Config) -> Result<S3Store, StoreError> {
        let bucket = config.bucket.trim().to_string();
        if bucket.is_empty() {
            return Err(StoreError::new(
                StoreErrorKind::InvalidArgument,
                OP_OPEN,
                "",
                "the bucket name is empty",
            ));
        }
        let prefix = config.prefix.trim_matches('/').to_string();
        if !prefix.is_empty() {
            rules::validate_key(OP_OPEN, &prefix)?;
        }
        let max_attempts = config.max_attempts.max(1);

        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = &config.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(endpoint) = &config.endpoint {
            loader = loader.endpoint_url(endpoint.clone());
        }
        if let Some((access_key, secret_key)) = &config.credentials {
            loader = loader.credentials_provider(Credentials::new(
                access_key.clone(),
                secret_key.clone(),
                None,
                None,
                "rivulet-s3-config",
            ));
        }
        let sdk = loader.load().await;

        let t = config.timeouts;
        let mut timeouts = TimeoutConfig::builder();
        timeouts
            .set_connect_timeout(t.connect)
            .set_read_timeout(t.read)
            .set_operation_attempt_timeout(t.attempt)
            .set_operation_timeout(t.operation);
        let timeouts = timeouts.build();
        let mut builder = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(config.path_style)
            // moto and s3s-fs reject (or mangle) aws-chunked bodies with checksum trailers.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .retry_config(RetryConfig::standard().with_max_attempts(max_attempts))
            .timeout_config(timeouts);
        let region = match sdk.region() {
            Some(r) => r.to_string(),
            None => {
                builder = builder.region(Region::new(DEFAULT_REGION));
                DEFAULT_REGION.to_string()
            }
        };
        let endpoint = config
            .endpoint
            .clone()
            .or_else(|| sdk.endpoint_url().map(str::to_string));
        Ok(S3Store {
            client: Client::from_conf(builder.build()),
            bucket,
            prefix,
            region,
            max_attempts,
            contiguous_parts: config.contiguous_parts,
            timeouts: t,
            unsigned_payload: payload_is_protected(endpoint.as_deref()),
            endpoint,
        })
    }

    /// The underlying SDK client (for tests and tools that need raw S3 calls).
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The normalized prefix (no leading or trailing slash; empty for the bucket's root).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The key in the bucket of a store key.
    fn full_key(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    /// The bucket prefix that every key of this store starts with (`prefix/` or empty).
    fn key_root(&self) -> String {
        if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        }
    }

    /// A bucket key back to a store key; `None` if it is outside this store's prefix.
    fn strip<'a>(&self, full: &'a str) -> Option<&'a str> {
        if self.prefix.is_empty() {
            Some(full)
        } else {
            full.strip_prefix(self.prefix.as_str())?.strip_prefix('/')
        }
    }

    /// A per-request override making a single attempt (no SDK retry).
    fn single_attempt() -> aws_sdk_s3::config::Builder {
        aws_sdk_s3::config::Builder::default()
            .retry_config(RetryConfig::standard().with_max_attempts(1))
    }

    /// A per-request override with the attempts left after the first one.
    fn remaining_attempts(&self) -> aws_sdk_s3::config::Builder {
        aws_sdk_s3::config::Builder::default()
            .retry_config(RetryConfig::standard().with_max_attempts((self.max_attempts - 1).max(1)))
    }

    /// The store's timeouts with every waiting one (read, attempt, operation) lengthened by
    /// `longer`. Every field is set, so that a per-request override does not depend on how the
    /// SDK merges it with the client's own timeout config.
    fn lengthened_timeouts(&self, longer: impl Fn(Duration) -> Duration) -> TimeoutConfig {
        let t = &self.timeouts;
        let mut timeouts = TimeoutConfig::builder();
        timeouts
            .set_connect_timeout(t.connect)
            .set_read_timeout(t.read.map(&longer))
            .set_operation_attempt_timeout(t.attempt.map(&longer))
            .set_operation_timeout(t.operation.map(&longer));
        timeouts.build()
    }

    /// The timeouts of a request that uploads a body of `size` bytes. The read timeout runs
    /// from the request's start to the answer, the upload included, and the default one is
    /// sized for requests without a body: it is extended by the time the body takes at
    /// [`STREAM_FLOOR_RATE`], so that only a stuck transfer times out, not a large part on a
    /// slow link.
    fn body_timeouts(&self, size: u64) -> TimeoutConfig {
        let transfer = Duration::from_secs(size / STREAM_FLOOR_RATE);
        self.lengthened_timeouts(|timeout| timeout.saturating_add(transfer))
    }

    /// The timeouts of a request whose answer waits for the server to move data itself
    /// (UploadPartCopy, CompleteMultipartUpload): S3 answers these at once and keeps the
    /// connection alive while it works, but S3-compatible servers may answer only when done,
    /// so they get [`SERVER_WORK_FACTOR`] times the read timeout (120 s by default, the read
    /// timeout of every request before it was lowered to 30 s).
    fn server_work_timeouts(&self) -> TimeoutConfig {
        self.lengthened_timeouts(|timeout| timeout.saturating_mul(SERVER_WORK_FACTOR))
    }

    /// A per-request override for a streamed body of `size` bytes (0 for a download): one
    /// attempt (the body cannot be sent twice), no stalled-stream protection, because the
    /// body moves at the pace of whoever is at its other end (a gateway client sending or
    /// reading slowly), not of the store's, and the [`body_timeouts`](Self::body_timeouts).
    fn streamed(&self, size: u64) -> aws_sdk_s3::config::Builder {
        Self::single_attempt()
            .timeout_config(self.body_timeouts(size))
            .stalled_stream_protection(StalledStreamProtectionConfig::disabled())
    }

    /// The body of a request streamed to the store, held to `size` bytes.
    fn stream_body(size: u64, body: BodyStream) -> ByteStream {
        ByteStream::from_body_1_x(ExactBody::new(size, body))
    }

    /// `size` checked against S3's largest PUT or part (5 GiB) before anything is sent.
    fn check_stream_size(op: &'static str, key: &str, size: u64) -> Result<i64, StoreError> {
        if size > limits::MAX_PART_SIZE {
            return Err(StoreError::new(
                StoreErrorKind::InvalidArgument,
                op,
                key,
                format!("{size} bytes is more than S3 takes in one request (5 GiB)"),
            ));
        }
        Ok(size as i64)
    }

    /// After a failed first attempt of UploadPart / UploadPartCopy / CompleteMultipartUpload:
    /// moto answers 500 (not NoSuchUpload) when the upload id is unknown, and retrying a 500 four more times with
    /// backoff only delays the answer, so a 500 is checked with ListParts first. Returns the
    /// error to report now, or `None` to retry.
    async fn check_first_failure(
        &self,
        op: &'static str,
        key: &str,
        upload_id: &str,
        status: Option<u16>,
        err: StoreError,
    ) -> Option<StoreError> {
        if !err.is_transient() || self.max_attempts <= 1 {
            return Some(err);
        }
        if status == Some(500) {
            if let Err(probe) = self.list_parts(key, upload_id, None).await
                && probe.kind() == StoreErrorKind::NoSuchUpload
            {
                return Some(StoreError::new(
                    StoreErrorKind::NoSuchUpload,
                    op,
                    key,
                    format!(
                        "upload id {upload_id}: the server answered {} and ListParts reports the \
                         upload gone ({})",
                        err.detail(),
                        probe.detail()
                    ),
                ));
            }
        } else {
            // Back off a little before the SDK's own retries take over.
            let jitter = rand::random_range(50..250);
            tokio::time::sleep(Duration::from_millis(jitter)).await;
        }
        None
    }

    fn condition_headers(condition: &PutCondition) -> Option<(Option<String>, Option<String>)> {
        match condition {
            PutCondition::None => None,
            PutCondition::IfNoneMatch => Some((None, Some("*".to_string()))),
            PutCondition::IfMatch(etag) => Some((Some(quote_etag(etag)), None)),
        }
    }
}

/// `"etag"`: HTTP's form of an entity tag in If-Match and in CompleteMultipartUpload.
fn quote_etag(etag: &str) -> String {
    format!("\"{}\"", etag.trim_matches('"'))
}

fn unquote(etag: &str) -> String {
    etag.trim().trim_matches('"').to_string()
}

fn to_system_time(t: Option<&aws_smithy_types::DateTime>) -> Option<SystemTime> {
    t.and_then(|t| SystemTime::try_from(*t).ok())
}

/// Reads the standard headers off a GetObject or HeadObject answer (two types, same getters).
macro_rules! content_headers {
    ($out:expr) => {
        ContentHeaders {
            content_type: $out.content_type().map(str::to_string),
            content_encoding: $out.content_encoding().map(str::to_string),
            content_disposition: $out.content_disposition().map(str::to_string),
            content_language: $out.content_language().map(str::to_string),
            cache_control: $out.cache_control().map(str::to_string),
            expires: $out.expires_string().map(str::to_string),
        }
    };
}

/// Sets the standard headers and the user metadata on a PutObject or CreateMultipartUpload
/// request (two builder types, same setters). `Expires` must be an HTTP date: the SDK sends a
/// parsed time, and S3 would store nothing for a header it cannot read either.
macro_rules! with_headers {
    ($req:expr, $op:expr, $key:expr, $opts:expr) => {{
        let h = &$opts.headers;
        let expires = match &h.expires {
            None => None,
            Some(text) => Some(
                aws_smithy_types::DateTime::from_str(
                    text,
                    aws_smithy_types::date_time::Format::HttpDate,
                )
                .map_err(|e| {
                    StoreError::new(
                        StoreErrorKind::InvalidArgument,
                        $op,
                        $key,
                        format!("Expires {text:?} is not an HTTP date: {e}"),
                    )
                })?,
            ),
        };
        let mut req = $req
            .set_content_type(h.content_type.clone())
            .set_content_encoding(h.content_encoding.clone())
            .set_content_disposition(h.content_disposition.clone())
            .set_content_language(h.content_language.clone())
            .set_cache_control(h.cache_control.clone())
            .set_expires(expires);
        for (name, value) in &$opts.metadata {
            req = req.metadata(name, value);
        }
        req
    }};
}

fn lower_metadata(
    metadata: Option<&std::collections::HashMap<String, String>>,
) -> BTreeMap<String, String> {
    metadata
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// Percent-encodes a key for `x-amz-copy-source`: everything but unreserved characters and `/`.
fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for &b in key.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The total size in a `Content-Range: bytes a-b/total` header.
fn content_range_total(header: &str) -> Option<u64> {
    header.rsplit('/').next()?.trim().parse().ok()
}

/// A range (end exclusive) as an HTTP byte range (`bytes=first-last`, inclusive).
fn http_range(range: &Range<u64>) -> String {
    if range.end == u64::MAX {
        // Open-ended (`bytes=N-` as a client sent it): to the object's end.
        return format!("bytes={}-", range.start);
    }
    format!("bytes={}-{}", range.start, range.end - 1)
}

fn invalid_range(op: &'static str, key: &str, range: &Range<u64>) -> StoreError {
    StoreError::new(
        StoreErrorKind::InvalidRange,
        op,
        key,
        format!("range {}..{} is empty or reversed", range.start, range.end),
    )
}

/// Classifies a service error by its S3 error code first, then by HTTP status.
fn classify(status: u16, code: Option<&str>) -> StoreErrorKind {
    use StoreErrorKind::*;
    match code {
        Some("NoSuchKey" | "NotFound" | "NoSuchBucket") => return NotFound,
        Some("NoSuchUpload") => return NoSuchUpload,
        Some("PreconditionFailed") => return PreconditionFailed,
        Some("ConditionalRequestConflict") => return Conflict,
        Some("EntityTooSmall") => return EntityTooSmall,
        Some("InvalidPart") => return InvalidPart,
        Some("InvalidPartOrder") => return InvalidPartOrder,
        Some("InvalidRange") => return InvalidRange,
        Some(
            "AccessDenied"
            | "InvalidAccessKeyId"
            | "SignatureDoesNotMatch"
            | "ExpiredToken"
            | "InvalidToken"
            | "AllAccessDisabled",
        ) => return AccessDenied,
        Some("NotImplemented") => return NotSupported,
        Some(
            "SlowDown"
            | "Throttling"
            | "ThrottlingException"
            | "RequestTimeout"
            | "RequestTimeoutException"
            | "InternalError"
            | "ServiceUnavailable"
            | "BadDigest",
        ) => return Transient,
        Some("InvalidArgument" | "KeyTooLongError" | "EntityTooLarge" | "InvalidPartNumber") => {
            return InvalidArgument;
        }
        _ => {}
    }
    match status {
        404 => NotFound,
        412 => PreconditionFailed,
        409 => Conflict,
        416 => InvalidRange,
        401 | 403 => AccessDenied,
        501 => NotSupported,
        408 | 429 => Transient,
        500..=599 => Transient,
        _ => Other,
    }
}

/// The HTTP status of a service error, if the server answered.
fn status_of<E>(err: &SdkError<E, HttpResponse>) -> Option<u16> {
    match err {
        SdkError::ServiceError(ctx) => Some(ctx.raw().status().as_u16()),
        SdkError::ResponseError(ctx) => Some(ctx.raw().status().as_u16()),
        _ => None,
    }
}

/// Maps an SDK error to a [`StoreError`] naming the operation and the store key. `attempts` is
/// how many attempts the request was given (the SDK's retries included), which the error of a
/// request that timed out on every attempt reports.
fn map_err<E>(
    op: &'static str,
    key: &str,
    attempts: u32,
    err: SdkError<E, HttpResponse>,
) -> StoreError
where
    E: ProvideErrorMetadata + RequestId + std::error::Error + Send + Sync + 'static,
{
    let (kind, detail) = match &err {
        SdkError::ServiceError(ctx) => {
            let status = ctx.raw().status().as_u16();
            let e = ctx.err();
            let mut kind = classify(status, e.code());
            // s3s-fs 0.14 requires Complete's part numbers to be exactly 1..=n and answers
            // 400 InvalidRequest "invalid part order" otherwise.
            if kind == StoreErrorKind::Other
                && e.code() == Some("InvalidRequest")
                && e.message()
                    .is_some_and(|m| m.contains("invalid part order"))
            {
                kind = StoreErrorKind::InvalidPartOrder;
            }
            let mut detail = format!("HTTP {status}");
            if let Some(code) = e.code() {
                detail.push_str(&format!(" {code}"));
            }
            if let Some(message) = e.message() {
                detail.push_str(&format!(": {message}"));
            }
            if let Some(id) = e.request_id() {
                detail.push_str(&format!(" (request id {id})"));
            }
            (kind, detail)
        }
        SdkError::TimeoutError(_) => (
            StoreErrorKind::Transient,
            format!("timed out: {}", cause_chain(&err)),
        ),
        SdkError::DispatchFailure(failure) => {
            if has_cause::<CredentialsError>(&err) {
                // Not the server's doing and not worth retrying: say where credentials come from.
                (
                    StoreErrorKind::AccessDenied,
                    format!(
                        "no AWS credentials could be loaded ({}); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE with a profile in ~/.aws",
                        cause_chain(&err)
                    ),
                )
            } else if failure.is_timeout() && !is_connect_timeout(&err) {
                // The connection is open and the request sent (or being sent), but no answer
                // came: a hung or overloaded server, or a proxy that swallows requests. Each
                // attempt waited the whole read timeout, so say which knob shortens or
                // lengthens that wait instead of leaving a bare "timeout".
                let attempts = match attempts {
                    1 => "1 attempt".to_string(),
                    n => format!("{n} attempts"),
                };
                (
                    StoreErrorKind::Transient,
                    format!(
                        "the endpoint accepted the connection but did not answer within the read \
                         timeout ({attempts}; {}): check that the server at the endpoint \
                         (?endpoint= or AWS_ENDPOINT_URL) works, or raise read_timeout= in the URL \
                         (e.g. read_timeout=2m)",
                        cause_chain(&err)
                    ),
                )
            } else {
                let kind = if failure.is_user() {
                    StoreErrorKind::Other
                } else {
                    StoreErrorKind::Transient
                };
                let hint = if io_error_kind(&err) == Some(std::io::ErrorKind::ConnectionRefused) {
                    "; nothing answers at the endpoint: check its URL (?endpoint= or AWS_ENDPOINT_URL) and that the server runs"
                } else {
                    ""
                };
                (
                    kind,
                    format!("request not sent or no answer: {}{hint}", cause_chain(&err)),
                )
            }
        }
        SdkError::ResponseError(ctx) => {
            let status = ctx.raw().status().as_u16();
            (
                StoreErrorKind::Transient,
                format!("unreadable answer (HTTP {status}): {}", cause_chain(&err)),
            )
        }
        SdkError::ConstructionFailure(_) => (
            StoreErrorKind::Other,
            format!("request not built: {}", cause_chain(&err)),
        ),
        _ => (StoreErrorKind::Other, cause_chain(&err)),
    };
    let error = StoreError::new(kind, op, key, detail);
    if matches!(err, SdkError::ServiceError(_)) {
        // The detail has the status, code, message and request id. The SDK error's own causes
        // add only "service error" and, for errors it does not model, a Debug dump of the
        // answer's metadata, which error chains would print.
        return error;
    }
    error.with_source(err)
}

/// An error and its causes, outermost first, as one line. The SDK's wrappers often repeat their
/// cause's text, so a cause already contained in the line is left out; unlike
/// `DisplayErrorContext`, no `Debug` dump of the whole error is appended.
fn cause_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut next = err.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !text.is_empty() && !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        next = cause.source();
    }
    line
}

/// Whether any error in the chain is an `E`.
fn has_cause<E: std::error::Error + 'static>(err: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(err), |e| e.source()).any(|e| e.is::<E>())
}

/// Whether a timed-out dispatch failed while connecting (the connect timeout, whose error the
/// HTTP client only tells from a read timeout by its text) rather than waiting for the answer.
fn is_connect_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(err), |e| e.source()).any(|e| {
        e.to_string()
            .to_ascii_lowercase()
            .contains("connect timeout")
    })
}

/// The kind of the first I/O error in the chain.
fn io_error_kind(err: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    std::iter::successors(Some(err), |e| e.source())
        .find_map(|e| e.downcast_ref::<std::io::Error>())
        .map(std::io::Error::kind)
}

/// moto answers ListParts with a `<ListPartsResponse>` root instead of S3's `<ListPartsResult>`,
/// which the SDK refuses to deserialize. When a 200 answer has that root, its parts are read here.
fn moto_list_parts<E>(err: &SdkError<E, HttpResponse>) -> Option<PartsPage> {
    let SdkError::ServiceError(ctx) = err else {
        return None;
    };
    if ctx.raw().status().as_u16() != 200 {
        return None;
    }
    let xml = std::str::from_utf8(ctx.raw().body().bytes()?).ok()?;
    if !xml.contains("<ListPartsResponse") {
        return None;
    }
    let mut page = PartsPage::default();
    for chunk in xml.split("<Part>").skip(1) {
        let part = chunk.split("</Part>").next()?;
        page.parts.push(PartInfo {
            number: xml_text(part, "PartNumber")?.trim().parse().ok()?,
            etag: xml_text(part, "ETag")
                .map(|e| unquote(&xml_unescape(e)))
                .filter(|e| !e.is_empty()),
            size: xml_text(part, "Size")?.trim().parse().ok()?,
        });
    }
    if xml_text(xml, "IsTruncated").is_some_and(|t| t.trim() == "true") {
        page.next_marker = xml_text(xml, "NextPartNumberMarker")
            .and_then(|m| m.trim().parse().ok())
            .or_else(|| page.parts.iter().map(|p| p.number).max());
    }
    Some(page)
}

/// The text of the first `<tag>...</tag>` in `xml`.
fn xml_text<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{tag}>"))?;
    Some(&xml[start..start + end])
}

fn xml_unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#34;", "\"")
        .replace("&apos;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

fn body_err(
    op: &'static str,
    key: &str,
    err: impl std::error::Error + Send + Sync + 'static,
) -> StoreError {
    StoreError::new(
        StoreErrorKind::Transient,
        op,
        key,
        format!("reading the response body failed: {}", cause_chain(&err)),
    )
    .with_source(err)
}

fn missing(op: &'static str, key: &str, what: &str) -> StoreError {
    StoreError::new(
        StoreErrorKind::Other,
        op,
        key,
        format!("the server's answer has no {what}"),
    )
}

#[async_trait]
impl ObjectStore for S3Store {
    fn describe(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    fn requires_contiguous_parts(&self) -> bool {
        self.contiguous_parts
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<GetResult, StoreError> {
        rules::validate_key(OP_GET, key)?;
        let full = self.full_key(key);
        if let Some(r) = &range {
            if r.start > r.end {
                return Err(invalid_range(OP_GET, key, r));
            }
            if r.start == r.end {
                // HTTP cannot ask for zero bytes: read the metadata and check the range.
                let meta = self.head(key).await?;
                let resolved = rules::resolve_range(OP_GET, key, Some(r.clone()), meta.size)?;
                return Ok(GetResult {
                    meta,
                    range: resolved.start..resolved.start,
                    body: Bytes::new(),
                });
            }
        }
        let mut req = self.client.get_object().bucket(&self.bucket).key(&full);
        if let Some(r) = &range {
            req = req.range(http_range(r));
        }
        let out = match req.send().await {
            Ok(out) => out,
            Err(e) => {
                let err = map_err(OP_GET, key, self.max_attempts, e);
                // `0..n` of an empty object reads nothing (416 from the server): check with a
                // plain GET that the object is indeed empty.
                if err.kind() == StoreErrorKind::InvalidRange
                    && range.as_ref().is_some_and(|r| r.start == 0)
                {
                    let whole = self.get(key, None).await?;
                    if whole.meta.size == 0 {
                        return Ok(whole);
                    }
                }
                return Err(err);
            }
        };
        let content_range = out.content_range().map(str::to_string);
        let length = out.content_length().map(|l| l.max(0) as u64);
        let mut meta = ObjectMeta {
            key: key.to_string(),
            size: 0,
            etag: unquote(out.e_tag().ok_or_else(|| missing(OP_GET, key, "ETag"))?),
            last_modified: to_system_time(out.last_modified()),
            headers: content_headers!(out),
            metadata: lower_metadata(out.metadata()),
        };
        let body = out
            .body
            .collect()
            .await
            .map_err(|e| body_err(OP_GET, key, e))?
            .into_bytes();
        match (range, content_range) {
            (Some(r), Some(cr)) => {
                meta.size = content_range_total(&cr).ok_or_else(|| {
                    StoreError::new(
                        StoreErrorKind::Other,
                        OP_GET,
                        key,
                        format!("unparsable Content-Range {cr:?}"),
                    )
                })?;
                let expected = r.start..r.end.min(meta.size);
                if body.len() as u64 != expected.end - expected.start {
                    return Err(StoreError::new(
                        StoreErrorKind::Transient,
                        OP_GET,
                        key,
                        format!(
                            "asked for bytes {}..{} ({cr}), got {} bytes",
                            expected.start,
                            expected.end,
                            body.len()
                        ),
                    ));
                }
                Ok(GetResult {
                    meta,
                    range: expected,
                    body,
                })
            }
            (Some(r), None) => {
                // The server ignored the Range header and sent the whole object.
                meta.size = body.len() as u64;
                let resolved = rules::resolve_range(OP_GET, key, Some(r), meta.size)?;
                let body = body.slice(resolved.start as usize..resolved.end as usize);
                Ok(GetResult {
                    meta,
                    range: resolved,
                    body,
                })
            }
            (None, _) => {
                meta.size = body.len() as u64;
                if let Some(len) = length
                    && len != meta.size
                {
                    return Err(StoreError::new(
                        StoreErrorKind::Transient,
                        OP_GET,
                        key,
                        format!("Content-Length is {len} but {} bytes arrived", meta.size),
                    ));
                }
                Ok(GetResult {
                    range: 0..meta.size,
                    meta,
                    body,
                })
            }
        }
    }

    /// Streams when bodies may go unsigned (HTTPS, loopback): a signed payload needs its
    /// SHA-256 before the first byte is sent, that is the whole body in hand.
    fn streams_bodies(&self) -> bool {
        self.unsigned_payload
    }

    async fn get_stream(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<GetStream, StoreError> {
        rules::validate_key(OP_GET, key)?;
        if range.as_ref().is_some_and(|r| r.start >= r.end) {
            // Nothing to stream: `get` checks the range and answers without a body.
            return self.get(key, range).await.map(GetStream::from);
        }
        let mut req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full_key(key));
        if let Some(r) = &range {
            req = req.range(http_range(r));
        }
        let out = match req
            .customize()
            .config_override(self.streamed(0))
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) => {
                let err = map_err(OP_GET, key, 1, e);
                // `0..n` of an empty object (416): `get` tells it from a bad range.
                if err.kind() == StoreErrorKind::InvalidRange
                    && range.as_ref().is_some_and(|r| r.start == 0)
                {
                    return self.get(key, range).await.map(GetStream::from);
                }
                return Err(err);
            }
        };
        let length = out
            .content_length()
            .ok_or_else(|| missing(OP_GET, key, "Content-Length"))?
            .max(0) as u64;
        let mut meta = ObjectMeta {
            key: key.to_string(),
            size: length,
            etag: unquote(out.e_tag().ok_or_else(|| missing(OP_GET, key, "ETag"))?),
            last_modified: to_system_time(out.last_modified()),
            headers: content_headers!(out),
            metadata: lower_metadata(out.metadata()),
        };
        let sent = match (&range, out.content_range()) {
            (Some(r), Some(cr)) => {
                meta.size = content_range_total(cr).ok_or_else(|| {
                    StoreError::new(
                        StoreErrorKind::Other,
                        OP_GET,
                        key,
                        format!("unparsable Content-Range {cr:?}"),
                    )
                })?;
                let expected = r.start..r.end.min(meta.size);
                if length != expected.end - expected.start {
                    return Err(StoreError::new(
                        StoreErrorKind::Transient,
                        OP_GET,
                        key,
                        format!("asked for bytes {expected:?} ({cr}), the answer has {length}"),
                    ));
                }
                expected
            }
            // The server ignored the Range header and sends the whole object: rare enough to
            // be read whole and cut, as `get` does.
            (Some(_), None) => {
                drop(out);
                return self.get(key, range).await.map(GetStream::from);
            }
            (None, _) => 0..length,
        };
        let key = key.to_string();
        let body = futures::stream::unfold(out.body, move |mut body| {
            let key = key.clone();
            async move {
                let next = body.next().await?;
                Some((
                    next.map_err(|e| std::io::Error::other(body_err(OP_GET, &key, e))),
                    body,
                ))
            }
        });
        Ok(GetStream {
            meta,
            body: Box::pin(ExactBody::new(sent.end - sent.start, Box::pin(body))),
            range: sent,
        })
    }

    async fn put_stream(
        &self,
        key: &str,
        size: u64,
        body: BodyStream,
        opts: PutOptions,
    ) -> Result<PutResult, StoreError> {
        rules::validate_key(OP_PUT, key)?;
        let length = Self::check_stream_size(OP_PUT, key, size)?;
        let req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .content_length(length)
            .body(Self::stream_body(size, body));
        let mut req = with_headers!(req, OP_PUT, key, opts);
        if let Some((if_match, if_none_match)) = Self::condition_headers(&opts.condition) {
            req = req.set_if_match(if_match).set_if_none_match(if_none_match);
        }
        let out = req
            .customize()
            .disable_payload_signing()
            .config_override(self.streamed(size))
            .send()
            .await
            .map_err(|e| map_err(OP_PUT, key, 1, e))?;
        Ok(PutResult {
            etag: unquote(out.e_tag().ok_or_else(|| missing(OP_PUT, key, "ETag"))?),
        })
    }

    async fn upload_part_stream(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        size: u64,
        body: BodyStream,
    ) -> Result<String, StoreError> {
        rules::validate_key(OP_PART, key)?;
        rules::validate_part_number(OP_PART, key, part_number)?;
        let length = Self::check_stream_size(OP_PART, key, size)?;
        // One attempt only (the body cannot be replayed), so none of `upload_part`'s retry.
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .upload_id(upload_id)
            .part_number(part_number as i32)
            .content_length(length)
            .body(Self::stream_body(size, body))
            .customize()
            .disable_payload_signing()
            .config_override(self.streamed(size))
            .send()
            .await
            .map_err(|e| map_err(OP_PART, key, 1, e))?;
        out.e_tag()
            .map(unquote)
            .ok_or_else(|| missing(OP_PART, key, "ETag"))
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        rules::validate_key(OP_HEAD, key)?;
        let out = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .send()
            .await
            .map_err(|e| map_err(OP_HEAD, key, self.max_attempts, e))?;
        Ok(ObjectMeta {
            key: key.to_string(),
            size: out
                .content_length()
                .ok_or_else(|| missing(OP_HEAD, key, "Content-Length"))?
                .max(0) as u64,
            etag: unquote(out.e_tag().ok_or_else(|| missing(OP_HEAD, key, "ETag"))?),
            last_modified: to_system_time(out.last_modified()),
            headers: content_headers!(out),
            metadata: lower_metadata(out.metadata()),
        })
    }

    async fn put(&self, key: &str, body: Bytes, opts: PutOptions) -> Result<PutResult, StoreError> {
        rules::validate_key(OP_PUT, key)?;
        let size = body.len() as u64;
        let req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .content_length(body.len() as i64)
            .body(ByteStream::from(body));
        let mut req = with_headers!(req, OP_PUT, key, opts);
        if let Some((if_match, if_none_match)) = Self::condition_headers(&opts.condition) {
            req = req.set_if_match(if_match).set_if_none_match(if_none_match);
        }
        let mut req = req.customize().config_override(
            aws_sdk_s3::config::Builder::default().timeout_config(self.body_timeouts(size)),
        );
        if self.unsigned_payload {
            req = req.disable_payload_signing();
        }
        let out = req
            .send()
            .await
            .map_err(|e| map_err(OP_PUT, key, self.max_attempts, e))?;
        Ok(PutResult {
            etag: unquote(out.e_tag().ok_or_else(|| missing(OP_PUT, key, "ETag"))?),
        })
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        rules::validate_key(OP_DELETE, key)?;
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let err = map_err(OP_DELETE, key, self.max_attempts, e);
                // S3 answers 204 for a missing key; some servers answer 404 NoSuchKey.
                if err.kind() == StoreErrorKind::NotFound && !err.detail().contains("NoSuchBucket")
                {
                    Ok(())
                } else {
                    Err(err)
                }
            }
        }
    }

    /// DeleteObjects, 1,000 keys a request; servers that refuse it get single deletes.
    async fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        const OP: &str = "delete objects";
        for batch in keys.chunks(1000) {
            let mut objects = Vec::with_capacity(batch.len());
            for key in batch {
                rules::validate_key(OP, key)?;
                let id = ObjectIdentifier::builder()
                    .key(self.full_key(key))
                    .build()
                    .map_err(|e| StoreError::new(StoreErrorKind::Other, OP, key, e.to_string()))?;
                objects.push(id);
            }
            let first = batch.first().map(String::as_str).unwrap_or_default();
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| StoreError::new(StoreErrorKind::Other, OP, first, e.to_string()))?;
            let sent = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await;
            match sent {
                Ok(out) => {
                    if let Some(err) = out.errors().iter().find(|e| e.code() != Some("NoSuchKey")) {
                        return Err(StoreError::new(
                            classify(500, err.code()),
                            OP,
                            err.key().unwrap_or(first),
                            format!(
                                "{}: {}",
                                err.code().unwrap_or("error"),
                                err.message().unwrap_or_default()
                            ),
                        ));
                    }
                }
                Err(e) => {
                    let err = map_err(OP, first, self.max_attempts, e);
                    if err.is_transient() {
                        return Err(err);
                    }
                    tracing::debug!(error = %err, "DeleteObjects refused; deleting one by one");
                    for key in batch {
                        self.delete(key).await?;
                    }
                }
            }
        }
        Ok(())
    }

    async fn list(&self, req: ListRequest) -> Result<ListPage, StoreError> {
        let max_keys = req
            .max_keys
            .unwrap_or(MAX_LIST_KEYS)
            .clamp(1, MAX_LIST_KEYS);
        let full_prefix = format!("{}{}", self.key_root(), req.prefix);
        // Only a non-empty delimiter is sent: s3s-fs takes an empty `delimiter=` as a delimiter.
        let delimiter = req.delimiter.filter(|d| !d.is_empty());
        let out = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&full_prefix)
            .set_delimiter(delimiter)
            .set_continuation_token(req.continuation)
            .max_keys(max_keys as i32)
            .send()
            .await
            .map_err(|e| map_err(OP_LIST, &req.prefix, self.max_attempts, e))?;
        let mut page = ListPage::default();
        for obj in out.contents() {
            let Some(key) = obj.key().and_then(|k| self.strip(k)) else {
                continue;
            };
            page.objects.push(ObjectSummary {
                key: key.to_string(),
                size: obj.size().unwrap_or(0).max(0) as u64,
                etag: obj.e_tag().map(unquote).unwrap_or_default(),
                last_modified: to_system_time(obj.last_modified()),
            });
        }
        for cp in out.common_prefixes() {
            if let Some(p) = cp.prefix().and_then(|p| self.strip(p)) {
                page.common_prefixes.push(p.to_string());
            }
        }
        if out.is_truncated() == Some(true) {
            page.next = out.next_continuation_token().map(str::to_string);
            if page.next.is_none() {
                return Err(StoreError::new(
                    StoreErrorKind::Other,
                    OP_LIST,
                    &req.prefix,
                    "the listing is truncated but has no continuation token",
                ));
            }
        }
        Ok(page)
    }

    async fn create_multipart(&self, key: &str, opts: PutOptions) -> Result<String, StoreError> {
        rules::validate_key(OP_CREATE, key)?;
        let req = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(self.full_key(key));
        let req = with_headers!(req, OP_CREATE, key, opts);
        let out = req
            .send()
            .await
            .map_err(|e| map_err(OP_CREATE, key, self.max_attempts, e))?;
        out.upload_id()
            .map(str::to_string)
            .ok_or_else(|| missing(OP_CREATE, key, "upload id"))
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Bytes,
    ) -> Result<String, StoreError> {
        rules::validate_key(OP_PART, key)?;
        rules::validate_part_number(OP_PART, key, part_number)?;
        rules::validate_part_size(OP_PART, key, body.len() as u64)?;
        let full = self.full_key(key);
        let request = || {
            let request = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(&full)
                .upload_id(upload_id)
                .part_number(part_number as i32)
                .content_length(body.len() as i64)
                .body(ByteStream::from(body.clone()))
                .customize();
            if self.unsigned_payload {
                request.disable_payload_signing()
            } else {
                request
            }
        };
        let timeouts = self.body_timeouts(body.len() as u64);
        let out = match request()
            .config_override(Self::single_attempt().timeout_config(timeouts.clone()))
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) => {
                let status = status_of(&e);
                let err = map_err(OP_PART, key, 1, e);
                if let Some(err) = self
                    .check_first_failure(OP_PART, key, upload_id, status, err)
                    .await
                {
                    return Err(err);
                }
                request()
                    .config_override(self.remaining_attempts().timeout_config(timeouts))
                    .send()
                    .await
                    .map_err(|e| map_err(OP_PART, key, self.max_attempts, e))?
            }
        };
        out.e_tag()
            .map(unquote)
            .ok_or_else(|| missing(OP_PART, key, "ETag"))
    }

    async fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        source_key: &str,
        range: Range<u64>,
        source_if_match: Option<&str>,
    ) -> Result<String, StoreError> {
        rules::validate_key(OP_PART_COPY, key)?;
        rules::validate_key(OP_PART_COPY, source_key)?;
        rules::validate_part_number(OP_PART_COPY, key, part_number)?;
        if range.start >= range.end {
            return Err(invalid_range(OP_PART_COPY, source_key, &range));
        }
        rules::validate_part_size(OP_PART_COPY, key, range.end - range.start)?;
        let full = self.full_key(key);
        let copy_source = format!("{}/{}", self.bucket, encode_key(&self.full_key(source_key)));
        let request = || {
            self.client
                .upload_part_copy()
                .bucket(&self.bucket)
                .key(&full)
                .upload_id(upload_id)
                .part_number(part_number as i32)
                .copy_source(&copy_source)
                .copy_source_range(http_range(&range))
                .set_copy_source_if_match(source_if_match.map(quote_etag))
                .customize()
        };
        let timeouts = self.server_work_timeouts();
        let out = match request()
            .config_override(Self::single_attempt().timeout_config(timeouts.clone()))
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) => {
                let status = status_of(&e);
                let err = map_err(OP_PART_COPY, key, 1, e);
                if let Some(err) = self
                    .check_first_failure(OP_PART_COPY, key, upload_id, status, err)
                    .await
                {
                    return Err(err);
                }
                request()
                    .config_override(self.remaining_attempts().timeout_config(timeouts))
                    .send()
                    .await
                    .map_err(|e| map_err(OP_PART_COPY, key, self.max_attempts, e))?
            }
        };
        out.copy_part_result()
            .and_then(|r| r.e_tag())
            .map(unquote)
            .ok_or_else(|| missing(OP_PART_COPY, key, "ETag"))
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
        condition: PutCondition,
    ) -> Result<PutResult, StoreError> {
        rules::validate_key(OP_COMPLETE, key)?;
        if parts.is_empty() {
            return Err(StoreError::new(
                StoreErrorKind::InvalidPartOrder,
                OP_COMPLETE,
                key,
                "the part list is empty",
            ));
        }
        let mut previous = 0;
        for part in parts {
            rules::validate_part_number(OP_COMPLETE, key, part.number)?;
            if part.number <= previous {
                return Err(StoreError::new(
                    StoreErrorKind::InvalidPartOrder,
                    OP_COMPLETE,
                    key,
                    format!(
                        "part {} follows part {previous}: numbers must ascend",
                        part.number
                    ),
                ));
            }
            previous = part.number;
        }
        let upload = CompletedMultipartUpload::builder()
            .set_parts(Some(
                parts
                    .iter()
                    .map(|p| {
                        SdkCompletedPart::builder()
                            .part_number(p.number as i32)
                            .e_tag(quote_etag(&p.etag))
                            .build()
                    })
                    .collect(),
            ))
            .build();
        let (if_match, if_none_match) = Self::condition_headers(&condition).unwrap_or_default();
        let full = self.full_key(key);
        let request = || {
            self.client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(&full)
                .upload_id(upload_id)
                .multipart_upload(upload.clone())
                .set_if_match(if_match.clone())
                .set_if_none_match(if_none_match.clone())
                .customize()
        };
        // As for UploadPart: moto answers 500 to an unknown upload id.
        let timeouts = self.server_work_timeouts();
        let out = match request()
            .config_override(Self::single_attempt().timeout_config(timeouts.clone()))
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) => {
                let status = status_of(&e);
                let err = map_err(OP_COMPLETE, key, 1, e);
                if let Some(err) = self
                    .check_first_failure(OP_COMPLETE, key, upload_id, status, err)
                    .await
                {
                    return Err(err);
                }
                request()
                    .config_override(self.remaining_attempts().timeout_config(timeouts))
                    .send()
                    .await
                    .map_err(|e| map_err(OP_COMPLETE, key, self.max_attempts, e))?
            }
        };
        Ok(PutResult {
            etag: unquote(
                out.e_tag()
                    .ok_or_else(|| missing(OP_COMPLETE, key, "ETag"))?,
            ),
        })
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        rules::validate_key(OP_ABORT, key)?;
        self.client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .upload_id(upload_id)
            .send()
            .await
            .map_err(|e| map_err(OP_ABORT, key, self.max_attempts, e))?;
        Ok(())
    }

    async fn list_parts(
        &self,
        key: &str,
        upload_id: &str,
        marker: Option<u32>,
    ) -> Result<PartsPage, StoreError> {
        rules::validate_key(OP_LIST_PARTS, key)?;
        let result = self
            .client
            .list_parts()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .upload_id(upload_id)
            .set_part_number_marker(marker.map(|m| m.to_string()))
            .send()
            .await;
        let mut page = match result {
            Ok(out) => {
                let mut page = PartsPage::default();
                for part in out.parts() {
                    let Some(number) = part.part_number() else {
                        continue;
                    };
                    page.parts.push(PartInfo {
                        number: number.max(0) as u32,
                        etag: part.e_tag().map(unquote).filter(|e| !e.is_empty()),
                        size: part.size().unwrap_or(0).max(0) as u64,
                    });
                }
                if out.is_truncated() == Some(true) {
                    page.next_marker = out
                        .next_part_number_marker()
                        .and_then(|m| m.trim().parse().ok())
                        .or_else(|| page.parts.iter().map(|p| p.number).max());
                }
                page
            }
            Err(e) => match moto_list_parts(&e) {
                Some(page) => page,
                None => return Err(map_err(OP_LIST_PARTS, key, self.max_attempts, e)),
            },
        };
        // S3 lists parts in ascending order after the marker; s3s-fs lists them in directory
        // order and ignores the marker.
        page.parts.retain(|p| marker.is_none_or(|m| p.number > m));
        page.parts.sort_by_key(|p| p.number);
        Ok(page)
    }

    async fn list_multipart_uploads(
        &self,
        prefix: &str,
        marker: Option<UploadsMarker>,
    ) -> Result<UploadsPage, StoreError> {
        let (key_marker, upload_id_marker) = match marker {
            Some(m) => (Some(self.full_key(&m.key)), Some(m.upload_id)),
            None => (None, None),
        };
        let out = self
            .client
            .list_multipart_uploads()
            .bucket(&self.bucket)
            .prefix(format!("{}{prefix}", self.key_root()))
            .set_key_marker(key_marker)
            .set_upload_id_marker(upload_id_marker)
            .send()
            .await
            .map_err(|e| map_err(OP_LIST_UPLOADS, prefix, self.max_attempts, e))?;
        let mut page = UploadsPage::default();
        for upload in out.uploads() {
            let (Some(key), Some(upload_id)) =
                (upload.key().and_then(|k| self.strip(k)), upload.upload_id())
            else {
                continue;
            };
            page.uploads.push(UploadInfo {
                key: key.to_string(),
                upload_id: upload_id.to_string(),
                initiated: to_system_time(upload.initiated()),
            });
        }
        if out.is_truncated() == Some(true) {
            let key = out
                .next_key_marker()
                .and_then(|k| self.strip(k))
                .map(str::to_string);
            let upload_id = out.next_upload_id_marker().map(str::to_string);
            page.next = match (key, upload_id) {
                (Some(key), Some(upload_id)) => Some(UploadsMarker { key, upload_id }),
                _ => page.uploads.last().map(|u| UploadsMarker {
                    key: u.key.clone(),
                    upload_id: u.upload_id.clone(),
                }),
            };
        }
        Ok(page)
    }
}

// The S3 client takes a streamed body as an `http_body::Body`: the store layer's own types
// stay free of HTTP, only this backend speaks it.
impl http_body::Body for ExactBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        futures::Stream::poll_next(self, cx)
            .map(|item| item.map(|chunk| chunk.map(http_body::Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining() == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn bodies_go_unsigned_only_over_https_or_loopback() {
        use super::payload_is_protected as protected;
        assert!(protected(None));
        assert!(protected(Some("https://s3.example.com")));
        assert!(protected(Some("http://127.0.0.1:9000")));
        assert!(protected(Some("http://127.8.9.1")));
        assert!(protected(Some("http://localhost:9000/")));
        assert!(protected(Some("http://[::1]:9000")));
        assert!(!protected(Some("http://10.0.0.5:9000")));
        assert!(!protected(Some("http://s3.example.com")));
        assert!(!protected(Some("http://127.0.0.1.example.com")));
        assert!(!protected(Some("not a url")));
    }

    use super::*;

    #[test]
    fn errors_are_classified_by_code_then_status() {
        use StoreErrorKind::*;
        assert_eq!(classify(404, Some("NoSuchKey")), NotFound);
        assert_eq!(classify(404, Some("NoSuchUpload")), NoSuchUpload);
        assert_eq!(classify(404, None), NotFound);
        assert_eq!(
            classify(412, Some("PreconditionFailed")),
            PreconditionFailed
        );
        assert_eq!(classify(409, Some("ConditionalRequestConflict")), Conflict);
        assert_eq!(classify(400, Some("EntityTooSmall")), EntityTooSmall);
        assert_eq!(classify(400, Some("InvalidPart")), InvalidPart);
        assert_eq!(classify(400, Some("InvalidPartOrder")), InvalidPartOrder);
        assert_eq!(classify(416, None), InvalidRange);
        assert_eq!(classify(403, Some("SignatureDoesNotMatch")), AccessDenied);
        assert_eq!(classify(403, Some("InvalidAccessKeyId")), AccessDenied);
        assert_eq!(classify(501, Some("NotImplemented")), NotSupported);
        assert_eq!(classify(503, Some("SlowDown")), Transient);
        assert_eq!(classify(500, None), Transient);
        assert_eq!(classify(400, Some("RequestTimeout")), Transient);
        assert_eq!(classify(400, Some("MalformedXML")), Other);
    }

    #[test]
    fn keys_ranges_and_etags_are_encoded() {
        assert_eq!(encode_key("a b/c+d%é"), "a%20b/c%2Bd%25%C3%A9");
        assert_eq!(http_range(&(0..10)), "bytes=0-9");
        assert_eq!(content_range_total("bytes 0-4/10"), Some(10));
        assert_eq!(quote_etag("abc"), "\"abc\"");
        assert_eq!(quote_etag("\"abc\""), "\"abc\"");
        assert_eq!(unquote("\"abc\""), "abc");
    }

    #[tokio::test]
    async fn prefix_is_normalized_and_described() {
        let mut config = S3Config::new("bucket");
        config.prefix = "/a/b/".into();
        config.region = Some("us-east-1".into());
        config.endpoint = Some("http://127.0.0.1:1".into());
        config.credentials = Some(("ak".into(), "sk".into()));
        let store = S3Store::new(config.clone()).await.unwrap();
        assert_eq!(store.describe(), "s3://bucket/a/b");
        assert_eq!(store.full_key("k"), "a/b/k");
        assert_eq!(store.strip("a/b/k"), Some("k"));
        assert_eq!(store.strip("a/bk"), None);
        assert!(
            !format!("{config:?}").contains("sk"),
            "the secret must not be printed"
        );

        config.prefix = String::new();
        let root = S3Store::new(config).await.unwrap();
        assert_eq!(root.describe(), "s3://bucket");
        assert_eq!(root.full_key("k"), "k");
    }

    #[tokio::test]
    async fn uploads_get_their_body_s_transfer_time_on_top_of_the_read_timeout() {
        let mut config = S3Config::new("bucket");
        config.region = Some("us-east-1".into());
        config.endpoint = Some("http://127.0.0.1:1".into());
        config.credentials = Some(("ak".into(), "sk".into()));
        let read = S3Timeouts::default().read.unwrap();
        assert_eq!(read, Duration::from_secs(30), "requests without a body");
        let store = S3Store::new(config.clone()).await.unwrap();
        let t = store.body_timeouts(0);
        assert_eq!(t.read_timeout(), Some(read));
        assert_eq!(t.connect_timeout(), Some(Duration::from_secs(5)));
        // A 5 MiB part is given 80 s more at 64 KiB/s, whatever the base.
        let part = 5 * 1024 * 1024;
        assert_eq!(
            store.body_timeouts(part).read_timeout(),
            Some(read + Duration::from_secs(80))
        );
        // Copies and completions, which servers may answer only once done, get 4 times as long.
        assert_eq!(
            store.server_work_timeouts().read_timeout(),
            Some(Duration::from_secs(120))
        );
        config.timeouts.read = Some(Duration::from_secs(1));
        let store = S3Store::new(config).await.unwrap();
        assert_eq!(
            store.body_timeouts(part).read_timeout(),
            Some(Duration::from_secs(81))
        );
        assert_eq!(
            store.server_work_timeouts().read_timeout(),
            Some(Duration::from_secs(4))
        );
    }

    /// An endpoint that accepts connections and never answers.
    fn hung_endpoint() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                std::thread::spawn(move || {
                    let mut sink = [0u8; 64 * 1024];
                    while matches!(std::io::Read::read(&mut conn, &mut sink), Ok(n) if n > 0) {}
                });
            }
        });
        format!("http://127.0.0.1:{port}")
    }

    /// The extended read timeout reaches the requests of `put` and `upload_part` (their error
    /// names the timeout that fired), and a hung endpoint's error says what to do.
    #[tokio::test]
    async fn in_memory_uploads_wait_for_their_body_and_say_what_timed_out() {
        let mut config = S3Config::new("bucket");
        config.region = Some("us-east-1".into());
        config.endpoint = Some(hung_endpoint());
        config.credentials = Some(("ak".into(), "sk".into()));
        config.max_attempts = 1;
        config.timeouts.read = Some(Duration::from_secs(1));
        let store = S3Store::new(config).await.unwrap();
        // 64 KiB: one second more than the read timeout.
        let body = Bytes::from(vec![7u8; STREAM_FLOOR_RATE as usize]);
        let (put, part, head) = tokio::join!(
            store.put("k", body.clone(), PutOptions::default()),
            store.upload_part("k", "upload", 1, body),
            store.head("k"),
        );
        for (err, after) in [
            (put.unwrap_err(), "after 2s"),
            (part.unwrap_err(), "after 2s"),
            (head.unwrap_err(), "after 1s"),
        ] {
            assert_eq!(err.kind(), StoreErrorKind::Transient, "{err}");
            let text = err.to_string();
            assert!(text.contains(after), "{after}: {text}");
            assert!(
                text.contains("did not answer within the read timeout (1 attempt;")
                    && text.contains("raise read_timeout="),
                "{text}"
            );
        }
    }

    #[tokio::test]
    async fn invalid_keys_are_rejected_before_any_request() {
        let mut config = S3Config::new("bucket");
        config.region = Some("us-east-1".into());
        // Nothing listens here: a request would fail with Transient, not InvalidKey.
        config.endpoint = Some("http://127.0.0.1:1".into());
        config.credentials = Some(("ak".into(), "sk".into()));
        config.max_attempts = 1;
        let store = S3Store::new(config).await.unwrap();
        for bad in ["", "/abs", "a/../b"] {
            let err = store.head(bad).await.unwrap_err();
            assert_eq!(err.kind(), StoreErrorKind::InvalidKey, "{bad:?}");
        }
        let err = store.head("ok").await.unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Transient, "{err}");
        assert!(S3Store::new(S3Config::new("")).await.is_err());
    }
}

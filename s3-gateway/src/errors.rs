//! The gateway's own errors (starting up), and how store errors become S3 errors on the wire.

use std::net::SocketAddr;

use fs_core::store::{StoreError, StoreErrorKind};
use s3s::{S3Error, S3ErrorCode};

/// Why the gateway could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// Neither credentials nor anonymous access were configured: refusing to serve an open
    /// endpoint by accident.
    #[error(
        "no credentials: give --access-key and --secret-key, --credentials-file, or set \
         RIVULET_ACCESS_KEY_ID and RIVULET_SECRET_ACCESS_KEY (or pass --anonymous to allow \
         unsigned requests)"
    )]
    NoCredentials,
    /// A configuration value is unusable.
    #[error("{0}")]
    Config(String),
    /// The credentials file could not be read or parsed.
    #[error("credentials file {path}: {why}")]
    CredentialsFile { path: String, why: String },
    /// The writer of appendable objects could not be set up, or recovering the objects a
    /// previous run left open failed.
    #[error("appendable objects: {0}")]
    Appends(#[from] fs_core::WriterError),
    /// The listening socket could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The S3 error code for a store error of this kind. `NotFound` is `NoSuchKey`: callers that
/// mean a bucket check the bucket themselves and answer `NoSuchBucket`.
pub fn code_for(kind: StoreErrorKind) -> S3ErrorCode {
    match kind {
        StoreErrorKind::NotFound => S3ErrorCode::NoSuchKey,
        StoreErrorKind::NoSuchUpload => S3ErrorCode::NoSuchUpload,
        StoreErrorKind::PreconditionFailed => S3ErrorCode::PreconditionFailed,
        StoreErrorKind::Conflict => S3ErrorCode::ConditionalRequestConflict,
        StoreErrorKind::EntityTooSmall => S3ErrorCode::EntityTooSmall,
        StoreErrorKind::InvalidPart => S3ErrorCode::InvalidPart,
        StoreErrorKind::InvalidPartOrder => S3ErrorCode::InvalidPartOrder,
        StoreErrorKind::InvalidRange => S3ErrorCode::InvalidRange,
        StoreErrorKind::InvalidKey | StoreErrorKind::InvalidArgument => {
            S3ErrorCode::InvalidArgument
        }
        StoreErrorKind::AccessDenied => S3ErrorCode::AccessDenied,
        StoreErrorKind::NotSupported => S3ErrorCode::NotImplemented,
        // 503 tells S3 clients to back off and retry, which is what a transient store failure
        // calls for.
        StoreErrorKind::Transient => S3ErrorCode::ServiceUnavailable,
        StoreErrorKind::Other => S3ErrorCode::InternalError,
    }
}

/// A store error as the S3 error a client sees. The message is the store error's one line
/// (operation, key, cause), which names store keys, not the client's bucket-relative key: that
/// is deliberate, it is what an operator needs in a client's error output.
pub fn to_s3(err: StoreError) -> S3Error {
    let code = code_for(err.kind());
    if code == S3ErrorCode::InternalError {
        tracing::warn!(error = %err, "store error");
    }
    S3Error::with_message(code, err.to_string())
}

/// A client error with a message.
pub fn s3_err(code: S3ErrorCode, msg: impl Into<String>) -> S3Error {
    S3Error::with_message(code, msg.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_kinds_map_to_s3_codes_and_statuses() {
        let cases = [
            (StoreErrorKind::NotFound, "NoSuchKey", 404),
            (StoreErrorKind::NoSuchUpload, "NoSuchUpload", 404),
            (
                StoreErrorKind::PreconditionFailed,
                "PreconditionFailed",
                412,
            ),
            (StoreErrorKind::EntityTooSmall, "EntityTooSmall", 400),
            (StoreErrorKind::InvalidPart, "InvalidPart", 400),
            (StoreErrorKind::InvalidPartOrder, "InvalidPartOrder", 400),
            (StoreErrorKind::InvalidRange, "InvalidRange", 416),
            (StoreErrorKind::InvalidKey, "InvalidArgument", 400),
            (StoreErrorKind::Conflict, "ConditionalRequestConflict", 409),
            (StoreErrorKind::Transient, "ServiceUnavailable", 503),
            (StoreErrorKind::Other, "InternalError", 500),
        ];
        for (kind, code, status) in cases {
            let err = to_s3(StoreError::new(kind, "get", "b/k", "why"));
            assert_eq!(err.code().as_str(), code, "{kind:?}");
            assert_eq!(
                err.code().status_code().map(|s| s.as_u16()),
                Some(status),
                "{kind:?}"
            );
            assert!(err.message().unwrap_or_default().contains("b/k"));
        }
    }
}

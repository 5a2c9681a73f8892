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

/// What S3 says for the errors s3s answers with a code alone (before the gateway's code runs:
/// signatures, malformed XML, bucket names), so that clients show more than "Unknown".
fn default_message(code: &str) -> &'static str {
    match code {
        "SignatureDoesNotMatch" => {
            "The request signature we calculated does not match the signature you provided. \
             Check your key and signing method."
        }
        "InvalidAccessKeyId" => "The access key ID you provided does not exist in our records.",
        "AccessDenied" => "Access Denied",
        "MalformedXML" => {
            "The XML you provided was not well-formed or did not validate against our \
             published schema."
        }
        "InvalidBucketName" => "The specified bucket is not valid.",
        "MissingRequestBodyError" => "Request Body is empty.",
        "RequestTimeTooSkewed" => {
            "The difference between the request time and the server's time is too large."
        }
        "AuthorizationHeaderMalformed" => "The authorization header is malformed.",
        _ => "The request failed; see the error code.",
    }
}

/// An S3 error body completed as S3 writes it: with a `<Message>` where it has none, and the
/// request's `<RequestId>`. `None` when `body` is no S3 error document (or already complete).
pub fn completed_error_body(body: &[u8], request_id: &str) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(body).ok()?;
    let end = text.rfind("</Error>")?;
    let code_end = text.find("</Code>")?;
    let code = text[..code_end].rsplit_once("<Code>")?.1;
    let has_message = text.contains("<Message>");
    let has_request_id = text.contains("<RequestId>");
    if has_message && has_request_id {
        return None;
    }
    let mut out = String::with_capacity(text.len() + 200);
    let after_code = code_end + "</Code>".len();
    out.push_str(&text[..after_code]);
    if !has_message {
        out.push_str("<Message>");
        out.push_str(default_message(code));
        out.push_str("</Message>");
    }
    out.push_str(&text[after_code..end]);
    if !has_request_id {
        // Request ids are hex digits: nothing to escape.
        out.push_str("<RequestId>");
        out.push_str(request_id);
        out.push_str("</RequestId>");
    }
    out.push_str(&text[end..]);
    Some(out.into_bytes())
}

#[cfg(test)]
mod error_body_tests {
    use super::*;

    #[test]
    fn a_bare_error_gets_a_message_and_the_request_id() {
        let bare = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SignatureDoesNotMatch</Code></Error>";
        let done =
            String::from_utf8(completed_error_body(bare.as_bytes(), "0123ABCD").unwrap()).unwrap();
        assert_eq!(
            done,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SignatureDoesNotMatch</Code>\
             <Message>The request signature we calculated does not match the signature you \
             provided. Check your key and signing method.</Message><RequestId>0123ABCD</RequestId></Error>"
        );
        // A message of its own is kept; only the id is added.
        let own = "<Error><Code>NoSuchKey</Code><Message>gone</Message></Error>";
        let done = String::from_utf8(completed_error_body(own.as_bytes(), "42").unwrap()).unwrap();
        assert_eq!(
            done,
            "<Error><Code>NoSuchKey</Code><Message>gone</Message><RequestId>42</RequestId></Error>"
        );
        assert!(completed_error_body(b"<ListBucketResult/>", "42").is_none());
        assert!(completed_error_body(b"\xff\xfe", "42").is_none());
    }
}

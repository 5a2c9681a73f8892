//! Typed errors. A store error names the operation, the key and the cause; a writer error says
//! what the writer was doing and, where it can, what the caller should do about it.

use std::fmt;

/// What kind of failure a store reported; callers match on this, never on message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreErrorKind {
    /// The key (or bucket) does not exist.
    NotFound,
    /// The multipart upload does not exist: aborted, completed, or expired by a lifecycle rule.
    NoSuchUpload,
    /// A conditional write or copy failed its condition (412).
    PreconditionFailed,
    /// A concurrent conflicting conditional write (409); the caller may retry from scratch.
    Conflict,
    /// A multipart part other than the last is below the minimum part size.
    EntityTooSmall,
    /// A part named at completion was not uploaded, or its ETag differs.
    InvalidPart,
    /// Part numbers at completion are not ascending, or the list is empty.
    InvalidPartOrder,
    /// A byte range outside the object.
    InvalidRange,
    /// A key that is empty, too long, or would escape the store's root.
    InvalidKey,
    /// A part number outside 1..=10,000, or a part larger than 5 GiB.
    InvalidArgument,
    /// Credentials refused.
    AccessDenied,
    /// The backend does not implement this operation (s3s-fs: ListMultipartUploads).
    NotSupported,
    /// A failure that may succeed when retried: 5xx, SlowDown, timeouts, connection resets.
    Transient,
    /// Anything else: local I/O errors, unexpected answers.
    Other,
}

impl StoreErrorKind {
    fn describe(self) -> &'static str {
        match self {
            Self::NotFound => "not found",
            Self::NoSuchUpload => "no such multipart upload (aborted, completed or expired)",
            Self::PreconditionFailed => "precondition failed",
            Self::Conflict => "conflicting concurrent write",
            Self::EntityTooSmall => "part too small (every part but the last must be >= 5 MiB)",
            Self::InvalidPart => "invalid part",
            Self::InvalidPartOrder => "invalid part order",
            Self::InvalidRange => "invalid range",
            Self::InvalidKey => "invalid key",
            Self::InvalidArgument => "invalid argument",
            Self::AccessDenied => "access denied",
            Self::NotSupported => "not supported by this store",
            Self::Transient => "temporary failure",
            Self::Other => "error",
        }
    }
}

/// An error from an [`crate::store::ObjectStore`] call.
#[derive(Debug)]
pub struct StoreError {
    kind: StoreErrorKind,
    op: &'static str,
    key: String,
    detail: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
    /// The file a call on another key was for (a tail object's file), named first.
    file: Option<String>,
}

impl StoreError {
    pub fn new(
        kind: StoreErrorKind,
        op: &'static str,
        key: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            op,
            key: key.into(),
            detail: detail.into(),
            source: None,
            file: None,
        }
    }

    /// Names the file a call on another key (a tail object) was made for.
    pub fn for_file(mut self, file: impl Into<String>) -> Self {
        self.file = Some(file.into());
        self
    }

    /// Attaches the underlying error (kept for `source()` and shown in the message).
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// A local I/O error, classified: missing files are `NotFound`, everything else `Other`.
    pub fn io(op: &'static str, key: impl Into<String>, err: std::io::Error) -> Self {
        let kind = match err.kind() {
            std::io::ErrorKind::NotFound => StoreErrorKind::NotFound,
            std::io::ErrorKind::PermissionDenied => StoreErrorKind::AccessDenied,
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::Interrupted => {
                StoreErrorKind::Transient
            }
            _ => StoreErrorKind::Other,
        };
        Self::new(kind, op, key, err.to_string()).with_source(err)
    }

    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    pub fn op(&self) -> &'static str {
        self.op
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn detail(&self) -> &str {
        &self.detail
    }

    /// Whether retrying the same call may succeed.
    pub fn is_transient(&self) -> bool {
        self.kind == StoreErrorKind::Transient
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = self.file.as_deref().filter(|file| *file != self.key) {
            write!(f, "{file}: ")?;
        }
        write!(f, "{} '{}': {}", self.op, self.key, self.kind.describe())?;
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

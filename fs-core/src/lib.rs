//! Rivulet's core: a recoverable writer over object storage.
//!
//! A file being written is an S3 multipart upload. Full parts go up as they fill; `persist()`
//! stages the incomplete tail as its own small object and returns a resume token; `recover`
//! resumes exactly there; `commit` completes the upload atomically and idempotently. Append and
//! truncate of existing objects copy the kept prefix server-side. See `docs/design.md`.
//!
//! This crate knows nothing of FUSE, HTTP or the engine: those are its clients.

pub mod error;
pub mod index;
pub mod md5;
pub mod retry;
pub mod store;
pub mod token;
pub mod writer;

pub use error::{StoreError, StoreErrorKind};
pub use index::Index;
pub use token::{CommitToken, ResumeToken, Token};
pub use writer::{
    CommitOutcome, Committer, FileWriter, RecoverableWriter, WriterConfig, WriterError,
};

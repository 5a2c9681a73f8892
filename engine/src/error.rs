//! The engine's errors. Each says what failed and where (job file field, record position,
//! operator subtask, store key), so that a user can act on it.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum EngineError {
    /// The job file or graph is wrong; `at` names the field (`operator[2].expr`).
    #[error("job file, {at}: {message}")]
    Job { at: String, message: String },
    /// A field expression does not parse or does not fit its input schema.
    #[error("expression `{expr}`: {message}")]
    Expr { expr: String, message: String },
    /// A record that cannot be read; `at` names where it came from (`key:line`).
    #[error("malformed record at {at}: {message}")]
    Record { at: String, message: String },
    /// Records could not be encoded into an output file; `what` names the file (or its
    /// bucket and sink while it has no name yet).
    #[error("encoding {what}: {message}")]
    Encode { what: String, message: String },
    #[error(transparent)]
    Writer(#[from] fs_core::WriterError),
    #[error(transparent)]
    Store(#[from] fs_core::StoreError),
    /// A checkpoint's state could not be encoded or decoded.
    #[error("state of {what}: {message}")]
    State { what: String, message: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The job was cancelled or its task is being torn down: not a failure of the task.
    #[error("cancelled")]
    Cancelled,
    /// A task failed; the message names the subtask and the cause.
    #[error("{task}: {message}")]
    Task { task: String, message: String },
    /// Nothing answered at a job manager's address (refused, or no answer in time): the
    /// client cannot tell whether the job manager is gone for good or restarting.
    #[error("job manager at {address}: {detail}")]
    Unreachable { address: String, detail: String },
}

impl EngineError {
    pub fn job(at: impl Into<String>, message: impl Into<String>) -> Self {
        EngineError::Job {
            at: at.into(),
            message: message.into(),
        }
    }

    pub fn record(at: impl Into<String>, message: impl Into<String>) -> Self {
        EngineError::Record {
            at: at.into(),
            message: message.into(),
        }
    }

    pub fn state(what: impl Into<String>, message: impl ToString) -> Self {
        EngineError::State {
            what: what.into(),
            message: message.to_string(),
        }
    }

    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        EngineError::Io {
            what: what.into(),
            source,
        }
    }
}

//! The replayable sources: each keeps a position that goes into every checkpoint, so a job
//! restored from a checkpoint emits exactly the records after it again.
//!
//! - [`nexmark`]: the Nexmark benchmark's auction events, generated deterministically from the
//!   event number.
//! - [`files`]: JSON-lines or CSV files under a prefix of the job's store.

pub mod files;
pub mod nexmark;
#[cfg(test)]
mod testing;

pub use files::{DEFAULT_DISCOVER_INTERVAL, FilesConfig, FilesSource, OnError};
pub use nexmark::{EventKind, NexmarkConfig, NexmarkSource, schema_for};

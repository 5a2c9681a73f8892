//! Sinks: the exactly-once bucketed file sink and a discarding sink for benchmarks.

pub mod bucket;
mod buckets;
pub mod discard;
pub mod file;
pub mod parquet;
pub mod rolling;
pub mod state;

use std::sync::atomic::AtomicU64;

pub use bucket::{BucketAssigner, TimeSource};
pub use discard::DiscardSink;
pub use file::{FileSink, FileSinkConfig};
pub use rolling::RollingPolicy;

/// Counters of a file sink subtask, readable while it runs.
#[derive(Debug, Default)]
pub struct SinkMetrics {
    /// Records encoded into part files.
    pub records_written: AtomicU64,
    /// Encoded bytes of those records (Parquet: of the files, footers included, counted as
    /// they are encoded).
    pub bytes_written: AtomicU64,
    /// Part files this subtask published (not counting files an earlier attempt published).
    pub files_finished: AtomicU64,
    /// Times an idle in-progress file was parked at a checkpoint, its memory given back until
    /// its next write or roll (see the file sink's "Idle files").
    pub files_parked: AtomicU64,
    /// Times an idle in-progress file let go of its part buffer between checkpoints, keeping
    /// only its tail (see the file sink's "Idle files").
    pub buffers_released: AtomicU64,
}

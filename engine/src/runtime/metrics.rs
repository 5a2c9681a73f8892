//! Counters of a running job, shared by its subtasks (which add to them about every tick)
//! and read by the progress report and the REST API.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Records through one vertex, over all its subtasks.
#[derive(Debug, Default)]
pub struct VertexMetrics {
    records_in: AtomicU64,
    records_out: AtomicU64,
    malformed_records: AtomicU64,
}

impl VertexMetrics {
    pub fn add_in(&self, n: u64) {
        if n > 0 {
            self.records_in.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn add_out(&self, n: u64) {
        if n > 0 {
            self.records_out.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Malformed records a source skipped (`on_error = "skip"`).
    pub fn add_malformed(&self, n: u64) {
        if n > 0 {
            self.malformed_records.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn malformed_records(&self) -> u64 {
        self.malformed_records.load(Ordering::Relaxed)
    }

    pub fn records_in(&self) -> u64 {
        self.records_in.load(Ordering::Relaxed)
    }

    pub fn records_out(&self) -> u64 {
        self.records_out.load(Ordering::Relaxed)
    }
}

/// Records in and out of one vertex, over the subtasks counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VertexCounts {
    pub records_in: u64,
    pub records_out: u64,
    /// Malformed records skipped by a source vertex (0 for others). Defaulted so that a task
    /// manager of an older build, whose heartbeats lack it, is still understood.
    #[serde(default)]
    pub malformed_records: u64,
}

/// One completed or declined checkpoint, as the history shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CheckpointRecord {
    pub id: u64,
    pub completed: bool,
    pub is_final: bool,
    /// From the trigger to completion (or to the decline), rounded up: a checkpoint that took
    /// a fraction of a millisecond shows 1, not 0.
    pub duration_ms: u64,
    /// Bytes of state stored for it.
    pub state_bytes: u64,
    /// Why a declined checkpoint was declined (a timeout, a subtask that could not store its
    /// state, the metadata write, a failed task); `None` for a completed one.
    pub reason: Option<String>,
}

/// `elapsed` in milliseconds, rounded up (see [`CheckpointRecord::duration_ms`]).
pub fn millis_rounded_up(elapsed: Duration) -> u64 {
    elapsed.as_micros().div_ceil(1000) as u64
}

#[derive(Debug, Default)]
pub struct JobMetrics {
    vertices: Vec<VertexMetrics>,
    blocked_micros: AtomicU64,
    restarts: AtomicU64,
    /// Attempts deployed from a completed checkpoint (after a failure, or resuming a job
    /// recorded as running when its job manager or embedded run started).
    restores: AtomicU64,
    /// The checkpoint the latest restore started from, 0 for none (ids start at 1).
    restored_checkpoint: AtomicU64,
    checkpoints: Mutex<Vec<CheckpointRecord>>,
}

impl JobMetrics {
    pub fn new(vertices: usize) -> Self {
        Self {
            vertices: (0..vertices).map(|_| VertexMetrics::default()).collect(),
            ..Self::default()
        }
    }

    pub fn vertex(&self, index: usize) -> &VertexMetrics {
        &self.vertices[index]
    }

    /// Every vertex's counts, in vertex order.
    pub fn counts(&self) -> Vec<VertexCounts> {
        self.vertices
            .iter()
            .map(|v| VertexCounts {
                records_in: v.records_in(),
                records_out: v.records_out(),
                malformed_records: v.malformed_records(),
            })
            .collect()
    }

    pub fn add_blocked(&self, d: Duration) {
        self.blocked_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// Time subtasks spent waiting on full output channels (backpressure), summed.
    pub fn blocked(&self) -> Duration {
        Duration::from_micros(self.blocked_micros.load(Ordering::Relaxed))
    }

    pub fn add_restart(&self) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
    }

    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// An attempt was deployed from completed checkpoint `checkpoint_id`.
    pub fn add_restore(&self, checkpoint_id: u64) {
        self.restores.fetch_add(1, Ordering::Relaxed);
        self.restored_checkpoint
            .store(checkpoint_id, Ordering::Relaxed);
    }

    pub fn restores(&self) -> u64 {
        self.restores.load(Ordering::Relaxed)
    }

    /// The checkpoint the latest restore started from.
    pub fn restored_checkpoint(&self) -> Option<u64> {
        match self.restored_checkpoint.load(Ordering::Relaxed) {
            0 => None,
            id => Some(id),
        }
    }

    pub fn record_checkpoint(&self, record: CheckpointRecord) {
        if let Ok(mut history) = self.checkpoints.lock() {
            history.push(record);
        }
    }

    pub fn checkpoints(&self) -> Vec<CheckpointRecord> {
        self.checkpoints
            .lock()
            .map(|h| h.clone())
            .unwrap_or_default()
    }
}

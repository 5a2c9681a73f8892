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
}

/// One completed or declined checkpoint, as the history shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CheckpointRecord {
    pub id: u64,
    pub completed: bool,
    pub is_final: bool,
    pub duration_ms: u64,
    /// Bytes of state stored for it.
    pub state_bytes: u64,
}

#[derive(Debug, Default)]
pub struct JobMetrics {
    vertices: Vec<VertexMetrics>,
    blocked_micros: AtomicU64,
    restarts: AtomicU64,
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

//! What travels on the edges between tasks: records, watermarks and checkpoint barriers, in
//! batches (one channel send per batch, not per record).

use crate::data::{Record, Timestamp};

/// A checkpoint barrier. Everything before it on a channel belongs to the checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Barrier {
    pub checkpoint_id: u64,
    /// The last checkpoint of a bounded job: every input has ended, so tasks finish their
    /// operators (fire open windows, close in-progress files) before taking their snapshot.
    pub is_final: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Element {
    Record(Record),
    Watermark(Timestamp),
    /// Always the last element of its batch: a sender flushes right after it, so a receiver
    /// that stops reading a channel at a barrier holds back nothing that came after it.
    Barrier(Barrier),
}

/// Elements sent together.
pub type Batch = Vec<Element>;

/// Elements per batch before it is sent.
pub const BATCH_SIZE: usize = 512;

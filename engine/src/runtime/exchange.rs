//! The data exchange between tasks: partitioned, batched output over bounded channels, and the
//! input side that reads them with barrier alignment.
//!
//! Channels are bounded, so a slow consumer blocks its producers' sends: that is the
//! backpressure that slows a source down to what the sink can take, with memory bounded by
//! `channels x CHANNEL_CAPACITY x BATCH_SIZE` records.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, SendTimeoutError, Sender};

use super::element::{BATCH_SIZE, Barrier, Batch, Element};
use crate::data::{HASH_SEED, Record, Timestamp};
use crate::error::EngineError;
use crate::graph::Partitioning;

/// Batches a channel holds before its sender blocks.
pub const CHANNEL_CAPACITY: usize = 16;

/// A partly filled batch is sent after this long, so a slow stream still flows.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(50);

/// A bounded channel between two subtasks.
pub fn channel() -> (Sender<Batch>, Receiver<Batch>) {
    crossbeam_channel::bounded(CHANNEL_CAPACITY)
}

/// The senders of one output edge of a subtask: one per downstream subtask it feeds (just one
/// for a forward edge).
pub struct EdgeOutput {
    /// The vertex of the task's chain whose output the edge carries.
    pub from_vertex: usize,
    pub partitioning: Partitioning,
    pub senders: Vec<Sender<Batch>>,
}

struct Channel {
    sender: Sender<Batch>,
    buffer: Batch,
}

struct EdgeChannels {
    from_vertex: usize,
    partitioning: Partitioning,
    channels: Vec<Channel>,
    next_round_robin: usize,
}

/// The network end of a task's chain: partitions records over the output edges' channels.
pub struct NetworkOutput {
    edges: Vec<EdgeChannels>,
    cancelled: Arc<AtomicBool>,
    last_flush: Instant,
    /// Records each vertex of the chain handed to the network (for the last vertex, every
    /// record it emitted, even with no edge: for sinks, records that reached it and went
    /// nowhere), by vertex index.
    pub records_out: Vec<(usize, u64)>,
    /// Time spent blocked on full channels: how backpressured this task is.
    pub blocked: Duration,
}

impl NetworkOutput {
    pub fn new(edges: Vec<EdgeOutput>, cancelled: Arc<AtomicBool>) -> Self {
        let edges = edges
            .into_iter()
            .map(|e| EdgeChannels {
                from_vertex: e.from_vertex,
                partitioning: e.partitioning,
                channels: e
                    .senders
                    .into_iter()
                    .map(|sender| Channel {
                        sender,
                        buffer: Vec::with_capacity(BATCH_SIZE),
                    })
                    .collect(),
                next_round_robin: 0,
            })
            .collect();
        Self {
            edges,
            cancelled,
            last_flush: Instant::now(),
            records_out: Vec::new(),
            blocked: Duration::ZERO,
        }
    }

    /// Sends `batch`, waiting while the channel is full, until the task is cancelled.
    fn send(
        cancelled: &AtomicBool,
        blocked: &mut Duration,
        sender: &Sender<Batch>,
        mut batch: Batch,
    ) -> Result<(), EngineError> {
        let started = Instant::now();
        let result = loop {
            match sender.send_timeout(batch, Duration::from_millis(100)) {
                Ok(()) => break Ok(()),
                Err(SendTimeoutError::Timeout(back)) => {
                    if cancelled.load(Ordering::Relaxed) {
                        break Err(EngineError::Cancelled);
                    }
                    batch = back;
                }
                // The consumer is gone: the job is being torn down.
                Err(SendTimeoutError::Disconnected(_)) => break Err(EngineError::Cancelled),
            }
        };
        *blocked += started.elapsed();
        result
    }

    fn push(
        cancelled: &AtomicBool,
        blocked: &mut Duration,
        channel: &mut Channel,
        element: Element,
    ) -> Result<(), EngineError> {
        channel.buffer.push(element);
        if channel.buffer.len() >= BATCH_SIZE {
            let batch = std::mem::replace(&mut channel.buffer, Vec::with_capacity(BATCH_SIZE));
            Self::send(cancelled, blocked, &channel.sender, batch)?;
        }
        Ok(())
    }

    /// Sends every partly filled batch.
    pub fn flush(&mut self) -> Result<(), EngineError> {
        for edge in &mut self.edges {
            for channel in &mut edge.channels {
                if !channel.buffer.is_empty() {
                    let batch =
                        std::mem::replace(&mut channel.buffer, Vec::with_capacity(BATCH_SIZE));
                    Self::send(&self.cancelled, &mut self.blocked, &channel.sender, batch)?;
                }
            }
        }
        self.last_flush = Instant::now();
        Ok(())
    }

    /// Flushes if the last flush is older than [`FLUSH_INTERVAL`].
    pub fn flush_if_due(&mut self) -> Result<(), EngineError> {
        if self.last_flush.elapsed() >= FLUSH_INTERVAL {
            self.flush()?;
        }
        Ok(())
    }

    /// Sends a barrier on every channel, after everything before it.
    pub fn barrier(&mut self, barrier: Barrier) -> Result<(), EngineError> {
        for edge in &mut self.edges {
            for channel in &mut edge.channels {
                channel.buffer.push(Element::Barrier(barrier));
            }
        }
        self.flush()
    }

    pub fn has_outputs(&self) -> bool {
        !self.edges.is_empty()
    }
}

/// The subtask a record goes to on a hash edge: a stable hash of its key fields.
pub fn key_channel(record: &Record, key_fields: &[usize], channels: usize) -> usize {
    let mut hash = HASH_SEED;
    for &field in key_fields {
        if let Some(value) = record.row.get(field) {
            hash = value.stable_hash(hash);
        }
    }
    (hash % channels as u64) as usize
}

impl NetworkOutput {
    /// Whether any edge carries `vertex`'s output.
    pub fn has_edges_from(&self, vertex: usize) -> bool {
        self.edges.iter().any(|e| e.from_vertex == vertex)
    }

    /// Sends a record `vertex` emitted on each edge that carries its output.
    pub fn emit_from(&mut self, vertex: usize, record: Record) -> Result<(), EngineError> {
        match self.records_out.iter_mut().find(|(v, _)| *v == vertex) {
            Some((_, n)) => *n += 1,
            None => self.records_out.push((vertex, 1)),
        }
        let last = self.edges.iter().rposition(|e| e.from_vertex == vertex);
        let mut record = Some(record);
        for (i, edge) in self.edges.iter_mut().enumerate() {
            if edge.from_vertex != vertex {
                continue;
            }
            // Every edge but the last gets a copy.
            let this = if Some(i) == last {
                record.take()
            } else {
                record.clone()
            };
            let Some(this) = this else { break };
            let index = match &edge.partitioning {
                Partitioning::Forward => 0,
                Partitioning::Hash(keys) => key_channel(&this, keys, edge.channels.len()),
                Partitioning::Rebalance => {
                    edge.next_round_robin = (edge.next_round_robin + 1) % edge.channels.len();
                    edge.next_round_robin
                }
            };
            Self::push(
                &self.cancelled,
                &mut self.blocked,
                &mut edge.channels[index],
                Element::Record(this),
            )?;
        }
        Ok(())
    }

    /// Sends `vertex`'s watermark on every channel of the edges that carry its output.
    pub fn watermark_from(
        &mut self,
        vertex: usize,
        watermark: Timestamp,
    ) -> Result<(), EngineError> {
        for edge in self.edges.iter_mut().filter(|e| e.from_vertex == vertex) {
            for channel in &mut edge.channels {
                Self::push(
                    &self.cancelled,
                    &mut self.blocked,
                    channel,
                    Element::Watermark(watermark),
                )?;
            }
        }
        Ok(())
    }
}

/// The input channels of a subtask, with per-channel watermarks and barrier alignment.
pub struct InputGate {
    pub receivers: Vec<Receiver<Batch>>,
    /// Channels that delivered the barrier being aligned: not read until it completes.
    pub blocked: Vec<bool>,
    watermarks: Vec<Timestamp>,
    /// The smallest watermark over the channels, as last forwarded.
    pub current_watermark: Timestamp,
}

impl InputGate {
    pub fn new(receivers: Vec<Receiver<Batch>>) -> Self {
        let n = receivers.len();
        Self {
            receivers,
            blocked: vec![false; n],
            watermarks: vec![crate::data::MIN_TIMESTAMP; n],
            current_watermark: crate::data::MIN_TIMESTAMP,
        }
    }

    /// Records channel `index`'s watermark; returns the gate's new watermark if it advanced.
    pub fn advance_watermark(&mut self, index: usize, watermark: Timestamp) -> Option<Timestamp> {
        if watermark > self.watermarks[index] {
            self.watermarks[index] = watermark;
        }
        let low = self.watermarks.iter().copied().min()?;
        if low > self.current_watermark {
            self.current_watermark = low;
            Some(low)
        } else {
            None
        }
    }

    /// Whether every channel has delivered the barrier being aligned.
    pub fn aligned(&self) -> bool {
        self.blocked.iter().all(|b| *b)
    }

    pub fn unblock_all(&mut self) {
        self.blocked.iter_mut().for_each(|b| *b = false);
    }
}

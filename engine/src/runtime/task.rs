//! The subtask loops. Each subtask runs on its own thread: a source subtask polls its source
//! into its chain; any other subtask reads its input gate into its chain. Both take part in
//! checkpoints (barriers) and answer the job master's control messages.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Select, Sender, TryRecvError};

use super::chain::{Chain, OperatorSnapshot};
use super::checkpoint::{CheckpointStorage, OperatorState};
use super::element::{Barrier, Element};
use super::exchange::{InputGate, NetworkOutput};
use super::metrics::JobMetrics;
use crate::data::{MAX_TIMESTAMP, MIN_TIMESTAMP, Record, Timestamp};
use crate::error::EngineError;
use crate::operator::{Output, Source, SourceStatus, TICK_INTERVAL, TaskContext};

/// Which subtask: the task (chain) index in the plan and the subtask index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct SubtaskId {
    pub task: usize,
    pub subtask: usize,
}

/// What the job master tells a subtask.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum TaskControl {
    /// Sources only: emit this barrier now.
    TriggerCheckpoint(Barrier),
    CheckpointComplete(u64),
    Cancel,
}

/// How an attempt's subtasks are stopped, as the job master decides when it tears the attempt
/// down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum StopMode {
    /// The attempt failed (a subtask failed, a task manager was lost) and the job restarts
    /// from its latest completed checkpoint, or the attempt ended by itself: whatever the
    /// sinks have in progress stays as it is, for the next attempt to resume.
    #[default]
    Keep,
    /// The user cancelled the job: nothing will ever resume this run. Once stopped, each
    /// subtask's operators abandon it ([`crate::operator::Operator::abandon`]): sinks publish
    /// what checkpoints up to `completed` (the latest one the job master completed) made
    /// pending, and abort every other file of theirs.
    Abandon { completed: Option<u64> },
}

/// A user's cancel as a stopped subtask sees it: see [`StopMode::Abandon`].
#[derive(Debug, Clone, Copy)]
pub struct Abandon {
    pub completed: Option<u64>,
    /// How long the operators may take, from when the subtask has stopped: store calls not
    /// started by then are given up (and logged), so that a dead store cannot hold the cancel
    /// for long. Counted from the stop, not from the cancel: a subtask busy with a checkpoint
    /// of thousands of files when the cancel comes must not find its time used up.
    pub budget: Duration,
}

/// What a subtask tells the job master.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub enum TaskEvent {
    /// The subtask took its snapshot for the checkpoint.
    Ack {
        checkpoint_id: u64,
        subtask: SubtaskId,
        states: Vec<OperatorState>,
    },
    /// The subtask declines the checkpoint: it could not store its state (it runs on), or its
    /// snapshot failed (a `Failed` follows).
    Declined {
        checkpoint_id: u64,
        subtask: SubtaskId,
        reason: String,
    },
    /// A bounded source has emitted everything.
    SourceFinished(SubtaskId),
    Failed(SubtaskId, String),
    /// The subtask ended after the final checkpoint completed.
    Finished(SubtaskId),
}

/// The source part of a source subtask.
pub struct SourceRunner {
    pub vertex: usize,
    pub vertex_id: String,
    pub source: Box<dyn Source>,
    pub ctx: TaskContext,
    /// Bounded out-of-orderness of the watermarks generated from the records' timestamps.
    pub watermark_delay: Duration,
    pub restored_position: Option<Vec<u8>>,
}

/// Everything one subtask runs with.
pub struct Subtask {
    pub id: SubtaskId,
    pub name: String,
    pub source: Option<SourceRunner>,
    pub chain: Chain,
    pub chain_states: Vec<Option<Vec<u8>>>,
    pub inputs: InputGate,
    pub output: NetworkOutput,
    pub control: Receiver<TaskControl>,
    pub events: Sender<TaskEvent>,
    pub cancelled: Arc<AtomicBool>,
    /// Set (before `cancelled`) when the attempt is stopped because the user cancelled the
    /// job: the subtask's operators then abandon the run once it has stopped.
    pub abandon: Arc<OnceLock<Abandon>>,
    pub storage: Arc<CheckpointStorage>,
    pub metrics: Arc<JobMetrics>,
}

/// Records per source poll: small enough to answer control messages promptly.
const POLL_BATCH: usize = 1024;

/// Counts a source's records and tracks their largest timestamp for watermarks.
struct SourceOutput<'a> {
    chain: &'a mut Chain,
    network: &'a mut NetworkOutput,
    emitted: u64,
    max_timestamp: Timestamp,
}

impl Output for SourceOutput<'_> {
    fn emit(&mut self, record: Record) -> Result<(), EngineError> {
        self.emitted += 1;
        if record.timestamp > self.max_timestamp {
            self.max_timestamp = record.timestamp;
        }
        self.chain.process(record, self.network)
    }

    fn watermark(&mut self, watermark: Timestamp) -> Result<(), EngineError> {
        self.chain.watermark(watermark, self.network)
    }
}

fn now_millis() -> Timestamp {
    chrono::Utc::now().timestamp_millis()
}

impl Subtask {
    /// Runs the subtask to its end and reports how it ended to the job master.
    pub fn run(mut self) {
        let runtime = self.chain_runtime();
        let _entered = runtime.as_ref().map(|h| h.enter());
        let id = self.id;
        let result = if self.source.is_some() {
            self.run_source()
        } else {
            self.run_inputs()
        };
        self.publish_metrics();
        if result.is_err()
            && let Some(abandon) = self.abandon.get()
        {
            // Stopped by the user's cancel (whichever way the subtask noticed it first: the
            // flag, the control message, or a channel of an upstream subtask that stopped).
            self.chain
                .abandon(abandon.completed, Instant::now() + abandon.budget);
        }
        let event = match result {
            Ok(()) => TaskEvent::Finished(id),
            Err(EngineError::Cancelled) => return,
            Err(e) => TaskEvent::Failed(id, format!("{}: {e}", self.name)),
        };
        let _ = self.events.send(event);
    }

    /// The runtime handle, so that what operators drop (open uploads) can clean up after
    /// themselves on it.
    fn chain_runtime(&self) -> Option<tokio::runtime::Handle> {
        if let Some(s) = &self.source {
            return Some(s.ctx.runtime.clone());
        }
        self.chain.operators.first().map(|o| o.ctx.runtime.clone())
    }

    fn check_cancelled(&self) -> Result<(), EngineError> {
        if self.cancelled.load(Ordering::Relaxed) {
            Err(EngineError::Cancelled)
        } else {
            Ok(())
        }
    }

    fn publish_metrics(&mut self) {
        // An operator followed by another in the chain hands it every record it emits (and
        // the same records to any exchange it also feeds): what the next one took in is what
        // it wrote out.
        let operators = &mut self.chain.operators;
        for i in 0..operators.len() {
            if i > 0 {
                let previous = operators[i - 1].vertex;
                self.metrics
                    .vertex(previous)
                    .add_out(operators[i].records_in);
            }
            self.metrics
                .vertex(operators[i].vertex)
                .add_in(operators[i].records_in);
        }
        for op in operators.iter_mut() {
            op.records_in = 0;
        }
        let chained = operators.split_last().map_or(&[][..], |(_, before)| before);
        self.metrics
            .add_blocked(std::mem::take(&mut self.output.blocked));
        // What the last operator handed to the network (everything it emitted; counted
        // above for the others). A source counts its records as it polls them.
        for (vertex, out) in std::mem::take(&mut self.output.records_out) {
            if self.chain.source_vertex != Some(vertex)
                && !chained.iter().any(|op| op.vertex == vertex)
            {
                self.metrics.vertex(vertex).add_out(out);
            }
        }
    }

    /// Snapshots the source (if any) and the chain, stores the states, forwards the barrier
    /// and acknowledges the checkpoint.
    ///
    /// A snapshot that fails fails the subtask (after declining the checkpoint): an operator
    /// may have changed its state half-way (a sink whose roll failed no longer holds that
    /// file), so only a restart from the last completed checkpoint is safe. A state that
    /// cannot be *stored* (the checkpoint storage's PUT failed) only declines the checkpoint,
    /// as Flink declines one whose asynchronous part failed: the operators' states are whole,
    /// the barrier still goes downstream so that the stream is not held in alignment, and the
    /// next checkpoint covers what this one would have (see `JobMaster::decline`).
    fn checkpoint(&mut self, barrier: Barrier) -> Result<(), EngineError> {
        let id = barrier.checkpoint_id;
        let snapshots = match self.snapshot(barrier) {
            Ok(snapshots) => snapshots,
            Err(e) => {
                self.decline(id, format!("{}: taking its snapshot: {e}", self.name));
                return Err(e);
            }
        };
        let stored: Result<Vec<OperatorState>, EngineError> = snapshots
            .into_iter()
            .map(|s| {
                self.storage
                    .store_state(id, &s.vertex_id, self.id.subtask, s.state)
            })
            .collect();
        let event = match stored {
            Ok(states) => TaskEvent::Ack {
                checkpoint_id: id,
                subtask: self.id,
                states,
            },
            Err(e) => {
                tracing::warn!(task = %self.name, checkpoint = id, "declining the checkpoint: {e}");
                TaskEvent::Declined {
                    checkpoint_id: id,
                    subtask: self.id,
                    reason: format!("{}: storing its state: {e}", self.name),
                }
            }
        };
        self.output.barrier(barrier)?;
        self.events.send(event).map_err(|_| EngineError::Cancelled)
    }

    /// The states of the source (if any) and of every operator of the chain, by vertex id;
    /// at the final barrier the operators are finished first.
    fn snapshot(&mut self, barrier: Barrier) -> Result<Vec<OperatorSnapshot>, EngineError> {
        if barrier.is_final {
            self.chain.finish(&mut self.output)?;
        }
        let id = barrier.checkpoint_id;
        let mut states = Vec::new();
        if let Some(source) = &mut self.source {
            let position = source.source.snapshot(id).map_err(|e| EngineError::Task {
                task: source.ctx.describe(),
                message: e.to_string(),
            })?;
            states.push(OperatorSnapshot {
                vertex_id: source.vertex_id.clone(),
                state: Some(position),
            });
        }
        states.extend(self.chain.snapshot(id)?);
        Ok(states)
    }

    fn decline(&self, checkpoint_id: u64, reason: String) {
        // The master may be gone (the attempt is being torn down): nothing to tell then.
        let _ = self.events.send(TaskEvent::Declined {
            checkpoint_id,
            subtask: self.id,
            reason,
        });
    }

    fn complete(&mut self, checkpoint_id: u64) -> Result<(), EngineError> {
        if let Some(source) = &mut self.source {
            source.source.checkpoint_complete(checkpoint_id)?;
        }
        self.chain.checkpoint_complete(checkpoint_id)
    }

    fn open(&mut self) -> Result<(), EngineError> {
        if let Some(source) = &mut self.source {
            let describe = |e: EngineError| EngineError::Task {
                task: source.ctx.describe(),
                message: e.to_string(),
            };
            if let Some(position) = source.restored_position.take() {
                source
                    .source
                    .restore(&source.ctx, &position)
                    .map_err(describe)?;
            }
            source.source.open(&source.ctx).map_err(describe)?;
        }
        let states = std::mem::take(&mut self.chain_states);
        self.chain.restore_and_open(&states)
    }

    fn run_source(&mut self) -> Result<(), EngineError> {
        self.open()?;
        let mut finished = false;
        let mut final_checkpoint: Option<u64> = None;
        let mut max_timestamp = MIN_TIMESTAMP;
        let mut last_watermark = MIN_TIMESTAMP;
        let mut last_tick = Instant::now();
        let mut idle_until: Option<Instant> = None;
        // The source's malformed-record count already added to the metrics (the source counts
        // from 0 in each attempt; the metric sums over attempts, like the record counts).
        let mut malformed_counted = 0;
        loop {
            self.check_cancelled()?;
            // A throttle in the chain holds the polls back, not the control channel: barriers
            // start here, from the control channel, so a pause never delays them.
            let pause = if finished {
                None
            } else {
                self.chain.input_pause().filter(|d| !d.is_zero())
            };
            // Control first: barriers must not wait behind a long run of polls.
            let wait = if finished {
                Some(TICK_INTERVAL)
            } else {
                let idle = idle_until.map(|t| t.saturating_duration_since(Instant::now()));
                match (idle, pause) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                }
                .map(|d| d.min(TICK_INTERVAL))
            };
            let message = match wait {
                Some(d) if !d.is_zero() => match self.control.recv_timeout(d) {
                    Ok(m) => Some(m),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return Err(EngineError::Cancelled),
                },
                _ => match self.control.try_recv() {
                    Ok(m) => Some(m),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => return Err(EngineError::Cancelled),
                },
            };
            match message {
                Some(TaskControl::Cancel) => return Err(EngineError::Cancelled),
                Some(TaskControl::TriggerCheckpoint(barrier)) => {
                    self.checkpoint(barrier)?;
                    if barrier.is_final {
                        final_checkpoint = Some(barrier.checkpoint_id);
                    }
                    continue;
                }
                Some(TaskControl::CheckpointComplete(id)) => {
                    self.complete(id)?;
                    if final_checkpoint.is_some_and(|f| id >= f) {
                        return Ok(());
                    }
                    continue;
                }
                None => {}
            }
            if !finished && pause.is_none() && idle_until.is_none_or(|t| Instant::now() >= t) {
                idle_until = None;
                let Some(source) = self.source.as_mut() else {
                    return Ok(());
                };
                let mut out = SourceOutput {
                    chain: &mut self.chain,
                    network: &mut self.output,
                    emitted: 0,
                    max_timestamp,
                };
                let polled = source.source.poll(&mut out, POLL_BATCH);
                // Counted even when the poll fails: what it emitted before went downstream.
                self.metrics.vertex(source.vertex).add_out(out.emitted);
                let status = polled.map_err(|e| EngineError::Task {
                    task: source.ctx.describe(),
                    message: e.to_string(),
                })?;
                max_timestamp = out.max_timestamp;
                let malformed = source.source.malformed_records();
                self.metrics
                    .vertex(source.vertex)
                    .add_malformed(malformed.saturating_sub(malformed_counted));
                malformed_counted = malformed_counted.max(malformed);
                let delay = source.watermark_delay.as_millis() as i64;
                match status {
                    SourceStatus::More => {}
                    SourceStatus::Idle(d) => idle_until = Some(Instant::now() + d),
                    SourceStatus::Finished => {
                        finished = true;
                        // Fires every window downstream: no record will follow.
                        self.chain.watermark(MAX_TIMESTAMP, &mut self.output)?;
                        last_watermark = MAX_TIMESTAMP;
                        self.output.flush()?;
                        let _ = self.events.send(TaskEvent::SourceFinished(self.id));
                    }
                }
                if !finished && max_timestamp > MIN_TIMESTAMP {
                    let watermark = max_timestamp.saturating_sub(delay).saturating_sub(1);
                    if watermark > last_watermark {
                        last_watermark = watermark;
                        self.chain.watermark(watermark, &mut self.output)?;
                    }
                }
            }
            if last_tick.elapsed() >= TICK_INTERVAL {
                last_tick = Instant::now();
                self.chain.tick(now_millis(), &mut self.output)?;
                self.publish_metrics();
            }
            self.output.flush_if_due()?;
        }
    }

    fn run_inputs(&mut self) -> Result<(), EngineError> {
        self.open()?;
        let mut aligning: Option<Barrier> = None;
        let mut final_checkpoint: Option<u64> = None;
        // A checkpoint the master has announced (it tells every subtask when it triggers one)
        // whose barrier has not been taken yet, and the last barrier taken: while one is on
        // its way the chain's throttle may not pause the input, or the barrier would wait
        // behind every record queued ahead of it at the throttle's pace.
        let mut checkpoint_coming: Option<u64> = None;
        let mut last_barrier: u64 = 0;
        let mut last_tick = Instant::now();
        // Owned handles (cheap clones), so that the select does not hold `self` borrowed.
        let control = self.control.clone();
        let receivers = self.inputs.receivers.clone();
        loop {
            self.check_cancelled()?;
            let pause = if final_checkpoint.is_none()
                && checkpoint_coming.is_none()
                && aligning.is_none()
            {
                self.chain.input_pause().filter(|d| !d.is_zero())
            } else {
                None
            };
            // Read the control channel and every channel not held back by alignment (none
            // while the chain pauses its input).
            let mut select = Select::new();
            let control_index = select.recv(&control);
            let mut channel_of = Vec::new();
            if final_checkpoint.is_none() && pause.is_none() {
                for (i, receiver) in receivers.iter().enumerate() {
                    if !self.inputs.blocked[i] {
                        select.recv(receiver);
                        channel_of.push(i);
                    }
                }
            }
            let timeout = TICK_INTERVAL
                .saturating_sub(last_tick.elapsed())
                .min(super::exchange::FLUSH_INTERVAL)
                .min(pause.unwrap_or(Duration::MAX));
            match select.select_timeout(timeout) {
                Err(_) => {}
                Ok(op) if op.index() == control_index => match op.recv(&control) {
                    Err(_) | Ok(TaskControl::Cancel) => return Err(EngineError::Cancelled),
                    Ok(TaskControl::CheckpointComplete(id)) => {
                        self.complete(id)?;
                        if final_checkpoint.is_some_and(|f| id >= f) {
                            return Ok(());
                        }
                    }
                    // Sources start the barrier; here it is the notice that one is coming.
                    Ok(TaskControl::TriggerCheckpoint(barrier)) => {
                        if barrier.checkpoint_id > last_barrier {
                            checkpoint_coming = Some(barrier.checkpoint_id);
                        }
                    }
                },
                Ok(op) => {
                    let channel = channel_of[op.index() - 1];
                    let batch = match op.recv(&receivers[channel]) {
                        Ok(batch) => batch,
                        // An upstream task ended without a final barrier: it was torn down.
                        Err(_) => return Err(EngineError::Cancelled),
                    };
                    for element in batch {
                        match element {
                            Element::Record(record) => {
                                self.chain.process(record, &mut self.output)?;
                            }
                            Element::Watermark(w) => {
                                if let Some(w) = self.inputs.advance_watermark(channel, w) {
                                    self.chain.watermark(w, &mut self.output)?;
                                }
                            }
                            Element::Barrier(barrier) => {
                                self.inputs.blocked[channel] = true;
                                aligning = Some(barrier);
                            }
                        }
                    }
                    if let Some(barrier) = aligning
                        && self.inputs.aligned()
                    {
                        aligning = None;
                        self.inputs.unblock_all();
                        last_barrier = barrier.checkpoint_id;
                        checkpoint_coming.take_if(|id| *id <= last_barrier);
                        self.checkpoint(barrier)?;
                        if barrier.is_final {
                            final_checkpoint = Some(barrier.checkpoint_id);
                        }
                    }
                }
            }
            if last_tick.elapsed() >= TICK_INTERVAL {
                last_tick = Instant::now();
                if final_checkpoint.is_none() {
                    self.chain.tick(now_millis(), &mut self.output)?;
                }
                self.publish_metrics();
            }
            self.output.flush_if_due()?;
        }
    }
}

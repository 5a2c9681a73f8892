//! The contracts between the runtime and the code that processes records: sources, operators
//! and sinks (a sink is an operator with no output).
//!
//! Everything here is synchronous and runs on the task's own thread: a chain of operators calls
//! straight into the next one through [`Output`], with no serialization and no thread hand-off.
//! Code that must talk to the store (the file sink) does so through the [`TaskContext`]'s
//! runtime handle.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fs_core::RecoverableWriter;

use crate::data::{Record, SchemaRef, Timestamp};
use crate::error::EngineError;

/// Where an operator's results go: the next operator of its chain, or the task's network
/// output.
pub trait Output {
    /// Passes a record downstream.
    fn emit(&mut self, record: Record) -> Result<(), EngineError>;
    /// Passes a watermark downstream: no record older than `watermark` will follow.
    fn watermark(&mut self, watermark: Timestamp) -> Result<(), EngineError>;
}

/// What a subtask knows about itself and its job.
#[derive(Clone)]
pub struct TaskContext {
    pub job_id: String,
    pub job_name: String,
    /// The operator's id in the job.
    pub operator_id: String,
    pub subtask: usize,
    pub parallelism: usize,
    /// Restart attempt of the job (0 for the first run). Sinks use it to name files that no
    /// earlier attempt can have used.
    pub attempt: u32,
    /// The store's writer service (sinks write through it).
    pub writer: Arc<RecoverableWriter>,
    /// The tokio runtime that store calls run on (tasks themselves run on plain threads).
    pub runtime: tokio::runtime::Handle,
}

impl TaskContext {
    /// "operator (subtask/parallelism)", for logs and errors.
    pub fn describe(&self) -> String {
        format!(
            "{} ({}/{})",
            self.operator_id,
            self.subtask + 1,
            self.parallelism
        )
    }
}

/// A record-at-a-time operator. The runtime calls, in order: `restore` (when the job resumes
/// from a checkpoint), `open`, then any number of `process`/`watermark`/`snapshot`/
/// `checkpoint_complete`, then `finish` when every input has ended, and drops it.
pub trait Operator: Send {
    /// Restores the state that `snapshot` returned in the checkpoint the job resumes from.
    fn restore(&mut self, _ctx: &TaskContext, _state: &[u8]) -> Result<(), EngineError> {
        Ok(())
    }

    fn open(&mut self, _ctx: &TaskContext) -> Result<(), EngineError> {
        Ok(())
    }

    fn process(&mut self, record: Record, out: &mut dyn Output) -> Result<(), EngineError>;

    /// Event time has advanced to `watermark`: fire what is due, then forward it.
    fn watermark(&mut self, watermark: Timestamp, out: &mut dyn Output) -> Result<(), EngineError> {
        out.watermark(watermark)
    }

    /// Processing time has advanced to `now` (ms since the epoch). Called about every
    /// [`TICK_INTERVAL`] while the task runs, for work driven by the clock (rolling files on
    /// inactivity, processing-time buckets).
    fn tick(&mut self, _now: Timestamp, _out: &mut dyn Output) -> Result<(), EngineError> {
        Ok(())
    }

    /// How long the operator wants no more input, or `None` (the default) to take it as it
    /// comes: a throttle. The runtime asks after each batch; while paused it reads only the
    /// task's control channel (cancel and checkpoint notices stay prompt), for at most this
    /// long before asking again. A task that knows a checkpoint's barrier is on its way does
    /// not pause, so that the records queued ahead of the barrier do not hold the checkpoint
    /// back; a throttle should not hold those against its rate (see `DiscardSink`).
    fn input_pause(&mut self) -> Option<Duration> {
        None
    }

    /// Takes the operator's state for checkpoint `checkpoint_id` (the barrier has reached it,
    /// and every record before the barrier has been processed). `None` means stateless.
    fn snapshot(&mut self, _checkpoint_id: u64) -> Result<Option<Vec<u8>>, EngineError> {
        Ok(None)
    }

    /// Checkpoint `checkpoint_id` is complete: every task has stored its state and the
    /// checkpoint's metadata is committed. Sinks publish their output here.
    fn checkpoint_complete(&mut self, _checkpoint_id: u64) -> Result<(), EngineError> {
        Ok(())
    }

    /// Every input has ended: emit what is still held (open windows), and for sinks, close
    /// what is open so that the final checkpoint can commit it.
    fn finish(&mut self, _out: &mut dyn Output) -> Result<(), EngineError> {
        Ok(())
    }

    /// The user cancelled the job: its subtasks have stopped and nothing will ever resume
    /// this run (a failed attempt that restarts is not abandoned: its next attempt restores
    /// the operators from a checkpoint). Called once, on the task's thread, before the
    /// operator is dropped. `completed` is the latest checkpoint the job master completed:
    /// a sink publishes what checkpoints up to it made pending (their completion's notice may
    /// not have reached it) and abandons the rest of its output (files in progress, files no
    /// completed checkpoint covers). Store calls not started by `deadline` are given up.
    /// Nothing is returned: the cancel completes whatever fails here, so failures are logged,
    /// naming what is left behind.
    fn abandon(&mut self, _ctx: &TaskContext, _completed: Option<u64>, _deadline: Instant) {}
}

/// How often the runtime calls [`Operator::tick`].
pub const TICK_INTERVAL: Duration = Duration::from_millis(200);

/// What a source's `poll` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceStatus {
    /// It emitted records and has more.
    More,
    /// Nothing to read right now; poll again after about this long (rate limits, waiting for
    /// new files).
    Idle(Duration),
    /// The source is bounded and has emitted everything.
    Finished,
}

/// A replayable source subtask: its position goes into every checkpoint, and a restored source
/// continues from that position, so every record after it is emitted again.
pub trait Source: Send {
    /// The schema of the rows it emits.
    fn schema(&self) -> SchemaRef;

    /// Restores the position that `snapshot` returned.
    fn restore(&mut self, _ctx: &TaskContext, _position: &[u8]) -> Result<(), EngineError> {
        Ok(())
    }

    fn open(&mut self, _ctx: &TaskContext) -> Result<(), EngineError> {
        Ok(())
    }

    /// Emits at most `max` records.
    fn poll(&mut self, out: &mut dyn Output, max: usize) -> Result<SourceStatus, EngineError>;

    /// The position after the last record emitted.
    fn snapshot(&mut self, checkpoint_id: u64) -> Result<Vec<u8>, EngineError>;

    fn checkpoint_complete(&mut self, _checkpoint_id: u64) -> Result<(), EngineError> {
        Ok(())
    }

    /// Malformed records skipped since the source was built (a source configured to skip
    /// them, rather than fail, says how many here; the runtime adds them to the vertex's
    /// `malformed-records` metric).
    fn malformed_records(&self) -> u64 {
        0
    }
}

//! The job master: deploys a job's subtasks, coordinates its checkpoints, and restarts it
//! from the latest completed checkpoint when a subtask fails.

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use fs_core::RecoverableWriter;
use fs_core::store::DynStore;
use serde::Serialize;

use super::chain::{Chain, ChainedOperator};
use super::checkpoint::{CheckpointMetadata, CheckpointStorage, OperatorState};
use super::element::Barrier;
use super::exchange::{self, EdgeOutput, InputGate, NetworkOutput};
use super::metrics::{CheckpointRecord, JobMetrics};
use super::plan::ExecutionPlan;
use super::task::{SourceRunner, Subtask, SubtaskId, TaskControl, TaskEvent};
use crate::error::EngineError;
use crate::graph::{JobGraph, Partitioning, RestartStrategy, VertexKind};
use crate::operator::TaskContext;

/// Where a job runs: its store, the writer service over it, and the runtime for store calls.
#[derive(Clone)]
pub struct JobEnvironment {
    pub store: DynStore,
    pub writer: Arc<RecoverableWriter>,
    pub runtime: tokio::runtime::Handle,
}

/// The state of a job, as `status` and the REST API report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobState {
    Created,
    Running,
    Restarting,
    Finished,
    Failed(String),
    Canceled,
}

impl JobState {
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            JobState::Finished | JobState::Failed(_) | JobState::Canceled
        )
    }
}

/// What the outside sees of a running job, shared with its master.
pub struct JobShared {
    pub job_id: String,
    pub graph: JobGraph,
    pub metrics: Arc<JobMetrics>,
    pub state: Mutex<JobState>,
    pub cancel_requested: AtomicBool,
    pub started: Instant,
}

impl JobShared {
    pub fn state(&self) -> JobState {
        self.state
            .lock()
            .map(|s| s.clone())
            .unwrap_or(JobState::Failed("job state lock poisoned".into()))
    }

    fn set_state(&self, state: JobState) {
        if let Ok(mut s) = self.state.lock() {
            *s = state;
        }
    }

    pub fn cancel(&self) {
        self.cancel_requested.store(true, Ordering::SeqCst);
    }
}

/// A deployed attempt: its subtask threads and their channels.
struct Deployment {
    threads: Vec<JoinHandle<()>>,
    controls: Vec<Sender<TaskControl>>,
    sources: Vec<Sender<TaskControl>>,
    subtasks: usize,
    source_subtasks: usize,
    events: Receiver<TaskEvent>,
    cancelled: Arc<AtomicBool>,
}

impl Deployment {
    fn broadcast(&self, message: &TaskControl) {
        for control in &self.controls {
            let _ = control.send(message.clone());
        }
    }

    /// Stops every subtask and waits for their threads (up to a bound: a subtask stuck in a
    /// store call against a dead backend is left behind rather than hanging the restart).
    fn tear_down(self) {
        self.cancelled.store(true, Ordering::SeqCst);
        self.broadcast(&TaskControl::Cancel);
        drop(self.controls);
        drop(self.sources);
        let deadline = Instant::now() + Duration::from_secs(30);
        for thread in self.threads {
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if thread.is_finished() {
                let _ = thread.join();
            } else {
                tracing::warn!("a subtask did not stop within 30 s of its job's cancellation");
            }
        }
    }
}

enum Outcome {
    Finished,
    Failed(String),
    Canceled,
}

struct PendingCheckpoint {
    id: u64,
    is_final: bool,
    started: Instant,
    acks: HashMap<SubtaskId, Vec<OperatorState>>,
}

/// Runs one job to its end.
pub struct JobMaster {
    shared: Arc<JobShared>,
    plan: ExecutionPlan,
    env: JobEnvironment,
    storage: Arc<CheckpointStorage>,
    next_checkpoint_id: u64,
}

impl JobMaster {
    pub fn new(shared: Arc<JobShared>, env: JobEnvironment) -> Self {
        let plan = ExecutionPlan::new(&shared.graph);
        let storage =
            CheckpointStorage::new(env.store.clone(), &shared.job_id, env.runtime.clone());
        Self {
            shared,
            plan,
            env,
            storage,
            next_checkpoint_id: 1,
        }
    }

    /// Runs the job, restarting it as its strategy allows, until it finishes, fails for good
    /// or is cancelled. The final state is also in `shared.state`.
    pub fn run(mut self) -> JobState {
        let state = match self.run_attempts() {
            Ok(state) => state,
            Err(e) => JobState::Failed(e.to_string()),
        };
        self.shared.set_state(state.clone());
        state
    }

    fn run_attempts(&mut self) -> Result<JobState, EngineError> {
        let mut attempt: u32 = 0;
        loop {
            let restore = self.storage.latest()?;
            if let Some(m) = &restore {
                self.next_checkpoint_id = self.next_checkpoint_id.max(m.checkpoint_id + 1);
                tracing::info!(
                    job = %self.shared.job_id,
                    checkpoint = m.checkpoint_id,
                    "restoring from the latest completed checkpoint"
                );
            }
            self.shared.set_state(JobState::Running);
            let deployment = self.deploy(attempt, restore.as_ref())?;
            let outcome = self.coordinate(&deployment);
            deployment.tear_down();
            match outcome {
                Outcome::Finished => return Ok(JobState::Finished),
                Outcome::Canceled => return Ok(JobState::Canceled),
                Outcome::Failed(reason) => {
                    tracing::warn!(job = %self.shared.job_id, attempt, "job failed: {reason}");
                    let delay = match &self.shared.graph.restart {
                        RestartStrategy::FixedDelay { attempts, delay } if attempt < *attempts => {
                            *delay
                        }
                        RestartStrategy::FixedDelay { attempts, .. } => {
                            return Ok(JobState::Failed(format!(
                                "{reason} (gave up after {attempts} restarts)"
                            )));
                        }
                        RestartStrategy::None => return Ok(JobState::Failed(reason)),
                    };
                    attempt += 1;
                    self.shared.metrics.add_restart();
                    self.shared.set_state(JobState::Restarting);
                    let until = Instant::now() + delay;
                    while Instant::now() < until {
                        if self.shared.cancel_requested.load(Ordering::SeqCst) {
                            return Ok(JobState::Canceled);
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
        }
    }

    fn context(&self, vertex: usize, subtask: usize, attempt: u32) -> TaskContext {
        let graph = &self.shared.graph;
        TaskContext {
            job_id: self.shared.job_id.clone(),
            job_name: graph.name.clone(),
            operator_id: graph.vertices[vertex].id.clone(),
            subtask,
            parallelism: graph.vertices[vertex].parallelism,
            attempt,
            writer: self.env.writer.clone(),
            runtime: self.env.runtime.clone(),
        }
    }

    /// Builds every subtask with its restored state and channels, and starts their threads.
    fn deploy(
        &self,
        attempt: u32,
        restore: Option<&CheckpointMetadata>,
    ) -> Result<Deployment, EngineError> {
        let graph = &self.shared.graph;
        let mut states: HashMap<(&str, usize), Vec<u8>> = HashMap::new();
        if let Some(m) = restore {
            for s in &m.states {
                if let Some(handle) = &s.handle {
                    states.insert(
                        (s.vertex_id.as_str(), s.subtask),
                        self.storage.load_state(handle)?,
                    );
                }
            }
        }
        // Channels: outputs[task][subtask] and inputs[task][subtask].
        let mut outputs: Vec<Vec<Vec<EdgeOutput>>> = self
            .plan
            .tasks
            .iter()
            .map(|t| (0..t.parallelism).map(|_| Vec::new()).collect())
            .collect();
        let mut inputs: Vec<Vec<Vec<Receiver<_>>>> = self
            .plan
            .tasks
            .iter()
            .map(|t| (0..t.parallelism).map(|_| Vec::new()).collect())
            .collect();
        for edge in &self.plan.edges {
            let (up, down) = (
                self.plan.tasks[edge.from_task].parallelism,
                self.plan.tasks[edge.to_task].parallelism,
            );
            if edge.partitioning == Partitioning::Forward {
                for i in 0..up {
                    let (tx, rx) = exchange::channel();
                    outputs[edge.from_task][i].push(EdgeOutput {
                        partitioning: Partitioning::Forward,
                        senders: vec![tx],
                    });
                    inputs[edge.to_task][i].push(rx);
                }
            } else {
                let mut senders: Vec<Vec<_>> = (0..up).map(|_| Vec::new()).collect();
                for receivers in inputs[edge.to_task].iter_mut().take(down) {
                    for up_senders in senders.iter_mut() {
                        let (tx, rx) = exchange::channel();
                        up_senders.push(tx);
                        receivers.push(rx);
                    }
                }
                for (i, s) in senders.into_iter().enumerate() {
                    outputs[edge.from_task][i].push(EdgeOutput {
                        partitioning: edge.partitioning.clone(),
                        senders: s,
                    });
                }
            }
        }

        let (events_tx, events_rx) = crossbeam_channel::unbounded();
        let cancelled = Arc::new(AtomicBool::new(false));
        let mut deployment = Deployment {
            threads: Vec::new(),
            controls: Vec::new(),
            sources: Vec::new(),
            subtasks: 0,
            source_subtasks: 0,
            events: events_rx,
            cancelled: cancelled.clone(),
        };
        let mut subtasks = Vec::new();
        for (t, task) in self.plan.tasks.iter().enumerate() {
            for s in (0..task.parallelism).rev() {
                let id = SubtaskId {
                    task: t,
                    subtask: s,
                };
                let output =
                    NetworkOutput::new(outputs[t].pop().unwrap_or_default(), cancelled.clone());
                let gate = InputGate::new(inputs[t].pop().unwrap_or_default());
                let (control_tx, control_rx) = crossbeam_channel::unbounded();
                let mut source = None;
                let mut chain = Chain::default();
                let mut chain_states = Vec::new();
                for &v in &task.vertices {
                    let vertex = &graph.vertices[v];
                    let ctx = self.context(v, s, attempt);
                    let restored = states.remove(&(vertex.id.as_str(), s));
                    match &vertex.kind {
                        VertexKind::Source {
                            factory,
                            watermark_delay,
                        } => {
                            source = Some(SourceRunner {
                                vertex: v,
                                vertex_id: vertex.id.clone(),
                                source: factory(s)?,
                                ctx,
                                watermark_delay: *watermark_delay,
                                restored_position: restored,
                            });
                        }
                        VertexKind::Operator { factory, .. } => {
                            chain.operators.push(ChainedOperator {
                                vertex_id: vertex.id.clone(),
                                vertex: v,
                                operator: factory(s)?,
                                ctx,
                                records_in: 0,
                            });
                            chain_states.push(restored);
                        }
                    }
                }
                if source.is_some() {
                    deployment.sources.push(control_tx.clone());
                    deployment.source_subtasks += 1;
                }
                deployment.controls.push(control_tx);
                deployment.subtasks += 1;
                subtasks.push(Subtask {
                    id,
                    name: format!(
                        "{} ({}/{})",
                        self.plan.describe_task(graph, t),
                        s + 1,
                        task.parallelism
                    ),
                    source,
                    chain,
                    chain_states,
                    inputs: gate,
                    output,
                    control: control_rx,
                    events: events_tx.clone(),
                    cancelled: cancelled.clone(),
                    storage: self.storage.clone(),
                    metrics: self.shared.metrics.clone(),
                });
            }
        }
        for subtask in subtasks {
            let events = events_tx.clone();
            let (id, name) = (subtask.id, subtask.name.clone());
            let thread = std::thread::Builder::new()
                .name(format!("task-{}-{}", id.task, id.subtask))
                .spawn(move || {
                    if std::panic::catch_unwind(AssertUnwindSafe(|| subtask.run())).is_err() {
                        let _ = events.send(TaskEvent::Failed(id, format!("{name}: panicked")));
                    }
                })
                .map_err(|e| EngineError::io("starting a task thread", e))?;
            deployment.threads.push(thread);
        }
        Ok(deployment)
    }

    fn trigger(&mut self, deployment: &Deployment, is_final: bool) -> PendingCheckpoint {
        let id = self.next_checkpoint_id;
        self.next_checkpoint_id += 1;
        let barrier = Barrier {
            checkpoint_id: id,
            is_final,
        };
        for source in &deployment.sources {
            let _ = source.send(TaskControl::TriggerCheckpoint(barrier));
        }
        PendingCheckpoint {
            id,
            is_final,
            started: Instant::now(),
            acks: HashMap::new(),
        }
    }

    /// Drives checkpoints until the attempt ends.
    fn coordinate(&mut self, deployment: &Deployment) -> Outcome {
        let config = self.shared.graph.checkpoint.clone();
        let mut pending: Option<PendingCheckpoint> = None;
        let mut next_periodic = config.interval.map(|i| Instant::now() + i);
        let mut finished_sources: HashSet<SubtaskId> = HashSet::new();
        let mut final_completed = false;
        let mut finished_subtasks: HashSet<SubtaskId> = HashSet::new();
        loop {
            if self.shared.cancel_requested.load(Ordering::SeqCst) {
                return Outcome::Canceled;
            }
            let all_sources_done = finished_sources.len() == deployment.source_subtasks;
            if pending.is_none() && !final_completed {
                if all_sources_done {
                    pending = Some(self.trigger(deployment, true));
                } else if next_periodic.is_some_and(|t| Instant::now() >= t) {
                    pending = Some(self.trigger(deployment, false));
                    next_periodic = config.interval.map(|i| Instant::now() + i);
                }
            }
            if let Some(p) = &pending
                && p.started.elapsed() > config.timeout
            {
                let record = CheckpointRecord {
                    id: p.id,
                    completed: false,
                    is_final: p.is_final,
                    duration_ms: p.started.elapsed().as_millis() as u64,
                    state_bytes: 0,
                };
                self.shared.metrics.record_checkpoint(record);
                if p.is_final {
                    return Outcome::Failed(format!(
                        "the final checkpoint {} did not complete within {:?}",
                        p.id, config.timeout
                    ));
                }
                tracing::warn!(checkpoint = p.id, "checkpoint declined: timed out");
                pending = None;
            }
            let event = match deployment.events.recv_timeout(Duration::from_millis(50)) {
                Ok(event) => event,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => {
                    return Outcome::Failed("every subtask is gone".into());
                }
            };
            match event {
                TaskEvent::Failed(_, reason) => return Outcome::Failed(reason),
                TaskEvent::SourceFinished(id) => {
                    finished_sources.insert(id);
                }
                TaskEvent::Finished(id) => {
                    finished_subtasks.insert(id);
                    if final_completed && finished_subtasks.len() == deployment.subtasks {
                        return Outcome::Finished;
                    }
                }
                TaskEvent::Ack {
                    checkpoint_id,
                    subtask,
                    states,
                } => {
                    let Some(p) = pending.as_mut().filter(|p| p.id == checkpoint_id) else {
                        continue; // a late ack of a declined checkpoint
                    };
                    p.acks.insert(subtask, states);
                    if p.acks.len() < deployment.subtasks {
                        continue;
                    }
                    let Some(p) = pending.take() else { continue };
                    match self.complete(p, deployment) {
                        Ok(is_final) => final_completed |= is_final,
                        Err(e) => return Outcome::Failed(format!("completing a checkpoint: {e}")),
                    }
                    if final_completed && finished_subtasks.len() == deployment.subtasks {
                        return Outcome::Finished;
                    }
                }
            }
        }
    }

    /// Commits a fully acknowledged checkpoint and tells every subtask.
    fn complete(&self, p: PendingCheckpoint, deployment: &Deployment) -> Result<bool, EngineError> {
        let states: Vec<OperatorState> = p.acks.into_values().flatten().collect();
        let state_bytes = states.iter().map(OperatorState::size).sum();
        let metadata = self.storage.new_metadata(p.id, p.is_final, states);
        self.storage.commit(&metadata)?;
        self.shared.metrics.record_checkpoint(CheckpointRecord {
            id: p.id,
            completed: true,
            is_final: p.is_final,
            duration_ms: p.started.elapsed().as_millis() as u64,
            state_bytes,
        });
        deployment.broadcast(&TaskControl::CheckpointComplete(p.id));
        if let Err(e) = self
            .storage
            .discard_old(self.shared.graph.checkpoint.retained)
        {
            // Old checkpoints only cost space; the job goes on.
            tracing::warn!("deleting old checkpoints: {e}");
        }
        Ok(p.is_final)
    }
}

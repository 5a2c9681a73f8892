//! The task executor: the part of a task manager that builds the subtasks a job master places
//! on it, wires their channels (in-process to co-located subtasks, over TCP to the others),
//! runs them, and passes control messages to them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use serde::{Deserialize, Serialize};

use super::chain::{Chain, ChainedOperator};
use super::checkpoint::{CheckpointMetadata, CheckpointStorage};
use super::element::Batch;
use super::exchange::{self, EdgeOutput, InputGate, NetworkOutput};
use super::master::JobEnvironment;
use super::metrics::JobMetrics;
use super::network::{self, ChannelKey, InboundChannels};
use super::plan::ExecutionPlan;
use super::task::{Abandon, SourceRunner, StopMode, Subtask, SubtaskId, TaskControl, TaskEvent};
use crate::error::EngineError;
use crate::graph::{JobGraph, Partitioning, VertexKind};
use crate::operator::TaskContext;

/// Where the subtasks of an attempt run. With slot sharing, slot `k` holds subtask `k` of
/// every task that has one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The task manager of each slot.
    pub slots: Vec<String>,
    /// The data address of each task manager (none in an embedded cluster).
    pub data_addresses: HashMap<String, SocketAddr>,
}

impl Placement {
    /// Everything in one task manager.
    pub fn local(task_manager: &str, slots: usize) -> Self {
        Self {
            slots: vec![task_manager.to_string(); slots],
            data_addresses: HashMap::new(),
        }
    }

    pub fn task_manager_of(&self, subtask: usize) -> &str {
        self.slots.get(subtask).map(String::as_str).unwrap_or("")
    }
}

/// What a task manager is asked to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployRequest {
    pub job_id: String,
    pub job_name: String,
    /// The job file's text, for task managers in other processes.
    pub spec: Option<String>,
    pub attempt: u32,
    pub placement: Placement,
    /// The checkpoint to restore from.
    pub restore: Option<CheckpointMetadata>,
}

struct Running {
    threads: Vec<JoinHandle<()>>,
    controls: HashMap<SubtaskId, Sender<TaskControl>>,
    cancelled: Arc<AtomicBool>,
    abandon: Arc<OnceLock<Abandon>>,
}

/// How long the subtasks of a cancelled job may spend abandoning their files (aborting
/// uploads, a few store calls each, 32 at a time per sink subtask) once they have stopped,
/// before they give up on the rest. A cancel waits this much longer for a subtask's thread
/// (see [`TaskExecutor::cancel`]); a job manager waits for a task manager's answer longer
/// still.
pub const ABANDON_TIME: Duration = Duration::from_secs(20);

/// How long a cancel waits for a subtask to stop (one stuck in a store call against a dead
/// backend is left behind).
const STOP_TIME: Duration = Duration::from_secs(30);

/// Runs subtasks for job masters.
pub struct TaskExecutor {
    task_manager: String,
    env: JobEnvironment,
    inbound: Option<Arc<InboundChannels>>,
    /// The cluster's secret, presented on data connections to other task managers.
    token: Option<String>,
    running: Mutex<HashMap<(String, u32), Running>>,
}

impl TaskExecutor {
    /// `inbound` is the data server's registry; `None` in an embedded cluster, where every
    /// channel is in-process.
    pub fn new(
        task_manager: &str,
        env: JobEnvironment,
        inbound: Option<Arc<InboundChannels>>,
        token: Option<String>,
    ) -> Self {
        Self {
            task_manager: task_manager.to_string(),
            env,
            inbound,
            token,
            running: Mutex::new(HashMap::new()),
        }
    }

    pub fn env(&self) -> &JobEnvironment {
        &self.env
    }

    /// Attempts running here, as (job id, attempt).
    pub fn running(&self) -> Vec<(String, u32)> {
        self.running
            .lock()
            .map(|r| r.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn is_local(&self, placement: &Placement, subtask: usize) -> bool {
        self.inbound.is_none() || placement.task_manager_of(subtask) == self.task_manager
    }

    /// Builds and starts this task manager's subtasks of an attempt.
    pub fn deploy(
        &self,
        graph: &JobGraph,
        request: &DeployRequest,
        events: Sender<TaskEvent>,
        metrics: Arc<JobMetrics>,
    ) -> Result<(), EngineError> {
        let plan = ExecutionPlan::new(graph);
        let placement = &request.placement;
        let storage = CheckpointStorage::new(
            self.env.store.clone(),
            &request.job_id,
            self.env.runtime.clone(),
        );
        let mut states: HashMap<(String, usize), Vec<u8>> = HashMap::new();
        if let Some(m) = &request.restore {
            for s in &m.states {
                if let Some(handle) = &s.handle
                    && self.is_local(placement, s.subtask)
                {
                    states.insert(
                        (s.vertex_id.clone(), s.subtask),
                        storage.load_state(handle)?,
                    );
                }
            }
        }

        let cancelled = Arc::new(AtomicBool::new(false));
        let abandon = Arc::new(OnceLock::new());
        let (outputs, inputs) = self.wire(&plan, request)?;
        let (mut outputs, mut inputs) = (outputs, inputs);
        let mut controls = HashMap::new();
        let mut subtasks = Vec::new();
        for (t, task) in plan.tasks.iter().enumerate() {
            for s in 0..task.parallelism {
                if !self.is_local(placement, s) {
                    continue;
                }
                let id = SubtaskId {
                    task: t,
                    subtask: s,
                };
                // Where each subtask ran, for operators reading task manager logs (and tests
                // that check a placement).
                tracing::info!(
                    task_manager = %self.task_manager,
                    job = %request.job_id,
                    attempt = request.attempt,
                    "deploying subtask {s} of {}",
                    plan.describe_task(graph, t)
                );
                let output =
                    NetworkOutput::new(outputs.remove(&id).unwrap_or_default(), cancelled.clone());
                let gate = InputGate::new(inputs.remove(&id).unwrap_or_default());
                let (control_tx, control_rx) = crossbeam_channel::unbounded();
                let mut source = None;
                let mut chain = Chain::default();
                let mut chain_states = Vec::new();
                for &v in &task.vertices {
                    let vertex = &graph.vertices[v];
                    let ctx = TaskContext {
                        job_id: request.job_id.clone(),
                        job_name: request.job_name.clone(),
                        operator_id: vertex.id.clone(),
                        subtask: s,
                        parallelism: vertex.parallelism,
                        attempt: request.attempt,
                        writer: self.env.writer.clone(),
                        runtime: self.env.runtime.clone(),
                    };
                    let restored = states.remove(&(vertex.id.clone(), s));
                    match &vertex.kind {
                        VertexKind::Source {
                            factory,
                            watermark_delay,
                        } => {
                            chain.source_vertex = Some(v);
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
                controls.insert(id, control_tx);
                subtasks.push(Subtask {
                    id,
                    name: format!(
                        "{} ({}/{})",
                        plan.describe_task(graph, t),
                        s + 1,
                        task.parallelism
                    ),
                    source,
                    chain,
                    chain_states,
                    inputs: gate,
                    output,
                    control: control_rx,
                    events: events.clone(),
                    cancelled: cancelled.clone(),
                    abandon: abandon.clone(),
                    storage: storage.clone(),
                    metrics: metrics.clone(),
                });
            }
        }
        let mut threads = Vec::new();
        for subtask in subtasks {
            let events = events.clone();
            let (id, name) = (subtask.id, subtask.name.clone());
            let thread = std::thread::Builder::new()
                .name(format!("task-{}-{}", id.task, id.subtask))
                .spawn(move || {
                    if std::panic::catch_unwind(AssertUnwindSafe(|| subtask.run())).is_err() {
                        let _ = events.send(TaskEvent::Failed(id, format!("{name}: panicked")));
                    }
                })
                .map_err(|e| EngineError::io("starting a task thread", e))?;
            threads.push(thread);
        }
        if let Ok(mut running) = self.running.lock() {
            running.insert(
                (request.job_id.clone(), request.attempt),
                Running {
                    threads,
                    controls,
                    cancelled,
                    abandon,
                },
            );
        }
        Ok(())
    }

    /// The output edges and input channels of every local subtask.
    #[allow(clippy::type_complexity)]
    fn wire(
        &self,
        plan: &ExecutionPlan,
        request: &DeployRequest,
    ) -> Result<
        (
            HashMap<SubtaskId, Vec<EdgeOutput>>,
            HashMap<SubtaskId, Vec<Receiver<Batch>>>,
        ),
        EngineError,
    > {
        let placement = &request.placement;
        let mut outputs: HashMap<SubtaskId, Vec<EdgeOutput>> = HashMap::new();
        let mut inputs: HashMap<SubtaskId, Vec<Receiver<Batch>>> = HashMap::new();
        for (e, edge) in plan.edges.iter().enumerate() {
            let up = plan.tasks[edge.from_task].parallelism;
            let down = plan.tasks[edge.to_task].parallelism;
            let pairs: Vec<(usize, usize)> = if edge.partitioning == Partitioning::Forward {
                (0..up).map(|i| (i, i)).collect()
            } else {
                (0..up)
                    .flat_map(|u| (0..down).map(move |d| (u, d)))
                    .collect()
            };
            let mut senders: HashMap<usize, Vec<Sender<Batch>>> = HashMap::new();
            for (u, d) in pairs {
                let (up_local, down_local) =
                    (self.is_local(placement, u), self.is_local(placement, d));
                let key = ChannelKey {
                    job_id: request.job_id.clone(),
                    attempt: request.attempt,
                    edge: e,
                    from: u,
                    to: d,
                };
                let receiver_of = SubtaskId {
                    task: edge.to_task,
                    subtask: d,
                };
                match (up_local, down_local) {
                    (true, true) => {
                        let (tx, rx) = exchange::channel();
                        senders.entry(u).or_default().push(tx);
                        inputs.entry(receiver_of).or_default().push(rx);
                    }
                    (true, false) => {
                        let tm = placement.task_manager_of(d);
                        let address =
                            placement
                                .data_addresses
                                .get(tm)
                                .ok_or_else(|| EngineError::Task {
                                    task: format!("deploy {}", request.job_id),
                                    message: format!("no data address for task manager {tm}"),
                                })?;
                        senders.entry(u).or_default().push(network::connect(
                            *address,
                            &key,
                            self.token.as_deref(),
                        )?);
                    }
                    (false, true) => {
                        if let Some(inbound) = &self.inbound {
                            inputs
                                .entry(receiver_of)
                                .or_default()
                                .push(inbound.receiver(&key));
                        }
                    }
                    (false, false) => {}
                }
            }
            for (u, s) in senders {
                outputs
                    .entry(SubtaskId {
                        task: edge.from_task,
                        subtask: u,
                    })
                    .or_default()
                    .push(EdgeOutput {
                        from_vertex: edge.from_vertex,
                        partitioning: edge.partitioning.clone(),
                        senders: s,
                    });
            }
        }
        Ok((outputs, inputs))
    }

    /// Passes a control message to a local subtask (ignored if it is not running here).
    pub fn control(&self, job_id: &str, attempt: u32, subtask: SubtaskId, message: TaskControl) {
        if let Ok(running) = self.running.lock()
            && let Some(r) = running.get(&(job_id.to_string(), attempt))
            && let Some(control) = r.controls.get(&subtask)
        {
            let _ = control.send(message);
        }
    }

    /// Stops an attempt's subtasks here and waits for their threads (for up to 30 s: a
    /// subtask stuck in a store call against a dead backend is left behind). Waiting matters:
    /// the next attempt resumes the same uploads, which an old subtask must no longer touch.
    /// With [`StopMode::Abandon`] (the user cancelled the job) each subtask abandons its
    /// operators' output once it has stopped, before its thread ends: when this returns, the
    /// sinks have published what completed checkpoints made pending and aborted the rest
    /// (within [`ABANDON_TIME`] of stopping; the wait is that much longer).
    pub fn cancel(&self, job_id: &str, attempt: u32, mode: StopMode) {
        let removed = self
            .running
            .lock()
            .ok()
            .and_then(|mut r| r.remove(&(job_id.to_string(), attempt)));
        if let Some(inbound) = &self.inbound {
            inbound.forget(job_id, attempt);
        }
        let Some(running) = removed else { return };
        if let StopMode::Abandon { completed } = mode {
            // Before the flag: a subtask that sees it stopped must find this set.
            let _ = running.abandon.set(Abandon {
                completed,
                budget: ABANDON_TIME,
            });
        }
        running.cancelled.store(true, Ordering::SeqCst);
        for control in running.controls.values() {
            let _ = control.send(TaskControl::Cancel);
        }
        drop(running.controls);
        let wait = match mode {
            StopMode::Keep => STOP_TIME,
            StopMode::Abandon { .. } => STOP_TIME + ABANDON_TIME,
        };
        let deadline = Instant::now() + wait;
        for thread in running.threads {
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if thread.is_finished() {
                let _ = thread.join();
            } else {
                tracing::warn!(job = %job_id, "a subtask did not stop within {wait:?} of its cancellation");
            }
        }
    }

    /// Stops everything (the task manager lost its job manager), returning how many attempts
    /// were running.
    pub fn cancel_all(&self) -> usize {
        let running = self.running();
        for (job, attempt) in &running {
            // Cut off from its job manager, which will restart the job elsewhere: the files
            // stay for the next attempt to resume.
            self.cancel(job, *attempt, StopMode::Keep);
        }
        running.len()
    }

    /// Forgets an attempt that ended by itself (its subtasks finished).
    pub fn finished(&self, job_id: &str, attempt: u32) {
        self.cancel(job_id, attempt, StopMode::Keep);
    }
}

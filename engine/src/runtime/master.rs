//! The job master: deploys a job's subtasks, coordinates its checkpoints, and restarts it
//! from the latest completed checkpoint when a subtask fails.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use fs_core::RecoverableWriter;
use fs_core::store::DynStore;
use serde::Serialize;

use super::checkpoint::{CheckpointMetadata, CheckpointStorage, OperatorState};
use super::cluster::LocalTaskManagers;
use super::element::Barrier;
use super::executor::{DeployRequest, Placement};
use super::metrics::{CheckpointRecord, JobMetrics, millis_rounded_up};
use super::plan::ExecutionPlan;
use super::task::{StopMode, SubtaskId, TaskControl, TaskEvent};
use crate::error::EngineError;
use crate::graph::{JobGraph, RestartStrategy};

/// The task managers a job master deploys to: in this process (the embedded cluster) or
/// remote ones registered with the job manager.
pub trait TaskManagers: Send + Sync {
    /// Reserves `slots` slots for the job, or says why it cannot yet.
    fn allocate(&self, job_id: &str, slots: usize) -> Result<Placement, String>;
    /// Frees the job's slots.
    fn release(&self, job_id: &str);
    /// Starts the subtasks placed on `task_manager`; their events go to `events`.
    fn deploy(
        &self,
        task_manager: &str,
        graph: &JobGraph,
        request: &DeployRequest,
        events: Sender<TaskEvent>,
        metrics: Arc<JobMetrics>,
    ) -> Result<(), EngineError>;
    fn control(
        &self,
        task_manager: &str,
        job_id: &str,
        attempt: u32,
        subtask: SubtaskId,
        message: TaskControl,
    );
    /// Stops the attempt's subtasks on `task_manager` and waits for them; with
    /// [`StopMode::Abandon`] (a user's cancel) until they have abandoned their output too.
    fn cancel(&self, task_manager: &str, job_id: &str, attempt: u32, mode: StopMode);
}

/// Where a job runs: its store, the writer service over it, and the runtime for store calls.
#[derive(Clone)]
pub struct JobEnvironment {
    pub store: DynStore,
    pub writer: Arc<RecoverableWriter>,
    pub runtime: tokio::runtime::Handle,
}

impl JobEnvironment {
    /// A job environment over a fresh in-memory store, with the tokio runtime its store calls
    /// run on (keep it alive while jobs run): for tests, examples and trying jobs out.
    pub fn in_memory() -> Result<(tokio::runtime::Runtime, JobEnvironment), EngineError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| EngineError::io("starting a tokio runtime", e))?;
        let store: DynStore = Arc::new(fs_core::store::memory::MemoryStore::new());
        let index = fs_core::Index::temporary().map_err(fs_core::WriterError::from)?;
        // The sinks never read back what they write: no local copy of every part.
        let config = fs_core::WriterConfig {
            cache_parts: false,
            ..fs_core::WriterConfig::default()
        };
        let writer = RecoverableWriter::new(store.clone(), index, config)?;
        let env = JobEnvironment {
            store,
            writer: Arc::new(writer),
            runtime: runtime.handle().clone(),
        };
        Ok((runtime, env))
    }
}

/// How long a run abandoned at a job manager's start waits for task managers to come back
/// before it abandons the files in the job manager itself (see
/// `JobMaster::wait_for_task_managers`).
const TASK_MANAGERS_BACK_WITHIN: Duration = Duration::from_secs(60);

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
    /// The job file's text, for task managers in other processes (which compile it
    /// themselves); `None` for graphs built in code, which only run embedded.
    pub spec: Option<String>,
    /// Why the job is not running right now, if it is waiting (for slots).
    pub note: Mutex<Option<String>>,
    pub metrics: Arc<JobMetrics>,
    pub state: Mutex<JobState>,
    pub cancel_requested: AtomicBool,
    pub started: Instant,
    /// How long the job ran, once it ended (its duration stops growing then).
    pub ran_for: Mutex<Option<Duration>>,
}

impl JobShared {
    pub fn state(&self) -> JobState {
        self.state
            .lock()
            .map(|s| s.clone())
            .unwrap_or(JobState::Failed("job state lock poisoned".into()))
    }

    fn set_state(&self, state: JobState) {
        if state.is_terminal()
            && let Ok(mut ran_for) = self.ran_for.lock()
        {
            ran_for.get_or_insert_with(|| self.started.elapsed());
        }
        if let Ok(mut s) = self.state.lock() {
            *s = state;
        }
    }

    /// From the start to now, or to the end of a job that has ended.
    pub fn duration(&self) -> Duration {
        self.ran_for
            .lock()
            .ok()
            .and_then(|d| *d)
            .unwrap_or_else(|| self.started.elapsed())
    }

    pub fn cancel(&self) {
        self.cancel_requested.store(true, Ordering::SeqCst);
    }

    pub fn note(&self) -> Option<String> {
        self.note.lock().ok().and_then(|n| n.clone())
    }

    fn set_note(&self, note: Option<String>) {
        if let Ok(mut n) = self.note.lock() {
            *n = note;
        }
    }
}

/// A deployed attempt: where its subtasks run, and their events.
struct Deployment {
    attempt: u32,
    /// Every subtask with its task manager.
    subtasks: Vec<(SubtaskId, String)>,
    /// The subtasks that run a source, with their task managers.
    sources: Vec<(SubtaskId, String)>,
    task_managers: BTreeSet<String>,
    events: Receiver<TaskEvent>,
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
    /// The job manager's own store and writer: where a cancelled run's files are abandoned
    /// when no task manager has slots for it.
    env: JobEnvironment,
    plan: ExecutionPlan,
    task_managers: Arc<dyn TaskManagers>,
    storage: Arc<CheckpointStorage>,
    next_checkpoint_id: u64,
    /// Periodic checkpoints of the current attempt declined since the last one completed
    /// (held against `checkpoint.tolerable_failures`). Set back to 0 when an attempt starts,
    /// whatever ended the one before (too many declines, a failed snapshot, a lost task
    /// manager): as in Flink, every attempt gets the full allowance.
    declined_in_a_row: u32,
    /// The latest checkpoint completed in this run (restored from, or completed by an
    /// attempt): a user's cancel has the sinks publish what it made pending.
    latest_completed: Option<u64>,
}

impl JobMaster {
    pub fn new(
        shared: Arc<JobShared>,
        env: &JobEnvironment,
        task_managers: Arc<dyn TaskManagers>,
    ) -> Self {
        let plan = ExecutionPlan::new(&shared.graph);
        let storage =
            CheckpointStorage::new(env.store.clone(), &shared.job_id, env.runtime.clone());
        Self {
            shared,
            env: env.clone(),
            plan,
            task_managers,
            storage,
            next_checkpoint_id: 1,
            declined_in_a_row: 0,
            latest_completed: None,
        }
    }

    /// Runs the job, restarting it as its strategy allows, until it finishes, fails for good
    /// or is cancelled. The final state is also in `shared.state`.
    pub fn run(mut self) -> JobState {
        let state = match self.run_attempts() {
            Ok(state) => state,
            Err(e) => JobState::Failed(e.to_string()),
        };
        self.task_managers.release(&self.shared.job_id);
        self.shared.set_note(None);
        self.shared.set_state(state.clone());
        state
    }

    fn run_attempts(&mut self) -> Result<JobState, EngineError> {
        let mut attempt: u32 = 0;
        loop {
            let restore = self.storage.latest()?;
            if let Some(m) = &restore {
                self.next_checkpoint_id = self.next_checkpoint_id.max(m.checkpoint_id + 1);
                self.latest_completed = self.latest_completed.max(Some(m.checkpoint_id));
                tracing::info!(
                    job = %self.shared.job_id,
                    checkpoint = m.checkpoint_id,
                    "restoring from the latest completed checkpoint"
                );
            }
            let Some(placement) = self.wait_for_slots() else {
                if attempt > 0 {
                    // A failed attempt left its files for the next one, which will not come.
                    self.abandon_with_one_more_attempt(
                        attempt,
                        "cancelled while waiting for slots to restart",
                    );
                }
                return Ok(JobState::Canceled);
            };
            // A new attempt: the declines of the last one are not held against it.
            self.declined_in_a_row = 0;
            self.shared.set_state(JobState::Running);
            let restored = restore.as_ref().map(|m| m.checkpoint_id);
            let outcome = match self.deploy(attempt, placement, restore) {
                Ok(deployment) => {
                    if let Some(id) = restored {
                        self.shared.metrics.add_restore(id);
                    }
                    let outcome = self.coordinate(&deployment);
                    // Only the user's cancel abandons the run's files: after a failure (a
                    // lost task manager included) the next attempt resumes them.
                    let mode = match outcome {
                        Outcome::Canceled => {
                            tracing::info!(
                                job = %self.shared.job_id,
                                checkpoint = self.latest_completed,
                                "cancelled: stopping the subtasks and abandoning the files \
                                 no completed checkpoint published"
                            );
                            StopMode::Abandon {
                                completed: self.latest_completed,
                            }
                        }
                        Outcome::Finished | Outcome::Failed(_) => StopMode::Keep,
                    };
                    self.tear_down(&deployment, mode);
                    outcome
                }
                Err(e) => Outcome::Failed(format!("deploying the job: {e}")),
            };
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
                            self.abandon_with_one_more_attempt(
                                attempt,
                                "cancelled while restarting",
                            );
                            return Ok(JobState::Canceled);
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
        }
    }

    /// Abandons a run that will never resume (a new run of its job superseded it) instead of
    /// running it: see [`abandon_with_one_more_attempt`](Self::abandon_with_one_more_attempt).
    pub fn abandon_run(mut self) -> JobState {
        self.shared.set_state(JobState::Running);
        self.wait_for_task_managers(TASK_MANAGERS_BACK_WITHIN);
        self.abandon_with_one_more_attempt(
            0,
            "a run that will not resume (superseded, or cancelled)",
        );
        self.task_managers.release(&self.shared.job_id);
        self.shared.set_state(JobState::Canceled);
        JobState::Canceled
    }

    /// Abandons what a run left open when no subtask of it is running: a user's cancel while
    /// the job waits to restart, or a run superseded by a new one ([`abandon_run`]). One more
    /// attempt is deployed only to abandon it. Its subtasks restore the latest completed
    /// checkpoint as any restart does (sinks publish what that checkpoint made pending, abort
    /// the run's uploads that no checkpoint references, and take back the files in progress)
    /// and are stopped at once with [`StopMode::Abandon`], which aborts the files they took
    /// back. Without free slots on the task managers (a lost one is why the job waits), the
    /// attempt runs in this process, on the job manager's own store and writer.
    ///
    /// [`abandon_run`]: Self::abandon_run
    fn abandon_with_one_more_attempt(&mut self, attempt: u32, why: &str) {
        let job = self.shared.job_id.clone();
        let leave = |cause: String| {
            tracing::warn!(
                job = %job,
                "{why}; the run's files in progress stay open ({cause}): \
                 `rivulet recover --abort --prefix SINK_PATH/ STORE` aborts them"
            );
        };
        let restore = match self.storage.latest() {
            Ok(restore) => restore,
            Err(e) => return leave(format!("reading the latest checkpoint: {e}")),
        };
        let completed = self
            .latest_completed
            .max(restore.as_ref().map(|m| m.checkpoint_id));
        let needed = self.shared.graph.slots_needed();
        let (placement, elsewhere) = match self.task_managers.allocate(&self.shared.job_id, needed)
        {
            Ok(placement) => (placement, None),
            Err(cause) => {
                tracing::info!(
                    job = %self.shared.job_id,
                    "{why}: no slots on the task managers ({cause}); abandoning the run's files \
                     in the job manager"
                );
                let here: Arc<dyn TaskManagers> = Arc::new(LocalTaskManagers::new(
                    "job-manager",
                    self.env.clone(),
                    needed,
                ));
                let placement = match here.allocate(&self.shared.job_id, needed) {
                    Ok(placement) => placement,
                    Err(cause) => return leave(cause),
                };
                (
                    placement,
                    Some(std::mem::replace(&mut self.task_managers, here)),
                )
            }
        };
        tracing::info!(
            job = %self.shared.job_id,
            checkpoint = completed,
            "{why}: restoring the latest checkpoint only to abandon the files in progress"
        );
        match self.deploy(attempt, placement, restore) {
            Ok(deployment) => self.tear_down(&deployment, StopMode::Abandon { completed }),
            Err(e) => leave(format!("deploying the subtasks that abandon them: {e}")),
        }
        if let Some(task_managers) = elsewhere {
            self.task_managers = task_managers;
        }
    }

    /// Waits up to `patience` for task managers with the job's slots. A job manager that
    /// starts by finishing a cancel its predecessor accepted needs them back: a task manager
    /// that lost the job manager re-registers only once it has stopped the old attempt's
    /// subtasks, while abandoning in the job manager at once would race them (they open files
    /// until they stop, after the abandon listed the run's uploads).
    fn wait_for_task_managers(&self, patience: Duration) {
        let needed = self.shared.graph.slots_needed();
        let until = Instant::now() + patience;
        while Instant::now() < until {
            if self
                .task_managers
                .allocate(&self.shared.job_id, needed)
                .is_ok()
            {
                self.task_managers.release(&self.shared.job_id);
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the job's slots are free (saying why meanwhile); `None` if cancelled.
    fn wait_for_slots(&self) -> Option<Placement> {
        let needed = self.shared.graph.slots_needed();
        loop {
            match self.task_managers.allocate(&self.shared.job_id, needed) {
                Ok(placement) => {
                    self.shared.set_note(None);
                    return Some(placement);
                }
                Err(why) => {
                    if self.shared.note().as_deref() != Some(why.as_str()) {
                        tracing::warn!(job = %self.shared.job_id, "waiting for slots: {why}");
                    }
                    self.shared.set_note(Some(why));
                }
            }
            for _ in 0..10 {
                if self.shared.cancel_requested.load(Ordering::SeqCst) {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Starts an attempt's subtasks on the task managers of `placement`.
    fn deploy(
        &self,
        attempt: u32,
        placement: Placement,
        restore: Option<CheckpointMetadata>,
    ) -> Result<Deployment, EngineError> {
        let graph = &self.shared.graph;
        let (events_tx, events_rx) = crossbeam_channel::unbounded();
        let mut subtasks = Vec::new();
        let mut sources = Vec::new();
        for (t, task) in self.plan.tasks.iter().enumerate() {
            let is_source = graph.vertices[task.vertices[0]].is_source();
            for s in 0..task.parallelism {
                let id = SubtaskId {
                    task: t,
                    subtask: s,
                };
                let tm = placement.task_manager_of(s).to_string();
                if is_source {
                    sources.push((id, tm.clone()));
                }
                subtasks.push((id, tm));
            }
        }
        let task_managers: BTreeSet<String> = placement.slots.iter().cloned().collect();
        let request = DeployRequest {
            job_id: self.shared.job_id.clone(),
            job_name: graph.name.clone(),
            spec: self.shared.spec.clone(),
            attempt,
            placement,
            restore,
        };
        let deployment = Deployment {
            attempt,
            subtasks,
            sources,
            task_managers,
            events: events_rx,
        };
        for tm in &deployment.task_managers {
            if let Err(e) = self.task_managers.deploy(
                tm,
                graph,
                &request,
                events_tx.clone(),
                self.shared.metrics.clone(),
            ) {
                self.tear_down(&deployment, StopMode::Keep);
                return Err(e);
            }
        }
        Ok(deployment)
    }

    fn broadcast(&self, deployment: &Deployment, message: &TaskControl) {
        for (id, tm) in &deployment.subtasks {
            self.task_managers.control(
                tm,
                &self.shared.job_id,
                deployment.attempt,
                *id,
                message.clone(),
            );
        }
    }

    /// Stops the attempt's subtasks on every task manager and waits for them. Every task
    /// manager is told at once and the waits overlap: after a user's cancel
    /// (`StopMode::Abandon`) each abandons its sinks' files, which takes store calls.
    fn tear_down(&self, deployment: &Deployment, mode: StopMode) {
        let (task_managers, job, attempt) =
            (&self.task_managers, &self.shared.job_id, deployment.attempt);
        std::thread::scope(|scope| {
            for tm in &deployment.task_managers {
                scope.spawn(move || task_managers.cancel(tm, job, attempt, mode));
            }
        });
    }

    fn trigger(&mut self, deployment: &Deployment, is_final: bool) -> PendingCheckpoint {
        let id = self.next_checkpoint_id;
        self.next_checkpoint_id += 1;
        let barrier = Barrier {
            checkpoint_id: id,
            is_final,
        };
        // Sources start the barrier; every other subtask takes it as notice that a barrier is
        // on its way, so that a throttle there stops pausing its input until it has passed.
        for (id, tm) in &deployment.subtasks {
            self.task_managers.control(
                tm,
                &self.shared.job_id,
                deployment.attempt,
                *id,
                TaskControl::TriggerCheckpoint(barrier),
            );
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
            let all_sources_done = finished_sources.len() == deployment.sources.len();
            if pending.is_none() && !final_completed {
                if all_sources_done {
                    pending = Some(self.trigger(deployment, true));
                } else if next_periodic.is_some_and(|t| Instant::now() >= t) {
                    pending = Some(self.trigger(deployment, false));
                    next_periodic = config.interval.map(|i| Instant::now() + i);
                }
            }
            if let Some(p) = pending.take_if(|p| p.started.elapsed() > config.timeout) {
                let reason = format!("not complete within {:?}", config.timeout);
                if let Err(failed) = self.decline(p, reason) {
                    return failed;
                }
            }
            let event = match deployment.events.recv_timeout(Duration::from_millis(50)) {
                Ok(event) => event,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => {
                    return Outcome::Failed("every subtask is gone".into());
                }
            };
            match event {
                TaskEvent::Failed(_, reason) => {
                    // The checkpoint in flight cannot complete any more: the history says why.
                    if let Some(p) = pending.take() {
                        // Not held against `tolerable_failures`: the attempt fails anyway,
                        // and the next one starts with the full allowance.
                        self.record_declined(&p, format!("a subtask failed: {reason}"));
                    }
                    return Outcome::Failed(reason);
                }
                TaskEvent::Declined {
                    checkpoint_id,
                    reason,
                    ..
                } => {
                    let Some(p) = pending.take_if(|p| p.id == checkpoint_id) else {
                        continue; // a decline of a checkpoint already declined or timed out
                    };
                    if let Err(failed) = self.decline(p, reason) {
                        return failed;
                    }
                }
                TaskEvent::SourceFinished(id) => {
                    finished_sources.insert(id);
                }
                TaskEvent::Finished(id) => {
                    finished_subtasks.insert(id);
                    if final_completed && finished_subtasks.len() == deployment.subtasks.len() {
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
                    if p.acks.len() < deployment.subtasks.len() {
                        continue;
                    }
                    let Some(p) = pending.take() else { continue };
                    match self.complete(p, deployment) {
                        Ok(is_final) => final_completed |= is_final,
                        Err(failed) => return failed,
                    }
                    if final_completed && finished_subtasks.len() == deployment.subtasks.len() {
                        return Outcome::Finished;
                    }
                }
            }
        }
    }

    /// Puts a checkpoint that will not complete into the history, saying why.
    fn record_declined(&self, p: &PendingCheckpoint, reason: String) {
        tracing::warn!(job = %self.shared.job_id, checkpoint = p.id, "checkpoint declined: {reason}");
        self.shared.metrics.record_checkpoint(CheckpointRecord {
            id: p.id,
            completed: false,
            is_final: p.is_final,
            duration_ms: millis_rounded_up(p.started.elapsed()),
            state_bytes: 0,
            reason: Some(reason),
        });
    }

    /// Records a checkpoint that will not complete. A periodic one is just declined: the job
    /// runs on, and the sinks' files it would have published wait for the next checkpoint that
    /// completes (they stay pending in the sinks' state, grouped by checkpoint, and a
    /// completion publishes every group up to its id). A final one fails the attempt, since
    /// the subtasks that took it have finished their operators and wait only for it; the
    /// restart goes back to the latest completed checkpoint. So does one declined checkpoint
    /// more in a row than `checkpoint.tolerable_failures`. `Err` is that failure.
    fn decline(&mut self, p: PendingCheckpoint, reason: String) -> Result<(), Outcome> {
        self.record_declined(&p, reason.clone());
        if p.is_final {
            return Err(Outcome::Failed(format!(
                "the final checkpoint {} was declined: {reason}",
                p.id
            )));
        }
        self.declined_in_a_row += 1;
        if let Some(tolerable) = self.shared.graph.checkpoint.tolerable_failures
            && self.declined_in_a_row > tolerable
        {
            return Err(Outcome::Failed(format!(
                "{} checkpoints declined in a row, more than \
                 checkpoint.tolerable_failures = {tolerable}; the last: {reason}",
                self.declined_in_a_row
            )));
        }
        Ok(())
    }

    /// Commits a fully acknowledged checkpoint and tells every subtask; `Ok(true)` if it was
    /// the final one. A metadata write that fails declines the checkpoint (see `decline`):
    /// without its metadata it does not exist, and should the write have happened after all
    /// (an answer lost on the way back), it is a complete checkpoint whose pending files the
    /// next completion, or a restore from it, publishes.
    fn complete(&mut self, p: PendingCheckpoint, deployment: &Deployment) -> Result<bool, Outcome> {
        let states: Vec<OperatorState> = p.acks.values().flatten().cloned().collect();
        let state_bytes = states.iter().map(OperatorState::size).sum();
        let metadata = self.storage.new_metadata(p.id, p.is_final, states);
        if let Err(e) = self.storage.commit(&metadata) {
            self.decline(p, format!("writing the checkpoint's metadata: {e}"))?;
            return Ok(false);
        }
        self.declined_in_a_row = 0;
        self.latest_completed = self.latest_completed.max(Some(p.id));
        self.shared.metrics.record_checkpoint(CheckpointRecord {
            id: p.id,
            completed: true,
            is_final: p.is_final,
            duration_ms: millis_rounded_up(p.started.elapsed()),
            state_bytes,
            reason: None,
        });
        self.broadcast(deployment, &TaskControl::CheckpointComplete(p.id));
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

#[cfg(test)]
mod duration_tests {
    use super::*;
    use crate::graph::JobGraph;

    #[test]
    fn a_jobs_duration_stops_growing_when_it_ends() {
        let shared = JobShared {
            job_id: "j".into(),
            graph: JobGraph {
                name: "j".into(),
                vertices: Vec::new(),
                edges: Vec::new(),
                checkpoint: Default::default(),
                restart: Default::default(),
            },
            spec: None,
            note: Mutex::new(None),
            metrics: Arc::new(JobMetrics::new(0)),
            state: Mutex::new(JobState::Created),
            cancel_requested: AtomicBool::new(false),
            started: Instant::now() - Duration::from_secs(5),
            ran_for: Mutex::new(None),
        };
        shared.set_state(JobState::Running);
        assert!(shared.ran_for.lock().unwrap().is_none());
        shared.set_state(JobState::Canceled);
        let ended = shared.duration();
        assert!(ended >= Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(shared.duration(), ended, "fixed once the job ended");
    }
}

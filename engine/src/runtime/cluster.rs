//! The embedded mini-cluster: a job manager and task managers in one process, for
//! `rivulet run` without `--jobmanager` and for tests. Its task managers share one executor:
//! every channel is in-process.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::Sender;

use super::executor::{DeployRequest, Placement, TaskExecutor};
use super::master::{JobEnvironment, JobMaster, JobShared, JobState, TaskManagers};
use super::metrics::JobMetrics;
use super::task::{StopMode, SubtaskId, TaskControl, TaskEvent};
use crate::error::EngineError;
use crate::graph::JobGraph;

/// The task manager id of the embedded cluster's (shared) executor.
const LOCAL: &str = "local";

/// Slots in this process: the embedded cluster's task managers, and where a job master
/// abandons a cancelled run's files when no task manager has free slots.
pub struct LocalTaskManagers {
    name: String,
    executor: TaskExecutor,
    slots: usize,
    /// Slots held by each job.
    allocated: Mutex<HashMap<String, usize>>,
}

impl LocalTaskManagers {
    /// `slots` slots in this process, running subtasks as task manager `name` over `env`.
    pub fn new(name: &str, env: JobEnvironment, slots: usize) -> Self {
        Self {
            name: name.to_string(),
            executor: TaskExecutor::new(name, env, None, None),
            slots,
            allocated: Mutex::new(HashMap::new()),
        }
    }
}

impl TaskManagers for LocalTaskManagers {
    fn allocate(&self, job_id: &str, slots: usize) -> Result<Placement, String> {
        let mut allocated = self
            .allocated
            .lock()
            .map_err(|_| "slot table lock poisoned".to_string())?;
        allocated.remove(job_id);
        let used: usize = allocated.values().sum();
        let free = self.slots.saturating_sub(used);
        if slots > free {
            return Err(format!(
                "the job needs {slots} slots and {free} of {} are free",
                self.slots
            ));
        }
        allocated.insert(job_id.to_string(), slots);
        Ok(Placement::local(&self.name, slots))
    }

    fn release(&self, job_id: &str) {
        if let Ok(mut allocated) = self.allocated.lock() {
            allocated.remove(job_id);
        }
    }

    fn deploy(
        &self,
        _task_manager: &str,
        graph: &JobGraph,
        request: &DeployRequest,
        events: Sender<TaskEvent>,
        metrics: Arc<JobMetrics>,
    ) -> Result<(), EngineError> {
        self.executor.deploy(graph, request, events, metrics)
    }

    fn control(
        &self,
        _task_manager: &str,
        job_id: &str,
        attempt: u32,
        subtask: SubtaskId,
        message: TaskControl,
    ) {
        self.executor.control(job_id, attempt, subtask, message);
    }

    fn cancel(&self, _task_manager: &str, job_id: &str, attempt: u32, mode: StopMode) {
        self.executor.cancel(job_id, attempt, mode);
    }
}

/// Task managers and their slots, in this process.
pub struct MiniCluster {
    env: JobEnvironment,
    task_managers: usize,
    slots_per_task_manager: usize,
    local: Arc<LocalTaskManagers>,
}

/// A submitted job.
pub struct JobHandle {
    pub shared: Arc<JobShared>,
    master: Mutex<Option<JoinHandle<JobState>>>,
}

impl JobHandle {
    pub fn job_id(&self) -> &str {
        &self.shared.job_id
    }

    pub fn metrics(&self) -> &Arc<JobMetrics> {
        &self.shared.metrics
    }

    pub fn state(&self) -> JobState {
        self.shared.state()
    }

    pub fn cancel(&self) {
        self.shared.cancel();
    }

    /// Waits for the job to end and returns its final state.
    pub fn wait(&self) -> JobState {
        let thread = self.master.lock().ok().and_then(|mut m| m.take());
        match thread {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| JobState::Failed("the job master panicked".into())),
            None => self.state(),
        }
    }
}

/// Starts a job master for `graph` on its own thread.
pub fn start_job(
    graph: JobGraph,
    spec: Option<String>,
    job_id: &str,
    env: &JobEnvironment,
    task_managers: Arc<dyn TaskManagers>,
) -> Result<JobHandle, EngineError> {
    start_master(graph, spec, job_id, env, task_managers, JobMaster::run)
}

/// Starts a job master for `graph` on its own thread, which runs `run` on it
/// (`JobMaster::run`, or `JobMaster::abandon_run` to abandon a run that will not resume).
pub fn start_master(
    graph: JobGraph,
    spec: Option<String>,
    job_id: &str,
    env: &JobEnvironment,
    task_managers: Arc<dyn TaskManagers>,
    run: fn(JobMaster) -> JobState,
) -> Result<JobHandle, EngineError> {
    graph.validate()?;
    let shared = Arc::new(JobShared {
        job_id: job_id.to_string(),
        metrics: Arc::new(JobMetrics::new(graph.vertices.len())),
        graph,
        spec,
        note: Mutex::new(None),
        state: Mutex::new(JobState::Created),
        cancel_requested: AtomicBool::new(false),
        started: Instant::now(),
        ran_for: Mutex::new(None),
    });
    let master = JobMaster::new(shared.clone(), env, task_managers);
    let thread = std::thread::Builder::new()
        .name(format!("job-master-{job_id}"))
        .spawn(move || run(master))
        .map_err(|e| EngineError::io("starting the job master", e))?;
    Ok(JobHandle {
        shared,
        master: Mutex::new(Some(thread)),
    })
}

impl MiniCluster {
    pub fn new(env: JobEnvironment, task_managers: usize, slots_per_task_manager: usize) -> Self {
        let local = Arc::new(LocalTaskManagers::new(
            LOCAL,
            env.clone(),
            task_managers * slots_per_task_manager,
        ));
        Self {
            env,
            task_managers,
            slots_per_task_manager,
            local,
        }
    }

    pub fn slots(&self) -> usize {
        self.task_managers * self.slots_per_task_manager
    }

    /// Starts `graph` as job `job_id`. A job id whose checkpoints are in the store resumes
    /// from its latest one.
    pub fn submit(&self, graph: JobGraph, job_id: &str) -> Result<JobHandle, EngineError> {
        let needed = graph.slots_needed();
        if needed > self.slots() {
            // No slots will ever be added to an embedded cluster: say so now.
            return Err(EngineError::job(
                "parallelism",
                format!(
                    "the job needs {needed} slots (its highest parallelism) and the cluster has {} \
                     ({} task managers x {} slots); lower the parallelism or add slots",
                    self.slots(),
                    self.task_managers,
                    self.slots_per_task_manager
                ),
            ));
        }
        start_job(graph, None, job_id, &self.env, self.local.clone())
    }

    /// Abandons the run `job_id` of `graph` instead of running it, as a user's cancel would
    /// (see `JobMaster::abandon_run`): for a run that will never resume because a new run of
    /// its job superseded it. The handle's job ends `Canceled`.
    pub fn abandon(&self, graph: JobGraph, job_id: &str) -> Result<JobHandle, EngineError> {
        start_master(
            graph,
            None,
            job_id,
            &self.env,
            self.local.clone(),
            JobMaster::abandon_run,
        )
    }
}

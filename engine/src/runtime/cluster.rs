//! The embedded mini-cluster: a job manager and task managers in one process, for
//! `rivulet run` without `--jobmanager` and for tests.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use super::master::{JobEnvironment, JobMaster, JobShared, JobState};
use super::metrics::JobMetrics;
use crate::error::EngineError;
use crate::graph::JobGraph;

/// Task managers and their slots, in this process.
pub struct MiniCluster {
    env: JobEnvironment,
    task_managers: usize,
    slots_per_task_manager: usize,
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

impl MiniCluster {
    pub fn new(env: JobEnvironment, task_managers: usize, slots_per_task_manager: usize) -> Self {
        Self {
            env,
            task_managers,
            slots_per_task_manager,
        }
    }

    pub fn slots(&self) -> usize {
        self.task_managers * self.slots_per_task_manager
    }

    /// Starts `graph` as job `job_id`. A job id whose checkpoints are in the store resumes
    /// from its latest one.
    pub fn submit(&self, graph: JobGraph, job_id: &str) -> Result<JobHandle, EngineError> {
        graph.validate()?;
        let needed = graph.slots_needed();
        if needed > self.slots() {
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
        let shared = Arc::new(JobShared {
            job_id: job_id.to_string(),
            metrics: Arc::new(JobMetrics::new(graph.vertices.len())),
            graph,
            state: Mutex::new(JobState::Created),
            cancel_requested: AtomicBool::new(false),
            started: Instant::now(),
        });
        let master = JobMaster::new(shared.clone(), self.env.clone());
        let thread = std::thread::Builder::new()
            .name(format!("job-master-{job_id}"))
            .spawn(move || master.run())
            .map_err(|e| EngineError::io("starting the job master", e))?;
        Ok(JobHandle {
            shared,
            master: Mutex::new(Some(thread)),
        })
    }
}

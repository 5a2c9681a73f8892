//! The job manager: the dispatcher (job submission over REST), the resource manager (task
//! managers and their slots) and one job master per job, behind one port that serves both the
//! REST API and the task managers' control connections.
//!
//! Jobs are recorded in the store (`_jobs/`); a job manager that starts finds the jobs that
//! were running and resumes them from their latest checkpoints once task managers register.

use std::collections::BTreeMap;
use std::io::{BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fs_core::store::{DynStore, StoreUrl, open_store};
use fs_core::{Index, RecoverableWriter, WriterConfig};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use tokio::net::TcpListener;

use super::resources::{RegisteredTaskManager, ResourceManager};
use super::rest;
use super::rpc::{MAGIC, ToJobManager, ToTaskManager, read_message};
use crate::error::EngineError;
use crate::job::registry::{self, JobRecord, RecordedState};
use crate::runtime::cluster::{JobHandle, start_master};
use crate::runtime::master::{JobEnvironment, JobMaster, JobState, TaskManagers};

/// How a job manager runs.
#[derive(Debug, Clone)]
pub struct JobManagerConfig {
    pub listen: SocketAddr,
    /// The store jobs run on, as a canonical URL that task managers open too.
    pub store: StoreUrl,
    /// The shared secret REST clients and task managers must present; `None` (`--anonymous`)
    /// accepts anyone who can reach the port.
    pub token: Option<String>,
    pub heartbeat_timeout: Duration,
    pub writer: WriterConfig,
}

/// The shortest heartbeat timeout a job manager takes. Task managers send a heartbeat every
/// second and take the job manager for lost after three quarters of the timeout without an
/// answer: below 2 s (1.5 s of silence) every task manager would be dropped and reconnect
/// over and over, restarting every job with it.
pub const MIN_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(2);

/// A job the job manager knows: running under it, or recorded in the store.
pub enum KnownJob {
    Live(Arc<JobHandle>),
    Recorded(JobRecord),
}

pub struct JobManager {
    pub config: JobManagerConfig,
    pub env: JobEnvironment,
    pub resources: Arc<ResourceManager>,
    pub started: Instant,
    jobs: Mutex<BTreeMap<String, Arc<JobHandle>>>,
}

impl JobManager {
    pub fn store(&self) -> &DynStore {
        &self.env.store
    }

    /// Jobs started by this job manager, by id.
    pub fn live_jobs(&self) -> Vec<Arc<JobHandle>> {
        self.jobs
            .lock()
            .map(|j| j.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn live_job(&self, id: &str) -> Option<Arc<JobHandle>> {
        self.jobs.lock().ok().and_then(|j| j.get(id).cloned())
    }

    /// Every job: the live ones and those only recorded in the store.
    pub async fn all_jobs(&self) -> Result<Vec<KnownJob>, EngineError> {
        let live = self.live_jobs();
        let mut out: Vec<KnownJob> = registry::list(self.store())
            .await?
            .into_iter()
            .filter(|r| !live.iter().any(|l| l.job_id() == r.job_id))
            .map(KnownJob::Recorded)
            .collect();
        out.extend(live.into_iter().map(KnownJob::Live));
        Ok(out)
    }

    /// Compiles a job file and starts it. Errors name the line or field at fault.
    pub async fn submit(self: &Arc<Self>, text: &str) -> Result<String, EngineError> {
        let spec = crate::job::parse(text)?;
        let job_id = registry::new_job_id(&spec.name);
        let compiled = crate::job::compile(&spec, &job_id)?;
        let now = chrono::Utc::now().timestamp_millis();
        registry::save(
            self.store(),
            &JobRecord {
                job_id: job_id.clone(),
                name: spec.name.clone(),
                spec: text.to_string(),
                state: RecordedState::Running,
                submitted_at_ms: now,
                updated_at_ms: now,
            },
        )
        .await?;
        self.start(compiled.graph, text, &job_id, Start::Run)?;
        Ok(job_id)
    }

    fn start(
        self: &Arc<Self>,
        graph: crate::graph::JobGraph,
        text: &str,
        job_id: &str,
        how: Start,
    ) -> Result<(), EngineError> {
        let resources: Arc<dyn TaskManagers> = self.resources.clone();
        let run = match how {
            Start::Run => JobMaster::run,
            Start::FinishCancel => JobMaster::abandon_run,
        };
        let handle = Arc::new(start_master(
            graph,
            Some(text.to_string()),
            job_id,
            &self.env,
            resources,
            run,
        )?);
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.insert(job_id.to_string(), handle.clone());
        }
        // Record how the job ends, so that a restarted job manager does not resume it.
        let store = self.env.store.clone();
        let runtime = self.env.runtime.clone();
        let id = job_id.to_string();
        std::thread::Builder::new()
            .name(format!("job-watch-{job_id}"))
            .spawn(move || {
                let state = match handle.wait() {
                    JobState::Finished => RecordedState::Finished,
                    JobState::Canceled => RecordedState::Canceled,
                    _ => RecordedState::Failed,
                };
                if let Err(e) = runtime.block_on(registry::set_state(&store, &id, state)) {
                    tracing::warn!(job = %id, "recording the job's end: {e}");
                }
            })
            .map_err(|e| EngineError::io("starting a job watcher", e))?;
        Ok(())
    }

    /// Resumes the jobs recorded as running (the job manager stopped while they ran).
    async fn resume_recorded_jobs(self: &Arc<Self>) -> Result<(), EngineError> {
        for record in registry::list(self.store()).await? {
            let how = match record.state {
                RecordedState::Running => Start::Run,
                RecordedState::Cancelling => Start::FinishCancel,
                _ => continue,
            };
            let compiled = crate::job::parse(&record.spec)
                .and_then(|spec| crate::job::compile(&spec, &record.job_id));
            match compiled {
                Ok(compiled) => {
                    let what = match how {
                        Start::Run => "resuming job",
                        Start::FinishCancel => "finishing the cancel of job",
                    };
                    eprintln!(
                        "job manager: {what} {} ({}) from its latest checkpoint",
                        record.name, record.job_id
                    );
                    self.start(compiled.graph, &record.spec, &record.job_id, how)?;
                }
                Err(e) => {
                    tracing::warn!(job = %record.job_id, "cannot resume the job: {e}");
                    registry::set_state(self.store(), &record.job_id, RecordedState::Failed)
                        .await?;
                }
            }
        }
        Ok(())
    }
}

/// How a job manager starts a job's master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// Run it (a new job, or one recorded as running: from its latest checkpoint).
    Run,
    /// Finish a cancel an earlier job manager accepted: restore the latest checkpoint only to
    /// abandon the files in progress.
    FinishCancel,
}

/// Runs a job manager until `shutdown` resolves. Prints the address it serves on.
pub async fn serve(
    config: JobManagerConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), EngineError> {
    check_config(&config)?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| EngineError::io(format!("listening on {}", config.listen), e))?;
    serve_on(config, listener, shutdown).await
}

/// Checks what a job manager is configured with before it starts.
fn check_config(config: &JobManagerConfig) -> Result<(), EngineError> {
    if config.heartbeat_timeout < MIN_HEARTBEAT_TIMEOUT {
        return Err(EngineError::Task {
            task: "job manager".into(),
            message: format!(
                "a heartbeat timeout of {:?} is too short: task managers heartbeat every second, \
                 so it must be at least {}s (default 5s; --heartbeat-timeout)",
                config.heartbeat_timeout,
                MIN_HEARTBEAT_TIMEOUT.as_secs()
            ),
        });
    }
    Ok(())
}

/// [`serve`] on a listener bound already (`config.listen` is not used): a caller that binds
/// port 0 knows the address before the job manager starts.
pub async fn serve_on(
    config: JobManagerConfig,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), EngineError> {
    check_config(&config)?;
    let store = open_store(&config.store).await?;
    // The job manager writes checkpoint metadata and job records, never files through the
    // writer; its index only backs the environment's writer.
    let index = Index::temporary().map_err(fs_core::WriterError::from)?;
    let writer = Arc::new(RecoverableWriter::new(
        store.clone(),
        index,
        config.writer.clone(),
    )?);
    let env = JobEnvironment {
        store,
        writer,
        runtime: tokio::runtime::Handle::current(),
    };
    let address = listener
        .local_addr()
        .map_err(|e| EngineError::io("reading the listening address", e))?;
    let jm = Arc::new(JobManager {
        resources: ResourceManager::new(config.heartbeat_timeout),
        config,
        env,
        started: Instant::now(),
        jobs: Mutex::new(BTreeMap::new()),
    });
    eprintln!(
        "job manager on http://{address} (REST and task managers), store {}",
        jm.config.store
    );
    jm.resume_recorded_jobs().await?;

    let http = ConnBuilder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        let (socket, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("accepting a connection: {e}");
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let jm = jm.clone();
        let http = http.clone();
        tokio::spawn(async move {
            // Task managers announce themselves with MAGIC; anything else is HTTP.
            let mut first = [0u8; 4];
            let is_rpc = matches!(
                tokio::time::timeout(Duration::from_secs(10), socket.peek(&mut first)).await,
                Ok(Ok(4))
            ) && &first == MAGIC;
            if is_rpc {
                match socket.into_std() {
                    Ok(stream) => {
                        let _ = stream.set_nonblocking(false);
                        let _ = std::thread::Builder::new()
                            .name("task-manager-rpc".into())
                            .spawn(move || serve_task_manager(&jm, stream, peer));
                    }
                    Err(e) => tracing::warn!("taking a task manager connection: {e}"),
                }
                return;
            }
            let service = hyper::service::service_fn(move |req| rest::handle(jm.clone(), req));
            if let Err(e) = http.serve_connection(TokioIo::new(socket), service).await {
                tracing::debug!("REST connection ended: {e}");
            }
        });
    }
    // Stopping the job manager leaves its jobs recorded as running: the next one resumes them.
    for job in jm.live_jobs() {
        job.cancel();
    }
    Ok(())
}

/// One task manager's control connection.
fn serve_task_manager(jm: &Arc<JobManager>, stream: TcpStream, peer: SocketAddr) {
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut magic = [0u8; 4];
    if reader.read_exact(&mut magic).is_err() {
        return;
    }
    let Ok(Some(ToJobManager::Register {
        task_manager,
        token,
        slots,
        data_address,
        host,
        heartbeat_acks,
    })) = read_message::<ToJobManager>(&mut reader)
    else {
        tracing::warn!(%peer, "a task manager connection that did not register");
        return;
    };
    let tm = Arc::new(RegisteredTaskManager::new(
        task_manager.clone(),
        host,
        slots,
        data_address,
        write_half,
        heartbeat_acks,
    ));
    if jm.config.token.is_some() && token != jm.config.token {
        let _ = tm.send(&ToTaskManager::Refused {
            reason: "wrong or missing cluster token (--token / RIVULET_CLUSTER_TOKEN)".into(),
        });
        tracing::warn!(%peer, "refused a task manager with a wrong token");
        return;
    }
    if tm
        .send(&ToTaskManager::Registered {
            store: jm.config.store.to_string(),
            // Only to a task manager that hears the answers to its heartbeats: to any other,
            // a silence would not mean anything.
            heartbeat_timeout_ms: heartbeat_acks.then(|| {
                u64::try_from(jm.config.heartbeat_timeout.as_millis()).unwrap_or(u64::MAX)
            }),
        })
        .is_err()
    {
        return;
    }
    jm.resources.register(tm.clone());
    let reason = loop {
        match read_message::<ToJobManager>(&mut reader) {
            Ok(Some(message)) => jm.resources.handle(&task_manager, message),
            Ok(None) => break "its connection closed".to_string(),
            Err(e) => break format!("its connection failed: {e}"),
        }
    };
    jm.resources.connection_closed(&tm, &reason);
}

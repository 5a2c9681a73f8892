//! A task manager process: registers its slots with the job manager, runs the subtasks job
//! masters deploy to it, and exchanges data with other task managers over TCP.
//!
//! If the job manager goes away, the task manager stops every subtask (a job manager that
//! comes back restarts its jobs from their checkpoints) and keeps trying to reconnect.

use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fs_core::store::{StoreUrl, open_store};
use fs_core::{Index, RecoverableWriter, WriterConfig};

use super::rpc::{MAGIC, ToJobManager, ToTaskManager, VertexCounts, read_message, write_message};
use crate::error::EngineError;
use crate::graph::JobGraph;
use crate::runtime::executor::{DeployRequest, TaskExecutor};
use crate::runtime::master::JobEnvironment;
use crate::runtime::metrics::JobMetrics;
use crate::runtime::network::DataServer;
use crate::runtime::task::TaskEvent;

/// How often the task manager checks for silence from the job manager.
const SILENCE_CHECK: Duration = Duration::from_millis(100);

/// How long a task manager waits without any message from the job manager (which answers
/// every heartbeat, sent every second) before it takes the job manager for lost, stops its
/// subtasks and registers afresh: three quarters of the job manager's heartbeat timeout.
///
/// It must not exceed that timeout: behind a cut link the job manager declares this task
/// manager lost after `timeout` without a heartbeat and restarts its jobs elsewhere, resuming
/// the in-progress uploads these subtasks write to, so they must have stopped by then. The
/// task manager's clock starts later than the job manager's (at the arrival of the answer to
/// the last heartbeat the job manager got, a network delay after it) and it checks every
/// [`SILENCE_CHECK`] and then waits for its subtasks to stop; the quarter kept back (1.25 s
/// for the default 5 s) covers those, and the job manager adds its restart delay on top.
fn silence_limit(heartbeat_timeout: Duration) -> Duration {
    heartbeat_timeout.mul_f64(0.75)
}

/// How long a task manager waits for the answer to its registration. A job manager answers at
/// once; something else at that address (another server, a port that swallows what it gets)
/// may never answer.
const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(10);

/// How a task manager runs.
#[derive(Debug, Clone)]
pub struct TaskManagerConfig {
    /// The job manager's `host:port` (its one port serves both REST and task managers),
    /// resolved at every connection attempt: a job manager that restarts elsewhere behind the
    /// same name is found again.
    pub job_manager: String,
    /// The cluster's shared secret, if the job manager requires one.
    pub token: Option<String>,
    pub slots: usize,
    /// Where other task managers connect for data (port 0 picks one).
    pub data_listen: SocketAddr,
    /// The data address other task managers are told to use, when it differs from the bound
    /// one (listening on 0.0.0.0 in a container, say).
    pub data_advertise: Option<SocketAddr>,
    /// The name shown for this task manager.
    pub host: String,
    /// The writer's tuning (part size, retries) for the sinks run here.
    pub writer: WriterConfig,
}

type SharedWriter = Arc<Mutex<BufWriter<TcpStream>>>;

fn send(writer: &SharedWriter, message: &ToJobManager) -> std::io::Result<()> {
    let mut w = writer
        .lock()
        .map_err(|_| std::io::Error::other("connection lock poisoned"))?;
    write_message(&mut *w, message)
}

/// The state a task manager keeps across reconnections.
struct TaskManager {
    id: String,
    config: TaskManagerConfig,
    data: DataServer,
    runtime: tokio::runtime::Handle,
    executor: Option<Arc<TaskExecutor>>,
    graphs: HashMap<String, Arc<JobGraph>>,
    metrics: Arc<Mutex<HashMap<String, Arc<JobMetrics>>>>,
}

/// Runs a task manager until `stop` is set. Fails only when the job manager refuses it (a
/// wrong token) or its data port cannot be opened.
pub fn run(
    config: TaskManagerConfig,
    runtime: tokio::runtime::Handle,
    stop: Arc<AtomicBool>,
) -> Result<(), EngineError> {
    // A malformed address never starts to work: say so now rather than retry for ever. (A
    // name that does not resolve yet, or a job manager that is not up yet, is retried.)
    check_address(&config.job_manager)?;
    let data = DataServer::start(config.data_listen, config.token.clone())?;
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let mut tm = TaskManager {
        id: format!("{}-{}", config.host, &suffix[..8]),
        config,
        data,
        runtime,
        executor: None,
        graphs: HashMap::new(),
        metrics: Arc::new(Mutex::new(HashMap::new())),
    };
    tracing::info!(task_manager = %tm.id, data = %tm.data.address, "task manager started");
    eprintln!(
        "task manager {} with {} slots, data on {}, job manager {}",
        tm.id, tm.config.slots, tm.data.address, tm.config.job_manager
    );
    let mut announced_outage = false;
    while !stop.load(Ordering::SeqCst) {
        match connect(&tm.config.job_manager) {
            Ok(stream) => {
                match tm.session(stream, &stop) {
                    Ok(()) => announced_outage = false,
                    Err(SessionEnd::NotJobManager(reason)) => {
                        if !announced_outage {
                            eprintln!(
                                "task manager {}: {} is not answering as a Rivulet job manager \
                                 ({reason}); check --jobmanager: it takes the job manager's \
                                 --listen address (host:port); retrying every second",
                                tm.id, tm.config.job_manager
                            );
                            announced_outage = true;
                        }
                    }
                    Err(SessionEnd::Refused(reason)) => {
                        return Err(EngineError::Task {
                            task: format!("task manager {}", tm.id),
                            message: format!("the job manager refused it: {reason}"),
                        });
                    }
                    Err(SessionEnd::Lost(e)) => {
                        announced_outage = false;
                        eprintln!(
                            "task manager {}: lost the job manager ({e}); stopping its subtasks and reconnecting",
                            tm.id
                        );
                    }
                }
                if let Some(executor) = &tm.executor {
                    let stopped = executor.cancel_all();
                    if stopped > 0 {
                        eprintln!(
                            "task manager {}: stopped its subtasks ({stopped} job attempts)",
                            tm.id
                        );
                        // With a timestamp, to set against the job manager's restart of the
                        // jobs elsewhere.
                        tracing::info!(task_manager = %tm.id, attempts = stopped, "subtasks stopped");
                    }
                }
            }
            Err(e) => {
                if !announced_outage {
                    eprintln!(
                        "task manager {}: cannot reach the job manager at {} ({e}); retrying every second",
                        tm.id, tm.config.job_manager
                    );
                    announced_outage = true;
                }
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    if let Some(executor) = &tm.executor {
        executor.cancel_all();
    }
    Ok(())
}

/// Checks that `address` is `host:port` with a port from 1 to 65535.
fn check_address(address: &str) -> Result<(), EngineError> {
    let port = address
        .rsplit_once(':')
        .filter(|(host, _)| !host.is_empty())
        .map(|(_, port)| port.parse::<u16>());
    match port {
        Some(Ok(port)) if port != 0 => Ok(()),
        _ => Err(EngineError::Task {
            task: "task manager".into(),
            message: format!(
                "the job manager address `{address}` is not host:port with a port from 1 to \
                 65535; give --jobmanager the job manager's --listen address, like 127.0.0.1:8081"
            ),
        }),
    }
}

/// Connects to `host:port`, trying each address it resolves to.
fn connect(address: &str) -> std::io::Result<TcpStream> {
    use std::net::ToSocketAddrs;
    let mut last = std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("{address} resolves to no address"),
    );
    for candidate in address.to_socket_addrs()? {
        match TcpStream::connect_timeout(&candidate, Duration::from_secs(5)) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(last)
}

enum SessionEnd {
    Refused(String),
    Lost(String),
    /// What answered at the address is not a job manager (or did not answer at all).
    NotJobManager(String),
}

/// Waits up to [`REGISTRATION_TIMEOUT`] for the first byte of the answer to the registration,
/// returning early (`Ok(false)`) when the task manager is stopped.
fn await_answer(stream: &TcpStream, stop: &AtomicBool) -> std::io::Result<bool> {
    let deadline = Instant::now() + REGISTRATION_TIMEOUT;
    let mut byte = [0u8; 1];
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(false);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "no answer to the registration within {}s",
                    REGISTRATION_TIMEOUT.as_secs()
                ),
            ));
        }
        stream.set_read_timeout(Some(left.min(Duration::from_millis(200))))?;
        match stream.peek(&mut byte) {
            // Data, or the end of the stream, which the read reports.
            Ok(_) => {
                stream.set_read_timeout(Some(left))?;
                return Ok(true);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

impl TaskManager {
    fn environment(&mut self, store_url: &str) -> Result<Arc<TaskExecutor>, EngineError> {
        if let Some(e) = &self.executor {
            return Ok(e.clone());
        }
        let url = StoreUrl::parse(store_url)?;
        let store = self.runtime.block_on(open_store(&url))?;
        // The sinks' resume and commit tokens live in checkpoints; this index only tracks
        // what the writer has open in this process.
        let index = Index::temporary().map_err(fs_core::WriterError::from)?;
        let writer = RecoverableWriter::new(store.clone(), index, self.config.writer.clone())?;
        let env = JobEnvironment {
            store,
            writer: Arc::new(writer),
            runtime: self.runtime.clone(),
        };
        let executor = Arc::new(TaskExecutor::new(
            &self.id,
            env,
            Some(self.data.inbound.clone()),
            self.config.token.clone(),
        ));
        self.executor = Some(executor.clone());
        Ok(executor)
    }

    /// One connection to the job manager, until it breaks.
    fn session(&mut self, stream: TcpStream, stop: &Arc<AtomicBool>) -> Result<(), SessionEnd> {
        let lost = |e: std::io::Error| SessionEnd::Lost(e.to_string());
        stream.set_nodelay(true).map_err(lost)?;
        let mut reader = BufReader::new(stream.try_clone().map_err(lost)?);
        // For shutting the connection down outside the writer's lock, which a send blocked on
        // a cut link may hold.
        let control = stream.try_clone().map_err(lost)?;
        let writer: SharedWriter = Arc::new(Mutex::new(BufWriter::new(stream)));
        {
            let mut w = writer
                .lock()
                .map_err(|_| SessionEnd::Lost("lock poisoned".into()))?;
            w.write_all(MAGIC).map_err(lost)?;
            write_message(
                &mut *w,
                &ToJobManager::Register {
                    task_manager: self.id.clone(),
                    token: self.config.token.clone(),
                    slots: self.config.slots,
                    data_address: self.config.data_advertise.unwrap_or(self.data.address),
                    host: self.config.host.clone(),
                    heartbeat_acks: true,
                },
            )
            .map_err(lost)?;
        }
        let not_job_manager = |e: std::io::Error| match e.kind() {
            // Not our framing (an HTTP answer, say), or nothing within the limit.
            std::io::ErrorKind::InvalidData
            | std::io::ErrorKind::TimedOut
            | std::io::ErrorKind::WouldBlock
            | std::io::ErrorKind::UnexpectedEof => SessionEnd::NotJobManager(e.to_string()),
            _ => SessionEnd::Lost(e.to_string()),
        };
        if !await_answer(reader.get_ref(), stop).map_err(not_job_manager)? {
            return Ok(());
        }
        let mut head = [0u8; 5];
        if matches!(reader.get_ref().peek(&mut head), Ok(5)) && &head == b"HTTP/" {
            return Err(SessionEnd::NotJobManager(
                "it answered in HTTP, as a web server or a proxy does".into(),
            ));
        }
        let answer = read_message::<ToTaskManager>(&mut reader).map_err(not_job_manager)?;
        reader.get_ref().set_read_timeout(None).map_err(lost)?;
        let (executor, silence) = match answer {
            Some(ToTaskManager::Registered {
                store,
                heartbeat_timeout_ms,
            }) => (
                self.environment(&store)
                    .map_err(|e| SessionEnd::Refused(format!("opening the store {store}: {e}")))?,
                heartbeat_timeout_ms.map(|ms| silence_limit(Duration::from_millis(ms))),
            ),
            Some(ToTaskManager::Refused { reason }) => return Err(SessionEnd::Refused(reason)),
            Some(_) => {
                return Err(SessionEnd::NotJobManager(
                    "it answered the registration with something else".into(),
                ));
            }
            None => {
                return Err(SessionEnd::NotJobManager(
                    "it closed the connection without answering the registration".into(),
                ));
            }
        };
        eprintln!(
            "task manager {}: registered{}",
            self.id,
            silence
                .map(|l| format!(
                    "; a silence of {:.1}s from the job manager counts as losing it",
                    l.as_secs_f64()
                ))
                .unwrap_or_default()
        );

        // Messages are read on a thread of their own, which notes when each arrived: a deploy
        // handled below may take seconds, and the time it takes is not the job manager's
        // silence.
        let heard = Arc::new(Mutex::new(Instant::now()));
        let (messages_tx, messages) =
            crossbeam_channel::unbounded::<Result<ToTaskManager, String>>();
        {
            let heard = heard.clone();
            std::thread::Builder::new()
                .name("job-manager-reader".into())
                .spawn(move || {
                    loop {
                        let message = match read_message::<ToTaskManager>(&mut reader) {
                            Ok(Some(m)) => Ok(m),
                            Ok(None) => Err("the connection closed".to_string()),
                            Err(e) => Err(e.to_string()),
                        };
                        if let Ok(mut h) = heard.lock() {
                            *h = Instant::now();
                        }
                        let end = message.is_err();
                        if messages_tx.send(message).is_err() || end {
                            return;
                        }
                    }
                })
                .map_err(|e| SessionEnd::Lost(format!("starting the reader: {e}")))?;
        }

        let connected = Arc::new(AtomicBool::new(true));
        self.start_heartbeats(writer.clone(), connected.clone(), stop.clone());
        let result = loop {
            if stop.load(Ordering::SeqCst) {
                break Ok(());
            }
            let message = match messages.recv_timeout(SILENCE_CHECK) {
                Ok(Ok(m)) => m,
                Ok(Err(e)) => break Err(SessionEnd::Lost(e)),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    let silent = heard.lock().map(|h| h.elapsed()).unwrap_or_default();
                    if let Some(limit) = silence
                        && silent > limit
                    {
                        break Err(SessionEnd::Lost(format!(
                            "no message from the job manager for {:.1}s, the limit is {:.1}s: \
                             a cut link or a hung job manager",
                            silent.as_secs_f64(),
                            limit.as_secs_f64()
                        )));
                    }
                    continue;
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    break Err(SessionEnd::Lost("the reader stopped".into()));
                }
            };
            match message {
                ToTaskManager::Deploy(request) => {
                    let error = self.deploy(&executor, &request, &writer).err();
                    let reply = ToJobManager::Deployed {
                        job_id: request.job_id.clone(),
                        attempt: request.attempt,
                        error: error.map(|e| e.to_string()),
                    };
                    if let Err(e) = send(&writer, &reply) {
                        break Err(lost(e));
                    }
                }
                ToTaskManager::Control {
                    job_id,
                    attempt,
                    subtask,
                    control,
                } => executor.control(&job_id, attempt, subtask, control),
                ToTaskManager::Cancel {
                    job_id,
                    attempt,
                    mode,
                } => {
                    executor.cancel(&job_id, attempt, mode);
                    if let Err(e) = send(&writer, &ToJobManager::Cancelled { job_id, attempt }) {
                        break Err(lost(e));
                    }
                }
                ToTaskManager::HeartbeatAck
                | ToTaskManager::Registered { .. }
                | ToTaskManager::Refused { .. } => {}
            }
        };
        // Ends the reader, the heartbeats and the event forwarders of this session, even when
        // the socket still looks open (a cut link, where nothing would ever wake them).
        let _ = control.shutdown(std::net::Shutdown::Both);
        connected.store(false, Ordering::SeqCst);
        result
    }

    fn deploy(
        &mut self,
        executor: &TaskExecutor,
        request: &DeployRequest,
        writer: &SharedWriter,
    ) -> Result<(), EngineError> {
        let graph = match self.graphs.get(&request.job_id) {
            Some(g) => g.clone(),
            None => {
                let spec_text = request.spec.as_deref().ok_or_else(|| {
                    EngineError::job(
                        "job",
                        "jobs built in code run only on an embedded cluster (no job file to send)",
                    )
                })?;
                let spec = crate::job::parse(spec_text)?;
                let graph = Arc::new(crate::job::compile(&spec, &request.job_id)?.graph);
                self.graphs.insert(request.job_id.clone(), graph.clone());
                graph
            }
        };
        let metrics = self
            .metrics
            .lock()
            .map_err(|_| EngineError::state("metrics", "lock poisoned"))?
            .entry(request.job_id.clone())
            .or_insert_with(|| Arc::new(JobMetrics::new(graph.vertices.len())))
            .clone();
        // Events of this attempt's subtasks go to the job manager in order.
        let (events_tx, events_rx) = crossbeam_channel::unbounded::<TaskEvent>();
        let forward_to = writer.clone();
        let (job_id, attempt) = (request.job_id.clone(), request.attempt);
        std::thread::Builder::new()
            .name("task-events".into())
            .spawn(move || {
                for event in events_rx.iter() {
                    let message = ToJobManager::Event {
                        job_id: job_id.clone(),
                        attempt,
                        event,
                    };
                    if send(&forward_to, &message).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| EngineError::io("starting an event forwarder", e))?;
        executor.deploy(&graph, request, events_tx, metrics)
    }

    fn start_heartbeats(
        &self,
        writer: SharedWriter,
        connected: Arc<AtomicBool>,
        stop: Arc<AtomicBool>,
    ) {
        let metrics = self.metrics.clone();
        let _ = std::thread::Builder::new()
            .name("heartbeat".into())
            .spawn(move || {
                while connected.load(Ordering::SeqCst) && !stop.load(Ordering::SeqCst) {
                    let jobs: Vec<(String, Vec<VertexCounts>)> = metrics
                        .lock()
                        .map(|m| {
                            m.iter()
                                .map(|(job, metrics)| (job.clone(), metrics.counts()))
                                .collect()
                        })
                        .unwrap_or_default();
                    if send(&writer, &ToJobManager::Heartbeat { jobs }).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            });
    }
}

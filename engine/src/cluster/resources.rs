//! The resource manager: the task managers registered with the job manager, their slots and
//! heartbeats, and the [`TaskManagers`] that job masters deploy through.
//!
//! A task manager is lost when its connection closes (a killed process) or when it has not
//! sent a heartbeat for the heartbeat timeout (a hung process or a cut network). Every job with
//! subtasks there then fails its attempt, and restarts on the slots that remain.

use std::collections::{BTreeSet, HashMap};
use std::io::BufWriter;
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use serde::Serialize;

use super::rpc::{ToJobManager, ToTaskManager, VertexCounts, write_message};
use crate::error::EngineError;
use crate::graph::JobGraph;
use crate::runtime::executor::{DeployRequest, Placement};
use crate::runtime::master::TaskManagers;
use crate::runtime::metrics::JobMetrics;
use crate::runtime::task::{StopMode, SubtaskId, TaskControl, TaskEvent};

/// How long a deploy may take on a task manager (it builds operators and opens connections).
const DEPLOY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a cancel may take (subtasks finish their current store call, 30 s at most on the
/// task manager's side; after a user's cancel they abandon their files too, for at most
/// `ABANDON_TIME` more).
const CANCEL_TIMEOUT: Duration =
    Duration::from_secs(40).saturating_add(crate::runtime::executor::ABANDON_TIME);

/// A request waiting for its answer: ("deploy" | "cancel", job id, attempt).
type RequestKey = (&'static str, String, u32);

/// A registered task manager.
pub struct RegisteredTaskManager {
    pub id: String,
    pub host: String,
    pub slots: usize,
    pub data_address: SocketAddr,
    /// It takes an answer to each heartbeat (see `ToTaskManager::HeartbeatAck`).
    heartbeat_acks: bool,
    writer: Mutex<BufWriter<TcpStream>>,
    /// The control connection, for shutting it down when the task manager is declared lost
    /// (outside `writer`'s lock, which a send blocked on a full socket may hold).
    connection: Option<TcpStream>,
    last_heartbeat: Mutex<Instant>,
    counts: Mutex<HashMap<String, Vec<VertexCounts>>>,
    /// Waiting deploys and cancels: ("deploy" | "cancel", job, attempt) -> answer.
    replies: Mutex<HashMap<RequestKey, Sender<Option<String>>>>,
}

impl RegisteredTaskManager {
    pub fn new(
        id: String,
        host: String,
        slots: usize,
        data_address: SocketAddr,
        stream: TcpStream,
        heartbeat_acks: bool,
    ) -> Self {
        Self {
            id,
            host,
            slots,
            data_address,
            heartbeat_acks,
            connection: stream.try_clone().ok(),
            writer: Mutex::new(BufWriter::new(stream)),
            last_heartbeat: Mutex::new(Instant::now()),
            counts: Mutex::new(HashMap::new()),
            replies: Mutex::new(HashMap::new()),
        }
    }

    pub fn send(&self, message: &ToTaskManager) -> std::io::Result<()> {
        let mut writer = self
            .writer
            .lock()
            .map_err(|_| std::io::Error::other("connection lock poisoned"))?;
        write_message(&mut *writer, message)
    }

    /// Closes the control connection both ways. A task manager lost by heartbeat may still be
    /// alive (hung, stopped, behind a cut link): once it runs again it reads the end of its
    /// connection, stops the subtasks of attempts the job masters have given up, and
    /// registers afresh, instead of running them on unseen and heartbeating into a
    /// registration that no longer exists.
    fn disconnect(&self) {
        if let Some(connection) = &self.connection {
            let _ = connection.shutdown(std::net::Shutdown::Both);
        }
    }

    fn since_heartbeat(&self) -> Duration {
        self.last_heartbeat
            .lock()
            .map(|t| t.elapsed())
            .unwrap_or_default()
    }

    /// Sends `message` and waits for the answer filed under `(kind, job, attempt)`.
    fn request(
        &self,
        kind: &'static str,
        job_id: &str,
        attempt: u32,
        message: &ToTaskManager,
        timeout: Duration,
    ) -> Result<(), String> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        if let Ok(mut replies) = self.replies.lock() {
            replies.insert((kind, job_id.to_string(), attempt), tx);
        }
        self.send(message)
            .map_err(|e| format!("task manager {} ({}): {e}", self.id, self.host))?;
        match rx.recv_timeout(timeout) {
            Ok(None) => Ok(()),
            Ok(Some(error)) => Err(error),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => Err(format!(
                "task manager {} ({}) did not answer a {kind} within {timeout:?}",
                self.id, self.host
            )),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                Err(format!("task manager {} ({}) was lost", self.id, self.host))
            }
        }
    }

    fn answer(&self, kind: &'static str, job_id: String, attempt: u32, error: Option<String>) {
        let waiting = self
            .replies
            .lock()
            .ok()
            .and_then(|mut r| r.remove(&(kind, job_id, attempt)));
        if let Some(tx) = waiting {
            let _ = tx.send(error);
        }
    }
}

/// Slots of task manager `id` held by jobs.
fn slots_used(allocations: &HashMap<String, Vec<String>>, id: &str) -> usize {
    allocations.values().flatten().filter(|s| *s == id).count()
}

/// A job's current attempt, for routing its subtasks' events.
struct Route {
    attempt: u32,
    events: Sender<TaskEvent>,
    task_managers: BTreeSet<String>,
}

/// What `GET /taskmanagers` shows of one.
#[derive(Debug, Clone, Serialize)]
pub struct TaskManagerInfo {
    pub id: String,
    pub host: String,
    #[serde(rename = "dataPort")]
    pub data_port: u16,
    #[serde(rename = "slotsNumber")]
    pub slots: usize,
    #[serde(rename = "freeSlots")]
    pub free_slots: usize,
    #[serde(rename = "timeSinceLastHeartbeat")]
    pub ms_since_heartbeat: u64,
}

pub struct ResourceManager {
    task_managers: Mutex<Vec<Arc<RegisteredTaskManager>>>,
    /// The task manager of each slot held by each job.
    allocations: Mutex<HashMap<String, Vec<String>>>,
    routes: Mutex<HashMap<String, Route>>,
    /// The last counts of lost task managers, per job: what they counted stays in a job's
    /// totals (counts add up over attempts, and Prometheus counters never go down).
    departed: Mutex<HashMap<String, Vec<VertexCounts>>>,
    heartbeat_timeout: Duration,
}

impl ResourceManager {
    pub fn new(heartbeat_timeout: Duration) -> Arc<Self> {
        let rm = Arc::new(Self {
            task_managers: Mutex::new(Vec::new()),
            allocations: Mutex::new(HashMap::new()),
            routes: Mutex::new(HashMap::new()),
            departed: Mutex::new(HashMap::new()),
            heartbeat_timeout,
        });
        let watched = Arc::downgrade(&rm);
        let _ = std::thread::Builder::new()
            .name("heartbeat-monitor".into())
            .spawn(move || {
                while let Some(rm) = watched.upgrade() {
                    rm.check_heartbeats();
                    drop(rm);
                    std::thread::sleep(Duration::from_millis(250));
                }
            });
        rm
    }

    fn list(&self) -> Vec<Arc<RegisteredTaskManager>> {
        self.task_managers
            .lock()
            .map(|t| t.clone())
            .unwrap_or_default()
    }

    fn find(&self, id: &str) -> Option<Arc<RegisteredTaskManager>> {
        self.list().into_iter().find(|t| t.id == id)
    }

    /// Adds a task manager (replacing an earlier registration of the same id).
    pub fn register(&self, tm: Arc<RegisteredTaskManager>) {
        tracing::info!(
            task_manager = %tm.id, host = %tm.host, slots = tm.slots,
            "task manager registered"
        );
        if let Some(old) = self.find(&tm.id) {
            // The same process (ids are random per process): its counts go on from where they
            // were, so the old registration's are not kept apart.
            self.remove(&old.id, "it registered again", false);
        }
        if let Ok(mut tms) = self.task_managers.lock() {
            tms.push(tm);
        }
    }

    /// A message from task manager `id`.
    pub fn handle(&self, id: &str, message: ToJobManager) {
        let Some(tm) = self.find(id) else { return };
        match message {
            ToJobManager::Register { .. } => {}
            ToJobManager::Heartbeat { jobs } => {
                if let Ok(mut t) = tm.last_heartbeat.lock() {
                    *t = Instant::now();
                }
                if let Ok(mut counts) = tm.counts.lock() {
                    *counts = jobs.into_iter().collect();
                }
                // The task manager takes a long silence for a cut link and stops its subtasks
                // (taskmanager.rs); a failed send shows up as the end of the connection.
                if tm.heartbeat_acks {
                    let _ = tm.send(&ToTaskManager::HeartbeatAck);
                }
            }
            ToJobManager::Event {
                job_id,
                attempt,
                event,
            } => {
                if let Ok(routes) = self.routes.lock()
                    && let Some(route) = routes.get(&job_id)
                    && route.attempt == attempt
                {
                    let _ = route.events.send(event);
                }
            }
            ToJobManager::Deployed {
                job_id,
                attempt,
                error,
            } => tm.answer("deploy", job_id, attempt, error),
            ToJobManager::Cancelled { job_id, attempt } => {
                tm.answer("cancel", job_id, attempt, None)
            }
        }
    }

    /// Removes a task manager and fails the attempts that had subtasks on it.
    pub fn lost(&self, id: &str, reason: &str) {
        self.remove(id, reason, true);
    }

    /// [`lost`](Self::lost), keeping the task manager's counts in its jobs' totals or not.
    fn remove(&self, id: &str, reason: &str, keep_counts: bool) {
        let removed = self.task_managers.lock().ok().and_then(|mut tms| {
            let at = tms.iter().position(|t| t.id == id)?;
            Some(tms.remove(at))
        });
        let Some(tm) = removed else { return };
        tracing::warn!(task_manager = %id, host = %tm.host, "task manager lost: {reason}");
        if keep_counts
            && let (Ok(counts), Ok(mut departed)) = (tm.counts.lock(), self.departed.lock())
        {
            for (job, vertices) in counts.iter() {
                add_counts(departed.entry(job.clone()).or_default(), vertices);
            }
        }
        tm.disconnect();
        // Waiting requests see a disconnect.
        if let Ok(mut replies) = tm.replies.lock() {
            replies.clear();
        }
        if let Ok(routes) = self.routes.lock() {
            for route in routes.values() {
                if route.task_managers.contains(id) {
                    let _ = route.events.send(TaskEvent::Failed(
                        SubtaskId {
                            task: usize::MAX,
                            subtask: usize::MAX,
                        },
                        format!("task manager {id} ({}) was lost: {reason}", tm.host),
                    ));
                }
            }
        }
        if let Ok(mut allocations) = self.allocations.lock() {
            allocations.retain(|_, slots| !slots.iter().any(|s| s == id));
        }
    }

    /// The connection of this registration ended: it is lost, unless the task manager has
    /// registered again since (then the new registration stands).
    pub fn connection_closed(&self, tm: &Arc<RegisteredTaskManager>, reason: &str) {
        if self
            .find(&tm.id)
            .is_some_and(|current| Arc::ptr_eq(&current, tm))
        {
            self.lost(&tm.id, reason);
        }
    }

    fn check_heartbeats(&self) {
        for tm in self.list() {
            let since = tm.since_heartbeat();
            if since > self.heartbeat_timeout {
                self.lost(
                    &tm.id,
                    &format!("no heartbeat for {:.1}s", since.as_secs_f64()),
                );
            }
        }
    }

    pub fn task_managers(&self) -> Vec<TaskManagerInfo> {
        let allocations = self
            .allocations
            .lock()
            .map(|a| a.clone())
            .unwrap_or_default();
        self.list()
            .iter()
            .map(|tm| {
                let used = slots_used(&allocations, &tm.id);
                TaskManagerInfo {
                    id: tm.id.clone(),
                    host: tm.host.clone(),
                    data_port: tm.data_address.port(),
                    slots: tm.slots,
                    free_slots: tm.slots.saturating_sub(used),
                    ms_since_heartbeat: tm.since_heartbeat().as_millis() as u64,
                }
            })
            .collect()
    }

    /// A job's record counts per vertex, summed over the task managers.
    pub fn vertex_counts(&self, job_id: &str, vertices: usize) -> Vec<VertexCounts> {
        let mut total = vec![VertexCounts::default(); vertices];
        if let Ok(departed) = self.departed.lock()
            && let Some(job) = departed.get(job_id)
        {
            add_counts(&mut total, job);
        }
        for tm in self.list() {
            if let Ok(counts) = tm.counts.lock()
                && let Some(job) = counts.get(job_id)
            {
                add_counts(&mut total, job);
            }
        }
        total.truncate(vertices);
        total
    }
}

/// Adds `more` to `total`, vertex by vertex (growing `total` to `more`'s length).
fn add_counts(total: &mut Vec<VertexCounts>, more: &[VertexCounts]) {
    if total.len() < more.len() {
        total.resize(more.len(), VertexCounts::default());
    }
    for (t, c) in total.iter_mut().zip(more) {
        t.records_in += c.records_in;
        t.records_out += c.records_out;
        t.malformed_records += c.malformed_records;
    }
}

impl TaskManagers for ResourceManager {
    fn allocate(&self, job_id: &str, slots: usize) -> Result<Placement, String> {
        let tms = self.list();
        let mut allocations = self
            .allocations
            .lock()
            .map_err(|_| "slot table lock poisoned".to_string())?;
        allocations.remove(job_id);
        let mut free: Vec<(Arc<RegisteredTaskManager>, usize)> = tms
            .iter()
            .map(|tm| {
                let used = slots_used(&allocations, &tm.id);
                (tm.clone(), tm.slots.saturating_sub(used))
            })
            .collect();
        let available: usize = free.iter().map(|(_, n)| n).sum();
        if available < slots {
            return Err(format!(
                "the job needs {slots} slots and {available} are free on {} task managers; \
                 start more task managers or lower the job's parallelism",
                tms.len()
            ));
        }
        // Spread the slots over the task managers, round-robin.
        let mut chosen = Vec::with_capacity(slots);
        while chosen.len() < slots {
            for (tm, n) in free.iter_mut() {
                if *n > 0 && chosen.len() < slots {
                    *n -= 1;
                    chosen.push(tm.id.clone());
                }
            }
        }
        allocations.insert(job_id.to_string(), chosen.clone());
        let data_addresses = tms
            .iter()
            .filter(|tm| chosen.contains(&tm.id))
            .map(|tm| (tm.id.clone(), tm.data_address))
            .collect();
        Ok(Placement {
            slots: chosen,
            data_addresses,
        })
    }

    fn release(&self, job_id: &str) {
        if let Ok(mut allocations) = self.allocations.lock() {
            allocations.remove(job_id);
        }
        if let Ok(mut routes) = self.routes.lock() {
            routes.remove(job_id);
        }
    }

    fn deploy(
        &self,
        task_manager: &str,
        _graph: &JobGraph,
        request: &DeployRequest,
        events: Sender<TaskEvent>,
        _metrics: Arc<JobMetrics>,
    ) -> Result<(), EngineError> {
        let failed = |message: String| EngineError::Task {
            task: format!(
                "deploying {} to task manager {task_manager}",
                request.job_id
            ),
            message,
        };
        let tm = self
            .find(task_manager)
            .ok_or_else(|| failed("the task manager is gone".into()))?;
        if let Ok(mut routes) = self.routes.lock() {
            let route = routes.entry(request.job_id.clone()).or_insert(Route {
                attempt: request.attempt,
                events: events.clone(),
                task_managers: BTreeSet::new(),
            });
            if route.attempt != request.attempt {
                *route = Route {
                    attempt: request.attempt,
                    events: events.clone(),
                    task_managers: BTreeSet::new(),
                };
            }
            route.task_managers.insert(task_manager.to_string());
        }
        tm.request(
            "deploy",
            &request.job_id,
            request.attempt,
            &ToTaskManager::Deploy(Box::new(request.clone())),
            DEPLOY_TIMEOUT,
        )
        .map_err(failed)
    }

    fn control(
        &self,
        task_manager: &str,
        job_id: &str,
        attempt: u32,
        subtask: SubtaskId,
        control: TaskControl,
    ) {
        if let Some(tm) = self.find(task_manager) {
            let message = ToTaskManager::Control {
                job_id: job_id.to_string(),
                attempt,
                subtask,
                control,
            };
            if let Err(e) = tm.send(&message) {
                self.lost(task_manager, &format!("sending to it failed: {e}"));
            }
        }
    }

    fn cancel(&self, task_manager: &str, job_id: &str, attempt: u32, mode: StopMode) {
        if let Some(tm) = self.find(task_manager) {
            let message = ToTaskManager::Cancel {
                job_id: job_id.to_string(),
                attempt,
                mode,
            };
            if let Err(e) = tm.request("cancel", job_id, attempt, &message, CANCEL_TIMEOUT) {
                tracing::warn!("cancelling {job_id} on {task_manager}: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connected_task_manager(id: &str) -> Arc<RegisteredTaskManager> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let stream = TcpStream::connect(address).unwrap();
        Arc::new(RegisteredTaskManager::new(
            id.into(),
            "127.0.0.1".into(),
            2,
            address,
            stream,
            false,
        ))
    }

    fn counts(records_out: u64) -> Vec<VertexCounts> {
        vec![VertexCounts {
            records_in: 0,
            records_out,
            malformed_records: 0,
        }]
    }

    fn heartbeat(rm: &ResourceManager, id: &str, records_out: u64) {
        rm.handle(
            id,
            ToJobManager::Heartbeat {
                jobs: vec![("job".into(), counts(records_out))],
            },
        );
    }

    #[test]
    fn a_lost_task_managers_counts_stay_in_the_totals() {
        let rm = ResourceManager::new(Duration::from_secs(60));
        rm.register(connected_task_manager("a"));
        rm.register(connected_task_manager("b"));
        heartbeat(&rm, "a", 100);
        heartbeat(&rm, "b", 50);
        assert_eq!(rm.vertex_counts("job", 1), counts(150));
        rm.lost("b", "test");
        assert_eq!(rm.vertex_counts("job", 1), counts(150), "never goes down");
        heartbeat(&rm, "a", 130);
        assert_eq!(rm.vertex_counts("job", 1), counts(180));
        // A task manager that registers again is the same process: its counts go on.
        rm.register(connected_task_manager("a"));
        heartbeat(&rm, "a", 140);
        assert_eq!(rm.vertex_counts("job", 1), counts(190));
        assert_eq!(rm.vertex_counts("other", 1), counts(0));
    }
}

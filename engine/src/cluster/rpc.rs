//! The control protocol between task managers and the job manager: JSON messages in frames
//! (`length u32 LE | JSON`) over one TCP connection that the task manager opens. The job
//! manager tells RPC from HTTP on its single port by the first bytes: [`MAGIC`].

use std::io::{Read, Write};
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::runtime::executor::DeployRequest;
use crate::runtime::network::{read_frame, write_frame};
use crate::runtime::task::{StopMode, SubtaskId, TaskControl, TaskEvent};

/// What a task manager writes first on its connection.
pub const MAGIC: &[u8; 4] = b"RVRP";

/// Largest control message accepted (deploy requests carry job files and checkpoint
/// metadata).
const MAX_MESSAGE: usize = 64 << 20;

pub use crate::runtime::metrics::VertexCounts;

#[derive(Debug, Serialize, Deserialize)]
pub enum ToJobManager {
    Register {
        task_manager: String,
        token: Option<String>,
        slots: usize,
        data_address: SocketAddr,
        host: String,
        /// It understands [`ToTaskManager::HeartbeatAck`] (a task manager of an older build,
        /// which does not, would take one for a broken connection).
        #[serde(default)]
        heartbeat_acks: bool,
    },
    /// Every second, with the counters of the jobs running there (totals since the task
    /// manager started).
    Heartbeat {
        jobs: Vec<(String, Vec<VertexCounts>)>,
    },
    Event {
        job_id: String,
        attempt: u32,
        event: TaskEvent,
    },
    /// The answer to a deploy.
    Deployed {
        job_id: String,
        attempt: u32,
        error: Option<String>,
    },
    /// The answer to a cancel: the attempt's subtasks here have stopped.
    Cancelled { job_id: String, attempt: u32 },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum ToTaskManager {
    /// Registration accepted: the store the cluster's jobs use, and the job manager's
    /// heartbeat timeout, from which the task manager derives how long a silence from the job
    /// manager means it is cut off (absent from a job manager that does not answer heartbeats:
    /// then only a closed connection counts).
    Registered {
        store: String,
        #[serde(default)]
        heartbeat_timeout_ms: Option<u64>,
    },
    /// The answer to every heartbeat: without it, a task manager behind a cut link (no close
    /// ever arrives) could not tell a quiet job manager from an unreachable one.
    HeartbeatAck,
    /// Registration refused, and why.
    Refused {
        reason: String,
    },
    Deploy(Box<DeployRequest>),
    Control {
        job_id: String,
        attempt: u32,
        subtask: SubtaskId,
        control: TaskControl,
    },
    Cancel {
        job_id: String,
        attempt: u32,
        /// Whether the sinks keep their files for the next attempt (a failed attempt) or
        /// abandon them (the user cancelled the job). Absent from an older job manager: keep.
        #[serde(default)]
        mode: StopMode,
    },
}

pub fn write_message<T: Serialize>(writer: &mut impl Write, message: &T) -> std::io::Result<()> {
    let body = serde_json::to_vec(message)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    write_frame(writer, &body)?;
    writer.flush()
}

/// The next message, or `None` at the end of the stream.
pub fn read_message<T: for<'de> Deserialize<'de>>(
    reader: &mut impl Read,
) -> std::io::Result<Option<T>> {
    let Some(body) = read_frame(reader, MAX_MESSAGE)? else {
        return Ok(None);
    };
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

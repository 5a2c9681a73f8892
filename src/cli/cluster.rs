//! The engine's cluster commands: `jobmanager`, `taskmanager`, and the clients `list`,
//! `status`, `cancel` (and `run --jobmanager`, in `run.rs`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use engine::cluster::client::Client;
use engine::cluster::jobmanager::{self, JobManagerConfig};
use engine::cluster::taskmanager::{self, TaskManagerConfig};
use fs_core::WriterConfig;
use serde_json::Value as Json;

use std::fmt::Write as _;

use super::output::Out;
use super::{Env, location};

/// The default address of a job manager (REST and task managers).
pub const DEFAULT_JOBMANAGER: &str = "127.0.0.1:8081";

/// How to reach a job manager.
#[derive(Debug, Clone, Args)]
pub struct JobManagerAddress {
    /// The job manager's address (host:port)
    #[arg(long = "jobmanager", value_name = "HOST:PORT", default_value = DEFAULT_JOBMANAGER)]
    pub address: String,

    /// The cluster's shared secret
    #[arg(
        long,
        env = "RIVULET_CLUSTER_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
}

impl JobManagerAddress {
    pub fn client(&self) -> Client {
        Client::new(self.address.clone(), self.token.clone())
    }
}

#[derive(Debug, Args)]
pub struct JobManagerArgs {
    /// The store jobs run on (task managers open the same one)
    #[arg(long, value_name = "URL", default_value = "./rivulet-data")]
    pub store: String,

    /// Address for the REST API and the task managers (port 0 picks a free port)
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_JOBMANAGER)]
    pub listen: SocketAddr,

    /// Shared secret that REST clients and task managers must present
    #[arg(
        long,
        env = "RIVULET_CLUSTER_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,

    /// Accept anyone who can reach the port (no token)
    #[arg(long)]
    pub anonymous: bool,

    /// A task manager silent for this long is lost (its jobs restart elsewhere)
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub heartbeat_timeout: Duration,
}

#[derive(Debug, Args)]
pub struct TaskManagerArgs {
    #[command(flatten)]
    pub jobmanager: JobManagerAddress,

    /// Task slots (subtasks of one job, or of several, run side by side)
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub slots: usize,

    /// Address other task managers send data to (port 0 picks a free port)
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub data_listen: SocketAddr,

    /// The data address to give other task managers, if not the bound one (e.g. the pod IP
    /// when listening on 0.0.0.0:6121)
    #[arg(long, value_name = "ADDR")]
    pub data_advertise: Option<SocketAddr>,

    /// The name this task manager shows (default: the host name)
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
}

/// `rivulet jobmanager`.
pub async fn jobmanager(env: &Env, args: JobManagerArgs) -> Result<()> {
    let token = match (&args.token, args.anonymous) {
        (Some(_), true) => bail!("give either --token or --anonymous, not both"),
        // An empty secret would let nobody in, not everybody: a mistake either way.
        (Some(token), false) if token.trim().is_empty() => bail!(
            "the cluster token (--token or RIVULET_CLUSTER_TOKEN) is empty: give a shared \
             secret, or pass --anonymous to accept anyone who can reach {}",
            args.listen
        ),
        (None, false) => bail!(
            "the job manager runs any job it is sent: give it a shared secret with --token (or \
             RIVULET_CLUSTER_TOKEN), or pass --anonymous to accept anyone who can reach {}",
            args.listen
        ),
        (token, _) => token.clone(),
    };
    if !args.store.contains("://") {
        std::fs::create_dir_all(&args.store)?;
    }
    let store = location::store(&args.store)?;
    let config = JobManagerConfig {
        listen: args.listen,
        store,
        token,
        heartbeat_timeout: args.heartbeat_timeout,
        writer: writer_config(env),
    };
    jobmanager::serve(config, shutdown_signal()).await?;
    Ok(())
}

/// `rivulet taskmanager`.
pub async fn taskmanager(env: &Env, args: TaskManagerArgs) -> Result<()> {
    if args.slots == 0 {
        bail!("--slots must be at least 1");
    }
    let host = args.name.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "taskmanager".to_string())
    });
    let config = TaskManagerConfig {
        job_manager: args.jobmanager.address.clone(),
        token: args.jobmanager.token.clone(),
        slots: args.slots,
        data_listen: args.data_listen,
        data_advertise: args.data_advertise,
        host,
        writer: writer_config(env),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        stopping.store(true, Ordering::SeqCst);
    });
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || taskmanager::run(config, runtime, stop)).await??;
    Ok(())
}

fn writer_config(env: &Env) -> WriterConfig {
    let mut config = WriterConfig {
        part_size: env.global.part_size,
        max_in_flight: env.global.max_in_flight,
        // Sinks never read back what they write.
        cache_parts: false,
        ..WriterConfig::default()
    };
    if let Some(dir) = &env.global.cache_dir {
        config.cache_dir = dir.clone();
    }
    config
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    super::signals::stop_signal().await;
}

/// `rivulet list`.
pub async fn list(address: &JobManagerAddress) -> Result<()> {
    let jobs = address.client().get("/jobs").await?;
    let mut text = String::new();
    let empty = Vec::new();
    let jobs = jobs["jobs"].as_array().unwrap_or(&empty);
    if jobs.is_empty() {
        eprintln!("no jobs");
    }
    for job in jobs {
        let _ = writeln!(
            text,
            "{:<40} {:<11} {}",
            job["id"].as_str().unwrap_or("?"),
            job["status"].as_str().unwrap_or("?"),
            job["name"].as_str().unwrap_or("")
        );
    }
    print(&text)
}

/// Writes `text` to stdout (a closed pipe is not an error to report).
fn print(text: &str) -> Result<()> {
    let mut out = Out::new();
    out.line(format_args!("{}", text.trim_end_matches('\n')))?;
    out.flush()
}

/// `rivulet status [JOB]`: one job, or the cluster's overview.
pub async fn status(address: &JobManagerAddress, job: Option<&str>, json: bool) -> Result<()> {
    let client = address.client();
    let value = match job {
        Some(id) => client.get(&format!("/jobs/{id}")).await?,
        None => {
            let mut overview = client.get("/overview").await?;
            overview["taskmanagers-detail"] =
                client.get("/taskmanagers").await?["taskmanagers"].clone();
            overview
        }
    };
    if json {
        return print(&serde_json::to_string_pretty(&value)?);
    }
    let text = match job {
        Some(_) => job_text(&value),
        None => overview_text(&value),
    };
    print(&text)
}

fn job_text(job: &Json) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "{} ({}): {}",
        job["name"].as_str().unwrap_or("?"),
        job["jid"].as_str().unwrap_or("?"),
        job["state"].as_str().unwrap_or("?")
    );
    if let Some(reason) = job["reason"].as_str() {
        let _ = writeln!(text, "  {reason}");
    }
    if let Some(restarts) = job["restarts"].as_u64() {
        let _ = writeln!(text, "  restarts: {restarts}");
    }
    for v in job["vertices"].as_array().into_iter().flatten() {
        let _ = writeln!(
            text,
            "  {:<24} x{:<3} in {:>12} out {:>12}",
            v["id"].as_str().unwrap_or("?"),
            v["parallelism"].as_u64().unwrap_or(0),
            v["metrics"]["read-records"].as_u64().unwrap_or(0),
            v["metrics"]["write-records"].as_u64().unwrap_or(0)
        );
    }
    text
}

fn overview_text(o: &Json) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "task managers {}, slots {} ({} free), jobs running {}, finished {}, failed {}, cancelled {}",
        o["taskmanagers"],
        o["slots-total"],
        o["slots-available"],
        o["jobs-running"],
        o["jobs-finished"],
        o["jobs-failed"],
        o["jobs-cancelled"]
    );
    for tm in o["taskmanagers-detail"].as_array().into_iter().flatten() {
        let _ = writeln!(
            text,
            "  {:<32} slots {} ({} free), heartbeat {} ms ago",
            tm["id"].as_str().unwrap_or("?"),
            tm["slotsNumber"],
            tm["freeSlots"],
            tm["timeSinceLastHeartbeat"]
        );
    }
    text
}

/// `rivulet cancel JOB`.
pub async fn cancel(address: &JobManagerAddress, job: &str) -> Result<()> {
    address
        .client()
        .post(&format!("/jobs/{job}/cancel"), String::new())
        .await?;
    eprintln!("cancelling job {job}");
    Ok(())
}

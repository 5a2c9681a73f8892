//! `run`: runs a job file on an embedded mini-cluster (a job manager and task managers in this
//! process) over a store, printing progress and a summary.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use engine::job::compile::OutputInfo;
use engine::job::registry::{self, JobRecord, RecordedState};
use engine::runtime::{JobEnvironment, JobHandle, JobState, MiniCluster};
use fs_core::store::{DynStore, ObjectStoreExt};
use fs_core::{Index, RecoverableWriter, WriterConfig};

use super::output::Out;
use super::{Env, location};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The job file (TOML; see docs/engine.md)
    pub job: PathBuf,

    /// The store the job reads, writes and checkpoints to
    #[arg(long, value_name = "URL", default_value = "./rivulet-data")]
    pub store: String,

    /// Task managers of the embedded cluster
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = at_least_one)]
    pub task_managers: usize,

    /// Slots per task manager (default: enough for the job's highest parallelism)
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    pub slots: Option<usize>,

    /// Start the job anew even if an unfinished run of it is in the store (by default that
    /// run is resumed from its latest checkpoint)
    #[arg(long)]
    pub fresh: bool,

    /// Print the summary as JSON on stdout
    #[arg(long)]
    pub json: bool,

    /// Submit to the job manager at this address (host:port) instead of running embedded
    #[arg(long, value_name = "HOST:PORT")]
    pub jobmanager: Option<String>,

    /// The cluster's shared secret (with --jobmanager)
    #[arg(
        long,
        env = "RIVULET_CLUSTER_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,

    /// With --jobmanager: print the job id and return instead of following the job
    #[arg(long, requires = "jobmanager")]
    pub detach: bool,
}

/// `rivulet run JOB.toml`.
pub async fn run(env: &Env, args: RunArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.job)
        .with_context(|| format!("reading the job file {}", args.job.display()))?;
    let spec =
        engine::job::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", args.job.display()))?;
    if let Some(address) = args.jobmanager {
        let client = engine::cluster::client::Client::new(address, args.token.clone());
        return run_on_cluster(&client, &text, args.detach, args.json).await;
    }
    if !args.store.contains("://") {
        // The local store of `run` (./rivulet-data by default) is created on first use.
        std::fs::create_dir_all(&args.store)
            .with_context(|| format!("creating the store directory {}", args.store))?;
    }
    let store_url = location::store(&args.store)?;
    let store = env.open_store(&store_url).await?;
    let index = engine_index(env).await?;
    let mut config = WriterConfig {
        part_size: env.global.part_size,
        max_in_flight: env.global.max_in_flight,
        retry: env.retry_for(&store_url),
        // The sink never reads back what it writes; recovery goes through resume tokens.
        cache_parts: false,
        ..WriterConfig::default()
    };
    if let Some(dir) = &env.global.cache_dir {
        config.cache_dir = dir.clone();
    }
    let writer = Arc::new(RecoverableWriter::new(store.clone(), index, config)?);

    let job_env = JobEnvironment {
        store: store.clone(),
        writer,
        runtime: tokio::runtime::Handle::current(),
    };
    let identity = job_identity(&store, &spec.name, &text, args.fresh).await?;
    let job_id = identity.job_id.clone();
    let resumed = identity.superseded.is_none();
    // A job file that does not compile is refused before it is recorded as a run, so that it
    // neither supersedes the job's unfinished run nor is left for the next run to supersede.
    let compiled = engine::job::compile(&spec, &job_id)?;
    compiled.graph.validate()?;
    let needed = compiled.graph.slots_needed();
    let slots = args
        .slots
        .unwrap_or_else(|| needed.div_ceil(args.task_managers));
    check_embedded_size(slots.saturating_mul(args.task_managers), needed)?;
    if let Some(superseded) = record_run(&store, identity, &spec.name, &text).await? {
        for run in superseded {
            abandon_superseded(&job_env, run, args.json).await;
        }
    }
    let cluster = MiniCluster::new(job_env, args.task_managers, slots.max(1));
    let outputs = compiled.outputs.clone();
    if !args.json {
        eprintln!(
            "{} job {} ({}) on {}",
            if resumed { "resuming" } else { "running" },
            spec.name,
            job_id,
            store.describe()
        );
    }
    // The job's threads block on the store through this runtime: run the wait off it.
    let job = Arc::new(cluster.submit(compiled.graph, &job_id)?);
    let progress = {
        let job = job.clone();
        let quiet = env.global.quiet || args.json;
        let outputs = outputs.clone();
        tokio::task::spawn_blocking(move || report_progress(&job, &outputs, quiet))
    };
    let interrupt = {
        let job = job.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!(
                    "interrupted: cancelling the job (its output up to the last checkpoint is committed)"
                );
                job.cancel();
            }
        })
    };
    let waited = job.clone();
    let state = tokio::task::spawn_blocking(move || waited.wait())
        .await
        .context("waiting for the job")?;
    interrupt.abort();
    let _ = progress.await;

    let recorded = match &state {
        JobState::Finished => RecordedState::Finished,
        JobState::Canceled => RecordedState::Canceled,
        _ => RecordedState::Failed,
    };
    registry::set_state(&store, &job_id, recorded).await?;
    let summary = summarize(&job, &store, &outputs).await?;
    if args.json {
        let mut out = Out::new();
        out.line(format_args!("{}", serde_json::to_string_pretty(&summary)?))?;
        out.flush()?;
    } else {
        print_summary(&summary);
    }
    match state {
        JobState::Finished => Ok(()),
        JobState::Canceled => bail!("the job was cancelled"),
        JobState::Failed(reason) => bail!("the job failed: {reason}"),
        other => bail!("the job ended in state {other:?}"),
    }
}

/// The engine's own index (the job holds it while it runs, so it is not the default index
/// that every other command opens).
async fn engine_index(env: &Env) -> Result<Index> {
    match &env.global.index {
        Some(_) => env.index().await,
        None => {
            let path = Index::default_path().with_file_name("engine-index");
            env.index_at(path).await
        }
    }
}

/// The run a `rivulet run` is to be, before anything is recorded.
struct JobIdentity {
    job_id: String,
    /// `None` when the run resumes an unfinished one; else the unfinished runs of the job that
    /// the new run supersedes (perhaps none).
    superseded: Option<Vec<JobRecord>>,
}

/// The job id to run under: an unfinished run of the same job file is resumed unless `fresh`;
/// otherwise a new run supersedes the job's unfinished ones. Only reads the registry:
/// [`record_run`] writes what was decided.
async fn job_identity(
    store: &DynStore,
    name: &str,
    text: &str,
    fresh: bool,
) -> Result<JobIdentity> {
    let unfinished: Vec<JobRecord> = registry::list(store)
        .await?
        .into_iter()
        .filter(|r| {
            r.name == name && matches!(r.state, RecordedState::Running | RecordedState::Cancelling)
        })
        .collect();
    if let Some(last) = unfinished.last()
        && !fresh
        && last.state == RecordedState::Running
        && last.spec == text
    {
        return Ok(JobIdentity {
            job_id: last.job_id.clone(),
            superseded: None,
        });
    }
    // Superseded: a fresh run, or the job file changed (its checkpoints may not fit).
    Ok(JobIdentity {
        job_id: registry::new_job_id(name),
        superseded: Some(unfinished),
    })
}

/// Records a new run (nothing for a resumed one): the runs it supersedes are marked cancelled
/// (their files are for [`abandon_superseded`], and returned for it) and the new one running.
async fn record_run(
    store: &DynStore,
    identity: JobIdentity,
    name: &str,
    text: &str,
) -> Result<Option<Vec<JobRecord>>> {
    let Some(superseded) = identity.superseded else {
        return Ok(None);
    };
    for r in &superseded {
        registry::set_state(store, &r.job_id, RecordedState::Canceled).await?;
    }
    let now = chrono::Utc::now().timestamp_millis();
    registry::save(
        store,
        &JobRecord {
            job_id: identity.job_id,
            name: name.to_string(),
            spec: text.to_string(),
            state: RecordedState::Running,
            submitted_at_ms: now,
            updated_at_ms: now,
        },
    )
    .await?;
    Ok(Some(superseded))
}

/// Abandons the files a superseded run left open (it was killed, and will never resume), as
/// a user's cancel would have: what its latest checkpoint made pending is published, the rest
/// aborted (`MiniCluster::abandon`). Its own job file (kept in its record) says what it ran. A
/// failure is a warning, not an error: the new run does not depend on it, and `rivulet recover
/// --abort` can still abandon the files.
async fn abandon_superseded(env: &JobEnvironment, run: JobRecord, quiet: bool) {
    let warn = |why: String| {
        tracing::warn!(
            job = %run.job_id,
            "could not abandon the files of the superseded run: {why}; `rivulet recover --abort \
             --prefix SINK_PATH/ STORE` aborts them"
        );
    };
    let compiled = match engine::job::parse(&run.spec)
        .and_then(|spec| engine::job::compile(&spec, &run.job_id))
    {
        Ok(compiled) => compiled,
        Err(e) => return warn(format!("its job file no longer compiles: {e}")),
    };
    if !quiet {
        eprintln!(
            "abandoning the files of the superseded run {} (never to resume)",
            run.job_id
        );
    }
    let slots = compiled.graph.slots_needed().max(1);
    if let Err(e) = check_embedded_size(slots, slots) {
        return warn(e.to_string());
    }
    let cluster = MiniCluster::new(env.clone(), 1, slots);
    let job = match cluster.abandon(compiled.graph, &run.job_id) {
        Ok(job) => job,
        Err(e) => return warn(e.to_string()),
    };
    // The job's threads block on the store through this runtime: wait off it.
    if let Err(e) = tokio::task::spawn_blocking(move || job.wait()).await {
        warn(e.to_string());
    }
}

/// Prints a progress line every second until the job ends.
fn report_progress(job: &JobHandle, outputs: &[OutputInfo], quiet: bool) {
    let started = Instant::now();
    let graph = &job.shared.graph;
    let sources: Vec<usize> = (0..graph.vertices.len())
        .filter(|v| graph.vertices[*v].is_source())
        .collect();
    let sinks: Vec<usize> = (0..graph.vertices.len())
        .filter(|v| graph.vertices[*v].is_sink())
        .collect();
    let mut last_events = 0u64;
    let mut last_at = Instant::now();
    while !job.state().is_terminal() {
        std::thread::sleep(Duration::from_millis(100));
        if quiet || last_at.elapsed() < Duration::from_secs(1) {
            continue;
        }
        let metrics = job.metrics();
        let events: u64 = sources
            .iter()
            .map(|v| metrics.vertex(*v).records_out())
            .sum();
        let sunk: u64 = sinks.iter().map(|v| metrics.vertex(*v).records_in()).sum();
        let rate = (events.saturating_sub(last_events)) as f64 / last_at.elapsed().as_secs_f64();
        let checkpoints = metrics.checkpoints();
        let completed = checkpoints.iter().filter(|c| c.completed).count();
        let last = checkpoints
            .iter()
            .rev()
            .find(|c| c.completed)
            .map(|c| format!(" (last {} ms)", c.duration_ms))
            .unwrap_or_default();
        let finished: u64 = outputs
            .iter()
            .map(|o| o.metrics.files_finished.load(Ordering::Relaxed))
            .sum();
        eprintln!(
            "[{:>6.1}s] {:>12} events ({}/s) | sinks {:>12} | checkpoints {completed}{last} | finished files {finished} | restarts {}",
            started.elapsed().as_secs_f64(),
            events,
            human(rate),
            sunk,
            metrics.restarts()
        );
        last_events = events;
        last_at = Instant::now();
    }
}

fn human(n: f64) -> String {
    if n >= 1e6 {
        format!("{:.2}M", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1}K", n / 1e3)
    } else {
        format!("{n:.0}")
    }
}

#[derive(Debug, serde::Serialize)]
struct Summary {
    job_id: String,
    name: String,
    state: JobState,
    seconds: f64,
    events: u64,
    events_per_second: f64,
    records_to_sinks: u64,
    /// Malformed records the sources skipped (`on_error = "skip"`).
    malformed_records: u64,
    checkpoints_completed: usize,
    checkpoints_declined: usize,
    /// Durations of the completed checkpoints, in order.
    checkpoint_durations_ms: Vec<u64>,
    restarts: u64,
    outputs: Vec<OutputSummary>,
}

#[derive(Debug, serde::Serialize)]
struct OutputSummary {
    sink: String,
    path: String,
    finished_files: usize,
    bytes: u64,
}

async fn summarize(job: &JobHandle, store: &DynStore, outputs: &[OutputInfo]) -> Result<Summary> {
    let graph = &job.shared.graph;
    let metrics = job.metrics();
    let seconds = job.shared.duration().as_secs_f64();
    let events: u64 = (0..graph.vertices.len())
        .filter(|v| graph.vertices[*v].is_source())
        .map(|v| metrics.vertex(v).records_out())
        .sum();
    let records_to_sinks = (0..graph.vertices.len())
        .filter(|v| graph.vertices[*v].is_sink())
        .map(|v| metrics.vertex(v).records_in())
        .sum();
    let malformed_records = (0..graph.vertices.len())
        .filter(|v| graph.vertices[*v].is_source())
        .map(|v| metrics.vertex(v).malformed_records())
        .sum();
    let checkpoints = metrics.checkpoints();
    let mut output_summaries = Vec::new();
    for output in outputs {
        let prefix = format!("{}/", output.path.trim_end_matches('/'));
        // This run's files only: earlier runs of the job may have written under the same path.
        let run_files = format!("{}-", engine::job::compile::part_prefix(job.job_id()));
        let files: Vec<_> = store
            .list_all(&prefix)
            .await?
            .into_iter()
            .filter(|o| {
                !o.key
                    .split('/')
                    .any(|s| s.starts_with('.') || s.starts_with('_'))
                    && o.key
                        .rsplit('/')
                        .next()
                        .is_some_and(|name| name.starts_with(&run_files))
            })
            .collect();
        output_summaries.push(OutputSummary {
            sink: output.sink_id.clone(),
            path: output.path.clone(),
            finished_files: files.len(),
            bytes: files.iter().map(|f| f.size).sum(),
        });
    }
    Ok(Summary {
        job_id: job.job_id().to_string(),
        name: graph.name.clone(),
        state: job.state(),
        seconds,
        events,
        events_per_second: events as f64 / seconds.max(1e-9),
        records_to_sinks,
        malformed_records,
        checkpoints_completed: checkpoints.iter().filter(|c| c.completed).count(),
        checkpoints_declined: checkpoints.iter().filter(|c| !c.completed).count(),
        checkpoint_durations_ms: checkpoints
            .iter()
            .filter(|c| c.completed)
            .map(|c| c.duration_ms)
            .collect(),
        restarts: metrics.restarts(),
        outputs: output_summaries,
    })
}

fn print_summary(s: &Summary) {
    eprintln!(
        "job {} ({}): {:?} after {:.1}s",
        s.name, s.job_id, s.state, s.seconds
    );
    eprintln!(
        "  {} events ({}/s), {} records to sinks, {} checkpoints ({} declined), {} restarts",
        s.events,
        human(s.events_per_second),
        s.records_to_sinks,
        s.checkpoints_completed,
        s.checkpoints_declined,
        s.restarts
    );
    if s.malformed_records > 0 {
        eprintln!("  {} malformed records skipped", s.malformed_records);
    }
    for o in &s.outputs {
        eprintln!(
            "  {}: {} finished files, {} bytes under {}/",
            o.sink, o.finished_files, o.bytes, o.path
        );
    }
}

/// `run --jobmanager`: submits the job file and follows the job until it ends.
async fn run_on_cluster(
    client: &engine::cluster::client::Client,
    text: &str,
    detach: bool,
    json: bool,
) -> Result<()> {
    let submitted = client.post("/jobs", text.to_string()).await?;
    let Some(job_id) = submitted["jobid"].as_str().map(str::to_string) else {
        bail!("the job manager did not return a job id: {submitted}");
    };
    if detach || json {
        let mut out = Out::new();
        out.line(format_args!("{job_id}"))?;
        out.flush()?;
        if detach {
            return Ok(());
        }
    } else {
        eprintln!("submitted job {job_id}");
    }
    let started = Instant::now();
    let mut last_note = String::new();
    // Since when the job manager has not answered (it may be restarting: a new one resumes
    // the job).
    let mut unanswered: Option<Instant> = None;
    loop {
        let polled = tokio::select! {
            signal = super::signals::stop_signal() => {
                return Err(stop_followed_job(client, &job_id, signal).await);
            }
            polled = async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                client.get(&format!("/jobs/{job_id}")).await
            } => polled,
        };
        let job = match polled {
            Ok(job) => {
                if unanswered.take().is_some() {
                    eprintln!("the job manager answers again");
                }
                job
            }
            Err(e @ engine::EngineError::Unreachable { .. }) => {
                let since = *unanswered.get_or_insert_with(|| {
                    eprintln!(
                        "{e}; waiting up to {}s for it (a restarted job manager resumes the job)",
                        FOLLOW_PATIENCE.as_secs()
                    );
                    Instant::now()
                });
                if since.elapsed() >= FOLLOW_PATIENCE {
                    bail!(
                        "{e}; gave up following job {job_id} after {}s: it may still be running \
                         (`rivulet status {job_id}` tells once the job manager is back)",
                        FOLLOW_PATIENCE.as_secs()
                    );
                }
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let state = job["state"].as_str().unwrap_or("?").to_string();
        let sum = |kind: &str, metric: &str| -> u64 {
            job["vertices"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|v| v["kind"].as_str() == Some(kind))
                .map(|v| v["metrics"][metric].as_u64().unwrap_or(0))
                .sum()
        };
        if !json {
            eprintln!(
                "[{:>6.1}s] {state:<10} {:>12} events | sinks {:>12} | restarts {}",
                started.elapsed().as_secs_f64(),
                sum("source", "write-records"),
                sum("sink", "read-records"),
                job["restarts"].as_u64().unwrap_or(0)
            );
            if let Some(reason) = job["reason"].as_str()
                && reason != last_note
            {
                eprintln!("  {reason}");
                last_note = reason.to_string();
            }
        }
        match state.as_str() {
            "FINISHED" => return Ok(()),
            "CANCELED" => bail!("job {job_id} was cancelled"),
            "FAILED" => bail!(
                "job {job_id} failed: {}",
                job["reason"]
                    .as_str()
                    .unwrap_or("see the job manager's log")
            ),
            _ => {}
        }
    }
}

/// How long `run --jobmanager` keeps following a job whose job manager does not answer.
const FOLLOW_PATIENCE: Duration = Duration::from_secs(120);

/// Ctrl-C (or SIGTERM, SIGHUP) while following a job cancels it, as on the embedded cluster;
/// `--detach` leaves a job running. The result is the signal's error, for its exit code.
async fn stop_followed_job(
    client: &engine::cluster::client::Client,
    job_id: &str,
    signal: super::output::Interrupted,
) -> anyhow::Error {
    match client
        .post(&format!("/jobs/{job_id}/cancel"), String::new())
        .await
    {
        Ok(_) => eprintln!("cancelling job {job_id}"),
        Err(e) => eprintln!(
            "could not cancel job {job_id} ({e}): it may keep running; `rivulet cancel {job_id}` \
             stops it"
        ),
    }
    signal.into()
}

/// The most slots the embedded cluster runs: each takes threads of this one process, and far
/// more than the machine's cores only slows a job down (or, by the thousands, exhausts memory).
const MAX_EMBEDDED_SLOTS: usize = 256;

/// Refuses an embedded cluster of more than [`MAX_EMBEDDED_SLOTS`] slots.
fn check_embedded_size(slots: usize, needed: usize) -> Result<()> {
    if slots > MAX_EMBEDDED_SLOTS {
        bail!(
            "the job needs {needed} slots (its widest stage's parallelism) and this run would \
             start {slots}; the embedded cluster runs at most {MAX_EMBEDDED_SLOTS}: lower \
             `parallelism`, or run the job on a cluster (rivulet jobmanager and taskmanager, \
             see docs/engine.md)"
        );
    }
    Ok(())
}

/// A count of task managers or slots: 1 or more.
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("not a count: {e}")),
    }
}

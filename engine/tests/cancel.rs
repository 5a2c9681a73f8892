//! What a job leaves in the store when it ends early. A user's cancel abandons the run: the
//! files its checkpoints published stay, and every file still in progress or pending is
//! aborted (no open upload, no tail, no index entry). An attempt that fails and restarts is
//! not a cancel: the next attempt resumes its files in progress, exactly once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use engine::graph::JobGraph;
use engine::job::{compile, parse};
use engine::runtime::cluster::{LocalTaskManagers, start_job};
use engine::runtime::executor::{DeployRequest, Placement};
use engine::runtime::master::TaskManagers;
use engine::runtime::metrics::JobMetrics;
use engine::runtime::task::{StopMode, SubtaskId, TaskControl, TaskEvent};
use engine::runtime::{JobEnvironment, JobState, MiniCluster};
use fs_core::retry::RetryPolicy;
use fs_core::store::fault::{FaultConfig, FaultStore, Op};
use fs_core::store::memory::MemoryStore;
use fs_core::store::{DynStore, ObjectStoreExt};
use fs_core::{Index, RecoverableWriter, WriterConfig};

/// Bids bucketed by channel (thousands of buckets: a high-cardinality field), two sink
/// subtasks, small part files so that some roll (and are published) while most stay in
/// progress across checkpoints.
fn job(count: Option<u64>, rate: Option<u64>) -> String {
    let count = count.map(|c| format!("count = {c}\n")).unwrap_or_default();
    let rate = rate.map(|r| format!("rate = {r}\n")).unwrap_or_default();
    format!(
        r#"
name = "many-buckets"
parallelism = 2

[checkpoint]
interval = "300ms"

[restart]
attempts = 5
delay = "100ms"

[[source]]
id = "bids"
kind = "nexmark"
events = "bid"
{count}{rate}
[[operator]]
id = "project"
kind = "map"
fields = ["auction", "bidder", "price", "channel"]

[[sink]]
id = "out"
kind = "file"
path = "out/bids"
format = "csv"
bucket_field = "channel"
max_part_size = "16KiB"
"#
    )
}

/// How long a cancel may take: a liveness bound, not a speed target. Aborting 14,000 files
/// in progress took about 25 s of a debug build on a machine three times oversubscribed.
const CANCEL_BOUND: Duration = Duration::from_secs(90);

struct Env {
    runtime: tokio::runtime::Runtime,
    env: JobEnvironment,
}

impl Env {
    fn over(store: DynStore, retry: RetryPolicy) -> Env {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let config = WriterConfig {
            cache_parts: false,
            retry,
            ..WriterConfig::default()
        };
        let writer =
            RecoverableWriter::new(store.clone(), Index::temporary().unwrap(), config).unwrap();
        let env = JobEnvironment {
            store,
            writer: Arc::new(writer),
            runtime: runtime.handle().clone(),
        };
        Env { runtime, env }
    }

    /// A memory store whose `nth` call of `op` fails, under a writer that does not retry.
    fn failing_once(op: Op, nth: u64) -> (Arc<FaultStore>, Env) {
        let store = Arc::new(FaultStore::new(
            Arc::new(MemoryStore::new()),
            FaultConfig {
                fail_nth: [(op, nth)].into(),
                ..FaultConfig::default()
            },
        ));
        let no_retries = RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        };
        let env = Env::over(store.clone(), no_retries);
        (store, env)
    }

    fn in_memory() -> Env {
        Env::over(Arc::new(MemoryStore::new()), RetryPolicy::default())
    }

    /// Open multipart uploads (files in progress or pending).
    fn open_uploads(&self) -> Vec<String> {
        let uploads = self
            .runtime
            .block_on(self.env.store.list_all_uploads(""))
            .unwrap();
        uploads.into_iter().map(|u| u.key).collect()
    }

    /// Objects under `prefix`, with their ETags.
    fn objects(&self, prefix: &str) -> BTreeMap<String, String> {
        let store = &self.env.store;
        self.runtime.block_on(async {
            store
                .list_all(prefix)
                .await
                .unwrap()
                .into_iter()
                .map(|o| (o.key, o.etag))
                .collect()
        })
    }

    /// Every line of every published part file, counted.
    fn output_lines(&self) -> HashMap<String, usize> {
        let store = &self.env.store;
        let mut lines = HashMap::new();
        for key in self.objects("out/").into_keys() {
            let body = self
                .runtime
                .block_on(async { store.get(&key, None).await.unwrap().body })
                .to_vec();
            let text = String::from_utf8(body).unwrap();
            assert!(text.ends_with('\n'), "{key} is cut off");
            for line in text.lines() {
                *lines.entry(line.to_string()).or_default() += 1;
            }
        }
        lines
    }

    /// Uploads the writer's index still lists (tokens a resume or `rivulet recover` would find).
    fn index_entries(&self) -> usize {
        self.runtime
            .block_on(self.env.writer.recover_all())
            .unwrap()
            .len()
    }
    /// Cancels `job`, whose failed attempt left files open (`when` it is cancelled, for the
    /// log), and checks that the cancel abandons them all, in time, keeping what was published.
    fn cancel_after_a_failure(self, job: &engine::runtime::JobHandle, when: &str) {
        let left_open = self.open_uploads().len();
        assert!(left_open > 0, "the failed attempt left no file in progress");
        self.cancel_and_check(job, &format!("{when} with {left_open} files left open"));
    }

    /// Cancels `job` (`what` describes the moment, for the log) and checks that the cancel
    /// ends within [`CANCEL_BOUND`] and abandons every file in progress, keeping what was
    /// published before it.
    fn cancel_and_check(self, job: &engine::runtime::JobHandle, what: &str) {
        let published = self.objects("out/");
        let started = Instant::now();
        job.cancel();
        assert_eq!(job.wait(), JobState::Canceled);
        let took = started.elapsed();
        eprintln!("cancelled {what} in {took:?}");
        assert!(took < CANCEL_BOUND, "the cancel took {took:?}");
        self.assert_run_abandoned(&published);
        drop(self.runtime);
    }

    /// Nothing of the run is left open: no upload, no tail, no token in the index. What was
    /// `published` stays, unchanged, and every published file is whole CSV.
    fn assert_run_abandoned(&self, published: &BTreeMap<String, String>) {
        let open = self.open_uploads();
        assert!(
            open.is_empty(),
            "{} uploads left open, e.g. {:?}",
            open.len(),
            &open[..open.len().min(3)]
        );
        let tails = self.objects(".rivulet/tails/");
        assert!(tails.is_empty(), "{} tails left", tails.len());
        assert_eq!(self.index_entries(), 0);
        let after = self.objects("out/");
        for (key, etag) in published {
            assert_eq!(after.get(key), Some(etag), "{key} changed or went");
        }
        assert!(
            self.output_lines()
                .keys()
                .all(|l| l.split(',').count() == 4),
            "a broken line"
        );
    }
}

fn completed_checkpoints(job: &engine::runtime::JobHandle) -> usize {
    job.metrics()
        .checkpoints()
        .iter()
        .filter(|c| c.completed)
        .count()
}

#[test]
fn a_cancelled_job_with_many_buckets_leaves_no_upload_and_keeps_what_checkpoints_published() {
    let env = Env::in_memory();
    let compiled = compile(&parse(&job(None, Some(20_000))).unwrap(), "cancel-1").unwrap();
    let job = MiniCluster::new(env.env.clone(), 1, 2)
        .submit(compiled.graph, "cancel-1")
        .unwrap();
    // Mid-run: checkpoints have completed and published files that rolled, and thousands
    // of buckets have files in progress. On a loaded machine the buckets can fill up before
    // any file has rolled and been published, so each of the three is waited for.
    let deadline = Instant::now() + Duration::from_secs(60);
    while completed_checkpoints(&job) < 3
        || env.open_uploads().len() < 500
        || env.objects("out/").is_empty()
    {
        let state = job.state();
        assert!(
            matches!(state, JobState::Created | JobState::Running),
            "{state:?}"
        );
        assert!(
            Instant::now() < deadline,
            "the job did not get going in 60 s: {} checkpoints, {} files in progress, {} published",
            completed_checkpoints(&job),
            env.open_uploads().len(),
            env.objects("out/").len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let in_progress = env.open_uploads().len();
    env.cancel_and_check(&job, &format!("with {in_progress} files in progress"));
}

/// The published lines of a run of `job` over `env`, which must finish.
fn finished_run(env: &Env, text: &str, id: &str) -> (HashMap<String, usize>, u64) {
    let compiled = compile(&parse(text).unwrap(), id).unwrap();
    let job = MiniCluster::new(env.env.clone(), 1, 2)
        .submit(compiled.graph, id)
        .unwrap();
    assert_eq!(job.wait(), JobState::Finished);
    (env.output_lines(), job.metrics().restarts())
}

#[test]
fn a_failed_attempt_is_not_a_cancel_its_files_in_progress_are_resumed_exactly_once() {
    // Rate-limited so that periodic checkpoints (which persist the files in progress) happen.
    let text = job(Some(100_000), Some(50_000));
    let reference = Env::in_memory();
    let (expected, restarts) = finished_run(&reference, &text, "reference-1");
    assert_eq!(restarts, 0);

    // The 300th PUT fails, without retries: a tail a checkpoint stages for a file in progress
    // (nearly every PUT is one), so the sink's snapshot fails and the attempt restarts from the
    // last completed checkpoint, resuming the files it had in progress.
    let (store, env) = Env::failing_once(Op::Put, 300);
    let (got, restarts) = finished_run(&env, &text, "faulty-1");
    let puts = store.calls(Op::Put);
    assert!(puts >= 300, "the faulty PUT was never made ({puts} PUTs)");
    assert!(restarts >= 1, "the injected fault did not fail an attempt");
    assert_eq!(
        got.values().sum::<usize>(),
        expected.values().sum::<usize>()
    );
    assert!(
        got == expected,
        "the output differs from the failure-free run's"
    );
    assert!(env.open_uploads().is_empty());
    assert!(env.objects(".rivulet/tails/").is_empty());
    drop(env.runtime);
    drop(reference.runtime);
}

#[test]
fn a_cancel_completes_when_an_abort_fails_and_leaves_just_that_upload() {
    // The first abort of an upload fails, without retries (a store that refuses it): the
    // cancel must still complete, abandoning every other file; that one stays open, listed
    // by the index for `rivulet recover --abort`.
    let (store, env) = Env::failing_once(Op::AbortMultipart, 1);
    let compiled = compile(&parse(&job(None, Some(5_000))).unwrap(), "cancel-2").unwrap();
    let job = MiniCluster::new(env.env.clone(), 1, 2)
        .submit(compiled.graph, "cancel-2")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while completed_checkpoints(&job) < 2 || env.open_uploads().len() < 100 {
        assert!(
            Instant::now() < deadline,
            "the job did not get going in 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        store.calls(Op::AbortMultipart),
        0,
        "an abort before the cancel"
    );
    let started = Instant::now();
    job.cancel();
    assert_eq!(job.wait(), JobState::Canceled);
    let took = started.elapsed();
    assert!(took < CANCEL_BOUND, "the cancel took {took:?}");
    assert!(store.calls(Op::AbortMultipart) >= 100);
    assert_eq!(env.open_uploads().len(), 1);
    assert_eq!(env.index_entries(), 1);
    drop(env.runtime);
}

#[test]
fn a_cancel_while_restarting_abandons_what_the_failed_attempt_left_open() {
    // The 300th PUT fails, without retries (a tail a checkpoint stages for a file in
    // progress): the attempt fails and keeps its files for the next one, which the job waits a
    // minute to start. A cancel meanwhile must abandon them as if the attempt were running.
    let (store, env) = Env::failing_once(Op::Put, 300);
    let text = job(None, Some(20_000)).replace("delay = \"100ms\"", "delay = \"60s\"");
    let compiled = compile(&parse(&text).unwrap(), "cancel-3").unwrap();
    let job = MiniCluster::new(env.env.clone(), 1, 2)
        .submit(compiled.graph, "cancel-3")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while job.state() != JobState::Restarting {
        assert!(
            Instant::now() < deadline,
            "the injected fault did not fail an attempt: {:?}",
            job.state()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        store.calls(Op::Put) >= 300,
        "restarting before the faulty PUT"
    );
    env.cancel_after_a_failure(&job, "while restarting");
}

/// Task managers whose slots are there for a job's first attempt only, as when the task
/// manager it ran on is lost and none takes its place: a restart waits for slots forever.
struct SlotsOnce {
    inner: LocalTaskManagers,
    allocations: AtomicUsize,
}

impl TaskManagers for SlotsOnce {
    fn allocate(&self, job_id: &str, slots: usize) -> Result<Placement, String> {
        if self.allocations.fetch_add(1, Ordering::SeqCst) == 0 {
            self.inner.allocate(job_id, slots)
        } else {
            Err("no task manager is registered".into())
        }
    }
    fn release(&self, job_id: &str) {
        self.inner.release(job_id)
    }
    fn deploy(
        &self,
        task_manager: &str,
        graph: &JobGraph,
        request: &DeployRequest,
        events: crossbeam_channel::Sender<TaskEvent>,
        metrics: Arc<JobMetrics>,
    ) -> Result<(), engine::EngineError> {
        self.inner
            .deploy(task_manager, graph, request, events, metrics)
    }
    fn control(
        &self,
        task_manager: &str,
        job_id: &str,
        attempt: u32,
        subtask: SubtaskId,
        message: TaskControl,
    ) {
        self.inner
            .control(task_manager, job_id, attempt, subtask, message)
    }
    fn cancel(&self, task_manager: &str, job_id: &str, attempt: u32, mode: StopMode) {
        self.inner.cancel(task_manager, job_id, attempt, mode)
    }
}

#[test]
fn a_cancel_while_waiting_for_slots_abandons_what_the_failed_attempt_left_open() {
    // The 300th PUT fails (a tail a checkpoint stages): the attempt fails and keeps its files
    // for the next one, which never gets slots. A cancel meanwhile must still abandon them: the
    // job master runs the abandoning attempt in its own process.
    let (store, env) = Env::failing_once(Op::Put, 300);
    let compiled = compile(&parse(&job(None, Some(20_000))).unwrap(), "cancel-4").unwrap();
    let task_managers = Arc::new(SlotsOnce {
        inner: LocalTaskManagers::new("tm", env.env.clone(), 2),
        allocations: AtomicUsize::new(0),
    });
    let job = start_job(
        compiled.graph,
        None,
        "cancel-4",
        &env.env,
        task_managers.clone(),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while task_managers.allocations.load(Ordering::SeqCst) < 2 {
        assert!(
            Instant::now() < deadline,
            "the job did not come to wait for slots: {:?}",
            job.state()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(store.calls(Op::Put) >= 300, "waiting before the faulty PUT");
    env.cancel_after_a_failure(&job, "while waiting for slots");
}

//! The runtime on its own: chaining, exchanges, checkpoints and restarts, with test sources
//! and sinks whose output is exactly-once only if the runtime's barriers are right.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use engine::EngineError;
use engine::data::{DataType, Field, Record, Schema, SchemaRef, Value};
use engine::graph::{
    CheckpointConfig, Edge, JobGraph, Partitioning, RestartStrategy, Vertex, VertexKind,
};
use engine::operator::{Operator, Output, Source, SourceStatus, TaskContext};
use engine::runtime::{JobEnvironment, JobState, MiniCluster};
use fs_core::store::fault::{FaultConfig, FaultStore, Op};
use fs_core::store::memory::MemoryStore;
use fs_core::{Index, RecoverableWriter, WriterConfig};

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("n", DataType::Int)]))
}

/// Emits the numbers below `count` that are `subtask` modulo `parallelism`; its position is
/// the next number.
struct Numbers {
    count: i64,
    next: i64,
    step: i64,
}

impl Source for Numbers {
    fn schema(&self) -> SchemaRef {
        schema()
    }

    fn restore(&mut self, _ctx: &TaskContext, position: &[u8]) -> Result<(), EngineError> {
        let bytes: [u8; 8] = position
            .try_into()
            .map_err(|_| EngineError::state("numbers", "bad position"))?;
        self.next = i64::from_le_bytes(bytes);
        Ok(())
    }

    fn open(&mut self, ctx: &TaskContext) -> Result<(), EngineError> {
        self.step = ctx.parallelism as i64;
        if self.next < 0 {
            self.next = ctx.subtask as i64;
        }
        Ok(())
    }

    fn poll(&mut self, out: &mut dyn Output, max: usize) -> Result<SourceStatus, EngineError> {
        for _ in 0..max.min(64) {
            if self.next >= self.count {
                return Ok(SourceStatus::Finished);
            }
            out.emit(Record::new(self.next, vec![Value::Int(self.next)]))?;
            self.next += self.step;
        }
        Ok(SourceStatus::More)
    }

    fn snapshot(&mut self, _checkpoint_id: u64) -> Result<Vec<u8>, EngineError> {
        Ok(self.next.to_le_bytes().to_vec())
    }
}

/// [`Numbers`], slowly: a few records a poll and a pause after each, so that a job of a few
/// thousand records runs through many checkpoints.
struct SlowNumbers(Numbers);

impl Source for SlowNumbers {
    fn schema(&self) -> SchemaRef {
        schema()
    }

    fn restore(&mut self, ctx: &TaskContext, position: &[u8]) -> Result<(), EngineError> {
        self.0.restore(ctx, position)
    }

    fn open(&mut self, ctx: &TaskContext) -> Result<(), EngineError> {
        self.0.open(ctx)
    }

    fn poll(&mut self, out: &mut dyn Output, _max: usize) -> Result<SourceStatus, EngineError> {
        match self.0.poll(out, 8)? {
            SourceStatus::More => Ok(SourceStatus::Idle(Duration::from_millis(2))),
            other => Ok(other),
        }
    }

    fn snapshot(&mut self, checkpoint_id: u64) -> Result<Vec<u8>, EngineError> {
        self.0.snapshot(checkpoint_id)
    }
}

/// Passes records on; its state is 20 KiB, more than a checkpoint acknowledgement carries,
/// so each of its snapshots is a PUT to the checkpoint storage.
struct BigState;

impl Operator for BigState {
    fn process(&mut self, record: Record, out: &mut dyn Output) -> Result<(), EngineError> {
        out.emit(record)
    }

    fn snapshot(&mut self, _checkpoint_id: u64) -> Result<Option<Vec<u8>>, EngineError> {
        Ok(Some(vec![7; 20 * 1024]))
    }
}

/// Passes records on; in the first attempt, its snapshot of checkpoint 2 fails.
struct FailingSnapshot {
    attempt: u32,
}

impl Operator for FailingSnapshot {
    fn open(&mut self, ctx: &TaskContext) -> Result<(), EngineError> {
        self.attempt = ctx.attempt;
        Ok(())
    }

    fn process(&mut self, record: Record, out: &mut dyn Output) -> Result<(), EngineError> {
        out.emit(record)
    }

    fn snapshot(&mut self, checkpoint_id: u64) -> Result<Option<Vec<u8>>, EngineError> {
        if self.attempt == 0 && checkpoint_id == 2 {
            return Err(EngineError::state("test", "injected snapshot failure"));
        }
        Ok(None)
    }
}

/// Passes records on; its snapshot of checkpoint 2 takes [`SLOW_SNAPSHOT`].
struct SlowSnapshot;

/// Longer than the checkpoint timeout of the test that uses [`SlowSnapshot`].
const SLOW_SNAPSHOT: Duration = Duration::from_millis(1500);

impl Operator for SlowSnapshot {
    fn process(&mut self, record: Record, out: &mut dyn Output) -> Result<(), EngineError> {
        out.emit(record)
    }

    fn snapshot(&mut self, checkpoint_id: u64) -> Result<Option<Vec<u8>>, EngineError> {
        if checkpoint_id == 2 {
            std::thread::sleep(SLOW_SNAPSHOT);
        }
        Ok(None)
    }
}

/// Passes records on, and fails the first attempt after `fail_after` records.
struct FailOnce {
    fail_after: u64,
    seen: u64,
    attempt: u32,
}

impl Operator for FailOnce {
    fn open(&mut self, ctx: &TaskContext) -> Result<(), EngineError> {
        self.attempt = ctx.attempt;
        Ok(())
    }

    fn process(&mut self, record: Record, out: &mut dyn Output) -> Result<(), EngineError> {
        self.seen += 1;
        if self.attempt == 0 && self.seen == self.fail_after {
            return Err(EngineError::record("test", "injected failure"));
        }
        out.emit(record)
    }
}

/// What the two-phase test sink has published: per (subtask, checkpoint), the values.
type Published = Arc<Mutex<BTreeMap<(usize, u64), Vec<i64>>>>;

/// A transactional sink: values since the last barrier are staged with the checkpoint and
/// published when it completes (or on restore, for the checkpoint restored from).
struct StagingSink {
    subtask: usize,
    open: Vec<i64>,
    staged: BTreeMap<u64, Vec<i64>>,
    published: Published,
}

impl StagingSink {
    fn publish_up_to(&mut self, id: u64) {
        let mut published = self.published.lock().unwrap();
        let done: Vec<u64> = self.staged.range(..=id).map(|(k, _)| *k).collect();
        for k in done {
            let values = self.staged.remove(&k).unwrap();
            // Idempotent: a checkpoint's values are published once whatever happens.
            published.entry((self.subtask, k)).or_insert(values);
        }
    }
}

impl Operator for StagingSink {
    fn restore(&mut self, ctx: &TaskContext, state: &[u8]) -> Result<(), EngineError> {
        self.subtask = ctx.subtask;
        self.staged = serde_json::from_slice(state).map_err(|e| EngineError::state("sink", e))?;
        self.publish_up_to(u64::MAX);
        Ok(())
    }

    fn open(&mut self, ctx: &TaskContext) -> Result<(), EngineError> {
        self.subtask = ctx.subtask;
        Ok(())
    }

    fn process(&mut self, record: Record, _out: &mut dyn Output) -> Result<(), EngineError> {
        if let Value::Int(n) = record.row[0] {
            self.open.push(n);
        }
        Ok(())
    }

    fn snapshot(&mut self, id: u64) -> Result<Option<Vec<u8>>, EngineError> {
        self.staged.insert(id, std::mem::take(&mut self.open));
        Ok(Some(serde_json::to_vec(&self.staged).unwrap()))
    }

    fn checkpoint_complete(&mut self, id: u64) -> Result<(), EngineError> {
        self.publish_up_to(id);
        Ok(())
    }
}

struct Env {
    runtime: tokio::runtime::Runtime,
    env: JobEnvironment,
}

fn environment() -> Env {
    environment_over(Arc::new(MemoryStore::new()))
}

fn environment_over(store: fs_core::store::DynStore) -> Env {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let writer = RecoverableWriter::new(
        store.clone(),
        Index::temporary().unwrap(),
        WriterConfig::default(),
    )
    .unwrap();
    let env = JobEnvironment {
        store,
        writer: Arc::new(writer),
        runtime: runtime.handle().clone(),
    };
    Env { runtime, env }
}

fn graph(count: i64, fail_after: u64, published: Published) -> JobGraph {
    let source = Vertex {
        id: "numbers".into(),
        description: "numbers".into(),
        parallelism: 2,
        kind: VertexKind::Source {
            factory: Arc::new(move |_| {
                Ok(Box::new(Numbers {
                    count,
                    next: -1,
                    step: 1,
                }) as Box<dyn Source>)
            }),
            watermark_delay: Duration::ZERO,
        },
        schema: schema(),
    };
    let fail = Vertex {
        id: "fail".into(),
        description: "fail once".into(),
        parallelism: 3,
        kind: VertexKind::Operator {
            factory: Arc::new(move |_| {
                Ok(Box::new(FailOnce {
                    fail_after,
                    seen: 0,
                    attempt: 0,
                }) as Box<dyn Operator>)
            }),
            is_sink: false,
        },
        schema: schema(),
    };
    let sink = Vertex {
        id: "sink".into(),
        description: "staging sink".into(),
        parallelism: 3,
        kind: VertexKind::Operator {
            factory: Arc::new(move |_| {
                Ok(Box::new(StagingSink {
                    subtask: 0,
                    open: Vec::new(),
                    staged: BTreeMap::new(),
                    published: published.clone(),
                }) as Box<dyn Operator>)
            }),
            is_sink: true,
        },
        schema: schema(),
    };
    JobGraph {
        name: "numbers".into(),
        vertices: vec![source, fail, sink],
        edges: vec![
            Edge {
                from: 0,
                to: 1,
                partitioning: Partitioning::Hash(vec![0]),
            },
            Edge {
                from: 1,
                to: 2,
                partitioning: Partitioning::Forward,
            },
        ],
        checkpoint: CheckpointConfig {
            interval: Some(Duration::from_millis(20)),
            timeout: Duration::from_secs(30),
            retained: 2,
            tolerable_failures: None,
        },
        restart: RestartStrategy::FixedDelay {
            attempts: 2,
            delay: Duration::from_millis(10),
        },
    }
}

fn published_values(published: &Published) -> Vec<i64> {
    let mut all: Vec<i64> = published
        .lock()
        .unwrap()
        .values()
        .flatten()
        .copied()
        .collect();
    all.sort();
    all
}

#[test]
fn bounded_job_publishes_every_record_once() {
    let env = environment();
    let published = Published::default();
    let cluster = MiniCluster::new(env.env.clone(), 1, 4);
    let job = cluster
        .submit(graph(20_000, u64::MAX, published.clone()), "plain")
        .unwrap();
    assert_eq!(job.wait(), JobState::Finished);
    assert_eq!(
        published_values(&published),
        (0..20_000).collect::<Vec<_>>()
    );
    assert_eq!(job.metrics().vertex(2).records_in(), 20_000);
    assert!(
        job.metrics()
            .checkpoints()
            .iter()
            .any(|c| c.is_final && c.completed)
    );
    drop(env.runtime);
}

#[test]
fn a_failed_task_restarts_from_the_checkpoint_exactly_once() {
    let env = environment();
    let published = Published::default();
    let cluster = MiniCluster::new(env.env.clone(), 2, 2);
    let job = cluster
        .submit(graph(200_000, 30_000, published.clone()), "failing")
        .unwrap();
    assert_eq!(job.wait(), JobState::Finished);
    assert_eq!(job.metrics().restarts(), 1);
    let values = published_values(&published);
    let unique: BTreeSet<i64> = values.iter().copied().collect();
    assert_eq!(unique.len(), values.len(), "duplicates published");
    assert_eq!(values, (0..200_000).collect::<Vec<_>>());
}

#[test]
fn a_job_needing_more_slots_than_the_cluster_has_says_so() {
    let env = environment();
    let cluster = MiniCluster::new(env.env.clone(), 1, 2);
    let err = cluster
        .submit(graph(10, u64::MAX, Published::default()), "big")
        .err()
        .unwrap();
    assert!(err.to_string().contains("needs 3 slots"), "{err}");
}

#[test]
fn failing_for_good_fails_the_job_with_the_reason() {
    let env = environment();
    let published = Published::default();
    let mut g = graph(100_000, 10, published);
    g.restart = RestartStrategy::None;
    let cluster = MiniCluster::new(env.env.clone(), 1, 4);
    let job = cluster.submit(g, "doomed").unwrap();
    match job.wait() {
        JobState::Failed(reason) => assert!(reason.contains("injected failure"), "{reason}"),
        other => panic!("expected a failure, got {other:?}"),
    }
}

/// The numbers job with a slow source (see [`SlowNumbers`]) and, if `big_state`, a middle
/// operator whose state is stored as its own object at every checkpoint; no restarts allowed,
/// so that a checkpoint failure that failed the job would show.
fn slow_graph(count: i64, big_state: bool, published: Published) -> JobGraph {
    let mut g = graph(count, u64::MAX, published);
    g.vertices[0].kind = VertexKind::Source {
        factory: Arc::new(move |_| {
            Ok(Box::new(SlowNumbers(Numbers {
                count,
                next: -1,
                step: 1,
            })) as Box<dyn Source>)
        }),
        watermark_delay: Duration::ZERO,
    };
    if big_state {
        g.vertices[1].kind = VertexKind::Operator {
            factory: Arc::new(|_| Ok(Box::new(BigState) as Box<dyn Operator>)),
            is_sink: false,
        };
    }
    g.restart = RestartStrategy::None;
    g
}

/// Runs `slow_graph` over a memory store whose `nth` PUT fails, and checks that exactly one
/// checkpoint was declined, for a reason containing `because`, while the job ran on without a
/// restart: every record is published once, the values the declined checkpoint staged
/// included, by the completion of a later checkpoint. Returns the declined checkpoint's id.
fn a_failed_checkpoint_put_declines_the_checkpoint(
    nth: u64,
    big_state: bool,
    because: &str,
) -> u64 {
    let store = Arc::new(FaultStore::new(
        Arc::new(MemoryStore::new()),
        FaultConfig {
            fail_nth: [(Op::Put, nth)].into(),
            ..FaultConfig::default()
        },
    ));
    let env = environment_over(store.clone());
    let published = Published::default();
    let cluster = MiniCluster::new(env.env.clone(), 1, 4);
    let job = cluster
        .submit(slow_graph(3_000, big_state, published.clone()), "declined")
        .unwrap();
    assert_eq!(job.wait(), JobState::Finished);
    assert!(store.calls(Op::Put) > nth, "the faulty PUT was never made");
    assert_eq!(job.metrics().restarts(), 0);
    let history = job.metrics().checkpoints();
    let declined: Vec<_> = history.iter().filter(|c| !c.completed).collect();
    assert_eq!(declined.len(), 1, "{history:?}");
    let declined = declined[0];
    let reason = declined.reason.as_deref().unwrap_or_default();
    assert!(
        reason.contains(because) && reason.contains("injected fault"),
        "{reason}"
    );
    assert!(!declined.is_final);
    assert!(
        history
            .iter()
            .any(|c| c.completed && c.id > declined.id && !c.is_final),
        "no periodic checkpoint completed after the declined one: {history:?}"
    );
    let values = published_values(&published);
    assert_eq!(values, (0..3_000).collect::<Vec<_>>());
    // What the sink staged at the declined checkpoint was published, without a restart, when
    // a later one completed.
    assert!(
        published
            .lock()
            .unwrap()
            .iter()
            .any(|((_, k), v)| *k == declined.id && !v.is_empty()),
        "nothing staged at checkpoint {} was published",
        declined.id
    );
    declined.id
}

#[test]
fn a_checkpoint_whose_metadata_write_fails_is_declined_and_the_job_runs_on() {
    // The states are small (inline in the acknowledgements): the only PUTs are the metadata
    // objects, so the second is checkpoint 2's.
    let id = a_failed_checkpoint_put_declines_the_checkpoint(2, false, "metadata");
    assert_eq!(id, 2);
}

#[test]
fn a_checkpoint_a_subtask_cannot_store_its_state_for_is_declined_and_the_job_runs_on() {
    // The first PUT is a state of checkpoint 1 (its metadata comes only after every state).
    let id = a_failed_checkpoint_put_declines_the_checkpoint(1, true, "storing its state");
    assert_eq!(id, 1);
}

#[test]
fn a_checkpoint_whose_snapshot_fails_is_declined_and_the_job_restarts_from_the_last_one() {
    let env = environment();
    let published = Published::default();
    let mut g = slow_graph(3_000, false, published.clone());
    g.vertices[1].kind = VertexKind::Operator {
        factory: Arc::new(|_| Ok(Box::new(FailingSnapshot { attempt: 0 }) as Box<dyn Operator>)),
        is_sink: false,
    };
    g.restart = RestartStrategy::FixedDelay {
        attempts: 1,
        delay: Duration::from_millis(10),
    };
    let cluster = MiniCluster::new(env.env.clone(), 1, 4);
    let job = cluster.submit(g, "snapshot-fails").unwrap();
    assert_eq!(job.wait(), JobState::Finished);
    // An operator whose snapshot failed may hold a half-changed state: the task fails and the
    // job restarts from checkpoint 1; the history says why checkpoint 2 did not complete.
    assert_eq!(job.metrics().restarts(), 1);
    assert_eq!(job.metrics().restored_checkpoint(), Some(1));
    let history = job.metrics().checkpoints();
    let second = history.iter().find(|c| c.id == 2).expect("checkpoint 2");
    assert!(!second.completed, "{history:?}");
    let reason = second.reason.as_deref().unwrap_or_default();
    assert!(
        reason.contains("taking its snapshot") && reason.contains("injected snapshot failure"),
        "{reason}"
    );
    assert_eq!(published_values(&published), (0..3_000).collect::<Vec<_>>());
}

#[test]
fn more_declined_checkpoints_in_a_row_than_tolerated_restart_the_job() {
    // Checkpoint 2's metadata write fails; with no declined checkpoint tolerated, that fails
    // the attempt, and the job restarts from checkpoint 1 and finishes, exactly once.
    let store = Arc::new(FaultStore::new(
        Arc::new(MemoryStore::new()),
        FaultConfig {
            fail_nth: [(Op::Put, 2)].into(),
            ..FaultConfig::default()
        },
    ));
    let env = environment_over(store);
    let published = Published::default();
    let mut g = slow_graph(3_000, false, published.clone());
    g.checkpoint.tolerable_failures = Some(0);
    g.restart = RestartStrategy::FixedDelay {
        attempts: 1,
        delay: Duration::from_millis(10),
    };
    let cluster = MiniCluster::new(env.env.clone(), 1, 4);
    let job = cluster.submit(g, "intolerant").unwrap();
    assert_eq!(job.wait(), JobState::Finished);
    assert_eq!(job.metrics().restarts(), 1);
    assert_eq!(job.metrics().restored_checkpoint(), Some(1));
    let history = job.metrics().checkpoints();
    assert!(
        history.iter().any(|c| c.id == 2 && !c.completed),
        "{history:?}"
    );
    assert_eq!(published_values(&published), (0..3_000).collect::<Vec<_>>());
}

#[test]
fn a_restarted_attempt_gets_the_full_allowance_of_declined_checkpoints() {
    // Attempt 0: checkpoint 1 completes (PUT 1, its metadata), checkpoint 2's snapshot fails,
    // which declines it and fails the attempt. Attempt 1 restores checkpoint 1, and the
    // metadata write of its first checkpoint (PUT 2) fails: one decline, which one tolerated
    // failure allows. Had attempt 1 inherited attempt 0's decline, that would be two in a row,
    // failing it, and with one restart allowed the job would fail.
    let store = Arc::new(FaultStore::new(
        Arc::new(MemoryStore::new()),
        FaultConfig {
            fail_nth: [(Op::Put, 2)].into(),
            ..FaultConfig::default()
        },
    ));
    let env = environment_over(store.clone());
    let published = Published::default();
    let mut g = slow_graph(3_000, false, published.clone());
    g.vertices[1].kind = VertexKind::Operator {
        factory: Arc::new(|_| Ok(Box::new(FailingSnapshot { attempt: 0 }) as Box<dyn Operator>)),
        is_sink: false,
    };
    g.checkpoint.tolerable_failures = Some(1);
    g.restart = RestartStrategy::FixedDelay {
        attempts: 1,
        delay: Duration::from_millis(10),
    };
    let cluster = MiniCluster::new(env.env.clone(), 1, 4);
    let job = cluster.submit(g, "allowance").unwrap();
    let state = job.wait();
    let history = job.metrics().checkpoints();
    assert_eq!(state, JobState::Finished, "{history:?}");
    assert_eq!(job.metrics().restarts(), 1);
    assert_eq!(job.metrics().restored_checkpoint(), Some(1));
    let reason_of = |id: u64| {
        let c = history
            .iter()
            .find(|c| c.id == id)
            .unwrap_or_else(|| panic!("no checkpoint {id}: {history:?}"));
        assert!(!c.completed, "{history:?}");
        c.reason.clone().unwrap_or_default()
    };
    assert!(
        reason_of(2).contains("injected snapshot failure"),
        "{history:?}"
    );
    assert!(
        reason_of(3).contains("metadata") && reason_of(3).contains("injected fault"),
        "{history:?}"
    );
    assert_eq!(published_values(&published), (0..3_000).collect::<Vec<_>>());
}

#[test]
fn a_checkpoint_that_times_out_is_declined_and_the_job_runs_on() {
    // Checkpoint 2 waits for a snapshot that takes 1.5 s, three times its timeout: the master
    // declines it, the job goes on without a restart (the late acknowledgement is ignored),
    // and a later checkpoint publishes what checkpoint 2 staged.
    let env = environment();
    let published = Published::default();
    // Long enough (several seconds) to still run when the slow snapshot ends.
    let mut g = slow_graph(30_000, false, published.clone());
    g.vertices[1].kind = VertexKind::Operator {
        factory: Arc::new(|_| Ok(Box::new(SlowSnapshot) as Box<dyn Operator>)),
        is_sink: false,
    };
    g.checkpoint.timeout = Duration::from_millis(500);
    let cluster = MiniCluster::new(env.env.clone(), 1, 4);
    let job = cluster.submit(g, "timeout").unwrap();
    let state = job.wait();
    let history = job.metrics().checkpoints();
    assert_eq!(state, JobState::Finished, "{history:?}");
    assert_eq!(job.metrics().restarts(), 0);
    let second = history
        .iter()
        .find(|c| c.id == 2)
        .unwrap_or_else(|| panic!("no checkpoint 2: {history:?}"));
    assert!(!second.completed, "{history:?}");
    assert_eq!(
        second.reason.as_deref(),
        Some("not complete within 500ms"),
        "{history:?}"
    );
    assert!(
        second.duration_ms >= 500 && second.duration_ms < SLOW_SNAPSHOT.as_millis() as u64,
        "declined at the timeout, not when the late snapshot ended: {history:?}"
    );
    assert!(
        history.iter().any(|c| c.completed && c.id > 2),
        "no checkpoint completed after the declined one: {history:?}"
    );
    assert_eq!(
        published_values(&published),
        (0..30_000).collect::<Vec<_>>()
    );
    assert!(
        published
            .lock()
            .unwrap()
            .iter()
            .any(|((_, k), v)| *k == 2 && !v.is_empty()),
        "nothing staged at checkpoint 2 was published"
    );
}

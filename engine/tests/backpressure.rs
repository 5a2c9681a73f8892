//! Backpressure: a sink that takes records slowly must slow an unbounded source down to its
//! pace, with no more records between them than the bounded exchange holds. If channels were
//! unbounded (or a sender dropped or buffered on its own when a channel is full), the source
//! would run ahead by millions of records and this test would fail.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use engine::EngineError;
use engine::builder::{JobBuilder, StageOptions};
use engine::data::Record;
use engine::graph::{CheckpointConfig, RestartStrategy};
use engine::operator::{Operator, Output};
use engine::runtime::element::BATCH_SIZE;
use engine::runtime::exchange::CHANNEL_CAPACITY;
use engine::runtime::{JobEnvironment, JobState, MiniCluster};
use engine::sink::DiscardSink;
use engine::source::{EventKind, NexmarkConfig, NexmarkSource, schema_for};

/// Source and sink parallelism; the key_by between them is an all-to-all hash edge, so there
/// are `PARALLELISM * PARALLELISM` channels.
const PARALLELISM: usize = 2;

/// Records a sink subtask takes before it sleeps [`PAUSE`]: ~2,000 records/s per subtask.
const RECORDS_PER_PAUSE: u64 = 100;
const PAUSE: Duration = Duration::from_millis(50);

/// Records polled from a source at once (the runtime's `POLL_BATCH`): a source counts them
/// when the poll returns, and one poll may be blocked half-way on a full channel.
const POLL_BATCH: u64 = 1024;

/// A sink that sleeps every [`RECORDS_PER_PAUSE`] records, counting what it has taken.
struct SlowSink {
    consumed: Arc<AtomicU64>,
    since_pause: u64,
}

impl Operator for SlowSink {
    fn process(&mut self, _record: Record, _out: &mut dyn Output) -> Result<(), EngineError> {
        self.consumed.fetch_add(1, Ordering::Relaxed);
        self.since_pause += 1;
        if self.since_pause >= RECORDS_PER_PAUSE {
            self.since_pause = 0;
            std::thread::sleep(PAUSE);
        }
        Ok(())
    }
}

fn environment() -> (tokio::runtime::Runtime, JobEnvironment) {
    JobEnvironment::in_memory().unwrap()
}

/// Most records that can be between the source's count and the sinks' count at any moment:
/// the full channels, a partly filled batch per channel on the sending side, the batch each
/// sink subtask is working through, and a source poll each that was counted in full but is
/// still blocked in the middle of sending it.
fn in_flight_bound() -> u64 {
    let channels = (PARALLELISM * PARALLELISM) as u64;
    let batch = BATCH_SIZE as u64;
    channels * CHANNEL_CAPACITY as u64 * batch
        + channels * batch
        + PARALLELISM as u64 * batch
        + PARALLELISM as u64 * POLL_BATCH
}

#[test]
fn a_slow_sink_slows_the_source_and_bounds_what_is_in_flight() {
    let (runtime, env) = environment();
    let consumed = Arc::new(AtomicU64::new(0));

    let job = JobBuilder::new("backpressure");
    job.set_parallelism(PARALLELISM);
    job.set_restart(RestartStrategy::None);
    // Checkpoints would add barriers and alignment; this test is about the data path alone.
    job.set_checkpointing(CheckpointConfig {
        interval: None,
        ..CheckpointConfig::default()
    });
    // Unbounded and unthrottled: alone, it emits hundreds of thousands of bids a second.
    let bids = job
        .source(
            "bids",
            Arc::new(|_| Ok(Box::new(NexmarkSource::new(NexmarkConfig::default())?) as _)),
            schema_for(EventKind::Bid),
        )
        .unwrap();
    let sink_count = consumed.clone();
    bids.key_by(&["auction"])
        .unwrap()
        .sink(
            StageOptions {
                id: "slow",
                description: "a sink that sleeps",
                parallelism: None,
            },
            Arc::new(move |_| {
                Ok(Box::new(SlowSink {
                    consumed: sink_count.clone(),
                    since_pause: 0,
                }) as Box<dyn Operator>)
            }),
        )
        .unwrap();
    let graph = job.build().unwrap();
    assert_eq!(
        graph.vertices.len(),
        2,
        "source and sink must not be chained"
    );

    let cluster = MiniCluster::new(env, 1, PARALLELISM);
    let handle = cluster.submit(graph, "backpressure-1").unwrap();
    let bound = in_flight_bound();
    let started = Instant::now();

    // Sample several times: the gap must stay bounded all along, not just happen to be
    // small once. Emitted is read before consumed, so a record counted by the sink between
    // the two reads can only make the gap look smaller than it is by records the source
    // emitted before it was read: emitted - consumed is never overstated by the ordering.
    let mut samples = Vec::new();
    for wait in [1500, 1500, 1500] {
        std::thread::sleep(Duration::from_millis(wait));
        assert_eq!(
            handle.state(),
            JobState::Running,
            "the job stopped on its own"
        );
        let emitted = handle.metrics().vertex(0).records_out();
        let taken = consumed.load(Ordering::Relaxed);
        samples.push((started.elapsed(), emitted, taken));
        assert!(
            emitted <= taken + bound,
            "the source ran ahead of the sink: {emitted} emitted, {taken} consumed, at most \
             {bound} may be in flight (samples {samples:?})"
        );
    }
    let (elapsed, emitted, taken) = *samples.last().unwrap();
    // The sinks did work, and the source was held back rather than idle: it emitted well
    // past what the sinks took (the channels are full), which is what makes the bound above
    // a real check and not a source that happens to be slow.
    assert!(taken > 1000, "the sinks took only {taken} records");
    assert!(
        emitted >= taken + (CHANNEL_CAPACITY * BATCH_SIZE) as u64,
        "the channels never filled: {emitted} emitted, {taken} consumed"
    );
    // The sinks together take at most ~4,000 records/s; allow generous slack for a loaded
    // machine but far below what an unthrottled source emits.
    let max_rate = PARALLELISM as f64 * RECORDS_PER_PAUSE as f64 / PAUSE.as_secs_f64();
    assert!(
        // Each subtask takes its first RECORDS_PER_PAUSE before its first pause.
        (taken as f64)
            <= max_rate * elapsed.as_secs_f64() + (PARALLELISM as u64 * RECORDS_PER_PAUSE) as f64,
        "the sink was faster than its throttle allows: {taken} in {elapsed:?}"
    );
    // The source's subtasks spent most of the run waiting on full channels.
    let blocked = handle.metrics().blocked();
    assert!(
        blocked >= Duration::from_secs(2),
        "sources were blocked only {blocked:?} in {elapsed:?}"
    );

    handle.cancel();
    assert_eq!(handle.wait(), JobState::Canceled);
    drop(runtime);
}

/// Runs an unbounded, unthrottled source into a discard sink with `rate = 1` (chained to the
/// source if `chained`, behind a key_by otherwise) with checkpoints every 200 ms, and checks
/// that checkpoints complete and a cancel ends the job promptly. A throttle that slept in
/// `process` held its task for a batch / rate seconds (512 s): no barrier got through (the
/// checkpoints timed out) and the cancel waited for the batch.
fn a_tiny_rate_still_checkpoints_and_cancels(chained: bool) {
    let (runtime, env) = environment();
    let job = JobBuilder::new("tiny-rate");
    job.set_parallelism(PARALLELISM);
    job.set_restart(RestartStrategy::None);
    job.set_checkpointing(CheckpointConfig {
        interval: Some(Duration::from_millis(200)),
        timeout: Duration::from_secs(5),
        ..CheckpointConfig::default()
    });
    let bids = job
        .source(
            "bids",
            Arc::new(|_| Ok(Box::new(NexmarkSource::new(NexmarkConfig::default())?) as _)),
            schema_for(EventKind::Bid),
        )
        .unwrap();
    let input = if chained {
        bids
    } else {
        bids.key_by(&["auction"]).unwrap()
    };
    input
        .sink(
            StageOptions {
                id: "trickle",
                description: "a discard sink taking one record a second",
                parallelism: None,
            },
            Arc::new(|_| Ok(Box::new(DiscardSink::throttled(1)) as Box<dyn Operator>)),
        )
        .unwrap();
    let graph = job.build().unwrap();
    assert_eq!(graph.vertices.len(), 2);
    let cluster = MiniCluster::new(env, 1, PARALLELISM);
    let handle = cluster.submit(graph, "tiny-rate-1").unwrap();

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let history = handle.metrics().checkpoints();
        let completed = history.iter().filter(|c| c.completed).count();
        if completed >= 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {completed} checkpoints completed in 20 s: {history:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let history = handle.metrics().checkpoints();
    assert!(
        history.iter().all(|c| c.completed),
        "checkpoints were declined: {history:?}"
    );
    let cancelled = Instant::now();
    handle.cancel();
    assert_eq!(handle.wait(), JobState::Canceled);
    assert!(
        cancelled.elapsed() < Duration::from_secs(5),
        "the cancel took {:?}",
        cancelled.elapsed()
    );
    // The throttle still held the input back: records ahead of each barrier were taken at
    // once (at most what is in flight), and a batch or a poll after it, nothing more. A
    // throttle that never paused would have taken the source's hundreds of thousands a second.
    let checkpoints = handle.metrics().checkpoints().len() as u64;
    let taken = handle.metrics().vertex(1).records_in();
    assert!(
        taken <= (checkpoints + 2) * in_flight_bound(),
        "the sink took {taken} records over {checkpoints} checkpoints"
    );
    drop(runtime);
}

#[test]
fn a_discard_sink_with_a_tiny_rate_still_checkpoints_and_cancels_promptly() {
    a_tiny_rate_still_checkpoints_and_cancels(false);
}

#[test]
fn a_discard_sink_chained_to_its_source_with_a_tiny_rate_still_checkpoints_and_cancels() {
    a_tiny_rate_still_checkpoints_and_cancels(true);
}

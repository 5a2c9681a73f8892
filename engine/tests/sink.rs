//! The file sink against real fs-core writers over the memory and local stores, driven from a
//! plain thread as the runtime drives it: buckets and formats, rolling, crashes around
//! checkpoints, declined checkpoints, retained tails, and nothing left behind.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use engine::EngineError;
use engine::data::{DataType, Field, Record, Schema, SchemaRef, Timestamp, Value};
use engine::format::{self, Format};
use engine::operator::{Operator, Output, TaskContext};
use engine::sink::state::SinkState;
use engine::sink::{BucketAssigner, FileSink, FileSinkConfig, RollingPolicy, TimeSource};
use fs_core::retry::RetryPolicy;
use fs_core::store::fault::{FaultConfig, FaultStore, Op};
use fs_core::store::local::LocalStore;
use fs_core::store::memory::MemoryStore;
use fs_core::store::{DynStore, ObjectStoreExt};
use fs_core::{Index, RecoverableWriter, WriterConfig};

struct NoOutput;

impl Output for NoOutput {
    fn emit(&mut self, _record: Record) -> Result<(), EngineError> {
        Ok(())
    }
    fn watermark(&mut self, _watermark: Timestamp) -> Result<(), EngineError> {
        Ok(())
    }
}

struct Harness {
    rt: tokio::runtime::Runtime,
    store: DynStore,
    writer: Arc<RecoverableWriter>,
    _dir: tempfile::TempDir,
}

impl Harness {
    /// A memory store with small parts, so that files span several uploaded parts.
    fn memory() -> Self {
        let store = MemoryStore::new().with_min_part_size(4096);
        Self::over(Arc::new(store), 4096, None)
    }

    /// A local store over a temporary directory (S3's 5 MiB parts).
    fn local() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path().join("store")).unwrap();
        Self::over(Arc::new(store), 5 * 1024 * 1024, Some(dir))
    }

    /// A memory store behind a fault injector: transient errors and lost answers on every
    /// kind of call, retried quickly by the writer.
    fn faulty() -> (Self, Arc<FaultStore>) {
        let inner: DynStore = Arc::new(MemoryStore::new().with_min_part_size(4096));
        let faults = Arc::new(FaultStore::new(
            inner,
            FaultConfig {
                error_rate: 0.05,
                lost_answer_rate: 0.05,
                ..FaultConfig::default()
            },
        ));
        let mut h = Self::over(faults.clone(), 4096, None);
        let config = WriterConfig {
            retry: RetryPolicy {
                max_attempts: 40,
                base_delay: Duration::from_millis(1),
                max_delay: Duration::from_millis(4),
            },
            ..h.writer.config().clone()
        };
        h.writer = Arc::new(
            RecoverableWriter::new(faults.clone(), Index::temporary().unwrap(), config).unwrap(),
        );
        (h, faults)
    }

    /// A memory store whose every call takes a latency in `millis`, as over a network; the
    /// fault store also counts the calls and how many run at once.
    fn slow(millis: std::ops::Range<u64>) -> (Self, Arc<FaultStore>) {
        let inner: DynStore = Arc::new(MemoryStore::new().with_min_part_size(4096));
        let faults = Arc::new(FaultStore::new(
            inner,
            FaultConfig {
                latency: Some(
                    Duration::from_millis(millis.start)..Duration::from_millis(millis.end),
                ),
                ..FaultConfig::default()
            },
        ));
        (Self::over(faults.clone(), 4096, None), faults)
    }

    fn over(store: DynStore, part_size: u64, dir: Option<tempfile::TempDir>) -> Self {
        let dir = dir.unwrap_or_else(|| tempfile::tempdir().unwrap());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let config = WriterConfig {
            part_size,
            cache_parts: false,
            cache_dir: dir.path().join("cache"),
            ..WriterConfig::default()
        };
        let writer =
            RecoverableWriter::new(store.clone(), Index::temporary().unwrap(), config).unwrap();
        Self {
            rt,
            store,
            writer: Arc::new(writer),
            _dir: dir,
        }
    }

    fn ctx(&self, attempt: u32) -> TaskContext {
        self.subtask_ctx(0, 1, attempt)
    }

    fn subtask_ctx(&self, subtask: usize, parallelism: usize, attempt: u32) -> TaskContext {
        TaskContext {
            job_id: "job".into(),
            job_name: "test".into(),
            operator_id: "sink".into(),
            subtask,
            parallelism,
            attempt,
            writer: self.writer.clone(),
            runtime: self.rt.handle().clone(),
        }
    }

    /// Every published object under `prefix`, by key.
    fn objects(&self, prefix: &str) -> BTreeMap<String, Vec<u8>> {
        self.rt.block_on(async {
            let mut out = BTreeMap::new();
            for o in self.store.list_all(prefix).await.unwrap() {
                let got = self.store.get(&o.key, None).await.unwrap();
                out.insert(o.key, got.body.to_vec());
            }
            out
        })
    }

    fn open_uploads(&self) -> Vec<String> {
        let uploads = self.rt.block_on(self.store.list_all_uploads("")).unwrap();
        uploads.into_iter().map(|u| u.key).collect()
    }

    fn tails(&self) -> usize {
        self.rt
            .block_on(self.store.list_all(".rivulet/tails/"))
            .unwrap()
            .len()
    }

    /// A sink restored from `state` (if any) and opened, as the runtime starts one.
    fn start(&self, config: &FileSinkConfig, state: Option<&[u8]>, attempt: u32) -> FileSink {
        let mut sink = FileSink::new(config.clone(), schema()).unwrap();
        let ctx = self.ctx(attempt);
        if let Some(state) = state {
            sink.restore(&ctx, state).unwrap();
        }
        sink.open(&ctx).unwrap();
        sink
    }
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int),
        Field::new("region", DataType::String),
        Field::new("note", DataType::String),
    ]))
}

const REGIONS: [&str; 3] = ["eu", "us", "ap/south"];

fn record(id: i64) -> Record {
    let region = REGIONS[(id % 3) as usize];
    Record::new(
        1_764_064_800_000 + id,
        vec![
            Value::Int(id),
            Value::Str(region.into()),
            Value::Str(format!("row {id}, padded to make files grow").into()),
        ],
    )
}

fn write(sink: &mut FileSink, ids: std::ops::Range<i64>) {
    for id in ids {
        sink.process(record(id), &mut NoOutput).unwrap();
    }
}

fn config(format: Format) -> FileSinkConfig {
    FileSinkConfig {
        bucket: BucketAssigner::Field { index: 1 },
        part_prefix: "part-test".into(),
        ..FileSinkConfig::new("out", format)
    }
}

/// The ids of every published JSON object, sorted, whatever subtask wrote them.
fn published_ids_of(h: &Harness) -> Vec<i64> {
    let mut ids: Vec<i64> = h
        .objects("out/")
        .values()
        .flat_map(|body| {
            String::from_utf8(body.clone())
                .unwrap()
                .lines()
                .map(|l| {
                    format::decode_json(&schema(), l).unwrap()[0]
                        .as_i64()
                        .unwrap()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    ids.sort_unstable();
    ids
}

/// The ids in every published object, sorted, after checking each row sits in its bucket.
fn published_ids(h: &Harness, format: Format) -> Vec<i64> {
    let mut ids = Vec::new();
    for (key, body) in h.objects("out/") {
        let text = String::from_utf8(body).unwrap();
        for line in text.lines() {
            let row = match format {
                Format::Json => format::decode_json(&schema(), line).unwrap(),
                Format::Csv => {
                    let mut reader = csv::ReaderBuilder::new()
                        .has_headers(false)
                        .from_reader(line.as_bytes());
                    let rec = reader.records().next().unwrap().unwrap();
                    format::decode_csv(&schema(), &rec).unwrap()
                }
                Format::Parquet => panic!("parquet files are read by engine/tests/parquet.rs"),
            };
            let id = row[0].as_i64().unwrap();
            assert_eq!(row, record(id).row, "{key}");
            let bucket = REGIONS[(id % 3) as usize].replace('/', "_");
            assert!(
                key.starts_with(&format!("out/{bucket}/part-test-0-")),
                "{key} holds id {id}"
            );
            assert!(key.ends_with(format.extension()), "{key}");
            ids.push(id);
        }
    }
    ids.sort_unstable();
    ids
}

/// The key without its part counter (`out/eu/part-test-0-#.jsonl`), and the counter.
fn split_counter(key: &str) -> (String, u64) {
    let (dir, name) = key.rsplit_once('/').unwrap();
    let (stem, ext) = name.rsplit_once('.').unwrap();
    let (prefix, counter) = stem.rsplit_once('-').unwrap();
    (format!("{dir}/{prefix}-#.{ext}"), counter.parse().unwrap())
}

/// The keys with their counters masked, after checking that no counter is used twice.
fn masked_keys(h: &Harness) -> Vec<String> {
    let keys: Vec<(String, u64)> = h.objects("out/").keys().map(|k| split_counter(k)).collect();
    let mut counters: Vec<u64> = keys.iter().map(|k| k.1).collect();
    counters.sort_unstable();
    counters.dedup();
    assert_eq!(counters.len(), keys.len(), "a counter used twice: {keys:?}");
    let mut masked: Vec<String> = keys.into_iter().map(|k| k.0).collect();
    masked.sort();
    masked
}

fn finish_and_commit(sink: &mut FileSink, checkpoint: u64) {
    sink.finish(&mut NoOutput).unwrap();
    sink.snapshot(checkpoint).unwrap();
    sink.checkpoint_complete(checkpoint).unwrap();
}

fn assert_clean(h: &Harness) {
    assert_eq!(h.open_uploads(), Vec::<String>::new(), "open uploads left");
    assert_eq!(h.tails(), 0, "tails left");
}

#[test]
fn rows_land_in_their_buckets_in_json_and_csv() {
    for (h, format) in [
        (Harness::memory(), Format::Json),
        (Harness::local(), Format::Csv),
    ] {
        let mut sink = h.start(&config(format), None, 0);
        let metrics = sink.metrics();
        write(&mut sink, 0..300);
        // Nothing is visible before a checkpoint completes.
        sink.snapshot(1).unwrap();
        assert!(h.objects("out/").is_empty());
        finish_and_commit(&mut sink, 2);
        let objects = h.objects("out/");
        let ext = format.extension();
        assert_eq!(
            masked_keys(&h),
            [
                format!("out/ap_south/part-test-0-#.{ext}"),
                format!("out/eu/part-test-0-#.{ext}"),
                format!("out/us/part-test-0-#.{ext}"),
            ],
            "{format:?}"
        );
        assert_eq!(published_ids(&h, format), (0..300).collect::<Vec<_>>());
        assert_eq!(metrics.records_written.load(Ordering::Relaxed), 300);
        assert_eq!(metrics.files_finished.load(Ordering::Relaxed), 3);
        let bytes: usize = objects.values().map(Vec::len).sum();
        assert_eq!(metrics.bytes_written.load(Ordering::Relaxed), bytes as u64);
        assert_clean(&h);
    }
}

#[test]
fn csv_and_json_lines_are_the_formats_encoding() {
    let h = Harness::memory();
    let mut sink = h.start(&config(Format::Csv), None, 0);
    write(&mut sink, 0..1);
    finish_and_commit(&mut sink, 1);
    let objects = h.objects("out/");
    assert_eq!(
        objects["out/eu/part-test-0-0.csv"],
        b"0,eu,\"row 0, padded to make files grow\"\n"
    );
}

#[test]
fn date_time_buckets_use_event_time() {
    let h = Harness::memory();
    let config = FileSinkConfig {
        bucket: BucketAssigner::date_time("%Y-%m-%d/%H", TimeSource::Event).unwrap(),
        ..config(Format::Json)
    };
    let mut sink = h.start(&config, None, 0);
    let hour = 3_600_000;
    for (i, ts) in [0, hour - 1, hour, 25 * hour].into_iter().enumerate() {
        let mut r = record(i as i64);
        r.timestamp = 1_764_064_800_000 + ts;
        sink.process(r, &mut NoOutput).unwrap();
    }
    finish_and_commit(&mut sink, 1);
    assert_eq!(
        masked_keys(&h),
        [
            "out/2025-11-25/10/part-test-0-#.jsonl",
            "out/2025-11-25/11/part-test-0-#.jsonl",
            "out/2025-11-26/11/part-test-0-#.jsonl",
        ]
    );
}

#[test]
fn rolls_by_size() {
    let h = Harness::memory();
    let config = FileSinkConfig {
        bucket: BucketAssigner::Field { index: 1 },
        rolling: RollingPolicy {
            max_part_size: 10_000,
            ..RollingPolicy::default()
        },
        ..config(Format::Json)
    };
    let mut sink = h.start(&config, None, 0);
    write(&mut sink, 0..3000);
    finish_and_commit(&mut sink, 1);
    let objects = h.objects("out/");
    assert!(objects.len() > 10, "{} files", objects.len());
    let line_max = 100;
    for (key, body) in &objects {
        let (bucket, counter) = split_counter(key);
        // Every file of a bucket but its last (closed by `finish`) was rolled by size.
        let last_of_bucket = !objects.keys().any(|k| {
            let (b, c) = split_counter(k);
            b == bucket && c > counter
        });
        if !last_of_bucket {
            assert!(
                (10_000..10_000 + line_max).contains(&body.len()),
                "{key}: {} bytes",
                body.len()
            );
        }
    }
    assert_eq!(
        published_ids(&h, Format::Json),
        (0..3000).collect::<Vec<_>>()
    );
    assert_clean(&h);
}

#[test]
fn rolls_on_checkpoint_and_on_inactivity() {
    let h = Harness::memory();
    let config = FileSinkConfig {
        rolling: RollingPolicy {
            roll_on_checkpoint: true,
            ..RollingPolicy::default()
        },
        ..config(Format::Json)
    };
    let mut sink = h.start(&config, None, 0);
    write(&mut sink, 0..30);
    sink.snapshot(1).unwrap();
    assert!(h.objects("out/").is_empty());
    sink.checkpoint_complete(1).unwrap();
    assert_eq!(h.objects("out/").len(), 3);
    write(&mut sink, 30..60);
    sink.snapshot(2).unwrap();
    sink.checkpoint_complete(2).unwrap();
    assert_eq!(h.objects("out/").len(), 6);
    assert_eq!(published_ids(&h, Format::Json), (0..60).collect::<Vec<_>>());
    // With nothing open, a checkpoint holds nothing in progress and publishes nothing.
    sink.snapshot(3).unwrap();
    sink.checkpoint_complete(3).unwrap();
    assert_eq!(h.objects("out/").len(), 6);

    // Inactivity: a tick a minute later rolls the idle files, the next checkpoint publishes.
    let h = Harness::memory();
    let mut sink = h.start(&self::config(Format::Json), None, 0);
    write(&mut sink, 0..3);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    sink.tick(now, &mut NoOutput).unwrap();
    sink.snapshot(1).unwrap();
    sink.checkpoint_complete(1).unwrap();
    assert!(h.objects("out/").is_empty(), "rolled too early");
    sink.tick(now + 61_000, &mut NoOutput).unwrap();
    sink.snapshot(2).unwrap();
    sink.checkpoint_complete(2).unwrap();
    assert_eq!(published_ids(&h, Format::Json), vec![0, 1, 2]);
    assert_clean(&h);
}

#[test]
fn idle_buckets_let_go_of_their_buffers_between_checkpoints_and_keep_every_row() {
    for h in [Harness::memory(), Harness::local()] {
        let mut sink = h.start(&config(Format::Json), None, 0);
        let metrics = sink.metrics();
        let released = || metrics.buffers_released.load(Ordering::Relaxed);
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        // Enough rows for every bucket to hand some to its file (256 KiB of JSON lines each).
        write(&mut sink, 0..15_000);
        sink.tick(before, &mut NoOutput).unwrap();
        assert_eq!(released(), 0, "nothing is idle yet");
        // Well before the minute of inactivity that rolls a file.
        sink.tick(before + 10_000, &mut NoOutput).unwrap();
        let first = released();
        assert!(first >= 1, "an idle file keeps its part buffer");
        sink.tick(before + 10_200, &mut NoOutput).unwrap();
        assert_eq!(released(), first, "a buffer is let go once");
        // Their next rows go on where the files were, then a checkpoint publishes them.
        write(&mut sink, 15_000..16_000);
        finish_and_commit(&mut sink, 1);
        assert_eq!(
            published_ids(&h, Format::Json),
            (0..16_000).collect::<Vec<_>>()
        );
        assert_eq!(h.objects("out/").len(), 3, "one file per bucket");
        assert_clean(&h);
    }
}

/// The scenario of the brief: checkpoint 1 completes, checkpoint 2 is taken but its completion
/// is never seen, the task crashes with more written; the restored task commits 2's pending
/// files, cuts the in-progress ones back, and the input is replayed from checkpoint 2.
fn crash_after_snapshot(h: &Harness) {
    crash_after_snapshot_checked(h, || {});
}

/// `before_checks` runs before the test reads the store (to stop injecting faults).
fn crash_after_snapshot_checked(h: &Harness, before_checks: impl Fn()) {
    let config = FileSinkConfig {
        rolling: RollingPolicy {
            max_part_size: 6_000,
            ..RollingPolicy::default()
        },
        ..config(Format::Json)
    };
    let mut sink = h.start(&config, None, 0);
    write(&mut sink, 0..400);
    sink.snapshot(1).unwrap();
    sink.checkpoint_complete(1).unwrap();
    write(&mut sink, 400..800);
    let state2 = sink.snapshot(2).unwrap().unwrap();
    write(&mut sink, 800..1000);
    // A crash: nothing runs, nothing is cleaned up.
    std::mem::forget(sink);

    let mut sink = h.start(&config, Some(&state2), 1);
    // The source replays from checkpoint 2's position.
    write(&mut sink, 800..1200);
    sink.snapshot(3).unwrap();
    sink.checkpoint_complete(3).unwrap();
    write(&mut sink, 1200..1300);
    finish_and_commit(&mut sink, 4);
    before_checks();
    assert_eq!(
        published_ids(h, Format::Json),
        (0..1300).collect::<Vec<_>>(),
        "every row exactly once"
    );
    assert_clean(h);
}

/// Files that got nothing for a whole checkpoint interval are parked (their writers dropped)
/// and resumed from their tokens by their next write, with or without a restore in between.
fn idle_files_are_parked_and_resumed(h: &Harness, crash: bool) {
    let config = config(Format::Json);
    let mut sink = h.start(&config, None, 0);
    let metrics = sink.metrics();
    let parked = || metrics.files_parked.load(Ordering::Relaxed);
    write(&mut sink, 0..300);
    sink.snapshot(1).unwrap();
    sink.checkpoint_complete(1).unwrap();
    assert_eq!(
        parked(),
        0,
        "every file was written before the first checkpoint"
    );
    // Only the `eu` bucket (ids divisible by 3) gets records until the next checkpoint.
    let eu_only: Vec<i64> = (300..600).step_by(3).collect();
    for &id in &eu_only {
        sink.process(record(id), &mut NoOutput).unwrap();
    }
    let state2 = sink.snapshot(2).unwrap().unwrap();
    assert_eq!(parked(), 2, "the `us` and `ap/south` files were idle");
    let in_progress = SinkState::decode(&state2).unwrap().in_progress;
    assert_eq!(
        in_progress.len(),
        3,
        "parked files stay in progress: {in_progress:?}"
    );
    sink.checkpoint_complete(2).unwrap();
    assert_eq!(
        h.objects("out/").len(),
        0,
        "nothing rolled, nothing published"
    );

    // Every bucket again: the parked files are resumed where they were.
    write(&mut sink, 600..900);
    if crash {
        std::mem::forget(sink);
        sink = h.start(&config, Some(&state2), 1);
        // The source replays from checkpoint 2's position.
        write(&mut sink, 600..900);
    }
    finish_and_commit(&mut sink, 3);
    let mut expected: Vec<i64> = (0..300).chain(eu_only).chain(600..900).collect();
    expected.sort_unstable();
    assert_eq!(
        published_ids(h, Format::Json),
        expected,
        "every row exactly once"
    );
    assert_eq!(
        h.objects("out/").len(),
        3,
        "one file per bucket: a parked file is resumed, not replaced"
    );
    assert_clean(h);
}

#[test]
fn idle_files_are_parked_at_a_checkpoint_and_resumed_by_their_next_write() {
    idle_files_are_parked_and_resumed(&Harness::memory(), false);
    idle_files_are_parked_and_resumed(&Harness::local(), false);
}

#[test]
fn a_restore_from_a_checkpoint_with_parked_files_resumes_them() {
    idle_files_are_parked_and_resumed(&Harness::memory(), true);
    idle_files_are_parked_and_resumed(&Harness::local(), true);
}

#[test]
fn the_files_of_a_checkpoint_are_closed_and_published_together() {
    // Every store call takes 20-30 ms, as over a network: one file after another, a checkpoint
    // would pay a round trip per file to close them and another to publish them.
    let (h, faults) = Harness::slow(20..30);
    let mut sink = h.start(&config(Format::Json), None, 0);
    // Less than a part per bucket: the only part uploads are the closes' (each file's tail).
    // The first checkpoint opens the files (the closes below then only close them).
    write(&mut sink, 0..30);
    sink.snapshot(1).unwrap();
    sink.checkpoint_complete(1).unwrap();
    write(&mut sink, 30..60);
    assert_eq!(faults.calls(Op::UploadPart), 0);
    finish_and_commit(&mut sink, 2);
    assert_eq!(published_ids(&h, Format::Json), (0..60).collect::<Vec<_>>());
    assert_eq!(faults.calls(Op::UploadPart), 3, "one tail part per bucket");
    assert!(
        faults.max_concurrent(Op::UploadPart) >= 2,
        "the three files were closed one after another"
    );
    assert!(
        faults.max_concurrent(Op::CompleteMultipart) >= 2,
        "the three files were published one after another"
    );
    assert_clean(&h);
}

#[test]
fn at_most_32_files_are_persisted_closed_or_published_at_once() {
    let (h, faults) = Harness::slow(5..10);
    // A bucket per record: 50 files to close and publish at the end.
    let config = FileSinkConfig {
        bucket: BucketAssigner::Field { index: 0 },
        ..config(Format::Json)
    };
    let mut sink = h.start(&config, None, 0);
    // The first checkpoint opens the files (one after another); the next rounds of records
    // keep them written, so that none is parked: the second checkpoint persists 50 open files
    // and the end closes them.
    for checkpoint in 1..=2 {
        write(&mut sink, 0..50);
        sink.snapshot(checkpoint).unwrap();
        sink.checkpoint_complete(checkpoint).unwrap();
    }
    write(&mut sink, 0..50);
    finish_and_commit(&mut sink, 3);
    assert_eq!(h.objects("out/").len(), 50);
    // Puts are the tails the persists stage.
    for op in [Op::Put, Op::UploadPart, Op::CompleteMultipart] {
        let most = faults.max_concurrent(op);
        assert!((2..=32).contains(&most), "{op:?}: {most} at once");
    }
    assert_clean(&h);
}

#[test]
fn a_restore_publishes_the_checkpoints_pending_files_and_cuts_the_rest() {
    let h = Harness::memory();
    let config = FileSinkConfig {
        rolling: RollingPolicy {
            max_part_size: 6_000,
            ..RollingPolicy::default()
        },
        ..config(Format::Json)
    };
    let mut sink = h.start(&config, None, 0);
    write(&mut sink, 0..400);
    let state = sink.snapshot(1).unwrap().unwrap();
    write(&mut sink, 400..1200);
    // Leftovers of the crashed attempt: files rolled after the checkpoint, open uploads.
    let before_crash = h.open_uploads().len();
    std::mem::forget(sink);
    let decoded = SinkState::decode(&state).unwrap();
    let pending = decoded.pending[&1].len();
    let in_progress = decoded.in_progress.len();
    assert!(pending > 0 && in_progress > 0);
    assert!(before_crash > pending + in_progress, "{before_crash}");

    let sink = h.start(&config, Some(&state), 1);
    // Checkpoint 1's pending files are published; the in-progress ones stay open, cut back;
    // everything the crashed attempt started after the checkpoint is aborted.
    assert_eq!(h.objects("out/").len(), pending);
    assert_eq!(h.open_uploads().len(), in_progress);
    let published = published_ids(&h, Format::Json);
    assert!(published.iter().all(|id| *id < 400));
    assert_eq!(
        sink.metrics().files_finished.load(Ordering::Relaxed),
        pending as u64
    );
}

#[test]
fn crash_after_snapshot_is_exactly_once_on_memory_store() {
    crash_after_snapshot(&Harness::memory());
}

#[test]
fn crash_after_snapshot_is_exactly_once_under_store_faults() {
    let (h, faults) = Harness::faulty();
    crash_after_snapshot_checked(&h, || faults.set_config(FaultConfig::default()));
}

#[test]
fn crash_after_snapshot_is_exactly_once_on_local_store() {
    crash_after_snapshot(&Harness::local());
}

#[test]
fn crash_between_completion_and_restore_is_exactly_once() {
    let h = Harness::memory();
    let config = FileSinkConfig {
        rolling: RollingPolicy {
            max_part_size: 6_000,
            ..RollingPolicy::default()
        },
        ..config(Format::Json)
    };
    let mut sink = h.start(&config, None, 0);
    write(&mut sink, 0..500);
    let state1 = sink.snapshot(1).unwrap().unwrap();
    // The checkpoint completes and its pending files are published, then the task dies.
    sink.checkpoint_complete(1).unwrap();
    let published = h.objects("out/");
    assert!(!published.is_empty());
    write(&mut sink, 500..600);
    std::mem::forget(sink);

    // Restored from the same checkpoint: its pending files are already published.
    let mut sink = h.start(&config, Some(&state1), 1);
    let metrics = sink.metrics();
    assert_eq!(h.objects("out/"), published, "republished or changed");
    assert_eq!(metrics.files_finished.load(Ordering::Relaxed), 0);
    write(&mut sink, 500..700);
    finish_and_commit(&mut sink, 2);
    assert_eq!(
        published_ids(&h, Format::Json),
        (0..700).collect::<Vec<_>>()
    );
    assert_clean(&h);

    // A second restore from the same state after everything was published fails loudly
    // rather than publishing twice: the in-progress files of checkpoint 1 are committed.
    let mut again = FileSink::new(config.clone(), schema()).unwrap();
    let err = again.restore(&h.ctx(2), &state1).unwrap_err();
    assert!(matches!(err, EngineError::Writer(_)), "{err}");
}

#[test]
fn a_declined_checkpoints_files_are_published_by_the_next_one() {
    let h = Harness::memory();
    let config = FileSinkConfig {
        rolling: RollingPolicy {
            roll_on_checkpoint: true,
            ..RollingPolicy::default()
        },
        ..config(Format::Json)
    };
    let mut sink = h.start(&config, None, 0);
    write(&mut sink, 0..30);
    sink.snapshot(1).unwrap();
    // Checkpoint 1 is declined: no completion.
    write(&mut sink, 30..60);
    let state2 = sink.snapshot(2).unwrap().unwrap();
    assert!(h.objects("out/").is_empty());
    sink.checkpoint_complete(2).unwrap();
    assert_eq!(h.objects("out/").len(), 6);
    assert_eq!(published_ids(&h, Format::Json), (0..60).collect::<Vec<_>>());
    // A late completion of the declined checkpoint changes nothing.
    sink.checkpoint_complete(1).unwrap();
    assert_eq!(h.objects("out/").len(), 6);
    assert_clean(&h);

    // Checkpoint 2's state covered checkpoint 1's files too: restoring it is idempotent.
    let mut restored = h.start(&config, Some(&state2), 1);
    finish_and_commit(&mut restored, 3);
    assert_eq!(published_ids(&h, Format::Json), (0..60).collect::<Vec<_>>());
    assert_clean(&h);
}

#[test]
fn older_retained_checkpoints_stay_restorable_and_older_tails_go() {
    let h = Harness::memory();
    let config = FileSinkConfig {
        bucket: BucketAssigner::Field { index: 1 },
        retained_checkpoints: 2,
        ..config(Format::Json)
    };
    let mut sink = h.start(&config, None, 0);
    let mut states = Vec::new();
    for cp in 1..=4u64 {
        write(&mut sink, (cp as i64 - 1) * 30..cp as i64 * 30);
        states.push(sink.snapshot(cp).unwrap().unwrap());
        sink.checkpoint_complete(cp).unwrap();
    }
    // Three in-progress files, persisted at every checkpoint: the tails of the last two
    // completed checkpoints stay, older ones are deleted.
    assert_eq!(h.tails(), 3 * 2);
    // Checkpoint 5 is taken but not completed: its tails stay too (it may still complete).
    write(&mut sink, 120..150);
    sink.snapshot(5).unwrap();
    assert_eq!(h.tails(), 3 * 3);
    std::mem::forget(sink);

    // Restoring checkpoint 3, not the latest, works: its tails are still there.
    let mut sink = h.start(&config, Some(&states[2]), 1);
    write(&mut sink, 90..100);
    finish_and_commit(&mut sink, 6);
    assert_eq!(
        published_ids(&h, Format::Json),
        (0..100).collect::<Vec<_>>()
    );
    assert_clean(&h);
}

#[test]
fn a_restarting_subtask_leaves_the_other_subtasks_uploads_alone() {
    let h = Harness::memory();
    let config = config(Format::Json);
    let start = |subtask: usize| {
        let mut sink = FileSink::new(config.clone(), schema()).unwrap();
        sink.open(&h.subtask_ctx(subtask, 2, 0)).unwrap();
        sink
    };
    let mut zero = start(0);
    let mut one = start(1);
    // Enough for both to start part files (a buffer is handed over at 256 KiB).
    write(&mut zero, 0..12000);
    write(&mut one, 12000..24000);
    one.snapshot(1).unwrap();
    let open_of_one = h.open_uploads();
    assert_eq!(open_of_one.len(), 3 + 3, "{open_of_one:?}");
    // Subtask 0 dies before any checkpoint and starts again from nothing: its own uploads
    // are aborted, subtask 1's are not.
    std::mem::forget(zero);
    let mut zero = start(0);
    let open: Vec<String> = h.open_uploads();
    assert_eq!(open.len(), 3, "{open:?}");
    assert!(open.iter().all(|k| k.contains("/part-test-1-")), "{open:?}");
    write(&mut zero, 0..12000);
    finish_and_commit(&mut zero, 2);
    finish_and_commit(&mut one, 2);
    assert_eq!(published_ids_of(&h), (0..24000).collect::<Vec<_>>());
    assert_clean(&h);
}

#[test]
fn an_empty_run_publishes_nothing_and_leaves_nothing() {
    let h = Harness::memory();
    let mut sink = h.start(&config(Format::Json), None, 0);
    sink.snapshot(1).unwrap();
    sink.checkpoint_complete(1).unwrap();
    finish_and_commit(&mut sink, 2);
    assert!(h.objects("").is_empty());
    assert_clean(&h);
}

#[test]
fn a_taken_name_is_skipped_not_replaced() {
    let h = Harness::memory();
    h.rt.block_on(h.store.put(
        "out/eu/part-test-0-0.jsonl",
        bytes::Bytes::from_static(b"someone else's\n"),
        Default::default(),
    ))
    .unwrap();
    let mut sink = h.start(&config(Format::Json), None, 0);
    write(&mut sink, 0..1);
    finish_and_commit(&mut sink, 1);
    let objects = h.objects("out/");
    assert_eq!(objects["out/eu/part-test-0-0.jsonl"], b"someone else's\n");
    assert!(objects.contains_key("out/eu/part-test-0-1.jsonl"));
}

#[test]
fn bad_state_and_bad_config_are_typed_errors() {
    let h = Harness::memory();
    let mut sink = FileSink::new(config(Format::Json), schema()).unwrap();
    let err = sink.restore(&h.ctx(0), b"garbage").unwrap_err();
    assert!(matches!(err, EngineError::State { .. }), "{err}");

    let mut sink = FileSink::new(config(Format::Json), schema()).unwrap();
    let err = sink.process(record(0), &mut NoOutput).unwrap_err();
    assert!(err.to_string().contains("before restore or open"), "{err}");

    for bad in [
        FileSinkConfig {
            part_prefix: "a/b".into(),
            ..config(Format::Json)
        },
        FileSinkConfig {
            retained_checkpoints: 0,
            ..config(Format::Json)
        },
        FileSinkConfig {
            bucket: BucketAssigner::Field { index: 9 },
            ..config(Format::Json)
        },
        FileSinkConfig {
            path: "a/../b".into(),
            ..config(Format::Json)
        },
        FileSinkConfig {
            rolling: RollingPolicy {
                rollover_interval: Duration::ZERO,
                ..RollingPolicy::default()
            },
            ..config(Format::Json)
        },
    ] {
        let err = FileSink::new(bad.clone(), schema()).err().unwrap();
        assert!(matches!(err, EngineError::Job { .. }), "{bad:?}: {err}");
    }
}

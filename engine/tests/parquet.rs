//! Parquet output of the file sink, against real fs-core writers: every type and null read
//! back with the parquet reader, one file per bucket per checkpoint, exactly once across a
//! crash after a snapshot (no Parquet file is ever resumed), no empty file published, and the
//! job-file rules for the format.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, TimestampMillisecondType};
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType as ArrowType, TimeUnit};
use bytes::Bytes;
use engine::EngineError;
use engine::data::{DataType, Field, Record, Row, Schema, SchemaRef, Timestamp, Value};
use engine::format::Format;
use engine::operator::{Operator, Output, TaskContext};
use engine::sink::state::SinkState;
use engine::sink::{BucketAssigner, FileSink, FileSinkConfig, RollingPolicy};
use fs_core::retry::RetryPolicy;
use fs_core::store::fault::{FaultConfig, FaultStore};
use fs_core::store::local::LocalStore;
use fs_core::store::memory::MemoryStore;
use fs_core::store::{DynStore, ObjectStoreExt};
use fs_core::{Index, RecoverableWriter, WriterConfig};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

struct NoOutput;

impl Output for NoOutput {
    fn emit(&mut self, _record: Record) -> Result<(), EngineError> {
        Ok(())
    }
    fn watermark(&mut self, _watermark: Timestamp) -> Result<(), EngineError> {
        Ok(())
    }
}

fn faults() -> FaultConfig {
    FaultConfig {
        error_rate: 0.05,
        lost_answer_rate: 0.05,
        ..FaultConfig::default()
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
        Self::over(
            Arc::new(MemoryStore::new().with_min_part_size(4096)),
            4096,
            None,
            None,
        )
    }

    /// A local store over a temporary directory (S3's 5 MiB parts).
    fn local() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path().join("store")).unwrap();
        Self::over(Arc::new(store), 5 * 1024 * 1024, Some(dir), None)
    }

    /// A memory store behind a fault injector (transient errors, lost answers), retried
    /// quickly by the writer.
    fn faulty() -> (Self, Arc<FaultStore>) {
        let inner: DynStore = Arc::new(MemoryStore::new().with_min_part_size(4096));
        let faults = Arc::new(FaultStore::new(inner, faults()));
        let retry = RetryPolicy {
            max_attempts: 40,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(4),
        };
        (Self::over(faults.clone(), 4096, None, Some(retry)), faults)
    }

    /// Runs the test's own reads of the store without injected faults (the writer retries;
    /// the test does not).
    fn quiet<T>(&self, faults: Option<&FaultStore>, check: impl FnOnce() -> T) -> T {
        if let Some(f) = faults {
            f.set_config(FaultConfig::default());
        }
        let got = check();
        if let Some(f) = faults {
            f.set_config(self::faults());
        }
        got
    }

    fn over(
        store: DynStore,
        part_size: u64,
        dir: Option<tempfile::TempDir>,
        retry: Option<RetryPolicy>,
    ) -> Self {
        let dir = dir.unwrap_or_else(|| tempfile::tempdir().unwrap());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut config = WriterConfig {
            part_size,
            cache_parts: false,
            cache_dir: dir.path().join("cache"),
            ..WriterConfig::default()
        };
        if let Some(retry) = retry {
            config.retry = retry;
        }
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
        TaskContext {
            job_id: "job".into(),
            job_name: "test".into(),
            operator_id: "sink".into(),
            subtask: 0,
            parallelism: 1,
            attempt,
            writer: self.writer.clone(),
            runtime: self.rt.handle().clone(),
        }
    }

    /// Every published object under `out/`, by key.
    fn objects(&self) -> BTreeMap<String, Vec<u8>> {
        self.rt.block_on(async {
            let mut out = BTreeMap::new();
            for o in self.store.list_all("out/").await.unwrap() {
                let got = self.store.get(&o.key, None).await.unwrap();
                out.insert(o.key, got.body.to_vec());
            }
            out
        })
    }

    fn open_uploads(&self) -> usize {
        self.rt
            .block_on(self.store.list_all_uploads(""))
            .unwrap()
            .len()
    }

    fn tails(&self) -> usize {
        self.rt
            .block_on(self.store.list_all(".rivulet/tails/"))
            .unwrap()
            .len()
    }

    fn assert_clean(&self) {
        assert_eq!(self.open_uploads(), 0, "open uploads left");
        assert_eq!(self.tails(), 0, "tails left");
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

/// A field of every type; `region` is the bucket.
fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int),
        Field::new("region", DataType::String),
        Field::new("price", DataType::Float),
        Field::new("ok", DataType::Bool),
        Field::new("note", DataType::String),
        Field::new("at", DataType::Timestamp),
    ]))
}

const REGIONS: [&str; 3] = ["eu", "us", "ap/south"];
const T0: Timestamp = 1_764_064_800_000;

/// Row `id`: each nullable field is null on its own period, so every column holds nulls next
/// to values, and rows with several nulls occur too.
fn row(id: i64) -> Row {
    let or_null = |null: bool, v: Value| if null { Value::Null } else { v };
    vec![
        Value::Int(id),
        Value::Str(REGIONS[(id % 3) as usize].into()),
        or_null(id % 5 == 1, Value::Float(id as f64 * 0.25 - 100.0)),
        or_null(id % 7 == 2, Value::Bool(id % 2 == 0)),
        or_null(
            id % 4 == 3,
            Value::Str(format!("note {id}, \"quoted\", ünïcödé, padded to make files grow").into()),
        ),
        or_null(id % 6 == 4, Value::Time(T0 + id * 1_001)),
    ]
}

fn write(sink: &mut FileSink, ids: std::ops::Range<i64>) {
    for id in ids {
        sink.process(Record::new(T0 + id, row(id)), &mut NoOutput)
            .unwrap();
    }
}

fn config() -> FileSinkConfig {
    FileSinkConfig {
        bucket: BucketAssigner::Field { index: 1 },
        part_prefix: "part-test".into(),
        ..FileSinkConfig::new("out", Format::Parquet)
    }
}

fn finish_and_commit(sink: &mut FileSink, checkpoint: u64) {
    sink.finish(&mut NoOutput).unwrap();
    sink.snapshot(checkpoint).unwrap();
    sink.checkpoint_complete(checkpoint).unwrap();
}

/// Reads a Parquet object back into rows, checking the Arrow schema on the way.
fn read_rows(key: &str, body: &[u8]) -> Vec<Row> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(Bytes::copy_from_slice(body))
        .unwrap_or_else(|e| panic!("{key} is not a parquet file: {e}"));
    let arrow = builder.schema().clone();
    let expected = [
        ("id", ArrowType::Int64),
        ("region", ArrowType::Utf8),
        ("price", ArrowType::Float64),
        ("ok", ArrowType::Boolean),
        ("note", ArrowType::Utf8),
        (
            "at",
            ArrowType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        ),
    ];
    assert_eq!(arrow.fields().len(), expected.len(), "{key}");
    for (field, (name, data_type)) in arrow.fields().iter().zip(expected) {
        assert_eq!(field.name(), name, "{key}");
        assert_eq!(field.data_type(), &data_type, "{key}: {name}");
        assert!(field.is_nullable(), "{key}: {name}");
    }
    let mut rows = Vec::new();
    for batch in builder.build().unwrap() {
        rows.extend(batch_rows(&batch.unwrap()));
    }
    rows
}

fn batch_rows(batch: &RecordBatch) -> Vec<Row> {
    let ids = batch.column(0).as_primitive::<Int64Type>();
    let regions = batch.column(1).as_string::<i32>();
    let prices = batch.column(2).as_primitive::<Float64Type>();
    let oks = batch.column(3).as_boolean();
    let notes = batch.column(4).as_string::<i32>();
    let ats = batch.column(5).as_primitive::<TimestampMillisecondType>();
    (0..batch.num_rows())
        .map(|i| {
            let value = |null: bool, v: Value| if null { Value::Null } else { v };
            vec![
                value(ids.is_null(i), Value::Int(ids.value(i))),
                value(regions.is_null(i), Value::Str(regions.value(i).into())),
                value(prices.is_null(i), Value::Float(prices.value(i))),
                value(oks.is_null(i), Value::Bool(oks.value(i))),
                value(notes.is_null(i), Value::Str(notes.value(i).into())),
                value(ats.is_null(i), Value::Time(ats.value(i))),
            ]
        })
        .collect()
}

/// The ids of every published row, sorted, after checking that each row reads back as it was
/// written and sits in its bucket under a `.parquet` name.
fn published_ids(h: &Harness) -> Vec<i64> {
    let mut ids = Vec::new();
    for (key, body) in h.objects() {
        assert!(key.ends_with(".parquet"), "{key}");
        let rows = read_rows(&key, &body);
        assert!(!rows.is_empty(), "{key} is an empty file");
        for r in rows {
            let Value::Int(id) = r[0] else {
                panic!("{key}: a row without an id: {r:?}")
            };
            assert_eq!(r, row(id), "{key}");
            let bucket = REGIONS[(id % 3) as usize].replace('/', "_");
            assert!(
                key.starts_with(&format!("out/{bucket}/part-test-0-")),
                "{key} holds id {id}"
            );
            ids.push(id);
        }
    }
    ids.sort_unstable();
    ids
}

#[test]
fn every_type_and_null_round_trips() {
    let h = Harness::memory();
    let mut sink = h.start(&config(), None, 0);
    let metrics = sink.metrics();
    // Several record batches per file (4096 rows each) and a few row groups.
    let n = 20_000;
    write(&mut sink, 0..n);
    finish_and_commit(&mut sink, 1);
    let objects = h.objects();
    assert_eq!(objects.len(), 3, "{:?}", objects.keys());
    assert_eq!(published_ids(&h), (0..n).collect::<Vec<_>>());
    assert_eq!(metrics.records_written.load(Ordering::Relaxed), n as u64);
    assert_eq!(metrics.files_finished.load(Ordering::Relaxed), 3);
    let bytes: usize = objects.values().map(Vec::len).sum();
    assert_eq!(metrics.bytes_written.load(Ordering::Relaxed), bytes as u64);
    h.assert_clean();
}

#[test]
fn values_are_widened_like_the_row_formats_and_mismatches_are_typed_errors() {
    let h = Harness::memory();
    let mut sink = h.start(&config(), None, 0);
    // An int in the float and timestamp columns is written as their value.
    let mut widened = row(0);
    widened[2] = Value::Int(3);
    widened[5] = Value::Int(T0);
    sink.process(Record::new(T0, widened), &mut NoOutput)
        .unwrap();
    let mut bad = row(3);
    bad[3] = Value::Str("yes".into());
    let err = sink
        .process(Record::new(T0, bad), &mut NoOutput)
        .unwrap_err();
    assert!(
        matches!(err, EngineError::Encode { .. }) && err.to_string().contains("`ok`"),
        "{err}"
    );
    finish_and_commit(&mut sink, 1);
    let objects = h.objects();
    assert_eq!(objects.len(), 1, "{:?}", objects.keys());
    let (key, body) = objects.iter().next().unwrap();
    let rows = read_rows(key, body);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0][2], Value::Float(3.0));
    assert_eq!(rows[0][5], Value::Time(T0));
    h.assert_clean();
}

#[test]
fn every_checkpoint_rolls_one_file_per_bucket() {
    let h = Harness::memory();
    // Rolling on checkpoints is off in the configuration: Parquet forces it.
    let config = FileSinkConfig {
        rolling: RollingPolicy {
            roll_on_checkpoint: false,
            ..RollingPolicy::default()
        },
        ..config()
    };
    let mut sink = h.start(&config, None, 0);
    let mut published = 0;
    for checkpoint in 1..=3 {
        let from = (checkpoint as i64 - 1) * 30;
        write(&mut sink, from..from + 30);
        let state = SinkState::decode(&sink.snapshot(checkpoint).unwrap().unwrap()).unwrap();
        // Nothing is in progress across a checkpoint; each bucket's file is pending.
        assert!(state.in_progress.is_empty(), "{:?}", state.in_progress);
        assert_eq!(state.pending[&checkpoint].len(), 3);
        assert_eq!(h.objects().len(), published, "published before completion");
        sink.checkpoint_complete(checkpoint).unwrap();
        published += 3;
        assert_eq!(h.objects().len(), published);
        h.assert_clean();
    }
    // A checkpoint with no new rows publishes nothing and holds nothing.
    let state = SinkState::decode(&sink.snapshot(4).unwrap().unwrap()).unwrap();
    assert!(state.in_progress.is_empty() && state.pending.is_empty());
    sink.checkpoint_complete(4).unwrap();
    assert_eq!(h.objects().len(), 9);
    assert_eq!(published_ids(&h), (0..90).collect::<Vec<_>>());
    h.assert_clean();
}

/// Checkpoint 1 completes, checkpoint 2 is taken but its completion never seen, the task
/// crashes with more written (in-progress Parquet files and files rolled by size). The
/// restored task publishes checkpoint 2's files, resumes nothing, aborts the crashed
/// attempt's uploads, and the replayed input lands exactly once.
fn crash_after_snapshot(h: &Harness, faults: Option<&FaultStore>) {
    let config = FileSinkConfig {
        rolling: RollingPolicy {
            max_part_size: 40_000,
            ..RollingPolicy::default()
        },
        ..config()
    };
    let mut sink = h.start(&config, None, 0);
    write(&mut sink, 0..6_000);
    sink.snapshot(1).unwrap();
    sink.checkpoint_complete(1).unwrap();
    write(&mut sink, 6_000..12_000);
    let state2 = sink.snapshot(2).unwrap().unwrap();
    let decoded = SinkState::decode(&state2).unwrap();
    assert!(decoded.in_progress.is_empty(), "{:?}", decoded.in_progress);
    let pending2 = decoded.pending[&2].len();
    assert!(pending2 >= 3, "{pending2}");
    let published1 = h.quiet(faults, || h.objects().len());
    // Past the size limit: some files of the crashed attempt were rolled, others are open.
    write(&mut sink, 12_000..24_000);
    std::mem::forget(sink);
    assert!(h.quiet(faults, || h.open_uploads()) > pending2);

    let mut sink = h.start(&config, Some(&state2), 1);
    // Checkpoint 2's files are published; nothing else of the crashed attempt is open.
    h.quiet(faults, || {
        assert_eq!(h.objects().len(), published1 + pending2);
        assert_eq!(h.open_uploads(), 0);
    });
    // The source replays from checkpoint 2's position.
    write(&mut sink, 12_000..30_000);
    sink.snapshot(3).unwrap();
    sink.checkpoint_complete(3).unwrap();
    write(&mut sink, 30_000..31_000);
    finish_and_commit(&mut sink, 4);
    if let Some(f) = faults {
        f.set_config(FaultConfig::default());
    }
    assert_eq!(
        published_ids(h),
        (0..31_000).collect::<Vec<_>>(),
        "every row exactly once"
    );
    h.assert_clean();
}

#[test]
fn crash_after_snapshot_is_exactly_once_on_memory_store() {
    crash_after_snapshot(&Harness::memory(), None);
}

#[test]
fn crash_after_snapshot_is_exactly_once_on_local_store() {
    crash_after_snapshot(&Harness::local(), None);
}

#[test]
fn crash_after_snapshot_is_exactly_once_under_store_faults() {
    let (h, faults) = Harness::faulty();
    crash_after_snapshot(&h, Some(&faults));
}

#[test]
fn a_restore_into_parquet_refuses_an_in_progress_file() {
    let h = Harness::memory();
    // A JSON sink's state lists its in-progress files; a Parquet sink cannot resume them.
    let json = FileSinkConfig {
        format: Format::Json,
        ..config()
    };
    let mut sink = h.start(&json, None, 0);
    write(&mut sink, 0..10);
    let state = sink.snapshot(1).unwrap().unwrap();
    assert!(!SinkState::decode(&state).unwrap().in_progress.is_empty());
    drop(sink);
    let mut sink = FileSink::new(config(), schema()).unwrap();
    let err = sink.restore(&h.ctx(1), &state).unwrap_err();
    assert!(
        matches!(err, EngineError::State { .. }) && err.to_string().contains("cannot be resumed"),
        "{err}"
    );
}

#[test]
fn an_empty_part_file_is_not_published() {
    let h = Harness::memory();
    let mut sink = h.start(&config(), None, 0);
    // A checkpoint and an end with no rows publish nothing.
    sink.snapshot(1).unwrap();
    sink.checkpoint_complete(1).unwrap();
    // A refused first row leaves its bucket with a started Parquet part of no rows.
    let mut bad = row(0);
    bad[0] = Value::Str("not an id".into());
    let err = sink
        .process(Record::new(T0, bad), &mut NoOutput)
        .unwrap_err();
    assert!(matches!(err, EngineError::Encode { .. }), "{err}");
    sink.snapshot(2).unwrap();
    sink.checkpoint_complete(2).unwrap();
    finish_and_commit(&mut sink, 3);
    assert!(h.objects().is_empty(), "{:?}", h.objects().keys());
    assert_eq!(sink.metrics().files_finished.load(Ordering::Relaxed), 0);
    assert_eq!(sink.metrics().bytes_written.load(Ordering::Relaxed), 0);
    h.assert_clean();
}

const JOB: &str = r#"
name = "parquet"
[[source]]
id = "bids"
kind = "nexmark"
count = 10
[[sink]]
id = "out"
kind = "file"
path = "out/bids"
format = "parquet"
"#;

#[test]
fn job_files_take_parquet_sinks_and_refuse_parquet_sources() {
    let spec = engine::job::parse(JOB).unwrap();
    engine::job::compile(&spec, "parquet-1").unwrap();
    let explicit = format!("{JOB}roll_on_checkpoint = true\n");
    engine::job::compile(&engine::job::parse(&explicit).unwrap(), "parquet-1").unwrap();

    let off = format!("{JOB}roll_on_checkpoint = false\n");
    let err = engine::job::compile(&engine::job::parse(&off).unwrap(), "parquet-1")
        .err()
        .unwrap();
    assert!(
        matches!(&err, EngineError::Job { at, .. } if at == "sink out.roll_on_checkpoint"),
        "{err}"
    );

    let source = r#"
name = "parquet-in"
[[source]]
id = "in"
kind = "files"
prefix = "in/"
format = "parquet"
schema = ["id:int"]
[[sink]]
kind = "discard"
"#;
    let err = engine::job::compile(&engine::job::parse(source).unwrap(), "parquet-2")
        .err()
        .unwrap();
    assert!(
        matches!(&err, EngineError::Job { at, .. } if at == "source in.format"),
        "{err}"
    );
}

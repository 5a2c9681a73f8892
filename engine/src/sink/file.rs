//! The exactly-once bucketed file sink: Flink's `FileSink` over fs-core's recoverable writer.
//!
//! ## A part file's life
//!
//! ```text
//!  in-progress ──roll (size, time, checkpoint, finish)──▶ pending ──checkpoint complete──▶ finished
//!  (open upload on the final key,                       (closed: a commit     (the object,
//!   invisible; persisted at each checkpoint)             token in the state)   published atomically)
//! ```
//!
//! Records are encoded into a per-bucket buffer and handed to the bucket's [`FileWriter`] in
//! chunks, so the task thread enters the async runtime once per chunk, not once per record.
//! Row formats (JSON, CSV) append each record as a line; Parquet keeps a per-file encoder in
//! the bucket ([`ParquetPart`]) that appends bytes to the buffer as they become final and the
//! footer when the file rolls.
//! At a checkpoint every in-progress file is either rolled or persisted (its resume token goes
//! into the state), and every pending file not yet published goes into the state, grouped by
//! the checkpoint that made it pending. When checkpoint `n` completes, the groups up to `n` are
//! committed; groups of a declined checkpoint are thus published by the next completed one.
//! The store calls of many files at once (a checkpoint's persists and rolls, the rolls of
//! the end or of an inactivity tick, a checkpoint's commits) run in the background together
//! and are awaited together: on a store with network latency they cost about one round trip,
//! not one per file.
//!
//! ## Restore
//!
//! The restored state is that of a completed checkpoint, so its pending files are committed
//! first (`commit_after_recovery`, which recognises a file the crashed attempt had already
//! published). Each in-progress file is resumed from its token: fs-core truncates it to the
//! checkpointed length, so whatever the crashed attempt wrote after the checkpoint is gone and
//! is written again from the replayed input.
//!
//! ## Bulk formats
//!
//! A Parquet file cannot be resumed: its footer, written last, describes everything before
//! it. So with a bulk format the sink rolls every part file at every checkpoint (the rolling
//! policy's `roll_on_checkpoint` is forced on, as Flink does for its bulk formats): a
//! checkpoint's state then lists pending Parquet files only, never an in-progress one, and a
//! restore publishes those and starts new files. A state that does list one (not written by
//! this sink) is refused rather than resumed into a corrupt file.
//!
//! ## Why a part file name is never published twice with different content
//!
//! Names are `<path>/<bucket>/<part_prefix>-<subtask>-<counter>.<ext>`; the counter only grows
//! and is in the state. A restored attempt continues from the checkpoint's counter, so it may
//! reuse names that the crashed attempt started after that checkpoint. Those files were never
//! published: publishing happens only for checkpoints up to the completed one being restored,
//! whose files all have smaller counters. They are open uploads, and three things make reusing
//! their names safe:
//!
//! 1. At `open`, every open upload under the sink's path that carries this subtask's name
//!    pattern and is not referenced by the restored state is aborted, before anything is
//!    written. The crashed attempt's commit tokens for them (in the state of a checkpoint that
//!    never completed) can then never be completed, and nothing is left behind. (The same
//!    sweep runs once a finished sink has published everything, for uploads that a lost answer
//!    to a create call left behind.)
//! 2. Every part file is created with "create only" (`If-None-Match: *`) as its commit
//!    condition, so even an upload that escaped step 1 (a zombie task still running) cannot
//!    replace a published object, nor can ours replace one: a conflicting commit fails loudly.
//! 3. A new part file skips any name that already has an object (a job restored from an older
//!    checkpoint, whose later files were published, continues after them).
//!
//! Offsetting the counter by the restart attempt instead would avoid reuse only while attempts
//! are numbered consistently across processes, leave the stale uploads behind, and still not
//! cover restoring an older checkpoint; the three steps above hold regardless.
//!
//! ## Idle files
//!
//! An in-progress file holds up to a part (8 MiB by default) of memory in its writer, and a job
//! can have many: every minute of event time is a bucket of its own with a pattern like
//! Nexmark q10's, and a bucket stays until its file rolls (after a minute of inactivity by
//! default). So a file that got nothing since the last checkpoint is parked at the next one:
//! its writer is dropped and only its resume token is kept, which the checkpoint's state holds
//! anyway. Its next write, or its roll, resumes it from that token (`recover`: a listing of the
//! upload's parts and a read of the tail). Its bytes are all in the store by then: the token
//! was persisted, and nothing was written after it.
//!
//! Between checkpoints, a bucket that got no record for 200 ms (a tick) lets go of what it
//! holds beyond its bytes: its encoded records go to its file, and the file's writer keeps its
//! tail in a buffer of the tail's size, handing the part-sized one back to the writers of the
//! sink's service (`FileWriter::shrink_idle_buffer`). The next file to fill a part reuses that
//! buffer: a fresh one costs a page fault and the zeroing of a page for every 4 KiB it fills,
//! about 7% of a q10 run's CPU samples when every minute bucket kept its own.
//!
//! ## Cancelled runs
//!
//! A run the user cancels is never resumed (running the job again starts a new run), so its
//! files in progress would be garbage: open uploads with their tails and index entries. Once
//! the subtask has stopped, the runtime calls [`Operator::abandon`] with the latest
//! checkpoint the job master completed (only for a user's cancel: an attempt that fails, or
//! a task manager that is lost, keeps everything for the next attempt to resume). The sink
//! then publishes the files pending for checkpoints up to that one (its notice may not have
//! arrived; publishing is idempotent) and aborts every other file it holds: those in progress
//! (parked ones from their token), those pending for a checkpoint that did not complete, and
//! those rolled since the last one. fs-core's abort deletes the upload's tails and its index
//! entry. The calls run together, 32 at a time, until a deadline; what fails or is out of
//! time is logged with its key and left for `rivulet recover --abort`.
//!
//! ## Tails
//!
//! Each persist stages a small tail object. Flink deletes a checkpoint's tails one checkpoint
//! later, so restoring an older retained checkpoint fails. Here the tails of a snapshot are
//! kept while it may still be restored: while it is newer than the latest completed checkpoint
//! (it may complete yet), or is one of the last `retained_checkpoints` completed ones. Tails
//! of files that are published or aborted are deleted by fs-core with their upload.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use fs_core::store::{ObjectStoreExt, StoreErrorKind};
use fs_core::{Committer, FileWriter, RecoverableWriter, ResumeToken};

use super::SinkMetrics;
use super::bucket::{BucketAssigner, Bucketer};
use super::buckets::Buckets;
use super::parquet::{ParquetLayout, ParquetPart};
use super::rolling::RollingPolicy;
use super::state::{InProgressState, SinkState};
use crate::data::{Record, SchemaRef, Timestamp};
use crate::error::EngineError;
use crate::format::Format;
use crate::operator::{Operator, Output, TaskContext};

/// Encoded records are handed to the file writer once a bucket's buffer holds this much.
const CHUNK_SIZE: usize = 256 * 1024;

/// A bucket that got no record for this long lets go of its buffers (see "Idle files").
const IDLE_BUFFERS_AFTER_MS: Timestamp = 200;

/// How a [`FileSink`] writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSinkConfig {
    /// Store key prefix of every part file (a "directory"; no leading or trailing `/` needed).
    pub path: String,
    pub format: Format,
    pub bucket: BucketAssigner,
    /// With a bulk format (Parquet), `roll_on_checkpoint` is always on, whatever it says here.
    pub rolling: RollingPolicy,
    /// First part of every file name; give each run of a job its own (`part-<job uuid>`).
    /// Two file sinks that write under the same path at the same time need different
    /// prefixes: each treats open uploads named with its prefix as its own (see the module
    /// documentation).
    pub part_prefix: String,
    /// How many completed checkpoints stay restorable (their tails are kept).
    pub retained_checkpoints: usize,
}

impl FileSinkConfig {
    /// A configuration with the defaults: hourly processing-time buckets, Flink's rolling
    /// policy, `part` file names, three retained checkpoints.
    pub fn new(path: impl Into<String>, format: Format) -> Self {
        Self {
            path: path.into(),
            format,
            bucket: BucketAssigner::default(),
            rolling: RollingPolicy::default(),
            part_prefix: "part".to_string(),
            retained_checkpoints: 3,
        }
    }
}

/// The exactly-once bucketed file sink. See the module documentation.
pub struct FileSink {
    config: FileSinkConfig,
    schema: SchemaRef,
    encoder: PartEncoder,
    bucketer: Bucketer,
    /// `path` with a trailing `/` (empty for the store's root).
    base: String,
    metrics: Arc<SinkMetrics>,
    /// Records and bytes written since the counters in `metrics` were last updated: they are
    /// added once per chunk and per tick, not per record (two atomic additions a record were a
    /// visible share of its cost).
    unpublished: (u64, u64),
    /// Set by `restore` or `open`: the store side.
    files: Option<PartFiles>,
    /// Looked up once per record.
    buckets: Buckets<Bucket>,
    /// Files rolled since the last snapshot: the next snapshot makes them pending.
    rolled: Vec<Committer>,
    /// Files waiting for their checkpoint to complete, by the checkpoint that made them pending.
    pending: BTreeMap<u64, Vec<Committer>>,
    /// The in-progress tokens of each snapshot whose tails are kept, oldest first.
    snapshots: VecDeque<(u64, Vec<ResumeToken>)>,
    /// The latest completed checkpoints, oldest first (at most `retained_checkpoints`).
    completed: VecDeque<u64>,
    /// Uploads the restored state resumes: the stale-upload cleanup must keep them.
    restored_uploads: HashSet<String>,
    /// `finish` was called: once nothing is pending, no upload of this subtask is needed.
    finished: bool,
}

/// How records become bytes of part files.
enum PartEncoder {
    /// A row format: each record is appended to its bucket's buffer as a line; no per-file
    /// state.
    Rows(Format),
    /// Parquet: each in-progress file has its own [`ParquetPart`] in its bucket; they share
    /// this layout.
    Parquet(Arc<ParquetLayout>),
}

/// One bucket: its buffered records and its in-progress part file. A bucket "has a part" when
/// any of them holds something.
struct Bucket {
    /// `<base><bucket>/`
    dir: String,
    /// Encoded bytes not yet handed to `writer`.
    buffer: Vec<u8>,
    writer: Option<PartWriter>,
    /// Parquet only: the encoder of the in-progress file, from its first record to its roll.
    parquet: Option<ParquetPart>,
    /// When the current part got its first record (ms), for the rollover interval.
    started: Timestamp,
    last_write: Timestamp,
}

/// A bucket's in-progress part file.
struct PartWriter {
    /// `None` while the file is parked (see "Idle files" in the module documentation): still
    /// open in the store, as `last_token` left it, but holding no memory here. Its next write
    /// or its roll resumes it from that token.
    writer: Option<FileWriter>,
    /// The token of the last persist, handed out again when nothing was written since.
    last_token: Option<ResumeToken>,
    dirty: bool,
}

impl PartWriter {
    /// Bytes in the file.
    fn len(&self) -> u64 {
        match (&self.writer, &self.last_token) {
            (Some(writer), _) => writer.len(),
            (None, Some(token)) => token.len(),
            (None, None) => 0,
        }
    }
}

impl Bucket {
    fn new(dir: String, now: Timestamp) -> Self {
        Self {
            dir,
            buffer: Vec::new(),
            writer: None,
            parquet: None,
            started: now,
            last_write: now,
        }
    }

    fn has_part(&self) -> bool {
        self.writer.is_some() || !self.buffer.is_empty() || self.parquet.is_some()
    }

    /// Bytes written plus buffered, plus the estimated rest of a Parquet file.
    fn part_size(&self) -> u64 {
        self.writer.as_ref().map_or(0, PartWriter::len)
            + self.buffer.len() as u64
            + self.parquet.as_ref().map_or(0, ParquetPart::pending_size)
    }
}

impl FileSink {
    pub fn new(mut config: FileSinkConfig, schema: SchemaRef) -> Result<Self, EngineError> {
        let bucketer = Bucketer::new(&config.bucket, &schema)?;
        config.rolling.validate()?;
        let encoder = if config.format.is_bulk() {
            // See "Bulk formats" in the module documentation.
            config.rolling.roll_on_checkpoint = true;
            PartEncoder::Parquet(Arc::new(ParquetLayout::new(schema.clone())?))
        } else {
            PartEncoder::Rows(config.format)
        };
        let prefix = &config.part_prefix;
        if prefix.is_empty()
            || prefix.starts_with('.')
            || prefix.contains("..")
            || prefix
                .chars()
                .any(|c| c == '/' || c == '\\' || c.is_control())
        {
            return Err(EngineError::job(
                "sink.part_prefix",
                format!(
                    "`{prefix}` is not a file name prefix (empty, leading `.`, `..`, `/`, `\\` or control characters)"
                ),
            ));
        }
        if config.retained_checkpoints == 0 {
            return Err(EngineError::job(
                "sink.retained_checkpoints",
                "must be at least 1: the latest completed checkpoint must stay restorable",
            ));
        }
        let path = config.path.trim_matches('/');
        if path.split('/').any(|s| s == "." || s == "..") || path.contains("//") {
            return Err(EngineError::job(
                "sink.path",
                format!("`{}` is not a relative key prefix", config.path),
            ));
        }
        let base = if path.is_empty() {
            String::new()
        } else {
            format!("{path}/")
        };
        Ok(Self {
            config,
            schema,
            encoder,
            bucketer,
            base,
            metrics: Arc::default(),
            unpublished: (0, 0),
            files: None,
            buckets: Buckets::default(),
            rolled: Vec::new(),
            pending: BTreeMap::new(),
            snapshots: VecDeque::new(),
            completed: VecDeque::new(),
            restored_uploads: HashSet::new(),
            finished: false,
        })
    }

    /// The sink's counters, shared (they stay readable after the sink is dropped).
    pub fn metrics(&self) -> Arc<SinkMetrics> {
        self.metrics.clone()
    }

    /// Counts into `metrics` instead of counters of its own: every subtask (and every
    /// restart) of one sink can add to the same counters, which a progress report reads.
    pub fn with_metrics(mut self, metrics: Arc<SinkMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    fn attach(&mut self, ctx: &TaskContext) -> &mut PartFiles {
        let prefix = format!("{}-{}-", self.config.part_prefix, ctx.subtask);
        let extension = self.config.format.extension();
        let metrics = self.metrics.clone();
        self.files.get_or_insert_with(|| PartFiles {
            writer: ctx.writer.clone(),
            runtime: ctx.runtime.clone(),
            task: ctx.describe(),
            prefix,
            extension,
            next_counter: 0,
            metrics,
            in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_FILE_CALLS_IN_FLIGHT)),
        })
    }

    /// Remembers that checkpoint `id` completed and deletes the tails no restorable snapshot
    /// needs any more.
    fn release_tails(&mut self, completed: u64) {
        if self.completed.back().is_none_or(|&last| last < completed) {
            self.completed.push_back(completed);
        }
        while self.completed.len() > self.config.retained_checkpoints {
            self.completed.pop_front();
        }
        let latest = self.completed.back().copied();
        let restorable = |id: u64| latest.is_none_or(|l| id > l) || self.completed.contains(&id);
        let (keep, drop): (Vec<_>, Vec<_>) = self
            .snapshots
            .drain(..)
            .partition(|(id, _)| restorable(*id));
        self.snapshots = keep.into();
        let Some(files) = &self.files else { return };
        let live: HashSet<&str> = self
            .snapshots
            .iter()
            .flat_map(|(_, tokens)| tokens.iter().map(|t| t.tail_key.as_str()))
            .collect();
        for token in drop.iter().flat_map(|(_, tokens)| tokens) {
            if live.contains(token.tail_key.as_str()) {
                continue;
            }
            // A tail that cannot be deleted is garbage, not a failure: fs-core deletes every
            // tail of an upload when the file is published, and `rivulet gc` finds the rest.
            if let Err(e) = files.block_on(files.writer.cleanup(token)) {
                tracing::warn!(task = %files.task, tail = %token.tail_key, error = %e, "cannot delete an old tail");
            }
        }
    }
}

fn not_open() -> EngineError {
    EngineError::Task {
        task: "file sink".into(),
        message: "used before restore or open was called".into(),
    }
}

/// Adds the records and bytes written since the last call to the shared counters.
fn publish_metrics(unpublished: &mut (u64, u64), metrics: &SinkMetrics) {
    let (records, bytes) = std::mem::take(unpublished);
    if records > 0 {
        metrics
            .records_written
            .fetch_add(records, Ordering::Relaxed);
    }
    if bytes > 0 {
        metrics.bytes_written.fetch_add(bytes, Ordering::Relaxed);
    }
}

fn now_ms() -> Timestamp {
    crate::clock::coarse_now_ms()
}

impl Operator for FileSink {
    fn restore(&mut self, ctx: &TaskContext, state: &[u8]) -> Result<(), EngineError> {
        let state = SinkState::decode(state).map_err(|e| match e {
            EngineError::State { what, message } => EngineError::State {
                what: format!("{what} {}", ctx.describe()),
                message,
            },
            other => other,
        })?;
        let now = now_ms();
        let base = self.base.clone();
        let bulk = matches!(self.encoder, PartEncoder::Parquet(_));
        let files = self.attach(ctx);
        // These files belong to the completed checkpoint being restored: publish them (the
        // crashed attempt may have already; that is recognised, not repeated).
        let committers: Vec<Committer> = state
            .pending
            .values()
            .flatten()
            .map(|token| files.writer.recover_for_commit(token))
            .collect();
        files.commit_all(&committers, true)?;
        if let (true, Some(file)) = (bulk, state.in_progress.first()) {
            // This sink never leaves a bulk file in progress at a checkpoint; resuming one
            // would append to a file whose footer is lost.
            return Err(EngineError::state(
                format!("file sink {}", files.task),
                format!(
                    "in-progress part file `{}` cannot be resumed: parquet files roll at every checkpoint (was the state written with another format?)",
                    file.token.key
                ),
            ));
        }
        let mut buckets = Buckets::default();
        let mut tokens: Vec<ResumeToken> = Vec::new();
        for file in state.in_progress {
            if buckets.contains(&file.bucket) {
                return Err(EngineError::state(
                    format!("file sink {}", files.task),
                    format!("bucket `{}` has two in-progress files", file.bucket),
                ));
            }
            let writer = files.block_on(files.writer.recover(&file.token))?;
            tokens.push(file.token.clone());
            buckets.insert(
                file.bucket.clone(),
                Bucket {
                    dir: format!("{base}{}/", file.bucket),
                    buffer: Vec::new(),
                    writer: Some(PartWriter {
                        writer: Some(writer),
                        last_token: Some(file.token),
                        dirty: false,
                    }),
                    parquet: None,
                    started: file.created,
                    last_write: now,
                },
            );
        }
        files.next_counter = files.next_counter.max(state.next_counter);
        self.restored_uploads
            .extend(tokens.iter().map(|t| t.upload_id.clone()));
        self.buckets = buckets;
        self.snapshots = VecDeque::from([(state.checkpoint_id, tokens)]);
        self.completed = VecDeque::from([state.checkpoint_id]);
        Ok(())
    }

    fn open(&mut self, ctx: &TaskContext) -> Result<(), EngineError> {
        let base = self.base.clone();
        let keep = std::mem::take(&mut self.restored_uploads);
        self.attach(ctx).abort_stale_uploads(&base, &keep)
    }

    fn process(&mut self, record: Record, _out: &mut dyn Output) -> Result<(), EngineError> {
        let files = self.files.as_mut().ok_or_else(not_open)?;
        let now = now_ms();
        let id = self.bucketer.resolve(&record, now);
        let base = &self.base;
        let bucket = self
            .buckets
            .get_or_insert_with(id, || Bucket::new(format!("{base}{id}/"), now));
        if !bucket.has_part() {
            bucket.started = now;
        }
        bucket.last_write = now;
        let before = bucket.buffer.len();
        match &self.encoder {
            PartEncoder::Rows(format) => {
                format.encode(&self.schema, &record.row, &mut bucket.buffer)?;
            }
            PartEncoder::Parquet(layout) => {
                let part = match &mut bucket.parquet {
                    Some(part) => part,
                    None => bucket.parquet.insert(ParquetPart::new(
                        layout.clone(),
                        format!("a parquet part file in `{}` ({})", bucket.dir, files.task),
                    )?),
                };
                part.push(&record.row, &mut bucket.buffer)?;
            }
        }
        self.unpublished.0 += 1;
        self.unpublished.1 += (bucket.buffer.len() - before) as u64;
        if bucket.buffer.len() >= CHUNK_SIZE {
            files.flush(bucket)?;
            publish_metrics(&mut self.unpublished, &self.metrics);
        }
        if self.config.rolling.should_roll_on_event(bucket.part_size()) {
            self.rolled.extend(files.roll(bucket)?);
        }
        Ok(())
    }

    fn tick(&mut self, now: Timestamp, _out: &mut dyn Output) -> Result<(), EngineError> {
        publish_metrics(&mut self.unpublished, &self.metrics);
        let Some(files) = self.files.as_mut() else {
            return Ok(());
        };
        let policy = &self.config.rolling;
        let due = self.buckets.values_mut().filter(|bucket| {
            bucket.has_part()
                && policy.should_roll_on_processing_time(bucket.started, bucket.last_write, now)
        });
        let committers = files.roll_all(due)?;
        self.rolled.extend(committers);
        let idle_since = now.saturating_sub(IDLE_BUFFERS_AFTER_MS);
        for bucket in self.buckets.values_mut() {
            if bucket.last_write <= idle_since && files.let_go_of_buffers(bucket)? {
                self.metrics
                    .buffers_released
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        // Buckets of past hours (or rare field values) go once they hold nothing.
        self.buckets.retain(Bucket::has_part);
        Ok(())
    }

    fn snapshot(&mut self, checkpoint_id: u64) -> Result<Option<Vec<u8>>, EngineError> {
        publish_metrics(&mut self.unpublished, &self.metrics);
        let files = self.files.as_mut().ok_or_else(not_open)?;
        // Every file's roll or persist is started first and awaited together: the tails go up
        // in parallel, so a checkpoint costs one round trip, not one per bucket.
        let mut rolls = Vec::new();
        let mut persists = Vec::new();
        for (id, bucket) in self.buckets.iter_mut() {
            if !bucket.has_part() {
                continue;
            }
            if self
                .config
                .rolling
                .should_roll_on_checkpoint(bucket.part_size())
            {
                rolls.extend(files.begin_roll(bucket)?);
                continue;
            }
            files.flush(bucket)?;
            if let Some(part) = &mut bucket.writer {
                files.park(part);
                persists.push((id.to_string(), bucket.started, files.begin_persist(part)?));
            }
        }
        let committers = files.finish_rolls(rolls)?;
        self.rolled.extend(committers);
        let mut in_progress = Vec::with_capacity(persists.len());
        for (bucket_id, created, persist) in persists {
            let token = files.finish_persist(persist)?;
            // Marked clean only once the token is durable: a failed persist is retried by the
            // next checkpoint, never answered with an older token.
            if let Some(part) = self
                .buckets
                .get_mut(&bucket_id)
                .and_then(|b| b.writer.as_mut())
            {
                part.last_token = Some(token.clone());
                part.dirty = false;
            }
            in_progress.push(InProgressState {
                bucket: bucket_id,
                created,
                token,
            });
        }
        self.buckets.retain(Bucket::has_part);
        if !self.rolled.is_empty() {
            self.pending
                .entry(checkpoint_id)
                .or_default()
                .append(&mut self.rolled);
        }
        let state = SinkState {
            checkpoint_id,
            next_counter: files.next_counter,
            pending: self
                .pending
                .iter()
                .map(|(id, group)| (*id, group.iter().map(|c| c.token().clone()).collect()))
                .collect(),
            in_progress,
        };
        self.snapshots.push_back((
            checkpoint_id,
            state.in_progress.iter().map(|f| f.token.clone()).collect(),
        ));
        Ok(Some(state.encode()))
    }

    fn checkpoint_complete(&mut self, checkpoint_id: u64) -> Result<(), EngineError> {
        let files = self.files.as_mut().ok_or_else(not_open)?;
        let due: Vec<u64> = self
            .pending
            .range(..=checkpoint_id)
            .map(|(id, _)| *id)
            .collect();
        files.commit_all(
            due.iter().filter_map(|id| self.pending.get(id)).flatten(),
            false,
        )?;
        // Dropped only once all of their files are published: after a failure the task
        // restarts from a checkpoint that still lists them, and commits are idempotent.
        for id in due {
            self.pending.remove(&id);
        }
        self.release_tails(checkpoint_id);
        if self.finished && self.pending.is_empty() && self.rolled.is_empty() {
            // The bounded run is done and published. An upload a lost answer left behind (a
            // create whose reply timed out and was retried) would otherwise stay until the
            // next run's `open` or `rivulet gc`.
            if let Some(files) = &self.files {
                files.abort_stale_uploads(&self.base, &HashSet::new())?;
            }
        }
        Ok(())
    }

    fn finish(&mut self, _out: &mut dyn Output) -> Result<(), EngineError> {
        publish_metrics(&mut self.unpublished, &self.metrics);
        let files = self.files.as_mut().ok_or_else(not_open)?;
        let committers = files.roll_all(self.buckets.values_mut())?;
        self.rolled.extend(committers);
        self.buckets.clear();
        self.finished = true;
        Ok(())
    }

    /// See "Cancelled runs" in the module documentation.
    fn abandon(&mut self, _ctx: &TaskContext, completed: Option<u64>, deadline: Instant) {
        publish_metrics(&mut self.unpublished, &self.metrics);
        let Some(files) = &self.files else { return };
        let mut work = Vec::new();
        for (id, group) in std::mem::take(&mut self.pending) {
            let covered = completed.is_some_and(|c| id <= c);
            work.extend(group.into_iter().map(|committer| {
                if covered {
                    Abandoned::Publish(committer)
                } else {
                    Abandoned::Abort(committer)
                }
            }));
        }
        work.extend(self.rolled.drain(..).map(Abandoned::Abort));
        for bucket in self.buckets.values_mut() {
            bucket.buffer.clear();
            bucket.parquet = None;
            let Some(part) = bucket.writer.take() else {
                continue;
            };
            match (part.writer, part.last_token) {
                (Some(writer), _) => work.push(Abandoned::AbortWriter(Box::new(writer))),
                (None, Some(token)) => work.push(Abandoned::AbortParked(token)),
                (None, None) => {}
            }
        }
        self.buckets.clear();
        self.snapshots.clear();
        files.abandon_all(&self.base, work, deadline);
    }
}

/// A file of a cancelled run, and what becomes of it.
enum Abandoned {
    /// Pending for a completed checkpoint whose notice the sink did not get: published.
    Publish(Committer),
    /// Pending for a checkpoint that did not complete, or closed since the last one: aborted.
    Abort(Committer),
    /// In progress: aborted.
    AbortWriter(Box<FileWriter>),
    /// In progress and parked: aborted from its token.
    AbortParked(ResumeToken),
}

impl Abandoned {
    fn key(&self) -> String {
        match self {
            Abandoned::Publish(c) | Abandoned::Abort(c) => c.token().key.clone(),
            Abandoned::AbortWriter(w) => w.key().to_string(),
            Abandoned::AbortParked(t) => t.key.clone(),
        }
    }

    /// `Ok(true)` if the file was published, `Ok(false)` if it was aborted.
    async fn run(self, service: &RecoverableWriter) -> Result<bool, fs_core::WriterError> {
        match self {
            Abandoned::Publish(c) => c.commit().await.map(|_| true),
            Abandoned::Abort(c) => c.abort().await.map(|()| false),
            Abandoned::AbortWriter(w) => w.abort().await.map(|()| false),
            Abandoned::AbortParked(t) => service.abort(&t).await.map(|()| false),
        }
    }
}

impl Drop for FileSink {
    /// Writers dropped without a persist abort their upload in the background, which needs the
    /// runtime's context; the task thread is not a runtime thread, so it is entered here.
    fn drop(&mut self) {
        if let Some(files) = &self.files {
            let _guard = files.runtime.enter();
            self.buckets.clear();
        }
    }
}

/// A roll of one part file: its committer, or `None` for an empty file (abandoned).
type Roll = tokio::task::JoinHandle<Result<Option<Committer>, fs_core::WriterError>>;

/// A persist of one part file for a snapshot.
enum Persist {
    /// Nothing was written since the last persist: its token still holds.
    Unchanged(ResumeToken),
    Running(tokio::task::JoinHandle<Result<ResumeToken, fs_core::WriterError>>),
}

/// The store side of one sink subtask: names, opens, persists, rolls and commits part files.
struct PartFiles {
    writer: Arc<RecoverableWriter>,
    runtime: tokio::runtime::Handle,
    /// The subtask, for logs and errors.
    task: String,
    /// `<part_prefix>-<subtask>-`
    prefix: String,
    extension: &'static str,
    next_counter: u64,
    metrics: Arc<SinkMetrics>,
    /// Bounds the persists, rolls and commits running at once: a checkpoint of thousands of
    /// files must not open thousands of connections to the store at the same moment.
    in_flight: Arc<tokio::sync::Semaphore>,
}

/// How many persists, rolls or commits of one sink subtask run at once.
const MAX_FILE_CALLS_IN_FLIGHT: usize = 32;

impl PartFiles {
    /// Runs a store call from the task thread (a plain thread, never a runtime worker).
    fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// Starts the next part file in `dir`, skipping names that already have an object.
    fn open_next(&mut self, dir: &str) -> Result<FileWriter, EngineError> {
        loop {
            let counter = self.next_counter;
            self.next_counter += 1;
            let key = format!("{dir}{}{counter}.{}", self.prefix, self.extension);
            let store = self.writer.store();
            let retry = &self.writer.config().retry;
            let existing = self.block_on(retry.run(|| store.head_opt(&key)))?;
            if existing.is_some() {
                tracing::warn!(task = %self.task, key = %key, "part file name already taken; skipping it");
                continue;
            }
            // `open_append` on a missing key creates the upload with "create only" as its
            // commit condition (see the module documentation).
            let file = self.block_on(self.writer.open_append(&key))?;
            if !file.is_empty() {
                // An object appeared between the two checks: not ours to extend.
                self.block_on(file.abort())?;
                continue;
            }
            return Ok(file);
        }
    }

    /// Hands the bucket's buffered records to its part file, starting one if needed.
    fn flush(&mut self, bucket: &mut Bucket) -> Result<(), EngineError> {
        if bucket.buffer.is_empty() {
            return Ok(());
        }
        if bucket.writer.is_none() {
            let writer = self.open_next(&bucket.dir)?;
            bucket.writer = Some(PartWriter {
                writer: Some(writer),
                last_token: None,
                dirty: false,
            });
        }
        if let Some(part) = &mut bucket.writer {
            let writer = self.resume(part)?;
            self.runtime.block_on(writer.write(&bucket.buffer))?;
            part.dirty = true;
        }
        bucket.buffer.clear();
        Ok(())
    }

    /// Lets go of the memory an idle bucket holds beyond its bytes: its records go to its part
    /// file, whose writer keeps only its tail and hands its part buffer to the next file that
    /// fills one (a fresh buffer costs a page fault for every 4 KiB it fills). A bucket with no
    /// file yet keeps its few records, in a buffer of their size. True when a part buffer was
    /// let go.
    fn let_go_of_buffers(&mut self, bucket: &mut Bucket) -> Result<bool, EngineError> {
        if bucket.writer.is_some() {
            self.flush(bucket)?;
            bucket.buffer = Vec::new();
        } else {
            bucket.buffer.shrink_to_fit();
        }
        Ok(match &mut bucket.writer {
            Some(PartWriter {
                writer: Some(writer),
                ..
            }) => writer.shrink_idle_buffer() > 0,
            _ => false,
        })
    }

    /// Closes the bucket's part file for commit. An empty file is abandoned, not published.
    fn roll(&mut self, bucket: &mut Bucket) -> Result<Option<Committer>, EngineError> {
        let rolls = self.begin_roll(bucket)?.into_iter().collect();
        Ok(self.finish_rolls(rolls)?.pop())
    }

    /// Rolls the part files of `buckets` together: each close (the tail's upload as the last
    /// part, and waiting for the parts in flight) runs in the background while the next one is
    /// started, so rolling many files at a checkpoint or at the end costs about one round trip
    /// to the store, not one per file.
    fn roll_all<'a>(
        &mut self,
        buckets: impl IntoIterator<Item = &'a mut Bucket>,
    ) -> Result<Vec<Committer>, EngineError> {
        let mut rolls = Vec::new();
        for bucket in buckets {
            rolls.extend(self.begin_roll(bucket)?);
        }
        self.finish_rolls(rolls)
    }

    /// Hands the bucket's last records to its part file and starts closing it for commit.
    fn begin_roll(&mut self, bucket: &mut Bucket) -> Result<Option<Roll>, EngineError> {
        if let Some(parquet) = bucket.parquet.take() {
            if parquet.rows() == 0 {
                // Only the header can have come out: a file of no rows is not published.
                bucket.buffer.clear();
            } else {
                let before = bucket.buffer.len();
                parquet.finish(&mut bucket.buffer)?;
                self.metrics
                    .bytes_written
                    .fetch_add((bucket.buffer.len() - before) as u64, Ordering::Relaxed);
            }
        }
        self.flush(bucket)?;
        let Some(part) = bucket.writer.take() else {
            return Ok(None);
        };
        // A parked file is resumed in the background too (see "Idle files").
        let file = match (part.writer, part.last_token) {
            (Some(writer), _) => Ok(writer),
            (None, Some(token)) => Err(token),
            (None, None) => return Err(self.no_token()),
        };
        let service = self.writer.clone();
        Ok(Some(self.spawn_limited(async move {
            let mut writer = match file {
                Ok(writer) => writer,
                Err(token) => service.recover(&token).await?,
            };
            if writer.is_empty() {
                writer.abort().await?;
                return Ok(None);
            }
            writer.close_for_commit().await.map(Some)
        })))
    }

    /// Waits for rolls started by [`PartFiles::begin_roll`]; the committers of the files to
    /// publish (an empty file is abandoned, not published). All are awaited even when one
    /// fails, so that none is still running when the error reaches the task.
    fn finish_rolls(&self, rolls: Vec<Roll>) -> Result<Vec<Committer>, EngineError> {
        let closed: Result<Vec<_>, _> = self.join_all(rolls, "roll").into_iter().collect();
        Ok(closed?.into_iter().flatten().collect())
    }

    /// Runs a store call of this subtask in the background, within the bound of
    /// [`MAX_FILE_CALLS_IN_FLIGHT`].
    fn spawn_limited<F>(&self, call: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let in_flight = self.in_flight.clone();
        self.runtime.spawn(async move {
            // The semaphore is never closed; were it, the call would just run unbounded.
            let _permit = in_flight.acquire_owned().await.ok();
            call.await
        })
    }

    /// Waits for every one of `tasks`, even when one fails, so that none is still running
    /// when an error reaches the task; their results in order.
    fn join_all<T>(
        &self,
        tasks: Vec<tokio::task::JoinHandle<Result<T, fs_core::WriterError>>>,
        what: &str,
    ) -> Vec<Result<T, EngineError>> {
        tasks
            .into_iter()
            .map(|task| self.join(task, what))
            .collect()
    }

    /// Waits for a background store call of this subtask.
    fn join<T>(
        &self,
        task: tokio::task::JoinHandle<Result<T, fs_core::WriterError>>,
        what: &str,
    ) -> Result<T, EngineError> {
        self.block_on(task)
            .map_err(|e| EngineError::Task {
                task: self.task.clone(),
                message: format!("a part file {what} task failed: {e}"),
            })?
            .map_err(EngineError::from)
    }

    /// The part file's writer, resumed from its last token if it was parked.
    fn resume<'a>(&self, part: &'a mut PartWriter) -> Result<&'a mut FileWriter, EngineError> {
        let writer = match part.writer.take() {
            Some(writer) => writer,
            None => {
                let token = part.last_token.as_ref().ok_or_else(|| self.no_token())?;
                tracing::debug!(task = %self.task, key = %token.key, "resuming a parked part file");
                self.block_on(self.writer.recover(token))?
            }
        };
        Ok(part.writer.insert(writer))
    }

    /// A part file parked without a token: a bug of this sink, reported rather than panicked.
    fn no_token(&self) -> EngineError {
        EngineError::Task {
            task: self.task.clone(),
            message: "a parked part file has no token to resume from".into(),
        }
    }

    /// Parks the part file: drops its writer, which holds up to a part of memory, keeping the
    /// token it can be resumed from. Only a file persisted with nothing written since can be
    /// parked (its writer has nothing in flight and the token covers every byte).
    fn park(&self, part: &mut PartWriter) {
        if part.dirty || part.last_token.is_none() {
            return;
        }
        if let Some(writer) = part.writer.take() {
            // A persisted writer keeps its upload when dropped; its drop needs the runtime's
            // context for the local cache's cleanup.
            let _guard = self.runtime.enter();
            drop(writer);
            self.metrics.files_parked.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Starts a persist of the part file as it is now (or reuses the last token when nothing
    /// was written since).
    fn begin_persist(&self, part: &mut PartWriter) -> Result<Persist, EngineError> {
        if let (false, Some(token)) = (part.dirty, &part.last_token) {
            return Ok(Persist::Unchanged(token.clone()));
        }
        let writer = self.resume(part)?;
        let pending = writer.begin_persist()?;
        Ok(Persist::Running(self.spawn_limited(pending.wait())))
    }

    /// Waits for a persist started by [`PartFiles::begin_persist`].
    fn finish_persist(&self, persist: Persist) -> Result<ResumeToken, EngineError> {
        match persist {
            Persist::Unchanged(token) => Ok(token),
            Persist::Running(task) => self.join(task, "persist"),
        }
    }

    /// Publishes pending files (idempotently), all at once: like rolls, commits run in the
    /// background and are awaited together. All are awaited even when one fails; the caller
    /// keeps the files pending until every one is published, and publishing one again is
    /// recognised, not repeated.
    fn commit_all<'a>(
        &self,
        committers: impl IntoIterator<Item = &'a Committer>,
        after_recovery: bool,
    ) -> Result<(), EngineError> {
        let commits: Vec<_> = committers
            .into_iter()
            .map(|committer| {
                let committer = committer.clone();
                self.spawn_limited(async move {
                    if after_recovery {
                        committer.commit_after_recovery().await
                    } else {
                        committer.commit().await
                    }
                })
            })
            .collect();
        let outcomes = self.join_all(commits, "commit");
        // Files published before another failed still count.
        let published = outcomes
            .iter()
            .filter(|o| o.as_ref().is_ok_and(|o| !o.already_committed))
            .count();
        self.metrics
            .files_finished
            .fetch_add(published as u64, Ordering::Relaxed);
        outcomes.into_iter().try_for_each(|o| o.map(drop))
    }

    /// Aborts every open upload under `base` named like this subtask's part files, except
    /// those in `keep`: files of an earlier attempt that no completed checkpoint references.
    fn abort_stale_uploads(&self, base: &str, keep: &HashSet<String>) -> Result<(), EngineError> {
        let store = self.writer.store();
        let retry = &self.writer.config().retry;
        let uploads = match self.block_on(retry.run(|| store.list_all_uploads(base))) {
            Ok(uploads) => uploads,
            Err(e) if e.kind() == StoreErrorKind::NotSupported => {
                tracing::warn!(task = %self.task, "the store cannot list uploads; uploads of earlier attempts stay until `rivulet gc`");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        for upload in &uploads {
            if self.is_own_part(&upload.key) && !keep.contains(&upload.upload_id) {
                tracing::info!(task = %self.task, key = %upload.key, "aborting a part file of an earlier attempt");
                self.block_on(self.writer.abort_upload(&upload.key, &upload.upload_id))?;
            }
        }
        Ok(())
    }

    /// Publishes or aborts the files of a cancelled run, all at once (at most
    /// [`MAX_FILE_CALLS_IN_FLIGHT`] at a time), and waits for them until `deadline`. A call not
    /// started by then is skipped; a failure, a skip or a call still running at the deadline
    /// is logged with the file's key and the subtask goes on stopping: the cancel must end
    /// even against a dead store (`rivulet recover --abort --prefix PATH/ STORE` aborts what is
    /// left).
    fn abandon_all(&self, base: &str, work: Vec<Abandoned>, deadline: Instant) {
        let total = work.len();
        if total == 0 {
            return;
        }
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        for item in work {
            let (service, in_flight, done) =
                (self.writer.clone(), self.in_flight.clone(), done_tx.clone());
            let key = item.key();
            self.runtime.spawn(async move {
                let _permit = in_flight.acquire_owned().await.ok();
                let outcome = if Instant::now() < deadline {
                    Some(item.run(&service).await)
                } else {
                    None // dropped here, in the runtime: a writer's drop needs it
                };
                let _ = done.send((key, outcome));
            });
        }
        drop(done_tx);
        let (mut published, mut aborted, mut failed, mut skipped) = (0u64, 0, 0, Vec::new());
        let mut answered = 0;
        while answered < total {
            let Ok((key, outcome)) = done_rx.recv_deadline(deadline) else {
                break;
            };
            answered += 1;
            match outcome {
                Some(Ok(true)) => published += 1,
                Some(Ok(false)) => aborted += 1,
                Some(Err(e)) => {
                    failed += 1;
                    tracing::warn!(task = %self.task, key = %key, error = %e, "could not abandon a part file of the cancelled run: its upload stays open");
                }
                None => skipped.push(key),
            }
        }
        self.metrics
            .files_finished
            .fetch_add(published, Ordering::Relaxed);
        let unfinished = total - answered;
        for key in &skipped {
            tracing::debug!(task = %self.task, key = %key, "not abandoned: out of time");
        }
        if !skipped.is_empty() || unfinished > 0 {
            tracing::warn!(
                task = %self.task,
                "gave up abandoning the cancelled run's part files after the deadline: {} not \
                 tried (e.g. {:?}) and {unfinished} still running may stay open; \
                 `rivulet recover --abort --prefix {base} STORE` aborts them",
                skipped.len(),
                &skipped[..skipped.len().min(5)],
            );
        }
        tracing::info!(task = %self.task, published, aborted, failed, "abandoned the cancelled run's part files");
    }

    /// Whether `key` names a part file of this subtask: `…/<prefix><digits>.<ext>`.
    fn is_own_part(&self, key: &str) -> bool {
        let name = key.rsplit('/').next().unwrap_or(key);
        name.strip_prefix(&self.prefix)
            .and_then(|rest| rest.strip_suffix(self.extension))
            .and_then(|rest| rest.strip_suffix('.'))
            .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
    }
}

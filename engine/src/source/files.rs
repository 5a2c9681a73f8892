//! The files source: JSON-lines or CSV objects under a prefix of the job's store.
//!
//! Each subtask reads the files whose key hashes to it, one at a time in key order, with ranged
//! GETs of [`CHUNK_SIZE`] bytes. Its position is the byte offset just after the last record it
//! emitted in every file it has not finished, plus the set of files it has finished, so a
//! restored source re-reads nothing before its position and skips nothing after it.
//!
//! Bounded, it reads the files listed when it starts and finishes; unbounded, it lists the
//! prefix again every `discover_interval` and picks up new files. A file is read up to the size
//! it had when its last chunk was fetched: bytes appended to a file after it is finished are
//! not read (objects are meant to be written whole; S3 has no append).
//!
//! Hidden keys are skipped: any path segment below the prefix's directory that starts with `.`
//! or `_` (the writer's tails, temporary and marker files of other tools), and directory markers
//! (keys ending in `/`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fs_core::StoreErrorKind;
use fs_core::store::{DynStore, ObjectStoreExt as _};
use serde::{Deserialize, Serialize};

use crate::data::{DataType, HASH_SEED, Record, Row, Schema, SchemaRef, Timestamp, Value};
use crate::error::EngineError;
use crate::format::{Format, decode_csv, decode_json};
use crate::operator::{Output, Source, SourceStatus, TaskContext};

/// How often an unbounded source lists its prefix for new files, unless configured otherwise.
pub const DEFAULT_DISCOVER_INTERVAL: Duration = Duration::from_secs(1);
/// The size of each ranged GET.
pub const CHUNK_SIZE: u64 = 1024 * 1024;
/// A record may be at most this long: a file with a longer one (most likely not in the
/// configured format at all) fails the source instead of filling its memory.
pub const MAX_RECORD_BYTES: usize = 64 * 1024 * 1024;
/// The longest pause an unbounded source asks for while waiting to list again: polls stay
/// frequent enough for the task to stay responsive, whatever the discovery interval.
const MAX_IDLE: Duration = Duration::from_secs(1);
/// The UTF-8 byte-order mark.
const UTF8_BOM: &[u8] = b"\xef\xbb\xbf";
/// A poll that has emitted nothing yet fetches at most this many chunks before returning.
const MAX_FETCHES_PER_POLL: usize = 4;

/// What to do with a record that cannot be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Count it, log it, and go on.
    Skip,
    /// Fail the task, naming the record's `key:line`.
    #[default]
    Fail,
}

/// What a files source reads.
#[derive(Debug, Clone)]
pub struct FilesConfig {
    /// Keys that start with this are read (`data/in/` for a directory).
    pub prefix: String,
    pub format: Format,
    /// The schema of the records in the files (CSV: in column order).
    pub schema: SchemaRef,
    /// The field whose value is the record's event time (a timestamp or int field). `None`:
    /// the time the record is read.
    pub timestamp_field: Option<String>,
    /// `true`: read the files listed at start, then finish. `false`: keep looking for new ones.
    pub bounded: bool,
    /// How often an unbounded source lists the prefix again.
    pub discover_interval: Duration,
    pub on_error: OnError,
}

impl FilesConfig {
    /// A bounded source over `prefix` with processing-time timestamps that fails on malformed
    /// records.
    pub fn new(prefix: impl Into<String>, format: Format, schema: SchemaRef) -> Self {
        Self {
            prefix: prefix.into(),
            format,
            schema,
            timestamp_field: None,
            bounded: true,
            discover_interval: DEFAULT_DISCOVER_INTERVAL,
            on_error: OnError::Fail,
        }
    }
}

/// One subtask of a files source.
pub struct FilesSource {
    prefix: String,
    bounded: bool,
    discover_interval: Duration,
    decoder: Decoder,
    /// Bytes per GET: [`CHUNK_SIZE`], smaller in tests to cross chunk boundaries.
    chunk_size: u64,
    io: Option<Io>,
    subtask: usize,
    parallelism: usize,
    /// Files of this subtask not read to the end yet, read in key order.
    pending: BTreeMap<String, Cursor>,
    /// Files of this subtask read to the end.
    finished: BTreeSet<String>,
    /// Whether the prefix has been listed (a bounded source lists it once, ever: a restored
    /// one keeps the files of its first listing).
    listed: bool,
    next_discovery: Option<Instant>,
}

/// The store and the runtime its calls run on, known from `open`.
struct Io {
    store: DynStore,
    runtime: tokio::runtime::Handle,
}

/// Where a subtask stands in one file.
#[derive(Debug, Default)]
struct Cursor {
    /// Byte offset of `buffer[0]`: just after the last record emitted.
    offset: u64,
    /// Line number (1-based) at `offset`, for naming records in messages.
    line: u64,
    /// Bytes fetched and not yet emitted.
    buffer: Vec<u8>,
    /// The object's size as last seen (listing or GET); `None` after a restore.
    size: Option<u64>,
    /// Every byte of the file has been fetched.
    at_end: bool,
}

impl Cursor {
    fn at(offset: u64, line: u64, size: Option<u64>) -> Self {
        Self {
            offset,
            line,
            size,
            ..Self::default()
        }
    }

    /// Drops the first `consumed` bytes of the buffer, which have been emitted or skipped.
    fn consume(&mut self, consumed: usize) {
        let bytes = &self.buffer[..consumed];
        self.line += bytes.iter().filter(|b| **b == b'\n').count() as u64;
        self.offset += consumed as u64;
        self.buffer.drain(..consumed);
    }
}

/// Turns the bytes of a file into records.
struct Decoder {
    format: Format,
    schema: SchemaRef,
    timestamp_index: Option<usize>,
    on_error: OnError,
    malformed: u64,
}

impl FilesSource {
    pub fn new(config: FilesConfig) -> Result<Self, EngineError> {
        if config.schema.is_empty() {
            return Err(EngineError::job("files.schema", "has no fields"));
        }
        if config.format.is_bulk() {
            // Reading Parquet needs whole-file (footer first) access, not the line cursor this
            // source checkpoints; it is an output format only for now.
            return Err(EngineError::job(
                "files.format",
                "the files source reads json or csv; parquet is an output format only",
            ));
        }
        if config.discover_interval.is_zero() {
            return Err(EngineError::job(
                "files.discover_interval",
                "must be longer than zero",
            ));
        }
        let timestamp_index = match &config.timestamp_field {
            None => None,
            Some(name) => Some(timestamp_index(&config.schema, name)?),
        };
        Ok(Self {
            prefix: config.prefix,
            bounded: config.bounded,
            discover_interval: config.discover_interval,
            decoder: Decoder {
                format: config.format,
                schema: config.schema,
                timestamp_index,
                on_error: config.on_error,
                malformed: 0,
            },
            chunk_size: CHUNK_SIZE,
            io: None,
            subtask: 0,
            parallelism: 1,
            pending: BTreeMap::new(),
            finished: BTreeSet::new(),
            listed: false,
            next_discovery: None,
        })
    }

    /// How many malformed records were skipped (with [`OnError::Skip`]) since the source was
    /// built.
    pub fn malformed_records(&self) -> u64 {
        self.decoder.malformed
    }

    /// Whether this subtask reads `key`.
    fn owns(&self, key: &str) -> bool {
        let hash = Value::Str(key.into()).stable_hash(HASH_SEED);
        hash % self.parallelism as u64 == self.subtask as u64
    }

    /// Lists the prefix and queues this subtask's files that are new.
    fn discover(&mut self) -> Result<(), EngineError> {
        let io = opened(&self.io, &self.prefix)?;
        let listed = io.runtime.block_on(io.store.list_all(&self.prefix))?;
        let mut seen = BTreeSet::new();
        for object in listed {
            if is_hidden(&self.prefix, &object.key) || !self.owns(&object.key) {
                continue;
            }
            if let Some(cursor) = self.pending.get_mut(&object.key) {
                cursor.size = cursor.size.or(Some(object.size));
            } else if !self.finished.contains(&object.key) {
                self.pending
                    .insert(object.key.clone(), Cursor::at(0, 1, Some(object.size)));
            }
            seen.insert(object.key);
        }
        if !self.bounded {
            // Forget finished files that are gone, so that the set (and the checkpoint) does
            // not grow forever. A file written again under the same key is read again.
            self.finished.retain(|key| seen.contains(key));
        }
        self.listed = true;
        let now = Instant::now();
        // An interval too long for the clock means "not again for a very long time".
        self.next_discovery = now
            .checked_add(self.discover_interval)
            .or_else(|| now.checked_add(MAX_IDLE));
        Ok(())
    }

    fn discovery_due(&self) -> bool {
        if !self.listed {
            return true;
        }
        !self.bounded && self.next_discovery.is_none_or(|at| Instant::now() >= at)
    }

    fn idle_until_discovery(&self) -> SourceStatus {
        let wait = self
            .next_discovery
            .map_or(Duration::ZERO, |at| {
                at.saturating_duration_since(Instant::now())
            })
            .clamp(Duration::from_millis(1), MAX_IDLE);
        SourceStatus::Idle(wait)
    }
}

/// The store and runtime of an opened source.
fn opened<'a>(io: &'a Option<Io>, prefix: &str) -> Result<&'a Io, EngineError> {
    io.as_ref().ok_or_else(|| EngineError::Task {
        task: format!("files source over `{prefix}`"),
        message: "polled before it was opened".into(),
    })
}

/// The position of a field that can be the event time.
fn timestamp_index(schema: &Schema, name: &str) -> Result<usize, EngineError> {
    let at = "files.timestamp_field";
    let index = schema.index_of(name).ok_or_else(|| {
        EngineError::job(
            at,
            format!("no field `{name}` in the schema ({})", schema.names()),
        )
    })?;
    match schema.field(index).data_type {
        DataType::Timestamp | DataType::Int => Ok(index),
        other => Err(EngineError::job(
            at,
            format!("field `{name}` is a {other}; the event time must be a timestamp or an int"),
        )),
    }
}

/// Whether `key` is hidden: a segment below the prefix's directory starts with `.` or `_`, or
/// it is a directory marker.
fn is_hidden(prefix: &str, key: &str) -> bool {
    let dir_len = prefix.rfind('/').map_or(0, |slash| slash + 1);
    let below = key.get(dir_len..).unwrap_or(key);
    below.ends_with('/')
        || below
            .split('/')
            .any(|segment| segment.starts_with('.') || segment.starts_with('_'))
}

/// Fetches the next chunk of `key` into its cursor, or marks the file's end.
fn fetch(io: &Io, key: &str, cursor: &mut Cursor, chunk_size: u64) -> Result<(), EngineError> {
    let start = cursor.offset + cursor.buffer.len() as u64;
    if cursor.size.is_some_and(|size| start >= size) {
        cursor.at_end = true;
        return Ok(());
    }
    let range = start..start + chunk_size;
    match io.runtime.block_on(io.store.get(key, Some(range))) {
        Ok(got) => {
            cursor.buffer.extend_from_slice(&got.body);
            cursor.size = Some(got.meta.size);
            if got.body.is_empty() || got.range.end >= got.meta.size {
                cursor.at_end = true;
            }
            Ok(())
        }
        // The object ends where the last chunk did (or it shrank): nothing more to read.
        Err(e) if e.kind() == StoreErrorKind::InvalidRange => {
            cursor.at_end = true;
            Ok(())
        }
        Err(e) if e.kind() == StoreErrorKind::NotFound => {
            tracing::warn!(key, "file deleted while being read; reading no more of it");
            cursor.at_end = true;
            Ok(())
        }
        Err(e) => Err(EngineError::Store(e)),
    }
}

impl Decoder {
    /// Emits up to `max` whole records from the cursor's buffer and drops their bytes from it;
    /// returns how many it emitted. Without the end of the file in the buffer, a record that
    /// reaches the end of the buffer may be incomplete and waits for the next chunk.
    fn read(
        &mut self,
        key: &str,
        cursor: &mut Cursor,
        out: &mut dyn Output,
        max: usize,
        now: Timestamp,
    ) -> Result<usize, EngineError> {
        let mut consumed = 0;
        if cursor.offset == 0 && cursor.buffer.starts_with(UTF8_BOM) {
            // Some tools start text files with a byte-order mark; it is not part of a record.
            consumed = UTF8_BOM.len();
        }
        let result = match self.format {
            Format::Json => self.read_json(key, cursor, out, max, now, &mut consumed),
            Format::Csv => self.read_csv(key, cursor, out, max, now, &mut consumed),
            // Refused by `FilesSource::new`; kept an error rather than a panic all the same.
            Format::Parquet => Err(EngineError::record(
                key,
                "the files source cannot read parquet",
            )),
        };
        // Records emitted before a failure are downstream already: the cursor moves past them
        // either way.
        cursor.consume(consumed);
        let emitted = result?;
        if cursor.buffer.len() > MAX_RECORD_BYTES && !cursor.at_end && emitted < max {
            return Err(EngineError::record(
                format!("{key}:{}", cursor.line),
                format!("a record longer than {MAX_RECORD_BYTES} bytes"),
            ));
        }
        Ok(emitted)
    }

    fn read_json(
        &mut self,
        key: &str,
        cursor: &Cursor,
        out: &mut dyn Output,
        max: usize,
        now: Timestamp,
        consumed: &mut usize,
    ) -> Result<usize, EngineError> {
        let buffer = &cursor.buffer;
        let mut line = cursor.line;
        let mut emitted = 0;
        while emitted < max && *consumed < buffer.len() {
            let rest = &buffer[*consumed..];
            let (text, length) = match rest.iter().position(|b| *b == b'\n') {
                Some(newline) => (&rest[..newline], newline + 1),
                // The last line of a file needs no newline.
                None if cursor.at_end => (rest, rest.len()),
                None => break,
            };
            let text = text.strip_suffix(b"\r").unwrap_or(text);
            if !text.iter().all(u8::is_ascii_whitespace) {
                let row = std::str::from_utf8(text)
                    .map_err(|e| format!("not UTF-8: {e}"))
                    .and_then(|text| decode_json(&self.schema, text));
                if self.emit(key, line, row, now, out)? {
                    emitted += 1;
                }
            }
            *consumed += length;
            line += 1;
        }
        Ok(emitted)
    }

    fn read_csv(
        &mut self,
        key: &str,
        cursor: &Cursor,
        out: &mut dyn Output,
        max: usize,
        now: Timestamp,
        consumed: &mut usize,
    ) -> Result<usize, EngineError> {
        let buffer = &cursor.buffer;
        let start = *consumed;
        // Flexible: a record with the wrong number of fields is for `decode_csv` to report,
        // with the schema's names, not a parse error of the reader.
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(&buffer[start..]);
        let mut record = csv::ByteRecord::new();
        let mut emitted = 0;
        while emitted < max {
            match reader.read_byte_record(&mut record) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    return Err(EngineError::record(
                        format!("{key}:{}", cursor.line),
                        format!("unreadable CSV: {e}"),
                    ));
                }
            }
            let end = start + reader.position().byte() as usize;
            // A record that runs to the end of the buffer may go on in the next chunk (a
            // quoted field with a newline, or just the rest of a line).
            if end >= buffer.len() && !cursor.at_end {
                break;
            }
            let line = cursor.line + record.position().map_or(1, |p| p.line()) - 1;
            // Taken, not cloned: the reader refills it for the next record anyway.
            let row = csv::StringRecord::from_byte_record(std::mem::take(&mut record))
                .map_err(|e| format!("not UTF-8: {}", e.utf8_error()))
                .and_then(|fields| decode_csv(&self.schema, &fields));
            if self.emit(key, line, row, now, out)? {
                emitted += 1;
            }
            *consumed = end;
        }
        Ok(emitted)
    }

    /// Emits a decoded row, or handles the failure to decode it; returns whether it emitted.
    fn emit(
        &mut self,
        key: &str,
        line: u64,
        row: Result<Row, String>,
        now: Timestamp,
        out: &mut dyn Output,
    ) -> Result<bool, EngineError> {
        let record = row.and_then(|row| self.timestamp(row, now));
        match record {
            Ok(record) => {
                out.emit(record)?;
                Ok(true)
            }
            Err(message) => match self.on_error {
                OnError::Skip => {
                    self.malformed += 1;
                    tracing::warn!(
                        at = %format!("{key}:{line}"),
                        %message,
                        "skipped a malformed record"
                    );
                    Ok(false)
                }
                OnError::Fail => Err(EngineError::record(format!("{key}:{line}"), message)),
            },
        }
    }

    fn timestamp(&self, row: Row, now: Timestamp) -> Result<Record, String> {
        let Some(index) = self.timestamp_index else {
            return Ok(Record::new(now, row));
        };
        // Decoded rows have one value per field of the schema, the event time's included.
        match row.get(index).and_then(Value::as_i64) {
            Some(timestamp) => Ok(Record::new(timestamp, row)),
            None => Err(format!(
                "the event time field `{}` is null",
                self.schema.field(index).name
            )),
        }
    }
}

/// Processing time, for sources without an event-time field.
fn now_ms() -> Timestamp {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The checkpointed position of a files source subtask.
#[derive(Debug, Serialize, Deserialize)]
struct Position {
    version: u32,
    subtask: usize,
    parallelism: usize,
    listed: bool,
    /// Every file queued and not finished, started or not.
    open: Vec<FilePosition>,
    finished: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct FilePosition {
    key: String,
    /// Byte offset just after the last record emitted.
    offset: u64,
    /// Line number at `offset`.
    line: u64,
}

const POSITION_VERSION: u32 = 1;

impl Source for FilesSource {
    fn schema(&self) -> SchemaRef {
        self.decoder.schema.clone()
    }

    fn restore(&mut self, ctx: &TaskContext, position: &[u8]) -> Result<(), EngineError> {
        let what = format!("files source {}", ctx.describe());
        let saved: Position =
            serde_json::from_slice(position).map_err(|e| EngineError::state(&what, e))?;
        if saved.version != POSITION_VERSION {
            return Err(EngineError::state(
                what,
                format!("unknown version {}", saved.version),
            ));
        }
        if (saved.subtask, saved.parallelism) != (ctx.subtask, ctx.parallelism) {
            // Files are assigned by hashing over the parallelism: another one would hand this
            // subtask files whose positions other subtasks hold.
            return Err(EngineError::state(
                what,
                format!(
                    "a checkpoint of subtask {} of {} cannot resume subtask {} of {}",
                    saved.subtask + 1,
                    saved.parallelism,
                    ctx.subtask + 1,
                    ctx.parallelism
                ),
            ));
        }
        self.listed = saved.listed;
        self.pending = saved
            .open
            .into_iter()
            .map(|file| (file.key, Cursor::at(file.offset, file.line, None)))
            .collect();
        self.finished = saved.finished.into_iter().collect();
        Ok(())
    }

    fn open(&mut self, ctx: &TaskContext) -> Result<(), EngineError> {
        if ctx.parallelism == 0 || ctx.subtask >= ctx.parallelism {
            return Err(EngineError::Task {
                task: ctx.describe(),
                message: format!(
                    "subtask {} of parallelism {} is out of range",
                    ctx.subtask, ctx.parallelism
                ),
            });
        }
        self.subtask = ctx.subtask;
        self.parallelism = ctx.parallelism;
        self.io = Some(Io {
            store: ctx.writer.store().clone(),
            runtime: ctx.runtime.clone(),
        });
        Ok(())
    }

    fn malformed_records(&self) -> u64 {
        FilesSource::malformed_records(self)
    }

    fn poll(&mut self, out: &mut dyn Output, max: usize) -> Result<SourceStatus, EngineError> {
        if self.discovery_due() {
            self.discover()?;
        }
        let max = max.max(1);
        let now = now_ms();
        let mut emitted = 0;
        let mut fetches = 0;
        while let Some((key, cursor)) = self.pending.iter_mut().next() {
            emitted += self.decoder.read(key, cursor, out, max - emitted, now)?;
            if emitted >= max {
                return Ok(SourceStatus::More);
            }
            if cursor.at_end {
                // Everything fetched and every whole record emitted: what is left (nothing,
                // for well-formed files) cannot become a record any more.
                let key = key.clone();
                self.pending.remove(&key);
                self.finished.insert(key);
                continue;
            }
            if emitted > 0 || fetches == MAX_FETCHES_PER_POLL {
                // No GET once records are out, and a few at most without (a run of malformed
                // records or blank lines, a long record): a poll stays short, so checkpoints
                // are not held up. The buffer keeps what was fetched for the next poll.
                return Ok(SourceStatus::More);
            }
            fetches += 1;
            fetch(
                opened(&self.io, &self.prefix)?,
                key,
                cursor,
                self.chunk_size,
            )?;
        }
        if emitted > 0 {
            Ok(SourceStatus::More)
        } else if self.bounded {
            Ok(SourceStatus::Finished)
        } else {
            Ok(self.idle_until_discovery())
        }
    }

    fn snapshot(&mut self, _checkpoint_id: u64) -> Result<Vec<u8>, EngineError> {
        let position = Position {
            version: POSITION_VERSION,
            subtask: self.subtask,
            parallelism: self.parallelism,
            listed: self.listed,
            open: self
                .pending
                .iter()
                .map(|(key, cursor)| FilePosition {
                    key: key.clone(),
                    offset: cursor.offset,
                    line: cursor.line,
                })
                .collect(),
            finished: self.finished.iter().cloned().collect(),
        };
        serde_json::to_vec(&position).map_err(|e| EngineError::state("files source position", e))
    }
}

#[cfg(test)]
mod tests;

//! Parquet part files: rows buffered as Arrow columns, encoded by arrow-rs's `ArrowWriter`.
//!
//! A Parquet file is written whole: its footer (at the end) locates every row group before
//! it, so a prefix of one is not a Parquet file and cannot be resumed after a restore. The
//! file sink therefore rolls every Parquet part at every checkpoint (see `sink::file`), and
//! one [`ParquetPart`] lives exactly as long as one in-progress part file.
//!
//! Memory stays bounded however long a part lives: rows collect in Arrow column builders up
//! to [`BATCH_ROWS`] rows or [`BATCH_BYTES`] bytes, then go to the `ArrowWriter` as a record
//! batch. The writer encodes them into the open row group (compressed pages in memory) and
//! writes the row group out once it reaches [`ROW_GROUP_BYTES`]. Its output is an in-memory
//! `Vec<u8>` that is drained after every batch: those bytes are final (nothing later rewrites
//! them, the footer only refers to their offsets), so the sink hands them to the fs-core
//! `FileWriter` like encoded JSON or CSV lines. Only the footer waits for [`ParquetPart::finish`].
//!
//! Schema mapping (every column nullable): int → Int64, float → Float64, bool → Boolean,
//! string → Utf8, timestamp → Timestamp(Millisecond, "UTC").

use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Float64Builder, Int64Builder, StringBuilder, TimestampMillisecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType as ArrowType, Field as ArrowField, Schema as ArrowSchema, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::data::{DataType, Row, Schema, Value};
use crate::error::EngineError;

/// Rows buffered in column builders before they are encoded as one record batch. Batches only
/// amortise per-call overhead: row groups are sized by bytes, independently of batches.
pub const BATCH_ROWS: usize = 4096;

/// Raw bytes (8 a number, a string's length) buffered before a batch is encoded early, so
/// that rows with long strings do not hold 4096 of them in memory.
pub const BATCH_BYTES: usize = 1024 * 1024;

/// A row group is written out once its estimated encoded size reaches this. It bounds the
/// memory of each in-progress part (one per bucket), at the cost of row groups smaller than
/// the 128 MiB that batch writers use: readers still get large column chunks, and a sink
/// with dozens of open buckets stays within a few hundred MiB.
pub const ROW_GROUP_BYTES: usize = 8 * 1024 * 1024;

/// The Arrow schema of Parquet files written from rows of `schema`: every field nullable,
/// timestamps in milliseconds and UTC.
pub fn arrow_schema(schema: &Schema) -> ArrowSchema {
    ArrowSchema::new(
        schema
            .fields
            .iter()
            .map(|f| ArrowField::new(&f.name, arrow_type(f.data_type), true))
            .collect::<Vec<_>>(),
    )
}

fn arrow_type(data_type: DataType) -> ArrowType {
    match data_type {
        DataType::Int => ArrowType::Int64,
        DataType::Float => ArrowType::Float64,
        DataType::Bool => ArrowType::Boolean,
        DataType::String => ArrowType::Utf8,
        DataType::Timestamp => ArrowType::Timestamp(TimeUnit::Millisecond, Some(UTC.into())),
    }
}

const UTC: &str = "UTC";

/// What every Parquet part of one sink shares: the engine and Arrow schemas and the writer
/// properties.
#[derive(Debug)]
pub struct ParquetLayout {
    schema: Arc<Schema>,
    arrow: Arc<ArrowSchema>,
    properties: WriterProperties,
}

impl ParquetLayout {
    /// The layout of parquet files holding rows of `schema`; fails for a schema Parquet cannot
    /// hold (no fields).
    pub fn new(schema: Arc<Schema>) -> Result<Self, EngineError> {
        if schema.is_empty() {
            // A record batch (and a Parquet file) needs at least one column to count rows.
            return Err(EngineError::job(
                "sink.format",
                "parquet needs at least one field; the sink's input has none",
            ));
        }
        let properties = WriterProperties::builder()
            // Snappy: cheap to write, read by every Parquet reader (the default of Spark and
            // of Flink's Parquet writers).
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_bytes(Some(ROW_GROUP_BYTES))
            .build();
        Ok(Self {
            arrow: Arc::new(arrow_schema(&schema)),
            schema,
            properties,
        })
    }

    pub fn arrow_schema(&self) -> &Arc<ArrowSchema> {
        &self.arrow
    }
}

/// One column's builder. Builders keep their data type (the timestamp's time zone) across
/// `finish`, so one set serves every batch of a part. They start empty and grow: a sink may
/// have many buckets that each see a few rows, and preallocating a batch per column for each
/// would cost more than the rows.
enum Column {
    Int(Int64Builder),
    Float(Float64Builder),
    Bool(BooleanBuilder),
    Str(StringBuilder),
    Time(TimestampMillisecondBuilder),
}

impl Column {
    fn new(data_type: DataType) -> Self {
        match data_type {
            DataType::Int => Column::Int(Int64Builder::new()),
            DataType::Float => Column::Float(Float64Builder::new()),
            DataType::Bool => Column::Bool(BooleanBuilder::new()),
            DataType::String => Column::Str(StringBuilder::new()),
            DataType::Timestamp => {
                Column::Time(TimestampMillisecondBuilder::new().with_timezone(UTC))
            }
        }
    }

    /// Appends `value`; returns its raw size for the batch limit, or `None` when the value
    /// does not fit the column. Lossless widenings are accepted, as the row formats write
    /// them: an int into a float column, an int into a timestamp column (milliseconds) and a
    /// timestamp into an int column.
    fn append(&mut self, value: &Value) -> Option<usize> {
        match (self, value) {
            (Column::Int(b), Value::Int(v) | Value::Time(v)) => b.append_value(*v),
            (Column::Int(b), Value::Null) => b.append_null(),
            (Column::Float(b), Value::Float(v)) => b.append_value(*v),
            (Column::Float(b), Value::Int(v)) => b.append_value(*v as f64),
            (Column::Float(b), Value::Null) => b.append_null(),
            (Column::Bool(b), Value::Bool(v)) => b.append_value(*v),
            (Column::Bool(b), Value::Null) => b.append_null(),
            (Column::Str(b), Value::Str(s)) => {
                b.append_value(s);
                return Some(s.len() + 8);
            }
            (Column::Str(b), Value::Null) => b.append_null(),
            (Column::Time(b), Value::Time(v) | Value::Int(v)) => b.append_value(*v),
            (Column::Time(b), Value::Null) => b.append_null(),
            _ => return None,
        }
        Some(8)
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Column::Int(b) => Arc::new(b.finish()),
            Column::Float(b) => Arc::new(b.finish()),
            Column::Bool(b) => Arc::new(b.finish()),
            Column::Str(b) => Arc::new(b.finish()),
            Column::Time(b) => Arc::new(b.finish()),
        }
    }
}

/// The encoder of one in-progress Parquet part file. See the module documentation.
pub struct ParquetPart {
    layout: Arc<ParquetLayout>,
    /// Names the part in errors (its bucket directory and sink subtask: the file has no name
    /// until its first bytes reach the store).
    what: String,
    writer: ArrowWriter<Vec<u8>>,
    columns: Vec<Column>,
    /// Rows in the builders, not yet given to the writer.
    buffered_rows: usize,
    /// Raw size of those rows.
    buffered_bytes: usize,
    /// Every row accepted, buffered or encoded.
    rows: u64,
    /// The writer's estimate of its open row group, as of the last batch.
    in_progress_bytes: usize,
}

impl ParquetPart {
    /// A new, empty part. `what` names it in errors.
    pub fn new(layout: Arc<ParquetLayout>, what: String) -> Result<Self, EngineError> {
        let writer = ArrowWriter::try_new(
            Vec::new(),
            layout.arrow.clone(),
            Some(layout.properties.clone()),
        )
        .map_err(|e| encode_error(&what, format!("cannot start the parquet writer: {e}")))?;
        let columns = layout
            .schema
            .fields
            .iter()
            .map(|f| Column::new(f.data_type))
            .collect();
        Ok(Self {
            layout,
            what,
            writer,
            columns,
            buffered_rows: 0,
            buffered_bytes: 0,
            rows: 0,
            in_progress_bytes: 0,
        })
    }

    /// Rows accepted so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Estimated bytes of this part not yet handed out: the open row group and the buffered
    /// rows (raw, so an overestimate of what they encode to). With the bytes already handed
    /// out, this is the part's size for the rolling policy.
    pub fn pending_size(&self) -> u64 {
        (self.in_progress_bytes + self.buffered_bytes) as u64
    }

    /// Adds `row`. Bytes of the file that became final meanwhile are appended to `out`.
    ///
    /// A row that does not fit the schema (wrong length, a value of another type) is refused
    /// whole: no column receives any of it, so the part stays consistent.
    pub fn push(&mut self, row: &Row, out: &mut Vec<u8>) -> Result<(), EngineError> {
        if row.len() != self.columns.len() {
            return Err(encode_error(
                &self.what,
                format!(
                    "a row of {} values, the schema has {} fields ({})",
                    row.len(),
                    self.columns.len(),
                    self.layout.schema.names()
                ),
            ));
        }
        // Checked before anything is appended: builders cannot take a value back.
        for (i, (value, field)) in row.iter().zip(&self.layout.schema.fields).enumerate() {
            if !fits(value, field.data_type) {
                return Err(encode_error(
                    &self.what,
                    format!(
                        "field {i} `{}` is a {} column, the row holds {value:?}",
                        field.name, field.data_type
                    ),
                ));
            }
        }
        let mut size = 0;
        for (column, value) in self.columns.iter_mut().zip(row) {
            // `fits` above has accepted every pair that `append` accepts.
            size += column.append(value).unwrap_or(0);
        }
        self.rows += 1;
        self.buffered_rows += 1;
        self.buffered_bytes += size;
        if self.buffered_rows >= BATCH_ROWS || self.buffered_bytes >= BATCH_BYTES {
            self.write_batch(out)?;
        }
        Ok(())
    }

    /// Encodes the buffered rows and moves the bytes that became final to `out`.
    fn write_batch(&mut self, out: &mut Vec<u8>) -> Result<(), EngineError> {
        if self.buffered_rows > 0 {
            let arrays = self.columns.iter_mut().map(Column::finish).collect();
            let batch = RecordBatch::try_new(self.layout.arrow.clone(), arrays).map_err(|e| {
                encode_error(&self.what, format!("cannot build a record batch: {e}"))
            })?;
            self.buffered_rows = 0;
            self.buffered_bytes = 0;
            self.writer.write(&batch).map_err(|e| {
                encode_error(&self.what, format!("cannot encode a record batch: {e}"))
            })?;
            self.in_progress_bytes = self.writer.in_progress_size();
        }
        self.drain(out)
    }

    /// Moves what the writer has written so far to `out`. Taking bytes out of its `Vec` is
    /// safe: the writer tracks offsets by the bytes it wrote, not by the `Vec`'s length.
    fn drain(&mut self, out: &mut Vec<u8>) -> Result<(), EngineError> {
        // The writer buffers its output (8 KiB); pushing that through makes every written
        // byte visible now rather than with the next row group.
        self.writer
            .sync()
            .map_err(|e| encode_error(&self.what, format!("cannot flush the writer: {e}")))?;
        let written = self.writer.inner_mut();
        if out.is_empty() {
            std::mem::swap(out, written);
        } else {
            out.append(written);
        }
        Ok(())
    }

    /// Encodes the remaining rows and the footer, appending the rest of the file to `out`.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<(), EngineError> {
        self.write_batch(out)?;
        let rest = self
            .writer
            .into_inner()
            .map_err(|e| encode_error(&self.what, format!("cannot write the footer: {e}")))?;
        out.extend_from_slice(&rest);
        Ok(())
    }
}

/// Whether `value` can go into a column of `data_type` (see [`Column::append`]).
fn fits(value: &Value, data_type: DataType) -> bool {
    matches!(
        (data_type, value),
        (_, Value::Null)
            | (DataType::Int, Value::Int(_) | Value::Time(_))
            | (DataType::Float, Value::Float(_) | Value::Int(_))
            | (DataType::Bool, Value::Bool(_))
            | (DataType::String, Value::Str(_))
            | (DataType::Timestamp, Value::Time(_) | Value::Int(_))
    )
}

fn encode_error(what: &str, message: String) -> EngineError {
    EngineError::Encode {
        what: what.to_string(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Field;

    fn layout() -> Arc<ParquetLayout> {
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int),
            Field::new("name", DataType::String),
        ]);
        Arc::new(ParquetLayout::new(Arc::new(schema)).unwrap())
    }

    #[test]
    fn bytes_come_out_as_row_groups_fill_and_the_footer_at_finish() {
        let mut part = ParquetPart::new(layout(), "test part".into()).unwrap();
        let mut out = Vec::new();
        for i in 0..(BATCH_ROWS as i64 * 3) {
            part.push(
                &vec![Value::Int(i), Value::Str("x".repeat(40).into())],
                &mut out,
            )
            .unwrap();
        }
        // Batches were encoded, so the header at least has come out.
        assert!(out.starts_with(b"PAR1"));
        assert_eq!(part.rows(), BATCH_ROWS as u64 * 3);
        part.finish(&mut out).unwrap();
        assert!(out.ends_with(b"PAR1"));
    }

    #[test]
    fn a_row_that_does_not_fit_is_refused_whole() {
        let mut part = ParquetPart::new(layout(), "bucket `eu`".into()).unwrap();
        let mut out = Vec::new();
        let err = part
            .push(&vec![Value::Int(1), Value::Bool(true)], &mut out)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bucket `eu`") && err.contains("`name`"),
            "{err}"
        );
        let err = part.push(&vec![Value::Int(1)], &mut out).unwrap_err();
        assert!(err.to_string().contains("1 values"), "{err}");
        assert_eq!(part.rows(), 0);
        // The part is still usable.
        part.push(&vec![Value::Int(1), Value::Null], &mut out)
            .unwrap();
        part.finish(&mut out).unwrap();
    }

    #[test]
    fn an_empty_schema_is_a_job_error() {
        let err = ParquetLayout::new(Arc::new(Schema::new(vec![]))).unwrap_err();
        assert!(matches!(err, EngineError::Job { .. }), "{err}");
    }
}

//! Formats of files on disk: the row formats JSON lines and CSV, both ways, and the name of
//! the bulk format Parquet, which only the file sink writes (see `sink::parquet`).
//!
//! Encoding appends to a byte buffer with no intermediate allocation per field (the file sink
//! encodes every record of a job). Decoding takes a schema and fails with a message that names
//! the field, which the caller prefixes with where the record came from.
//!
//! Timestamps are written as RFC 3339 in UTC with milliseconds (`2026-11-25T10:00:00.000Z`) and
//! read back from that form or from integer milliseconds.

use std::io::Write as _;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::data::{DataType, Row, Schema, Timestamp, Value};
use crate::error::EngineError;

/// A format of files, as job files name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One JSON object per line (`json`, `jsonl` or `ndjson` in job files).
    #[serde(alias = "jsonl", alias = "ndjson")]
    Json,
    /// Comma-separated values with a fixed column order (the schema's), no header.
    Csv,
    /// Apache Parquet, written by the file sink only. A bulk format: a file is encoded whole
    /// (its footer describes everything before it), so it cannot be resumed after a restore,
    /// and the sink rolls every Parquet file at every checkpoint.
    Parquet,
}

impl Format {
    /// The file name extension of the format.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Json => "jsonl",
            Format::Csv => "csv",
            Format::Parquet => "parquet",
        }
    }

    /// Whether files are encoded whole rather than row by row (Parquet): such a file has no
    /// valid prefix to resume from, so it must never be in progress across a checkpoint.
    pub fn is_bulk(self) -> bool {
        matches!(self, Format::Parquet)
    }

    /// Appends `row` as one line (newline included). A bulk format has no per-row encoding
    /// (its rows go through a per-file encoder, `sink::parquet::ParquetPart`): asking for one
    /// is an error, never silently nothing.
    pub fn encode(self, schema: &Schema, row: &Row, out: &mut Vec<u8>) -> Result<(), EngineError> {
        match self {
            Format::Json => encode_json(schema, row, out),
            Format::Csv => encode_csv(row, out),
            Format::Parquet => {
                return Err(EngineError::Encode {
                    what: "a parquet row".into(),
                    message: "parquet is a bulk format with no per-row encoding; rows go through a parquet part encoder".into(),
                });
            }
        }
        Ok(())
    }
}

/// Formats a timestamp as RFC 3339 UTC with milliseconds; out-of-range values stay numbers.
pub fn format_timestamp(ts: Timestamp) -> String {
    match DateTime::<Utc>::from_timestamp_millis(ts) {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::Millis, true),
        None => ts.to_string(),
    }
}

/// Appends `ts` as [`format_timestamp`] does, without allocating: records of a stream are
/// mostly in time order, so the text up to the second is kept per thread and only the
/// milliseconds are written for each record.
pub fn write_timestamp(ts: Timestamp, out: &mut Vec<u8>) {
    use std::cell::RefCell;
    thread_local! {
        /// The second last formatted, and its text up to the dot ("2026-01-01T00:00:05").
        static LAST_SECOND: RefCell<(i64, String)> = const { RefCell::new((i64::MIN, String::new())) };
    }
    let second = ts.div_euclid(1000);
    let millis = ts.rem_euclid(1000);
    let written = LAST_SECOND.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != second {
            let Some(t) = DateTime::<Utc>::from_timestamp(second, 0) else {
                return false;
            };
            cached.1 = t.format("%Y-%m-%dT%H:%M:%S").to_string();
            cached.0 = second;
        }
        out.extend_from_slice(cached.1.as_bytes());
        true
    });
    if written {
        out.push(b'.');
        out.push(b'0' + (millis / 100) as u8);
        out.push(b'0' + (millis / 10 % 10) as u8);
        out.push(b'0' + (millis % 10) as u8);
        out.push(b'Z');
    } else {
        out.extend_from_slice(ts.to_string().as_bytes());
    }
}

/// Reads a timestamp from RFC 3339 text or integer milliseconds.
pub fn parse_timestamp(text: &str) -> Option<Timestamp> {
    let text = text.trim();
    if let Ok(ms) = text.parse::<i64>() {
        return Some(ms);
    }
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// Appends `row` as a JSON object line.
pub fn encode_json(schema: &Schema, row: &Row, out: &mut Vec<u8>) {
    out.push(b'{');
    for (i, (field, value)) in schema.fields.iter().zip(row).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json_string(&field.name, out);
        out.push(b':');
        match value {
            Value::Null => out.extend_from_slice(b"null"),
            Value::Bool(v) => out.extend_from_slice(if *v { b"true" } else { b"false" }),
            Value::Int(v) => write_int(*v, out),
            // As serde_json writes them: `2.0` (a float, not the int `2`), `1e308` (not 309
            // digits). Writing into a Vec cannot fail.
            Value::Float(v) if v.is_finite() => {
                let _ = serde_json::to_writer(&mut *out, v);
            }
            // JSON has no NaN or infinity.
            Value::Float(_) => out.extend_from_slice(b"null"),
            Value::Str(s) => json_string(s, out),
            Value::Time(t) => {
                // RFC 3339 text never needs JSON escaping.
                out.push(b'"');
                write_timestamp(*t, out);
                out.push(b'"');
            }
        }
    }
    out.extend_from_slice(b"}\n");
}

/// Whether any byte of `bytes` is one `special` picks. Whole 32-byte blocks are tested without
/// an early exit, which the compiler turns into SIMD compares; an early-exit `any` goes byte by
/// byte, which was most of the CSV encoder's time on Nexmark's ~80-byte URLs (this is about 3x
/// faster on those, and the same on short text).
#[inline(always)]
fn any_byte(bytes: &[u8], special: impl Fn(u8) -> bool) -> bool {
    let mut blocks = bytes.chunks_exact(32);
    let mut found = false;
    for block in &mut blocks {
        found |= block.iter().fold(false, |found, &b| found | special(b));
    }
    found || blocks.remainder().iter().any(|&b| special(b))
}

fn json_string(s: &str, out: &mut Vec<u8>) {
    // Most strings need no escaping: copy them as they are.
    if !any_byte(s.as_bytes(), |b| (b == b'"') | (b == b'\\') | (b < 0x20)) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return;
    }
    // serde_json's escaping into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn write_int(v: i64, out: &mut Vec<u8>) {
    let mut buffer = itoa::Buffer::new();
    out.extend_from_slice(buffer.format(v).as_bytes());
}

/// Appends `row` as a CSV line, quoting only fields that need it.
pub fn encode_csv(row: &Row, out: &mut Vec<u8>) {
    for (i, value) in row.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match value {
            Value::Null => {}
            Value::Str(s) => csv_field(s, out),
            Value::Time(t) => write_timestamp(*t, out),
            Value::Float(v) if !v.is_finite() => {}
            Value::Int(v) => write_int(*v, out),
            other => {
                let _ = write!(out, "{other}");
            }
        }
    }
    out.push(b'\n');
}

fn csv_field(s: &str, out: &mut Vec<u8>) {
    let needs_quotes = |b: u8| (b == b',') | (b == b'"') | (b == b'\n') | (b == b'\r');
    if any_byte(s.as_bytes(), needs_quotes) {
        out.push(b'"');
        for b in s.bytes() {
            if b == b'"' {
                out.push(b'"');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(s.as_bytes());
    }
}

/// Parses the text of one field as `data_type`; empty text is null.
pub fn parse_value(text: &str, data_type: DataType) -> Result<Value, String> {
    if text.is_empty() {
        return Ok(Value::Null);
    }
    let bad = || format!("`{text}` is not a valid {data_type}");
    Ok(match data_type {
        DataType::Bool => match text.trim() {
            "true" | "TRUE" | "True" | "1" => Value::Bool(true),
            "false" | "FALSE" | "False" | "0" => Value::Bool(false),
            _ => return Err(bad()),
        },
        DataType::Int => Value::Int(text.trim().parse().map_err(|_| bad())?),
        DataType::Float => Value::Float(text.trim().parse().map_err(|_| bad())?),
        DataType::String => Value::Str(text.into()),
        DataType::Timestamp => Value::Time(parse_timestamp(text).ok_or_else(bad)?),
    })
}

/// Decodes one CSV record (already split into fields) against `schema`.
pub fn decode_csv(schema: &Schema, record: &csv::StringRecord) -> Result<Row, String> {
    if record.len() != schema.len() {
        return Err(format!(
            "{} fields, the schema has {} ({})",
            record.len(),
            schema.len(),
            schema.names()
        ));
    }
    schema
        .fields
        .iter()
        .zip(record.iter())
        .map(|(field, text)| {
            parse_value(text, field.data_type).map_err(|e| format!("field `{}`: {e}", field.name))
        })
        .collect()
}

/// Decodes one JSON object line against `schema`. Missing fields are null; fields not in the
/// schema are ignored.
pub fn decode_json(schema: &Schema, line: &str) -> Result<Row, String> {
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(line).map_err(|e| format!("not a JSON object: {e}"))?;
    schema
        .fields
        .iter()
        .map(|field| {
            let value = object.get(&field.name).unwrap_or(&serde_json::Value::Null);
            json_value(value, field.data_type).map_err(|e| format!("field `{}`: {e}", field.name))
        })
        .collect()
}

fn json_value(value: &serde_json::Value, data_type: DataType) -> Result<Value, String> {
    use serde_json::Value as J;
    let bad = || format!("{value} is not a valid {data_type}");
    Ok(match (value, data_type) {
        (J::Null, _) => Value::Null,
        (J::Bool(b), DataType::Bool) => Value::Bool(*b),
        (J::Number(n), DataType::Int) => Value::Int(n.as_i64().ok_or_else(bad)?),
        (J::Number(n), DataType::Float) => Value::Float(n.as_f64().ok_or_else(bad)?),
        (J::Number(n), DataType::Timestamp) => Value::Time(n.as_i64().ok_or_else(bad)?),
        (J::String(s), DataType::String) => Value::Str(s.as_str().into()),
        (J::String(s), DataType::Timestamp) => Value::Time(parse_timestamp(s).ok_or_else(bad)?),
        (J::String(s), other) => parse_value(s, other)?,
        (J::Number(n), DataType::String) => Value::Str(n.to_string().into()),
        _ => return Err(bad()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Field;

    fn schema() -> Schema {
        Schema::new(vec![
            Field::new("id", DataType::Int),
            Field::new("name", DataType::String),
            Field::new("price", DataType::Float),
            Field::new("at", DataType::Timestamp),
            Field::new("ok", DataType::Bool),
        ])
    }

    fn row() -> Row {
        vec![
            Value::Int(7),
            Value::Str("a \"quoted\", name\n".into()),
            Value::Float(1.5),
            Value::Time(1_764_064_800_123),
            Value::Null,
        ]
    }

    #[test]
    fn json_round_trips() {
        let mut out = Vec::new();
        encode_json(&schema(), &row(), &mut out);
        let line = std::str::from_utf8(&out).unwrap();
        assert!(line.ends_with("}\n"));
        assert!(
            line.contains("\"at\":\"2025-11-25T10:00:00.123Z\""),
            "{line}"
        );
        assert_eq!(decode_json(&schema(), line.trim_end()).unwrap(), row());
    }

    #[test]
    fn json_floats_stay_floats_and_short() {
        let schema = Schema::new(vec![Field::new("x", DataType::Float)]);
        for (value, text) in [
            (2.0, "2.0"),
            (-0.0, "-0.0"),
            (1e308, "1e+308"),
            (0.1, "0.1"),
        ] {
            let mut out = Vec::new();
            encode_json(&schema, &vec![Value::Float(value)], &mut out);
            assert_eq!(out, format!("{{\"x\":{text}}}\n").as_bytes(), "{value}");
            let parsed: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert!(parsed["x"].is_f64(), "{value} reads back as a float");
        }
    }

    proptest::proptest! {
        // Any non-empty text (CSV writes empty text as null), with or without the characters
        // that need quoting or escaping, comes back as written from both formats.
        #[test]
        fn any_text_round_trips(text in "[a-z,\"\\\\\n\r\t\u{1}é ]{1,80}") {
            let schema = Schema::new(vec![Field::new("s", DataType::String)]);
            let row = vec![Value::Str(text.as_str().into())];
            let mut out = Vec::new();
            encode_json(&schema, &row, &mut out);
            let line = std::str::from_utf8(&out).unwrap();
            proptest::prop_assert_eq!(decode_json(&schema, line.trim_end()).unwrap(), row.clone());

            let mut out = Vec::new();
            encode_csv(&row, &mut out);
            let mut reader = csv::ReaderBuilder::new()
                .has_headers(false)
                .from_reader(out.as_slice());
            let record = reader.records().next().unwrap().unwrap();
            proptest::prop_assert_eq!(decode_csv(&schema, &record).unwrap(), row);
        }
    }

    #[test]
    fn csv_round_trips() {
        let mut out = Vec::new();
        encode_csv(&row(), &mut out);
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(out.as_slice());
        let record = reader.records().next().unwrap().unwrap();
        assert_eq!(decode_csv(&schema(), &record).unwrap(), row());
    }

    #[test]
    fn written_timestamps_match_formatted_ones() {
        for ts in [
            0,
            999,
            1_764_064_800_123,
            1_764_064_800_999,
            1_764_064_801_000,
            -1,
            -1_500,
            i64::MAX,
            i64::MIN,
        ] {
            let mut out = Vec::new();
            write_timestamp(ts, &mut out);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                format_timestamp(ts),
                "{ts}"
            );
        }
    }

    #[test]
    fn bad_fields_are_named() {
        let err = decode_json(&schema(), r#"{"id":"x"}"#).unwrap_err();
        assert!(err.contains("field `id`"), "{err}");
        let err = decode_json(&schema(), "[1]").unwrap_err();
        assert!(err.contains("not a JSON object"), "{err}");
        let record = csv::StringRecord::from(vec!["1", "a"]);
        let err = decode_csv(&schema(), &record).unwrap_err();
        assert!(err.contains("2 fields"), "{err}");
    }
}

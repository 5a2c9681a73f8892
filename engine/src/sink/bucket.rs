//! Which bucket (sub-directory of the sink's path) a record goes to.
//!
//! [`BucketAssigner`] is the configuration; [`Bucketer`] is its compiled, per-subtask form that
//! the sink calls for every record. It returns a borrowed `&str` and reuses its buffers, so
//! assigning a bucket allocates nothing per record: a date-time bucket is formatted once per
//! interval in which its text cannot change (an hour for the default pattern), a field bucket is
//! borrowed from the row when it is already path-safe.

use std::fmt::Write as _;

use chrono::format::{Fixed, Item, Numeric, StrftimeItems};
use chrono::{DateTime, Utc};

use crate::data::{Record, Schema, Timestamp, Value};
use crate::error::EngineError;

/// The default date-time pattern, Flink's `yyyy-MM-dd--HH`.
pub const DEFAULT_PATTERN: &str = "%Y-%m-%d--%H";

/// The bucket of records whose field is null or empty, or whose time cannot be formatted.
pub const NULL_BUCKET: &str = "__null__";

/// Longest bucket text taken from a field: a bucket is one path segment, and local file systems
/// refuse names longer than 255 bytes. Longer values are cut (at a character boundary), so two
/// values that share their first 200 bytes share a bucket, which only groups their files.
const MAX_FIELD_BUCKET_LEN: usize = 200;

/// Which clock a date-time bucket reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimeSource {
    /// The record's event time.
    Event,
    /// The wall clock when the sink receives the record (Flink's default).
    #[default]
    Processing,
}

/// How records are spread over buckets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BucketAssigner {
    /// A strftime `pattern` of a time in UTC; `/` in the pattern makes nested directories.
    DateTime { pattern: String, time: TimeSource },
    /// The value of the field at `index`, made path-safe.
    Field { index: usize },
}

impl Default for BucketAssigner {
    fn default() -> Self {
        BucketAssigner::DateTime {
            pattern: DEFAULT_PATTERN.to_string(),
            time: TimeSource::Processing,
        }
    }
}

impl BucketAssigner {
    /// A date-time assigner; fails if `pattern` is not a valid strftime pattern or formats to
    /// something that is not a relative path.
    pub fn date_time(pattern: impl Into<String>, time: TimeSource) -> Result<Self, EngineError> {
        let pattern = pattern.into();
        compile_pattern(&pattern)?;
        Ok(BucketAssigner::DateTime { pattern, time })
    }

    /// Checks the assigner against the schema of the sink's input.
    pub fn validate(&self, schema: &Schema) -> Result<(), EngineError> {
        Bucketer::new(self, schema).map(|_| ())
    }

    /// The bucket of `record` received at processing time `now_ms`. Convenience for callers
    /// outside the sink (it compiles the assigner on every call); an assigner that does not
    /// validate puts everything in [`NULL_BUCKET`].
    pub fn bucket_id(&self, record: &Record, now_ms: Timestamp) -> String {
        let compiled = match self {
            BucketAssigner::DateTime { pattern, time } => {
                compile_pattern(pattern).map(|(items, unit)| Kind::DateTime {
                    items,
                    unit,
                    time: *time,
                    cached: None,
                })
            }
            BucketAssigner::Field { index } => Ok(Kind::Field { index: *index }),
        };
        match compiled {
            Ok(kind) => Bucketer {
                kind,
                text: String::new(),
            }
            .resolve(record, now_ms)
            .to_string(),
            Err(_) => NULL_BUCKET.to_string(),
        }
    }
}

/// The compiled assigner of one sink subtask.
#[derive(Debug)]
pub struct Bucketer {
    kind: Kind,
    /// The last bucket text built (date-time buckets, field values that needed rewriting).
    text: String,
}

#[derive(Debug)]
enum Kind {
    DateTime {
        items: Vec<Item<'static>>,
        /// Milliseconds during which the formatted text cannot change (aligned to the epoch).
        unit: i64,
        time: TimeSource,
        /// The interval (`time / unit`) whose text `Bucketer::text` holds.
        cached: Option<i64>,
    },
    Field {
        index: usize,
    },
}

impl Bucketer {
    pub fn new(assigner: &BucketAssigner, schema: &Schema) -> Result<Self, EngineError> {
        let kind = match assigner {
            BucketAssigner::DateTime { pattern, time } => {
                let (items, unit) = compile_pattern(pattern)?;
                Kind::DateTime {
                    items,
                    unit,
                    time: *time,
                    cached: None,
                }
            }
            BucketAssigner::Field { index } => {
                if *index >= schema.len() {
                    return Err(EngineError::job(
                        "sink.bucket.field",
                        format!(
                            "field index {index} is out of range: the input has {} fields ({})",
                            schema.len(),
                            schema.names()
                        ),
                    ));
                }
                Kind::Field { index: *index }
            }
        };
        Ok(Self {
            kind,
            text: String::new(),
        })
    }

    /// The bucket of `record` received at processing time `now_ms`.
    pub fn resolve<'a>(&'a mut self, record: &'a Record, now_ms: Timestamp) -> &'a str {
        match &mut self.kind {
            Kind::DateTime {
                items,
                unit,
                time,
                cached,
            } => {
                let at = match time {
                    TimeSource::Event => record.timestamp,
                    TimeSource::Processing => now_ms,
                };
                let interval = at.div_euclid(*unit);
                if *cached != Some(interval) {
                    self.text.clear();
                    let formatted = DateTime::<Utc>::from_timestamp_millis(at).is_some_and(|t| {
                        write!(self.text, "{}", t.format_with_items(items.iter())).is_ok()
                    });
                    if !formatted {
                        self.text.clear();
                        self.text.push_str(NULL_BUCKET);
                    }
                    *cached = Some(interval);
                }
                &self.text
            }
            Kind::Field { index } => match record.row.get(*index) {
                None | Some(Value::Null) => NULL_BUCKET,
                Some(Value::Str(s)) if is_safe_segment(s) => s,
                Some(Value::Str(s)) => {
                    sanitize_into(s, &mut self.text);
                    &self.text
                }
                Some(other) => {
                    // Numbers and booleans print path-safe text; checked anyway, since the
                    // cost is nothing next to the formatting.
                    self.text.clear();
                    let _ = write!(self.text, "{other}");
                    if !is_safe_segment(&self.text) {
                        let raw = std::mem::take(&mut self.text);
                        sanitize_into(&raw, &mut self.text);
                    }
                    &self.text
                }
            },
        }
    }
}

/// Parses a strftime pattern, checks that it formats to a relative path, and finds how long
/// its text stays the same.
fn compile_pattern(pattern: &str) -> Result<(Vec<Item<'static>>, i64), EngineError> {
    let bad = |message: String| EngineError::job("sink.bucket.pattern", message);
    if pattern.is_empty() {
        return Err(bad("the date-time pattern is empty".into()));
    }
    let items = StrftimeItems::new(pattern)
        .parse_to_owned()
        .map_err(|e| bad(format!("`{pattern}` is not a valid strftime pattern: {e}")))?;
    let mut sample = String::new();
    let formatted = DateTime::<Utc>::from_timestamp_millis(1_764_064_800_123)
        .is_some_and(|t| write!(sample, "{}", t.format_with_items(items.iter())).is_ok());
    if !formatted {
        return Err(bad(format!("`{pattern}` cannot format a time")));
    }
    if !sample.split('/').all(is_safe_segment) {
        return Err(bad(format!(
            "`{pattern}` formats to `{sample}`, which is not a relative path (empty, `.` or `..` segments, a leading `/` or `.`, or NUL)"
        )));
    }
    let unit = items.iter().map(item_unit).min().unwrap_or(HOUR_MS);
    Ok((items, unit))
}

const HOUR_MS: i64 = 3_600_000;

/// How many milliseconds an item's text stays the same, aligned to the epoch (UTC has no
/// offsets or leap seconds in chrono's millisecond arithmetic). Hours are the coarsest unit
/// used: every coarser field (day, month, week, year, names) changes only on an hour boundary.
/// Anything not known here is treated as changing every millisecond, which is always right.
fn item_unit(item: &Item<'_>) -> i64 {
    match item {
        Item::Literal(_) | Item::OwnedLiteral(_) | Item::Space(_) | Item::OwnedSpace(_) => HOUR_MS,
        Item::Numeric(n, _) => match n {
            Numeric::Minute => 60_000,
            Numeric::Second | Numeric::Timestamp => 1_000,
            Numeric::Nanosecond | Numeric::Internal(_) => 1,
            _ => HOUR_MS,
        },
        Item::Fixed(f) => match f {
            Fixed::ShortMonthName
            | Fixed::LongMonthName
            | Fixed::ShortWeekdayName
            | Fixed::LongWeekdayName
            | Fixed::LowerAmPm
            | Fixed::UpperAmPm
            | Fixed::TimezoneName
            | Fixed::TimezoneOffset
            | Fixed::TimezoneOffsetColon
            | Fixed::TimezoneOffsetDoubleColon
            | Fixed::TimezoneOffsetTripleColon
            | Fixed::TimezoneOffsetColonZ
            | Fixed::TimezoneOffsetZ => HOUR_MS,
            Fixed::RFC2822 => 1_000,
            _ => 1,
        },
        Item::Error => 1,
    }
}

/// Whether `s` can be one path segment as it is: non-empty, no `/`, `\`, NUL or control
/// characters, no leading `.` (hidden, `.` and `..`), no `..` anywhere, not too long.
fn is_safe_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_FIELD_BUCKET_LEN
        && !s.starts_with('.')
        && !s.contains("..")
        && !s.chars().any(|c| c == '/' || c == '\\' || c.is_control())
}

/// Writes `value` as a safe path segment into `out`: separators, NUL and control characters
/// become `_`, a leading `.` becomes `_`, every `..` becomes `._`, the text is cut to
/// [`MAX_FIELD_BUCKET_LEN`] bytes, and nothing left means [`NULL_BUCKET`].
fn sanitize_into(value: &str, out: &mut String) {
    out.clear();
    for c in value.chars() {
        if out.len() + c.len_utf8() > MAX_FIELD_BUCKET_LEN {
            break;
        }
        let c = if c == '/' || c == '\\' || c.is_control() {
            '_'
        } else {
            c
        };
        // Each '.' right after a '.' becomes '_', so no ".." survives.
        if c == '.' && (out.is_empty() || out.ends_with('.')) {
            out.push('_');
        } else {
            out.push(c);
        }
    }
    if out.is_empty() {
        out.push_str(NULL_BUCKET);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{DataType, Field};

    fn schema() -> Schema {
        Schema::new(vec![
            Field::new("name", DataType::String),
            Field::new("n", DataType::Int),
        ])
    }

    fn rec(ts: Timestamp, name: Value) -> Record {
        Record::new(ts, vec![name, Value::Int(3)])
    }

    #[test]
    fn default_pattern_is_flinks_hourly_bucket() {
        let a = BucketAssigner::default();
        // 2025-11-25T10:00:00.123Z
        assert_eq!(
            a.bucket_id(&rec(0, Value::Null), 1_764_064_800_123),
            "2025-11-25--10"
        );
    }

    #[test]
    fn event_time_buckets_follow_the_record_and_the_cache_changes_with_the_hour() {
        let a = BucketAssigner::date_time("%Y/%m/%d/%H", TimeSource::Event).unwrap();
        let mut b = Bucketer::new(&a, &schema()).unwrap();
        let hour = 1_764_064_800_000;
        assert_eq!(b.resolve(&rec(hour, Value::Null), 0), "2025/11/25/10");
        assert_eq!(
            b.resolve(&rec(hour + HOUR_MS - 1, Value::Null), 0),
            "2025/11/25/10"
        );
        assert_eq!(
            b.resolve(&rec(hour + HOUR_MS, Value::Null), 0),
            "2025/11/25/11"
        );
        // Going back in time re-formats too.
        assert_eq!(b.resolve(&rec(hour, Value::Null), 0), "2025/11/25/10");
        // Out of chrono's range.
        assert_eq!(b.resolve(&rec(i64::MAX, Value::Null), 0), NULL_BUCKET);
    }

    #[test]
    fn minute_and_second_patterns_are_not_cached_per_hour() {
        let a = BucketAssigner::date_time("%H-%M-%S", TimeSource::Processing).unwrap();
        let mut b = Bucketer::new(&a, &schema()).unwrap();
        let t = 1_764_064_800_000;
        assert_eq!(b.resolve(&rec(0, Value::Null), t), "10-00-00");
        assert_eq!(b.resolve(&rec(0, Value::Null), t + 1_000), "10-00-01");
        assert_eq!(b.resolve(&rec(0, Value::Null), t + 61_000), "10-01-01");
    }

    #[test]
    fn invalid_patterns_are_job_errors() {
        for p in ["%Y-%Q", "", "/%Y", "%Y/../x", ".%Y", "%Y//%m"] {
            let err = BucketAssigner::date_time(p, TimeSource::Event).unwrap_err();
            assert!(
                matches!(err, EngineError::Job { ref at, .. } if at == "sink.bucket.pattern"),
                "{p}: {err}"
            );
        }
    }

    #[test]
    fn field_buckets_are_path_safe() {
        let a = BucketAssigner::Field { index: 0 };
        let mut b = Bucketer::new(&a, &schema()).unwrap();
        let mut id = |v: Value| b.resolve(&rec(0, v), 0).to_string();
        assert_eq!(id(Value::Str("eu-west".into())), "eu-west");
        assert_eq!(id(Value::Str("a/b".into())), "a_b");
        assert_eq!(id(Value::Str("../etc".into())), "_._etc");
        assert_eq!(id(Value::Str("x..y...z".into())), "x._y._.z");
        assert_eq!(id(Value::Str(".hidden".into())), "_hidden");
        assert_eq!(id(Value::Str("nul\0byte".into())), "nul_byte");
        assert_eq!(id(Value::Str("".into())), NULL_BUCKET);
        assert_eq!(id(Value::Null), NULL_BUCKET);
        assert_eq!(id(Value::Int(-4)), "-4");
        assert_eq!(id(Value::Float(0.5)), "0.5");
        let long = id(Value::Str("é".repeat(300).into()));
        assert!(long.len() <= MAX_FIELD_BUCKET_LEN && long.starts_with('é'));
        for v in ["a/b", "../etc", "x..y...z", ".hidden", "nul\0byte"] {
            assert!(is_safe_segment(&id(Value::Str(v.into()))), "{v}");
        }
    }

    #[test]
    fn field_index_is_checked_against_the_schema() {
        let err = BucketAssigner::Field { index: 2 }
            .validate(&schema())
            .unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
    }
}

//! The job file: a TOML description of a dataflow, as `rivulet run JOB.toml` reads it.
//! `docs/engine.md` is its reference; unknown fields are errors, so that a typo is caught
//! rather than ignored.

use serde::Deserialize;

use crate::format::Format;

/// A duration as job files write it: `"10s"`, `"500ms"`, `"2m"`.
pub type DurationText = String;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub name: String,
    /// The parallelism of stages that do not set theirs (default 1).
    pub parallelism: Option<usize>,
    #[serde(default)]
    pub checkpoint: CheckpointSpec,
    #[serde(default)]
    pub restart: RestartSpec,
    #[serde(default, rename = "source")]
    pub sources: Vec<SourceSpec>,
    #[serde(default, rename = "operator")]
    pub operators: Vec<OperatorSpec>,
    #[serde(default, rename = "sink")]
    pub sinks: Vec<SinkSpec>,
    /// Where each `[[operator]]` table is in the text (filled in by [`super::parse`]; empty
    /// for a spec built otherwise): errors found when compiling, such as a key field the
    /// input does not have, name the line.
    #[serde(skip)]
    pub operator_lines: Vec<TableLines>,
}

/// The lines of one table of a job file: its header and each of its keys (1-based).
#[derive(Debug, Clone, Default)]
pub struct TableLines {
    pub header: usize,
    pub keys: Vec<(String, usize)>,
}

impl TableLines {
    /// The line of `key` in the table, else of its header.
    pub fn of(&self, key: &str) -> usize {
        self.keys
            .iter()
            .find(|(k, _)| k == key)
            .map_or(self.header, |(_, line)| *line)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSpec {
    /// Time between checkpoints (default 10s); `"off"` takes only the final one.
    pub interval: Option<DurationText>,
    /// A checkpoint not complete after this long is declined (default 60s).
    pub timeout: Option<DurationText>,
    /// Completed checkpoints kept in the store (default 3).
    pub retained: Option<usize>,
    /// Declined checkpoints in a row the job tolerates; one more fails the attempt, which
    /// restarts per the restart strategy (default: no limit).
    pub tolerable_failures: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartSpec {
    /// `fixed-delay` (default) or `none`.
    pub strategy: Option<String>,
    /// Restarts before the job fails (default 3).
    pub attempts: Option<u32>,
    /// Wait before each restart (default 1s).
    pub delay: Option<DurationText>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SourceSpec {
    Nexmark {
        id: Option<String>,
        parallelism: Option<usize>,
        /// `bid` (default), `auction`, `person` or `all`.
        events: Option<String>,
        /// Events over all subtasks (of the full Person/Auction/Bid stream); unbounded if absent.
        count: Option<u64>,
        /// Events per second over all subtasks; as fast as possible if absent.
        rate: Option<u64>,
        /// Bounded out-of-orderness of the watermarks (default 0s).
        watermark_delay: Option<DurationText>,
    },
    Files {
        id: Option<String>,
        parallelism: Option<usize>,
        /// Store key prefix of the input files.
        prefix: String,
        format: Format,
        /// The fields, in order, as `"name:type"` (types: int, float, string, bool, timestamp).
        schema: Vec<String>,
        /// Event time from this field; processing time if absent.
        timestamp: Option<String>,
        /// Read the files there at the start and end (default), or keep watching for new ones.
        bounded: Option<bool>,
        /// How often an unbounded source looks for new files (default 1s).
        discover_interval: Option<DurationText>,
        /// `fail` (default) or `skip` (count and log) malformed records.
        on_error: Option<String>,
        watermark_delay: Option<DurationText>,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum OperatorSpec {
    Filter {
        id: Option<String>,
        input: Option<String>,
        parallelism: Option<usize>,
        /// Keep the rows where this is true: `price > 1000 and channel = 'Google'`.
        #[serde(rename = "where")]
        predicate: String,
    },
    Map {
        id: Option<String>,
        input: Option<String>,
        parallelism: Option<usize>,
        /// The output fields, in order: `"auction"`, `"price_eur = price * 0.908"`.
        fields: Vec<String>,
    },
    /// Hash-partitions its input by `fields` for the stage that reads it: every record of
    /// one key goes to the same subtask of that stage (on whichever task manager it runs). A
    /// window reading it is keyed by these fields without a `key_by` of its own. It is not a
    /// stage of its own at run time: the partitioning is the edge into the next stage.
    #[serde(rename = "key_by")]
    KeyBy {
        id: Option<String>,
        input: Option<String>,
        /// The key fields, at least one.
        fields: Vec<String>,
    },
    Window {
        id: Option<String>,
        input: Option<String>,
        parallelism: Option<usize>,
        /// The key fields (the input is partitioned by them); may be left out when the input
        /// is a `key_by` stage.
        key_by: Option<Vec<String>>,
        /// `tumbling` or `sliding`.
        window: String,
        size: DurationText,
        /// Sliding windows only: how often a window starts.
        slide: Option<DurationText>,
        /// `"bids = count()"`, `"max(price)"`, `"avg_price = avg(price)"`.
        aggregates: Vec<String>,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SinkSpec {
    File {
        id: Option<String>,
        input: Option<String>,
        parallelism: Option<usize>,
        /// Store key prefix of the output.
        path: String,
        format: Format,
        /// Bucket by a date-time pattern (strftime, UTC; default `%Y-%m-%d--%H`) ...
        bucket: Option<String>,
        /// ... of `processing` (default) or `event` time,
        bucket_time: Option<String>,
        /// ... or by the value of this field.
        bucket_field: Option<String>,
        /// Roll the part file at this size (default 128MiB).
        max_part_size: Option<SizeText>,
        /// Roll part files older than this (default 60s).
        rollover_interval: Option<DurationText>,
        /// Roll part files not written for this long (default 60s).
        inactivity_interval: Option<DurationText>,
        /// Roll at every checkpoint (default false).
        roll_on_checkpoint: Option<bool>,
    },
    Discard {
        id: Option<String>,
        input: Option<String>,
        parallelism: Option<usize>,
        /// Records a second each subtask takes at most (a slow consumer, to see backpressure);
        /// as fast as possible if absent.
        rate: Option<u64>,
    },
}

/// A size: a number of bytes, or text like `"128MiB"`, `"64 KiB"`, `"1GB"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SizeText {
    Bytes(u64),
    Text(String),
}

impl SizeText {
    pub fn bytes(&self) -> Result<u64, String> {
        match self {
            SizeText::Bytes(n) => Ok(*n),
            SizeText::Text(t) => parse_size(t),
        }
    }
}

/// Parses `"128MiB"`, `"64 KiB"`, `"1GB"`, `"4096"`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size like 128MiB"))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "`{text}` has an unknown unit (use B, KiB, MiB, GiB, KB, MB, GB)"
            ));
        }
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// Parses a duration, naming the field on error.
pub fn parse_duration(at: &str, text: &str) -> Result<std::time::Duration, crate::EngineError> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        crate::EngineError::job(
            at,
            format!("`{text}` is not a duration like 10s or 500ms: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("128MiB").unwrap(), 128 << 20);
        assert_eq!(parse_size("64 KiB").unwrap(), 64 << 10);
        assert_eq!(parse_size("1GB").unwrap(), 1_000_000_000);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(
            parse_size("12 parsecs")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(parse_size("MiB").is_err());
    }

    #[test]
    fn unknown_fields_are_errors() {
        let err = toml::from_str::<JobSpec>(
            "name = 'x'\n[[operator]]\nkind = 'filter'\nwher = 'price > 1'\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("wher"), "{err}");
        let err = toml::from_str::<JobSpec>("name = 'x'\n[[sink]]\nkind = 'tape'\n").unwrap_err();
        assert!(err.to_string().contains("tape"), "{err}");
    }
}

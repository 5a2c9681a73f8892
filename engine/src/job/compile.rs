//! From a job file to a job graph: each stage becomes a vertex built with the DataStream API,
//! checked against the schema of its input when the job is compiled (an unknown field or a
//! type error is reported before anything runs, naming the stage and the field).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::spec::{JobSpec, OperatorSpec, SinkSpec, SourceSpec, TableLines, parse_duration};
use crate::builder::{DataStream, JobBuilder, StageOptions};
use crate::data::{DataType, Field, Schema};
use crate::error::EngineError;
use crate::expr::{Expr, parse_named};
use crate::graph::{CheckpointConfig, JobGraph, RestartStrategy};
use crate::operator::{Operator, Source};
use crate::operators::{
    FilterOperator, ProjectOperator, WindowAssigner, WindowOperator, WindowSpec, parse_aggregate,
};
use crate::sink::{
    BucketAssigner, DiscardSink, FileSink, FileSinkConfig, RollingPolicy, SinkMetrics, TimeSource,
};
use crate::source::files::{FilesConfig, FilesSource, OnError};
use crate::source::nexmark::{EventKind, NexmarkConfig, NexmarkSource, schema_for};

/// Where a file sink of the job writes, and its counters over all its subtasks and restarts
/// in this process.
#[derive(Debug, Clone)]
pub struct OutputInfo {
    pub sink_id: String,
    pub path: String,
    pub metrics: Arc<SinkMetrics>,
}

/// A compiled job: its graph and what it writes.
pub struct CompiledJob {
    pub graph: JobGraph,
    pub outputs: Vec<OutputInfo>,
}

/// Compiles `spec` for the run `job_id` (file sinks name their part files after it, so two
/// runs of a job never write the same names).
pub fn compile(spec: &JobSpec, job_id: &str) -> Result<CompiledJob, EngineError> {
    if spec.name.trim().is_empty() {
        return Err(EngineError::job("name", "must not be empty"));
    }
    let job = JobBuilder::new(&spec.name);
    let default_parallelism = spec.parallelism.unwrap_or(1);
    if default_parallelism == 0 {
        return Err(EngineError::job("parallelism", "must be at least 1"));
    }
    if default_parallelism > crate::graph::MAX_PARALLELISM {
        return Err(EngineError::job(
            "parallelism",
            format!(
                "{default_parallelism} is more than {}, the most a stage may run",
                crate::graph::MAX_PARALLELISM
            ),
        ));
    }
    job.set_parallelism(default_parallelism);
    job.set_checkpointing(checkpoint_config(spec)?);
    job.set_restart(restart_strategy(spec)?);
    if spec.sources.is_empty() {
        return Err(EngineError::job("source", "the job has no [[source]]"));
    }
    if spec.sinks.is_empty() {
        return Err(EngineError::job(
            "sink",
            "the job has no [[sink]]; add one (kind = \"discard\" drops the output)",
        ));
    }

    let mut last: Option<DataStream> = None;
    for (i, source) in spec.sources.iter().enumerate() {
        last = Some(add_source(&job, i, source)?);
    }
    // `key_by` stages by id: they have no vertex of their own for `job.stream` to find.
    let mut keyed = HashMap::new();
    for (i, operator) in spec.operators.iter().enumerate() {
        let stages = Stages {
            job: &job,
            keyed: &keyed,
        };
        let lines = spec.operator_lines.get(i);
        let stream = add_operator(&stages, i, operator, lines, last.as_ref())?;
        if let OperatorSpec::KeyBy { id, .. } = operator {
            keyed.insert(stage_id(id, "key_by", i), stream.clone());
        }
        last = Some(stream);
    }
    let stages = Stages {
        job: &job,
        keyed: &keyed,
    };
    let mut outputs = Vec::new();
    for (i, sink) in spec.sinks.iter().enumerate() {
        if let Some(output) = add_sink(&stages, i, sink, last.as_ref(), job_id)? {
            outputs.push(output);
        }
    }
    if let Some(id) = keyed.keys().find(|id| job.stream(id).is_some()) {
        return Err(EngineError::job(
            id.as_str(),
            "two stages have this id; ids must be unique",
        ));
    }
    Ok(CompiledJob {
        graph: job.build()?,
        outputs,
    })
}

fn checkpoint_config(spec: &JobSpec) -> Result<CheckpointConfig, EngineError> {
    let mut config = CheckpointConfig::default();
    let c = &spec.checkpoint;
    if let Some(text) = &c.interval {
        config.interval = if text.trim() == "off" {
            None
        } else {
            let d = parse_duration("checkpoint.interval", text)?;
            if d < Duration::from_millis(10) {
                return Err(EngineError::job(
                    "checkpoint.interval",
                    "must be at least 10ms (or \"off\")",
                ));
            }
            Some(d)
        };
    }
    if let Some(text) = &c.timeout {
        config.timeout = parse_duration("checkpoint.timeout", text)?;
        if config.timeout.is_zero() {
            // Every checkpoint would be declined the moment it is triggered, the final one
            // too: the job would restart until it fails, and publish nothing.
            return Err(EngineError::job(
                "checkpoint.timeout",
                format!("`{text}` is no time for a checkpoint to complete; give one like 60s"),
            ));
        }
    }
    if let Some(n) = c.retained {
        if n == 0 {
            return Err(EngineError::job(
                "checkpoint.retained",
                "must be at least 1",
            ));
        }
        config.retained = n;
    }
    config.tolerable_failures = c.tolerable_failures;
    Ok(config)
}

fn restart_strategy(spec: &JobSpec) -> Result<RestartStrategy, EngineError> {
    let r = &spec.restart;
    match r.strategy.as_deref().unwrap_or("fixed-delay") {
        "none" => Ok(RestartStrategy::None),
        "fixed-delay" => Ok(RestartStrategy::FixedDelay {
            attempts: r.attempts.unwrap_or(3),
            delay: match &r.delay {
                Some(t) => parse_duration("restart.delay", t)?,
                None => Duration::from_secs(1),
            },
        }),
        other => Err(EngineError::job(
            "restart.strategy",
            format!("`{other}` is not a strategy (fixed-delay or none)"),
        )),
    }
}

/// `source[2]`-style names for stages without an id.
fn stage_id(id: &Option<String>, kind: &str, index: usize) -> String {
    id.clone()
        .unwrap_or_else(|| format!("{kind}-{}", index + 1))
}

fn add_source(job: &JobBuilder, i: usize, spec: &SourceSpec) -> Result<DataStream, EngineError> {
    match spec {
        SourceSpec::Nexmark {
            id,
            parallelism,
            events,
            count,
            rate,
            watermark_delay,
        } => {
            let id = stage_id(id, "nexmark", i);
            let kind = match events.as_deref().unwrap_or("bid") {
                "bid" | "bids" => EventKind::Bid,
                "auction" | "auctions" => EventKind::Auction,
                "person" | "persons" | "people" => EventKind::Person,
                "all" => EventKind::All,
                other => {
                    return Err(EngineError::job(
                        format!("source {id}.events"),
                        format!("`{other}` is not bid, auction, person or all"),
                    ));
                }
            };
            let config = NexmarkConfig {
                events: kind,
                count: *count,
                rate: *rate,
                ..NexmarkConfig::default()
            };
            // Built once here so that a bad configuration fails at compile time.
            NexmarkSource::new(config.clone())
                .map_err(|e| for_stage(&format!("source {id}"), e))?;
            let delay =
                optional_duration(&format!("source {id}.watermark_delay"), watermark_delay)?;
            job.source_with(
                StageOptions {
                    id: &id,
                    description: "nexmark",
                    parallelism: *parallelism,
                },
                delay,
                Arc::new(move |_| {
                    Ok(Box::new(NexmarkSource::new(config.clone())?) as Box<dyn Source>)
                }),
                schema_for(kind),
            )
        }
        SourceSpec::Files {
            id,
            parallelism,
            prefix,
            format,
            schema,
            timestamp,
            bounded,
            discover_interval,
            on_error,
            watermark_delay,
        } => {
            let id = stage_id(id, "files", i);
            if format.is_bulk() {
                return Err(EngineError::job(
                    format!("source {id}.format"),
                    "the files source reads json or csv; parquet is an output format only",
                ));
            }
            let schema = Arc::new(parse_schema(&format!("source {id}.schema"), schema)?);
            let on_error = match on_error.as_deref().unwrap_or("fail") {
                "fail" => OnError::Fail,
                "skip" => OnError::Skip,
                other => {
                    return Err(EngineError::job(
                        format!("source {id}.on_error"),
                        format!("`{other}` is not fail or skip"),
                    ));
                }
            };
            if prefix.starts_with('/')
                || prefix.contains("//")
                || prefix.split('/').any(|s| s == "." || s == "..")
            {
                return Err(EngineError::job(
                    format!("source {id}.prefix"),
                    format!(
                        "`{prefix}` is not a key prefix like input/clicks/ (no leading `/`, no \
                         empty, `.` or `..` segments): no key of the store could match it"
                    ),
                ));
            }
            let mut config = FilesConfig::new(prefix.clone(), *format, schema.clone());
            config.timestamp_field = timestamp.clone();
            config.bounded = bounded.unwrap_or(true);
            config.on_error = on_error;
            if let Some(t) = discover_interval {
                config.discover_interval =
                    parse_duration(&format!("source {id}.discover_interval"), t)?;
            }
            FilesSource::new(config.clone()).map_err(|e| for_stage(&format!("source {id}"), e))?;
            let delay =
                optional_duration(&format!("source {id}.watermark_delay"), watermark_delay)?;
            job.source_with(
                StageOptions {
                    id: &id,
                    description: "files",
                    parallelism: *parallelism,
                },
                delay,
                Arc::new(move |_| {
                    Ok(Box::new(FilesSource::new(config.clone())?) as Box<dyn Source>)
                }),
                schema,
            )
        }
    }
}

fn optional_duration(at: &str, text: &Option<String>) -> Result<Duration, EngineError> {
    match text {
        Some(t) => parse_duration(at, t),
        None => Ok(Duration::ZERO),
    }
}

/// `["id:int", "name:string"]` to a schema.
fn parse_schema(at: &str, fields: &[String]) -> Result<Schema, EngineError> {
    if fields.is_empty() {
        return Err(EngineError::job(
            at,
            "needs at least one \"name:type\" field",
        ));
    }
    let mut out: Vec<Field> = Vec::new();
    for (i, f) in fields.iter().enumerate() {
        let (name, ty) = f.split_once(':').ok_or_else(|| {
            EngineError::job(
                format!("{at}[{i}]"),
                format!("`{f}` is not \"name:type\" (types: int, float, string, bool, timestamp)"),
            )
        })?;
        let (name, ty) = (name.trim(), ty.trim());
        let data_type = DataType::parse(ty).ok_or_else(|| {
            EngineError::job(
                format!("{at}[{i}]"),
                format!("`{ty}` is not a type (int, float, string, bool, timestamp)"),
            )
        })?;
        if name.is_empty() || out.iter().any(|o| o.name == name) {
            return Err(EngineError::job(
                format!("{at}[{i}]"),
                format!("`{name}` is empty or named twice"),
            ));
        }
        out.push(Field::new(name, data_type));
    }
    Ok(Schema::new(out))
}

/// The stages defined so far, for stages that name their input.
struct Stages<'a> {
    job: &'a JobBuilder,
    keyed: &'a HashMap<String, DataStream>,
}

/// The stage a stage reads: its `input`, else the stage defined before it.
fn input_of(
    stages: &Stages<'_>,
    at: &str,
    input: &Option<String>,
    previous: Option<&DataStream>,
) -> Result<DataStream, EngineError> {
    match input {
        Some(name) => stages
            .keyed
            .get(name)
            .cloned()
            .or_else(|| stages.job.stream(name))
            .ok_or_else(|| {
                EngineError::job(
                    format!("{at}.input"),
                    format!("no stage `{name}` is defined before this one"),
                )
            }),
        None => previous.cloned().ok_or_else(|| {
            EngineError::job(format!("{at}.input"), "there is no stage before this one")
        }),
    }
}

/// A `key_by` stage: its input, hash-partitioned by `fields` for the stage that reads it.
fn add_key_by(
    stages: &Stages<'_>,
    id: &str,
    input: &Option<String>,
    fields: &[String],
    line: Option<usize>,
    previous: Option<&DataStream>,
) -> Result<DataStream, EngineError> {
    let at = format!("operator {id}");
    if stages.keyed.contains_key(id) || stages.job.stream(id).is_some() {
        return Err(EngineError::job(
            at,
            "two stages have this id; ids must be unique",
        ));
    }
    let input = input_of(stages, &at, input, previous)?;
    let field_at = match line {
        Some(line) => format!("{at}.fields, line {line}"),
        None => format!("{at}.fields"),
    };
    if fields.is_empty() {
        return Err(EngineError::job(
            field_at,
            "lists no field; a key needs at least one",
        ));
    }
    let schema = input.schema();
    if let Some(unknown) = fields.iter().find(|f| schema.index_of(f).is_none()) {
        return Err(EngineError::job(
            field_at,
            format!(
                "no field `{unknown}` in the input {}; it has {}",
                input.id(),
                schema.names()
            ),
        ));
    }
    let keys: Vec<&str> = fields.iter().map(String::as_str).collect();
    input.key_by(&keys)
}

fn add_operator(
    stages: &Stages<'_>,
    i: usize,
    spec: &OperatorSpec,
    lines: Option<&TableLines>,
    previous: Option<&DataStream>,
) -> Result<DataStream, EngineError> {
    match spec {
        OperatorSpec::KeyBy { id, input, fields } => {
            let id = stage_id(id, "key_by", i);
            let line = lines.map(|l| l.of("fields"));
            add_key_by(stages, &id, input, fields, line, previous)
        }
        OperatorSpec::Filter {
            id,
            input,
            parallelism,
            predicate,
        } => {
            let id = stage_id(id, "filter", i);
            let at = format!("operator {id}");
            let input = input_of(stages, &at, input, previous)?;
            let expr = Expr::parse(predicate).map_err(|e| in_stage(&at, "where", e))?;
            let schema = input.schema();
            let bound = expr.bind(&schema).map_err(|e| in_stage(&at, "where", e))?;
            if bound.data_type() != DataType::Bool {
                return Err(EngineError::job(
                    format!("{at}.where"),
                    format!("`{predicate}` is a {}, not a condition", bound.data_type()),
                ));
            }
            FilterOperator::new(bound.clone()).map_err(|e| in_stage(&at, "where", e))?;
            input.transform(
                StageOptions {
                    id: &id,
                    description: "filter",
                    parallelism: *parallelism,
                },
                schema,
                Arc::new(move |_| {
                    Ok(Box::new(FilterOperator::new(bound.clone())?) as Box<dyn Operator>)
                }),
            )
        }
        OperatorSpec::Map {
            id,
            input,
            parallelism,
            fields,
        } => {
            let id = stage_id(id, "map", i);
            let at = format!("operator {id}");
            let input = input_of(stages, &at, input, previous)?;
            let schema = input.schema();
            let mut named = Vec::new();
            for (n, text) in fields.iter().enumerate() {
                let field_at = format!("fields[{n}]");
                let (name, expr) = parse_named(text).map_err(|e| in_stage(&at, &field_at, e))?;
                let bound = expr
                    .bind(&schema)
                    .map_err(|e| in_stage(&at, &field_at, e))?;
                named.push((name, bound));
            }
            if named.is_empty() {
                return Err(EngineError::job(format!("{at}.fields"), "lists no field"));
            }
            let project =
                ProjectOperator::new(named.clone()).map_err(|e| in_stage(&at, "fields", e))?;
            let output = Arc::new(project.output_schema());
            input.transform(
                StageOptions {
                    id: &id,
                    description: "map",
                    parallelism: *parallelism,
                },
                output,
                Arc::new(move |_| {
                    Ok(Box::new(ProjectOperator::new(named.clone())?) as Box<dyn Operator>)
                }),
            )
        }
        OperatorSpec::Window {
            id,
            input,
            parallelism,
            key_by,
            window,
            size,
            slide,
            aggregates,
        } => {
            let id = stage_id(id, "window", i);
            let at = format!("operator {id}");
            let input = input_of(stages, &at, input, previous)?;
            let schema = input.schema();
            let keyed = match (key_by, input.key_fields()) {
                (Some(keys), None) => {
                    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
                    input
                        .key_by(&keys)
                        .map_err(|e| in_stage(&at, "key_by", e))?
                }
                // Read from a `key_by` stage: keyed by its fields already.
                (None, Some(_)) => input,
                (Some(keys), Some(upstream)) if *keys == upstream => input,
                (Some(keys), Some(upstream)) => {
                    return Err(EngineError::job(
                        format!("{at}.key_by"),
                        format!(
                            "the input {} is keyed by [{}] already, not [{}]; leave key_by out \
                             here or key the input by the same fields",
                            input.id(),
                            upstream.join(", "),
                            keys.join(", ")
                        ),
                    ));
                }
                (None, None) => {
                    return Err(EngineError::job(
                        format!("{at}.key_by"),
                        format!(
                            "missing: a window needs a keyed input, and {} is not keyed; give \
                             key_by = [...] here or read from a key_by stage",
                            input.id()
                        ),
                    ));
                }
            };
            let keys = keyed.key_fields().unwrap_or_default();
            let size_ms = window_millis(&format!("{at}.size"), size)?;
            let assigner = match window.as_str() {
                "tumbling" => WindowAssigner::Tumbling { size_ms },
                "sliding" => {
                    let slide = slide.as_ref().ok_or_else(|| {
                        EngineError::job(format!("{at}.slide"), "a sliding window needs a slide")
                    })?;
                    WindowAssigner::Sliding {
                        size_ms,
                        slide_ms: window_millis(&format!("{at}.slide"), slide)?,
                    }
                }
                other => {
                    return Err(EngineError::job(
                        format!("{at}.window"),
                        format!("`{other}` is not tumbling or sliding"),
                    ));
                }
            };
            let mut specs = Vec::new();
            for (n, text) in aggregates.iter().enumerate() {
                specs.push(
                    parse_aggregate(text, &schema)
                        .map_err(|e| in_stage(&at, &format!("aggregates[{n}]"), e))?,
                );
            }
            let key_fields = keys
                .iter()
                .filter_map(|k| schema.index_of(k))
                .collect::<Vec<_>>();
            let window_spec = WindowSpec {
                assigner,
                key_fields,
                aggregates: specs,
            };
            let operator = WindowOperator::new(window_spec.clone(), &schema)
                .map_err(|e| in_stage(&at, "window", e))?;
            let output = Arc::new(operator.output_schema());
            keyed.transform(
                StageOptions {
                    id: &id,
                    description: "window",
                    parallelism: *parallelism,
                },
                output,
                Arc::new(move |_| {
                    Ok(Box::new(WindowOperator::new(window_spec.clone(), &schema)?)
                        as Box<dyn Operator>)
                }),
            )
        }
    }
}

/// A window's size or slide in milliseconds, the windows' resolution.
fn window_millis(at: &str, text: &str) -> Result<i64, EngineError> {
    let d = parse_duration(at, text)?;
    if d < Duration::from_millis(1) {
        return Err(EngineError::job(
            at,
            format!(
                "`{text}` is shorter than a millisecond, the windows' resolution; give one like 10s"
            ),
        ));
    }
    Ok(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Names the stage in an error of a source's or sink's own checks, which know only their kind
/// and key (`sink.rolling.max_part_size`): `sink out.max_part_size`, the key of the job file.
fn for_stage(at: &str, e: EngineError) -> EngineError {
    match e {
        EngineError::Job { at: inner, message } => {
            let key = inner.rsplit('.').next().unwrap_or(&inner);
            EngineError::job(format!("{at}.{key}"), message)
        }
        other => other,
    }
}

/// Prefixes an error with the stage and field it came from.
fn in_stage(at: &str, field: &str, e: EngineError) -> EngineError {
    match e {
        EngineError::Job { at: inner, message } => {
            EngineError::job(format!("{at}.{field} ({inner})"), message)
        }
        other => EngineError::job(format!("{at}.{field}"), other.to_string()),
    }
}

fn add_sink(
    stages: &Stages<'_>,
    i: usize,
    spec: &SinkSpec,
    previous: Option<&DataStream>,
    job_id: &str,
) -> Result<Option<OutputInfo>, EngineError> {
    match spec {
        SinkSpec::Discard {
            id,
            input,
            parallelism,
            rate,
        } => {
            let id = stage_id(id, "discard", i);
            let at = format!("sink {id}");
            let input = input_of(stages, &at, input, previous)?;
            if *rate == Some(0) {
                return Err(EngineError::job(
                    format!("{at}.rate"),
                    "must be at least 1 record a second (leave it out for no limit)",
                ));
            }
            let rate = *rate;
            input.sink(
                StageOptions {
                    id: &id,
                    description: "discard",
                    parallelism: *parallelism,
                },
                Arc::new(move |_| {
                    let sink = match rate {
                        Some(rate) => DiscardSink::throttled(rate),
                        None => DiscardSink::new(),
                    };
                    Ok(Box::new(sink) as Box<dyn Operator>)
                }),
            )?;
            Ok(None)
        }
        SinkSpec::File {
            id,
            input,
            parallelism,
            path,
            format,
            bucket,
            bucket_time,
            bucket_field,
            max_part_size,
            rollover_interval,
            inactivity_interval,
            roll_on_checkpoint,
        } => {
            let id = stage_id(id, "file", i);
            let at = format!("sink {id}");
            let input = input_of(stages, &at, input, previous)?;
            let schema = input.schema();
            let path = path.trim_matches('/').to_string();
            check_output_path(&format!("{at}.path"), &path)?;
            let mut config = FileSinkConfig::new(path.clone(), *format);
            config.bucket = match (bucket, bucket_field) {
                (Some(_), Some(_)) => {
                    return Err(EngineError::job(
                        format!("{at}.bucket_field"),
                        "give either bucket (a date-time pattern) or bucket_field, not both",
                    ));
                }
                (_, Some(field)) => BucketAssigner::Field {
                    index: schema.index_of(field).ok_or_else(|| {
                        EngineError::job(
                            format!("{at}.bucket_field"),
                            format!("no field `{field}`; the input has {}", schema.names()),
                        )
                    })?,
                },
                (pattern, None) => {
                    let time = match bucket_time.as_deref().unwrap_or("processing") {
                        "processing" => TimeSource::Processing,
                        "event" => TimeSource::Event,
                        other => {
                            return Err(EngineError::job(
                                format!("{at}.bucket_time"),
                                format!("`{other}` is not event or processing"),
                            ));
                        }
                    };
                    BucketAssigner::date_time(
                        pattern
                            .clone()
                            .unwrap_or_else(|| "%Y-%m-%d--%H".to_string()),
                        time,
                    )
                    .map_err(|e| in_stage(&at, "bucket", e))?
                }
            };
            let mut rolling = RollingPolicy::default();
            if let Some(size) = max_part_size {
                rolling.max_part_size = size
                    .bytes()
                    .map_err(|m| EngineError::job(format!("{at}.max_part_size"), m))?;
            }
            if let Some(t) = rollover_interval {
                rolling.rollover_interval = parse_duration(&format!("{at}.rollover_interval"), t)?;
            }
            if let Some(t) = inactivity_interval {
                rolling.inactivity_interval =
                    parse_duration(&format!("{at}.inactivity_interval"), t)?;
            }
            // A bulk file (Parquet) cannot be resumed after a restore, so it never stays in
            // progress across a checkpoint. The sink forces this too; a job file that asks
            // otherwise is told rather than silently overridden.
            if format.is_bulk() && *roll_on_checkpoint == Some(false) {
                return Err(EngineError::job(
                    format!("{at}.roll_on_checkpoint"),
                    "parquet files roll at every checkpoint (a bulk file cannot be resumed after a restore); remove `roll_on_checkpoint = false`",
                ));
            }
            rolling.roll_on_checkpoint = roll_on_checkpoint.unwrap_or(format.is_bulk());
            config.rolling = rolling;
            config.part_prefix = part_prefix(job_id);
            FileSink::new(config.clone(), schema.clone()).map_err(|e| for_stage(&at, e))?;
            let metrics = Arc::new(SinkMetrics::default());
            let shared = metrics.clone();
            input.sink(
                StageOptions {
                    id: &id,
                    description: "file sink",
                    parallelism: *parallelism,
                },
                Arc::new(move |_| {
                    Ok(Box::new(
                        FileSink::new(config.clone(), schema.clone())?.with_metrics(shared.clone()),
                    ) as Box<dyn Operator>)
                }),
            )?;
            Ok(Some(OutputInfo {
                sink_id: id,
                path,
                metrics,
            }))
        }
    }
}

/// Checks a file sink's `path` (a store key prefix, `/` already trimmed off its ends): every
/// segment a plain name, so that the output stays under the path and out of the names the
/// store and the engine keep for themselves.
fn check_output_path(at: &str, path: &str) -> Result<(), EngineError> {
    let bad = |why: String| {
        EngineError::job(
            at,
            format!("`{path}` is not a key prefix like out/bids: {why}"),
        )
    };
    if path.is_empty() {
        return Err(bad("it is empty".into()));
    }
    if let Some(c) = path.chars().find(|c| *c == '\\' || c.is_control()) {
        return Err(bad(format!(
            "it contains {}; use `/` between plain names",
            if c == '\\' {
                "a backslash".to_string()
            } else {
                format!("the control character {:?}", c)
            }
        )));
    }
    for segment in path.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." {
            return Err(bad(format!(
                "`{segment}` is not a name (no empty, `.` or `..` segments: the output stays under the store's root)"
            )));
        }
        if segment.starts_with('.') || segment.starts_with('_') {
            return Err(bad(format!(
                "`{segment}` starts with `{}`: such names are the store's and the engine's own \
                 (`.rivulet-store/`, `_jobs/`, `_checkpoints/`) or hidden (the files source and \
                 the run summary skip them); use a name that starts with a letter or digit",
                &segment[..1]
            )));
        }
    }
    Ok(())
}

/// The random part of a job id (what makes a run's file names its own).
fn run_suffix(job_id: &str) -> &str {
    job_id.rsplit('-').next().unwrap_or(job_id)
}

/// How the file names of a run's file sinks begin (`part-<run>`, then `-<subtask>-<counter>`):
/// what tells one run's files from another's under the same path.
pub fn part_prefix(job_id: &str) -> String {
    format!("part-{}", run_suffix(job_id))
}

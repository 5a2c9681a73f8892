//! Keyed event-time windows: tumbling and sliding windows over `record.timestamp`, with
//! count/sum/min/max/avg per key and window, fired by watermarks.
//!
//! The operator runs after a hash partition by the window's key, so every key it sees is its
//! own. Open windows live in a `BTreeMap` by window end (so that a watermark fires them in
//! order with no scan), each a hash map from key hash to the keys with that hash. A record whose
//! window and key exist allocates nothing.
//!
//! A window `[start, end)` fires when the watermark reaches `end - 1`, its last millisecond:
//! it emits one record per key, with timestamp `end - 1`, before the watermark is forwarded.
//! A record for a window that has already fired is late: it is left out of that window and
//! counted in [`WindowOperator::late_records`]. (A record of sliding windows may be late for
//! some of its windows and still count in the others.)

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::data::{DataType, Field, MIN_TIMESTAMP, Record, Row, Schema, Timestamp, Value};
use crate::error::EngineError;
use crate::operator::{Operator, Output, TaskContext};

use super::aggregate::{Accumulator, AccumulatorState, AggregateSpec};
use super::state::{StateValue, field, key_hash, key_order, row_has_key, row_key_hash};

/// How records are assigned to windows. Windows are aligned to the epoch: a tumbling window of
/// an hour starts on the hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowAssigner {
    /// Back-to-back windows of `size_ms`: each record is in exactly one.
    Tumbling { size_ms: i64 },
    /// Windows of `size_ms` starting every `slide_ms`: each record is in `size_ms / slide_ms`
    /// of them. `size_ms` must be a multiple of `slide_ms`.
    Sliding { size_ms: i64, slide_ms: i64 },
}

impl WindowAssigner {
    pub fn size_ms(&self) -> i64 {
        match *self {
            WindowAssigner::Tumbling { size_ms } | WindowAssigner::Sliding { size_ms, .. } => {
                size_ms
            }
        }
    }

    pub fn slide_ms(&self) -> i64 {
        match *self {
            WindowAssigner::Tumbling { size_ms } => size_ms,
            WindowAssigner::Sliding { slide_ms, .. } => slide_ms,
        }
    }

    fn validate(&self) -> Result<(), EngineError> {
        let (size, slide) = (self.size_ms(), self.slide_ms());
        if size <= 0 || slide <= 0 {
            return Err(EngineError::job(
                "window",
                format!(
                    "window size and slide must be positive (size {size} ms, slide {slide} ms)"
                ),
            ));
        }
        if size / slide > MAX_WINDOWS_PER_RECORD {
            return Err(EngineError::job(
                "window",
                format!(
                    "a sliding window of {size} ms every {slide} ms puts each record in {} \
                     windows; the limit is {MAX_WINDOWS_PER_RECORD} (slide further)",
                    size / slide
                ),
            ));
        }
        if size % slide != 0 {
            return Err(EngineError::job(
                "window",
                format!(
                    "a sliding window's size must be a multiple of its slide (size {size} ms, \
                     slide {slide} ms)"
                ),
            ));
        }
        Ok(())
    }
}

/// The most windows one record may be in (`size / slide`): beyond it every record would cost
/// that many state updates, which is better refused at plan time than discovered in production.
pub const MAX_WINDOWS_PER_RECORD: i64 = 10_000;

/// What a window operator computes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowSpec {
    pub assigner: WindowAssigner,
    /// Positions of the key fields in the input schema (empty: one group for all records).
    pub key_fields: Vec<usize>,
    pub aggregates: Vec<AggregateSpec>,
}

/// One key's accumulators in one window.
struct KeyState {
    key: Vec<Value>,
    accumulators: Vec<Accumulator>,
}

/// The keys of one open window, by key hash (a bucket holds the keys that share a hash).
type Pane = HashMap<u64, Vec<KeyState>>;

/// The keyed window operator.
pub struct WindowOperator {
    spec: WindowSpec,
    /// The input type of each aggregate, to build fresh accumulators.
    input_types: Vec<Option<DataType>>,
    output_schema: Schema,
    /// Open windows by end.
    windows: BTreeMap<Timestamp, Pane>,
    watermark: Timestamp,
    late_records: u64,
}

impl WindowOperator {
    /// Checks `spec` against `input_schema` (positions in range, aggregate input types, size
    /// and slide, unique output names) and builds the operator.
    pub fn new(spec: WindowSpec, input_schema: &Schema) -> Result<Self, EngineError> {
        spec.assigner.validate()?;
        let field_at = |index: usize, what: &str| {
            input_schema.fields.get(index).ok_or_else(|| {
                EngineError::job(
                    "window",
                    format!(
                        "{what} refers to field #{index}, but the input has {} fields ({})",
                        input_schema.len(),
                        input_schema.names()
                    ),
                )
            })
        };
        let mut fields = Vec::with_capacity(spec.key_fields.len() + 2 + spec.aggregates.len());
        for &index in &spec.key_fields {
            fields.push(field_at(index, "a key")?.clone());
        }
        fields.push(Field::new("window_start", DataType::Timestamp));
        fields.push(Field::new("window_end", DataType::Timestamp));
        let mut input_types = Vec::with_capacity(spec.aggregates.len());
        for aggregate in &spec.aggregates {
            let what = format!("aggregate `{}`", aggregate.name);
            let input_type = match aggregate.input {
                Some(index) => Some(field_at(index, &what)?.data_type),
                None => None,
            };
            let output_type = aggregate
                .function
                .output_type(input_type)
                .map_err(|message| EngineError::job("window", format!("{what}: {message}")))?;
            input_types.push(input_type);
            fields.push(Field::new(aggregate.name.clone(), output_type));
        }
        for (i, f) in fields.iter().enumerate() {
            if fields[..i].iter().any(|earlier| earlier.name == f.name) {
                return Err(EngineError::job(
                    "window",
                    format!(
                        "the output field `{}` appears twice (keys, window_start, window_end \
                         and the aggregates must have distinct names)",
                        f.name
                    ),
                ));
            }
        }
        Ok(WindowOperator {
            spec,
            input_types,
            output_schema: Schema::new(fields),
            windows: BTreeMap::new(),
            watermark: MIN_TIMESTAMP,
            late_records: 0,
        })
    }

    /// The schema of the emitted rows: the key fields, `window_start`, `window_end`, then one
    /// field per aggregate.
    pub fn output_schema(&self) -> Schema {
        self.output_schema.clone()
    }

    /// Records left out of a window that had already fired.
    pub fn late_records(&self) -> u64 {
        self.late_records
    }

    /// How many (window, key) groups are open.
    pub fn open_groups(&self) -> usize {
        self.windows
            .values()
            .map(|pane| pane.values().map(Vec::len).sum::<usize>())
            .sum()
    }

    /// Adds `row` to the window ending at `end`.
    fn add(&mut self, end: Timestamp, row: &Row) {
        let key_fields = &self.spec.key_fields;
        let hash = row_key_hash(row, key_fields);
        let bucket = self
            .windows
            .entry(end)
            .or_default()
            .entry(hash)
            .or_default();
        let position = match bucket
            .iter()
            .position(|state| row_has_key(row, key_fields, &state.key))
        {
            Some(position) => position,
            None => {
                bucket.push(KeyState {
                    key: key_fields.iter().map(|&i| field(row, i).clone()).collect(),
                    accumulators: self
                        .spec
                        .aggregates
                        .iter()
                        .zip(&self.input_types)
                        .map(|(a, ty)| Accumulator::new(a.function, *ty))
                        .collect(),
                });
                bucket.len() - 1
            }
        };
        let state = &mut bucket[position];
        for (accumulator, aggregate) in state.accumulators.iter_mut().zip(&self.spec.aggregates) {
            accumulator.add(aggregate.input.map(|i| field(row, i)));
        }
    }

    /// Emits every key of the window ending at `end`, in key order.
    fn fire(&self, end: Timestamp, pane: Pane, out: &mut dyn Output) -> Result<(), EngineError> {
        let start = end - self.spec.assigner.size_ms();
        let mut states: Vec<KeyState> = pane.into_values().flatten().collect();
        states.sort_by(|a, b| key_order(&a.key, &b.key));
        for state in states {
            let mut row = state.key;
            row.reserve(2 + state.accumulators.len());
            row.push(Value::Time(start));
            row.push(Value::Time(end));
            row.extend(state.accumulators.into_iter().map(Accumulator::finish));
            out.emit(Record::new(end - 1, row))?;
        }
        Ok(())
    }

    /// Fires the windows whose last millisecond is at or before `watermark`, earliest first.
    fn fire_until(
        &mut self,
        watermark: Timestamp,
        out: &mut dyn Output,
    ) -> Result<(), EngineError> {
        while let Some(entry) = self.windows.first_entry() {
            if *entry.key() - 1 > watermark {
                break;
            }
            let (end, pane) = entry.remove_entry();
            self.fire(end, pane, out)?;
        }
        Ok(())
    }

    /// The operator's state: the watermark, the late count, and every open window's
    /// accumulators, windows by end and keys in key order so that equal states encode to equal
    /// bytes.
    pub fn snapshot_state(&self) -> Result<Vec<u8>, EngineError> {
        let windows = self
            .windows
            .iter()
            .map(|(&end, pane)| {
                let mut keys: Vec<&KeyState> = pane.values().flatten().collect();
                keys.sort_by(|a, b| key_order(&a.key, &b.key));
                WindowState {
                    end,
                    keys: keys
                        .into_iter()
                        .map(|state| KeyEntryState {
                            key: state.key.iter().map(StateValue::from).collect(),
                            accumulators: state
                                .accumulators
                                .iter()
                                .map(Accumulator::to_state)
                                .collect(),
                        })
                        .collect(),
                }
            })
            .collect();
        let state = OperatorState {
            version: STATE_VERSION,
            watermark: self.watermark,
            late_records: self.late_records,
            windows,
        };
        serde_json::to_vec(&state).map_err(|e| EngineError::state("window operator", e))
    }

    /// Loads what [`WindowOperator::snapshot_state`] returned, replacing the current state.
    /// Fails if the state does not fit this operator's spec (the job's keys or aggregates
    /// changed since the checkpoint).
    pub fn restore_state(&mut self, bytes: &[u8]) -> Result<(), EngineError> {
        let what = "window operator";
        let state: OperatorState =
            serde_json::from_slice(bytes).map_err(|e| EngineError::state(what, e))?;
        if state.version != STATE_VERSION {
            return Err(EngineError::state(
                what,
                format!("state version {} is not {STATE_VERSION}", state.version),
            ));
        }
        let fresh: Vec<Accumulator> = self
            .spec
            .aggregates
            .iter()
            .zip(&self.input_types)
            .map(|(a, ty)| Accumulator::new(a.function, *ty))
            .collect();
        let size = self.spec.assigner.size_ms();
        let mut windows = BTreeMap::new();
        for window in state.windows {
            // Firing computes `end - size` and `end - 1`: a corrupt end must fail here instead.
            if window.end.checked_sub(size).is_none() {
                return Err(EngineError::state(
                    what,
                    format!("window end {} cannot end a window of {size} ms", window.end),
                ));
            }
            let mut pane = Pane::new();
            for entry in window.keys {
                if entry.key.len() != self.spec.key_fields.len() {
                    return Err(EngineError::state(
                        what,
                        format!(
                            "the checkpoint has keys of {} fields, the job {}",
                            entry.key.len(),
                            self.spec.key_fields.len()
                        ),
                    ));
                }
                let accumulators: Vec<Accumulator> = entry
                    .accumulators
                    .into_iter()
                    .map(Accumulator::from_state)
                    .collect();
                let fits = accumulators.len() == fresh.len()
                    && accumulators.iter().zip(&fresh).all(|(a, f)| a.same_kind(f));
                if !fits {
                    return Err(EngineError::state(
                        what,
                        "the checkpoint's aggregates do not match the job's (the window's \
                         aggregates changed since the checkpoint was taken)",
                    ));
                }
                let key: Vec<Value> = entry.key.into_iter().map(Value::from).collect();
                pane.entry(key_hash(&key))
                    .or_default()
                    .push(KeyState { key, accumulators });
            }
            windows.insert(window.end, pane);
        }
        self.windows = windows;
        self.watermark = state.watermark;
        self.late_records = state.late_records;
        Ok(())
    }
}

impl Operator for WindowOperator {
    fn restore(&mut self, _ctx: &TaskContext, state: &[u8]) -> Result<(), EngineError> {
        self.restore_state(state)
    }

    fn process(&mut self, record: Record, _out: &mut dyn Output) -> Result<(), EngineError> {
        let size = self.spec.assigner.size_ms();
        let slide = self.spec.assigner.slide_ms();
        let ts = record.timestamp;
        // The latest window containing `ts` starts at the slide boundary at or before it; the
        // others start one slide earlier each, while they still contain `ts`.
        let mut start = ts.checked_sub(ts.rem_euclid(slide));
        let mut late = false;
        for _ in 0..size / slide {
            let Some(window_start) = start else { break };
            start = window_start.checked_sub(slide);
            // A window whose bounds do not fit a timestamp is 292 million years away: such a
            // record cannot be windowed (nor is it late).
            let Some(end) = window_start.checked_add(size) else {
                continue;
            };
            if end - 1 <= self.watermark {
                late = true;
                continue;
            }
            self.add(end, &record.row);
        }
        if late {
            self.late_records += 1;
        }
        Ok(())
    }

    fn watermark(&mut self, watermark: Timestamp, out: &mut dyn Output) -> Result<(), EngineError> {
        // Watermarks only advance; an older one (which the runtime should not send) changes
        // nothing.
        self.watermark = self.watermark.max(watermark);
        self.fire_until(self.watermark, out)?;
        out.watermark(self.watermark)
    }

    fn snapshot(&mut self, _checkpoint_id: u64) -> Result<Option<Vec<u8>>, EngineError> {
        self.snapshot_state().map(Some)
    }

    fn finish(&mut self, out: &mut dyn Output) -> Result<(), EngineError> {
        // The input has ended, so no record can join an open window: emit them all.
        while let Some((end, pane)) = self.windows.pop_first() {
            self.fire(end, pane, out)?;
        }
        Ok(())
    }
}

/// Bumped when the encoding of [`OperatorState`] changes incompatibly.
const STATE_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct OperatorState {
    version: u32,
    watermark: Timestamp,
    late_records: u64,
    windows: Vec<WindowState>,
}

#[derive(Serialize, Deserialize)]
struct WindowState {
    end: Timestamp,
    keys: Vec<KeyEntryState>,
}

#[derive(Serialize, Deserialize)]
struct KeyEntryState {
    key: Vec<StateValue>,
    accumulators: Vec<AccumulatorState>,
}

#[cfg(test)]
mod tests;

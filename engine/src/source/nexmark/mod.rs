//! The Nexmark source: the benchmark's people, auctions and bids, generated on the fly.
//!
//! The stream is the sequence of events numbered 0, 1, 2, ...; every event is a pure function of
//! the configuration and its number (see [`generator`]). Subtask `s` of `p` generates the numbers
//! `i` with `i % p == s`, so the union of the subtasks is the whole stream whatever the
//! parallelism, and a subtask's position is simply how many of its numbers it has passed.

pub mod generator;
pub mod model;

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::data::{Record, SchemaRef};
use crate::error::EngineError;
use crate::operator::{Output, Source, SourceStatus, TaskContext};

pub use self::generator::Generator;
pub use self::model::{Auction, Bid, Event, EventKind, Person, schema_for};

/// 2026-01-01T00:00:00Z: the default time of the first event, fixed so runs are reproducible.
pub const DEFAULT_FIRST_EVENT_TIME_MS: i64 = 1_767_225_600_000;

/// What a Nexmark source generates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NexmarkConfig {
    /// Which events to emit. The others are skipped but keep their numbers, so a bid source
    /// emits exactly the bids of the full stream.
    pub events: EventKind,
    /// Bounded stream: the number of events of the full stream (all kinds, all subtasks).
    /// `None`: unbounded.
    pub count: Option<u64>,
    /// Events per second of wall-clock time, all kinds and all subtasks together.
    /// `None`: as fast as possible.
    pub rate: Option<u64>,
    /// Event time of event 0, in milliseconds since the epoch.
    pub first_event_time_ms: i64,
    /// How many events fit in one second of event time (10,000: 100 µs per event).
    pub events_per_second_of_event_time: u64,
}

impl Default for NexmarkConfig {
    fn default() -> Self {
        Self {
            events: EventKind::Bid,
            count: None,
            rate: None,
            first_event_time_ms: DEFAULT_FIRST_EVENT_TIME_MS,
            events_per_second_of_event_time: 10_000,
        }
    }
}

/// The version byte of the position encoding.
const POSITION_VERSION: u8 = 1;
/// Version, parallelism (u32), subtask (u32), next local index (u64), little endian.
const POSITION_LEN: usize = 1 + 4 + 4 + 8;

/// Shortest and longest pause asked for when ahead of the rate's schedule: short enough to keep
/// the rate smooth, long enough not to spin, and bounded so the task stays responsive.
const MIN_IDLE: Duration = Duration::from_millis(1);
const MAX_IDLE: Duration = Duration::from_millis(100);
/// How many event numbers one poll may pass per record it may emit, so that a poll of a
/// subtask whose numbers are mostly of other kinds still returns promptly.
const SCAN_PER_RECORD: usize = 64;

/// One subtask of a Nexmark source.
pub struct NexmarkSource {
    config: NexmarkConfig,
    generator: Generator,
    schema: SchemaRef,
    subtask: u64,
    parallelism: u64,
    /// The next local index: the subtask's next event number is `next_local * p + s`.
    next_local: u64,
    /// Local indices up to here exist (bounded streams); `u64::MAX` if unbounded.
    local_end: u64,
    /// Whether any of this subtask's event numbers is of the configured kind (with some
    /// parallelisms a subtask only ever gets people, say).
    emits_anything: bool,
    pacer: Option<Pacer>,
}

impl NexmarkSource {
    pub fn new(config: NexmarkConfig) -> Result<Self, EngineError> {
        if config.rate == Some(0) {
            return Err(EngineError::job(
                "nexmark.rate",
                "must be at least 1 event per second (leave it out for no limit)",
            ));
        }
        let generator = Generator::new(
            config.first_event_time_ms,
            config.events_per_second_of_event_time,
        )?;
        let mut source = Self {
            schema: schema_for(config.events),
            config,
            generator,
            subtask: 0,
            parallelism: 1,
            next_local: 0,
            local_end: 0,
            emits_anything: true,
            pacer: None,
        };
        source.assign(0, 1);
        Ok(source)
    }

    /// Makes this source subtask `subtask` of `parallelism`.
    fn assign(&mut self, subtask: u64, parallelism: u64) {
        self.subtask = subtask;
        self.parallelism = parallelism;
        self.local_end = match self.config.count {
            Some(count) if count > subtask => (count - subtask).div_ceil(parallelism),
            Some(_) => 0,
            None => u64::MAX,
        };
        // The kinds repeat every 50 event numbers, so 50 local indices show every kind this
        // subtask will ever see.
        self.emits_anything = (0..50u64).any(|local| self.wanted(local * parallelism + subtask));
    }

    fn task_position(ctx: &TaskContext) -> Result<(u64, u64), EngineError> {
        if ctx.parallelism == 0 || ctx.subtask >= ctx.parallelism {
            return Err(EngineError::Task {
                task: ctx.describe(),
                message: format!(
                    "subtask {} of parallelism {} is out of range",
                    ctx.subtask, ctx.parallelism
                ),
            });
        }
        Ok((ctx.subtask as u64, ctx.parallelism as u64))
    }

    fn wanted(&self, index: u64) -> bool {
        self.config.events == EventKind::All || Generator::kind_of(index) == self.config.events
    }

    fn record(&self, index: u64) -> Record {
        let g = &self.generator;
        match self.config.events {
            EventKind::Bid => {
                let bid = g.bid(index);
                Record::new(bid.date_time, bid.into_row())
            }
            EventKind::Auction => {
                let auction = g.auction(index);
                Record::new(auction.date_time, auction.into_row())
            }
            EventKind::Person => {
                let person = g.person(index);
                Record::new(person.date_time, person.into_row())
            }
            EventKind::All => {
                let event = g.event(index);
                Record::new(event.date_time(), event.into_combined_row())
            }
        }
    }

    fn encode_position(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(POSITION_LEN);
        bytes.push(POSITION_VERSION);
        // Parallelism and subtask fit in u32 (checked when decoding); they are kept so that a
        // position is never applied to a different partitioning of the stream.
        bytes.extend_from_slice(&(self.parallelism as u32).to_le_bytes());
        bytes.extend_from_slice(&(self.subtask as u32).to_le_bytes());
        bytes.extend_from_slice(&self.next_local.to_le_bytes());
        bytes
    }

    fn decode_position(bytes: &[u8]) -> Result<(u64, u64, u64), EngineError> {
        let what = "nexmark source position";
        if bytes.len() != POSITION_LEN {
            return Err(EngineError::state(
                what,
                format!("{} bytes, expected {POSITION_LEN}", bytes.len()),
            ));
        }
        if bytes[0] != POSITION_VERSION {
            return Err(EngineError::state(
                what,
                format!("unknown version {}", bytes[0]),
            ));
        }
        let word = |range: std::ops::Range<usize>| {
            let mut buf = [0u8; 8];
            buf[..range.len()].copy_from_slice(&bytes[range]);
            u64::from_le_bytes(buf)
        };
        Ok((word(1..5), word(5..9), word(9..17)))
    }
}

impl Source for NexmarkSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn restore(&mut self, ctx: &TaskContext, position: &[u8]) -> Result<(), EngineError> {
        let (subtask, parallelism) = Self::task_position(ctx)?;
        let (saved_parallelism, saved_subtask, next_local) = Self::decode_position(position)?;
        if (saved_parallelism, saved_subtask) != (parallelism, subtask) {
            // Another parallelism splits the event numbers differently: the saved position
            // would skip or repeat events.
            return Err(EngineError::state(
                format!("nexmark source {}", ctx.describe()),
                format!(
                    "a checkpoint of subtask {} of {} cannot resume subtask {} of {}",
                    saved_subtask + 1,
                    saved_parallelism,
                    subtask + 1,
                    parallelism
                ),
            ));
        }
        self.assign(subtask, parallelism);
        self.next_local = next_local;
        self.pacer = None;
        Ok(())
    }

    fn open(&mut self, ctx: &TaskContext) -> Result<(), EngineError> {
        let (subtask, parallelism) = Self::task_position(ctx)?;
        self.assign(subtask, parallelism);
        // The rate's schedule starts now, from wherever the source stands: a restored source
        // does not burst to catch up with the time it was down.
        self.pacer = None;
        Ok(())
    }

    fn poll(&mut self, out: &mut dyn Output, max: usize) -> Result<SourceStatus, EngineError> {
        if self.next_local >= self.local_end {
            return Ok(SourceStatus::Finished);
        }
        if !self.emits_anything {
            // Nothing of the configured kind ever lands on this subtask.
            if self.config.count.is_some() {
                self.next_local = self.local_end;
                return Ok(SourceStatus::Finished);
            }
            return Ok(SourceStatus::Idle(MAX_IDLE));
        }
        let mut limit = self.local_end;
        if let Some(rate) = self.config.rate {
            let (next_local, parallelism) = (self.next_local, self.parallelism);
            let pacer = self
                .pacer
                .get_or_insert_with(|| Pacer::new(rate, parallelism, next_local));
            let now = Instant::now();
            let due = pacer.due(now);
            if next_local >= due {
                return Ok(SourceStatus::Idle(pacer.wait(next_local, now)));
            }
            limit = limit.min(due);
        }
        let max = max.max(1);
        let mut scan_budget = max.saturating_mul(SCAN_PER_RECORD);
        let mut emitted = 0;
        while emitted < max && scan_budget > 0 && self.next_local < limit {
            scan_budget -= 1;
            let Some(index) = self
                .next_local
                .checked_mul(self.parallelism)
                .and_then(|i| i.checked_add(self.subtask))
            else {
                // Past the last event number there is: nothing more to generate.
                self.local_end = self.next_local;
                break;
            };
            if self.wanted(index) {
                out.emit(self.record(index))?;
                emitted += 1;
            }
            self.next_local += 1;
        }
        if self.next_local >= self.local_end {
            Ok(SourceStatus::Finished)
        } else {
            Ok(SourceStatus::More)
        }
    }

    fn snapshot(&mut self, _checkpoint_id: u64) -> Result<Vec<u8>, EngineError> {
        Ok(self.encode_position())
    }
}

/// Spreads the configured rate over the subtasks: each may pass `rate / p` local indices a
/// second, counted from when its schedule started.
struct Pacer {
    rate: u128,
    parallelism: u128,
    start: Instant,
    start_local: u64,
}

impl Pacer {
    fn new(rate: u64, parallelism: u64, start_local: u64) -> Self {
        Self {
            rate: u128::from(rate),
            parallelism: u128::from(parallelism),
            start: Instant::now(),
            start_local,
        }
    }

    /// The local index the schedule has reached at `now`: indices below it are due.
    fn due(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.start).as_nanos();
        let passed = elapsed.saturating_mul(self.rate) / (self.parallelism * 1_000_000_000);
        self.start_local
            .saturating_add(u64::try_from(passed).unwrap_or(u64::MAX))
    }

    /// How long until local index `next` is due.
    fn wait(&self, next: u64, now: Instant) -> Duration {
        let count = u128::from(next - self.start_local) + 1;
        let due_at = count
            .saturating_mul(self.parallelism)
            .saturating_mul(1_000_000_000)
            .div_ceil(self.rate);
        let elapsed = now.saturating_duration_since(self.start).as_nanos();
        let wait = u64::try_from(due_at.saturating_sub(elapsed)).unwrap_or(u64::MAX);
        Duration::from_nanos(wait).clamp(MIN_IDLE, MAX_IDLE)
    }
}

#[cfg(test)]
mod tests;

//! A sink that counts records and drops them, to measure a job without its output.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::data::Record;
use crate::error::EngineError;
use crate::operator::{Operator, Output};

/// Counts the records it receives in a shared counter and drops them, at most `rate` a
/// second if it has one.
#[derive(Debug, Clone, Default)]
pub struct DiscardSink {
    count: Arc<AtomicU64>,
    throttle: Option<Throttle>,
}

/// Paces a subtask to `rate` records a second: a slow consumer on demand, to see
/// backpressure at work (a job file's `rate` on a discard sink).
#[derive(Debug, Clone)]
struct Throttle {
    rate: u64,
    /// When the current stretch of pacing started, and the records taken since.
    since: Option<Instant>,
    taken: u64,
}

/// How far behind its pace a throttled sink may fall (after an idle spell, say) before it
/// starts pacing afresh instead of taking the backlog at full speed to catch up.
const THROTTLE_SLACK: Duration = Duration::from_secs(1);

impl Throttle {
    /// Sleeps until taking one more record keeps within the rate.
    fn pace(&mut self) {
        let now = Instant::now();
        let since = *self.since.get_or_insert(now);
        self.taken += 1;
        let due = since + Duration::from_secs_f64(self.taken as f64 / self.rate as f64);
        if due > now {
            std::thread::sleep(due - now);
        } else if now - due > THROTTLE_SLACK {
            self.since = Some(now);
            self.taken = 0;
        }
    }
}

impl DiscardSink {
    pub fn new() -> Self {
        Self::default()
    }

    /// A sink that adds to `count` (shared with other subtasks or a benchmark).
    pub fn with_counter(count: Arc<AtomicU64>) -> Self {
        Self {
            count,
            throttle: None,
        }
    }

    /// A sink that takes at most `rate` records a second (at least 1): it sleeps between
    /// records, so its input channels fill and backpressure slows its upstream down.
    pub fn throttled(rate: u64) -> Self {
        Self {
            count: Arc::default(),
            throttle: Some(Throttle {
                rate: rate.max(1),
                since: None,
                taken: 0,
            }),
        }
    }

    pub fn counter(&self) -> Arc<AtomicU64> {
        self.count.clone()
    }
}

impl Operator for DiscardSink {
    fn process(&mut self, _record: Record, _out: &mut dyn Output) -> Result<(), EngineError> {
        if let Some(throttle) = &mut self.throttle {
            throttle.pace();
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Timestamp, Value};

    struct NoOutput;
    impl Output for NoOutput {
        fn emit(&mut self, _record: Record) -> Result<(), EngineError> {
            Ok(())
        }
        fn watermark(&mut self, _watermark: Timestamp) -> Result<(), EngineError> {
            Ok(())
        }
    }

    #[test]
    fn counts_across_clones() {
        let mut a = DiscardSink::new();
        let mut b = DiscardSink::with_counter(a.counter());
        for _ in 0..3 {
            a.process(Record::new(0, vec![Value::Int(1)]), &mut NoOutput)
                .unwrap();
        }
        b.process(Record::new(0, vec![]), &mut NoOutput).unwrap();
        assert_eq!(a.counter().load(Ordering::Relaxed), 4);
    }
}

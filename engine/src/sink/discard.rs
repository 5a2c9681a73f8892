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
///
/// It never sleeps in `process`: a batch (up to 512 records) sleeping there record by record
/// would hold the task for 512 / `rate` seconds (over eight minutes at `rate = 1`), deaf to
/// cancellation and checkpoint notices. It counts what it took and asks the runtime to pause
/// the input (`Operator::input_pause`) until the rate allows more, so the task stays
/// responsive and the input channels fill, which is the backpressure wanted.
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
    fn take(&mut self) {
        self.since.get_or_insert_with(Instant::now);
        self.taken += 1;
    }

    /// How long until taking one more record keeps within the rate.
    fn pause(&mut self) -> Option<Duration> {
        let since = self.since?;
        let due = since + Duration::from_secs_f64(self.taken as f64 / self.rate as f64);
        let now = Instant::now();
        if due > now {
            return Some(due - now);
        }
        if now - due > THROTTLE_SLACK {
            self.since = None;
            self.taken = 0;
        }
        None
    }

    /// A checkpoint's barrier has passed: the records queued ahead of it were taken without
    /// pausing (the runtime does not pause while a barrier is on its way), and are not held
    /// against the rate, or the pause after each checkpoint would pay for them in full
    /// (8,192 records queued in the channel make over two hours at `rate = 1`).
    fn restart(&mut self) {
        self.since = None;
        self.taken = 0;
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

    /// A sink that takes at most `rate` records a second (at least 1) between checkpoints: it
    /// pauses its input, so its channels fill and backpressure slows its upstream down.
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
            throttle.take();
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn input_pause(&mut self) -> Option<Duration> {
        self.throttle.as_mut().and_then(Throttle::pause)
    }

    fn snapshot(&mut self, _checkpoint_id: u64) -> Result<Option<Vec<u8>>, EngineError> {
        if let Some(throttle) = &mut self.throttle {
            throttle.restart();
        }
        Ok(None)
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

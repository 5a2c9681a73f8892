//! A sink that counts records and drops them, to measure a job without its output.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::data::Record;
use crate::error::EngineError;
use crate::operator::{Operator, Output};

/// Counts the records it receives in a shared counter and drops them.
#[derive(Debug, Clone, Default)]
pub struct DiscardSink {
    count: Arc<AtomicU64>,
}

impl DiscardSink {
    pub fn new() -> Self {
        Self::default()
    }

    /// A sink that adds to `count` (shared with other subtasks or a benchmark).
    pub fn with_counter(count: Arc<AtomicU64>) -> Self {
        Self { count }
    }

    pub fn counter(&self) -> Arc<AtomicU64> {
        self.count.clone()
    }
}

impl Operator for DiscardSink {
    fn process(&mut self, _record: Record, _out: &mut dyn Output) -> Result<(), EngineError> {
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

//! When an in-progress part file is closed and a new one started: Flink's
//! `DefaultRollingPolicy`, plus rolling on every checkpoint (what bulk formats need).

use std::time::Duration;

use crate::data::Timestamp;
use crate::error::EngineError;

/// When part files roll. A rolled file becomes pending and is published by the next completed
/// checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollingPolicy {
    /// Roll once a part file holds this many bytes.
    pub max_part_size: u64,
    /// Roll a part file this long after it was started.
    pub rollover_interval: Duration,
    /// Roll a part file that has received nothing for this long.
    pub inactivity_interval: Duration,
    /// Roll every part file at every checkpoint, so that nothing stays in progress across one.
    pub roll_on_checkpoint: bool,
}

impl Default for RollingPolicy {
    fn default() -> Self {
        Self {
            max_part_size: 128 * 1024 * 1024,
            rollover_interval: Duration::from_secs(60),
            inactivity_interval: Duration::from_secs(60),
            roll_on_checkpoint: false,
        }
    }
}

impl RollingPolicy {
    pub fn validate(&self) -> Result<(), EngineError> {
        if self.max_part_size == 0 {
            return Err(EngineError::job(
                "sink.rolling.max_part_size",
                "must be at least 1 byte",
            ));
        }
        for (at, d) in [
            ("sink.rolling.rollover_interval", self.rollover_interval),
            ("sink.rolling.inactivity_interval", self.inactivity_interval),
        ] {
            if d.is_zero() {
                return Err(EngineError::job(at, "must be longer than zero"));
            }
        }
        Ok(())
    }

    /// After a record was added: roll when the part file (bytes written plus buffered) has
    /// reached the size limit.
    pub fn should_roll_on_event(&self, part_size: u64) -> bool {
        part_size >= self.max_part_size
    }

    /// On a processing-time tick: roll a part file started at `created` (ms) and last written
    /// at `last_write` when `now` is past either interval.
    pub fn should_roll_on_processing_time(
        &self,
        created: Timestamp,
        last_write: Timestamp,
        now: Timestamp,
    ) -> bool {
        let age = now.saturating_sub(created);
        let idle = now.saturating_sub(last_write);
        age >= millis(self.rollover_interval) || idle >= millis(self.inactivity_interval)
    }

    /// At a checkpoint: roll when asked to always, or when the file is already at its size
    /// limit (it would roll with its next record anyway; this saves persisting it).
    pub fn should_roll_on_checkpoint(&self, part_size: u64) -> bool {
        self.roll_on_checkpoint || part_size >= self.max_part_size
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_flinks() {
        let p = RollingPolicy::default();
        assert_eq!(p.max_part_size, 128 << 20);
        assert!(!p.roll_on_checkpoint);
        assert!(p.validate().is_ok());
    }

    #[test]
    fn rolls_by_size_time_and_checkpoint() {
        let p = RollingPolicy {
            max_part_size: 100,
            rollover_interval: Duration::from_secs(10),
            inactivity_interval: Duration::from_secs(3),
            roll_on_checkpoint: false,
        };
        assert!(!p.should_roll_on_event(99));
        assert!(p.should_roll_on_event(100));
        // Young and recently written.
        assert!(!p.should_roll_on_processing_time(0, 8_000, 10_000 - 1));
        // Old enough.
        assert!(p.should_roll_on_processing_time(0, 9_000, 10_000));
        // Idle enough.
        assert!(p.should_roll_on_processing_time(5_000, 5_000, 8_000));
        assert!(!p.should_roll_on_checkpoint(50));
        assert!(p.should_roll_on_checkpoint(100));
        let always = RollingPolicy {
            roll_on_checkpoint: true,
            ..p.clone()
        };
        assert!(always.should_roll_on_checkpoint(1));
    }

    #[test]
    fn zero_limits_are_refused() {
        let p = RollingPolicy {
            max_part_size: 0,
            ..RollingPolicy::default()
        };
        assert!(p.validate().is_err());
        let p = RollingPolicy {
            inactivity_interval: Duration::ZERO,
            ..RollingPolicy::default()
        };
        assert!(p.validate().is_err());
    }
}

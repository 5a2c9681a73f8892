//! Wall-clock time for per-record decisions (processing-time buckets, a file's last write).
//!
//! A sink asks for the time once per record. `SystemTime::now()` reads the clock source
//! precisely, which on a virtual machine costs tens of nanoseconds, a visible share of a
//! record's cost at millions of records a second. Linux keeps a coarse copy of the clock,
//! updated every tick (1 to 4 ms), that is read without touching the clock source: precise
//! enough for hourly buckets and inactivity timeouts of seconds.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::data::Timestamp;

/// Milliseconds since the Unix epoch, precise to a few milliseconds.
pub fn coarse_now_ms() -> Timestamp {
    #[cfg(target_os = "linux")]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec for the call's duration; the call only
        // writes into it.
        if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) } == 0 {
            // `time_t` and `c_long` are 32 bits on some Linux targets.
            #[allow(clippy::useless_conversion)]
            return i64::from(ts.tv_sec)
                .saturating_mul(1000)
                .saturating_add(i64::from(ts.tv_nsec) / 1_000_000);
        }
    }
    precise_now_ms()
}

/// Milliseconds since the Unix epoch, read precisely.
pub fn precise_now_ms() -> Timestamp {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coarse_clock_follows_the_precise_one() {
        let before = precise_now_ms();
        let coarse = coarse_now_ms();
        let after = precise_now_ms();
        // The coarse clock lags by at most a few ticks; 1 s leaves room for any HZ.
        assert!(
            coarse >= before - 1000 && coarse <= after,
            "{before} <= {coarse} <= {after}"
        );
    }
}

//! Retries of idempotent store calls on transient failures, with capped exponential backoff and
//! jitter. Backends may retry on their own too (the S3 SDK does); this layer covers every backend
//! the same way, including faults injected by tests.

use std::future::Future;
use std::time::Duration;

use rand::Rng;

use crate::error::StoreError;

/// How often and how patiently to retry.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Total attempts, the first included; 1 disables retries.
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// Runs `call` until it succeeds, fails with a non-transient error, or attempts run out.
    /// Only for calls that are safe to repeat.
    pub async fn run<T, F, Fut>(&self, mut call: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut attempt = 1;
        loop {
            match call().await {
                Err(e) if e.is_transient() && attempt < self.max_attempts => {
                    let exp = self.base_delay.saturating_mul(1 << (attempt - 1).min(16));
                    let cap = exp.min(self.max_delay);
                    let delay = cap.mul_f64(rand::rng().random_range(0.5..=1.0));
                    tracing::debug!(error = %e, attempt, ?delay, "retrying after a transient error");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::StoreErrorKind;

    #[tokio::test]
    async fn retries_transient_errors_only() {
        let policy = RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(1),
            ..Default::default()
        };
        let mut calls = 0;
        let result: Result<u32, StoreError> = policy
            .run(|| {
                calls += 1;
                let n = calls;
                async move {
                    if n < 3 {
                        Err(StoreError::new(
                            StoreErrorKind::Transient,
                            "put",
                            "k",
                            "503",
                        ))
                    } else {
                        Ok(n)
                    }
                }
            })
            .await;
        assert_eq!(result.unwrap(), 3);

        let mut calls = 0;
        let result: Result<(), StoreError> = policy
            .run(|| {
                calls += 1;
                async { Err(StoreError::new(StoreErrorKind::NotFound, "get", "k", "")) }
            })
            .await;
        assert_eq!(result.unwrap_err().kind(), StoreErrorKind::NotFound);
        assert_eq!(calls, 1);

        let mut calls = 0;
        let result: Result<(), StoreError> = policy
            .run(|| {
                calls += 1;
                async { Err(StoreError::new(StoreErrorKind::Transient, "get", "k", "")) }
            })
            .await;
        assert!(result.unwrap_err().is_transient());
        assert_eq!(calls, 4);
    }
}

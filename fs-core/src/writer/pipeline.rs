//! Pipelined persists: a persist that captures the file's state at once and lets writing go
//! on while the parts it needs finish uploading.
//!
//! A synchronous `persist()` waits for every part in flight while its caller is blocked, so the
//! upload pipeline drains at every persist. `begin_persist()` instead returns a
//! [`PendingPersist`] holding the parts (some still in flight) and a copy of the tail; its
//! `wait()` resolves to the same resume token, durable in the same way (parts uploaded, tail
//! staged, index flushed), once those parts are done. Meanwhile the writer keeps accepting
//! writes and uploading new parts. This is what a stream processor's asynchronous checkpoint
//! phase wants.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{Shared, WriterError, tail};
use crate::error::StoreError;
use crate::store::PutOptions;
use crate::token::{ResumeToken, Token};

/// Outcomes of one writer's part uploads, shared with its pending persists.
#[derive(Default)]
pub(crate) struct PartBoard {
    outcomes: Mutex<HashMap<u32, Result<String, String>>>,
    changed: tokio::sync::Notify,
    /// Each cut into uploaded parts on a store that reuses part numbers: the first number that
    /// was given up. A pending persist that references such a number is void.
    invalidations: Mutex<Vec<u32>>,
    /// The highest persist sequence number recorded in the index by this writer, so that
    /// persists resolved out of order never put an older token over a newer one.
    last_recorded: tokio::sync::Mutex<u64>,
    /// Set when the writer is closed or dropped: a persist still pending then is void (another
    /// writer may already be resuming the file and reusing what this one left).
    closed: std::sync::atomic::AtomicBool,
}

impl PartBoard {
    /// Records how a part's upload ended and wakes the persists waiting for it.
    pub(crate) fn record(&self, number: u32, result: &Result<String, StoreError>) {
        let outcome = match result {
            Ok(etag) => Ok(etag.clone()),
            Err(e) => Err(e.to_string()),
        };
        self.outcomes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(number, outcome);
        self.changed.notify_waiters();
    }

    /// Forgets the outcome of an earlier upload of this number (reused on contiguous stores,
    /// where the persists that needed the old part were voided).
    pub(crate) fn starting(&self, number: u32) {
        self.outcomes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&number);
    }

    /// Records that a part's upload will never finish, unless it already did.
    pub(crate) fn abandon(&self, number: u32, why: &str) {
        self.outcomes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(number)
            .or_insert_with(|| Err(why.to_string()));
        self.changed.notify_waiters();
    }

    /// Notes that part numbers from `first` on were given up (and may be reused).
    pub(crate) fn invalidate_from(&self, first: u32) {
        self.invalidations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(first);
        self.changed.notify_waiters();
    }

    /// Voids the persists still pending: their writer is gone.
    pub(crate) fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub(crate) fn invalidation_count(&self) -> usize {
        self.invalidations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    fn invalidated_since(&self, seen: usize, highest: u32) -> bool {
        let invalidations = self.invalidations.lock().unwrap_or_else(|p| p.into_inner());
        invalidations
            .iter()
            .skip(seen)
            .any(|first| *first <= highest)
    }
}

/// A persist under way; `wait()` for its token.
#[must_use = "a pending persist is durable only once wait() returns its token"]
pub struct PendingPersist {
    pub(crate) shared: Arc<Shared>,
    pub(crate) board: Arc<PartBoard>,
    /// The token, with empty ETags for the parts still in flight at `begin_persist`.
    pub(crate) token: ResumeToken,
    pub(crate) tail: Bytes,
    pub(crate) invalidations_seen: usize,
    pub(crate) started: Instant,
}

impl std::fmt::Debug for PendingPersist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingPersist")
            .field("key", &self.token.key)
            .field("len", &self.token.len())
            .field("seq", &self.token.seq)
            .finish()
    }
}

impl PendingPersist {
    /// The file length this persist makes durable.
    pub fn len(&self) -> u64 {
        self.token.len()
    }

    pub fn is_empty(&self) -> bool {
        self.token.is_empty()
    }

    /// How long ago the persist began.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Waits for the parts this persist needs, stages the tail and records the token in the
    /// index: when it returns, everything written before `begin_persist` is durable.
    pub async fn wait(mut self) -> Result<ResumeToken, WriterError> {
        self.wait_for_parts().await?;
        let token = self.token;
        let body = tail::encode(&self.tail, &token);
        let store = &self.shared.store;
        let staged = std::time::Instant::now();
        self.shared
            .config
            .retry
            .run(|| store.put(&token.tail_key, body.clone(), PutOptions::default()))
            .await
            .map_err(|e| e.for_file(&token.key))?;
        // Checked after the tail is staged: whoever voids a persist does so before deleting
        // tails, so either it deletes this tail or this check sees it.
        if let Some(why) = void_reason(&self.board, self.invalidations_seen, &token) {
            let _ = store.delete(&token.tail_key).await;
            return Err(WriterError::State {
                key: token.key.clone(),
                detail: why.into(),
            });
        }
        let put_ms = staged.elapsed().as_secs_f64() * 1e3;
        let mut last = self.board.last_recorded.lock().await;
        if token.seq > *last {
            let recorded = Token::Resume(token.clone());
            self.shared
                .index_update(move |i, s| i.record_token(s, &recorded))
                .await?;
            *last = token.seq;
        } else {
            // A newer persist of this writer is already the latest; this tail stays live for
            // whoever holds this token.
            let (upload, tail_key) = (token.upload_id.clone(), vec![token.tail_key.clone()]);
            self.shared
                .index_update(move |i, s| i.add_live_tails(s, &upload, &tail_key))
                .await?;
        }
        tracing::debug!(
            key = %token.key,
            len = token.len(),
            total_ms = self.started.elapsed().as_secs_f64() * 1e3,
            tail_put_ms = put_ms,
            "persisted"
        );
        Ok(token)
    }

    async fn wait_for_parts(&mut self) -> Result<(), WriterError> {
        loop {
            let notified = self.board.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // A persist that can no longer produce a usable token stops waiting for its parts
            // (some of them may never be uploaded again under this number).
            if let Some(why) = void_reason(&self.board, self.invalidations_seen, &self.token) {
                return Err(WriterError::State {
                    key: self.token.key.clone(),
                    detail: why.into(),
                });
            }
            let mut missing = false;
            {
                let outcomes = self
                    .board
                    .outcomes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                for part in self.token.parts.iter_mut().filter(|p| p.etag.is_empty()) {
                    match outcomes.get(&part.number) {
                        Some(Ok(etag)) => part.etag = etag.clone(),
                        Some(Err(detail)) => {
                            return Err(WriterError::Failed {
                                key: self.token.key.clone(),
                                detail: format!("part {}: {detail}", part.number),
                            });
                        }
                        None => missing = true,
                    }
                }
            }
            if !missing {
                return Ok(());
            }
            notified.await;
        }
    }
}

/// Why a persist can no longer produce a usable token, if it cannot.
fn void_reason(board: &PartBoard, seen: usize, token: &ResumeToken) -> Option<&'static str> {
    let highest = token.parts.iter().map(|p| p.number).max().unwrap_or(0);
    if board.invalidated_since(seen, highest) {
        Some("this persist was overtaken by a truncate into its parts; persist again")
    } else if board.is_closed() {
        Some("the writer was closed or dropped before this persist finished")
    } else {
        None
    }
}

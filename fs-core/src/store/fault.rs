//! A fault-injecting wrapper around any store, for tests: random transient errors (a 5xx before
//! the call reaches the store), random lost answers (the call took effect but the caller sees a
//! timeout, the case that makes idempotence matter), added latency, and "fail the Nth call of
//! this operation" for deterministic tests.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rand::Rng;

use super::{
    CompletedPart, DynStore, GetResult, ListPage, ListRequest, ObjectMeta, ObjectStore, PartsPage,
    PutCondition, PutOptions, PutResult, UploadsMarker, UploadsPage,
};
use crate::error::{StoreError, StoreErrorKind};

/// The operations faults can target, named as in error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Get,
    Head,
    Put,
    Delete,
    DeleteMany,
    List,
    CreateMultipart,
    UploadPart,
    UploadPartCopy,
    CompleteMultipart,
    AbortMultipart,
    ListParts,
    ListMultipartUploads,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Head => "head",
            Op::Put => "put",
            Op::Delete => "delete",
            Op::DeleteMany => "delete objects",
            Op::List => "list",
            Op::CreateMultipart => "create multipart upload",
            Op::UploadPart => "upload part",
            Op::UploadPartCopy => "upload part copy",
            Op::CompleteMultipart => "complete multipart upload",
            Op::AbortMultipart => "abort multipart upload",
            Op::ListParts => "list parts",
            Op::ListMultipartUploads => "list multipart uploads",
        }
    }
}

/// What to inject.
#[derive(Debug, Clone, Default)]
pub struct FaultConfig {
    /// Probability that a call fails with a transient error before reaching the store.
    pub error_rate: f64,
    /// Probability that a call reaches the store, takes effect, and then reports a timeout.
    pub lost_answer_rate: f64,
    /// Extra latency per call, chosen uniformly in this range.
    pub latency: Option<Range<Duration>>,
    /// Fail the Nth call (1-based) of an operation with a transient error, once.
    pub fail_nth: HashMap<Op, u64>,
}

/// A store that injects faults into the calls it forwards.
#[derive(Debug)]
pub struct FaultStore {
    inner: DynStore,
    config: Mutex<FaultConfig>,
    calls: Mutex<HashMap<Op, u64>>,
    /// Calls running now and the most seen at once, per operation.
    concurrency: Mutex<HashMap<Op, (u64, u64)>>,
}

enum Plan {
    Forward,
    FailBefore,
    LoseAnswer,
}

impl FaultStore {
    pub fn new(inner: DynStore, config: FaultConfig) -> Self {
        Self {
            inner,
            config: Mutex::new(config),
            calls: Mutex::default(),
            concurrency: Mutex::default(),
        }
    }

    /// Replaces the fault configuration (e.g. to stop injecting before a final check).
    pub fn set_config(&self, config: FaultConfig) {
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = config;
    }

    /// How many calls of `op` were made so far.
    pub fn calls(&self, op: Op) -> u64 {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&op)
            .copied()
            .unwrap_or(0)
    }

    /// The most calls of `op` that ran at the same time.
    pub fn max_concurrent(&self, op: Op) -> u64 {
        self.concurrency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&op)
            .map_or(0, |c| c.1)
    }

    fn enter(&self, op: Op) {
        let mut c = self.concurrency.lock().unwrap_or_else(|p| p.into_inner());
        let entry = c.entry(op).or_default();
        entry.0 += 1;
        entry.1 = entry.1.max(entry.0);
    }

    fn leave(&self, op: Op) {
        let mut c = self.concurrency.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = c.get_mut(&op) {
            entry.0 = entry.0.saturating_sub(1);
        }
    }

    async fn plan(&self, op: Op) -> Plan {
        let n = {
            let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
            let n = calls.entry(op).or_default();
            *n += 1;
            *n
        };
        let (plan, delay) = {
            let config = self.config.lock().unwrap_or_else(|p| p.into_inner());
            let mut rng = rand::rng();
            let delay = config
                .latency
                .as_ref()
                .filter(|r| r.end > r.start)
                .map(|r| rng.random_range(r.clone()));
            let plan = if config.fail_nth.get(&op) == Some(&n)
                || rng.random_bool(config.error_rate.clamp(0.0, 1.0))
            {
                Plan::FailBefore
            } else if rng.random_bool(config.lost_answer_rate.clamp(0.0, 1.0)) {
                Plan::LoseAnswer
            } else {
                Plan::Forward
            };
            (plan, delay)
        };
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        plan
    }

    async fn run<T>(
        &self,
        op: Op,
        key: &str,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.enter(op);
        let result = self.run_planned(op, key, call).await;
        self.leave(op);
        result
    }

    async fn run_planned<T>(
        &self,
        op: Op,
        key: &str,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match self.plan(op).await {
            Plan::Forward => call.await,
            Plan::FailBefore => Err(StoreError::new(
                StoreErrorKind::Transient,
                op.name(),
                key,
                "injected fault: 503 SlowDown",
            )),
            Plan::LoseAnswer => {
                let _ = call.await;
                Err(StoreError::new(
                    StoreErrorKind::Transient,
                    op.name(),
                    key,
                    "injected fault: timed out waiting for the answer",
                ))
            }
        }
    }
}

#[async_trait]
impl ObjectStore for FaultStore {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn min_part_size(&self) -> u64 {
        self.inner.min_part_size()
    }

    fn requires_contiguous_parts(&self) -> bool {
        self.inner.requires_contiguous_parts()
    }

    fn enforces_complete_conditions(&self) -> bool {
        self.inner.enforces_complete_conditions()
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<GetResult, StoreError> {
        self.run(Op::Get, key, self.inner.get(key, range)).await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        self.run(Op::Head, key, self.inner.head(key)).await
    }

    async fn put(&self, key: &str, body: Bytes, opts: PutOptions) -> Result<PutResult, StoreError> {
        self.run(Op::Put, key, self.inner.put(key, body, opts))
            .await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.run(Op::Delete, key, self.inner.delete(key)).await
    }

    async fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        let first = keys.first().cloned().unwrap_or_default();
        self.run(Op::DeleteMany, &first, self.inner.delete_many(keys))
            .await
    }

    async fn list(&self, req: ListRequest) -> Result<ListPage, StoreError> {
        let prefix = req.prefix.clone();
        self.run(Op::List, &prefix, self.inner.list(req)).await
    }

    async fn create_multipart(&self, key: &str, opts: PutOptions) -> Result<String, StoreError> {
        self.run(
            Op::CreateMultipart,
            key,
            self.inner.create_multipart(key, opts),
        )
        .await
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Bytes,
    ) -> Result<String, StoreError> {
        self.run(
            Op::UploadPart,
            key,
            self.inner.upload_part(key, upload_id, part_number, body),
        )
        .await
    }

    async fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        source_key: &str,
        range: Range<u64>,
        source_if_match: Option<&str>,
    ) -> Result<String, StoreError> {
        let call = self.inner.upload_part_copy(
            key,
            upload_id,
            part_number,
            source_key,
            range,
            source_if_match,
        );
        self.run(Op::UploadPartCopy, key, call).await
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
        condition: PutCondition,
    ) -> Result<PutResult, StoreError> {
        let call = self
            .inner
            .complete_multipart(key, upload_id, parts, condition);
        self.run(Op::CompleteMultipart, key, call).await
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        self.run(
            Op::AbortMultipart,
            key,
            self.inner.abort_multipart(key, upload_id),
        )
        .await
    }

    fn reads_parts(&self) -> bool {
        self.inner.reads_parts()
    }

    async fn read_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        etag: &str,
        range: Range<u64>,
    ) -> Result<Bytes, StoreError> {
        self.run(
            Op::Get,
            key,
            self.inner.read_part(key, upload_id, number, etag, range),
        )
        .await
    }

    async fn list_parts(
        &self,
        key: &str,
        upload_id: &str,
        marker: Option<u32>,
    ) -> Result<PartsPage, StoreError> {
        self.run(
            Op::ListParts,
            key,
            self.inner.list_parts(key, upload_id, marker),
        )
        .await
    }

    async fn list_multipart_uploads(
        &self,
        prefix: &str,
        marker: Option<UploadsMarker>,
    ) -> Result<UploadsPage, StoreError> {
        self.run(
            Op::ListMultipartUploads,
            prefix,
            self.inner.list_multipart_uploads(prefix, marker),
        )
        .await
    }
}

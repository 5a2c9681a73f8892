//! What the sources' tests share: a task context over a memory store, and an output that
//! collects what a source emits.

use std::sync::Arc;

use bytes::Bytes;
use fs_core::store::memory::MemoryStore;
use fs_core::store::{DynStore, PutOptions};
use fs_core::{Index, RecoverableWriter, WriterConfig};

use crate::data::{Record, Timestamp};
use crate::error::EngineError;
use crate::operator::{Output, Source, SourceStatus, TaskContext};

/// A store, a writer over it, and a runtime of its own. Tests run on the plain test thread,
/// like tasks do, so `block_on` through the handle is allowed.
pub struct TestJob {
    pub runtime: tokio::runtime::Runtime,
    pub store: DynStore,
    pub writer: Arc<RecoverableWriter>,
}

impl TestJob {
    pub fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let store: DynStore = Arc::new(MemoryStore::new());
        let writer = RecoverableWriter::new(
            store.clone(),
            Index::temporary().unwrap(),
            // The sinks never read back what they write: no local copy of every part.
            WriterConfig {
                cache_parts: false,
                ..WriterConfig::default()
            },
        )
        .unwrap();
        Self {
            runtime,
            store,
            writer: Arc::new(writer),
        }
    }

    pub fn ctx(&self, subtask: usize, parallelism: usize) -> TaskContext {
        TaskContext {
            job_id: "job".into(),
            job_name: "test".into(),
            operator_id: "source".into(),
            subtask,
            parallelism,
            attempt: 0,
            writer: self.writer.clone(),
            runtime: self.runtime.handle().clone(),
        }
    }

    pub fn put(&self, key: &str, body: &[u8]) {
        let body = Bytes::copy_from_slice(body);
        self.runtime
            .block_on(self.store.put(key, body, PutOptions::default()))
            .unwrap();
    }
}

/// Collects records; watermarks are the runtime's business and are ignored.
#[derive(Default)]
pub struct Collect {
    pub records: Vec<Record>,
}

impl Output for Collect {
    fn emit(&mut self, record: Record) -> Result<(), EngineError> {
        self.records.push(record);
        Ok(())
    }

    fn watermark(&mut self, _watermark: Timestamp) -> Result<(), EngineError> {
        Ok(())
    }
}

/// Polls `source` until it finishes, failing the test if it idles 1,000 times in a row.
pub fn drain(source: &mut dyn Source, out: &mut Collect, max: usize) {
    let mut idle = 0;
    loop {
        match source.poll(out, max).unwrap() {
            SourceStatus::More => idle = 0,
            SourceStatus::Idle(d) => {
                idle += 1;
                assert!(idle < 1000, "the source keeps idling");
                std::thread::sleep(d);
            }
            SourceStatus::Finished => return,
        }
    }
}

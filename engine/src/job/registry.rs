//! The jobs a store has seen, under `_jobs/<job id>.json`: what each job is (its name and job
//! file) and how it last stood. A job manager that restarts (or `rivulet run` run again)
//! finds its unfinished jobs here and resumes them from their latest checkpoints.

use bytes::Bytes;
use fs_core::store::{DynStore, ObjectStoreExt, PutOptions};
use serde::{Deserialize, Serialize};

use crate::error::EngineError;

const PREFIX: &str = "_jobs/";

/// How a job last stood, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RecordedState {
    Running,
    /// A cancel was accepted: recorded before it is acknowledged, so that a job manager that
    /// stops before the cancel is done leaves it for the next one to finish (resuming the job
    /// instead would restore files the cancel already abandoned).
    Cancelling,
    Finished,
    Failed,
    Canceled,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    pub job_id: String,
    pub name: String,
    /// The job file's text, so that the job can be rebuilt without it.
    pub spec: String,
    pub state: RecordedState,
    pub submitted_at_ms: i64,
    pub updated_at_ms: i64,
}

fn key(job_id: &str) -> String {
    format!("{PREFIX}{job_id}.json")
}

/// A new job id: the job's name (made key-safe) and a random suffix.
pub fn new_job_id(name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    // An id never starts with '-', which a command line would take for an option.
    let stem = match safe.trim_matches('-') {
        "" => "job",
        stem => stem,
    };
    format!("{stem}-{}", &suffix[..12])
}

pub async fn save(store: &DynStore, record: &JobRecord) -> Result<(), EngineError> {
    let body =
        serde_json::to_vec_pretty(record).map_err(|e| EngineError::state("job record", e))?;
    store
        .put(
            &key(&record.job_id),
            Bytes::from(body),
            PutOptions::default(),
        )
        .await?;
    Ok(())
}

/// Updates a job's recorded state.
pub async fn set_state(
    store: &DynStore,
    job_id: &str,
    state: RecordedState,
) -> Result<(), EngineError> {
    let Some(mut record) = get(store, job_id).await? else {
        return Ok(());
    };
    record.state = state;
    record.updated_at_ms = chrono::Utc::now().timestamp_millis();
    save(store, &record).await
}

pub async fn get(store: &DynStore, job_id: &str) -> Result<Option<JobRecord>, EngineError> {
    let Some(_) = store.head_opt(&key(job_id)).await? else {
        return Ok(None);
    };
    let body = store.get(&key(job_id), None).await?.body;
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| EngineError::state(key(job_id), e))
}

/// Every recorded job, oldest first. Unreadable records are skipped with a warning.
pub async fn list(store: &DynStore) -> Result<Vec<JobRecord>, EngineError> {
    let mut records = Vec::new();
    for object in store.list_all(PREFIX).await? {
        if !object.key.ends_with(".json") {
            continue;
        }
        let body = store.get(&object.key, None).await?.body;
        match serde_json::from_slice::<JobRecord>(&body) {
            Ok(r) => records.push(r),
            Err(e) => tracing::warn!("skipping the unreadable job record {}: {e}", object.key),
        }
    }
    records.sort_by_key(|r| r.submitted_at_ms);
    Ok(records)
}

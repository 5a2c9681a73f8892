//! Where checkpoints live in the store, and their metadata.
//!
//! ```text
//! _checkpoints/<job>/chk-<n>/<vertex>-<subtask>   state too big to inline (written by the subtask)
//! _checkpoints/<job>/chk-<n>/_metadata            JSON: every operator state of checkpoint n
//! ```
//!
//! The metadata object is written last, by the job master, once every subtask has stored its
//! state: a checkpoint exists exactly when its `_metadata` does, so a crash at any moment
//! leaves either a complete checkpoint or one that restore ignores.

use std::collections::BTreeSet;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use fs_core::store::{DynStore, ObjectStoreExt, PutOptions};
use serde::{Deserialize, Serialize};

use crate::error::EngineError;

/// States up to this size travel in the acknowledgement and are inlined in the metadata,
/// saving a PUT per subtask (sources' positions and sinks' tokens are this small).
pub const INLINE_STATE_LIMIT: usize = 16 * 1024;

/// The metadata format this build writes and reads.
const METADATA_VERSION: u32 = 1;

/// Where one operator subtask's state is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateHandle {
    /// Base64 of the state bytes.
    Inline(String),
    Stored {
        key: String,
        size: u64,
    },
}

/// The state of one subtask of one vertex in a checkpoint (`None`: stateless).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorState {
    pub vertex_id: String,
    pub subtask: usize,
    pub handle: Option<StateHandle>,
}

impl OperatorState {
    pub fn size(&self) -> u64 {
        match &self.handle {
            None => 0,
            Some(StateHandle::Inline(b)) => (b.len() * 3 / 4) as u64,
            Some(StateHandle::Stored { size, .. }) => *size,
        }
    }
}

/// A completed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointMetadata {
    pub version: u32,
    pub job_id: String,
    pub checkpoint_id: u64,
    pub completed_at_ms: i64,
    pub is_final: bool,
    pub states: Vec<OperatorState>,
}

/// The checkpoints of one job in the store.
pub struct CheckpointStorage {
    store: DynStore,
    job_id: String,
    runtime: tokio::runtime::Handle,
}

impl CheckpointStorage {
    pub fn new(store: DynStore, job_id: &str, runtime: tokio::runtime::Handle) -> Arc<Self> {
        Arc::new(Self {
            store,
            job_id: job_id.to_string(),
            runtime,
        })
    }

    /// `_checkpoints/<job>/`
    pub fn root(&self) -> String {
        format!("_checkpoints/{}/", self.job_id)
    }

    fn checkpoint_dir(&self, id: u64) -> String {
        format!("{}chk-{id}/", self.root())
    }

    /// Keeps a subtask's state: inline if small, else as its own object.
    pub fn store_state(
        &self,
        checkpoint_id: u64,
        vertex_id: &str,
        subtask: usize,
        state: Option<Vec<u8>>,
    ) -> Result<OperatorState, EngineError> {
        let handle = match state {
            None => None,
            Some(bytes) if bytes.len() <= INLINE_STATE_LIMIT => Some(StateHandle::Inline(
                base64::engine::general_purpose::STANDARD.encode(&bytes),
            )),
            Some(bytes) => {
                let key = format!(
                    "{}{vertex_id}-{subtask}",
                    self.checkpoint_dir(checkpoint_id)
                );
                let size = bytes.len() as u64;
                self.runtime.block_on(self.store.put(
                    &key,
                    Bytes::from(bytes),
                    PutOptions::default(),
                ))?;
                Some(StateHandle::Stored { key, size })
            }
        };
        Ok(OperatorState {
            vertex_id: vertex_id.to_string(),
            subtask,
            handle,
        })
    }

    /// Reads a state back.
    pub fn load_state(&self, handle: &StateHandle) -> Result<Vec<u8>, EngineError> {
        match handle {
            StateHandle::Inline(b64) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| EngineError::state("inline checkpoint state", e)),
            StateHandle::Stored { key, size } => {
                let bytes = self.runtime.block_on(self.store.get(key, None))?.body;
                if bytes.len() as u64 != *size {
                    return Err(EngineError::state(
                        key.clone(),
                        format!("{} bytes, the checkpoint recorded {size}", bytes.len()),
                    ));
                }
                Ok(bytes.to_vec())
            }
        }
    }

    /// Completes a checkpoint by writing its metadata (the last write of a checkpoint).
    pub fn commit(&self, metadata: &CheckpointMetadata) -> Result<(), EngineError> {
        let key = format!("{}_metadata", self.checkpoint_dir(metadata.checkpoint_id));
        let body = serde_json::to_vec_pretty(metadata)
            .map_err(|e| EngineError::state("checkpoint metadata", e))?;
        self.runtime.block_on(
            self.store
                .put(&key, Bytes::from(body), PutOptions::default()),
        )?;
        Ok(())
    }

    pub fn new_metadata(
        &self,
        checkpoint_id: u64,
        is_final: bool,
        mut states: Vec<OperatorState>,
    ) -> CheckpointMetadata {
        // Deterministic order, for humans reading it and for tests comparing it.
        states.sort_by(|a, b| (&a.vertex_id, a.subtask).cmp(&(&b.vertex_id, b.subtask)));
        CheckpointMetadata {
            version: METADATA_VERSION,
            job_id: self.job_id.clone(),
            checkpoint_id,
            completed_at_ms: chrono::Utc::now().timestamp_millis(),
            is_final,
            states,
        }
    }

    /// Ids of the checkpoints with metadata (completed), ascending, and of every checkpoint
    /// directory seen.
    fn scan(&self) -> Result<(BTreeSet<u64>, BTreeSet<u64>), EngineError> {
        let keys = self.runtime.block_on(self.store.list_all(&self.root()))?;
        let mut completed = BTreeSet::new();
        let mut seen = BTreeSet::new();
        for object in keys {
            let Some(rest) = object.key.strip_prefix(&self.root()) else {
                continue;
            };
            let Some((dir, file)) = rest.split_once('/') else {
                continue;
            };
            let Some(id) = dir.strip_prefix("chk-").and_then(|n| n.parse::<u64>().ok()) else {
                continue;
            };
            seen.insert(id);
            if file == "_metadata" {
                completed.insert(id);
            }
        }
        Ok((completed, seen))
    }

    /// The latest completed checkpoint, if any.
    pub fn latest(&self) -> Result<Option<CheckpointMetadata>, EngineError> {
        let (completed, _) = self.scan()?;
        let Some(id) = completed.last() else {
            return Ok(None);
        };
        let key = format!("{}_metadata", self.checkpoint_dir(*id));
        let body = self.runtime.block_on(self.store.get(&key, None))?.body;
        let metadata: CheckpointMetadata =
            serde_json::from_slice(&body).map_err(|e| EngineError::state(key.clone(), e))?;
        if metadata.version != METADATA_VERSION {
            return Err(EngineError::state(
                key,
                format!(
                    "metadata version {} (this build reads {METADATA_VERSION})",
                    metadata.version
                ),
            ));
        }
        Ok(Some(metadata))
    }

    /// Deletes all but the newest `retain` completed checkpoints, and the leftovers of
    /// declined ones older than the newest completed one.
    pub fn discard_old(&self, retain: usize) -> Result<(), EngineError> {
        let (completed, seen) = self.scan()?;
        let keep: BTreeSet<u64> = completed
            .iter()
            .rev()
            .take(retain.max(1))
            .copied()
            .collect();
        let Some(&newest) = completed.last() else {
            return Ok(());
        };
        for id in seen {
            if keep.contains(&id) || id > newest {
                continue;
            }
            let keys: Vec<String> = self
                .runtime
                .block_on(self.store.list_all(&self.checkpoint_dir(id)))?
                .into_iter()
                .map(|o| o.key)
                .collect();
            // The metadata goes first: a half-deleted checkpoint must not look complete.
            let (meta, rest): (Vec<String>, Vec<String>) =
                keys.into_iter().partition(|k| k.ends_with("/_metadata"));
            self.runtime.block_on(self.store.delete_many(&meta))?;
            self.runtime.block_on(self.store.delete_many(&rest))?;
        }
        Ok(())
    }
}

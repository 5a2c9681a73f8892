//! The local index of open uploads, in sled.
//!
//! For every upload a writer has opened and not yet committed or aborted, the index keeps the
//! latest token (resume or commit) and the tail objects that tokens handed out still need. After
//! a crash, `recover_all` reads it to resume or commit each file; `gc` treats what it references
//! as live. Every update is flushed to disk before the call that made it returns, because a
//! persist is only acknowledged once its token is durable here.
//!
//! Entries are namespaced by store (its `describe()` string), so one index can serve several
//! stores. Values are JSON, with tokens in their binary form (hex), so the index can be read by
//! hand when debugging.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::token::{Token, TokenError};

mod temporary;

/// An index failure, naming the index's path.
#[derive(Debug, Error)]
pub enum IndexError {
    #[error("index {path}: {source}")]
    Sled { path: String, source: sled::Error },
    /// sled allows one process per index: a mount, a gateway or another command holds it.
    #[error(
        "index {path} is in use by another rivulet process (a mount, a gateway or another command); stop it or give this one its own --index"
    )]
    InUse { path: String },
    #[error("index {path}: entry {entry} is unreadable: {detail}")]
    Corrupt {
        path: String,
        entry: String,
        detail: String,
    },
    #[error("index {path}: entry {entry}: {source}")]
    Token {
        path: String,
        entry: String,
        source: TokenError,
    },
}

/// What the index records about one open upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub store: String,
    pub key: String,
    pub upload_id: String,
    /// The latest token handed out; `None` until the first persist.
    pub latest: Option<Token>,
    /// Tail objects that tokens handed out may still need.
    pub live_tails: Vec<String>,
    /// When the writer opened the upload (seconds since the epoch).
    pub opened_at: u64,
}

#[derive(Serialize, Deserialize)]
struct StoredEntry {
    store: String,
    key: String,
    upload_id: String,
    latest: Option<String>,
    live_tails: Vec<String>,
    opened_at: u64,
}

/// A handle to the index; cheap to clone and safe to share between writers and tasks.
#[derive(Debug, Clone)]
pub struct Index {
    db: sled::Db,
    uploads: sled::Tree,
    path: String,
    /// Serializes read-modify-write updates of entries: a persist recording its token and a
    /// cleanup releasing an older tail of the same upload must not undo each other. (sled
    /// lets one process open an index, so an in-process lock covers every writer.)
    updates: Arc<Mutex<()>>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn entry_id(store: &str, upload_id: &str) -> Vec<u8> {
    let mut id = store.as_bytes().to_vec();
    id.push(0);
    id.extend_from_slice(upload_id.as_bytes());
    id
}

impl Index {
    /// Opens (creating if needed) the index at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, IndexError> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let sled_err = |source| IndexError::Sled {
            path: shown.clone(),
            source,
        };
        let db = sled::Config::new()
            .path(path)
            .open()
            .map_err(|source| match source {
                // sled reports a held lock only in its message.
                sled::Error::Io(ref e) if e.to_string().contains("could not acquire lock") => {
                    IndexError::InUse {
                        path: shown.clone(),
                    }
                }
                source => sled_err(source),
            })?;
        let uploads = db.open_tree("uploads").map_err(sled_err)?;
        Ok(Self {
            db,
            uploads,
            path: shown,
            updates: Arc::default(),
        })
    }

    /// A throwaway index, deleted when dropped, for task managers, job masters and tests. The
    /// ones that killed processes left behind are removed by the next one made (see
    /// `index/temporary.rs`).
    pub fn temporary() -> Result<Self, IndexError> {
        let path = temporary::new_path();
        let shown = path
            .as_ref()
            .map_or_else(|| "<temporary>".to_string(), |p| p.display().to_string());
        let sled_err = |source| IndexError::Sled {
            path: shown.clone(),
            source,
        };
        let mut config = sled::Config::new().temporary(true);
        if let Some(path) = &path {
            config = config.path(path);
        }
        let db = config.open().map_err(sled_err)?;
        let uploads = db.open_tree("uploads").map_err(sled_err)?;
        Ok(Self {
            db,
            uploads,
            path: shown,
            updates: Arc::default(),
        })
    }

    /// The default location: `$RIVULET_STATE_DIR/index`, else `$XDG_STATE_HOME/rivulet/index`,
    /// else `~/.local/state/rivulet/index`.
    pub fn default_path() -> PathBuf {
        if let Some(dir) = std::env::var_os("RIVULET_STATE_DIR") {
            return PathBuf::from(dir).join("index");
        }
        let state = std::env::var_os("XDG_STATE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                std::env::var_os("HOME")
                    .map(PathBuf::from)
                    .unwrap_or_else(std::env::temp_dir)
                    .join(".local/state")
            });
        state.join("rivulet/index")
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    fn sled_err(&self, source: sled::Error) -> IndexError {
        IndexError::Sled {
            path: self.path.clone(),
            source,
        }
    }

    fn decode(&self, id: &[u8], value: &[u8]) -> Result<IndexEntry, IndexError> {
        let entry = String::from_utf8_lossy(id).replace('\0', " ");
        let stored: StoredEntry =
            serde_json::from_slice(value).map_err(|e| IndexError::Corrupt {
                path: self.path.clone(),
                entry: entry.clone(),
                detail: e.to_string(),
            })?;
        let latest = match stored.latest {
            None => None,
            Some(hex_token) => {
                let bytes = hex::decode(&hex_token).map_err(|e| IndexError::Corrupt {
                    path: self.path.clone(),
                    entry: entry.clone(),
                    detail: e.to_string(),
                })?;
                Some(Token::decode(&bytes).map_err(|source| IndexError::Token {
                    path: self.path.clone(),
                    entry: entry.clone(),
                    source,
                })?)
            }
        };
        Ok(IndexEntry {
            store: stored.store,
            key: stored.key,
            upload_id: stored.upload_id,
            latest,
            live_tails: stored.live_tails,
            opened_at: stored.opened_at,
        })
    }

    fn insert(&self, entry: &IndexEntry) -> Result<(), IndexError> {
        let stored = StoredEntry {
            store: entry.store.clone(),
            key: entry.key.clone(),
            upload_id: entry.upload_id.clone(),
            latest: entry.latest.as_ref().map(|t| hex::encode(t.encode())),
            live_tails: entry.live_tails.clone(),
            opened_at: entry.opened_at,
        };
        let value = serde_json::to_vec(&stored).map_err(|e| IndexError::Corrupt {
            path: self.path.clone(),
            entry: entry.key.clone(),
            detail: e.to_string(),
        })?;
        self.uploads
            .insert(entry_id(&entry.store, &entry.upload_id), value)
            .map_err(|e| self.sled_err(e))?;
        Ok(())
    }

    /// Writes an entry durably.
    fn write(&self, entry: &IndexEntry) -> Result<(), IndexError> {
        self.insert(entry)?;
        self.flush()
    }

    /// Changes one entry (or makes it, when `missing` gives one) atomically with respect to the
    /// other updates, then makes the change durable. `change` returns false to leave it as is.
    fn update(
        &self,
        store: &str,
        upload_id: &str,
        missing: impl FnOnce() -> Option<IndexEntry>,
        change: impl FnOnce(&mut IndexEntry) -> bool,
    ) -> Result<(), IndexError> {
        {
            let _serialized = self.updates.lock().unwrap_or_else(|p| p.into_inner());
            let Some(mut entry) = self.get(store, upload_id)?.or_else(missing) else {
                return Ok(());
            };
            if !change(&mut entry) {
                return Ok(());
            }
            self.insert(&entry)?;
        }
        // Outside the lock: concurrent updates share one flush instead of queueing for it.
        self.flush()
    }

    /// Makes every update so far durable.
    fn flush(&self) -> Result<(), IndexError> {
        self.db.flush().map(|_| ()).map_err(|e| self.sled_err(e))
    }

    /// The entry of one upload, if any.
    pub fn get(&self, store: &str, upload_id: &str) -> Result<Option<IndexEntry>, IndexError> {
        let id = entry_id(store, upload_id);
        match self.uploads.get(&id).map_err(|e| self.sled_err(e))? {
            Some(value) => self.decode(&id, &value).map(Some),
            None => Ok(None),
        }
    }

    /// Records a newly opened upload (no token yet), so `gc` leaves it alone.
    pub fn record_open(&self, store: &str, key: &str, upload_id: &str) -> Result<(), IndexError> {
        self.write(&IndexEntry {
            store: store.to_string(),
            key: key.to_string(),
            upload_id: upload_id.to_string(),
            latest: None,
            live_tails: Vec::new(),
            opened_at: now_secs(),
        })
    }

    /// Records a token handed out for an upload (and its tail, for a resume token), durably.
    pub fn record_token(&self, store: &str, token: &Token) -> Result<(), IndexError> {
        let fresh = || {
            Some(IndexEntry {
                store: store.to_string(),
                key: token.key().to_string(),
                upload_id: token.upload_id().to_string(),
                latest: None,
                live_tails: Vec::new(),
                opened_at: now_secs(),
            })
        };
        self.update(store, token.upload_id(), fresh, |entry| {
            if let Token::Resume(t) = token
                && !entry.live_tails.contains(&t.tail_key)
            {
                entry.live_tails.push(t.tail_key.clone());
            }
            entry.latest = Some(token.clone());
            true
        })
    }

    /// Marks tails as needed by tokens handed out earlier (used when rebuilding the index).
    pub fn add_live_tails(
        &self,
        store: &str,
        upload_id: &str,
        tails: &[String],
    ) -> Result<(), IndexError> {
        self.update(
            store,
            upload_id,
            || None,
            |entry| {
                for t in tails {
                    if !entry.live_tails.contains(t) {
                        entry.live_tails.push(t.clone());
                    }
                }
                entry.live_tails.sort();
                true
            },
        )
    }

    /// Forgets a tail that was deleted.
    pub fn release_tail(
        &self,
        store: &str,
        upload_id: &str,
        tail_key: &str,
    ) -> Result<(), IndexError> {
        self.update(
            store,
            upload_id,
            || None,
            |entry| {
                let before = entry.live_tails.len();
                entry.live_tails.retain(|t| t != tail_key);
                entry.live_tails.len() != before
            },
        )
    }

    /// Forgets an upload (committed or aborted).
    pub fn remove(&self, store: &str, upload_id: &str) -> Result<(), IndexError> {
        {
            let _serialized = self.updates.lock().unwrap_or_else(|p| p.into_inner());
            self.uploads
                .remove(entry_id(store, upload_id))
                .map_err(|e| self.sled_err(e))?;
        }
        self.flush()
    }

    /// Every entry of one store.
    pub fn entries(&self, store: &str) -> Result<Vec<IndexEntry>, IndexError> {
        let mut prefix = store.as_bytes().to_vec();
        prefix.push(0);
        self.scan(&prefix)
    }

    /// Every entry of every store: one bucket can be opened as several stores (`s3://bkt` and
    /// `s3://bkt/prefix`), so what protects an upload is any entry that names it.
    pub fn all_entries(&self) -> Result<Vec<IndexEntry>, IndexError> {
        self.scan(&[])
    }

    fn scan(&self, prefix: &[u8]) -> Result<Vec<IndexEntry>, IndexError> {
        self.uploads
            .scan_prefix(prefix)
            .map(|item| {
                let (id, value) = item.map_err(|e| self.sled_err(e))?;
                self.decode(&id, &value)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::PutCondition;
    use crate::token::ResumeToken;

    fn token(upload: &str, tail: &str) -> Token {
        Token::Resume(ResumeToken {
            key: "k".into(),
            upload_id: upload.into(),
            writer_id: "w".into(),
            condition: PutCondition::None,
            parts: vec![],
            tail_key: tail.into(),
            tail_len: 0,
            tail_crc32c: 0,
            seq: 1,
        })
    }

    #[test]
    fn a_temporary_index_lives_in_a_folder_of_its_own_until_dropped() {
        let index = Index::temporary().unwrap();
        index.record_open("s", "k", "u").unwrap();
        let folder = std::path::PathBuf::from(index.path());
        assert!(folder.join("db").is_file(), "{}", index.path());
        let other = Index::temporary().unwrap();
        assert_ne!(other.path(), index.path());
        let clone = index.clone();
        drop(index);
        assert!(folder.is_dir(), "a clone still holds it");
        drop(clone);
        // sled removes the folder when its last reference goes, and its flusher thread may
        // hold one for a moment after the last handle is dropped.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while folder.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!folder.exists(), "removed with its last handle");
    }

    #[test]
    fn concurrent_token_records_and_tail_releases_lose_nothing() {
        let index = Index::temporary().unwrap();
        index.record_open("s", "k", "u").unwrap();
        for i in 0..20 {
            index
                .record_token("s", &token("u", &format!("old-{i}")))
                .unwrap();
        }
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for i in 0..20 {
                    index.release_tail("s", "u", &format!("old-{i}")).unwrap();
                }
            });
            scope.spawn(|| {
                for i in 0..20 {
                    index
                        .record_token("s", &token("u", &format!("new-{i}")))
                        .unwrap();
                }
            });
        });
        let entry = index.get("s", "u").unwrap().unwrap();
        let expected: Vec<String> = (0..20).map(|i| format!("new-{i}")).collect();
        assert_eq!(
            entry.live_tails, expected,
            "every release and every record kept"
        );
        assert_eq!(
            entry.latest,
            Some(token("u", "new-19")),
            "the newest token stays latest"
        );
    }

    #[test]
    fn an_index_held_elsewhere_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index");
        let held = Index::open(&path).unwrap();
        let err = Index::open(&path).unwrap_err();
        assert!(matches!(err, IndexError::InUse { .. }), "{err}");
        assert!(err.to_string().contains("--index"), "{err}");
        drop(held);
        Index::open(&path).expect("free again once the holder is gone");
    }

    #[test]
    fn entries_survive_reopen_and_are_namespaced_by_store() {
        let dir = tempfile::tempdir().unwrap();
        {
            let index = Index::open(dir.path().join("idx")).unwrap();
            index.record_open("s1", "k", "u1").unwrap();
            index.record_token("s1", &token("u1", "t1")).unwrap();
            index.record_token("s1", &token("u1", "t2")).unwrap();
            index.record_token("s2", &token("u9", "t9")).unwrap();
        }
        let index = Index::open(dir.path().join("idx")).unwrap();
        let entries = index.entries("s1").unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].live_tails, vec!["t1", "t2"]);
        assert_eq!(entries[0].latest, Some(token("u1", "t2")));
        index.release_tail("s1", "u1", "t1").unwrap();
        assert_eq!(
            index.get("s1", "u1").unwrap().unwrap().live_tails,
            vec!["t2"]
        );
        index.remove("s1", "u1").unwrap();
        assert!(index.entries("s1").unwrap().is_empty());
        assert_eq!(index.entries("s2").unwrap().len(), 1);
    }
}

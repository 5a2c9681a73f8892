//! The context of one run: the global options, and opening stores, the index and writers.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use fs_core::error::StoreErrorKind;
use fs_core::retry::RetryPolicy;
use fs_core::store::{DynStore, ListRequest, StoreUrl, open_store, open_store_for_reading};
use fs_core::{Index, RecoverableWriter, WriterConfig};

use super::Global;

/// The global options and what is derived from them.
#[derive(Debug)]
pub struct Env {
    pub global: Global,
}

impl Env {
    pub fn new(global: Global) -> Self {
        Self { global }
    }

    /// Prints a line on stderr when `-v` was given.
    pub fn say(&self, message: impl Display) {
        if self.global.verbose > 0 {
            eprintln!("{message}");
        }
    }

    /// Whether progress bars may be drawn (they also need stderr to be a terminal).
    pub fn progress(&self) -> bool {
        !self.global.quiet
    }

    pub fn part_size(&self) -> u64 {
        self.global.part_size
    }

    pub fn max_in_flight(&self) -> usize {
        self.global.max_in_flight
    }

    /// Retries of the store calls the command line makes itself (`retry`) and of the writer's.
    /// The S3 client already retries transient failures itself (`max_attempts` in the URL), so
    /// retrying its calls again here would multiply the attempts: against a dead endpoint a
    /// command would take a minute to fail instead of seconds.
    pub fn retry_for(&self, url: &StoreUrl) -> RetryPolicy {
        match url {
            StoreUrl::S3(_) => RetryPolicy {
                max_attempts: 1,
                ..RetryPolicy::default()
            },
            _ => RetryPolicy::default(),
        }
    }

    /// Opens a store; a local store's directory is created if missing.
    pub async fn open_store(&self, url: &StoreUrl) -> Result<DynStore> {
        Ok(open_store(url).await?)
    }

    /// Opens a store to read from it: `None` for a local store whose directory does not exist.
    /// A local store is opened read-only: reading writes nothing into the directory (which
    /// would otherwise become a store's root) and needs no write permission there.
    pub async fn open_store_to_read(&self, url: &StoreUrl) -> Result<Option<DynStore>> {
        if let StoreUrl::Local(root) = url
            && !root.is_dir()
        {
            return Ok(None);
        }
        Ok(Some(open_store_for_reading(url).await?))
    }

    /// The error for a missing object (a local store's missing directory is named too).
    pub fn no_such_object(url: &StoreUrl, key: &str) -> anyhow::Error {
        match url {
            StoreUrl::Local(root) if !root.is_dir() => {
                anyhow::anyhow!("no such object '{key}' in {url} (the directory does not exist)")
            }
            _ => anyhow::anyhow!("no such object '{key}' in {url}"),
        }
    }

    /// [`no_such_object`](Self::no_such_object) for a key whose HEAD found nothing. S3 answers
    /// a HEAD with a bare 404 whether the key or the whole bucket is missing, so for S3 a
    /// listing of the key (one entry) tells which: a missing bucket is named with the server's
    /// own error. Other listing failures leave the plain message.
    pub async fn missing_object(
        &self,
        store: &DynStore,
        url: &StoreUrl,
        key: &str,
    ) -> anyhow::Error {
        if let StoreUrl::S3(_) = url {
            let request = ListRequest {
                prefix: key.to_string(),
                delimiter: None,
                continuation: None,
                max_keys: Some(1),
            };
            if let Err(e) = store.list(request).await
                && e.kind() == StoreErrorKind::NotFound
            {
                return anyhow::anyhow!("no such object '{key}' in {url}: {e}");
            }
        }
        // Keys under `key/`: the user named a "directory".
        let under = ListRequest {
            prefix: format!("{}/", key.trim_end_matches('/')),
            delimiter: None,
            continuation: None,
            max_keys: Some(1),
        };
        if !key.is_empty()
            && store
                .list(under)
                .await
                .is_ok_and(|page| !page.objects.is_empty() || !page.common_prefixes.is_empty())
        {
            let dir = key.trim_end_matches('/');
            return anyhow::anyhow!(
                "'{dir}' in {url} is a directory of keys, not an object: `rivulet ls` lists it"
            );
        }
        Self::no_such_object(url, key)
    }

    fn index_path(&self) -> PathBuf {
        self.global
            .index
            .clone()
            .unwrap_or_else(Index::default_path)
    }

    /// Opens (creating it if needed) the index of open uploads. The index is locked by the
    /// process that has it open: like cargo with its lock, this waits (saying so once) while
    /// another rivulet holds it, up to [`INDEX_LOCK_WAIT`].
    pub async fn index(&self) -> Result<Index> {
        self.index_at(self.index_path()).await
    }

    /// The gateway's index: `--index` if given, else `gateway-index` beside the default index.
    /// The gateway holds its index for as long as it runs; a file of its own keeps the other
    /// commands from waiting for it, and keeps it from finishing their uploads at its start.
    pub async fn gateway_index(&self) -> Result<Index> {
        let path = self
            .global
            .index
            .clone()
            .unwrap_or_else(|| Index::default_path().with_file_name("gateway-index"));
        self.index_at(path).await
    }

    pub async fn index_at(&self, path: PathBuf) -> Result<Index> {
        let started = Instant::now();
        let mut delay = Duration::from_millis(50);
        let mut said = false;
        loop {
            let attempt = path.clone();
            let opened = tokio::task::spawn_blocking(move || open_index(&attempt))
                .await
                .context("opening the index failed")?;
            match opened {
                Err(e) if is_lock_conflict(&e) && started.elapsed() < INDEX_LOCK_WAIT => {
                    if !said {
                        eprintln!(
                            "rivulet: waiting for the index {} (another rivulet is using it; \
                             give this one its own with --index)",
                            path.display()
                        );
                        said = true;
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
                other => return other,
            }
        }
    }

    /// A writer service over the store `url` names (opened as `store`) with the global options,
    /// and the index it records in.
    pub async fn writer(
        &self,
        url: &StoreUrl,
        store: DynStore,
    ) -> Result<(RecoverableWriter, Index)> {
        let index = self.index().await?;
        let mut config = WriterConfig {
            part_size: self.global.part_size,
            max_in_flight: self.global.max_in_flight,
            retry: self.retry_for(url),
            // The CLI never reads a file it is writing: no local copy of the parts.
            cache_parts: false,
            ..WriterConfig::default()
        };
        if let Some(dir) = &self.global.cache_dir {
            config.cache_dir = dir.clone();
        }
        let writer = RecoverableWriter::new(store, index.clone(), config)?;
        Ok((writer, index))
    }
}

/// How long a command waits for the index while another process holds it.
const INDEX_LOCK_WAIT: Duration = Duration::from_secs(600);

fn open_index(path: &Path) -> Result<Index> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create the index's directory {}", parent.display()))?;
    }
    Index::open(path).with_context(|| format!("cannot open the index {}", path.display()))
}

/// Whether opening the index failed because another process holds its lock.
fn is_lock_conflict(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        matches!(
            c.downcast_ref::<fs_core::index::IndexError>(),
            Some(fs_core::index::IndexError::InUse { .. })
        )
    })
}

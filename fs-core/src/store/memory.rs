//! An in-memory store with S3's rules, for tests. Stores opened by the same name in one process
//! share their contents (`memory://name`), so a test can "restart" a writer against the same data.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};

use super::rules::{self, md5_hex};
use super::{
    CompletedPart, GetResult, ListPage, ListRequest, ObjectMeta, ObjectStore, ObjectSummary,
    PartInfo, PartsPage, PutCondition, PutOptions, PutResult, UploadInfo, UploadsMarker,
    UploadsPage, limits,
};
use crate::error::{StoreError, StoreErrorKind};

#[derive(Debug, Clone)]
struct StoredObject {
    body: Bytes,
    meta: ObjectMeta,
}

#[derive(Debug)]
struct Upload {
    key: String,
    opts: PutOptions,
    initiated: SystemTime,
    parts: BTreeMap<u32, (String, Bytes)>,
}

#[derive(Debug, Default)]
struct State {
    objects: BTreeMap<String, StoredObject>,
    uploads: BTreeMap<String, Upload>,
    next_upload: u64,
}

/// Contents of named memory stores, shared process-wide.
static NAMED: LazyLock<Mutex<HashMap<String, Arc<Mutex<State>>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// An in-memory [`ObjectStore`]. Cloning shares the contents.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    name: String,
    state: Arc<Mutex<State>>,
    min_part_size: u64,
    contiguous_parts: bool,
    part_reads: bool,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// A fresh, unnamed store.
    pub fn new() -> Self {
        Self {
            name: format!("anonymous-{}", uuid::Uuid::new_v4().simple()),
            state: Arc::default(),
            min_part_size: limits::MIN_PART_SIZE,
            contiguous_parts: false,
            part_reads: false,
        }
    }

    /// The store called `name` in this process, created empty on first use.
    pub fn named(name: &str) -> Self {
        let mut named = NAMED.lock().unwrap_or_else(|p| p.into_inner());
        let state = named.entry(name.to_string()).or_default().clone();
        Self {
            name: name.to_string(),
            state,
            min_part_size: limits::MIN_PART_SIZE,
            contiguous_parts: false,
            part_reads: false,
        }
    }

    /// Lowers the minimum size of non-last parts, so tests can exercise multipart logic with
    /// small parts. Real stores keep 5 MiB.
    pub fn with_min_part_size(mut self, min_part_size: u64) -> Self {
        self.min_part_size = min_part_size.max(1);
        self
    }

    /// Makes completion require part numbers 1, 2, 3, … without gaps, as s3s-fs does.
    pub fn with_contiguous_parts(mut self) -> Self {
        self.contiguous_parts = true;
        self
    }

    /// Lets writers read back the parts of uploads in progress, as the local store does (S3
    /// cannot), so tests can run the writer both with and without its part cache.
    pub fn with_part_reads(mut self) -> Self {
        self.part_reads = true;
        self
    }

    /// Number of uploads in progress (for tests that check nothing is left behind).
    pub fn open_upload_count(&self) -> usize {
        self.lock().uploads.len()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters to tests, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn check_condition(
    op: &'static str,
    key: &str,
    existing: Option<&StoredObject>,
    condition: &PutCondition,
) -> Result<(), StoreError> {
    match (condition, existing) {
        (PutCondition::None, _) => Ok(()),
        (PutCondition::IfNoneMatch, None) => Ok(()),
        (PutCondition::IfNoneMatch, Some(_)) => Err(StoreError::new(
            StoreErrorKind::PreconditionFailed,
            op,
            key,
            "If-None-Match: the key already exists",
        )),
        (PutCondition::IfMatch(_), None) => Err(StoreError::new(
            StoreErrorKind::NotFound,
            op,
            key,
            "If-Match: the key does not exist",
        )),
        (PutCondition::IfMatch(etag), Some(obj)) if obj.meta.etag != etag.trim_matches('"') => {
            Err(StoreError::new(
                StoreErrorKind::PreconditionFailed,
                op,
                key,
                format!(
                    "If-Match: the object's ETag is {}, not {etag}",
                    obj.meta.etag
                ),
            ))
        }
        (PutCondition::IfMatch(_), Some(_)) => Ok(()),
    }
}

fn no_such_upload(op: &'static str, key: &str, upload_id: &str) -> StoreError {
    StoreError::new(
        StoreErrorKind::NoSuchUpload,
        op,
        key,
        format!("upload id {upload_id}"),
    )
}

fn make_meta(key: &str, size: u64, etag: String, opts: &PutOptions) -> ObjectMeta {
    ObjectMeta {
        key: key.to_string(),
        size,
        etag,
        last_modified: Some(SystemTime::now()),
        headers: opts.headers.clone(),
        metadata: opts.metadata.clone(),
    }
}

impl State {
    fn upload_mut(
        &mut self,
        op: &'static str,
        key: &str,
        upload_id: &str,
    ) -> Result<&mut Upload, StoreError> {
        match self.uploads.get_mut(upload_id) {
            Some(up) if up.key == key => Ok(up),
            _ => Err(no_such_upload(op, key, upload_id)),
        }
    }
}

#[async_trait]
impl ObjectStore for MemoryStore {
    fn describe(&self) -> String {
        format!("memory://{}", self.name)
    }

    fn min_part_size(&self) -> u64 {
        self.min_part_size
    }

    fn requires_contiguous_parts(&self) -> bool {
        self.contiguous_parts
    }

    fn enforces_complete_conditions(&self) -> bool {
        true
    }

    fn reads_parts(&self) -> bool {
        self.part_reads
    }

    async fn read_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        etag: &str,
        range: Range<u64>,
    ) -> Result<Bytes, StoreError> {
        const OP: &str = "read part";
        if !self.part_reads {
            return Err(StoreError::new(
                StoreErrorKind::NotSupported,
                OP,
                key,
                "this memory store was made without part reads",
            ));
        }
        rules::validate_key(OP, key)?;
        let mut state = self.lock();
        let upload = state.upload_mut(OP, key, upload_id)?;
        let Some((actual, body)) = upload.parts.get(&number) else {
            return Err(StoreError::new(
                StoreErrorKind::InvalidPart,
                OP,
                key,
                format!("upload {upload_id} has no part {number}"),
            ));
        };
        if actual.trim_matches('"') != etag.trim_matches('"') {
            return Err(StoreError::new(
                StoreErrorKind::PreconditionFailed,
                OP,
                key,
                format!("part {number} of upload {upload_id} was replaced"),
            ));
        }
        let end = range.end.min(body.len() as u64);
        if range.start > end {
            return Err(StoreError::new(
                StoreErrorKind::InvalidRange,
                OP,
                key,
                format!("range starts past part {number}'s {} bytes", body.len()),
            ));
        }
        Ok(body.slice(range.start as usize..end as usize))
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<GetResult, StoreError> {
        rules::validate_key("get", key)?;
        let state = self.lock();
        let obj = state
            .objects
            .get(key)
            .ok_or_else(|| StoreError::new(StoreErrorKind::NotFound, "get", key, ""))?;
        let range = rules::resolve_range("get", key, range, obj.meta.size)?;
        let body = obj.body.slice(range.start as usize..range.end as usize);
        Ok(GetResult {
            meta: obj.meta.clone(),
            range,
            body,
        })
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        rules::validate_key("head", key)?;
        let state = self.lock();
        state
            .objects
            .get(key)
            .map(|o| o.meta.clone())
            .ok_or_else(|| StoreError::new(StoreErrorKind::NotFound, "head", key, ""))
    }

    async fn put(&self, key: &str, body: Bytes, opts: PutOptions) -> Result<PutResult, StoreError> {
        rules::validate_key("put", key)?;
        let mut state = self.lock();
        check_condition("put", key, state.objects.get(key), &opts.condition)?;
        let etag = md5_hex(&body);
        let meta = make_meta(key, body.len() as u64, etag.clone(), &opts);
        state
            .objects
            .insert(key.to_string(), StoredObject { body, meta });
        Ok(PutResult { etag })
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        rules::validate_key("delete", key)?;
        self.lock().objects.remove(key);
        Ok(())
    }

    async fn list(&self, req: ListRequest) -> Result<ListPage, StoreError> {
        let state = self.lock();
        let entries = state
            .objects
            .range(req.prefix.clone()..)
            .map(|(k, o)| ObjectSummary {
                key: k.clone(),
                size: o.meta.size,
                etag: o.meta.etag.clone(),
                last_modified: o.meta.last_modified,
            });
        Ok(rules::list_page(
            entries.take_while(|e| e.key.starts_with(&req.prefix)),
            &req,
        ))
    }

    async fn create_multipart(&self, key: &str, opts: PutOptions) -> Result<String, StoreError> {
        rules::validate_key("create multipart upload", key)?;
        let mut state = self.lock();
        state.next_upload += 1;
        let id = format!(
            "mem-{}-{}",
            state.next_upload,
            uuid::Uuid::new_v4().simple()
        );
        state.uploads.insert(
            id.clone(),
            Upload {
                key: key.to_string(),
                opts,
                initiated: SystemTime::now(),
                parts: BTreeMap::new(),
            },
        );
        Ok(id)
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Bytes,
    ) -> Result<String, StoreError> {
        const OP: &str = "upload part";
        rules::validate_key(OP, key)?;
        rules::validate_part_number(OP, key, part_number)?;
        rules::validate_part_size(OP, key, body.len() as u64)?;
        let mut state = self.lock();
        let upload = state.upload_mut(OP, key, upload_id)?;
        let etag = md5_hex(&body);
        upload.parts.insert(part_number, (etag.clone(), body));
        Ok(etag)
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
        const OP: &str = "upload part copy";
        rules::validate_key(OP, key)?;
        rules::validate_key(OP, source_key)?;
        rules::validate_part_number(OP, key, part_number)?;
        rules::validate_part_size(OP, key, range.end.saturating_sub(range.start))?;
        let mut state = self.lock();
        let source = state.objects.get(source_key).ok_or_else(|| {
            StoreError::new(StoreErrorKind::NotFound, OP, source_key, "copy source")
        })?;
        if let Some(etag) = source_if_match
            && source.meta.etag != etag.trim_matches('"')
        {
            return Err(StoreError::new(
                StoreErrorKind::PreconditionFailed,
                OP,
                source_key,
                format!("copy source ETag is {}, not {etag}", source.meta.etag),
            ));
        }
        let size = source.meta.size;
        if range.start >= range.end || range.end > size {
            return Err(StoreError::new(
                StoreErrorKind::InvalidRange,
                OP,
                source_key,
                format!(
                    "range {}..{} is outside the source's {size} bytes",
                    range.start, range.end
                ),
            ));
        }
        let body = source.body.slice(range.start as usize..range.end as usize);
        let upload = state.upload_mut(OP, key, upload_id)?;
        let etag = md5_hex(&body);
        upload.parts.insert(part_number, (etag.clone(), body));
        Ok(etag)
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
        condition: PutCondition,
    ) -> Result<PutResult, StoreError> {
        const OP: &str = "complete multipart upload";
        rules::validate_key(OP, key)?;
        let mut state = self.lock();
        let upload = state.upload_mut(OP, key, upload_id)?;
        let uploaded: BTreeMap<u32, (String, u64)> = upload
            .parts
            .iter()
            .map(|(n, (etag, body))| (*n, (etag.clone(), body.len() as u64)))
            .collect();
        rules::validate_completion(key, self.min_part_size, parts, &uploaded)?;
        if self.contiguous_parts
            && parts
                .iter()
                .enumerate()
                .any(|(i, p)| p.number as usize != i + 1)
        {
            return Err(StoreError::new(
                StoreErrorKind::InvalidPartOrder,
                OP,
                key,
                "part numbers must be 1, 2, 3, ... without gaps on this store",
            ));
        }
        let mut body = BytesMut::new();
        for part in parts {
            body.extend_from_slice(&upload.parts[&part.number].1);
        }
        let etag = rules::multipart_etag(parts.iter().map(|p| p.etag.as_str()))
            .unwrap_or_else(|| md5_hex(&body));
        let meta = make_meta(key, body.len() as u64, etag.clone(), &upload.opts);
        check_condition(OP, key, state.objects.get(key), &condition)?;
        state.uploads.remove(upload_id);
        state.objects.insert(
            key.to_string(),
            StoredObject {
                body: body.freeze(),
                meta,
            },
        );
        Ok(PutResult { etag })
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        rules::validate_key("abort multipart upload", key)?;
        let mut state = self.lock();
        state.upload_mut("abort multipart upload", key, upload_id)?;
        state.uploads.remove(upload_id);
        Ok(())
    }

    async fn list_parts(
        &self,
        key: &str,
        upload_id: &str,
        marker: Option<u32>,
    ) -> Result<PartsPage, StoreError> {
        rules::validate_key("list parts", key)?;
        let mut state = self.lock();
        let upload = state.upload_mut("list parts", key, upload_id)?;
        let after = marker.unwrap_or(0);
        let mut parts: Vec<PartInfo> = upload
            .parts
            .range(after.saturating_add(1)..)
            .take(rules::MAX_LIST_KEYS + 1)
            .map(|(n, (etag, body))| PartInfo {
                number: *n,
                etag: Some(etag.clone()),
                size: body.len() as u64,
            })
            .collect();
        let next_marker = if parts.len() > rules::MAX_LIST_KEYS {
            parts.truncate(rules::MAX_LIST_KEYS);
            parts.last().map(|p| p.number)
        } else {
            None
        };
        Ok(PartsPage { parts, next_marker })
    }

    async fn list_multipart_uploads(
        &self,
        prefix: &str,
        marker: Option<UploadsMarker>,
    ) -> Result<UploadsPage, StoreError> {
        let state = self.lock();
        let mut all: Vec<UploadInfo> = state
            .uploads
            .iter()
            .filter(|(_, u)| u.key.starts_with(prefix))
            .map(|(id, u)| UploadInfo {
                key: u.key.clone(),
                upload_id: id.clone(),
                initiated: Some(u.initiated),
            })
            .collect();
        all.sort_by(|a, b| (&a.key, &a.upload_id).cmp(&(&b.key, &b.upload_id)));
        if let Some(m) = marker {
            all.retain(|u| (&u.key, &u.upload_id) > (&m.key, &m.upload_id));
        }
        let next = (all.len() > rules::MAX_LIST_KEYS).then(|| {
            all.truncate(rules::MAX_LIST_KEYS);
            let last = &all[all.len() - 1];
            UploadsMarker {
                key: last.key.clone(),
                upload_id: last.upload_id.clone(),
            }
        });
        Ok(UploadsPage { uploads: all, next })
    }
}

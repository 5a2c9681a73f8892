//! The blocking implementation of the object operations (get, head, put, delete, list) and
//! the paths, lock, temporaries and sidecars they share with the multipart operations.

use super::*;

impl Inner {
    pub(super) fn data_path(&self, key: &str) -> PathBuf {
        match key.strip_suffix('/') {
            Some(dir) => self.root.join(dir).join(DIR_MARKER),
            None => self.root.join(key),
        }
    }

    pub(super) fn sidecar_path(&self, key: &str) -> PathBuf {
        let hash = rules::md5_hex(key.as_bytes());
        let fan = hash.get(..2).unwrap_or("00").to_string();
        self.sys.join("meta").join(fan).join(format!("{hash}.json"))
    }

    pub(super) fn tmp_dir(&self) -> PathBuf {
        self.sys.join("tmp")
    }

    pub(super) fn uploads_dir(&self) -> PathBuf {
        self.sys.join("uploads")
    }

    pub(super) fn upload_dir(&self, upload_id: &str) -> PathBuf {
        self.uploads_dir().join(upload_id)
    }

    pub(super) fn lock(&self, op: &'static str, key: &str) -> Result<StoreLock<'_>, StoreError> {
        // Nothing guarded by the mutex can be left half-updated by a panic: it only orders.
        let file = self
            .lock_file
            .as_ref()
            .ok_or_else(|| self.read_only(op, key))?;
        let guard = self.mutex.lock().unwrap_or_else(|p| p.into_inner());
        file.lock().map_err(|e| StoreError::io(op, key, e))?;
        Ok(StoreLock {
            file,
            _guard: guard,
        })
    }

    /// Whether the store was opened for writing (not with [`LocalStore::open_for_reading`]).
    pub(super) fn writable(&self) -> bool {
        self.lock_file.is_some()
    }

    /// The error of a write to a store opened for reading.
    pub(super) fn read_only(&self, op: &'static str, key: &str) -> StoreError {
        StoreError::new(
            StoreErrorKind::Other,
            op,
            key,
            format!(
                "the local store {} was opened for reading only",
                self.root.display()
            ),
        )
    }

    /// Removes what crashed processes left behind: the trash, and temporaries older than a day.
    pub(super) fn sweep(&self) {
        if let Ok(entries) = fs::read_dir(self.sys.join("trash")) {
            for entry in entries.flatten() {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
        self.stale_temp_files(TMP_MAX_AGE, true);
    }

    /// The temporary files (and folders) last written more than `age` ago, with their sizes:
    /// leftovers of processes killed mid-write (a live writer keeps touching its file).
    /// `remove` deletes them.
    pub(super) fn stale_temp_files(&self, age: Duration, remove: bool) -> Vec<(PathBuf, u64)> {
        let Some(cutoff) = SystemTime::now().checked_sub(age) else {
            return Vec::new();
        };
        let Ok(entries) = fs::read_dir(self.tmp_dir()) else {
            return Vec::new();
        };
        let mut stale = Vec::new();
        for entry in entries.flatten() {
            let Ok(md) = entry.metadata() else { continue };
            if !md.modified().is_ok_and(|t| t <= cutoff) {
                continue;
            }
            let path = entry.path();
            let size = if md.is_dir() {
                dir_size(&path)
            } else {
                md.len()
            };
            let removed = !remove
                || if md.is_dir() {
                    fs::remove_dir_all(&path).is_ok()
                } else {
                    fs::remove_file(&path).is_ok()
                };
            if removed {
                stale.push((path, size));
            }
        }
        stale
    }

    /// A fresh name under the store's temp directory.
    pub(super) fn temp_name(&self) -> PathBuf {
        self.tmp_dir()
            .join(uuid::Uuid::new_v4().simple().to_string())
    }

    pub(super) fn new_temp(
        &self,
        op: &'static str,
        key: &str,
    ) -> Result<(TempPath, File), StoreError> {
        let path = self.temp_name();
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| StoreError::io(op, key, e))?;
        Ok((
            TempPath {
                path,
                is_dir: false,
                keep: false,
            },
            file,
        ))
    }

    /// Writes a small file through a temporary and a rename; with `durable`, fsyncs the file
    /// and the destination directory.
    pub(super) fn write_small(
        &self,
        op: &'static str,
        key: &str,
        dest: &Path,
        bytes: &[u8],
        durable: bool,
    ) -> Result<(), StoreError> {
        let io = |e| StoreError::io(op, key, e);
        let (tmp, mut file) = self.new_temp(op, key)?;
        file.write_all(bytes).map_err(io)?;
        if durable {
            file.sync_all().map_err(io)?;
        }
        drop(file);
        fs::rename(&tmp.path, dest).map_err(io)?;
        tmp.keep();
        if durable {
            sync_parent(dest).map_err(io)?;
        }
        Ok(())
    }

    pub(super) fn read_sidecar(&self, key: &str) -> Option<Sidecar> {
        read_json::<Sidecar>(&self.sidecar_path(key)).filter(|s| s.key == key)
    }

    pub(super) fn write_sidecar(
        &self,
        op: &'static str,
        key: &str,
        records: Vec<MetaRecord>,
        durable: bool,
    ) -> Result<(), StoreError> {
        let path = self.sidecar_path(key);
        if let Some(dir) = path.parent() {
            create_dir_durable(dir).map_err(|e| StoreError::io(op, key, e))?;
        }
        let bytes = to_json(
            op,
            key,
            &Sidecar {
                key: key.to_string(),
                records,
            },
        )?;
        self.write_small(op, key, &path, &bytes, durable)
    }

    /// Opens an object's data file; `None` if there is no object (missing, a directory, or not
    /// a regular file).
    pub(super) fn open_object(
        &self,
        op: &'static str,
        key: &str,
    ) -> Result<Option<(File, fs::Metadata)>, StoreError> {
        let path = self.data_path(key);
        let io = |e| StoreError::io(op, key, e);
        // Look before opening, so a FIFO placed in the tree cannot block the open.
        match fs::metadata(&path) {
            Ok(md) if md.is_file() => {}
            Ok(_) => return Ok(None),
            Err(e) if is_missing(&e) => return Ok(None),
            Err(e) => return Err(io(e)),
        }
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if is_missing(&e) => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let md = file.metadata().map_err(io)?;
        Ok(md.is_file().then_some((file, md)))
    }

    /// The metadata record describing the open data file: from the sidecar when it matches the
    /// file, else the file's MD5 with empty metadata (cached in the sidecar when `cache`; never
    /// pass `cache` while holding the lock).
    pub(super) fn record_for(
        &self,
        op: &'static str,
        key: &str,
        file: &File,
        md: &fs::Metadata,
        cache: bool,
    ) -> Result<MetaRecord, StoreError> {
        let id = file_id(md);
        if let Some(record) = self
            .read_sidecar(key)
            .and_then(|s| s.records.into_iter().find(|r| r.file == id))
        {
            return Ok(record);
        }
        let etag = md5_file(file).map_err(|e| StoreError::io(op, key, e))?;
        let record = MetaRecord {
            file: id,
            etag,
            headers: ContentHeaders::default(),
            metadata: BTreeMap::new(),
        };
        if cache {
            self.cache_record(key, &record);
        }
        Ok(record)
    }

    /// Best effort: remembers a computed ETag for a file that had no valid sidecar.
    pub(super) fn cache_record(&self, key: &str, record: &MetaRecord) {
        const OP: &str = "cache ETag";
        let result = (|| -> Result<(), StoreError> {
            let _lock = self.lock(OP, key)?;
            let md = fs::metadata(self.data_path(key)).map_err(|e| StoreError::io(OP, key, e))?;
            if file_id(&md) != record.file {
                return Ok(()); // replaced meanwhile
            }
            if self
                .read_sidecar(key)
                .is_some_and(|s| s.records.iter().any(|r| r.file == record.file))
            {
                return Ok(());
            }
            // The cache need not be durable: a lost or torn sidecar only means recomputing.
            self.write_sidecar(OP, key, vec![record.clone()], false)
        })();
        if let Err(e) = result {
            tracing::debug!("local store: not caching the ETag: {e}");
        }
    }

    pub(super) fn meta_of(key: &str, md: &fs::Metadata, record: MetaRecord) -> ObjectMeta {
        ObjectMeta {
            key: key.to_string(),
            size: md.len(),
            etag: record.etag,
            last_modified: md.modified().ok(),
            headers: record.headers,
            metadata: record.metadata,
        }
    }

    /// What the key holds now (call under the lock). With `hash`, an object without a valid
    /// sidecar gets its MD5 computed.
    pub(super) fn current(
        &self,
        op: &'static str,
        key: &str,
        hash: bool,
    ) -> Result<Current, StoreError> {
        let Some((file, md)) = self.open_object(op, key)? else {
            return Ok(Current::Absent);
        };
        let id = file_id(&md);
        if let Some(record) = self
            .read_sidecar(key)
            .and_then(|s| s.records.into_iter().find(|r| r.file == id))
        {
            return Ok(Current::Present(Some(Box::new(record))));
        }
        if hash {
            return self
                .record_for(op, key, &file, &md, false)
                .map(|r| Current::Present(Some(Box::new(r))));
        }
        Ok(Current::Present(None))
    }

    /// Creates the directories that hold a key's file (durably); `Ok(true)` if any was created.
    pub(super) fn make_parent_dirs(&self, op: &'static str, key: &str) -> Result<bool, StoreError> {
        let segs = parent_segments(key);
        let mut dir = self.root.clone();
        let mut created = false;
        for (i, seg) in segs.iter().enumerate() {
            dir.push(seg);
            match fs::create_dir(&dir) {
                Ok(()) => {
                    created = true;
                    sync_parent(&dir).map_err(|e| StoreError::io(op, key, e))?;
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if !dir.is_dir() {
                        let holder = segs.get(..=i).unwrap_or_default().join("/");
                        return Err(file_in_the_way(op, key, &holder));
                    }
                }
                Err(e) => return Err(StoreError::io(op, key, e)),
            }
        }
        Ok(created)
    }

    /// Fails, without changing anything, when the object `key` could not be placed now: a file
    /// stands where one of its folders would go, or it is a folder of other keys. Checked when
    /// an upload starts, so that a write that can never complete fails before its bytes move
    /// (the placing checks again: keys can change in between).
    pub(super) fn check_key_fits(&self, op: &'static str, key: &str) -> Result<(), StoreError> {
        let segs = parent_segments(key);
        let mut dir = self.root.clone();
        for (i, seg) in segs.iter().enumerate() {
            dir.push(seg);
            match fs::symlink_metadata(&dir) {
                Ok(md) if !md.is_dir() => {
                    let holder = segs.get(..=i).unwrap_or_default().join("/");
                    return Err(file_in_the_way(op, key, &holder));
                }
                Ok(_) => {}
                // Nothing further down exists either.
                Err(_) => return Ok(()),
            }
        }
        if !key.ends_with('/')
            && fs::symlink_metadata(self.data_path(key)).is_ok_and(|md| md.is_dir())
        {
            return Err(directory_in_the_way(op, key));
        }
        Ok(())
    }

    /// Removes the directories holding a key's file that are now empty, deepest first, never
    /// the root (S3 has no empty directories).
    pub(super) fn prune_empty_dirs(&self, key: &str) {
        let segs = parent_segments(key);
        for n in (1..=segs.len()).rev() {
            let dir = self.root.join(segs.get(..n).unwrap_or_default().join("/"));
            if fs::remove_dir(&dir).is_err() {
                break;
            }
            let _ = sync_parent(&dir);
        }
    }

    /// Puts a fully written and fsynced temporary file in place as `key` (call under the lock):
    /// checks the condition, creates parent directories, writes the sidecar, renames.
    ///
    /// The sidecar is fsynced unless `recomputable`: a record that holds only the MD5 of the
    /// file as its ETag, no content type and no metadata, says nothing that a missing sidecar
    /// would not give back (the ETag is then computed from the file, see `record_for`). A crash
    /// can only lose it or leave an older one, which matches no new file. A put of a small
    /// object (every `persist()`'s tail) then costs two fsyncs instead of four.
    pub(super) fn place(
        &self,
        op: &'static str,
        key: &str,
        tmp: TempPath,
        record: MetaRecord,
        condition: &PutCondition,
        recomputable: bool,
    ) -> Result<(), StoreError> {
        let current = self.current(op, key, matches!(condition, PutCondition::IfMatch(_)))?;
        check_condition(op, key, &current, condition)?;
        let target = self.data_path(key);
        let created = self.make_parent_dirs(op, key)?;
        let result = (|| {
            if fs::symlink_metadata(&target).is_ok_and(|md| md.is_dir()) {
                return Err(directory_in_the_way(op, key));
            }
            let mut records = vec![record];
            if let Current::Present(Some(old)) = current {
                records.push(*old); // still describes the file on disk until the rename
            }
            self.write_sidecar(op, key, records, !recomputable)?;
            fs::rename(&tmp.path, &target).map_err(|e| StoreError::io(op, key, e))?;
            tmp.keep();
            sync_parent(&target).map_err(|e| StoreError::io(op, key, e))
        })();
        if result.is_err() && created {
            self.prune_empty_dirs(key);
        }
        result
    }

    // --- objects ---

    pub(super) fn get(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<GetResult, StoreError> {
        const OP: &str = "get";
        check_key(OP, key)?;
        let Some((file, md)) = self.open_object(OP, key)? else {
            return Err(StoreError::new(StoreErrorKind::NotFound, OP, key, ""));
        };
        let record = self.record_for(OP, key, &file, &md, true)?;
        let meta = Self::meta_of(key, &md, record);
        let range = rules::resolve_range(OP, key, range, meta.size)?;
        let len = range.end.saturating_sub(range.start);
        let want = usize::try_from(len).map_err(|_| {
            StoreError::new(
                StoreErrorKind::InvalidRange,
                OP,
                key,
                "range too large for memory",
            )
        })?;
        let mut body = Vec::new();
        body.try_reserve_exact(want).map_err(|_| {
            StoreError::new(
                StoreErrorKind::Other,
                OP,
                key,
                format!("cannot allocate {want} bytes for the range"),
            )
        })?;
        let io = |e| StoreError::io(OP, key, e);
        let mut reader = &file;
        reader.seek(SeekFrom::Start(range.start)).map_err(io)?;
        reader.take(len).read_to_end(&mut body).map_err(io)?;
        if body.len() != want {
            return Err(StoreError::new(
                StoreErrorKind::Other,
                OP,
                key,
                "the file shrank while it was read (edited in place?)",
            ));
        }
        Ok(GetResult {
            meta,
            range,
            body: Bytes::from(body),
        })
    }

    pub(super) fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        const OP: &str = "head";
        check_key(OP, key)?;
        let Some((file, md)) = self.open_object(OP, key)? else {
            return Err(StoreError::new(StoreErrorKind::NotFound, OP, key, ""));
        };
        let record = self.record_for(OP, key, &file, &md, true)?;
        Ok(Self::meta_of(key, &md, record))
    }

    pub(super) fn put(
        &self,
        key: &str,
        body: &[u8],
        opts: PutOptions,
    ) -> Result<PutResult, StoreError> {
        const OP: &str = "put";
        check_key(OP, key)?;
        let (tmp, mut file) = self.new_temp(OP, key)?;
        let etag = write_synced_md5(&mut file, body).map_err(|e| StoreError::io(OP, key, e))?;
        self.place_put(key, tmp, file, etag, opts)
    }

    /// The temporary file a streamed put writes as its body arrives (see
    /// [`finish_put`](Self::finish_put)); dropped unfinished, it is removed.
    pub(super) fn begin_put(&self, key: &str) -> Result<(TempPath, File), StoreError> {
        check_key("put", key)?;
        self.new_temp("put", key)
    }

    /// Ends a streamed put: the written file is synced and placed at `key` under `opts`'s
    /// condition, with `etag` (the MD5 of what was written).
    pub(super) fn finish_put(
        &self,
        key: &str,
        tmp: TempPath,
        file: File,
        etag: String,
        opts: PutOptions,
    ) -> Result<PutResult, StoreError> {
        file.sync_all().map_err(|e| StoreError::io("put", key, e))?;
        self.place_put(key, tmp, file, etag, opts)
    }

    /// Puts a written and synced temporary file in place at `key`, under the put's condition.
    fn place_put(
        &self,
        key: &str,
        tmp: TempPath,
        file: File,
        etag: String,
        opts: PutOptions,
    ) -> Result<PutResult, StoreError> {
        const OP: &str = "put";
        let id = file_id(&file.metadata().map_err(|e| StoreError::io(OP, key, e))?);
        drop(file);
        // The ETag of a put is the MD5 of its body, as `record_for` would compute it.
        let recomputable = opts.headers.is_empty() && opts.metadata.is_empty();
        let record = MetaRecord {
            file: id,
            etag: etag.clone(),
            headers: opts.headers,
            metadata: opts.metadata,
        };
        let _lock = self.lock(OP, key)?;
        self.place(OP, key, tmp, record, &opts.condition, recomputable)?;
        Ok(PutResult { etag })
    }

    pub(super) fn delete(&self, key: &str) -> Result<(), StoreError> {
        const OP: &str = "delete";
        check_key(OP, key)?;
        let target = self.data_path(key);
        let io = |e| StoreError::io(OP, key, e);
        let _lock = self.lock(OP, key)?;
        let removed = match fs::symlink_metadata(&target) {
            Ok(md) if md.is_dir() => false, // keys under `key/`, not an object
            Ok(_) => match fs::remove_file(&target) {
                Ok(()) => true,
                Err(e) if is_missing(&e) => false,
                Err(e) => return Err(io(e)),
            },
            Err(e) if is_missing(&e) => false,
            Err(e) => return Err(io(e)),
        };
        if removed {
            sync_parent(&target).map_err(io)?;
        }
        match fs::remove_file(self.sidecar_path(key)) {
            Ok(()) => {}
            Err(e) if is_missing(&e) => {}
            // The object is gone; a stale sidecar matches no file, so this is not an error.
            Err(e) => tracing::warn!("local store: cannot remove the sidecar of '{key}': {e}"),
        }
        if removed {
            self.prune_empty_dirs(key);
        }
        Ok(())
    }

    pub(super) fn list(&self, req: &ListRequest) -> Result<ListPage, StoreError> {
        const OP: &str = "list";
        let Some(start) = start_dir(&req.prefix) else {
            return Ok(ListPage::default()); // no valid key can start with this prefix
        };
        let mut walker = Walker::new(&self.root, req);
        walker.enter(start, false);
        let mut page = rules::list_page(&mut walker, req);
        if let Some((dir, e)) = walker.error {
            return Err(StoreError::io(OP, dir, e));
        }
        let mut objects = Vec::with_capacity(page.objects.len());
        for entry in page.objects {
            // Skip objects removed since the walk saw them.
            if let Some((file, md)) = self.open_object(OP, &entry.key)? {
                let record = self.record_for(OP, &entry.key, &file, &md, true)?;
                objects.push(ObjectSummary {
                    key: entry.key,
                    size: md.len(),
                    etag: record.etag,
                    last_modified: md.modified().ok(),
                });
            }
        }
        page.objects = objects;
        Ok(page)
    }
}

/// The bytes of the files under `dir` (a leftover upload folder in `tmp/`).
fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(md) if md.is_dir() => dir_size(&e.path()),
            Ok(md) => md.len(),
            Err(_) => 0,
        })
        .sum()
}

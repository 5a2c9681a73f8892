//! The blocking implementation of the multipart operations: uploads are directories of part
//! files with a manifest; completing concatenates the parts into a temporary and renames it.

use super::*;

impl Inner {
    pub(super) fn load_upload(
        &self,
        op: &'static str,
        key: &str,
        upload_id: &str,
    ) -> Result<Manifest, StoreError> {
        check_upload_id(op, key, upload_id)?;
        let path = self.upload_dir(upload_id).join(MANIFEST);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if is_missing(&e) => {
                return Err(no_such_upload(op, key, upload_id, "not found"));
            }
            Err(e) => return Err(StoreError::io(op, key, e)),
        };
        let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
            StoreError::new(
                StoreErrorKind::Other,
                op,
                key,
                format!("the manifest of upload {upload_id} is corrupt: {e}"),
            )
        })?;
        if manifest.key != key {
            return Err(no_such_upload(
                op,
                key,
                upload_id,
                "the upload belongs to another key",
            ));
        }
        Ok(manifest)
    }

    pub(super) fn create_multipart(
        &self,
        key: &str,
        opts: PutOptions,
    ) -> Result<String, StoreError> {
        const OP: &str = "create multipart upload";
        check_key(OP, key)?;
        let io = |e| StoreError::io(OP, key, e);
        let upload_id = uuid::Uuid::new_v4().simple().to_string();
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let manifest = Manifest {
            key: key.to_string(),
            content_type: opts.content_type,
            metadata: opts.metadata,
            initiated_secs: since.as_secs(),
            initiated_nanos: since.subsec_nanos(),
        };
        let bytes = to_json(OP, key, &manifest)?;
        // Build the upload's directory aside, then rename it in whole.
        let staging = TempPath {
            path: self.tmp_dir().join(format!("upload-{upload_id}")),
            is_dir: true,
            keep: false,
        };
        fs::create_dir(&staging.path).map_err(io)?;
        let mut file = File::create(staging.path.join(MANIFEST)).map_err(io)?;
        file.write_all(&bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
        drop(file);
        sync_dir(&staging.path).map_err(io)?;
        fs::rename(&staging.path, self.upload_dir(&upload_id)).map_err(io)?;
        staging.keep();
        sync_dir(&self.uploads_dir()).map_err(io)?;
        Ok(upload_id)
    }

    pub(super) fn part_path(&self, upload_id: &str, number: u32) -> PathBuf {
        self.upload_dir(upload_id).join(format!("part-{number:05}"))
    }

    pub(super) fn part_cache_path(&self, upload_id: &str, number: u32) -> PathBuf {
        self.upload_dir(upload_id)
            .join(format!("part-{number:05}.etag"))
    }

    /// Moves a written and fsynced temporary file into an upload as part `number`.
    pub(super) fn install_part(
        &self,
        op: &'static str,
        key: &str,
        upload_id: &str,
        number: u32,
        tmp: TempPath,
        cache: PartCache,
    ) -> Result<(), StoreError> {
        let dest = self.part_path(upload_id, number);
        let gone = |e: io::Error| {
            if is_missing(&e) {
                no_such_upload(op, key, upload_id, "aborted or completed meanwhile")
            } else {
                StoreError::io(op, key, e)
            }
        };
        fs::rename(&tmp.path, &dest).map_err(gone)?;
        tmp.keep();
        sync_dir(&self.upload_dir(upload_id)).map_err(gone)?;
        // The ETag cache is checked against the part file, so it need not be durable.
        if let Ok(bytes) = serde_json::to_vec(&cache) {
            let _ = self.write_small(
                op,
                key,
                &self.part_cache_path(upload_id, number),
                &bytes,
                false,
            );
        }
        Ok(())
    }

    /// The ETag and identity of an uploaded part; `None` if it was not uploaded.
    pub(super) fn part_etag(
        &self,
        op: &'static str,
        key: &str,
        upload_id: &str,
        number: u32,
    ) -> Result<Option<(String, FileId)>, StoreError> {
        let io = |e| StoreError::io(op, key, e);
        let file = match File::open(self.part_path(upload_id, number)) {
            Ok(file) => file,
            Err(e) if is_missing(&e) => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let id = file_id(&file.metadata().map_err(io)?);
        let cache_path = self.part_cache_path(upload_id, number);
        if let Some(cache) = read_json::<PartCache>(&cache_path).filter(|c| c.file == id) {
            return Ok(Some((cache.etag, id)));
        }
        let etag = md5_file(&file).map_err(io)?;
        if let Ok(bytes) = serde_json::to_vec(&PartCache {
            file: id,
            etag: etag.clone(),
        }) {
            let _ = self.write_small(op, key, &cache_path, &bytes, false);
        }
        Ok(Some((etag, id)))
    }

    /// Reads back a byte range of an uploaded part, checked against the ETag its upload
    /// returned. The file is opened once, so the bytes read are those of the part checked.
    pub(super) fn read_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        etag: &str,
        range: Range<u64>,
    ) -> Result<Bytes, StoreError> {
        const OP: &str = "read part";
        use std::os::unix::fs::FileExt;
        check_key(OP, key)?;
        rules::validate_part_number(OP, key, number)?;
        self.load_upload(OP, key, upload_id)?;
        let io = |e| StoreError::io(OP, key, e);
        let file = match File::open(self.part_path(upload_id, number)) {
            Ok(file) => file,
            Err(e) if is_missing(&e) => {
                return Err(StoreError::new(
                    StoreErrorKind::InvalidPart,
                    OP,
                    key,
                    format!("upload {upload_id} has no part {number}"),
                ));
            }
            Err(e) => return Err(io(e)),
        };
        let md = file.metadata().map_err(io)?;
        let id = file_id(&md);
        let actual = match read_json::<PartCache>(&self.part_cache_path(upload_id, number))
            .filter(|c| c.file == id)
        {
            Some(cache) => cache.etag,
            None => md5_file(&file).map_err(io)?,
        };
        if actual.trim_matches('"') != etag.trim_matches('"') {
            return Err(StoreError::new(
                StoreErrorKind::PreconditionFailed,
                OP,
                key,
                format!(
                    "part {number} of upload {upload_id} was replaced (ETag {actual}, expected {etag})"
                ),
            ));
        }
        let end = range.end.min(md.len());
        if range.start > end {
            return Err(StoreError::new(
                StoreErrorKind::InvalidRange,
                OP,
                key,
                format!(
                    "range {}..{} starts past part {number}'s {} bytes",
                    range.start,
                    range.end,
                    md.len()
                ),
            ));
        }
        let mut buf = vec![0u8; (end - range.start) as usize];
        file.read_exact_at(&mut buf, range.start).map_err(io)?;
        Ok(Bytes::from(buf))
    }

    /// The part numbers uploaded so far, ascending.
    pub(super) fn part_numbers(
        &self,
        op: &'static str,
        key: &str,
        upload_id: &str,
    ) -> Result<Vec<u32>, StoreError> {
        let entries = match fs::read_dir(self.upload_dir(upload_id)) {
            Ok(entries) => entries,
            Err(e) if is_missing(&e) => {
                return Err(no_such_upload(op, key, upload_id, "not found"));
            }
            Err(e) => return Err(StoreError::io(op, key, e)),
        };
        let mut numbers = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io(op, key, e))?;
            let name = entry.file_name();
            let Some(digits) = name.to_str().and_then(|n| n.strip_prefix("part-")) else {
                continue;
            };
            if digits.len() == 5
                && digits.bytes().all(|b| b.is_ascii_digit())
                && let Ok(n) = digits.parse::<u32>()
                && (1..=limits::MAX_PART_NUMBER).contains(&n)
            {
                numbers.push(n);
            }
        }
        numbers.sort_unstable();
        Ok(numbers)
    }

    pub(super) fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        body: &[u8],
    ) -> Result<String, StoreError> {
        const OP: &str = "upload part";
        check_key(OP, key)?;
        rules::validate_part_number(OP, key, number)?;
        rules::validate_part_size(OP, key, body.len() as u64)?;
        self.load_upload(OP, key, upload_id)?;
        let io = |e| StoreError::io(OP, key, e);
        let (tmp, mut file) = self.new_temp(OP, key)?;
        let etag = write_synced_md5(&mut file, body).map_err(io)?;
        let id = file_id(&file.metadata().map_err(io)?);
        drop(file);
        self.install_part(
            OP,
            key,
            upload_id,
            number,
            tmp,
            PartCache {
                file: id,
                etag: etag.clone(),
            },
        )?;
        Ok(etag)
    }

    pub(super) fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        source_key: &str,
        range: Range<u64>,
        source_if_match: Option<&str>,
    ) -> Result<String, StoreError> {
        const OP: &str = "upload part copy";
        check_key(OP, key)?;
        check_key(OP, source_key)?;
        rules::validate_part_number(OP, key, number)?;
        rules::validate_part_size(OP, key, range.end.saturating_sub(range.start))?;
        self.load_upload(OP, key, upload_id)?;
        let Some((source, md)) = self.open_object(OP, source_key)? else {
            return Err(StoreError::new(
                StoreErrorKind::NotFound,
                OP,
                source_key,
                "the copy source does not exist",
            ));
        };
        let record = self.record_for(OP, source_key, &source, &md, true)?;
        if let Some(etag) = source_if_match
            && record.etag != etag.trim_matches('"')
        {
            return Err(StoreError::new(
                StoreErrorKind::PreconditionFailed,
                OP,
                source_key,
                format!("copy source ETag is {}, not {etag}", record.etag),
            ));
        }
        let size = md.len();
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
        let len = range.end - range.start;
        let io = |e| StoreError::io(OP, key, e);
        let (tmp, mut out) = self.new_temp(OP, key)?;
        let mut reader = &source;
        reader.seek(SeekFrom::Start(range.start)).map_err(io)?;
        let mut reader = reader.take(len);
        let mut hasher = Md5::new();
        let mut buf = vec![0u8; usize::try_from(len).unwrap_or(COPY_BUF).min(COPY_BUF)];
        let mut copied = 0u64;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(StoreError::io(OP, source_key, e)),
            };
            let chunk = buf.get(..n).unwrap_or_default();
            hasher.update(chunk);
            out.write_all(chunk).map_err(io)?;
            copied += n as u64;
        }
        if copied != len {
            return Err(StoreError::new(
                StoreErrorKind::Other,
                OP,
                source_key,
                "the copy source shrank while it was read (edited in place?)",
            ));
        }
        out.sync_all().map_err(io)?;
        let id = file_id(&out.metadata().map_err(io)?);
        drop(out);
        let etag = hex::encode(hasher.finalize());
        self.install_part(
            OP,
            key,
            upload_id,
            number,
            tmp,
            PartCache {
                file: id,
                etag: etag.clone(),
            },
        )?;
        Ok(etag)
    }

    pub(super) fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
        condition: &PutCondition,
        min_part_size: u64,
    ) -> Result<PutResult, StoreError> {
        const OP: &str = "complete multipart upload";
        check_key(OP, key)?;
        let manifest = self.load_upload(OP, key, upload_id)?;
        // Gather the requested parts that exist (the rules check presence, ETags and sizes).
        let mut uploaded: BTreeMap<u32, (String, u64)> = BTreeMap::new();
        let mut ids: BTreeMap<u32, FileId> = BTreeMap::new();
        for part in parts {
            if uploaded.contains_key(&part.number)
                || !(1..=limits::MAX_PART_NUMBER).contains(&part.number)
            {
                continue;
            }
            if let Some((etag, id)) = self.part_etag(OP, key, upload_id, part.number)? {
                uploaded.insert(part.number, (etag, id.size));
                ids.insert(part.number, id);
            }
        }
        if uploaded.len() < parts.len() {
            // A missing part may mean the whole upload went away meanwhile.
            self.load_upload(OP, key, upload_id)?;
        }
        rules::validate_completion(key, min_part_size, parts, &uploaded)?;
        let etags: Vec<&str> = parts
            .iter()
            .filter_map(|p| uploaded.get(&p.number).map(|(etag, _)| etag.as_str()))
            .collect();
        let etag = rules::multipart_etag(etags).ok_or_else(|| {
            StoreError::new(
                StoreErrorKind::Other,
                OP,
                key,
                "a part's ETag is not an MD5",
            )
        })?;

        let (tmp, id, total) = match parts {
            // One part: the object is that part's file, linked under a temporary name. Its
            // bytes have been durable since the part was acknowledged, so completing costs no
            // copy and no data fsync, whatever its size: the common case of small files (a
            // sink's buckets, small uploads).
            [only] => match self.link_part(OP, key, upload_id, only.number, &ids)? {
                Some(linked) => linked,
                None => self.concatenate(OP, key, upload_id, parts, &ids)?,
            },
            _ => self.concatenate(OP, key, upload_id, parts, &ids)?,
        };
        let expected: u64 = ids.values().map(|id| id.size).sum();
        if total != expected || id.size != expected {
            return Err(StoreError::new(
                StoreErrorKind::Conflict,
                OP,
                key,
                "the parts changed size during completion; retry",
            ));
        }
        let record = MetaRecord {
            file: id,
            etag: etag.clone(),
            content_type: manifest.content_type,
            metadata: manifest.metadata,
        };

        let lock = self.lock(OP, key)?;
        // Completed or aborted by someone else since we looked?
        self.load_upload(OP, key, upload_id)?;
        self.place(OP, key, tmp, record, condition)?;
        let trash = self.retire_upload(OP, key, upload_id);
        drop(lock);
        match trash {
            Ok(trash) => {
                let _ = fs::remove_dir_all(trash);
            }
            // The object is in place; the upload lingers until aborted.
            Err(e) => tracing::warn!("local store: completed, but cannot retire the upload: {e}"),
        }
        Ok(PutResult { etag })
    }

    /// Copies `parts` into one new temporary file (copy_file_range where available) and
    /// fsyncs it: the file, its identity and its length.
    fn concatenate(
        &self,
        op: &'static str,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
        ids: &BTreeMap<u32, FileId>,
    ) -> Result<(TempPath, FileId, u64), StoreError> {
        let io = |e| StoreError::io(op, key, e);
        let (tmp, mut out) = self.new_temp(op, key)?;
        let mut total = 0u64;
        for part in parts {
            let mut file = match File::open(self.part_path(upload_id, part.number)) {
                Ok(file) => file,
                Err(e) if is_missing(&e) => return Err(part_changed(op, key, part.number)),
                Err(e) => return Err(io(e)),
            };
            let id = file_id(&file.metadata().map_err(io)?);
            if ids.get(&part.number) != Some(&id) {
                return Err(part_changed(op, key, part.number));
            }
            total += io::copy(&mut file, &mut out).map_err(io)?;
        }
        out.sync_all().map_err(io)?;
        let id = file_id(&out.metadata().map_err(io)?);
        Ok((tmp, id, total))
    }

    /// Links part `number`'s file under a new temporary name, checked to be the version in
    /// `ids`: the file, its identity and its length. `None` where the file system cannot link
    /// (the caller copies instead). The part's name stays until the upload is retired; parts are
    /// replaced by rename, never written in place, so the object's bytes cannot change.
    fn link_part(
        &self,
        op: &'static str,
        key: &str,
        upload_id: &str,
        number: u32,
        ids: &BTreeMap<u32, FileId>,
    ) -> Result<Option<(TempPath, FileId, u64)>, StoreError> {
        let tmp = TempPath {
            path: self.temp_name(),
            is_dir: false,
            keep: false,
        };
        if let Err(e) = fs::hard_link(self.part_path(upload_id, number), &tmp.path) {
            if is_missing(&e) {
                return Err(part_changed(op, key, number));
            }
            tracing::debug!(error = %e, "local store: cannot link a part; copying it");
            return Ok(None);
        }
        let md = fs::metadata(&tmp.path).map_err(|e| StoreError::io(op, key, e))?;
        let id = file_id(&md);
        if ids.get(&number) != Some(&id) {
            return Err(part_changed(op, key, number));
        }
        Ok(Some((tmp, id, md.len())))
    }

    /// Moves an upload's directory to the trash (call under the lock), so the upload id is gone
    /// at once; returns where it went, for removal after the lock is released.
    pub(super) fn retire_upload(
        &self,
        op: &'static str,
        key: &str,
        upload_id: &str,
    ) -> Result<PathBuf, StoreError> {
        let trash = self
            .sys
            .join("trash")
            .join(format!("{upload_id}-{}", uuid::Uuid::new_v4().simple()));
        match fs::rename(self.upload_dir(upload_id), &trash) {
            Ok(()) => {}
            Err(e) if is_missing(&e) => {
                return Err(no_such_upload(op, key, upload_id, "not found"));
            }
            Err(e) => return Err(StoreError::io(op, key, e)),
        }
        sync_dir(&self.uploads_dir()).map_err(|e| StoreError::io(op, key, e))?;
        Ok(trash)
    }

    pub(super) fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        const OP: &str = "abort multipart upload";
        check_key(OP, key)?;
        let lock = self.lock(OP, key)?;
        self.load_upload(OP, key, upload_id)?;
        let trash = self.retire_upload(OP, key, upload_id)?;
        drop(lock);
        let _ = fs::remove_dir_all(trash);
        Ok(())
    }

    pub(super) fn list_parts(
        &self,
        key: &str,
        upload_id: &str,
        marker: Option<u32>,
    ) -> Result<PartsPage, StoreError> {
        const OP: &str = "list parts";
        check_key(OP, key)?;
        self.load_upload(OP, key, upload_id)?;
        let after = marker.unwrap_or(0);
        let mut numbers = self.part_numbers(OP, key, upload_id)?;
        numbers.retain(|&n| n > after);
        let next_marker = if numbers.len() > rules::MAX_LIST_KEYS {
            numbers.truncate(rules::MAX_LIST_KEYS);
            numbers.last().copied()
        } else {
            None
        };
        let mut parts = Vec::with_capacity(numbers.len());
        for number in numbers {
            if let Some((etag, id)) = self.part_etag(OP, key, upload_id, number)? {
                parts.push(PartInfo {
                    number,
                    etag: Some(etag),
                    size: id.size,
                });
            }
        }
        Ok(PartsPage { parts, next_marker })
    }

    pub(super) fn list_multipart_uploads(
        &self,
        prefix: &str,
        marker: Option<UploadsMarker>,
    ) -> Result<UploadsPage, StoreError> {
        const OP: &str = "list multipart uploads";
        let entries =
            fs::read_dir(self.uploads_dir()).map_err(|e| StoreError::io(OP, prefix, e))?;
        let mut uploads = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io(OP, prefix, e))?;
            let Ok(upload_id) = entry.file_name().into_string() else {
                continue;
            };
            if check_upload_id(OP, prefix, &upload_id).is_err() {
                continue;
            }
            // An upload finished meanwhile, or a damaged one, is not listed.
            let Some(manifest) = read_json::<Manifest>(&entry.path().join(MANIFEST)) else {
                continue;
            };
            if manifest.key.starts_with(prefix) {
                uploads.push(UploadInfo {
                    initiated: manifest.initiated(),
                    key: manifest.key,
                    upload_id,
                });
            }
        }
        uploads.sort_by(|a, b| (&a.key, &a.upload_id).cmp(&(&b.key, &b.upload_id)));
        if let Some(m) = marker {
            uploads.retain(|u| (&u.key, &u.upload_id) > (&m.key, &m.upload_id));
        }
        let mut next = None;
        if uploads.len() > rules::MAX_LIST_KEYS {
            uploads.truncate(rules::MAX_LIST_KEYS);
            next = uploads.last().map(|u| UploadsMarker {
                key: u.key.clone(),
                upload_id: u.upload_id.clone(),
            });
        }
        Ok(UploadsPage { uploads, next })
    }
}

fn part_changed(op: &'static str, key: &str, number: u32) -> StoreError {
    StoreError::new(
        StoreErrorKind::Conflict,
        op,
        key,
        format!("part {number} changed during completion; retry"),
    )
}

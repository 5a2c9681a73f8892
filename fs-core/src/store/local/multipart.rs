//! The blocking implementation of the multipart operations: an upload is a directory with a
//! manifest, its parts written into slots of one data file (`slots.rs`) or, where they do not
//! fit one, into files of their own. Completing links the data file when it holds the object
//! whole, and otherwise concatenates the parts into a temporary; either is renamed into place.

use super::*;

/// Where an uploaded part's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PartAt {
    /// Its own file `part-NNNNN`, with this identity.
    File(FileId),
    /// The upload's data file, from this offset.
    Slot(u64),
}

/// An uploaded part: its ETag, size and where its bytes are.
#[derive(Debug, Clone)]
pub(super) struct UploadedPart {
    pub(super) etag: String,
    pub(super) size: u64,
    pub(super) at: PartAt,
}

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
        self.check_key_fits(OP, key)?;
        let io = |e| StoreError::io(OP, key, e);
        let upload_id = uuid::Uuid::new_v4().simple().to_string();
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let manifest = Manifest {
            key: key.to_string(),
            headers: opts.headers,
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

    /// An uploaded part: its own file if it has one (a re-upload or copy wins over the slot
    /// of the same number), else its slot; `None` if it was not uploaded.
    pub(super) fn uploaded_part(
        &self,
        op: &'static str,
        key: &str,
        upload_id: &str,
        number: u32,
    ) -> Result<Option<UploadedPart>, StoreError> {
        if let Some((etag, id)) = self.part_file_etag(op, key, upload_id, number)? {
            return Ok(Some(UploadedPart {
                etag,
                size: id.size,
                at: PartAt::File(id),
            }));
        }
        Ok(self
            .slot_record(upload_id, number)
            .map(|slot| UploadedPart {
                etag: slot.etag,
                size: slot.size,
                at: PartAt::Slot(slot.offset),
            }))
    }

    /// The ETag and identity of part `number`'s own file; `None` if it has none.
    fn part_file_etag(
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
        if let Some(bytes) = self.writable().then(|| {
            serde_json::to_vec(&PartCache {
                file: id,
                etag: etag.clone(),
            })
        }) && let Ok(bytes) = bytes
        {
            let _ = self.write_small(op, key, &cache_path, &bytes, false);
        }
        Ok(Some((etag, id)))
    }

    /// Reads back a byte range of an uploaded part, checked against the ETag its upload
    /// returned. A part file is opened once, so the bytes read are those of the part checked; a
    /// slot's bytes never change once recorded.
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
        let (file, actual, offset, size) = match File::open(self.part_path(upload_id, number)) {
            Ok(file) => {
                let md = file.metadata().map_err(io)?;
                let id = file_id(&md);
                let actual = match read_json::<PartCache>(&self.part_cache_path(upload_id, number))
                    .filter(|c| c.file == id)
                {
                    Some(cache) => cache.etag,
                    None => md5_file(&file).map_err(io)?,
                };
                (file, actual, 0, md.len())
            }
            Err(e) if is_missing(&e) => {
                let Some(slot) = self.slot_record(upload_id, number) else {
                    return Err(StoreError::new(
                        StoreErrorKind::InvalidPart,
                        OP,
                        key,
                        format!("upload {upload_id} has no part {number}"),
                    ));
                };
                let file = File::open(self.slots_path(upload_id)).map_err(|e| {
                    if is_missing(&e) {
                        no_such_upload(OP, key, upload_id, "completed or aborted meanwhile")
                    } else {
                        io(e)
                    }
                })?;
                (file, slot.etag, slot.offset, slot.size)
            }
            Err(e) => return Err(io(e)),
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
        let end = range.end.min(size);
        if range.start > end {
            return Err(StoreError::new(
                StoreErrorKind::InvalidRange,
                OP,
                key,
                format!(
                    "range {}..{} starts past part {number}'s {size} bytes",
                    range.start, range.end
                ),
            ));
        }
        let mut buf = vec![0u8; (end - range.start) as usize];
        file.read_exact_at(&mut buf, offset + range.start)
            .map_err(io)?;
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
            // A part file or a slot claim (`list_parts` skips claims without a record).
            let Some(digits) = name
                .to_str()
                .and_then(|n| n.strip_prefix("part-").or_else(|| n.strip_prefix("slot-")))
            else {
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
        numbers.dedup();
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
        let into_slot =
            |data: &File, offset: u64| write_at_synced_md5(data, offset, body).map_err(io);
        if let Some(etag) =
            self.write_slot(OP, key, upload_id, number, body.len() as u64, into_slot)?
        {
            return Ok(etag);
        }
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
        // Into the part's slot where it has one, so that an append's upload, whose first parts
        // are copies of the old object, can still complete by a link; else into a file.
        let into_slot = |data: &File, offset: u64| {
            use std::os::unix::fs::FileExt;
            let etag = copy_hashed(OP, key, source_key, &source, range.clone(), |chunk, at| {
                data.write_all_at(chunk, offset + at)
            })?;
            data.sync_all().map_err(io)?;
            Ok(etag)
        };
        if let Some(etag) = self.write_slot(OP, key, upload_id, number, len, into_slot)? {
            return Ok(etag);
        }
        let (tmp, mut out) = self.new_temp(OP, key)?;
        let etag = copy_hashed(OP, key, source_key, &source, range, |chunk, _| {
            out.write_all(chunk)
        })?;
        out.sync_all().map_err(io)?;
        let id = file_id(&out.metadata().map_err(io)?);
        drop(out);
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
        let mut found: BTreeMap<u32, UploadedPart> = BTreeMap::new();
        for part in parts {
            if found.contains_key(&part.number)
                || !(1..=limits::MAX_PART_NUMBER).contains(&part.number)
            {
                continue;
            }
            if let Some(uploaded) = self.uploaded_part(OP, key, upload_id, part.number)? {
                found.insert(part.number, uploaded);
            }
        }
        if found.len() < parts.len() {
            // A missing part may mean the whole upload went away meanwhile.
            self.load_upload(OP, key, upload_id)?;
        }
        let uploaded: BTreeMap<u32, (String, u64)> = found
            .iter()
            .map(|(&n, p)| (n, (p.etag.clone(), p.size)))
            .collect();
        rules::validate_completion(key, min_part_size, parts, &uploaded)?;
        // Every requested part is found from here on.
        let chosen: Vec<&UploadedPart> =
            parts.iter().filter_map(|p| found.get(&p.number)).collect();
        let etag =
            rules::multipart_etag(chosen.iter().map(|p| p.etag.as_str())).ok_or_else(|| {
                StoreError::new(
                    StoreErrorKind::Other,
                    OP,
                    key,
                    "a part's ETag is not an MD5",
                )
            })?;

        // The object's file without a copy where possible: the upload's data file when its
        // slots hold exactly these parts, or a one-part upload's own part file. Their bytes
        // have been durable since each part was acknowledged, so neither costs a data fsync,
        // whatever the size.
        let slots: Option<Vec<(u64, u64)>> = chosen
            .iter()
            .map(|p| match p.at {
                PartAt::Slot(offset) => Some((offset, p.size)),
                PartAt::File(_) => None,
            })
            .collect();
        let linked = match (slots, chosen.as_slice()) {
            (Some(slots), _) => self
                .link_slots(OP, key, upload_id, &slots)?
                .map(|(tmp, id, total, lock)| (tmp, id, total, Some(lock))),
            (None, [only]) => match only.at {
                PartAt::File(id) => self
                    .link_part(OP, key, upload_id, parts[0].number, id)?
                    .map(|(tmp, id, total)| (tmp, id, total, None)),
                PartAt::Slot(_) => None,
            },
            (None, _) => None,
        };
        // Held until the upload is retired: no writer may touch the linked data file.
        let (tmp, id, total, _slots_lock) = match linked {
            Some(linked) => linked,
            None => {
                let (tmp, id, total) = self.concatenate(OP, key, upload_id, parts, &found)?;
                (tmp, id, total, None)
            }
        };
        let expected: u64 = chosen.iter().map(|p| p.size).sum();
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
            headers: manifest.headers,
            metadata: manifest.metadata,
        };

        let lock = self.lock(OP, key)?;
        // Completed or aborted by someone else since we looked?
        self.load_upload(OP, key, upload_id)?;
        // A multipart ETag cannot be computed back from the file: its sidecar must be durable.
        self.place(OP, key, tmp, record, condition, false)?;
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

    /// Copies `parts` (each found in `found`) into one new temporary file (copy_file_range
    /// where available) and fsyncs it: the file, its identity and its length.
    fn concatenate(
        &self,
        op: &'static str,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
        found: &BTreeMap<u32, UploadedPart>,
    ) -> Result<(TempPath, FileId, u64), StoreError> {
        let io = |e| StoreError::io(op, key, e);
        let (tmp, mut out) = self.new_temp(op, key)?;
        let mut slots: Option<File> = None;
        let mut total = 0u64;
        for part in parts {
            let Some(uploaded) = found.get(&part.number) else {
                return Err(part_changed(op, key, part.number));
            };
            let copied = match uploaded.at {
                PartAt::File(expected) => {
                    let mut file = match File::open(self.part_path(upload_id, part.number)) {
                        Ok(file) => file,
                        Err(e) if is_missing(&e) => {
                            return Err(part_changed(op, key, part.number));
                        }
                        Err(e) => return Err(io(e)),
                    };
                    if file_id(&file.metadata().map_err(io)?) != expected {
                        return Err(part_changed(op, key, part.number));
                    }
                    io::copy(&mut file, &mut out).map_err(io)?
                }
                PartAt::Slot(offset) => {
                    let data = match &slots {
                        Some(data) => data,
                        None => match File::open(self.slots_path(upload_id)) {
                            Ok(data) => slots.insert(data),
                            Err(e) if is_missing(&e) => {
                                return Err(no_such_upload(
                                    op,
                                    key,
                                    upload_id,
                                    "completed or aborted meanwhile",
                                ));
                            }
                            Err(e) => return Err(io(e)),
                        },
                    };
                    let mut reader = data;
                    reader.seek(SeekFrom::Start(offset)).map_err(io)?;
                    io::copy(&mut reader.take(uploaded.size), &mut out).map_err(io)?
                }
            };
            if copied != uploaded.size {
                return Err(part_changed(op, key, part.number));
            }
            total += copied;
        }
        out.sync_all().map_err(io)?;
        let id = file_id(&out.metadata().map_err(io)?);
        Ok((tmp, id, total))
    }

    /// Links part `number`'s own file under a new temporary name, checked to be the version
    /// `expected`: the file, its identity and its length. `None` where the file system cannot
    /// link (the caller copies instead). The part's name stays until the upload is retired;
    /// part files are replaced by rename, never written in place, so the object's bytes cannot
    /// change.
    fn link_part(
        &self,
        op: &'static str,
        key: &str,
        upload_id: &str,
        number: u32,
        expected: FileId,
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
        if id != expected {
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
            if let Some(part) = self.uploaded_part(OP, key, upload_id, number)? {
                parts.push(PartInfo {
                    number,
                    etag: Some(part.etag),
                    size: part.size,
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
        let entries = match fs::read_dir(self.uploads_dir()) {
            Ok(entries) => entries,
            // A directory opened read-only that was never a store has no uploads.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(UploadsPage::default());
            }
            Err(e) => return Err(StoreError::io(OP, prefix, e)),
        };
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

/// Copies `range` of `source` (the object `source_key`) through `write`, which gets each chunk
/// and its offset within the range, and returns the bytes' MD5 hex.
fn copy_hashed(
    op: &'static str,
    key: &str,
    source_key: &str,
    source: &File,
    range: Range<u64>,
    mut write: impl FnMut(&[u8], u64) -> io::Result<()>,
) -> Result<String, StoreError> {
    let len = range.end - range.start;
    let mut reader = source;
    reader
        .seek(SeekFrom::Start(range.start))
        .map_err(|e| StoreError::io(op, source_key, e))?;
    let mut reader = reader.take(len);
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; usize::try_from(len).unwrap_or(COPY_BUF).min(COPY_BUF)];
    let mut copied = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(StoreError::io(op, source_key, e)),
        };
        let chunk = buf.get(..n).unwrap_or_default();
        hasher.update(chunk);
        write(chunk, copied).map_err(|e| StoreError::io(op, key, e))?;
        copied += n as u64;
    }
    if copied != len {
        return Err(StoreError::new(
            StoreErrorKind::Other,
            op,
            source_key,
            "the copy source shrank while it was read (edited in place?)",
        ));
    }
    Ok(hex::encode(hasher.finalize()))
}

//! Parts written in place into one data file per upload, so that completing an upload costs a
//! link instead of a copy of every byte (and the fsync of that copy).
//!
//! The first part an upload receives fixes its slot size (`slot-size`). A part no larger than
//! that goes into the upload's `data` file at `(number - 1) x slot size`, once: an upload whose
//! parts 1..k each arrived once, all but the last of the slot size, holds its object's bytes in
//! `data` already, in order, and completing links that file under a new name. Copies
//! (UploadPartCopy: an append's first parts) go into slots the same way. Re-uploads of a
//! number and parts larger than a slot keep a file of their own
//! (`part-NNNNN`, see `multipart.rs`), which wins over a slot of the same number; an upload
//! with any of those completes by concatenation as before.
//!
//! The order that keeps an acknowledged part durable and its bytes never shared:
//! 1. claim slot n by creating `slot-NNNNN` exclusively, empty: a claim is taken once, so no
//!    two writers ever write the same bytes of `data`;
//! 2. write the bytes into `data` under a shared file lock, then fsync it;
//! 3. write the part's record (offset, size, ETag) into the claim, fsync it and the directory.
//!
//! A claim without a readable record (a crash between 1 and 3, or a failed write) is no part:
//! that number takes its own file from then on. Completing holds the file lock exclusively from
//! its length check until the upload is retired, and a writer checks after locking that `data`
//! is still the upload's and has no other name (a completion that crashed after placing the
//! object leaves the upload with the object's file as `data`), so no byte of an object's file
//! changes after the link.

use super::*;

/// The upload's data file holding its slots.
const SLOTS_FILE: &str = "data";
/// The slot size, decimal, fixed by the first part the upload received.
const SLOT_SIZE_FILE: &str = "slot-size";
/// Slots end below this offset: parts past it take their own file. Far above what the writer
/// produces (10,000 parts of 8 MiB is 80 GiB), and below the largest file ext4 can hold.
const MAX_SLOTS_LEN: u64 = 1 << 42;
/// A part goes into its slot only if the slot starts at most this many slots past the data
/// file's end. Parts arrive about in order (a writer keeps a few in flight), so this only turns
/// away parts numbered far past the others (a client that skips numbers): a slot there would
/// leave a hole of that size, which file systems without sparse files fill with zeros, and an
/// upload with gaps is concatenated at completion anyway.
const MAX_SLOTS_AHEAD: u64 = 64;

/// The record of a part written into a slot, kept in its claim file.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct SlotRecord {
    pub(super) offset: u64,
    pub(super) size: u64,
    pub(super) etag: String,
}

/// Holds the exclusive lock on an upload's data file; released when dropped (the file closes).
pub(super) struct SlotsLock {
    _file: File,
}

impl Inner {
    pub(super) fn slots_path(&self, upload_id: &str) -> PathBuf {
        self.upload_dir(upload_id).join(SLOTS_FILE)
    }

    pub(super) fn slot_path(&self, upload_id: &str, number: u32) -> PathBuf {
        self.upload_dir(upload_id).join(format!("slot-{number:05}"))
    }

    /// The part recorded in slot `number`, if one was written there completely.
    pub(super) fn slot_record(&self, upload_id: &str, number: u32) -> Option<SlotRecord> {
        read_json(&self.slot_path(upload_id, number))
    }

    /// Writes part `number` (`len` bytes) into its slot and returns its ETag, or `None` when
    /// the part must take a file of its own: it does not fit a slot, or the number was claimed
    /// before. `write` puts the bytes into the data file at the offset it is given, fsyncs the
    /// file and returns their MD5 hex; it runs only when the slot is the part's.
    pub(super) fn write_slot(
        &self,
        op: &'static str,
        key: &str,
        upload_id: &str,
        number: u32,
        len: u64,
        write: impl FnOnce(&File, u64) -> Result<String, StoreError>,
    ) -> Result<Option<String>, StoreError> {
        use std::os::unix::fs::MetadataExt;
        if len == 0 {
            return Ok(None);
        }
        let Some(slot_size) = self.slot_size(op, key, upload_id, len)? else {
            return Ok(None);
        };
        let offset = u64::from(number - 1) * slot_size;
        if len > slot_size || offset + len > MAX_SLOTS_LEN {
            return Ok(None);
        }
        if fs::symlink_metadata(self.part_path(upload_id, number)).is_ok() {
            return Ok(None);
        }
        let written = fs::metadata(self.slots_path(upload_id)).map_or(0, |md| md.len());
        if offset > written + MAX_SLOTS_AHEAD * slot_size {
            return Ok(None);
        }
        let gone = |e: io::Error| {
            if is_missing(&e) {
                no_such_upload(op, key, upload_id, "aborted or completed meanwhile")
            } else {
                StoreError::io(op, key, e)
            }
        };
        // 1. The claim.
        let mut claim = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(self.slot_path(upload_id, number))
        {
            Ok(claim) => claim,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(None),
            Err(e) => return Err(gone(e)),
        };
        // 2. The bytes, under the shared lock, into the upload's own data file.
        let path = self.slots_path(upload_id);
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(gone)?;
        data.lock_shared().map_err(|e| StoreError::io(op, key, e))?;
        let ours = data.metadata().map_err(|e| StoreError::io(op, key, e))?;
        match fs::metadata(&path) {
            Ok(named) if file_id(&named).ino == file_id(&ours).ino => {}
            // Completed (the file is an object now) or aborted since it was opened.
            _ => return Err(no_such_upload(op, key, upload_id, "completed meanwhile")),
        }
        // A second name means a completion linked the file: it is an object's now (a crash
        // between placing the object and retiring the upload leaves both names). Its bytes
        // must never change, so the part takes a file of its own.
        if ours.nlink() != 1 {
            return Ok(None);
        }
        let etag = write(&data, offset)?;
        drop(data);
        // 3. The record.
        let record = to_json(
            op,
            key,
            &SlotRecord {
                offset,
                size: len,
                etag: etag.clone(),
            },
        )?;
        claim.write_all(&record).map_err(gone)?;
        claim.sync_all().map_err(gone)?;
        sync_dir(&self.upload_dir(upload_id)).map_err(gone)?;
        Ok(Some(etag))
    }

    /// The upload's slot size, fixed to `proposed` if this is its first part; `None` if the
    /// recorded size cannot be read (the upload then uses part files only).
    fn slot_size(
        &self,
        op: &'static str,
        key: &str,
        upload_id: &str,
        proposed: u64,
    ) -> Result<Option<u64>, StoreError> {
        let path = self.upload_dir(upload_id).join(SLOT_SIZE_FILE);
        // Every part but the upload's first finds the size here: one read, no extra stat.
        let read = |path: &Path| match fs::read_to_string(path) {
            Ok(text) => Ok(Some(text.trim().parse().ok().filter(|&s: &u64| s > 0))),
            Err(e) if is_missing(&e) => Ok(None),
            Err(e) => Err(StoreError::io(op, key, e)),
        };
        if let Some(size) = read(&path)? {
            return Ok(size);
        }
        // Written whole aside and linked in, so that it is never seen half-written, and two
        // first parts agree on one size: the second link fails and reads the first's.
        let io = |e| StoreError::io(op, key, e);
        let (tmp, mut file) = self.new_temp(op, key)?;
        file.write_all(proposed.to_string().as_bytes())
            .map_err(io)?;
        file.sync_all().map_err(io)?;
        drop(file);
        match fs::hard_link(&tmp.path, &path) {
            // Durable before any slot relies on it: a size lost in a crash could let a later
            // part pick another and write over an acknowledged one.
            Ok(()) => {
                sync_dir(&self.upload_dir(upload_id)).map_err(io)?;
                Ok(Some(proposed))
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                read(&path)?.ok_or_else(|| no_such_upload(op, key, upload_id, "not found"))
            }
            Err(e) if is_missing(&e) => Err(no_such_upload(op, key, upload_id, "not found")),
            Err(e) => Err(io(e)),
        }
    }

    /// Links the upload's data file under a temporary name when it holds exactly `parts` in
    /// order (each in its slot, back to back, nothing after the last); `None` otherwise (the
    /// caller concatenates). The returned lock keeps writers out of the file: hold it until the
    /// object is placed and the upload retired.
    pub(super) fn link_slots(
        &self,
        op: &'static str,
        key: &str,
        upload_id: &str,
        parts: &[(u64, u64)],
    ) -> Result<Option<(TempPath, FileId, u64, SlotsLock)>, StoreError> {
        let mut total = 0u64;
        for &(offset, size) in parts {
            if offset != total {
                return Ok(None);
            }
            total += size;
        }
        let io = |e| StoreError::io(op, key, e);
        let path = self.slots_path(upload_id);
        let data = match File::open(&path) {
            Ok(data) => data,
            Err(e) if is_missing(&e) => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        data.lock().map_err(io)?;
        let id = file_id(&data.metadata().map_err(io)?);
        if id.size != total {
            // Bytes past the last part (a slot not in this completion): copy instead.
            return Ok(None);
        }
        let tmp = TempPath {
            path: self.temp_name(),
            is_dir: false,
            keep: false,
        };
        if let Err(e) = fs::hard_link(&path, &tmp.path) {
            tracing::debug!(error = %e, "local store: cannot link an upload's data; copying it");
            return Ok(None);
        }
        let linked = file_id(&fs::metadata(&tmp.path).map_err(io)?);
        if linked.ino != id.ino || linked.size != total {
            return Ok(None);
        }
        Ok(Some((tmp, linked, total, SlotsLock { _file: data })))
    }
}

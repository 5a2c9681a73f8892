//! What the local store keeps on disk besides the data files: sidecar records, upload
//! manifests, cached part ETags, and the identity of a data file those are tied to.

use super::*;

/// What identifies a version of a data file: a sidecar or cached ETag is believed only while
/// the file still has this identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct FileId {
    pub(super) ino: u64,
    pub(super) size: u64,
    pub(super) mtime_sec: i64,
    pub(super) mtime_nsec: i64,
}

#[cfg(unix)]
pub(super) fn file_id(md: &fs::Metadata) -> FileId {
    use std::os::unix::fs::MetadataExt;
    FileId {
        ino: md.ino(),
        size: md.len(),
        mtime_sec: md.mtime(),
        mtime_nsec: md.mtime_nsec(),
    }
}

#[cfg(not(unix))]
pub(super) fn file_id(md: &fs::Metadata) -> FileId {
    let (sec, nsec) = md
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| {
            (
                i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                i64::from(d.subsec_nanos()),
            )
        })
        .unwrap_or((0, 0));
    FileId {
        ino: 0,
        size: md.len(),
        mtime_sec: sec,
        mtime_nsec: nsec,
    }
}

/// An object's metadata, valid for the data file `file`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct MetaRecord {
    pub(super) file: FileId,
    pub(super) etag: String,
    /// Flattened: the sidecars written before these headers existed held `content_type` alone.
    #[serde(flatten)]
    pub(super) headers: ContentHeaders,
    pub(super) metadata: BTreeMap<String, String>,
}

/// The sidecar of one key: records for the current data file and, while a write is in flight
/// (or after a crash in the middle of one), for the file it replaces.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Sidecar {
    pub(super) key: String,
    pub(super) records: Vec<MetaRecord>,
}

/// A multipart upload's manifest.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Manifest {
    pub(super) key: String,
    #[serde(flatten)]
    pub(super) headers: ContentHeaders,
    pub(super) metadata: BTreeMap<String, String>,
    pub(super) initiated_secs: u64,
    pub(super) initiated_nanos: u32,
}

impl Manifest {
    pub(super) fn initiated(&self) -> Option<SystemTime> {
        UNIX_EPOCH.checked_add(Duration::new(self.initiated_secs, self.initiated_nanos))
    }
}

/// The cached ETag of a part file.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct PartCache {
    pub(super) file: FileId,
    pub(super) etag: String,
}

/// What a key holds right now, as far as a conditional write needs to know.
pub(super) enum Current {
    Absent,
    /// The object exists; its record when one is known (or was asked to be computed).
    Present(Option<Box<MetaRecord>>),
}

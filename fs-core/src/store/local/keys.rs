//! Keys, upload ids and write conditions: the local store's checks on top of S3's rules.

use super::*;

/// Checks a key against S3's rules and the local store's own: no empty segment, nothing under
/// a `.rivulet-store/` at any depth, no segment named like the directory-marker file, no segment too long to
/// be a file name.
pub(super) fn check_key(op: &'static str, key: &str) -> Result<(), StoreError> {
    rules::validate_key(op, key)?;
    let fail = |why: String| Err(StoreError::new(StoreErrorKind::InvalidKey, op, key, why));
    let body = key.strip_suffix('/').unwrap_or(key);
    for seg in body.split('/') {
        if seg.is_empty() {
            return fail(
                "the key has an empty segment ('//'), which cannot be a file name in a local store"
                    .into(),
            );
        }
        // At any depth: a directory below the root can hold a store of its own (a path opened
        // before its parent became a store), whose state is no key of this one.
        if seg == SYS_DIR {
            return fail(format!(
                "keys under '{SYS_DIR}/' are reserved for the local store's state"
            ));
        }
        if seg == DIR_MARKER {
            return fail(format!("'{DIR_MARKER}' is reserved for directory markers"));
        }
        if seg.len() > MAX_NAME_LEN {
            return fail(format!(
                "a segment is {} bytes long; file names are limited to {MAX_NAME_LEN}",
                seg.len()
            ));
        }
    }
    Ok(())
}

/// The directories (as key segments) that hold a key's file: `a/b/c` -> `[a, b]`, `a/b/` ->
/// `[a, b]` (the marker file lives inside `a/b`).
pub(super) fn parent_segments(key: &str) -> Vec<&str> {
    match key.strip_suffix('/') {
        Some(dir) => dir.split('/').collect(),
        None => {
            let mut segs: Vec<&str> = key.split('/').collect();
            segs.pop();
            segs
        }
    }
}

/// Checks an upload id: only ASCII letters and digits, so it can never name a path outside the
/// uploads directory.
pub(super) fn check_upload_id(
    op: &'static str,
    key: &str,
    upload_id: &str,
) -> Result<(), StoreError> {
    if upload_id.is_empty()
        || upload_id.len() > MAX_UPLOAD_ID_LEN
        || !upload_id.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(StoreError::new(
            StoreErrorKind::NoSuchUpload,
            op,
            key,
            format!("malformed upload id {upload_id:?}"),
        ));
    }
    Ok(())
}

pub(super) fn no_such_upload(
    op: &'static str,
    key: &str,
    upload_id: &str,
    why: &str,
) -> StoreError {
    StoreError::new(
        StoreErrorKind::NoSuchUpload,
        op,
        key,
        format!("upload id {upload_id}: {why}"),
    )
}

/// A key that cannot be stored because a file and a directory would need the same name.
pub(super) fn conflict(op: &'static str, key: &str, detail: String) -> StoreError {
    StoreError::new(StoreErrorKind::InvalidKey, op, key, detail)
}

/// `key` needs a folder where the object `holder` is a file.
pub(super) fn file_in_the_way(op: &'static str, key: &str, holder: &str) -> StoreError {
    conflict(
        op,
        key,
        format!(
            "the object '{holder}' is a file, so there cannot be keys under '{holder}/' in a \
             local store (a file and a directory cannot share a name)"
        ),
    )
}

/// `key` names a folder of other keys.
pub(super) fn directory_in_the_way(op: &'static str, key: &str) -> StoreError {
    conflict(
        op,
        key,
        format!(
            "'{key}' is a directory because keys under '{key}/' exist; a local store cannot \
             hold the object '{key}' next to them (a file and a directory cannot share a name)"
        ),
    )
}

/// Whether an I/O error means "the path does not exist" (including through a file where a
/// directory was expected).
pub(super) fn is_missing(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

pub(super) fn check_condition(
    op: &'static str,
    key: &str,
    current: &Current,
    condition: &PutCondition,
) -> Result<(), StoreError> {
    match (condition, current) {
        (PutCondition::None, _) | (PutCondition::IfNoneMatch, Current::Absent) => Ok(()),
        (PutCondition::IfNoneMatch, Current::Present(_)) => Err(StoreError::new(
            StoreErrorKind::PreconditionFailed,
            op,
            key,
            "If-None-Match: the key already exists",
        )),
        (PutCondition::IfMatch(_), Current::Absent) => Err(StoreError::new(
            StoreErrorKind::NotFound,
            op,
            key,
            "If-Match: the key does not exist",
        )),
        (PutCondition::IfMatch(etag), Current::Present(record)) => {
            let actual = record.as_ref().map(|r| r.etag.as_str()).unwrap_or("");
            if actual == etag.trim_matches('"') {
                Ok(())
            } else {
                Err(StoreError::new(
                    StoreErrorKind::PreconditionFailed,
                    op,
                    key,
                    format!("If-Match: the object's ETag is {actual}, not {etag}"),
                ))
            }
        }
    }
}

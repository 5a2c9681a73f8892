//! S3's rules, shared by the backends that must enforce them themselves (memory, local) and by
//! the S3 backend's input checks: key validation, part limits, completion checks, ETags, ranges
//! and listing pages.

use std::collections::BTreeMap;
use std::ops::Range;

use crate::md5::Md5;

use super::{CompletedPart, ListPage, ListRequest, ObjectSummary, limits};
use crate::error::{StoreError, StoreErrorKind};

/// Largest page a listing returns, as on S3.
pub const MAX_LIST_KEYS: usize = 1000;

/// Checks a key: non-empty, at most 1,024 bytes, no NUL, not absolute, and no `.` or `..`
/// segment, so that no backend can be made to reach outside its root.
pub fn validate_key(op: &'static str, key: &str) -> Result<(), StoreError> {
    let fail = |why: &str| Err(StoreError::new(StoreErrorKind::InvalidKey, op, key, why));
    if key.is_empty() {
        return fail("the key is empty");
    }
    if key.len() > limits::MAX_KEY_LEN {
        return fail("the key is longer than 1024 bytes");
    }
    if key.contains('\0') {
        return fail("the key contains a NUL byte");
    }
    if key.starts_with('/') {
        return fail("the key starts with '/' (keys are relative to the store's root)");
    }
    if key.split('/').any(|seg| seg == ".." || seg == ".") {
        return fail("the key has a '.' or '..' segment");
    }
    Ok(())
}

/// Checks a part number against S3's 1..=10,000.
pub fn validate_part_number(op: &'static str, key: &str, n: u32) -> Result<(), StoreError> {
    if n == 0 || n > limits::MAX_PART_NUMBER {
        return Err(StoreError::new(
            StoreErrorKind::InvalidArgument,
            op,
            key,
            format!("part number {n} is outside 1..=10000"),
        ));
    }
    Ok(())
}

/// Checks a part's size against S3's 5 GiB maximum.
pub fn validate_part_size(op: &'static str, key: &str, size: u64) -> Result<(), StoreError> {
    if size > limits::MAX_PART_SIZE {
        return Err(StoreError::new(
            StoreErrorKind::InvalidArgument,
            op,
            key,
            format!("part of {size} bytes is larger than 5 GiB"),
        ));
    }
    Ok(())
}

/// Hex MD5 of a body: the ETag of a single PUT and of a part.
pub fn md5_hex(body: &[u8]) -> String {
    hex::encode(Md5::digest(body))
}

/// The ETag S3 gives a completed multipart upload: MD5 of the concatenated binary MD5s of the
/// parts, then `-N`. `None` if a part ETag is not a plain MD5 hex (e.g. a KMS-encrypted part).
pub fn multipart_etag<'a>(part_etags: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let mut hasher = Md5::new();
    let mut n = 0usize;
    for etag in part_etags {
        let raw = hex::decode(etag.trim_matches('"')).ok()?;
        if raw.len() != 16 {
            return None;
        }
        hasher.update(&raw);
        n += 1;
    }
    Some(format!("{}-{n}", hex::encode(hasher.finalize())))
}

/// Checks a CompleteMultipartUpload request against the uploaded parts (`number -> (etag,
/// size)`) the way S3 does, and returns the parts' sizes in order.
pub fn validate_completion(
    key: &str,
    min_part_size: u64,
    requested: &[CompletedPart],
    uploaded: &BTreeMap<u32, (String, u64)>,
) -> Result<Vec<u64>, StoreError> {
    const OP: &str = "complete multipart upload";
    if requested.is_empty() {
        return Err(StoreError::new(
            StoreErrorKind::InvalidPartOrder,
            OP,
            key,
            "the part list is empty",
        ));
    }
    // The order of the whole list is checked before any part, as S3 does: a list out of order
    // is InvalidPartOrder even when a part in it is also too small or unknown.
    if let Some(pair) = requested.windows(2).find(|w| w[1].number <= w[0].number) {
        return Err(StoreError::new(
            StoreErrorKind::InvalidPartOrder,
            OP,
            key,
            format!(
                "part {} follows part {}: numbers must ascend",
                pair[1].number, pair[0].number
            ),
        ));
    }
    let mut sizes = Vec::with_capacity(requested.len());
    for (i, part) in requested.iter().enumerate() {
        let Some((etag, size)) = uploaded.get(&part.number) else {
            return Err(StoreError::new(
                StoreErrorKind::InvalidPart,
                OP,
                key,
                format!("part {} was not uploaded", part.number),
            ));
        };
        if etag.trim_matches('"') != part.etag.trim_matches('"') {
            return Err(StoreError::new(
                StoreErrorKind::InvalidPart,
                OP,
                key,
                format!("part {} has ETag {etag}, not {}", part.number, part.etag),
            ));
        }
        let is_last = i + 1 == requested.len();
        if !is_last && *size < min_part_size {
            return Err(StoreError::new(
                StoreErrorKind::EntityTooSmall,
                OP,
                key,
                format!(
                    "part {} has {size} bytes, under the {min_part_size}-byte minimum",
                    part.number
                ),
            ));
        }
        sizes.push(*size);
    }
    Ok(sizes)
}

/// Resolves a requested range (end exclusive) against an object of `size` bytes: the end is
/// clamped to the size; a start at or past the end is `InvalidRange`, except any range of an
/// empty object read from 0, which reads nothing.
pub fn resolve_range(
    op: &'static str,
    key: &str,
    range: Option<Range<u64>>,
    size: u64,
) -> Result<Range<u64>, StoreError> {
    let Some(range) = range else {
        return Ok(0..size);
    };
    if range.start > range.end || (range.start >= size && !(range.start == 0 && size == 0)) {
        return Err(StoreError::new(
            StoreErrorKind::InvalidRange,
            op,
            key,
            format!(
                "range {}..{} is outside the object's {size} bytes",
                range.start, range.end
            ),
        ));
    }
    Ok(range.start..range.end.min(size))
}

/// Builds one listing page from every entry of a store in ascending key order, applying the
/// request's prefix, delimiter, continuation (the last key or common prefix of the previous page)
/// and page size.
pub fn list_page(entries: impl IntoIterator<Item = ObjectSummary>, req: &ListRequest) -> ListPage {
    let max = req
        .max_keys
        .unwrap_or(MAX_LIST_KEYS)
        .clamp(1, MAX_LIST_KEYS);
    let delimiter = req.delimiter.as_deref().filter(|d| !d.is_empty());
    let after = req.continuation.as_deref();
    let mut page = ListPage::default();
    let mut count = 0usize;
    let mut last_returned: Option<String> = None;
    for entry in entries {
        if !entry.key.starts_with(&req.prefix) {
            continue;
        }
        // Group under a common prefix when the delimiter occurs after the prefix.
        let rest = &entry.key[req.prefix.len()..];
        let grouped = delimiter.and_then(|d| {
            rest.find(d)
                .map(|i| format!("{}{}", req.prefix, &rest[..i + d.len()]))
        });
        let name = grouped.clone().unwrap_or_else(|| entry.key.clone());
        if let Some(after) = after {
            // Skip everything up to and including the previous page's last name; a common
            // prefix covers every key that starts with it.
            if name.as_str() <= after || (grouped.is_some() && after.starts_with(name.as_str())) {
                continue;
            }
        }
        if last_returned.as_deref() == Some(name.as_str()) {
            continue; // another key under the common prefix just returned
        }
        if count == max {
            page.next = last_returned.clone();
            return page;
        }
        count += 1;
        match grouped {
            Some(prefix) => page.common_prefixes.push(prefix),
            None => page.objects.push(entry),
        }
        last_returned = Some(name);
    }
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(key: &str) -> ObjectSummary {
        ObjectSummary {
            key: key.into(),
            size: 1,
            etag: "e".into(),
            last_modified: None,
        }
    }

    #[test]
    fn keys_that_escape_or_are_malformed_are_rejected() {
        for bad in ["", "/abs", "a/../b", "..", "./a", "a\0b"] {
            let err = validate_key("put", bad).unwrap_err();
            assert_eq!(err.kind(), StoreErrorKind::InvalidKey, "{bad:?}");
        }
        assert!(validate_key("put", &"k".repeat(1025)).is_err());
        for good in ["a", "a/b", "dir/", "a..b", ".hidden", "x/.y/z"] {
            validate_key("put", good).unwrap();
        }
    }

    #[test]
    fn multipart_etag_matches_s3_formula() {
        // Two parts "a" and "b": md5(md5("a") || md5("b")) - 2.
        let a = md5_hex(b"a");
        let b = md5_hex(b"b");
        let mut raw = hex::decode(&a).unwrap();
        raw.extend(hex::decode(&b).unwrap());
        let expected = format!("{}-2", md5_hex(&raw));
        assert_eq!(multipart_etag([a.as_str(), b.as_str()]).unwrap(), expected);
        assert_eq!(multipart_etag(["not-hex"]), None);
    }

    #[test]
    fn completion_enforces_order_presence_etag_and_min_size() {
        let mut up = BTreeMap::new();
        up.insert(1, ("e1".to_string(), 10));
        up.insert(2, ("e2".to_string(), 3));
        let part = |n: u32, e: &str| CompletedPart {
            number: n,
            etag: e.into(),
        };
        assert_eq!(
            validate_completion("k", 10, &[part(1, "e1"), part(2, "e2")], &up).unwrap(),
            vec![10, 3]
        );
        let kind = |r: Result<Vec<u64>, StoreError>| r.unwrap_err().kind();
        assert_eq!(
            kind(validate_completion(
                "k",
                11,
                &[part(1, "e1"), part(2, "e2")],
                &up
            )),
            StoreErrorKind::EntityTooSmall
        );
        assert_eq!(
            kind(validate_completion(
                "k",
                1,
                &[part(2, "e2"), part(1, "e1")],
                &up
            )),
            StoreErrorKind::InvalidPartOrder
        );
        // Out of order and too small: the order is what is wrong first.
        assert_eq!(
            kind(validate_completion(
                "k",
                11,
                &[part(2, "e2"), part(1, "e1")],
                &up
            )),
            StoreErrorKind::InvalidPartOrder
        );
        assert_eq!(
            kind(validate_completion("k", 1, &[part(1, "bad")], &up)),
            StoreErrorKind::InvalidPart
        );
        assert_eq!(
            kind(validate_completion("k", 1, &[part(3, "e3")], &up)),
            StoreErrorKind::InvalidPart
        );
        assert_eq!(
            kind(validate_completion("k", 1, &[], &up)),
            StoreErrorKind::InvalidPartOrder
        );
    }

    #[test]
    fn ranges_are_clamped_or_rejected() {
        assert_eq!(resolve_range("get", "k", Some(2..100), 10).unwrap(), 2..10);
        assert_eq!(resolve_range("get", "k", None, 10).unwrap(), 0..10);
        assert_eq!(resolve_range("get", "k", Some(0..5), 0).unwrap(), 0..0);
        assert!(resolve_range("get", "k", Some(10..12), 10).is_err());
    }

    #[test]
    fn listing_groups_pages_and_resumes() {
        let keys = ["a/1", "a/2", "b", "c/x/1", "c/y", "d"];
        let entries = || keys.iter().map(|k| summary(k));
        let req = ListRequest {
            delimiter: Some("/".into()),
            max_keys: Some(2),
            ..Default::default()
        };
        let p1 = list_page(entries(), &req);
        assert_eq!(p1.common_prefixes, vec!["a/"]);
        assert_eq!(
            p1.objects
                .iter()
                .map(|o| o.key.as_str())
                .collect::<Vec<_>>(),
            vec!["b"]
        );
        let p2 = list_page(
            entries(),
            &ListRequest {
                continuation: p1.next.clone(),
                ..req.clone()
            },
        );
        assert_eq!(p2.common_prefixes, vec!["c/"]);
        assert_eq!(
            p2.objects
                .iter()
                .map(|o| o.key.as_str())
                .collect::<Vec<_>>(),
            vec!["d"]
        );
        assert!(p2.next.is_none());
        let flat = list_page(
            entries(),
            &ListRequest {
                prefix: "c/".into(),
                ..Default::default()
            },
        );
        assert_eq!(flat.objects.len(), 2);
    }
}

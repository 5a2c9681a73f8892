//! What the file-system core's tests share: small parts, open modes, test bytes, and reading
//! the store behind the file system.

#![allow(dead_code)] // each test file uses its own subset

use fs_core::store::{DynStore, ObjectStoreExt};
use fuse_mount::OpenMode;

/// Small parts, so a few hundred KiB span several parts (copies, cuts into uploaded parts).
pub const PART: u64 = 64 * 1024;

pub const WRITE: OpenMode = OpenMode {
    write: true,
    append: false,
    truncate: false,
    exclusive: false,
};
pub const APPEND: OpenMode = OpenMode {
    write: true,
    append: true,
    truncate: false,
    exclusive: false,
};
pub const READ: OpenMode = OpenMode {
    write: false,
    append: false,
    truncate: false,
    exclusive: false,
};

/// Deterministic bytes, different for each seed.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Stores `body` at `key` directly, past the file system.
pub async fn put(store: &DynStore, key: &str, body: &[u8]) {
    store
        .put(key, body.to_vec().into(), Default::default())
        .await
        .expect("put");
}

/// The object at `key` as the store holds it, if any.
pub async fn object(store: &DynStore, key: &str) -> Option<Vec<u8>> {
    match store.head_opt(key).await.expect("head") {
        Some(_) => Some(store.get(key, None).await.expect("get").body.to_vec()),
        None => None,
    }
}

//! Bucket mapping: the store's root holds the buckets as top-level folders.
//!
//! Object `k` of bucket `b` is the store key `b/k`. A bucket exists when anything is stored under
//! `b/`. CreateBucket stores the empty marker object `b/` (the key of the folder itself; the
//! local store keeps it as `b/.rivulet-dir-marker`), so that an empty bucket exists; listings
//! inside the bucket never show the marker (its bucket-relative key would be empty, which no S3
//! key can be). A top-level folder made by other means (files copied into a local store, keys
//! written through `rivulet cp`) is a bucket too, when its name is a valid bucket name.
//!
//! Every object write checks that its bucket exists. A listing per write would double the
//! store requests of small PUTs, so buckets seen to exist are remembered for
//! [`KNOWN_BUCKET_TTL`]: a bucket is forgotten when the gateway deletes it or deletes objects
//! in it (a folder without a marker vanishes with its last object), and the TTL bounds how long
//! a bucket removed behind the gateway's back (directly in the store) is still taken to exist.
//! A missing bucket is never remembered: `NoSuchBucket` always comes from a fresh listing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use fs_core::store::rules::validate_key;
use fs_core::store::{DynStore, ListRequest, ObjectStoreExt, PutOptions, StoreErrorKind};
use s3s::{S3Error, S3ErrorCode, S3Result};

use crate::account::Account;
use crate::errors::{s3_err, to_s3};

/// Checks a bucket name against S3's rules: 3 to 63 characters of lower-case letters, digits,
/// `-` and `.`, starting and ending with a letter or digit, no `..`. This also keeps the names
/// of the local store's reserved folders (`.rivulet-store`) from ever being buckets.
pub fn valid_bucket_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (3..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'.')
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && !name.contains("..")
}

/// The store-key prefix of a bucket's objects (and the key of its marker).
pub fn bucket_prefix(bucket: &str) -> String {
    format!("{bucket}/")
}

/// The store key of object `key` of `bucket`, after checking that the key cannot escape the
/// bucket (fs-core's key rules: no `.`/`..` segment, no NUL, not absolute, at most 1,024 bytes).
pub fn store_key(bucket: &str, key: &str) -> S3Result<String> {
    let full = object_key(bucket, key)?;
    // The bucket prefix adds bytes: the store's own 1,024-byte limit applies to the whole key.
    validate_key("map object key", &full).map_err(|e| {
        s3_err(
            S3ErrorCode::KeyTooLongError,
            format!("invalid object key: {}", e.detail()),
        )
    })?;
    Ok(full)
}

/// `bucket/key` after checking the bucket name and the key alone (S3's rules: at most 1,024
/// bytes, and fs-core's: no escaping segment, no NUL). Where the bucket is the backend's own
/// (one-to-one mode), the limit is the key's, as on S3.
fn object_key(bucket: &str, key: &str) -> S3Result<String> {
    if !valid_bucket_name(bucket) {
        return Err(no_such_bucket(bucket));
    }
    if key.is_empty() {
        return Err(s3_err(
            S3ErrorCode::InvalidArgument,
            "the object key is empty",
        ));
    }
    validate_key("map object key", key).map_err(|e| {
        let code = if key.len() > fs_core::store::limits::MAX_KEY_LEN {
            S3ErrorCode::KeyTooLongError
        } else {
            S3ErrorCode::InvalidArgument
        };
        s3_err(code, format!("invalid object key: {}", e.detail()))
    })?;
    Ok(format!("{bucket}/{key}"))
}

pub fn no_such_bucket(bucket: &str) -> S3Error {
    s3_err(
        S3ErrorCode::NoSuchBucket,
        format!("The specified bucket does not exist: {bucket}"),
    )
}

/// A bucket as ListBuckets shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketInfo {
    pub name: String,
    /// When the marker was written; `None` for a folder without a marker.
    pub created: Option<SystemTime>,
}

/// How long a bucket seen to exist is taken to exist without asking the store again (unless
/// the gateway itself deletes it or objects in it).
pub const KNOWN_BUCKET_TTL: Duration = Duration::from_secs(10);

/// At most this many buckets are remembered; past it the stalest half is dropped (a gateway
/// with more live buckets than this pays a listing per write to the others, nothing worse).
const MAX_KNOWN_BUCKETS: usize = 4096;

/// Buckets seen to exist, and when.
#[derive(Debug, Default)]
struct KnownBuckets {
    seen: HashMap<String, Instant>,
    /// Bumped by every [`Buckets::forget`], so that a listing that started before a forget
    /// (and may predate the deletion) does not remember the bucket again.
    forgets: u64,
}

impl KnownBuckets {
    fn contains(&self, bucket: &str, now: Instant) -> bool {
        self.seen
            .get(bucket)
            .is_some_and(|at| now.duration_since(*at) < KNOWN_BUCKET_TTL)
    }

    fn insert(&mut self, bucket: &str, now: Instant) {
        if self.seen.len() >= MAX_KNOWN_BUCKETS && !self.seen.contains_key(bucket) {
            let mut times: Vec<Instant> = self.seen.values().copied().collect();
            times.sort_unstable();
            let cutoff = times[times.len() / 2];
            self.seen.retain(|_, at| *at > cutoff);
        }
        self.seen.insert(bucket.to_string(), now);
    }
}

/// The buckets of one store: its top-level folders, or (one-to-one mode) the backend's buckets.
#[derive(Debug, Clone)]
pub struct Buckets {
    store: DynStore,
    known: Arc<Mutex<KnownBuckets>>,
    /// One-to-one mode: bucket operations go to the backend's buckets.
    account: Option<Arc<Account>>,
}

impl Buckets {
    /// Buckets as top-level folders of `store`.
    pub fn new(store: DynStore) -> Self {
        Self {
            store,
            known: Arc::default(),
            account: None,
        }
    }

    /// Buckets as the backend's own (one-to-one mode); `store` is the account's
    /// [`AccountStore`](crate::account::AccountStore).
    pub fn one_to_one(store: DynStore, account: Arc<Account>) -> Self {
        Self {
            store,
            known: Arc::default(),
            account: Some(account),
        }
    }

    /// Whether the name can be a bucket of this gateway: a valid name, and in one-to-one mode
    /// not the state bucket.
    fn is_bucket_name(&self, bucket: &str) -> bool {
        valid_bucket_name(bucket)
            && self
                .account
                .as_ref()
                .is_none_or(|a| a.state_bucket() != bucket)
    }

    /// The store key of object `key` of `bucket` (see [`store_key`]); the state bucket of the
    /// one-to-one mode is no bucket.
    pub fn store_key(&self, bucket: &str, key: &str) -> S3Result<String> {
        if !self.is_bucket_name(bucket) {
            return Err(no_such_bucket(bucket));
        }
        if self.account.is_some() {
            // The backend's bucket holds `key` itself: only its own length counts.
            return object_key(bucket, key);
        }
        store_key(bucket, key)
    }

    /// The writer's prefix for the tails of appendable objects, when the default
    /// (`.rivulet/tails/` at the store's root) cannot be used: in one-to-one mode, the state
    /// bucket.
    pub fn tail_prefix(&self) -> Option<String> {
        self.account
            .as_ref()
            .map(|a| format!("{}/tails/", a.state_bucket()))
    }

    pub fn store(&self) -> &DynStore {
        &self.store
    }

    fn known(&self) -> std::sync::MutexGuard<'_, KnownBuckets> {
        // The map holds no invariant a panicking holder could break.
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets that `bucket` exists: the next check asks the store. Called after anything the
    /// gateway does that can make a bucket vanish (deleting it, or objects in it).
    pub fn forget(&self, bucket: &str) {
        let mut known = self.known();
        known.seen.remove(bucket);
        known.forgets += 1;
    }

    /// Whether the bucket exists: remembered (see [`KNOWN_BUCKET_TTL`]) or asked of the store.
    pub async fn exists(&self, bucket: &str) -> S3Result<bool> {
        if !self.is_bucket_name(bucket) {
            return Ok(false);
        }
        if self.known().contains(bucket, Instant::now()) {
            return Ok(true);
        }
        self.exists_in_store(bucket).await
    }

    /// Whether anything (the marker or an object) is stored under the bucket's prefix, asked
    /// of the store (one listing of one key); remembered when it does.
    pub async fn exists_in_store(&self, bucket: &str) -> S3Result<bool> {
        if !self.is_bucket_name(bucket) {
            return Ok(false);
        }
        let (asked_at, forgets) = (Instant::now(), self.known().forgets);
        let exists = match &self.account {
            Some(account) => account.head_bucket(bucket).await?,
            None => self.folder_exists(bucket).await?,
        };
        let mut known = self.known();
        if exists && known.forgets == forgets {
            known.insert(bucket, asked_at);
        }
        Ok(exists)
    }

    async fn folder_exists(&self, bucket: &str) -> S3Result<bool> {
        let page = self
            .store
            .list(ListRequest {
                prefix: bucket_prefix(bucket),
                delimiter: Some("/".into()),
                continuation: None,
                max_keys: Some(1),
            })
            .await
            .map_err(to_s3)?;
        Ok(!page.objects.is_empty() || !page.common_prefixes.is_empty())
    }

    /// `NoSuchBucket` unless the bucket exists.
    pub async fn require(&self, bucket: &str) -> S3Result<()> {
        if self.exists(bucket).await? {
            Ok(())
        } else {
            Err(no_such_bucket(bucket))
        }
    }

    /// Every bucket, by name: the top-level folders of the store whose names are bucket names.
    pub async fn list(&self) -> S3Result<Vec<BucketInfo>> {
        if let Some(account) = &self.account {
            return account.list_buckets().await;
        }
        let mut names = Vec::new();
        let mut continuation = None;
        loop {
            let page = self
                .store
                .list(ListRequest {
                    prefix: String::new(),
                    delimiter: Some("/".into()),
                    continuation: continuation.take(),
                    max_keys: None,
                })
                .await
                .map_err(to_s3)?;
            names.extend(
                page.common_prefixes
                    .iter()
                    .filter_map(|p| p.strip_suffix('/'))
                    .filter(|name| valid_bucket_name(name))
                    .map(str::to_string),
            );
            match page.next {
                Some(next) => continuation = Some(next),
                None => break,
            }
        }
        let mut buckets = Vec::with_capacity(names.len());
        for name in names {
            let created = self
                .store
                .head_opt(&bucket_prefix(&name))
                .await
                .map_err(to_s3)?
                .and_then(|meta| meta.last_modified);
            buckets.push(BucketInfo { name, created });
        }
        Ok(buckets)
    }

    /// Creates a bucket by storing its marker. An existing bucket is `BucketAlreadyOwnedByYou`
    /// (every bucket of a gateway belongs to its one owner).
    pub async fn create(&self, bucket: &str) -> S3Result<()> {
        if !valid_bucket_name(bucket) {
            return Err(s3_err(
                S3ErrorCode::InvalidBucketName,
                format!("The specified bucket is not valid: {bucket}"),
            ));
        }
        if let Some(account) = &self.account {
            if !self.is_bucket_name(bucket) {
                return Err(s3_err(
                    S3ErrorCode::BucketAlreadyExists,
                    format!("The bucket name {bucket} is the gateway's own: choose another"),
                ));
            }
            account.create_bucket(bucket).await?;
            self.known().insert(bucket, Instant::now());
            return Ok(());
        }
        if self.exists_in_store(bucket).await? {
            return Err(s3_err(
                S3ErrorCode::BucketAlreadyOwnedByYou,
                format!("The bucket {bucket} already exists and is yours"),
            ));
        }
        self.store
            .put(
                &bucket_prefix(bucket),
                bytes::Bytes::new(),
                PutOptions::default(),
            )
            .await
            .map_err(to_s3)?;
        self.known().insert(bucket, Instant::now());
        Ok(())
    }

    /// Deletes an empty bucket (its marker); `BucketNotEmpty` while it holds any object.
    pub async fn delete(&self, bucket: &str) -> S3Result<()> {
        let marker = bucket_prefix(bucket);
        if !self.is_bucket_name(bucket) {
            return Err(no_such_bucket(bucket));
        }
        // Forgotten before and after: whatever the outcome, the next check asks the store.
        self.forget(bucket);
        let result = match &self.account {
            Some(account) => account.delete_bucket(bucket).await,
            None => self.delete_marker(bucket, &marker).await,
        };
        self.forget(bucket);
        result
    }

    async fn delete_marker(&self, bucket: &str, marker: &str) -> S3Result<()> {
        // Two entries tell the marker from a real object whichever sorts first.
        let page = self
            .store
            .list(ListRequest {
                prefix: marker.to_string(),
                delimiter: None,
                continuation: None,
                max_keys: Some(2),
            })
            .await
            .map_err(to_s3)?;
        if page.objects.is_empty() {
            return Err(no_such_bucket(bucket));
        }
        if page.objects.iter().any(|o| o.key != marker) {
            return Err(s3_err(
                S3ErrorCode::BucketNotEmpty,
                format!("The bucket {bucket} is not empty"),
            ));
        }
        match self.store.delete(marker).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == StoreErrorKind::NotFound => Err(no_such_bucket(bucket)),
            Err(e) => Err(to_s3(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fs_core::store::ObjectStore;
    use fs_core::store::fault::{FaultConfig, FaultStore, Op};
    use fs_core::store::memory::MemoryStore;

    #[test]
    fn bucket_names_follow_s3_rules() {
        for good in ["abc", "my-bucket", "a.b.c", "0ab", &"a".repeat(63)] {
            assert!(valid_bucket_name(good), "{good}");
        }
        for bad in [
            "ab",
            "Abc",
            "a_b",
            "-ab",
            "ab-",
            "a..b",
            ".rivulet-store",
            "../x",
            &"a".repeat(64),
        ] {
            assert!(!valid_bucket_name(bad), "{bad}");
        }
    }

    #[test]
    fn keys_cannot_escape_their_bucket() {
        assert_eq!(store_key("bkt", "a/b").unwrap(), "bkt/a/b");
        for bad in ["", "../x", "a/../../x", "/abs", "a\0b", "./a"] {
            let err = store_key("bkt", bad).unwrap_err();
            assert_eq!(err.code().as_str(), "InvalidArgument", "{bad:?}");
        }
        assert_eq!(
            store_key("bkt", &"k".repeat(1024))
                .unwrap_err()
                .code()
                .as_str(),
            "KeyTooLongError"
        );
        assert_eq!(
            store_key("..", "k").unwrap_err().code().as_str(),
            "NoSuchBucket"
        );
        // A bucket of its own (one-to-one mode): the key's own 1,024 bytes, as on S3.
        let longest = "k".repeat(1024);
        assert_eq!(
            object_key("bkt", &longest).unwrap(),
            format!("bkt/{longest}")
        );
        assert_eq!(
            object_key("bkt", &"k".repeat(1025))
                .unwrap_err()
                .code()
                .as_str(),
            "KeyTooLongError"
        );
        assert_eq!(
            object_key("bkt", "a\0b").unwrap_err().code().as_str(),
            "InvalidArgument"
        );
    }

    #[tokio::test]
    async fn lifecycle_of_a_bucket() {
        let store: DynStore = Arc::new(MemoryStore::new());
        let buckets = Buckets::new(store.clone());
        assert!(!buckets.exists("bkt").await.unwrap());
        buckets.create("bkt").await.unwrap();
        assert!(buckets.exists("bkt").await.unwrap());
        assert_eq!(
            buckets.create("bkt").await.unwrap_err().code().as_str(),
            "BucketAlreadyOwnedByYou"
        );
        // Stray top-level keys and invalid names are not buckets.
        store
            .put(
                "top-level-object",
                bytes::Bytes::new(),
                PutOptions::default(),
            )
            .await
            .unwrap();
        store
            .put("Not_A_Bucket/x", bytes::Bytes::new(), PutOptions::default())
            .await
            .unwrap();
        store
            .put(
                "zzz/k",
                bytes::Bytes::from_static(b"x"),
                PutOptions::default(),
            )
            .await
            .unwrap();
        let names: Vec<String> = buckets
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|b| b.name)
            .collect();
        assert_eq!(names, ["bkt", "zzz"]);
        assert_eq!(
            buckets.delete("zzz").await.unwrap_err().code().as_str(),
            "BucketNotEmpty"
        );
        buckets.delete("bkt").await.unwrap();
        assert!(!buckets.exists("bkt").await.unwrap());
        assert_eq!(
            buckets.delete("bkt").await.unwrap_err().code().as_str(),
            "NoSuchBucket"
        );
    }

    /// A store that counts its calls, over a memory store.
    fn counting() -> (Arc<FaultStore>, Buckets) {
        let store = Arc::new(FaultStore::new(
            Arc::new(MemoryStore::new()),
            FaultConfig::default(),
        ));
        let buckets = Buckets::new(store.clone());
        (store, buckets)
    }

    #[tokio::test]
    async fn a_known_bucket_costs_no_listing() {
        let (store, buckets) = counting();
        buckets.create("bkt").await.unwrap();
        let after_create = store.calls(Op::List);
        for _ in 0..100 {
            buckets.require("bkt").await.unwrap();
        }
        assert_eq!(store.calls(Op::List), after_create);
        // A missing bucket is never remembered: each check asks the store.
        for _ in 0..3 {
            assert_eq!(
                buckets.require("nope").await.unwrap_err().code().as_str(),
                "NoSuchBucket"
            );
        }
        assert_eq!(store.calls(Op::List), after_create + 3);
        // HeadBucket's check always asks.
        assert!(buckets.exists_in_store("bkt").await.unwrap());
        assert_eq!(store.calls(Op::List), after_create + 4);
    }

    #[tokio::test]
    async fn deleting_forgets_a_bucket() {
        let (store, buckets) = counting();
        buckets.create("bkt").await.unwrap();
        buckets.delete("bkt").await.unwrap();
        assert!(!buckets.exists("bkt").await.unwrap());
        assert_eq!(
            buckets.require("bkt").await.unwrap_err().code().as_str(),
            "NoSuchBucket"
        );
        // A folder without a marker: remembered once seen, gone once forgotten (what the
        // gateway does after deleting objects in it) and its last object is gone.
        store
            .put(
                "loose/k",
                bytes::Bytes::from_static(b"x"),
                PutOptions::default(),
            )
            .await
            .unwrap();
        assert!(buckets.exists("loose").await.unwrap());
        store.delete("loose/k").await.unwrap();
        buckets.forget("loose");
        assert!(!buckets.exists("loose").await.unwrap());
    }

    #[test]
    fn the_known_set_stays_bounded() {
        let mut known = KnownBuckets::default();
        let now = Instant::now();
        for i in 0..(MAX_KNOWN_BUCKETS * 3) {
            known.insert(&format!("b{i:06}"), now + Duration::from_millis(i as u64));
        }
        assert!(known.seen.len() <= MAX_KNOWN_BUCKETS);
        let newest = format!("b{:06}", MAX_KNOWN_BUCKETS * 3 - 1);
        assert!(known.seen.contains_key(&newest));
    }
}

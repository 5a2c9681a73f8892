//! What the gateway asks of its store: the store calls behind each S3 request, counted by
//! fs-core's fault wrapper (with no faults configured) around a local store.

use std::sync::Arc;

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use fs_core::store::fault::{FaultConfig, FaultStore, Op};
use fs_core::store::local::LocalStore;
use fs_core::store::rules::{md5_hex, multipart_etag};
use fs_core::store::{ObjectStore, PutOptions, StoreError};
use harness::gateway::{
    InProcessGateway, content_md5, patterned_data, put_object, put_then_hang_up, test_config,
};

async fn put_status(c: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Result<(), String> {
    c.put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from_static(b"body"))
        .send()
        .await
        .map(|_| ())
        .map_err(|e| e.code().unwrap_or("no code").to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_a_known_bucket_do_not_list_it() {
    let dir = tempfile::tempdir().unwrap();
    let local: fs_core::store::DynStore = Arc::new(LocalStore::open(dir.path()).unwrap());
    let store = Arc::new(FaultStore::new(local, FaultConfig::default()));
    let gw = InProcessGateway::start(store.clone(), test_config()).await;
    let c = gw.client();
    c.create_bucket().bucket("bkt").send().await.unwrap();

    let lists_before = store.calls(Op::List);
    for i in 0..50 {
        put_status(&c, "bkt", &format!("k{i}")).await.unwrap();
    }
    for i in 0..10 {
        c.get_object()
            .bucket("bkt")
            .key(format!("k{i}"))
            .send()
            .await
            .unwrap();
    }
    assert_eq!(
        store.calls(Op::List),
        lists_before,
        "PUTs and GETs to a bucket the gateway knows list nothing"
    );
    assert_eq!(
        store.calls(Op::Put),
        51,
        "one store PUT per object PUT (and the marker)"
    );

    // NoSuchBucket is still answered for a bucket that does not exist...
    assert_eq!(
        put_status(&c, "missing", "k").await.unwrap_err(),
        "NoSuchBucket"
    );
    // ...and for one the gateway deleted, right after the delete.
    c.create_bucket().bucket("gone").send().await.unwrap();
    put_status(&c, "gone", "k").await.unwrap();
    c.delete_object()
        .bucket("gone")
        .key("k")
        .send()
        .await
        .unwrap();
    c.delete_bucket().bucket("gone").send().await.unwrap();
    assert_eq!(
        put_status(&c, "gone", "k").await.unwrap_err(),
        "NoSuchBucket"
    );

    // A folder without a marker is a bucket while it has objects, and vanishes with its last
    // one, deleted through the gateway (DeleteObjects here).
    store
        .put(
            "loose/a",
            bytes::Bytes::from_static(b"a"),
            PutOptions::default(),
        )
        .await
        .unwrap();
    put_status(&c, "loose", "b").await.unwrap();
    let delete = aws_sdk_s3::types::Delete::builder()
        .objects(
            aws_sdk_s3::types::ObjectIdentifier::builder()
                .key("a")
                .build()
                .unwrap(),
        )
        .objects(
            aws_sdk_s3::types::ObjectIdentifier::builder()
                .key("b")
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    c.delete_objects()
        .bucket("loose")
        .delete(delete)
        .send()
        .await
        .unwrap();
    assert_eq!(
        put_status(&c, "loose", "c").await.unwrap_err(),
        "NoSuchBucket"
    );
    // HeadBucket asks the store every time.
    let lists = store.calls(Op::List);
    c.create_bucket().bucket("headed").send().await.unwrap();
    c.head_bucket().bucket("headed").send().await.unwrap();
    c.head_bucket().bucket("headed").send().await.unwrap();
    assert_eq!(store.calls(Op::List), lists + 3);
    gw.stop().await;
}

/// A store that records the largest body it is handed (PUT or part), over another store.
#[derive(Debug)]
struct LargestBody {
    inner: fs_core::store::DynStore,
    largest: std::sync::atomic::AtomicUsize,
}

impl LargestBody {
    fn record(&self, len: usize) {
        self.largest
            .fetch_max(len, std::sync::atomic::Ordering::SeqCst);
    }

    fn largest(&self) -> usize {
        self.largest.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl ObjectStore for LargestBody {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn min_part_size(&self) -> u64 {
        self.inner.min_part_size()
    }
    fn requires_contiguous_parts(&self) -> bool {
        self.inner.requires_contiguous_parts()
    }
    fn reads_parts(&self) -> bool {
        self.inner.reads_parts()
    }
    fn enforces_complete_conditions(&self) -> bool {
        self.inner.enforces_complete_conditions()
    }
    async fn get(
        &self,
        key: &str,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<fs_core::store::GetResult, StoreError> {
        self.inner.get(key, range).await
    }
    async fn head(&self, key: &str) -> Result<fs_core::store::ObjectMeta, StoreError> {
        self.inner.head(key).await
    }
    async fn put(
        &self,
        key: &str,
        body: bytes::Bytes,
        opts: PutOptions,
    ) -> Result<fs_core::store::PutResult, StoreError> {
        self.record(body.len());
        self.inner.put(key, body, opts).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete(key).await
    }
    async fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        self.inner.delete_many(keys).await
    }
    async fn list(
        &self,
        req: fs_core::store::ListRequest,
    ) -> Result<fs_core::store::ListPage, StoreError> {
        self.inner.list(req).await
    }
    async fn create_multipart(&self, key: &str, opts: PutOptions) -> Result<String, StoreError> {
        self.inner.create_multipart(key, opts).await
    }
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: bytes::Bytes,
    ) -> Result<String, StoreError> {
        self.record(body.len());
        self.inner
            .upload_part(key, upload_id, part_number, body)
            .await
    }
    async fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        source_key: &str,
        range: std::ops::Range<u64>,
        source_if_match: Option<&str>,
    ) -> Result<String, StoreError> {
        self.inner
            .upload_part_copy(
                key,
                upload_id,
                part_number,
                source_key,
                range,
                source_if_match,
            )
            .await
    }
    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[fs_core::store::CompletedPart],
        condition: fs_core::store::PutCondition,
    ) -> Result<fs_core::store::PutResult, StoreError> {
        self.inner
            .complete_multipart(key, upload_id, parts, condition)
            .await
    }
    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        self.inner.abort_multipart(key, upload_id).await
    }
    async fn read_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        etag: &str,
        range: std::ops::Range<u64>,
    ) -> Result<bytes::Bytes, StoreError> {
        self.inner
            .read_part(key, upload_id, number, etag, range)
            .await
    }
    async fn list_parts(
        &self,
        key: &str,
        upload_id: &str,
        marker: Option<u32>,
    ) -> Result<fs_core::store::PartsPage, StoreError> {
        self.inner.list_parts(key, upload_id, marker).await
    }
    async fn list_multipart_uploads(
        &self,
        prefix: &str,
        marker: Option<fs_core::store::UploadsMarker>,
    ) -> Result<fs_core::store::UploadsPage, StoreError> {
        self.inner.list_multipart_uploads(prefix, marker).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_puts_are_streamed_in_parts() {
    const MIB: usize = 1024 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LargestBody {
        inner: Arc::new(LocalStore::open(dir.path()).unwrap()),
        largest: Default::default(),
    });
    let gw = InProcessGateway::start(store.clone(), test_config()).await;
    let c = gw.client();
    c.create_bucket().bucket("big").send().await.unwrap();

    // 64 MiB: eight parts of the default 8 MiB, never more than a part handed to the store.
    let body = patterned_data(64 * MIB, 7);
    let etag = put_object(&c, "big", "large", &body, Some(content_md5(&body)))
        .await
        .unwrap();
    let part_md5s: Vec<String> = body.chunks(8 * MIB).map(md5_hex).collect();
    let want = multipart_etag(part_md5s.iter().map(String::as_str)).unwrap();
    assert_eq!(etag, format!("\"{want}\""));
    assert_eq!(
        store.largest(),
        8 * MIB,
        "the store never got more than a part"
    );
    let head = c
        .head_object()
        .bucket("big")
        .key("large")
        .send()
        .await
        .unwrap();
    assert_eq!(head.e_tag(), Some(etag.as_str()));
    assert_eq!(head.content_length(), Some(64 * MIB as i64));
    let got = c
        .get_object()
        .bucket("big")
        .key("large")
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    assert!(
        got[..] == body[..],
        "the streamed object reads back byte for byte"
    );

    // Up to one part: one PUT, the MD5 ETag as S3 gives it.
    let exact = patterned_data(8 * MIB, 9);
    let etag = put_object(&c, "big", "one-part", &exact, None)
        .await
        .unwrap();
    assert_eq!(etag, format!("\"{}\"", md5_hex(&exact)));

    // A wrong Content-MD5 on a streamed body: BadDigest, nothing stored, no upload left.
    let other = patterned_data(20 * MIB, 3);
    assert_eq!(
        put_object(
            &c,
            "big",
            "bad-md5",
            &other,
            Some(content_md5(b"something else"))
        )
        .await
        .unwrap_err(),
        "BadDigest"
    );
    // A failed condition at completion: 412, the old object stays, no upload left.
    let cond = c
        .put_object()
        .bucket("big")
        .key("large")
        .body(ByteStream::from(other.clone()))
        .if_none_match("*")
        .send()
        .await
        .unwrap_err();
    assert_eq!(cond.code(), Some("PreconditionFailed"));
    assert!(
        store.head("big/bad-md5").await.is_err(),
        "nothing stored under a bad digest"
    );
    assert_eq!(store.head("big/large").await.unwrap().etag, want);
    let uploads = store.list_multipart_uploads("big/", None).await.unwrap();
    assert!(uploads.uploads.is_empty(), "{:?}", uploads.uploads);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_mid_put_leaves_no_upload() {
    const MIB: usize = 1024 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let store: fs_core::store::DynStore = Arc::new(LocalStore::open(dir.path()).unwrap());
    let mut config = test_config();
    config.credentials.clear();
    config.anonymous = true;
    let gw = InProcessGateway::start(store.clone(), config).await;
    // The bucket's marker, written directly (the gateway takes only unsigned requests here).
    store
        .put("cut/", bytes::Bytes::new(), PutOptions::default())
        .await
        .unwrap();
    // Announce 40 MiB, send 20 (two parts' worth and more), and hang up.
    put_then_hang_up(gw.addr, "cut/partial", 40 * MIB, 20 * MIB).await;
    // The upload the gateway had started is aborted (in the background once the request is
    // dropped): poll until the store has none.
    let mut left = usize::MAX;
    for _ in 0..100 {
        left = store
            .list_multipart_uploads("cut/", None)
            .await
            .unwrap()
            .uploads
            .len();
        if left == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "the cut PUT's upload was aborted");
    assert!(store.head("cut/partial").await.is_err(), "nothing stored");
    gw.stop().await;
}

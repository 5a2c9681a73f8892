//! What the gateway asks of its store: the store calls behind each S3 request, counted by
//! fs-core's fault wrapper (with no faults configured) around a local store.

use std::sync::Arc;

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use fs_core::store::fault::{FaultConfig, FaultStore, Op};
use fs_core::store::local::LocalStore;
use fs_core::store::{ObjectStore, PutOptions};
use harness::gateway::{InProcessGateway, test_config};

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

//! The S3 gateway driven by aws-sdk-s3, over a local store in a temporary directory and over
//! moto (the gateway's store is a moto bucket), plus the `rivulet gateway` command itself.
//!
//! Every check runs against both backends, each in a bucket of its own. The gateway runs
//! in-process on 127.0.0.1:0 for the API checks; the command-line checks run the `rivulet`
//! binary (found like `tests/cli.rs` finds it).

use harness::rivulet_bin;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, DateTime};
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart, Delete, EncodingType, MetadataDirective,
    ObjectIdentifier,
};
use fs_core::store::local::LocalStore;
use fs_core::store::rules::{md5_hex, multipart_etag};
use fs_core::store::{DynStore, ObjectStoreExt};
use harness::TestServer;
use harness::gateway::{
    ACCESS_KEY, InProcessGateway, SECRET_KEY, client_with_keys as client, read_listen_address,
    test_config,
};
use harness::venv_program;
use s3_gateway::Server;
use s3_gateway::config::GatewayConfig;
use tempfile::TempDir;
use tokio::sync::oneshot;

const MIB: usize = 1024 * 1024;
/// The in-process gateways seal appendable objects after this long without appends.
const SEAL_AFTER: Duration = Duration::from_millis(300);

/// A gateway running in-process, stopped on drop.
struct Gateway {
    addr: SocketAddr,
    server: InProcessGateway,
    /// The local store's root (local backend only).
    root: Option<PathBuf>,
    /// The gateway's store, to check what reached the backend.
    store: DynStore,
    _dir: Option<TempDir>,
    _moto: Option<TestServer>,
}

impl Gateway {
    async fn start(store: DynStore) -> InProcessGateway {
        let config = GatewayConfig {
            // Small reads, so that the multi-MiB objects below are sent in many chunks.
            read_chunk: MIB as u64,
            seal_after: SEAL_AFTER,
            ..test_config()
        };
        InProcessGateway::start(store, config).await
    }

    /// Over a local store in a fresh temporary directory.
    async fn local() -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("store");
        let store: DynStore = Arc::new(LocalStore::open(&root).expect("local store"));
        let server = Self::start(store.clone()).await;
        Gateway {
            addr: server.addr,
            server,
            root: Some(root),
            store,
            _dir: Some(dir),
            _moto: None,
        }
    }

    /// Over moto: the gateway's store is the root of a fresh moto bucket.
    async fn moto() -> Gateway {
        let moto = TestServer::moto().await;
        let store = moto.store().await;
        let server = Self::start(store.clone()).await;
        Gateway {
            addr: server.addr,
            server,
            root: None,
            store,
            _dir: None,
            _moto: Some(moto),
        }
    }

    /// Over a prefix of a moto bucket (`--store s3://bucket/prefix`): buckets are folders under
    /// the prefix.
    async fn moto_prefix(prefix: &str) -> Gateway {
        let moto = TestServer::moto().await;
        let store = moto.store_with_prefix(prefix).await;
        let server = Self::start(store.clone()).await;
        Gateway {
            addr: server.addr,
            server,
            root: None,
            store,
            _dir: None,
            _moto: Some(moto),
        }
    }

    fn client(&self) -> Client {
        client(self.addr, ACCESS_KEY, SECRET_KEY)
    }

    async fn stop(self) {
        self.server.stop().await;
    }
}

/// The S3 error code and HTTP status of a call that must fail.
#[track_caller]
fn failure<T: std::fmt::Debug, E: ProvideErrorMetadata + std::fmt::Debug>(
    result: Result<T, SdkError<E>>,
) -> (String, u16) {
    let err = match result {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e,
    };
    let status = err
        .raw_response()
        .map(|r| r.status().as_u16())
        .unwrap_or_else(|| panic!("no HTTP response: {err:?}"));
    (err.code().unwrap_or_default().to_string(), status)
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn quoted(etag: &str) -> String {
    format!("\"{etag}\"")
}

async fn put(c: &Client, bucket: &str, key: &str, body: &[u8]) -> String {
    c.put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from(body.to_vec()))
        .send()
        .await
        .unwrap_or_else(|e| panic!("put {bucket}/{key}: {e:?}"))
        .e_tag()
        .expect("PUT returns an ETag")
        .to_string()
}

async fn get(c: &Client, bucket: &str, key: &str) -> Vec<u8> {
    c.get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("get {bucket}/{key}: {e:?}"))
        .body
        .collect()
        .await
        .expect("read the body")
        .into_bytes()
        .to_vec()
}

async fn create_bucket(c: &Client, bucket: &str) {
    c.create_bucket()
        .bucket(bucket)
        .send()
        .await
        .unwrap_or_else(|e| panic!("create bucket {bucket}: {e:?}"));
}

// ---- the checks, each on a bucket of its own ----

async fn bucket_lifecycle(gw: &Gateway) {
    let c = gw.client();
    let (code, status) = failure(c.head_bucket().bucket("lifecycle").send().await);
    assert_eq!(status, 404, "{code}");
    create_bucket(&c, "lifecycle").await;
    c.head_bucket().bucket("lifecycle").send().await.unwrap();
    let names: Vec<String> = c
        .list_buckets()
        .send()
        .await
        .unwrap()
        .buckets()
        .iter()
        .filter_map(|b| b.name().map(str::to_string))
        .collect();
    assert!(names.contains(&"lifecycle".to_string()), "{names:?}");
    assert_eq!(
        failure(c.create_bucket().bucket("lifecycle").send().await),
        ("BucketAlreadyOwnedByYou".into(), 409)
    );
    let location = c
        .get_bucket_location()
        .bucket("lifecycle")
        .send()
        .await
        .unwrap();
    // us-east-1 is an empty constraint, as S3 answers it.
    assert_eq!(
        location
            .location_constraint()
            .map(|l| l.as_str())
            .unwrap_or_default(),
        ""
    );
    // A bucket asked for in another region is refused, as S3 refuses it.
    assert_eq!(
        failure(
            c.create_bucket()
                .bucket("elsewhere")
                .create_bucket_configuration(
                    aws_sdk_s3::types::CreateBucketConfiguration::builder()
                        .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::EuWest1)
                        .build()
                )
                .send()
                .await
        ),
        ("IllegalLocationConstraintException".into(), 400)
    );
    assert_eq!(
        failure(c.head_bucket().bucket("elsewhere").send().await).1,
        404
    );

    // An empty bucket lists nothing: its marker is hidden.
    let listed = c
        .list_objects_v2()
        .bucket("lifecycle")
        .send()
        .await
        .unwrap();
    assert!(listed.contents().is_empty(), "{:?}", listed.contents());
    assert_eq!(listed.key_count(), Some(0));

    put(&c, "lifecycle", "k", b"v").await;
    assert_eq!(
        failure(c.delete_bucket().bucket("lifecycle").send().await),
        ("BucketNotEmpty".into(), 409)
    );
    c.delete_object()
        .bucket("lifecycle")
        .key("k")
        .send()
        .await
        .unwrap();
    c.delete_bucket().bucket("lifecycle").send().await.unwrap();
    let (_, status) = failure(c.head_bucket().bucket("lifecycle").send().await);
    assert_eq!(status, 404);
    let names: Vec<String> = c
        .list_buckets()
        .send()
        .await
        .unwrap()
        .buckets()
        .iter()
        .filter_map(|b| b.name().map(str::to_string))
        .collect();
    assert!(!names.contains(&"lifecycle".to_string()), "{names:?}");
    assert_eq!(
        failure(c.delete_bucket().bucket("lifecycle").send().await),
        ("NoSuchBucket".into(), 404)
    );

    // Every operation on a missing bucket is NoSuchBucket.
    let missing = "no-such-bucket";
    assert_eq!(
        failure(
            c.put_object()
                .bucket(missing)
                .key("k")
                .body(ByteStream::from_static(b"x"))
                .send()
                .await
        ),
        ("NoSuchBucket".into(), 404)
    );
    assert_eq!(
        failure(c.get_object().bucket(missing).key("k").send().await),
        ("NoSuchBucket".into(), 404)
    );
    assert_eq!(
        failure(c.list_objects_v2().bucket(missing).send().await),
        ("NoSuchBucket".into(), 404)
    );
    assert_eq!(
        failure(
            c.create_multipart_upload()
                .bucket(missing)
                .key("k")
                .send()
                .await
        ),
        ("NoSuchBucket".into(), 404)
    );
    assert_eq!(
        failure(c.delete_object().bucket(missing).key("k").send().await),
        ("NoSuchBucket".into(), 404)
    );
    let (code, status) = failure(c.create_bucket().bucket("Bad_Name").send().await);
    assert_eq!((code.as_str(), status), ("InvalidBucketName", 400));
}

async fn put_get_head_with_metadata(gw: &Gateway) {
    let c = gw.client();
    create_bucket(&c, "objects").await;
    let body = data(1000, 7);
    let out = c
        .put_object()
        .bucket("objects")
        .key("dir/file.txt")
        .body(ByteStream::from(body.clone()))
        .content_type("text/csv")
        .metadata("color", "blue")
        .metadata("Owner", "ops")
        .send()
        .await
        .unwrap();
    assert_eq!(out.e_tag(), Some(quoted(&md5_hex(&body)).as_str()));

    let got = c
        .get_object()
        .bucket("objects")
        .key("dir/file.txt")
        .send()
        .await
        .unwrap();
    assert_eq!(got.content_type(), Some("text/csv"));
    assert_eq!(got.content_length(), Some(1000));
    assert_eq!(got.e_tag(), Some(quoted(&md5_hex(&body)).as_str()));
    let metadata = got.metadata().cloned().unwrap_or_default();
    assert_eq!(
        metadata,
        HashMap::from([
            ("color".to_string(), "blue".to_string()),
            ("owner".to_string(), "ops".to_string())
        ])
    );
    assert_eq!(
        got.body.collect().await.unwrap().into_bytes().to_vec(),
        body
    );

    let head = c
        .head_object()
        .bucket("objects")
        .key("dir/file.txt")
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_length(), Some(1000));
    assert_eq!(head.content_type(), Some("text/csv"));
    assert_eq!(
        head.metadata()
            .and_then(|m| m.get("color"))
            .map(String::as_str),
        Some("blue")
    );
    assert!(head.last_modified().is_some());

    assert_eq!(
        failure(c.get_object().bucket("objects").key("missing").send().await),
        ("NoSuchKey".into(), 404)
    );
    let (_, status) = failure(
        c.head_object()
            .bucket("objects")
            .key("missing")
            .send()
            .await,
    );
    assert_eq!(status, 404);

    // An empty object round-trips.
    assert_eq!(
        put(&c, "objects", "empty", b"").await,
        quoted(&md5_hex(b""))
    );
    assert!(get(&c, "objects", "empty").await.is_empty());

    // A PUT with a write offset is an append (see `appends`), never taken for an overwrite:
    // at the wrong offset it is refused and changes nothing.
    let (code, status) = failure(
        c.put_object()
            .bucket("objects")
            .key("dir/file.txt")
            .write_offset_bytes(body.len() as i64 - 1)
            .body(ByteStream::from_static(b"appended"))
            .send()
            .await,
    );
    assert_eq!((code.as_str(), status), ("InvalidWriteOffset", 400));
    assert_eq!(get(&c, "objects", "dir/file.txt").await, body);

    // Overwrite replaces.
    put(&c, "objects", "dir/file.txt", b"new").await;
    assert_eq!(get(&c, "objects", "dir/file.txt").await, b"new");

    if let Some(root) = &gw.root {
        // Bucket b, key k is the store key b/k: a plain file in a local store.
        assert_eq!(
            std::fs::read(root.join("objects/dir/file.txt")).unwrap(),
            b"new"
        );
    }
}

async fn ranged_reads(gw: &Gateway) {
    let c = gw.client();
    create_bucket(&c, "ranges").await;
    let body = data(100, 3);
    put(&c, "ranges", "r", &body).await;
    let read = |range: &'static str| {
        let c = c.clone();
        async move {
            c.get_object()
                .bucket("ranges")
                .key("r")
                .range(range)
                .send()
                .await
        }
    };
    let got = read("bytes=10-19").await.unwrap();
    assert_eq!(got.content_range(), Some("bytes 10-19/100"));
    assert_eq!(got.content_length(), Some(10));
    assert_eq!(
        got.body.collect().await.unwrap().into_bytes().to_vec(),
        &body[10..20]
    );
    let got = read("bytes=90-").await.unwrap();
    assert_eq!(got.content_range(), Some("bytes 90-99/100"));
    assert_eq!(
        got.body.collect().await.unwrap().into_bytes().to_vec(),
        &body[90..]
    );
    let got = read("bytes=-5").await.unwrap();
    assert_eq!(got.content_range(), Some("bytes 95-99/100"));
    assert_eq!(
        got.body.collect().await.unwrap().into_bytes().to_vec(),
        &body[95..]
    );
    // An end past the object is clamped, as on S3.
    let got = read("bytes=98-1000").await.unwrap();
    assert_eq!(
        got.body.collect().await.unwrap().into_bytes().to_vec(),
        &body[98..]
    );
    assert_eq!(
        failure(read("bytes=100-200").await),
        ("InvalidRange".into(), 416)
    );
}

async fn conditional_requests(gw: &Gateway) {
    let c = gw.client();
    create_bucket(&c, "conditions").await;
    let etag = put(&c, "conditions", "k", b"first").await;

    // If-None-Match: * creates only.
    assert_eq!(
        failure(
            c.put_object()
                .bucket("conditions")
                .key("k")
                .if_none_match("*")
                .body(ByteStream::from_static(b"second"))
                .send()
                .await
        ),
        ("PreconditionFailed".into(), 412)
    );
    c.put_object()
        .bucket("conditions")
        .key("new")
        .if_none_match("*")
        .body(ByteStream::from_static(b"created"))
        .send()
        .await
        .unwrap();
    assert_eq!(get(&c, "conditions", "k").await, b"first");

    // If-Match replaces only that version.
    assert_eq!(
        failure(
            c.put_object()
                .bucket("conditions")
                .key("k")
                .if_match(quoted(&md5_hex(b"other")))
                .body(ByteStream::from_static(b"second"))
                .send()
                .await
        ),
        ("PreconditionFailed".into(), 412)
    );
    let etag2 = c
        .put_object()
        .bucket("conditions")
        .key("k")
        .if_match(&etag)
        .body(ByteStream::from_static(b"second"))
        .send()
        .await
        .unwrap()
        .e_tag()
        .unwrap()
        .to_string();
    assert_eq!(etag2, quoted(&md5_hex(b"second")));
    // If-Match on a key that does not exist: 404, and nothing is created.
    assert_eq!(
        failure(
            c.put_object()
                .bucket("conditions")
                .key("missing")
                .if_match(&etag2)
                .body(ByteStream::from_static(b"never"))
                .send()
                .await
        ),
        ("NoSuchKey".into(), 404)
    );
    let (_, status) = failure(
        c.head_object()
            .bucket("conditions")
            .key("missing")
            .send()
            .await,
    );
    assert_eq!(status, 404);

    // Conditional reads.
    let (_, status) = failure(
        c.get_object()
            .bucket("conditions")
            .key("k")
            .if_none_match(&etag2)
            .send()
            .await,
    );
    assert_eq!(status, 304);
    let got = c
        .get_object()
        .bucket("conditions")
        .key("k")
        .if_none_match(&etag)
        .send()
        .await
        .unwrap();
    assert_eq!(
        got.body.collect().await.unwrap().into_bytes().to_vec(),
        b"second"
    );
    assert_eq!(
        failure(
            c.get_object()
                .bucket("conditions")
                .key("k")
                .if_match(&etag)
                .send()
                .await
        ),
        ("PreconditionFailed".into(), 412)
    );
    let future = DateTime::from_secs(4_000_000_000);
    let past = DateTime::from_secs(1_000_000_000);
    let (_, status) = failure(
        c.get_object()
            .bucket("conditions")
            .key("k")
            .if_modified_since(future)
            .send()
            .await,
    );
    assert_eq!(status, 304);
    c.get_object()
        .bucket("conditions")
        .key("k")
        .if_modified_since(past)
        .send()
        .await
        .unwrap();
    assert_eq!(
        failure(
            c.get_object()
                .bucket("conditions")
                .key("k")
                .if_unmodified_since(past)
                .send()
                .await
        ),
        ("PreconditionFailed".into(), 412)
    );
    let (_, status) = failure(
        c.head_object()
            .bucket("conditions")
            .key("k")
            .if_none_match(&etag2)
            .send()
            .await,
    );
    assert_eq!(status, 304);
}

async fn content_md5_is_checked(gw: &Gateway) {
    use base64::Engine;
    let c = gw.client();
    create_bucket(&c, "digests").await;
    let md5_of =
        |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(hex_decode(&md5_hex(b)));
    assert_eq!(
        failure(
            c.put_object()
                .bucket("digests")
                .key("k")
                .content_md5(md5_of(b"something else"))
                .body(ByteStream::from_static(b"payload"))
                .send()
                .await
        ),
        ("BadDigest".into(), 400)
    );
    let (_, status) = failure(c.head_object().bucket("digests").key("k").send().await);
    assert_eq!(status, 404, "a bad digest stores nothing");
    c.put_object()
        .bucket("digests")
        .key("k")
        .content_md5(md5_of(b"payload"))
        .body(ByteStream::from_static(b"payload"))
        .send()
        .await
        .unwrap();
    assert_eq!(get(&c, "digests", "k").await, b"payload");
}

/// A PutObject larger than a part (8 MiB) is one object with the MD5 of its body as ETag, as
/// on S3, over every store: a store that streams puts writes it as it arrives. A wrong
/// Content-MD5 on such a body stores nothing and leaves the previous object.
async fn large_puts_have_the_bodys_md5_as_etag(gw: &Gateway) {
    use base64::Engine;
    let c = gw.client();
    create_bucket(&c, "large").await;
    let body = data(12 * MIB + 3, 7);
    let etag = put(&c, "large", "big", &body).await;
    assert_eq!(etag, quoted(&md5_hex(&body)));
    let head = c
        .head_object()
        .bucket("large")
        .key("big")
        .send()
        .await
        .unwrap();
    assert_eq!(head.e_tag(), Some(etag.as_str()));
    assert_eq!(head.content_length(), Some(body.len() as i64));
    assert_bytes(&get(&c, "large", "big").await, &body, "GET large/big");
    let listed = c.list_objects_v2().bucket("large").send().await.unwrap();
    assert_eq!(listed.contents()[0].e_tag(), Some(etag.as_str()));

    let other = data(9 * MIB, 8);
    let wrong = base64::engine::general_purpose::STANDARD.encode(hex_decode(&md5_hex(b"no")));
    assert_eq!(
        failure(
            c.put_object()
                .bucket("large")
                .key("big")
                .content_md5(wrong)
                .body(ByteStream::from(other))
                .send()
                .await
        ),
        ("BadDigest".into(), 400)
    );
    assert_bytes(&get(&c, "large", "big").await, &body, "after a bad digest");
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

async fn deletes(gw: &Gateway) {
    let c = gw.client();
    create_bucket(&c, "deletes").await;
    for k in ["a", "b", "c/d"] {
        put(&c, "deletes", k, k.as_bytes()).await;
    }
    c.delete_object()
        .bucket("deletes")
        .key("a")
        .send()
        .await
        .unwrap();
    assert_eq!(
        failure(c.get_object().bucket("deletes").key("a").send().await),
        ("NoSuchKey".into(), 404)
    );
    // Deleting a missing key succeeds, as on S3.
    c.delete_object()
        .bucket("deletes")
        .key("a")
        .send()
        .await
        .unwrap();

    let ids = ["b", "c/d", "never-existed", "../escape"]
        .iter()
        .map(|k| ObjectIdentifier::builder().key(*k).build().unwrap())
        .collect::<Vec<_>>();
    let out = c
        .delete_objects()
        .bucket("deletes")
        .delete(Delete::builder().set_objects(Some(ids)).build().unwrap())
        .send()
        .await
        .unwrap();
    let mut deleted: Vec<&str> = out.deleted().iter().filter_map(|d| d.key()).collect();
    deleted.sort();
    assert_eq!(deleted, ["b", "c/d", "never-existed"]);
    let errors: Vec<(&str, &str)> = out
        .errors()
        .iter()
        .map(|e| (e.key().unwrap_or_default(), e.code().unwrap_or_default()))
        .collect();
    assert_eq!(errors, [("../escape", "InvalidArgument")]);
    // Quiet: only the errors are reported.
    put(&c, "deletes", "quiet", b"x").await;
    let ids = ["quiet", "../escape"]
        .iter()
        .map(|k| ObjectIdentifier::builder().key(*k).build().unwrap())
        .collect::<Vec<_>>();
    let out = c
        .delete_objects()
        .bucket("deletes")
        .delete(
            Delete::builder()
                .set_objects(Some(ids))
                .quiet(true)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert!(out.deleted().is_empty(), "{:?}", out.deleted());
    let errors: Vec<&str> = out.errors().iter().filter_map(|e| e.key()).collect();
    assert_eq!(errors, ["../escape"]);
    let listed = c.list_objects_v2().bucket("deletes").send().await.unwrap();
    assert!(listed.contents().is_empty(), "{:?}", listed.contents());
    // The bucket survives its objects (its marker stays).
    c.head_bucket().bucket("deletes").send().await.unwrap();
}

async fn list_objects(gw: &Gateway) {
    let c = gw.client();
    create_bucket(&c, "listing").await;
    let keys = ["a", "b/1", "b/2", "c/d/e", "c/f", "sp ace+"];
    for k in keys {
        put(&c, "listing", k, b"x").await;
    }
    // One level, grouped at '/'.
    let out = c
        .list_objects_v2()
        .bucket("listing")
        .delimiter("/")
        .send()
        .await
        .unwrap();
    let objects: Vec<&str> = out.contents().iter().filter_map(|o| o.key()).collect();
    let prefixes: Vec<&str> = out
        .common_prefixes()
        .iter()
        .filter_map(|p| p.prefix())
        .collect();
    assert_eq!(objects, ["a", "sp ace+"]);
    assert_eq!(prefixes, ["b/", "c/"]);
    assert_eq!(out.key_count(), Some(4));
    assert_eq!(out.contents()[0].size(), Some(1));
    assert_eq!(
        out.contents()[0].e_tag(),
        Some(quoted(&md5_hex(b"x")).as_str())
    );

    // A prefix.
    let out = c
        .list_objects_v2()
        .bucket("listing")
        .prefix("c/")
        .delimiter("/")
        .send()
        .await
        .unwrap();
    let objects: Vec<&str> = out.contents().iter().filter_map(|o| o.key()).collect();
    let prefixes: Vec<&str> = out
        .common_prefixes()
        .iter()
        .filter_map(|p| p.prefix())
        .collect();
    assert_eq!((objects, prefixes), (vec!["c/f"], vec!["c/d/"]));

    // Pages of two, through continuation tokens.
    let mut token = None;
    let mut pages = Vec::new();
    loop {
        let out = c
            .list_objects_v2()
            .bucket("listing")
            .max_keys(2)
            .set_continuation_token(token.take())
            .send()
            .await
            .unwrap();
        pages.push(
            out.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_string))
                .collect::<Vec<_>>(),
        );
        match out.next_continuation_token() {
            Some(t) => {
                assert_eq!(out.is_truncated(), Some(true));
                token = Some(t.to_string());
            }
            None => {
                assert_eq!(out.is_truncated(), Some(false));
                break;
            }
        }
    }
    assert_eq!(
        pages,
        [
            vec!["a", "b/1"],
            vec!["b/2", "c/d/e"],
            vec!["c/f", "sp ace+"]
        ]
    );

    // start-after.
    let out = c
        .list_objects_v2()
        .bucket("listing")
        .start_after("b/2")
        .send()
        .await
        .unwrap();
    let objects: Vec<&str> = out.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(objects, ["c/d/e", "c/f", "sp ace+"]);

    // encoding-type=url encodes keys (the SDK leaves decoding to the caller).
    let out = c
        .list_objects_v2()
        .bucket("listing")
        .prefix("sp")
        .encoding_type(EncodingType::Url)
        .send()
        .await
        .unwrap();
    let objects: Vec<&str> = out.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(objects, ["sp%20ace%2B"]);

    // ListObjects (v1) with marker and max-keys.
    let out = c
        .list_objects()
        .bucket("listing")
        .marker("a")
        .max_keys(2)
        .send()
        .await
        .unwrap();
    let objects: Vec<&str> = out.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(objects, ["b/1", "b/2"]);
    assert_eq!(out.is_truncated(), Some(true));
    assert_eq!(out.next_marker(), Some("b/2"));
    let out = c
        .list_objects()
        .bucket("listing")
        .marker("b/2")
        .delimiter("/")
        .send()
        .await
        .unwrap();
    let prefixes: Vec<&str> = out
        .common_prefixes()
        .iter()
        .filter_map(|p| p.prefix())
        .collect();
    assert_eq!(prefixes, ["c/"]);
    assert_eq!(out.is_truncated(), Some(false));

    assert_eq!(
        failure(
            c.list_objects_v2()
                .bucket("listing")
                .continuation_token("forged")
                .send()
                .await
        ),
        ("InvalidArgument".into(), 400)
    );

    // Pages of one with a delimiter: common prefixes count as entries and carry across pages.
    let mut token = None;
    let mut pages = Vec::new();
    loop {
        let out = c
            .list_objects_v2()
            .bucket("listing")
            .delimiter("/")
            .max_keys(1)
            .set_continuation_token(token.take())
            .send()
            .await
            .unwrap();
        let mut page: Vec<String> = out
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_string))
            .collect();
        page.extend(
            out.common_prefixes()
                .iter()
                .filter_map(|p| p.prefix().map(str::to_string)),
        );
        pages.push(page);
        match out.next_continuation_token() {
            Some(t) => token = Some(t.to_string()),
            None => break,
        }
        assert!(pages.len() <= 4, "paging must end: {pages:?}");
    }
    assert_eq!(pages, [["a"], ["b/"], ["c/"], ["sp ace+"]]);

    // encoding-type=url encodes prefixes too, in every listing.
    put(&c, "listing", "en coded/x+y", b"x").await;
    let out = c
        .list_objects_v2()
        .bucket("listing")
        .prefix("en")
        .delimiter("/")
        .encoding_type(EncodingType::Url)
        .send()
        .await
        .unwrap();
    let prefixes: Vec<&str> = out
        .common_prefixes()
        .iter()
        .filter_map(|p| p.prefix())
        .collect();
    assert_eq!(prefixes, ["en%20coded/"]);
    let out = c
        .list_objects()
        .bucket("listing")
        .prefix("en coded/")
        .encoding_type(EncodingType::Url)
        .send()
        .await
        .unwrap();
    let objects: Vec<&str> = out.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(objects, ["en%20coded/x%2By"]);
    let out = c
        .list_object_versions()
        .bucket("listing")
        .prefix("en coded/")
        .encoding_type(EncodingType::Url)
        .send()
        .await
        .unwrap();
    let versions: Vec<&str> = out.versions().iter().filter_map(|v| v.key()).collect();
    assert_eq!(versions, ["en%20coded/x%2By"]);
    c.delete_object()
        .bucket("listing")
        .key("en coded/x+y")
        .send()
        .await
        .unwrap();

    // ListObjectVersions: the unversioned answer (each object its one `null` version, latest),
    // paged by key marker like ListObjects.
    let out = c
        .list_object_versions()
        .bucket("listing")
        .max_keys(4)
        .send()
        .await
        .unwrap();
    let versions: Vec<(&str, &str, bool)> = out
        .versions()
        .iter()
        .map(|v| {
            (
                v.key().unwrap(),
                v.version_id().unwrap(),
                v.is_latest().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        versions,
        [
            ("a", "null", true),
            ("b/1", "null", true),
            ("b/2", "null", true),
            ("c/d/e", "null", true)
        ]
    );
    assert_eq!(out.versions()[0].size(), Some(1));
    assert_eq!(
        out.versions()[0].e_tag(),
        Some(quoted(&md5_hex(b"x")).as_str())
    );
    assert!(out.delete_markers().is_empty());
    assert_eq!(out.is_truncated(), Some(true));
    assert_eq!(
        (out.next_key_marker(), out.next_version_id_marker()),
        (Some("c/d/e"), Some("null"))
    );
    let out = c
        .list_object_versions()
        .bucket("listing")
        .key_marker("c/d/e")
        .version_id_marker("null")
        .send()
        .await
        .unwrap();
    let keys: Vec<&str> = out.versions().iter().filter_map(|v| v.key()).collect();
    assert_eq!(keys, ["c/f", "sp ace+"]);
    assert_eq!(out.is_truncated(), Some(false));
    let out = c
        .list_object_versions()
        .bucket("listing")
        .delimiter("/")
        .send()
        .await
        .unwrap();
    let keys: Vec<&str> = out.versions().iter().filter_map(|v| v.key()).collect();
    let prefixes: Vec<&str> = out
        .common_prefixes()
        .iter()
        .filter_map(|p| p.prefix())
        .collect();
    assert_eq!((keys, prefixes), (vec!["a", "sp ace+"], vec!["b/", "c/"]));
    let out = c
        .list_object_versions()
        .bucket("listing")
        .prefix("b/")
        .send()
        .await
        .unwrap();
    let keys: Vec<&str> = out.versions().iter().filter_map(|v| v.key()).collect();
    assert_eq!(keys, ["b/1", "b/2"]);
    for (key_marker, version_marker) in [
        (None, "null"),
        (Some("a"), "3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY"),
    ] {
        assert_eq!(
            failure(
                c.list_object_versions()
                    .bucket("listing")
                    .set_key_marker(key_marker.map(str::to_string))
                    .version_id_marker(version_marker)
                    .send()
                    .await
            ),
            ("InvalidArgument".into(), 400),
            "key marker {key_marker:?}, version-id marker {version_marker}"
        );
    }
}

async fn upload(c: &Client, bucket: &str, key: &str) -> String {
    c.create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .content_type("application/x-test")
        .metadata("origin", "mpu")
        .send()
        .await
        .unwrap()
        .upload_id()
        .expect("an upload id")
        .to_string()
}

async fn part(c: &Client, bucket: &str, key: &str, id: &str, n: i32, body: &[u8]) -> String {
    c.upload_part()
        .bucket(bucket)
        .key(key)
        .upload_id(id)
        .part_number(n)
        .body(ByteStream::from(body.to_vec()))
        .send()
        .await
        .unwrap_or_else(|e| panic!("upload part {n}: {e:?}"))
        .e_tag()
        .expect("a part ETag")
        .to_string()
}

fn completed(etags: &[String]) -> CompletedMultipartUpload {
    CompletedMultipartUpload::builder()
        .set_parts(Some(
            etags
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    CompletedPart::builder()
                        .part_number(i as i32 + 1)
                        .e_tag(e)
                        .build()
                })
                .collect(),
        ))
        .build()
}

async fn multipart(gw: &Gateway) {
    let c = gw.client();
    create_bucket(&c, "multipart").await;
    let first = data(5 * MIB, 1);
    let second = data(1000, 2);
    let id = upload(&c, "multipart", "big").await;
    let e1 = part(&c, "multipart", "big", &id, 1, &first).await;
    let e2 = part(&c, "multipart", "big", &id, 2, &second).await;
    assert_eq!(e1, quoted(&md5_hex(&first)));

    let parts = c
        .list_parts()
        .bucket("multipart")
        .key("big")
        .upload_id(&id)
        .send()
        .await
        .unwrap();
    let listed: Vec<(Option<i32>, Option<i64>)> = parts
        .parts()
        .iter()
        .map(|p| (p.part_number(), p.size()))
        .collect();
    assert_eq!(
        listed,
        [(Some(1), Some(5 * MIB as i64)), (Some(2), Some(1000))]
    );
    // Paged one part at a time: each page says where the next starts.
    let mut paged = Vec::new();
    let mut marker = None;
    loop {
        let page = c
            .list_parts()
            .bucket("multipart")
            .key("big")
            .upload_id(&id)
            .max_parts(1)
            .set_part_number_marker(marker.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(page.max_parts(), Some(1));
        paged.extend(
            page.parts()
                .iter()
                .map(|p| (p.part_number(), p.e_tag().map(str::to_string))),
        );
        if page.is_truncated() != Some(true) {
            break;
        }
        marker = page.next_part_number_marker().map(str::to_string);
        assert!(marker.is_some(), "a truncated page names the next marker");
        assert!(paged.len() <= 2, "paging must end: {paged:?}");
    }
    assert_eq!(
        paged,
        [(Some(1), Some(e1.clone())), (Some(2), Some(e2.clone()))]
    );
    let refused = failure(
        c.list_parts()
            .bucket("multipart")
            .key("big")
            .upload_id(&id)
            .max_parts(0)
            .send()
            .await,
    );
    assert_eq!(refused.0, "InvalidArgument", "{refused:?}");
    let uploads = c
        .list_multipart_uploads()
        .bucket("multipart")
        .send()
        .await
        .unwrap();
    let open: Vec<(&str, &str)> = uploads
        .uploads()
        .iter()
        .map(|u| {
            (
                u.key().unwrap_or_default(),
                u.upload_id().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(open, [("big", id.as_str())]);

    let out = c
        .complete_multipart_upload()
        .bucket("multipart")
        .key("big")
        .upload_id(&id)
        .multipart_upload(completed(&[e1.clone(), e2.clone()]))
        .send()
        .await
        .unwrap();
    let expected = multipart_etag([md5_hex(&first).as_str(), md5_hex(&second).as_str()]).unwrap();
    assert!(expected.ends_with("-2"));
    assert_eq!(out.e_tag(), Some(quoted(&expected).as_str()));
    let mut whole = first.clone();
    whole.extend_from_slice(&second);
    assert_eq!(get(&c, "multipart", "big").await, whole);
    let head = c
        .head_object()
        .bucket("multipart")
        .key("big")
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_type(), Some("application/x-test"));
    assert_eq!(
        head.metadata()
            .and_then(|m| m.get("origin"))
            .map(String::as_str),
        Some("mpu")
    );
    assert_eq!(head.e_tag(), Some(quoted(&expected).as_str()));

    // Parts but the last must be 5 MiB.
    let id = upload(&c, "multipart", "small").await;
    let s1 = part(&c, "multipart", "small", &id, 1, b"tiny").await;
    let s2 = part(&c, "multipart", "small", &id, 2, b"tiny too").await;
    assert_eq!(
        failure(
            c.complete_multipart_upload()
                .bucket("multipart")
                .key("small")
                .upload_id(&id)
                .multipart_upload(completed(&[s1, s2]))
                .send()
                .await
        ),
        ("EntityTooSmall".into(), 400)
    );

    // Complete with If-None-Match: * over an existing key fails.
    let id = upload(&c, "multipart", "big").await;
    let only = part(&c, "multipart", "big", &id, 1, b"replacement").await;
    assert_eq!(
        failure(
            c.complete_multipart_upload()
                .bucket("multipart")
                .key("big")
                .upload_id(&id)
                .if_none_match("*")
                .multipart_upload(completed(std::slice::from_ref(&only)))
                .send()
                .await
        ),
        ("PreconditionFailed".into(), 412)
    );
    // If-Match with another ETag: 412; on a key that does not exist: 404. Enforced by the
    // store: the local store does, as S3 does; moto (5.2) ignores If-Match on a complete.
    if gw.root.is_some() {
        assert_eq!(
            failure(
                c.complete_multipart_upload()
                    .bucket("multipart")
                    .key("big")
                    .upload_id(&id)
                    .if_match(quoted(&md5_hex(b"not this one")))
                    .multipart_upload(completed(std::slice::from_ref(&only)))
                    .send()
                    .await
            ),
            ("PreconditionFailed".into(), 412)
        );
        assert_eq!(get(&c, "multipart", "big").await, whole);
        let absent = upload(&c, "multipart", "absent").await;
        let part1 = part(&c, "multipart", "absent", &absent, 1, b"x").await;
        assert_eq!(
            failure(
                c.complete_multipart_upload()
                    .bucket("multipart")
                    .key("absent")
                    .upload_id(&absent)
                    .if_match(quoted(&md5_hex(b"x")))
                    .multipart_upload(completed(&[part1]))
                    .send()
                    .await
            ),
            ("NoSuchKey".into(), 404)
        );
        let (_, status) = failure(
            c.head_object()
                .bucket("multipart")
                .key("absent")
                .send()
                .await,
        );
        assert_eq!(status, 404);
        c.abort_multipart_upload()
            .bucket("multipart")
            .key("absent")
            .upload_id(&absent)
            .send()
            .await
            .unwrap();
    }

    // Abort frees the upload; a second abort finds nothing.
    let id = upload(&c, "multipart", "aborted").await;
    part(&c, "multipart", "aborted", &id, 1, b"x").await;
    c.abort_multipart_upload()
        .bucket("multipart")
        .key("aborted")
        .upload_id(&id)
        .send()
        .await
        .unwrap();
    assert_eq!(
        failure(
            c.abort_multipart_upload()
                .bucket("multipart")
                .key("aborted")
                .upload_id(&id)
                .send()
                .await
        ),
        ("NoSuchUpload".into(), 404)
    );
    let (_, status) = failure(
        c.head_object()
            .bucket("multipart")
            .key("aborted")
            .send()
            .await,
    );
    assert_eq!(status, 404);
}

/// ListMultipartUploads' paging (local store only: moto ignores the markers).
async fn list_uploads_paging(gw: &Gateway) {
    let c = gw.client();
    create_bucket(&c, "uploads").await;
    let mut expected = Vec::new();
    for key in ["a", "b", "b", "c"] {
        let id = upload(&c, "uploads", key).await;
        expected.push((key.to_string(), id));
    }
    expected.sort();
    let mut seen = Vec::new();
    let (mut key_marker, mut id_marker) = (None, None);
    loop {
        let out = c
            .list_multipart_uploads()
            .bucket("uploads")
            .max_uploads(1)
            .set_key_marker(key_marker.take())
            .set_upload_id_marker(id_marker.take())
            .send()
            .await
            .unwrap();
        assert!(out.uploads().len() <= 1);
        seen.extend(out.uploads().iter().map(|u| {
            (
                u.key().unwrap_or_default().to_string(),
                u.upload_id().unwrap_or_default().to_string(),
            )
        }));
        if out.is_truncated() != Some(true) {
            break;
        }
        key_marker = out.next_key_marker().map(str::to_string);
        id_marker = out.next_upload_id_marker().map(str::to_string);
        assert!(
            seen.len() <= expected.len(),
            "paging does not end: {seen:?}"
        );
    }
    assert_eq!(seen, expected);
    // A key-marker alone starts after every upload of that key.
    let out = c
        .list_multipart_uploads()
        .bucket("uploads")
        .key_marker("b")
        .send()
        .await
        .unwrap();
    let keys: Vec<&str> = out.uploads().iter().filter_map(|u| u.key()).collect();
    assert_eq!(keys, ["c"]);
}

async fn upload_part_copy(gw: &Gateway) {
    let c = gw.client();
    create_bucket(&c, "partcopy").await;
    let source = data(6 * MIB, 9);
    put(&c, "partcopy", "source", &source).await;
    let id = upload(&c, "partcopy", "copy").await;
    let copy = |n: i32, range: &str| {
        c.upload_part_copy()
            .bucket("partcopy")
            .key("copy")
            .upload_id(&id)
            .part_number(n)
            .copy_source("partcopy/source")
            .copy_source_range(range)
            .send()
    };
    let e1 = copy(1, &format!("bytes=0-{}", 5 * MIB - 1))
        .await
        .unwrap()
        .copy_part_result()
        .and_then(|r| r.e_tag())
        .expect("an ETag")
        .to_string();
    assert_eq!(e1, quoted(&md5_hex(&source[..5 * MIB])));
    let e2 = copy(2, &format!("bytes={}-{}", 5 * MIB, 6 * MIB - 1))
        .await
        .unwrap()
        .copy_part_result()
        .and_then(|r| r.e_tag())
        .expect("an ETag")
        .to_string();
    assert_eq!(
        failure(copy(3, &format!("bytes={}-{}", 6 * MIB, 7 * MIB)).await),
        ("InvalidRange".into(), 416)
    );
    c.complete_multipart_upload()
        .bucket("partcopy")
        .key("copy")
        .upload_id(&id)
        .multipart_upload(completed(&[e1, e2]))
        .send()
        .await
        .unwrap();
    assert_eq!(get(&c, "partcopy", "copy").await, source);

    // Ranges across the gateway's 1 MiB reads.
    let got = c
        .get_object()
        .bucket("partcopy")
        .key("copy")
        .range("bytes=1048000-3146000")
        .send()
        .await
        .unwrap();
    assert_eq!(got.content_range(), Some("bytes 1048000-3146000/6291456"));
    assert_eq!(got.content_length(), Some(3146001 - 1048000));
    assert_eq!(
        got.body.collect().await.unwrap().into_bytes().to_vec(),
        &source[1048000..3146001]
    );
    let got = c
        .get_object()
        .bucket("partcopy")
        .key("copy")
        .range(format!("bytes=-{}", 2 * MIB + 5))
        .send()
        .await
        .unwrap();
    assert_eq!(
        got.body.collect().await.unwrap().into_bytes().to_vec(),
        &source[4 * MIB - 5..]
    );
}

async fn copy_object(gw: &Gateway) {
    let c = gw.client();
    create_bucket(&c, "copies").await;
    create_bucket(&c, "copies-dest").await;
    c.put_object()
        .bucket("copies")
        .key("src")
        .content_type("text/plain")
        .metadata("k", "v")
        .body(ByteStream::from_static(b"copied bytes"))
        .send()
        .await
        .unwrap();

    // COPY (the default) keeps the metadata; across buckets too.
    let out = c
        .copy_object()
        .bucket("copies-dest")
        .key("same-meta")
        .copy_source("copies/src")
        .send()
        .await
        .unwrap();
    assert_eq!(
        out.copy_object_result().and_then(|r| r.e_tag()),
        Some(quoted(&md5_hex(b"copied bytes")).as_str())
    );
    let head = c
        .head_object()
        .bucket("copies-dest")
        .key("same-meta")
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_type(), Some("text/plain"));
    assert_eq!(
        head.metadata().and_then(|m| m.get("k")).map(String::as_str),
        Some("v")
    );
    assert_eq!(get(&c, "copies-dest", "same-meta").await, b"copied bytes");

    // REPLACE takes the request's metadata.
    c.copy_object()
        .bucket("copies")
        .key("new-meta")
        .copy_source("copies/src")
        .metadata_directive(MetadataDirective::Replace)
        .content_type("application/json")
        .metadata("fresh", "yes")
        .send()
        .await
        .unwrap();
    let head = c
        .head_object()
        .bucket("copies")
        .key("new-meta")
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_type(), Some("application/json"));
    let metadata = head.metadata().cloned().unwrap_or_default();
    assert_eq!(
        metadata,
        HashMap::from([("fresh".to_string(), "yes".to_string())])
    );

    // Onto itself without REPLACE is refused, as on S3; a missing source is NoSuchKey.
    assert_eq!(
        failure(
            c.copy_object()
                .bucket("copies")
                .key("src")
                .copy_source("copies/src")
                .send()
                .await
        ),
        ("InvalidRequest".into(), 400)
    );
    assert_eq!(
        failure(
            c.copy_object()
                .bucket("copies")
                .key("x")
                .copy_source("copies/missing")
                .send()
                .await
        ),
        ("NoSuchKey".into(), 404)
    );
    // A source condition that fails is 412.
    assert_eq!(
        failure(
            c.copy_object()
                .bucket("copies")
                .key("x")
                .copy_source("copies/src")
                .copy_source_if_match(quoted(&md5_hex(b"other")))
                .send()
                .await
        ),
        ("PreconditionFailed".into(), 412)
    );
}

async fn signatures_are_checked(gw: &Gateway) {
    create_bucket(&gw.client(), "signed").await;
    let wrong_secret = client(gw.addr, ACCESS_KEY, "not-the-secret");
    // s3s answers these with a code alone; the gateway completes the error as S3 writes it.
    let err = wrong_secret.list_buckets().send().await.unwrap_err();
    assert!(
        err.message().is_some_and(|m| m.contains("signature")),
        "{err:?}"
    );
    {
        use aws_sdk_s3::operation::RequestId;
        assert!(err.request_id().is_some_and(|id| id.len() == 16), "{err:?}");
    }
    assert_eq!(
        failure(wrong_secret.list_buckets().send().await),
        ("SignatureDoesNotMatch".into(), 403)
    );
    assert_eq!(
        failure(
            wrong_secret
                .put_object()
                .bucket("signed")
                .key("k")
                .body(ByteStream::from_static(b"x"))
                .send()
                .await
        ),
        ("SignatureDoesNotMatch".into(), 403)
    );
    let unknown = client(gw.addr, "unknown-key", SECRET_KEY);
    assert_eq!(
        failure(unknown.list_buckets().send().await),
        ("InvalidAccessKeyId".into(), 403)
    );
    // An unsigned request is refused too.
    let status = raw_status(gw.addr, "GET /signed/k HTTP/1.1");
    assert_eq!(status, 403);
    let (_, status) = failure(
        gw.client()
            .head_object()
            .bucket("signed")
            .key("k")
            .send()
            .await,
    );
    assert_eq!(status, 404, "nothing was written by the refused requests");

    // Refused on its headers while the client still sends 16 MiB of body: the gateway reads
    // and discards the body before it closes (s3_gateway::linger), so the client's writes all
    // go through and it reads the 403, not a reset. Three times, as a reset depends on timing.
    for _ in 0..3 {
        let addr = gw.addr;
        let (status, answer) = tokio::task::spawn_blocking(move || {
            raw_request(addr, "PUT /signed/big HTTP/1.1", Some(16 << 20))
        })
        .await
        .unwrap();
        assert_eq!(status, 403, "{answer}");
    }
}

/// Sends one raw HTTP/1.1 request, with a body of `body_len` bytes if given, all of it before
/// reading the answer (as clients that do not wait for `100-continue` do): its status and text.
/// Panics if the body cannot be sent or no answer arrives.
fn raw_request(addr: SocketAddr, request_line: &str, body_len: Option<usize>) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let length = body_len.map_or(String::new(), |n| format!("Content-Length: {n}\r\n"));
    write!(
        stream,
        "{request_line}\r\nHost: {addr}\r\n{length}Connection: close\r\n\r\n"
    )
    .unwrap();
    if let Some(len) = body_len {
        stream
            .write_all(&vec![b'x'; len])
            .expect("the whole body is sent: the gateway drains what it refused");
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {answer:?}"));
    (status, answer)
}

/// The status of one raw HTTP/1.1 request without a body.
fn raw_status(addr: SocketAddr, request_line: &str) -> u16 {
    raw_request(addr, request_line, None).0
}

/// Streaming payloads: an SDK client that adds checksums (`WhenSupported`, the SDK's default)
/// sends a file body aws-chunked with a CRC32 trailer; the object is the decoded bytes, with
/// the ETag of a plain PUT.
async fn aws_chunked_payloads(gw: &Gateway) {
    use aws_sdk_s3::config::RequestChecksumCalculation;

    let c = gw.client();
    create_bucket(&c, "chunked").await;
    let checksumming = Client::from_conf(
        c.config()
            .to_builder()
            .request_checksum_calculation(RequestChecksumCalculation::WhenSupported)
            .build(),
    );
    let dir = tempfile::tempdir().unwrap();
    for (key, len) in [("small", 3000), ("large", 3 * MIB + 17)] {
        let bytes = data(len, 5);
        let path = dir.path().join(key);
        std::fs::write(&path, &bytes).unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let out = checksumming
            .put_object()
            .bucket("chunked")
            .key(key)
            .body(ByteStream::from_path(&path).await.unwrap())
            .customize()
            .mutate_request({
                let seen = seen.clone();
                move |req| {
                    *seen.lock().unwrap() = req
                        .headers()
                        .iter()
                        .map(|(n, v)| format!("{n}: {v}"))
                        .collect();
                }
            })
            .send()
            .await
            .unwrap_or_else(|e| panic!("aws-chunked PUT of {key}: {e:?}"));
        let seen = seen.lock().unwrap().clone();
        for header in [
            "content-encoding: aws-chunked",
            "x-amz-trailer: x-amz-checksum-crc32",
        ] {
            assert!(
                seen.iter().any(|h| h == header),
                "{key}: the SDK's request has no {header}: {seen:?}"
            );
        }
        assert_eq!(
            out.e_tag(),
            Some(quoted(&md5_hex(&bytes)).as_str()),
            "{key}"
        );
        assert_bytes(&get(&c, "chunked", key).await, &bytes, key);
    }

    // Signed streaming payloads (STREAMING-AWS4-HMAC-SHA256-PAYLOAD, each chunk signed with
    // the previous signature), as the Java SDK and others send them: stored decoded, and a
    // chunk altered after signing is refused with nothing stored.
    let body = data(150 * 1024, 7);
    let (status, answer) =
        signed_chunked_put(gw.addr, "/chunked/signed", &body, 64 * 1024, None).await;
    assert_eq!(status, 200, "{answer}");
    assert_bytes(&get(&c, "chunked", "signed").await, &body, "signed");
    let (status, answer) =
        signed_chunked_put(gw.addr, "/chunked/tampered", &body, 64 * 1024, Some(70_000)).await;
    assert_eq!(status, 403, "{answer}");
    assert!(answer.contains("SignatureDoesNotMatch"), "{answer}");
    assert!(
        c.head_object()
            .bucket("chunked")
            .key("tampered")
            .send()
            .await
            .is_err()
    );
}

/// A PUT of `body` to `path` as a signed aws-chunked stream of `chunk`-byte chunks, signed
/// with the tests' key pair by hand (SigV4's streaming form: a seed signature over the
/// headers, then one signature per chunk chained from it). With `tamper`, the byte at that
/// offset is changed after the chunks are signed. Returns the status and the answer.
async fn signed_chunked_put(
    addr: SocketAddr,
    path: &str,
    body: &[u8],
    chunk: usize,
    tamper: Option<usize>,
) -> (u16, String) {
    use aws_sigv4::sign::v4::{calculate_signature, generate_signing_key};
    use sha2::{Digest, Sha256};

    let sha256_hex = |bytes: &[u8]| hex::encode(Sha256::digest(bytes));
    let now = std::time::SystemTime::now();
    let stamp = DateTime::from(now)
        .fmt(aws_sdk_s3::primitives::DateTimeFormat::DateTime)
        .unwrap();
    // 2026-11-27T00:15:07(.123)Z -> 20261127T001507Z
    let seconds = stamp.split(['.', 'Z']).next().unwrap_or_default();
    let amz_date: String = seconds
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .chain(['Z'])
        .collect();
    let date = &amz_date[..8];
    let region = "us-east-1";
    let scope = format!("{date}/{region}/s3/aws4_request");
    let key = generate_signing_key(SECRET_KEY, now, region, "s3");

    // The framing's length is known before signing: each chunk's header holds a 64-digit
    // signature whatever its value.
    let header_len = |n: usize| format!("{n:x}").len() + ";chunk-signature=".len() + 64 + 2;
    let sizes: Vec<usize> = body.chunks(chunk).map(<[u8]>::len).chain([0]).collect();
    let encoded_len: usize = sizes.iter().map(|&n| header_len(n) + n + 2).sum();
    let host = addr.to_string();
    let canonical = format!(
        "PUT\n{path}\n\ncontent-encoding:aws-chunked\ncontent-length:{encoded_len}\nhost:{host}\n\
         x-amz-content-sha256:STREAMING-AWS4-HMAC-SHA256-PAYLOAD\nx-amz-date:{amz_date}\n\
         x-amz-decoded-content-length:{}\n\n\
         content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length\n\
         STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        body.len()
    );
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical.as_bytes())
    );
    let seed = calculate_signature(&key, to_sign.as_bytes());
    let mut previous = seed.clone();
    let mut encoded = Vec::with_capacity(encoded_len);
    let empty_hash = sha256_hex(b"");
    for piece in body.chunks(chunk).chain([&[][..]]) {
        let to_sign = format!(
            "AWS4-HMAC-SHA256-PAYLOAD\n{amz_date}\n{scope}\n{previous}\n{empty_hash}\n{}",
            sha256_hex(piece)
        );
        let signature = calculate_signature(&key, to_sign.as_bytes());
        encoded.extend_from_slice(
            format!("{:x};chunk-signature={signature}\r\n", piece.len()).as_bytes(),
        );
        encoded.extend_from_slice(piece);
        encoded.extend_from_slice(b"\r\n");
        previous = signature;
    }
    assert_eq!(encoded.len(), encoded_len);
    if let Some(at) = tamper {
        // The offset in the body, past the framing of the chunks before it and of its own.
        let chunk_index = at / chunk;
        let framing: usize = sizes[..=chunk_index]
            .iter()
            .map(|&n| header_len(n))
            .sum::<usize>()
            + chunk_index * 2;
        encoded[framing + at] ^= 0xff;
    }
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: {host}\r\nContent-Encoding: aws-chunked\r\n\
         Content-Length: {encoded_len}\r\nX-Amz-Content-Sha256: STREAMING-AWS4-HMAC-SHA256-PAYLOAD\r\n\
         X-Amz-Date: {amz_date}\r\nX-Amz-Decoded-Content-Length: {}\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/{scope}, \
         SignedHeaders=content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length, \
         Signature={seed}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        // A write may fail once the gateway has refused and closed: its answer is the point.
        let _ = stream
            .write_all(head.as_bytes())
            .and_then(|()| stream.write_all(&encoded));
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer).into_owned();
        let status = answer
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no HTTP status in {answer:?}"));
        (status, answer)
    })
    .await
    .unwrap()
}

/// Sends `head` (the request line and headers, without the blank line), then `body`, or only
/// its first `send` bytes before closing the connection; returns the answer's status and text,
/// or `None` when the gateway closed without one.
fn raw_exchange(addr: SocketAddr, head: &str, body: &[u8], send: usize) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // A write may fail once the gateway has answered and closed: what it answered is the point.
    let _ = stream
        .write_all(format!("{head}\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .and_then(|()| stream.write_all(&body[..send.min(body.len())]));
    if send < body.len() {
        return None; // a client that goes away mid-body: no answer to wait for
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, answer))
}

/// A presigned request as a raw request head: its method, path and query, and the headers it
/// must carry.
async fn presigned_head<E: std::fmt::Debug>(
    request: impl std::future::Future<Output = Result<aws_sdk_s3::presigning::PresignedRequest, E>>,
) -> String {
    let presigned = request.await.expect("presign");
    // http://HOST:PORT/path?query: the path and query start at the third slash.
    let uri = presigned.uri();
    let path = uri
        .match_indices('/')
        .nth(2)
        .map_or("/", |(at, _)| &uri[at..]);
    let mut head = format!("{} {path} HTTP/1.1", presigned.method());
    for (name, value) in presigned.headers() {
        if !name.eq_ignore_ascii_case("host") {
            head.push_str(&format!("\r\n{name}: {value}"));
        }
    }
    head
}

/// Bad input through HTTP: presigned URLs (good, expired, tampered), malformed XML, keys with
/// NUL or over 1,024 bytes, oversize headers, a body longer than its Content-Length, a client
/// gone mid-body. Each gets its S3 error or a clean close, and what is stored stays as it was.
async fn bad_input_is_refused(gw: &Gateway) {
    use aws_sdk_s3::presigning::PresigningConfig;

    let c = gw.client();
    create_bucket(&c, "bad").await;
    put(&c, "bad", "keep", b"precious").await;
    let addr = gw.addr;
    let exchange = |head: String, body: Vec<u8>, send: usize| {
        tokio::task::spawn_blocking(move || raw_exchange(addr, &head, &body, send))
    };
    let valid = || PresigningConfig::expires_in(Duration::from_secs(600)).unwrap();

    // Presigned GET and PUT work; an expired or tampered URL is refused.
    let head = presigned_head(c.get_object().bucket("bad").key("keep").presigned(valid())).await;
    let (status, answer) = exchange(head, Vec::new(), 0).await.unwrap().unwrap();
    assert_eq!(status, 200, "{answer}");
    assert!(answer.ends_with("precious"), "{answer}");
    let head = presigned_head(
        c.put_object()
            .bucket("bad")
            .key("presigned")
            .presigned(valid()),
    )
    .await;
    let (status, answer) = exchange(format!("{head}\r\nContent-Length: 4"), b"body".to_vec(), 4)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(get(&c, "bad", "presigned").await, b"body");
    let expired = PresigningConfig::builder()
        .start_time(std::time::SystemTime::now() - Duration::from_secs(3600))
        .expires_in(Duration::from_secs(60))
        .build()
        .unwrap();
    let head = presigned_head(c.get_object().bucket("bad").key("keep").presigned(expired)).await;
    let (status, answer) = exchange(head, Vec::new(), 0).await.unwrap().unwrap();
    assert_eq!(status, 403, "{answer}");
    assert!(answer.contains("<Code>AccessDenied</Code>"), "{answer}");
    let head = presigned_head(c.get_object().bucket("bad").key("keep").presigned(valid())).await;
    // One hex digit of the signature changed.
    let at = head.find("X-Amz-Signature=").unwrap() + "X-Amz-Signature=".len();
    let mut tampered = head.clone();
    let flipped = if &head[at..=at] == "0" { "1" } else { "0" };
    tampered.replace_range(at..=at, flipped);
    let (status, answer) = exchange(tampered, Vec::new(), 0).await.unwrap().unwrap();
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer.contains("<Code>SignatureDoesNotMatch</Code>"),
        "{answer}"
    );

    // Malformed XML for CompleteMultipartUpload: the SDK's request with its body replaced
    // before it is signed.
    let id = upload(&c, "bad", "mp").await;
    let malformed: &'static [u8] = b"<CompleteMultipartUpload><Part><PartNumber>1</Part";
    let answer = c
        .complete_multipart_upload()
        .bucket("bad")
        .key("mp")
        .upload_id(&id)
        .multipart_upload(completed(&["\"00\"".to_string()]))
        .customize()
        .mutate_request(move |req| {
            *req.body_mut() = ByteStream::from_static(malformed).into_inner();
            req.headers_mut()
                .insert("content-length", malformed.len().to_string());
        })
        .send()
        .await;
    assert_eq!(failure(answer), ("MalformedXML".into(), 400));

    // Keys with NUL or over 1,024 bytes.
    for key in ["nul\0key".to_string(), "k".repeat(1025)] {
        let (code, status) = failure(
            c.put_object()
                .bucket("bad")
                .key(&key)
                .body(ByteStream::from_static(b"x"))
                .send()
                .await,
        );
        assert_eq!(status, 400, "{} bytes: {code}", key.len());
    }

    // Oversize headers: an error status or a clean close, never a hang.
    let head = format!(
        "GET /bad/keep HTTP/1.1\r\nX-Padding: {}",
        "p".repeat(256 * 1024)
    );
    if let Some((status, answer)) = exchange(head, Vec::new(), 0).await.unwrap() {
        assert!((400..500).contains(&status), "{answer}");
    }

    // A body longer than its Content-Length: the object takes exactly the declared bytes (what
    // follows would be the next request, and this connection is closed after the first).
    let head = presigned_head(c.put_object().bucket("bad").key("exact").presigned(valid())).await;
    let body = b"fourGARBAGE AFTER THE BODY\r\n\r\n".to_vec();
    let len = body.len();
    let (status, answer) = exchange(format!("{head}\r\nContent-Length: 4"), body, len)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(get(&c, "bad", "exact").await, b"four");

    // A client gone mid-body over an existing key: the key keeps its object.
    let head = presigned_head(c.put_object().bucket("bad").key("keep").presigned(valid())).await;
    let body = vec![b'z'; 1 << 20];
    assert!(
        exchange(
            format!("{head}\r\nContent-Length: {}", body.len()),
            body,
            100 << 10
        )
        .await
        .unwrap()
        .is_none()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(&c, "bad", "keep").await, b"precious");
    let listed = c.list_objects_v2().bucket("bad").send().await.unwrap();
    let keys: Vec<&str> = listed.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(keys, ["exact", "keep", "presigned"]);
}

async fn keys_cannot_escape(gw: &Gateway) {
    let c = gw.client();
    create_bucket(&c, "escape").await;
    for key in ["../outside", "a/../../outside", "./x"] {
        let (code, status) = failure(
            c.put_object()
                .bucket("escape")
                .key(key)
                .body(ByteStream::from_static(b"x"))
                .send()
                .await,
        );
        assert_eq!(status, 400, "{key}: {code}");
        let (_, status) = failure(c.get_object().bucket("escape").key(key).send().await);
        assert!(status == 400 || status == 404, "{key}: {status}");
    }
    let listed = c.list_objects_v2().bucket("escape").send().await.unwrap();
    assert!(listed.contents().is_empty(), "{:?}", listed.contents());
    if let Some(root) = &gw.root {
        let parent = root.parent().unwrap();
        assert!(!parent.join("outside").exists());
        assert!(!root.join("outside").exists());
    }
    // Raw requests, which no SDK normalizes: a `..` segment in the path.
    let status = raw_status(gw.addr, "GET /escape/../escape/x HTTP/1.1");
    assert!(status >= 400, "{status}");
}

// ---- appends (x-amz-write-offset-bytes) ----

async fn append(
    c: &Client,
    bucket: &str,
    key: &str,
    offset: u64,
    body: &[u8],
) -> Result<String, (String, u16)> {
    let result = c
        .put_object()
        .bucket(bucket)
        .key(key)
        .write_offset_bytes(offset as i64)
        .body(ByteStream::from(body.to_vec()))
        .send()
        .await;
    match result {
        Ok(out) => Ok(out.e_tag().expect("an append returns an ETag").to_string()),
        Err(e) => Err(failure::<(), _>(Err(e))),
    }
}

/// Compares bytes without printing megabytes when they differ.
#[track_caller]
fn assert_bytes(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let first = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{what}: {} bytes, want {} (first difference at {first:?})",
            got.len(),
            want.len()
        );
    }
}

/// Size, ETag of a HEAD.
async fn head(c: &Client, bucket: &str, key: &str) -> (i64, String) {
    let out = c
        .head_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("head {bucket}/{key}: {e:?}"));
    (
        out.content_length().unwrap_or(-1),
        out.e_tag().unwrap_or_default().to_string(),
    )
}

/// The size a ListObjectsV2 of the bucket reports for `key`.
async fn listed_size(c: &Client, bucket: &str, key: &str) -> Option<i64> {
    let out = c
        .list_objects_v2()
        .bucket(bucket)
        .send()
        .await
        .expect("list");
    out.contents()
        .iter()
        .find(|o| o.key() == Some(key))
        .and_then(|o| o.size())
}

async fn get_range(c: &Client, bucket: &str, key: &str, range: &str) -> Vec<u8> {
    c.get_object()
        .bucket(bucket)
        .key(key)
        .range(range)
        .send()
        .await
        .unwrap_or_else(|e| panic!("get {bucket}/{key} {range}: {e:?}"))
        .body
        .collect()
        .await
        .expect("read the body")
        .into_bytes()
        .to_vec()
}

/// Waits until the idle sealer has committed `key` with `want` in the backend store.
async fn wait_sealed(gw: &Gateway, key: &str, want: &[u8]) {
    let deadline = Instant::now() + SEAL_AFTER * 20;
    loop {
        let got = gw.store.get(key, None).await.ok().map(|g| g.body.to_vec());
        if got.as_deref() == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{key} was not sealed in the store: it holds {:?} bytes, want {}",
            got.map(|g| g.len()),
            want.len()
        );
        tokio::time::sleep(SEAL_AFTER / 3).await;
    }
}

async fn appends(gw: &Gateway) {
    let c = gw.client();
    create_bucket(&c, "app").await;
    let mut want = Vec::new();

    // Offset 0 on a missing key creates it; every acknowledged append is visible at once.
    let first = append(&c, "app", "log", 0, b"hello ").await.unwrap();
    want.extend_from_slice(b"hello ");
    assert_eq!(head(&c, "app", "log").await, (6, first.clone()));
    assert_bytes(&get(&c, "app", "log").await, &want, "GET app/log");
    assert_eq!(listed_size(&c, "app", "log").await, Some(6));
    let second = append(&c, "app", "log", 6, b"world").await.unwrap();
    want.extend_from_slice(b"world");
    assert_ne!(first, second, "the ETag changes with every append");
    assert_eq!(head(&c, "app", "log").await, (11, second));
    assert_eq!(get_range(&c, "app", "log", "bytes=3-7").await, b"lo wo");
    assert_eq!(get_range(&c, "app", "log", "bytes=-3").await, b"rld");
    assert_eq!(listed_size(&c, "app", "log").await, Some(11));

    // The wrong offset, an empty body, an offset on a missing key.
    for offset in [0, 5, 12, 1000] {
        assert_eq!(
            append(&c, "app", "log", offset, b"x").await.unwrap_err(),
            ("InvalidWriteOffset".to_string(), 400),
            "offset {offset}"
        );
    }
    assert_eq!(
        append(&c, "app", "log", 11, b"").await.unwrap_err(),
        ("InvalidRequest".to_string(), 400)
    );
    assert_eq!(
        append(&c, "app", "missing", 3, b"x").await.unwrap_err(),
        ("InvalidWriteOffset".to_string(), 400)
    );
    assert_eq!(
        get(&c, "app", "log").await,
        want,
        "failed appends change nothing"
    );

    // An append crossing the part size of appendable objects (5 MiB): parts are uploaded, and
    // read back while open.
    let big = data(9 * MIB, 7);
    append(&c, "app", "log", want.len() as u64, &big)
        .await
        .unwrap();
    want.extend_from_slice(&big);
    assert_bytes(&get(&c, "app", "log").await, &want, "GET app/log");
    let tail = format!("bytes={}-{}", want.len() - 20 - MIB, want.len() - 1);
    assert_eq!(
        get_range(&c, "app", "log", &tail).await,
        &want[want.len() - 20 - MIB..]
    );

    // Idle for longer than --seal-after: the store's object is complete, with a real ETag.
    wait_sealed(gw, "app/log", &want).await;
    let (size, etag) = head(&c, "app", "log").await;
    assert_eq!(size, want.len() as i64);
    assert!(!etag.contains("-open"), "{etag}");
    assert_bytes(&get(&c, "app", "log").await, &want, "GET app/log");

    // Appending to a sealed (or any existing) object goes on from its size.
    append(&c, "app", "log", want.len() as u64, b"!")
        .await
        .unwrap();
    want.push(b'!');
    assert_bytes(&get(&c, "app", "log").await, &want, "GET app/log");
    put(&c, "app", "plain", b"base").await;
    append(&c, "app", "plain", 4, b"+more").await.unwrap();
    assert_eq!(get(&c, "app", "plain").await, b"base+more");

    // Two appends at the same offset: exactly one wins.
    let len = want.len() as u64;
    let (a, b) = tokio::join!(
        append(&c, "app", "log", len, b"AAAA"),
        append(&c, "app", "log", len, b"BBBB")
    );
    let winner: &[u8] = match (&a, &b) {
        (Ok(_), Err(e)) | (Err(e), Ok(_)) => {
            assert_eq!(e, &("InvalidWriteOffset".to_string(), 400));
            if a.is_ok() { b"AAAA" } else { b"BBBB" }
        }
        other => panic!("exactly one append must win: {other:?}"),
    };
    want.extend_from_slice(winner);
    assert_bytes(&get(&c, "app", "log").await, &want, "GET app/log");
    wait_sealed(gw, "app/log", &want).await;

    // A plain PUT over an open object replaces it for good (the open object is sealed first,
    // and nothing of it comes back later); likewise a delete.
    append(&c, "app", "log", want.len() as u64, b"more")
        .await
        .unwrap();
    put(&c, "app", "log", b"replaced").await;
    assert_eq!(get(&c, "app", "log").await, b"replaced");
    assert_eq!(head(&c, "app", "log").await.0, 8);
    append(&c, "app", "doomed", 0, b"short-lived")
        .await
        .unwrap();
    c.delete_object()
        .bucket("app")
        .key("doomed")
        .send()
        .await
        .unwrap();
    tokio::time::sleep(SEAL_AFTER * 3).await;
    assert_eq!(
        gw.store.get("app/log", None).await.unwrap().body.as_ref(),
        b"replaced"
    );
    assert!(gw.store.head_opt("app/doomed").await.unwrap().is_none());
    let (code, status) = failure(c.get_object().bucket("app").key("doomed").send().await);
    assert_eq!((code.as_str(), status), ("NoSuchKey", 404));

    // CompleteMultipartUpload onto an open object replaces it for good too.
    append(&c, "app", "mp", 0, b"appended").await.unwrap();
    let id = upload(&c, "app", "mp").await;
    let etag = part(&c, "app", "mp", &id, 1, b"from a multipart upload").await;
    c.complete_multipart_upload()
        .bucket("app")
        .key("mp")
        .upload_id(&id)
        .multipart_upload(completed(&[etag]))
        .send()
        .await
        .unwrap();
    assert_eq!(get(&c, "app", "mp").await, b"from a multipart upload");
    wait_sealed(gw, "app/mp", b"from a multipart upload").await;
    tokio::time::sleep(SEAL_AFTER * 3).await;
    assert_eq!(
        gw.store.get("app/mp", None).await.unwrap().body.as_ref(),
        b"from a multipart upload"
    );

    // A copy of an open object copies everything appended.
    append(&c, "app", "src", 0, b"copy me").await.unwrap();
    c.copy_object()
        .bucket("app")
        .key("copy")
        .copy_source("app/src")
        .send()
        .await
        .unwrap();
    assert_eq!(get(&c, "app", "copy").await, b"copy me");

    // The Content-Type and metadata of the append that creates an object, and those of an
    // object appended to, are the sealed object's (Rivulet's own marks are not).
    c.put_object()
        .bucket("app")
        .key("typed")
        .write_offset_bytes(0)
        .content_type("text/csv")
        .metadata("origin", "sensor-7")
        .body(ByteStream::from_static(b"a,b\n"))
        .send()
        .await
        .unwrap();
    c.put_object()
        .bucket("app")
        .key("kept")
        .content_type("application/x-ndjson")
        .metadata("origin", "put")
        .body(ByteStream::from_static(b"{}\n"))
        .send()
        .await
        .unwrap();
    append(&c, "app", "typed", 4, b"c,d\n").await.unwrap();
    append(&c, "app", "kept", 3, b"{}\n").await.unwrap();
    wait_sealed(gw, "app/typed", b"a,b\nc,d\n").await;
    wait_sealed(gw, "app/kept", b"{}\n{}\n").await;
    for (key, content_type, origin) in [
        ("typed", "text/csv", "sensor-7"),
        ("kept", "application/x-ndjson", "put"),
    ] {
        let h = c.head_object().bucket("app").key(key).send().await.unwrap();
        assert_eq!(h.content_type(), Some(content_type), "{key}");
        let metadata = h.metadata().cloned().unwrap_or_default();
        assert_eq!(
            metadata.get("origin").map(String::as_str),
            Some(origin),
            "{key}"
        );
        assert!(
            metadata.keys().all(|k| !k.starts_with("rivulet-")),
            "{key}: {metadata:?}"
        );
    }
}

/// The standard headers S3 keeps with an object (Content-Encoding, Content-Disposition,
/// Content-Language, Cache-Control, Expires, besides Content-Type) come back on GET and HEAD,
/// through every way an object is written, and GET's `response-*` parameters override them.
async fn standard_headers(gw: &Gateway) {
    let c = gw.client();
    create_bucket(&c, "headers").await;
    let expires = DateTime::from_secs(1_924_992_000); // 2031-01-01
    macro_rules! with_headers {
        ($req:expr, $type:expr) => {
            $req.content_type($type)
                .content_encoding("gzip")
                .content_disposition("attachment; filename=\"a b.csv\"")
                .content_language("en-GB")
                .cache_control("max-age=60")
                .expires(expires)
        };
    }
    macro_rules! assert_headers {
        ($out:expr, $type:expr, $what:expr) => {{
            let out = &$out;
            assert_eq!(out.content_type(), Some($type), "{}", $what);
            assert_eq!(out.content_encoding(), Some("gzip"), "{}", $what);
            assert_eq!(
                out.content_disposition(),
                Some("attachment; filename=\"a b.csv\""),
                "{}",
                $what
            );
            assert_eq!(out.content_language(), Some("en-GB"), "{}", $what);
            assert_eq!(out.cache_control(), Some("max-age=60"), "{}", $what);
            assert_eq!(
                out.expires_string(),
                Some("Wed, 01 Jan 2031 00:00:00 GMT"),
                "{}",
                $what
            );
        }};
    }
    let head = |key: &'static str| c.head_object().bucket("headers").key(key).send();

    // A small PUT and a large one (streamed into a multipart upload of the store).
    for (key, len) in [("small", 100), ("large", 12 * MIB + 3)] {
        with_headers!(c.put_object().bucket("headers").key(key), "text/csv")
            .body(ByteStream::from(data(len, 3)))
            .send()
            .await
            .unwrap();
        assert_headers!(head(key).await.unwrap(), "text/csv", key);
        let got = c
            .get_object()
            .bucket("headers")
            .key(key)
            .send()
            .await
            .unwrap();
        assert_headers!(got, "text/csv", key);
    }

    // GET's response-* parameters win over the object's own headers.
    let got = c
        .get_object()
        .bucket("headers")
        .key("small")
        .response_content_type("application/octet-stream")
        .response_content_disposition("inline")
        .response_cache_control("no-store")
        .send()
        .await
        .unwrap();
    assert_eq!(got.content_type(), Some("application/octet-stream"));
    assert_eq!(got.content_disposition(), Some("inline"));
    assert_eq!(got.cache_control(), Some("no-store"));
    assert_eq!(got.content_encoding(), Some("gzip"), "not overridden");

    // An object written without a Content-Type (here straight into the store: the SDK always
    // sends one) has S3's default.
    gw.store
        .put(
            "headers/untyped",
            bytes::Bytes::from_static(b"x"),
            Default::default(),
        )
        .await
        .unwrap();
    let untyped = head("untyped").await.unwrap();
    // Over an S3 backend the type is the backend's: aws-sdk-s3 PUTs an untyped body as
    // application/octet-stream.
    let default_type = match gw.root {
        Some(_) => "binary/octet-stream",
        None => "application/octet-stream",
    };
    assert_eq!(untyped.content_type(), Some(default_type));
    assert_eq!(untyped.content_encoding(), None);

    // CopyObject keeps the source's headers, or takes the request's with REPLACE.
    c.copy_object()
        .bucket("headers")
        .key("copied")
        .copy_source("headers/small")
        .send()
        .await
        .unwrap();
    assert_headers!(head("copied").await.unwrap(), "text/csv", "copied");
    c.copy_object()
        .bucket("headers")
        .key("replaced")
        .copy_source("headers/small")
        .metadata_directive(MetadataDirective::Replace)
        .content_type("text/plain")
        .send()
        .await
        .unwrap();
    let replaced = head("replaced").await.unwrap();
    assert_eq!(replaced.content_type(), Some("text/plain"));
    assert_eq!(
        replaced.content_encoding(),
        None,
        "REPLACE drops the source's"
    );

    // A multipart upload gets them at its creation.
    let id = with_headers!(
        c.create_multipart_upload().bucket("headers").key("mpu"),
        "text/tab-separated-values"
    )
    .send()
    .await
    .unwrap()
    .upload_id()
    .unwrap()
    .to_string();
    let etag = part(&c, "headers", "mpu", &id, 1, b"only part").await;
    c.complete_multipart_upload()
        .bucket("headers")
        .key("mpu")
        .upload_id(&id)
        .multipart_upload(completed(&[etag]))
        .send()
        .await
        .unwrap();
    assert_headers!(
        head("mpu").await.unwrap(),
        "text/tab-separated-values",
        "mpu"
    );

    // An appendable object shows the headers and metadata of the append that created it while
    // it is open, not only once sealed.
    with_headers!(
        c.put_object()
            .bucket("headers")
            .key("log")
            .write_offset_bytes(0),
        "text/plain"
    )
    .metadata("origin", "sensor-7")
    .body(ByteStream::from_static(b"0"))
    .send()
    .await
    .unwrap();
    let mut seen_open = false;
    let mut content = b"0".to_vec();
    for offset in 1..6u64 {
        append(&c, "headers", "log", offset, b"1").await.unwrap();
        content.push(b'1');
        let h = head("log").await.unwrap();
        assert_headers!(h, "text/plain", "log");
        assert_eq!(
            h.metadata()
                .and_then(|m| m.get("origin"))
                .map(String::as_str),
            Some("sensor-7")
        );
        if h.e_tag().is_some_and(|e| e.contains("-open")) {
            seen_open = true;
            let got = c
                .get_object()
                .bucket("headers")
                .key("log")
                .send()
                .await
                .unwrap();
            assert_headers!(got, "text/plain", "log, open");
            break;
        }
    }
    assert!(seen_open, "the object was never seen open");
    wait_sealed(gw, "headers/log", &content).await;
    assert_headers!(head("log").await.unwrap(), "text/plain", "log, sealed");
}

/// A write conditional on the `-open` ETag an append returned holds when nothing was appended
/// since (the object is sealed first, and the seal's ETag stands for it), and fails otherwise.
async fn conditions_on_appended_objects(gw: &Gateway) {
    let c = gw.client();
    create_bucket(&c, "condapp").await;
    // PutObject If-Match the last append's ETag: replaced.
    let etag = append(&c, "condapp", "replaced", 0, b"abc").await.unwrap();
    assert!(etag.contains("-open"), "{etag}");
    let put = c
        .put_object()
        .bucket("condapp")
        .key("replaced")
        .if_match(&etag)
        .body(ByteStream::from_static(b"new"))
        .send()
        .await
        .unwrap();
    // Every answer carries a request id, as S3's do.
    use aws_sdk_s3::operation::RequestId;
    assert!(
        put.request_id().is_some_and(|id| id.len() == 16),
        "{:?}",
        put.request_id()
    );
    assert_eq!(get(&c, "condapp", "replaced").await, b"new");

    // An ETag older than the last append: refused, the appends kept.
    let older = append(&c, "condapp", "kept", 0, b"abc").await.unwrap();
    append(&c, "condapp", "kept", 3, b"d").await.unwrap();
    let (code, status) = failure(
        c.put_object()
            .bucket("condapp")
            .key("kept")
            .if_match(&older)
            .body(ByteStream::from_static(b"lost"))
            .send()
            .await,
    );
    assert_eq!((code.as_str(), status), ("PreconditionFailed", 412));
    assert_eq!(get(&c, "condapp", "kept").await, b"abcd");

    // CopyObject's source and DeleteObject take it too.
    let etag = append(&c, "condapp", "source", 0, b"copied").await.unwrap();
    c.copy_object()
        .bucket("condapp")
        .key("copy")
        .copy_source("condapp/source")
        .copy_source_if_match(&etag)
        .send()
        .await
        .unwrap();
    assert_eq!(get(&c, "condapp", "copy").await, b"copied");
    let etag = append(&c, "condapp", "deleted", 0, b"x").await.unwrap();
    c.delete_object()
        .bucket("condapp")
        .key("deleted")
        .if_match(&etag)
        .send()
        .await
        .unwrap();
    let (_, status) = failure(
        c.head_object()
            .bucket("condapp")
            .key("deleted")
            .send()
            .await,
    );
    assert_eq!(status, 404);
}

macro_rules! run_checks {
    ($gw:expr, $($check:ident),* $(,)?) => {{
        let gw = $gw;
        $(
            eprintln!("gateway check: {}", stringify!($check));
            $check(&gw).await;
        )*
        gw.stop().await;
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_over_a_local_store() {
    run_checks!(
        Gateway::local().await,
        bucket_lifecycle,
        put_get_head_with_metadata,
        ranged_reads,
        conditional_requests,
        content_md5_is_checked,
        large_puts_have_the_bodys_md5_as_etag,
        deletes,
        list_objects,
        multipart,
        list_uploads_paging,
        upload_part_copy,
        copy_object,
        signatures_are_checked,
        bad_input_is_refused,
        aws_chunked_payloads,
        keys_cannot_escape,
        appends,
        standard_headers,
        conditions_on_appended_objects,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_over_moto() {
    run_checks!(
        Gateway::moto().await,
        bucket_lifecycle,
        put_get_head_with_metadata,
        ranged_reads,
        conditional_requests,
        content_md5_is_checked,
        large_puts_have_the_bodys_md5_as_etag,
        deletes,
        list_objects,
        multipart,
        upload_part_copy,
        copy_object,
        signatures_are_checked,
        bad_input_is_refused,
        aws_chunked_payloads,
        keys_cannot_escape,
        appends,
        standard_headers,
        conditions_on_appended_objects,
    );
}

/// `--store s3://bucket/prefix`: the gateway's buckets and objects, multipart uploads and
/// appendable objects all live under the prefix of the backend bucket, and nothing outside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_over_a_prefix_of_a_moto_bucket() {
    let gw = Gateway::moto_prefix("tenant/a").await;
    type Check = fn(&Gateway) -> futures::future::BoxFuture<'_, ()>;
    let checks: [(&str, Check); 5] = [
        ("bucket_lifecycle", |gw| Box::pin(bucket_lifecycle(gw))),
        ("put_get_head_with_metadata", |gw| {
            Box::pin(put_get_head_with_metadata(gw))
        }),
        ("list_objects", |gw| Box::pin(list_objects(gw))),
        ("multipart", |gw| Box::pin(multipart(gw))),
        ("appends", |gw| Box::pin(appends(gw))),
    ];
    for (name, check) in checks {
        eprintln!("gateway check over a prefix: {name}");
        check(&gw).await;
    }
    let moto = gw._moto.as_ref().unwrap();
    let listed = moto
        .client()
        .list_objects_v2()
        .bucket(moto.bucket())
        .send()
        .await
        .unwrap();
    let keys: Vec<&str> = listed.contents().iter().filter_map(|o| o.key()).collect();
    assert!(!keys.is_empty());
    let outside: Vec<&&str> = keys
        .iter()
        .filter(|k| !k.starts_with("tenant/a/"))
        .collect();
    assert!(outside.is_empty(), "keys outside the prefix: {outside:?}");
    assert!(keys.contains(&"tenant/a/listing/b/1"), "{keys:?}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_requests_in_flight_finish() {
    use fs_core::store::ObjectStore;
    use fs_core::store::fault::{FaultConfig, FaultStore};
    use fs_core::store::memory::MemoryStore;

    let fault = Arc::new(FaultStore::new(
        Arc::new(MemoryStore::new()),
        FaultConfig::default(),
    ));
    let server = Gateway::start(fault.clone()).await;
    let addr = server.addr;
    let c = client(addr, ACCESS_KEY, SECRET_KEY);
    create_bucket(&c, "slow").await;
    // Every store call now takes 600 ms: the PUT below is still running when shutdown starts.
    fault.set_config(FaultConfig {
        latency: Some(Duration::from_millis(600)..Duration::from_millis(601)),
        ..FaultConfig::default()
    });
    let in_flight = tokio::spawn({
        let c = c.clone();
        async move { put(&c, "slow", "k", b"finished").await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    server.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the server stops once the request is done"
    );
    // The server waited for the PUT: the object was stored before it returned (an abrupt stop
    // would return at once, with the store call still sleeping).
    fault.set_config(FaultConfig::default());
    let got = fault
        .get("slow/k", None)
        .await
        .expect("stored before the server returned");
    let etag = in_flight.await.expect("the PUT completes");
    assert_eq!(etag, quoted(&md5_hex(b"finished")));
    assert!(TcpStream::connect(addr).is_err(), "no longer accepting");
    assert_eq!(&got.body[..], b"finished");
}

/// Virtual-hosted-style requests (`--domain`): the bucket comes from the Host header
/// (`bucket.DOMAIN`), and the signature covers that host. Presigned by an SDK client set to
/// virtual-host addressing, sent to the gateway's address with that Host header (no DNS).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtual_hosted_style_requests_name_the_bucket_in_the_host() {
    use aws_sdk_s3::presigning::PresigningConfig;

    let dir = tempfile::tempdir().expect("tempdir");
    let store: DynStore = Arc::new(LocalStore::open(dir.path().join("store")).expect("store"));
    let config = GatewayConfig {
        domains: vec!["gw.test".into()],
        ..test_config()
    };
    let gw = InProcessGateway::start(store.clone(), config).await;
    let c = gw.client();
    create_bucket(&c, "vhost").await;
    put(&c, "vhost", "k", b"virtual").await;
    let port = gw.addr.port();
    let virtual_client = Client::from_conf(
        c.config()
            .to_builder()
            .endpoint_url(format!("http://gw.test:{port}"))
            .force_path_style(false)
            .build(),
    );
    let valid = || PresigningConfig::expires_in(Duration::from_secs(600)).unwrap();
    let send = |presigned: aws_sdk_s3::presigning::PresignedRequest, body: &'static [u8]| {
        let addr = gw.addr;
        let uri = presigned.uri().to_string();
        let method = presigned.method().to_string();
        tokio::task::spawn_blocking(move || {
            // http://vhost.gw.test:PORT/k?X-Amz-...: the host names the bucket.
            let rest = uri.strip_prefix("http://").unwrap();
            let (host, path) = rest.split_at(rest.find('/').unwrap());
            assert!(host.starts_with("vhost.gw.test:"), "{uri}");
            let mut stream = TcpStream::connect(addr).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            write!(
                stream,
                "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .unwrap();
            stream.write_all(body).unwrap();
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer);
            answer
        })
    };
    let get = virtual_client
        .get_object()
        .bucket("vhost")
        .key("k")
        .presigned(valid())
        .await
        .unwrap();
    let answer = send(get, b"").await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("virtual"), "{answer}");
    let put = virtual_client
        .put_object()
        .bucket("vhost")
        .key("by-host")
        .presigned(valid())
        .await
        .unwrap();
    let answer = send(put, b"written by host").await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(
        store
            .get("vhost/by-host", None)
            .await
            .unwrap()
            .body
            .as_ref(),
        b"written by host"
    );
    // A host under no configured domain names no bucket: the path does.
    let answer = tokio::task::spawn_blocking({
        let addr = gw.addr;
        move || raw_request(addr, "GET /vhost/k HTTP/1.1", None)
    })
    .await
    .unwrap();
    assert_eq!(answer.0, 403, "unsigned: {}", answer.1);
    gw.stop().await;
}

/// Appendable objects are uploaded in parts of `append_part_size` (5 MiB by default: each
/// acknowledged append re-stages the part being filled), whatever the part size of large PUTs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appendable_objects_use_their_own_part_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: DynStore = Arc::new(LocalStore::open(dir.path().join("store")).expect("store"));
    for (append_part_size, want) in [
        (None, 5 * MIB as u64),
        (Some(6 * MIB as u64), 6 * MIB as u64),
    ] {
        let defaults = test_config();
        let config = GatewayConfig {
            // Long enough that the object stays open while its upload is looked at.
            seal_after: Duration::from_secs(120),
            part_size: 16 * MIB as u64,
            append_part_size: append_part_size.unwrap_or(defaults.append_part_size),
            ..defaults
        };
        let gw = InProcessGateway::start(store.clone(), config).await;
        let c = gw.client();
        let bucket = format!("parts{}", want >> 20);
        create_bucket(&c, &bucket).await;
        let body = data(13 * MIB, 3);
        // Acknowledged means persisted: the full parts are uploaded before the answer.
        append(&c, &bucket, "log", 0, &body).await.unwrap();
        let key = format!("{bucket}/log");
        let uploads = store.list_multipart_uploads(&key, None).await.unwrap();
        let [upload] = &uploads.uploads[..] else {
            panic!("one upload for {key}: {:?}", uploads.uploads)
        };
        let parts = store
            .list_parts(&key, &upload.upload_id, None)
            .await
            .unwrap();
        let sizes: Vec<u64> = parts.parts.iter().map(|p| p.size).collect();
        assert_eq!(
            sizes,
            vec![want; (13 * MIB as u64 / want) as usize],
            "{key}"
        );
        assert_bytes(&get(&c, &bucket, "log").await, &body, "GET while open");
        gw.stop().await;
        assert_bytes(
            &store.get(&key, None).await.unwrap().body,
            &body,
            "sealed at shutdown",
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_gateway_takes_unsigned_requests() {
    use fs_core::store::memory::MemoryStore;

    let config = GatewayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        anonymous: true,
        ..GatewayConfig::default()
    };
    let index = fs_core::Index::temporary().unwrap();
    let server = Server::bind(&config, Arc::new(MemoryStore::new()), index)
        .await
        .unwrap();
    let addr = server.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    let status = tokio::task::spawn_blocking(move || {
        (
            raw_status(addr, "PUT /open-bucket HTTP/1.1"),
            raw_status(addr, "GET /open-bucket/missing HTTP/1.1"),
            raw_status(addr, "GET /other-bucket/k HTTP/1.1"),
        )
    })
    .await
    .unwrap();
    assert_eq!(status, (200, 404, 404));
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

/// A body sent HTTP-chunked (no Content-Length, no decoded length) is stored whole and counted
/// in `/metrics` by the bytes that arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_bodies_sent_without_a_length() {
    use fs_core::store::ObjectStore;
    use fs_core::store::memory::MemoryStore;

    let metrics_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap();
    let config = GatewayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        anonymous: true,
        metrics_listen: Some(metrics_addr),
        ..GatewayConfig::default()
    };
    let mem = MemoryStore::new();
    let index = fs_core::Index::temporary().unwrap();
    let server = Server::bind(&config, Arc::new(mem.clone()), index)
        .await
        .unwrap();
    let addr = server.local_addr();
    let metrics_addr = server.metrics_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    let chunks = [data(10_000, 1), data(1, 2), data(54_321, 3)];
    let whole: Vec<u8> = chunks.concat();
    let (created, put, text) = tokio::task::spawn_blocking(move || {
        let created = raw_status(addr, "PUT /chunks HTTP/1.1");
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        write!(
            stream,
            "PUT /chunks/k HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        for chunk in &chunks {
            write!(stream, "{:x}\r\n", chunk.len()).unwrap();
            stream.write_all(chunk).unwrap();
            stream.write_all(b"\r\n").unwrap();
        }
        stream.write_all(b"0\r\n\r\n").unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        (created, answer, http_get(metrics_addr, "/metrics"))
    })
    .await
    .unwrap();
    assert_eq!(created, 200);
    assert!(put.starts_with("HTTP/1.1 200"), "{put}");
    assert_eq!(
        mem.get("chunks/k", None).await.unwrap().body.as_ref(),
        &whole[..]
    );
    let bytes_in: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("rivulet_gateway_bytes_total{direction=\"in\"} "))
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert_eq!(bytes_in, whole.len() as u64, "{text}");
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

// ---- the command line ----

/// `rivulet gateway` over the local store `store`, with an index of its own beside it.
fn gateway_command(store: &Path) -> Command {
    gateway_command_for(store.as_os_str(), &store.with_file_name("gateway-index"))
}

/// `rivulet gateway --store STORE --index INDEX` (any store URL).
fn gateway_command_for(store: &std::ffi::OsStr, index: &Path) -> Command {
    let mut cmd = Command::new(rivulet_bin());
    cmd.arg("gateway")
        .arg("--store")
        .arg(store)
        .arg("--index")
        .arg(index)
        .env_remove("RIVULET_ACCESS_KEY_ID")
        .env_remove("RIVULET_SECRET_ACCESS_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Several key pairs from `--credentials-file`: a request signed with any of them is served, a
/// wrong secret and an unknown key are refused; `--region` is the region the gateway reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_takes_key_pairs_from_a_file_and_reports_its_region() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let keys = dir.path().join("keys");
    std::fs::write(
        &keys,
        "# two pairs\nFIRSTKEY:first-secret\n\nSECONDKEY:second-secret\n",
    )
    .unwrap();
    let mut child = gateway_command(&store)
        .args(["--listen", "127.0.0.1:0", "--region", "eu-west-1"])
        .arg("--credentials-file")
        .arg(&keys)
        .spawn()
        .unwrap();
    let addr = read_listen_address(child.stdout.take().unwrap()).await;
    for (key, secret, bucket) in [
        ("FIRSTKEY", "first-secret", "first"),
        ("SECONDKEY", "second-secret", "second"),
    ] {
        let c = client(addr, key, secret);
        create_bucket(&c, bucket).await;
        put(&c, bucket, "k", key.as_bytes()).await;
        assert_eq!(get(&c, bucket, "k").await, key.as_bytes());
        let location = c.get_bucket_location().bucket(bucket).send().await.unwrap();
        assert_eq!(
            location.location_constraint().map(|l| l.as_str()),
            Some("eu-west-1")
        );
    }
    for (key, secret, code) in [
        ("SECONDKEY", "first-secret", "SignatureDoesNotMatch"),
        ("THIRDKEY", "second-secret", "InvalidAccessKeyId"),
    ] {
        let refused = failure(client(addr, key, secret).list_buckets().send().await);
        assert_eq!(refused, (code.to_string(), 403), "{key}");
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// SIGTERM while a PUT's body is still arriving: the gateway finishes that request (200, the
/// object stored whole), then exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_request_in_flight_finish() {
    use aws_sdk_s3::presigning::PresigningConfig;

    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let (mut child, addr) = spawn_gateway(&store, &[]).await;
    let c = client(addr, ACCESS_KEY, SECRET_KEY);
    create_bucket(&c, "slow").await;
    let presigned = c
        .put_object()
        .bucket("slow")
        .key("k")
        .presigned(PresigningConfig::expires_in(Duration::from_secs(600)).unwrap())
        .await
        .unwrap();
    let uri = presigned.uri().to_string();
    let body = data(256 * 1024, 9);
    let (half_sent, send_rest) = (std::sync::mpsc::channel(), std::sync::mpsc::channel());
    let (half_sent_tx, half_sent_rx) = half_sent;
    let (send_rest_tx, send_rest_rx) = send_rest;
    let sent = body.clone();
    let upload = std::thread::spawn(move || {
        let rest = uri.strip_prefix("http://").unwrap();
        let (host, path) = rest.split_at(rest.find('/').unwrap());
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        write!(
            stream,
            "PUT {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            sent.len()
        )
        .unwrap();
        let (first, second) = sent.split_at(sent.len() / 2);
        stream.write_all(first).unwrap();
        stream.flush().unwrap();
        half_sent_tx.send(()).unwrap();
        send_rest_rx.recv().unwrap();
        stream.write_all(second).unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    });
    half_sent_rx.recv().unwrap();
    // Let the request reach the gateway's handler before the signal.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the gateway exited with a request in flight"
    );
    send_rest_tx.send(()).unwrap();
    let answer = upload.join().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let deadline = Instant::now() + Duration::from_secs(40);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "the gateway did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(exit.code(), Some(0));
    assert_eq!(std::fs::read(store.join("slow/k")).unwrap(), body);
}

#[test]
fn the_command_refuses_to_start_without_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let out = gateway_command(&dir.path().join("store"))
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.starts_with("rivulet: gateway ") && stderr.contains("no credentials"),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(out.stdout.is_empty(), "nothing served");
    assert!(
        !dir.path().join("store").exists(),
        "the store was not touched"
    );

    // An unreadable credentials file is named.
    let out = gateway_command(&dir.path().join("store"))
        .args(["--credentials-file"])
        .arg(dir.path().join("no-such-file"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("credentials file"), "{stderr}");

    // Half a key pair is a usage error.
    let out = gateway_command(&dir.path().join("store"))
        .args(["--access-key", "only"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("go together"));
}

/// Starts `rivulet gateway` over `store` on a free port; returns it and its address.
async fn spawn_gateway(store: &Path, args: &[&str]) -> (std::process::Child, SocketAddr) {
    let mut child = gateway_command(store)
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env("RIVULET_ACCESS_KEY_ID", ACCESS_KEY)
        .env("RIVULET_SECRET_ACCESS_KEY", SECRET_KEY)
        .spawn()
        .unwrap();
    let addr = read_listen_address(child.stdout.take().unwrap()).await;
    assert!(addr.ip().is_loopback());
    assert_ne!(addr.port(), 0);
    (child, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_serves_until_sigterm() {
    serves_until_signal("TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_serves_until_sigint() {
    serves_until_signal("INT").await;
}

/// `rivulet gateway` stops cleanly on SIGTERM and on SIGINT (Ctrl-C): exit 0, port closed, and
/// the open appendable object sealed into the store.
async fn serves_until_signal(signal: &str) {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    // Never idle long enough to seal: only the shutdown commits the appended object.
    let (mut child, addr) = spawn_gateway(&store, &["--seal-after", "1h"]).await;

    let c = client(addr, ACCESS_KEY, SECRET_KEY);
    create_bucket(&c, "cli").await;
    put(&c, "cli", "k", b"through the binary").await;
    assert_eq!(
        std::fs::read(store.join("cli/k")).unwrap(),
        b"through the binary"
    );
    append(&c, "cli", "log", 0, b"appended, ").await.unwrap();
    append(&c, "cli", "log", 10, b"then sealed at shutdown")
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(store.join("cli/log")).unwrap(),
        b"",
        "open until sealed"
    );

    let status = Command::new("kill")
        .args([format!("-{signal}"), child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(40);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway did not stop on SIG{signal}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(exit.code(), Some(0), "stderr: {stderr}");
    assert!(TcpStream::connect(addr).is_err(), "the port is closed");
    assert_eq!(
        std::fs::read(store.join("cli/log")).unwrap(),
        b"appended, then sealed at shutdown"
    );
}

/// `kill -9` between acknowledged appends, a few rounds: every restart on the same store and
/// index finishes the open object with every acknowledged byte, before serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateway_loses_no_acknowledged_append() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mut want: Vec<u8> = Vec::new();
    for round in 0..4u8 {
        // Never idle long enough to seal: only recovery commits what was appended.
        let (mut child, addr) = spawn_gateway(&store, &["--seal-after", "1h"]).await;
        let c = client(addr, ACCESS_KEY, SECRET_KEY);
        if round == 0 {
            create_bucket(&c, "crash").await;
        } else {
            // Recovered before serving: in the store itself and through the gateway.
            let stored = std::fs::read(store.join("crash/log")).unwrap();
            assert_bytes(
                &stored,
                &want,
                &format!("round {round}: the store's object"),
            );
            assert_bytes(&get(&c, "crash", "log").await, &want, "through the gateway");
        }
        let mut sizes: Vec<usize> = (0..6).map(|i| 500 + 37 * i + usize::from(round)).collect();
        if round == 1 {
            // Across a part boundary (5 MiB by default): uploaded parts are recovered too.
            sizes.push(9 * MIB);
        }
        for (i, size) in sizes.into_iter().enumerate() {
            let chunk = data(size, round.wrapping_mul(16).wrapping_add(i as u8));
            append(&c, "crash", "log", want.len() as u64, &chunk)
                .await
                .unwrap_or_else(|e| panic!("round {round} append {i}: {e:?}"));
            want.extend_from_slice(&chunk);
        }
        child.kill().unwrap(); // SIGKILL: no shutdown, no seal
        child.wait().unwrap();
        assert!(
            std::fs::read(store.join("crash/log")).unwrap() != want,
            "round {round}: the object was still open when the gateway was killed"
        );
    }
    let (mut child, addr) = spawn_gateway(&store, &[]).await;
    let c = client(addr, ACCESS_KEY, SECRET_KEY);
    assert_bytes(
        &get(&c, "crash", "log").await,
        &want,
        "after the last restart",
    );
    let stored = std::fs::read(store.join("crash/log")).unwrap();
    assert_bytes(&stored, &want, "the store's object after the last restart");
    child.kill().unwrap();
    child.wait().unwrap();
}

/// SIGKILL rounds of the crash test during a stream of appends (the issue asks for at least 20).
const STREAM_CRASH_ROUNDS: usize = 20;

/// Where the crash test's gateway keeps its objects.
enum CrashBackend {
    /// A local store in this directory.
    Local(PathBuf),
    /// A bucket of this moto server (the gateway's index in the directory).
    Moto(TestServer, PathBuf),
}

impl CrashBackend {
    /// `rivulet gateway` over this backend, listening on a free loopback port.
    async fn spawn(&self, args: &[&str]) -> (std::process::Child, SocketAddr) {
        let mut cmd = match self {
            CrashBackend::Local(store) => gateway_command(store),
            CrashBackend::Moto(server, dir) => {
                let url = server.store_url();
                let mut cmd = gateway_command_for(url.as_ref(), &dir.join("gateway-index"));
                cmd.envs(server.env());
                cmd
            }
        };
        let mut child = cmd
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("RIVULET_ACCESS_KEY_ID", ACCESS_KEY)
            .env("RIVULET_SECRET_ACCESS_KEY", SECRET_KEY)
            .spawn()
            .unwrap();
        let addr = read_listen_address(child.stdout.take().unwrap()).await;
        (child, addr)
    }

    /// The backend's object (not through the gateway).
    async fn object(&self, key: &str) -> Vec<u8> {
        match self {
            CrashBackend::Local(store) => std::fs::read(store.join(key)).unwrap(),
            CrashBackend::Moto(server, _) => {
                let store = server.store().await;
                store.get(key, None).await.unwrap().body.to_vec()
            }
        }
    }
}

/// `kill -9` at a random moment while a client streams appends, 20 rounds on the same store and
/// index (replay a run with `RIVULET_GATEWAY_SEED`). After every restart, before it serves, the
/// gateway has committed the object with every acknowledged append, in order, and nothing else
/// but at most the one append that was in flight when it died, whole: that one may have been
/// made durable without its answer getting out, like any request whose answer is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_stream_of_appends_loses_no_acknowledged_append() {
    let dir = tempfile::tempdir().unwrap();
    let backend = CrashBackend::Local(dir.path().join("store"));
    appends_survive_sigkill(&backend, STREAM_CRASH_ROUNDS).await;
}

/// The same over moto, whose multipart uploads, copies and conditional completes are S3's: the
/// recovery commits through a real S3 API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_stream_of_appends_over_moto_loses_no_acknowledged_append() {
    let dir = tempfile::tempdir().unwrap();
    let backend = CrashBackend::Moto(TestServer::moto().await, dir.path().to_path_buf());
    appends_survive_sigkill(&backend, STREAM_CRASH_ROUNDS).await;
}

async fn appends_survive_sigkill(backend: &CrashBackend, rounds: usize) {
    use rand::{Rng, SeedableRng};
    use std::sync::atomic::{AtomicBool, Ordering};

    let seed = harness::seed("RIVULET_GATEWAY_SEED", "gateway crash rounds");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut want: Vec<u8> = Vec::new();
    let mut unanswered: Option<Vec<u8>> = None;
    let (mut acked_bytes, mut kept_unanswered) = (0, 0);
    for round in 0..=rounds {
        let (mut child, addr) = backend.spawn(&["--seal-after", "1h"]).await;
        let c = client(addr, ACCESS_KEY, SECRET_KEY);
        if round == 0 {
            create_bucket(&c, "crash").await;
        } else {
            // Recovered and committed before serving: the store's object itself.
            let stored = backend.object("crash/log").await;
            if let Some(chunk) = unanswered.take()
                && stored.len() == want.len() + chunk.len()
            {
                want.extend_from_slice(&chunk);
                kept_unanswered += 1;
            }
            assert_bytes(
                &stored,
                &want,
                &format!("seed {seed} round {round}: the store's object after recovery"),
            );
            assert_bytes(
                &get(&c, "crash", "log").await,
                &want,
                &format!("seed {seed} round {round}: through the gateway"),
            );
        }
        if round == rounds {
            child.kill().unwrap();
            child.wait().unwrap();
            break;
        }
        // The stream: appends of random sizes, one after another, until the gateway dies. No
        // retries: a retry could not reach the dead gateway anyway, only slow the round down.
        let stream_client = aws_sdk_s3::Client::from_conf(
            c.config()
                .to_builder()
                .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
                .build(),
        );
        let killed = Arc::new(AtomicBool::new(false));
        let (first_ack, first_acked) = oneshot::channel::<()>();
        let stream = tokio::spawn({
            let (killed, mut rng, offset) = (
                killed.clone(),
                rand::rngs::StdRng::seed_from_u64(rng.random()),
                want.len() as u64,
            );
            let mut first_ack = Some(first_ack);
            async move {
                let mut acked = Vec::new();
                loop {
                    // Mostly small appends; now and then one across a part boundary (5 MiB).
                    let len = if rng.random_ratio(1, 24) {
                        6 * MIB
                    } else {
                        rng.random_range(1..=64 * 1024)
                    };
                    let mut chunk = vec![0u8; len];
                    rng.fill(&mut chunk[..]);
                    let sent = stream_client
                        .put_object()
                        .bucket("crash")
                        .key("log")
                        .write_offset_bytes((offset + acked.len() as u64) as i64)
                        .body(ByteStream::from(chunk.clone()))
                        .send()
                        .await;
                    match sent {
                        Ok(_) => {
                            acked.extend_from_slice(&chunk);
                            if let Some(tell) = first_ack.take() {
                                let _ = tell.send(());
                            }
                        }
                        // The gateway is gone: this append may or may not have been kept.
                        Err(_) if killed.load(Ordering::SeqCst) => return (acked, chunk),
                        Err(e) => panic!("an append failed while the gateway ran: {e:?}"),
                    }
                }
            }
        });
        // Killed mid-stream: after the first acknowledged append, at a random moment.
        if first_acked.await.is_err() {
            panic!(
                "seed {seed} round {round}: the stream ended before any append: {:?}",
                stream.await
            );
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
        killed.store(true, Ordering::SeqCst);
        child.kill().unwrap(); // SIGKILL: no shutdown, no seal
        child.wait().unwrap();
        let (acked, in_flight) = stream.await.unwrap();
        acked_bytes += acked.len();
        want.extend_from_slice(&acked);
        unanswered = Some(in_flight);
    }
    eprintln!(
        "{rounds} rounds killed mid-stream: {acked_bytes} acknowledged bytes, \
         {kept_unanswered} unanswered appends kept; {} bytes in all",
        want.len()
    );
}

/// Runs a real S3 client against the gateway with its credentials and nothing from the
/// user's AWS configuration; returns (success, stdout, stderr).
fn real_client(program: &Path, addr: SocketAddr, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(program)
        .args(args)
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("GATEWAY", format!("http://{addr}"))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const BOTO3_SCRIPT: &str = r#"
import os, boto3
from boto3.s3.transfer import TransferConfig
s3 = boto3.client("s3", endpoint_url=os.environ["GATEWAY"])
s3.create_bucket(Bucket="boto")
s3.put_object(Bucket="boto", Key="small.txt", Body=b"hello", ContentType="text/plain",
              Metadata={"origin": "boto3"})
head = s3.head_object(Bucket="boto", Key="small.txt")
assert head["ContentLength"] == 5 and head["ContentType"] == "text/plain", head
assert head["Metadata"] == {"origin": "boto3"}, head["Metadata"]
assert s3.get_object(Bucket="boto", Key="small.txt")["Body"].read() == b"hello"
# Appends with the header S3 Express defined.
s3.put_object(Bucket="boto", Key="log", Body=b"one,", WriteOffsetBytes=0)
s3.put_object(Bucket="boto", Key="log", Body=b"two", WriteOffsetBytes=4)
try:
    s3.put_object(Bucket="boto", Key="log", Body=b"x", WriteOffsetBytes=1)
    raise SystemExit("an append at a wrong offset was accepted")
except s3.exceptions.ClientError as e:
    assert e.response["Error"]["Code"] == "InvalidWriteOffset", e.response
assert s3.get_object(Bucket="boto", Key="log")["Body"].read() == b"one,two"
# A multipart upload through the transfer manager (6 MiB, 5 MiB parts), then a ranged read.
body = bytes(range(256)) * (6 * 1024 * 1024 // 256)
with open(os.environ["BIG"], "wb") as f:
    f.write(body)
config = TransferConfig(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024)
s3.upload_file(os.environ["BIG"], "boto", "big.bin", Config=config)
etag = s3.head_object(Bucket="boto", Key="big.bin")["ETag"]
assert etag.endswith('-2"'), etag
got = s3.get_object(Bucket="boto", Key="big.bin", Range="bytes=100-199")["Body"].read()
assert got == body[100:200]
keys = [o["Key"] for o in s3.list_objects_v2(Bucket="boto")["Contents"]]
assert keys == ["big.bin", "log", "small.txt"], keys
print("boto3 ok")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aws_cli_and_boto3_work_against_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let (mut child, addr) = spawn_gateway(&store, &[]).await;
    let endpoint = format!("http://{addr}");
    let aws = venv_program("aws");
    let cli = |args: &[&str]| {
        let mut all = vec!["--endpoint-url", endpoint.as_str()];
        all.extend_from_slice(args);
        real_client(&aws, addr, &all)
    };

    // aws s3: mb, cp up and down, sync, ls.
    let (ok, _, err) = cli(&["s3", "mb", "s3://cli"]);
    assert!(ok, "aws s3 mb: {err}");
    let local = dir.path().join("up.txt");
    std::fs::write(&local, b"first line\n").unwrap();
    let (ok, _, err) = cli(&["s3", "cp", &local.to_string_lossy(), "s3://cli/log.txt"]);
    assert!(ok, "aws s3 cp: {err}");
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("a.txt"), b"a").unwrap();
    std::fs::write(tree.join("sub/b.txt"), b"bb").unwrap();
    let (ok, _, err) = cli(&["s3", "sync", &tree.to_string_lossy(), "s3://cli/tree"]);
    assert!(ok, "aws s3 sync: {err}");
    let (ok, listing, err) = cli(&["s3", "ls", "--recursive", "s3://cli/"]);
    assert!(ok, "aws s3 ls: {err}");
    for key in ["log.txt", "tree/a.txt", "tree/sub/b.txt"] {
        assert!(listing.contains(key), "{key} missing from: {listing}");
    }

    // aws s3api: an append at the object's size, then one at a wrong offset.
    let more = dir.path().join("more.txt");
    std::fs::write(&more, b"second line\n").unwrap();
    let (ok, out, err) = cli(&[
        "s3api",
        "put-object",
        "--bucket",
        "cli",
        "--key",
        "log.txt",
        "--body",
        &more.to_string_lossy(),
        "--write-offset-bytes",
        "11",
    ]);
    assert!(ok, "aws s3api put-object --write-offset-bytes: {err}");
    assert!(out.contains("\"Size\": 23"), "{out}");
    let (ok, _, err) = cli(&[
        "s3api",
        "put-object",
        "--bucket",
        "cli",
        "--key",
        "log.txt",
        "--body",
        &more.to_string_lossy(),
        "--write-offset-bytes",
        "5",
    ]);
    assert!(
        !ok && err.contains("InvalidWriteOffset"),
        "a wrong offset: {err}"
    );
    let down = dir.path().join("down.txt");
    let (ok, _, err) = cli(&["s3", "cp", "s3://cli/log.txt", &down.to_string_lossy()]);
    assert!(ok, "aws s3 cp down: {err}");
    assert_eq!(std::fs::read(&down).unwrap(), b"first line\nsecond line\n");

    // boto3: metadata, appends, a multipart upload and a ranged read.
    let python = venv_program("python");
    let out = Command::new(&python)
        .args(["-c", BOTO3_SCRIPT])
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("GATEWAY", &endpoint)
        .env("BIG", dir.path().join("big.bin"))
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("boto3 ok"),
        "boto3: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// Fetches `path` over plain HTTP/1.1 and returns the body.
fn http_get(addr: SocketAddr, path: &str) -> String {
    use std::io::Write as _;
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_bytes_latency_and_open_appendable_objects() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let metrics_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap();
    let (mut child, addr) = spawn_gateway(
        &store,
        &[
            "--seal-after",
            "1h",
            "--metrics-listen",
            &metrics_addr.to_string(),
        ],
    )
    .await;
    let c = client(addr, ACCESS_KEY, SECRET_KEY);
    create_bucket(&c, "met").await;
    put(&c, "met", "a", b"12345").await;
    put(&c, "met", "b", b"678").await;
    let missing = c.get_object().bucket("met").key("nope").send().await;
    assert!(missing.is_err());
    append(&c, "met", "log", 0, b"open").await.unwrap();
    let bad = client(addr, ACCESS_KEY, "not-the-secret");
    assert!(bad.list_buckets().send().await.is_err());

    let text = tokio::task::spawn_blocking(move || http_get(metrics_addr, "/metrics"))
        .await
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    for expected in [
        "rivulet_gateway_requests_total{operation=\"CreateBucket\",status=\"200\"} 1",
        "rivulet_gateway_requests_total{operation=\"PutObject\",status=\"200\"} 2",
        "rivulet_gateway_requests_total{operation=\"GetObject\",status=\"404\"} 1",
        "rivulet_gateway_requests_total{operation=\"AppendObject\",status=\"200\"} 1",
        "rivulet_gateway_requests_total{operation=\"ListBuckets\",status=\"403\"} 1",
        "rivulet_gateway_request_duration_seconds_count{operation=\"PutObject\"} 2",
        "rivulet_gateway_open_appendable_objects 1",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    let bytes_in: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("rivulet_gateway_bytes_total{direction=\"in\"} "))
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(
        bytes_in >= 12,
        "5 + 3 + 4 body bytes at least, got {bytes_in}"
    );
}

//! One-to-one bucket mode (`--store s3://`, no bucket) over moto: the gateway's buckets are
//! moto's buckets, checked from both sides (through the gateway and directly against moto).

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use harness::TestServer;
use harness::gateway::{ACCESS_KEY, SECRET_KEY, gateway_client, test_config};
use s3_gateway::Server;
use s3_gateway::account::{Account, AccountStore, DEFAULT_STATE_BUCKET};
use s3_gateway::buckets::Buckets;

async fn read(c: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Vec<u8> {
    c.get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("get {bucket}/{key}: {e:?}"))
        .body
        .collect()
        .await
        .unwrap()
        .to_vec()
}

async fn bucket_names(c: &aws_sdk_s3::Client) -> Vec<String> {
    c.list_buckets()
        .send()
        .await
        .unwrap()
        .buckets()
        .iter()
        .filter_map(|b| b.name().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_map_one_to_one_onto_the_backend() {
    let moto = TestServer::moto().await;
    let direct = moto.client();
    let mut base = moto.config("");
    base.bucket.clear();
    let account = Account::open(base, DEFAULT_STATE_BUCKET).await.unwrap();
    let store = Arc::new(AccountStore::new(account.clone()));
    let mut config = test_config();
    config.seal_after = Duration::from_millis(300);
    let index = fs_core::Index::temporary().unwrap();
    let server = Server::bind_buckets(&config, Buckets::one_to_one(store, account), index)
        .await
        .unwrap();
    let addr = server.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server
            .run(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    let c = gateway_client(addr);

    // The state bucket exists on moto and is hidden; moto's own bucket is a gateway bucket.
    direct
        .head_bucket()
        .bucket(DEFAULT_STATE_BUCKET)
        .send()
        .await
        .unwrap();
    let names = bucket_names(&c).await;
    assert!(names.contains(&moto.bucket().to_string()), "{names:?}");
    assert!(
        !names.iter().any(|n| n == DEFAULT_STATE_BUCKET),
        "{names:?}"
    );
    let refused = c.create_bucket().bucket(DEFAULT_STATE_BUCKET).send().await;
    assert_eq!(refused.unwrap_err().code(), Some("BucketAlreadyExists"));
    let hidden = c
        .get_object()
        .bucket(DEFAULT_STATE_BUCKET)
        .key("x")
        .send()
        .await;
    assert_eq!(hidden.unwrap_err().code(), Some("NoSuchBucket"));

    // CreateBucket makes a backend bucket; objects are backend objects, same keys.
    c.create_bucket().bucket("one2one").send().await.unwrap();
    direct.head_bucket().bucket("one2one").send().await.unwrap();
    assert!(bucket_names(&c).await.contains(&"one2one".to_string()));
    c.put_object()
        .bucket("one2one")
        .key("dir/a.txt")
        .body(ByteStream::from_static(b"through the gateway"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        read(&direct, "one2one", "dir/a.txt").await,
        b"through the gateway"
    );
    direct
        .put_object()
        .bucket(moto.bucket())
        .key("seen.txt")
        .body(ByteStream::from_static(b"written to moto"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        read(&c, moto.bucket(), "seen.txt").await,
        b"written to moto"
    );
    let listed = c
        .list_objects_v2()
        .bucket("one2one")
        .delimiter("/")
        .send()
        .await
        .unwrap();
    let prefixes: Vec<&str> = listed
        .common_prefixes()
        .iter()
        .filter_map(|p| p.prefix())
        .collect();
    assert_eq!(prefixes, ["dir/"]);

    // Keys are the backend's own: up to 1,024 bytes whatever the bucket's name, as on S3.
    let longest = "k".repeat(1024);
    c.put_object()
        .bucket("one2one")
        .key(&longest)
        .body(ByteStream::from_static(b"long"))
        .send()
        .await
        .unwrap();
    assert_eq!(read(&direct, "one2one", &longest).await, b"long");
    let too_long = c
        .put_object()
        .bucket("one2one")
        .key("k".repeat(1025))
        .body(ByteStream::from_static(b"x"))
        .send()
        .await;
    assert_eq!(too_long.unwrap_err().code(), Some("KeyTooLongError"));
    c.delete_object()
        .bucket("one2one")
        .key(&longest)
        .send()
        .await
        .unwrap();

    // A multipart upload through the gateway is one on moto.
    let upload = c
        .create_multipart_upload()
        .bucket("one2one")
        .key("mpu")
        .send()
        .await
        .unwrap();
    let id = upload.upload_id().unwrap();
    let first = vec![1u8; 5 * 1024 * 1024];
    let mut parts = Vec::new();
    for (n, body) in [(1, first.clone()), (2, b"end".to_vec())] {
        let etag = c
            .upload_part()
            .bucket("one2one")
            .key("mpu")
            .upload_id(id)
            .part_number(n)
            .body(ByteStream::from(body))
            .send()
            .await
            .unwrap()
            .e_tag()
            .unwrap()
            .to_string();
        parts.push(CompletedPart::builder().part_number(n).e_tag(etag).build());
    }
    c.complete_multipart_upload()
        .bucket("one2one")
        .key("mpu")
        .upload_id(id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .unwrap();
    let mut want = first;
    want.extend_from_slice(b"end");
    assert!(read(&direct, "one2one", "mpu").await == want);

    // Appends: visible through the gateway at once, on moto once sealed; the tails live in the
    // state bucket, not in the client's bucket.
    for (offset, body) in [(0i64, &b"one,"[..]), (4, b"two")] {
        c.put_object()
            .bucket("one2one")
            .key("log")
            .write_offset_bytes(offset)
            .body(ByteStream::from(body.to_vec()))
            .send()
            .await
            .unwrap();
    }
    assert_eq!(read(&c, "one2one", "log").await, b"one,two");
    let mut sealed = Vec::new();
    for _ in 0..100 {
        sealed = read(&direct, "one2one", "log").await;
        if sealed == b"one,two" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sealed, b"one,two", "sealed onto moto after --seal-after");
    let in_bucket = direct
        .list_objects_v2()
        .bucket("one2one")
        .send()
        .await
        .unwrap();
    let keys: Vec<&str> = in_bucket
        .contents()
        .iter()
        .filter_map(|o| o.key())
        .collect();
    assert_eq!(keys, ["dir/a.txt", "log", "mpu"]);

    // DeleteBucket: BucketNotEmpty while it has objects, then the backend bucket is gone.
    let busy = c.delete_bucket().bucket("one2one").send().await;
    assert_eq!(busy.unwrap_err().code(), Some("BucketNotEmpty"));
    for key in ["dir/a.txt", "log", "mpu"] {
        c.delete_object()
            .bucket("one2one")
            .key(key)
            .send()
            .await
            .unwrap();
    }
    c.delete_bucket().bucket("one2one").send().await.unwrap();
    let gone = direct.head_bucket().bucket("one2one").send().await;
    assert_eq!(
        gone.unwrap_err()
            .raw_response()
            .map(|r| r.status().as_u16()),
        Some(404)
    );
    let head = c.head_bucket().bucket("one2one").send().await;
    assert_eq!(
        head.unwrap_err()
            .raw_response()
            .map(|r| r.status().as_u16()),
        Some(404)
    );
    let put = c
        .put_object()
        .bucket("one2one")
        .key("k")
        .body(ByteStream::from_static(b"x"))
        .send()
        .await;
    assert_eq!(put.unwrap_err().code(), Some("NoSuchBucket"));

    let _ = stop.send(());
    task.await.unwrap();
}

/// `rivulet gateway --store s3://?endpoint=...` serves moto's buckets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_serves_a_bucketless_s3_url_one_to_one() {
    let moto = TestServer::moto().await;
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(harness::rivulet_bin())
        .args([
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--state-bucket",
            "gw-state",
        ])
        .arg("--store")
        .arg(format!(
            "s3://?endpoint={}&region=us-east-1",
            moto.endpoint()
        ))
        .arg("--index")
        .arg(dir.path().join("gateway-index"))
        .envs(moto.env())
        .env("RIVULET_ACCESS_KEY_ID", ACCESS_KEY)
        .env("RIVULET_SECRET_ACCESS_KEY", SECRET_KEY)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = harness::gateway::read_listen_address(child.stdout.take().unwrap()).await;
    let c = gateway_client(addr);
    let names = bucket_names(&c).await;
    assert_eq!(
        names,
        [moto.bucket().to_string()],
        "the state bucket is hidden"
    );
    moto.client()
        .head_bucket()
        .bucket("gw-state")
        .send()
        .await
        .unwrap();
    c.create_bucket()
        .bucket("made-by-cli")
        .send()
        .await
        .unwrap();
    moto.client()
        .head_bucket()
        .bucket("made-by-cli")
        .send()
        .await
        .unwrap();
    // SIGTERM: a graceful stop.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(child.wait().unwrap().success());
}

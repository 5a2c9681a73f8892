//! The AWS CLI and boto3 (from the test venv, `scripts/install-test-deps.sh`) against a gateway
//! whose backend is moto: `aws s3 cp` (single and multipart), `aws s3 sync`, `aws s3 ls`,
//! `aws s3api put-object --write-offset-bytes`, and a boto3 script; what they wrote is then
//! checked directly on moto.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use harness::TestServer;
use harness::gateway::{ACCESS_KEY, InProcessGateway, SECRET_KEY, test_config};
use harness::venv_program;

/// Runs a client program with the gateway's credentials and nothing from the user's AWS
/// configuration; returns (success, stdout, stderr).
async fn run(
    program: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = Command::new(&program)
            .args(&args)
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .envs(envs)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

struct Cli {
    aws: PathBuf,
    endpoint: String,
}

impl Cli {
    async fn ok(&self, args: &[&str]) -> String {
        let mut all = vec![format!("--endpoint-url={}", self.endpoint)];
        all.extend(args.iter().map(|a| a.to_string()));
        let (ok, out, err) = run(self.aws.clone(), all, Vec::new()).await;
        assert!(ok, "aws {args:?} failed: {err}{out}");
        out
    }

    async fn fails(&self, args: &[&str]) -> String {
        let mut all = vec![format!("--endpoint-url={}", self.endpoint)];
        all.extend(args.iter().map(|a| a.to_string()));
        let (ok, out, err) = run(self.aws.clone(), all, Vec::new()).await;
        assert!(!ok, "aws {args:?} should fail: {out}");
        err
    }
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            ((i / 251) as u8)
                .wrapping_add(i as u8)
                .wrapping_mul(seed | 1)
        })
        .collect()
}

/// An object of moto's bucket (the gateway's store), read directly.
async fn on_moto(moto: &TestServer, key: &str) -> Option<(Vec<u8>, String)> {
    let got = moto
        .client()
        .get_object()
        .bucket(moto.bucket())
        .key(key)
        .send()
        .await
        .ok()?;
    let etag = got.e_tag().unwrap_or_default().to_string();
    Some((got.body.collect().await.unwrap().to_vec(), etag))
}

const BOTO3_SCRIPT: &str = r#"
import os, boto3
from boto3.s3.transfer import TransferConfig
s3 = boto3.client("s3", endpoint_url=os.environ["GATEWAY"])
s3.create_bucket(Bucket="boto-moto")
s3.put_object(Bucket="boto-moto", Key="meta.txt", Body=b"hello", ContentType="text/plain",
              Metadata={"origin": "boto3"})
head = s3.head_object(Bucket="boto-moto", Key="meta.txt")
assert head["ContentType"] == "text/plain" and head["Metadata"] == {"origin": "boto3"}, head
s3.put_object(Bucket="boto-moto", Key="events", Body=b"one,", WriteOffsetBytes=0)
s3.put_object(Bucket="boto-moto", Key="events", Body=b"two", WriteOffsetBytes=4)
try:
    s3.put_object(Bucket="boto-moto", Key="events", Body=b"x", WriteOffsetBytes=2)
    raise SystemExit("an append at a wrong offset was accepted")
except s3.exceptions.ClientError as e:
    assert e.response["Error"]["Code"] == "InvalidWriteOffset", e.response
assert s3.get_object(Bucket="boto-moto", Key="events")["Body"].read() == b"one,two"
body = bytes(range(256)) * (11 * 1024 * 1024 // 256)
with open(os.environ["BIG"], "wb") as f:
    f.write(body)
config = TransferConfig(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024)
s3.upload_file(os.environ["BIG"], "boto-moto", "big.bin", Config=config)
assert s3.head_object(Bucket="boto-moto", Key="big.bin")["ETag"].endswith('-3"')
assert s3.get_object(Bucket="boto-moto", Key="big.bin")["Body"].read() == body
pages = s3.get_paginator("list_objects_v2").paginate(Bucket="boto-moto", PaginationConfig={"PageSize": 1})
keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
assert keys == ["big.bin", "events", "meta.txt"], keys
print("boto3 ok")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aws_cli_and_boto3_work_through_the_gateway_over_moto() {
    let moto = TestServer::moto().await;
    let mut config = test_config();
    config.seal_after = Duration::from_millis(300);
    let gw = InProcessGateway::start(moto.store().await, config).await;
    let endpoint = format!("http://{}", gw.addr);
    let cli = Cli {
        aws: venv_program("aws"),
        endpoint: endpoint.clone(),
    };
    let dir = tempfile::tempdir().unwrap();

    cli.ok(&["s3", "mb", "s3://cli-moto"]).await;
    // A small file (one PUT) and a 20 MiB one (the CLI's multipart: 8 MiB parts).
    let small = dir.path().join("small.txt");
    std::fs::write(&small, b"small file\n").unwrap();
    cli.ok(&["s3", "cp", &s(&small), "s3://cli-moto/small.txt"])
        .await;
    let big_body = data(20 * 1024 * 1024, 5);
    let big = dir.path().join("big.bin");
    std::fs::write(&big, &big_body).unwrap();
    cli.ok(&["s3", "cp", &s(&big), "s3://cli-moto/big.bin"])
        .await;
    let (on_backend, etag) = on_moto(&moto, "cli-moto/big.bin").await.expect("on moto");
    assert!(
        on_backend == big_body,
        "the multipart upload reached moto whole"
    );
    assert!(etag.ends_with("-3\""), "three parts of 8 MiB: {etag}");
    let down = dir.path().join("big.down");
    cli.ok(&["s3", "cp", "s3://cli-moto/big.bin", &s(&down)])
        .await;
    assert!(std::fs::read(&down).unwrap() == big_body);

    // sync up a tree, again (nothing to do), and down into an empty directory.
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("sub/deeper")).unwrap();
    let files = [
        ("a.txt", data(100, 1)),
        ("sub/b.bin", data(70_000, 2)),
        ("sub/deeper/c.txt", data(3, 3)),
    ];
    // moto's listings give LastModified in whole seconds, and `aws s3 sync` uploads a file
    // whose mtime is later: files written within the second of their upload would go up
    // again. Their mtime is set a minute back, as for files written before a sync.
    let a_minute_ago = std::time::SystemTime::now() - Duration::from_secs(60);
    for (name, body) in &files {
        std::fs::write(tree.join(name), body).unwrap();
        std::fs::File::options()
            .write(true)
            .open(tree.join(name))
            .and_then(|f| f.set_modified(a_minute_ago))
            .unwrap();
    }
    let out = cli
        .ok(&["s3", "sync", &s(&tree), "s3://cli-moto/tree"])
        .await;
    assert_eq!(out.matches("upload:").count(), 3, "{out}");
    let out = cli
        .ok(&["s3", "sync", &s(&tree), "s3://cli-moto/tree"])
        .await;
    assert!(
        !out.contains("upload:"),
        "a second sync uploads nothing: {out}"
    );
    let back = dir.path().join("back");
    cli.ok(&["s3", "sync", "s3://cli-moto/tree", &s(&back)])
        .await;
    for (name, body) in &files {
        assert_eq!(&std::fs::read(back.join(name)).unwrap(), body, "{name}");
        let (stored, _) = on_moto(&moto, &format!("cli-moto/tree/{name}"))
            .await
            .expect("synced onto moto");
        assert_eq!(&stored, body);
    }

    // ls: the bucket, a folder level, and recursively.
    let out = cli.ok(&["s3", "ls"]).await;
    assert!(out.contains("cli-moto"), "{out}");
    let out = cli.ok(&["s3", "ls", "s3://cli-moto/"]).await;
    for expected in ["PRE tree/", "small.txt", "big.bin"] {
        assert!(out.contains(expected), "{expected} in {out}");
    }
    let out = cli
        .ok(&["s3", "ls", "--recursive", "s3://cli-moto/tree/"])
        .await;
    assert!(
        out.contains("tree/sub/deeper/c.txt") && out.contains("70000"),
        "{out}"
    );

    // Appends with the header S3 Express defined, through s3api.
    let first = dir.path().join("first.txt");
    std::fs::write(&first, b"first line\n").unwrap();
    let second = dir.path().join("second.txt");
    std::fs::write(&second, b"second line\n").unwrap();
    let put_at = |body: String, offset: &'static str| {
        [
            "s3api".to_string(),
            "put-object".into(),
            "--bucket".into(),
            "cli-moto".into(),
            "--key".into(),
            "log.txt".into(),
            "--body".into(),
            body,
            "--write-offset-bytes".into(),
            offset.into(),
        ]
    };
    for (body, offset) in [(s(&first), "0"), (s(&second), "11")] {
        let args = put_at(body, offset);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cli.ok(&args).await;
    }
    let args = put_at(s(&second), "4");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let err = cli.fails(&args).await;
    assert!(err.contains("InvalidWriteOffset"), "{err}");
    let out = cli.ok(&["s3", "cp", "s3://cli-moto/log.txt", "-"]).await;
    assert_eq!(out, "first line\nsecond line\n");

    // boto3: metadata, appends, the transfer manager's multipart upload, paged listings.
    let (ok, out, err) = run(
        venv_program("python"),
        vec!["-c".into(), BOTO3_SCRIPT.into()],
        vec![
            ("GATEWAY".into(), endpoint.clone()),
            ("BIG".into(), s(&dir.path().join("boto-big.bin"))),
        ],
    )
    .await;
    assert!(ok && out.contains("boto3 ok"), "boto3: {out}{err}");

    // The appended objects reach moto once sealed (after --seal-after without appends).
    let mut sealed = None;
    for _ in 0..100 {
        sealed = on_moto(&moto, "cli-moto/log.txt").await.map(|(b, _)| b);
        if sealed.as_deref() == Some(&b"first line\nsecond line\n"[..]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sealed.as_deref(), Some(&b"first line\nsecond line\n"[..]));
    gw.stop().await;
    let (events, _) = on_moto(&moto, "boto-moto/events")
        .await
        .expect("sealed at shutdown");
    assert_eq!(events, b"one,two");
}

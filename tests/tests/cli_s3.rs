//! The `rivulet` object commands against a real S3 API (moto on loopback), configured the AWS
//! way: credentials, region and `AWS_ENDPOINT_URL` from the environment, and `s3://` URLs that
//! carry nothing else. `cli.rs` runs the same commands over the local store.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use harness::{TestServer, rivulet_bin};

const MIB: usize = 1024 * 1024;

/// Deterministic bytes, different for each seed.
fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 13) as u8)
        .collect()
}

struct Cli<'a> {
    server: &'a TestServer,
    dir: &'a Path,
}

impl Cli<'_> {
    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(rivulet_bin());
        cmd.arg("--index")
            .arg(self.dir.join("index"))
            .arg("--cache-dir")
            .arg(self.dir.join("cache"))
            .arg("--quiet")
            .args(args)
            .env_remove("RIVULET_INDEX")
            .env_remove("RUST_LOG")
            .envs(self.server.env())
            .stdin(Stdio::null())
            .current_dir(self.dir);
        cmd.output().expect("run rivulet")
    }

    #[track_caller]
    fn ok(&self, args: &[&str]) -> Vec<u8> {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "rivulet {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    #[track_caller]
    fn text(&self, args: &[&str]) -> String {
        String::from_utf8(self.ok(args)).expect("utf-8 output")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_commands_work_against_moto_configured_the_aws_way() {
    let server = TestServer::moto().await;
    let dir = tempfile::tempdir().unwrap();
    let cli = Cli {
        server: &server,
        dir: dir.path(),
    };
    // No `?endpoint=`: AWS_ENDPOINT_URL (in the server's environment for the CLI) says where.
    let bucket = server.bucket();
    let url = |key: &str| format!("s3://{bucket}/{key}");

    // cp up: 20 MiB in parallel parts of 8 MiB.
    let big = data(20 * MIB + 123, 1);
    let local = dir.path().join("big.bin");
    std::fs::write(&local, &big).unwrap();
    cli.ok(&["cp", local.to_str().unwrap(), &url("dir/big.bin")]);
    assert_eq!(cli.ok(&["cat", &url("dir/big.bin")]), big);
    let parts = server
        .client()
        .head_object()
        .bucket(bucket)
        .key("dir/big.bin")
        .send()
        .await
        .unwrap();
    assert!(
        parts.e_tag().unwrap().ends_with("-3\""),
        "uploaded in three parts: {:?}",
        parts.e_tag()
    );

    // ls, ls -l, stat.
    assert_eq!(cli.text(&["ls", &url("")]), "dir/\n");
    // As with `aws s3 ls`: a prefix without its slash is listed as the folder, with it inside.
    assert_eq!(cli.text(&["ls", &url("dir")]), "dir/\n");
    assert_eq!(cli.text(&["ls", &url("dir/")]), "big.bin\n");
    let long = cli.text(&["ls", "-l", &url("dir/")]);
    assert!(
        long.trim_end().ends_with(&format!("{} big.bin", big.len())),
        "{long}"
    );
    let stat = cli.text(&["stat", &url("dir/big.bin")]);
    assert!(stat.contains("Key:           dir/big.bin\n"), "{stat}");
    assert!(
        stat.contains(&format!("Size:          {} (", big.len())),
        "{stat}"
    );

    // append: the object's prefix is copied server-side, the new bytes follow.
    let extra = data(3 * MIB + 7, 2);
    let extra_file = dir.path().join("extra.bin");
    std::fs::write(&extra_file, &extra).unwrap();
    cli.ok(&["append", &url("dir/big.bin"), extra_file.to_str().unwrap()]);
    let mut want = big.clone();
    want.extend_from_slice(&extra);
    assert_eq!(cli.ok(&["cat", &url("dir/big.bin")]), want);

    // truncate inside the second part, then cp down.
    let cut = 13 * MIB + 5;
    cli.ok(&["truncate", &url("dir/big.bin"), &cut.to_string()]);
    want.truncate(cut);
    let down = dir.path().join("down.bin");
    cli.ok(&["cp", &url("dir/big.bin"), down.to_str().unwrap()]);
    assert_eq!(std::fs::read(&down).unwrap(), want);

    // gc finds nothing left over; rm deletes; a missing key is one line and exit 1.
    cli.ok(&["gc", "--dry-run", &url("")]);
    cli.ok(&["rm", &url("dir/big.bin")]);
    let missing = cli.run(&["stat", &url("dir/big.bin")]);
    assert_eq!(missing.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("dir/big.bin"), "{stderr}");
    assert_eq!(cli.text(&["ls", &url("")]), "");
}

/// Runs `rivulet ARGS` with no AWS configuration at all but `env`: no credentials in the
/// environment, no profile files (HOME is `dir`), and IMDS off (its address is not loopback).
fn run_unconfigured(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(rivulet_bin());
    cmd.arg("--index")
        .arg(dir.join("index"))
        .arg("--quiet")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .current_dir(dir);
    cmd.output().expect("run rivulet")
}

/// A loopback port with nothing listening on it.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn missing_credentials_and_a_dead_endpoint_say_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f.bin");
    std::fs::write(&file, b"bytes").unwrap();
    let url = format!(
        "s3://bkt/f.bin?endpoint=http://127.0.0.1:{}&region=us-east-1",
        closed_port()
    );

    // No credentials anywhere: one line naming the object, why, and what to set; not retried.
    let out = run_unconfigured(dir.path(), &["cp", file.to_str().unwrap(), &url], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("rivulet: cp "), "{stderr}");
    assert!(
        stderr.contains("no AWS credentials could be loaded"),
        "{stderr}"
    );
    assert!(
        stderr.contains("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("DispatchFailure {"),
        "no Debug dump: {stderr}"
    );

    // Credentials, but nothing listens at the endpoint: the error says so, without a Debug dump.
    let creds = [
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
    ];
    let out = run_unconfigured(dir.path(), &["stat", &url], &creds);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("f.bin"), "{stderr}");
    assert!(stderr.contains("Connection refused"), "{stderr}");
    assert!(
        stderr.contains("nothing answers at the endpoint"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("DispatchFailure {"),
        "no Debug dump: {stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
}

/// A loopback endpoint that accepts connections and never answers (a hung server): each
/// connection is held open, its requests read and dropped. The listener lives as long as the
/// test process.
fn hung_endpoint() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut sink = [0u8; 64 * 1024];
                while matches!(std::io::Read::read(&mut conn, &mut sink), Ok(n) if n > 0) {}
            });
        }
    });
    port
}

/// An endpoint that takes the connection but never answers fails within the read timeout of
/// each attempt (`read_timeout=` in the URL), in one line that says so and what to change,
/// instead of waiting out minutes of the defaults.
#[test]
fn a_hung_endpoint_fails_within_the_read_timeout_and_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "s3://bkt/key?endpoint=http://127.0.0.1:{}&region=us-east-1&read_timeout=1s&max_attempts=2",
        hung_endpoint()
    );
    let creds = [
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
    ];
    let start = std::time::Instant::now();
    let out = run_unconfigured(dir.path(), &["stat", &url], &creds);
    let took = start.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // Two attempts of 1 s and the SDK's backoff between them: seconds, not minutes.
    assert!(
        took < std::time::Duration::from_secs(20),
        "took {took:?}: {stderr}"
    );
    assert!(
        took >= std::time::Duration::from_secs(2),
        "took {took:?}: {stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("rivulet: stat "), "{stderr}");
    assert!(stderr.contains("'key'"), "{stderr}");
    assert!(
        stderr.contains("accepted the connection but did not answer within the read timeout"),
        "{stderr}"
    );
    assert!(stderr.contains("2 attempts"), "{stderr}");
    assert!(
        stderr.contains("after 1s"),
        "the timeout's length: {stderr}"
    );
    assert!(stderr.contains("raise read_timeout="), "{stderr}");
    assert!(
        !stderr.contains("DispatchFailure {"),
        "no Debug dump: {stderr}"
    );
}

/// A server's error answer is one line with its code, message and request id, and no Debug dump
/// of the SDK's error (errors the SDK does not model, like NoSuchBucket on
/// CreateMultipartUpload, used to end in `unhandled error (…): Error { code: … }`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_one_line_without_a_debug_dump() {
    let server = TestServer::moto().await;
    let dir = tempfile::tempdir().unwrap();
    let cli = Cli {
        server: &server,
        dir: dir.path(),
    };
    let file = dir.path().join("f.bin");
    std::fs::write(&file, b"bytes").unwrap();
    let missing = "s3://rivulet-no-such-bucket/dir/f.bin";
    for args in [
        vec!["cp", file.to_str().unwrap(), missing],
        vec!["append", missing, file.to_str().unwrap()],
        vec!["truncate", missing, "3"],
        vec!["ls", "s3://rivulet-no-such-bucket/dir/"],
    ] {
        let out = cli.run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains("NoSuchBucket"), "{args:?}: {stderr}");
        assert!(stderr.contains("request id"), "{args:?}: {stderr}");
        for dump in ["Error {", "unhandled error", "service error"] {
            assert!(!stderr.contains(dump), "{args:?}: no {dump:?} in {stderr}");
        }
    }
    // A HEAD's 404 has no body to tell a missing bucket from a missing key: reads say which.
    for args in [
        vec!["cat", missing],
        vec!["stat", missing],
        vec!["rm", missing],
        vec!["cp", missing, dir.path().join("down").to_str().unwrap()],
    ] {
        let out = cli.run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.contains("dir/f.bin") && stderr.contains("NoSuchBucket"),
            "{args:?}: {stderr}"
        );
    }
    // A missing key of a bucket that exists is just that.
    let out = cli.run(&["cat", &format!("s3://{}/no/such/key", server.bucket())]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no such object 'no/such/key'") && !stderr.contains("NoSuchBucket"),
        "{stderr}"
    );
}

/// Keys as S3 has them: a prefix that matches nothing fails like `aws s3 ls`; a key with a
/// leading '/' (which Rivulet cannot address) is refused, never read as another key (`rm` of
/// `s3://bkt//slash.txt` once deleted `slash.txt`); empty segments inside a key are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_taken_as_written() {
    let server = TestServer::moto().await;
    let dir = tempfile::tempdir().unwrap();
    let cli = Cli {
        server: &server,
        dir: dir.path(),
    };
    let bucket = server.bucket();
    let url = |key: &str| format!("s3://{bucket}/{key}");
    let s3 = server.client();
    for key in ["slash.txt", "/slash.txt"] {
        s3.put_object()
            .bucket(bucket)
            .key(key)
            .body(key.as_bytes().to_vec().into())
            .send()
            .await
            .unwrap();
    }
    for args in [
        vec!["rm", "s3://BUCKET//slash.txt"],
        vec!["cat", "s3://BUCKET//slash.txt"],
        vec!["ls", "s3://BUCKET//"],
    ] {
        let args: Vec<String> = args.iter().map(|a| a.replace("BUCKET", bucket)).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = cli.run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{args:?}");
        assert!(stderr.contains("starts with '/'"), "{args:?}: {stderr}");
    }
    for key in ["slash.txt", "/slash.txt"] {
        let got = s3
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .unwrap();
        let body = got.body.collect().await.unwrap().into_bytes();
        assert_eq!(&body[..], key.as_bytes(), "{key} untouched");
    }

    let file = dir.path().join("f.txt");
    std::fs::write(&file, b"inner").unwrap();
    cli.ok(&["cp", file.to_str().unwrap(), &url("k//lead.txt")]);
    assert_eq!(cli.ok(&["cat", &url("k//lead.txt")]), b"inner");
    assert_eq!(cli.text(&["ls", &url("k//")]), "lead.txt\n");
    assert_eq!(cli.text(&["ls", &url("k/")]), "/\n");

    let out = cli.run(&["ls", &url("nothing-here/")]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("nothing matches 'nothing-here/'"),
        "{stderr}"
    );
}

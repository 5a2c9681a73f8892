//! The service harness for Rivulet's cross-crate tests: S3 API servers on loopback.
//!
//! [`TestServer`] starts `moto_server` (moto, which enforces S3's rules closely) or `s3s-fs` (a
//! fast S3 API over a directory) on a free 127.0.0.1 port, waits until it answers, creates a
//! fresh bucket and hands out [`DynStore`]s on it. The process is killed when the value drops.
//!
//! A missing binary or a server that does not come up is a test FAILURE (a panic naming the
//! binary and `scripts/install-test-deps.sh`, with the tail of the server's log), never a skip.
//!
//! Binaries are looked up as follows:
//! - moto: `$RIVULET_VENV/bin/moto_server`, else `~/.cache/rivulet-venv/bin/moto_server`, else
//!   `moto_server` on `PATH`;
//! - s3s-fs: `s3s-fs` on `PATH`, else `~/.cargo/bin/s3s-fs`.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use fs_core::store::DynStore;
use fs_core::store::s3::{S3Config, S3Store};
use tempfile::TempDir;

pub mod gateway;

/// The region every test server is addressed with.
pub const REGION: &str = "us-east-1";

/// How long a server may take to start answering.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

const INSTALL_HINT: &str = "run scripts/install-test-deps.sh to install the test servers";

/// Which S3 API server to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerKind {
    /// `moto_server` (Python moto), from the venv that `scripts/install-test-deps.sh` creates.
    Moto,
    /// `s3s-fs` 0.14, an S3 API over a local directory.
    S3sFs,
}

impl ServerKind {
    /// The binary's name, as in messages.
    pub fn binary_name(self) -> &'static str {
        match self {
            ServerKind::Moto => "moto_server",
            ServerKind::S3sFs => "s3s-fs",
        }
    }

    /// Where the binary is, or `None` if it is not installed.
    pub fn find_binary(self) -> Option<PathBuf> {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let mut candidates = Vec::new();
        match self {
            ServerKind::Moto => {
                if let Some(venv) = std::env::var_os("RIVULET_VENV") {
                    candidates.push(PathBuf::from(venv).join("bin/moto_server"));
                }
                if let Some(home) = &home {
                    candidates.push(home.join(".cache/rivulet-venv/bin/moto_server"));
                }
                candidates.extend(on_path("moto_server"));
            }
            ServerKind::S3sFs => {
                candidates.extend(on_path("s3s-fs"));
                if let Some(home) = &home {
                    candidates.push(home.join(".cargo/bin/s3s-fs"));
                }
            }
        }
        candidates.into_iter().find(|p| is_executable(p))
    }
}

fn on_path(name: &str) -> Vec<PathBuf> {
    std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(name))
                .collect()
        })
        .unwrap_or_default()
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A free TCP port on 127.0.0.1 (free when asked; the server binds it right after).
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}

/// The last `max` bytes of a log file, for panic messages.
fn tail(path: &Path, max: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = file.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    if text.trim().is_empty() {
        "(the log is empty)".to_string()
    } else {
        text
    }
}

/// A running S3 API server with a bucket of its own; killed on drop.
pub struct TestServer {
    kind: ServerKind,
    binary: PathBuf,
    child: Child,
    port: u16,
    bucket: String,
    access_key: String,
    secret_key: String,
    /// Holds the server's log and (s3s-fs) its data directory.
    work: TempDir,
}

impl std::fmt::Debug for TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestServer")
            .field("kind", &self.kind)
            .field("endpoint", &self.endpoint())
            .field("bucket", &self.bucket)
            .field("pid", &self.child.id())
            .finish()
    }
}

impl TestServer {
    /// Starts moto.
    pub async fn moto() -> TestServer {
        Self::start(ServerKind::Moto).await
    }

    /// Starts s3s-fs over a fresh temporary directory.
    pub async fn s3s_fs() -> TestServer {
        Self::start(ServerKind::S3sFs).await
    }

    /// Starts a server of `kind`, waits (at most [`STARTUP_TIMEOUT`]) until it answers and
    /// creates a fresh bucket. Panics if the binary is missing or the server does not come up.
    pub async fn start(kind: ServerKind) -> TestServer {
        let binary = kind.find_binary().unwrap_or_else(|| {
            panic!(
                "\n\n*** TEST SERVER MISSING: `{}` was not found ({}). {INSTALL_HINT}. ***\n\n",
                kind.binary_name(),
                match kind {
                    ServerKind::Moto =>
                        "looked in $RIVULET_VENV/bin, ~/.cache/rivulet-venv/bin and PATH",
                    ServerKind::S3sFs => "looked in PATH and ~/.cargo/bin",
                }
            )
        });
        let suffix = format!("{:016x}", rand::random::<u64>());
        let bucket = format!("rivulet-{suffix}");
        let access_key = format!("rivulet-test-{}", &suffix[..8]);
        let secret_key = format!("rivulet-secret-{suffix}");
        let mut work = tempfile::Builder::new()
            .prefix(&format!("rivulet-{}-", kind.binary_name()))
            .tempdir()
            .expect("cannot create a temporary directory for the test server");

        // The port is free when picked but another process may take it before the server binds
        // it: try a few ports when the server exits early.
        const TRIES: usize = 3;
        for attempt in 1..=TRIES {
            let port = free_port();
            let log_path = work.path().join(format!("server-{attempt}.log"));
            let log = File::create(&log_path).expect("cannot create the server log");
            let mut cmd = Command::new(&binary);
            match kind {
                ServerKind::Moto => {
                    cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
                }
                ServerKind::S3sFs => {
                    let data = work.path().join("data");
                    std::fs::create_dir_all(&data)
                        .expect("cannot create the s3s-fs data directory");
                    cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
                        .args(["--access-key", &access_key, "--secret-key", &secret_key])
                        .arg(&data);
                }
            }
            cmd.stdin(Stdio::null())
                .stdout(log.try_clone().expect("cannot share the server log"))
                .stderr(log)
                // Python: make the log appear as it is written.
                .env("PYTHONUNBUFFERED", "1");
            let child = cmd.spawn().unwrap_or_else(|e| {
                panic!(
                    "\n\n*** cannot start `{}` ({e}). {INSTALL_HINT}. ***\n\n",
                    binary.display()
                )
            });
            let mut server = TestServer {
                kind,
                binary: binary.clone(),
                child,
                port,
                bucket: bucket.clone(),
                access_key: access_key.clone(),
                secret_key: secret_key.clone(),
                work,
            };
            match server.wait_until_ready(&log_path).await {
                Ok(()) => return server,
                Err(why) => {
                    let exited = server.child.try_wait().ok().flatten().is_some();
                    if exited && attempt < TRIES {
                        // Probably lost the port race: the guard's drop kills nothing alive.
                        work = server.take_work();
                        continue;
                    }
                    let log_tail = tail(&log_path, 4000);
                    let binary = server.binary.display().to_string();
                    // Keep the log for a post-mortem (the server is killed first).
                    let kept = server.take_work().keep();
                    panic!(
                        "\n\n*** TEST SERVER `{binary}` DID NOT COME UP on 127.0.0.1:{port}: {why}. \
                         If it is not installed properly, {INSTALL_HINT}. ***\n\
                         --- last lines of its log (kept in {}) ---\n{log_tail}\n---\n",
                        kept.display()
                    );
                }
            }
        }
        unreachable!("the loop returns or panics")
    }

    /// Moves the work directory out of a failed server (which is then dropped and killed).
    fn take_work(mut self) -> TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let placeholder = tempfile::tempdir().expect("cannot create a temporary directory");
        std::mem::replace(&mut self.work, placeholder)
    }

    async fn wait_until_ready(&mut self, log_path: &Path) -> Result<(), String> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let client = self.client();
        let mut last_error = String::from("it never accepted a connection");
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("the process exited ({status})"));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no answer within {:?} (last error: {last_error}; log {})",
                    STARTUP_TIMEOUT,
                    log_path.display()
                ));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                match client.create_bucket().bucket(&self.bucket).send().await {
                    Ok(_) => return Ok(()),
                    Err(e) => {
                        last_error = format!(
                            "CreateBucket failed: {}",
                            aws_sdk_s3::error::DisplayErrorContext(&e)
                        );
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn kind(&self) -> ServerKind {
        self.kind
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The bucket created for this server (`rivulet-<random>`).
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// `(access key id, secret access key)` the server accepts.
    pub fn credentials(&self) -> (&str, &str) {
        (&self.access_key, &self.secret_key)
    }

    pub fn access_key(&self) -> &str {
        &self.access_key
    }

    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// `s3://bucket?endpoint=http://127.0.0.1:PORT&path_style=true&region=us-east-1`. The URL
    /// carries no credentials: pass [`TestServer::env`] to processes that open it.
    pub fn store_url(&self) -> String {
        format!(
            "s3://{}?endpoint={}&path_style=true&region={REGION}",
            self.bucket,
            self.endpoint()
        )
    }

    /// The store URL of a prefix of the bucket.
    pub fn store_url_with_prefix(&self, prefix: &str) -> String {
        format!(
            "s3://{}/{}?endpoint={}&path_style=true&region={REGION}",
            self.bucket,
            prefix.trim_matches('/'),
            self.endpoint()
        )
    }

    /// Environment for a child process (the CLI) that talks to this server: credentials, region
    /// and endpoint, and no profile files from the developer's machine.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
            ("AWS_REGION", REGION.to_string()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_CONFIG_FILE", "/dev/null".to_string()),
            ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null".to_string()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
        ]
    }

    /// A store configuration for `prefix` of the bucket, with explicit endpoint, region and
    /// credentials (nothing comes from `~/.aws` or the environment).
    pub fn config(&self, prefix: &str) -> S3Config {
        let mut config = S3Config::new(&self.bucket);
        config.prefix = prefix.to_string();
        config.endpoint = Some(self.endpoint());
        config.region = Some(REGION.to_string());
        config.path_style = true;
        config.credentials = Some((self.access_key.clone(), self.secret_key.clone()));
        // s3s-fs completes only uploads numbered 1..n without gaps.
        config.contiguous_parts = self.kind == ServerKind::S3sFs;
        config
    }

    /// A store on the whole bucket.
    pub async fn store(&self) -> DynStore {
        self.store_with_prefix("").await
    }

    /// A store on `prefix/` of the bucket.
    pub async fn store_with_prefix(&self, prefix: &str) -> DynStore {
        Arc::new(self.s3_store(prefix).await)
    }

    /// The concrete S3 store on `prefix/` of the bucket.
    pub async fn s3_store(&self, prefix: &str) -> S3Store {
        S3Store::new(self.config(prefix))
            .await
            .unwrap_or_else(|e| panic!("cannot open the S3 store of {self:?}: {e}"))
    }

    /// A raw SDK client for this server (explicit credentials, path style, no checksums unless
    /// required), for tests that need S3 calls the store does not make.
    pub fn client(&self) -> aws_sdk_s3::Client {
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .endpoint_url(self.endpoint())
            .credentials_provider(Credentials::new(
                self.access_key.clone(),
                self.secret_key.clone(),
                None,
                None,
                "rivulet-test-server",
            ))
            .force_path_style(true)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    /// The newest `.log` file in the server's work directory.
    fn newest_log(&self) -> Option<std::path::PathBuf> {
        std::fs::read_dir(self.work.path())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .max()
    }

    /// The server's whole log (for tests that count the requests it logs, as moto does).
    pub fn log_text(&self) -> String {
        self.newest_log()
            .and_then(|path| std::fs::read_to_string(path).ok())
            .unwrap_or_default()
    }

    /// The last bytes of the server's log, for diagnosing a failing test.
    pub fn log_tail(&self) -> String {
        match self.newest_log() {
            Some(path) => tail(&path, 4000),
            None => "(no log)".to_string(),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The seed of a randomized test: `$var` when set (to replay a run), else the clock. Printed,
/// with the variable that replays it.
pub fn seed(var: &str, what: &str) -> u64 {
    let seed = std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
    eprintln!("{what}: seed {seed} (replay with {var}={seed})");
    seed
}

/// The `rivulet` binary of this build, for tests that run the command line: beside the test
/// binary (`target/debug/deps/<test>-<hash>` -> `target/debug/rivulet`) or under
/// `$CARGO_TARGET_DIR`. Panics with what to do when it is missing (tests fail, never skip).
pub fn rivulet_bin() -> PathBuf {
    let mut candidates = Vec::new();
    // target/debug/deps/<test>-<hash> -> target/debug/rivulet
    if let Ok(exe) = std::env::current_exe()
        && let Some(deps) = exe.parent()
    {
        candidates.push(deps.join("../rivulet"));
        candidates.push(deps.join("rivulet"));
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(target).join("debug/rivulet"));
    }
    candidates.iter().find(|p| p.is_file()).cloned().unwrap_or_else(|| {
        panic!(
            "the rivulet binary is missing (looked at {candidates:?}): build the workspace first \
             with `cargo build --workspace`"
        )
    })
}

/// A program from the test venv (`scripts/install-test-deps.sh` puts the AWS CLI and boto3
/// there): `$RIVULET_VENV/bin/NAME`, else `~/.cache/rivulet-venv/bin/NAME`. The test fails,
/// never skips, when it is missing.
pub fn venv_program(name: &str) -> std::path::PathBuf {
    use std::path::PathBuf;
    let venv = std::env::var_os("RIVULET_VENV")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/rivulet-venv")))
        .expect("RIVULET_VENV or HOME");
    let path = venv.join("bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/install-test-deps.sh",
        path.display()
    );
    path
}

//! Helpers shared by the engine's cross-process tests: the test job, `rivulet` processes
//! with their logs, and what a run left in a local store.

// Each test binary that includes this module uses a different subset of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::rivulet_bin;
use tempfile::TempDir;

/// The cluster's shared secret in these tests.
pub const TOKEN: &str = "engine-test-token";

/// The job: bids (rate-limited so that it runs long enough to be killed in), a filter and
/// projection into CSV files, and a keyed tumbling-window count into JSON-lines files.
pub fn job_file(count: u64, rate: Option<u64>) -> String {
    let rate = rate.map(|r| format!("rate = {r}\n")).unwrap_or_default();
    format!(
        r#"
name = "exactly-once"
parallelism = 2

[checkpoint]
interval = "300ms"

[restart]
attempts = 50
delay = "200ms"

[[source]]
id = "bids"
kind = "nexmark"
events = "bid"
count = {count}
{rate}
[[operator]]
id = "big"
kind = "filter"
where = "price > 3000"

[[operator]]
id = "project"
kind = "map"
fields = ["auction", "bidder", "price", "date_time"]

[[operator]]
id = "per-auction"
input = "bids"
kind = "window"
key_by = ["auction"]
window = "tumbling"
size = "1s"
aggregates = ["bids = count()", "top = max(price)"]

[[sink]]
id = "big-bids"
input = "project"
kind = "file"
path = "out/big"
format = "csv"
bucket_time = "event"
max_part_size = "64KiB"

[[sink]]
id = "counts"
input = "per-auction"
kind = "file"
path = "out/counts"
format = "json"
bucket_time = "event"
"#
    )
}

/// A `rivulet` process with its log in a file.
pub struct Process {
    pub child: Child,
    pub log: PathBuf,
}

impl Process {
    pub fn start(args: &[&str], log: PathBuf, index: &Path) -> Process {
        Self::start_in(None, args, log, index)
    }

    /// Starts `rivulet ARGS` inside the network namespace `netns` (with `ip netns exec`,
    /// which execs rivulet in place: the child is rivulet itself, so killing it kills
    /// rivulet), or in this one.
    pub fn start_in(netns: Option<&str>, args: &[&str], log: PathBuf, index: &Path) -> Process {
        let err = fs::File::create(&log).expect("a log file");
        let mut command = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(rivulet_bin());
                c
            }
            None => Command::new(rivulet_bin()),
        };
        let child = command
            .args(args)
            .arg("--index")
            .arg(index)
            .env("RIVULET_CLUSTER_TOKEN", TOKEN)
            .env("RUST_LOG", "warn,engine=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("starting rivulet");
        Process { child, log }
    }

    pub fn kill(mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a job manager prints once it has bound its port: `job manager on http://ADDR (...`.
const SERVING: &str = "job manager on http://";

/// Starts `rivulet jobmanager --listen LISTEN ARGS` (in `netns`, or in this namespace) and
/// waits until it serves; returns it with the address it bound.
///
/// With port 0 in `listen` the job manager binds a port the system picks and the address is
/// read from its log: no port is chosen beforehand, so no other process can take it between
/// the choice and the bind (which made tests fail with "Address already in use"). With a
/// fixed port (a restarted job manager that must come back where its task managers and
/// clients look for it), a bind that fails because the port is taken, briefly, by someone
/// else is retried for up to 30 s.
pub fn start_jobmanager(
    netns: Option<&str>,
    listen: &str,
    args: &[&str],
    log: PathBuf,
    index: &Path,
) -> (Process, SocketAddr) {
    let mut all = vec!["jobmanager", "--listen", listen];
    all.extend_from_slice(args);
    let give_up = Instant::now() + Duration::from_secs(30);
    loop {
        let mut process = Process::start_in(netns, &all, log.clone(), index);
        let started = Instant::now();
        loop {
            let text = fs::read_to_string(&log).unwrap_or_default();
            if let Some(address) = serving_address(&text) {
                return (process, address);
            }
            if let Some(status) = process
                .child
                .try_wait()
                .expect("waiting for the job manager")
            {
                // Read again: the process may have written its last lines as it exited.
                let text = fs::read_to_string(&log).unwrap_or_default();
                if let Some(address) = serving_address(&text) {
                    return (process, address);
                }
                if text.contains("Address already in use") && Instant::now() < give_up {
                    eprintln!("job manager: {listen} is taken, starting it again");
                    std::thread::sleep(Duration::from_millis(200));
                    break;
                }
                panic!("the job manager on {listen} exited ({status}):\n{text}");
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the job manager on {listen} did not start serving in 60 s:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The address in a job manager's "job manager on http://ADDR ..." line.
fn serving_address(log: &str) -> Option<SocketAddr> {
    log.lines()
        .find_map(|l| l.split_once(SERVING))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
}

/// One request to a job manager's REST API with the cluster's token (`token`: `None` for
/// none): the status code and the body as JSON (`Null` if it is not JSON).
pub fn rest(
    address: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, serde_json::Value) {
    let (status, body) = rest_text(address, method, path, token);
    (status, serde_json::from_str(&body).unwrap_or_default())
}

/// One request to a job manager's REST API, with an empty body: the status code and the body
/// as text. Plain HTTP/1.1 on a socket (`Connection: close`, so the body ends where the
/// connection does): the tests need no HTTP client library for it.
pub fn rest_text(address: &str, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(address).expect("connecting to the job manager");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\n{auth}Content-Length: 0\r\n\
         Connection: close\r\n\r\n"
    )
    .expect("sending the request");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("reading the answer");
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head}"));
    (status, body.to_string())
}

/// Every line of every finished file under `out/`, counted.
pub fn output_lines(store: &Path) -> BTreeMap<String, usize> {
    let mut lines = BTreeMap::new();
    for path in published_files(store).into_keys() {
        let prefix = path
            .strip_prefix(store)
            .unwrap()
            .components()
            .take(2)
            .map(|c| c.as_os_str().to_string_lossy().to_string())
            .collect::<Vec<_>>()
            .join("/");
        for line in fs::read_to_string(&path).unwrap().lines() {
            *lines.entry(format!("{prefix}: {line}")).or_default() += 1;
        }
    }
    lines
}

/// The reference: the same events, no rate limit, embedded, no failures.
pub fn reference_output(events: u64) -> BTreeMap<String, usize> {
    let dir = TempDir::new().unwrap();
    let file = dir.path().join("job.toml");
    fs::write(&file, job_file(events, None)).unwrap();
    let store = dir.path().join("store");
    let out = Command::new(rivulet_bin())
        .args(["run", "--quiet", "--store"])
        .arg(&store)
        .arg("--index")
        .arg(dir.path().join("index"))
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the reference run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    output_lines(&store)
}

/// Writes an object into a local store (input for a `files` source).
pub fn put_object(store: &Path, key: &str, body: &[u8]) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        use fs_core::store::ObjectStore;
        let store = fs_core::store::local::LocalStore::open(store).unwrap();
        store
            .put(
                key,
                bytes::Bytes::copy_from_slice(body),
                fs_core::store::PutOptions::default(),
            )
            .await
            .unwrap();
    })
}

/// A job that runs until it is cancelled and has files in progress in thousands of buckets:
/// rate-limited bids bucketed by channel (a high-cardinality field), checkpoints every
/// 300 ms, small part files so that some roll and are published while the job runs.
pub fn many_buckets_job(rate: u64) -> String {
    format!(
        r#"
name = "many-buckets"
parallelism = 2

[checkpoint]
interval = "300ms"

[[source]]
id = "bids"
kind = "nexmark"
events = "bid"
rate = {rate}

[[sink]]
id = "out"
input = "bids"
kind = "file"
path = "out/bids"
format = "csv"
bucket_field = "channel"
max_part_size = "16KiB"
"#
    )
}

/// The published files under `out/` of a local store, with their sizes.
pub fn published_files(store: &Path) -> BTreeMap<PathBuf, u64> {
    let mut files = BTreeMap::new();
    let mut stack = vec![store.join("out")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with('.') || name.starts_with('_') {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(meta) = entry.metadata() {
                files.insert(path, meta.len());
            }
        }
    }
    files
}

/// Asserts that every file `before` listed (from [`published_files`]) is still published, at
/// the same size: what completed checkpoints published survives whatever came after.
#[track_caller]
pub fn assert_still_published(store: &Path, before: &BTreeMap<PathBuf, u64>) {
    let after = published_files(store);
    for (file, size) in before {
        assert_eq!(
            after.get(file),
            Some(size),
            "{} changed or went",
            file.display()
        );
    }
}

/// Multipart uploads still open in a local store (in-progress or pending files).
pub fn open_uploads(store: &Path) -> usize {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    use fs_core::store::ObjectStoreExt;
    let store = fs_core::store::local::LocalStore::open(store).unwrap();
    // Every page: a cancelled job may leave thousands.
    runtime.block_on(store.list_all_uploads("")).unwrap().len()
}

/// The keys of the multipart uploads still open in a local store, sorted.
pub fn open_upload_keys(store: &Path) -> Vec<String> {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    use fs_core::store::ObjectStoreExt;
    let store = fs_core::store::local::LocalStore::open(store).unwrap();
    let mut keys: Vec<String> = runtime
        .block_on(store.list_all_uploads(""))
        .unwrap()
        .into_iter()
        .map(|u| u.key)
        .collect();
    keys.sort();
    keys
}

/// Tail objects still in a local store (fs-core stages them at persists and deletes them when
/// their upload is committed or abandoned).
pub fn leftover_tails(store: &Path) -> Vec<String> {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        use fs_core::store::ObjectStoreExt;
        let store = fs_core::store::local::LocalStore::open(store).unwrap();
        store
            .list_all(".rivulet/tails/")
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect()
    })
}

/// Runs `rivulet gc` on a finished job's local store (nothing is open any more, so any age
/// counts) and returns the tail objects left after it, which should be none: tails a killed
/// process could not delete are garbage that gc collects. Prints how many there were before.
pub fn tails_after_gc(store: &Path) -> Vec<String> {
    let before = leftover_tails(store);
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(harness::rivulet_bin())
        .arg("gc")
        .arg("--older-than")
        .arg("0s")
        .arg("--index")
        .arg(dir.path().join("index"))
        .arg(store)
        .output()
        .expect("run rivulet gc");
    assert!(
        out.status.success(),
        "rivulet gc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{} tail objects before gc", before.len());
    leftover_tails(store)
}

/// Fails, showing a few differing lines, unless `got` equals `expected` as a multiset of lines.
pub fn assert_same_output(
    expected: &BTreeMap<String, usize>,
    got: &BTreeMap<String, usize>,
    context: &str,
) {
    if got == expected {
        return;
    }
    let missing: Vec<_> = expected
        .iter()
        .filter(|(l, n)| got.get(*l) != Some(n))
        .take(5)
        .collect();
    let extra: Vec<_> = got
        .iter()
        .filter(|(l, n)| expected.get(*l) != Some(n))
        .take(5)
        .collect();
    panic!(
        "{context}: the output differs from the failure-free run's ({} vs {} distinct lines); \
         missing or miscounted {missing:?}; extra {extra:?}",
        got.len(),
        expected.len()
    );
}

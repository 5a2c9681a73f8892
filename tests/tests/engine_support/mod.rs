//! Helpers shared by the engine's cross-process tests: the test job, `rivulet` processes
//! with their logs, and what a run left in a local store.

// Each test binary that includes this module uses a different subset of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

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

/// Every line of every finished file under `out/`, counted.
pub fn output_lines(store: &Path) -> BTreeMap<String, usize> {
    let mut lines = BTreeMap::new();
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
            } else {
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

/// Multipart uploads still open in a local store (in-progress or pending files).
pub fn open_uploads(store: &Path) -> usize {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        use fs_core::store::ObjectStore;
        let store = fs_core::store::local::LocalStore::open(store).unwrap();
        store
            .list_multipart_uploads("", None)
            .await
            .map(|page| page.uploads.len())
            .unwrap()
    })
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

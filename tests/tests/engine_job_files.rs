//! `rivulet run` with bad job files and bad input records, as a user meets them: a bad job
//! file exits non-zero with one line naming where the mistake is, before anything runs; a
//! `files` source over a local store skips malformed lines with `on_error = "skip"` and fails
//! the job naming `key:line` with `on_error = "fail"`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use harness::rivulet_bin;
use tempfile::TempDir;

mod engine_support;

use engine_support::{
    assert_still_published, leftover_tails, many_buckets_job, open_uploads, output_lines,
    published_files,
};

fn run(dir: &Path, job: &str) -> Output {
    let file = dir.join("job.toml");
    fs::write(&file, job).unwrap();
    Command::new(rivulet_bin())
        .args(["run", "--json", "--store"])
        .arg(dir.join("store"))
        .arg("--index")
        .arg(dir.join("store").join("idx"))
        .arg(&file)
        .output()
        .expect("running rivulet")
}

/// The error lines of a failed run (stderr, less any log lines the runtime printed).
fn error_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

const GOOD: &str = r#"
name = "cli"

[[source]]
id = "bids"
kind = "nexmark"
count = 1000

[[operator]]
id = "big"
kind = "filter"
where = "price > 100"

[[sink]]
id = "out"
kind = "discard"
"#;

#[test]
fn a_bad_job_file_exits_non_zero_with_one_line_naming_the_mistake() {
    let dir = TempDir::new().unwrap();
    let good = run(dir.path(), GOOD);
    assert!(
        good.status.success(),
        "the good job failed: {}",
        String::from_utf8_lossy(&good.stderr)
    );

    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            GOOD.replace("count = 1000", "count = 1000\ncuont = 3"),
            // GOOD starts with a newline: `count` is on its line 7, `cuont` on line 8.
            vec!["line 8, cuont", "unknown field"],
        ),
        (
            GOOD.replace("price > 100", "prise > 100"),
            vec!["operator big.where", "prise", "price", "auction"],
        ),
        (
            GOOD.replace("id = \"out\"", "id = \"out\"\ninput = \"nope\""),
            vec!["sink out.input", "nope"],
        ),
        (GOOD.replace("id = \"big\"", "id = \"bids\""), vec!["bids", "unique"]),
        (
            format!("{GOOD}\n[checkpoint]\ninterval = \"often\"\n"),
            vec!["checkpoint.interval", "often"],
        ),
        (
            GOOD.replace("kind = \"filter\"\nwhere = \"price > 100\"", "kind = \"window\"\nkey_by = [\"auction\"]\nwindow = \"sliding\"\nsize = \"10s\"\naggregates = [\"count()\"]"),
            vec!["big.slide"],
        ),
        (
            GOOD.replace("name = \"cli\"", "name = \"cli\"\nparallelism = 100000"),
            vec!["parallelism", "100000", "32768"],
        ),
        (
            GOOD.replace("id = \"big\"", "id = \"big\"\nparallelism = 300"),
            vec!["300 slots", "at most 256", "cluster"],
        ),
        (GOOD.replace("name = \"cli\"", "name = \" \""), vec!["name", "empty"]),
    ];
    let records = || {
        fs::read_dir(dir.path().join("store/_jobs"))
            .unwrap()
            .count()
    };
    let recorded = records();
    for (job, needles) in cases {
        let out = run(dir.path(), &job);
        assert_eq!(
            out.status.code(),
            Some(1),
            "a bad job did not exit 1: {job}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout.is_empty(), "a bad job printed a summary: {job}");
        let lines = error_lines(&out);
        assert_eq!(lines.len(), 1, "not one line: {lines:?}\n{job}");
        for needle in needles {
            assert!(
                lines[0].contains(needle),
                "`{}` does not mention `{needle}`",
                lines[0]
            );
        }
        assert!(lines[0].contains("job.toml"), "{}", lines[0]);
    }
    // Refused before anything was recorded: no run of a bad job file for the next run to
    // supersede.
    assert_eq!(records(), recorded);
}

/// Two input files with a malformed line each: `x` is not an int (a.csv line 2) and a line
/// with one field where two are due (b.csv line 3).
fn put_input(store: &Path) {
    let dir = store.join("input");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("a.csv"), "1,one\nx,two\n3,three\n").unwrap();
    fs::write(dir.join("b.csv"), "4,four\n5,five\n6\n7,seven\n").unwrap();
}

fn files_job(on_error: &str) -> String {
    format!(
        r#"
name = "malformed-{on_error}"

[restart]
strategy = "none"

[[source]]
id = "in"
kind = "files"
prefix = "input/"
format = "csv"
schema = ["n:int", "word:string"]
on_error = "{on_error}"

[[sink]]
id = "out"
kind = "file"
path = "out/rows"
format = "csv"
bucket_field = "word"
"#
    )
}

#[test]
fn malformed_lines_are_skipped_or_fail_the_job() {
    let dir = TempDir::new().unwrap();
    put_input(&dir.path().join("store"));
    let out = run(dir.path(), &files_job("skip"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["state"]["state"], "FINISHED", "{summary}");
    assert_eq!(summary["events"], 5, "{summary}");
    assert_eq!(summary["malformed_records"], 2, "{summary}");
    let mut rows: Vec<String> = output_lines(&dir.path().join("store"))
        .into_iter()
        .flat_map(|(line, n)| std::iter::repeat_n(line, n))
        .map(|l| l.rsplit(": ").next().unwrap().to_string())
        .collect();
    rows.sort();
    assert_eq!(rows, ["1,one", "3,three", "4,four", "5,five", "7,seven"]);

    let dir = TempDir::new().unwrap();
    put_input(&dir.path().join("store"));
    let out = run(dir.path(), &files_job("fail"));
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains("failed") && last.contains("input/a.csv:2"),
        "{err}"
    );
    assert!(
        output_lines(&dir.path().join("store")).is_empty(),
        "a failed job published output"
    );
    // The rows read before the bad line count as the source's events, as they do for the sink.
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        summary["events"].as_u64() >= summary["records_to_sinks"].as_u64()
            && summary["events"].as_u64() > Some(0),
        "{summary}"
    );
}

/// The README's main job as a user first runs it: `rivulet run jobs/quickstart.toml` in an
/// empty directory, without `--store`. It writes to `./rivulet-data`, reports its progress
/// every second and a summary on stderr, and ends with finished files only: no upload left
/// open and no tail object left behind.
#[test]
fn the_quickstart_job_runs_on_the_default_store_and_reports_its_progress() {
    let repository = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(
            || env!("CARGO_MANIFEST_DIR").into(),
            std::path::PathBuf::from,
        )
        .join("..");
    let job = repository.join("jobs").join("quickstart.toml");
    let dir = TempDir::new().unwrap();
    let started = std::time::Instant::now();
    let out = Command::new(rivulet_bin())
        .args(["run"])
        .arg(&job)
        .current_dir(dir.path())
        .env("RIVULET_INDEX", dir.path().join("index"))
        .output()
        .expect("running rivulet");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let store = dir.path().join("rivulet-data");
    assert!(
        stderr.contains(&format!("on file://{}", store.display())),
        "the default store is ./rivulet-data: {stderr}"
    );
    let progress = stderr
        .lines()
        .filter(|l| l.starts_with('[') && l.contains("events (") && l.contains("checkpoints"))
        .count();
    assert!(progress >= 1, "no progress line: {stderr}");
    assert!(stderr.contains("Finished after"), "{stderr}");
    assert!(
        stderr.contains("big-bids-csv: 2 finished files")
            && stderr.contains("hot-auctions-json: 2 finished files"),
        "{stderr}"
    );
    // Finished part files, two of each sink, in their date-time buckets.
    for (sink, extension) in [("big-bids", ".csv"), ("hot-auctions", ".jsonl")] {
        let mut parts = Vec::new();
        let root = store.join("out").join("quickstart").join(sink);
        for bucket in fs::read_dir(&root).unwrap() {
            for file in fs::read_dir(bucket.unwrap().path()).unwrap() {
                let file = file.unwrap();
                let name = file.file_name().to_string_lossy().into_owned();
                assert!(file.metadata().unwrap().len() > 0, "{name} is empty");
                parts.push(name);
            }
        }
        assert_eq!(parts.len(), 2, "{sink}: {parts:?}");
        assert!(
            parts
                .iter()
                .all(|p| p.starts_with("part-") && p.ends_with(extension)),
            "{sink}: {parts:?}"
        );
    }
    assert_eq!(engine_support::open_uploads(&store), 0);
    assert!(engine_support::leftover_tails(&store).is_empty());
    // Well under a minute in a release build; this debug build needs about 10 s.
    assert!(started.elapsed() < std::time::Duration::from_secs(120));
}

/// A second run of a job writes beside the first run's files; its summary counts its own.
#[test]
fn a_runs_summary_counts_its_own_files_only() {
    let dir = TempDir::new().unwrap();
    put_input(&dir.path().join("store"));
    let mut counts = Vec::new();
    for _ in 0..2 {
        let out = run(dir.path(), &files_job("skip"));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        counts.push(summary["outputs"][0]["finished_files"].clone());
    }
    // One bucket, and so one file, a word: one, three, four, five, seven.
    assert_eq!(counts, [serde_json::json!(5), serde_json::json!(5)]);
    let lines = output_lines(&dir.path().join("store"));
    assert_eq!(lines.values().sum::<usize>(), 10, "{lines:?}");
}

#[test]
fn zero_slots_or_task_managers_are_refused() {
    let dir = TempDir::new().unwrap();
    let file = dir.path().join("job.toml");
    fs::write(&file, GOOD).unwrap();
    for flag in ["--slots", "--task-managers"] {
        let out = Command::new(rivulet_bin())
            .args(["run", flag, "0", "--store"])
            .arg(dir.path().join("store"))
            .arg(&file)
            .output()
            .expect("running rivulet");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag}: {stderr}");
        assert!(
            stderr.contains(flag) && stderr.contains("at least 1"),
            "{stderr}"
        );
    }
}

/// A `rivulet run` of a job with files in progress in thousands of buckets, over the local
/// store `store` and the index `index`, let run until checkpoints have published files and
/// hundreds are in progress (with tails).
fn a_run_with_files_in_progress(
    dir: &Path,
    stderr: std::process::Stdio,
) -> (std::process::Child, PathBuf, PathBuf) {
    let file = dir.join("job.toml");
    fs::write(&file, many_buckets_job(5_000)).unwrap();
    let store = dir.join("store");
    let index = dir.join("index");
    let child = Command::new(rivulet_bin())
        .args(["run", "--store"])
        .arg(&store)
        .arg(&file)
        .env("RIVULET_INDEX", &index)
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("running rivulet");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while open_uploads(&store) < 300 || published_files(&store).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the run did not get going in 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // A checkpoint or two more, so that files in progress have tails.
    std::thread::sleep(std::time::Duration::from_millis(800));
    (child, store, index)
}

/// Nothing of the run's files in progress is left: no open upload, no tail, nothing the index
/// lists for `rivulet recover` to resume or abort; what was `published` stays.
fn assert_nothing_left_but(
    store: &Path,
    index: &Path,
    published: &BTreeMap<PathBuf, u64>,
    log: &str,
) {
    assert_eq!(open_uploads(store), 0, "{log}");
    assert!(leftover_tails(store).is_empty(), "{log}");
    assert_still_published(store, published);
    let out = Command::new(rivulet_bin())
        .args(["recover", "--index"])
        .arg(index)
        .arg(store)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        !text.contains("out/bids/"),
        "rivulet recover lists files: {text}"
    );
}

/// Ctrl-C on `rivulet run` (the embedded cluster) of a job with files in progress in thousands
/// of buckets: the run is cancelled, what its checkpoints published stays, and every other
/// file is abandoned: no open upload, no tail, nothing for `rivulet recover` to list.
#[test]
fn an_interrupted_run_abandons_its_files_in_progress() {
    let dir = TempDir::new().unwrap();
    let (child, store, index) = a_run_with_files_in_progress(dir.path(), Stdio::piped());
    let published = published_files(&store);
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let started = std::time::Instant::now();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("the run ended {:?} after SIGINT", started.elapsed());
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("the job was cancelled"), "{stderr}");
    assert_nothing_left_but(&store, &index, &published, &stderr);
}

/// A run killed outright (SIGKILL) is resumed by the next `rivulet run` of the same job file;
/// a run with `--fresh`, or with a changed job file, supersedes it instead, and abandons the
/// files it left open as a cancel would have: what its checkpoints published stays, and no
/// upload, tail or index entry of it is left.
#[test]
fn a_superseded_run_has_its_files_in_progress_abandoned() {
    let dir = TempDir::new().unwrap();
    let (mut child, store, index) = a_run_with_files_in_progress(dir.path(), Stdio::null());
    child.kill().unwrap();
    child.wait().unwrap();
    let published = published_files(&store);
    let left_open = open_uploads(&store);
    assert!(left_open > 0);

    // The same job, changed to end at once, as a fresh run.
    let file = dir.path().join("job.toml");
    let changed = "name = \"many-buckets\"\n\n[[source]]\nid = \"bids\"\nkind = \"nexmark\"\n\
                   count = 1000\n\n[[sink]]\nid = \"out\"\nkind = \"discard\"\n";
    fs::write(&file, changed).unwrap();
    let out = Command::new(rivulet_bin())
        .args(["run", "--fresh", "--store"])
        .arg(&store)
        .arg(&file)
        .env("RIVULET_INDEX", &index)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("abandoning the files of the superseded run many-buckets-"),
        "{stderr}"
    );
    eprintln!("{left_open} files the killed run left open");
    assert_nothing_left_but(&store, &index, &published, &stderr);
}

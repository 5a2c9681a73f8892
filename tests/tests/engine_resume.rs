//! Resume of an embedded run: `rivulet run JOB.toml` killed with SIGKILL at random moments,
//! and the same command run again each time. Each new process must find the unfinished run in
//! the store and resume it from its latest checkpoint (same job id), so that once a run
//! finally completes, the output equals a failure-free run's as a multiset (a run that started
//! over would publish its output twice; one that skipped ahead would lose some), and no
//! multipart upload is left open.
//!
//! Seeded: set `RIVULET_ENGINE_SEED` to replay a run's kill schedule.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::rivulet_bin;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tempfile::TempDir;

mod engine_support;

use engine_support::{
    Process, assert_same_output, job_file, open_uploads, output_lines, reference_output,
    tails_after_gc,
};

/// The job id a run's log announces: "running job NAME (ID) on ..." or "resuming job ...".
fn announced(log: &Path) -> Option<(bool, String)> {
    let text = fs::read_to_string(log).ok()?;
    let line = text
        .lines()
        .find(|l| l.starts_with("running job") || l.starts_with("resuming job"))?;
    let id = line.split('(').nth(1)?.split(')').next()?.to_string();
    Some((line.starts_with("resuming"), id))
}

/// The state the store records for the job a run's log announces.
fn recorded_state(store: &Path, log: &Path) -> Option<String> {
    let (_, id) = announced(log)?;
    let record = fs::read(store.join("_jobs").join(format!("{id}.json"))).ok()?;
    let record: serde_json::Value = serde_json::from_slice(&record).ok()?;
    record["state"].as_str().map(str::to_string)
}

#[test]
fn a_killed_embedded_run_resumes_from_its_checkpoint_exactly_once() {
    let seed: u64 = std::env::var("RIVULET_ENGINE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("RIVULET_ENGINE_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    const EVENTS: u64 = 300_000;
    let expected = reference_output(EVENTS);
    assert!(expected.len() > 1000, "the reference output is too small");

    let dir = TempDir::new().unwrap();
    let store = dir.path().join("store");
    let index = dir.path().join("index");
    let file = dir.path().join("job.toml");
    // ~40,000 events/s: about eight seconds without failures; checkpoints every 300ms.
    fs::write(&file, job_file(EVENTS, Some(40_000))).unwrap();
    let args = [
        "run",
        "--store",
        &store.to_string_lossy(),
        &file.to_string_lossy(),
    ];

    let mut kills = Vec::new();
    let mut job_id: Option<String> = None;
    let mut silent_kill = false;
    // The log of a run that completed the job before its kill, and whether it succeeded.
    let mut ended: Option<(std::path::PathBuf, bool)> = None;
    for round in 0..5 {
        let log = dir.path().join(format!("run-{round}.log"));
        let mut run = Process::start(&args, log.clone(), &index);
        let after = Duration::from_millis(rng.random_range(600..2500));
        std::thread::sleep(after);
        if let Some(status) = run.child.try_wait().unwrap() {
            // Finished (or failed) before the kill: this was the last run, checked below like
            // the final one (a run after it would start the job anew).
            ended = Some((log, status.success()));
            break;
        }
        run.kill();
        // Killed after the job had finished, while the run printed its summary: the store
        // records the job as finished, so a run after this one would start it anew. This run
        // completed the job; it is the last, checked below.
        if recorded_state(&store, &log).as_deref() == Some("FINISHED") {
            ended = Some((log, true));
            break;
        }
        kills.push(format!("run {round} after {after:?}"));
        // A process killed very early (a loaded machine) may die before it announces its
        // job, possibly after recording it: then the next run may resume a run this test
        // never saw announced.
        let Some((resumed, id)) = announced(&log) else {
            silent_kill = true;
            continue;
        };
        match &job_id {
            None => {
                assert!(
                    !resumed || silent_kill,
                    "seed {seed}: the first run claims to resume"
                );
                job_id = Some(id);
            }
            Some(first) => {
                assert!(resumed, "seed {seed}: run {round} started a new run");
                assert_eq!(&id, first, "seed {seed}: run {round} resumed another job");
            }
        }
    }
    assert!(
        kills.len() >= 2,
        "seed {seed}: the job ended before the kills ({kills:?})"
    );

    // The last run, to completion, unless a run above completed the job.
    let (log, success) = match ended {
        Some(ended) => ended,
        None => {
            let log = dir.path().join("final.log");
            let started = Instant::now();
            let out = Command::new(rivulet_bin())
                .args(args)
                .arg("--index")
                .arg(&index)
                .stdin(Stdio::null())
                .output()
                .expect("running rivulet");
            fs::write(&log, &out.stderr).unwrap();
            assert!(
                started.elapsed() < Duration::from_secs(180),
                "the final run took {:?}",
                started.elapsed()
            );
            (log, out.status.success())
        }
    };
    let stderr = fs::read_to_string(&log).unwrap_or_default();
    assert!(
        success,
        "seed {seed}: the last run failed after kills {kills:?}: {stderr}"
    );
    let (resumed, id) = announced(&log).expect("the last run's announcement");
    assert!(
        resumed,
        "seed {seed}: the last run did not resume: {stderr}"
    );
    assert_eq!(Some(&id), job_id.as_ref(), "seed {seed}: {stderr}");

    let got = output_lines(&store);
    assert_same_output(&expected, &got, &format!("seed {seed}, kills {kills:?}"));
    assert_eq!(
        open_uploads(&store),
        0,
        "seed {seed}: in-progress or pending files were left behind"
    );
    assert_eq!(
        tails_after_gc(&store),
        Vec::<String>::new(),
        "seed {seed}: tail objects were left after gc"
    );

    // The run is recorded as finished, so running the file again would start a new run
    // rather than resume this one.
    let record: serde_json::Value = serde_json::from_slice(
        &fs::read(store.join("_jobs").join(format!("{id}.json"))).expect("the job's record"),
    )
    .unwrap();
    assert_eq!(record["state"], "FINISHED", "{record}");
    eprintln!(
        "seed {seed}: kills {kills:?}; {} distinct output lines",
        got.len()
    );
}

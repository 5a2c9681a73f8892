//! The engine as real processes: a job manager and task managers started from the `rivulet`
//! binary, killed with SIGKILL at random moments while a job with a keyed window and file
//! sinks runs. The finished output must equal a failure-free run's, as a multiset: nothing
//! lost, nothing duplicated, and no upload left open once the bounded job has ended.
//!
//! Seeded: set `RIVULET_ENGINE_SEED` to replay a run's kill schedule.

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use harness::rivulet_bin;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tempfile::TempDir;

mod engine_support;

use engine_support::{
    Process, TOKEN, assert_same_output, assert_still_published, job_file, leftover_tails,
    many_buckets_job, open_upload_keys, open_uploads, output_lines, published_files, put_object,
    reference_output, rest, rest_text, start_jobmanager, tails_after_gc,
};

struct Cluster {
    dir: TempDir,
    address: SocketAddr,
    store: PathBuf,
    jobmanager: Option<Process>,
    taskmanagers: Vec<Process>,
    started: usize,
}

impl Cluster {
    fn new() -> Cluster {
        let dir = TempDir::new().unwrap();
        let store = dir.path().join("store");
        fs::create_dir_all(&store).unwrap();
        let mut cluster = Cluster {
            // Port 0: the first job manager binds a port the system picks, and every later one
            // comes back on that address (see `start_jobmanager`).
            address: "127.0.0.1:0".parse().unwrap(),
            store,
            dir,
            jobmanager: None,
            taskmanagers: Vec::new(),
            started: 0,
        };
        cluster.start_jobmanager();
        cluster.start_taskmanager();
        cluster.start_taskmanager();
        cluster.wait_for_slots(4);
        cluster
    }

    fn next_name(&mut self, what: &str) -> (PathBuf, PathBuf) {
        self.started += 1;
        let log = self.dir.path().join(format!("{what}-{}.log", self.started));
        let index = self
            .dir
            .path()
            .join(format!("{what}-{}.index", self.started));
        (log, index)
    }

    /// Starts the job manager on `address`; the first one (port 0) sets it.
    fn start_jobmanager(&mut self) {
        let (log, index) = self.next_name("jobmanager");
        let listen = self.address.to_string();
        let store = self.store.to_string_lossy().to_string();
        let (process, address) = start_jobmanager(
            None,
            &listen,
            &["--store", &store, "--heartbeat-timeout", "3s"],
            log,
            &index,
        );
        self.address = address;
        self.jobmanager = Some(process);
    }

    fn start_taskmanager(&mut self) {
        let (log, index) = self.next_name("taskmanager");
        let address = self.address.to_string();
        let name = format!("tm{}", self.started);
        self.taskmanagers.push(Process::start(
            &[
                "taskmanager",
                "--jobmanager",
                &address,
                "--slots",
                "2",
                "--name",
                &name,
            ],
            log,
            &index,
        ));
    }

    fn rivulet(&self, args: &[&str]) -> Output {
        Command::new(rivulet_bin())
            .args(args)
            .env("RIVULET_CLUSTER_TOKEN", TOKEN)
            .output()
            .expect("running rivulet")
    }

    fn status(&self, job: Option<&str>) -> Option<serde_json::Value> {
        let address = self.address.to_string();
        let mut args = vec!["status", "--json", "--jobmanager", &address];
        if let Some(job) = job {
            args.push(job);
        }
        let out = self.rivulet(&args);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    fn wait_for_slots(&self, slots: u64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(o) = self.status(None)
                && o["slots-total"].as_u64() == Some(slots)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("the cluster never offered {slots} slots; {}", self.logs());
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        if let Some(jm) = &self.jobmanager {
            out += &format!("\n--- job manager:\n{}", jm.log_tail());
        }
        for tm in &self.taskmanagers {
            out += &format!("\n--- task manager:\n{}", tm.log_tail());
        }
        out
    }

    fn submit(&self, job: &str) -> String {
        let file = self.dir.path().join("job.toml");
        fs::write(&file, job).unwrap();
        let address = self.address.to_string();
        let out = self.rivulet(&[
            "run",
            "--jobmanager",
            &address,
            "--detach",
            &file.to_string_lossy(),
        ]);
        assert!(
            out.status.success(),
            "submitting: {}{}",
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn state(&self, job: &str) -> Option<String> {
        self.status(Some(job))
            .and_then(|j| j["state"].as_str().map(str::to_string))
    }

    /// A REST request with the cluster's token: status and JSON body.
    fn rest(&self, method: &str, path: &str) -> (u16, serde_json::Value) {
        rest(&self.address.to_string(), method, path, Some(TOKEN))
    }

    /// Polls `check` every 100 ms until it gives a value; fails after `secs` seconds saying
    /// what was awaited, with the processes' logs.
    fn wait_for<T>(&self, what: &str, secs: u64, mut check: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(value) = check() {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "waited {secs} s for {what}{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `job` runs and its source has emitted records.
    fn wait_until_running(&self, job: &str) {
        self.wait_for("the job to run and emit records", 60, || {
            let (code, body) = self.rest("GET", &format!("/jobs/{job}"));
            (code == 200
                && body["state"] == "RUNNING"
                && body["vertices"][0]["metrics"]["write-records"].as_u64() > Some(0))
            .then_some(())
        });
    }
}

/// The id a task manager process registered under, from the line it prints at start
/// (`task manager ID with N slots, ...`).
fn taskmanager_id(process: &Process) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = fs::read_to_string(&process.log).unwrap_or_default();
        if let Some(id) = log.lines().find_map(|l| {
            l.strip_prefix("task manager ")?
                .split_once(" with ")
                .map(|(id, _)| id.to_string())
        }) {
            return id;
        }
        assert!(
            Instant::now() < deadline,
            "the task manager printed no id:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends `signal` (`STOP`, `CONT`) to a process.
fn signal(process: &Process, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(process.child.id().to_string())
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -{signal} failed");
}

/// A process's resident memory in bytes (`VmRSS` of /proc/PID/status).
fn resident_bytes(process: &Process) -> u64 {
    let status = fs::read_to_string(format!("/proc/{}/status", process.child.id()))
        .expect("reading /proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or_else(|| panic!("no VmRSS in\n{status}"))
}

/// A job that runs until it is cancelled: rate-limited bids into CSV files, checkpoints every
/// 200 ms.
fn unbounded_job() -> String {
    r#"
name = "unbounded"
parallelism = 2

[checkpoint]
interval = "200ms"

[[source]]
id = "bids"
kind = "nexmark"
rate = 2000

[[sink]]
id = "out"
input = "bids"
kind = "file"
path = "out/bids"
format = "csv"
"#
    .to_string()
}

#[test]
fn output_is_exactly_once_when_task_managers_and_the_job_manager_are_killed() {
    let seed: u64 = std::env::var("RIVULET_ENGINE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("RIVULET_ENGINE_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    const EVENTS: u64 = 400_000;
    let expected = reference_output(EVENTS);
    assert!(expected.len() > 1000, "the reference output is too small");

    let mut cluster = Cluster::new();
    // ~40,000 events/s: the job runs about ten seconds without failures.
    let job = cluster.submit(&job_file(EVENTS, Some(40_000)));
    let started = Instant::now();
    let mut kills = Vec::new();
    let mut restarts_before = None;
    let mut checkpointed = None;
    let mut resumed_by_new_job_manager = false;
    for round in 0..4 {
        std::thread::sleep(Duration::from_millis(rng.random_range(700..2200)));
        if cluster.state(&job).as_deref() == Some("FINISHED") {
            break;
        }
        if round == 2 {
            // What the first job manager saw: the task managers killed so far made the job
            // restart, and the checkpoint a new job manager must resume from at the latest.
            let before = cluster
                .status(Some(&job))
                .unwrap_or_else(|| panic!("seed {seed}: no status of the job{}", cluster.logs()));
            restarts_before = before["restarts"].as_u64();
            let (_, checkpoints) = cluster.rest("GET", &format!("/jobs/{job}/checkpoints"));
            checkpointed = checkpoints["latest"]["id"].as_u64();
            // Once the job manager: a new one must find the job in the store and resume it.
            if let Some(jm) = cluster.jobmanager.take() {
                jm.kill();
            }
            kills.push(format!("job manager at {:?}", started.elapsed()));
            std::thread::sleep(Duration::from_millis(rng.random_range(100..800)));
            cluster.start_jobmanager();
            // Sampled before any later kill: a restore seen now is the new job manager's
            // resume of the job itself, not a restart after a task manager died under it.
            let resumed = cluster.wait_for("the new job manager to resume the job", 60, || {
                cluster
                    .status(Some(&job))
                    .filter(|s| s["restores"].as_u64() >= Some(1))
            });
            eprintln!("seed {seed}: resumed by the new job manager: {resumed}");
            if let Some(checkpointed) = checkpointed {
                assert!(
                    resumed["restored-checkpoint"].as_u64() >= Some(checkpointed),
                    "seed {seed}: the new job manager resumed from an older checkpoint than \
                     {checkpointed}: {resumed}"
                );
            }
            resumed_by_new_job_manager = true;
        } else {
            let victim = rng.random_range(0..cluster.taskmanagers.len());
            cluster.taskmanagers.remove(victim).kill();
            kills.push(format!("task manager at {:?}", started.elapsed()));
            cluster.start_taskmanager();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        match cluster.state(&job).as_deref() {
            Some("FINISHED") => break,
            Some("FAILED") | Some("CANCELED") => panic!(
                "seed {seed}: the job ended badly after kills {kills:?}: {}{}",
                cluster.status(Some(&job)).unwrap_or_default(),
                cluster.logs()
            ),
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: the job did not finish after kills {kills:?}{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let got = output_lines(&cluster.store);
    assert_same_output(&expected, &got, &format!("seed {seed}, kills {kills:?}"));
    assert_eq!(
        open_uploads(&cluster.store),
        0,
        "seed {seed}: in-progress or pending files were left behind"
    );
    assert_eq!(
        tails_after_gc(&cluster.store),
        Vec::<String>::new(),
        "seed {seed}: tail objects were left after gc"
    );
    let status = cluster.status(Some(&job)).unwrap_or_default();
    eprintln!(
        "seed {seed}: kills {kills:?}; {} distinct output lines; {restarts_before:?} restarts under \
         the first job manager; under the last: {} restarts, {} restores, the latest from \
         checkpoint {}; checkpoint {checkpointed:?} was the latest when the first one was killed",
        got.len(),
        status["restarts"],
        status["restores"],
        status["restored-checkpoint"],
    );
    assert!(
        kills.len() >= 3 && resumed_by_new_job_manager,
        "seed {seed}: the job ended before the kills ({kills:?})"
    );
    // The output alone would also be right if the kills had missed the job: it must have
    // restarted after the task managers were killed under it, ...
    assert!(
        restarts_before.is_some_and(|r| r >= 1),
        "seed {seed}: no restart after the task manager kills {kills:?} (restarts: \
         {restarts_before:?})"
    );
    // ... and the new job manager must have resumed it from a checkpoint (at least the one
    // that was the latest when the first job manager died), not run it from the start.
    assert!(
        status["restores"].as_u64() >= Some(1),
        "seed {seed}: the new job manager did not restore the job from a checkpoint: {status}"
    );
    if let Some(checkpointed) = checkpointed {
        assert!(
            status["restored-checkpoint"].as_u64() >= Some(checkpointed),
            "seed {seed}: restored from an older checkpoint than {checkpointed}: {status}"
        );
    }
}

#[test]
fn a_job_manager_needs_a_token_or_anonymous_and_rejects_bad_job_files() {
    let out = Command::new(rivulet_bin())
        .args(["jobmanager", "--listen", "127.0.0.1:0"])
        .env_remove("RIVULET_CLUSTER_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--token") && err.contains("--anonymous"),
        "{err}"
    );
    // An empty token is no secret: refused too, rather than a job manager nobody can use.
    let out = Command::new(rivulet_bin())
        .args(["jobmanager", "--listen", "127.0.0.1:0"])
        .env("RIVULET_CLUSTER_TOKEN", "")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is empty") && err.contains("--anonymous"),
        "{err}"
    );

    let cluster = Cluster::new();
    let file = cluster.dir.path().join("bad.toml");
    fs::write(
        &file,
        "name = 'bad'\n[[source]]\nkind = 'nexmark'\ncount = 10\n[[operator]]\nkind = 'filter'\nwhere = 'prise > 1'\n[[sink]]\nkind = 'discard'\n",
    )
    .unwrap();
    let address = cluster.address.to_string();
    let out = cluster.rivulet(&["run", "--jobmanager", &address, &file.to_string_lossy()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("prise") && err.contains("where"), "{err}");

    // Without the token the REST API refuses.
    let out = Command::new(rivulet_bin())
        .args(["list", "--jobmanager", &address])
        .env_remove("RIVULET_CLUSTER_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("token"));
    // A 401 names the scheme that gets in; a job file declared too large is refused at once,
    // without waiting for a body that never comes.
    let head = |request: &str| {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = vec![0; 4096];
        let n = stream
            .read(&mut answer)
            .expect("an answer before the timeout");
        String::from_utf8_lossy(&answer[..n]).to_lowercase()
    };
    let refused = head("GET /overview HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(
        refused.starts_with("http/1.1 401") && refused.contains("www-authenticate: bearer"),
        "{refused}"
    );
    let too_large = head(&format!(
        "POST /jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Length: 99999999999\r\n\r\n"
    ));
    assert!(too_large.starts_with("http/1.1 413"), "{too_large}");
}

#[test]
fn the_checkpoints_of_a_running_job_are_listed_with_durations_and_sizes() {
    let cluster = Cluster::new();
    let job = cluster.submit(&unbounded_job());
    cluster.wait_until_running(&job);
    let path = format!("/jobs/{job}/checkpoints");
    let body = cluster.wait_for("three completed checkpoints", 60, || {
        let (code, body) = cluster.rest("GET", &path);
        assert_eq!(code, 200, "{body}");
        (body["counts"]["completed"].as_u64() >= Some(3)).then_some(body)
    });
    let history = body["history"].as_array().expect("a history");
    assert_eq!(body["counts"]["total"].as_u64(), Some(history.len() as u64));
    let completed: Vec<&serde_json::Value> =
        history.iter().filter(|c| c["completed"] == true).collect();
    assert_eq!(
        body["counts"]["completed"].as_u64(),
        Some(completed.len() as u64)
    );
    assert_eq!(
        body["counts"]["failed"].as_u64(),
        Some((history.len() - completed.len()) as u64)
    );
    let ids: Vec<u64> = history.iter().filter_map(|c| c["id"].as_u64()).collect();
    assert_eq!(
        ids.len(),
        history.len(),
        "every checkpoint has an id: {body}"
    );
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "checkpoint ids do not increase: {ids:?}"
    );
    for c in &completed {
        // Every source subtask stores its position, so no completed checkpoint is empty.
        assert!(c["state_bytes"].as_u64() > Some(0), "no state size: {c}");
        assert!(c["duration_ms"].as_u64() > Some(0), "no duration: {c}");
        assert!(c["reason"].is_null(), "a reason on a completed one: {c}");
        assert_eq!(c["is_final"], false, "an unbounded job's checkpoint: {c}");
    }
    assert_eq!(&body["latest"], *completed.last().unwrap());

    // The same run seen through the rest of the API: the job's vertices with their
    // parallelism, the task managers with their slots and fresh heartbeats, and the
    // checkpoint counter in /metrics.
    let (code, job_body) = cluster.rest("GET", &format!("/jobs/{job}"));
    assert_eq!(code, 200, "{job_body}");
    let vertices = job_body["vertices"].as_array().expect("vertices");
    assert!(
        !vertices.is_empty() && vertices.iter().all(|v| v["parallelism"] == 2),
        "the job's parallelism is 2: {job_body}"
    );
    let (code, tms) = cluster.rest("GET", "/taskmanagers");
    assert_eq!(code, 200, "{tms}");
    let tms = tms["taskmanagers"]
        .as_array()
        .expect("task managers")
        .clone();
    assert_eq!(tms.len(), 2, "{tms:?}");
    let used: u64 = tms
        .iter()
        .map(|tm| {
            let (slots, free) = (tm["slotsNumber"].as_u64(), tm["freeSlots"].as_u64());
            assert_eq!(slots, Some(2), "{tm}");
            // Heartbeats come every second; the job manager's timeout is 3 s.
            assert!(tm["timeSinceLastHeartbeat"].as_u64() < Some(3000), "{tm}");
            slots.unwrap_or(0) - free.unwrap_or(0)
        })
        .sum();
    assert_eq!(used, 2, "a job of parallelism 2 holds two slots: {tms:?}");
    let (code, metrics) = rest_text(&cluster.address.to_string(), "GET", "/metrics", Some(TOKEN));
    assert_eq!(code, 200, "{metrics}");
    let prefix = format!("rivulet_job_checkpoints_total{{job=\"{job}\",result=\"completed\"}} ");
    let counted: Option<u64> = metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|n| n.parse().ok());
    assert!(counted >= Some(3), "no completed count in\n{metrics}");

    // An unknown job: 404 with a JSON error naming it.
    let (code, body) = cluster.rest("GET", "/jobs/no-such-job/checkpoints");
    assert_eq!(code, 404, "{body}");
    let error = body["errors"][0].as_str().unwrap_or_default();
    assert!(error.contains("no-such-job"), "{body}");
}

#[test]
fn a_cancelled_job_stops_and_says_so_and_unknown_jobs_are_404() {
    let cluster = Cluster::new();
    let job = cluster.submit(&unbounded_job());
    cluster.wait_until_running(&job);

    let (code, body) = cluster.rest("POST", &format!("/jobs/{job}/cancel"));
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["jid"], job.as_str());
    cluster.wait_for("the job to be cancelled", 30, || {
        (cluster.state(&job).as_deref() == Some("CANCELED")).then_some(())
    });
    // The CLI says so too.
    let address = cluster.address.to_string();
    let out = cluster.rivulet(&["status", "--jobmanager", &address, &job]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&job) && text.contains("CANCELED"), "{text}");
    let out = cluster.rivulet(&["list", "--jobmanager", &address]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.contains(&job) && l.contains("CANCELED")),
        "{text}"
    );
    // A cancelled job stops checkpointing: its sources and sinks are gone.
    let path = format!("/jobs/{job}/checkpoints");
    let before = cluster.rest("GET", &path).1["counts"]["total"].clone();
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(cluster.rest("GET", &path).1["counts"]["total"], before);
    let (_, overview) = cluster.rest("GET", "/overview");
    assert_eq!(overview["jobs-cancelled"], 1, "{overview}");
    assert_eq!(overview["slots-available"], 4, "{overview}");

    // Cancelling it again: 409, and `rivulet cancel` fails saying why.
    let (code, body) = cluster.rest("POST", &format!("/jobs/{job}/cancel"));
    assert_eq!(code, 409, "{body}");
    assert!(
        body["errors"][0]
            .as_str()
            .is_some_and(|e| e.contains("already ended")),
        "{body}"
    );
    let out = cluster.rivulet(&["cancel", "--jobmanager", &address, &job]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already ended"), "{err}");

    // An unknown job: 404 with a JSON error naming it, from the API and the CLI.
    let (code, body) = cluster.rest("POST", "/jobs/no-such-job/cancel");
    assert_eq!(code, 404, "{body}");
    assert!(
        body["errors"][0]
            .as_str()
            .is_some_and(|e| e.contains("no-such-job")),
        "{body}"
    );
    let (code, body) = cluster.rest("GET", "/jobs/no-such-job");
    assert_eq!(code, 404, "{body}");
    let out = cluster.rivulet(&["cancel", "--jobmanager", &address, "no-such-job"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-job"), "{err}");
}

/// A user's cancel (REST) of a job with files in progress in thousands of buckets, on two
/// task managers: once the job is CANCELED, every file its checkpoints did not publish is
/// abandoned (no open upload, no tail), and what they published stays as it was.
/// Waits until `job` (a many-buckets job) has completed checkpoints, published files and
/// holds hundreds of files in progress.
fn wait_for_files_in_progress(cluster: &Cluster, job: &str) {
    cluster.wait_until_running(job);
    let path = format!("/jobs/{job}/checkpoints");
    cluster.wait_for("checkpoints and files in progress", 60, || {
        let completed = cluster.rest("GET", &path).1["counts"]["completed"].as_u64();
        (completed >= Some(2)
            && open_uploads(&cluster.store) >= 200
            && !published_files(&cluster.store).is_empty())
        .then_some(())
    });
}

/// Cancels `job` and checks that it left no upload and no tail, and that the files it had
/// `published` are still there, unchanged.
fn cancel_and_check_abandoned(cluster: &Cluster, job: &str, published: &BTreeMap<PathBuf, u64>) {
    let in_progress = open_uploads(&cluster.store);
    let started = Instant::now();
    let (code, body) = cluster.rest("POST", &format!("/jobs/{job}/cancel"));
    assert_eq!(code, 202, "{body}");
    cluster.wait_for("the job to be cancelled", 90, || {
        (cluster.state(job).as_deref() == Some("CANCELED")).then_some(())
    });
    eprintln!(
        "cancelled with {in_progress} open uploads in {:?}",
        started.elapsed()
    );
    assert_eq!(
        open_uploads(&cluster.store),
        0,
        "uploads left open of {in_progress}{}",
        cluster.logs()
    );
    let tails = leftover_tails(&cluster.store);
    assert!(
        tails.is_empty(),
        "{} tails left: {:?}",
        tails.len(),
        &tails[..tails.len().min(3)]
    );
    assert_still_published(&cluster.store, published);
}

#[test]
fn a_cancelled_job_abandons_its_files_in_progress_on_every_task_manager() {
    let cluster = Cluster::new();
    let job = cluster.submit(&many_buckets_job(1_000));
    wait_for_files_in_progress(&cluster, &job);
    let published = published_files(&cluster.store);
    cancel_and_check_abandoned(&cluster, &job, &published);
}

#[test]
fn a_job_cancelled_while_its_task_managers_are_gone_abandons_their_files_in_the_job_manager() {
    // Both task managers are killed: the job waits for slots to restart, and none come. A
    // cancel then has nowhere to run the attempt that abandons the files the killed attempt
    // left open but the job manager itself, which must do it from the latest checkpoint.
    let cluster = Cluster::new();
    let text = format!(
        "{}\n[restart]\nattempts = 100\ndelay = \"100ms\"\n",
        many_buckets_job(1_000)
    );
    let job = cluster.submit(&text);
    wait_for_files_in_progress(&cluster, &job);
    for tm in &cluster.taskmanagers {
        signal(tm, "KILL");
    }
    cluster.wait_for("the job to wait for slots", 60, || {
        let (_, body) = cluster.rest("GET", &format!("/jobs/{job}"));
        let waiting = body["reason"].as_str().is_some_and(|r| r.contains("slots"));
        (waiting && body["restarts"].as_u64() >= Some(1)).then_some(())
    });
    let published = published_files(&cluster.store);
    assert!(
        open_uploads(&cluster.store) > 0,
        "the killed attempt left no file in progress"
    );
    cancel_and_check_abandoned(&cluster, &job, &published);
}

#[test]
fn ctrl_c_on_a_followed_job_cancels_it() {
    // `rivulet run --jobmanager` follows the job it submitted; Ctrl-C (SIGINT) cancels it, as
    // on the embedded cluster, and exits 130. It used to die at once and leave the job
    // running, although the docs promised a cancel.
    let cluster = Cluster::new();
    let file = cluster.dir.path().join("followed.toml");
    fs::write(&file, unbounded_job()).unwrap();
    let address = cluster.address.to_string();
    let child = Command::new(rivulet_bin())
        .args(["run", "--jobmanager", &address, &file.to_string_lossy()])
        .env("RIVULET_CLUSTER_TOKEN", TOKEN)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start rivulet run");
    let job = cluster.wait_for("the followed job to run", 60, || {
        let (_, body) = cluster.rest("GET", "/jobs");
        body["jobs"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|j| j["status"] == "RUNNING")
            .and_then(|j| j["id"].as_str().map(str::to_string))
    });
    cluster.wait_until_running(&job);
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains(&format!("cancelling job {job}")),
        "{stderr}"
    );
    cluster.wait_for("the job to be cancelled", 60, || {
        (cluster.state(&job).as_deref() == Some("CANCELED")).then_some(())
    });
}

#[test]
fn a_cancel_the_job_manager_accepted_is_finished_by_the_next_one() {
    // The job manager dies right after it acknowledged a cancel, before the job ended. The
    // cancel is recorded first, so the next job manager finishes it (files abandoned, the job
    // CANCELED) instead of resuming the job onto files the cancel already aborted, which
    // failed every attempt until the job ended FAILED.
    let mut cluster = Cluster::new();
    let job = cluster.submit(&many_buckets_job(1_000));
    wait_for_files_in_progress(&cluster, &job);
    let published = published_files(&cluster.store);
    let (code, body) = cluster.rest("POST", &format!("/jobs/{job}/cancel"));
    assert_eq!(code, 202, "{body}");
    if let Some(jm) = cluster.jobmanager.take() {
        jm.kill();
    }
    cluster.start_jobmanager();
    cluster.wait_for("the job to be cancelled", 90, || {
        match cluster.state(&job).as_deref() {
            Some("CANCELED") => Some(()),
            Some("FAILED") => panic!("the cancel became a failure{}", cluster.logs()),
            _ => None,
        }
    });
    assert_still_published(&cluster.store, &published);
    // The abandon aborts every file the run's checkpoints and listings know. A task manager
    // still winding down the killed job manager's attempt may open a few more after that
    // listing (docs/engine.md, "Cancel"): those are plain leftovers that gc collects.
    let left = open_upload_keys(&cluster.store);
    eprintln!("{} uploads left after the cancel", left.len());
    let gc = cluster.rivulet(&[
        "gc",
        "--all-uploads",
        "--older-than",
        "0s",
        "--index",
        &cluster.dir.path().join("gc-index").to_string_lossy(),
        &cluster.store.to_string_lossy(),
    ]);
    assert!(
        gc.status.success(),
        "{}",
        String::from_utf8_lossy(&gc.stderr)
    );
    assert_eq!(open_upload_keys(&cluster.store), Vec::<String>::new());
    assert!(leftover_tails(&cluster.store).is_empty());
    assert_still_published(&cluster.store, &published);
}

#[test]
fn malformed_records_a_files_source_skips_are_counted_in_the_api_and_metrics() {
    let cluster = Cluster::new();
    // Four records and three malformed lines: not JSON, a string where an int goes, a cut-off
    // object.
    put_object(
        &cluster.store,
        "input/clicks.jsonl",
        b"{\"user\":1,\"url\":\"a\"}\nnot json\n{\"user\":2,\"url\":\"b\"}\n\
          {\"user\":\"three\",\"url\":\"c\"}\n{\"user\":3,\"url\":\"c\"}\n{\"user\":4,\n\
          {\"user\":4,\"url\":\"d\"}\n",
    );
    let job = cluster.submit(
        r#"
name = "malformed"

[[source]]
id = "clicks"
kind = "files"
prefix = "input/"
format = "json"
schema = ["user:int", "url:string"]
on_error = "skip"

[[sink]]
id = "out"
input = "clicks"
kind = "file"
path = "out/clicks"
format = "json"
"#,
    );
    cluster.wait_for("the job to finish", 60, || {
        match cluster.state(&job).as_deref() {
            Some("FINISHED") => Some(()),
            Some(s @ ("FAILED" | "CANCELED")) => panic!("the job ended {s}{}", cluster.logs()),
            _ => None,
        }
    });
    assert_eq!(output_lines(&cluster.store).values().sum::<usize>(), 4);
    // Task managers report their counts with their heartbeats, once a second.
    let vertices = cluster.wait_for("the malformed records counted", 10, || {
        let (_, body) = cluster.rest("GET", &format!("/jobs/{job}"));
        let vertices = body["vertices"].as_array().cloned().unwrap_or_default();
        (vertices.first()?["metrics"]["malformed-records"] == 3).then_some(vertices)
    });
    assert_eq!(vertices[0]["id"], "clicks");
    assert_eq!(vertices[0]["metrics"]["write-records"], 4);
    assert_eq!(vertices[1]["id"], "out");
    assert_eq!(vertices[1]["metrics"]["malformed-records"], 0);
    let (code, metrics) = rest_text(&cluster.address.to_string(), "GET", "/metrics", Some(TOKEN));
    assert_eq!(code, 200, "{metrics}");
    let line = format!("rivulet_job_malformed_records_total{{job=\"{job}\",vertex=\"clicks\"}} 3");
    assert!(
        metrics.lines().any(|l| l == line),
        "no `{line}` in\n{metrics}"
    );
    assert!(
        !metrics.contains("vertex=\"out\"}"),
        "a malformed count for the sink:\n{metrics}"
    );
}

#[test]
fn a_job_manager_whose_fixed_port_is_held_starts_once_the_port_is_free() {
    // What a restarted job manager meets when another process holds its port for a moment:
    // the harness starts it again until it binds, on that same address.
    let dir = TempDir::new().unwrap();
    let store = dir.path().join("store");
    fs::create_dir_all(&store).unwrap();
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = holder.local_addr().unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        drop(holder);
    });
    let (jobmanager, bound) = start_jobmanager(
        None,
        &address.to_string(),
        &["--store", &store.to_string_lossy()],
        dir.path().join("jobmanager.log"),
        &dir.path().join("jobmanager.index"),
    );
    release.join().unwrap();
    assert_eq!(bound, address);
    let (code, overview) = rest(&address.to_string(), "GET", "/overview", Some(TOKEN));
    assert_eq!(code, 200, "{overview}");
    jobmanager.kill();
}

#[test]
fn a_task_manager_that_stops_heartbeating_with_its_connections_open_is_lost_and_fenced() {
    const EVENTS: u64 = 200_000;
    let expected = reference_output(EVENTS);
    assert!(expected.len() > 500, "the reference output is too small");

    // The job manager's heartbeat timeout is 3 s (`Cluster::start_jobmanager`); parallelism 2
    // takes one slot on each of the two task managers, and either has the two slots the job
    // needs once the other is gone.
    let cluster = Cluster::new();
    // ~20,000 events/s: about ten seconds without failures.
    let job = cluster.submit(&job_file(EVENTS, Some(20_000)));
    cluster.wait_until_running(&job);
    let path = format!("/jobs/{job}/checkpoints");
    cluster.wait_for("a completed checkpoint", 60, || {
        (cluster.rest("GET", &path).1["counts"]["completed"].as_u64() >= Some(1)).then_some(())
    });

    // SIGSTOP: the process neither heartbeats nor reads, but the kernel keeps its sockets
    // open, so only the heartbeat timeout can tell the job manager it is gone.
    let stopped = &cluster.taskmanagers[0];
    let stopped_id = taskmanager_id(stopped);
    let listed = |id: &str| {
        let (code, body) = cluster.rest("GET", "/taskmanagers");
        assert_eq!(code, 200, "{body}");
        body["taskmanagers"]
            .as_array()
            .expect("a list of task managers")
            .iter()
            .any(|tm| tm["id"] == id)
    };
    assert!(listed(&stopped_id), "{stopped_id} is not registered");
    signal(stopped, "STOP");
    cluster.wait_for("the stopped task manager to be declared lost", 30, || {
        (!listed(&stopped_id)).then_some(())
    });
    // The job restarts from its latest checkpoint, on the other task manager's two slots.
    let restored = cluster.wait_for("the job to restore from a checkpoint", 60, || {
        let (_, body) = cluster.rest("GET", &format!("/jobs/{job}"));
        (body["restores"].as_u64() >= Some(1) && body["state"] == "RUNNING").then_some(body)
    });
    assert!(
        restored["restored-checkpoint"].as_u64().is_some(),
        "the restart did not start from a checkpoint: {restored}"
    );

    // Resumed, the task manager still runs the subtasks of the attempt the job gave up, on
    // the same in-progress files the new attempt resumed. It must stop them and register
    // again rather than let them write on.
    signal(stopped, "CONT");
    cluster.wait_for("the resumed task manager to register again", 30, || {
        listed(&stopped_id).then_some(())
    });
    cluster.wait_for("the job to finish", 120, || {
        match cluster.state(&job).as_deref() {
            Some("FINISHED") => Some(()),
            Some(s @ ("FAILED" | "CANCELED")) => panic!("the job ended {s}{}", cluster.logs()),
            _ => None,
        }
    });
    let log = fs::read_to_string(&cluster.taskmanagers[0].log).unwrap_or_default();
    assert!(
        log.contains("lost the job manager"),
        "the resumed task manager did not notice it was dropped:\n{log}"
    );
    assert_same_output(
        &expected,
        &output_lines(&cluster.store),
        "after a task manager stopped heartbeating",
    );
    assert_eq!(
        open_uploads(&cluster.store),
        0,
        "in-progress or pending files were left behind"
    );
}

/// Records a second the throttled sink takes in the backpressure test.
const SINK_RATE: u64 = 1000;

#[test]
fn a_throttled_sink_on_another_task_manager_slows_the_source_over_tcp() {
    // Two source subtasks, one on each task manager (slot k runs subtask k, and the job's two
    // slots are spread over both), and one sink subtask in slot 0: source subtask 1 reaches
    // it only over TCP. The source is unthrottled; the sink takes SINK_RATE records a second.
    // Without backpressure across the connection, source subtask 1 would run at full speed
    // (hundreds of thousands of bids a second) and its records would pile up in memory.
    let cluster = Cluster::new();
    let job = cluster.submit(&format!(
        r#"
name = "backpressure"
parallelism = 2

[checkpoint]
interval = "off"

[[source]]
id = "bids"
kind = "nexmark"

[[sink]]
id = "slow"
kind = "discard"
parallelism = 1
rate = {SINK_RATE}
"#
    ));
    cluster.wait_until_running(&job);
    let (_, taskmanagers) = cluster.rest("GET", "/taskmanagers");
    let used: Vec<u64> = taskmanagers["taskmanagers"]
        .as_array()
        .expect("a list of task managers")
        .iter()
        .map(|tm| tm["slotsNumber"].as_u64().unwrap() - tm["freeSlots"].as_u64().unwrap())
        .collect();
    assert_eq!(
        used,
        [1, 1],
        "the job is not spread over both task managers"
    );

    let counts = || {
        let (_, body) = cluster.rest("GET", &format!("/jobs/{job}"));
        let vertices = &body["vertices"];
        (
            vertices[0]["metrics"]["write-records"]
                .as_u64()
                .unwrap_or(0),
            vertices[1]["metrics"]["read-records"].as_u64().unwrap_or(0),
        )
    };
    // The first sample: the sink's pace is measured from here, not from the job's start.
    let (_, taken_at_start) = counts();
    let started = Instant::now();
    let mut peak_rss = 0;
    let mut samples = Vec::new();
    while started.elapsed() < Duration::from_secs(12) {
        std::thread::sleep(Duration::from_secs(1));
        let (emitted, taken) = counts();
        let rss = cluster
            .taskmanagers
            .iter()
            .map(resident_bytes)
            .max()
            .unwrap_or(0);
        peak_rss = peak_rss.max(rss);
        samples.push((started.elapsed().as_secs_f64(), emitted, taken, rss >> 20));
    }
    eprintln!("(seconds, emitted, taken, MiB resident at most): {samples:?}");
    let (_, emitted, taken, _) = *samples.last().unwrap();
    let seconds = started.elapsed().as_secs_f64();
    // The sink was paced: since the first sample it took no more than its rate allows. The
    // counts come with heartbeats, a second apart, so the first one may be up to a second
    // old (1.5 s of records allowed for it and scheduling), and the throttle takes a batch
    // (512 records) at once before it pauses (one more allowed).
    let taken_since = taken - taken_at_start;
    assert!(
        taken_since as f64 <= SINK_RATE as f64 * (seconds + 1.5) + 512.0,
        "the sink took {taken_since} records in {seconds:.1} s at {SINK_RATE}/s: not throttled"
    );
    assert!(taken > 0, "the sink took nothing: {samples:?}");
    // The source slowed down to the sink's pace: what it emitted beyond what the sink took is
    // what the exchange holds (two channels of 16 batches of 512 records, partly filled
    // batches, the loopback connection's socket buffers: well under 100,000 bids) plus the
    // heartbeats' lag (a second of counts each). Without backpressure it would be millions.
    assert!(
        emitted <= taken + 150_000,
        "the source ran ahead of the sink by {} records: {samples:?}",
        emitted - taken
    );
    // Memory stays bounded: a task manager of this test binary runs in about 60 MiB;
    // without backpressure the records piling up would take hundreds (docs/engine.md quotes
    // this bound).
    assert!(
        peak_rss < 100 << 20,
        "a task manager grew to {} MiB resident: {samples:?}",
        peak_rss >> 20
    );
}

#[test]
fn a_key_by_stage_partitions_across_task_managers_like_the_windows_own_key_by() {
    const EVENTS: u64 = 60_000;
    // The reference keys the window with its own `key_by`; here a `key_by` stage does, and
    // the window reads it. With one window subtask on each task manager, the records of half
    // the keys cross the network.
    let old = "input = \"bids\"\nkind = \"window\"\nkey_by = [\"auction\"]\n";
    let new = "input = \"bids\"\nkind = \"key_by\"\nfields = [\"auction\"]\n\n\
               [[operator]]\nid = \"per-auction\"\ninput = \"by-auction\"\nkind = \"window\"\n";
    let reference_job = job_file(EVENTS, None);
    assert!(
        reference_job.contains(old),
        "the test job changed:\n{reference_job}"
    );
    let job = reference_job.replace(
        &format!("id = \"per-auction\"\n{old}"),
        &format!("id = \"by-auction\"\n{new}"),
    );
    assert!(job.contains("kind = \"key_by\""), "{job}");
    let expected = reference_output(EVENTS);

    let cluster = Cluster::new();
    let id = cluster.submit(&job);
    cluster.wait_for("the job to finish", 120, || {
        match cluster.state(&id).as_deref() {
            Some("FINISHED") => Some(()),
            Some(s @ ("FAILED" | "CANCELED")) => panic!("the job ended {s}{}", cluster.logs()),
            _ => None,
        }
    });
    let (_, body) = cluster.rest("GET", &format!("/jobs/{id}"));
    let vertices: Vec<&str> = body["vertices"]
        .as_array()
        .expect("vertices")
        .iter()
        .filter_map(|v| v["id"].as_str())
        .collect();
    assert!(
        !vertices.contains(&"by-auction") && vertices.contains(&"per-auction"),
        "the key_by stage is not an edge: {vertices:?}"
    );
    let got = output_lines(&cluster.store);
    // One row per key and window: the records of a key all met in one window subtask,
    // whichever task manager their source subtask ran on.
    let mut windows = std::collections::HashSet::new();
    for (line, n) in &got {
        let Some(json) = line.strip_prefix("out/counts: ") else {
            continue;
        };
        let row: serde_json::Value = serde_json::from_str(json).unwrap();
        let window = (row["auction"].to_string(), row["window_start"].to_string());
        assert!(
            *n == 1 && windows.insert(window),
            "two rows for one key and window: {line}"
        );
    }
    assert!(windows.len() > 100, "too few windows: {}", windows.len());
    assert_same_output(&expected, &got, "with a key_by stage");
    // The two window subtasks ran on different task managers (each logs the subtasks it
    // deploys), so the hash exchange into them did cross the network.
    let window_subtasks_on = |tm: &Process| -> Vec<usize> {
        fs::read_to_string(&tm.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&id))
            .filter_map(|l| {
                let (_, rest) = l.split_once("deploying subtask ")?;
                let (subtask, task) = rest.split_once(" of ")?;
                task.starts_with("per-auction")
                    .then(|| subtask.parse().ok())?
            })
            .collect()
    };
    let placed: Vec<Vec<usize>> = cluster
        .taskmanagers
        .iter()
        .map(window_subtasks_on)
        .collect();
    assert!(
        placed == [vec![0], vec![1]] || placed == [vec![1], vec![0]],
        "the window subtasks per task manager: {placed:?}{}",
        cluster.logs()
    );
}

#[test]
fn a_job_that_cannot_get_its_slots_waits_saying_why_and_runs_once_they_come() {
    // Parallelism 6 on a cluster of two task managers with two slots each.
    let mut cluster = Cluster::new();
    let job = cluster.submit(
        r#"
name = "wide"
parallelism = 6

[[source]]
id = "events"
kind = "nexmark"
events = "all"
count = 20000

[[sink]]
id = "drop"
kind = "discard"
"#,
    );
    let why = "the job needs 6 slots and 4 are free on 2 task managers";
    let body = cluster.wait_for("the job to say it waits for slots", 30, || {
        let (code, body) = cluster.rest("GET", &format!("/jobs/{job}"));
        (code == 200 && body["reason"].as_str().is_some_and(|r| r.contains(why))).then_some(body)
    });
    assert_eq!(body["state"], "CREATED", "{body}");
    // `rivulet status JOB` says the same, in text.
    let address = cluster.address.to_string();
    let out = cluster.rivulet(&["status", "--jobmanager", &address, &job]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains(why), "{text}");
    // Still waiting a while later: it does not fail or give up.
    std::thread::sleep(Duration::from_secs(2));
    let (_, body) = cluster.rest("GET", &format!("/jobs/{job}"));
    assert_eq!(body["state"], "CREATED", "{body}");

    // Two more slots: it runs, and finishes.
    cluster.start_taskmanager();
    cluster.wait_for_slots(6);
    let state = cluster.wait_for("the job to end", 120, || {
        cluster
            .state(&job)
            .filter(|s| matches!(s.as_str(), "FINISHED" | "FAILED" | "CANCELED"))
    });
    assert_eq!(state, "FINISHED", "{}", cluster.logs());
    // Record counts come with the task managers' heartbeats, a second apart.
    let body = cluster.wait_for("the sink's count of every record", 10, || {
        let (_, body) = cluster.rest("GET", &format!("/jobs/{job}"));
        (body["vertices"][1]["metrics"]["read-records"].as_u64() == Some(20_000)).then_some(body)
    });
    assert!(body["reason"].is_null(), "{body}");
}

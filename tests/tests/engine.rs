//! The engine as real processes: a job manager and task managers started from the `rivulet`
//! binary, killed with SIGKILL at random moments while a job with a keyed window and file
//! sinks runs. The finished output must equal a failure-free run's, as a multiset: nothing
//! lost, nothing duplicated, and no upload left open once the bounded job has ended.
//!
//! Seeded: set `RIVULET_ENGINE_SEED` to replay a run's kill schedule.

use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use harness::rivulet_bin;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tempfile::TempDir;

mod engine_support;

use engine_support::{
    Process, TOKEN, assert_same_output, job_file, open_uploads, output_lines, reference_output,
    tails_after_gc,
};

fn free_address() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.1")
}

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
            address: free_address(),
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

    fn start_jobmanager(&mut self) {
        let (log, index) = self.next_name("jobmanager");
        let address = self.address.to_string();
        let store = self.store.to_string_lossy().to_string();
        self.jobmanager = Some(Process::start(
            &[
                "jobmanager",
                "--store",
                &store,
                "--listen",
                &address,
                "--heartbeat-timeout",
                "3s",
            ],
            log,
            &index,
        ));
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
    for round in 0..4 {
        std::thread::sleep(Duration::from_millis(rng.random_range(700..2200)));
        if cluster.state(&job).as_deref() == Some("FINISHED") {
            break;
        }
        if round == 2 {
            // Once the job manager: a new one must find the job in the store and resume it.
            if let Some(jm) = cluster.jobmanager.take() {
                jm.kill();
            }
            kills.push(format!("job manager at {:?}", started.elapsed()));
            std::thread::sleep(Duration::from_millis(rng.random_range(100..800)));
            cluster.start_jobmanager();
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
    let restarts = cluster
        .status(Some(&job))
        .and_then(|j| j["restarts"].as_u64())
        .unwrap_or(0);
    eprintln!(
        "seed {seed}: kills {kills:?}; {} distinct output lines; {restarts} restarts under the last job manager",
        got.len()
    );
    assert!(
        kills.len() >= 3,
        "seed {seed}: the job ended before the kills ({kills:?})"
    );
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
}

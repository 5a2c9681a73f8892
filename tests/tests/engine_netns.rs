//! Task managers on other hosts: two network namespaces stand for two machines, each joined
//! to this one by a veth pair on its own /30. The job manager listens only on a host-side veth
//! address; a task manager runs in each namespace, listening for data on its namespace's
//! address, so everything between the processes (control, heartbeats, and the records of a
//! hash exchange between the two task managers) crosses those links, routed through this
//! host. A keyed-window job with parallelism 2 over one slot per task manager must run on
//! both and produce exactly what an embedded run does.
//!
//! Needs root (namespaces, veth pairs, ip_forward) and iproute2: without them the test fails,
//! it does not skip. Namespaces, links and ip_forward are restored in `Drop`, even on panic.

use std::fs;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use harness::rivulet_bin;
use tempfile::TempDir;

mod engine_support;

use engine_support::{
    Process, TOKEN, assert_same_output, job_file, open_uploads, output_lines, reference_output,
    rest, start_jobmanager, tails_after_gc,
};

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Runs `ip ARGS`, panicking with its stderr if it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("running ip (iproute2 must be installed)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One "host": a namespace with the far end of a veth pair, the near end here.
struct Host {
    netns: String,
    /// The veth end in this (the root) namespace; deleting it deletes the pair.
    near: String,
    near_ip: Ipv4Addr,
    far_ip: Ipv4Addr,
}

/// Two namespaces and their links; undone on drop.
struct Network {
    hosts: Vec<Host>,
    ip_forward_before: Option<String>,
}

/// The tests of this file one at a time: each builds its own namespaces, but they share
/// ip_forward (restored by whichever drops last) and two cores would make their timings
/// (heartbeat timeouts) flaky.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Network {
    /// Namespaces `rvt<pid><tag>`, each on 10.<x>.<y>.<4i>/30: the near end is .1 (.5),
    /// the far end .2 (.6), counting `i` over `tags`. The pid keeps concurrent runs apart; the
    /// tests of one run use different tags and `first` (the first `i`).
    fn new(tags: [&str; 2], first: u8) -> Network {
        let pid = std::process::id();
        let x = 64 + (pid / 256 % 64) as u8;
        let y = (pid % 256) as u8;
        let mut network = Network {
            hosts: Vec::new(),
            ip_forward_before: None,
        };
        for (i, tag) in tags.iter().enumerate() {
            let base = 4 * (first + i as u8);
            // Recorded before it exists, so that a failure half-way still cleans up.
            network.hosts.push(Host {
                netns: format!("rvt{pid}{tag}"),
                near: format!("rvh{pid}{tag}"),
                near_ip: Ipv4Addr::new(10, x, y, base + 1),
                far_ip: Ipv4Addr::new(10, x, y, base + 2),
            });
            let host = network.hosts.last().unwrap();
            let far = format!("rvn{pid}{tag}");
            let (near_ip, far_ip) = (
                format!("{}/30", host.near_ip),
                format!("{}/30", host.far_ip),
            );
            ip(&["netns", "add", &host.netns]);
            ip(&[
                "link", "add", &host.near, "type", "veth", "peer", "name", &far,
            ]);
            ip(&["link", "set", &far, "netns", &host.netns]);
            ip(&["addr", "add", &near_ip, "dev", &host.near]);
            ip(&["link", "set", &host.near, "up"]);
            ip(&["-n", &host.netns, "addr", "add", &far_ip, "dev", &far]);
            ip(&["-n", &host.netns, "link", "set", &far, "up"]);
            ip(&["-n", &host.netns, "link", "set", "lo", "up"]);
            // Everything else (the job manager, the other namespace) is via this host.
            ip(&[
                "-n",
                &host.netns,
                "route",
                "add",
                "default",
                "via",
                &host.near_ip.to_string(),
            ]);
        }
        // The namespaces reach each other through this host's routing.
        network.ip_forward_before = Some(
            fs::read_to_string(IP_FORWARD)
                .expect("reading ip_forward")
                .trim()
                .to_string(),
        );
        fs::write(IP_FORWARD, "1").expect("enabling ip_forward (the test must run as root)");
        network
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        if let Some(before) = &self.ip_forward_before {
            let _ = fs::write(IP_FORWARD, before);
        }
        for host in &self.hosts {
            // Best effort: a panic here would hide the test's own failure.
            let _ = Command::new("ip")
                .args(["link", "del", &host.near])
                .output();
            let _ = Command::new("ip")
                .args(["netns", "del", &host.netns])
                .output();
        }
    }
}

/// `rivulet ARGS` with the cluster token (or `token`).
fn rivulet(args: &[&str], token: &str) -> Output {
    Command::new(rivulet_bin())
        .args(args)
        .env("RIVULET_CLUSTER_TOKEN", token)
        .output()
        .expect("running rivulet")
}

fn status(address: &str, job: Option<&str>) -> Option<serde_json::Value> {
    let mut args = vec!["status", "--json", "--jobmanager", address];
    args.extend(job);
    let out = rivulet(&args, TOKEN);
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

fn logs(processes: &[&Process]) -> String {
    processes
        .iter()
        .map(|p| format!("\n--- {}:\n{}", p.log.display(), p.log_tail()))
        .collect()
}

#[test]
fn task_managers_in_other_network_namespaces_run_a_job_together() {
    const EVENTS: u64 = 200_000;
    let expected = reference_output(EVENTS);
    assert!(expected.len() > 500, "the reference output is too small");

    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let network = Network::new(["a", "b"], 0);
    let dir = TempDir::new().unwrap();
    let store = dir.path().join("store");
    fs::create_dir_all(&store).unwrap();
    let path = |name: &str| -> PathBuf { dir.path().join(name) };

    // Only on host a's near address (see `start_jobmanager_on`).
    let (jobmanager, listen) = start_jobmanager_on(&network, &store, &[], dir.path());
    let address = listen.to_string();

    let taskmanagers = start_taskmanagers(&network, &address, 1, dir.path());
    let all = || {
        let mut v = vec![&jobmanager];
        v.extend(taskmanagers.iter());
        logs(&v)
    };

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let overview = status(&address, None);
        if let Some(o) = &overview
            && o["taskmanagers"].as_u64() == Some(2)
            && o["slots-total"].as_u64() == Some(2)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the task managers never registered over the veth links: {overview:?}{}",
            all()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // The REST API refuses a wrong token and no token.
    for token in ["not-the-token", ""] {
        let out = rivulet(&["list", "--jobmanager", &address], token);
        assert!(!out.status.success(), "token `{token}` was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("wrong token"), "{err}");
    }

    // A task manager with the wrong token is refused and stops, from inside a namespace.
    let mut refused = Command::new("ip")
        .args(["netns", "exec", &network.hosts[0].netns])
        .arg(rivulet_bin())
        .args(["taskmanager", "--jobmanager", &address, "--slots", "1"])
        .arg("--data-listen")
        .arg(format!("{}:0", network.hosts[0].far_ip))
        .arg("--index")
        .arg(path("refused.index"))
        .env("RIVULET_CLUSTER_TOKEN", "not-the-token")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let refused_status = loop {
        if let Some(status) = refused.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = refused.kill();
            let _ = refused.wait();
            panic!("a task manager with a wrong token kept running{}", all());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    refused
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!refused_status.success(), "{err}");
    assert!(err.contains("refused"), "{err}");
    let overview = status(&address, None).expect("the overview");
    assert_eq!(overview["taskmanagers"].as_u64(), Some(2), "{overview}");

    // Nothing listens on loopback: what worked above went over the veth links.
    assert!(
        TcpStream::connect_timeout(
            &SocketAddr::from((Ipv4Addr::LOCALHOST, listen.port())),
            Duration::from_secs(1)
        )
        .is_err(),
        "the job manager answers on 127.0.0.1"
    );

    let file = path("job.toml");
    // Rate-limited so that it is still running when the slots are checked below.
    fs::write(&file, job_file(EVENTS, Some(50_000))).unwrap();
    let out = rivulet(
        &[
            "run",
            "--jobmanager",
            &address,
            "--detach",
            &file.to_string_lossy(),
        ],
        TOKEN,
    );
    assert!(
        out.status.success(),
        "submitting: {}{}",
        String::from_utf8_lossy(&out.stderr),
        all()
    );
    let job = String::from_utf8_lossy(&out.stdout).trim().to_string();

    // Parallelism 2 on two single-slot task managers: while it runs, both are full.
    let mut spread = false;
    let deadline = Instant::now() + Duration::from_secs(180);
    let state = loop {
        let state = status(&address, Some(&job))
            .and_then(|j| j["state"].as_str().map(str::to_string))
            .unwrap_or_default();
        if state == "RUNNING"
            && let Some(o) = status(&address, None)
            && o["taskmanagers"].as_u64() == Some(2)
            && o["slots-available"].as_u64() == Some(0)
        {
            spread = true;
        }
        if matches!(state.as_str(), "FINISHED" | "FAILED" | "CANCELED") {
            break state;
        }
        assert!(
            Instant::now() < deadline,
            "the job did not finish (state {state}){}",
            all()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        state,
        "FINISHED",
        "{:?}{}",
        status(&address, Some(&job)),
        all()
    );
    assert!(spread, "the job never ran on both task managers{}", all());
    let overview = status(&address, None).expect("the overview");
    assert_eq!(overview["taskmanagers"].as_u64(), Some(2), "{overview}");

    let got = output_lines(&store);
    assert_eq!(
        got.len(),
        expected.len(),
        "distinct output lines differ from the embedded run's"
    );
    assert!(
        got == expected,
        "the output differs from the embedded run's{}",
        all()
    );
    assert_eq!(open_uploads(&store), 0, "uploads were left open");
    assert_eq!(
        tails_after_gc(&store),
        Vec::<String>::new(),
        "tail objects were left after gc"
    );

    drop(taskmanagers);
    drop(jobmanager);
    drop(network);
}

/// A log line without its colours (tracing's ANSI escapes).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // An escape runs up to its final letter (`ESC [ 2 m`).
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The tracing lines of `log` that contain `message`, in order, with their timestamps
/// (RFC 3339, UTC, one width: they compare as strings).
fn timed_lines(log: &str, message: &str) -> Vec<(String, String)> {
    log.lines()
        .map(strip_ansi)
        .filter(|l| l.contains(message))
        .filter_map(|l| {
            let time = l.split_whitespace().next()?.to_string();
            (time.ends_with('Z') && time.contains('T')).then_some((time, l))
        })
        .collect()
}

/// Waits up to `secs` for `check` to give a value; panics with `what` and the logs if not.
fn wait_for<T>(
    what: &str,
    secs: u64,
    logs: impl Fn() -> String,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what} (waited {secs} s){}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The job manager, in this namespace and listening only on host 0's near address (not on
/// 127.0.0.1, not on any other address), with `store` and `args`; log and index in `dir`.
/// Port 0: it binds a free one and says which (no port chosen beforehand to race for).
/// Returns it with the address it serves on.
fn start_jobmanager_on(
    network: &Network,
    store: &Path,
    args: &[&str],
    dir: &Path,
) -> (Process, SocketAddr) {
    let store = store.to_string_lossy();
    let mut all = vec!["--store", &*store];
    all.extend_from_slice(args);
    let (jobmanager, listen) = start_jobmanager(
        None,
        &format!("{}:0", network.hosts[0].near_ip),
        &all,
        dir.join("jobmanager.log"),
        &dir.join("jobmanager.index"),
    );
    (jobmanager, listen)
}

/// One task manager in each host's namespace, offering `slots` slots and reaching the job
/// manager at `address` over its link; logs and indexes in `dir`.
fn start_taskmanagers(network: &Network, address: &str, slots: usize, dir: &Path) -> Vec<Process> {
    let slots = slots.to_string();
    network
        .hosts
        .iter()
        .enumerate()
        .map(|(i, host)| {
            Process::start_in(
                Some(&host.netns),
                &[
                    "taskmanager",
                    "--jobmanager",
                    address,
                    "--slots",
                    &slots,
                    "--data-listen",
                    &format!("{}:0", host.far_ip),
                    "--name",
                    &format!("host-{i}"),
                ],
                dir.join(format!("taskmanager-{i}.log")),
                &dir.join(format!("taskmanager-{i}.index")),
            )
        })
        .collect()
}

#[test]
fn a_task_manager_behind_a_cut_link_stops_its_subtasks_before_the_job_restarts_elsewhere() {
    const EVENTS: u64 = 200_000;
    let expected = reference_output(EVENTS);
    assert!(expected.len() > 500, "the reference output is too small");

    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let network = Network::new(["c", "d"], 2);
    let dir = TempDir::new().unwrap();
    let store = dir.path().join("store");
    fs::create_dir_all(&store).unwrap();
    let path = |name: &str| -> PathBuf { dir.path().join(name) };

    let (jobmanager, listen) =
        start_jobmanager_on(&network, &store, &["--heartbeat-timeout", "3s"], dir.path());
    let address = listen.to_string();
    // Two slots each: the job (parallelism 2) gets one on each, and after the cut it restarts
    // on the two of the task manager that is still reachable.
    let taskmanagers = start_taskmanagers(&network, &address, 2, dir.path());
    let all = || {
        let mut v = vec![&jobmanager];
        v.extend(taskmanagers.iter());
        logs(&v)
    };
    let get = |path: &str| rest(&address, "GET", path, Some(TOKEN)).1;
    let cut_log = || fs::read_to_string(&taskmanagers[1].log).unwrap_or_default();

    wait_for("the task managers never registered", 60, all, || {
        (get("/overview")["slots-total"].as_u64() == Some(4)).then_some(())
    });

    let file = path("job.toml");
    // Rate-limited: it runs for about 10 s, long enough to be cut in the middle of. Restarts
    // wait 1 s (Flink's default fixed delay) rather than the test job's 200 ms: the delay is
    // part of the time a cut-off task manager has to stop before the job runs elsewhere, and
    // a loaded machine should not eat the whole margin this test checks.
    let job = job_file(EVENTS, Some(20_000));
    assert!(
        job.contains("delay = \"200ms\""),
        "the test job's restart delay moved"
    );
    fs::write(&file, job.replace("delay = \"200ms\"", "delay = \"1s\"")).unwrap();
    let out = rivulet(
        &[
            "run",
            "--jobmanager",
            &address,
            "--detach",
            &file.to_string_lossy(),
        ],
        TOKEN,
    );
    assert!(
        out.status.success(),
        "submitting: {}{}",
        String::from_utf8_lossy(&out.stderr),
        all()
    );
    let job = String::from_utf8_lossy(&out.stdout).trim().to_string();

    // Running on both task managers (one slot of each taken), with a checkpoint done, so that
    // the cut one has written into uploads the restarted attempt will resume.
    wait_for(
        "the job did not run on both task managers with a checkpoint",
        120,
        all,
        || {
            let tms = get("/taskmanagers")["taskmanagers"].clone();
            let both = tms
                .as_array()
                .is_some_and(|t| t.len() == 2 && t.iter().all(|tm| tm["freeSlots"] == 1));
            let checkpoints = get(&format!("/jobs/{job}/checkpoints"));
            (both && checkpoints["counts"]["completed"].as_u64() >= Some(1)).then_some(())
        },
    );

    // The attempt the job runs now (attempts count from 0, one more at each restart).
    let attempt_before = get(&format!("/jobs/{job}"))["restarts"]
        .as_u64()
        .expect("restarts");

    // The cut: host 1's link goes down. Nothing is closed: no FIN or RST reaches either side,
    // the job manager only stops hearing heartbeats and the task manager stops hearing it.
    let near = network.hosts[1].near.clone();
    ip(&["link", "set", &near, "down"]);
    let cut_at = Instant::now();

    // The job manager declares it lost and restarts the job from a checkpoint on host 0.
    wait_for(
        "the job did not restart from a checkpoint on the task manager left",
        90,
        all,
        || {
            let body = get(&format!("/jobs/{job}"));
            let tms = get("/taskmanagers")["taskmanagers"].clone();
            (body["restores"].as_u64() >= Some(1)
                && tms
                    .as_array()
                    .is_some_and(|t| t.len() == 1 && t[0]["host"] == "host-0"))
            .then_some(body)
        },
    );
    let jm_log = fs::read_to_string(&jobmanager.log).unwrap_or_default();
    assert!(
        jm_log.contains("task manager lost") && jm_log.contains("no heartbeat"),
        "the job manager did not log the task manager lost by heartbeat{}",
        all()
    );
    // The task manager, still cut off, notices the silence itself and stops its subtasks: a
    // closed connection cannot have told it, nothing crosses the link.
    wait_for(
        "the cut-off task manager did not stop its subtasks on its own",
        30,
        all,
        || {
            let log = cut_log();
            (log.contains("lost the job manager (no message from the job manager for")
                && log.contains("stopped its subtasks"))
            .then_some(())
        },
    );
    // ... and did so before the job's next attempt was deployed on host 0 (both log with
    // timestamps from this machine's clock): it stops at three quarters of the heartbeat
    // timeout, the job manager restarts the job only after all of it.
    let (stopped_at, _) = timed_lines(&cut_log(), "subtasks stopped")
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no timestamped stop in the cut task manager's log{}", all()));
    let host0_log = fs::read_to_string(&taskmanagers[0].log).unwrap_or_default();
    let next_attempt = format!("attempt={}", attempt_before + 1);
    let (redeployed_at, _) = timed_lines(&host0_log, "deploying subtask")
        .into_iter()
        .find(|(_, line)| line.contains(&job) && line.contains(&next_attempt))
        .unwrap_or_else(|| panic!("no deploy of {next_attempt} on host 0{}", all()));
    eprintln!(
        "the cut task manager stopped its subtasks at {stopped_at}, the job's next attempt was \
         deployed at {redeployed_at}, {:.1} s after the cut",
        cut_at.elapsed().as_secs_f64()
    );
    assert!(
        stopped_at < redeployed_at,
        "the cut-off subtasks stopped at {stopped_at}, after the next attempt was deployed at \
         {redeployed_at}{}",
        all()
    );

    // The link comes back: the task manager registers afresh, the job finishes.
    ip(&["link", "set", &near, "up"]);
    wait_for(
        "the cut task manager did not register again",
        60,
        all,
        || {
            (cut_log().matches(": registered").count() >= 2
                && get("/overview")["taskmanagers"].as_u64() == Some(2))
            .then_some(())
        },
    );
    let state = wait_for("the job did not end", 240, all, || {
        let state = get(&format!("/jobs/{job}"))["state"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        matches!(state.as_str(), "FINISHED" | "FAILED" | "CANCELED").then_some(state)
    });
    assert_eq!(state, "FINISHED", "{}", all());

    let got = output_lines(&store);
    assert_same_output(&expected, &got, "after a cut link");
    assert_eq!(open_uploads(&store), 0, "uploads were left open{}", all());

    drop(taskmanagers);
    drop(jobmanager);
    drop(network);
}

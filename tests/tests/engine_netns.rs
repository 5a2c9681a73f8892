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
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use harness::rivulet_bin;
use tempfile::TempDir;

mod engine_support;

use engine_support::{
    Process, TOKEN, job_file, open_uploads, output_lines, reference_output, start_jobmanager,
    tails_after_gc,
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

impl Network {
    /// Namespaces `rvt<pid><a|b>`, each on 10.<x>.<y>.<4i>/30: the near end is .1 (.5),
    /// the far end .2 (.6). The pid keeps concurrent runs apart.
    fn new() -> Network {
        let pid = std::process::id();
        let x = 64 + (pid / 256 % 64) as u8;
        let y = (pid % 256) as u8;
        let mut network = Network {
            hosts: Vec::new(),
            ip_forward_before: None,
        };
        for (i, tag) in ["a", "b"].iter().enumerate() {
            let base = 4 * i as u8;
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

    let network = Network::new();
    let dir = TempDir::new().unwrap();
    let store = dir.path().join("store");
    fs::create_dir_all(&store).unwrap();
    let path = |name: &str| -> PathBuf { dir.path().join(name) };

    // Only on host a's near address: not on 127.0.0.1, not on any other address. Port 0:
    // the job manager binds a free one and says which (no port chosen beforehand to race for).
    let (jobmanager, listen) = start_jobmanager(
        None,
        &format!("{}:0", network.hosts[0].near_ip),
        &["--store", &store.to_string_lossy()],
        path("jobmanager.log"),
        &path("jobmanager.index"),
    );
    let address = listen.to_string();

    let taskmanagers: Vec<Process> = network
        .hosts
        .iter()
        .enumerate()
        .map(|(i, host)| {
            Process::start_in(
                Some(&host.netns),
                &[
                    "taskmanager",
                    "--jobmanager",
                    &address,
                    "--slots",
                    "1",
                    "--data-listen",
                    &format!("{}:0", host.far_ip),
                    "--name",
                    &format!("host-{i}"),
                ],
                path(&format!("taskmanager-{i}.log")),
                &path(&format!("taskmanager-{i}.index")),
            )
        })
        .collect();
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

//! A job manager and task managers given bad input: REST requests for paths and methods the
//! API does not have, a heartbeat timeout too short to work, and task managers pointed at a
//! malformed address or at something that is not a job manager. Each must say what is wrong
//! (with the right HTTP status) or stop when told, never hang or flap.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use engine::EngineError;
use engine::cluster::jobmanager::{JobManagerConfig, serve_on};
use engine::cluster::taskmanager::{self, TaskManagerConfig};
use fs_core::WriterConfig;
use fs_core::store::StoreUrl;

const TOKEN: &str = "test-token";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn jm_config(store: &std::path::Path, heartbeat_timeout: Duration) -> JobManagerConfig {
    JobManagerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        store: StoreUrl::parse(store.to_str().unwrap()).unwrap(),
        token: Some(TOKEN.into()),
        heartbeat_timeout,
        writer: WriterConfig::default(),
    }
}

/// A job manager on a port of its own in `runtime`, until `runtime` is dropped.
fn start_jobmanager(runtime: &tokio::runtime::Runtime, store: &std::path::Path) -> SocketAddr {
    let config = jm_config(store, Duration::from_secs(5));
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let address = listener.local_addr().unwrap();
    runtime.spawn(async move {
        if let Err(e) = serve_on(config, listener, std::future::pending()).await {
            panic!("the job manager failed: {e}");
        }
    });
    address
}

/// One HTTP/1.1 request with the token; the status, the `Allow` header (if any) and the body.
fn request(address: SocketAddr, method: &str, path: &str) -> (u16, Option<String>, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head}"));
    let allow = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("allow")
            .then(|| value.trim().to_string())
    });
    (status, allow, body.to_string())
}

/// A path the API does not have is 404, whatever prefix it shares with one it has (it was
/// 405, "GET is not allowed here", for `/jobs/a/b/c` or `/overview/x`); a method a resource
/// does not take is 405 naming the ones it takes, in `Allow` too (RFC 9110 requires it; there
/// was none).
#[test]
fn unknown_paths_are_404_and_wrong_methods_405_with_allow() {
    let runtime = runtime();
    let store = tempfile::tempdir().unwrap();
    let address = start_jobmanager(&runtime, store.path());

    for path in [
        "/jobs/a/b/c",
        "/overview/x",
        "/taskmanagers/1",
        "/metrics/x",
        "/nothing",
    ] {
        let (status, allow, body) = request(address, "GET", path);
        assert_eq!(status, 404, "GET {path}: {body}");
        assert_eq!(allow, None, "GET {path}");
        assert!(body.contains(&format!("no resource {path}")), "{body}");
    }
    let (status, _, body) = request(address, "POST", "/jobs/x/y/cancel");
    assert_eq!(status, 404, "POST /jobs/x/y/cancel: {body}");

    for (method, path, allowed) in [
        ("DELETE", "/jobs", "GET, HEAD, POST"),
        ("PUT", "/overview", "GET, HEAD"),
        ("POST", "/metrics", "GET, HEAD"),
        ("GET", "/jobs/some-job/cancel", "POST"),
        ("DELETE", "/jobs/some-job", "GET, HEAD"),
        ("POST", "/jobs/some-job/checkpoints", "GET, HEAD"),
    ] {
        let (status, allow, body) = request(address, method, path);
        assert_eq!(status, 405, "{method} {path}: {body}");
        assert_eq!(allow.as_deref(), Some(allowed), "{method} {path}");
        assert!(
            body.contains(method) && body.contains(path) && body.contains(allowed),
            "{method} {path}: {body}"
        );
    }
    // What works still does.
    let (status, _, body) = request(address, "GET", "/jobs");
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = request(address, "GET", "/jobs/no-such-job");
    assert_eq!(status, 404, "{body}");
    // HEAD answers as GET does, without the body.
    let (status, _, body) = request(address, "HEAD", "/overview");
    assert_eq!((status, body.as_str()), (200, ""));
}

/// Task managers heartbeat every second and take the job manager for lost after three
/// quarters of its timeout: with `--heartbeat-timeout 0s` every task manager was dropped and
/// reconnected over and over. Such a timeout is refused when the job manager starts.
#[test]
fn a_heartbeat_timeout_too_short_to_work_is_refused() {
    let runtime = runtime();
    let store = tempfile::tempdir().unwrap();
    for timeout in [Duration::ZERO, Duration::from_millis(1500)] {
        let config = jm_config(store.path(), timeout);
        let result = runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tokio::time::timeout(
                Duration::from_secs(10),
                serve_on(config, listener, std::future::pending()),
            )
            .await
        });
        let error = result
            .unwrap_or_else(|_| panic!("a job manager with a {timeout:?} heartbeat timeout ran"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("heartbeat timeout") && error.contains("at least 2s"),
            "{error}"
        );
    }
}

/// A task manager of `slots` slots for `job_manager`, run on a thread until `stop` is set.
fn start_taskmanager(
    runtime: &tokio::runtime::Runtime,
    job_manager: &str,
    stop: &Arc<AtomicBool>,
) -> JoinHandle<Result<(), EngineError>> {
    let config = TaskManagerConfig {
        job_manager: job_manager.to_string(),
        token: Some(TOKEN.into()),
        slots: 1,
        data_listen: "127.0.0.1:0".parse().unwrap(),
        data_advertise: None,
        host: "test".into(),
        writer: WriterConfig::default(),
    };
    let handle = runtime.handle().clone();
    let stop = stop.clone();
    std::thread::spawn(move || taskmanager::run(config, handle, stop))
}

/// Waits up to `limit` for `thread` to end.
fn ended_within<T>(thread: &JoinHandle<T>, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while !thread.is_finished() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// `--jobmanager nonsense` or a port out of range can never work: the task manager said
/// "cannot reach the job manager ... retrying every second" and retried for ever. It now
/// fails at once, naming the address and what it should look like.
#[test]
fn a_task_manager_with_a_malformed_job_manager_address_fails_at_once() {
    let runtime = runtime();
    for address in [
        "nonsense",
        "127.0.0.1:99999",
        "127.0.0.1:0",
        ":8081",
        "127.0.0.1:",
    ] {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = start_taskmanager(&runtime, address, &stop);
        let ended = ended_within(&thread, Duration::from_secs(5));
        stop.store(true, Ordering::SeqCst);
        assert!(ended, "the task manager kept retrying `{address}`");
        let error = thread.join().unwrap().unwrap_err().to_string();
        assert!(
            error.contains(&format!("`{address}`")) && error.contains("host:port"),
            "{error}"
        );
    }
}

/// A task manager pointed at a port that accepts connections but never answers (not a job
/// manager) waited for the answer to its registration for ever, deaf to being stopped (to
/// SIGTERM). It now gives up after a while and stops when told.
#[test]
fn a_task_manager_stops_while_a_silent_server_does_not_answer_its_registration() {
    let runtime = runtime();
    let silent = StdListener::bind("127.0.0.1:0").unwrap();
    let address = silent.local_addr().unwrap().to_string();
    // Accepts and holds every connection, answering nothing.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent.incoming() {
            held.push(stream);
        }
    });
    let stop = Arc::new(AtomicBool::new(false));
    let thread = start_taskmanager(&runtime, &address, &stop);
    std::thread::sleep(Duration::from_secs(1));
    assert!(!thread.is_finished(), "the task manager gave up on its own");
    stop.store(true, Ordering::SeqCst);
    assert!(
        ended_within(&thread, Duration::from_secs(5)),
        "the task manager did not stop while waiting for an answer to its registration"
    );
    thread.join().unwrap().unwrap();
}

/// The checks above leave a real registration alone: a task manager registers with a job
/// manager and shows in `GET /taskmanagers`.
#[test]
fn a_task_manager_still_registers_with_a_job_manager() {
    let runtime = runtime();
    let store = tempfile::tempdir().unwrap();
    let address = start_jobmanager(&runtime, store.path());
    let stop = Arc::new(AtomicBool::new(false));
    let thread = start_taskmanager(&runtime, &address.to_string(), &stop);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _, body) = request(address, "GET", "/taskmanagers");
        assert_eq!(status, 200, "{body}");
        if body.contains("\"slotsNumber\":1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no task manager registered: {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::SeqCst);
    assert!(ended_within(&thread, Duration::from_secs(10)));
    thread.join().unwrap().unwrap();
}

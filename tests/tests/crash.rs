//! Crash safety with real processes: a child writes with periodic persist and is killed with
//! SIGKILL at random moments. After every kill, the index's latest token must cover every
//! acknowledged byte and resume exactly; the next child continues from it. Each child writes
//! bytes of its own (they depend on its generation), so at the end the committed object must
//! hold, byte for byte, each run's bytes from where it resumed to where the next one did:
//! nothing a token discarded survives.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use fs_core::store::ObjectStore;
use fs_core::store::local::LocalStore;
use fs_core::token::Token;
use fs_core::{Index, RecoverableWriter, WriterConfig};
use rand::Rng;

#[path = "../src/crash.rs"]
mod crash;

const KEY: &str = "crash/stream.bin";
const ROUNDS: usize = 50;

/// What a child run printed: where it resumed (if it got that far) and its last acknowledged
/// length.
struct ChildRun {
    start: Option<u64>,
    acknowledged: Option<u64>,
}

fn run_child(
    dirs: &Path,
    max_bytes: u64,
    generation: u64,
    commit: bool,
    kill: Option<Kill>,
) -> ChildRun {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_crash_writer"));
    cmd.arg(dirs.join("store"))
        .arg(dirs.join("index"))
        .arg(dirs.join("cache-child"))
        .arg(KEY)
        .arg(max_bytes.to_string())
        .arg((256 * 1024).to_string())
        .arg(generation.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if commit {
        cmd.arg("--commit");
    }
    let mut child = cmd.spawn().expect("start the crash_writer child process");
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut run = ChildRun {
            start: None,
            acknowledged: None,
        };
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(n) = line.strip_prefix("START ") {
                run.start = Some(n.parse::<u64>().expect("a length"));
            } else if let Some(n) = line.strip_prefix("PERSISTED ") {
                run.acknowledged = Some(n.parse::<u64>().expect("a length"));
                let _ = lines_tx.send(());
            }
        }
        run
    });
    match kill {
        Some(Kill {
            after_first_persist,
            delay,
        }) => {
            if after_first_persist {
                // Bounded wait: a child that never persists fails the checks below.
                let _ = lines_rx.recv_timeout(Duration::from_secs(60));
            }
            std::thread::sleep(delay);
            child.kill().expect("SIGKILL the child"); // std's kill is SIGKILL on Unix
            child.wait().unwrap();
        }
        None => {
            let status = child.wait().unwrap();
            assert!(status.success(), "the final child run failed: {status}");
        }
    }
    reader.join().unwrap()
}

/// When to SIGKILL a child: after a random delay from its start (which may hit start-up or
/// recovery), or from its first acknowledged persist (which hits writes, part uploads and
/// persists in flight).
#[derive(Clone, Copy)]
struct Kill {
    after_first_persist: bool,
    delay: Duration,
}

/// Opens the index and store as a restarted process would, and checks the latest token.
async fn check_recoverable(dirs: &Path, acknowledged: u64, runs: &crash::Runs) -> u64 {
    let store = Arc::new(LocalStore::open(dirs.join("store")).unwrap());
    let index = Index::open(dirs.join("index")).unwrap();
    let config = WriterConfig {
        cache_parts: true,
        cache_dir: dirs.join("cache-parent"),
        part_size: 5 * 1024 * 1024,
        ..Default::default()
    };
    let writer = RecoverableWriter::new(store, index, config).unwrap();
    let tokens = writer.recover_all().await.unwrap();
    let Some(Token::Resume(token)) = tokens.into_iter().find(|t| t.key() == KEY) else {
        assert_eq!(
            acknowledged, 0,
            "an acknowledged persist left no token in the index"
        );
        return 0;
    };
    assert!(
        token.len() >= acknowledged,
        "token covers {} bytes, {acknowledged} were acknowledged",
        token.len()
    );
    let file = writer
        .recover(&token)
        .await
        .unwrap_or_else(|e| panic!("recover after SIGKILL: {e}"));
    assert_eq!(file.len(), token.len());
    // The tail (in memory after recovery) must be exactly the stream's bytes there.
    let tail = file
        .read_at(token.parts_len(), token.tail_len)
        .await
        .unwrap();
    let expected = runs.expected(token.parts_len()..token.len());
    assert_eq!(tail.len(), expected.len(), "tail length after recovery");
    let mismatch = tail.iter().zip(&expected).position(|(a, b)| a != b);
    assert_eq!(
        mismatch.map(|at| token.parts_len() + at as u64),
        None,
        "the recovered tail differs from what the runs wrote at this offset: {runs:?}"
    );
    token.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_no_acknowledged_byte() {
    let dirs = tempfile::tempdir().unwrap();
    let mut acknowledged = 0u64;
    // The kill schedule (whether after a first persist, and the delay) replays from the seed;
    // the moment a kill lands within the child's work cannot.
    let seed = harness::seed("RIVULET_CRASH_SEED", "crash rounds");
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    let mut kills_mid_write = 0;
    let mut runs = crash::Runs::default();
    for round in 0..ROUNDS {
        let kill = Kill {
            after_first_persist: rng.random_bool(0.7),
            delay: Duration::from_millis(rng.random_range(0..300)),
        };
        let path = dirs.path().to_path_buf();
        let generation = round as u64;
        let child = tokio::task::spawn_blocking(move || {
            run_child(&path, 12 * 1024 * 1024, generation, false, Some(kill))
        })
        .await
        .unwrap();
        if let Some(start) = child.start {
            runs.started(start, generation);
        }
        if let Some(len) = child.acknowledged {
            assert!(
                len >= acknowledged,
                "round {round}: a later run acknowledged less ({len} < {acknowledged})"
            );
            acknowledged = len;
            kills_mid_write += 1;
        }
        let recovered = check_recoverable(dirs.path(), acknowledged, &runs).await;
        acknowledged = acknowledged.max(recovered);
    }
    assert!(
        kills_mid_write >= ROUNDS / 2,
        "most rounds should be killed after some persists ({kills_mid_write} were)"
    );
    let path = dirs.path().to_path_buf();
    let last = ROUNDS as u64;
    let child =
        tokio::task::spawn_blocking(move || run_child(&path, 3 * 1024 * 1024, last, true, None))
            .await
            .unwrap();
    runs.started(child.start.expect("the final run starts"), last);
    let final_len = child.acknowledged.expect("the final run persists");
    assert!(final_len >= acknowledged);
    let store = LocalStore::open(dirs.path().join("store")).unwrap();
    let got = store.get(KEY, None).await.unwrap().body;
    assert_eq!(got.len() as u64, final_len);
    let expected = runs.expected(0..final_len);
    let mismatch = got.iter().zip(&expected).position(|(a, b)| a != b);
    assert_eq!(
        mismatch.map(|at| (at, runs.generation_at(at as u64))),
        None,
        "the committed object differs at this offset, which this run should have written: {runs:?}"
    );
}

/// A process killed with SIGKILL leaves its temporary index's folder behind (in `/dev/shm`, so
/// memory). The next temporary index made removes it, but never one a live process holds.
#[test]
fn a_killed_process_temporary_index_is_removed_by_the_next_one() {
    use std::path::PathBuf;
    use std::time::SystemTime;

    // Folders younger than a minute are left alone (their index may still be opening).
    let make_old = |folder: &Path| {
        std::fs::File::open(folder)
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(3600))
            .unwrap();
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_hold_temporary_index"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the hold_temporary_index child process");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let folder = PathBuf::from(line.trim());
    assert!(folder.join("db").is_file(), "the child's index: {line}");

    make_old(&folder);
    let while_alive = Index::temporary().unwrap();
    assert!(folder.exists(), "a live process holds it");
    drop(while_alive);

    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        folder.exists(),
        "a killed process cannot remove its own folder"
    );
    make_old(&folder);
    let next = Index::temporary().unwrap();
    assert!(!folder.exists(), "the next temporary index removes it");
    assert_ne!(PathBuf::from(next.path()), folder);
}

//! The mount for real: `rivulet mount --foreground` of a local store in a temporary directory,
//! driven with ordinary tools (cp, cat, dd, tee, truncate, mv, rm, ls, mkdir, rmdir), the
//! store's files checked byte for byte; then fsync, SIGKILL of the mount, and recovery.
//!
//! Needs /dev/fuse and `fusermount3` (scripts/install-test-deps.sh installs fuse3): without
//! them every test here fails saying so, never skips. The binary is found like in cli.rs.

use harness::rivulet_bin;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Fails (never skips) when FUSE cannot work here.
fn require_fuse() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: the FUSE tests need the fuse kernel module (and, in a container, \
         the device passed in)"
    );
    let found = Command::new("fusermount3")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "fusermount3 is not installed: run scripts/install-test-deps.sh (apt-get install fuse3)"
    );
}

fn is_mounted(mountpoint: &Path) -> bool {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let wanted = mountpoint.to_string_lossy();
    mounts
        .lines()
        .any(|line| line.split(' ').nth(1) == Some(wanted.as_ref()))
}

fn unmount(mountpoint: &Path) {
    for args in [&["-u"][..], &["-u", "-z"]] {
        if !is_mounted(mountpoint) {
            return;
        }
        let _ = Command::new("fusermount3")
            .args(args)
            .arg(mountpoint)
            .stderr(Stdio::null())
            .status();
    }
}

/// The tests of this file run one at a time. A FUSE `flush` (which commits) is sent for every
/// close of a descriptor, including the copies a concurrently spawned child process inherits
/// and closes at exec: tests spawning processes while another holds a file open would commit
/// that file early, at any moment. (docs/fuse.md describes this for users.)
static SERIAL: Mutex<()> = Mutex::new(());

/// A temporary store, index, cache and mount point.
struct Fixture {
    dir: TempDir,
    bin: PathBuf,
    /// Set when the store is a bucket of a test S3 server rather than a local directory.
    s3: Option<S3Backend>,
    _serial: MutexGuard<'static, ()>,
}

/// A test S3 server (moto) with a runtime to check its objects from these synchronous tests.
struct S3Backend {
    server: harness::TestServer,
    store: fs_core::store::DynStore,
    runtime: tokio::runtime::Runtime,
}

impl Fixture {
    fn new() -> Self {
        Self::in_dir(tempfile::tempdir().expect("temp dir"))
    }

    /// The store, index and cache in memory (/dev/shm) when the machine has it: for tests whose
    /// point is not durability, where the `fsync(2)` of every commit would dominate the time.
    fn in_memory() -> Self {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            Self::in_dir(tempfile::tempdir_in(shm).expect("temp dir in /dev/shm"))
        } else {
            Self::new()
        }
    }

    fn in_dir(dir: TempDir) -> Self {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        require_fuse();
        fs::create_dir(dir.path().join("store")).unwrap();
        fs::create_dir(dir.path().join("mnt")).unwrap();
        Self {
            dir,
            bin: rivulet_bin(),
            s3: None,
            _serial: serial,
        }
    }

    /// The mount over a fresh bucket of a moto server instead of a local directory.
    fn on_moto() -> Self {
        let mut fx = Self::new();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let server = runtime.block_on(harness::TestServer::moto());
        let store = runtime.block_on(server.store());
        fx.s3 = Some(S3Backend {
            server,
            store,
            runtime,
        });
        fx
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    fn mnt(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    /// An object's bytes as the store holds them (for a local store, a plain file), `None` if
    /// absent.
    fn object(&self, key: &str) -> Option<Vec<u8>> {
        use fs_core::store::ObjectStoreExt;
        match &self.s3 {
            None => fs::read(self.store().join(key)).ok(),
            Some(s3) => s3.runtime.block_on(async {
                s3.store.head_opt(key).await.unwrap()?;
                Some(s3.store.get(key, None).await.unwrap().body.to_vec())
            }),
        }
    }

    /// Every key in the store under `prefix` (S3 only: a local store's are its files).
    fn keys(&self, prefix: &str) -> Vec<String> {
        use fs_core::store::ObjectStoreExt;
        let s3 = self.s3.as_ref().expect("keys() lists an S3 store");
        let objects = s3.runtime.block_on(s3.store.list_all(prefix)).unwrap();
        objects.into_iter().map(|o| o.key).collect()
    }

    /// Mounts in the foreground, in the background of this test; waits until it is mounted.
    fn mount(&self) -> Mount {
        self.mount_with(&[])
    }

    /// `rivulet [global options] mount --foreground STORE MNT EXTRA...`.
    fn command(&self, extra: &[&str]) -> Command {
        let mut command = Command::new(&self.bin);
        command
            .arg("--index")
            .arg(self.dir.path().join("index"))
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            // Small parts, so a few MiB span several (the local store's minimum is 5 MiB).
            .args(["--part-size", "5MiB", "mount", "--foreground"]);
        match &self.s3 {
            None => command.arg(self.store()),
            Some(s3) => command.arg(s3.server.store_url()).envs(s3.server.env()),
        };
        command.arg(self.mnt()).args(extra);
        command
    }

    fn mount_with(&self, extra: &[&str]) -> Mount {
        let log = self.dir.path().join("mount.log");
        let child = self
            .command(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .expect("start rivulet mount");
        let mut mount = Mount {
            child,
            mountpoint: self.mnt(),
            log,
        };
        let started = Instant::now();
        while !is_mounted(&mount.mountpoint) {
            if let Ok(Some(status)) = mount.child.try_wait() {
                panic!("rivulet mount exited ({status}): {}", mount.log_text());
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "not mounted after 30 s: {}",
                mount.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        mount
    }
}

/// A running mount; dropping it unmounts and stops the process even when a test fails.
struct Mount {
    child: Child,
    mountpoint: PathBuf,
    log: PathBuf,
}

impl Mount {
    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.mountpoint.join(rel)
    }

    /// `fusermount3 -u`, then the process must exit by itself, successfully.
    fn unmount(mut self) {
        let status = Command::new("fusermount3")
            .arg("-u")
            .arg(&self.mountpoint)
            .status()
            .unwrap();
        assert!(status.success(), "fusermount3 -u failed");
        let status = wait_exit(&mut self, Duration::from_secs(30));
        assert!(
            status.success(),
            "mount exited with {status}: {}",
            self.log_text()
        );
    }

    /// SIGKILL: nothing of the process's shutdown runs.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        unmount(&self.mountpoint);
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        unmount(&self.mountpoint);
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn wait_exit(mount: &mut Mount, limit: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = mount.child.try_wait().unwrap() {
            return status;
        }
        assert!(
            started.elapsed() < limit,
            "the mount did not exit in {limit:?}: {}",
            mount.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a shell command line (tools only), failing the test with its output on error.
#[track_caller]
fn sh(cwd: &Path, script: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(cwd)
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "`{script}` failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 11) as u8)
        .collect()
}

#[test]
fn ordinary_tools_through_the_mount() {
    let fx = Fixture::new();
    let local = fx.dir.path().join("local.bin");
    // 12 MiB: three parts of 5 MiB, so appends copy parts server-side.
    let data = pattern(12 << 20, 5);
    fs::write(&local, &data).unwrap();
    let mount = fx.mount();
    let m = mount.mountpoint.clone();

    // cp in, cat out; the object is the file when cp returns.
    sh(&m, &format!("cp {} big.bin", local.display()));
    assert_eq!(fx.object("big.bin").as_deref(), Some(&data[..]));
    let catted = Command::new("cat")
        .arg(mount.path("big.bin"))
        .output()
        .unwrap();
    assert!(catted.stdout == data, "cat through the mount differs");

    // Append with tee -a (O_APPEND).
    sh(
        &m,
        "echo first > log.txt && echo second | tee -a log.txt > /dev/null",
    );
    assert_eq!(
        fx.object("log.txt").as_deref(),
        Some(&b"first\nsecond\n"[..])
    );
    sh(&m, "echo third | tee -a big.bin > /dev/null");
    let mut expected = data.clone();
    expected.extend_from_slice(b"third\n");
    assert!(
        fx.object("big.bin") == Some(expected.clone()),
        "append to a multipart file"
    );

    // dd over the middle without truncating (a write before the end).
    sh(
        &m,
        "printf PATCHED | dd of=big.bin bs=1 seek=6000000 conv=notrunc status=none",
    );
    expected[6_000_000..6_000_007].copy_from_slice(b"PATCHED");
    assert!(
        fx.object("big.bin") == Some(expected.clone()),
        "dd conv=notrunc"
    );
    // dd creating a file; reading it back with dd.
    sh(&m, "dd if=/dev/zero of=zeros bs=64k count=3 status=none");
    assert_eq!(fx.object("zeros"), Some(vec![0u8; 3 * 65536]));
    let out = sh(&m, "dd if=big.bin bs=1 skip=6000000 count=7 status=none");
    assert_eq!(out, "PATCHED");

    // truncate shrinks and grows.
    sh(&m, "truncate -s 6000003 big.bin");
    expected.truncate(6_000_003);
    assert!(
        fx.object("big.bin") == Some(expected.clone()),
        "truncate shrink"
    );
    sh(&m, "truncate -s 6000010 big.bin");
    expected.resize(6_000_010, 0);
    assert!(
        fx.object("big.bin") == Some(expected.clone()),
        "truncate grow"
    );
    assert_eq!(sh(&m, "stat -c %s big.bin").trim(), "6000010");

    // Directories, mv and rm.
    sh(
        &m,
        "mkdir -p sub/deeper && mv log.txt sub/deeper/log.txt && mv big.bin sub/",
    );
    assert_eq!(fx.object("log.txt"), None);
    assert_eq!(
        fx.object("sub/deeper/log.txt").as_deref(),
        Some(&b"first\nsecond\n"[..])
    );
    assert!(fx.object("sub/big.bin") == Some(expected.clone()), "mv");
    assert_eq!(sh(&m, "ls"), "sub\nzeros\n");
    assert_eq!(sh(&m, "ls sub"), "big.bin\ndeeper\n");
    let rmdir = Command::new("rmdir")
        .arg(mount.path("sub"))
        .output()
        .unwrap();
    assert!(
        !rmdir.status.success(),
        "rmdir of a non-empty directory succeeded"
    );
    assert!(
        String::from_utf8_lossy(&rmdir.stderr).contains("not empty"),
        "{}",
        String::from_utf8_lossy(&rmdir.stderr)
    );
    sh(
        &m,
        "rm sub/deeper/log.txt && rmdir sub/deeper && rm sub/big.bin zeros",
    );
    assert_eq!(sh(&m, "ls -A sub"), "");
    sh(&m, "rmdir sub");
    assert_eq!(sh(&m, "ls -A"), "");
    assert_eq!(fx.object("sub/big.bin"), None);
    assert!(
        !fx.store().join("sub").exists(),
        "the directory is gone from the store"
    );

    // Outside changes show up after the metadata TTL (1 s).
    fs::write(fx.store().join("outside"), b"made outside").unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(sh(&m, "cat outside"), "made outside");

    mount.unmount();
    assert!(!is_mounted(&fx.mnt()));
}

/// `mv` of a directory tree (nested files, one larger than a part, empty directories, a file
/// open for writing inside), rename(2)'s refusals, and the store's keys afterwards.
fn rename_directories(fx: &Fixture) {
    let mount = fx.mount();
    let m = mount.mountpoint.clone();
    let big = pattern(6 << 20, 7);
    sh(
        &m,
        "mkdir -p dir1/sub/deep dir1/empty full && echo a > dir1/a && echo c > dir1/sub/deep/c \
         && echo x > full/x && mkdir target && echo plain > file",
    );
    fs::write(mount.path("dir1/sub/big"), &big).unwrap();
    // Open for writing across the rename: it goes on under the new name.
    let mut open = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(mount.path("dir1/sub/open"))
        .unwrap();
    open.write_all(b"before ").unwrap();
    open.flush().unwrap();

    sh(&m, "mv dir1 dir2");
    open.write_all(b"after").unwrap();
    drop(open);
    let mut expected = std::collections::BTreeMap::new();
    expected.insert("a".to_string(), Some(b"a\n".to_vec()));
    expected.insert("empty".to_string(), None);
    expected.insert("sub".to_string(), None);
    expected.insert("sub/big".to_string(), Some(big.clone()));
    expected.insert("sub/deep".to_string(), None);
    expected.insert("sub/deep/c".to_string(), Some(b"c\n".to_vec()));
    expected.insert("sub/open".to_string(), Some(b"before after".to_vec()));
    assert!(tree(&m.join("dir2")) == expected, "the moved tree differs");
    assert!(!m.join("dir1").exists());
    assert_eq!(sh(&m, "ls"), "dir2\nfile\nfull\ntarget\n");
    for (key, bytes) in [
        ("dir2/a", &b"a\n"[..]),
        ("dir2/sub/deep/c", b"c\n"),
        ("dir2/sub/open", b"before after"),
        ("dir2/sub/big", &big),
    ] {
        assert!(
            fx.object(key).as_deref() == Some(bytes),
            "{key} in the store"
        );
    }
    assert_eq!(fx.object("dir1/a"), None);
    if fx.s3.is_some() {
        assert_eq!(fx.keys("dir1"), Vec::<String>::new());
        assert!(fx.keys("dir2/").contains(&"dir2/empty/".to_string()));
    } else {
        assert!(!fx.store().join("dir1").exists());
        assert!(fx.store().join("dir2/empty").is_dir());
    }

    // rename(2)'s answers.
    let errno = |from: &str, to: &str| {
        fs::rename(mount.path(from), mount.path(to))
            .err()
            .and_then(|e| e.raw_os_error())
    };
    assert_eq!(errno("dir2", "dir2/sub/inside"), Some(libc_errno::EINVAL));
    assert_eq!(errno("dir2", "file"), Some(libc_errno::ENOTDIR));
    assert_eq!(errno("dir2", "full"), Some(libc_errno::ENOTEMPTY));
    assert_eq!(errno("file", "target"), Some(libc_errno::EISDIR));
    // Over an empty directory, which it replaces; then back inside another directory.
    fs::rename(mount.path("dir2"), mount.path("target")).unwrap();
    assert!(tree(&m.join("target")) == expected, "after the second move");
    fs::rename(mount.path("target/sub"), mount.path("full/sub")).unwrap();
    assert_eq!(
        sh(&m, "cat full/sub/deep/c full/sub/open"),
        "c\nbefore after"
    );
    assert_eq!(sh(&m, "ls target"), "a\nempty\n");
    mount.unmount();
    assert!(
        fx.object("full/sub/big") == Some(big),
        "full/sub/big after unmount"
    );
    assert_eq!(fx.object("target/sub/big"), None);
}

#[test]
fn a_file_just_written_is_read_back_without_a_get_on_moto() {
    let fx = Fixture::on_moto();
    let mount = fx.mount();
    // Two full parts of 5 MiB and a last one, whose last cache block is short; and a small
    // file, committed by one PUT.
    let big = pattern((12 << 20) + 300_000, 5);
    let small = pattern(300_000, 6);
    for (key, data) in [("written.bin", &big), ("small.bin", &small)] {
        fs::write(mount.path(key), data).unwrap();
        for _ in 0..2 {
            assert!(fs::read(mount.path(key)).unwrap() == *data, "{key}");
        }
        assert_eq!(
            store_gets(&fx, key),
            0,
            "{key}: read from what the mount wrote, not from the store"
        );
    }
    // The writer's part files were moved into the read cache: none is left beside it.
    let cache = fx.dir.path().join("cache");
    let others: Vec<_> = fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with("read-cache-"))
        .collect();
    assert!(others.is_empty(), "{others:?}");
    mount.unmount();

    // Without a read cache nothing is kept, and the reads go to the store.
    let mount = fx.mount_with(&["--cache-size", "0"]);
    let again = pattern((6 << 20) + 5, 7);
    fs::write(mount.path("again.bin"), &again).unwrap();
    assert!(fs::read(mount.path("again.bin")).unwrap() == again);
    assert!(store_gets(&fx, "again.bin") > 0);
    mount.unmount();
    assert_eq!(fs::read_dir(&cache).unwrap().count(), 0, "nothing left");
}

/// errno values of rename(2) (Linux), as `raw_os_error` gives them.
mod libc_errno {
    pub const ENOTDIR: i32 = 20;
    pub const EISDIR: i32 = 21;
    pub const EINVAL: i32 = 22;
    pub const ENOTEMPTY: i32 = 39;
}

#[test]
fn rename_directories_on_a_local_store() {
    rename_directories(&Fixture::new());
}

#[test]
fn rename_directories_on_moto() {
    rename_directories(&Fixture::on_moto());
}

/// GET requests for `key` in the moto server's log (werkzeug logs one line per request).
fn store_gets(fx: &Fixture, key: &str) -> usize {
    let s3 = fx.s3.as_ref().expect("an S3 backend");
    let wanted = format!("\"GET /{}/{key}", s3.server.bucket());
    s3.server
        .log_text()
        .lines()
        .filter(|line| line.contains(&wanted) && !line.contains(&format!("{wanted}/")))
        .count()
}

#[test]
fn a_second_read_is_served_by_the_read_cache_on_moto() {
    let fx = Fixture::on_moto();
    let s3 = fx.s3.as_ref().unwrap();
    // Written outside the mount, 3.5 MiB: several cache blocks and a partial one.
    let outside = pattern((7 << 20) / 2, 9);
    s3.runtime
        .block_on(
            s3.store
                .put("outside.bin", outside.clone().into(), Default::default()),
        )
        .unwrap();
    let mount = fx.mount();
    // Written through the mount (its commit tells the mount the new ETag): cached at close,
    // see `a_file_just_written_is_read_back_without_a_get_on_moto`.
    let inside = pattern(300_000, 4);
    fs::write(mount.path("inside.bin"), &inside).unwrap();

    let key = "outside.bin";
    let before = store_gets(&fx, key);
    assert!(fs::read(mount.path(key)).unwrap() == outside);
    let after_first = store_gets(&fx, key);
    assert!(after_first > before, "the first read goes to the store");
    for _ in 0..2 {
        assert!(fs::read(mount.path(key)).unwrap() == outside);
    }
    assert_eq!(
        store_gets(&fx, key),
        after_first,
        "later reads come from the cache"
    );

    // Changed in the bucket: once the metadata TTL (1 s) has passed, the new bytes are read.
    let changed = pattern(outside.len(), 10);
    s3.runtime
        .block_on(
            s3.store
                .put("outside.bin", changed.clone().into(), Default::default()),
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(fs::read(mount.path("outside.bin")).unwrap() == changed);
    mount.unmount();

    // --cache-size 0: every read goes to the store.
    let mount = fx.mount_with(&["--cache-size", "0"]);
    let before = store_gets(&fx, "inside.bin");
    for _ in 0..2 {
        assert!(fs::read(mount.path("inside.bin")).unwrap() == inside);
    }
    assert!(store_gets(&fx, "inside.bin") >= before + 2);
    mount.unmount();
    // The cache's directory goes with the mount.
    let leftovers: Vec<_> = fs::read_dir(fx.dir.path().join("cache"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("read-cache-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// SIGKILL rounds of the crash test (the issue asks for at least 20).
const CRASH_ROUNDS: u8 = 20;

#[test]
fn fsynced_bytes_survive_sigkill_of_the_mount() {
    use rand::{Rng, SeedableRng};

    let fx = Fixture::new();
    let seed = harness::seed("RIVULET_FUSE_SEED", "crash rounds");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut durable = Vec::new();
    for round in 0..CRASH_ROUNDS {
        let mount = fx.mount();
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(mount.path("journal"))
            .unwrap();
        // Round 0 spans a part (5 MiB); later rounds write a random amount, some of them
        // crossing into a new part.
        let len = if round == 0 {
            6 << 20
        } else {
            let most = if rng.random_bool(0.2) {
                6 << 20
            } else {
                64 << 10
            };
            rng.random_range(1..most)
        };
        let chunk = pattern(len, round);
        file.write_all(&chunk).unwrap();
        file.sync_all().unwrap();
        durable.extend_from_slice(&chunk);
        // Then the process dies at a random moment while writes that were never fsynced go on
        // in another thread: those may be lost, and are, since the mount dies before any close.
        // The thread hands its descriptor back instead of closing it: a close is a flush,
        // which commits, and this round is about what survives without one.
        let mut unsynced = file.try_clone().unwrap();
        let writing = std::thread::spawn(move || {
            for _ in 0..64 {
                if unsynced.write_all(&[b'x'; 4096]).is_err() {
                    break;
                }
            }
            unsynced
        });
        std::thread::sleep(Duration::from_millis(rng.random_range(0..30)));
        let log = mount.log.clone();
        mount.kill();
        let unsynced = writing.join();
        drop(unsynced);
        drop(file);
        let log = fs::read_to_string(log).unwrap_or_default();
        // The killed mount published nothing of this round.
        assert_eq!(
            fx.object("journal").map(|o| o.len()),
            (round > 0).then(|| durable.len() - chunk.len()),
            "seed {seed} round {round}: before recovery; the killed mount's log: {log}"
        );
        // Mounting again commits the file at its fsynced length.
        let mount = fx.mount();
        assert!(
            mount.log_text().contains("recovered journal"),
            "seed {seed} round {round}: {}",
            mount.log_text()
        );
        assert!(
            fx.object("journal") == Some(durable.clone()),
            "seed {seed} round {round}: the object differs from the fsynced bytes"
        );
        mount.unmount();
    }
}

#[test]
fn sigterm_commits_files_still_open() {
    let fx = Fixture::new();
    let mount = fx.mount();
    let mut file = File::create(mount.path("open.txt")).unwrap();
    file.write_all(b"written, never closed").unwrap();
    let status = Command::new("kill")
        .args(["-TERM", &mount.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut mount = mount;
    let exit = wait_exit(&mut mount, Duration::from_secs(30));
    assert!(exit.success(), "exit {exit}: {}", mount.log_text());
    assert_eq!(
        fx.object("open.txt").as_deref(),
        Some(&b"written, never closed"[..])
    );
    drop(file);
    drop(mount);
    assert!(!is_mounted(&fx.mnt()));
}

#[test]
fn read_only_mount_refuses_changes() {
    let fx = Fixture::new();
    fs::write(fx.store().join("kept"), b"as it was").unwrap();
    let mount = fx.mount_with(&["--read-only"]);
    let m = mount.mountpoint.clone();
    assert_eq!(sh(&m, "cat kept"), "as it was");
    for script in [
        "echo x > new",
        "echo x >> kept",
        "mkdir d",
        "rm kept",
        "truncate -s 0 kept",
    ] {
        let out = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(&m)
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "`{script}` succeeded on a read-only mount"
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Read-only file system"),
            "`{script}`: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(fx.object("kept").as_deref(), Some(&b"as it was"[..]));
    assert_eq!(fx.object("new"), None);
    mount.unmount();
}

#[test]
fn mount_errors_are_one_line_and_exit_1() {
    let fx = Fixture::new();
    // Without --foreground, a bad mount point is refused before any background process.
    let missing = fx.dir.path().join("no-such-dir");
    let out = Command::new(&fx.bin)
        .arg("--index")
        .arg(fx.dir.path().join("index"))
        .arg("mount")
        .arg(fx.store())
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("rivulet: mount ") && stderr.contains("is not a directory"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(!is_mounted(&fx.mnt()));
    // A mount point that is not a directory.
    let file = fx.dir.path().join("plain-file");
    fs::write(&file, b"").unwrap();
    let out = Command::new(&fx.bin)
        .args(["mount", "--foreground"])
        .arg(fx.store())
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is not a directory"), "{stderr}");
    assert!(!is_mounted(&file));
}

/// The `fsx` binary (scripts/install-test-deps.sh installs it): on `PATH`, else in
/// `~/.cargo/bin`. Missing, the test fails saying so.
fn fsx_bin() -> PathBuf {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join("fsx"))
                .collect()
        })
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cargo/bin/fsx"));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "fsx is not installed: run scripts/install-test-deps.sh (cargo install \
                 fsx@0.3.2 --locked)"
            )
        })
}

/// Runs fsx for `ops` operations on one file in the mount, with a file of at most `flen` bytes.
/// The operations are the ones the mount serves: pread/pwrite, ftruncate, fsync, fdatasync and
/// close + reopen (every close commits the file to the store, so the next write goes through
/// `open_append`). mmap is off: the mount does not promise shared writable mappings.
fn run_fsx(fx: &Fixture, mount: &Mount, name: &str, flen: u64, max_op: u64, ops: u64, seed: u64) {
    let config = fx.dir.path().join(format!("{name}.toml"));
    fs::write(
        &config,
        format!(
            "flen = {flen}\n\
             [opsize]\nmin = 1\nmax = {max_op}\n\
             [weights]\n\
             close_open = 2\nread = 10\nwrite = 10\nmapread = 0\nmapwrite = 0\n\
             invalidate = 0\ntruncate = 3\nfsync = 1\nfdatasync = 1\n"
        ),
    )
    .unwrap();
    // Artifacts (the expected file, the log of the last operations) go outside the mount.
    let artifacts = fx.dir.path().join(format!("{name}-artifacts"));
    fs::create_dir(&artifacts).unwrap();
    let started = Instant::now();
    let out = Command::new(fsx_bin())
        .arg("-f")
        .arg(&config)
        .args(["-N", &ops.to_string(), "-S", &seed.to_string()])
        .arg("-P")
        .arg(&artifacts)
        .arg(mount.path(name))
        .output()
        .expect("run fsx");
    eprintln!("fsx {name}: {ops} operations in {:?}", started.elapsed());
    assert!(
        out.status.success(),
        "fsx {name} (seed {seed}, {ops} operations, flen {flen}) failed ({}): {}{}\nmount log: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        mount.log_text()
    );
}

/// Operations of the fsx run on a file larger than a part (the issue asks for 20,000).
const LARGE_FSX_OPS: u64 = 20_000;

#[test]
fn fsx_through_the_mount() {
    // fsx checks what reads return, not what survives a crash (the crash tests do): the store
    // lives in memory, so the commits' fsync(2)s of a disk do not set the pace.
    let fx = Fixture::in_memory();
    let mount = fx.mount();
    // A file larger than the part size (up to 6 MiB, the parts 5 MiB): writes before the end,
    // truncates and reopens cross the part boundary, so parts are copied, cut and re-uploaded.
    run_fsx(&fx, &mount, "large", 6 << 20, 1 << 20, LARGE_FSX_OPS, 2);
    // A file that stays inside one part (256 KiB, the fsx default): the tail's paths.
    run_fsx(&fx, &mount, "small", 256 << 10, 64 << 10, 20_000, 1);
    // What fsx left behind is in the store as it reads through the mount.
    for name in ["small", "large"] {
        let through = fs::read(mount.path(name)).unwrap();
        assert!(
            fx.object(name) == Some(through),
            "{name}: the store's object differs from the mount's file"
        );
    }
    mount.unmount();
}

/// A file tree inside the mount and the same tree in a plain directory, changed alike.
struct Twin {
    roots: [PathBuf; 2],
    /// Per name, the open read-write handle of each side (a handle stays open across
    /// operations, so writes, truncates and fsyncs hit a file the mount has open for writing).
    open: std::collections::BTreeMap<&'static str, [File; 2]>,
    seed: u64,
    step: usize,
    /// The mount's log, shown when the two sides disagree.
    log: PathBuf,
}

/// The names the random operations use: files at the root and in two directories.
const TWIN_NAMES: [&str; 6] = ["a", "b", "c", "d/x", "d/y", "e/z"];

impl Twin {
    /// Runs `f` on both sides; both must succeed.
    #[track_caller]
    fn both<T>(&mut self, what: &str, mut f: impl FnMut(&Path) -> std::io::Result<T>) -> [T; 2] {
        let mount = f(&self.roots[0]);
        let plain = f(&self.roots[1]);
        self.agree(what, [mount, plain])
    }

    /// Both outcomes of an operation (mount, plain directory) must be successes.
    #[track_caller]
    fn agree<T>(&self, what: &str, [mount, plain]: [std::io::Result<T>; 2]) -> [T; 2] {
        match (mount, plain) {
            (Ok(m), Ok(p)) => [m, p],
            (m, p) => panic!(
                "seed {} step {}: {what}: the mount gave {:?}, a plain directory {:?}\n\
                 mount log: {}",
                self.seed,
                self.step,
                m.err(),
                p.err(),
                fs::read_to_string(&self.log).unwrap_or_default()
            ),
        }
    }

    fn handles(&mut self, name: &'static str) -> &mut [File; 2] {
        if !self.open.contains_key(name) {
            let files = self.both(&format!("open {name}"), |root| {
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(root.join(name))
            });
            self.open.insert(name, files);
        }
        self.open.get_mut(name).unwrap()
    }

    fn close(&mut self, name: &str) {
        self.open.remove(name);
    }

    fn exists(&self, name: &str) -> bool {
        self.roots[1].join(name).exists()
    }

    /// Listing and every byte of both trees (read by path, so open files are read too).
    fn compare(&self) {
        let trees = self.roots.clone().map(|root| tree(&root));
        assert!(
            trees[0] == trees[1],
            "seed {} step {}: the trees differ:\nmount: {:?}\nplain: {:?}",
            self.seed,
            self.step,
            trees[0].keys().collect::<Vec<_>>(),
            trees[1].keys().collect::<Vec<_>>()
        );
    }
}

/// The same operation on each side's handle.
trait Each {
    fn each<T>(&self, f: impl FnMut(&File) -> std::io::Result<T>) -> [std::io::Result<T>; 2];
}

impl Each for [File; 2] {
    fn each<T>(&self, mut f: impl FnMut(&File) -> std::io::Result<T>) -> [std::io::Result<T>; 2] {
        [f(&self[0]), f(&self[1])]
    }
}

/// Path (relative) -> contents (`None` for a directory), recursively.
fn tree(root: &Path) -> std::collections::BTreeMap<String, Option<Vec<u8>>> {
    let mut out = std::collections::BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if path.is_dir() {
                out.insert(rel, None);
                dirs.push(path);
            } else {
                out.insert(rel, Some(fs::read(&path).unwrap()));
            }
        }
    }
    out
}

const TWIN_OPS: usize = 10_000;

#[test]
fn random_operations_match_a_plain_directory() {
    use rand::{Rng, SeedableRng};
    use std::io::{Seek, SeekFrom};
    use std::os::unix::fs::FileExt;

    let fx = Fixture::new();
    let mount = fx.mount();
    let plain = fx.dir.path().join("plain");
    fs::create_dir(&plain).unwrap();
    let seed = harness::seed("RIVULET_FUSE_SEED", "random operations");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut twin = Twin {
        roots: [mount.mountpoint.clone(), plain],
        open: Default::default(),
        seed,
        step: 0,
        log: mount.log.clone(),
    };
    twin.both("mkdir", |root| {
        fs::create_dir(root.join("d"))?;
        fs::create_dir(root.join("e"))
    });
    let started = Instant::now();
    for step in 0..TWIN_OPS {
        twin.step = step;
        let name = TWIN_NAMES[rng.random_range(0..TWIN_NAMES.len())];
        // Small files (up to 96 KiB): a write before the end re-appends what follows it.
        let len = if twin.exists(name) {
            fs::metadata(twin.roots[1].join(name)).unwrap().len()
        } else {
            0
        };
        // Every close, append, rename and unlink commits a file (fsyncs in the index and the
        // local store): those are a fifth of the mix, so 10,000 operations fit in a minute or two.
        match rng.random_range(0..100) {
            // Write at a random offset, possibly past the end (a hole).
            0..=29 => {
                let offset = rng.random_range(0..=len + 4096).min(90 << 10);
                let data: Vec<u8> = (0..rng.random_range(1..8192))
                    .map(|_| rng.random())
                    .collect();
                let files = twin.handles(name);
                let done = files.each(|file| file.write_all_at(&data, offset));
                twin.agree(&format!("write {name} at {offset}"), done);
            }
            // Append through O_APPEND, its own descriptor (closed, so committed, at once).
            30..=35 => {
                let data: Vec<u8> = (0..rng.random_range(1..4096))
                    .map(|_| rng.random())
                    .collect();
                if len < (90 << 10) {
                    twin.both(&format!("append {name}"), |root| {
                        OpenOptions::new()
                            .append(true)
                            .create(true)
                            .open(root.join(name))?
                            .write_all(&data)
                    });
                }
            }
            // Truncate (shrink or grow) through the open handle.
            36..=45 => {
                let new_len = rng.random_range(0..=len + 2048);
                let files = twin.handles(name);
                let done = files.each(|file| file.set_len(new_len));
                twin.agree(&format!("truncate {name} to {new_len}"), done);
            }
            46..=49 => {
                if let Some(files) = twin.open.get(name) {
                    let done = files.each(|file| file.sync_all());
                    twin.agree(&format!("fsync {name}"), done);
                }
            }
            // Close (commits the file in the mount) and maybe reopen.
            50..=55 => {
                twin.close(name);
                if rng.random_bool(0.5) && twin.exists(name) {
                    twin.handles(name);
                }
            }
            // Read a random range through the open handle, or the whole file by path.
            56..=89 => {
                if rng.random_bool(0.5) && twin.exists(name) {
                    let offset = rng.random_range(0..=len);
                    let size = rng.random_range(1..16384);
                    let files = twin.handles(name);
                    let got = [0, 1].map(|i| {
                        let mut buf = vec![0u8; size];
                        files[i].seek(SeekFrom::Start(offset)).unwrap();
                        let mut n = 0;
                        loop {
                            let read = std::io::Read::read(&mut files[i], &mut buf[n..]).unwrap();
                            if read == 0 {
                                break;
                            }
                            n += read;
                        }
                        buf.truncate(n);
                        buf
                    });
                    assert!(
                        got[0] == got[1],
                        "seed {seed} step {step}: read {name} at {offset}: {} bytes from the \
                         mount, {} from a plain directory, or different bytes",
                        got[0].len(),
                        got[1].len()
                    );
                } else if twin.exists(name) {
                    let got = twin.both(&format!("read {name}"), |root| fs::read(root.join(name)));
                    assert!(
                        got[0] == got[1],
                        "seed {seed} step {step}: {name} differs ({} bytes in the mount, {} in \
                         a plain directory)",
                        got[0].len(),
                        got[1].len()
                    );
                }
            }
            // Rename, possibly over an existing file (both closed first).
            90..=94 => {
                let to = TWIN_NAMES[rng.random_range(0..TWIN_NAMES.len())];
                if twin.exists(name) && to != name {
                    twin.close(name);
                    twin.close(to);
                    twin.both(&format!("rename {name} {to}"), |root| {
                        fs::rename(root.join(name), root.join(to))
                    });
                }
            }
            // Unlink, sometimes while open (the handle keeps working on both sides).
            _ => {
                if twin.exists(name) {
                    if rng.random_bool(0.7) {
                        twin.close(name);
                    }
                    twin.both(&format!("unlink {name}"), |root| {
                        fs::remove_file(root.join(name))
                    });
                    // A later operation on the name starts a new file.
                    twin.close(name);
                }
            }
        }
        if step % 500 == 499 {
            twin.compare();
        }
    }
    twin.open.clear();
    twin.compare();
    eprintln!("random operations: {TWIN_OPS} in {:?}", started.elapsed());
    // After the unmount the store holds exactly the plain tree's files.
    let expected: Vec<(String, Vec<u8>)> = tree(&twin.roots[1])
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
    mount.unmount();
    for (key, bytes) in expected {
        assert!(
            fx.object(&key) == Some(bytes),
            "seed {seed}: {key} in the store differs after the unmount"
        );
    }
}

#[test]
fn git_repository_inside_the_mount() {
    let fx = Fixture::new();
    let mount = fx.mount();
    let m = mount.mountpoint.clone();
    let git = "git -c user.name=Rivulet -c user.email=rivulet@example.invalid \
               -c init.defaultBranch=main -c gc.auto=0";
    sh(
        &m,
        "mkdir -p repo/src/deep && cd repo && printf 'hello\\n' > README && \
            seq 1 20000 > src/numbers && printf 'fn main() {}\\n' > src/deep/main.rs",
    );
    let repo = m.join("repo");
    sh(&repo, &format!("{git} init -q ."));
    sh(&repo, &format!("{git} add -A && {git} commit -q -m first"));
    // A second commit: the index and refs are rewritten (a lock file renamed over the old one).
    sh(
        &repo,
        &format!("echo more >> README && {git} commit -q -am second"),
    );
    let log = sh(&repo, &format!("{git} log --format=%s"));
    assert_eq!(log, "second\nfirst\n");
    sh(&repo, &format!("{git} fsck --full --strict"));
    assert_eq!(sh(&repo, &format!("{git} status --porcelain")), "");
    assert_eq!(
        sh(&repo, &format!("{git} show HEAD:README")),
        "hello\nmore\n"
    );
    mount.unmount();
    // The repository is usable from the store's side too (a local store is a directory).
    let log = sh(&fx.store().join("repo"), &format!("{git} log --format=%s"));
    assert_eq!(log, "second\nfirst\n");
}

#[test]
fn without_foreground_the_command_returns_once_mounted_and_a_background_process_serves() {
    let fx = Fixture::new();
    let log = fx.dir.path().join("background.log");
    let out = Command::new(&fx.bin)
        .arg("--index")
        .arg(fx.dir.path().join("index"))
        .args(["mount", "--log-file"])
        .arg(&log)
        .arg(fx.store())
        .arg(fx.mnt())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // It returned only once mounted.
    assert!(is_mounted(&fx.mnt()), "{stderr}");
    assert!(stderr.contains("in the background"), "{stderr}");
    fs::write(fx.mnt().join("bg.txt"), b"served by the background process").unwrap();
    assert_eq!(
        fx.object("bg.txt").as_deref(),
        Some(&b"served by the background process"[..])
    );
    let status = Command::new("fusermount3")
        .arg("-u")
        .arg(fx.mnt())
        .status()
        .unwrap();
    assert!(status.success());
    // The background process ends once unmounted.
    let deadline = Instant::now() + Duration::from_secs(30);
    let pattern = format!("mount --log-file {}", log.display());
    loop {
        let running = Command::new("pgrep")
            .args(["-f", &pattern])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !running {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the background mount still runs after unmount: {}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(fs::read_to_string(&log).unwrap().contains("mounted"));
}

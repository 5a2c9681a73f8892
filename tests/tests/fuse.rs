//! The mount for real: `rivulet mount --foreground` of a local store in a temporary directory,
//! driven with ordinary tools (cp, cat, dd, tee, truncate, mv, rm, ls, mkdir, rmdir), the
//! store's files checked byte for byte; then fsync, SIGKILL of the mount, and recovery.
//!
//! Needs /dev/fuse and `fusermount3` (scripts/install-test-deps.sh installs fuse3): without
//! them every test here fails saying so, never skips. The binary is found like in cli.rs.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tempfile::TempDir;

fn rivulet_bin() -> PathBuf {
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(deps) = exe.parent()
    {
        candidates.push(deps.join("../rivulet"));
        candidates.push(deps.join("rivulet"));
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(target).join("debug/rivulet"));
    }
    candidates.iter().find(|p| p.is_file()).cloned().unwrap_or_else(|| {
        panic!(
            "the rivulet binary is missing (looked at {candidates:?}): build the workspace first \
             with `cargo build --workspace`"
        )
    })
}

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
/// that file early, at any moment. (docs/mount.md describes this for users.)
static SERIAL: Mutex<()> = Mutex::new(());

/// A temporary store, index, cache and mount point.
struct Fixture {
    dir: TempDir,
    bin: PathBuf,
    _serial: MutexGuard<'static, ()>,
}

impl Fixture {
    fn new() -> Self {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        require_fuse();
        let dir = tempfile::tempdir().expect("temp dir");
        fs::create_dir(dir.path().join("store")).unwrap();
        fs::create_dir(dir.path().join("mnt")).unwrap();
        Self {
            dir,
            bin: rivulet_bin(),
            _serial: serial,
        }
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    fn mnt(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    /// An object's bytes as the local store holds them (a plain file), `None` if absent.
    fn object(&self, key: &str) -> Option<Vec<u8>> {
        fs::read(self.store().join(key)).ok()
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
            .args(["--part-size", "5MiB", "mount", "--foreground"])
            .arg(self.store())
            .arg(self.mnt())
            .args(extra);
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

#[test]
fn fsynced_bytes_survive_sigkill_of_the_mount() {
    let fx = Fixture::new();
    let mut durable = Vec::new();
    for round in 0..3u8 {
        let mount = fx.mount();
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(mount.path("journal"))
            .unwrap();
        // Round 0 spans a part (5 MiB), later rounds stay in the tail.
        let chunk = pattern(if round == 0 { 6 << 20 } else { 1000 }, round);
        file.write_all(&chunk).unwrap();
        file.sync_all().unwrap();
        durable.extend_from_slice(&chunk);
        // Not fsynced: may be lost, and is, since the process dies before any close.
        file.write_all(b"not synced").unwrap();
        let log = mount.log.clone();
        mount.kill();
        drop(file);
        let log = fs::read_to_string(log).unwrap_or_default();
        // The killed mount published nothing of this round.
        assert_eq!(
            fx.object("journal").map(|o| o.len()),
            (round > 0).then(|| durable.len() - chunk.len()),
            "round {round}: before recovery; the killed mount's log: {log}"
        );
        // Mounting again commits the file at its fsynced length.
        let mount = fx.mount();
        assert!(
            mount.log_text().contains("recovered journal"),
            "round {round}: {}",
            mount.log_text()
        );
        assert!(
            fx.object("journal") == Some(durable.clone()),
            "round {round}"
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
    // Without --foreground: daemon mode is not implemented, and it says so.
    let mut command = Command::new(&fx.bin);
    command.arg("mount").arg(fx.store()).arg(fx.mnt());
    let out = command.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("rivulet: mount ") && stderr.contains("--foreground"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
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

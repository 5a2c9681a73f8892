//! End-to-end tests of the `rivulet` binary against a local store in a temporary directory.
//!
//! The binary is not built by this crate (a binary cannot be a dependency): it is found next to
//! this test's own executable (`target/debug/rivulet`) or under `$CARGO_TARGET_DIR/debug`, and a
//! missing binary fails every test with a message saying to build the workspace first.

use harness::rivulet_bin;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fs_core::store::DynStore;
use fs_core::store::local::LocalStore;
use fs_core::{Index, RecoverableWriter, WriterConfig};
use tempfile::TempDir;

const MIB: usize = 1024 * 1024;

/// A temporary directory with a store (`store/`), an index and a part cache of its own.
struct Fixture {
    dir: TempDir,
    bin: PathBuf,
}

/// What one run of the binary did.
struct Run {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
}

impl Run {
    fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    #[track_caller]
    fn ok(self) -> Self {
        assert_eq!(
            self.code,
            Some(0),
            "expected success; stderr: {}",
            self.stderr
        );
        self
    }

    #[track_caller]
    fn fails_with(self, code: i32, needles: &[&str]) -> Self {
        assert_eq!(
            self.code,
            Some(code),
            "stdout: {} stderr: {}",
            self.stdout_text(),
            self.stderr
        );
        for needle in needles {
            assert!(
                self.stderr.contains(needle),
                "expected {needle:?} in stderr: {}",
                self.stderr
            );
        }
        self
    }
}

impl From<Output> for Run {
    fn from(out: Output) -> Self {
        Run {
            code: out.status.code(),
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("store")).expect("store dir");
        Self {
            dir,
            bin: rivulet_bin(),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// A plain-path URL of a key in the store.
    fn obj(&self, key: &str) -> String {
        self.path("store").join(key).display().to_string()
    }

    /// A `file://` URL of a key in the store (what `cp` needs to see a store object).
    fn url(&self, key: &str) -> String {
        format!("file://{}", self.obj(key))
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--index")
            .arg(self.path("index"))
            .arg("--cache-dir")
            .arg(self.path("cache"))
            .args(args)
            .env_remove("RIVULET_INDEX")
            .env_remove("RUST_LOG")
            .current_dir(self.dir.path());
        cmd
    }

    fn run(&self, args: &[&str]) -> Run {
        self.command(args)
            .stdin(Stdio::null())
            .output()
            .expect("run rivulet")
            .into()
    }

    fn run_with_stdin(&self, args: &[&str], input: &[u8]) -> Run {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn rivulet");
        let mut stdin = child.stdin.take().expect("stdin");
        let input = input.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&input));
        let out = child.wait_with_output().expect("wait for rivulet");
        writer.join().expect("stdin writer").expect("write stdin");
        out.into()
    }

    fn write_file(&self, rel: &str, data: &[u8]) -> String {
        let path = self.path(rel);
        std::fs::write(&path, data).expect("write input file");
        path.display().to_string()
    }
}

/// Deterministic pseudo-random bytes (xorshift), different for each seed.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

#[test]
fn cp_in_and_out_is_byte_exact_across_parts() {
    let fx = Fixture::new();
    // 12 MiB + 1234 bytes: two full 5 MiB parts and a last one.
    let data = pseudo_random(12 * MIB + 1234, 1);
    let src = fx.write_file("big.bin", &data);
    let run = fx
        .run(&["--part-size", "5MiB", "cp", &src, &fx.url("big.bin")])
        .ok();
    assert!(
        run.stdout.is_empty(),
        "cp prints nothing on success: {}",
        run.stdout_text()
    );
    assert!(
        run.stderr.is_empty(),
        "no progress bar when stderr is not a terminal: {}",
        run.stderr
    );
    // Objects are plain files in the local store.
    assert_eq!(read(&fx.path("store/big.bin")), data);
    // Three parts: a multipart ETag with -3.
    let stat = fx.run(&["stat", &fx.obj("big.bin")]).ok().stdout_text();
    assert!(
        stat.contains(&format!("Size:          {}", data.len())),
        "{stat}"
    );
    assert!(stat.contains("-3\""), "multipart ETag of 3 parts: {stat}");

    // Out again, with ranged reads smaller than the object, to a file and to stdout.
    let out = fx.path("out.bin");
    fx.run(&[
        "--part-size",
        "5MiB",
        "--max-in-flight",
        "2",
        "cp",
        &fx.url("big.bin"),
        out.to_str().unwrap(),
    ])
    .ok();
    assert_eq!(read(&out), data);
    let stdout = fx
        .run(&["--part-size", "1MiB", "cp", &fx.url("big.bin"), "-"])
        .ok()
        .stdout;
    assert!(
        stdout == data,
        "cp to stdout differs ({} bytes vs {})",
        stdout.len(),
        data.len()
    );
    // No temporary files are left next to the download.
    let leftovers: Vec<_> = std::fs::read_dir(fx.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("rivulet-") && n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Into a "directory" URL and a local directory: the names carry over.
    fx.run(&["cp", &src, &format!("{}/", fx.url("dir"))]).ok();
    assert_eq!(read(&fx.path("store/dir/big.bin")), data);
    std::fs::create_dir(fx.path("downloads")).unwrap();
    fx.run(&[
        "cp",
        &fx.url("dir/big.bin"),
        fx.path("downloads").to_str().unwrap(),
    ])
    .ok();
    assert_eq!(read(&fx.path("downloads/big.bin")), data);

    // From stdin, replacing the object.
    let small = pseudo_random(1000, 2);
    fx.run_with_stdin(&["cp", "-", &fx.url("big.bin")], &small)
        .ok();
    assert_eq!(read(&fx.path("store/big.bin")), small);
    // The writer cleaned up after itself: nothing left open in the index.
    let recover = fx.run(&["recover", &fx.obj("")]).ok().stdout_text();
    assert!(recover.contains("no open uploads"), "{recover}");
}

#[test]
fn cp_needs_a_store_url_on_one_side() {
    let fx = Fixture::new();
    let src = fx.write_file("a.txt", b"abc");
    fx.run(&["cp", &src, fx.path("b.txt").to_str().unwrap()])
        .fails_with(2, &["rivulet: cp ", "is a store object", "scheme"]);
    assert!(!fx.path("b.txt").exists());
    fx.run(&["cp", fx.path("missing.txt").to_str().unwrap(), &fx.url("x")])
        .fails_with(1, &["missing.txt"]);
    assert!(!fx.path("store/x").exists());
    fx.run(&["cp", &fx.url("missing"), fx.path("out").to_str().unwrap()])
        .fails_with(1, &["no such object 'missing'"]);
    assert!(
        !fx.path("out").exists(),
        "a failed download creates nothing"
    );
}

/// Two appends to one object that overlap (two processes with their own index, as on two
/// machines): the one that commits second fails, in one line that names the object, the
/// cause and what to do, and the first one's bytes stay.
#[test]
fn overlapping_appends_fail_the_second_to_commit() {
    let fx = Fixture::new();
    fx.run_with_stdin(&["append", &fx.obj("shared.log")], b"base\n")
        .ok();
    let mut slow = fx
        .command(&["append", &fx.obj("shared.log"), "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rivulet");
    let mut stdin = slow.stdin.take().unwrap();
    stdin.write_all(b"slow\n").unwrap();
    // The slow append has read the object and opened its upload: it appends to "base\n".
    wait_for_upload(&fx, false, "the slow append never opened its upload");
    let mut fast = Command::new(&fx.bin)
        .arg("--index")
        .arg(fx.path("other-index"))
        .arg("--cache-dir")
        .arg(fx.path("other-cache"))
        .args(["append", &fx.obj("shared.log"), "-"])
        .env_remove("RIVULET_INDEX")
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rivulet");
    fast.stdin.take().unwrap().write_all(b"fast\n").unwrap();
    let fast: Run = fast.wait_with_output().expect("wait for rivulet").into();
    fast.ok();
    drop(stdin);
    let slow: Run = slow.wait_with_output().expect("wait for rivulet").into();
    let slow = slow.fails_with(1, &["shared.log", "changed since", "run the command again"]);
    assert_eq!(slow.stderr.trim_end().lines().count(), 1, "{}", slow.stderr);
    assert_eq!(read(&fx.path("store/shared.log")), b"base\nfast\n");
}

/// A length no file of this part size can have fails at once, creating nothing (it used to
/// write zeros until the 10,000th part, or until the disk was full).
#[test]
fn truncate_past_the_part_limit_fails_at_once() {
    let fx = Fixture::new();
    let started = Instant::now();
    let run = fx
        .run(&["truncate", &fx.obj("huge.img"), "80GiB"])
        .fails_with(1, &["huge.img", "10,000 parts", "larger part size"]);
    assert_eq!(run.stderr.trim_end().lines().count(), 1, "{}", run.stderr);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert!(!fx.path("store/huge.img").exists());
    let uploads = fx.path("store/.rivulet-store/uploads");
    assert_eq!(
        std::fs::read_dir(&uploads).map(|d| d.count()).unwrap_or(0),
        0,
        "the upload was aborted"
    );
}

/// Appending nothing, or truncating to the current length, leaves the object as it is: a new
/// upload would copy all of it server-side to give back the same bytes under a new ETag.
#[test]
fn appending_nothing_or_truncating_to_the_same_length_changes_nothing() {
    let fx = Fixture::new();
    let input = fx.write_file("data.bin", &pseudo_random(3000, 9));
    fx.run(&["append", &fx.obj("log.bin"), &input]).ok();
    let stat = |fx: &Fixture| fx.run(&["stat", &fx.obj("log.bin")]).ok().stdout_text();
    let before = stat(&fx);

    let empty = fx.write_file("empty.bin", b"");
    let run = fx.run(&["-v", "append", &fx.obj("log.bin"), &empty]).ok();
    assert!(
        run.stderr
            .contains("nothing to append: log.bin is unchanged (3000 bytes"),
        "{}",
        run.stderr
    );
    let run = fx
        .run_with_stdin(&["-v", "append", &fx.obj("log.bin"), "-"], b"")
        .ok();
    assert!(run.stderr.contains("nothing to append"), "{}", run.stderr);
    let run = fx.run(&["-v", "truncate", &fx.obj("log.bin"), "3000"]).ok();
    assert!(
        run.stderr
            .contains("log.bin is already 3000 bytes; unchanged"),
        "{}",
        run.stderr
    );
    assert_eq!(stat(&fx), before, "same ETag, same modification time");

    // Appending nothing to a missing key still creates it, empty.
    fx.run_with_stdin(&["append", &fx.obj("new.bin"), "-"], b"")
        .ok();
    assert_eq!(read(&fx.path("store/new.bin")), b"");
}

#[test]
fn append_twice_then_cat() {
    let fx = Fixture::new();
    let first = pseudo_random(3000, 3);
    let input = fx.write_file("first.bin", &first);
    let run = fx.run(&["append", &fx.obj("log.bin"), &input]).ok();
    assert!(
        run.stdout.is_empty() && run.stderr.is_empty(),
        "append is silent: {} {}",
        run.stdout_text(),
        run.stderr
    );
    let second = b"and a line from stdin\n".to_vec();
    fx.run_with_stdin(&["append", &fx.obj("log.bin")], &second)
        .ok();
    let mut expected = first.clone();
    expected.extend_from_slice(&second);
    assert_eq!(fx.run(&["cat", &fx.obj("log.bin")]).ok().stdout, expected);

    // -v says what happened.
    let run = fx
        .run_with_stdin(&["-v", "append", &fx.obj("log.bin"), "-"], b"xyz")
        .ok();
    assert!(run.stderr.contains("appended 3 bytes"), "{}", run.stderr);
    expected.extend_from_slice(b"xyz");
    assert_eq!(read(&fx.path("store/log.bin")), expected);

    // An append larger than a part, onto an object larger than a part (server-side copy).
    let big = pseudo_random(6 * MIB, 4);
    let big_input = fx.write_file("big.bin", &big);
    fx.run(&[
        "--part-size",
        "5MiB",
        "append",
        &fx.obj("log.bin"),
        &big_input,
    ])
    .ok();
    fx.run(&[
        "--part-size",
        "5MiB",
        "append",
        &fx.obj("log.bin"),
        &big_input,
    ])
    .ok();
    expected.extend_from_slice(&big);
    expected.extend_from_slice(&big);
    let cat = fx
        .run(&["--part-size", "2MiB", "cat", &fx.obj("log.bin")])
        .ok()
        .stdout;
    assert!(
        cat == expected,
        "cat after appends differs ({} bytes vs {})",
        cat.len(),
        expected.len()
    );
}

#[test]
fn truncate_shrinks_grows_and_creates() {
    let fx = Fixture::new();
    fx.run_with_stdin(&["append", &fx.obj("t.txt")], b"hello world")
        .ok();
    fx.run(&["truncate", &fx.obj("t.txt"), "5"]).ok();
    assert_eq!(read(&fx.path("store/t.txt")), b"hello");
    fx.run(&["truncate", &fx.obj("t.txt"), "8"]).ok();
    assert_eq!(read(&fx.path("store/t.txt")), b"hello\0\0\0");
    fx.run(&["truncate", &fx.obj("t.txt"), "0"]).ok();
    assert_eq!(read(&fx.path("store/t.txt")), b"");

    // A missing object is created with zeros; sizes take units.
    fx.run(&["truncate", &fx.obj("zeros.bin"), "10KiB"]).ok();
    assert_eq!(read(&fx.path("store/zeros.bin")), vec![0u8; 10 * 1024]);
    // ... unless --no-create, which succeeds without creating anything (truncate -c).
    fx.run(&["truncate", "--no-create", &fx.obj("absent"), "10"])
        .ok();
    assert!(!fx.path("store/absent").exists());
    fx.run(&["truncate", "-c", &fx.obj("zeros.bin"), "1"]).ok();
    assert_eq!(read(&fx.path("store/zeros.bin")), vec![0u8]);

    // +LEN extends by LEN and -LEN cuts LEN off, as truncate(1) takes them (a `+10` once
    // cut an object to 10 bytes); -LEN stops at 0.
    fx.run_with_stdin(&["append", &fx.obj("t.txt")], b"hello world")
        .ok();
    fx.run(&["truncate", &fx.obj("t.txt"), "+2"]).ok();
    assert_eq!(read(&fx.path("store/t.txt")), b"hello world\0\0");
    fx.run(&["truncate", &fx.obj("t.txt"), "-8"]).ok();
    assert_eq!(read(&fx.path("store/t.txt")), b"hello");
    fx.run(&["truncate", "-c", &fx.obj("t.txt"), "-1KiB"]).ok();
    assert_eq!(read(&fx.path("store/t.txt")), b"");
    fx.run(&["truncate", &fx.obj("grown.bin"), "+3"]).ok();
    assert_eq!(read(&fx.path("store/grown.bin")), b"\0\0\0");

    // Bad sizes are usage errors.
    fx.run(&["truncate", &fx.obj("t.txt"), "lots"])
        .fails_with(2, &["lots"]);
    fx.run(&["truncate", &fx.obj("t.txt"), "+-5"])
        .fails_with(2, &["more than one sign"]);
    assert_eq!(read(&fx.path("store/t.txt")), b"");
}

#[test]
fn ls_and_stat_show_objects() {
    let fx = Fixture::new();
    fx.run_with_stdin(&["append", &fx.obj("a.txt")], b"12345")
        .ok();
    fx.run_with_stdin(&["append", &fx.obj("dir/b.txt")], b"1234567")
        .ok();
    fx.run_with_stdin(&["append", &fx.obj("dir/sub/c.txt")], b"1")
        .ok();

    let short = fx.run(&["ls", &fx.obj("")]).ok().stdout_text();
    assert_eq!(short, "a.txt\ndir/\n");
    let long = fx.run(&["ls", "-l", &fx.obj("")]).ok().stdout_text();
    let lines: Vec<&str> = long.lines().collect();
    assert_eq!(lines.len(), 2, "{long}");
    assert!(lines[0].ends_with("          5 a.txt"), "{long}");
    assert!(
        lines[0].as_bytes()[4] == b'-' && lines[0].as_bytes()[10] == b' ',
        "date first: {long}"
    );
    assert_eq!(lines[1], format!("{}PRE dir/", " ".repeat(27)));
    // One level down, names relative to the directory.
    let sub = fx.run(&["ls", &fx.obj("dir")]).ok().stdout_text();
    assert_eq!(sub, "b.txt\nsub/\n");
    // Recursive: every key, in full.
    let all = fx.run(&["ls", "-r", &fx.obj("")]).ok().stdout_text();
    assert_eq!(all, "a.txt\ndir/b.txt\ndir/sub/c.txt\n");
    let all_long = fx.run(&["ls", "-lr", &fx.obj("")]).ok().stdout_text();
    assert!(
        all_long
            .lines()
            .nth(1)
            .unwrap()
            .ends_with("          7 dir/b.txt"),
        "{all_long}"
    );

    let stat = fx.run(&["stat", &fx.obj("dir/b.txt")]).ok().stdout_text();
    assert!(stat.contains("Key:           dir/b.txt\n"), "{stat}");
    assert!(stat.contains("Size:          7 (7 B)\n"), "{stat}");
    assert!(stat.contains("ETag:          \""), "{stat}");
    assert!(stat.contains("Last-Modified: 20"), "{stat}");
    assert!(stat.contains("Content-Type:  "), "{stat}");
    assert!(
        stat.contains("rivulet-writer-id: "),
        "the writer's id is in the metadata: {stat}"
    );

    fx.run(&["stat", &fx.obj("nope")])
        .fails_with(1, &["rivulet: stat ", "no such object 'nope'"]);
    fx.run(&["ls", fx.path("no-such-dir").to_str().unwrap()])
        .fails_with(1, &["no such directory"]);
}

#[test]
fn reading_a_plain_directory_leaves_it_untouched() {
    // A directory that is no store: reading its files must not make it one (a store's state
    // folder there would change which store every later path below it belongs to).
    let fx = Fixture::new();
    let plain = fx.path("plain");
    std::fs::create_dir_all(plain.join("sub")).unwrap();
    std::fs::write(plain.join("sub/a.txt"), b"hello\n").unwrap();
    let file = plain.join("sub/a.txt").display().to_string();
    let run = fx.run(&["cat", &file]).ok();
    assert_eq!(run.stdout, b"hello\n");
    let run = fx.run(&["stat", &file]).ok();
    assert!(run.stdout_text().contains("Size:"), "{}", run.stdout_text());
    let dir = format!("{}/", plain.join("sub").display());
    let run = fx.run(&["ls", "-l", &dir]).ok();
    assert!(run.stdout_text().contains("a.txt"), "{}", run.stdout_text());
    let copy = fx.path("copy.txt").display().to_string();
    fx.run(&["cp", &format!("file://{file}"), &copy]).ok();
    assert_eq!(read(&fx.path("copy.txt")), b"hello\n");
    // Nor do the commands that only look (a gc dry run, a recover listing), a gc with nothing
    // to collect, or an rm that removes nothing.
    let sub = plain.join("sub").display().to_string();
    let run = fx.run(&["gc", "-n", &sub]).ok();
    assert!(
        run.stdout_text().contains("would abort 0 uploads"),
        "{}",
        run.stdout_text()
    );
    fx.run(&["gc", &sub]).ok();
    let run = fx.run(&["recover", &sub]).ok();
    assert!(
        run.stdout_text().starts_with("no open uploads"),
        "{}",
        run.stdout_text()
    );
    fx.run(&["rm", "-f", &format!("{sub}/missing")]).ok();
    fx.run(&["rm", &format!("{sub}/missing")])
        .fails_with(1, &["no such object"]);
    for dir in [plain.clone(), plain.join("sub")] {
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert!(
            !names.iter().any(|n| n.starts_with(".rivulet")),
            "{}: {names:?}",
            dir.display()
        );
    }
}

#[test]
fn rm_deletes_and_complains_about_missing_objects() {
    let fx = Fixture::new();
    fx.run_with_stdin(&["append", &fx.obj("gone.txt")], b"bye")
        .ok();
    fx.run_with_stdin(&["append", &fx.obj("kept.txt")], b"hi")
        .ok();
    let run = fx.run(&["rm", &fx.obj("gone.txt")]).ok();
    assert!(run.stdout.is_empty());
    assert!(!fx.path("store/gone.txt").exists());

    let run = fx
        .run(&["rm", &fx.obj("gone.txt")])
        .fails_with(1, &["no such object 'gone.txt'"]);
    assert_eq!(run.stderr.lines().count(), 1, "one line: {}", run.stderr);
    assert!(
        run.stderr
            .starts_with(&format!("rivulet: rm {}: ", fx.obj("gone.txt"))),
        "{}",
        run.stderr
    );
    fx.run(&["rm", "-f", &fx.obj("gone.txt")]).ok();

    // Several objects: the ones that exist are removed, each missing one is reported.
    let run = fx.run(&[
        "rm",
        &fx.obj("missing-1"),
        &fx.obj("kept.txt"),
        &fx.obj("missing-2"),
    ]);
    let run = run.fails_with(
        1,
        &["no such object 'missing-1'", "no such object 'missing-2'"],
    );
    assert_eq!(run.stderr.lines().count(), 2, "{}", run.stderr);
    assert!(!fx.path("store/kept.txt").exists());
    fx.run(&["rm"]).fails_with(2, &[]);
}

#[test]
fn bad_urls_and_missing_keys_fail_clearly() {
    let fx = Fixture::new();
    let run = fx.run(&["cat", "gs://bucket/key"]).fails_with(
        1,
        &[
            "rivulet: cat gs://bucket/key: ",
            "unsupported scheme 'gs://'",
        ],
    );
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    fx.run(&["stat", "s3://ab/key"])
        .fails_with(1, &["bad bucket name 'ab'"]);
    fx.run(&["ls", "s3://bucket?colour=blue"])
        .fails_with(1, &["unknown parameter 'colour'"]);
    fx.run(&["cat", "s3://bucket/"])
        .fails_with(1, &["names no object"]);

    // Before the directory is a store, a missing path names its key in its own directory.
    let run = fx.run(&["cat", &fx.obj("no/such/key")]);
    let run = run.fails_with(
        1,
        &[
            "rivulet: cat ",
            "no such object 'key'",
            "the directory does not exist",
        ],
    );
    assert!(run.stdout.is_empty());
    // Reading a missing object does not create anything.
    assert!(!fx.path("store/no").exists());
    // Once it is a store, keys are relative to it.
    fx.run_with_stdin(&["append", &fx.obj("first")], b"1").ok();
    let run = fx
        .run(&["cat", &fx.obj("no/such/key")])
        .fails_with(1, &["no such object 'no/such/key' in file://"]);
    assert!(run.stdout.is_empty());
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    fx.run(&["--part-size", "huge", "cat", &fx.obj("x")])
        .fails_with(2, &["huge"]);
    fx.run(&["frobnicate"]).fails_with(2, &["frobnicate"]);
    // Uploads need parts of at least the store's minimum.
    let src = fx.write_file("s.txt", b"abc");
    fx.run(&["--part-size", "1MiB", "cp", &src, &fx.url("s.txt")])
        .fails_with(1, &["part size", "minimum"]);
    assert!(!fx.path("store/s.txt").exists());
    // A "directory" of keys is named as one, and a download into a missing directory names it.
    fx.run(&["cp", &src, &fx.url("dir/s.txt")]).ok();
    fx.run(&["cat", &fx.obj("dir")])
        .fails_with(1, &["'dir'", "is a directory of keys", "rivulet ls"]);
    let nowhere = fx.path("missing/s.txt").display().to_string();
    fx.run(&["cp", &fx.url("dir/s.txt"), &nowhere])
        .fails_with(1, &["the directory", "missing", "does not exist"]);
}

#[test]
fn a_download_removes_what_killed_downloads_of_its_file_left() {
    let fx = Fixture::new();
    let src = fx.write_file("s.txt", b"abc");
    fx.run(&["cp", &src, &fx.url("s.txt")]).ok();
    // A temporary file of a process that is gone (a pid above the kernel's maximum), and one
    // of a process that runs (this test).
    let pid_max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let dead = fx.path(&format!(".out.txt.rivulet-{}.tmp", pid_max + 7));
    let alive = fx.path(&format!(".out.txt.rivulet-{}.tmp", std::process::id()));
    std::fs::write(&dead, b"half a download").unwrap();
    std::fs::write(&alive, b"a download going on").unwrap();
    let out = fx.path("out.txt").display().to_string();
    fx.run(&["cp", &fx.url("s.txt"), &out]).ok();
    assert_eq!(read(&fx.path("out.txt")), b"abc");
    assert!(!dead.exists(), "the dead process's file was left");
    assert!(alive.exists(), "a live process's file was removed");
}

#[test]
fn recover_and_gc_on_a_quiet_store() {
    let fx = Fixture::new();
    let store = fx.obj("");
    let run = fx.run(&["recover", &store]).ok();
    assert!(
        run.stdout_text().starts_with("no open uploads for file://"),
        "{}",
        run.stdout_text()
    );
    let run = fx
        .run(&["recover", "--commit", "--rebuild-index", &store])
        .ok();
    let out = run.stdout_text();
    assert!(out.contains("0 uploads restored"), "{out}");
    assert!(out.contains("no open uploads"), "{out}");

    fx.run_with_stdin(&["append", &fx.obj("f.txt")], b"data")
        .ok();
    let run = fx.run(&["gc", "--dry-run", &store]).ok();
    assert_eq!(
        run.stdout_text(),
        "dry run: would abort 0 uploads, would delete 0 tails (older than 1day)\n"
    );
    let run = fx
        .run(&["gc", "--older-than", "0s", "--all-uploads", &store])
        .ok();
    assert!(
        run.stdout_text()
            .starts_with("aborted 0 uploads, deleted 0 tails"),
        "{}",
        run.stdout_text()
    );
    assert_eq!(
        read(&fx.path("store/f.txt")),
        b"data",
        "gc leaves objects alone"
    );
    fx.run(&["gc", fx.path("no-such-store").to_str().unwrap()])
        .fails_with(1, &["no such directory"]);
    fx.run(&["gc", "--older-than", "soon", &store])
        .fails_with(2, &["soon"]);
}

#[test]
fn bench_measures_every_writer_against_the_plain_upload_and_cleans_up() {
    let fx = Fixture::new();
    let store = fx.obj("");
    let run = fx
        .run(&[
            "bench",
            "-q",
            "--runs",
            "2",
            "--size",
            "12MiB",
            "--part-size",
            "5MiB",
            "--persist-every",
            "4MiB",
            "--recover-sizes",
            "1MiB,6MiB",
            &store,
        ])
        .ok();
    let out = run.stdout_text();
    for row in [
        "| plain multipart upload | ",
        "| writer, persist(), no part cache (as cp and sinks run) | ",
        "| writer, persist(), part cache on (reads of open files) | ",
        "| writer, begin_persist() pipelined | ",
        "| persist() latency p50 / p99 (6 persists) | ",
        "| recover time, 1 MiB file | ",
        "| recover time, 6 MiB file | ",
    ] {
        assert!(out.contains(row), "no {row:?} in:\n{out}");
    }
    // Exactly one create, one UploadPart per part, one PUT per persist and one complete.
    let requests = out
        .lines()
        .find(|l| l.starts_with("| requests per GiB, write path"))
        .unwrap_or_else(|| panic!("no request count in:\n{out}"));
    let numbers: Vec<&str> = requests
        .split(|c: char| !c.is_ascii_digit())
        .filter(|n| !n.is_empty())
        .collect();
    assert_eq!(
        numbers.len(),
        3,
        "the target formula's 2, the target and the count: {requests}"
    );
    assert_eq!(numbers[1], numbers[2], "requests = target: {requests}");
    // Every object, upload and tail of the benchmark is gone.
    let left: Vec<_> = walk_files(&fx.path("store"))
        .into_iter()
        .filter(|p| !p.starts_with(fx.path("store/.rivulet-store")))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    fx.run(&["bench", "--runs", "0", &store])
        .fails_with(1, &["--runs must be at least 1"]);
    fx.run(&["bench", "--persist-every", "0", &store])
        .fails_with(1, &["--persist-every must be above 0"]);
}

/// The regular files under `dir`, recursively.
fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk_files(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// The line of `rivulet recover`'s table that names `key`.
fn recover_line<'a>(listing: &'a str, key: &str) -> &'a str {
    listing
        .lines()
        .find(|l| l.split_whitespace().nth(2) == Some(key))
        .unwrap_or_else(|| panic!("{key} is not listed: {listing}"))
}

/// `recover --abort --prefix`: a cancelled job's files in progress are abandoned, nothing is
/// published, their tails go, and open uploads under other prefixes stay.
#[tokio::test(flavor = "multi_thread")]
async fn recover_aborts_the_open_uploads_under_a_prefix() {
    let fx = Fixture::new();
    {
        let store: DynStore = Arc::new(LocalStore::open(fx.path("store")).unwrap());
        let index = Index::open(fx.path("index")).unwrap();
        let config = WriterConfig {
            cache_dir: fx.path("cache"),
            ..WriterConfig::default()
        };
        let writer = RecoverableWriter::new(store, index, config).unwrap();
        for key in ["out/job/a.csv", "out/job/b.csv", "keep/c.csv"] {
            let mut file = writer.open(key).await.unwrap();
            file.write(key.as_bytes()).await.unwrap();
            file.persist().await.unwrap();
            drop(file);
        }
    }
    let store = fx.obj("");
    let out = fx
        .run(&["recover", "--abort", "--prefix", "out/job/", &store])
        .ok()
        .stdout_text();
    assert!(
        out.contains("aborted out/job/a.csv") && out.contains("aborted out/job/b.csv"),
        "{out}"
    );
    assert!(!out.contains("aborted keep/c.csv"), "{out}");
    let listing = fx.run(&["recover", &store]).ok().stdout_text();
    recover_line(&listing, "keep/c.csv");
    assert!(!listing.contains("out/job/"), "{listing}");
    // Nothing published, and only keep/c.csv's tail is left.
    let objects = fx.run(&["ls", "-r", &store]).ok().stdout_text();
    let lines: Vec<&str> = objects.lines().collect();
    assert_eq!(lines.len(), 1, "{objects}");
    assert!(lines[0].starts_with(".rivulet/tails/"), "{objects}");
    // --commit and --abort together are a usage error.
    fx.run(&["recover", "--abort", "--commit", &store])
        .fails_with(2, &["--abort", "--commit"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn recover_commits_what_a_crashed_writer_persisted() {
    let fx = Fixture::new();
    let persisted = pseudo_random(6 * MIB + 100, 7);
    let closed = pseudo_random(1000, 8);
    {
        // A writer in this process, with the index the binary will use, "crashes": one file is
        // persisted then written to more, another closed but never committed.
        let store: DynStore = Arc::new(LocalStore::open(fx.path("store")).unwrap());
        let index = Index::open(fx.path("index")).unwrap();
        let config = WriterConfig {
            part_size: 5 * MIB as u64,
            cache_parts: true,
            cache_dir: fx.path("cache"),
            ..WriterConfig::default()
        };
        let writer = RecoverableWriter::new(store, index, config).unwrap();
        let mut file = writer.open("crashed.bin").await.unwrap();
        file.write(&persisted).await.unwrap();
        file.persist().await.unwrap();
        file.write(b"lost in the crash").await.unwrap();
        drop(file);
        let mut file = writer.open("closed.bin").await.unwrap();
        file.write(&closed).await.unwrap();
        drop(file.close_for_commit().await.unwrap());
    }
    let store = fx.obj("");
    let listing = fx.run(&["recover", &store]).ok().stdout_text();
    assert!(listing.starts_with("TOKEN"), "a header first: {listing}");
    let line = recover_line(&listing, "crashed.bin");
    assert_eq!(
        line.split_whitespace().take(2).collect::<Vec<_>>(),
        ["resume", &persisted.len().to_string()],
        "{listing}"
    );
    let line = recover_line(&listing, "closed.bin");
    assert_eq!(
        line.split_whitespace().take(2).collect::<Vec<_>>(),
        ["commit", "1000"],
        "{listing}"
    );
    assert!(!fx.path("store/crashed.bin").exists() && !fx.path("store/closed.bin").exists());

    let out = fx.run(&["recover", "--commit", &store]).ok().stdout_text();
    assert!(
        out.contains(&format!(
            "committed crashed.bin ({} bytes)",
            persisted.len()
        )),
        "{out}"
    );
    assert!(out.contains("committed closed.bin (1000 bytes)"), "{out}");
    assert_eq!(
        read(&fx.path("store/crashed.bin")),
        persisted,
        "committed at the persisted length"
    );
    assert_eq!(read(&fx.path("store/closed.bin")), closed);
    let after = fx.run(&["recover", &store]).ok().stdout_text();
    assert!(after.starts_with("no open uploads"), "{after}");
    // The staged tails went with the commits.
    assert_eq!(
        fx.run(&["ls", "-r", &store]).ok().stdout_text(),
        "closed.bin\ncrashed.bin\n"
    );
}

#[test]
fn sigterm_sighup_and_sigint_abort_an_upload_like_ctrl_c() {
    // SIGTERM is how `timeout`, systemd and container runtimes stop a process, SIGHUP what a
    // closed terminal or a dropped ssh session sends: the upload must go as it does for
    // Ctrl-C, not stay open until a gc.
    let fx = Fixture::new();
    let uploads = fx.path("store/.rivulet-store/uploads");
    for (signal, code, word) in [
        ("-TERM", 143, "terminated"),
        ("-HUP", 129, "hung up"),
        ("-INT", 130, "interrupted"),
    ] {
        let mut child = fx
            .command(&["--part-size", "5MiB", "cp", "-", &fx.url("stopped.bin")])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn rivulet");
        let mut stdin = child.stdin.take().unwrap();
        let (stopped_tx, stopped_rx) = std::sync::mpsc::channel::<()>();
        let feeder = std::thread::spawn(move || {
            let _ = stdin.write_all(&pseudo_random(6 * MIB, 4));
            // Held open until the signal: at end of input the cp would commit.
            let _ = stopped_rx.recv();
        });
        wait_for_upload(&fx, true, "cp never uploaded a part");
        let sent = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let out = child.wait_with_output().unwrap();
        drop(stopped_tx);
        feeder.join().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{signal}: {stderr}");
        assert!(stderr.contains(word), "{signal}: {stderr}");
        let left = std::fs::read_dir(&uploads).map(|d| d.count()).unwrap_or(0);
        assert_eq!(left, 0, "{signal}: the upload was aborted");
        let listing = fx.run(&["recover", &fx.obj("")]).ok().stdout_text();
        assert!(
            listing.starts_with("no open uploads"),
            "{signal}: {listing}"
        );
        assert!(!fx.path("store/stopped.bin").exists());
    }
}

#[test]
fn a_key_a_local_store_cannot_hold_fails_at_once_and_keeps_nothing() {
    // In a directory, `sub` cannot be an object once `sub/a.bin` is, nor can `a.bin/x` while
    // `a.bin` is a file: such a cp must fail before it moves its bytes, and leave no upload
    // for a `recover --commit` that could only fail again.
    let fx = Fixture::new();
    let big = fx.write_file("big.bin", &pseudo_random(6 * MIB, 5));
    let small = fx.write_file("small.bin", b"small");
    fx.run(&["cp", &small, &fx.url("sub/a.bin")]).ok();
    for (src, key, needle) in [
        (&big, "sub", "is a directory"),
        (&small, "sub", "is a directory"),
        (&big, "sub/a.bin/x", "is a file"),
        (&small, "sub/a.bin/x", "is a file"),
    ] {
        fx.run(&["--part-size", "5MiB", "cp", src, &fx.url(key)])
            .fails_with(1, &[needle]);
        let listing = fx.run(&["recover", &fx.obj("")]).ok().stdout_text();
        assert!(listing.starts_with("no open uploads"), "{key}: {listing}");
    }
    let uploads = fx.path("store/.rivulet-store/uploads");
    assert_eq!(
        std::fs::read_dir(&uploads).map(|d| d.count()).unwrap_or(0),
        0
    );
    assert_eq!(read(&fx.path("store/sub/a.bin")), b"small");
}

#[test]
fn gc_aborts_the_upload_of_a_killed_cp() {
    let fx = Fixture::new();
    fx.run_with_stdin(&["append", &fx.obj("other")], b"x").ok();
    let uploads = fx.path("store/.rivulet-store/uploads");
    let count_uploads = || std::fs::read_dir(&uploads).map(|d| d.count()).unwrap_or(0);
    assert_eq!(count_uploads(), 0);

    let mut child = fx
        .command(&["--part-size", "5MiB", "cp", "-", &fx.url("killed.bin")])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn rivulet");
    let mut stdin = child.stdin.take().unwrap();
    let (killed_tx, killed_rx) = std::sync::mpsc::channel::<()>();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&pseudo_random(6 * MIB, 9)); // blocks until read; fails once killed
        // Hold stdin open until the kill: at end of input the cp would commit, and a fast
        // cp could do that before the kill lands (CI saw it).
        let _ = killed_rx.recv();
    });
    // A part is uploaded only after the upload was created and recorded in the index: from
    // then on, a crash leaves an upload the index knows.
    wait_for_upload(&fx, true, "cp never uploaded a part");
    child.kill().expect("kill the cp");
    child.wait().unwrap();
    drop(killed_tx);
    feeder.join().unwrap();

    let store = fx.obj("");
    let listing = fx.run(&["recover", &store]).ok().stdout_text();
    let line = recover_line(&listing, "killed.bin");
    assert_eq!(
        line.split_whitespace().take(2).collect::<Vec<_>>(),
        ["none", "-"],
        "{listing}"
    );
    let out = fx.run(&["recover", "--commit", &store]).ok().stdout_text();
    assert!(out.contains("skipped killed.bin: never persisted"), "{out}");
    assert!(!fx.path("store/killed.bin").exists());

    // Young uploads are protected; with --older-than 0s gc takes it.
    let dry = fx.run(&["gc", "--dry-run", &store]).ok().stdout_text();
    assert!(dry.starts_with("dry run: would abort 0 uploads"), "{dry}");
    let dry = fx
        .run(&["gc", "--dry-run", "--older-than", "0s", &store])
        .ok()
        .stdout_text();
    assert!(dry.contains("would abort upload killed.bin"), "{dry}");
    assert_eq!(count_uploads(), 1, "a dry run removes nothing");
    let done = fx
        .run(&["gc", "--older-than", "0s", &store])
        .ok()
        .stdout_text();
    assert!(done.contains("aborted upload killed.bin"), "{done}");
    assert!(done.contains("aborted 1 upload,"), "{done}");
    assert_eq!(count_uploads(), 0);
    assert!(
        fx.run(&["recover", &store])
            .ok()
            .stdout_text()
            .starts_with("no open uploads")
    );
    assert_eq!(read(&fx.path("store/other")), b"x");
}

#[test]
fn a_second_writer_waits_for_the_index() {
    let fx = Fixture::new();
    fx.run_with_stdin(&["append", &fx.obj("first")], b"a").ok();
    // The first append holds the index while it waits for the rest of its input.
    let mut first = fx
        .command(&["append", &fx.obj("first")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rivulet");
    let mut first_in = first.stdin.take().unwrap();
    first_in.write_all(b"b").unwrap();
    // The index is opened (and held) before the upload is created.
    wait_for_upload(&fx, false, "the first append never opened its upload");
    let mut second = fx
        .command(&["append", &fx.obj("second"), "-"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rivulet");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        second.try_wait().unwrap().is_none(),
        "the second append waits"
    );
    drop(first_in);
    let first = Run::from(first.wait_with_output().unwrap()).ok();
    assert!(first.stderr.is_empty(), "{}", first.stderr);
    let second = Run::from(second.wait_with_output().unwrap()).ok();
    assert!(
        second.stderr.contains("waiting for the index"),
        "{}",
        second.stderr
    );
    assert_eq!(read(&fx.path("store/first")), b"ab");
    assert_eq!(
        read(&fx.path("store/second")),
        b"",
        "an empty append creates the object"
    );
}

#[test]
fn help_has_examples_for_every_subcommand() {
    let fx = Fixture::new();
    let top = fx.run(&["--help"]).ok().stdout_text();
    assert!(top.contains("Examples:") && top.contains("s3://"), "{top}");
    for sub in [
        "cp", "cat", "ls", "stat", "rm", "append", "truncate", "gc", "recover",
    ] {
        let help = fx.run(&[sub, "--help"]).ok().stdout_text();
        assert!(
            help.contains("Examples:"),
            "{sub} --help has no examples: {help}"
        );
        assert!(
            help.contains(&format!("rivulet {sub}")),
            "{sub} --help shows no use of {sub}: {help}"
        );
    }
}

/// Waits (at most 30 s) until the local store holds a multipart upload, and with `with_part`
/// until one of its parts is uploaded.
fn wait_for_upload(fx: &Fixture, with_part: bool, what: &str) {
    let uploads = fx.path("store/.rivulet-store/uploads");
    let ready = || {
        std::fs::read_dir(&uploads)
            .into_iter()
            .flatten()
            .flatten()
            .any(|upload| {
                !with_part
                    || std::fs::read_dir(upload.path())
                        .into_iter()
                        .flatten()
                        .flatten()
                        .any(|f| {
                            // A part file, or the record of a part written into its slot.
                            let name = f.file_name().to_string_lossy().into_owned();
                            name.starts_with("part-")
                                || (name.starts_with("slot-0")
                                    && f.metadata().is_ok_and(|md| md.len() > 0))
                        })
            })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_store_nested_in_a_folder_keeps_its_state_out_of_listings() {
    // A deeper path written first becomes a store of its own; the folder above it becoming a
    // store later must not list (or accept keys in) the inner store's state folder.
    let fx = Fixture::new();
    let nest = fx.path("nest");
    std::fs::create_dir_all(nest.join("data/logs")).unwrap();
    let src = fx.write_file("a.txt", b"a");
    let inner = format!("file://{}", nest.join("data/logs/a.txt").display());
    fx.run(&["cp", &src, &inner]).ok();
    let outer = format!("file://{}", nest.join("data/b.txt").display());
    fx.run(&["cp", &src, &outer]).ok();
    let data = nest.join("data").display().to_string();
    let run = fx.run(&["ls", "-r", &data]).ok();
    assert_eq!(run.stdout_text(), "b.txt\nlogs/a.txt\n");
    let state = format!("file://{}/logs/.rivulet-store/x", data);
    fx.run(&["cp", &src, &state]).fails_with(1, &["reserved"]);
}

#[test]
fn gc_removes_what_killed_writes_left_in_the_temp_folder() {
    let fx = Fixture::new();
    fx.run_with_stdin(&["append", &fx.obj("a.txt")], b"a").ok();
    let tmp = fx.path("store/.rivulet-store/tmp");
    std::fs::write(tmp.join("left-by-a-killed-cp"), vec![7u8; 3000]).unwrap();
    let run = fx
        .run(&["gc", "-n", "--older-than", "0s", &fx.obj("")])
        .ok();
    let out = run.stdout_text();
    assert!(out.contains("would delete temporary file"), "{out}");
    assert!(out.contains("and 1 temporary file"), "{out}");
    assert!(
        tmp.join("left-by-a-killed-cp").exists(),
        "a dry run removes nothing"
    );
    // The default grace period (24h) spares a file just written.
    let run = fx.run(&["gc", &fx.obj("")]).ok();
    assert!(
        !run.stdout_text().contains("temporary file"),
        "{}",
        run.stdout_text()
    );
    fx.run(&["gc", "--older-than", "0s", &fx.obj("")]).ok();
    assert!(!tmp.join("left-by-a-killed-cp").exists());
    assert_eq!(read(&fx.path("store/a.txt")), b"a");
}

#[test]
fn mount_refuses_a_store_it_cannot_list() {
    // Mounted, such a store would answer every operation with EIO and say why only in a log.
    let fx = Fixture::new();
    let mountpoint = fx.path("mnt");
    std::fs::create_dir(&mountpoint).unwrap();
    let dead = "s3://bkt?endpoint=http://127.0.0.1:1&max_attempts=1";
    fx.command(&["mount", "-f", dead, &mountpoint.display().to_string()])
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .stdin(Stdio::null())
        .output()
        .map(Run::from)
        .expect("run rivulet")
        .fails_with(1, &["cannot be listed, so it was not mounted"]);
}

//! The file-system core over the memory store, without FUSE: names, errno cases, writes of
//! every kind checked byte for byte against what the store holds after commit.

use std::sync::Arc;

use fs_core::store::fault::{FaultConfig, FaultStore, Op};
use fs_core::store::memory::MemoryStore;
use fs_core::store::{DynStore, ObjectStoreExt};
use fs_core::{Index, RecoverableWriter, WriterConfig};
use fuse_mount::cache::{BLOCK, BlockCache};
use fuse_mount::{Filesystem, FsConfig, FsError, Kind, OpenMode, ROOT, recover_open_files};
use tempfile::TempDir;

mod support;

use support::{PART, READ, WRITE, pattern};

struct Fixture {
    store: DynStore,
    index: Index,
    cache: TempDir,
}

impl Fixture {
    fn new() -> Self {
        Self::over(MemoryStore::new().with_min_part_size(PART))
    }

    /// A store that needs part numbers without gaps (like s3s-fs): cuts reuse part numbers.
    fn contiguous() -> Self {
        Self::over(
            MemoryStore::new()
                .with_min_part_size(PART)
                .with_contiguous_parts(),
        )
    }

    fn over(store: MemoryStore) -> Self {
        Self {
            store: Arc::new(store),
            index: Index::temporary().expect("temporary index"),
            cache: tempfile::tempdir().expect("cache dir"),
        }
    }

    fn writer(&self) -> RecoverableWriter {
        self.writer_with_parts_of(PART)
    }

    fn writer_with_parts_of(&self, part_size: u64) -> RecoverableWriter {
        let config = WriterConfig {
            part_size,
            cache_parts: true,
            cache_dir: self.cache.path().to_path_buf(),
            ..WriterConfig::default()
        };
        RecoverableWriter::new(self.store.clone(), self.index.clone(), config).expect("writer")
    }

    fn fs(&self) -> Filesystem {
        Filesystem::new(self.writer(), FsConfig::default())
    }

    fn read_only_fs(&self) -> Filesystem {
        let config = FsConfig {
            read_only: true,
            ..FsConfig::default()
        };
        Filesystem::new(self.writer(), config)
    }

    async fn put(&self, key: &str, body: &[u8]) {
        support::put(&self.store, key, body).await;
    }

    async fn object(&self, key: &str) -> Option<Vec<u8>> {
        support::object(&self.store, key).await
    }
}

async fn names(fs: &Filesystem, ino: u64) -> Vec<String> {
    fs.list_dir(ino)
        .await
        .expect("list")
        .into_iter()
        .map(|e| e.name)
        .collect()
}

async fn read_all(fs: &Filesystem, fh: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let chunk = fs.read(fh, out.len() as u64, 50_000).await.expect("read");
        if chunk.is_empty() {
            return out;
        }
        out.extend_from_slice(&chunk);
    }
}

#[tokio::test]
async fn namespace_and_errnos() {
    let fx = Fixture::new();
    fx.put("a/b/c.txt", b"abc").await;
    fx.put("top", b"t").await;
    let fs = fx.fs();

    assert_eq!(names(&fs, ROOT).await, [".", "..", "a", "top"]);
    let a = fs.lookup(ROOT, "a").await.unwrap();
    assert_eq!(a.kind, Kind::Dir);
    let b = fs.lookup(a.ino, "b").await.unwrap();
    let c = fs.lookup(b.ino, "c.txt").await.unwrap();
    assert_eq!((c.kind, c.size), (Kind::File, 3));
    assert_eq!(fs.getattr(c.ino).await.unwrap().size, 3);
    assert_eq!(fs.lookup(ROOT, "nope").await, Err(FsError::NotFound));
    let top = fs.lookup(ROOT, "top").await.unwrap();
    assert_eq!(fs.lookup(top.ino, "x").await, Err(FsError::NotDir));
    // The writer's tails are hidden and cannot be created.
    assert_eq!(fs.lookup(ROOT, ".rivulet").await, Err(FsError::Invalid));
    assert_eq!(fs.mkdir(ROOT, ".rivulet").await, Err(FsError::Invalid));

    // mkdir writes a marker; an existing name is EEXIST.
    let d = fs.mkdir(ROOT, "d").await.unwrap();
    assert_eq!(fx.object("d/").await, Some(Vec::new()));
    assert_eq!(fs.mkdir(ROOT, "d").await, Err(FsError::Exists));
    assert_eq!(fs.mkdir(ROOT, "top").await, Err(FsError::Exists));
    assert_eq!(names(&fs, d.ino).await, [".", ".."]);

    // rmdir: not empty, not a directory, missing; unlink of a directory.
    assert_eq!(fs.rmdir(ROOT, "a").await, Err(FsError::NotEmpty));
    assert_eq!(fs.rmdir(ROOT, "top").await, Err(FsError::NotDir));
    assert_eq!(fs.rmdir(ROOT, "zz").await, Err(FsError::NotFound));
    assert_eq!(fs.unlink(ROOT, "a").await, Err(FsError::IsDir));
    assert_eq!(fs.unlink(ROOT, "zz").await, Err(FsError::NotFound));
    assert_eq!(fs.open(a.ino, READ).await, Err(FsError::IsDir));
    fs.rmdir(ROOT, "d").await.unwrap();
    assert_eq!(fx.object("d/").await, None);
    assert_eq!(fs.lookup(ROOT, "d").await, Err(FsError::NotFound));

    // Removing the last file keeps its directory (a marker replaces the implicit one).
    fs.unlink(b.ino, "c.txt").await.unwrap();
    assert_eq!(fx.object("a/b/c.txt").await, None);
    assert_eq!(fs.lookup(a.ino, "b").await.unwrap().kind, Kind::Dir);
    assert_eq!(names(&fs, b.ino).await, [".", ".."]);
    fs.rmdir(a.ino, "b").await.unwrap();
    fs.rmdir(ROOT, "a").await.unwrap();
    assert_eq!(names(&fs, ROOT).await, [".", "..", "top"]);

    // Bad names never reach the store.
    assert_eq!(fs.mkdir(ROOT, "..").await, Err(FsError::Invalid));
    assert_eq!(fs.mkdir(ROOT, "x/y").await, Err(FsError::Invalid));
    assert_eq!(fs.mkdir(ROOT, "").await, Err(FsError::Invalid));
    assert_eq!(fs.getattr(9_999).await, Err(FsError::NotFound));
    assert_eq!(fs.read(9_999, 0, 10).await, Err(FsError::BadHandle));
}

#[tokio::test]
async fn create_write_read_your_writes_then_commit() {
    let fx = Fixture::new();
    let fs = fx.fs();
    let (attr, fh) = fs.create(ROOT, "f.bin", WRITE).await.unwrap();
    assert_eq!(attr.size, 0);
    // Visible (empty) before anything is written or committed.
    assert_eq!(names(&fs, ROOT).await, [".", "..", "f.bin"]);
    let data = pattern(300_000, 1);
    for (i, chunk) in data.chunks(70_000).enumerate() {
        let n = fs.write(fh, (i * 70_000) as u64, chunk).await.unwrap();
        assert_eq!(n as usize, chunk.len());
    }
    assert_eq!(
        fx.object("f.bin").await,
        None,
        "nothing visible before close"
    );
    assert_eq!(fs.getattr(attr.ino).await.unwrap().size, 300_000);
    assert_eq!(read_all(&fs, fh).await, data);
    fs.flush(fh).await.unwrap();
    assert_eq!(fx.object("f.bin").await, Some(data.clone()));
    // Writing after a flush goes on from the committed object (open_append).
    fs.write(fh, 300_000, b"tail").await.unwrap();
    fs.release(fh).await.unwrap();
    let mut expected = data;
    expected.extend_from_slice(b"tail");
    assert_eq!(fx.object("f.bin").await, Some(expected.clone()));

    // A read-only handle reads the committed object.
    let fh = fs.open(attr.ino, READ).await.unwrap();
    assert_eq!(read_all(&fs, fh).await, expected);
    assert_eq!(fs.write(fh, 0, b"x").await, Err(FsError::BadHandle));
    fs.release(fh).await.unwrap();

    // touch: a created file with no writes becomes an empty object.
    let (_, fh) = fs.create(ROOT, "empty", WRITE).await.unwrap();
    fs.release(fh).await.unwrap();
    assert_eq!(fx.object("empty").await, Some(Vec::new()));
    // O_EXCL on an existing name.
    let excl = OpenMode {
        exclusive: true,
        ..WRITE
    };
    assert_eq!(
        fs.create(ROOT, "empty", excl).await.err(),
        Some(FsError::Exists)
    );
}

#[tokio::test]
async fn append_truncate_and_overwrite() {
    append_truncate_and_overwrite_on(Fixture::new()).await;
}

#[tokio::test]
async fn append_truncate_and_overwrite_on_a_contiguous_parts_store() {
    append_truncate_and_overwrite_on(Fixture::contiguous()).await;
}

async fn append_truncate_and_overwrite_on(fx: Fixture) {
    let old = pattern(200_000, 7);
    fx.put("log", &old).await;
    let fs = fx.fs();
    let ino = fs.lookup(ROOT, "log").await.unwrap().ino;

    // O_APPEND writes at the end whatever the offset says.
    let append = OpenMode {
        append: true,
        ..WRITE
    };
    let fh = fs.open(ino, append).await.unwrap();
    fs.write(fh, 0, b"line one\n").await.unwrap();
    fs.write(fh, 5, b"line two\n").await.unwrap();
    // Read-your-writes across the copied prefix and the new tail.
    let got = fs.read(fh, 199_990, 100).await.unwrap();
    assert_eq!(&got[..10], &old[199_990..]);
    assert_eq!(&got[10..], b"line one\nline two\n");
    fs.release(fh).await.unwrap();
    let mut expected = old.clone();
    expected.extend_from_slice(b"line one\nline two\n");
    assert_eq!(fx.object("log").await, Some(expected.clone()));

    // Overwrite in the middle (inside the copied prefix) and across the end.
    let fh = fs.open(ino, WRITE).await.unwrap();
    fs.write(fh, 1_000, b"MIDDLE").await.unwrap();
    expected[1_000..1_006].copy_from_slice(b"MIDDLE");
    let end = expected.len() as u64;
    fs.write(fh, end - 3, b"ACROSS").await.unwrap();
    expected.truncate(expected.len() - 3);
    expected.extend_from_slice(b"ACROSS");
    assert_eq!(read_all(&fs, fh).await, expected);
    // A write past the end leaves a hole of zeros.
    let hole_at = expected.len() as u64 + 100;
    fs.write(fh, hole_at, b"after hole").await.unwrap();
    expected.resize(hole_at as usize, 0);
    expected.extend_from_slice(b"after hole");
    fs.release(fh).await.unwrap();
    assert_eq!(fx.object("log").await, Some(expected.clone()));

    // ftruncate shrink then grow on an open handle, then truncate without a handle.
    let fh = fs.open(ino, WRITE).await.unwrap();
    assert_eq!(fs.setattr(ino, Some(70_000)).await.unwrap().size, 70_000);
    assert_eq!(fs.setattr(ino, Some(80_000)).await.unwrap().size, 80_000);
    fs.release(fh).await.unwrap();
    let mut cut = expected[..70_000].to_vec();
    cut.resize(80_000, 0);
    assert_eq!(fx.object("log").await, Some(cut.clone()));
    fs.setattr(ino, Some(10)).await.unwrap();
    assert_eq!(fx.object("log").await, Some(cut[..10].to_vec()));

    // O_TRUNC empties; the old bytes are not copied.
    let trunc = OpenMode {
        truncate: true,
        ..WRITE
    };
    let fh = fs.open(ino, trunc).await.unwrap();
    assert_eq!(fs.getattr(ino).await.unwrap().size, 0);
    fs.write(fh, 0, b"new").await.unwrap();
    fs.release(fh).await.unwrap();
    assert_eq!(fx.object("log").await, Some(b"new".to_vec()));
}

#[tokio::test]
async fn rename_files_small_and_multipart() {
    let fx = Fixture::new();
    let big = pattern(3 * PART as usize + 123, 3);
    fx.put("dir/big", &big).await;
    fx.put("small", b"small").await;
    fx.put("other", b"other").await;
    let fs = fx.fs();
    let dir = fs.lookup(ROOT, "dir").await.unwrap();
    fs.lookup(dir.ino, "big").await.unwrap();

    fs.rename(dir.ino, "big", ROOT, "moved", false)
        .await
        .unwrap();
    assert_eq!(fx.object("moved").await, Some(big));
    assert_eq!(fx.object("dir/big").await, None);
    // The directory stays after its only file moved out.
    assert_eq!(fs.lookup(ROOT, "dir").await.unwrap().kind, Kind::Dir);

    assert_eq!(
        fs.rename(ROOT, "small", ROOT, "other", true).await,
        Err(FsError::Exists)
    );
    fs.rename(ROOT, "small", ROOT, "other", false)
        .await
        .unwrap();
    assert_eq!(fx.object("other").await, Some(b"small".to_vec()));
    assert_eq!(fx.object("small").await, None);
    assert_eq!(
        fs.rename(ROOT, "other", ROOT, "dir", false).await,
        Err(FsError::IsDir)
    );
    assert_eq!(
        fs.rename(ROOT, "gone", ROOT, "x", false).await,
        Err(FsError::NotFound)
    );

    // Renaming a file open for writing commits it first and keeps the handle working.
    let (attr, fh) = fs.create(ROOT, "open", WRITE).await.unwrap();
    fs.write(fh, 0, b"part one ").await.unwrap();
    fs.rename(ROOT, "open", dir.ino, "renamed", false)
        .await
        .unwrap();
    fs.write(fh, 9, b"part two").await.unwrap();
    fs.release(fh).await.unwrap();
    assert_eq!(
        fx.object("dir/renamed").await,
        Some(b"part one part two".to_vec())
    );
    assert_eq!(fx.object("open").await, None);
    assert_eq!(fs.getattr(attr.ino).await.unwrap().size, 17);
}

#[tokio::test]
async fn rename_directories_with_nested_files_markers_and_open_files() {
    let fx = Fixture::new();
    let big = pattern(3 * PART as usize + 77, 9);
    fx.put("src/a", b"file a").await;
    fx.put("src/big", &big).await;
    fx.put("src/sub/", b"").await;
    fx.put("src/sub/deep/c", b"deep c").await;
    fx.put("src/empty/", b"").await;
    fx.put("full/x", b"x").await;
    fx.put("empty/", b"").await;
    fx.put("file", b"plain").await;
    let fs = fx.fs();
    let src = fs.lookup(ROOT, "src").await.unwrap();
    let sub = fs.lookup(src.ino, "sub").await.unwrap();
    let c_dir = fs.lookup(sub.ino, "deep").await.unwrap();
    let c = fs.lookup(c_dir.ino, "c").await.unwrap();

    // A file open for writing inside: committed first, then written on under its new name.
    let (_, fh) = fs.create(sub.ino, "open", WRITE).await.unwrap();
    fs.write(fh, 0, b"before ").await.unwrap();

    // rename(2)'s refusals.
    assert_eq!(
        fs.rename(ROOT, "src", src.ino, "inside", false).await,
        Err(FsError::Invalid)
    );
    assert_eq!(
        fs.rename(ROOT, "src", sub.ino, "deeper", false).await,
        Err(FsError::Invalid)
    );
    assert_eq!(
        fs.rename(ROOT, "src", ROOT, "file", false).await,
        Err(FsError::NotDir)
    );
    assert_eq!(
        fs.rename(ROOT, "src", ROOT, "full", false).await,
        Err(FsError::NotEmpty)
    );
    assert_eq!(
        fs.rename(ROOT, "src", ROOT, "empty", true).await,
        Err(FsError::Exists)
    );
    assert_eq!(
        fs.rename(ROOT, "file", ROOT, "empty", false).await,
        Err(FsError::IsDir)
    );
    assert_eq!(fx.object("src/a").await, Some(b"file a".to_vec()));

    // Over an empty directory, which it replaces.
    fs.rename(ROOT, "src", ROOT, "empty", false).await.unwrap();
    assert_eq!(fx.object("empty/a").await, Some(b"file a".to_vec()));
    assert_eq!(fx.object("empty/big").await, Some(big.clone()));
    assert_eq!(
        fx.object("empty/sub/deep/c").await,
        Some(b"deep c".to_vec())
    );
    assert_eq!(fx.object("empty/sub/").await, Some(Vec::new()));
    assert_eq!(fx.object("empty/empty/").await, Some(Vec::new()));
    assert!(fx.store.list_all("src").await.unwrap().is_empty());
    assert_eq!(
        fs.lookup(ROOT, "src").await.map(|a| a.kind),
        Err(FsError::NotFound)
    );
    // Inodes the kernel holds keep working under the new names.
    assert_eq!(fs.getattr(c.ino).await.unwrap().size, 6);
    let moved = fs.lookup(ROOT, "empty").await.unwrap();
    assert_eq!(
        names(&fs, moved.ino).await,
        [".", "..", "a", "big", "empty", "sub"]
    );
    assert_eq!(names(&fs, sub.ino).await, [".", "..", "deep", "open"]);

    fs.write(fh, 7, b"after").await.unwrap();
    fs.release(fh).await.unwrap();
    assert_eq!(
        fx.object("empty/sub/open").await,
        Some(b"before after".to_vec())
    );
    assert_eq!(fx.object("src/sub/open").await, None);

    // Into another directory, and back to the root under a new name; a directory that exists
    // only through its marker moves too.
    fs.rename(moved.ino, "empty", ROOT, "was-empty", false)
        .await
        .unwrap();
    assert_eq!(fx.object("was-empty/").await, Some(Vec::new()));
    let full = fs.lookup(ROOT, "full").await.unwrap();
    fs.rename(ROOT, "empty", full.ino, "nested", false)
        .await
        .unwrap();
    assert_eq!(
        fx.object("full/nested/sub/open").await,
        Some(b"before after".to_vec())
    );
    assert_eq!(fx.object("full/nested/big").await, Some(big));
    assert!(fx.store.list_all("empty").await.unwrap().is_empty());
    assert_eq!(
        names(&fs, ROOT).await,
        [".", "..", "file", "full", "was-empty"]
    );
}

#[tokio::test]
async fn sequential_reads_of_a_committed_file_are_fetched_ahead() {
    let fx = Fixture::new();
    // More than the largest read-ahead window, and not a multiple of a chunk.
    let size = (fuse_mount::prefetch::MAX_WINDOW + 3 * fuse_mount::prefetch::CHUNK) as usize + 4321;
    let data = pattern(size, 11);
    fx.put("big", &data).await;
    let fs = fx.fs();
    let attr = fs.lookup(ROOT, "big").await.unwrap();
    let fh = fs.open(attr.ino, READ).await.unwrap();
    // As the kernel reads: 128 KiB at a time, in order; the last read asks past the end.
    let mut got = Vec::new();
    loop {
        let chunk = fs.read(fh, got.len() as u64, 128 << 10).await.unwrap();
        if chunk.is_empty() {
            break;
        }
        got.extend_from_slice(&chunk);
    }
    assert!(got == data, "sequential reads differ from the object");
    // A jump backwards and one forwards, then sequential again from there.
    for offset in [1000u64, 30 << 20, 7] {
        let chunk = fs.read(fh, offset, 200_000).await.unwrap();
        assert!(chunk[..] == data[offset as usize..offset as usize + 200_000]);
        let next = fs.read(fh, offset + 200_000, 100).await.unwrap();
        assert!(next[..] == data[offset as usize + 200_000..offset as usize + 200_100]);
    }
    fs.release(fh).await.unwrap();
    // A second handle reads the same file in parallel streams.
    let a = fs.open(attr.ino, READ).await.unwrap();
    let b = fs.open(attr.ino, READ).await.unwrap();
    let mut offsets = [0u64, 10 << 20];
    for _ in 0..40 {
        for (fh, offset) in [a, b].into_iter().zip(offsets.iter_mut()) {
            let chunk = fs.read(fh, *offset, 128 << 10).await.unwrap();
            assert!(chunk[..] == data[*offset as usize..*offset as usize + chunk.len()]);
            *offset += chunk.len() as u64;
        }
    }
    fs.release(a).await.unwrap();
    fs.release(b).await.unwrap();
}

#[tokio::test]
async fn readdir_pages_through_thousands_of_entries() {
    let fx = Fixture::new();
    for i in 0..2_500 {
        fx.put(&format!("many/f{i:05}"), b"x").await;
    }
    for i in 0..1_200 {
        fx.put(&format!("many/d{i:05}/inner"), b"y").await;
    }
    let fs = fx.fs();
    let many = fs.lookup(ROOT, "many").await.unwrap();
    let fh = fs.opendir(many.ino).await.unwrap();
    // Read it back in small windows, as the kernel does.
    let mut seen = Vec::new();
    loop {
        let batch = fs.readdir(fh, seen.len() as u64, 100).unwrap();
        if batch.is_empty() {
            break;
        }
        assert!(batch.len() <= 100);
        seen.extend(batch);
    }
    fs.releasedir(fh);
    assert_eq!(seen.len(), 2 + 2_500 + 1_200);
    let files = seen.iter().filter(|e| e.kind == Kind::File).count();
    let dirs = seen.iter().filter(|e| e.kind == Kind::Dir).count();
    assert_eq!((files, dirs), (2_500, 1_200 + 2));
    assert_eq!(seen[2].name, "d00000");
    assert_eq!(seen.last().unwrap().name, "f02499");
    // Entries have inodes that lookups agree on.
    let entry = seen.iter().find(|e| e.name == "f01234").unwrap();
    assert_eq!(fs.lookup(many.ino, "f01234").await.unwrap().ino, entry.ino);
    assert_eq!(fs.readdir(fh, 0, 10), Err(FsError::BadHandle));
}

#[tokio::test]
async fn read_only_refuses_changes() {
    let fx = Fixture::new();
    fx.put("f", b"data").await;
    let fs = fx.read_only_fs();
    let f = fs.lookup(ROOT, "f").await.unwrap();
    assert_eq!(fs.mkdir(ROOT, "d").await, Err(FsError::ReadOnly));
    assert_eq!(fs.unlink(ROOT, "f").await, Err(FsError::ReadOnly));
    assert_eq!(
        fs.create(ROOT, "g", WRITE).await.err(),
        Some(FsError::ReadOnly)
    );
    assert_eq!(fs.open(f.ino, WRITE).await, Err(FsError::ReadOnly));
    assert_eq!(fs.setattr(f.ino, Some(1)).await, Err(FsError::ReadOnly));
    assert_eq!(
        fs.rename(ROOT, "f", ROOT, "g", false).await,
        Err(FsError::ReadOnly)
    );
    let fh = fs.open(f.ino, READ).await.unwrap();
    assert_eq!(read_all(&fs, fh).await, b"data");
    assert_eq!(fx.object("f").await, Some(b"data".to_vec()));
}

#[tokio::test]
async fn fsynced_bytes_survive_a_crash_and_are_committed_at_recovery() {
    let fx = Fixture::new();
    let data = pattern(150_000, 9);
    {
        let fs = fx.fs();
        let (_, fh) = fs.create(ROOT, "durable", WRITE).await.unwrap();
        fs.write(fh, 0, &data).await.unwrap();
        fs.fsync(fh).await.unwrap();
        // Written after the fsync: not promised, lost in the crash.
        fs.write(fh, data.len() as u64, b"lost").await.unwrap();
        // The crash: the file system goes away without flush or release.
        drop(fs);
    }
    assert_eq!(fx.object("durable").await, None);
    let recovered = recover_open_files(&fx.writer()).await.unwrap();
    assert_eq!(recovered.len(), 1);
    assert_eq!(recovered[0].key, "durable");
    assert_eq!(recovered[0].size, data.len() as u64);
    assert_eq!(fx.object("durable").await, Some(data));
    // Nothing left to recover the second time.
    assert!(recover_open_files(&fx.writer()).await.unwrap().is_empty());
}

#[tokio::test]
async fn unlink_of_an_open_file_publishes_nothing() {
    let fx = Fixture::new();
    let fs = fx.fs();
    let (_, fh) = fs.create(ROOT, "tmp", WRITE).await.unwrap();
    fs.write(fh, 0, b"scratch").await.unwrap();
    fs.unlink(ROOT, "tmp").await.unwrap();
    fs.release(fh).await.unwrap();
    assert_eq!(fx.object("tmp").await, None);
    assert_eq!(names(&fs, ROOT).await, [".", ".."]);
}

#[tokio::test]
async fn shutdown_commits_open_files() {
    let fx = Fixture::new();
    let fs = fx.fs();
    let (_, fh) = fs.create(ROOT, "open-at-unmount", WRITE).await.unwrap();
    fs.write(fh, 0, b"kept").await.unwrap();
    fs.shutdown().await;
    assert_eq!(fx.object("open-at-unmount").await, Some(b"kept".to_vec()));
}

/// A small deterministic generator (xorshift64*), so failures replay exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// fsx-style: random writes (anywhere, past the end, appends), truncates, fsyncs, closes and
/// reopens on one file, each checked against a plain byte vector, reads and the committed
/// object alike.
#[tokio::test]
async fn random_operations_match_a_model() {
    // The later runs read committed bytes through a small read cache; with parts of a block,
    // the cache adopts the writer's part files at each commit, parts re-made by truncates and
    // writes before the end included.
    for (seed, fx, cached, part) in [
        (1u64, Fixture::new(), false, PART),
        (2, Fixture::contiguous(), false, PART),
        (3, Fixture::new(), true, PART),
        (4, Fixture::new(), true, BLOCK),
        (5, Fixture::contiguous(), true, BLOCK),
    ] {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ seed);
        let cache_dir = tempfile::tempdir().unwrap();
        let mut fs = Filesystem::new(fx.writer_with_parts_of(part), FsConfig::default());
        if cached {
            let cache = BlockCache::open(cache_dir.path(), 4 * BLOCK)
                .unwrap()
                .unwrap();
            fs = fs.with_read_cache(Arc::new(cache));
        }
        let (attr, mut fh) = fs.create(ROOT, "fsx", WRITE).await.unwrap();
        let mut model: Vec<u8> = Vec::new();
        for step in 0..250 {
            let len = model.len() as u64;
            match rng.below(10) {
                0..=3 => {
                    // Anywhere up to a little past the end (holes fill with zeros).
                    let offset = rng.below(len + 20_000);
                    let size = 1 + rng.below(40_000) as usize;
                    let data = pattern(size, step as u8);
                    fs.write(fh, offset, &data).await.unwrap();
                    let end = offset as usize + size;
                    if model.len() < end {
                        model.resize(end, 0);
                    }
                    model[offset as usize..end].copy_from_slice(&data);
                }
                4 => {
                    let data = pattern(1 + rng.below(90_000) as usize, step as u8);
                    fs.write(fh, len, &data).await.unwrap();
                    model.extend_from_slice(&data);
                }
                5 => {
                    let new_len = rng.below(len + 50_000);
                    fs.setattr(attr.ino, Some(new_len)).await.unwrap();
                    model.resize(new_len as usize, 0);
                }
                6 => fs.fsync(fh).await.unwrap(),
                7 => {
                    fs.release(fh).await.unwrap();
                    assert!(
                        fx.object("fsx").await == Some(model.clone()),
                        "step {step}: commit"
                    );
                    // Committed bytes read back through a reading handle (and the cache).
                    let reader = fs.open(attr.ino, READ).await.unwrap();
                    assert!(
                        read_all(&fs, reader).await == model,
                        "step {step}: read after commit"
                    );
                    fs.release(reader).await.unwrap();
                    fh = fs.open(attr.ino, WRITE).await.unwrap();
                }
                _ => {
                    let offset = rng.below(len + 10);
                    let size = rng.below(100_000) as u32;
                    let got = fs.read(fh, offset, size).await.unwrap();
                    let from = (offset as usize).min(model.len());
                    let to = (from + size as usize).min(model.len());
                    assert!(
                        got[..] == model[from..to],
                        "step {step}: read {offset}+{size}"
                    );
                }
            }
            assert_eq!(fs.getattr(attr.ino).await.unwrap().size, model.len() as u64);
        }
        fs.release(fh).await.unwrap();
        assert!(
            fx.object("fsx").await == Some(model),
            "seed {seed}: final object"
        );
    }
}

/// A file system over a memory store whose calls are counted, with a read cache of `capacity`
/// bytes; the cache's directory lives as long as the returned `TempDir`.
struct Cached {
    fx: Fixture,
    counted: Arc<FaultStore>,
    fs: Filesystem,
    cache: Arc<BlockCache>,
    _dir: TempDir,
}

impl Cached {
    fn new(capacity: u64) -> Self {
        Self::with_parts_of(capacity, PART)
    }

    /// With the writer's parts of `part_size` bytes.
    fn with_parts_of(capacity: u64, part_size: u64) -> Self {
        let memory: DynStore = Arc::new(MemoryStore::new().with_min_part_size(PART));
        let counted = Arc::new(FaultStore::new(memory, FaultConfig::default()));
        let fx = Fixture {
            store: counted.clone(),
            index: Index::temporary().expect("temporary index"),
            cache: tempfile::tempdir().expect("cache dir"),
        };
        let dir = tempfile::tempdir().expect("read cache dir");
        let cache = Arc::new(
            BlockCache::open(dir.path(), capacity)
                .expect("read cache")
                .expect("enabled"),
        );
        let fs = Filesystem::new(fx.writer_with_parts_of(part_size), FsConfig::default())
            .with_read_cache(cache.clone());
        Self {
            fx,
            counted,
            fs,
            cache,
            _dir: dir,
        }
    }

    fn gets(&self) -> u64 {
        self.counted.calls(Op::Get)
    }

    async fn read_file_in(&self, dir: u64, name: &str) -> Vec<u8> {
        let attr = self.fs.lookup(dir, name).await.expect("lookup");
        self.read_ino(attr.ino).await
    }

    async fn read_ino(&self, ino: u64) -> Vec<u8> {
        let fh = self.fs.open(ino, READ).await.expect("open");
        let mut got = Vec::new();
        loop {
            let chunk = self
                .fs
                .read(fh, got.len() as u64, 128 << 10)
                .await
                .expect("read");
            if chunk.is_empty() {
                break;
            }
            got.extend_from_slice(&chunk);
        }
        self.fs.release(fh).await.expect("release");
        got
    }

    /// Opens `name`, reads it whole as the kernel does (128 KiB at a time), closes it.
    async fn read_file(&self, name: &str) -> Vec<u8> {
        self.read_file_in(ROOT, name).await
    }
}

#[tokio::test]
async fn a_second_read_comes_from_the_read_cache() {
    let c = Cached::new(64 * BLOCK);
    // Several blocks and a partial last one.
    let data = pattern((5 * BLOCK + 12_345) as usize, 3);
    c.fx.put("dir/f", &data).await;
    c.fx.put("small", b"tiny").await;
    let dir = c.fs.lookup(ROOT, "dir").await.unwrap();
    assert_eq!(names(&c.fs, dir.ino).await, [".", "..", "f"]);

    let before = c.gets();
    assert!(c.read_file_in(dir.ino, "f").await == data);
    assert!(c.gets() > before, "the first read goes to the store");
    assert_eq!(c.cache.used(), data.len() as u64);

    let before = c.gets();
    assert!(c.read_file_in(dir.ino, "f").await == data);
    // Random reads, across block boundaries and past the end.
    let attr = c.fs.lookup(dir.ino, "f").await.unwrap();
    let fh = c.fs.open(attr.ino, READ).await.unwrap();
    for offset in [BLOCK - 10, 3 * BLOCK + 5, 7, 5 * BLOCK + 12_000] {
        let got = c.fs.read(fh, offset, 70_000).await.unwrap();
        let end = (offset as usize + 70_000).min(data.len());
        assert!(got[..] == data[offset as usize..end], "at {offset}");
    }
    c.fs.release(fh).await.unwrap();
    assert_eq!(c.gets(), before, "served from the cache");

    assert_eq!(c.read_file("small").await, b"tiny");
    let before = c.gets();
    assert_eq!(c.read_file("small").await, b"tiny");
    assert_eq!(c.gets(), before);
}

#[tokio::test]
async fn the_read_cache_stays_within_its_size() {
    let c = Cached::new(3 * BLOCK);
    for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
        let data = pattern((2 * BLOCK) as usize, i as u8);
        c.fx.put(name, &data).await;
        assert!(c.read_file(name).await == data);
        assert!(c.cache.used() <= 3 * BLOCK);
    }
    // "c" was read last: its blocks are the ones kept.
    let before = c.gets();
    assert!(c.read_file("c").await == pattern((2 * BLOCK) as usize, 2));
    assert_eq!(c.gets(), before);
    assert!(c.read_file("a").await == pattern((2 * BLOCK) as usize, 0));
    assert!(c.gets() > before, "evicted blocks are fetched again");
}

#[tokio::test]
async fn a_changed_object_is_never_served_from_the_cache() {
    let c = Cached::new(64 * BLOCK);
    let old = pattern((2 * BLOCK + 100) as usize, 1);
    c.fx.put("f", &old).await;
    assert!(c.read_file("f").await == old);
    // Changed in the bucket, same size: another ETag. The next lookup sees it (the metadata
    // TTL is the only staleness there is).
    let new = pattern(old.len(), 2);
    c.fx.put("f", &new).await;
    assert!(c.read_file("f").await == new);
    // And a shorter one.
    c.fx.put("f", b"short").await;
    assert_eq!(c.read_file("f").await, b"short");
    // The new version is cached in turn.
    let before = c.gets();
    assert_eq!(c.read_file("f").await, b"short");
    assert_eq!(c.gets(), before);
}

#[tokio::test]
async fn local_changes_invalidate_the_cache() {
    let c = Cached::new(64 * BLOCK);
    let data = pattern((BLOCK + 10) as usize, 1);
    c.fx.put("f", &data).await;
    assert!(c.read_file("f").await == data);

    // Overwrite through the mount: the committed object is read, not the cached one.
    let attr = c.fs.lookup(ROOT, "f").await.unwrap();
    let fh = c.fs.open(attr.ino, WRITE).await.unwrap();
    c.fs.write(fh, 5, b"XYZ").await.unwrap();
    c.fs.release(fh).await.unwrap();
    let mut expected = data.clone();
    expected[5..8].copy_from_slice(b"XYZ");
    assert!(c.read_file("f").await == expected);

    // Truncate of a closed file.
    c.fs.setattr(attr.ino, Some(100)).await.unwrap();
    assert!(c.read_file("f").await == expected[..100]);

    // Rename, then a new file under the old name.
    c.fs.rename(ROOT, "f", ROOT, "g", false).await.unwrap();
    assert!(c.read_file("g").await == expected[..100]);
    let (_, fh) = c.fs.create(ROOT, "f", WRITE).await.unwrap();
    c.fs.write(fh, 0, b"new f").await.unwrap();
    c.fs.release(fh).await.unwrap();
    assert_eq!(c.read_file("f").await, b"new f");

    // Unlink, then the same name again with other bytes.
    c.fs.unlink(ROOT, "f").await.unwrap();
    c.fx.put("f", b"other").await;
    assert_eq!(c.read_file("f").await, b"other");
}

#[tokio::test]
async fn a_small_new_file_is_one_put_at_close() {
    let c = Cached::new(64 * BLOCK);
    let calls = |op| c.counted.calls(op);
    let data = pattern(4096, 5);
    // As the kernel does: a lookup that fails, then create. The create does not ask again.
    assert_eq!(
        c.fs.lookup(ROOT, "small").await.err(),
        Some(FsError::NotFound)
    );
    let (heads, lists) = (calls(Op::Head), calls(Op::List));
    let (_, fh) = c.fs.create(ROOT, "small", WRITE).await.unwrap();
    assert_eq!((calls(Op::Head), calls(Op::List)), (heads, lists));
    c.fs.write(fh, 0, &data[..1000]).await.unwrap();
    c.fs.write(fh, 1000, &data[1000..]).await.unwrap();
    // Read-your-writes from memory, nothing in the store yet.
    assert!(c.fs.read(fh, 0, 8192).await.unwrap()[..] == data[..]);
    assert_eq!(c.fx.object("small").await, None);
    let (puts, uploads) = (calls(Op::Put), calls(Op::CreateMultipart));
    c.fs.flush(fh).await.unwrap();
    c.fs.release(fh).await.unwrap();
    assert_eq!(c.fx.object("small").await, Some(data.clone()));
    assert_eq!(calls(Op::Put), puts + 1, "one PUT");
    assert_eq!(calls(Op::CreateMultipart), uploads, "no multipart upload");

    // Up to exactly one part stays in memory; one byte more goes to the writer.
    for (name, len, multipart) in [("part", PART, false), ("more", PART + 1, true)] {
        let data = pattern(len as usize, 6);
        let uploads = calls(Op::CreateMultipart);
        let (_, fh) = c.fs.create(ROOT, name, WRITE).await.unwrap();
        for (i, chunk) in data.chunks(10_000).enumerate() {
            c.fs.write(fh, (i * 10_000) as u64, chunk).await.unwrap();
        }
        c.fs.release(fh).await.unwrap();
        assert_eq!(c.fx.object(name).await, Some(data), "{name}");
        assert_eq!(calls(Op::CreateMultipart) > uploads, multipart, "{name}");
    }

    // A truncate of a new file past a part goes to the writer; holes read as zeros.
    let (attr, fh) = c.fs.create(ROOT, "holes", WRITE).await.unwrap();
    c.fs.write(fh, 10, b"abc").await.unwrap();
    c.fs.setattr(attr.ino, Some(20)).await.unwrap();
    let mut expected = vec![0u8; 20];
    expected[10..13].copy_from_slice(b"abc");
    assert_eq!(c.fs.read(fh, 0, 100).await.unwrap()[..], expected[..]);
    c.fs.setattr(attr.ino, Some(3 * PART)).await.unwrap();
    expected.resize((3 * PART) as usize, 0);
    c.fs.release(fh).await.unwrap();
    assert!(c.fx.object("holes").await == Some(expected));

    // fsync of a small new file persists through the writer (durable before close).
    let uploads = calls(Op::CreateMultipart);
    let (_, fh) = c.fs.create(ROOT, "synced", WRITE).await.unwrap();
    c.fs.write(fh, 0, b"durable").await.unwrap();
    c.fs.fsync(fh).await.unwrap();
    assert!(
        calls(Op::CreateMultipart) > uploads,
        "fsync goes through fs-core"
    );
    c.fs.write(fh, 7, b" and more").await.unwrap();
    c.fs.release(fh).await.unwrap();
    assert_eq!(
        c.fx.object("synced").await,
        Some(b"durable and more".to_vec())
    );
}

#[tokio::test]
async fn a_file_just_written_is_read_back_from_local_disk() {
    // Parts of two blocks, so that the writer's part files hold whole blocks.
    let part = 2 * BLOCK;
    let c = Cached::with_parts_of(64 * BLOCK, part);
    let write = |name: &'static str, data: Vec<u8>| {
        let c = &c;
        async move {
            let (_, fh) = c.fs.create(ROOT, name, WRITE).await.unwrap();
            for (i, chunk) in data.chunks(128 << 10).enumerate() {
                c.fs.write(fh, (i * (128 << 10)) as u64, chunk)
                    .await
                    .unwrap();
            }
            c.fs.release(fh).await.unwrap();
        }
    };
    // Full parts, and a last part (the tail at close) with a short last block.
    let data = pattern((3 * part + BLOCK + 777) as usize, 8);
    write("big", data.clone()).await;
    assert_eq!(c.fx.object("big").await, Some(data.clone()));
    assert_eq!(c.cache.used(), data.len() as u64, "every block adopted");
    assert_eq!(
        std::fs::read_dir(c.fx.cache.path()).unwrap().count(),
        0,
        "nothing left in the writer's part cache"
    );
    let before = c.gets();
    assert!(c.read_file("big").await == data);
    assert_eq!(c.gets(), before, "no GET: read from the adopted part files");

    // A small file, committed by one PUT from memory: the same.
    write("small", b"just written".to_vec()).await;
    let before = c.gets();
    assert_eq!(c.read_file("small").await, b"just written");
    assert_eq!(c.gets(), before);

    // Rewritten in the middle through the mount: the new version is read, never the old
    // blocks (the prefix comes from a server-side copy, not from local disk).
    let attr = c.fs.lookup(ROOT, "big").await.unwrap();
    let fh = c.fs.open(attr.ino, WRITE).await.unwrap();
    c.fs.write(fh, 3 * part + 5, b"XYZ").await.unwrap();
    c.fs.release(fh).await.unwrap();
    let mut expected = data.clone();
    let at = (3 * part + 5) as usize;
    expected[at..at + 3].copy_from_slice(b"XYZ");
    assert!(c.read_file("big").await == expected);
    // Truncated, renamed, unlinked: never served stale blocks.
    c.fs.setattr(attr.ino, Some(BLOCK + 1)).await.unwrap();
    assert!(c.read_file("big").await == expected[..(BLOCK + 1) as usize]);
    c.fs.rename(ROOT, "big", ROOT, "moved", false)
        .await
        .unwrap();
    assert!(c.read_file("moved").await == expected[..(BLOCK + 1) as usize]);
    write("big", pattern((part + 10) as usize, 9)).await;
    assert!(c.read_file("big").await == pattern((part + 10) as usize, 9));
    c.fs.unlink(ROOT, "big").await.unwrap();
    c.fx.put("big", b"from elsewhere").await;
    assert_eq!(c.read_file("big").await, b"from elsewhere");
    assert!(c.cache.used() <= c.cache.capacity());
}

#[tokio::test]
async fn a_write_larger_than_the_read_cache_keeps_its_first_blocks() {
    let part = 2 * BLOCK;
    let c = Cached::with_parts_of(3 * BLOCK, part);
    let data = pattern((3 * part) as usize, 10);
    let (_, fh) = c.fs.create(ROOT, "f", WRITE).await.unwrap();
    for (i, chunk) in data.chunks(128 << 10).enumerate() {
        c.fs.write(fh, (i * (128 << 10)) as u64, chunk)
            .await
            .unwrap();
    }
    c.fs.release(fh).await.unwrap();
    assert_eq!(c.cache.used(), 3 * BLOCK);
    let etag = c.fx.store.head_opt("f").await.unwrap().unwrap().etag;
    for b in 0..6u64 {
        let got = c.cache.get("f", &etag, b).await;
        let start = (b * BLOCK) as usize;
        match b {
            0..3 => assert!(got.as_deref() == Some(&data[start..start + BLOCK as usize])),
            _ => assert!(got.is_none(), "block {b} is over the capacity"),
        }
    }
    assert!(c.read_file("f").await == data);
}

/// Two mounts append to one file: the second commit is refused (the object changed under its
/// writer) and its close fails with EIO. The release that follows must publish nothing: it
/// once found the writer gone and the file still changed, took it for an emptied file and
/// wrote an empty object over both writers' bytes. The refused upload is aborted, not left for
/// every later mount's recovery to fail on.
#[tokio::test]
async fn a_refused_commit_fails_the_close_and_publishes_nothing() {
    let fx = Fixture::new();
    let old = pattern(9_000, 3);
    fx.put("log", &old).await;
    let (first, second) = (fx.fs(), fx.fs());
    let append = OpenMode {
        append: true,
        ..WRITE
    };
    let ino_a = first.lookup(ROOT, "log").await.unwrap().ino;
    let ino_b = second.lookup(ROOT, "log").await.unwrap().ino;
    let a = first.open(ino_a, append).await.unwrap();
    let b = second.open(ino_b, append).await.unwrap();
    first.write(a, 0, b"from the first mount\n").await.unwrap();
    second
        .write(b, 0, b"from the second mount\n")
        .await
        .unwrap();
    first.flush(a).await.unwrap();
    first.release(a).await.unwrap();
    let mut want = old.clone();
    want.extend_from_slice(b"from the first mount\n");
    assert_eq!(fx.object("log").await, Some(want.clone()));

    assert_eq!(second.flush(b).await.err(), Some(FsError::Io));
    let _ = second.release(b).await;
    assert_eq!(fx.object("log").await, Some(want), "nothing published");
    let open = fx.index.entries(&fx.store.describe()).unwrap();
    assert!(open.is_empty(), "the refused upload was aborted: {open:?}");
    // The file opens again as the store holds it.
    let b = second.open(ino_b, append).await.unwrap();
    second.write(b, 0, b"again\n").await.unwrap();
    second.release(b).await.unwrap();
    let body = fx.object("log").await.unwrap();
    assert!(body.ends_with(b"from the first mount\nagain\n"), "{body:?}");
}

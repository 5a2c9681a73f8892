//! POSIX edge cases of the file-system core over the memory store, found by using the mount as
//! a demanding user would: files unlinked (or replaced by a rename) while open, readers of a
//! file that another handle changes, reads past the end of a file being rewritten, names too
//! long, `mknod`.

use std::sync::Arc;

use fs_core::store::memory::MemoryStore;
use fs_core::store::{DynStore, ObjectStoreExt};
use fs_core::{Index, RecoverableWriter, WriterConfig};
use fuse_mount::cache::BlockCache;
use fuse_mount::{Filesystem, FsConfig, FsError, OpenMode, ROOT};
use tempfile::TempDir;

mod support;

use support::{APPEND, PART, READ, WRITE, pattern};

struct Fixture {
    store: DynStore,
    fs: Filesystem,
    _dirs: Vec<TempDir>,
}

impl Fixture {
    /// With a read cache (as `rivulet mount` has by default) when `cached`.
    fn new(cached: bool) -> Self {
        let store: DynStore = Arc::new(MemoryStore::new().with_min_part_size(PART));
        let parts = tempfile::tempdir().expect("cache dir");
        let config = WriterConfig {
            part_size: PART,
            cache_parts: true,
            cache_dir: parts.path().to_path_buf(),
            ..WriterConfig::default()
        };
        let index = Index::temporary().expect("temporary index");
        let writer = RecoverableWriter::new(store.clone(), index, config).expect("writer");
        let mut fs = Filesystem::new(writer, FsConfig::default());
        let mut dirs = vec![parts];
        if cached {
            let dir = tempfile::tempdir().expect("read cache dir");
            let cache = BlockCache::open(dir.path(), 64 << 20)
                .expect("read cache")
                .expect("enabled");
            fs = fs.with_read_cache(Arc::new(cache));
            dirs.push(dir);
        }
        Self {
            store,
            fs,
            _dirs: dirs,
        }
    }

    async fn put(&self, key: &str, body: &[u8]) {
        support::put(&self.store, key, body).await;
    }

    async fn object(&self, key: &str) -> Option<Vec<u8>> {
        support::object(&self.store, key).await
    }

    async fn open(&self, name: &str, mode: OpenMode) -> u64 {
        let attr = self.fs.lookup(ROOT, name).await.expect("lookup");
        self.fs.open(attr.ino, mode).await.expect("open")
    }

    async fn read_all(&self, fh: u64) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let chunk = self
                .fs
                .read(fh, out.len() as u64, 50_000)
                .await
                .expect("read");
            if chunk.is_empty() {
                return out;
            }
            out.extend_from_slice(&chunk);
        }
    }
}

/// `open`, `unlink`, then go on using the descriptor (the classic private scratch file): the
/// content stays readable and writable until the last close, and nothing reaches the store.
/// It used to fail reads and writes with ENOENT (the object was gone) or read zeros (the
/// writer holding the bytes written so far was aborted).
#[tokio::test]
async fn an_unlinked_open_file_keeps_its_content() {
    for cached in [false, true] {
        let fx = Fixture::new(cached);

        // A committed file, open for writing and for reading.
        let old = pattern(1000, 1);
        fx.put("committed", &old).await;
        let ino = fx.fs.lookup(ROOT, "committed").await.unwrap().ino;
        let rw = fx.open("committed", WRITE).await;
        let ro = fx.open("committed", READ).await;
        fx.fs.unlink(ROOT, "committed").await.unwrap();
        assert_eq!(fx.object("committed").await, None);
        assert_eq!(fx.fs.read(rw, 0, 10).await.unwrap(), old[..10]);
        assert_eq!(fx.fs.write(rw, 2, b"AB").await.unwrap(), 2);
        assert_eq!(fx.fs.write(rw, 1000, b"END").await.unwrap(), 3);
        let mut want = old.clone();
        want[2..4].copy_from_slice(b"AB");
        want.extend_from_slice(b"END");
        assert_eq!(fx.read_all(rw).await, want);
        assert_eq!(fx.read_all(ro).await, want, "a reading handle sees it too");
        assert_eq!(fx.fs.getattr(ino).await.unwrap().size, 1003);
        // ftruncate of the descriptor: the name is gone, the file is not.
        assert_eq!(fx.fs.setattr(ino, Some(500)).await.unwrap().size, 500);
        assert_eq!(fx.read_all(ro).await, want[..500]);
        fx.fs.fsync(rw).await.unwrap();
        fx.fs.flush(rw).await.unwrap();
        fx.fs.release(rw).await.unwrap();
        assert_eq!(fx.read_all(ro).await, want[..500], "until the last close");
        fx.fs.release(ro).await.unwrap();
        assert_eq!(fx.object("committed").await, None);

        // A new file still in memory.
        let (_, fh) = fx.fs.create(ROOT, "new", WRITE).await.unwrap();
        fx.fs.write(fh, 0, b"hello").await.unwrap();
        fx.fs.unlink(ROOT, "new").await.unwrap();
        assert_eq!(fx.fs.read(fh, 0, 100).await.unwrap(), &b"hello"[..]);
        fx.fs.write(fh, 5, b" world").await.unwrap();
        assert_eq!(fx.read_all(fh).await, b"hello world");
        fx.fs.flush(fh).await.unwrap();
        fx.fs.release(fh).await.unwrap();
        assert_eq!(fx.object("new").await, None);

        // A file of several parts, fsynced (its writer holds them).
        let big = pattern(5 * PART as usize + 123, 7);
        let (_, fh) = fx.fs.create(ROOT, "big", WRITE).await.unwrap();
        fx.fs.write(fh, 0, &big).await.unwrap();
        fx.fs.fsync(fh).await.unwrap();
        fx.fs.unlink(ROOT, "big").await.unwrap();
        assert!(fx.read_all(fh).await == big);
        fx.fs.write(fh, big.len() as u64, b"more").await.unwrap();
        assert_eq!(fx.read_all(fh).await.len(), big.len() + 4);
        fx.fs.release(fh).await.unwrap();
        assert_eq!(fx.object("big").await, None);

        // Only a reading handle.
        fx.put("read-only", b"still here").await;
        let fh = fx.open("read-only", READ).await;
        fx.fs.unlink(ROOT, "read-only").await.unwrap();
        assert_eq!(fx.read_all(fh).await, b"still here");
        fx.fs.release(fh).await.unwrap();

        // A new file of the same name is another file.
        let (_, fh) = fx.fs.create(ROOT, "new", WRITE).await.unwrap();
        fx.fs.write(fh, 0, b"second").await.unwrap();
        fx.fs.release(fh).await.unwrap();
        assert_eq!(fx.object("new").await.unwrap(), b"second");
        assert_eq!(fx.store.list_all("").await.unwrap().len(), 1);
    }
}

/// `rename(a, b)` while `b` is open: `b`'s handles keep the replaced content (they used to read
/// `a`'s bytes, or lose what they had written and not yet committed).
#[tokio::test]
async fn a_file_replaced_by_rename_keeps_its_content_for_open_handles() {
    let fx = Fixture::new(true);
    fx.put("a", b"new content").await;
    fx.put("b", b"old content").await;
    let ro = fx.open("b", READ).await;
    assert_eq!(fx.fs.read(ro, 0, 3).await.unwrap(), &b"old"[..]);
    let rw = fx.open("b", WRITE).await;
    fx.fs.rename(ROOT, "a", ROOT, "b", false).await.unwrap();
    assert_eq!(fx.object("b").await.unwrap(), b"new content");
    assert_eq!(fx.read_all(ro).await, b"old content");
    assert_eq!(fx.read_all(rw).await, b"old content");
    fx.fs.write(rw, 0, b"OLD").await.unwrap();
    assert_eq!(fx.read_all(ro).await, b"OLD content");
    fx.fs.write(rw, 11, b"!").await.unwrap();
    assert_eq!(fx.read_all(rw).await, b"OLD content!");
    fx.fs.flush(rw).await.unwrap();
    fx.fs.release(rw).await.unwrap();
    fx.fs.release(ro).await.unwrap();
    assert_eq!(fx.object("b").await.unwrap(), b"new content");
    assert_eq!(fx.object("a").await, None);
    let fh = fx.open("b", READ).await;
    assert_eq!(fx.read_all(fh).await, b"new content");
    fx.fs.release(fh).await.unwrap();
}

/// `tail -f`: a descriptor that read a file before another one appended to it (and closed)
/// reads the appended bytes. With the read cache it used to see the file end where it ended at
/// its first read, for as long as it stayed open.
#[tokio::test]
async fn a_reader_sees_what_another_handle_appended() {
    for cached in [false, true] {
        let fx = Fixture::new(cached);
        fx.put("log", b"line1\n").await;
        let ro = fx.open("log", READ).await;
        assert_eq!(fx.read_all(ro).await, b"line1\n");
        let w = fx.open("log", APPEND).await;
        fx.fs.write(w, 0, b"line2\n").await.unwrap();
        fx.fs.flush(w).await.unwrap();
        fx.fs.release(w).await.unwrap();
        assert_eq!(
            fx.fs.read(ro, 6, 100).await.unwrap(),
            &b"line2\n"[..],
            "cached: {cached}"
        );
        assert_eq!(fx.read_all(ro).await, b"line1\nline2\n");
        // Rewritten through the mount: the new bytes, not the old version's.
        let w = fx.open("log", WRITE).await;
        fx.fs.write(w, 0, b"LINE1").await.unwrap();
        fx.fs.release(w).await.unwrap();
        assert_eq!(fx.read_all(ro).await, b"LINE1\nline2\n", "cached: {cached}");
        fx.fs.release(ro).await.unwrap();
    }
}

/// A read at or past the end of a file open for writing whose end is being rewritten in memory
/// is an empty read. It used to panic (a slice from past its end) and take the mount down.
#[tokio::test]
async fn a_read_past_the_end_of_a_file_being_rewritten_is_empty() {
    let fx = Fixture::new(false);
    fx.put("f", &pattern(1000, 3)).await;
    let fh = fx.open("f", WRITE).await;
    // Before the end: rewritten in memory until fsync or close.
    fx.fs.write(fh, 10, b"xyz").await.unwrap();
    for offset in [1000, 1001, 5000] {
        assert!(fx.fs.read(fh, offset, 100).await.unwrap().is_empty());
    }
    // A new file, in memory as a whole.
    let (_, new) = fx.fs.create(ROOT, "g", WRITE).await.unwrap();
    fx.fs.write(new, 0, b"abc").await.unwrap();
    assert!(fx.fs.read(new, 10, 100).await.unwrap().is_empty());
    fx.fs.release(new).await.unwrap();
    fx.fs.release(fh).await.unwrap();
}

/// Names longer than NAME_MAX (255 bytes, what `statfs` says) fail with ENAMETOOLONG, never EIO
/// from the store; so do paths too long for a key.
#[tokio::test]
async fn names_too_long_are_enametoolong() {
    let fx = Fixture::new(false);
    let ok = "a".repeat(255);
    let long = "b".repeat(256);
    let (_, fh) = fx.fs.create(ROOT, &ok, WRITE).await.unwrap();
    fx.fs.release(fh).await.unwrap();
    assert!(fx.fs.lookup(ROOT, &ok).await.is_ok());
    assert_eq!(
        fx.fs.lookup(ROOT, &long).await.unwrap_err(),
        FsError::NameTooLong
    );
    assert_eq!(
        fx.fs.create(ROOT, &long, WRITE).await.unwrap_err(),
        FsError::NameTooLong
    );
    assert_eq!(
        fx.fs.mkdir(ROOT, &long).await.unwrap_err(),
        FsError::NameTooLong
    );
    assert_eq!(
        fx.fs
            .rename(ROOT, &ok, ROOT, &long, false)
            .await
            .unwrap_err(),
        FsError::NameTooLong
    );
    assert_eq!(FsError::NameTooLong.errno(), libc::ENAMETOOLONG);
    // Four nested directories of 255 bytes: the fifth name makes the key longer than 1024.
    let mut dir = ROOT;
    for c in ['c', 'd', 'e', 'f'] {
        dir = fx
            .fs
            .mkdir(dir, &c.to_string().repeat(250))
            .await
            .unwrap()
            .ino;
    }
    assert_eq!(
        fx.fs.create(dir, &"g".repeat(30), WRITE).await.unwrap_err(),
        FsError::NameTooLong
    );
    let (_, fh) = fx.fs.create(dir, "short", WRITE).await.unwrap();
    fx.fs.release(fh).await.unwrap();
}

/// `mknod` of a regular file creates it (empty, committed); FIFOs, sockets and devices cannot be
/// stored: EPERM (it used to be ENOSYS, "function not implemented", for all of them).
#[tokio::test]
async fn mknod_makes_regular_files_and_refuses_the_rest() {
    use libc::{S_IFIFO, S_IFREG, S_IFSOCK};
    let fx = Fixture::new(false);
    let attr = fx.fs.mknod(ROOT, "plain", S_IFREG | 0o644).await.unwrap();
    assert_eq!(attr.size, 0);
    assert_eq!(fx.object("plain").await.unwrap(), b"");
    assert_eq!(
        fx.fs
            .mknod(ROOT, "plain", S_IFREG | 0o644)
            .await
            .unwrap_err(),
        FsError::Exists
    );
    for kind in [S_IFIFO, S_IFSOCK] {
        assert_eq!(
            fx.fs
                .mknod(ROOT, "special", kind | 0o644)
                .await
                .unwrap_err(),
            FsError::NotPermitted
        );
    }
    assert_eq!(fx.object("special").await, None);
}

//! Where throwaway indexes live, and the sweep of those that their processes left behind.
//!
//! A temporary index ([`Index::temporary`](super::Index::temporary): a task manager's, a job
//! master's, a test's) is a sled database in a folder of its own, under one folder per user in
//! `/dev/shm` where it exists (as sled's own temporary databases: a throwaway index need not
//! reach a disk), else in the temporary directory. sled deletes the folder when the index is
//! dropped. A process that is killed, or that exits without dropping its index, leaves the
//! folder behind, and in `/dev/shm` that is memory: a task manager restarted after each crash
//! in a container with a small `/dev/shm` would in the end fail to start. So each new temporary
//! index first removes the folders nobody holds. sled keeps an exclusive lock on a database's
//! `db` file while it is open, and the kernel drops the lock when its process dies: a folder
//! whose `db` can be locked is a leftover.

use std::fs::{self, File, TryLockError};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Folders younger than this are never swept: their index may still be opening (the folder is
/// made before sled creates and locks its `db`).
const SWEEP_AFTER: Duration = Duration::from_secs(60);

/// The folder of one user's temporary indexes under `root`.
fn user_folder(root: &Path) -> PathBuf {
    root.join(format!("rivulet-indexes-{}", current_uid()))
}

fn current_uid() -> u32 {
    // SAFETY: getuid cannot fail and touches no memory.
    unsafe { libc::getuid() }
}

/// Where a new temporary index goes: a fresh path in the user's folder, after the folder is
/// swept. `None` when the folder cannot be made or is not this user's (another user made it
/// first): sled's own temporary location then serves.
pub(super) fn new_path() -> Option<PathBuf> {
    let shm = Path::new("/dev/shm");
    let root = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    new_path_in(&root)
}

fn new_path_in(root: &Path) -> Option<PathBuf> {
    let folder = user_folder(root);
    if !own_folder(&folder) {
        return None;
    }
    sweep(&folder, SWEEP_AFTER);
    // The pid and a counter make the name unique among live processes; the time keeps a new
    // process from reusing a dead one's name (same pid) while its folder is not swept yet.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let name = format!(
        "{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    Some(folder.join(name))
}

/// Makes `folder` (mode 0700) if needed; true when it is a directory of this user's.
fn own_folder(folder: &Path) -> bool {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let made = fs::DirBuilder::new().mode(0o700).create(folder);
    if let Err(e) = made
        && e.kind() != io::ErrorKind::AlreadyExists
    {
        return false;
    }
    // Not followed: a link planted in a shared temporary directory is not this user's folder.
    fs::symlink_metadata(folder).is_ok_and(|md| md.is_dir() && md.uid() == current_uid())
}

/// Removes the indexes in `folder` that no process holds, except those younger than
/// `min_age`. Best effort: what cannot be read or removed stays for the next sweep.
fn sweep(folder: &Path, min_age: Duration) {
    let Ok(entries) = fs::read_dir(folder) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(md) = entry.metadata() else {
            continue;
        };
        let age = md.modified().ok().and_then(|m| m.elapsed().ok());
        if !md.is_dir() || age.is_none_or(|age| age < min_age) {
            continue;
        }
        let path = entry.path();
        if !in_use(&path) {
            let _ = fs::remove_dir_all(&path);
        }
    }
}

/// Whether a process holds the sled database in `dir` (its `db` file locked). When unsure, it
/// is taken as held.
fn in_use(dir: &Path) -> bool {
    let db = match File::open(dir.join("db")) {
        Ok(db) => db,
        // Never opened, or half removed: nothing holds it.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return false,
        Err(_) => return true,
    };
    match db.try_lock() {
        Ok(()) => {
            let _ = db.unlock();
            false
        }
        Err(TryLockError::WouldBlock) => true,
        Err(TryLockError::Error(_)) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Makes `dir` look like a sled database's folder, `age` old.
    fn leftover(dir: &Path, age: Duration) -> File {
        fs::create_dir_all(dir).unwrap();
        let db = File::create(dir.join("db")).unwrap();
        File::open(dir)
            .unwrap()
            .set_modified(SystemTime::now() - age)
            .unwrap();
        db
    }

    #[test]
    fn a_sweep_removes_old_unheld_indexes_and_keeps_held_and_young_ones() {
        let root = tempfile::tempdir().unwrap();
        let folder = root.path().join("indexes");
        let hour = Duration::from_secs(3600);
        drop(leftover(&folder.join("dead"), hour));
        let held = leftover(&folder.join("held"), hour);
        held.lock().unwrap();
        drop(leftover(&folder.join("young"), Duration::ZERO));
        let opening = folder.join("opening");
        fs::create_dir_all(&opening).unwrap();
        File::open(&opening)
            .unwrap()
            .set_modified(SystemTime::now() - hour)
            .unwrap();
        fs::write(folder.join("stray-file"), b"x").unwrap();

        sweep(&folder, SWEEP_AFTER);

        let mut left: Vec<String> = fs::read_dir(&folder)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        // "opening" has no `db`: an old folder without one is a leftover too.
        assert_eq!(left, ["held", "stray-file", "young"]);
    }

    #[test]
    fn new_paths_are_distinct_in_a_private_folder() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let a = new_path_in(root.path()).unwrap();
        let b = new_path_in(root.path()).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.parent(), b.parent());
        let folder = a.parent().unwrap();
        assert_eq!(folder, user_folder(root.path()));
        let mode = fs::metadata(folder).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn a_folder_that_is_a_link_is_not_used() {
        let root = tempfile::tempdir().unwrap();
        let elsewhere = root.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, user_folder(root.path())).unwrap();
        assert_eq!(new_path_in(root.path()), None);
    }
}

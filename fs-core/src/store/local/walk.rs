//! Listing a local store: a lazy walk of the tree in key (byte) order, where a directory `d`
//! sorts as `d/`, skipping the subtrees a prefix or continuation rules out.

use super::*;

/// The deepest directory fully named by a listing prefix, as a key prefix (`""` or ending in
/// `/`); `None` when no valid key can start with the prefix.
pub(super) fn start_dir(prefix: &str) -> Option<String> {
    let dir = match prefix.rfind('/') {
        Some(i) => prefix.get(..=i)?,
        None => return Some(String::new()),
    };
    let body = dir.strip_suffix('/').unwrap_or(dir);
    for seg in body.split('/') {
        if seg.is_empty()
            || seg == "."
            || seg == ".."
            || seg == DIR_MARKER
            || seg.contains('\0')
            || seg.len() > MAX_NAME_LEN
            || seg == SYS_DIR
        {
            return None;
        }
    }
    Some(dir.to_string())
}

/// One entry of a directory: a file's key, or a subdirectory's key prefix (ending in `/`).
pub(super) struct WalkEntry {
    key: String,
    is_dir: bool,
}

/// Yields the keys of the tree in byte order, pruning subtrees that the prefix or the
/// continuation exclude, and (with the `/` delimiter) only the first key of each subtree that
/// becomes one common prefix. Sizes and ETags are filled in later for the page's objects only.
pub(super) struct Walker<'a> {
    root: &'a Path,
    prefix: &'a str,
    after: Option<&'a str>,
    collapse: bool,
    stack: Vec<std::vec::IntoIter<WalkEntry>>,
    /// Stack index of the subtree being collapsed into one common prefix.
    collapsing: Option<usize>,
    pub(super) error: Option<(String, io::Error)>,
}

impl<'a> Walker<'a> {
    pub(super) fn new(root: &'a Path, req: &'a ListRequest) -> Self {
        Walker {
            root,
            prefix: &req.prefix,
            after: req.continuation.as_deref(),
            collapse: req.delimiter.as_deref() == Some("/"),
            stack: Vec::new(),
            collapsing: None,
            error: None,
        }
    }

    /// Pushes the directory `dir_key` (`""` for the root); a missing directory is empty.
    pub(super) fn enter(&mut self, dir_key: String, collapse: bool) {
        match read_entries(self.root, &dir_key) {
            Ok(entries) => {
                if collapse && self.collapsing.is_none() {
                    self.collapsing = Some(self.stack.len());
                }
                self.stack.push(entries.into_iter());
            }
            Err(e) if is_missing(&e) => {}
            Err(e) => {
                self.error = Some((dir_key, e));
                self.stack.clear();
            }
        }
    }

    fn wants_dir(&self, key: &str) -> bool {
        (key.starts_with(self.prefix) || self.prefix.starts_with(key))
            && key.len() <= limits::MAX_KEY_LEN
            // Every key under `key` sorts before a continuation past the whole subtree.
            && !self.after.is_some_and(|c| c > key && !c.starts_with(key))
    }

    fn wants_file(&self, key: &str) -> bool {
        key.starts_with(self.prefix)
            && self.after.is_none_or(|c| key > c)
            && check_key("list", key).is_ok()
    }
}

impl Iterator for Walker<'_> {
    type Item = ObjectSummary;

    fn next(&mut self) -> Option<ObjectSummary> {
        loop {
            let entry = match self.stack.last_mut()?.next() {
                Some(entry) => entry,
                None => {
                    self.stack.pop();
                    if self.collapsing == Some(self.stack.len()) {
                        self.collapsing = None;
                    }
                    continue;
                }
            };
            if entry.is_dir {
                if self.wants_dir(&entry.key) {
                    let collapse = self.collapse
                        && entry.key.len() > self.prefix.len()
                        && entry.key.starts_with(self.prefix);
                    self.enter(entry.key, collapse);
                }
                continue;
            }
            if !self.wants_file(&entry.key) {
                continue;
            }
            if let Some(depth) = self.collapsing.take() {
                // One key stands for the whole common prefix: skip the rest of the subtree.
                self.stack.truncate(depth);
            }
            return Some(ObjectSummary {
                key: entry.key,
                size: 0,
                etag: String::new(),
                last_modified: None,
            });
        }
    }
}

/// The entries of one directory of the tree, sorted by key: a subdirectory `d` sorts as `d/`,
/// which orders the whole walk like S3 (for example `a-b` < `a/x` < `a0`).
fn read_entries(root: &Path, dir_key: &str) -> io::Result<Vec<WalkEntry>> {
    let path = match dir_key.strip_suffix('/') {
        Some(rel) => root.join(rel),
        None => root.to_path_buf(),
    };
    let mut out = Vec::new();
    for entry in fs::read_dir(&path)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue; // not UTF-8: cannot be a key
        };
        // A nested store's state too (see `check_key`).
        if name == SYS_DIR {
            continue;
        }
        let Ok(file_type) = entry.file_type() else {
            continue;
        };
        let (is_file, is_dir) = if file_type.is_symlink() {
            // Follow links to files; never links to directories (they could loop).
            match fs::metadata(entry.path()) {
                Ok(md) => (md.is_file(), false),
                Err(_) => continue,
            }
        } else {
            (file_type.is_file(), file_type.is_dir())
        };
        if name == DIR_MARKER {
            if is_file && !dir_key.is_empty() {
                out.push(WalkEntry {
                    key: dir_key.to_string(),
                    is_dir: false,
                });
            }
        } else if is_dir {
            out.push(WalkEntry {
                key: format!("{dir_key}{name}/"),
                is_dir: true,
            });
        } else if is_file {
            out.push(WalkEntry {
                key: format!("{dir_key}{name}"),
                is_dir: false,
            });
        }
    }
    out.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

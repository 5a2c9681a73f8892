//! The inode table: numbers the kernel holds for paths, with the last attributes seen.
//!
//! Inodes are never forgotten in this slice (the kernel's `forget` is ignored): memory grows
//! with the number of distinct names looked up during one mount, a few hundred bytes each.

use std::collections::HashMap;
use std::time::{Instant, SystemTime};

pub type Ino = u64;

/// The root directory's inode (FUSE's fixed number).
pub const ROOT: Ino = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
}

#[derive(Debug, Clone)]
pub struct Node {
    /// The key of a file, or a directory's key prefix without its trailing `/` (root: empty).
    pub path: String,
    pub kind: Kind,
    pub size: u64,
    pub mtime: SystemTime,
    /// A file's ETag as last seen (HEAD, listing, commit): names the version whose cached
    /// blocks may be read. `None` when unknown.
    pub etag: Option<String>,
    /// When the store last confirmed these attributes (for the metadata TTL).
    pub checked: Instant,
}

#[derive(Debug)]
pub struct Inodes {
    nodes: HashMap<Ino, Node>,
    by_path: HashMap<String, Ino>,
    next: Ino,
}

impl Default for Inodes {
    fn default() -> Self {
        let mut table = Self {
            nodes: HashMap::new(),
            by_path: HashMap::new(),
            next: ROOT + 1,
        };
        table.nodes.insert(
            ROOT,
            Node {
                path: String::new(),
                kind: Kind::Dir,
                size: 0,
                mtime: SystemTime::now(),
                etag: None,
                checked: Instant::now(),
            },
        );
        table.by_path.insert(String::new(), ROOT);
        table
    }
}

impl Inodes {
    pub fn get(&self, ino: Ino) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    pub fn ino_of(&self, path: &str) -> Option<Ino> {
        self.by_path.get(path).copied()
    }

    /// The inode of `path`, created if new, with these attributes (confirmed now).
    pub fn intern(
        &mut self,
        path: &str,
        kind: Kind,
        size: u64,
        mtime: SystemTime,
        etag: Option<String>,
    ) -> Ino {
        let node = Node {
            path: path.to_string(),
            kind,
            size,
            mtime,
            etag,
            checked: Instant::now(),
        };
        if let Some(&ino) = self.by_path.get(path) {
            self.nodes.insert(ino, node);
            return ino;
        }
        let ino = self.next;
        self.next += 1;
        self.nodes.insert(ino, node);
        self.by_path.insert(path.to_string(), ino);
        ino
    }

    /// Forgets the name `path` (the kernel may still hold the number: it then gets ENOENT).
    pub fn remove_path(&mut self, path: &str) {
        if path.is_empty() {
            return;
        }
        if let Some(ino) = self.by_path.remove(path) {
            self.nodes.remove(&ino);
        }
    }

    /// Moves a directory's inode and those of every name below it from `from` to `to`,
    /// replacing whatever had those names (an empty directory being replaced).
    pub fn rename_tree(&mut self, from: &str, to: &str) {
        let to_prefix = format!("{to}/");
        let replaced: Vec<String> = self
            .by_path
            .keys()
            .filter(|p| p.as_str() == to || p.starts_with(&to_prefix))
            .cloned()
            .collect();
        for path in replaced {
            self.remove_path(&path);
        }
        let from_prefix = format!("{from}/");
        let moved: Vec<String> = self
            .by_path
            .keys()
            .filter(|p| p.as_str() == from || p.starts_with(&from_prefix))
            .cloned()
            .collect();
        for old in moved {
            let new = format!("{to}{}", &old[from.len()..]);
            if let Some(ino) = self.by_path.remove(&old) {
                if let Some(node) = self.nodes.get_mut(&ino) {
                    node.path.clone_from(&new);
                    // A copy may have another ETag (multipart copies do).
                    node.etag = None;
                }
                self.by_path.insert(new, ino);
            }
        }
    }

    /// Moves a file's inode to a new name, replacing whatever had that name.
    pub fn rename(&mut self, from: &str, to: &str) {
        self.remove_path(to);
        if let Some(ino) = self.by_path.remove(from) {
            self.by_path.insert(to.to_string(), ino);
            if let Some(node) = self.nodes.get_mut(&ino) {
                node.path = to.to_string();
                node.etag = None;
            }
        }
    }
}

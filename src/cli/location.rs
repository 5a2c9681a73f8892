//! Turning command-line arguments into a store and a key (or a key prefix).
//!
//! fs-core's [`StoreUrl`] does the parsing; this module adds the command line's rules:
//!
//! - **cp** tells a store object from a local file by the scheme: an argument with `scheme://`
//!   (`s3://`, `file://`, `memory://`) is a store object, anything else (a plain path, or `-` for
//!   stdin/stdout) is a local file. Every other command takes store URLs only, where a plain path
//!   means the local store (see below).
//! - **Local stores**: a local path (plain or `file://`) belongs to the nearest enclosing
//!   directory that is already a Rivulet store (it has a `.rivulet-store/` directory), like git
//!   finds `.git`; when there is none, the object's own directory becomes the store. So
//!   `/data/a/b.txt` is the key `a/b.txt` of the store `/data` once `/data` is a store, and the
//!   key `b.txt` of the store `/data/a` otherwise: the file on disk is the same either way.
//! - **s3://bucket/path** is the key `path` of the store `s3://bucket`; **memory://name/path** is
//!   the key `path` of `memory://name`.
//! - **Listings** (`ls`) take a key prefix: `s3://bucket/dir/` lists under `dir/`,
//!   `s3://bucket/di` lists what starts with `di` (like `aws s3 ls`).

use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use fs_core::store::StoreUrl;

/// The directory that marks a local directory as a Rivulet store (fs-core's local store keeps
/// its state there).
pub const LOCAL_STATE_DIR: &str = fs_core::store::local::SYS_DIR;

/// Whether an argument is written `scheme://...` (a store URL for `cp`).
pub fn has_scheme(arg: &str) -> bool {
    let Some((scheme, _)) = arg.split_once("://") else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// Whether the URL names a "directory" (its path ends with `/`), for `cp` into a prefix.
pub fn ends_with_slash(url: &str) -> bool {
    location_part(url).ends_with('/')
}

/// The URL without its query (`?...`), for `s3://` URLs; other URLs have no query.
fn location_part(url: &str) -> &str {
    if url.to_ascii_lowercase().starts_with("s3://") {
        url.split_once('?').map_or(url, |(l, _)| l)
    } else {
        url
    }
}

/// Appends a file name to a URL that ends with `/` (`s3://b/dir/` + `x y` = `s3://b/dir/x%20y`),
/// keeping an `s3://` URL's query.
pub fn join_name(url: &str, name: &str) -> String {
    let location = location_part(url);
    let query = &url[location.len()..];
    let name = if has_scheme(url) {
        percent_encode(name)
    } else {
        name.to_string()
    };
    format!("{location}{name}{query}")
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The store and key an object URL names.
pub fn object(url: &str) -> Result<(StoreUrl, String)> {
    let (store, key) = StoreUrl::parse_object(url)?;
    match store {
        StoreUrl::Local(dir) => {
            let dir = normalize(&dir);
            let (root, rel) = local_root(&dir)?;
            Ok((StoreUrl::Local(root), join_key(&rel, &key)))
        }
        other => Ok((other, key)),
    }
}

/// The store and key prefix a listing URL names. For a local path that does not exist this is
/// an error (a listing never creates a store).
pub fn listing(url: &str) -> Result<(StoreUrl, String)> {
    if let Some(result) = memory_listing(url) {
        return result;
    }
    match StoreUrl::parse(url)? {
        StoreUrl::S3(_) => Ok(StoreUrl::parse_listing(url)?),
        store @ StoreUrl::Memory(_) => Ok((store, String::new())),
        StoreUrl::Local(path) => {
            let path = normalize(&path);
            let meta = std::fs::metadata(&path)
                .with_context(|| format!("no such directory {}", path.display()))?;
            let (dir, name) = if meta.is_dir() {
                (path.as_path(), None)
            } else {
                let parent = path
                    .parent()
                    .ok_or_else(|| anyhow!("{} has no parent", path.display()))?;
                (parent, Some(utf8_name(&path)?))
            };
            let (root, rel) = local_root(dir)?;
            let mut prefix = if rel.is_empty() {
                String::new()
            } else {
                format!("{rel}/")
            };
            if let Some(name) = name {
                prefix.push_str(&name);
            }
            Ok((StoreUrl::Local(root), prefix))
        }
    }
}

/// `memory://name/prefix`, which [`StoreUrl::parse`] rejects (a memory store URL has no path).
fn memory_listing(url: &str) -> Option<Result<(StoreUrl, String)>> {
    let rest = url.strip_prefix("memory://")?;
    let (_, path) = rest.split_once('/')?;
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return None;
    }
    let object_url = &url[..url.len() - (path.len() - trimmed.len())];
    Some(
        StoreUrl::parse_object(object_url)
            .map_err(anyhow::Error::from)
            .map(|(store, mut key)| {
                if trimmed.len() != path.len() {
                    key.push('/');
                }
                (store, key)
            }),
    )
}

/// The store a store URL names (for `gc` and `recover`). A local path must exist; it resolves to
/// its enclosing store like object paths do.
pub fn store(url: &str) -> Result<StoreUrl> {
    match StoreUrl::parse(url)? {
        StoreUrl::Local(path) => {
            let path = normalize(&path);
            if !path.is_dir() {
                bail!("no such directory {}", path.display());
            }
            let (root, _) = local_root(&path)?;
            Ok(StoreUrl::Local(root))
        }
        other => Ok(other),
    }
}

/// The URL of the store an index entry names (`s3://bkt/logs`, `file:///data`) when it is
/// another opening of `current`'s bucket (same endpoint and options) or a local directory.
pub fn reopened(current: &StoreUrl, store_name: &str) -> Option<StoreUrl> {
    match current {
        StoreUrl::S3(config) => {
            let rest = store_name.strip_prefix(&format!("s3://{}", config.bucket))?;
            if !(rest.is_empty() || rest.starts_with('/')) {
                return None;
            }
            let mut other = config.clone();
            other.prefix = rest.trim_start_matches('/').to_string();
            Some(StoreUrl::S3(other))
        }
        StoreUrl::Local(_) => store_name
            .strip_prefix("file://")
            .map(|path| StoreUrl::Local(path.into())),
        StoreUrl::Memory(_) => None,
    }
}

/// The store root for a local directory and the directory's path below it (`/`-joined, empty
/// when the directory is the root).
fn local_root(dir: &Path) -> Result<(PathBuf, String)> {
    let Some(root) = dir.ancestors().find(|a| a.join(LOCAL_STATE_DIR).is_dir()) else {
        return Ok((dir.to_path_buf(), String::new()));
    };
    let rel = dir.strip_prefix(root).expect("an ancestor is a prefix");
    let mut segments = Vec::new();
    for c in rel.components() {
        let s = c
            .as_os_str()
            .to_str()
            .ok_or_else(|| anyhow!("{} is not UTF-8", dir.display()))?;
        segments.push(s);
    }
    Ok((root.to_path_buf(), segments.join("/")))
}

fn join_key(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

fn utf8_name(path: &Path) -> Result<String> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| anyhow!("{} has no UTF-8 file name", path.display()))
}

/// Resolves `.` and `..` lexically in an absolute path (`/a/b/../c` is `/a/c`).
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The last segment of a key (`a/b/c.txt` is `c.txt`), to name a downloaded file.
pub fn key_basename(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("rivulet-cli-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn schemes_mark_store_objects() {
        assert!(has_scheme("s3://bucket/key"));
        assert!(has_scheme("file:///tmp/x"));
        assert!(has_scheme("memory://m/k"));
        assert!(has_scheme("gs://bucket")); // a scheme, even if unsupported: cp reports it
        assert!(!has_scheme("/tmp/x"));
        assert!(!has_scheme("relative/file"));
        assert!(!has_scheme("-"));
        assert!(!has_scheme("dir/with://inside"));
        assert!(!has_scheme("://x"));
        assert!(!has_scheme("1ab://x"));
    }

    #[test]
    fn s3_and_memory_objects() {
        let (store, key) = object("s3://bucket/dir/f.txt?endpoint=http://127.0.0.1:9000").unwrap();
        assert_eq!(key, "dir/f.txt");
        assert_eq!(
            store.to_string(),
            "s3://bucket?endpoint=http://127.0.0.1:9000"
        );
        let (store, key) = object("memory://m/a/b").unwrap();
        assert_eq!((store, key.as_str()), (StoreUrl::Memory("m".into()), "a/b"));
        let err = object("gs://bucket/key").unwrap_err().to_string();
        assert!(err.contains("unsupported scheme"), "{err}");
        assert!(object("s3://bucket/dir/").is_err());
    }

    #[test]
    fn local_objects_belong_to_the_enclosing_store() {
        let tmp = TempDir::new("obj");
        let root = tmp.0.join("store");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        // Not a store yet: the file's directory is the store.
        let url = root.join("a/b/f.txt");
        let (store, key) = object(url.to_str().unwrap()).unwrap();
        assert_eq!(
            (store, key.as_str()),
            (StoreUrl::Local(root.join("a/b")), "f.txt")
        );
        // Once `store` is a store, the same path is a nested key of it.
        std::fs::create_dir_all(root.join(LOCAL_STATE_DIR)).unwrap();
        let (store, key) = object(url.to_str().unwrap()).unwrap();
        assert_eq!(
            (store, key.as_str()),
            (StoreUrl::Local(root.clone()), "a/b/f.txt")
        );
        // `..` is resolved, file:// URLs work the same.
        let dotted = format!("file://{}/a/x/../b/f.txt", root.display());
        let (store, key) = object(&dotted).unwrap();
        assert_eq!(
            (store, key.as_str()),
            (StoreUrl::Local(root.clone()), "a/b/f.txt")
        );
        // A key at the root.
        let (store, key) = object(root.join("top").to_str().unwrap()).unwrap();
        assert_eq!((store, key.as_str()), (StoreUrl::Local(root), "top"));
    }

    #[test]
    fn listings_take_a_prefix() {
        let (store, prefix) = listing("s3://bucket/dir/?region=eu-west-1").unwrap();
        assert_eq!(prefix, "dir/");
        assert_eq!(store.to_string(), "s3://bucket?region=eu-west-1");
        assert_eq!(listing("s3://bucket/di").unwrap().1, "di");
        assert_eq!(listing("s3://bucket").unwrap().1, "");
        assert_eq!(listing("s3://bucket/").unwrap().1, "");
        assert_eq!(
            listing("memory://m").unwrap(),
            (StoreUrl::Memory("m".into()), String::new())
        );
        assert_eq!(
            listing("memory://m/a/").unwrap(),
            (StoreUrl::Memory("m".into()), "a/".into())
        );
        assert_eq!(
            listing("memory://m/a").unwrap(),
            (StoreUrl::Memory("m".into()), "a".into())
        );

        let tmp = TempDir::new("ls");
        let root = tmp.0.join("store");
        std::fs::create_dir_all(root.join("d/e")).unwrap();
        std::fs::write(root.join("d/file"), b"x").unwrap();
        // Not a store: the directory itself is listed.
        assert_eq!(
            listing(root.join("d").to_str().unwrap()).unwrap(),
            (StoreUrl::Local(root.join("d")), String::new())
        );
        std::fs::create_dir_all(root.join(LOCAL_STATE_DIR)).unwrap();
        assert_eq!(
            listing(root.to_str().unwrap()).unwrap(),
            (StoreUrl::Local(root.clone()), String::new())
        );
        assert_eq!(
            listing(root.join("d/e").to_str().unwrap()).unwrap(),
            (StoreUrl::Local(root.clone()), "d/e/".into())
        );
        assert_eq!(
            listing(root.join("d/file").to_str().unwrap()).unwrap(),
            (StoreUrl::Local(root.clone()), "d/file".into())
        );
        let err = listing(root.join("missing").to_str().unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("no such directory"), "{err}");
    }

    #[test]
    fn store_urls_resolve_local_roots() {
        let tmp = TempDir::new("store");
        let root = tmp.0.join("s");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        assert_eq!(
            store(root.join("sub").to_str().unwrap()).unwrap(),
            StoreUrl::Local(root.join("sub"))
        );
        std::fs::create_dir_all(root.join(LOCAL_STATE_DIR)).unwrap();
        assert_eq!(
            store(root.join("sub").to_str().unwrap()).unwrap(),
            StoreUrl::Local(root.clone())
        );
        assert!(store(root.join("nope").to_str().unwrap()).is_err());
        assert_eq!(store("memory://x").unwrap(), StoreUrl::Memory("x".into()));
    }

    #[test]
    fn names_join_onto_directory_urls() {
        assert!(ends_with_slash("s3://b/dir/?endpoint=http://h:1/"));
        assert!(!ends_with_slash("s3://b/dir?endpoint=http://h:1/"));
        assert_eq!(
            join_name("s3://b/dir/?region=r", "a b#?.txt"),
            "s3://b/dir/a%20b%23%3F.txt?region=r"
        );
        assert_eq!(join_name("memory://m/", "f"), "memory://m/f");
        assert_eq!(join_name("/tmp/dir/", "a b"), "/tmp/dir/a b");
        assert_eq!(key_basename("a/b/c.txt"), "c.txt");
        assert_eq!(key_basename("c"), "c");
    }

    #[test]
    fn normalizes_lexically() {
        assert_eq!(
            normalize(Path::new("/a/b/../c/./d")),
            PathBuf::from("/a/c/d")
        );
        assert_eq!(normalize(Path::new("/../a")), PathBuf::from("/a"));
    }
}

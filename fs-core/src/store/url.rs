//! Store URLs: which backend a URL names, and how to open it.
//!
//! | URL | store |
//! |-----|-------|
//! | `file:///abs/dir`, `/abs/dir`, `rel/dir` | [`LocalStore`] rooted at the directory (relative paths are made absolute against the current directory) |
//! | `s3://bucket[/prefix][?endpoint=URL&region=R&path_style=BOOL&max_attempts=N&read_timeout=DURATION&contiguous_parts=BOOL]` | [`S3Store`] |
//! | `memory://name` | [`MemoryStore::named`]: shared by name within the process |
//!
//! In `s3://` URLs the path (prefix or key) is percent-decoded, so a `?` or `#` in a key is
//! written `%3F` / `%23`. `path_style` defaults to `true` when an `endpoint` is given (what
//! S3-compatible servers need) and to `false` otherwise. Credentials are never taken from a URL:
//! they come from the AWS chain (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, profiles, ...), as do
//! the region and `AWS_ENDPOINT_URL` when the URL does not set them. `read_timeout` (`500ms`,
//! `10s`, `2m`) is how long each attempt waits for the server's answer; see [`S3Timeouts`].
//!
//! Object URLs ([`StoreUrl::parse_object`]) name one object: `s3://bucket/dir/file.txt` is the key
//! `dir/file.txt` of the store `s3://bucket` (the whole path is the key, the store has no prefix);
//! `memory://name/dir/file` is the key `dir/file` of `memory://name`; a local path or `file://` URL
//! is the key `<file name>` of the store rooted at its parent directory (to address a nested key
//! of a chosen local root, open the root with [`StoreUrl::parse`] and pass the key separately).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use super::DynStore;
use super::local::LocalStore;
use super::memory::MemoryStore;
use super::rules;
use super::s3::{S3Config, S3Store, S3Timeouts};
use crate::error::{StoreError, StoreErrorKind};

const OP_PARSE: &str = "parse store URL";
const OP_PARSE_OBJECT: &str = "parse object URL";

/// A parsed store URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// A directory on the local filesystem (absolute).
    Local(PathBuf),
    /// A bucket and prefix of an S3-compatible service.
    S3(S3Config),
    /// A named in-memory store.
    Memory(String),
}

fn url_err(op: &'static str, url: &str, why: impl Into<String>) -> StoreError {
    StoreError::new(StoreErrorKind::InvalidArgument, op, url, why)
}

impl StoreUrl {
    /// Parses a store URL (see the module documentation). Errors are `InvalidArgument` naming the
    /// URL and what is wrong with it.
    pub fn parse(url: &str) -> Result<StoreUrl, StoreError> {
        let (store, path) = split(OP_PARSE, url)?;
        match &store {
            StoreUrl::S3(_) => Ok(store), // the path is the prefix, already in the config
            StoreUrl::Memory(_) if !path.is_empty() => Err(url_err(
                OP_PARSE,
                url,
                "a memory store URL is memory://name, without a path (use parse_object for an \
                 object URL)",
            )),
            StoreUrl::Memory(_) => Ok(store),
            StoreUrl::Local(_) => Ok(store),
        }
    }

    /// Parses a listing URL into its store and the key prefix to list: for `s3://` the whole
    /// path as written (`s3://bkt/logs/` lists under `logs/`, `s3://bkt/lo` what starts with
    /// `lo`), for the other schemes the store as [`StoreUrl::parse`] reads it and no prefix.
    pub fn parse_listing(url: &str) -> Result<(StoreUrl, String), StoreError> {
        match split(OP_PARSE, url)? {
            (StoreUrl::S3(mut config), path) => {
                config.prefix.clear();
                Ok((StoreUrl::S3(config), path))
            }
            _ => Ok((StoreUrl::parse(url)?, String::new())),
        }
    }

    /// Parses an object URL into its store and key (see the module documentation for the rule of
    /// each scheme).
    pub fn parse_object(url: &str) -> Result<(StoreUrl, String), StoreError> {
        let (store, path) = split(OP_PARSE_OBJECT, url)?;
        let (store, key) = match store {
            StoreUrl::S3(mut config) => {
                // The key is the path as written: `a//b` is not `a/b` on S3.
                config.prefix.clear();
                (StoreUrl::S3(config), path)
            }
            StoreUrl::Memory(name) => (StoreUrl::Memory(name), path),
            StoreUrl::Local(file) => {
                if url.ends_with('/') {
                    return Err(url_err(
                        OP_PARSE_OBJECT,
                        url,
                        "the path ends with '/': it names a directory, not a file",
                    ));
                }
                let (Some(parent), Some(name)) = (file.parent(), file.file_name()) else {
                    return Err(url_err(OP_PARSE_OBJECT, url, "the path has no file name"));
                };
                let Some(name) = name.to_str() else {
                    return Err(url_err(OP_PARSE_OBJECT, url, "the file name is not UTF-8"));
                };
                (StoreUrl::Local(parent.to_path_buf()), name.to_string())
            }
        };
        if key.is_empty() {
            return Err(url_err(
                OP_PARSE_OBJECT,
                url,
                "the URL names no object (the key is empty)",
            ));
        }
        if key.ends_with('/') {
            return Err(url_err(
                OP_PARSE_OBJECT,
                url,
                "the key ends with '/': it names a directory, not an object",
            ));
        }
        rules::validate_key(OP_PARSE_OBJECT, &key).map_err(|e| {
            url_err(
                OP_PARSE_OBJECT,
                url,
                format!("bad key {key:?}: {}", e.detail()),
            )
        })?;
        Ok((store, key))
    }
}

impl FromStr for StoreUrl {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        StoreUrl::parse(s)
    }
}

impl fmt::Display for StoreUrl {
    /// The canonical URL, which parses back to the same value (credentials, and the timeouts
    /// other than the read timeout, which URLs do not carry, excepted).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::Local(path) => match url::Url::from_file_path(path) {
                Ok(u) => write!(f, "{u}"),
                Err(()) => write!(f, "{}", path.display()),
            },
            StoreUrl::Memory(name) => write!(f, "memory://{name}"),
            StoreUrl::S3(c) => {
                write!(f, "s3://{}", c.bucket)?;
                let prefix = c.prefix.trim_matches('/');
                if !prefix.is_empty() {
                    write!(f, "/{}", encode(prefix, b"/"))?;
                }
                let mut params = Vec::new();
                if let Some(endpoint) = &c.endpoint {
                    params.push(format!("endpoint={}", encode(endpoint, b"/:")));
                }
                if let Some(region) = &c.region {
                    params.push(format!("region={}", encode(region, b"")));
                }
                if c.path_style != c.endpoint.is_some() {
                    params.push(format!("path_style={}", c.path_style));
                }
                if c.max_attempts != super::s3::DEFAULT_MAX_ATTEMPTS {
                    params.push(format!("max_attempts={}", c.max_attempts));
                }
                // A disabled read timeout (`None`, only through the API) has no URL form.
                if c.timeouts.read != S3Timeouts::default().read
                    && let Some(read) = c.timeouts.read
                {
                    params.push(format!("read_timeout={}", url_duration(read)));
                }
                if c.contiguous_parts {
                    params.push("contiguous_parts=true".to_string());
                }
                if !params.is_empty() {
                    write!(f, "?{}", params.join("&"))?;
                }
                Ok(())
            }
        }
    }
}

/// Opens the store a URL names.
pub async fn open_store(url: &StoreUrl) -> Result<DynStore, StoreError> {
    Ok(match url {
        // Opening creates and sweeps the store's state directory.
        StoreUrl::Local(path) => open_local(path, LocalStore::open).await?,
        StoreUrl::S3(config) => Arc::new(S3Store::new(config.clone()).await?),
        StoreUrl::Memory(name) => Arc::new(MemoryStore::named(name)),
    })
}

/// Opens a store to read from it: a local store in an existing directory is opened with
/// [`LocalStore::open_for_reading`], so that reading creates and writes nothing there; other
/// stores as [`open_store`] opens them.
pub async fn open_store_for_reading(url: &StoreUrl) -> Result<DynStore, StoreError> {
    match url {
        StoreUrl::Local(path) => open_local(path, LocalStore::open_for_reading).await,
        _ => open_store(url).await,
    }
}

/// Runs `open` (blocking file I/O) for the local store at `path` on tokio's blocking pool.
async fn open_local(
    path: &Path,
    open: fn(PathBuf) -> Result<LocalStore, StoreError>,
) -> Result<DynStore, StoreError> {
    let (path, shown) = (path.to_path_buf(), path.display().to_string());
    let opened = tokio::task::spawn_blocking(move || open(path))
        .await
        .map_err(|e| {
            StoreError::new(
                StoreErrorKind::Other,
                "open local store",
                shown,
                e.to_string(),
            )
        })?;
    Ok(Arc::new(opened?))
}

/// Splits a URL into its store and the rest of its path (decoded; without leading slash). For
/// `s3://` the path is left in the config's prefix; for local paths it is part of the store's
/// path and the returned path is empty.
fn split(op: &'static str, url: &str) -> Result<(StoreUrl, String), StoreError> {
    if url.trim().is_empty() {
        return Err(url_err(op, url, "the URL is empty"));
    }
    if url.trim() != url {
        return Err(url_err(
            op,
            url,
            "the URL has leading or trailing whitespace",
        ));
    }
    let Some((scheme, rest)) = url.split_once("://").filter(|(s, _)| is_scheme(s)) else {
        // A plain path.
        let path = std::path::absolute(Path::new(url))
            .map_err(|e| url_err(op, url, format!("cannot make the path absolute: {e}")))?;
        return Ok((StoreUrl::Local(path), String::new()));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "file" => parse_file(op, url).map(|p| (StoreUrl::Local(p), String::new())),
        "s3" => parse_s3(op, url, rest).map(|(c, path)| (StoreUrl::S3(c), path)),
        "memory" => parse_memory(op, url, rest),
        other => Err(url_err(
            op,
            url,
            format!(
                "unsupported scheme '{other}://' (expected s3://, file://, memory:// or a path)"
            ),
        )),
    }
}

fn is_scheme(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

fn parse_file(op: &'static str, url: &str) -> Result<PathBuf, StoreError> {
    let parsed =
        url::Url::parse(url).map_err(|e| url_err(op, url, format!("malformed file URL: {e}")))?;
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(url_err(
            op,
            url,
            "a file URL takes no query (?) or fragment (#)",
        ));
    }
    match parsed.host_str() {
        None | Some("") | Some("localhost") => {}
        Some(host) => {
            return Err(url_err(
                op,
                url,
                format!("file URLs must be local (file:///path), not on host '{host}'"),
            ));
        }
    }
    parsed
        .to_file_path()
        .map_err(|()| url_err(op, url, "not an absolute local path"))
}

fn parse_memory(op: &'static str, url: &str, rest: &str) -> Result<(StoreUrl, String), StoreError> {
    if rest.contains(['?', '#']) {
        return Err(url_err(
            op,
            url,
            "a memory URL takes no query (?) or fragment (#)",
        ));
    }
    let (name, path) = rest.split_once('/').unwrap_or((rest, ""));
    if name.is_empty() {
        return Err(url_err(
            op,
            url,
            "the memory store has no name (memory://name)",
        ));
    }
    let path = decode(path).map_err(|why| url_err(op, url, why))?;
    Ok((StoreUrl::Memory(name.to_string()), path))
}

const S3_PARAMS: &str =
    "endpoint, region, path_style, max_attempts, read_timeout, contiguous_parts";

/// The bucket's configuration, and the URL's path percent-decoded as written (its slashes kept).
fn parse_s3(op: &'static str, url: &str, rest: &str) -> Result<(S3Config, String), StoreError> {
    let fail = |why: String| url_err(op, url, why);
    if rest.contains('#') {
        return Err(fail(
            "'#' is not allowed in an s3:// URL (write %23 in a key)".into(),
        ));
    }
    let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (bucket, path) = location.split_once('/').unwrap_or((location, ""));
    if bucket.contains('@') {
        return Err(fail(
            "credentials do not belong in the URL: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
             (or an AWS profile)"
                .into(),
        ));
    }
    if bucket.contains(':') {
        return Err(fail(format!(
            "'{bucket}' has a port: give the server as ?endpoint=http://host:port"
        )));
    }
    check_bucket(bucket).map_err(|why| fail(format!("bad bucket name '{bucket}': {why}")))?;
    let mut config = S3Config::new(bucket);
    let path = decode(path).map_err(&fail)?;
    if path.starts_with('/') {
        // S3 would take `s3://bkt//k` as the key `/k`; Rivulet's keys never start with '/', and
        // quietly reading it as `k` would touch another object.
        return Err(fail(format!(
            "the path '{path}' starts with '/': keys that start with '/' cannot be used (a \
             single '/' follows the bucket name)"
        )));
    }
    let prefix = path.trim_matches('/');
    if !prefix.is_empty() {
        rules::validate_key(op, prefix)
            .map_err(|e| fail(format!("bad path '{prefix}': {}", e.detail())))?;
    }
    config.prefix = prefix.to_string();

    let mut path_style = None;
    let mut seen = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = decode(name).map_err(&fail)?;
        let value = decode(value).map_err(&fail)?;
        if seen.contains(&name) {
            return Err(fail(format!("parameter '{name}' is given twice")));
        }
        if value.is_empty() {
            return Err(fail(format!("parameter '{name}' has no value")));
        }
        match name.as_str() {
            "endpoint" => {
                let ok = ["http://", "https://"]
                    .iter()
                    .any(|s| value.len() > s.len() && value.to_ascii_lowercase().starts_with(s));
                if !ok || url::Url::parse(&value).is_err() {
                    return Err(fail(format!(
                        "endpoint '{value}' is not an http:// or https:// URL"
                    )));
                }
                config.endpoint = Some(value.trim_end_matches('/').to_string());
            }
            "region" => config.region = Some(value),
            "contiguous_parts" => {
                config.contiguous_parts = parse_bool(&value).ok_or_else(|| {
                    fail(format!(
                        "contiguous_parts must be true or false, not '{value}'"
                    ))
                })?;
            }
            "path_style" => {
                path_style = Some(match value.to_ascii_lowercase().as_str() {
                    "true" | "1" | "yes" => true,
                    "false" | "0" | "no" => false,
                    _ => {
                        return Err(fail(format!(
                            "path_style must be true or false, not '{value}'"
                        )));
                    }
                });
            }
            "max_attempts" => {
                config.max_attempts = value.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
                    fail(format!(
                        "max_attempts must be a positive integer, not '{value}'"
                    ))
                })?;
            }
            "read_timeout" => {
                let read = humantime::parse_duration(&value).map_err(|e| {
                    fail(format!(
                        "read_timeout must be a duration such as 500ms, 10s or 2m, not '{value}' \
                         ({e})"
                    ))
                })?;
                // 0 would not mean "no timeout" but fail every request at once.
                if read.is_zero() {
                    return Err(fail(format!(
                        "read_timeout must be more than 0, not '{value}'"
                    )));
                }
                config.timeouts.read = Some(read);
            }
            _ => {
                return Err(fail(format!(
                    "unknown parameter '{name}' (accepted: {S3_PARAMS})"
                )));
            }
        }
        seen.push(name);
    }
    config.path_style = path_style.unwrap_or(config.endpoint.is_some());
    Ok((config, path))
}

/// A duration as `read_timeout=` reads it back, in its largest exact unit among s, ms and ns
/// (humantime's own format, `1m 30s`, has a space that a URL would have to escape).
fn url_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}ns", d.as_nanos())
    }
}

fn parse_bool(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Some(true),
        "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

/// S3's bucket naming rules, relaxed to allow the uppercase letters and underscores of legacy
/// buckets and some S3-compatible servers.
fn check_bucket(bucket: &str) -> Result<(), &'static str> {
    if bucket.is_empty() {
        return Err("the bucket is missing (s3://bucket/prefix)");
    }
    if !(3..=63).contains(&bucket.len()) {
        return Err("a bucket name has 3 to 63 characters");
    }
    if !bucket
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err("a bucket name has only letters, digits, '.', '-' and '_'");
    }
    let first_last = [bucket.as_bytes()[0], bucket.as_bytes()[bucket.len() - 1]];
    if !first_last.iter().all(u8::is_ascii_alphanumeric) {
        return Err("a bucket name starts and ends with a letter or digit");
    }
    Ok(())
}

/// Percent-decodes a URL component into UTF-8.
fn decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent-escape in '{s}' (expected %XX)"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("'{s}' does not decode to UTF-8"))
}

/// Percent-encodes everything but unreserved characters and `keep`.
fn encode(s: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') || keep.contains(&b)
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(url: &str) -> S3Config {
        match StoreUrl::parse(url).unwrap() {
            StoreUrl::S3(c) => c,
            other => panic!("{url} parsed as {other:?}"),
        }
    }

    fn bad(url: &str, needle: &str) {
        let err = StoreUrl::parse(url).expect_err(url);
        assert_eq!(err.kind(), StoreErrorKind::InvalidArgument, "{url}: {err}");
        let msg = err.to_string();
        assert!(msg.contains(url), "the error names the URL: {msg}");
        assert!(msg.contains(needle), "{url}: expected {needle:?} in {msg}");
    }

    #[test]
    fn s3_urls_with_parameters() {
        let c = s3(
            "s3://bucket/some/prefix/?endpoint=http://127.0.0.1:9000&path_style=true&region=us-east-1",
        );
        assert_eq!(c.bucket, "bucket");
        assert_eq!(c.prefix, "some/prefix");
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(c.region.as_deref(), Some("us-east-1"));
        assert!(c.path_style);
        assert_eq!(c.credentials, None);
        assert_eq!(c.max_attempts, crate::store::s3::DEFAULT_MAX_ATTEMPTS);

        let c = s3("s3://my-bucket");
        assert_eq!(
            (c.prefix.as_str(), c.endpoint.as_deref(), c.path_style),
            ("", None, false)
        );
        assert_eq!(s3("s3://my-bucket/").prefix, "");
        // path_style defaults to true with an endpoint, and can be turned off.
        assert!(s3("s3://bkt?endpoint=https://s3.example.com").path_style);
        assert!(!s3("s3://bkt?endpoint=https://s3.example.com&path_style=false").path_style);
        assert_eq!(s3("s3://bkt?max_attempts=2").max_attempts, 2);
        assert_eq!(s3("s3://bkt").timeouts, S3Timeouts::default());
        // The path is percent-decoded.
        assert_eq!(s3("s3://bkt/a%20b/c%3Fd").prefix, "a b/c?d");
        // An endpoint may be percent-encoded too.
        assert_eq!(
            s3("s3://bkt?endpoint=http%3A%2F%2Flocalhost%3A9000")
                .endpoint
                .as_deref(),
            Some("http://localhost:9000")
        );
    }

    #[test]
    fn bad_s3_urls_say_what_is_wrong() {
        bad("s3://", "bucket is missing");
        bad("s3:///prefix", "bucket is missing");
        bad("s3://ab", "3 to 63");
        bad("s3://bad$bucket", "letters, digits");
        bad("s3://-bucket", "starts and ends");
        bad("s3://bucket?endpoint=ftp://x", "not an http");
        bad("s3://bucket?endpoint=", "has no value");
        bad("s3://bucket?path_style=maybe", "path_style must be");
        bad("s3://bucket?max_attempts=0", "positive integer");
        bad(
            "s3://bucket?read_timeout=0",
            "read_timeout must be more than 0",
        );
        bad(
            "s3://bucket?read_timeout=0s",
            "read_timeout must be more than 0",
        );
        bad(
            "s3://bucket?read_timeout=soon",
            "read_timeout must be a duration",
        );
        bad(
            "s3://bucket?read_timeout=10",
            "read_timeout must be a duration",
        );
        bad(
            "s3://bucket?read_timeout=-1s",
            "read_timeout must be a duration",
        );
        bad("s3://bucket?read_timeout=", "has no value");
        bad("s3://bucket?read_timeout=1s&read_timeout=2s", "given twice");
        bad("s3://bucket?colour=blue", "unknown parameter 'colour'");
        bad("s3://bucket?region=a&region=b", "given twice");
        bad("s3://key:secret@bucket", "credentials do not belong");
        bad("s3://bucket:9000/x", "has a port");
        bad("s3://bucket/a/../b", "bad path");
        bad("s3://bucket/a#frag", "'#' is not allowed");
        bad("s3://bucket/%zz", "percent-escape");
        bad("gs://bucket", "unsupported scheme 'gs://'");
        bad("", "empty");
        bad("memory://", "no name");
        bad("memory://name/key", "without a path");
        bad("file://server/share", "must be local");
    }

    #[test]
    fn local_paths_and_file_urls() {
        assert_eq!(
            StoreUrl::parse("file:///tmp/data").unwrap(),
            StoreUrl::Local("/tmp/data".into())
        );
        assert_eq!(
            StoreUrl::parse("file://localhost/tmp/my%20data").unwrap(),
            StoreUrl::Local("/tmp/my data".into())
        );
        assert_eq!(
            StoreUrl::parse("/var/lib/x").unwrap(),
            StoreUrl::Local("/var/lib/x".into())
        );
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            StoreUrl::parse("rel/dir").unwrap(),
            StoreUrl::Local(cwd.join("rel/dir"))
        );
        assert_eq!(
            StoreUrl::parse("memory://t1").unwrap(),
            StoreUrl::Memory("t1".into())
        );
        assert_eq!(
            StoreUrl::parse("memory://t1/").unwrap(),
            StoreUrl::Memory("t1".into())
        );
    }

    #[test]
    fn object_urls_split_into_store_and_key() {
        let (store, key) =
            StoreUrl::parse_object("s3://bucket/dir/file.txt?endpoint=http://127.0.0.1:9000")
                .unwrap();
        assert_eq!(key, "dir/file.txt");
        let StoreUrl::S3(c) = &store else {
            panic!("{store:?}")
        };
        assert_eq!((c.bucket.as_str(), c.prefix.as_str()), ("bucket", ""));
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(
            store.to_string(),
            "s3://bucket?endpoint=http://127.0.0.1:9000"
        );

        assert_eq!(
            StoreUrl::parse_object("file:///tmp/x/file").unwrap(),
            (StoreUrl::Local("/tmp/x".into()), "file".to_string())
        );
        assert_eq!(
            StoreUrl::parse_object("/tmp/x/file.bin").unwrap(),
            (StoreUrl::Local("/tmp/x".into()), "file.bin".to_string())
        );
        assert_eq!(
            StoreUrl::parse_object("memory://name/a/key").unwrap(),
            (StoreUrl::Memory("name".into()), "a/key".to_string())
        );
        // The key is the path as written: empty segments are S3 keys of their own.
        let (_, key) = StoreUrl::parse_object("s3://bucket/k//lead.txt").unwrap();
        assert_eq!(key, "k//lead.txt");
        for url in [
            "s3://bucket",
            "s3://bucket/",
            "s3://bucket/dir/",
            // Once read as the key `slash.txt`: `rivulet rm` deleted another object.
            "s3://bucket//slash.txt",
            "s3://bucket/%2Fslash.txt",
            "memory://name",
            "/tmp/x/",
            "file:///",
        ] {
            let err = StoreUrl::parse_object(url).expect_err(url);
            assert_eq!(err.kind(), StoreErrorKind::InvalidArgument, "{url}");
            assert!(err.to_string().contains(url), "{err}");
        }
    }

    #[test]
    fn listing_urls_keep_the_path_as_written() {
        let listed = |url: &str| StoreUrl::parse_listing(url).unwrap().1;
        assert_eq!(listed("s3://bucket"), "");
        assert_eq!(listed("s3://bucket/"), "");
        assert_eq!(
            listed("s3://bucket/logs/?endpoint=http://127.0.0.1:9"),
            "logs/"
        );
        assert_eq!(listed("s3://bucket/lo"), "lo");
        assert_eq!(listed("s3://bucket/k//"), "k//");
        bad("s3://bucket//", "starts with '/'");
        assert!(StoreUrl::parse_listing("s3://bucket//x").is_err());
        assert_eq!(
            StoreUrl::parse_listing("/tmp/x").unwrap(),
            (StoreUrl::Local("/tmp/x".into()), String::new())
        );
    }

    #[test]
    fn display_round_trips() {
        for url in [
            "s3://bucket",
            "s3://bucket/a%20b/c?endpoint=http://127.0.0.1:9000&region=us-east-1",
            "s3://bucket?endpoint=http://127.0.0.1:9000&path_style=false",
            "s3://bucket/p?path_style=true&max_attempts=3",
            "s3://bucket?max_attempts=2&read_timeout=1s",
            "s3://bucket?read_timeout=500ms",
            "s3://bucket?read_timeout=1500ms",
            "s3://bucket?read_timeout=1ns",
            "memory://name",
            "file:///tmp/some%20dir",
        ] {
            let parsed = StoreUrl::parse(url).unwrap();
            assert_eq!(parsed.to_string(), url);
            assert_eq!(StoreUrl::parse(&parsed.to_string()).unwrap(), parsed);
        }
    }

    #[test]
    fn read_timeout_takes_a_duration() {
        let read = |url: &str| s3(url).timeouts.read;
        for (value, want) in [
            ("500ms", Duration::from_millis(500)),
            ("10s", Duration::from_secs(10)),
            ("2m", Duration::from_secs(120)),
            ("1m30s", Duration::from_secs(90)),
            ("1m%2030s", Duration::from_secs(90)),
            ("1h", Duration::from_secs(3600)),
        ] {
            assert_eq!(
                read(&format!("s3://bkt?read_timeout={value}")),
                Some(want),
                "{value}"
            );
        }
        // Only the read timeout changes.
        let c = s3("s3://bkt?read_timeout=7s&max_attempts=2");
        assert_eq!(c.max_attempts, 2);
        assert_eq!(
            c.timeouts,
            S3Timeouts {
                read: Some(Duration::from_secs(7)),
                ..S3Timeouts::default()
            }
        );
        // The canonical form: the largest exact unit, no space; the default is left out.
        let canonical = |url: &str| StoreUrl::parse(url).unwrap().to_string();
        assert_eq!(
            canonical("s3://bkt?read_timeout=1m%2030s"),
            "s3://bkt?read_timeout=90s"
        );
        assert_eq!(
            canonical("s3://bkt?read_timeout=1.5s"),
            "s3://bkt?read_timeout=1500ms"
        );
        let default = S3Timeouts::default().read.unwrap();
        assert_eq!(
            canonical(&format!("s3://bkt?read_timeout={}s", default.as_secs())),
            "s3://bkt"
        );
        // The error names the parameter and the URL, and lists it among the accepted ones.
        let err = StoreUrl::parse("s3://bkt?read_timeout=forever").unwrap_err();
        assert!(
            err.to_string().contains("read_timeout must be a duration")
                && err.to_string().contains("'forever'"),
            "{err}"
        );
        bad("s3://bkt?readtimeout=1s", "read_timeout");
    }

    #[tokio::test]
    async fn open_store_builds_each_backend() {
        let mem = open_store(&StoreUrl::parse("memory://url-test-open").unwrap())
            .await
            .unwrap();
        assert_eq!(mem.describe(), "memory://url-test-open");
        let s3 = open_store(
            &StoreUrl::parse("s3://bucket/pre?endpoint=http://127.0.0.1:1&region=us-east-1")
                .unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(s3.describe(), "s3://bucket/pre");
        let dir = tempfile::tempdir().unwrap();
        let local = open_store(&StoreUrl::Local(dir.path().to_path_buf()))
            .await
            .unwrap();
        assert!(
            local.describe().contains(dir.path().to_str().unwrap()),
            "{}",
            local.describe()
        );
    }
}

//! `ls`, `stat` and `rm`: looking at and deleting objects.

use anyhow::{Result, anyhow, bail};
use fs_core::store::{ListRequest, ObjectStoreExt, StoreUrl};

use super::output::{Out, Reported, list_time, report, rfc3339};
use super::{Env, location, size};

/// One line of a listing.
#[derive(Debug, PartialEq, Eq)]
enum Entry<'a> {
    Prefix(&'a str),
    Object(&'a fs_core::store::ObjectSummary),
}

impl Entry<'_> {
    fn key(&self) -> &str {
        match self {
            Entry::Prefix(p) => p,
            Entry::Object(o) => &o.key,
        }
    }
}

/// Formats one listing line. `base` is stripped from keys (the listed "directory").
fn format_entry(entry: &Entry<'_>, base: &str, long: bool) -> String {
    let name = entry.key().strip_prefix(base).unwrap_or(entry.key());
    match (entry, long) {
        (Entry::Prefix(_), false) => name.to_string(),
        (Entry::Prefix(_), true) => format!("{:>30} {name}", "PRE"),
        (Entry::Object(_), false) => name.to_string(),
        (Entry::Object(o), true) => format!("{} {:>10} {name}", list_time(o.last_modified), o.size),
    }
}

/// `rivulet ls URL [-l] [-r]`.
pub async fn ls(env: &Env, url: &str, long: bool, recursive: bool) -> Result<()> {
    let (store_url, prefix) = location::listing(url)?;
    let store = env
        .open_store_to_read(&store_url)
        .await?
        .ok_or_else(|| anyhow!("no such directory {store_url}"))?;
    // Names are shown relative to the listed "directory", full keys when recursive.
    let base = if recursive {
        ""
    } else {
        &prefix[..prefix.rfind('/').map_or(0, |i| i + 1)]
    };
    let mut out = Out::new();
    let mut continuation = None;
    let mut listed = 0usize;
    loop {
        let request = ListRequest {
            prefix: prefix.clone(),
            delimiter: (!recursive).then(|| "/".to_string()),
            continuation: continuation.take(),
            max_keys: None,
        };
        let page = env
            .retry_for(&store_url)
            .run(|| store.list(request.clone()))
            .await?;
        let mut entries: Vec<Entry<'_>> = page
            .common_prefixes
            .iter()
            .map(|p| Entry::Prefix(p))
            .chain(page.objects.iter().map(Entry::Object))
            .collect();
        entries.sort_by(|a, b| a.key().cmp(b.key()));
        for entry in &entries {
            out.line(format_args!("{}", format_entry(entry, base, long)))?;
        }
        listed += entries.len();
        match page.next {
            Some(next) => continuation = Some(next),
            None => break,
        }
    }
    out.flush()?;
    // Like `aws s3 ls`: a prefix that matches nothing is an error, as a missing local path is
    // (found above). An empty bucket, or an empty local folder, is not.
    if listed == 0 && !prefix.is_empty() && !matches!(store_url, StoreUrl::Local(_)) {
        bail!("nothing matches '{prefix}' in {store_url}");
    }
    Ok(())
}

/// `rivulet stat URL`.
pub async fn stat(env: &Env, url: &str) -> Result<()> {
    let (store_url, key) = location::object(url)?;
    let missing = || Env::no_such_object(&store_url, &key);
    let store = env
        .open_store_to_read(&store_url)
        .await?
        .ok_or_else(missing)?;
    let Some(meta) = env
        .retry_for(&store_url)
        .run(|| store.head_opt(&key))
        .await?
    else {
        return Err(env.missing_object(&store, &store_url, &key).await);
    };
    let mut out = Out::new();
    out.line(format_args!("Key:           {}", meta.key))?;
    out.line(format_args!("Store:         {store_url}"))?;
    out.line(format_args!(
        "Size:          {} ({})",
        meta.size,
        size::human(meta.size)
    ))?;
    out.line(format_args!("ETag:          \"{}\"", meta.etag))?;
    out.line(format_args!(
        "Last-Modified: {}",
        rfc3339(meta.last_modified)
    ))?;
    out.line(format_args!(
        "Content-Type:  {}",
        meta.headers.content_type.as_deref().unwrap_or("-")
    ))?;
    let h = &meta.headers;
    for (name, value) in [
        ("Content-Encoding:", &h.content_encoding),
        ("Content-Disposition:", &h.content_disposition),
        ("Content-Language:", &h.content_language),
        ("Cache-Control:", &h.cache_control),
        ("Expires:", &h.expires),
    ] {
        if let Some(value) = value {
            out.line(format_args!("{name:<14} {value}"))?;
        }
    }
    if meta.metadata.is_empty() {
        out.line(format_args!("Metadata:      -"))?;
    } else {
        out.line(format_args!("Metadata:"))?;
        for (name, value) in &meta.metadata {
            out.line(format_args!("  {name}: {value}"))?;
        }
    }
    out.flush()
}

/// `rivulet rm URL... [-f]`: every URL is tried; each failure is reported on its own line.
pub async fn rm(env: &Env, urls: &[String], force: bool) -> Result<()> {
    if let [url] = urls {
        return rm_one(env, url, force).await;
    }
    let mut failed = false;
    for url in urls {
        if let Err(e) = rm_one(env, url, force).await {
            report(&format!("rm {url}"), &e);
            failed = true;
        }
    }
    if failed { Err(Reported.into()) } else { Ok(()) }
}

async fn rm_one(env: &Env, url: &str, force: bool) -> Result<()> {
    let (store_url, key) = location::object(url)?;
    // Looked up read-only first: removing nothing must not make a plain directory a store.
    let reader = match env.open_store_to_read(&store_url).await? {
        Some(store) => store,
        None if force => return Ok(()),
        None => return Err(Env::no_such_object(&store_url, &key)),
    };
    if env
        .retry_for(&store_url)
        .run(|| reader.head_opt(&key))
        .await?
        .is_none()
    {
        if force {
            return Ok(());
        }
        return Err(env.missing_object(&reader, &store_url, &key).await);
    }
    let store = match store_url {
        StoreUrl::Local(_) => env.open_store(&store_url).await?,
        _ => reader,
    };
    env.retry_for(&store_url).run(|| store.delete(&key)).await?;
    env.say(format_args!("removed {key}"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fs_core::store::ObjectSummary;
    use std::time::{Duration, SystemTime};

    #[test]
    fn listing_lines_look_like_aws_s3_ls() {
        let object = ObjectSummary {
            key: "logs/app.log".into(),
            size: 1234,
            etag: "e".into(),
            last_modified: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
        };
        let entry = Entry::Object(&object);
        assert_eq!(format_entry(&entry, "logs/", false), "app.log");
        assert_eq!(
            format_entry(&entry, "logs/", true),
            "2023-11-14 22:13:20       1234 app.log"
        );
        assert_eq!(
            format_entry(&entry, "", true),
            "2023-11-14 22:13:20       1234 logs/app.log"
        );
        let dir = Entry::Prefix("logs/old/");
        assert_eq!(format_entry(&dir, "logs/", false), "old/");
        assert_eq!(
            format_entry(&dir, "logs/", true),
            "                           PRE old/"
        );
        // The PRE column lines up with the sizes.
        let long_object = format_entry(&entry, "logs/", true);
        let long_dir = format_entry(&dir, "logs/", true);
        assert_eq!(long_object.find(" app.log"), long_dir.find(" old/"));
    }
}

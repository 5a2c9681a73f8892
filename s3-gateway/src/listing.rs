//! Listing a bucket one page at a time, with S3's paging (max-keys, start-after, continuation
//! tokens) on top of the store's own pages.
//!
//! The store's continuation tokens only resume at the start of one of its pages, while a client
//! page may end anywhere inside one (max-keys below the store's page size, the hidden bucket
//! marker, start-after). So the gateway's token is a [`Cursor`]: the store token of the page to
//! fetch again plus the last name already returned; resuming re-reads that one store page and
//! skips what was returned. `start-after` (and ListObjects' `marker`) has no store equivalent
//! and is applied by skipping from the start of the listing.

use std::time::SystemTime;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use fs_core::store::{DynStore, ListRequest};
use s3s::{S3ErrorCode, S3Result};
use serde::{Deserialize, Serialize};

use crate::buckets::bucket_prefix;
use crate::errors::{s3_err, to_s3};

/// Largest page a client gets, as on S3.
pub const MAX_KEYS: usize = 1000;

/// Where a listing resumes. Serialized into the opaque continuation token clients pass back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// The store's token for the page to read (none: the first page).
    #[serde(rename = "s", default, skip_serializing_if = "Option::is_none")]
    pub store_token: Option<String>,
    /// Skip every name up to and including this one (bucket-relative).
    #[serde(rename = "a", default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

impl Cursor {
    /// The opaque token form.
    pub fn encode(&self) -> String {
        // Serializing two optional strings cannot fail.
        let json = serde_json::to_vec(self).unwrap_or_default();
        URL_SAFE_NO_PAD.encode(json)
    }

    /// Parses a token made by [`Cursor::encode`]; anything else is `InvalidArgument`.
    pub fn decode(token: &str) -> S3Result<Cursor> {
        let invalid = || {
            s3_err(
                S3ErrorCode::InvalidArgument,
                "The continuation token provided is incorrect",
            )
        };
        let json = URL_SAFE_NO_PAD
            .decode(token.trim())
            .map_err(|_| invalid())?;
        serde_json::from_slice(&json).map_err(|_| invalid())
    }
}

/// One object of a listing, its key relative to the bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub size: u64,
    pub etag: String,
    pub last_modified: Option<SystemTime>,
}

/// One page of a bucket listing.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub objects: Vec<Entry>,
    pub common_prefixes: Vec<String>,
    /// Set when more follows: where the next page starts.
    pub next: Option<Cursor>,
    /// The last name (key or common prefix) of this page: ListObjects' NextMarker.
    pub last_name: Option<String>,
}

/// What to list.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub prefix: String,
    pub delimiter: Option<String>,
    pub max_keys: usize,
    pub cursor: Cursor,
}

enum Item {
    Object(Entry),
    Prefix(String),
}

impl Item {
    fn name(&self) -> &str {
        match self {
            Item::Object(e) => &e.key,
            Item::Prefix(p) => p,
        }
    }
}

/// Lists one page of `bucket` (which the caller has checked exists).
pub async fn list_bucket(store: &DynStore, bucket: &str, query: Query) -> S3Result<Page> {
    let root = bucket_prefix(bucket);
    let max = query.max_keys.min(MAX_KEYS);
    let mut page = Page::default();
    if max == 0 {
        return Ok(page);
    }
    // An empty delimiter is no delimiter (some servers would treat `delimiter=` as one).
    let delimiter = query.delimiter.filter(|d| !d.is_empty());
    let mut store_token = query.cursor.store_token;
    let after = query.cursor.after;
    let mut count = 0usize;
    loop {
        let store_page = store
            .list(ListRequest {
                prefix: format!("{root}{}", query.prefix),
                delimiter: delimiter.clone(),
                continuation: store_token.clone(),
                max_keys: Some(MAX_KEYS),
            })
            .await
            .map_err(to_s3)?;
        for item in merge(&root, store_page.objects, store_page.common_prefixes) {
            // The bucket's marker (relative key "") is not an object of the bucket.
            if item.name().is_empty() {
                continue;
            }
            if after.as_deref().is_some_and(|a| item.name() <= a) {
                continue;
            }
            if count == max {
                page.next = Some(Cursor {
                    store_token,
                    after: page.last_name.clone(),
                });
                return Ok(page);
            }
            count += 1;
            page.last_name = Some(item.name().to_string());
            match item {
                Item::Object(e) => page.objects.push(e),
                Item::Prefix(p) => page.common_prefixes.push(p),
            }
        }
        match store_page.next {
            Some(next) => store_token = Some(next),
            None => return Ok(page),
        }
    }
}

/// The store page's objects and common prefixes as one list in key order, relative to the
/// bucket. Entries outside the bucket (which a store never returns for this prefix) are dropped.
fn merge(
    root: &str,
    objects: Vec<fs_core::store::ObjectSummary>,
    prefixes: Vec<String>,
) -> Vec<Item> {
    let mut items: Vec<Item> = objects
        .into_iter()
        .filter_map(|o| {
            let key = o.key.strip_prefix(root)?.to_string();
            Some(Item::Object(Entry {
                key,
                size: o.size,
                etag: o.etag,
                last_modified: o.last_modified,
            }))
        })
        .chain(
            prefixes
                .into_iter()
                .filter_map(|p| p.strip_prefix(root).map(|p| Item::Prefix(p.to_string()))),
        )
        .collect();
    items.sort_by(|a, b| a.name().cmp(b.name()));
    items
}

/// Characters S3's `encoding-type=url` leaves as they are: RFC 3986's unreserved set and `/`.
const URL_ENCODE_SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// A key or prefix as `encoding-type=url` wants it.
pub fn url_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, URL_ENCODE_SET).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use fs_core::store::PutOptions;
    use fs_core::store::memory::MemoryStore;
    use std::sync::Arc;

    async fn store_with(keys: &[&str]) -> DynStore {
        let store: DynStore = Arc::new(MemoryStore::new());
        for k in keys {
            store
                .put(k, Bytes::from_static(b"x"), PutOptions::default())
                .await
                .unwrap();
        }
        store
    }

    async fn all_names(store: &DynStore, mut query: Query) -> Vec<Vec<String>> {
        let mut pages = Vec::new();
        loop {
            let page = list_bucket(store, "bkt", query.clone()).await.unwrap();
            let mut names: Vec<String> = page.objects.iter().map(|o| o.key.clone()).collect();
            names.extend(page.common_prefixes.iter().cloned());
            names.sort();
            pages.push(names);
            match page.next {
                // Through the token form, as a client would.
                Some(c) => query.cursor = Cursor::decode(&c.encode()).unwrap(),
                None => return pages,
            }
        }
    }

    #[tokio::test]
    async fn pages_hide_the_marker_and_resume_inside_store_pages() {
        let store = store_with(&["bkt/", "bkt/a", "bkt/b/1", "bkt/b/2", "bkt/c", "other/z"]).await;
        let query = Query {
            max_keys: 2,
            ..Query::default()
        };
        assert_eq!(
            all_names(&store, query.clone()).await,
            [vec!["a", "b/1"], vec!["b/2", "c"]]
        );
        let grouped = Query {
            delimiter: Some("/".into()),
            ..query.clone()
        };
        assert_eq!(
            all_names(&store, grouped).await,
            [vec!["a", "b/"], vec!["c"]]
        );
        let after = Query {
            cursor: Cursor {
                store_token: None,
                after: Some("b/1".into()),
            },
            ..query.clone()
        };
        assert_eq!(all_names(&store, after).await, [vec!["b/2", "c"]]);
        let prefixed = Query {
            prefix: "b/".into(),
            max_keys: 1000,
            ..Query::default()
        };
        assert_eq!(all_names(&store, prefixed).await, [vec!["b/1", "b/2"]]);
    }

    #[test]
    fn bad_tokens_are_invalid_arguments_and_keys_url_encode_like_s3() {
        assert_eq!(
            Cursor::decode("not a token!").unwrap_err().code().as_str(),
            "InvalidArgument"
        );
        assert_eq!(url_encode("a b/c+d~é"), "a%20b/c%2Bd~%C3%A9");
    }
}

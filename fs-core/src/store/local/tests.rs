use std::collections::BTreeSet;

use futures::StreamExt;
use proptest::prelude::*;

use super::*;
use crate::store::ObjectStoreExt;

const MIB: usize = 1024 * 1024;

fn open() -> (tempfile::TempDir, LocalStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = LocalStore::open(dir.path().join("data")).expect("open");
    (dir, store)
}

fn opts(content_type: Option<&str>, meta: &[(&str, &str)]) -> PutOptions {
    PutOptions {
        condition: PutCondition::None,
        headers: ContentHeaders {
            content_type: content_type.map(str::to_string),
            ..ContentHeaders::default()
        },
        metadata: meta
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn cond(condition: PutCondition) -> PutOptions {
    PutOptions {
        condition,
        ..Default::default()
    }
}

async fn put(store: &LocalStore, key: &str, body: &[u8]) -> String {
    store
        .put(key, Bytes::copy_from_slice(body), PutOptions::default())
        .await
        .expect("put")
        .etag
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn names(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn sys(store: &LocalStore, sub: &str) -> PathBuf {
    store.root().join(SYS_DIR).join(sub)
}

fn keys(objects: &[ObjectSummary]) -> Vec<&str> {
    objects.iter().map(|o| o.key.as_str()).collect()
}

/// Every page of a listing, as (objects, common prefixes, next) per page.
async fn all_pages(
    store: &LocalStore,
    prefix: &str,
    delimiter: Option<&str>,
    max_keys: usize,
) -> Vec<(Vec<String>, Vec<String>, Option<String>)> {
    let mut pages = Vec::new();
    let mut continuation = None;
    loop {
        let page = store
            .list(ListRequest {
                prefix: prefix.to_string(),
                delimiter: delimiter.map(str::to_string),
                continuation: continuation.take(),
                max_keys: Some(max_keys),
            })
            .await
            .expect("list");
        let next = page.next.clone();
        pages.push((
            page.objects.iter().map(|o| o.key.clone()).collect(),
            page.common_prefixes.clone(),
            next.clone(),
        ));
        assert!(pages.len() < 10_000, "listing does not terminate");
        match next {
            Some(n) => continuation = Some(n),
            None => return pages,
        }
    }
}

/// The same pages computed by the shared rules over a sorted in-memory key set.
fn model_pages(
    all: &BTreeSet<String>,
    prefix: &str,
    delimiter: Option<&str>,
    max_keys: usize,
) -> Vec<(Vec<String>, Vec<String>, Option<String>)> {
    let mut pages = Vec::new();
    let mut continuation = None;
    loop {
        let req = ListRequest {
            prefix: prefix.to_string(),
            delimiter: delimiter.map(str::to_string),
            continuation: continuation.take(),
            max_keys: Some(max_keys),
        };
        let entries = all.iter().map(|k| ObjectSummary {
            key: k.clone(),
            size: 0,
            etag: String::new(),
            last_modified: None,
        });
        let page = rules::list_page(entries, &req);
        let next = page.next.clone();
        pages.push((
            page.objects.iter().map(|o| o.key.clone()).collect(),
            page.common_prefixes.clone(),
            next.clone(),
        ));
        match next {
            Some(n) => continuation = Some(n),
            None => return pages,
        }
    }
}

#[tokio::test]
async fn put_get_head_round_trip_as_plain_files() {
    let (_dir, store) = open();
    let body = b"hello world";
    let res = store
        .put(
            "docs/readme.txt",
            Bytes::from_static(body),
            opts(Some("text/plain"), &[("owner", "me")]),
        )
        .await
        .unwrap();
    assert_eq!(res.etag, rules::md5_hex(body));
    // The object is the plain file users see.
    assert_eq!(
        fs::read(store.root().join("docs/readme.txt")).unwrap(),
        body
    );

    let got = store.get("docs/readme.txt", None).await.unwrap();
    assert_eq!(&got.body[..], body);
    assert_eq!(got.range, 0..11);
    assert_eq!(got.meta.size, 11);
    assert_eq!(got.meta.etag, res.etag);
    assert_eq!(got.meta.headers.content_type.as_deref(), Some("text/plain"));
    assert_eq!(
        got.meta.metadata.get("owner").map(String::as_str),
        Some("me")
    );
    assert!(got.meta.last_modified.is_some());
    assert_eq!(store.head("docs/readme.txt").await.unwrap(), got.meta);

    // Overwriting replaces data and metadata.
    let etag2 = put(&store, "docs/readme.txt", b"bye").await;
    let head = store.head("docs/readme.txt").await.unwrap();
    assert_eq!(head.etag, etag2);
    assert_eq!(head.size, 3);
    assert_eq!(head.headers.content_type, None);
    assert!(head.metadata.is_empty());
    assert_eq!(
        &store.get("docs/readme.txt", None).await.unwrap().body[..],
        b"bye"
    );
}

#[tokio::test]
async fn ranged_reads_follow_s3() {
    let (_dir, store) = open();
    put(&store, "r", b"0123456789").await;
    let got = store.get("r", Some(2..5)).await.unwrap();
    assert_eq!((&got.body[..], got.range), (&b"234"[..], 2..5));
    assert_eq!(got.meta.size, 10);
    let got = store.get("r", Some(8..100)).await.unwrap();
    assert_eq!((&got.body[..], got.range), (&b"89"[..], 8..10));
    for bad in [10..12, 11..20] {
        let err = store.get("r", Some(bad)).await.unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::InvalidRange);
    }
    #[allow(clippy::reversed_empty_ranges)]
    let reversed = 5..3;
    assert_eq!(
        store.get("r", Some(reversed)).await.unwrap_err().kind(),
        StoreErrorKind::InvalidRange
    );
    put(&store, "empty", b"").await;
    let got = store.get("empty", Some(0..5)).await.unwrap();
    assert!(got.body.is_empty());
    assert_eq!(got.range, 0..0);
}

#[tokio::test]
async fn missing_objects_and_directories_are_not_found() {
    let (_dir, store) = open();
    put(&store, "a/b", b"x").await;
    for key in ["nope", "a", "a/", "a/b/c", "a/b/"] {
        assert_eq!(
            store.get(key, None).await.unwrap_err().kind(),
            StoreErrorKind::NotFound,
            "{key}"
        );
        assert_eq!(
            store.head(key).await.unwrap_err().kind(),
            StoreErrorKind::NotFound,
            "{key}"
        );
    }
}

#[tokio::test]
async fn delete_removes_file_sidecar_and_empty_parents_but_never_the_root() {
    let (_dir, store) = open();
    put(&store, "x/y/z/f", b"1").await;
    put(&store, "x/keep", b"2").await;
    let sidecar = store.inner.sidecar_path("x/y/z/f");
    assert!(sidecar.exists());

    store.delete("x/y/z/f").await.unwrap();
    assert_eq!(
        store.head("x/y/z/f").await.unwrap_err().kind(),
        StoreErrorKind::NotFound
    );
    assert!(!sidecar.exists());
    assert!(
        !store.root().join("x/y").exists(),
        "empty parents are removed"
    );
    assert!(store.root().join("x/keep").is_file());

    store.delete("x/y/z/f").await.unwrap(); // missing is fine
    store.delete("never/was").await.unwrap();

    store.delete("x/keep").await.unwrap();
    assert!(!store.root().join("x").exists());
    assert!(store.root().is_dir());
    assert_eq!(names(store.root()), vec![SYS_DIR.to_string()]);

    // Deleting a key that names a directory of other keys deletes nothing.
    put(&store, "d/e", b"3").await;
    store.delete("d").await.unwrap();
    assert_eq!(&store.get("d/e", None).await.unwrap().body[..], b"3");
}

#[tokio::test]
async fn listing_is_in_byte_order_with_delimiter_and_paging() {
    let (_dir, store) = open();
    // '-' < '.' < '/' < '0': a directory must sort as "a/", not as "a".
    let all = ["a-b", "a.b", "a/x", "a/y/z", "a0", "b", "c/d/e", "c/f"];
    for (i, key) in all.iter().enumerate() {
        put(&store, key, &vec![b'x'; i + 1]).await;
    }
    let flat = store.list_all("").await.unwrap();
    assert_eq!(keys(&flat), all.to_vec());
    for (i, o) in flat.iter().enumerate() {
        assert_eq!(o.size, i as u64 + 1);
        assert_eq!(o.etag, rules::md5_hex(&vec![b'x'; i + 1]));
        assert!(o.last_modified.is_some());
    }

    let page = store
        .list(ListRequest {
            delimiter: Some("/".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(keys(&page.objects), vec!["a-b", "a.b", "a0", "b"]);
    assert_eq!(page.common_prefixes, vec!["a/", "c/"]);
    assert!(page.next.is_none());

    let pages = all_pages(&store, "", Some("/"), 2).await;
    let flat_names: Vec<Vec<String>> = pages
        .iter()
        .map(|(o, p, _)| {
            let mut v: Vec<String> = o.iter().chain(p).cloned().collect();
            v.sort();
            v
        })
        .collect();
    assert_eq!(
        flat_names,
        vec![vec!["a-b", "a.b"], vec!["a/", "a0"], vec!["b", "c/"]]
            .into_iter()
            .map(|v| v.into_iter().map(String::from).collect::<Vec<_>>())
            .collect::<Vec<_>>()
    );
    let set: BTreeSet<String> = all.iter().map(|k| k.to_string()).collect();
    for (prefix, delimiter, max) in [
        ("", None, 3),
        ("", Some("/"), 1),
        ("a", None, 2),
        ("a", Some("/"), 2),
        ("a/", Some("/"), 1),
        ("c/d", Some("/"), 5),
        ("c/d", None, 5),
        ("c/", Some("-"), 1),
        ("zzz", Some("/"), 5),
    ] {
        assert_eq!(
            all_pages(&store, prefix, delimiter, max).await,
            model_pages(&set, prefix, delimiter, max),
            "prefix {prefix:?} delimiter {delimiter:?} max {max}"
        );
    }
    let page = store
        .list(ListRequest {
            prefix: "a/".into(),
            delimiter: Some("/".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(keys(&page.objects), vec!["a/x"]);
    assert_eq!(page.common_prefixes, vec!["a/y/"]);
}

#[tokio::test]
async fn directory_markers_are_objects_ending_in_slash() {
    let (_dir, store) = open();
    let etag = put(&store, "photos/", b"").await;
    assert!(store.root().join("photos").join(DIR_MARKER).is_file());
    let head = store.head("photos/").await.unwrap();
    assert_eq!(
        (head.size, head.etag.as_str()),
        (0, rules::md5_hex(b"").as_str())
    );
    assert_eq!(head.etag, etag);

    let root = store
        .list(ListRequest {
            delimiter: Some("/".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(root.objects.is_empty());
    assert_eq!(root.common_prefixes, vec!["photos/"]);
    let inside = store
        .list(ListRequest {
            prefix: "photos/".into(),
            delimiter: Some("/".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(keys(&inside.objects), vec!["photos/"]);
    assert_eq!(inside.objects[0].size, 0);

    put(&store, "photos/a.jpg", b"jpg").await;
    put(&store, "photos/2024/", b"").await;
    let inside = store
        .list(ListRequest {
            prefix: "photos/".into(),
            delimiter: Some("/".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(keys(&inside.objects), vec!["photos/", "photos/a.jpg"]);
    assert_eq!(inside.common_prefixes, vec!["photos/2024/"]);
    assert_eq!(
        keys(&store.list_all("").await.unwrap()),
        vec!["photos/", "photos/2024/", "photos/a.jpg"]
    );

    store.delete("photos/a.jpg").await.unwrap();
    store.delete("photos/2024/").await.unwrap();
    assert!(!store.root().join("photos/2024").exists());
    assert!(
        store.root().join("photos").is_dir(),
        "the marker keeps the directory"
    );
    store.delete("photos/").await.unwrap();
    assert!(!store.root().join("photos").exists());
    assert!(store.list_all("").await.unwrap().is_empty());
}

#[tokio::test]
async fn invalid_and_reserved_keys_are_rejected() {
    let (_dir, store) = open();
    let long_segment = format!("d/{}", "s".repeat(256));
    let long_key = "k/".repeat(513);
    let bad = [
        "",
        "/abs",
        "..",
        "../x",
        "a/../b",
        "a/./b",
        "a\0b",
        ".rivulet-store",
        ".rivulet-store/",
        ".rivulet-store/x",
        ".rivulet-store/meta/x",
        "a//b",
        "a//",
        "x/.rivulet-dir-marker",
        ".rivulet-dir-marker/y",
        long_segment.as_str(),
        long_key.as_str(),
    ];
    for key in bad {
        let kind = |r: Result<(), StoreError>| r.unwrap_err().kind();
        let body = Bytes::from_static(b"x");
        assert_eq!(
            kind(store.put(key, body, PutOptions::default()).await.map(drop)),
            StoreErrorKind::InvalidKey,
            "put {key:?}"
        );
        assert_eq!(
            kind(store.get(key, None).await.map(drop)),
            StoreErrorKind::InvalidKey
        );
        assert_eq!(
            kind(store.head(key).await.map(drop)),
            StoreErrorKind::InvalidKey
        );
        assert_eq!(kind(store.delete(key).await), StoreErrorKind::InvalidKey);
        assert_eq!(
            kind(
                store
                    .create_multipart(key, PutOptions::default())
                    .await
                    .map(drop)
            ),
            StoreErrorKind::InvalidKey
        );
    }
    let err = store
        .put("a//b", Bytes::new(), PutOptions::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("empty segment"), "{err}");
    // Nothing was created, and the store's own files are untouched.
    assert_eq!(names(store.root()), vec![SYS_DIR.to_string()]);
    assert!(sys(&store, "lock").is_file());
}

#[tokio::test]
async fn internal_directory_is_never_listed() {
    let (_dir, store) = open();
    put(&store, "z", b"1").await;
    store
        .create_multipart("up", PutOptions::default())
        .await
        .unwrap();
    assert_eq!(keys(&store.list_all("").await.unwrap()), vec!["z"]);
    let page = store
        .list(ListRequest {
            delimiter: Some("/".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(keys(&page.objects), vec!["z"]);
    assert!(page.common_prefixes.is_empty());
    for prefix in [".rivulet-store/", ".rivulet-store/meta/", ".rivulet", "../"] {
        assert!(store.list_all(prefix).await.unwrap().is_empty(), "{prefix}");
    }
}

#[tokio::test]
async fn keys_that_conflict_with_the_file_system_fail_clearly() {
    let (_dir, store) = open();
    put(&store, "a/b", b"inner").await;
    let err = store
        .put("a", Bytes::from_static(b"x"), PutOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::InvalidKey);
    assert!(err.to_string().contains("'a/'"), "{err}");

    let err = store
        .put("a/b/c", Bytes::from_static(b"x"), PutOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::InvalidKey);
    assert!(err.to_string().contains("'a/b' is a file"), "{err}");
    let err = store
        .put("a/b/c/d", Bytes::from_static(b"x"), PutOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::InvalidKey);
    assert!(!store.root().join("a/b/c").exists());

    // Nothing was damaged.
    assert_eq!(&store.get("a/b", None).await.unwrap().body[..], b"inner");
    assert_eq!(keys(&store.list_all("").await.unwrap()), vec!["a/b"]);
    assert!(fs::read_dir(sys(&store, "tmp")).unwrap().next().is_none());
}

#[tokio::test]
async fn conditional_puts_follow_s3() {
    let (_dir, store) = open();
    let body = |b: &'static [u8]| Bytes::from_static(b);
    let first = store
        .put("k", body(b"one"), cond(PutCondition::IfNoneMatch))
        .await
        .unwrap();
    let err = store
        .put("k", body(b"two"), cond(PutCondition::IfNoneMatch))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::PreconditionFailed);
    assert_eq!(&store.get("k", None).await.unwrap().body[..], b"one");

    let second = store
        .put(
            "k",
            body(b"two"),
            cond(PutCondition::IfMatch(first.etag.clone())),
        )
        .await
        .unwrap();
    let err = store
        .put(
            "k",
            body(b"three"),
            cond(PutCondition::IfMatch(first.etag.clone())),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::PreconditionFailed);
    assert_eq!(&store.get("k", None).await.unwrap().body[..], b"two");
    // Quoted ETags are accepted.
    store
        .put(
            "k",
            body(b"three"),
            cond(PutCondition::IfMatch(format!("\"{}\"", second.etag))),
        )
        .await
        .unwrap();
    assert_eq!(&store.get("k", None).await.unwrap().body[..], b"three");

    let err = store
        .put(
            "missing",
            body(b"x"),
            cond(PutCondition::IfMatch(first.etag)),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::NotFound);
    assert!(!store.root().join("missing").exists());

    // A file placed by hand is matched on its MD5.
    fs::write(store.root().join("manual"), b"by hand").unwrap();
    let err = store
        .put("manual", body(b"x"), cond(PutCondition::IfNoneMatch))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::PreconditionFailed);
    store
        .put(
            "manual",
            body(b"x"),
            cond(PutCondition::IfMatch(rules::md5_hex(b"by hand"))),
        )
        .await
        .unwrap();
    assert_eq!(&store.get("manual", None).await.unwrap().body[..], b"x");
    // Failed conditions leave no temporary files behind.
    assert!(fs::read_dir(sys(&store, "tmp")).unwrap().next().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_create_only_puts_have_one_winner_across_handles() {
    let (dir, a) = open();
    // A second, independently opened store on the same directory: only the file lock
    // excludes it (as it would another process).
    let b = LocalStore::open(dir.path().join("data")).unwrap();
    let tasks: Vec<_> = (0..16u8)
        .map(|i| {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                let r = store
                    .put(
                        "race",
                        Bytes::from(vec![i; 64]),
                        cond(PutCondition::IfNoneMatch),
                    )
                    .await;
                (i, r)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        let (i, r) = task.await.unwrap();
        match r {
            Ok(_) => winners.push(i),
            Err(e) => assert_eq!(e.kind(), StoreErrorKind::PreconditionFailed),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    assert_eq!(
        &a.get("race", None).await.unwrap().body[..],
        &vec![winners[0]; 64][..]
    );
}

#[tokio::test]
async fn multipart_happy_path_gives_s3_etag_and_leaves_nothing_behind() {
    let (_dir, store) = open();
    let key = "big/file.bin";
    let id = store
        .create_multipart(key, opts(Some("application/x-test"), &[("origin", "mpu")]))
        .await
        .unwrap();
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    let p1 = pattern(5 * MIB, 1);
    let p2 = pattern(1234, 2);
    // Parts may arrive in any order; re-uploading a part replaces it.
    let e2 = store
        .upload_part(key, &id, 2, Bytes::from(p2.clone()))
        .await
        .unwrap();
    store
        .upload_part(key, &id, 1, Bytes::from_static(b"stale"))
        .await
        .unwrap();
    let e1 = store
        .upload_part(key, &id, 1, Bytes::from(p1.clone()))
        .await
        .unwrap();
    assert_eq!(e1, rules::md5_hex(&p1));
    assert_eq!(e2, rules::md5_hex(&p2));
    // Parts are not objects.
    assert_eq!(
        store.head(key).await.unwrap_err().kind(),
        StoreErrorKind::NotFound
    );

    let parts = [
        CompletedPart {
            number: 1,
            etag: format!("\"{e1}\""),
        },
        CompletedPart {
            number: 2,
            etag: e2.clone(),
        },
    ];
    let done = store
        .complete_multipart(key, &id, &parts, PutCondition::IfNoneMatch)
        .await
        .unwrap();
    let expected = rules::multipart_etag([e1.as_str(), e2.as_str()]).unwrap();
    assert_eq!(done.etag, expected);
    assert!(done.etag.ends_with("-2"));

    let got = store.get(key, None).await.unwrap();
    assert_eq!(got.body.len(), p1.len() + p2.len());
    assert_eq!(&got.body[..p1.len()], &p1[..]);
    assert_eq!(&got.body[p1.len()..], &p2[..]);
    assert_eq!(got.meta.etag, expected);
    assert_eq!(
        got.meta.headers.content_type.as_deref(),
        Some("application/x-test")
    );
    assert_eq!(
        got.meta.metadata.get("origin").map(String::as_str),
        Some("mpu")
    );
    assert_eq!(store.list_all("big/").await.unwrap()[0].etag, expected);

    // Nothing left: no temporaries, no upload directory, empty trash.
    assert!(names(&sys(&store, "tmp")).is_empty());
    assert!(names(&sys(&store, "uploads")).is_empty());
    assert!(names(&sys(&store, "trash")).is_empty());

    // The upload id is finished.
    let kind = |e: StoreError| e.kind();
    assert_eq!(
        kind(
            store
                .upload_part(key, &id, 3, Bytes::from_static(b"x"))
                .await
                .unwrap_err()
        ),
        StoreErrorKind::NoSuchUpload
    );
    assert_eq!(
        kind(
            store
                .complete_multipart(key, &id, &parts, PutCondition::None)
                .await
                .unwrap_err()
        ),
        StoreErrorKind::NoSuchUpload
    );
    assert_eq!(
        kind(store.abort_multipart(key, &id).await.unwrap_err()),
        StoreErrorKind::NoSuchUpload
    );
    assert_eq!(
        kind(store.list_parts(key, &id, None).await.unwrap_err()),
        StoreErrorKind::NoSuchUpload
    );
    assert_eq!(
        kind(
            store
                .upload_part_copy(key, &id, 3, key, 0..10, None)
                .await
                .unwrap_err()
        ),
        StoreErrorKind::NoSuchUpload
    );
}

#[tokio::test]
async fn completion_enforces_part_rules_and_conditions() {
    let (_dir, store) = open();
    let key = "mp";
    let id = store
        .create_multipart(key, PutOptions::default())
        .await
        .unwrap();
    let e1 = store
        .upload_part(key, &id, 1, Bytes::from(vec![1u8; 1024]))
        .await
        .unwrap();
    let e2 = store
        .upload_part(key, &id, 2, Bytes::from(vec![2u8; 1024]))
        .await
        .unwrap();
    let part = |n: u32, e: &str| CompletedPart {
        number: n,
        etag: e.to_string(),
    };
    let complete = |parts: Vec<CompletedPart>, c: PutCondition| {
        let store = store.clone();
        let id = id.clone();
        async move { store.complete_multipart(key, &id, &parts, c).await }
    };
    let kind = |r: Result<PutResult, StoreError>| r.unwrap_err().kind();
    assert_eq!(
        kind(complete(vec![part(1, &e1), part(2, &e2)], PutCondition::None).await),
        StoreErrorKind::EntityTooSmall
    );
    // (The order check needs a big first part: a small one is EntityTooSmall first.)
    let e3 = store
        .upload_part(key, &id, 3, Bytes::from(pattern(5 * MIB, 3)))
        .await
        .unwrap();
    assert_eq!(
        kind(complete(vec![part(3, &e3), part(1, &e1)], PutCondition::None).await),
        StoreErrorKind::InvalidPartOrder
    );
    assert_eq!(
        kind(complete(vec![part(1, &e2)], PutCondition::None).await),
        StoreErrorKind::InvalidPart
    );
    assert_eq!(
        kind(complete(vec![part(3, &e1)], PutCondition::None).await),
        StoreErrorKind::InvalidPart
    );
    assert_eq!(
        kind(complete(vec![], PutCondition::None).await),
        StoreErrorKind::InvalidPartOrder
    );
    assert_eq!(
        store.head(key).await.unwrap_err().kind(),
        StoreErrorKind::NotFound
    );
    // Failed completions keep the upload (as S3 does) and leave no temporaries.
    assert_eq!(
        store.list_parts(key, &id, None).await.unwrap().parts.len(),
        3
    );
    assert!(names(&sys(&store, "tmp")).is_empty());

    // Conditions apply at completion; a failed one keeps the upload too.
    put(&store, key, b"existing").await;
    assert_eq!(
        kind(complete(vec![part(2, &e2)], PutCondition::IfNoneMatch).await),
        StoreErrorKind::PreconditionFailed
    );
    assert_eq!(
        kind(complete(vec![part(2, &e2)], PutCondition::IfMatch("0".repeat(32))).await),
        StoreErrorKind::PreconditionFailed
    );
    assert_eq!(&store.get(key, None).await.unwrap().body[..], b"existing");
    // A single (last) part may be small, and skipping part numbers is allowed.
    let done = complete(
        vec![part(2, &e2)],
        PutCondition::IfMatch(rules::md5_hex(b"existing")),
    )
    .await
    .unwrap();
    assert_eq!(done.etag, rules::multipart_etag([e2.as_str()]).unwrap());
    assert_eq!(
        &store.get(key, None).await.unwrap().body[..],
        &[2u8; 1024][..]
    );
    assert!(names(&sys(&store, "tmp")).is_empty());
    assert!(names(&sys(&store, "uploads")).is_empty());
}

#[tokio::test]
async fn abort_frees_the_upload() {
    let (_dir, store) = open();
    let id = store
        .create_multipart("k", PutOptions::default())
        .await
        .unwrap();
    store
        .upload_part("k", &id, 1, Bytes::from_static(b"part"))
        .await
        .unwrap();
    store.abort_multipart("k", &id).await.unwrap();
    assert!(names(&sys(&store, "uploads")).is_empty());
    assert!(names(&sys(&store, "trash")).is_empty());
    let kind = |e: StoreError| e.kind();
    assert_eq!(
        kind(
            store
                .upload_part("k", &id, 2, Bytes::from_static(b"x"))
                .await
                .unwrap_err()
        ),
        StoreErrorKind::NoSuchUpload
    );
    assert_eq!(
        kind(store.abort_multipart("k", &id).await.unwrap_err()),
        StoreErrorKind::NoSuchUpload
    );
    assert_eq!(
        kind(store.list_parts("k", &id, None).await.unwrap_err()),
        StoreErrorKind::NoSuchUpload
    );
    let parts = [CompletedPart {
        number: 1,
        etag: rules::md5_hex(b"part"),
    }];
    assert_eq!(
        kind(
            store
                .complete_multipart("k", &id, &parts, PutCondition::None)
                .await
                .unwrap_err()
        ),
        StoreErrorKind::NoSuchUpload
    );
    assert_eq!(
        store.head("k").await.unwrap_err().kind(),
        StoreErrorKind::NotFound
    );
}

#[tokio::test]
async fn upload_ids_and_part_numbers_are_validated() {
    let (_dir, store) = open();
    let id = store
        .create_multipart("k", PutOptions::default())
        .await
        .unwrap();
    for bad in [
        "",
        "../../etc",
        "..",
        "a/b",
        "abc.def",
        "0123456789abcdef0123456789abcdef",
        &"a".repeat(200),
    ] {
        let err = store
            .upload_part("k", bad, 1, Bytes::from_static(b"x"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::NoSuchUpload, "{bad:?}");
        let err = store.list_parts("k", bad, None).await.unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::NoSuchUpload, "{bad:?}");
        let err = store.abort_multipart("k", bad).await.unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::NoSuchUpload, "{bad:?}");
    }
    // An upload id used with another key is unknown there.
    let err = store
        .upload_part("other", &id, 1, Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::NoSuchUpload);
    assert_eq!(
        store
            .abort_multipart("other", &id)
            .await
            .unwrap_err()
            .kind(),
        StoreErrorKind::NoSuchUpload
    );
    for n in [0, limits::MAX_PART_NUMBER + 1] {
        let err = store
            .upload_part("k", &id, n, Bytes::from_static(b"x"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::InvalidArgument, "part {n}");
    }
    let err = store
        .upload_part_copy("k", &id, 1, "src", 0..limits::MAX_PART_SIZE + 1, None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::InvalidArgument);
    store
        .upload_part("k", &id, limits::MAX_PART_NUMBER, Bytes::from_static(b"x"))
        .await
        .unwrap();
    // The upload is still intact.
    let parts = store.list_all_parts("k", &id).await.unwrap();
    assert_eq!(
        parts.iter().map(|p| p.number).collect::<Vec<_>>(),
        vec![limits::MAX_PART_NUMBER]
    );
}

#[tokio::test]
async fn upload_part_copy_copies_ranges_of_a_matching_source() {
    let (_dir, store) = open();
    let src = pattern(6 * MIB, 7);
    let src_etag = put(&store, "src", &src).await;
    let id = store
        .create_multipart("dst", opts(Some("x/y"), &[]))
        .await
        .unwrap();
    let split = 5 * MIB as u64;
    let e1 = store
        .upload_part_copy("dst", &id, 1, "src", 0..split, Some(&src_etag))
        .await
        .unwrap();
    assert_eq!(e1, rules::md5_hex(&src[..5 * MIB]));
    let quoted = format!("\"{src_etag}\"");
    let e2 = store
        .upload_part_copy("dst", &id, 2, "src", split..src.len() as u64, Some(&quoted))
        .await
        .unwrap();
    assert_eq!(e2, rules::md5_hex(&src[5 * MIB..]));

    let kind = |r: Result<String, StoreError>| r.unwrap_err().kind();
    assert_eq!(
        kind(
            store
                .upload_part_copy("dst", &id, 3, "src", 0..10, Some("deadbeef"))
                .await
        ),
        StoreErrorKind::PreconditionFailed
    );
    assert_eq!(
        kind(
            store
                .upload_part_copy("dst", &id, 3, "src", 0..src.len() as u64 + 1, None)
                .await
        ),
        StoreErrorKind::InvalidRange
    );
    assert_eq!(
        kind(
            store
                .upload_part_copy("dst", &id, 3, "src", 10..10, None)
                .await
        ),
        StoreErrorKind::InvalidRange
    );
    assert_eq!(
        kind(
            store
                .upload_part_copy("dst", &id, 3, "nope", 0..1, None)
                .await
        ),
        StoreErrorKind::NotFound
    );
    // Failed copies made no part.
    let listed = store.list_all_parts("dst", &id).await.unwrap();
    assert_eq!(
        listed.iter().map(|p| p.number).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(listed[1].size, (src.len() - 5 * MIB) as u64);

    let parts = [
        CompletedPart {
            number: 1,
            etag: e1.clone(),
        },
        CompletedPart {
            number: 2,
            etag: e2.clone(),
        },
    ];
    let done = store
        .complete_multipart("dst", &id, &parts, PutCondition::None)
        .await
        .unwrap();
    assert_eq!(
        done.etag,
        rules::multipart_etag([e1.as_str(), e2.as_str()]).unwrap()
    );
    let got = store.get("dst", None).await.unwrap();
    assert!(got.body[..] == src[..]);
    assert_eq!(got.meta.headers.content_type.as_deref(), Some("x/y"));
    // A completed multipart object can itself be a copy source, matched on its MPU ETag.
    let id2 = store
        .create_multipart("dst2", PutOptions::default())
        .await
        .unwrap();
    let e = store
        .upload_part_copy("dst2", &id2, 1, "dst", 100..200, Some(&done.etag))
        .await
        .unwrap();
    assert_eq!(e, rules::md5_hex(&src[100..200]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn list_parts_pages_at_1000_with_etags() {
    let (_dir, store) = open();
    let id = store
        .create_multipart("many", PutOptions::default())
        .await
        .unwrap();
    let results: Vec<_> = futures::stream::iter(1..=1005u32)
        .map(|n| {
            let store = store.clone();
            let id = id.clone();
            async move {
                store
                    .upload_part("many", &id, n, Bytes::from(n.to_string()))
                    .await
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(results.iter().all(Result::is_ok));

    let first = store.list_parts("many", &id, None).await.unwrap();
    assert_eq!(first.parts.len(), 1000);
    assert_eq!(first.next_marker, Some(1000));
    for (i, p) in first.parts.iter().enumerate() {
        let n = i as u32 + 1;
        assert_eq!(p.number, n);
        assert_eq!(
            p.etag.as_deref(),
            Some(rules::md5_hex(n.to_string().as_bytes()).as_str())
        );
        assert_eq!(p.size, n.to_string().len() as u64);
    }
    let second = store
        .list_parts("many", &id, first.next_marker)
        .await
        .unwrap();
    assert_eq!(
        second.parts.iter().map(|p| p.number).collect::<Vec<_>>(),
        (1001..=1005).collect::<Vec<_>>()
    );
    assert_eq!(second.next_marker, None);
    assert_eq!(store.list_all_parts("many", &id).await.unwrap().len(), 1005);

    // Replacing a part shows its new ETag.
    store
        .upload_part("many", &id, 3, Bytes::from_static(b"replaced"))
        .await
        .unwrap();
    let page = store.list_parts("many", &id, Some(2)).await.unwrap();
    assert_eq!(page.parts[0].number, 3);
    assert_eq!(
        page.parts[0].etag.as_deref(),
        Some(rules::md5_hex(b"replaced").as_str())
    );
    // A lost ETag cache of a part's own file (a replaced part has one) is recomputed from it.
    fs::remove_file(store.inner.part_cache_path(&id, 3)).unwrap();
    let page = store.list_parts("many", &id, Some(2)).await.unwrap();
    assert_eq!(
        page.parts[0].etag.as_deref(),
        Some(rules::md5_hex(b"replaced").as_str())
    );
    store.abort_multipart("many", &id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn list_multipart_uploads_sorted_filtered_and_paged() {
    let (_dir, store) = open();
    let mut expected = Vec::new();
    for key in ["b", "a", "a", "c/x", "ab"] {
        let id = store
            .create_multipart(key, PutOptions::default())
            .await
            .unwrap();
        expected.push((key.to_string(), id));
    }
    expected.sort();
    let page = store.list_multipart_uploads("", None).await.unwrap();
    let got: Vec<_> = page
        .uploads
        .iter()
        .map(|u| (u.key.clone(), u.upload_id.clone()))
        .collect();
    assert_eq!(got, expected);
    assert!(page.next.is_none());
    assert!(page.uploads.iter().all(|u| u.initiated.is_some()));

    let a = store.list_multipart_uploads("a", None).await.unwrap();
    assert_eq!(
        a.uploads.iter().map(|u| u.key.as_str()).collect::<Vec<_>>(),
        vec!["a", "a", "ab"]
    );
    let marker = UploadsMarker {
        key: expected[0].0.clone(),
        upload_id: expected[0].1.clone(),
    };
    let rest = store
        .list_multipart_uploads("", Some(marker))
        .await
        .unwrap();
    assert_eq!(rest.uploads.len(), expected.len() - 1);
    assert_eq!(rest.uploads[0].upload_id, expected[1].1);

    // Finished uploads disappear from the listing.
    store
        .abort_multipart(&expected[0].0, &expected[0].1)
        .await
        .unwrap();
    let page = store.list_multipart_uploads("", None).await.unwrap();
    assert_eq!(page.uploads.len(), expected.len() - 1);

    // Pages of 1,000.
    let results: Vec<_> = futures::stream::iter(0..1000)
        .map(|i| {
            let store = store.clone();
            async move {
                store
                    .create_multipart(&format!("p/{i:04}"), PutOptions::default())
                    .await
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(results.iter().all(Result::is_ok));
    let first = store.list_multipart_uploads("p/", None).await.unwrap();
    assert_eq!(first.uploads.len(), 1000);
    assert!(first.next.is_none());
    let first = store.list_multipart_uploads("", None).await.unwrap();
    assert_eq!(first.uploads.len(), 1000);
    let next = first.next.clone().expect("a second page");
    assert_eq!(next.key, first.uploads[999].key);
    let second = store.list_multipart_uploads("", Some(next)).await.unwrap();
    assert_eq!(second.uploads.len(), 1000 + expected.len() - 1 - 1000);
    assert!(second.next.is_none());
    assert!(
        first.uploads.last().map(|u| (&u.key, &u.upload_id))
            < second.uploads.first().map(|u| (&u.key, &u.upload_id))
    );
}

#[tokio::test]
async fn files_placed_by_hand_get_md5_etags_and_no_metadata() {
    let (_dir, store) = open();
    fs::create_dir_all(store.root().join("manual")).unwrap();
    fs::write(store.root().join("manual/notes.txt"), b"by hand").unwrap();
    let head = store.head("manual/notes.txt").await.unwrap();
    assert_eq!(head.etag, rules::md5_hex(b"by hand"));
    assert_eq!(head.size, 7);
    assert!(head.headers.content_type.is_none() && head.metadata.is_empty());
    assert!(head.last_modified.is_some());
    let listed = store.list_all("manual/").await.unwrap();
    assert_eq!(keys(&listed), vec!["manual/notes.txt"]);
    assert_eq!(listed[0].etag, head.etag);
    assert_eq!(
        &store
            .get("manual/notes.txt", Some(3..7))
            .await
            .unwrap()
            .body[..],
        b"hand"
    );

    // A stored object edited by hand in place (same inode) loses its stale sidecar.
    store
        .put(
            "k",
            Bytes::from_static(b"original"),
            opts(Some("text/plain"), &[("a", "b")]),
        )
        .await
        .unwrap();
    fs::write(store.root().join("k"), b"edited by hand").unwrap();
    let head = store.head("k").await.unwrap();
    assert_eq!(head.etag, rules::md5_hex(b"edited by hand"));
    assert!(head.headers.content_type.is_none() && head.metadata.is_empty());

    // Same size, same inode, different content: the modification time tells.
    store
        .put(
            "s",
            Bytes::from_static(b"aaaa"),
            opts(Some("text/plain"), &[]),
        )
        .await
        .unwrap();
    let path = store.root().join("s");
    let before = fs::metadata(&path).unwrap().modified().unwrap();
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    (&file).write_all(b"bbbb").unwrap();
    file.set_modified(before + Duration::from_secs(5)).unwrap();
    drop(file);
    assert_eq!(store.head("s").await.unwrap().etag, rules::md5_hex(b"bbbb"));
}

#[tokio::test]
async fn a_crash_between_sidecar_and_rename_keeps_each_file_described() {
    let (_dir, store) = open();
    // A multipart object: losing its record would turn its ETag into a plain MD5.
    let id = store
        .create_multipart("k", opts(Some("old/type"), &[("v", "1")]))
        .await
        .unwrap();
    let e1 = store
        .upload_part("k", &id, 1, Bytes::from_static(b"old"))
        .await
        .unwrap();
    let parts = [CompletedPart {
        number: 1,
        etag: e1,
    }];
    let old = store
        .complete_multipart("k", &id, &parts, PutCondition::None)
        .await
        .unwrap();

    // Replay a put up to the durable sidecar write, and "crash" before the rename.
    let inner = &store.inner;
    let (tmp, mut file) = inner.new_temp("put", "k").unwrap();
    file.write_all(b"new body").unwrap();
    file.sync_all().unwrap();
    let new_id = file_id(&file.metadata().unwrap());
    drop(file);
    let Current::Present(Some(current)) = inner.current("put", "k", false).unwrap() else {
        panic!("the object and its record exist");
    };
    let new = MetaRecord {
        file: new_id,
        etag: rules::md5_hex(b"new body"),
        headers: ContentHeaders::with_type("new/type"),
        metadata: BTreeMap::new(),
    };
    inner
        .write_sidecar("put", "k", vec![new, *current], true)
        .unwrap();
    let head = store.head("k").await.unwrap();
    assert_eq!(
        head.etag, old.etag,
        "the old file is still described by its record"
    );
    assert_eq!(head.headers.content_type.as_deref(), Some("old/type"));
    assert_eq!(head.metadata.get("v").map(String::as_str), Some("1"));

    // Had the rename happened, the new file would be described by its own record.
    fs::rename(&tmp.path, store.root().join("k")).unwrap();
    tmp.keep();
    let head = store.head("k").await.unwrap();
    assert_eq!(head.etag, rules::md5_hex(b"new body"));
    assert_eq!(head.headers.content_type.as_deref(), Some("new/type"));
    assert!(head.metadata.is_empty());
    assert_eq!(&store.get("k", None).await.unwrap().body[..], b"new body");
}

#[tokio::test]
async fn state_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let (id, e1) = {
        let store = LocalStore::open(&root).unwrap();
        store
            .put(
                "obj",
                Bytes::from_static(b"kept"),
                opts(Some("text/plain"), &[("x", "y")]),
            )
            .await
            .unwrap();
        let id = store
            .create_multipart("mp", opts(Some("a/b"), &[]))
            .await
            .unwrap();
        let e1 = store
            .upload_part("mp", &id, 1, Bytes::from_static(b"part one"))
            .await
            .unwrap();
        (id, e1)
    };
    let store = LocalStore::open(&root).unwrap();
    let head = store.head("obj").await.unwrap();
    assert_eq!(head.headers.content_type.as_deref(), Some("text/plain"));
    assert_eq!(head.metadata.get("x").map(String::as_str), Some("y"));
    let parts = store.list_all_parts("mp", &id).await.unwrap();
    assert_eq!(
        parts,
        vec![PartInfo {
            number: 1,
            etag: Some(e1.clone()),
            size: 8
        }]
    );
    let done = store
        .complete_multipart(
            "mp",
            &id,
            &[CompletedPart {
                number: 1,
                etag: e1.clone(),
            }],
            PutCondition::None,
        )
        .await
        .unwrap();
    assert_eq!(done.etag, rules::multipart_etag([e1.as_str()]).unwrap());
    assert_eq!(
        store
            .head("mp")
            .await
            .unwrap()
            .headers
            .content_type
            .as_deref(),
        Some("a/b")
    );
    // Leftovers of a crash: the trash is emptied when a store is opened.
    fs::create_dir(sys(&store, "trash").join("leftover")).unwrap();
    drop(store);
    let store = LocalStore::open(&root).unwrap();
    assert!(names(&sys(&store, "trash")).is_empty());
}

#[tokio::test]
async fn describe_and_debug_name_the_directory() {
    let (dir, store) = open();
    let root = dir.path().join("data").canonicalize().unwrap();
    assert_eq!(store.describe(), format!("file://{}", root.display()));
    assert!(store.describe().starts_with("file:///"));
    assert!(format!("{store:?}").contains(&root.display().to_string()));
    assert_eq!(store.min_part_size(), limits::MIN_PART_SIZE);
}

fn segment() -> impl Strategy<Value = String> {
    proptest::collection::vec(prop::sample::select(vec!['a', 'b', '-', '.', '0']), 1..3)
        .prop_map(|chars| chars.into_iter().collect())
}

fn key() -> impl Strategy<Value = String> {
    (proptest::collection::vec(segment(), 1..4), any::<bool>()).prop_map(|(segs, dir)| {
        let mut k = segs.join("/");
        if dir {
            k.push('/');
        }
        k
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Listings of the file tree match the shared listing rules over the sorted key set,
    /// for any prefix, delimiter and page size.
    #[test]
    fn listing_matches_the_rules_over_sorted_keys(
        raw in proptest::collection::btree_set(key(), 1..12),
        prefix_len in 0usize..6,
        max in 1usize..5,
    ) {
        // Keep the keys a file system can hold together: no object `k` with keys under `k/`.
        let valid: Vec<String> = raw.iter().filter(|k| check_key("put", k).is_ok()).cloned().collect();
        let set: BTreeSet<String> = valid
            .iter()
            .filter(|k| k.ends_with('/') || !valid.iter().any(|o| o.starts_with(&format!("{k}/"))))
            .cloned()
            .collect();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (_dir, store) = open();
            for k in &set {
                put(&store, k, k.as_bytes()).await;
            }
            let first = set.iter().next().cloned().unwrap_or_default();
            let prefix: String = first.chars().take(prefix_len).collect();
            for p in ["", prefix.as_str()] {
                for d in [None, Some("/"), Some("-")] {
                    assert_eq!(all_pages(&store, p, d, max).await, model_pages(&set, p, d, max), "prefix {p:?} delimiter {d:?}");
                }
            }
        });
    }
}

#[tokio::test]
async fn parts_of_an_upload_in_progress_read_back_checked_by_etag() {
    let (_dir, store) = open();
    assert!(store.reads_parts());
    let upload = store
        .create_multipart("rp.bin", PutOptions::default())
        .await
        .unwrap();
    let body = pattern(5 * MIB + 7, 3);
    let etag = store
        .upload_part("rp.bin", &upload, 1, Bytes::from(body.clone()))
        .await
        .unwrap();
    let got = store
        .read_part("rp.bin", &upload, 1, &etag, 10..5000)
        .await
        .unwrap();
    assert_eq!(&got[..], &body[10..5000]);
    // The range is clamped to the part, as a GET's is to the object.
    let end = store
        .read_part("rp.bin", &upload, 1, &etag, body.len() as u64 - 3..u64::MAX)
        .await
        .unwrap();
    assert_eq!(&end[..], &body[body.len() - 3..]);

    // A part replaced since is refused, never read as other bytes.
    store
        .upload_part("rp.bin", &upload, 1, Bytes::from(pattern(5 * MIB, 9)))
        .await
        .unwrap();
    let err = store
        .read_part("rp.bin", &upload, 1, &etag, 0..10)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::PreconditionFailed, "{err}");

    let missing = store
        .read_part("rp.bin", &upload, 2, &etag, 0..10)
        .await
        .unwrap_err();
    assert_eq!(missing.kind(), StoreErrorKind::InvalidPart, "{missing}");
    let other_key = store
        .read_part("other.bin", &upload, 1, &etag, 0..10)
        .await
        .unwrap_err();
    assert_eq!(
        other_key.kind(),
        StoreErrorKind::NoSuchUpload,
        "{other_key}"
    );
    store.abort_multipart("rp.bin", &upload).await.unwrap();
    let gone = store
        .read_part("rp.bin", &upload, 1, &etag, 0..10)
        .await
        .unwrap_err();
    assert_eq!(gone.kind(), StoreErrorKind::NoSuchUpload, "{gone}");
}

/// Starts an upload of `key` and uploads `bodies` as its parts 1, 2, ...: the upload id, the
/// parts to complete it with, and the inode of the upload's data file (its slots).
#[cfg(unix)]
async fn upload_parts(
    store: &LocalStore,
    key: &str,
    bodies: &[&[u8]],
) -> (String, Vec<CompletedPart>, u64) {
    use std::os::unix::fs::MetadataExt;
    let id = store
        .create_multipart(key, PutOptions::default())
        .await
        .unwrap();
    let mut parts = Vec::new();
    for (number, body) in (1..).zip(bodies) {
        let etag = store
            .upload_part(key, &id, number, Bytes::copy_from_slice(body))
            .await
            .unwrap();
        parts.push(CompletedPart { number, etag });
    }
    let data_ino = fs::metadata(store.inner.slots_path(&id)).unwrap().ino();
    (id, parts, data_ino)
}

/// The object `key`'s inode and link count.
#[cfg(unix)]
fn inode_of(store: &LocalStore, key: &str) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let md = fs::metadata(store.inner.data_path(key)).unwrap();
    (md.ino(), md.nlink())
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_whose_parts_fill_their_slots_completes_by_linking_and_others_by_copying() {
    const MIB: usize = 1024 * 1024;
    let (_dir, store) = open();
    let a = vec![b'a'; 5 * MIB];
    let b = vec![b'b'; 5 * MIB];
    let mut ab_end = [a.as_slice(), b.as_slice()].concat();
    ab_end.extend_from_slice(b"end");

    // One part, and three parts uploaded once each: the data file becomes the object.
    let (id, parts, data_ino) = upload_parts(&store, "one", &[&a]).await;
    let done = store
        .complete_multipart("one", &id, &parts, PutCondition::None)
        .await
        .unwrap();
    assert_eq!(
        inode_of(&store, "one"),
        (data_ino, 1),
        "the upload's data file became the object, and its name in the upload is gone"
    );
    assert!(done.etag.ends_with("-1"), "{}", done.etag);
    assert_eq!(store.get("one", None).await.unwrap().body, a);
    assert_eq!(store.head("one").await.unwrap().etag, done.etag);
    // The upload is gone: a second completion finds no upload, the object stays.
    assert_eq!(
        store
            .complete_multipart("one", &id, &[], PutCondition::None)
            .await
            .unwrap_err()
            .kind(),
        StoreErrorKind::NoSuchUpload
    );
    let (id, parts, data_ino) = upload_parts(&store, "three", &[&a, &b, b"end"]).await;
    let done = store
        .complete_multipart("three", &id, &parts, PutCondition::None)
        .await
        .unwrap();
    assert_eq!(inode_of(&store, "three"), (data_ino, 1));
    assert!(done.etag.ends_with("-3"), "{}", done.etag);
    assert_eq!(store.get("three", None).await.unwrap().body, ab_end);

    // A failed condition leaves the upload whole: completed again, it still links.
    let (id, parts, data_ino) = upload_parts(&store, "three", &[&b, &a, b"end"]).await;
    let refused = store
        .complete_multipart("three", &id, &parts, PutCondition::IfNoneMatch)
        .await
        .unwrap_err();
    assert_eq!(
        refused.kind(),
        StoreErrorKind::PreconditionFailed,
        "{refused}"
    );
    assert_eq!(store.get("three", None).await.unwrap().body, ab_end);
    store
        .complete_multipart("three", &id, &parts, PutCondition::None)
        .await
        .unwrap();
    assert_eq!(inode_of(&store, "three").0, data_ino);
    let mut ba_end = [b.as_slice(), a.as_slice()].concat();
    ba_end.extend_from_slice(b"end");
    assert_eq!(store.get("three", None).await.unwrap().body, ba_end);

    // A part uploaded again (its own file, which wins over its slot): copied, with the new
    // bytes, into a new file.
    let (id, mut parts, data_ino) = upload_parts(&store, "again", &[&a, &a, b"end"]).await;
    parts[1].etag = store
        .upload_part("again", &id, 2, Bytes::from(b.clone()))
        .await
        .unwrap();
    let listed = store.list_all_parts("again", &id).await.unwrap();
    assert_eq!(listed[1].etag.as_deref(), Some(parts[1].etag.as_str()));
    assert_eq!(listed[2].size, 3);
    store
        .complete_multipart("again", &id, &parts, PutCondition::None)
        .await
        .unwrap();
    assert_ne!(inode_of(&store, "again").0, data_ino);
    assert_eq!(store.get("again", None).await.unwrap().body, ab_end);

    // Fewer parts than the slots hold (bytes after the last): copied, only the parts asked for.
    let (id, parts, data_ino) = upload_parts(&store, "fewer", &[&a, &b, b"end"]).await;
    store
        .complete_multipart("fewer", &id, &parts[..2], PutCondition::None)
        .await
        .unwrap();
    assert_ne!(inode_of(&store, "fewer").0, data_ino);
    assert_eq!(
        store.get("fewer", None).await.unwrap().body,
        [a, b].concat()
    );

    // A part larger than the slot size the first part fixed takes its own file; the parts
    // read back whole either way.
    let id = store
        .create_multipart("mixed", PutOptions::default())
        .await
        .unwrap();
    let small = vec![b's'; 5 * MIB];
    let large = vec![b'l'; 6 * MIB];
    let e1 = store
        .upload_part("mixed", &id, 1, Bytes::from(small.clone()))
        .await
        .unwrap();
    let e2 = store
        .upload_part("mixed", &id, 2, Bytes::from(large.clone()))
        .await
        .unwrap();
    assert!(store.inner.part_path(&id, 2).exists());
    assert!(!store.inner.part_path(&id, 1).exists());
    let read = store
        .read_part("mixed", &id, 1, &e1, 0..u64::MAX)
        .await
        .unwrap();
    assert_eq!(read, small);
    let read = store.read_part("mixed", &id, 2, &e2, 10..20).await.unwrap();
    assert_eq!(read, large[10..20]);
    let parts = [
        CompletedPart {
            number: 1,
            etag: e1,
        },
        CompletedPart {
            number: 2,
            etag: e2,
        },
    ];
    store
        .complete_multipart("mixed", &id, &parts, PutCondition::None)
        .await
        .unwrap();
    assert_eq!(
        store.get("mixed", None).await.unwrap().body,
        [small, large].concat()
    );
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_claimed_slot_without_a_record_is_no_part_and_its_number_takes_a_file() {
    // What a crash between claiming a slot and recording the part leaves: an empty claim (and
    // maybe bytes in the data file). The part is not listed, and uploading it again works.
    let (_dir, store) = open();
    let (id, mut parts, _) = upload_parts(&store, "k", &[&[b'1'; 5 << 20], b"2"]).await;
    let claim = store.inner.slot_path(&id, 2);
    fs::write(&claim, b"").unwrap();
    let listed = store.list_all_parts("k", &id).await.unwrap();
    assert_eq!(listed.iter().map(|p| p.number).collect::<Vec<_>>(), [1]);
    let err = store
        .complete_multipart("k", &id, &parts, PutCondition::None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::InvalidPart, "{err}");
    parts[1].etag = store
        .upload_part("k", &id, 2, Bytes::from_static(b"two"))
        .await
        .unwrap();
    assert!(store.inner.part_path(&id, 2).exists());
    store
        .complete_multipart("k", &id, &parts, PutCondition::None)
        .await
        .unwrap();
    let mut want = vec![b'1'; 5 << 20];
    want.extend_from_slice(b"two");
    assert_eq!(store.get("k", None).await.unwrap().body, want);
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_append_of_copied_and_new_parts_completes_by_linking() {
    // What an append uploads: the old object copied server-side in part-size ranges, then the
    // new bytes. The copies land in slots too, so the result is linked, not concatenated.
    const PART: u64 = 5 << 20;
    let (_dir, store) = open();
    let old: Vec<u8> = (0..2 * PART).map(|i| (i % 251) as u8).collect();
    store
        .put("log", Bytes::from(old.clone()), PutOptions::default())
        .await
        .unwrap();
    let source_etag = store.head("log").await.unwrap().etag;
    let id = store
        .create_multipart("log", PutOptions::default())
        .await
        .unwrap();
    let mut parts = Vec::new();
    for (number, range) in [(1, 0..PART), (2, PART..2 * PART)] {
        let etag = store
            .upload_part_copy("log", &id, number, "log", range.clone(), Some(&source_etag))
            .await
            .unwrap();
        let start = usize::try_from(range.start).unwrap();
        let end = usize::try_from(range.end).unwrap();
        assert_eq!(etag, rules::md5_hex(&old[start..end]));
        parts.push(CompletedPart { number, etag });
    }
    let etag = store
        .upload_part("log", &id, 3, Bytes::from_static(b"appended"))
        .await
        .unwrap();
    parts.push(CompletedPart { number: 3, etag });
    assert!(
        !store.inner.part_path(&id, 1).exists(),
        "the copy took its slot"
    );
    let data_ino = {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(store.inner.slots_path(&id)).unwrap().ino()
    };
    store
        .complete_multipart("log", &id, &parts, PutCondition::IfMatch(source_etag))
        .await
        .unwrap();
    assert_eq!(inode_of(&store, "log"), (data_ino, 1));
    let mut want = old;
    want.extend_from_slice(b"appended");
    assert_eq!(store.get("log", None).await.unwrap().body, want);
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_part_far_past_the_data_files_end_takes_its_own_file() {
    // A client that skips part numbers: a part far past the data file's end takes a file
    // instead of leaving a hole that large.
    let (_dir, store) = open();
    let (id, _, _) = upload_parts(&store, "k", &[b"a"]).await;
    for number in [3, 100] {
        store
            .upload_part("k", &id, number, Bytes::from_static(b"b"))
            .await
            .unwrap();
    }
    assert!(
        !store.inner.part_path(&id, 3).exists(),
        "part 3 fits its slot"
    );
    assert!(store.inner.part_path(&id, 100).exists());
    assert_eq!(fs::metadata(store.inner.slots_path(&id)).unwrap().len(), 3);
    let listed = store.list_all_parts("k", &id).await.unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|p| (p.number, p.size))
            .collect::<Vec<_>>(),
        [(1, 1), (3, 1), (100, 1)]
    );
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_data_file_that_became_an_object_is_never_written_again() {
    // A crash between placing the object and retiring the upload leaves the upload's `data` as
    // a second name of the object's file. A part uploaded to it then (a writer resuming an older
    // token) must take its own file and leave the object's bytes alone.
    let (_dir, store) = open();
    let (id, mut parts, _) = upload_parts(&store, "k", &[&[b'1'; 5 << 20]]).await;
    let object = store.inner.root.join("crashed-object");
    fs::hard_link(store.inner.slots_path(&id), &object).unwrap();
    let before = fs::read(&object).unwrap();
    parts.push(CompletedPart {
        number: 2,
        etag: store
            .upload_part("k", &id, 2, Bytes::from_static(b"late"))
            .await
            .unwrap(),
    });
    assert!(store.inner.part_path(&id, 2).exists());
    assert_eq!(
        fs::read(&object).unwrap(),
        before,
        "the object's file changed"
    );
    store
        .complete_multipart("k", &id, &parts, PutCondition::None)
        .await
        .unwrap();
    let mut want = before.clone();
    want.extend_from_slice(b"late");
    assert_eq!(store.get("k", None).await.unwrap().body, want);
    assert_eq!(fs::read(&object).unwrap(), before);
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parts_uploaded_while_an_upload_completes_never_change_the_object() {
    // Writers of later slots race completions of the first ones: a completion either links a
    // data file that no writer touches afterwards, or copies; every object holds exactly the
    // parts it was completed with, and each late part is refused or lands in the upload.
    let (_dir, store) = open();
    let part = |n: u8| Bytes::from(vec![n; 5 << 20]);
    for round in 0..8u8 {
        let key = format!("race-{round}");
        let id = store
            .create_multipart(&key, PutOptions::default())
            .await
            .unwrap();
        let e1 = store.upload_part(&key, &id, 1, part(1)).await.unwrap();
        let late = {
            let (store, key, id) = (store.clone(), key.clone(), id.clone());
            tokio::spawn(async move {
                let mut results = Vec::new();
                for n in 2..=4u32 {
                    results.push(store.upload_part(&key, &id, n, part(n as u8)).await);
                }
                results
            })
        };
        if round % 2 == 1 {
            tokio::task::yield_now().await;
        }
        store
            .complete_multipart(
                &key,
                &id,
                &[CompletedPart {
                    number: 1,
                    etag: e1,
                }],
                PutCondition::None,
            )
            .await
            .unwrap();
        for result in late.await.unwrap() {
            if let Err(e) = result {
                assert_eq!(e.kind(), StoreErrorKind::NoSuchUpload, "{e}");
            }
        }
        let body = store.get(&key, None).await.unwrap().body;
        assert_eq!(body.len(), 5 << 20, "round {round}");
        assert!(body.iter().all(|&b| b == 1), "round {round}");
    }
}

/// A body of `chunks`, then `tail` (an error, or nothing).
fn body_of(chunks: Vec<Vec<u8>>, fail: bool) -> BodyStream {
    let mut items: Vec<std::io::Result<Bytes>> = chunks.into_iter().map(|c| Ok(c.into())).collect();
    if fail {
        items.push(Err(std::io::Error::other("the client went away")));
    }
    Box::pin(futures::stream::iter(items))
}

#[tokio::test]
async fn put_stream_writes_as_the_body_arrives_with_the_md5_etag() {
    let (_dir, store) = open();
    assert!(store.streams_puts() && !store.streams_bodies());
    // Chunks of odd sizes, more than one write batch in all.
    let chunks: Vec<Vec<u8>> = (0..40u8)
        .map(|i| vec![i; 64 * 1024 + usize::from(i)])
        .collect();
    let whole: Vec<u8> = chunks.concat();
    let put = store
        .put_stream(
            "big/obj",
            whole.len() as u64,
            body_of(chunks, false),
            opts(Some("application/x-test"), &[("a", "1")]),
        )
        .await
        .unwrap();
    assert_eq!(put.etag, rules::md5_hex(&whole));
    let got = store.get("big/obj", None).await.unwrap();
    assert_eq!(got.body.as_ref(), &whole[..]);
    assert_eq!(got.meta.etag, put.etag);
    assert_eq!(
        got.meta.headers.content_type.as_deref(),
        Some("application/x-test")
    );
    assert!(names(&sys(&store, "tmp")).is_empty());
}

#[tokio::test]
async fn a_streamed_put_that_fails_leaves_nothing() {
    let (_dir, store) = open();
    put(&store, "kept", b"before").await;
    let chunk = || vec![vec![7u8; 300 * 1024]; 5];
    let declared = 5 * 300 * 1024;
    for (what, size, fail) in [
        ("short", declared + 1, false),
        ("long", declared - 1, false),
        ("broken", declared, true),
    ] {
        let err = store
            .put_stream(
                "kept",
                size as u64,
                body_of(chunk(), fail),
                PutOptions::default(),
            )
            .await
            .unwrap_err();
        let kind = if fail {
            StoreErrorKind::Transient
        } else {
            StoreErrorKind::InvalidArgument
        };
        assert_eq!(err.kind(), kind, "{what}: {err}");
        assert_eq!(
            store.get("kept", None).await.unwrap().body.as_ref(),
            b"before",
            "{what}"
        );
        assert!(
            names(&sys(&store, "tmp")).is_empty(),
            "{what}: a temporary file is left"
        );
    }
    // Conditions hold as for put.
    let err = store
        .put_stream(
            "kept",
            3,
            body_of(vec![b"new".to_vec()], false),
            cond(PutCondition::IfNoneMatch),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::PreconditionFailed);
    assert_eq!(
        store.get("kept", None).await.unwrap().body.as_ref(),
        b"before"
    );
}

#[test]
fn large_bodies_are_written_a_chunk_at_a_time_and_hashed_beside() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Over two writeback chunks, and over the size hashed on a second thread.
    let body: Vec<u8> = (0..(2 * MIB + MIB / 2)).map(|i| (i % 251) as u8).collect();
    let head = b"head";

    // From the file's position, which ends after the body.
    let path = dir.path().join("sequential");
    let mut file = File::create(&path).expect("create");
    file.write_all(head).expect("head");
    let etag = write_synced_md5(&mut file, &body).expect("write");
    assert_eq!(etag, rules::md5_hex(&body));
    file.write_all(b"!").expect("after");
    let mut expected = head.to_vec();
    expected.extend_from_slice(&body);
    expected.push(b'!');
    assert_eq!(fs::read(&path).expect("read"), expected);

    // At an offset, leaving the rest of the file alone.
    let path = dir.path().join("at");
    fs::write(&path, vec![9u8; 4 * MIB]).expect("fill");
    let file = OpenOptions::new().write(true).open(&path).expect("open");
    let etag = write_at_synced_md5(&file, 100, &body).expect("write at");
    assert_eq!(etag, rules::md5_hex(&body));
    let read = fs::read(&path).expect("read");
    assert_eq!(read.len(), 4 * MIB);
    assert_eq!(&read[..100], &[9u8; 100][..]);
    assert_eq!(&read[100..100 + body.len()], &body[..]);
    assert!(read[100 + body.len()..].iter().all(|&b| b == 9));
}

#[tokio::test]
async fn a_plain_puts_sidecar_may_be_lost_and_a_described_one_is_not() {
    let (_dir, store) = open();
    let inner = &store.inner;
    // What a crash may do to the sidecar of a put without content type or metadata, which is
    // not fsynced: lose it, or leave the one of the object it replaced.
    put(&store, "k", b"first").await;
    let replaced = inner.read_sidecar("k").expect("a sidecar");
    let etag = put(&store, "k", b"second body").await;
    for sidecar in [None, Some(replaced)] {
        match sidecar {
            None => fs::remove_file(inner.sidecar_path("k")).unwrap(),
            Some(old) => inner.write_sidecar("put", "k", old.records, true).unwrap(),
        }
        let head = store.head("k").await.unwrap();
        assert_eq!(head.etag, etag, "the ETag is computed back from the file");
        assert_eq!(head.size, 11);
        assert_eq!(head.headers.content_type, None);
        assert!(head.metadata.is_empty());
    }

    // Content type, metadata and multipart ETags cannot be computed back: their sidecars are
    // what describes the object.
    store
        .put(
            "d",
            Bytes::from_static(b"x"),
            opts(Some("text/x"), &[("v", "1")]),
        )
        .await
        .unwrap();
    let head = store.head("d").await.unwrap();
    assert_eq!(head.headers.content_type.as_deref(), Some("text/x"));
    assert_eq!(head.metadata.get("v").map(String::as_str), Some("1"));
}

#[test]
fn records_written_before_the_standard_headers_still_read() {
    // A sidecar and a manifest as the store wrote them when Content-Type was the only header.
    let record: MetaRecord = serde_json::from_str(
        r#"{"file":{"ino":7,"size":3,"mtime_sec":1,"mtime_nsec":2},"etag":"abc","content_type":"text/plain","metadata":{"a":"b"}}"#,
    )
    .unwrap();
    assert_eq!(record.headers, ContentHeaders::with_type("text/plain"));
    assert_eq!(record.metadata.get("a").map(String::as_str), Some("b"));
    let manifest: Manifest = serde_json::from_str(
        r#"{"key":"k","content_type":null,"metadata":{},"initiated_secs":1,"initiated_nanos":0}"#,
    )
    .unwrap();
    assert!(manifest.headers.is_empty());
    // And a record with every header keeps them all, under the names S3 gives them.
    let headers = ContentHeaders {
        content_type: Some("text/csv".into()),
        content_encoding: Some("gzip".into()),
        content_disposition: Some("inline".into()),
        content_language: Some("de".into()),
        cache_control: Some("no-store".into()),
        expires: Some("Wed, 01 Jan 2031 00:00:00 GMT".into()),
    };
    let json = serde_json::to_string(&MetaRecord {
        headers: headers.clone(),
        ..record
    })
    .unwrap();
    assert!(json.contains(r#""content_encoding":"gzip""#), "{json}");
    let back: MetaRecord = serde_json::from_str(&json).unwrap();
    assert_eq!(back.headers, headers);
}

#[tokio::test]
async fn a_store_opened_for_reading_reads_and_writes_nothing() {
    // A plain directory, never a store: reading it must not make it one.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(dir.path().join("sub/a.txt"), b"hello").unwrap();
    let reader = LocalStore::open_for_reading(dir.path()).unwrap();
    let got = reader.get("sub/a.txt", None).await.unwrap();
    assert_eq!(&got.body[..], b"hello");
    assert_eq!(got.meta.etag, rules::md5_hex(b"hello"));
    assert_eq!(reader.head("sub/a.txt").await.unwrap().size, 5);
    let listed = reader.list(ListRequest::default()).await.unwrap();
    assert_eq!(listed.objects.len(), 1);
    let failures = [
        reader
            .put("b.txt", Bytes::from_static(b"x"), PutOptions::default())
            .await
            .map(drop),
        reader.delete("sub/a.txt").await,
        reader
            .create_multipart("c", PutOptions::default())
            .await
            .map(drop),
    ];
    for failure in failures {
        let err = failure.unwrap_err();
        assert!(err.to_string().contains("opened for reading only"), "{err}");
    }
    assert_eq!(
        names(dir.path()),
        vec!["sub".to_string()],
        "nothing was created beside the data"
    );
    assert_eq!(
        std::fs::read(dir.path().join("sub/a.txt")).unwrap(),
        b"hello"
    );

    // A real store reads the same, with what its records hold.
    let (_dir, store) = open();
    store
        .put(
            "k",
            Bytes::from_static(b"body"),
            opts(Some("text/x"), &[("a", "b")]),
        )
        .await
        .unwrap();
    let reader = LocalStore::open_for_reading(store.root()).unwrap();
    let head = reader.head("k").await.unwrap();
    assert_eq!(head.headers.content_type.as_deref(), Some("text/x"));
    assert_eq!(head.metadata.get("a").map(String::as_str), Some("b"));
    assert!(LocalStore::open_for_reading(store.root().join("missing")).is_err());
}

#[tokio::test]
async fn an_upload_the_key_cannot_hold_fails_at_creation() {
    let (_dir, store) = open();
    put(&store, "dir/a", b"x").await;
    for key in ["dir", "dir/a/b"] {
        let err = store
            .create_multipart(key, PutOptions::default())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::InvalidKey, "{key}: {err}");
    }
    assert!(
        store
            .create_multipart("dir/b", PutOptions::default())
            .await
            .is_ok()
    );
}

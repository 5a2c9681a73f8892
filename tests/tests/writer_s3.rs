//! The recoverable writer against real S3 API servers (moto, which enforces S3's rules closely,
//! and s3s-fs), started on loopback by the harness, with real 5 MiB parts.

use std::sync::Arc;
use std::time::Duration;

use fs_core::store::fault::{FaultConfig, FaultStore, Op};
use fs_core::store::{DynStore, ObjectStoreExt};
use fs_core::token::Token;
use fs_core::writer::WriterError;
use fs_core::{Index, RecoverableWriter, WriterConfig};
use harness::{ServerKind, TestServer};

const MIB: usize = 1024 * 1024;

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i / 7) as u8).wrapping_mul(13).wrapping_add(seed))
        .collect()
}

struct Env {
    _cache: tempfile::TempDir,
    store: DynStore,
    writer: RecoverableWriter,
}

fn env(store: DynStore, index: Index) -> Env {
    let cache = tempfile::tempdir().unwrap();
    let config = WriterConfig {
        part_size: 5 * MIB as u64,
        cache_parts: true,
        cache_dir: cache.path().to_path_buf(),
        retry: fs_core::retry::RetryPolicy {
            base_delay: Duration::from_millis(5),
            ..Default::default()
        },
        ..Default::default()
    };
    let writer = RecoverableWriter::new(store.clone(), index, config).unwrap();
    Env {
        _cache: cache,
        store,
        writer,
    }
}

async fn body(store: &DynStore, key: &str) -> Vec<u8> {
    store.get(key, None).await.unwrap().body.to_vec()
}

async fn contract(kind: ServerKind) {
    let server = TestServer::start(kind).await;
    let e = env(server.store().await, Index::temporary().unwrap());

    // Write past several parts, persist, write more (a whole part too), crash (drop), recover.
    let first = data(11 * MIB + 321, 1);
    let mut w = e.writer.open("dir/stream.bin").await.unwrap();
    w.write(&first).await.unwrap();
    let token = w.persist().await.unwrap();
    assert_eq!(token.parts.len(), 2);
    w.write(&data(6 * MIB, 2)).await.unwrap();
    w.persist().await.unwrap();
    drop(w);
    let mut w = e.writer.recover(&token).await.unwrap();
    assert_eq!(w.len(), first.len() as u64);
    let second = data(MIB, 3);
    w.write(&second).await.unwrap();
    let committer = w.close_for_commit().await.unwrap();
    assert!(
        e.store.head_opt("dir/stream.bin").await.unwrap().is_none(),
        "invisible before commit"
    );
    let out = committer.commit().await.unwrap();
    let mut expected = first.clone();
    expected.extend_from_slice(&second);
    assert_eq!(out.size, expected.len() as u64);
    assert_eq!(body(&e.store, "dir/stream.bin").await, expected);
    assert!(
        committer
            .commit_after_recovery()
            .await
            .unwrap()
            .already_committed,
        "idempotent commit"
    );
    assert!(
        e.store.list_all(".rivulet/").await.unwrap().is_empty(),
        "tails deleted at commit"
    );

    // Append copies the prefix server-side.
    let mut w = e.writer.open_append("dir/stream.bin").await.unwrap();
    w.write(b"appended").await.unwrap();
    assert_eq!(
        &w.read_at(expected.len() as u64 - 2, 10).await.unwrap()[..],
        &[&expected[expected.len() - 2..], b"appended"].concat()[..]
    );
    w.close_for_commit().await.unwrap().commit().await.unwrap();
    expected.extend_from_slice(b"appended");
    assert_eq!(body(&e.store, "dir/stream.bin").await, expected);

    // Truncate the committed object: above and below one part, then grow.
    e.writer
        .truncate_object("dir/stream.bin", 6 * MIB as u64 + 5)
        .await
        .unwrap();
    assert_eq!(
        body(&e.store, "dir/stream.bin").await,
        &expected[..6 * MIB + 5]
    );
    e.writer
        .truncate_object("dir/stream.bin", 100)
        .await
        .unwrap();
    e.writer
        .truncate_object("dir/stream.bin", 104)
        .await
        .unwrap();
    assert_eq!(
        body(&e.store, "dir/stream.bin").await,
        [&expected[..100], &[0u8; 4][..]].concat()
    );

    // An empty file is an empty object.
    let mut w = e.writer.open("empty").await.unwrap();
    w.close_for_commit().await.unwrap().commit().await.unwrap();
    assert_eq!(e.store.head("empty").await.unwrap().size, 0);

    // A gone upload is found at recover, naming the key.
    let mut w = e.writer.open("aborted.bin").await.unwrap();
    w.write(b"x").await.unwrap();
    let token = w.persist().await.unwrap();
    drop(w);
    e.writer.abort(&token).await.unwrap();
    let err = e.writer.recover(&token).await.unwrap_err();
    assert!(
        matches!(err, WriterError::Recover { .. }) && err.to_string().contains("aborted.bin"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_contract_on_moto() {
    contract(ServerKind::Moto).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_contract_on_s3s_fs() {
    contract(ServerKind::S3sFs).await;
}

/// A lost index is rebuilt from the store: the tails give each upload's latest token, and
/// ListMultipartUploads finds the uploads that never persisted (s3s-fs cannot list uploads:
/// the rebuild says so and checks each tail group's upload with ListParts instead).
async fn index_rebuilt_from(kind: ServerKind) {
    let server = TestServer::start(kind).await;
    let store = server.store().await;
    let e = env(store.clone(), Index::temporary().unwrap());
    let mut w = e.writer.open("a.bin").await.unwrap();
    w.write(&data(5 * MIB + 10, 4)).await.unwrap();
    let token = w.persist().await.unwrap();
    std::mem::forget(w);
    let mut never = e.writer.open("never-persisted.bin").await.unwrap();
    never.write(&data(6 * MIB, 5)).await.unwrap();
    let never_upload = never.upload_id().to_string();
    std::mem::forget(never);
    // A tail group whose upload is gone: a file persisted, then committed. (With a part: an
    // upload of s3s-fs is known to be gone only by its parts being gone.)
    let mut done = e.writer.open("done.bin").await.unwrap();
    done.write(&data(5 * MIB + 4, 6)).await.unwrap();
    let done_token = done.persist().await.unwrap();
    let tail = store.get(&done_token.tail_key, None).await.unwrap().body;
    done.close_for_commit()
        .await
        .unwrap()
        .commit()
        .await
        .unwrap();
    // The commit deleted the tail; put it back, as a crash between the two would leave it.
    store
        .put(&done_token.tail_key, tail, Default::default())
        .await
        .unwrap();

    let fresh = env(store.clone(), Index::temporary().unwrap());
    assert!(fresh.writer.recover_all().await.unwrap().is_empty());
    let report = fresh.writer.rebuild_index().await.unwrap();
    assert_eq!(
        report.restored,
        vec![("a.bin".to_string(), token.upload_id.clone())]
    );
    assert_eq!(report.stale_tail_groups, 1, "{report:?}");
    match kind {
        ServerKind::Moto => {
            assert_eq!(report.uploads_not_listed, None);
            assert_eq!(
                report.untracked_uploads,
                vec![("never-persisted.bin".to_string(), never_upload)]
            );
        }
        ServerKind::S3sFs => {
            assert!(report.uploads_not_listed.is_some(), "{report:?}");
            assert!(report.untracked_uploads.is_empty());
        }
    }
    assert_eq!(
        fresh.writer.recover_all().await.unwrap(),
        vec![Token::Resume(token.clone())]
    );
    let mut w = fresh.writer.recover(&token).await.unwrap();
    w.close_for_commit().await.unwrap().commit().await.unwrap();
    assert_eq!(body(&store, "a.bin").await, data(5 * MIB + 10, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_rebuilt_from_moto() {
    index_rebuilt_from(ServerKind::Moto).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_rebuilt_from_s3s_fs() {
    index_rebuilt_from(ServerKind::S3sFs).await;
}

/// 5 % injected 5xx errors and 5 % lost answers on a real server: every file either commits
/// exactly what was persisted or fails with a clear error; nothing persisted is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_on_moto_lose_nothing_persisted() {
    let server = TestServer::moto().await;
    let faults = Arc::new(FaultStore::new(
        server.store().await,
        FaultConfig {
            error_rate: 0.05,
            lost_answer_rate: 0.05,
            ..Default::default()
        },
    ));
    let e = env(faults.clone(), Index::temporary().unwrap());
    for file in 0..3u8 {
        let key = format!("faulty/{file}.bin");
        let mut expected = Vec::new();
        let mut token = None;
        for round in 0..6u8 {
            let mut w = match &token {
                None => e.writer.open(&key).await.unwrap(),
                Some(t) => e
                    .writer
                    .recover(t)
                    .await
                    .unwrap_or_else(|err| panic!("recover {key}: {err}")),
            };
            let chunk = data(MIB * 2 + round as usize * 1000, round ^ file);
            w.write(&chunk).await.unwrap();
            match w.persist().await {
                Ok(t) => {
                    expected.extend_from_slice(&chunk);
                    assert_eq!(t.len(), expected.len() as u64);
                    token = Some(t);
                }
                Err(err) => assert!(
                    err.to_string().contains(&key) || err.to_string().contains("tails"),
                    "unclear error: {err}"
                ),
            }
        }
        let mut w = e.writer.recover(token.as_ref().unwrap()).await.unwrap();
        let committer = w.close_for_commit().await.unwrap();
        let outcome = loop {
            match committer.commit().await {
                Ok(o) => break o,
                Err(err) => assert!(err.to_string().contains(&key), "unclear error: {err}"),
            }
        };
        assert_eq!(outcome.size, expected.len() as u64);
        faults.set_config(FaultConfig::default());
        assert_eq!(body(&e.store, &key).await, expected, "{key}");
        faults.set_config(FaultConfig {
            error_rate: 0.05,
            lost_answer_rate: 0.05,
            ..Default::default()
        });
    }
    assert!(
        faults.calls(Op::UploadPart) >= 6,
        "parts went through the faulty store"
    );
}

/// Two appends to one key that overlap: the second to commit must fail (and the first's bytes
/// stay), on servers that ignore If-Match and If-None-Match on CompleteMultipartUpload too
/// (moto ignores If-Match there, s3s-fs both): the writer checks the condition itself before it
/// completes. A retried commit of the winner still reports `already_committed`.
async fn overlapping_appends_never_lose_one(kind: ServerKind) {
    let server = TestServer::start(kind).await;
    let e = env(server.store().await, Index::temporary().unwrap());
    let base = data(6 * MIB + 11, 7);
    let (one, two) = (data(MIB + 3, 8), data(2 * MIB + 5, 9));
    for (key, existing) in [("race/existing.bin", true), ("race/new.bin", false)] {
        if existing {
            e.store
                .put(key, base.clone().into(), Default::default())
                .await
                .unwrap();
        }
        let mut first = e.writer.open_append(key).await.unwrap();
        let mut second = e.writer.open_append(key).await.unwrap();
        first.write(&one).await.unwrap();
        second.write(&two).await.unwrap();
        let winner = second.close_for_commit().await.unwrap();
        winner.commit().await.unwrap();
        let mut want = if existing { base.clone() } else { Vec::new() };
        want.extend_from_slice(&two);
        let loser = first.close_for_commit().await.unwrap();
        let err = loser.commit().await.unwrap_err();
        assert!(
            matches!(err, WriterError::Commit { .. }) && err.to_string().contains(key),
            "{kind:?} {key}: {err}"
        );
        assert_eq!(body(&e.store, key).await, want, "{kind:?} {key}");
        assert!(
            winner.commit().await.unwrap().already_committed,
            "{kind:?} {key}: a retried commit is idempotent"
        );
        loser.abort().await.unwrap();
        assert_eq!(body(&e.store, key).await, want, "{kind:?} {key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_appends_on_moto() {
    overlapping_appends_never_lose_one(ServerKind::Moto).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_appends_on_s3s_fs() {
    overlapping_appends_never_lose_one(ServerKind::S3sFs).await;
}

/// Growing a file past what 10,000 parts hold fails at once, before a byte is uploaded (it used
/// to write zeros part after part until the limit, gigabytes later: `rivulet truncate` of a
/// missing object to 80 GiB filled the disk under a local store). Both for a new file and for
/// an existing object opened for appending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn growing_past_the_part_limit_fails_before_writing() {
    let server = TestServer::moto().await;
    let faults = Arc::new(FaultStore::new(
        server.store().await,
        FaultConfig::default(),
    ));
    let e = env(faults.clone(), Index::temporary().unwrap());
    let too_long = 5 * MIB as u64 * 10_001;
    let key = "grow/file.bin";
    let mut want = Vec::new();
    for round in 0..2 {
        let mut w = e.writer.open_append(key).await.unwrap();
        w.write(b"start").await.unwrap();
        want.extend_from_slice(b"start");
        let uploaded = faults.calls(Op::UploadPart);
        let err = tokio::time::timeout(Duration::from_secs(10), w.truncate(too_long))
            .await
            .unwrap_or_else(|_| panic!("round {round}: the truncate did not fail at once"))
            .unwrap_err();
        assert!(
            matches!(err, WriterError::TooManyParts { .. }) && err.to_string().contains(key),
            "round {round}: {err}"
        );
        assert_eq!(faults.calls(Op::UploadPart), uploaded, "nothing uploaded");
        // The file is as it was, and still usable.
        assert_eq!(w.len(), want.len() as u64);
        want.resize(want.len() + 5 * MIB + 1, 0);
        w.truncate(want.len() as u64).await.unwrap();
        w.close_for_commit().await.unwrap().commit().await.unwrap();
        assert_eq!(body(&e.store, key).await, want, "round {round}");
    }
}

/// One bucket opened as two stores (`s3://bkt` and `s3://bkt/logs`, as a CLI copy and a sink
/// with a prefix do): a gc of the prefix must not abort what a writer of the whole bucket has
/// open under it. It once judged by its own store's index entries only, and `gc --all-uploads`
/// on the prefix aborted an upload the index held, losing a file `recover --commit` could
/// have published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_of_a_prefix_spares_what_the_whole_bucket_has_open() {
    let server = TestServer::moto().await;
    let index = Index::temporary().unwrap();
    let whole = env(server.store().await, index.clone());
    let logs = env(server.store_with_prefix("logs").await, index);

    let persisted = data(6 * MIB + 5, 3);
    let mut open = whole.writer.open("logs/a.bin").await.unwrap();
    open.write(&persisted).await.unwrap();
    let token = open.persist().await.unwrap();
    drop(open);
    let mut never_persisted = whole.writer.open("logs/b.bin").await.unwrap();
    never_persisted.write(&data(MIB, 4)).await.unwrap();
    // An upload nothing references: the gc must still find it.
    let orphan = logs
        .store
        .create_multipart("c.bin", Default::default())
        .await
        .unwrap();

    let report = logs
        .writer
        .gc(&fs_core::writer::GcOptions {
            older_than: Duration::ZERO,
            dry_run: false,
            all_uploads: true,
        })
        .await
        .unwrap();
    let aborted: Vec<&str> = report
        .aborted_uploads
        .iter()
        .map(|(_, u)| u.as_str())
        .collect();
    assert_eq!(aborted, [orphan.as_str()], "{report:?}");

    let commit = |mut file: fs_core::FileWriter| async move {
        file.close_for_commit()
            .await
            .unwrap()
            .commit()
            .await
            .unwrap();
    };
    commit(whole.writer.recover(&token).await.unwrap()).await;
    assert_eq!(body(&whole.store, "logs/a.bin").await, persisted);
    never_persisted.write(b"more").await.unwrap();
    commit(never_persisted).await;
}

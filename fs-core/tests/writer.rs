//! The recoverable writer's contract, rule by rule, on the memory store (with a small minimum
//! part size so that multipart logic runs on kilobytes) and a fault-injecting wrapper.

use std::sync::Arc;
use std::time::Duration;

use fs_core::store::fault::{FaultConfig, FaultStore, Op};
use fs_core::store::memory::MemoryStore;
use fs_core::store::{ContentHeaders, DynStore, ObjectStore, ObjectStoreExt, PutOptions};
use fs_core::token::Token;
use fs_core::writer::{FileWriter, GcOptions, WriterError};
use fs_core::{Index, RecoverableWriter, WriterConfig};

const PART: u64 = 4096;

struct Fixture {
    mem: MemoryStore,
    faults: Arc<FaultStore>,
    writer: RecoverableWriter,
    index: Index,
    cache: tempfile::TempDir,
}

fn fixture_with(max_in_flight: usize, latency: Option<Duration>) -> Fixture {
    let mem = MemoryStore::new().with_min_part_size(1024);
    let faults = Arc::new(FaultStore::new(
        Arc::new(mem.clone()),
        FaultConfig {
            latency: latency.map(|l| l..l * 2),
            ..Default::default()
        },
    ));
    let index = Index::temporary().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let config = WriterConfig {
        part_size: PART,
        max_in_flight,
        cache_parts: true,
        cache_dir: cache.path().to_path_buf(),
        ..Default::default()
    };
    let store: DynStore = faults.clone();
    let writer = RecoverableWriter::new(store, index.clone(), config).unwrap();
    Fixture {
        mem,
        faults,
        writer,
        index,
        cache,
    }
}

impl Fixture {
    /// Another writer service over the fixture's (fault-injecting) store and index.
    fn writer_with(&self, config: WriterConfig) -> RecoverableWriter {
        RecoverableWriter::new(self.faults.clone(), self.index.clone(), config).unwrap()
    }
}

fn fixture() -> Fixture {
    fixture_with(4, None)
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

async fn object(f: &Fixture, key: &str) -> Option<Vec<u8>> {
    match f.mem.get(key, None).await {
        Ok(got) => Some(got.body.to_vec()),
        Err(_) => None,
    }
}

/// Closes `w` and commits what it wrote, as a test's last step.
async fn close_and_commit(mut w: FileWriter) {
    w.close_for_commit().await.unwrap().commit().await.unwrap();
}

fn cache_files(f: &Fixture) -> usize {
    walk(f.cache.path())
}

fn walk(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    if e.path().is_dir() {
                        walk(&e.path())
                    } else {
                        1
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn full_parts_upload_concurrently_with_bounded_memory() {
    let f = fixture_with(3, Some(Duration::from_millis(20)));
    let mut w = f.writer.open("big.bin").await.unwrap();
    let body = data(PART as usize * 20 + 100, 1);
    for chunk in body.chunks(1000) {
        w.write(chunk).await.unwrap();
    }
    assert!(
        f.faults.calls(Op::UploadPart) >= 18,
        "parts upload as they fill, before close"
    );
    let max = f.faults.max_concurrent(Op::UploadPart);
    assert!(max >= 2, "parts should upload concurrently, saw {max}");
    assert!(
        max <= 3,
        "in-flight parts must be bounded by max_in_flight, saw {max}"
    );
    assert!(
        w.peak_buffered_bytes() <= (3 + 2) * PART,
        "peak {}",
        w.peak_buffered_bytes()
    );
    close_and_commit(w).await;
    assert_eq!(object(&f, "big.bin").await.unwrap(), body);
}

#[tokio::test]
async fn an_idle_file_lets_go_of_its_part_buffer_and_takes_one_again_on_its_next_write() {
    let f = fixture();
    let mut w = f.writer.open("idle.bin").await.unwrap();
    let mut body = data(PART as usize * 2 + 700, 3);
    w.write(&body).await.unwrap();
    // 700 bytes in a buffer of a part: all but them are let go, once.
    assert_eq!(w.shrink_idle_buffer(), PART as usize - 700);
    assert_eq!(w.shrink_idle_buffer(), 0, "nothing more to let go");
    assert_eq!(w.len(), body.len() as u64);
    assert_eq!(
        w.read_at(2 * PART, 700).await.unwrap(),
        body[2 * PART as usize..]
    );
    let token = w.persist().await.unwrap();
    // The next write takes a part buffer again, the tail's bytes first.
    let more = data(PART as usize + 10, 4);
    w.write(&more).await.unwrap();
    // Half a part or more stays where it is.
    let half = data(PART as usize / 2 - 10, 5);
    w.write(&half).await.unwrap();
    assert_eq!(w.shrink_idle_buffer(), 0, "the tail fills half its buffer");
    let mut whole = body.clone();
    whole.extend_from_slice(&more);
    whole.extend_from_slice(&half);
    assert_eq!(w.len(), whole.len() as u64);
    assert_eq!(w.read_at(0, whole.len() as u64).await.unwrap(), whole);
    drop(w);

    // The persisted shrunk tail recovers as any other, into a part buffer again.
    let mut again = f.writer.recover(&token).await.unwrap();
    assert_eq!(again.len(), body.len() as u64);
    assert_eq!(again.shrink_idle_buffer(), PART as usize - 700);
    let last = data(PART as usize * 2, 6);
    again.write(&last).await.unwrap();
    body.extend_from_slice(&last);
    close_and_commit(again).await;
    assert_eq!(object(&f, "idle.bin").await.unwrap(), body);
}

#[tokio::test]
async fn one_large_write_does_not_buffer_beyond_the_bound() {
    let f = fixture_with(2, Some(Duration::from_millis(5)));
    let mut w = f.writer.open("one.bin").await.unwrap();
    let body = data(PART as usize * 30, 2);
    w.write(&body).await.unwrap();
    assert!(w.peak_buffered_bytes() <= (2 + 2) * PART);
    close_and_commit(w).await;
    assert_eq!(object(&f, "one.bin").await.unwrap(), body);
}

#[tokio::test]
async fn write_bytes_uploads_whole_parts_from_a_part_boundary_without_a_copy() {
    let mem = MemoryStore::new()
        .with_min_part_size(1024)
        .with_part_reads();
    let index = Index::temporary().unwrap();
    let config = WriterConfig {
        part_size: PART,
        ..Default::default()
    };
    let writer = RecoverableWriter::new(Arc::new(mem.clone()), index, config).unwrap();
    let mut w = writer.open("bytes.bin").await.unwrap();
    let part = PART as usize;
    let body = data(part * 6 + 100, 9);
    // 2.5 parts from a boundary: parts 1 and 2 are slices of this buffer, the half part is
    // copied into the tail.
    let first = bytes::Bytes::copy_from_slice(&body[..part * 5 / 2]);
    w.write_bytes(first.clone()).await.unwrap();
    // The tail is not empty: this buffer's bytes are copied (part 3 takes the tail's half
    // part first, so nothing of it starts on a boundary)...
    let second = bytes::Bytes::copy_from_slice(&body[part * 5 / 2..part * 4]);
    w.write_bytes(second).await.unwrap();
    // ... and after an aligned `write`, whole parts are sliced again (part 5).
    w.write(&body[part * 4..part * 5]).await.unwrap();
    let third = bytes::Bytes::copy_from_slice(&body[part * 5..]);
    w.write_bytes(third.clone()).await.unwrap();
    let token = w.persist().await.unwrap();
    assert_eq!(token.len(), body.len() as u64);

    let stored = |number: u32| {
        let token = &token;
        let mem = &mem;
        async move {
            let record = token.parts.iter().find(|p| p.number == number).unwrap();
            mem.read_part("bytes.bin", &token.upload_id, number, &record.etag, 0..PART)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        stored(1).await.as_ptr(),
        first.as_ptr(),
        "part 1 is a slice of the buffer"
    );
    assert_eq!(stored(2).await.as_ptr(), first[part..].as_ptr());
    assert_eq!(
        stored(6).await.as_ptr(),
        third.as_ptr(),
        "part 6 is a slice of the buffer"
    );
    assert_ne!(stored(3).await.as_ptr(), first[part * 2..].as_ptr());

    close_and_commit(w).await;
    let got = mem.get("bytes.bin", None).await.unwrap().body;
    assert_eq!(got.as_ref(), body.as_slice());
}

#[tokio::test]
async fn write_bytes_refuses_what_would_pass_the_part_limit_before_writing() {
    let f = fixture();
    let mut w = f.writer.open("limit.bin").await.unwrap();
    // 10,000 whole parts: one more than the numbers left once the final tail's is reserved.
    let too_much = bytes::Bytes::from(vec![0u8; (PART * 10_000) as usize]);
    let err = w.write_bytes(too_much).await.unwrap_err();
    assert!(
        matches!(err, WriterError::TooManyParts { .. }),
        "unexpected error: {err}"
    );
    assert_eq!(w.len(), 0, "nothing was written");
}

#[tokio::test]
async fn persist_stages_a_new_small_tail_object_each_time() {
    let f = fixture();
    let mut w = f.writer.open("p.txt").await.unwrap();
    w.write(&data(PART as usize * 3 + 10, 3)).await.unwrap();
    let puts_before = f.faults.calls(Op::Put);
    let t1 = w.persist().await.unwrap();
    assert_eq!(
        f.faults.calls(Op::Put),
        puts_before + 1,
        "one PUT per persist"
    );
    assert!(t1.tail_key.starts_with(".rivulet/tails/"));
    assert_eq!(t1.tail_len, 10);
    assert_eq!(t1.len(), PART * 3 + 10);
    assert_eq!(t1.parts.len(), 3);
    assert!(
        t1.parts.iter().all(|p| !p.etag.is_empty()),
        "persist waits for in-flight parts"
    );
    let tail_obj = f.mem.head(&t1.tail_key).await.unwrap();
    assert!(
        tail_obj.size < 10 + 512,
        "the tail object holds the tail, not the file"
    );
    w.write(b"more").await.unwrap();
    let t2 = w.persist().await.unwrap();
    assert_ne!(
        t1.tail_key, t2.tail_key,
        "every persist stages a new tail key"
    );
    assert!(
        f.mem.head(&t1.tail_key).await.is_ok(),
        "older tails stay for older tokens"
    );
    let latest = f.writer.recover_all().await.unwrap();
    assert_eq!(
        latest,
        vec![Token::Resume(t2)],
        "the index holds the latest token"
    );
}

#[tokio::test]
async fn recover_resumes_exactly_at_the_token() {
    let f = fixture();
    let mut w = f.writer.open("r.txt").await.unwrap();
    let first = data(PART as usize * 2 + 77, 4);
    w.write(&first).await.unwrap();
    let token = w.persist().await.unwrap();
    // Written after the token, including whole parts: must be gone after recovery.
    w.write(&data(PART as usize * 3, 9)).await.unwrap();
    w.persist().await.unwrap();
    drop(w);
    let mut w = f.writer.recover(&token).await.unwrap();
    assert_eq!(w.len(), first.len() as u64);
    let second = data(PART as usize + 5, 5);
    w.write(&second).await.unwrap();
    close_and_commit(w).await;
    let mut expected = first.clone();
    expected.extend_from_slice(&second);
    assert_eq!(object(&f, "r.txt").await.unwrap(), expected);
}

#[tokio::test]
async fn recover_checks_the_upload_and_the_tail() {
    let f = fixture();
    let mut w = f.writer.open("gone.txt").await.unwrap();
    w.write(b"hello").await.unwrap();
    let token = w.persist().await.unwrap();
    drop(w);

    // A corrupted tail object fails its checks, naming the key.
    let original = f.mem.get(&token.tail_key, None).await.unwrap().body;
    let mut bad = original.to_vec();
    bad[0] ^= 1;
    f.mem
        .put(&token.tail_key, bad.into(), PutOptions::default())
        .await
        .unwrap();
    let err = f.writer.recover(&token).await.unwrap_err();
    assert!(matches!(err, WriterError::Recover { .. }), "{err}");
    assert!(err.to_string().contains("gone.txt"), "{err}");
    assert!(err.to_string().contains("fails its checksum"), "{err}");
    f.mem
        .put(&token.tail_key, original, PutOptions::default())
        .await
        .unwrap();

    // A missing tail.
    f.mem.delete(&token.tail_key).await.unwrap();
    let err = f.writer.recover(&token).await.unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");

    // An upload that no longer exists is found at recover, not at commit.
    f.mem
        .abort_multipart("gone.txt", &token.upload_id)
        .await
        .unwrap();
    let err = f.writer.recover(&token).await.unwrap_err();
    assert!(
        err.to_string().contains("no longer exists") && err.to_string().contains("gone.txt"),
        "{err}"
    );
}

/// Every reason `recover` refuses a token is found before anything is written, and named.
#[tokio::test]
async fn recover_names_each_part_and_tail_mismatch() {
    let f = fixture();
    let mut w = f.writer.open("checked.txt").await.unwrap();
    w.write(&data(2 * PART as usize + 10, 4)).await.unwrap();
    let token = w.persist().await.unwrap();
    drop(w);
    assert_eq!(token.parts.len(), 2);
    let refused = |token: fs_core::token::ResumeToken| {
        let writer = f.writer.clone();
        async move {
            let err = writer.recover(&token).await.unwrap_err();
            assert!(matches!(err, WriterError::Recover { .. }), "{err}");
            assert!(err.to_string().contains("checked.txt"), "{err}");
            err.to_string()
        }
    };

    // A part the store does not have.
    let mut missing = token.clone();
    let mut extra = missing.parts[1].clone();
    extra.number = 3;
    missing.parts.push(extra);
    let why = refused(missing).await;
    assert!(why.contains("part 3 of the upload is missing"), "{why}");

    // A part of another size than the token's.
    let mut resized = token.clone();
    resized.parts[0].size += 1;
    let why = refused(resized).await;
    assert!(
        why.contains(&format!(
            "part 1 has {PART} bytes in the store, the token says {}",
            PART + 1
        )),
        "{why}"
    );

    // A tail of another length than the token's.
    let mut longer = token.clone();
    longer.tail_len += 1;
    let why = refused(longer).await;
    assert!(why.contains("does not match the token"), "{why}");

    // A part uploaded again with other bytes since the token.
    f.mem
        .upload_part(
            "checked.txt",
            &token.upload_id,
            2,
            data(PART as usize, 9).into(),
        )
        .await
        .unwrap();
    let why = refused(token.clone()).await;
    assert!(why.contains("part 2 was overwritten"), "{why}");
}

/// One failure at a chosen call of each kind the writer makes (the fault store's `fail_nth`):
/// every one is retried, and the file commits byte for byte.
#[tokio::test]
async fn a_failure_at_any_one_call_is_retried() {
    let f = fixture();
    let mut want = Vec::new();
    f.faults.set_config(FaultConfig {
        fail_nth: [
            (Op::CreateMultipart, 1),
            (Op::UploadPart, 2),
            (Op::Put, 1),
            (Op::CompleteMultipart, 1),
        ]
        .into_iter()
        .collect(),
        ..Default::default()
    });
    let mut w = f.writer.open("retried.txt").await.unwrap();
    for (i, len) in [PART as usize * 3 + 5, 700, PART as usize]
        .into_iter()
        .enumerate()
    {
        let chunk = data(len, i as u8);
        w.write(&chunk).await.unwrap();
        want.extend_from_slice(&chunk);
        w.persist().await.unwrap();
    }
    close_and_commit(w).await;
    assert_eq!(object(&f, "retried.txt").await.unwrap(), want);
    // Each failed call was made once more.
    assert_eq!(f.faults.calls(Op::CreateMultipart), 2);
    assert_eq!(f.faults.calls(Op::CompleteMultipart), 2);
    assert_eq!(f.faults.calls(Op::UploadPart), 5 + 1);
}

/// Without retries, a failed part upload fails the writer with an error naming the call, and
/// what was persisted before is intact: recovered from its token, the file goes on.
#[tokio::test]
async fn a_failed_part_upload_without_retries_loses_nothing_persisted() {
    let f = fixture();
    let writer = f.writer_with(WriterConfig {
        part_size: PART,
        cache_parts: true,
        cache_dir: f.cache.path().to_path_buf(),
        retry: fs_core::retry::RetryPolicy {
            max_attempts: 1,
            ..Default::default()
        },
        ..Default::default()
    });
    let mut w = writer.open("failing.txt").await.unwrap();
    let persisted = data(PART as usize + 100, 1);
    w.write(&persisted).await.unwrap();
    let token = w.persist().await.unwrap();
    f.faults.set_config(FaultConfig {
        fail_nth: [(Op::UploadPart, f.faults.calls(Op::UploadPart) + 1)]
            .into_iter()
            .collect(),
        ..Default::default()
    });
    let failed = match w.write(&data(2 * PART as usize, 2)).await {
        Err(e) => e,
        Ok(()) => w.persist().await.unwrap_err(),
    };
    assert!(failed.to_string().contains("upload part"), "{failed}");
    assert!(
        w.persist().await.is_err(),
        "a failed writer refuses to persist"
    );
    drop(w);

    let mut resumed = writer.recover(&token).await.unwrap();
    let more = data(PART as usize * 2 + 3, 3);
    resumed.write(&more).await.unwrap();
    close_and_commit(resumed).await;
    let mut want = persisted;
    want.extend_from_slice(&more);
    assert_eq!(object(&f, "failing.txt").await.unwrap(), want);
}

/// Over a store that cannot read an upload's parts back (S3), a writer without a part cache
/// cannot read or cut its uploaded parts; it says so, and why, instead of guessing.
#[tokio::test]
async fn without_a_part_cache_uploaded_parts_are_refused_with_the_reason() {
    let f = fixture();
    let writer = f.writer_with(WriterConfig {
        part_size: PART,
        cache_parts: false,
        ..Default::default()
    });
    let mut w = writer.open("uncached.txt").await.unwrap();
    w.write(&data(2 * PART as usize + 10, 6)).await.unwrap();
    w.persist().await.unwrap();
    let read = w.read_at(10, 20).await.unwrap_err();
    assert!(read.to_string().contains("cache_parts = false"), "{read}");
    // The tail is still readable.
    assert_eq!(
        w.read_at(2 * PART, 10).await.unwrap().as_ref(),
        &data(2 * PART as usize + 10, 6)[2 * PART as usize..]
    );
    let cut = w.truncate(PART + 1).await.unwrap_err();
    assert!(cut.to_string().contains("without a part cache"), "{cut}");
    // Nothing was lost by the refusals: the file commits whole.
    close_and_commit(w).await;
    assert_eq!(
        object(&f, "uncached.txt").await.unwrap(),
        data(2 * PART as usize + 10, 6)
    );
}

/// Read-your-writes is the default: a writer configured with nothing but its part size (and
/// where to cache) reads and cuts its uploaded parts over a store that cannot read an upload's
/// parts back, as S3 cannot.
#[tokio::test]
async fn by_default_a_writer_reads_and_cuts_its_uploaded_parts() {
    let f = fixture();
    assert!(
        !f.mem.reads_parts(),
        "the fixture's store must not serve parts itself"
    );
    let writer = f.writer_with(WriterConfig {
        part_size: PART,
        cache_dir: f.cache.path().to_path_buf(),
        ..Default::default()
    });
    let bytes = data(3 * PART as usize + 10, 8);
    let mut w = writer.open("default.txt").await.unwrap();
    w.write(&bytes).await.unwrap();
    w.persist().await.unwrap();
    // Across the first part boundary, from uploaded parts.
    let at = PART as usize - 5;
    assert_eq!(
        w.read_at(at as u64, 10).await.unwrap().as_ref(),
        &bytes[at..at + 10]
    );
    // A cut inside an uploaded part keeps its prefix.
    w.truncate(PART + 7).await.unwrap();
    assert_eq!(w.len(), PART + 7);
    close_and_commit(w).await;
    assert_eq!(
        object(&f, "default.txt").await.unwrap(),
        &bytes[..PART as usize + 7]
    );
}

#[tokio::test]
async fn older_tokens_stay_recoverable_after_newer_persists() {
    let f = fixture();
    let mut w = f.writer.open("ckpt.txt").await.unwrap();
    w.write(&data(PART as usize + 1, 1)).await.unwrap();
    let t1 = w.persist().await.unwrap();
    w.write(&data(PART as usize * 2, 2)).await.unwrap();
    let t2 = w.persist().await.unwrap();
    drop(w);
    // Restore from the older checkpoint, write a different future, persist.
    let mut w = f.writer.recover(&t1).await.unwrap();
    w.write(&data(PART as usize * 2, 3)).await.unwrap();
    w.persist().await.unwrap();
    drop(w);
    // The newer token is still good: its parts were not overwritten.
    let w = f.writer.recover(&t2).await.unwrap();
    assert_eq!(w.len(), t2.len());
    close_and_commit(w).await;
    let mut expected = data(PART as usize + 1, 1);
    expected.extend(data(PART as usize * 2, 2));
    assert_eq!(object(&f, "ckpt.txt").await.unwrap(), expected);
}

#[tokio::test]
async fn commit_is_atomic_and_idempotent() {
    let f = fixture();
    let mut w = f.writer.open("c.txt").await.unwrap();
    w.write(&data(PART as usize * 2 + 3, 6)).await.unwrap();
    assert!(object(&f, "c.txt").await.is_none());
    let committer = w.close_for_commit().await.unwrap();
    assert!(
        object(&f, "c.txt").await.is_none(),
        "nothing is visible before commit"
    );
    let out = committer.commit().await.unwrap();
    assert!(!out.already_committed);
    assert_eq!(
        object(&f, "c.txt").await.unwrap().len() as u64,
        PART * 2 + 3
    );
    // Again, and from a "restarted process" with only the token.
    let again = committer.commit_after_recovery().await.unwrap();
    assert!(again.already_committed);
    let other = f.writer.recover_for_commit(committer.token());
    assert!(
        other
            .commit_after_recovery()
            .await
            .unwrap()
            .already_committed
    );
    assert!(
        f.writer.recover_all().await.unwrap().is_empty(),
        "committed uploads leave the index"
    );
    assert_eq!(
        f.mem.list_all(".rivulet/").await.unwrap().len(),
        0,
        "tails are deleted at commit"
    );
    assert_eq!(f.mem.open_upload_count(), 0);
}

#[tokio::test]
async fn a_commit_whose_answer_was_lost_is_recognised() {
    let f = fixture();
    let mut w = f.writer.open("lost.txt").await.unwrap();
    w.write(&data(PART as usize + 9, 7)).await.unwrap();
    let committer = w.close_for_commit().await.unwrap();
    // The complete takes effect but every answer is lost until retries run out.
    f.faults.set_config(FaultConfig {
        lost_answer_rate: 1.0,
        ..Default::default()
    });
    assert!(committer.commit().await.is_err());
    f.faults.set_config(FaultConfig::default());
    let out = committer.commit().await.unwrap();
    assert!(out.already_committed);
    assert_eq!(
        object(&f, "lost.txt").await.unwrap(),
        data(PART as usize + 9, 7)
    );
}

#[tokio::test]
async fn a_stale_commit_token_is_an_error() {
    let f = fixture();
    let mut w = f.writer.open("s.txt").await.unwrap();
    w.write(&data(PART as usize + 1, 8)).await.unwrap();
    let committer = w.close_for_commit().await.unwrap();
    committer.commit().await.unwrap();
    // Someone replaces the object with other bytes of the same size.
    f.mem
        .put(
            "s.txt",
            data(PART as usize + 1, 99).into(),
            PutOptions::default(),
        )
        .await
        .unwrap();
    let err = committer.commit_after_recovery().await.unwrap_err();
    assert!(matches!(err, WriterError::Commit { .. }), "{err}");
    assert!(err.to_string().contains("replaced"), "{err}");
}

/// Two writers recovered from one token share its upload and its writer id. When one of them
/// has committed, the other's commit of different bytes of the same length must fail: the
/// object is not its commit, whatever the shared id says (the multipart ETag tells them apart).
#[tokio::test]
async fn a_commit_of_other_bytes_after_a_shared_recovery_is_an_error() {
    let f = fixture();
    let mut w = f.writer.open("twice.txt").await.unwrap();
    w.write(&data(PART as usize, 1)).await.unwrap();
    let token = w.persist().await.unwrap();
    drop(w);
    let mut first = f.writer.recover(&token).await.unwrap();
    first.write(&data(1000, 2)).await.unwrap();
    let first = first.close_for_commit().await.unwrap();
    let mut second = f.writer.recover(&token).await.unwrap();
    second.write(&data(1000, 3)).await.unwrap();
    let second = second.close_for_commit().await.unwrap();
    assert!(!second.commit().await.unwrap().already_committed);
    let mut want = data(PART as usize, 1);
    want.extend_from_slice(&data(1000, 3));
    assert_eq!(object(&f, "twice.txt").await.unwrap(), want);
    for attempt in [first.commit().await, first.commit_after_recovery().await] {
        let err = attempt.unwrap_err();
        assert!(matches!(err, WriterError::Commit { .. }), "{err}");
    }
    assert_eq!(object(&f, "twice.txt").await.unwrap(), want);
    // The commit that did publish stays idempotent.
    assert!(
        second
            .commit_after_recovery()
            .await
            .unwrap()
            .already_committed
    );
}

#[tokio::test]
async fn empty_files_commit_as_empty_objects() {
    let f = fixture();
    let mut w = f.writer.open("empty.txt").await.unwrap();
    let committer = w.close_for_commit().await.unwrap();
    committer.commit().await.unwrap();
    assert_eq!(object(&f, "empty.txt").await.unwrap(), Vec::<u8>::new());
    assert!(committer.commit().await.unwrap().already_committed);
    assert_eq!(f.mem.open_upload_count(), 0);
}

#[tokio::test]
async fn closed_writers_refuse_everything() {
    let f = fixture();
    let mut w = f.writer.open("x.txt").await.unwrap();
    w.write(b"abc").await.unwrap();
    let _committer = w.close_for_commit().await.unwrap();
    assert!(matches!(
        w.write(b"d").await,
        Err(WriterError::State { .. })
    ));
    assert!(matches!(
        w.close_for_commit().await,
        Err(WriterError::State { .. })
    ));
    assert!(w.persist().await.is_err());
    assert!(w.truncate(1).await.is_err());
}

#[tokio::test]
async fn dropping_a_writer_publishes_nothing_and_leaves_no_files() {
    let f = fixture();
    let mut w = f.writer.open("d.txt").await.unwrap();
    w.write(&data(PART as usize * 3 + 1, 1)).await.unwrap();
    // Parts are cached beside their upload, in the background.
    for _ in 0..200 {
        if cache_files(&f) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(cache_files(&f) > 0);
    drop(w);
    assert_eq!(cache_files(&f), 0, "no local temp files after drop");
    // The abort runs in the background.
    for _ in 0..100 {
        if f.mem.open_upload_count() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        f.mem.open_upload_count(),
        0,
        "an unpersisted upload is aborted"
    );
    assert!(object(&f, "d.txt").await.is_none());
    assert!(f.index.entries(&f.mem.describe()).unwrap().is_empty());
}

#[tokio::test]
async fn dropping_after_persist_keeps_the_upload_for_the_token() {
    let f = fixture();
    let mut w = f.writer.open("keep.txt").await.unwrap();
    w.write(b"abc").await.unwrap();
    let token = w.persist().await.unwrap();
    drop(w);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let w = f.writer.recover(&token).await.unwrap();
    close_and_commit(w).await;
    assert_eq!(object(&f, "keep.txt").await.unwrap(), b"abc");
}

#[tokio::test]
async fn the_part_limit_is_a_clean_error_before_10000_parts() {
    let mem = MemoryStore::new().with_min_part_size(16);
    let config = WriterConfig {
        part_size: 16,
        max_in_flight: 16,
        cache_parts: true,
        cache_dir: tempfile::tempdir().unwrap().path().to_path_buf(),
        ..Default::default()
    };
    let writer =
        RecoverableWriter::new(Arc::new(mem.clone()), Index::temporary().unwrap(), config).unwrap();
    let mut w = writer.open("huge.bin").await.unwrap();
    let chunk = vec![7u8; 16 * 1000];
    let mut written = 0u64;
    let err = loop {
        match w.write(&chunk).await {
            Ok(()) => written += chunk.len() as u64,
            Err(e) => break e,
        }
    };
    assert!(matches!(err, WriterError::TooManyParts { .. }), "{err}");
    assert!(err.to_string().contains("larger part size"), "{err}");
    assert_eq!(w.len(), written, "a refused write accepts nothing");
    // What was accepted still commits as a valid upload.
    close_and_commit(w).await;
    assert_eq!(mem.head("huge.bin").await.unwrap().size, written);
}

#[tokio::test]
async fn cleanup_deletes_only_that_tokens_tail_and_tolerates_repeats() {
    let f = fixture();
    let mut w = f.writer.open("t.txt").await.unwrap();
    w.write(b"one").await.unwrap();
    let t1 = w.persist().await.unwrap();
    w.write(b"two").await.unwrap();
    let t2 = w.persist().await.unwrap();
    f.writer.cleanup(&t1).await.unwrap();
    f.writer.cleanup(&t1).await.unwrap();
    assert!(f.mem.head(&t1.tail_key).await.is_err());
    assert!(f.mem.head(&t2.tail_key).await.is_ok());
    let entry = f
        .index
        .get(&f.mem.describe(), &t2.upload_id)
        .unwrap()
        .unwrap();
    assert_eq!(entry.live_tails, vec![t2.tail_key.clone()]);
    // The latest token keeps its tail: after a crash, recover_all hands it out.
    f.writer.cleanup(&t2).await.unwrap();
    assert!(f.mem.head(&t2.tail_key).await.is_ok());
    drop(w);
    assert_eq!(
        f.writer.recover_all().await.unwrap(),
        vec![Token::Resume(t2.clone())]
    );
    let w = f.writer.recover(&t2).await.unwrap();
    assert_eq!(w.read_at(0, 100).await.unwrap(), &b"onetwo"[..]);
}

#[tokio::test]
async fn gc_removes_only_unreferenced_old_leftovers() {
    let f = fixture();
    // A live file with a persisted token.
    let mut live = f.writer.open("live.txt").await.unwrap();
    live.write(b"keep me").await.unwrap();
    let live_token = live.persist().await.unwrap();
    // A crashed writer whose index entry was lost: its upload and tail are orphans.
    let mut orphan = f.writer.open("orphan.txt").await.unwrap();
    orphan.write(b"lost").await.unwrap();
    let orphan_token = orphan.persist().await.unwrap();
    std::mem::forget(orphan);
    f.index
        .remove(&f.mem.describe(), &orphan_token.upload_id)
        .unwrap();
    // A foreign upload (not Rivulet's).
    f.mem
        .create_multipart("foreign.bin", PutOptions::default())
        .await
        .unwrap();

    let young = f
        .writer
        .gc(&GcOptions {
            older_than: Duration::from_secs(3600),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        young.aborted_uploads.is_empty() && young.deleted_tails.is_empty(),
        "grace period"
    );

    let opts = GcOptions {
        older_than: Duration::ZERO,
        dry_run: true,
        ..Default::default()
    };
    let dry = f.writer.gc(&opts).await.unwrap();
    assert_eq!(
        dry.aborted_uploads,
        vec![("orphan.txt".to_string(), orphan_token.upload_id.clone())]
    );
    assert_eq!(dry.deleted_tails, vec![orphan_token.tail_key.clone()]);
    assert_eq!(f.mem.open_upload_count(), 3, "a dry run removes nothing");

    f.writer
        .gc(&GcOptions {
            dry_run: false,
            ..opts
        })
        .await
        .unwrap();
    assert_eq!(
        f.mem.open_upload_count(),
        2,
        "the foreign upload is left alone by default"
    );
    assert!(f.mem.head(&orphan_token.tail_key).await.is_err());
    assert!(f.mem.head(&live_token.tail_key).await.is_ok());
    close_and_commit(live).await;
    assert_eq!(object(&f, "live.txt").await.unwrap(), b"keep me");
}

#[tokio::test]
async fn append_copies_the_prefix_server_side() {
    let f = fixture();
    let original = data(PART as usize * 3 + 123, 1);
    f.mem
        .put("log.txt", original.clone().into(), PutOptions::default())
        .await
        .unwrap();
    let gets_before = f.faults.calls(Op::Get);
    let mut w = f.writer.open_append("log.txt").await.unwrap();
    assert_eq!(w.len(), original.len() as u64);
    w.write(b"appended").await.unwrap();
    // Read-your-writes across the copied prefix and the new tail.
    assert_eq!(
        w.read_at(original.len() as u64 - 3, 6).await.unwrap(),
        [&original[original.len() - 3..], b"app"].concat()
    );
    assert_eq!(
        object(&f, "log.txt").await.unwrap(),
        original,
        "the old object stays readable"
    );
    let committer = w.close_for_commit().await.unwrap();
    assert_eq!(
        f.faults.calls(Op::UploadPartCopy),
        3,
        "the prefix is copied in parts"
    );
    // Only the read_at above (a range of the old object) downloaded anything.
    assert_eq!(
        f.faults.calls(Op::Get),
        gets_before + 1,
        "nothing else is downloaded"
    );
    committer.commit().await.unwrap();
    let mut expected = original.clone();
    expected.extend_from_slice(b"appended");
    assert_eq!(object(&f, "log.txt").await.unwrap(), expected);
}

#[tokio::test]
async fn append_to_a_small_or_missing_object() {
    let f = fixture();
    f.mem
        .put("small.txt", b"tiny".to_vec().into(), PutOptions::default())
        .await
        .unwrap();
    let mut w = f.writer.open_append("small.txt").await.unwrap();
    w.write(b"+more").await.unwrap();
    close_and_commit(w).await;
    assert_eq!(object(&f, "small.txt").await.unwrap(), b"tiny+more");

    let mut w = f.writer.open_append("new.txt").await.unwrap();
    w.write(b"fresh").await.unwrap();
    close_and_commit(w).await;
    assert_eq!(object(&f, "new.txt").await.unwrap(), b"fresh");
}

#[tokio::test]
async fn append_commits_only_over_the_version_it_copied() {
    let f = fixture();
    f.mem
        .put(
            "race.txt",
            data(PART as usize * 2, 1).into(),
            PutOptions::default(),
        )
        .await
        .unwrap();
    let mut w = f.writer.open_append("race.txt").await.unwrap();
    w.write(b"mine").await.unwrap();
    let committer = w.close_for_commit().await.unwrap();
    f.mem
        .put(
            "race.txt",
            b"someone else".to_vec().into(),
            PutOptions::default(),
        )
        .await
        .unwrap();
    let err = committer.commit().await.unwrap_err();
    assert!(matches!(err, WriterError::Commit { .. }), "{err}");
    assert_eq!(
        object(&f, "race.txt").await.unwrap(),
        b"someone else",
        "nothing is lost"
    );
}

#[tokio::test]
async fn truncate_an_open_writer_anywhere() {
    let f = fixture();
    let mut w = f.writer.open("tr.txt").await.unwrap();
    let body = data(PART as usize * 4 + 50, 2);
    w.write(&body).await.unwrap();
    w.truncate(body.len() as u64 - 20).await.unwrap(); // inside the tail
    w.truncate(PART * 2 + 100).await.unwrap(); // inside an uploaded part
    assert_eq!(w.len(), PART * 2 + 100);
    assert_eq!(
        w.read_at(0, u64::MAX).await.unwrap(),
        &body[..PART as usize * 2 + 100]
    );
    w.truncate(PART * 2 + 200).await.unwrap(); // grow with zeros
    w.write(b"end").await.unwrap();
    close_and_commit(w).await;
    let mut expected = body[..PART as usize * 2 + 100].to_vec();
    expected.extend(std::iter::repeat_n(0u8, 100));
    expected.extend_from_slice(b"end");
    assert_eq!(object(&f, "tr.txt").await.unwrap(), expected);
}

#[tokio::test]
async fn truncate_a_committed_object_server_side() {
    let f = fixture();
    let original = data(PART as usize * 5 + 7, 3);
    f.mem
        .put("obj.bin", original.clone().into(), PutOptions::default())
        .await
        .unwrap();
    let gets = f.faults.calls(Op::Get);
    f.writer
        .truncate_object("obj.bin", PART * 3 + 5)
        .await
        .unwrap();
    assert_eq!(
        f.faults.calls(Op::Get),
        gets,
        "a kept prefix above one part is copied, not downloaded"
    );
    assert_eq!(
        object(&f, "obj.bin").await.unwrap(),
        &original[..PART as usize * 3 + 5]
    );
    f.writer.truncate_object("obj.bin", 10).await.unwrap();
    assert_eq!(object(&f, "obj.bin").await.unwrap(), &original[..10]);
    f.writer.truncate_object("obj.bin", 15).await.unwrap();
    assert_eq!(
        object(&f, "obj.bin").await.unwrap(),
        [&original[..10], &[0u8; 5][..]].concat()
    );
    f.writer.truncate_object("obj.bin", 0).await.unwrap();
    assert_eq!(object(&f, "obj.bin").await.unwrap(), Vec::<u8>::new());
    let err = f
        .writer
        .truncate_object("missing.bin", 3)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("missing.bin") && err.to_string().contains("does not exist"),
        "{err}"
    );
}

#[tokio::test]
async fn truncate_into_a_copied_prefix_recopies_server_side() {
    let f = fixture();
    let original = data(PART as usize * 4, 4);
    f.mem
        .put("cp.bin", original.clone().into(), PutOptions::default())
        .await
        .unwrap();
    let mut w = f.writer.open_append("cp.bin").await.unwrap();
    w.write(b"xyz").await.unwrap();
    w.truncate(PART * 2 + 1500).await.unwrap();
    assert_eq!(
        w.read_at(PART * 2, 1500).await.unwrap(),
        &original[PART as usize * 2..PART as usize * 2 + 1500]
    );
    close_and_commit(w).await;
    assert_eq!(
        object(&f, "cp.bin").await.unwrap(),
        &original[..PART as usize * 2 + 1500]
    );
}

#[tokio::test]
async fn an_open_file_reads_its_own_writes_at_any_offset() {
    let f = fixture_with(2, Some(Duration::from_millis(5)));
    let mut w = f.writer.open("ryw.bin").await.unwrap();
    let body = data(PART as usize * 6 + 333, 5);
    w.write(&body).await.unwrap();
    for (off, len) in [
        (0, 10),
        (PART - 5, 10),
        (PART * 3 + 17, PART * 2),
        (body.len() as u64 - 4, 100),
        (body.len() as u64, 5),
    ] {
        let got = w.read_at(off, len).await.unwrap();
        let end = (off + len).min(body.len() as u64) as usize;
        assert_eq!(
            &got[..],
            &body[(off as usize).min(end)..end],
            "read at {off}+{len}"
        );
    }
}

#[tokio::test]
async fn recover_all_and_rebuilding_a_lost_index() {
    let f = fixture();
    let mut a = f.writer.open("a.txt").await.unwrap();
    a.write(&data(PART as usize + 10, 1)).await.unwrap();
    let ta = a.persist().await.unwrap();
    let mut b = f.writer.open("b.txt").await.unwrap();
    b.write(b"bee").await.unwrap();
    b.persist().await.unwrap();
    b.write(b"ee").await.unwrap();
    let tb = b.persist().await.unwrap();
    // An upload that never persisted: it has no tail, so only ListMultipartUploads finds it.
    let mut c = f.writer.open("c.txt").await.unwrap();
    c.write(&data(2 * PART as usize, 3)).await.unwrap();
    let c_upload = c.upload_id().to_string();
    std::mem::forget(a);
    std::mem::forget(b);
    std::mem::forget(c);
    let mut found = f.writer.recover_all().await.unwrap();
    found.sort_by(|x, y| x.key().cmp(y.key()));
    assert_eq!(
        found,
        vec![Token::Resume(ta.clone()), Token::Resume(tb.clone())]
    );

    // Lose the index; rebuild it from the store with a new writer service.
    let index = Index::temporary().unwrap();
    let config = WriterConfig {
        part_size: PART,
        cache_parts: true,
        cache_dir: f.cache.path().to_path_buf(),
        ..Default::default()
    };
    let store: DynStore = f.faults.clone();
    let writer = RecoverableWriter::new(store, index.clone(), config).unwrap();
    assert!(writer.recover_all().await.unwrap().is_empty());
    let report = writer.rebuild_index().await.unwrap();
    assert_eq!(report.restored.len(), 2);
    assert_eq!(report.stale_tail_groups, 0);
    assert_eq!(report.uploads_not_listed, None);
    assert_eq!(
        report.untracked_uploads,
        vec![("c.txt".to_string(), c_upload)],
        "the upload without tails is reported, not restored"
    );
    let mut rebuilt = writer.recover_all().await.unwrap();
    rebuilt.sort_by(|x, y| x.key().cmp(y.key()));
    assert_eq!(rebuilt, vec![Token::Resume(ta), Token::Resume(tb.clone())]);
    let entry = index
        .get(&f.mem.describe(), &tb.upload_id)
        .unwrap()
        .unwrap();
    assert_eq!(
        entry.live_tails.len(),
        2,
        "every tail in the store stays live"
    );
    for t in rebuilt {
        let Token::Resume(t) = t else { unreachable!() };
        let w = writer.recover(&t).await.unwrap();
        close_and_commit(w).await;
    }
    assert_eq!(object(&f, "b.txt").await.unwrap(), b"beeee");
}

/// Writes 20 rounds (recover from the last token, write, persist) of `key` under `faults`,
/// with `attempts` tries per store call. Returns the bytes the last token holds and the
/// errors of the rounds that failed, after checking that the last token commits exactly them.
async fn write_rounds_under_faults(
    f: &Fixture,
    key: &str,
    faults: FaultConfig,
    attempts: u32,
) -> (Vec<u8>, Vec<WriterError>) {
    let writer = f.writer_with(WriterConfig {
        part_size: PART,
        cache_dir: f.cache.path().to_path_buf(),
        retry: fs_core::retry::RetryPolicy {
            max_attempts: attempts,
            base_delay: Duration::from_millis(1),
            ..Default::default()
        },
        ..Default::default()
    });
    // The first token is taken without faults: every later round has one to go back to.
    let mut w = writer.open(key).await.unwrap();
    let mut expected = data(100, 0);
    w.write(&expected).await.unwrap();
    let mut last_token = w.persist().await.unwrap();
    drop(w);
    f.faults.set_config(faults);
    let mut failures = Vec::new();
    for round in 1..=20u8 {
        let chunk = data(PART as usize / 2 + round as usize * 37, round);
        let mut w = match writer.recover(&last_token).await {
            Ok(w) => w,
            Err(e) => {
                failures.push(e);
                continue;
            }
        };
        let persisted = match w.write(&chunk).await {
            Ok(()) => w.persist().await,
            Err(e) => Err(e),
        };
        match persisted {
            Ok(t) => {
                expected.extend_from_slice(&chunk);
                assert_eq!(t.len(), expected.len() as u64);
                last_token = t;
            }
            Err(e) => failures.push(e),
        }
    }
    f.faults.set_config(FaultConfig::default());
    // The last token holds exactly what was persisted: its length, then its bytes once
    // committed (parts uploaded before a recovery are not readable until then).
    let w = writer.recover(&last_token).await.unwrap();
    assert_eq!(w.len(), expected.len() as u64);
    close_and_commit(w).await;
    assert_eq!(object(f, key).await.unwrap(), expected);
    (expected, failures)
}

/// 5% injected errors and 5% lost answers: with the default retries every write completes
/// correctly.
#[tokio::test]
async fn transient_faults_are_retried_and_nothing_persisted_is_lost() {
    let f = fixture();
    let faults = FaultConfig {
        error_rate: 0.05,
        lost_answer_rate: 0.05,
        ..Default::default()
    };
    let (written, failures) = write_rounds_under_faults(&f, "retried.bin", faults, 8).await;
    assert!(
        failures.is_empty(),
        "retries absorb 5% faults: {failures:?}"
    );
    assert!(written.len() > 20 * PART as usize / 2);
}

/// Faults that outlast the retries: a write, persist or recover fails with an error naming the
/// file and the store call, and what was persisted before is neither lost nor corrupted.
#[tokio::test]
async fn faults_past_the_retries_fail_clearly_and_lose_nothing_persisted() {
    let f = fixture();
    let faults = FaultConfig {
        error_rate: 0.15,
        lost_answer_rate: 0.15,
        ..Default::default()
    };
    let (_, failures) = write_rounds_under_faults(&f, "failing.bin", faults, 1).await;
    assert!(
        !failures.is_empty(),
        "30% faults without retries must fail some rounds"
    );
    for e in &failures {
        let text = e.to_string();
        assert!(
            text.contains("failing.bin"),
            "the error names the file: {text}"
        );
        let from_the_store = e.store_kind().is_some()
            || matches!(e, WriterError::Failed { .. } | WriterError::Recover { .. });
        assert!(from_the_store, "the error says a store call failed: {e:?}");
    }
}

#[test]
fn config_is_validated() {
    let store: DynStore = Arc::new(MemoryStore::new());
    let bad = WriterConfig {
        part_size: 1024,
        ..Default::default()
    };
    let err = RecoverableWriter::new(store.clone(), Index::temporary().unwrap(), bad).unwrap_err();
    assert!(err.to_string().contains("minimum part size"), "{err}");
    let bad = WriterConfig {
        max_in_flight: 0,
        ..Default::default()
    };
    assert!(RecoverableWriter::new(store, Index::temporary().unwrap(), bad).is_err());
}

#[tokio::test]
async fn without_a_part_cache_nothing_is_written_locally_and_reads_say_why() {
    let mem = MemoryStore::new().with_min_part_size(1024);
    let cache = tempfile::tempdir().unwrap();
    let config = WriterConfig {
        part_size: PART,
        cache_parts: false,
        cache_dir: cache.path().to_path_buf(),
        ..Default::default()
    };
    let writer =
        RecoverableWriter::new(Arc::new(mem.clone()), Index::temporary().unwrap(), config).unwrap();
    let mut w = writer.open("nocache.bin").await.unwrap();
    let body = data(PART as usize * 3 + 10, 9);
    w.write(&body).await.unwrap();
    w.persist().await.unwrap();
    assert_eq!(walk(cache.path()), 0, "no local copies of the parts");
    assert_eq!(
        w.read_at(PART * 3, 10).await.unwrap(),
        &body[PART as usize * 3..],
        "the tail is readable"
    );
    let err = w.read_at(0, 10).await.unwrap_err();
    assert!(err.to_string().contains("without a part cache"), "{err}");
    close_and_commit(w).await;
    assert_eq!(
        mem.get("nocache.bin", None).await.unwrap().body.to_vec(),
        body
    );
}

#[tokio::test]
async fn a_pipelined_persist_lets_writing_go_on_and_resumes_exactly() {
    let f = fixture_with(4, Some(Duration::from_millis(30)));
    let mut w = f.writer.open("pipe.bin").await.unwrap();
    let first = data(PART as usize * 2 + 50, 1);
    w.write(&first).await.unwrap();
    let pending = w.begin_persist().unwrap();
    assert_eq!(pending.len(), first.len() as u64);
    // Writing goes on (and uploads more parts) while the persist waits for its parts.
    let second = data(PART as usize * 3, 2);
    w.write(&second).await.unwrap();
    let pending2 = w.begin_persist().unwrap();
    let t1 = pending.wait().await.unwrap();
    assert_eq!(t1.len(), first.len() as u64);
    assert!(t1.parts.iter().all(|p| !p.etag.is_empty()));
    let t2 = pending2.wait().await.unwrap();
    assert_eq!(t2.len(), (first.len() + second.len()) as u64);
    assert_eq!(
        f.writer.recover_all().await.unwrap(),
        vec![Token::Resume(t2.clone())]
    );
    drop(w);
    // Both tokens resume exactly where they were taken.
    let w1 = f.writer.recover(&t1).await.unwrap();
    assert_eq!(w1.len(), t1.len());
    drop(w1);
    let w2 = f.writer.recover(&t2).await.unwrap();
    close_and_commit(w2).await;
    assert_eq!(
        object(&f, "pipe.bin").await.unwrap(),
        [first, second].concat()
    );
}

#[tokio::test]
async fn persists_resolved_out_of_order_keep_the_newest_token_in_the_index() {
    let f = fixture_with(4, Some(Duration::from_millis(10)));
    let mut w = f.writer.open("order.bin").await.unwrap();
    w.write(&data(PART as usize + 1, 1)).await.unwrap();
    let older = w.begin_persist().unwrap();
    w.write(&data(PART as usize + 1, 2)).await.unwrap();
    let newer = w.begin_persist().unwrap();
    let t_new = newer.wait().await.unwrap();
    let t_old = older.wait().await.unwrap();
    assert!(t_old.seq < t_new.seq);
    assert_eq!(
        f.writer.recover_all().await.unwrap(),
        vec![Token::Resume(t_new)]
    );
    let entry = f
        .index
        .get(&f.mem.describe(), &t_old.upload_id)
        .unwrap()
        .unwrap();
    assert!(
        entry.live_tails.contains(&t_old.tail_key),
        "the older token's tail stays live"
    );
}

#[tokio::test]
async fn a_persist_pending_when_its_writer_goes_fails_instead_of_hanging() {
    let f = fixture_with(4, Some(Duration::from_millis(200)));
    let mut w = f.writer.open("gone.bin").await.unwrap();
    w.write(&data(PART as usize * 2, 1)).await.unwrap();
    let pending = w.begin_persist().unwrap();
    drop(w);
    let result = tokio::time::timeout(Duration::from_secs(10), pending.wait()).await;
    let err = result
        .expect("a pending persist must not hang")
        .unwrap_err();
    assert!(err.to_string().contains("gone.bin"), "{err}");
}

/// A writer on a memory store that needs contiguous part numbers (like s3s-fs), with store
/// calls slowed to `latency`..2×`latency` so that parts are still in flight when tests act.
fn contiguous_writer_with_latency(latency: Duration) -> (RecoverableWriter, tempfile::TempDir) {
    let mem = MemoryStore::new()
        .with_min_part_size(1024)
        .with_contiguous_parts();
    let faults = Arc::new(FaultStore::new(
        Arc::new(mem),
        FaultConfig {
            latency: Some(latency..latency * 2),
            ..Default::default()
        },
    ));
    let cache = tempfile::tempdir().unwrap();
    let config = WriterConfig {
        part_size: PART,
        cache_parts: true,
        cache_dir: cache.path().to_path_buf(),
        ..Default::default()
    };
    (
        RecoverableWriter::new(faults, Index::temporary().unwrap(), config).unwrap(),
        cache,
    )
}

#[tokio::test]
async fn a_truncate_on_a_contiguous_store_voids_the_persists_it_overtakes() {
    let (writer, _cache) = contiguous_writer_with_latency(Duration::from_millis(20));
    let mut w = writer.open("cut.bin").await.unwrap();
    w.write(&data(PART as usize * 3, 1)).await.unwrap();
    let pending = w.begin_persist().unwrap();
    w.truncate(PART / 2).await.unwrap(); // gives up parts 1..3, whose numbers get reused
    w.write(&data(PART as usize * 2, 2)).await.unwrap();
    let err = pending.wait().await.unwrap_err();
    assert!(err.to_string().contains("overtaken by a truncate"), "{err}");
    let token = w.persist().await.unwrap();
    drop(w);
    let w = writer.recover(&token).await.unwrap();
    assert_eq!(w.len(), token.len());
}

#[tokio::test]
async fn a_voided_persist_stops_waiting_for_parts_that_will_not_come() {
    // Contiguous store: the part numbers a pending persist waits for are given up by a cut and
    // the file is closed before they are uploaded again. The persist must fail, not hang.
    let (writer, _cache) = contiguous_writer_with_latency(Duration::from_millis(30));
    let mut w = writer.open("void.bin").await.unwrap();
    w.write(&data(PART as usize * 3, 1)).await.unwrap();
    let pending = w.begin_persist().unwrap();
    w.truncate(10).await.unwrap();
    close_and_commit(w).await;
    let result = tokio::time::timeout(Duration::from_secs(10), pending.wait()).await;
    assert!(result.expect("a voided persist must not hang").is_err());
}

#[tokio::test]
async fn on_a_store_that_reads_parts_the_writer_keeps_no_copy_and_reads_after_recovery() {
    // The local store keeps each part as a file it can read back: a second local copy would
    // write every byte twice to the same disk, and reads work even after a recovery.
    let dir = tempfile::tempdir().unwrap();
    let store: DynStore =
        Arc::new(fs_core::store::local::LocalStore::open(dir.path().join("store")).unwrap());
    let config = WriterConfig {
        part_size: 5 << 20,
        cache_parts: true,
        cache_dir: dir.path().join("cache"),
        ..Default::default()
    };
    assert!(config.cache_parts, "the part cache is asked for");
    let writer =
        RecoverableWriter::new(store.clone(), Index::temporary().unwrap(), config).unwrap();
    let mut w = writer.open("local.bin").await.unwrap();
    let body = data((5 << 20) * 2 + 1000, 4);
    w.write(&body).await.unwrap();
    let token = w.persist().await.unwrap();
    assert_eq!(
        walk(&dir.path().join("cache")),
        0,
        "no local copies of the parts"
    );
    let at = (5 << 20) - 10;
    assert_eq!(
        w.read_at(at, 20).await.unwrap(),
        &body[at as usize..at as usize + 20]
    );
    drop(w);

    let mut w = writer.recover(&token).await.unwrap();
    assert_eq!(
        w.read_at(3, 100).await.unwrap(),
        &body[3..103],
        "a part from before the recovery"
    );
    // Cutting into a part uploaded before the recovery re-makes it from the store's copy.
    w.truncate(5 << 20 | 77).await.unwrap();
    w.write(b"end").await.unwrap();
    close_and_commit(w).await;
    let mut expected = body[..(5 << 20 | 77)].to_vec();
    expected.extend_from_slice(b"end");
    assert_eq!(
        store.get("local.bin", None).await.unwrap().body.to_vec(),
        expected
    );
}

/// The bytes of `key`'s cached parts, laid at their offsets, and how much of the file they cover.
fn cached_bytes(parts: &fs_core::writer::CachedParts, len: usize) -> (Vec<u8>, u64) {
    let mut out = vec![0u8; len];
    let mut covered = 0;
    for p in parts.parts() {
        let bytes = std::fs::read(&p.path).unwrap();
        assert_eq!(bytes.len() as u64, p.len, "{}", p.path.display());
        out[p.offset as usize..(p.offset + p.len) as usize].copy_from_slice(&bytes);
        covered += p.len;
    }
    (out, covered)
}

#[tokio::test]
async fn a_commit_can_hand_over_the_cached_parts_and_the_rest_is_deleted() {
    let f = fixture();
    let body = data(PART as usize * 3 + 123, 21);
    let mut w = f.writer.open("kept.bin").await.unwrap();
    for chunk in body.chunks(1000) {
        w.write(chunk).await.unwrap();
    }
    let committer = w.close_for_commit_keeping_cache().await.unwrap();
    drop(w);
    assert!(
        cache_files(&f) > 0,
        "the writer's drop leaves them to the committer"
    );
    let (outcome, parts) = committer.commit_keeping_cache().await.unwrap();
    assert_eq!(outcome.size, body.len() as u64);
    // Every part, the last (the tail at close) included, at its offset.
    let offsets: Vec<u64> = parts.parts().iter().map(|p| p.offset).collect();
    assert_eq!(offsets, [0, PART, 2 * PART, 3 * PART]);
    let (bytes, covered) = cached_bytes(&parts, body.len());
    assert_eq!(covered, body.len() as u64);
    assert!(bytes == body);
    // The caller takes one file; the rest go with the handle.
    let taken = f.cache.path().join("taken");
    std::fs::rename(&parts.parts()[1].path, &taken).unwrap();
    drop(parts);
    assert_eq!(cache_files(&f), 1, "only the file taken is left");
    assert_eq!(
        std::fs::read(&taken).unwrap(),
        body[PART as usize..2 * PART as usize]
    );
    std::fs::remove_file(taken).unwrap();
    // A second successful commit hands over nothing.
    let (again, none) = committer.commit_keeping_cache().await.unwrap();
    assert!(again.already_committed);
    assert!(none.is_empty());
}

/// `body` written to `key` and closed with its part files kept for the committer.
async fn closed_keeping_cache(f: &Fixture, key: &str, body: &[u8]) -> fs_core::Committer {
    let mut w = f.writer.open(key).await.unwrap();
    w.write(body).await.unwrap();
    w.close_for_commit_keeping_cache().await.unwrap()
}

#[tokio::test]
async fn kept_parts_go_with_a_failed_commit_a_plain_commit_or_an_abort() {
    let f = fixture();
    let body = data(PART as usize * 2 + 5, 22);

    // A commit that fails keeps them for a retry; the committer's drop deletes them.
    let committer = closed_keeping_cache(&f, "failed.bin", &body).await;
    f.faults.set_config(FaultConfig {
        error_rate: 1.0,
        ..Default::default()
    });
    assert!(committer.commit_keeping_cache().await.is_err());
    f.faults.set_config(FaultConfig::default());
    assert!(cache_files(&f) > 0);
    let clone = committer.clone();
    drop(committer);
    assert!(cache_files(&f) > 0, "a clone still holds them");
    drop(clone);
    assert_eq!(cache_files(&f), 0, "deleted with the last committer");

    // A caller that commits without taking them: deleted at once.
    let committer = closed_keeping_cache(&f, "plain.bin", &body).await;
    committer.commit().await.unwrap();
    assert_eq!(cache_files(&f), 0);
    assert_eq!(object(&f, "plain.bin").await.unwrap(), body);

    // An abort.
    let committer = closed_keeping_cache(&f, "aborted.bin", &body).await;
    committer.abort().await.unwrap();
    assert_eq!(cache_files(&f), 0);
    assert_eq!(object(&f, "aborted.bin").await, None);

    // The default close still deletes them at close.
    let mut w = f.writer.open("default.bin").await.unwrap();
    w.write(&body).await.unwrap();
    let committer = w.close_for_commit().await.unwrap();
    assert_eq!(cache_files(&f), 0);
    let (_, parts) = committer.commit_keeping_cache().await.unwrap();
    assert!(parts.is_empty(), "nothing was kept to hand over");
}

#[tokio::test]
async fn a_commit_recovered_from_its_token_deletes_the_parts_a_crash_kept() {
    let f = fixture();
    let body = data(PART as usize * 2 + 7, 23);
    let committer = closed_keeping_cache(&f, "crashed.bin", &body).await;
    let token = committer.token().clone();
    // A crash: the process dies with the part files on disk.
    std::mem::forget(committer);
    assert!(cache_files(&f) > 0);
    let recovered = f.writer.recover_for_commit(&token);
    let outcome = recovered.commit_after_recovery().await.unwrap();
    assert_eq!(outcome.size, body.len() as u64);
    assert_eq!(cache_files(&f), 0, "the upload's cache went with it");
}

#[tokio::test]
async fn server_side_copies_are_not_among_the_cached_parts() {
    let f = fixture();
    let first = data(PART as usize * 2, 24);
    f.mem
        .put("append.bin", first.clone().into(), PutOptions::default())
        .await
        .unwrap();
    let mut w = f.writer.open_append("append.bin").await.unwrap();
    let more = data(PART as usize + 10, 25);
    w.write(&more).await.unwrap();
    let (outcome, parts) = w
        .close_for_commit_keeping_cache()
        .await
        .unwrap()
        .commit_keeping_cache()
        .await
        .unwrap();
    assert_eq!(outcome.size, (first.len() + more.len()) as u64);
    // The copied prefix is in the store only; what was written is cached.
    assert!(parts.parts().iter().all(|p| p.offset >= first.len() as u64));
    let (bytes, covered) = cached_bytes(&parts, first.len() + more.len());
    assert_eq!(covered, more.len() as u64);
    assert!(bytes[first.len()..] == more[..]);
}

/// An append or truncate of an object keeps its Content-Type and user metadata (but for
/// Rivulet's own names), whether it commits as an upload or, when empty, as a PUT.
#[tokio::test]
async fn appends_and_truncates_keep_the_objects_content_type_and_metadata() {
    let f = fixture();
    let source = |body: &'static [u8]| {
        let mut opts = PutOptions {
            headers: ContentHeaders {
                content_type: Some("text/csv".into()),
                content_encoding: Some("gzip".into()),
                cache_control: Some("no-cache".into()),
                ..ContentHeaders::default()
            },
            ..Default::default()
        };
        opts.metadata.insert("origin".into(), "sensor-7".into());
        opts.metadata
            .insert("rivulet-writer-id".into(), "an-old-writer".into());
        (bytes::Bytes::from_static(body), opts)
    };
    let check = |meta: fs_core::store::ObjectMeta, what: &str| {
        assert_eq!(
            meta.headers.content_type.as_deref(),
            Some("text/csv"),
            "{what}"
        );
        assert_eq!(
            meta.headers.content_encoding.as_deref(),
            Some("gzip"),
            "{what}"
        );
        assert_eq!(
            meta.headers.cache_control.as_deref(),
            Some("no-cache"),
            "{what}"
        );
        assert_eq!(
            meta.metadata.get("origin").map(String::as_str),
            Some("sensor-7"),
            "{what}"
        );
        assert_ne!(
            meta.metadata.get("rivulet-writer-id").map(String::as_str),
            Some("an-old-writer"),
            "{what}: Rivulet's own names are not carried over"
        );
    };
    for (name, keep) in [("appended", None), ("cut", Some(2)), ("emptied", Some(0))] {
        let (body, opts) = source(b"a,b\n");
        f.mem.put(name, body, opts).await.unwrap();
        let mut w = match keep {
            None => f.writer.open_append(name).await.unwrap(),
            Some(len) => f.writer.open_truncate(name, len).await.unwrap(),
        };
        if keep.is_none() {
            w.write(b"c,d\n").await.unwrap();
        }
        close_and_commit(w).await;
        check(f.mem.head(name).await.unwrap(), name);
    }
    assert_eq!(object(&f, "appended").await.unwrap(), b"a,b\nc,d\n");
    assert_eq!(object(&f, "cut").await.unwrap(), b"a,");
    assert_eq!(object(&f, "emptied").await.unwrap(), b"");
}

/// A writer service in another process: its own index over the same store.
fn other_process(f: &Fixture) -> RecoverableWriter {
    let config = WriterConfig {
        part_size: PART,
        cache_parts: false,
        ..Default::default()
    };
    RecoverableWriter::new(f.faults.clone(), Index::temporary().unwrap(), config).unwrap()
}

#[tokio::test]
async fn a_process_that_takes_a_file_over_from_a_token_deletes_tails_staged_after_it() {
    // A process (a task manager since lost) persisted twice; another resumes from the first
    // token, as a restart from an older checkpoint does. Its index knows the first tail only,
    // yet aborting or committing the file must leave none of the upload's tails behind.
    let f = fixture();
    for finish in ["abort", "commit"] {
        let key = format!("taken-over-{finish}");
        let mut first = f.writer.open(&key).await.unwrap();
        first.write(&data(PART as usize + 10, 1)).await.unwrap();
        let older = first.persist().await.unwrap();
        first.write(b"later").await.unwrap();
        let newer = first.persist().await.unwrap();
        assert_ne!(older.tail_key, newer.tail_key);
        drop(first);

        let other = other_process(&f);
        let mut resumed = other.recover(&older).await.unwrap();
        if finish == "abort" {
            resumed.abort().await.unwrap();
        } else {
            resumed.write(b"!").await.unwrap();
            let committer = resumed.close_for_commit().await.unwrap();
            committer.commit().await.unwrap();
            let mut want = data(PART as usize + 10, 1);
            want.push(b'!');
            assert_eq!(object(&f, &key).await.unwrap(), want);
        }
        for tail in [&older.tail_key, &newer.tail_key] {
            assert!(
                f.mem.head(tail).await.is_err(),
                "{finish}: tail {tail} left behind"
            );
        }
    }
}

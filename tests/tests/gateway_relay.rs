//! Bodies relayed as they arrive, over S3 stores on loopback (where bodies go unsigned and the
//! store streams them): fs-core's streamed calls against s3s-fs, and the gateway's PUT,
//! UploadPart and GET over moto, with the properties the buffered paths have (exact lengths,
//! Content-MD5, conditions, nothing written by a failed or cut body).

use std::time::Duration;

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use fs_core::store::rules::{md5_hex, multipart_etag};
use fs_core::store::{BodyStream, PutOptions, StoreErrorKind};
use futures::StreamExt;
use harness::TestServer;
use harness::gateway::{
    InProcessGateway, content_md5, patterned_data, put_object, put_then_hang_up, test_config,
};

const MIB: usize = 1024 * 1024;

/// `body` as a stream of 64 KiB chunks, optionally ending with an error instead of its end.
fn chunks(body: &[u8], fail_at_end: bool) -> BodyStream {
    let mut items: Vec<std::io::Result<Bytes>> = body
        .chunks(64 * 1024)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    if fail_at_end {
        items.push(Err(std::io::Error::other("the client went away")));
    }
    Box::pin(futures::stream::iter(items))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_stores_stream_bodies_held_to_their_length() {
    let server = TestServer::s3s_fs().await;
    let store = server.store().await;
    assert!(store.streams_bodies(), "loopback S3 stores stream bodies");
    let body = patterned_data(3 * MIB + 17, 1);

    let put = store
        .put_stream(
            "a/exact",
            body.len() as u64,
            chunks(&body, false),
            PutOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(put.etag, md5_hex(&body), "one PUT: the MD5 ETag");
    assert_eq!(store.get("a/exact", None).await.unwrap().body, body);

    // Fewer bytes, more bytes, or an error before the end: the PUT fails, nothing is written.
    let short = store
        .put_stream(
            "a/short",
            body.len() as u64 + 1,
            chunks(&body, false),
            PutOptions::default(),
        )
        .await
        .unwrap_err();
    let long = store
        .put_stream(
            "a/long",
            body.len() as u64 - 1,
            chunks(&body, false),
            PutOptions::default(),
        )
        .await
        .unwrap_err();
    let cut = store
        .put_stream(
            "a/cut",
            body.len() as u64 + 10,
            chunks(&body, true),
            PutOptions::default(),
        )
        .await
        .unwrap_err();
    for (key, err) in [("a/short", short), ("a/long", long), ("a/cut", cut)] {
        assert_eq!(
            store.head(key).await.unwrap_err().kind(),
            StoreErrorKind::NotFound,
            "{key} was written after {err}"
        );
    }

    // Streamed GETs: whole, a range, an open range, past the end.
    let got = store.get_stream("a/exact", None).await.unwrap();
    assert_eq!(got.meta.size, body.len() as u64);
    assert_eq!(got.range, 0..body.len() as u64);
    let bytes: Vec<Bytes> = got.body.map(|c| c.unwrap()).collect().await;
    assert!(bytes.concat() == body, "the whole object streams back");
    let got = store
        .get_stream("a/exact", Some(100..MIB as u64))
        .await
        .unwrap();
    assert_eq!(
        (got.range.clone(), got.meta.size),
        (100..MIB as u64, body.len() as u64)
    );
    let bytes: Vec<Bytes> = got.body.map(|c| c.unwrap()).collect().await;
    assert!(bytes.concat()[..] == body[100..MIB]);
    let got = store
        .get_stream("a/exact", Some(3 * MIB as u64..u64::MAX))
        .await
        .unwrap();
    assert_eq!(got.range, 3 * MIB as u64..body.len() as u64);
    let bytes: Vec<Bytes> = got.body.map(|c| c.unwrap()).collect().await;
    assert!(bytes.concat()[..] == body[3 * MIB..]);
    let past = store
        .get_stream("a/exact", Some(4 * MIB as u64..5 * MIB as u64))
        .await
        .unwrap_err();
    assert_eq!(past.kind(), StoreErrorKind::InvalidRange);

    // A streamed part, then a part whose body fails: no part is uploaded for it.
    let id = store
        .create_multipart("a/mpu", PutOptions::default())
        .await
        .unwrap();
    let first = patterned_data(5 * MIB, 2);
    let e1 = store
        .upload_part_stream("a/mpu", &id, 1, first.len() as u64, chunks(&first, false))
        .await
        .unwrap();
    assert_eq!(e1, md5_hex(&first));
    store
        .upload_part_stream(
            "a/mpu",
            &id,
            2,
            MIB as u64 + 1,
            chunks(&patterned_data(MIB, 3), false),
        )
        .await
        .unwrap_err();
    let parts = store.list_parts("a/mpu", &id, None).await.unwrap().parts;
    assert_eq!(parts.iter().map(|p| p.number).collect::<Vec<_>>(), [1]);
    store.abort_multipart("a/mpu", &id).await.unwrap();
}

async fn get(c: &aws_sdk_s3::Client, key: &str, range: Option<&str>) -> (Vec<u8>, Option<String>) {
    let out = c
        .get_object()
        .bucket("relay")
        .key(key)
        .set_range(range.map(str::to_string))
        .send()
        .await
        .unwrap_or_else(|e| panic!("get {key} {range:?}: {e:?}"));
    let content_range = out.content_range().map(str::to_string);
    (out.body.collect().await.unwrap().to_vec(), content_range)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_relays_large_bodies_to_an_s3_store() {
    let moto = TestServer::moto().await;
    let store = moto.store().await;
    let gw = InProcessGateway::start(store.clone(), test_config()).await;
    let c = gw.client();
    c.create_bucket().bucket("relay").send().await.unwrap();

    // Larger than the 8 MiB part: one store PUT, so the ETag is the body's MD5 (as on S3).
    let body = patterned_data(20 * MIB + 5, 4);
    let etag = put_object(&c, "relay", "large", &body, Some(content_md5(&body)))
        .await
        .unwrap();
    assert_eq!(etag, format!("\"{}\"", md5_hex(&body)));
    assert_eq!(
        store.head("relay/large").await.unwrap().etag,
        md5_hex(&body)
    );
    let uploads = store.list_multipart_uploads("relay/", None).await.unwrap();
    assert!(
        uploads.uploads.is_empty(),
        "no multipart upload: {:?}",
        uploads.uploads
    );

    // GETs: whole, ranges of every form, with their Content-Range.
    let n = body.len();
    let (whole, cr) = get(&c, "large", None).await;
    assert!(
        whole == body && cr.is_none(),
        "the whole object, byte for byte"
    );
    let (part, cr) = get(&c, "large", Some("bytes=100-9000000")).await;
    assert!(part[..] == body[100..9_000_001]);
    assert_eq!(
        cr.as_deref(),
        Some(format!("bytes 100-9000000/{n}").as_str())
    );
    let (tail, cr) = get(&c, "large", Some("bytes=20971520-")).await;
    assert!(tail[..] == body[20 * MIB..]);
    assert_eq!(cr, Some(format!("bytes 20971520-{}/{n}", n - 1)));
    let (suffix, _) = get(&c, "large", Some("bytes=-7")).await;
    assert!(suffix[..] == body[n - 7..]);
    let past = c
        .get_object()
        .bucket("relay")
        .key("large")
        .range(format!("bytes={n}-"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(past.code(), Some("InvalidRange"));

    // A wrong Content-MD5: BadDigest, nothing stored.
    let other = patterned_data(12 * MIB, 6);
    assert_eq!(
        put_object(&c, "relay", "bad-md5", &other, Some(content_md5(b"not it")))
            .await
            .unwrap_err(),
        "BadDigest"
    );
    // A malformed Content-MD5 is refused on the headers, before the body is read. The client
    // is still sending its 12 MiB then: the gateway drains them before it closes the
    // connection (crate::linger), so the client reads the S3 error, never a reset. Five times,
    // as a reset depends on timing.
    for _ in 0..5 {
        assert_eq!(
            put_object(&c, "relay", "bad-md5", &other, Some("not base64!".into()))
                .await
                .unwrap_err(),
            "InvalidDigest"
        );
    }
    assert!(
        store.head("relay/bad-md5").await.is_err(),
        "nothing stored under a bad digest"
    );
    // A failed condition: 412, the old object stays.
    let cond = c
        .put_object()
        .bucket("relay")
        .key("large")
        .body(ByteStream::from(other.clone()))
        .if_none_match("*")
        .send()
        .await
        .unwrap_err();
    assert_eq!(cond.code(), Some("PreconditionFailed"));
    assert_eq!(
        store.head("relay/large").await.unwrap().etag,
        md5_hex(&body)
    );

    // UploadPart bodies are relayed too, Content-MD5 checked.
    let id = c
        .create_multipart_upload()
        .bucket("relay")
        .key("mpu")
        .send()
        .await
        .unwrap()
        .upload_id()
        .unwrap()
        .to_string();
    let (p1, p2) = (patterned_data(6 * MIB, 7), patterned_data(MIB + 3, 8));
    let bad = c
        .upload_part()
        .bucket("relay")
        .key("mpu")
        .upload_id(&id)
        .part_number(1)
        .content_md5(content_md5(b"not it"))
        .body(ByteStream::from(p1.clone()))
        .send()
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Some("BadDigest"));
    let mut completed = Vec::new();
    for (number, part) in [(1, &p1), (2, &p2)] {
        let out = c
            .upload_part()
            .bucket("relay")
            .key("mpu")
            .upload_id(&id)
            .part_number(number)
            .content_md5(content_md5(part))
            .body(ByteStream::from(part.clone()))
            .send()
            .await
            .unwrap();
        assert_eq!(out.e_tag(), Some(format!("\"{}\"", md5_hex(part)).as_str()));
        completed.push(
            CompletedPart::builder()
                .part_number(number)
                .e_tag(out.e_tag().unwrap())
                .build(),
        );
    }
    let done = c
        .complete_multipart_upload()
        .bucket("relay")
        .key("mpu")
        .upload_id(&id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(completed))
                .build(),
        )
        .send()
        .await
        .unwrap();
    let want = multipart_etag([md5_hex(&p1).as_str(), md5_hex(&p2).as_str()]).unwrap();
    assert_eq!(done.e_tag(), Some(format!("\"{want}\"").as_str()));
    assert!(get(&c, "mpu", None).await.0 == [p1, p2].concat());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_mid_relay_writes_nothing() {
    let moto = TestServer::moto().await;
    let store = moto.store().await;
    let mut config = test_config();
    config.credentials.clear();
    config.anonymous = true;
    let gw = InProcessGateway::start(store.clone(), config).await;
    // The bucket's marker, written directly (the gateway takes only unsigned requests here).
    store
        .put("cut/", Bytes::new(), PutOptions::default())
        .await
        .unwrap();
    // Announce 40 MiB, send 20, and hang up.
    put_then_hang_up(gw.addr, "cut/partial", 40 * MIB, 20 * MIB).await;
    // The relayed PUT is aborted with the client's connection: the object never appears.
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(store.head("cut/partial").await.is_err(), "nothing stored");
    }
    let uploads = store.list_multipart_uploads("cut/", None).await.unwrap();
    assert!(uploads.uploads.is_empty(), "{:?}", uploads.uploads);
    gw.stop().await;
}

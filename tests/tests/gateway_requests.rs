//! Requests whose answers once were wrong, sent to a gateway listening on a loopback port over a
//! local store in a temporary directory: version ids (the buckets are unversioned), conditional
//! deletes, entity-tag lists and weak tags in conditions, `Content-MD5` on the XML bodies s3s
//! parses itself (DeleteObjects, CompleteMultipartUpload), and ranges of an empty object.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use fs_core::store::DynStore;
use fs_core::store::local::LocalStore;
use harness::gateway::{InProcessGateway, content_md5, test_config};

const BUCKET: &str = "bkt";

/// A gateway on a free loopback port over a local store in a fresh directory (removed on drop),
/// with a bucket `bkt`; stopped when dropped.
struct Gateway {
    addr: SocketAddr,
    inner: InProcessGateway,
    _root: tempfile::TempDir,
}

impl Gateway {
    async fn start(anonymous: bool) -> Gateway {
        let root = tempfile::tempdir().expect("the store's directory");
        let store: DynStore = Arc::new(LocalStore::open(root.path()).expect("a local store"));
        let mut config = test_config();
        if anonymous {
            config.credentials.clear();
            config.anonymous = true;
        }
        let inner = InProcessGateway::start(store, config).await;
        let gateway = Gateway {
            addr: inner.addr,
            inner,
            _root: root,
        };
        if anonymous {
            let (status, body) = gateway.raw("PUT", &format!("/{BUCKET}"), &[], b"").await;
            assert_eq!(status, 200, "create the bucket: {body}");
        } else {
            gateway
                .client()
                .create_bucket()
                .bucket(BUCKET)
                .send()
                .await
                .expect("create the bucket");
        }
        gateway
    }

    fn client(&self) -> aws_sdk_s3::Client {
        self.inner.client()
    }

    /// One unsigned HTTP/1.1 request (for an anonymous gateway): the status and the body.
    async fn raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> (u16, String) {
        let addr = self.addr;
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(body);
        tokio::task::spawn_blocking(move || {
            let mut stream = TcpStream::connect(addr).expect("connect to the gateway");
            stream
                .set_read_timeout(Some(Duration::from_secs(30)))
                .expect("a read timeout");
            stream.write_all(&bytes).expect("send the request");
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).expect("read the answer");
            let answer = String::from_utf8_lossy(&answer).into_owned();
            let status = answer
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
            let body = answer
                .split_once("\r\n\r\n")
                .map(|(_, b)| b.to_string())
                .unwrap_or_default();
            (status, body)
        })
        .await
        .expect("the client thread")
    }
}

async fn put(c: &aws_sdk_s3::Client, key: &str, body: &[u8]) -> String {
    c.put_object()
        .bucket(BUCKET)
        .key(key)
        .body(ByteStream::from(body.to_vec()))
        .send()
        .await
        .expect("put")
        .e_tag()
        .expect("an ETag")
        .to_string()
}

async fn read(c: &aws_sdk_s3::Client, key: &str) -> Option<Vec<u8>> {
    let got = c.get_object().bucket(BUCKET).key(key).send().await.ok()?;
    Some(got.body.collect().await.expect("the body").to_vec())
}

fn code<E: ProvideErrorMetadata>(e: &E) -> String {
    e.code().unwrap_or("no code").to_string()
}

/// The buckets are unversioned: a version id other than `null` names nothing, so reads and
/// copies of it fail and deletes of it keep the object (they used to serve, copy or delete the
/// current object).
#[tokio::test]
async fn version_ids_other_than_null_are_refused_and_delete_nothing() {
    let gw = Gateway::start(false).await;
    let c = gw.client();
    put(&c, "k", b"current").await;

    let err = c
        .get_object()
        .bucket(BUCKET)
        .key("k")
        .version_id("3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err), "InvalidArgument");
    let err = c
        .head_object()
        .bucket(BUCKET)
        .key("k")
        .version_id("v1")
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(400));
    let err = c
        .copy_object()
        .bucket(BUCKET)
        .key("copy")
        .copy_source(format!("{BUCKET}/k?versionId=v1"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err), "InvalidArgument");
    assert_eq!(read(&c, "copy").await, None);

    let err = c
        .delete_object()
        .bucket(BUCKET)
        .key("k")
        .version_id("v1")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err), "InvalidArgument");
    assert_eq!(read(&c, "k").await.as_deref(), Some(&b"current"[..]));

    let out = c
        .delete_objects()
        .bucket(BUCKET)
        .delete(
            Delete::builder()
                .objects(
                    ObjectIdentifier::builder()
                        .key("k")
                        .version_id("v1")
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        )
        .send()
        .await
        .expect("DeleteObjects answers per key");
    assert!(out.deleted().is_empty(), "{out:?}");
    assert_eq!(out.errors().len(), 1, "{out:?}");
    assert_eq!(out.errors()[0].code(), Some("InvalidArgument"));
    assert_eq!(read(&c, "k").await.as_deref(), Some(&b"current"[..]));

    // `null` is the current object's version id.
    let got = c
        .get_object()
        .bucket(BUCKET)
        .key("k")
        .version_id("null")
        .send()
        .await
        .expect("the null version is the object");
    assert_eq!(&got.body.collect().await.unwrap().to_vec(), b"current");
    c.delete_object()
        .bucket(BUCKET)
        .key("k")
        .version_id("null")
        .send()
        .await
        .expect("delete the null version");
    assert_eq!(read(&c, "k").await, None);
}

/// DeleteObject's `If-Match` and DeleteObjects' per-object `ETag` (S3's conditional deletes):
/// a condition that does not hold keeps the object (both used to delete it regardless).
#[tokio::test]
async fn conditional_deletes_keep_the_object_when_the_condition_fails() {
    let gw = Gateway::start(false).await;
    let c = gw.client();
    let etag = put(&c, "k", b"kept").await;

    let err = c
        .delete_object()
        .bucket(BUCKET)
        .key("k")
        .if_match("\"0123456789abcdef0123456789abcdef\"")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err), "PreconditionFailed");
    let err = c
        .delete_object()
        .bucket(BUCKET)
        .key("k")
        .if_match_size(3)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err), "PreconditionFailed");
    assert_eq!(read(&c, "k").await.as_deref(), Some(&b"kept"[..]));
    let err = c
        .delete_object()
        .bucket(BUCKET)
        .key("missing")
        .if_match(etag.clone())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err), "NoSuchKey");

    put(&c, "other", b"other").await;
    let object = |key: &str, etag: &str| {
        ObjectIdentifier::builder()
            .key(key)
            .e_tag(etag)
            .build()
            .unwrap()
    };
    let out = c
        .delete_objects()
        .bucket(BUCKET)
        .delete(
            Delete::builder()
                .objects(object("k", "\"0123456789abcdef0123456789abcdef\""))
                .objects(object("other", &md5_etag(b"other")))
                .build()
                .unwrap(),
        )
        .send()
        .await
        .expect("DeleteObjects answers per key");
    let deleted: Vec<_> = out.deleted().iter().filter_map(|d| d.key()).collect();
    assert_eq!(deleted, ["other"], "{out:?}");
    assert_eq!(out.errors().len(), 1, "{out:?}");
    assert_eq!(out.errors()[0].key(), Some("k"));
    assert_eq!(out.errors()[0].code(), Some("PreconditionFailed"));
    assert_eq!(read(&c, "k").await.as_deref(), Some(&b"kept"[..]));
    assert_eq!(read(&c, "other").await, None);

    c.delete_object()
        .bucket(BUCKET)
        .key("k")
        .if_match(etag)
        .send()
        .await
        .expect("a matching If-Match deletes");
    assert_eq!(read(&c, "k").await, None);
}

fn md5_etag(body: &[u8]) -> String {
    format!("\"{}\"", fs_core::store::rules::md5_hex(body))
}

/// `If-Match` and `If-None-Match` take a list of entity tags (RFC 9110): one matching tag is
/// enough. `If-Match` compares strongly (a weak tag matches nothing), `If-None-Match` weakly.
/// Lists used to be compared as one tag, so a list holding the ETag failed If-Match and did not
/// stop If-None-Match.
#[tokio::test]
async fn etag_lists_and_weak_tags_in_conditions() {
    let gw = Gateway::start(false).await;
    let c = gw.client();
    let etag = put(&c, "k", b"listed").await;
    let other = "\"0123456789abcdef0123456789abcdef\"";
    let list = format!("{other}, {etag}");

    let got = c
        .get_object()
        .bucket(BUCKET)
        .key("k")
        .if_match(list.clone())
        .send()
        .await
        .expect("If-Match with a list holding the ETag");
    assert_eq!(&got.body.collect().await.unwrap().to_vec(), b"listed");
    c.head_object()
        .bucket(BUCKET)
        .key("k")
        .if_match(list.clone())
        .send()
        .await
        .expect("HEAD If-Match with a list holding the ETag");
    let err = c
        .get_object()
        .bucket(BUCKET)
        .key("k")
        .if_match(format!("{other}, \"ffffffffffffffffffffffffffffffff\""))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err), "PreconditionFailed");
    let err = c
        .get_object()
        .bucket(BUCKET)
        .key("k")
        .if_match(format!("W/{etag}"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        code(&err),
        "PreconditionFailed",
        "a weak tag never matches If-Match"
    );

    for header in [
        list.clone(),
        format!("{other},W/{etag}"),
        format!("W/{etag}"),
    ] {
        let err = c
            .get_object()
            .bucket(BUCKET)
            .key("k")
            .if_none_match(header.clone())
            .send()
            .await
            .unwrap_err();
        assert_eq!(
            err.raw_response().map(|r| r.status().as_u16()),
            Some(304),
            "If-None-Match: {header}"
        );
    }

    // A copy's source conditions and a PUT's If-Match read lists the same way.
    c.copy_object()
        .bucket(BUCKET)
        .key("copy")
        .copy_source(format!("{BUCKET}/k"))
        .copy_source_if_match(list.clone())
        .send()
        .await
        .expect("copy with a list holding the source's ETag");
    c.put_object()
        .bucket(BUCKET)
        .key("k")
        .if_match(list)
        .body(ByteStream::from_static(b"replaced"))
        .send()
        .await
        .expect("PUT If-Match with a list holding the ETag");
    let err = c
        .put_object()
        .bucket(BUCKET)
        .key("k")
        .if_match(format!("{other}, {etag}"))
        .body(ByteStream::from_static(b"not written"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err), "PreconditionFailed");
    assert_eq!(read(&c, "k").await.as_deref(), Some(&b"replaced"[..]));
}

/// `Content-MD5` on DeleteObjects and CompleteMultipartUpload is checked as S3 checks it: a
/// body that does not match is `400 BadDigest` and nothing is deleted or completed (it used to
/// be ignored, so a corrupted key list was acted on).
#[tokio::test]
async fn content_md5_of_delete_objects_and_complete_multipart_upload_is_checked() {
    let gw = Gateway::start(true).await;
    let object = format!("/{BUCKET}/k");
    assert_eq!(gw.raw("PUT", &object, &[], b"kept").await.0, 200);

    let xml = b"<Delete><Object><Key>k</Key></Object></Delete>";
    let wrong = content_md5(b"<Delete><Object><Key>other</Key></Object></Delete>");
    let (status, body) = gw
        .raw(
            "POST",
            &format!("/{BUCKET}?delete"),
            &[("Content-MD5", wrong.clone())],
            xml,
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("<Code>BadDigest</Code>"), "{body}");
    assert_eq!(
        gw.raw("GET", &object, &[], b"").await,
        (200, "kept".to_string())
    );
    let (status, body) = gw
        .raw(
            "POST",
            &format!("/{BUCKET}?delete"),
            &[("Content-MD5", "not base64!".to_string())],
            xml,
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("<Code>InvalidDigest</Code>"), "{body}");
    assert_eq!(
        gw.raw("GET", &object, &[], b"").await,
        (200, "kept".to_string())
    );

    let (status, body) = gw
        .raw("POST", &format!("/{BUCKET}/mp?uploads"), &[], b"")
        .await;
    assert_eq!(status, 200, "{body}");
    let upload_id = between(&body, "<UploadId>", "</UploadId>");
    let (status, body) = gw
        .raw(
            "PUT",
            &format!("/{BUCKET}/mp?partNumber=1&uploadId={upload_id}"),
            &[],
            b"the only part",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let complete = format!(
        "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>{}</ETag></Part></CompleteMultipartUpload>",
        md5_etag(b"the only part")
    );
    let (status, body) = gw
        .raw(
            "POST",
            &format!("/{BUCKET}/mp?uploadId={upload_id}"),
            &[("Content-MD5", wrong)],
            complete.as_bytes(),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("<Code>BadDigest</Code>"), "{body}");
    let mp = format!("/{BUCKET}/mp");
    assert_eq!(gw.raw("GET", &mp, &[], b"").await.0, 404);

    // The right digest goes through, for both.
    let (status, body) = gw
        .raw(
            "POST",
            &format!("/{BUCKET}/mp?uploadId={upload_id}"),
            &[("Content-MD5", content_md5(complete.as_bytes()))],
            complete.as_bytes(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        gw.raw("GET", &mp, &[], b"").await,
        (200, "the only part".to_string())
    );
    let (status, body) = gw
        .raw(
            "POST",
            &format!("/{BUCKET}?delete"),
            &[("Content-MD5", content_md5(xml))],
            xml,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("<Deleted><Key>k</Key></Deleted>"), "{body}");
    assert_eq!(gw.raw("GET", &object, &[], b"").await.0, 404);
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    let from = text.find(start).map(|i| i + start.len()).unwrap_or(0);
    let to = text[from..].find(end).map_or(text.len(), |i| from + i);
    &text[from..to]
}

/// A range of an empty object selects no byte: `416 InvalidRange`, whatever the range (it used
/// to be `206` with the impossible `Content-Range: bytes 0-0/0` and no body). A range past the
/// end of a non-empty object is `416` with S3's message, not the store's read of the gateway's
/// first chunk.
#[tokio::test]
async fn ranges_of_an_empty_object_are_unsatisfiable() {
    let gw = Gateway::start(false).await;
    let c = gw.client();
    put(&c, "empty", b"").await;
    put(&c, "six", b"sixsix").await;
    for range in ["bytes=0-", "bytes=0-0", "bytes=-5"] {
        let err = c
            .get_object()
            .bucket(BUCKET)
            .key("empty")
            .range(range)
            .send()
            .await
            .map(|out| format!("{:?} {:?}", out.content_range(), out.content_length()))
            .unwrap_err();
        assert_eq!(code(&err), "InvalidRange", "{range}");
        assert_eq!(
            err.raw_response().map(|r| r.status().as_u16()),
            Some(416),
            "{range}"
        );
    }
    let got = c
        .get_object()
        .bucket(BUCKET)
        .key("empty")
        .send()
        .await
        .expect("the empty object without a range");
    assert_eq!(got.body.collect().await.unwrap().to_vec(), b"");

    let err = c
        .get_object()
        .bucket(BUCKET)
        .key("six")
        .range("bytes=6-")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err), "InvalidRange");
    assert_eq!(
        err.message(),
        Some("The requested range is not satisfiable"),
        "{err:?}"
    );
    let got = c
        .get_object()
        .bucket(BUCKET)
        .key("six")
        .range("bytes=-2")
        .send()
        .await
        .expect("a suffix range");
    assert_eq!(got.content_range(), Some("bytes 4-5/6"));
    assert_eq!(got.body.collect().await.unwrap().to_vec(), b"ix");
}

//! Random requests against the gateway (a proptest over request inputs): whatever the method,
//! path, query, headers and body, the gateway answers with a status or closes the connection
//! cleanly; it never panics, never answers 500, and what was stored before is untouched.
//!
//! The gateway runs with `anonymous`, so that random requests reach the operations instead of
//! stopping at the signature check (which `gateway.rs` tests with real and broken signatures);
//! a few cases carry a random `Authorization` header too. Its own test binary: it counts panics
//! with a process-wide hook.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fs_core::store::DynStore;
use fs_core::store::memory::MemoryStore;
use harness::gateway::InProcessGateway;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use s3_gateway::config::GatewayConfig;

/// Requests generated per run.
const CASES: u32 = 2000;
const KEPT: &[u8] = b"stored before the fuzzing";

static PANICS: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug, Clone)]
struct RawRequest {
    method: &'static str,
    target: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl RawRequest {
    fn bytes(&self, addr: SocketAddr) -> Vec<u8> {
        let mut head = format!(
            "{} {} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n",
            self.method, self.target
        );
        head.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

/// Short text of the kind query values and headers carry, some of it hostile.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9._~-]{0,12}",
        "-?[0-9]{1,20}",
        "[ -~]{0,24}",
        Just(String::new()),
        Just("%00".to_string()),
        Just("..".to_string()),
        Just("bytes=0-5".to_string()),
        Just("bytes=-3".to_string()),
        Just("bytes=9-2".to_string()),
        Just("*".to_string()),
        Just("\"etag\"".to_string()),
        Just("fuzz/kept".to_string()),
        Just("/fuzz/kept".to_string()),
        Just("UNSIGNED-PAYLOAD".to_string()),
        Just("STREAMING-UNSIGNED-PAYLOAD-TRAILER".to_string()),
        Just("STREAMING-AWS4-HMAC-SHA256-PAYLOAD".to_string()),
        Just("aws-chunked".to_string()),
        Just("x".repeat(2000)),
    ]
}

/// A path segment: mostly plausible, sometimes escaping, empty, huge or not URL-safe.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z0-9][a-z0-9.-]{0,10}",
        2 => "[a-zA-Z0-9._~%+-]{1,16}",
        1 => Just("..".to_string()),
        1 => Just(".".to_string()),
        1 => Just("%00".to_string()),
        1 => Just("%2e%2e".to_string()),
        1 => Just("%2F..%2F".to_string()),
        1 => Just("r".repeat(1100)),
        1 => "[ -~]{0,10}",
    ]
}

fn target() -> impl Strategy<Value = String> {
    let subresource = prop::sample::select(vec![
        "uploads",
        "uploadId",
        "partNumber",
        "list-type",
        "max-keys",
        "continuation-token",
        "delete",
        "location",
        "versions",
        "prefix",
        "delimiter",
        "encoding-type",
        "start-after",
        "marker",
        "x-id",
        "max-uploads",
        "key-marker",
        "upload-id-marker",
        "part-number-marker",
        "max-parts",
        "version-id-marker",
        "X-Amz-Signature",
        "X-Amz-Credential",
        "X-Amz-Date",
        "X-Amz-Expires",
        "Signature",
        "AWSAccessKeyId",
    ]);
    let query = prop::collection::vec((subresource, prop::option::of(value())), 0..4);
    // The first segment names the bucket: the one that exists most of the time.
    let bucket = prop_oneof![3 => Just("fuzz".to_string()), 1 => segment()];
    // Never the kept key itself: what is stored before must stay as it was.
    let rest = prop::collection::vec(segment(), 0..4)
        .prop_filter("the kept key", |rest| rest != &["kept"]);
    (bucket, rest, query).prop_map(|(bucket, rest, query)| {
        let mut target = format!("/{bucket}");
        for s in rest {
            target.push('/');
            target.push_str(&s);
        }
        for (i, (name, value)) in query.into_iter().enumerate() {
            target.push(if i == 0 { '?' } else { '&' });
            target.push_str(name);
            if let Some(v) = value {
                target.push('=');
                target.push_str(&v.replace(['#', '&', ' '], "%20"));
            }
        }
        target
    })
}

fn headers() -> impl Strategy<Value = Vec<(&'static str, String)>> {
    let name = prop::sample::select(vec![
        "Range",
        "If-Match",
        "If-None-Match",
        "If-Modified-Since",
        "If-Unmodified-Since",
        "x-amz-write-offset-bytes",
        "Content-MD5",
        "Content-Type",
        "x-amz-copy-source",
        "x-amz-copy-source-range",
        "x-amz-metadata-directive",
        "x-amz-meta-a",
        "x-amz-content-sha256",
        "x-amz-decoded-content-length",
        "Content-Encoding",
        "Authorization",
        "x-amz-date",
        "Expect",
        "x-amz-trailer",
        "x-amz-checksum-crc32",
    ]);
    // Not Content-Length or Transfer-Encoding: a body announced longer than it is would leave
    // the gateway waiting for the rest, as it should.
    prop::collection::vec((name, value()), 0..5)
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => Just(Vec::new()),
        3 => prop::collection::vec(any::<u8>(), 0..2048),
        1 => Just(b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>\"x\"</ETag></Part></CompleteMultipartUpload>".to_vec()),
        1 => Just(b"<Delete><Object><Key>r1</Key></Object></Delete>".to_vec()),
        1 => Just(b"<Delete><Object><Key>".to_vec()),
        1 => Just(b"5\r\nhello\r\n0\r\n\r\n".to_vec()),
    ]
}

fn request() -> impl Strategy<Value = RawRequest> {
    let method = prop::sample::select(vec![
        "GET", "PUT", "POST", "HEAD", "DELETE", "OPTIONS", "PATCH",
    ]);
    (method, target(), headers(), body()).prop_map(|(method, target, headers, body)| RawRequest {
        method,
        target,
        headers,
        body,
    })
}

/// Sends the request; its status, or `None` when the gateway closed without answering.
fn exchange(addr: SocketAddr, request: &[u8]) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).expect("connect to the gateway");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // The gateway may answer and close before it has read everything (a refused request).
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    if let Err(e) = stream.read_to_end(&mut answer) {
        assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "no answer within 20 s"
        );
    }
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn random_requests_get_an_answer_or_a_clean_close_and_change_nothing_stored() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        previous(info);
    }));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store: DynStore = Arc::new(MemoryStore::new());
    let config = GatewayConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        anonymous: true,
        ..GatewayConfig::default()
    };
    let gateway = runtime.block_on(InProcessGateway::start(store.clone(), config));
    let addr = gateway.addr;
    let put = |target: &str, body: &[u8]| {
        let request = RawRequest {
            method: "PUT",
            target: target.into(),
            headers: Vec::new(),
            body: body.to_vec(),
        };
        exchange(addr, &request.bytes(addr))
    };
    assert_eq!(put("/fuzz", b""), Some(200));
    assert_eq!(put("/fuzz/kept", KEPT), Some(200));

    let statuses = std::sync::Mutex::new(std::collections::BTreeMap::<Option<u16>, usize>::new());
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&request(), |request| {
        let status = exchange(addr, &request.bytes(addr));
        *statuses.lock().unwrap().entry(status).or_default() += 1;
        prop_assert!(
            status != Some(500),
            "500 for {} {}: the request is in the failure above",
            request.method,
            request.target
        );
        Ok(())
    });
    eprintln!(
        "answers by status (None: closed without one): {:?}",
        statuses.lock().unwrap()
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "the gateway panicked");

    let kept = runtime.block_on(async { store.get("fuzz/kept", None).await });
    assert_eq!(kept.expect("the kept object").body.as_ref(), KEPT);
    runtime.block_on(gateway.stop());
}

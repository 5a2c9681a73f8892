//! The gateway's metrics, in Prometheus text format on `--metrics-listen`: requests by S3
//! operation and status, bytes in and out, request latency histograms by operation, and the
//! appendable objects open right now.
//!
//! Requests are classified by their HTTP shape (method, path, query keys, a few headers), the
//! way S3 routes them, before s3s sees them: the counters then cover every request, including
//! those refused for a bad signature.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{HeaderMap, Method, Uri};

use crate::host::Domains;

/// Upper bounds of the latency buckets, in seconds.
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Default)]
struct Histogram {
    /// Observations at most each bound (cumulative when rendered).
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Counters of one gateway.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    latency: Mutex<BTreeMap<&'static str, Histogram>>,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

impl Metrics {
    /// Records one answered request.
    pub fn record(
        &self,
        operation: &'static str,
        status: u16,
        elapsed: Duration,
        bytes_in: u64,
        bytes_out: u64,
    ) {
        if let Ok(mut requests) = self.requests.lock() {
            *requests.entry((operation, status)).or_default() += 1;
        }
        if let Ok(mut latency) = self.latency.lock() {
            let h = latency.entry(operation).or_default();
            let seconds = elapsed.as_secs_f64();
            if let Some(i) = LATENCY_BUCKETS.iter().position(|b| seconds <= *b) {
                h.buckets[i] += 1;
            }
            h.count += 1;
            h.sum += seconds;
        }
        self.bytes_in.fetch_add(bytes_in, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes_out, Ordering::Relaxed);
    }

    /// The Prometheus text exposition, with `open_appendable` as the gauge of open objects.
    pub fn render(&self, open_appendable: usize) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP rivulet_gateway_requests_total S3 requests answered, by operation and HTTP status."
        );
        let _ = writeln!(out, "# TYPE rivulet_gateway_requests_total counter");
        if let Ok(requests) = self.requests.lock() {
            for ((op, status), n) in requests.iter() {
                let _ = writeln!(
                    out,
                    "rivulet_gateway_requests_total{{operation=\"{op}\",status=\"{status}\"}} {n}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP rivulet_gateway_bytes_total Request payload bytes (declared, else as received) and response body bytes (Content-Length)."
        );
        let _ = writeln!(out, "# TYPE rivulet_gateway_bytes_total counter");
        let _ = writeln!(
            out,
            "rivulet_gateway_bytes_total{{direction=\"in\"}} {}",
            self.bytes_in.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "rivulet_gateway_bytes_total{{direction=\"out\"}} {}",
            self.bytes_out.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP rivulet_gateway_request_duration_seconds Time to answer a request (to its response head), by operation."
        );
        let _ = writeln!(
            out,
            "# TYPE rivulet_gateway_request_duration_seconds histogram"
        );
        if let Ok(latency) = self.latency.lock() {
            for (op, h) in latency.iter() {
                let mut cumulative = 0;
                for (bound, n) in LATENCY_BUCKETS.iter().zip(h.buckets) {
                    cumulative += n;
                    let _ = writeln!(
                        out,
                        "rivulet_gateway_request_duration_seconds_bucket{{operation=\"{op}\",le=\"{bound}\"}} {cumulative}"
                    );
                }
                let _ = writeln!(
                    out,
                    "rivulet_gateway_request_duration_seconds_bucket{{operation=\"{op}\",le=\"+Inf\"}} {}",
                    h.count
                );
                let _ = writeln!(
                    out,
                    "rivulet_gateway_request_duration_seconds_sum{{operation=\"{op}\"}} {}",
                    h.sum
                );
                let _ = writeln!(
                    out,
                    "rivulet_gateway_request_duration_seconds_count{{operation=\"{op}\"}} {}",
                    h.count
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP rivulet_gateway_open_appendable_objects Appendable objects not yet sealed."
        );
        let _ = writeln!(out, "# TYPE rivulet_gateway_open_appendable_objects gauge");
        let _ = writeln!(
            out,
            "rivulet_gateway_open_appendable_objects {open_appendable}"
        );
        out
    }
}

/// The body size a message declares (0 when it declares none, as streamed bodies may not).
pub fn content_length(headers: &HeaderMap) -> u64 {
    declared(headers, http::header::CONTENT_LENGTH.as_str())
}

/// The payload size a request declares: for an aws-chunked body its decoded length
/// (`x-amz-decoded-content-length`, without the chunk framing and signatures), else its
/// Content-Length; `None` when it declares neither (an HTTP-chunked body, or no body).
pub fn declared_payload_length(headers: &HeaderMap) -> Option<u64> {
    declared_opt(headers, "x-amz-decoded-content-length")
        .or_else(|| declared_opt(headers, http::header::CONTENT_LENGTH.as_str()))
}

fn declared(headers: &HeaderMap, name: &str) -> u64 {
    declared_opt(headers, name).unwrap_or(0)
}

fn declared_opt(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// The S3 operation a request is, by S3's routing rules. `domains` are the gateway's
/// virtual-host domains: a host `bucket.domain` names the bucket, and the path is the key.
pub fn operation(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    domains: &Domains,
) -> &'static str {
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let bucket_in_host = domains.bucket_in_host(host).is_some();
    let path = uri.path().trim_start_matches('/');
    let (has_bucket, has_key) = if bucket_in_host {
        (true, !path.is_empty())
    } else {
        match path.split_once('/') {
            None => (!path.is_empty(), false),
            Some((_, key)) => (true, !key.is_empty()),
        }
    };
    let query: Vec<&str> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .map(|kv| kv.split('=').next().unwrap_or(""))
        .collect();
    let has = |k: &str| query.contains(&k);
    let header = |h: &str| headers.contains_key(h);
    if !has_bucket {
        return if method == Method::GET {
            "ListBuckets"
        } else {
            "Other"
        };
    }
    if !has_key {
        return match *method {
            Method::GET if has("uploads") => "ListMultipartUploads",
            Method::GET if has("location") => "GetBucketLocation",
            Method::GET if has("versions") => "ListObjectVersions",
            Method::GET if has("list-type") => "ListObjectsV2",
            Method::GET => "ListObjects",
            Method::PUT => "CreateBucket",
            Method::DELETE => "DeleteBucket",
            Method::HEAD => "HeadBucket",
            Method::POST if has("delete") => "DeleteObjects",
            _ => "Other",
        };
    }
    match *method {
        Method::GET if has("uploadId") => "ListParts",
        Method::GET => "GetObject",
        Method::HEAD => "HeadObject",
        Method::PUT if has("partNumber") && header("x-amz-copy-source") => "UploadPartCopy",
        Method::PUT if has("partNumber") => "UploadPart",
        Method::PUT if header("x-amz-copy-source") => "CopyObject",
        Method::PUT if header("x-amz-write-offset-bytes") => "AppendObject",
        Method::PUT => "PutObject",
        Method::POST if has("uploads") => "CreateMultipartUpload",
        Method::POST if has("uploadId") => "CompleteMultipartUpload",
        Method::DELETE if has("uploadId") => "AbortMultipartUpload",
        Method::DELETE => "DeleteObject",
        _ => "Other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_bytes_are_the_declared_payload() {
        let headers = |pairs: &[(&'static str, &str)]| {
            let mut map = HeaderMap::new();
            for (k, v) in pairs {
                map.insert(*k, v.parse().unwrap());
            }
            map
        };
        assert_eq!(
            declared_payload_length(&headers(&[("content-length", "100")])),
            Some(100)
        );
        // aws-chunked: the framing is not payload.
        let chunked = headers(&[
            ("content-length", "3295"),
            ("x-amz-decoded-content-length", "3000"),
        ]);
        assert_eq!(declared_payload_length(&chunked), Some(3000));
        assert_eq!(content_length(&chunked), 3295);
        // Nothing declared: the server counts the body as it streams.
        assert_eq!(
            declared_payload_length(&headers(&[("transfer-encoding", "chunked")])),
            None
        );
        assert_eq!(
            declared_payload_length(&headers(&[("content-length", "x")])),
            None
        );
    }

    fn op(method: Method, uri: &str, headers: &[(&str, &str)], domains: &[&str]) -> &'static str {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let domains: Vec<String> = domains.iter().map(|d| d.to_string()).collect();
        operation(
            &method,
            &uri.parse().unwrap(),
            &map,
            &Domains::new(&domains),
        )
    }

    #[test]
    fn requests_are_classified_as_s3_routes_them() {
        assert_eq!(op(Method::GET, "/", &[], &[]), "ListBuckets");
        assert_eq!(op(Method::PUT, "/bkt", &[], &[]), "CreateBucket");
        assert_eq!(
            op(Method::GET, "/bkt?list-type=2&prefix=a", &[], &[]),
            "ListObjectsV2"
        );
        assert_eq!(op(Method::GET, "/bkt/", &[], &[]), "ListObjects");
        assert_eq!(
            op(Method::GET, "/bkt?uploads", &[], &[]),
            "ListMultipartUploads"
        );
        assert_eq!(op(Method::POST, "/bkt?delete", &[], &[]), "DeleteObjects");
        assert_eq!(op(Method::PUT, "/bkt/a/b", &[], &[]), "PutObject");
        assert_eq!(
            op(
                Method::PUT,
                "/bkt/k",
                &[("x-amz-write-offset-bytes", "10")],
                &[]
            ),
            "AppendObject"
        );
        assert_eq!(
            op(Method::PUT, "/bkt/k?partNumber=2&uploadId=u", &[], &[]),
            "UploadPart"
        );
        assert_eq!(
            op(
                Method::PUT,
                "/bkt/k?partNumber=2&uploadId=u",
                &[("x-amz-copy-source", "/b/s")],
                &[]
            ),
            "UploadPartCopy"
        );
        assert_eq!(
            op(Method::POST, "/bkt/k?uploads", &[], &[]),
            "CreateMultipartUpload"
        );
        assert_eq!(
            op(Method::POST, "/bkt/k?uploadId=u", &[], &[]),
            "CompleteMultipartUpload"
        );
        assert_eq!(
            op(Method::DELETE, "/bkt/k?uploadId=u", &[], &[]),
            "AbortMultipartUpload"
        );
        assert_eq!(op(Method::GET, "/bkt/k?uploadId=u", &[], &[]), "ListParts");
        // Virtual-hosted style: the bucket is in the host.
        assert_eq!(
            op(
                Method::GET,
                "/",
                &[("host", "bkt.s3.local:9000")],
                &["s3.local"]
            ),
            "ListObjects"
        );
        assert_eq!(
            op(
                Method::GET,
                "/key",
                &[("host", "bkt.s3.local")],
                &["s3.local"]
            ),
            "GetObject"
        );
    }

    #[test]
    fn the_exposition_has_counters_histograms_and_the_gauge() {
        let m = Metrics::default();
        m.record("PutObject", 200, Duration::from_millis(3), 100, 0);
        m.record("PutObject", 200, Duration::from_millis(30), 50, 0);
        m.record("GetObject", 404, Duration::from_secs(20), 0, 7);
        let text = m.render(2);
        assert!(
            text.contains(
                "rivulet_gateway_requests_total{operation=\"PutObject\",status=\"200\"} 2"
            )
        );
        assert!(
            text.contains(
                "rivulet_gateway_requests_total{operation=\"GetObject\",status=\"404\"} 1"
            )
        );
        assert!(text.contains("rivulet_gateway_bytes_total{direction=\"in\"} 150"));
        assert!(text.contains("rivulet_gateway_bytes_total{direction=\"out\"} 7"));
        assert!(text.contains(
            "rivulet_gateway_request_duration_seconds_bucket{operation=\"PutObject\",le=\"0.005\"} 1"
        ));
        assert!(text.contains(
            "rivulet_gateway_request_duration_seconds_bucket{operation=\"PutObject\",le=\"0.05\"} 2"
        ));
        // 20 s is above every bound: only +Inf counts it.
        assert!(text.contains(
            "rivulet_gateway_request_duration_seconds_bucket{operation=\"GetObject\",le=\"10\"} 0"
        ));
        assert!(text.contains(
            "rivulet_gateway_request_duration_seconds_bucket{operation=\"GetObject\",le=\"+Inf\"} 1"
        ));
        assert!(text.contains("rivulet_gateway_open_appendable_objects 2"));
    }
}

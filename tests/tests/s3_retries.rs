//! The S3 backend's retries against a scripted S3 endpoint on loopback: each request gets the
//! next answer of a script (an S3 error, a stall past the attempt timeout, or success), and the
//! test checks what the store call returned and how many requests it took. Real servers
//! (moto, s3s-fs) cannot be told to fail on cue.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use fs_core::StoreErrorKind;
use fs_core::store::s3::{S3Config, S3Store, S3Timeouts};
use fs_core::store::{ObjectStore, PutOptions};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// One scripted answer.
#[derive(Clone)]
enum Answer {
    /// An S3 error document with this status and code.
    Error(u16, &'static str),
    /// No answer for this long (the client's attempt timeout cuts it short).
    Stall(Duration),
    /// 200 with this body (empty for a PUT) and an ETag.
    Ok(&'static [u8]),
}

/// A loopback endpoint answering requests from a script, one answer per request (the last
/// repeats), counting the requests.
struct ScriptedS3 {
    url: String,
    requests: Arc<Mutex<Vec<String>>>,
}

impl ScriptedS3 {
    async fn start(script: Vec<Answer>) -> ScriptedS3 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let (seen, script) = (seen.clone(), script.clone());
                tokio::spawn(async move {
                    let mut socket = BufReader::new(socket);
                    // One request per connection: every answer closes it.
                    let mut request_line = String::new();
                    if socket.read_line(&mut request_line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let mut length = 0usize;
                    let mut expect_continue = false;
                    loop {
                        let mut line = String::new();
                        if socket.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let line = line.trim_end();
                        if line.is_empty() {
                            break;
                        }
                        let lower = line.to_ascii_lowercase();
                        if let Some(v) = lower.strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                        if lower.starts_with("expect:") && lower.contains("100-continue") {
                            expect_continue = true;
                        }
                    }
                    if expect_continue {
                        let _ = socket
                            .get_mut()
                            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                            .await;
                    }
                    let mut body = vec![0; length];
                    if socket.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    let answer = {
                        let mut seen = seen.lock().unwrap();
                        seen.push(request_line.trim_end().to_string());
                        script[(seen.len() - 1).min(script.len() - 1)].clone()
                    };
                    let response = match answer {
                        Answer::Stall(d) => {
                            tokio::time::sleep(d).await;
                            return;
                        }
                        Answer::Error(status, code) => {
                            let xml = format!(
                                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code>\
                                 <Message>scripted</Message><RequestId>r</RequestId></Error>"
                            );
                            format!(
                                "HTTP/1.1 {status} Scripted\r\nContent-Type: application/xml\r\n\
                                 Content-Length: {}\r\nConnection: close\r\n\r\n{xml}",
                                xml.len()
                            )
                            .into_bytes()
                        }
                        Answer::Ok(body) => {
                            let mut r = format!(
                                "HTTP/1.1 200 OK\r\nETag: \"5d41402abc4b2a76b9719d911017c592\"\r\n\
                                 Last-Modified: Thu, 26 Nov 2026 12:00:00 GMT\r\n\
                                 Content-Type: application/octet-stream\r\n\
                                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                                body.len()
                            )
                            .into_bytes();
                            r.extend_from_slice(body);
                            r
                        }
                    };
                    let _ = socket.get_mut().write_all(&response).await;
                    let _ = socket.get_mut().shutdown().await;
                });
            }
        });
        ScriptedS3 { url, requests }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    async fn store(&self, max_attempts: u32, attempt_timeout: Option<Duration>) -> S3Store {
        let mut config = S3Config::new("bkt");
        config.endpoint = Some(self.url.clone());
        config.region = Some("us-east-1".into());
        config.path_style = true;
        config.credentials = Some(("test".into(), "test".into()));
        config.max_attempts = max_attempts;
        config.timeouts = S3Timeouts {
            attempt: attempt_timeout,
            ..S3Timeouts::default()
        };
        S3Store::new(config).await.unwrap()
    }
}

#[tokio::test]
async fn slow_down_and_server_errors_are_retried() {
    let s3 = ScriptedS3::start(vec![
        Answer::Error(503, "SlowDown"),
        Answer::Error(500, "InternalError"),
        Answer::Ok(b""),
    ])
    .await;
    let store = s3.store(4, None).await;
    let put = store
        .put("k", Bytes::from_static(b"hello"), PutOptions::default())
        .await
        .unwrap();
    assert_eq!(put.etag, "5d41402abc4b2a76b9719d911017c592");
    let requests = s3.requests();
    assert_eq!(requests.len(), 3, "{requests:?}");
    assert!(
        requests.iter().all(|r| r.starts_with("PUT /bkt/k")),
        "{requests:?}"
    );
}

#[tokio::test]
async fn an_attempt_that_times_out_is_retried() {
    let s3 = ScriptedS3::start(vec![
        Answer::Stall(Duration::from_secs(5)),
        Answer::Ok(b"hello"),
    ])
    .await;
    let store = s3.store(3, Some(Duration::from_millis(500))).await;
    let got = store.get("k", None).await.unwrap();
    assert_eq!(got.body.as_ref(), b"hello");
    assert_eq!(s3.requests().len(), 2, "{:?}", s3.requests());
}

#[tokio::test]
async fn retries_run_out_with_an_error_that_names_the_call() {
    let s3 = ScriptedS3::start(vec![Answer::Error(503, "SlowDown")]).await;
    let store = s3.store(2, None).await;
    let err = store
        .put("dir/k", Bytes::from_static(b"hello"), PutOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Transient, "{err}");
    let text = err.to_string();
    assert!(text.contains("dir/k"), "the error names the key: {text}");
    assert_eq!(s3.requests().len(), 2, "max_attempts is the whole budget");
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let s3 = ScriptedS3::start(vec![Answer::Error(404, "NoSuchKey")]).await;
    let store = s3.store(4, None).await;
    let err = store.get("missing", None).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::NotFound, "{err}");
    assert_eq!(s3.requests().len(), 1);
}

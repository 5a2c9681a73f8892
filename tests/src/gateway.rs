//! An in-process S3 gateway for the gateway tests: bound on a free loopback port over any
//! store, with one test key pair, stopped (gracefully) on [`InProcessGateway::stop`] or drop.

use std::net::SocketAddr;
use std::time::Duration;

use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use fs_core::store::DynStore;
use s3_gateway::Server;
use s3_gateway::config::{GatewayConfig, KeyPair};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The key pair every in-process gateway accepts.
pub const ACCESS_KEY: &str = "rivulet-test-key";
pub const SECRET_KEY: &str = "rivulet-test-secret";

/// A gateway configuration for tests: a free loopback port and the test key pair.
pub fn test_config() -> GatewayConfig {
    GatewayConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        credentials: vec![KeyPair {
            access_key: ACCESS_KEY.into(),
            secret_key: SECRET_KEY.into(),
        }],
        ..GatewayConfig::default()
    }
}

/// A gateway serving in this process.
pub struct InProcessGateway {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl InProcessGateway {
    /// Binds a gateway over `store` with `config` (a temporary index) and serves it on a task.
    pub async fn start(store: DynStore, config: GatewayConfig) -> InProcessGateway {
        let index = fs_core::Index::temporary().expect("a temporary index");
        let server = Server::bind(&config, store, index)
            .await
            .expect("bind the gateway");
        let addr = server.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .run(async {
                    let _ = stopped.await;
                })
                .await
                .expect("the gateway stops cleanly");
        });
        InProcessGateway {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// An aws-sdk-s3 client of this gateway (path style, checksums only when required).
    pub fn client(&self) -> aws_sdk_s3::Client {
        gateway_client(self.addr)
    }

    /// Stops the gateway gracefully and waits for it (in-flight requests, seals).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(40), task)
                .await
                .expect("the gateway stops within its grace period")
                .expect("the gateway task does not panic");
        }
    }
}

impl Drop for InProcessGateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// An aws-sdk-s3 client of a gateway at `addr` with the test key pair.
pub fn gateway_client(addr: SocketAddr) -> aws_sdk_s3::Client {
    client_with_keys(addr, ACCESS_KEY, SECRET_KEY)
}

/// An aws-sdk-s3 client of a gateway at `addr` signing with the given keys (path style,
/// checksums only when required).
pub fn client_with_keys(addr: SocketAddr, access: &str, secret: &str) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(crate::REGION))
        .endpoint_url(format!("http://{addr}"))
        .credentials_provider(Credentials::new(access, secret, None, None, "gateway-test"))
        .force_path_style(true)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// The address a `rivulet gateway` process serves on, from the first line it prints
/// (`listening on http://ADDR`). Reads byte by byte, so nothing past that line is consumed.
pub async fn read_listen_address(mut stdout: std::process::ChildStdout) -> SocketAddr {
    use std::io::Read;
    let line = tokio::task::spawn_blocking(move || {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while stdout.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        String::from_utf8_lossy(&line).into_owned()
    })
    .await
    .expect("the reader of the gateway's first line");
    line.strip_prefix("listening on http://")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line from the gateway: {line:?}"))
}

/// Sends an unsigned `PUT /{path}` to `addr` that announces `announced` bytes, writes `sent`
/// of them and hangs up: a client that goes away mid-upload.
pub async fn put_then_hang_up(addr: SocketAddr, path: &str, announced: usize, sent: usize) {
    use std::io::Write;
    let path = path.to_string();
    tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).expect("connect to the gateway");
        write!(
            stream,
            "PUT /{path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {announced}\r\n\r\n"
        )
        .expect("send the request head");
        let chunk = vec![7u8; 64 * 1024];
        let mut left = sent;
        while left > 0 {
            let n = left.min(chunk.len());
            stream.write_all(&chunk[..n]).expect("send the body");
            left -= n;
        }
        stream.flush().expect("flush the body");
    })
    .await
    .expect("the client thread");
}

/// `len` bytes of test data that differ with `seed` and do not repeat within a part.
pub fn patterned_data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            ((i / 4093) as u8)
                .wrapping_mul(31)
                .wrapping_add(i as u8 ^ seed)
        })
        .collect()
}

/// The `Content-MD5` header of `body`: its MD5 digest in base64.
pub fn content_md5(body: &[u8]) -> String {
    use base64::Engine;
    let hex = fs_core::store::rules::md5_hex(body);
    let digest: Vec<u8> = (0..hex.len())
        .step_by(2)
        .filter_map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect();
    base64::engine::general_purpose::STANDARD.encode(digest)
}

/// PutObject of `body` to `bucket/key` with an optional `Content-MD5`: the ETag as answered,
/// or the S3 error code.
pub async fn put_object(
    c: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    body: &[u8],
    md5: Option<String>,
) -> Result<String, String> {
    use aws_sdk_s3::error::ProvideErrorMetadata;
    c.put_object()
        .bucket(bucket)
        .key(key)
        .body(aws_sdk_s3::primitives::ByteStream::from(body.to_vec()))
        .set_content_md5(md5)
        .send()
        .await
        .map(|out| out.e_tag().unwrap_or_default().to_string())
        .map_err(|e| e.code().unwrap_or("no code").to_string())
}

//! The HTTP side: bind, accept connections, hand each to `s3s` over hyper, and shut down
//! gracefully (stop accepting, let in-flight requests finish).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use fs_core::store::DynStore;
use fs_core::{Index, RecoverableWriter, WriterConfig};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use hyper_util::server::graceful::GracefulShutdown;
use s3s::service::{S3Service, S3ServiceBuilder};
use tokio::net::TcpListener;

use crate::appends::{Appends, RecoveryReport};
use crate::auth::KeyPairAuth;
use crate::bodies::BodyDigest;
use crate::buckets::Buckets;
use crate::config::GatewayConfig;
use crate::errors::GatewayError;
use crate::host::Domains;
use crate::linger::Lingering;
use crate::metrics::{self, Metrics};
use crate::service::GatewayService;

/// How long a shutdown waits for in-flight requests before dropping their connections.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// A bound gateway, ready to serve.
pub struct Server {
    listener: TcpListener,
    service: S3Service,
    local_addr: SocketAddr,
    appends: Appends,
    recovered: RecoveryReport,
    metrics: Arc<Metrics>,
    metrics_listener: Option<TcpListener>,
    domains: Arc<Domains>,
}

impl Server {
    /// Checks the configuration, finishes the appendable objects a previous run over `store`
    /// left open in `index` (so that no acknowledged append is lost to a crash), builds the S3
    /// service and binds the listening socket (port 0 picks a free port: see
    /// [`Server::local_addr`]). `index` records the tokens of open appendable objects: give
    /// each gateway of a store the same index across restarts.
    pub async fn bind(
        config: &GatewayConfig,
        store: DynStore,
        index: Index,
    ) -> Result<Server, GatewayError> {
        Self::bind_buckets(config, Buckets::new(store), index).await
    }

    /// [`Server::bind`] over any bucket mapping: folders of a store ([`Buckets::new`]) or a
    /// backend's buckets one to one ([`Buckets::one_to_one`]).
    pub async fn bind_buckets(
        config: &GatewayConfig,
        buckets: Buckets,
        index: Index,
    ) -> Result<Server, GatewayError> {
        config.validate()?;
        let store = buckets.store().clone();
        let store_min_part = store.min_part_size();
        let mut writer_config = WriterConfig {
            part_size: config.append_part_size.max(store_min_part),
            max_in_flight: config.max_in_flight,
            // Open objects are read through the gateway: over stores that cannot read an
            // upload's parts back (S3), the writer keeps a copy of them.
            cache_parts: true,
            ..WriterConfig::default()
        };
        if let Some(dir) = &config.cache_dir {
            writer_config.cache_dir = dir.clone();
        }
        if let Some(prefix) = buckets.tail_prefix() {
            writer_config.tail_prefix = prefix;
        }
        let writer = RecoverableWriter::new(store.clone(), index.clone(), writer_config)?;
        let appends = Appends::new(writer, index, config.seal_after);
        let recovered = appends.recover().await?;
        if recovered != RecoveryReport::default() {
            tracing::info!(
                ?recovered,
                "finished the appendable objects a previous run left open"
            );
        }
        let service = GatewayService::with_buckets(buckets, config.region.clone(), appends.clone())
            .with_read_chunk(config.read_chunk)
            // Parts the store accepts: the writer's part size, at least the store's minimum.
            .with_streaming(config.part_size.max(store_min_part), config.max_in_flight);
        let mut builder = S3ServiceBuilder::new(service);
        if !config.anonymous {
            builder.set_auth(KeyPairAuth::new(&config.credentials));
        }
        if !config.domains.is_empty() {
            builder.set_host(Domains::new(&config.domains));
        }
        let service = builder.build();
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| GatewayError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| GatewayError::Bind {
            addr: config.listen,
            source,
        })?;
        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| GatewayError::Bind { addr, source })?,
            ),
            None => None,
        };
        Ok(Server {
            listener,
            service,
            local_addr,
            appends,
            recovered,
            metrics: Arc::new(Metrics::default()),
            metrics_listener,
            domains: Arc::new(Domains::new(&config.domains)),
        })
    }

    /// The address `/metrics` is served on, if any.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// What starting up recovered of a previous run's open appendable objects.
    pub fn recovered(&self) -> &RecoveryReport {
        &self.recovered
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` completes, then stops accepting, waits up to
    /// [`SHUTDOWN_GRACE`] for the requests in flight, and seals every open appendable object.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), GatewayError> {
        let sealer = self.appends.spawn_sealer();
        let metrics_server = self
            .metrics_listener
            .take()
            .map(|l| tokio::spawn(serve_metrics(l, self.metrics.clone(), self.appends.clone())));
        let http = ConnBuilder::new(TokioExecutor::new());
        let graceful = GracefulShutdown::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let socket = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((socket, _)) => socket,
                    Err(e) if is_per_connection(&e) => {
                        // One client's failed handshake must not stop the server.
                        tracing::debug!(error = %e, "accepting a connection failed");
                        continue;
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: wait instead of spinning.
                        tracing::warn!(error = %e, "accepting connections failed; retrying");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let service = counted(
                self.service.clone(),
                self.metrics.clone(),
                self.domains.clone(),
            );
            // Lingering: a client still sending a refused request's body reads the error
            // instead of a reset.
            let conn = http.serve_connection(TokioIo::new(Lingering::new(socket)), service);
            let conn = graceful.watch(conn.into_owned());
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            });
        }
        drop(self.listener);
        tokio::select! {
            () = graceful.shutdown() => {}
            () = tokio::time::sleep(SHUTDOWN_GRACE) => {
                tracing::warn!("requests still in flight after {SHUTDOWN_GRACE:?}; closing them");
            }
        }
        if let Some(server) = metrics_server {
            server.abort();
        }
        sealer.stop().await;
        // Requests cut off above may still hold a key: seal_all waits for each key's lock.
        let unsealed = self.appends.seal_all().await;
        if unsealed > 0 {
            tracing::warn!(
                unsealed,
                "appendable objects left open; the next start finishes them"
            );
        }
        Ok(())
    }
}

/// The S3 service, counting each request in `metrics` by operation, status, latency and size.
fn counted(
    service: S3Service,
    metrics: Arc<Metrics>,
    domains: Arc<Domains>,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = s3s::HttpResponse,
    Error = s3s::HttpError,
    Future = impl Future<Output = Result<s3s::HttpResponse, s3s::HttpError>> + Send,
> + Clone {
    hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
        let (service, metrics) = (service.clone(), metrics.clone());
        let operation =
            metrics::operation(request.method(), request.uri(), request.headers(), &domains);
        let known_length = hyper::body::Body::size_hint(request.body()).exact();
        let declared_in = metrics::declared_payload_length(request.headers()).or(known_length);
        // A body sent without a declared length (HTTP chunked) is counted as it is read; the
        // handlers read request bodies before they answer, so the count is whole by then.
        // Other bodies stay as they are: s3s reads their exact length off the body.
        let streamed_in = Arc::new(AtomicU64::new(0));
        let request = match declared_in {
            Some(_) => request.map(s3s::Body::from),
            None => {
                let counter = streamed_in.clone();
                request.map(|body| {
                    s3s::Body::http_body(body.map_frame(move |frame| {
                        if let Some(data) = frame.data_ref() {
                            counter.fetch_add(data.len() as u64, Ordering::Relaxed);
                        }
                        frame
                    }))
                })
            }
        };
        // s3s parses these XML bodies itself and checks no Content-MD5: the operation checks
        // it against the digest taken here as s3s reads the body.
        let request = if matches!(operation, "DeleteObjects" | "CompleteMultipartUpload")
            && request.headers().contains_key("content-md5")
        {
            let (mut parts, body) = request.into_parts();
            let (body, digest) = BodyDigest::wrap(body);
            parts.extensions.insert(digest);
            http::Request::from_parts(parts, body)
        } else {
            request
        };
        async move {
            let started = Instant::now();
            let mut result = service.call(request).await;
            // S3 names every answer, and clients quote the name in their errors.
            if let Ok(response) = &mut result {
                let id = request_id();
                if response.status().as_u16() >= 400
                    && let Some(body) = response.body().bytes()
                    && let Some(done) = crate::errors::completed_error_body(&body, &id)
                {
                    response
                        .headers_mut()
                        .insert(http::header::CONTENT_LENGTH, done.len().into());
                    *response.body_mut() = s3s::Body::from(Bytes::from(done));
                }
                if let Ok(value) = http::HeaderValue::from_str(&id) {
                    response.headers_mut().insert("x-amz-request-id", value);
                }
            }
            let (status, bytes_out) = match &result {
                Ok(response) => (
                    response.status().as_u16(),
                    metrics::content_length(response.headers()),
                ),
                Err(_) => (500, 0),
            };
            let bytes_in = declared_in.unwrap_or_else(|| streamed_in.load(Ordering::Relaxed));
            metrics.record(operation, status, started.elapsed(), bytes_in, bytes_out);
            result
        }
    })
}

/// A request id as S3 gives them (16 upper-case hex digits): a start drawn from the clock and
/// the process id, then a count, so that ids differ across restarts and are unique in a run.
fn request_id() -> String {
    static NEXT: std::sync::OnceLock<AtomicU64> = std::sync::OnceLock::new();
    let next = NEXT.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        AtomicU64::new(nanos ^ (u64::from(std::process::id()) << 40))
    });
    format!("{:016X}", next.fetch_add(1, Ordering::Relaxed))
}

/// Serves `GET /metrics` on its own listener until aborted.
async fn serve_metrics(listener: TcpListener, metrics: Arc<Metrics>, appends: Appends) {
    let http = ConnBuilder::new(TokioExecutor::new());
    loop {
        let Ok((socket, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (metrics, appends, http) = (metrics.clone(), appends.clone(), http.clone());
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let (metrics, appends) = (metrics.clone(), appends.clone());
                    async move {
                        let mut response = if request.uri().path() == "/metrics" {
                            let body = metrics.render(appends.open_views("").len());
                            let mut r = http::Response::new(Full::new(Bytes::from(body)));
                            r.headers_mut().insert(
                                http::header::CONTENT_TYPE,
                                http::HeaderValue::from_static("text/plain; version=0.0.4"),
                            );
                            r
                        } else {
                            http::Response::new(Full::new(Bytes::from_static(
                                b"only /metrics here\n",
                            )))
                        };
                        if request.uri().path() != "/metrics" {
                            *response.status_mut() = http::StatusCode::NOT_FOUND;
                        }
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
            let _ = http.serve_connection(TokioIo::new(socket), service).await;
        });
    }
}

fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock
    )
}

//! The HTTP side: bind, accept connections, hand each to `s3s` over hyper, and shut down
//! gracefully (stop accepting, let in-flight requests finish).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use fs_core::store::DynStore;
use fs_core::{Index, RecoverableWriter, WriterConfig};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use hyper_util::server::graceful::GracefulShutdown;
use s3s::host::MultiDomain;
use s3s::service::{S3Service, S3ServiceBuilder};
use tokio::net::TcpListener;

use crate::appends::{Appends, RecoveryReport};
use crate::auth::KeyPairAuth;
use crate::config::GatewayConfig;
use crate::errors::GatewayError;
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
        config.validate()?;
        let mut writer_config = WriterConfig {
            part_size: config.part_size,
            max_in_flight: config.max_in_flight,
            // Open objects are read through the gateway: over stores that cannot read an
            // upload's parts back (S3), the writer keeps a copy of them.
            cache_parts: true,
            ..WriterConfig::default()
        };
        if let Some(dir) = &config.cache_dir {
            writer_config.cache_dir = dir.clone();
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
        let service = GatewayService::new(store, config.region.clone(), appends.clone())
            .with_read_chunk(config.read_chunk);
        let mut builder = S3ServiceBuilder::new(service);
        if !config.anonymous {
            builder.set_auth(KeyPairAuth::new(&config.credentials));
        }
        if !config.domains.is_empty() {
            let host = MultiDomain::new(&config.domains)
                .map_err(|e| GatewayError::Config(format!("--domain: {e}")))?;
            builder.set_host(host);
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
        Ok(Server {
            listener,
            service,
            local_addr,
            appends,
            recovered,
        })
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
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), GatewayError> {
        let sealer = self.appends.spawn_sealer();
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
            let conn = http.serve_connection(TokioIo::new(socket), self.service.clone());
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

fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock
    )
}

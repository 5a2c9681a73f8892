//! The HTTP side: bind, accept connections, hand each to `s3s` over hyper, and shut down
//! gracefully (stop accepting, let in-flight requests finish).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use fs_core::store::DynStore;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use hyper_util::server::graceful::GracefulShutdown;
use s3s::host::MultiDomain;
use s3s::service::{S3Service, S3ServiceBuilder};
use tokio::net::TcpListener;

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
}

impl Server {
    /// Checks the configuration, builds the S3 service over `store` and binds the listening
    /// socket (port 0 picks a free port: see [`Server::local_addr`]).
    pub async fn bind(config: &GatewayConfig, store: DynStore) -> Result<Server, GatewayError> {
        config.validate()?;
        let service =
            GatewayService::new(store, config.region.clone()).with_read_chunk(config.read_chunk);
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
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` completes, then stops accepting and waits up to
    /// [`SHUTDOWN_GRACE`] for the requests in flight.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), GatewayError> {
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

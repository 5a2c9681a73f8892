//! Rivulet's S3 gateway: an S3 API server (built on `s3s`) over any Rivulet object store.
//!
//! The store's root holds the buckets as top-level folders: object `k` of bucket `b` is the store
//! key `b/k` (see [`buckets`]). Every S3 operation maps onto [`fs_core::store::ObjectStore`]
//! calls, so the gateway inherits the store's rules (durable local writes, multipart limits,
//! conditional writes) instead of re-implementing them.
//!
//! With `--store s3://` (no bucket) the gateway's buckets are the backend's, one to one
//! ([`account`]).
//!
//! One module per job: [`account`] (one-to-one bucket mode), [`appends`] (appendable objects: `x-amz-write-offset-bytes`), [`config`] (what the server is told), [`auth`] (signature keys),
//! [`bodies`] (request bodies, streamed PUTs), [`buckets`] (bucket mapping), [`listing`] (listing pages and tokens), [`service`] (the S3
//! operations), [`errors`] (store errors as S3 errors), [`headers`] (the standard object headers), [`linger`] (connections that drain before they close) and [`server`] (the HTTP loop).

pub mod account;
pub mod appends;
pub mod auth;
pub mod bodies;
pub mod buckets;
pub mod config;
pub mod errors;
pub mod headers;
pub mod host;
pub mod linger;
pub mod listing;
pub mod metrics;
pub mod server;
pub mod service;

pub use config::GatewayConfig;
pub use errors::GatewayError;
pub use server::Server;

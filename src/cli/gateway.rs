//! `gateway`: serve a store over the S3 API until SIGTERM or SIGINT.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use fs_core::store::StoreUrl;
use s3_gateway::Server;
use s3_gateway::account::{Account, AccountStore};
use s3_gateway::buckets::Buckets;
use s3_gateway::config::{self, GatewayConfig, KeyPair};

use super::Env;
use super::output::Usage;

#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// The store whose top-level folders are the buckets (a directory, s3://bucket/prefix,
    /// ...); s3:// without a bucket (s3://?endpoint=...) serves the backend's buckets one to one
    #[arg(long, value_name = "URL")]
    pub store: String,

    /// With --store s3:// (one to one): the backend bucket that holds the gateway's own state
    /// (created if missing, hidden from clients)
    #[arg(long, value_name = "BUCKET", default_value = s3_gateway::account::DEFAULT_STATE_BUCKET)]
    pub state_bucket: String,

    /// Address to listen on (port 0 picks a free port; the bound address is printed)
    #[arg(long, value_name = "ADDR", default_value_t = config::DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Region reported to clients (GetBucketLocation, HeadBucket, ListBuckets); signatures made for any region are accepted
    #[arg(long, default_value = config::DEFAULT_REGION)]
    pub region: String,

    /// Access key clients sign with (with --secret-key)
    #[arg(long, env = "RIVULET_ACCESS_KEY_ID", value_name = "KEY")]
    pub access_key: Option<String>,

    /// Secret key of --access-key
    #[arg(
        long,
        env = "RIVULET_SECRET_ACCESS_KEY",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub secret_key: Option<String>,

    /// More key pairs, one ACCESS_KEY:SECRET_KEY a line (# comments)
    #[arg(long, value_name = "FILE")]
    pub credentials_file: Option<PathBuf>,

    /// Accept unsigned requests from anyone (no credentials may be given then)
    #[arg(long)]
    pub anonymous: bool,

    /// Base domain for virtual-hosted-style requests (bucket.DOMAIN); repeatable
    #[arg(long, value_name = "DOMAIN")]
    pub domain: Vec<String>,

    /// Commit an appendable object to the store after this long without appends (e.g. 5s, 300ms)
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub seal_after: Duration,

    /// Part size of the uploads behind appendable objects (at least the store's minimum); every
    /// acknowledged append re-stages the part being filled, so smaller parts make appends cheaper
    #[arg(long, value_name = "SIZE", default_value = "5MiB", value_parser = super::part_size_arg)]
    pub append_part_size: u64,

    /// Serve Prometheus metrics on GET /metrics at this address (e.g. 127.0.0.1:9100)
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
}

pub const GATEWAY_HELP: &str = "\
Serves the store over the S3 API: each top-level folder of the store is a bucket (bucket b,
key k is the store key b/k); CreateBucket makes the folder. With --store s3:// (no bucket) the
gateway's buckets are the backend's buckets, one to one (--state-bucket holds its own state). Requests must be signed with one of
the configured key pairs (--access-key/--secret-key, RIVULET_ACCESS_KEY_ID and
RIVULET_SECRET_ACCESS_KEY, --credentials-file) unless --anonymous. Prints `listening on
http://ADDR` once ready; SIGTERM or SIGINT stop it after the requests in flight.

PutObject with x-amz-write-offset-bytes appends (durable when acknowledged); an appendable
object is committed to the store after --seal-after without appends, before any other write to
it, and at shutdown. Open objects are recorded in the index (--index; default: gateway-index
beside the default index) and finished at the next start after a crash. See docs/gateway.md.

Examples:
  RIVULET_ACCESS_KEY_ID=me RIVULET_SECRET_ACCESS_KEY=secret rivulet gateway --store /srv/store
  rivulet gateway --store 's3://bkt/gw?endpoint=http://10.0.0.5:9000' --listen 0.0.0.0:9000 \\
      --credentials-file /etc/rivulet/keys
  rivulet gateway --store 's3://?endpoint=http://10.0.0.5:9000'   # buckets one to one";

/// Runs the gateway until a signal stops it.
pub async fn gateway(env: &Env, args: GatewayArgs) -> Result<()> {
    let credentials = credentials(&args)?;
    let config = GatewayConfig {
        listen: args.listen,
        region: args.region,
        credentials,
        anonymous: args.anonymous,
        domains: args.domain,
        seal_after: args.seal_after,
        part_size: env.part_size(),
        append_part_size: args.append_part_size,
        max_in_flight: env.max_in_flight(),
        cache_dir: env.global.cache_dir.clone(),
        metrics_listen: args.metrics_listen,
        ..GatewayConfig::default()
    };
    // Refuse a bad configuration before touching the store (no directory created for nothing).
    config.validate()?;
    let buckets = match s3_gateway::account::parse_account_url(&args.store) {
        Some(account_config) => {
            let account = Account::open(account_config?, &args.state_bucket)
                .await
                .with_context(|| {
                    format!(
                        "gateway {}: opening the backend's buckets (state bucket {})",
                        args.store, args.state_bucket
                    )
                })?;
            Buckets::one_to_one(Arc::new(AccountStore::new(account.clone())), account)
        }
        None => Buckets::new(env.open_store(&StoreUrl::parse(&args.store)?).await?),
    };
    let index = env.gateway_index().await?;
    let server = Server::bind_buckets(&config, buckets, index).await?;
    let recovered = server.recovered();
    if recovered.sealed + recovered.aborted + recovered.failed > 0 {
        env.say(format_args!(
            "recovered appendable objects: {} committed, {} never acknowledged (aborted), {} left for later",
            recovered.sealed, recovered.aborted, recovered.failed
        ));
    }
    let mut stdout = std::io::stdout();
    // One line, flushed: scripts and tests wait for it to learn the port.
    writeln!(stdout, "listening on http://{}", server.local_addr())
        .and_then(|()| stdout.flush())
        .context("writing the address to stdout")?;
    if let Some(addr) = server.metrics_addr() {
        env.say(format_args!("metrics on http://{addr}/metrics"));
    }
    server.run(shutdown_signal()).await?;
    env.say("gateway stopped");
    Ok(())
}

/// The key pairs from the options, the environment and the credentials file.
fn credentials(args: &GatewayArgs) -> Result<Vec<KeyPair>> {
    let mut pairs = Vec::new();
    match (&args.access_key, &args.secret_key) {
        (Some(access_key), Some(secret_key)) => pairs.push(KeyPair {
            access_key: access_key.clone(),
            secret_key: secret_key.clone(),
        }),
        (None, None) => {}
        _ => {
            return Err(Usage(
                "--access-key and --secret-key (RIVULET_ACCESS_KEY_ID and \
                 RIVULET_SECRET_ACCESS_KEY) go together"
                    .into(),
            )
            .into());
        }
    }
    if let Some(path) = &args.credentials_file {
        pairs.extend(config::read_credentials_file(path)?);
    }
    Ok(pairs)
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    super::signals::stop_signal().await;
    tracing::info!("shutting down: finishing the requests in flight");
}

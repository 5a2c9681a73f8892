//! What the gateway is told: where to listen, its region, who may call it, and the domains of
//! virtual-hosted-style requests.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::errors::GatewayError;

/// The default listening address: loopback only, so that a gateway is never exposed by
/// accident.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 9000);

/// The region the gateway reports (GetBucketLocation, HeadBucket, ListBuckets).
pub const DEFAULT_REGION: &str = "us-east-1";

/// The default part size of the uploads behind appendable objects: S3's minimum. Every
/// acknowledged append re-stages the part being filled (a persist costs O(tail)), so the
/// smallest part the store accepts makes appends cheapest.
pub const DEFAULT_APPEND_PART_SIZE: u64 = fs_core::store::limits::MIN_PART_SIZE;

/// One access key and its secret.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyPair {
    pub access_key: String,
    pub secret_key: String,
}

impl std::fmt::Debug for KeyPair {
    // The secret never reaches logs or panics.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .finish()
    }
}

/// The gateway's configuration.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    pub region: String,
    /// Requests must be signed with one of these (SigV4 or V2).
    pub credentials: Vec<KeyPair>,
    /// Accept unsigned requests and check no signature at all. Exclusive with `credentials`.
    pub anonymous: bool,
    /// Base domains for virtual-hosted-style requests (`bucket.domain`); path style always works.
    pub domains: Vec<String>,
    /// Bytes a GET reads from the store at a time: bounds the memory of a download. Unused over
    /// stores that stream bodies (a GET is then relayed as it arrives).
    pub read_chunk: u64,
    /// An appendable object is sealed (committed to the store) after this long without appends.
    pub seal_after: Duration,
    /// Part size of large PUTs written to the store in parts (at least the store's minimum).
    pub part_size: u64,
    /// Part size of the uploads behind appendable objects (at least the store's minimum).
    pub append_part_size: u64,
    /// Parts uploaded concurrently per appendable object.
    pub max_in_flight: usize,
    /// Where the parts of open appendable objects are cached for reads (stores that cannot read
    /// an upload's parts back, like S3); `None`: the writer's default.
    pub cache_dir: Option<PathBuf>,
    /// Where to serve `/metrics` (Prometheus text), apart from the S3 port; `None`: nowhere.
    pub metrics_listen: Option<SocketAddr>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN,
            region: DEFAULT_REGION.to_string(),
            credentials: Vec::new(),
            anonymous: false,
            domains: Vec::new(),
            read_chunk: crate::service::DEFAULT_READ_CHUNK,
            seal_after: crate::appends::DEFAULT_SEAL_AFTER,
            part_size: fs_core::WriterConfig::default().part_size,
            append_part_size: DEFAULT_APPEND_PART_SIZE,
            max_in_flight: fs_core::WriterConfig::default().max_in_flight,
            cache_dir: None,
            metrics_listen: None,
        }
    }
}

impl GatewayConfig {
    /// Checks that the configuration is usable: credentials or an explicit `anonymous`, not
    /// both; a region; domains that are names, not URLs.
    pub fn validate(&self) -> Result<(), GatewayError> {
        if self.credentials.is_empty() && !self.anonymous {
            return Err(GatewayError::NoCredentials);
        }
        if !self.credentials.is_empty() && self.anonymous {
            return Err(GatewayError::Config(
                "--anonymous cannot be combined with credentials (from options, \
                 --credentials-file or RIVULET_ACCESS_KEY_ID/RIVULET_SECRET_ACCESS_KEY)"
                    .into(),
            ));
        }
        for pair in &self.credentials {
            if pair.access_key.is_empty() || pair.secret_key.is_empty() {
                return Err(GatewayError::Config(
                    "an access key and its secret key must both be non-empty".into(),
                ));
            }
        }
        if self.read_chunk == 0 {
            return Err(GatewayError::Config("the read chunk size is 0".into()));
        }
        if self.seal_after.is_zero() {
            return Err(GatewayError::Config("the seal-after delay is 0".into()));
        }
        if self.region.is_empty() {
            return Err(GatewayError::Config("the region is empty".into()));
        }
        for domain in &self.domains {
            if domain.is_empty() || domain.contains('/') || domain.contains(':') {
                return Err(GatewayError::Config(format!(
                    "--domain takes a host name like s3.example.com, not '{domain}'"
                )));
            }
        }
        Ok(())
    }
}

/// Reads key pairs from a credentials file: one `ACCESS_KEY:SECRET_KEY` a line; blank lines and
/// lines starting with `#` are ignored. The secret is everything after the first `:`.
pub fn read_credentials_file(path: &Path) -> Result<Vec<KeyPair>, GatewayError> {
    let fail = |why: String| GatewayError::CredentialsFile {
        path: path.display().to_string(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    parse_credentials(&text).map_err(fail)
}

/// Parses the text of a credentials file (see [`read_credentials_file`]).
pub fn parse_credentials(text: &str) -> Result<Vec<KeyPair>, String> {
    let mut pairs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((access, secret)) = line.split_once(':') else {
            // The line is not echoed: it may be a secret.
            return Err(format!("line {} is not ACCESS_KEY:SECRET_KEY", i + 1));
        };
        let (access, secret) = (access.trim(), secret.trim());
        if access.is_empty() || secret.is_empty() {
            return Err(format!("line {} has an empty access or secret key", i + 1));
        }
        pairs.push(KeyPair {
            access_key: access.to_string(),
            secret_key: secret.to_string(),
        });
    }
    if pairs.is_empty() {
        return Err("no ACCESS_KEY:SECRET_KEY lines".into());
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(a: &str, s: &str) -> KeyPair {
        KeyPair {
            access_key: a.into(),
            secret_key: s.into(),
        }
    }

    #[test]
    fn credentials_are_required_unless_anonymous() {
        let mut config = GatewayConfig::default();
        assert!(matches!(
            config.validate(),
            Err(GatewayError::NoCredentials)
        ));
        config.anonymous = true;
        config.validate().unwrap();
        config.credentials.push(pair("a", "s"));
        assert!(matches!(config.validate(), Err(GatewayError::Config(_))));
        config.anonymous = false;
        config.validate().unwrap();
        config.domains.push("http://x".into());
        assert!(config.validate().is_err());
    }

    #[test]
    fn credentials_files_parse_and_bad_lines_are_named_without_their_text() {
        let pairs = parse_credentials("# keys\n\nak1:sec:ret\n ak2 : s2 \n").unwrap();
        assert_eq!(pairs, vec![pair("ak1", "sec:ret"), pair("ak2", "s2")]);
        let err = parse_credentials("ak1:s1\ntopsecret\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        assert!(!err.contains("topsecret"), "{err}");
        assert!(parse_credentials("# nothing\n").is_err());
        assert!(parse_credentials(":s\n").is_err());
        assert!(format!("{:?}", pair("a", "hidden")).contains("redacted"));
    }
}

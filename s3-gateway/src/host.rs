//! Which bucket a request names by its Host header (`--domain`): `bucket.DOMAIN`, with or
//! without a port, is virtual-hosted style; any other host (the gateway's address, a domain
//! itself) leaves the bucket to the path. s3s's own `MultiDomain` compares hosts port
//! included, and takes any other host for a bucket name (CNAME-style buckets, which the
//! gateway does not offer): behind a non-default port it found no bucket in `bucket.DOMAIN:PORT`
//! and refused every path-style request once a domain was set.

use s3s::S3Result;
use s3s::host::{S3Host, VirtualHost};

/// The gateway's virtual-host domains, lower-cased.
#[derive(Debug)]
pub struct Domains {
    domains: Vec<String>,
}

impl Domains {
    /// `domains` are host names without port (checked by the gateway's configuration).
    pub fn new(domains: &[String]) -> Self {
        Self {
            domains: domains
                .iter()
                .map(|d| d.trim_end_matches('.').to_ascii_lowercase())
                .collect(),
        }
    }

    /// The bucket named by `host` (a Host header value), if it is `bucket.DOMAIN[:port]` of
    /// one of the domains.
    pub fn bucket_in_host<'h>(&self, host: &'h str) -> Option<&'h str> {
        let name = without_port(host);
        self.domains.iter().find_map(|domain| {
            let cut = name.len().checked_sub(domain.len() + 1)?;
            if !name.is_char_boundary(cut) {
                return None;
            }
            let (bucket, rest) = name.split_at(cut);
            (!bucket.is_empty()
                && rest.as_bytes()[0] == b'.'
                && rest[1..].eq_ignore_ascii_case(domain))
            .then_some(bucket)
        })
    }
}

/// The host name of a Host header value: `name`, `name:port`, `[v6]` or `[v6]:port`.
fn without_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

impl S3Host for Domains {
    fn parse_host_header<'a>(&'a self, host: &'a str) -> S3Result<VirtualHost<'a>> {
        Ok(match self.bucket_in_host(host) {
            Some(bucket) => {
                VirtualHost::new(without_port(host)).with_bucket(bucket.to_ascii_lowercase())
            }
            None => VirtualHost::new(without_port(host)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_comes_from_a_subdomain_of_a_domain_with_or_without_a_port() {
        let d = Domains::new(&["gw.test".into(), "S3.Example.com.".into()]);
        assert_eq!(d.bucket_in_host("logs.gw.test"), Some("logs"));
        assert_eq!(d.bucket_in_host("logs.gw.test:9000"), Some("logs"));
        assert_eq!(
            d.bucket_in_host("my.dotted.bucket.s3.example.com"),
            Some("my.dotted.bucket")
        );
        assert_eq!(d.bucket_in_host("LOGS.GW.TEST:80"), Some("LOGS"));
        for path_style in [
            "gw.test",
            "gw.test:9000",
            "127.0.0.1:9000",
            "[::1]:9000",
            "localhost",
            "other.test",
            ".gw.test",
            "xgw.test",
            "",
        ] {
            assert_eq!(d.bucket_in_host(path_style), None, "{path_style}");
        }
        let vh = d.parse_host_header("logs.gw.test:9000").unwrap();
        assert_eq!((vh.domain(), vh.bucket()), ("logs.gw.test", Some("logs")));
        let vh = d.parse_host_header("127.0.0.1:9000").unwrap();
        assert_eq!(vh.bucket(), None);
    }
}

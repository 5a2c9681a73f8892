//! Signature keys: the `s3s` authentication provider over the configured key pairs.

use std::collections::HashMap;

use s3s::auth::{S3Auth, SecretKey};
use s3s::{S3Result, s3_error};

use crate::config::KeyPair;

/// Looks up the secret of an access key among a fixed set of pairs; `s3s` then checks the
/// request's signature with it.
pub struct KeyPairAuth {
    secrets: HashMap<String, SecretKey>,
}

impl KeyPairAuth {
    /// The provider for these pairs; a later pair with the same access key replaces an earlier.
    pub fn new(pairs: &[KeyPair]) -> Self {
        let secrets = pairs
            .iter()
            .map(|p| (p.access_key.clone(), SecretKey::from(p.secret_key.as_str())))
            .collect();
        Self { secrets }
    }
}

#[async_trait::async_trait]
impl S3Auth for KeyPairAuth {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        match self.secrets.get(access_key) {
            Some(secret) => Ok(secret.clone()),
            None => Err(s3_error!(
                InvalidAccessKeyId,
                "The access key ID you provided does not exist in our records."
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn known_keys_give_their_secret_and_unknown_keys_are_refused() {
        let auth = KeyPairAuth::new(&[
            KeyPair {
                access_key: "a".into(),
                secret_key: "sa".into(),
            },
            KeyPair {
                access_key: "b".into(),
                secret_key: "sb".into(),
            },
        ]);
        assert_eq!(auth.get_secret_key("b").await.unwrap().expose(), "sb");
        let err = auth.get_secret_key("c").await.unwrap_err();
        assert_eq!(err.code().as_str(), "InvalidAccessKeyId");
    }
}

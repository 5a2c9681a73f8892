//! One-to-one bucket mode (`--store s3://`, no bucket): the gateway's buckets are the backend's
//! buckets.
//!
//! [`AccountStore`] is an [`ObjectStore`] whose keys are `bucket/key`, like the folder mode's
//! store keys: each call goes to the [`S3Store`] of the key's first segment (opened once per
//! bucket), so the rest of the gateway (objects, listings, appends) works unchanged. Bucket
//! operations go to the backend's own (ListBuckets, CreateBucket, DeleteBucket, HeadBucket)
//! through [`Account`].
//!
//! Appendable objects stage their tails (see `docs/design.md`) in one backend bucket of the
//! gateway's own, the state bucket (`rivulet-gateway-state` unless told otherwise): it is
//! created at start if missing and is not one of the gateway's buckets (clients never see it).

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use aws_sdk_s3::error::ProvideErrorMetadata;
use bytes::Bytes;
use fs_core::store::s3::{S3Config, S3Store};
use fs_core::store::{
    BodyStream, CompletedPart, DynStore, GetResult, GetStream, ListPage, ListRequest, ObjectMeta,
    ObjectStore, PartsPage, PutCondition, PutOptions, PutResult, StoreError, StoreErrorKind,
    UploadsMarker, UploadsPage,
};
use s3s::{S3ErrorCode, S3Result};

use crate::buckets::{BucketInfo, no_such_bucket};
use crate::errors::s3_err;

/// The default name of the backend bucket that holds the gateway's own state (appendable
/// objects' tails) in one-to-one mode.
pub const DEFAULT_STATE_BUCKET: &str = "rivulet-gateway-state";

/// Parses `--store` as a one-to-one URL: `s3://` or `s3://?endpoint=...` (no bucket). `None`
/// when the URL names a bucket (or is not `s3://`): the folder mode applies.
pub fn parse_account_url(url: &str) -> Option<Result<S3Config, StoreError>> {
    let rest = url.strip_prefix("s3://")?;
    let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
    if !location.trim_matches('/').is_empty() {
        return None;
    }
    // fs-core parses the query of a bucket URL (endpoint, region, path_style, ...): parse it
    // with a stand-in bucket, whose name is then dropped.
    let stand_in = format!("s3://stand-in-bucket?{query}");
    Some(
        fs_core::store::StoreUrl::parse(&stand_in).and_then(|parsed| match parsed {
            fs_core::store::StoreUrl::S3(mut config) => {
                config.bucket.clear();
                Ok(config)
            }
            _ => Err(StoreError::new(
                StoreErrorKind::InvalidArgument,
                "parse store URL",
                url,
                "not an s3:// URL",
            )),
        }),
    )
}

/// The backend account: its buckets, and a store per bucket.
#[derive(Debug)]
pub struct Account {
    base: S3Config,
    /// Bucket-level calls go through the state bucket's client (the client is per endpoint and
    /// credentials; the bucket is per request).
    client: aws_sdk_s3::Client,
    region: String,
    state_bucket: String,
    /// Whether the bucket stores stream bodies: they share one endpoint, hence one answer.
    streams_bodies: bool,
    stores: Mutex<HashMap<String, DynStore>>,
}

impl Account {
    /// Connects to the backend (no request yet) and makes sure the state bucket exists.
    pub async fn open(base: S3Config, state_bucket: &str) -> Result<Arc<Account>, StoreError> {
        let state = S3Store::new(S3Config {
            bucket: state_bucket.to_string(),
            prefix: String::new(),
            ..base.clone()
        })
        .await?;
        let region = base
            .region
            .clone()
            .unwrap_or_else(|| crate::config::DEFAULT_REGION.to_string());
        let account = Account {
            client: state.client().clone(),
            streams_bodies: state.streams_bodies(),
            base,
            region,
            state_bucket: state_bucket.to_string(),
            stores: Mutex::new(HashMap::from([(
                state_bucket.to_string(),
                Arc::new(state) as DynStore,
            )])),
        };
        if !account
            .head_bucket(state_bucket)
            .await
            .map_err(|e| backend_error("head the state bucket", state_bucket, e))?
        {
            account
                .create_bucket(state_bucket)
                .await
                .map_err(|e| backend_error("create the state bucket", state_bucket, e))?;
        }
        Ok(Arc::new(account))
    }

    /// The bucket that holds the gateway's state, never shown to clients.
    pub fn state_bucket(&self) -> &str {
        &self.state_bucket
    }

    /// The store of one backend bucket, opened on first use.
    async fn store(&self, bucket: &str) -> Result<DynStore, StoreError> {
        if let Some(store) = self.lock().get(bucket) {
            return Ok(store.clone());
        }
        let store: DynStore = Arc::new(
            S3Store::new(S3Config {
                bucket: bucket.to_string(),
                prefix: String::new(),
                ..self.base.clone()
            })
            .await?,
        );
        Ok(self
            .lock()
            .entry(bucket.to_string())
            .or_insert(store)
            .clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, DynStore>> {
        // The map of opened stores holds no invariant a panicking holder could break.
        self.stores.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the backend has this bucket (HeadBucket).
    pub async fn head_bucket(&self, bucket: &str) -> S3Result<bool> {
        match self.client.head_bucket().bucket(bucket).send().await {
            Ok(_) => Ok(true),
            Err(e) => {
                let status = e.raw_response().map(|r| r.status().as_u16());
                if status == Some(404) || e.code() == Some("NoSuchBucket") {
                    Ok(false)
                } else {
                    Err(sdk_error("HeadBucket", bucket, status, e.code(), &e))
                }
            }
        }
    }

    /// The backend's buckets but the state bucket.
    pub async fn list_buckets(&self) -> S3Result<Vec<BucketInfo>> {
        let out = self.client.list_buckets().send().await.map_err(|e| {
            let status = e.raw_response().map(|r| r.status().as_u16());
            sdk_error("ListBuckets", "", status, e.code(), &e)
        })?;
        Ok(out
            .buckets()
            .iter()
            .filter_map(|b| {
                let name = b.name()?;
                (name != self.state_bucket).then(|| BucketInfo {
                    name: name.to_string(),
                    created: b
                        .creation_date()
                        .and_then(|d| SystemTime::try_from(*d).ok()),
                })
            })
            .collect())
    }

    /// Creates a backend bucket in the gateway's region.
    pub async fn create_bucket(&self, bucket: &str) -> S3Result<()> {
        let mut req = self.client.create_bucket().bucket(bucket);
        // S3 wants no location constraint for us-east-1, and one for every other region.
        if self.region != "us-east-1" {
            req = req.create_bucket_configuration(
                aws_sdk_s3::types::CreateBucketConfiguration::builder()
                    .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::from(
                        self.region.as_str(),
                    ))
                    .build(),
            );
        }
        req.send().await.map(|_| ()).map_err(|e| {
            let status = e.raw_response().map(|r| r.status().as_u16());
            sdk_error("CreateBucket", bucket, status, e.code(), &e)
        })
    }

    /// Deletes an empty backend bucket.
    pub async fn delete_bucket(&self, bucket: &str) -> S3Result<()> {
        self.client
            .delete_bucket()
            .bucket(bucket)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| {
                let status = e.raw_response().map(|r| r.status().as_u16());
                sdk_error("DeleteBucket", bucket, status, e.code(), &e)
            })?;
        self.lock().remove(bucket);
        Ok(())
    }
}

/// A backend error of a bucket-level call as the S3 error to answer: the backend's own code
/// where it is one clients know, else 503 for throttling and 5xx (clients retry), else 500.
fn sdk_error(
    op: &str,
    bucket: &str,
    status: Option<u16>,
    code: Option<&str>,
    err: &dyn std::fmt::Debug,
) -> s3s::S3Error {
    match code {
        Some("NoSuchBucket") => no_such_bucket(bucket),
        Some("BucketNotEmpty") => s3_err(
            S3ErrorCode::BucketNotEmpty,
            format!("The bucket {bucket} is not empty"),
        ),
        Some("BucketAlreadyOwnedByYou") => s3_err(
            S3ErrorCode::BucketAlreadyOwnedByYou,
            format!("The bucket {bucket} already exists and is yours"),
        ),
        Some("BucketAlreadyExists") => s3_err(
            S3ErrorCode::BucketAlreadyExists,
            format!("The bucket name {bucket} is taken"),
        ),
        Some("AccessDenied") => s3_err(
            S3ErrorCode::AccessDenied,
            format!("the backend refused {op} on {bucket}"),
        ),
        _ => {
            let transient = matches!(status, Some(429 | 500..=599)) || status.is_none();
            tracing::warn!(op, bucket, ?status, ?code, error = ?err, "backend bucket call failed");
            s3_err(
                if transient {
                    S3ErrorCode::ServiceUnavailable
                } else {
                    S3ErrorCode::InternalError
                },
                format!(
                    "the backend failed {op} on {bucket}: {}",
                    code.unwrap_or("no error code")
                ),
            )
        }
    }
}

fn backend_error(op: &'static str, bucket: &str, err: s3s::S3Error) -> StoreError {
    let kind = match err.code() {
        S3ErrorCode::ServiceUnavailable => StoreErrorKind::Transient,
        S3ErrorCode::AccessDenied => StoreErrorKind::AccessDenied,
        _ => StoreErrorKind::Other,
    };
    StoreError::new(
        kind,
        op,
        bucket,
        err.message().unwrap_or("the backend refused").to_string(),
    )
}

/// The store over every bucket of the account: key `b/k` is key `k` of backend bucket `b`.
#[derive(Debug, Clone)]
pub struct AccountStore {
    account: Arc<Account>,
}

impl AccountStore {
    pub fn new(account: Arc<Account>) -> Self {
        Self { account }
    }

    /// The bucket's store and the key inside it.
    async fn route<'k>(
        &self,
        op: &'static str,
        key: &'k str,
    ) -> Result<(DynStore, &'k str), StoreError> {
        let Some((bucket, rest)) = key.split_once('/') else {
            return Err(StoreError::new(
                StoreErrorKind::NotSupported,
                op,
                key,
                "in one-to-one mode every key starts with its bucket",
            ));
        };
        if bucket.is_empty() {
            return Err(StoreError::new(
                StoreErrorKind::InvalidKey,
                op,
                key,
                "the key names no bucket",
            ));
        }
        Ok((self.account.store(bucket).await?, rest))
    }
}

/// Puts the bucket back in front of a key of a backend bucket.
fn with_bucket(bucket: &str, key: &str) -> String {
    format!("{bucket}/{key}")
}

fn bucket_of(key: &str) -> &str {
    key.split_once('/').map_or(key, |(b, _)| b)
}

#[async_trait]
impl ObjectStore for AccountStore {
    fn describe(&self) -> String {
        match &self.account.base.endpoint {
            Some(endpoint) => format!("s3://?endpoint={endpoint}"),
            None => "s3://".to_string(),
        }
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<GetResult, StoreError> {
        let (store, inner) = self.route("get", key).await?;
        let mut got = store.get(inner, range).await?;
        got.meta.key = key.to_string();
        Ok(got)
    }

    fn streams_bodies(&self) -> bool {
        self.account.streams_bodies
    }

    async fn get_stream(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<GetStream, StoreError> {
        let (store, inner) = self.route("get", key).await?;
        let mut got = store.get_stream(inner, range).await?;
        got.meta.key = key.to_string();
        Ok(got)
    }

    async fn put_stream(
        &self,
        key: &str,
        size: u64,
        body: BodyStream,
        opts: PutOptions,
    ) -> Result<PutResult, StoreError> {
        let (store, inner) = self.route("put", key).await?;
        store.put_stream(inner, size, body, opts).await
    }

    async fn upload_part_stream(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        size: u64,
        body: BodyStream,
    ) -> Result<String, StoreError> {
        let (store, inner) = self.route("upload part", key).await?;
        store
            .upload_part_stream(inner, upload_id, part_number, size, body)
            .await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        let (store, inner) = self.route("head", key).await?;
        let mut meta = store.head(inner).await?;
        meta.key = key.to_string();
        Ok(meta)
    }

    async fn put(&self, key: &str, body: Bytes, opts: PutOptions) -> Result<PutResult, StoreError> {
        let (store, inner) = self.route("put", key).await?;
        store.put(inner, body, opts).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let (store, inner) = self.route("delete", key).await?;
        store.delete(inner).await
    }

    async fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        // Grouped by bucket: one DeleteObjects per backend bucket.
        let mut by_bucket: HashMap<&str, Vec<String>> = HashMap::new();
        for key in keys {
            let (bucket, inner) = key.split_once('/').unwrap_or((key.as_str(), ""));
            by_bucket.entry(bucket).or_default().push(inner.to_string());
        }
        for (bucket, inner_keys) in by_bucket {
            let store = self.account.store(bucket).await?;
            store.delete_many(&inner_keys).await?;
        }
        Ok(())
    }

    async fn list(&self, req: ListRequest) -> Result<ListPage, StoreError> {
        let (store, inner) = self.route("list", &req.prefix).await?;
        let bucket = bucket_of(&req.prefix).to_string();
        let mut page = store
            .list(ListRequest {
                prefix: inner.to_string(),
                ..req
            })
            .await?;
        for o in &mut page.objects {
            o.key = with_bucket(&bucket, &o.key);
        }
        for p in &mut page.common_prefixes {
            *p = with_bucket(&bucket, p);
        }
        Ok(page)
    }

    async fn create_multipart(&self, key: &str, opts: PutOptions) -> Result<String, StoreError> {
        let (store, inner) = self.route("create multipart upload", key).await?;
        store.create_multipart(inner, opts).await
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Bytes,
    ) -> Result<String, StoreError> {
        let (store, inner) = self.route("upload part", key).await?;
        store.upload_part(inner, upload_id, part_number, body).await
    }

    async fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        source_key: &str,
        range: Range<u64>,
        source_if_match: Option<&str>,
    ) -> Result<String, StoreError> {
        let (store, inner) = self.route("upload part copy", key).await?;
        let Some(source) = source_key
            .strip_prefix(bucket_of(key))
            .and_then(|s| s.strip_prefix('/'))
        else {
            return Err(StoreError::new(
                StoreErrorKind::NotSupported,
                "upload part copy",
                key,
                "in one-to-one mode UploadPartCopy copies within one bucket",
            ));
        };
        store
            .upload_part_copy(
                inner,
                upload_id,
                part_number,
                source,
                range,
                source_if_match,
            )
            .await
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
        condition: PutCondition,
    ) -> Result<PutResult, StoreError> {
        let (store, inner) = self.route("complete multipart upload", key).await?;
        store
            .complete_multipart(inner, upload_id, parts, condition)
            .await
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        let (store, inner) = self.route("abort multipart upload", key).await?;
        store.abort_multipart(inner, upload_id).await
    }

    async fn list_parts(
        &self,
        key: &str,
        upload_id: &str,
        marker: Option<u32>,
    ) -> Result<PartsPage, StoreError> {
        let (store, inner) = self.route("list parts", key).await?;
        store.list_parts(inner, upload_id, marker).await
    }

    async fn list_multipart_uploads(
        &self,
        prefix: &str,
        marker: Option<UploadsMarker>,
    ) -> Result<UploadsPage, StoreError> {
        let (store, inner) = self.route("list multipart uploads", prefix).await?;
        let bucket = bucket_of(prefix).to_string();
        let strip = |m: UploadsMarker| UploadsMarker {
            key: m
                .key
                .strip_prefix(&format!("{bucket}/"))
                .unwrap_or(&m.key)
                .to_string(),
            upload_id: m.upload_id,
        };
        let mut page = store
            .list_multipart_uploads(inner, marker.map(strip))
            .await?;
        for u in &mut page.uploads {
            u.key = with_bucket(&bucket, &u.key);
        }
        if let Some(next) = &mut page.next {
            next.key = with_bucket(&bucket, &next.key);
        }
        Ok(page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bucketless_s3_urls_are_one_to_one() {
        for url in [
            "s3://",
            "s3:///",
            "s3://?endpoint=http://127.0.0.1:9000&region=eu-west-1",
        ] {
            let config = parse_account_url(url).expect(url).expect(url);
            assert!(config.bucket.is_empty(), "{url}");
        }
        let config = parse_account_url("s3://?endpoint=http://127.0.0.1:9000")
            .unwrap()
            .unwrap();
        assert_eq!(config.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert!(
            config.path_style,
            "an endpoint means path style, as for bucket URLs"
        );
        for url in [
            "s3://bkt",
            "s3://bkt/prefix?endpoint=http://x",
            "/srv/store",
            "memory://m",
        ] {
            assert!(parse_account_url(url).is_none(), "{url}");
        }
        assert!(parse_account_url("s3://?bogus=1").unwrap().is_err());
    }
}

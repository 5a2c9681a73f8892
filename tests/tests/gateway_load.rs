//! A load test of the gateway: 32 concurrent aws-sdk-s3 clients doing mixed PUTs, GETs,
//! listings, multipart uploads and appends against a local store for a bounded time. Each client
//! keeps a model of its acknowledged writes; afterwards every one is read back byte for byte
//! (through the gateway, then from the store once the gateway has sealed its open objects).
//! Appends to a few shared keys race: at most one writer may win each offset, and the shared
//! objects must be exactly their winners' bodies in offset order.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use fs_core::store::DynStore;
use fs_core::store::local::LocalStore;
use harness::gateway::{InProcessGateway, test_config};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const CLIENTS: usize = 32;
/// How long the clients run (the test's bound; the checks after it take a few seconds more).
const RUN_FOR: Duration = Duration::from_secs(15);
const SHARED_KEYS: usize = 3;
const BUCKET: &str = "load";

/// Acknowledged appends to the shared keys: key -> offset -> body.
type SharedModel = Arc<Mutex<HashMap<String, BTreeMap<u64, Vec<u8>>>>>;

/// What one client did.
#[derive(Default)]
struct Model {
    /// Key -> content of every object this client wrote and did not delete.
    objects: BTreeMap<String, Vec<u8>>,
    ops: HashMap<&'static str, u64>,
    lost_races: u64,
}

fn body(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    v
}

async fn read(c: &aws_sdk_s3::Client, key: &str) -> Vec<u8> {
    c.get_object()
        .bucket(BUCKET)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("get {key}: {e:?}"))
        .body
        .collect()
        .await
        .unwrap()
        .to_vec()
}

async fn append(c: &aws_sdk_s3::Client, key: &str, offset: u64, data: &[u8]) -> Result<(), String> {
    c.put_object()
        .bucket(BUCKET)
        .key(key)
        .write_offset_bytes(offset as i64)
        .body(ByteStream::from(data.to_vec()))
        .send()
        .await
        .map(|_| ())
        .map_err(|e| e.code().unwrap_or("no code").to_string())
}

async fn client_loop(
    id: usize,
    c: aws_sdk_s3::Client,
    shared: SharedModel,
    deadline: Instant,
) -> Model {
    let mut rng = StdRng::seed_from_u64(0x5eed + id as u64);
    let mut m = Model::default();
    let mut n = 0u64;
    while Instant::now() < deadline {
        n += 1;
        let roll = rng.random_range(0..100);
        let op = match roll {
            0..30 => "put",
            30..50 => "get",
            50..58 => "list",
            58..61 => "multipart",
            61..80 => "append",
            80..95 => "shared-append",
            _ => "delete",
        };
        *m.ops.entry(op).or_default() += 1;
        match op {
            "put" => {
                let key = format!("c{id}/obj{}", rng.random_range(0..20));
                let len = if rng.random_bool(0.05) {
                    rng.random_range(0..1024 * 1024)
                } else {
                    rng.random_range(0..16 * 1024)
                };
                let data = body(&mut rng, len);
                c.put_object()
                    .bucket(BUCKET)
                    .key(&key)
                    .body(ByteStream::from(data.clone()))
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("client {id}: put {key}: {e:?}"));
                m.objects.insert(key, data);
            }
            "get" => {
                let Some(key) = pick(&mut rng, &m.objects) else {
                    continue;
                };
                let got = read(&c, &key).await;
                assert!(
                    got == m.objects[&key],
                    "client {id}: {key} reads back as written"
                );
            }
            "list" => {
                let mut listed = BTreeMap::new();
                let mut token = None;
                loop {
                    let page = c
                        .list_objects_v2()
                        .bucket(BUCKET)
                        .prefix(format!("c{id}/"))
                        .max_keys(25)
                        .set_continuation_token(token.take())
                        .send()
                        .await
                        .unwrap_or_else(|e| panic!("client {id}: list: {e:?}"));
                    for o in page.contents() {
                        listed.insert(o.key().unwrap().to_string(), o.size().unwrap() as usize);
                    }
                    match page.next_continuation_token() {
                        Some(t) => token = Some(t.to_string()),
                        None => break,
                    }
                }
                let want: BTreeMap<String, usize> = m
                    .objects
                    .iter()
                    .map(|(k, v)| (k.clone(), v.len()))
                    .collect();
                assert_eq!(
                    listed, want,
                    "client {id}: a listing shows its objects and sizes"
                );
            }
            "multipart" => {
                let key = format!("c{id}/mpu{}", rng.random_range(0..3));
                let parts = [body(&mut rng, 5 * 1024 * 1024), body(&mut rng, 1000)];
                let id_ = c
                    .create_multipart_upload()
                    .bucket(BUCKET)
                    .key(&key)
                    .send()
                    .await
                    .unwrap();
                let upload = id_.upload_id().unwrap();
                let mut done = Vec::new();
                for (i, part) in parts.iter().enumerate() {
                    let number = i as i32 + 1;
                    let etag = c
                        .upload_part()
                        .bucket(BUCKET)
                        .key(&key)
                        .upload_id(upload)
                        .part_number(number)
                        .body(ByteStream::from(part.clone()))
                        .send()
                        .await
                        .unwrap_or_else(|e| panic!("client {id}: part of {key}: {e:?}"));
                    done.push(
                        CompletedPart::builder()
                            .part_number(number)
                            .e_tag(etag.e_tag().unwrap())
                            .build(),
                    );
                }
                c.complete_multipart_upload()
                    .bucket(BUCKET)
                    .key(&key)
                    .upload_id(upload)
                    .multipart_upload(
                        CompletedMultipartUpload::builder()
                            .set_parts(Some(done))
                            .build(),
                    )
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("client {id}: complete {key}: {e:?}"));
                m.objects.insert(key, parts.concat());
            }
            "append" => {
                let key = format!("c{id}/log{}", rng.random_range(0..2));
                let len = rng.random_range(1..8 * 1024);
                let data = body(&mut rng, len);
                let offset = m.objects.get(&key).map_or(0, |v| v.len() as u64);
                append(&c, &key, offset, &data)
                    .await
                    .unwrap_or_else(|e| panic!("client {id}: append to {key} at {offset}: {e}"));
                m.objects.entry(key).or_default().extend_from_slice(&data);
            }
            "shared-append" => {
                let key = format!("shared{}", rng.random_range(0..SHARED_KEYS));
                let offset = match c.head_object().bucket(BUCKET).key(&key).send().await {
                    Ok(head) => head.content_length().unwrap() as u64,
                    Err(e)
                        if e.code() == Some("NotFound")
                            || e.raw_response().map(|r| r.status().as_u16()) == Some(404) =>
                    {
                        0
                    }
                    Err(e) => panic!("client {id}: head {key}: {e:?}"),
                };
                // Tag each body with its writer and sequence: the winners are then traceable.
                let mut data = format!("[{id}:{n}]").into_bytes();
                let len = rng.random_range(1..2048);
                data.extend(body(&mut rng, len));
                match append(&c, &key, offset, &data).await {
                    Ok(()) => {
                        let mut shared = shared.lock().unwrap();
                        let winners = shared.entry(key.clone()).or_default();
                        assert!(
                            winners.insert(offset, data).is_none(),
                            "two acknowledged appends to {key} at offset {offset}"
                        );
                    }
                    Err(code) if code == "InvalidWriteOffset" => m.lost_races += 1,
                    Err(code) => panic!("client {id}: shared append to {key}: {code}"),
                }
            }
            _ => {
                let Some(key) = pick(&mut rng, &m.objects) else {
                    continue;
                };
                c.delete_object()
                    .bucket(BUCKET)
                    .key(&key)
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("client {id}: delete {key}: {e:?}"));
                m.objects.remove(&key);
            }
        }
    }
    m
}

fn pick(rng: &mut StdRng, objects: &BTreeMap<String, Vec<u8>>) -> Option<String> {
    if objects.is_empty() {
        return None;
    }
    objects
        .keys()
        .nth(rng.random_range(0..objects.len()))
        .cloned()
}

/// The shared key's expected content: its winners, which must tile the object from offset 0.
fn shared_content(key: &str, winners: &BTreeMap<u64, Vec<u8>>) -> Vec<u8> {
    let mut content = Vec::new();
    for (offset, data) in winners {
        assert_eq!(
            *offset,
            content.len() as u64,
            "{key}: winners leave no gap or overlap"
        );
        content.extend_from_slice(data);
    }
    content
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_clients_lose_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let store: DynStore = Arc::new(LocalStore::open(dir.path().join("store")).unwrap());
    thirty_two_clients(store, RUN_FOR).await;
}

/// The same over moto (S3's rules for uploads, copies and conditions), for less time: moto
/// serves far fewer requests a second than the local store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_clients_over_moto_lose_no_acknowledged_write() {
    let moto = harness::TestServer::moto().await;
    thirty_two_clients(moto.store().await, Duration::from_secs(8)).await;
}

async fn thirty_two_clients(store: DynStore, run_for: Duration) {
    let mut config = test_config();
    config.seal_after = Duration::from_millis(500);
    let gw = InProcessGateway::start(store.clone(), config).await;
    gw.client()
        .create_bucket()
        .bucket(BUCKET)
        .send()
        .await
        .unwrap();

    let shared: SharedModel = Arc::default();
    let deadline = Instant::now() + run_for;
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|id| {
            // A client (and its connection pool) of its own.
            let c = gw.client();
            tokio::spawn(client_loop(id, c, shared.clone(), deadline))
        })
        .collect();
    let mut models = Vec::new();
    for task in tasks {
        models.push(task.await.expect("a client panicked"));
    }
    let mut totals: BTreeMap<&str, u64> = BTreeMap::new();
    for m in &models {
        for (op, n) in &m.ops {
            *totals.entry(op).or_default() += n;
        }
    }
    let lost: u64 = models.iter().map(|m| m.lost_races).sum();
    eprintln!("operations: {totals:?}; shared appends that lost a race: {lost}");
    for op in [
        "put",
        "get",
        "list",
        "multipart",
        "append",
        "shared-append",
        "delete",
    ] {
        assert!(totals.get(op).copied().unwrap_or(0) > 0, "no {op} ran");
    }

    // Through the gateway: every acknowledged write, byte for byte.
    let c = gw.client();
    for m in &models {
        for (key, want) in &m.objects {
            assert!(read(&c, key).await == *want, "{key} through the gateway");
        }
    }
    let shared = shared.lock().unwrap().clone();
    let mut expected_shared = BTreeMap::new();
    for (key, winners) in &shared {
        let want = shared_content(key, winners);
        assert!(read(&c, key).await == want, "{key} through the gateway");
        expected_shared.insert(key.clone(), want);
    }

    // From the store, once the gateway has sealed every open object at shutdown.
    gw.stop().await;
    let all = models
        .iter()
        .flat_map(|m| m.objects.iter())
        .chain(expected_shared.iter());
    for (key, want) in all {
        let got = store.get(&format!("{BUCKET}/{key}"), None).await.unwrap();
        assert!(got.body[..] == want[..], "{key} in the store");
    }
}

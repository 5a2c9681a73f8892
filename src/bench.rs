//! `rivulet bench`: the recoverable writer against a plain multipart upload of the same bytes
//! to the same store, in the same run, each way of writing taking each position in turn.
//!
//! Reported (medians over the runs): throughput of both and their ratio, persist latency
//! p50/p99, recover time per file size, and store requests per GiB split into the write path
//! (create, parts, persists, complete) and the cleanup at commit (deleting the tails).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use fs_core::store::fault::{FaultConfig, FaultStore, Op};
use fs_core::store::{CompletedPart, DynStore, PutCondition, PutOptions};
use fs_core::{Index, RecoverableWriter, WriterConfig};
use futures::StreamExt;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub size: u64,
    pub persist_every: u64,
    pub runs: usize,
    pub part_size: u64,
    /// Bytes per `write_bytes` call into the writer.
    pub write_size: u64,
    pub max_in_flight: usize,
    pub recover_sizes: Vec<u64>,
}

/// Picks one duration (seconds) out of a run's measurements.
type Secs = fn(&RunResult) -> f64;

/// One run's measurements.
#[derive(Debug, Clone, Default)]
struct RunResult {
    baseline_secs: f64,
    /// The writer without a part cache (as the CLI and the engine's sinks run it), blocking
    /// persists.
    writer_secs: f64,
    /// The writer with `cache_parts = true` (a local copy of every part, for reads of open
    /// files), blocking persists.
    writer_cached_secs: f64,
    /// The writer without a part cache, pipelined persists.
    writer_pipelined_secs: f64,
    pipelined_latencies: Vec<Duration>,
    persist_latencies: Vec<Duration>,
    write_path_requests: u64,
    cleanup_requests: u64,
    parts: u64,
    persists: u64,
    recover: Vec<(u64, Duration)>,
}

const MIB: f64 = 1024.0 * 1024.0;

/// A buffer of pseudo-random bytes that the benchmark cycles through (incompressible enough,
/// and generated once so that generation is not measured).
fn payload() -> Bytes {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut buf = Vec::with_capacity(64 << 20);
    while buf.len() < 64 << 20 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        buf.extend_from_slice(&state.to_le_bytes());
    }
    Bytes::from(buf)
}

fn slice_at(payload: &Bytes, offset: u64, len: usize) -> Bytes {
    let start = (offset % payload.len() as u64) as usize;
    if start + len <= payload.len() {
        return payload.slice(start..start + len);
    }
    // Past the payload's end (or longer than it: a part or write size over 64 MiB): copied,
    // cycling through the payload.
    let mut v = Vec::with_capacity(len);
    let mut at = start;
    while v.len() < len {
        let take = (payload.len() - at).min(len - v.len());
        v.extend_from_slice(&payload[at..at + take]);
        at = 0;
    }
    Bytes::from(v)
}

/// A plain multipart upload: parts of `part_size`, `max_in_flight` at a time, then complete.
async fn baseline(
    store: &DynStore,
    key: &str,
    opts: &BenchOptions,
    payload: &Bytes,
) -> Result<f64> {
    let started = Instant::now();
    let upload = store.create_multipart(key, PutOptions::default()).await?;
    let count = opts.size.div_ceil(opts.part_size);
    let parts: Vec<Result<CompletedPart, fs_core::StoreError>> = futures::stream::iter(0..count)
        .map(|i| {
            let offset = i * opts.part_size;
            let len = opts.part_size.min(opts.size - offset) as usize;
            let body = slice_at(payload, offset, len);
            let (store, upload) = (store.clone(), upload.clone());
            async move {
                let number = i as u32 + 1;
                let etag = store.upload_part(key, &upload, number, body).await?;
                Ok(CompletedPart { number, etag })
            }
        })
        .buffered(opts.max_in_flight)
        .collect()
        .await;
    let parts = parts.into_iter().collect::<Result<Vec<_>, _>>()?;
    store
        .complete_multipart(key, &upload, &parts, PutCondition::None)
        .await?;
    Ok(started.elapsed().as_secs_f64())
}

fn write_path_calls(counter: &FaultStore) -> u64 {
    [
        Op::CreateMultipart,
        Op::UploadPart,
        Op::UploadPartCopy,
        Op::Put,
        Op::CompleteMultipart,
    ]
    .into_iter()
    .map(|op| counter.calls(op))
    .sum()
}

fn cleanup_calls(counter: &FaultStore) -> u64 {
    [Op::List, Op::Delete, Op::DeleteMany]
        .into_iter()
        .map(|op| counter.calls(op))
        .sum()
}

fn writer_service(
    store: DynStore,
    index: Index,
    opts: &BenchOptions,
    dir: &std::path::Path,
    cache_parts: bool,
) -> Result<RecoverableWriter> {
    let config = WriterConfig {
        part_size: opts.part_size,
        max_in_flight: opts.max_in_flight,
        cache_parts,
        cache_dir: dir.join("cache"),
        ..Default::default()
    };
    Ok(RecoverableWriter::new(store, index, config)?)
}

/// How the benchmark persists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Persists {
    /// `persist()`: the caller waits until the bytes are durable.
    Blocking,
    /// `begin_persist()`, awaited in the background: writing goes on meanwhile, and each
    /// persist is awaited before the file is closed.
    Pipelined,
}

/// How a file is written: its size, where it is persisted, how much each write hands over.
#[derive(Debug, Clone, Copy)]
struct Shape {
    size: u64,
    persist_every: u64,
    write_size: u64,
}

async fn write_file(
    writer: &RecoverableWriter,
    key: &str,
    shape: Shape,
    mode: Persists,
    payload: &Bytes,
    latencies: &mut Vec<Duration>,
) -> Result<fs_core::FileWriter> {
    let Shape {
        size,
        persist_every,
        write_size,
    } = shape;
    let mut file = writer.open(key).await?;
    let mut since_persist = 0u64;
    let mut pending = Vec::new();
    while file.len() < size {
        // No write crosses a persist point, so that persists land where they were asked.
        let len = write_size
            .min(persist_every - since_persist)
            .min(size - file.len()) as usize;
        file.write_bytes(slice_at(payload, file.len(), len)).await?;
        since_persist += len as u64;
        if since_persist >= persist_every {
            since_persist = 0;
            match mode {
                Persists::Blocking => {
                    let t = Instant::now();
                    file.persist().await?;
                    latencies.push(t.elapsed());
                }
                Persists::Pipelined => {
                    let persist = file.begin_persist()?;
                    pending.push(tokio::spawn(async move {
                        let began = Instant::now();
                        persist.wait().await.map(|_| began.elapsed())
                    }));
                }
            }
        }
    }
    for task in pending {
        latencies.push(task.await??);
    }
    Ok(file)
}

async fn one_run(
    store: &DynStore,
    opts: &BenchOptions,
    run: usize,
    payload: &Bytes,
) -> Result<RunResult> {
    let dir = tempfile::tempdir()?;
    let index = Index::open(dir.path().join("index"))?;
    let counter = Arc::new(FaultStore::new(store.clone(), FaultConfig::default()));
    // Only the first writer's store calls are counted: the other two share nothing with it.
    let writer = writer_service(counter.clone(), index.clone(), opts, dir.path(), false)?;
    let cached = writer_service(store.clone(), index.clone(), opts, dir.path(), true)?;
    let pipelined = writer_service(store.clone(), index, opts, dir.path(), false)?;
    let mut result = RunResult::default();
    let base_key = format!("rivulet-bench/run{run}/baseline.bin");
    let writer_key = format!("rivulet-bench/run{run}/writer.bin");
    let cached_key = format!("rivulet-bench/run{run}/writer-cached.bin");

    // Each way of writing takes each position in turn (runs 0-3: 0123, 1230, 2301, 3012), and
    // each file is deleted as soon as it is measured, so that every step meets the same store:
    // on tmpfs the step after three GiB-sized files were written ran at half speed, whatever
    // it was, which an order that only alternated charged to the first and last ways alone.
    let steps: [u8; 4] = std::array::from_fn(|i| ((i + run) % 4) as u8);
    let shape = Shape {
        size: opts.size,
        persist_every: opts.persist_every,
        write_size: opts.write_size,
    };
    let pipelined_key = format!("rivulet-bench/run{run}/writer-pipelined.bin");
    for step in steps {
        let key = match step {
            0 => {
                result.baseline_secs = baseline(store, &base_key, opts, payload).await?;
                &base_key
            }
            1 => {
                let started = Instant::now();
                let mut file = write_file(
                    &writer,
                    &writer_key,
                    shape,
                    Persists::Blocking,
                    payload,
                    &mut result.persist_latencies,
                )
                .await?;
                let committer = file.close_for_commit().await?;
                let before_cleanup = cleanup_calls(&counter);
                committer.commit().await?;
                result.writer_secs = started.elapsed().as_secs_f64();
                result.cleanup_requests = cleanup_calls(&counter) - before_cleanup;
                result.write_path_requests = write_path_calls(&counter);
                result.parts = counter.calls(Op::UploadPart);
                result.persists = counter.calls(Op::Put);
                &writer_key
            }
            2 => {
                let started = Instant::now();
                let mut ignored = Vec::new();
                let mut file = write_file(
                    &cached,
                    &cached_key,
                    shape,
                    Persists::Blocking,
                    payload,
                    &mut ignored,
                )
                .await?;
                file.close_for_commit().await?.commit().await?;
                result.writer_cached_secs = started.elapsed().as_secs_f64();
                &cached_key
            }
            _ => {
                let started = Instant::now();
                let mut file = write_file(
                    &pipelined,
                    &pipelined_key,
                    shape,
                    Persists::Pipelined,
                    payload,
                    &mut result.pipelined_latencies,
                )
                .await?;
                file.close_for_commit().await?.commit().await?;
                result.writer_pipelined_secs = started.elapsed().as_secs_f64();
                &pipelined_key
            }
        };
        store.delete(key).await?;
    }

    for &size in &opts.recover_sizes {
        let key = format!("rivulet-bench/run{run}/recover-{size}.bin");
        let mut latencies = Vec::new();
        let mut file = write_file(
            &writer,
            &key,
            Shape {
                size,
                persist_every: u64::MAX,
                write_size: opts.write_size,
            },
            Persists::Blocking,
            payload,
            &mut latencies,
        )
        .await?;
        let token = file.persist().await?;
        drop(file);
        // Three recovers, the median kept: the first may pay for a new connection.
        let mut times = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            let recovered = writer.recover(&token).await?;
            times.push(t.elapsed());
            drop(recovered);
        }
        times.sort();
        result.recover.push((size, times[1]));
        writer.abort(&token).await?;
    }
    Ok(result)
}

/// The median; for an even count, the mean of the two middle values.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[mid],
        _ => (v[mid - 1] + v[mid]) / 2.0,
    }
}

fn percentile(v: &[Duration], p: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn human(bytes: u64) -> String {
    if bytes >= 1 << 30 && bytes.is_multiple_of(1 << 30) {
        format!("{} GiB", bytes >> 30)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

/// Runs the benchmark and returns the report as Markdown.
pub async fn run(store: DynStore, opts: BenchOptions) -> Result<String> {
    anyhow::ensure!(opts.runs > 0, "--runs must be at least 1");
    anyhow::ensure!(opts.size > 0, "--size must be above 0");
    anyhow::ensure!(opts.persist_every > 0, "--persist-every must be above 0");
    anyhow::ensure!(opts.write_size > 0, "--write-size must be above 0");
    let payload = payload();
    let mut runs = Vec::new();
    for run in 0..opts.runs {
        eprintln!(
            "bench: run {}/{} on {}",
            run + 1,
            opts.runs,
            store.describe()
        );
        runs.push(
            one_run(&store, &opts, run, &payload)
                .await
                .with_context(|| format!("bench run {}", run + 1))?,
        );
    }
    let mib = opts.size as f64 / MIB;
    let tput = |secs: fn(&RunResult) -> f64| median(runs.iter().map(|r| mib / secs(r)).collect());
    let ratios = |secs: fn(&RunResult) -> f64| -> Vec<f64> {
        runs.iter().map(|r| r.baseline_secs / secs(r)).collect()
    };
    let latencies = |of: fn(&RunResult) -> &Vec<Duration>| -> Vec<Duration> {
        runs.iter().flat_map(|r| of(r).clone()).collect()
    };
    let blocking_latencies = latencies(|r| &r.persist_latencies);
    let pipelined_latencies = latencies(|r| &r.pipelined_latencies);
    let gib = opts.size as f64 / (1u64 << 30) as f64;
    let per_gib =
        |f: &dyn Fn(&RunResult) -> u64| median(runs.iter().map(|r| f(r) as f64 / gib).collect());
    let write_path = per_gib(&|r| r.write_path_requests);
    let target = per_gib(&|r| r.parts + r.persists + 2);
    let cleanup = per_gib(&|r| r.cleanup_requests);

    let mut out = String::new();
    out.push_str(&format!(
        "store: `{}` · {} per run, persist every {}, writes of {}, part size {}, {} in flight, {} runs (medians)\n\n",
        store.describe(),
        human(opts.size),
        human(opts.persist_every),
        human(opts.write_size),
        human(opts.part_size),
        opts.max_in_flight,
        opts.runs
    ));
    // The spread of the per-run ratios shows how far one run can be trusted on a noisy machine.
    out.push_str(
        "| measure | throughput | ratio to plain (target >= 0.95) | per-run ratios, lowest-highest |\n|---|---|---|---|\n",
    );
    let rows: [(&str, Secs); 4] = [
        ("plain multipart upload", |r| r.baseline_secs),
        (
            "writer, persist(), no part cache (as cp and sinks run)",
            |r| r.writer_secs,
        ),
        (
            "writer, persist(), part cache on (reads of open files)",
            |r| r.writer_cached_secs,
        ),
        ("writer, begin_persist() pipelined", |r| {
            r.writer_pipelined_secs
        }),
    ];
    for (name, secs) in rows {
        let per_run = ratios(secs);
        let lowest = per_run.iter().copied().fold(f64::INFINITY, f64::min);
        let highest = per_run.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        out.push_str(&format!(
            "| {name} | {:.0} MiB/s | {:.3} | {lowest:.2}-{highest:.2} |\n",
            tput(secs),
            median(per_run),
        ));
    }
    out.push_str("\n| measure | value |\n|---|---|\n");
    for (name, lat) in [
        ("persist()", &blocking_latencies),
        ("begin_persist() to durable", &pipelined_latencies),
    ] {
        out.push_str(&format!(
            "| {name} latency p50 / p99 ({} persists) | {:.1} ms / {:.1} ms |\n",
            lat.len(),
            percentile(lat, 0.5).as_secs_f64() * 1e3,
            percentile(lat, 0.99).as_secs_f64() * 1e3
        ));
    }
    for (i, &size) in opts.recover_sizes.iter().enumerate() {
        let t = median(
            runs.iter()
                .map(|r| r.recover[i].1.as_secs_f64() * 1e3)
                .collect(),
        );
        out.push_str(&format!(
            "| recover time, {} file | {t:.1} ms |\n",
            human(size)
        ));
    }
    out.push_str(&format!(
        "| requests per GiB, write path (target: parts + persists + 2 = {target:.0}) | {write_path:.0} |\n"
    ));
    out.push_str(&format!(
        "| requests per GiB, tail cleanup at commit | {cleanup:.0} |\n"
    ));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_cycle_through_the_payload_at_any_offset_and_length() {
        let payload = Bytes::from((0..100u8).collect::<Vec<_>>());
        let expected = |offset: u64, len: usize| -> Vec<u8> {
            (0..len as u64)
                .map(|i| ((offset + i) % 100) as u8)
                .collect()
        };
        for (offset, len) in [(0, 100), (10, 20), (90, 20), (95, 250), (1_234, 7), (0, 0)] {
            assert_eq!(
                slice_at(&payload, offset, len).as_ref(),
                expected(offset, len).as_slice(),
                "offset {offset}, length {len}"
            );
        }
        // Inside the payload: a slice of it, not a copy.
        assert_eq!(slice_at(&payload, 10, 20).as_ptr(), payload[10..].as_ptr());
    }
}

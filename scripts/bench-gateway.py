#!/usr/bin/env python3
"""The S3 gateway's benchmark: PUT and GET of 64 MiB and of 4 KiB objects through the gateway
and directly against the same backend in the same run, and appends of 64 KiB chunks through the
gateway.

    scripts/bench-gateway.py [--runs 3] [--large-clients 4] [--large-objects 16]
                             [--small-clients 16] [--seconds 5] [--append-clients 4]
                             [--part-size 8MiB] [--dir /dev/shm]

The backend is s3s-fs (~/.cargo/bin/s3s-fs, see scripts/install-test-deps.sh) on a free
loopback port, its data under --dir (tmpfs by default: the figures are of the gateway, not of a
shared disk). The gateway is the release build of `rivulet gateway` ($CARGO_TARGET_DIR, else
~/.cache/rivulet-target; build it with `cargo build --release --bin rivulet`), in one-to-one
mode (`--store s3://?endpoint=...`), so that its bucket is the backend's bucket and both paths
write the same kind of objects to the same store. Clients are boto3 (the test venv), one per
thread, path style, no request checksums (as the gateway's tests configure them).

Each run measures every workload directly and through the gateway back to back (the order
flips from one workload to the next and between runs); every figure is the median of --runs
runs, and each ratio is the median of the per-run ratios (gateway / direct). For the large
workloads it also reports the CPU seconds per GiB that the clients, s3s-fs and the gateway each
used: on shared cores, what the gateway costs is the CPU it adds. Results go to stdout as a markdown table and to $OUT (default
/tmp/rivulet-bench/gateway.jsonl) as JSON lines.
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import boto3
from botocore.config import Config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/rivulet-target"))
# RIVULET_BIN overrides the binary (e.g. a debug build, to try the script out).
BIN = os.environ.get("RIVULET_BIN", os.path.join(TARGET, "release", "rivulet"))
MIB = 1024 * 1024
ACCESS, SECRET = "bench-key", "bench-secret"
BUCKET = "bench"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not listen on port {port} within {timeout}s")


def s3s_fs_binary():
    found = shutil.which("s3s-fs") or os.path.expanduser("~/.cargo/bin/s3s-fs")
    if not os.path.exists(found):
        sys.exit("s3s-fs is missing: run scripts/install-test-deps.sh")
    return found


def client(endpoint, pool):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS,
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
        config=Config(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            max_pool_connections=pool,
            retries={"max_attempts": 1},
        ),
    )


def parallel(n, fn):
    """Runs fn(i) on n threads; returns (seconds, results)."""
    start = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(fn, range(n)))
    return time.perf_counter() - start, results


def large_put(clients, prefix, body, objects):
    per = objects // len(clients)

    def work(i):
        for j in range(per):
            clients[i].put_object(Bucket=BUCKET, Key=f"{prefix}/large/{i}-{j}", Body=body)
        return per * len(body)

    seconds, sizes = parallel(len(clients), work)
    return sum(sizes) / MIB / seconds


def large_get(clients, prefix, size, objects):
    per = objects // len(clients)

    def work(i):
        n = 0
        for j in range(per):
            stream = clients[i].get_object(Bucket=BUCKET, Key=f"{prefix}/large/{i}-{j}")["Body"]
            while True:
                chunk = stream.read(MIB)
                if not chunk:
                    break
                n += len(chunk)
        if n != per * size:
            raise SystemExit(f"read {n} bytes, expected {per * size}")
        return n

    seconds, sizes = parallel(len(clients), work)
    return sum(sizes) / MIB / seconds


def timed_loop(clients, seconds, op):
    """Runs op(client, thread, n) in a loop on every client for `seconds`; returns ops/s."""
    stop = time.perf_counter() + seconds

    def work(i):
        n = 0
        while time.perf_counter() < stop:
            op(clients[i], i, n)
            n += 1
        return n

    elapsed, counts = parallel(len(clients), work)
    return sum(counts) / elapsed, counts


def small_put(clients, prefix, seconds, body):
    rate, counts = timed_loop(
        clients,
        seconds,
        lambda c, i, n: c.put_object(Bucket=BUCKET, Key=f"{prefix}/small/{i}/{n}", Body=body),
    )
    return rate, counts


def small_get(clients, prefix, seconds, counts):
    def op(c, i, n):
        key = f"{prefix}/small/{i}/{n % max(1, counts[i])}"
        c.get_object(Bucket=BUCKET, Key=key)["Body"].read()

    return timed_loop(clients, seconds, op)[0]


def appends(clients, run, seconds, chunk):
    stop = time.perf_counter() + seconds

    def work(i):
        key = f"gateway/append/{run}-{i}"
        offset, n = 0, 0
        while time.perf_counter() < stop:
            clients[i].put_object(Bucket=BUCKET, Key=key, Body=chunk, WriteOffsetBytes=offset)
            offset += len(chunk)
            n += 1
        return n

    elapsed, counts = parallel(len(clients), work)
    total = sum(counts)
    return total / elapsed, total * len(chunk) / MIB / elapsed


def cpu_seconds(pid):
    """User + system CPU seconds used so far by process `pid` (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(pids, gib, fn):
    """Runs fn(); returns (its result, CPU seconds per GiB moved of each process in pids)."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    result = fn()
    return result, {name: (cpu_seconds(pid) - before[name]) / gib for name, pid in pids.items()}


def parse_size(text):
    units = {"kib": 1024, "mib": MIB, "gib": 1024 * MIB, "": 1}
    t = text.strip().lower()
    for unit in ("kib", "mib", "gib"):
        if t.endswith(unit):
            return int(float(t[: -len(unit)]) * units[unit])
    return int(t)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--large-clients", type=int, default=4)
    ap.add_argument("--large-objects", type=int, default=16, help="64 MiB objects per run and path")
    ap.add_argument("--small-clients", type=int, default=16)
    ap.add_argument("--append-clients", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=5.0, help="duration of each timed workload")
    ap.add_argument("--part-size", default="8MiB", help="the gateway's --part-size")
    ap.add_argument("--dir", default="/dev/shm")
    args = ap.parse_args()
    if not os.path.exists(BIN):
        sys.exit(f"{BIN} is missing: cargo build --release --bin rivulet")

    work = tempfile.mkdtemp(prefix="rivulet-bench-gw-", dir=args.dir)
    procs = []
    try:
        s3s_port = free_port()
        data_dir = os.path.join(work, "s3s")
        os.makedirs(data_dir)
        s3s = subprocess.Popen(
            [s3s_fs_binary(), "--host", "127.0.0.1", "--port", str(s3s_port),
             "--access-key", ACCESS, "--secret-key", SECRET, data_dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(s3s)
        wait_port(s3s_port, s3s, "s3s-fs")
        backend = f"http://127.0.0.1:{s3s_port}"
        client(backend, 4).create_bucket(Bucket=BUCKET)

        env = dict(os.environ,
                   AWS_ACCESS_KEY_ID=ACCESS, AWS_SECRET_ACCESS_KEY=SECRET, AWS_REGION="us-east-1",
                   AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null",
                   AWS_EC2_METADATA_DISABLED="true",
                   RIVULET_ACCESS_KEY_ID=ACCESS, RIVULET_SECRET_ACCESS_KEY=SECRET)
        gw_port = free_port()
        gateway = subprocess.Popen(
            [BIN, "gateway", "--listen", f"127.0.0.1:{gw_port}",
             "--store", f"s3://?endpoint={backend}&region=us-east-1&contiguous_parts=true",
             "--state-bucket", "gw-state", "--index", os.path.join(work, "index"),
             "--cache-dir", os.path.join(work, "cache"), "--part-size", args.part_size],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(gateway)
        wait_port(gw_port, gateway, "the gateway")
        endpoints = {"direct": backend, "gateway": f"http://127.0.0.1:{gw_port}"}

        large_body = os.urandom(64 * MIB)
        small_body = os.urandom(4096)
        chunk = os.urandom(64 * 1024)
        pool = max(args.large_clients, args.small_clients, args.append_clients)
        # CPU time of every process on the machine's cores, per GiB moved by a large workload:
        # on shared cores the gateway's cost is the CPU it adds, not only the time it takes.
        pids = {"clients": os.getpid(), "s3s-fs": s3s.pid, "gateway": gateway.pid}
        gib = args.large_objects * len(large_body) / (1024 * MIB)
        runs = []
        for run in range(args.runs):
            # Each workload runs on both paths back to back, so that a ratio compares two
            # measurements a few seconds apart (this machine's speed drifts over tens of
            # seconds); the order flips from one workload to the next and between runs.
            first = ["direct", "gateway"] if run % 2 == 0 else ["gateway", "direct"]
            orders = [first, first[::-1]] * 2
            result = {}
            lc = {p: [client(endpoints[p], pool) for _ in range(args.large_clients)] for p in first}
            sc = {p: [client(endpoints[p], pool) for _ in range(args.small_clients)] for p in first}
            counts = {}
            for path in orders[0]:
                result[f"{path}_large_put_mibs"], cpu = measured(
                    pids, gib, lambda: large_put(lc[path], path, large_body, args.large_objects))
                result.update({f"cpu_{path}_large_put_{name}": v for name, v in cpu.items()})
            for path in orders[1]:
                result[f"{path}_large_get_mibs"], cpu = measured(
                    pids, gib, lambda: large_get(lc[path], path, len(large_body), args.large_objects))
                result.update({f"cpu_{path}_large_get_{name}": v for name, v in cpu.items()})
            for path in orders[2]:
                result[f"{path}_small_put_ops"], counts[path] = small_put(sc[path], path, args.seconds, small_body)
            for path in orders[3]:
                result[f"{path}_small_get_ops"] = small_get(sc[path], path, args.seconds, counts[path])
            ac = [client(endpoints["gateway"], pool) for _ in range(args.append_clients)]
            result["append_per_s"], result["append_mibs"] = appends(ac, run, args.seconds, chunk)
            for w in ("large_put_mibs", "large_get_mibs", "small_put_ops", "small_get_ops"):
                result[f"ratio_{w}"] = result[f"gateway_{w}"] / result[f"direct_{w}"]
            print(f"run {run + 1}: " + ", ".join(f"{k}={v:.2f}" for k, v in sorted(result.items())
                                                  if not k.startswith("cpu_")),
                  file=sys.stderr, flush=True)
            runs.append(result)

        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        out = os.environ.get("OUT", "/tmp/rivulet-bench/gateway.jsonl")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out, "a") as f:
            f.write(json.dumps({"time": time.time(), "args": vars(args), "runs": runs, "median": med}) + "\n")
        print(f"\nmedians of {args.runs} runs; s3s-fs data on {args.dir}\n")
        print("| workload | clients | direct | gateway | ratio | target |")
        print("|---|---|---|---|---|---|")
        rows = [
            ("PUT 64 MiB", args.large_clients, "large_put_mibs", "MiB/s", 0.9),
            ("GET 64 MiB", args.large_clients, "large_get_mibs", "MiB/s", 0.9),
            ("PUT 4 KiB", args.small_clients, "small_put_ops", "ops/s", 0.8),
            ("GET 4 KiB", args.small_clients, "small_get_ops", "ops/s", 0.8),
        ]
        for name, n, key, unit, target in rows:
            ratio = med[f"ratio_{key}"]
            verdict = "met" if ratio >= target else "not met"
            print(f"| {name} | {n} | {med['direct_' + key]:.1f} {unit} | {med['gateway_' + key]:.1f} {unit} "
                  f"| {ratio:.2f} | >= {target} {verdict} |")
        print(f"| append 64 KiB (gateway) | {args.append_clients} | | {med['append_per_s']:.1f} appends/s, "
              f"{med['append_mibs']:.1f} MiB/s | | reported |")
        print("\nCPU seconds per GiB moved (medians; clients = the boto3 threads of this script)\n")
        print("| workload | path | clients | s3s-fs | gateway | all |")
        print("|---|---|---|---|---|---|")
        for name, w in (("PUT 64 MiB", "large_put"), ("GET 64 MiB", "large_get")):
            for path in ("direct", "gateway"):
                cells = [med[f"cpu_{path}_{w}_{p}"] for p in pids]
                total = statistics.median(sum(r[f"cpu_{path}_{w}_{p}"] for p in pids) for r in runs)
                print(f"| {name} | {path} | " + " | ".join(f"{c:.2f}" for c in cells) + f" | {total:.2f} |")
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(timeout=40)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The engine's benchmarks: Nexmark jobs on the embedded cluster, the exactly-once file sink
against a discarding sink in the same run, checkpoint durations, the time to recover from a
killed task manager, and (with --flink) Apache Flink 2.3 running the same job shapes on the
same machine in the same run (../shared/anchors/flink).

    scripts/bench-engine.py [--runs 3] [--events 20000000] [--flink] [--only nexmark,anchor,recovery]
                            [--dir /dev/shm]

Stores (Rivulet's local store, Flink's file system sink) live under --dir: tmpfs by default, so
that the figures are of the engines and not of a shared disk (this machine's disk writes about
170 MB/s with fsync; give --dir /tmp to measure on it).

Every figure is the median of --runs runs. rows/s per core is rows/s divided by the job's
parallelism (at most the machine's cores), as the Flink anchor computes it; cpu is the CPU
seconds the rivulet process used. Results go to stdout as a markdown table and to
$OUT (default /tmp/rivulet-bench/engine.jsonl) as JSON lines.
"""
import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/rivulet-target"))
BIN = os.path.join(TARGET, "release", "rivulet")
ANCHOR = os.path.normpath(os.path.join(ROOT, "..", "shared", "anchors", "flink"))
# Bids are 46 of every 50 Nexmark events: count this many events for `rows` bids.
BID_SHARE = 46 / 50


def source(rows, parallelism, extra=""):
    events = int(rows / BID_SHARE) + 50
    return f"""
[[source]]
id = "bids"
kind = "nexmark"
events = "bid"
count = {events}
parallelism = {parallelism}
{extra}
"""


def header(name, parallelism, interval):
    return f'name = "{name}"\nparallelism = {parallelism}\n[checkpoint]\ninterval = "{interval}"\n'


# The anchor's row: auction, bidder, price, channel, timestamp.
BID_LIKE = '[[operator]]\nid = "row"\nkind = "map"\nfields = ["auction", "bidder", "price", "channel", "date_time"]\n'


def file_sink(fmt, roll_on_checkpoint=False, bucket=None):
    roll = "roll_on_checkpoint = true\n" if roll_on_checkpoint else ""
    pattern = f'bucket = "{bucket}"\n' if bucket else ""
    return f'[[sink]]\nkind = "file"\npath = "out"\nformat = "{fmt}"\nbucket_time = "event"\n{pattern}{roll}'


# Nexmark q10's row and partitions: auction, bidder, price, dateTime, extra; dt and hm.
Q10_COLUMNS = '[[operator]]\nkind = "map"\nfields = ["auction", "bidder", "price", "date_time", "extra"]\n'
Q10_BUCKET = "dt=%Y-%m-%d/hm=%H:%M"


DISCARD = '[[sink]]\nkind = "discard"\n'

NEXMARK = {
    # q0: pass-through.
    "q0": lambda r, p: header("q0", p, "10s") + source(r, p) + DISCARD,
    # q1: currency conversion.
    "q1": lambda r, p: header("q1", p, "10s") + source(r, p)
    + '[[operator]]\nkind = "map"\nfields = ["auction", "bidder", "price_eur = price * 0.908", "date_time"]\n'
    + DISCARD,
    # q2: selection.
    "q2": lambda r, p: header("q2", p, "10s") + source(r, p)
    + '[[operator]]\nkind = "filter"\nwhere = "auction % 123 = 0"\n'
    + '[[operator]]\nkind = "map"\nfields = ["auction", "price"]\n' + DISCARD,
    # q5-style: bids per auction in a sliding window (10 s every 2 s), the heavy part of
    # Nexmark's q5 (hot items); its last step, the auction with the most bids per window, is
    # left out.
    "q5": lambda r, p: header("q5", p, "10s") + source(r, p)
    + '[[operator]]\nkind = "window"\nkey_by = ["auction"]\nwindow = "sliding"\nsize = "10s"\nslide = "2s"\naggregates = ["bids = count()"]\n'
    + DISCARD,
    # q10: every bid logged to files, exactly-once, checkpoints every 10 s, with Nexmark's
    # columns and its day/minute partitions (jobs/nexmark-q10.toml)...
    "q10": lambda r, p: header("q10", p, "10s") + source(r, p) + Q10_COLUMNS
    + file_sink("csv", bucket=Q10_BUCKET),
    # ... and the same job to a discarding sink: what the exactly-once sink costs.
    "q10-discard": lambda r, p: header("q10-discard", p, "10s") + source(r, p) + Q10_COLUMNS + DISCARD,
    # The heavier variant: every column of every bid (~127-byte lines: Nexmark's `url`), hourly.
    "q10-all-columns": lambda r, p: header("q10-all-columns", p, "10s") + source(r, p) + file_sink("csv"),
    "q10-all-columns-discard": lambda r, p: header("q10-all-columns-discard", p, "10s") + source(r, p)
    + DISCARD,
}

# The Flink anchor's job shapes: bid-like rows, checkpoints every 2 s, exactly-once.
ANCHOR_SHAPES = {
    "blackhole": lambda r, p: header("blackhole", p, "2s") + source(r, p) + BID_LIKE + DISCARD,
    "q1": lambda r, p: header("anchor-q1", p, "2s") + source(r, p)
    + '[[operator]]\nkind = "map"\nfields = ["auction", "bidder", "price = price * 0.908", "channel", "date_time"]\n'
    + DISCARD,
    "csv": lambda r, p: header("csv", p, "2s") + source(r, p) + BID_LIKE + file_sink("csv", True),
    "json": lambda r, p: header("json", p, "2s") + source(r, p) + BID_LIKE + file_sink("json"),
}


def run_job(text, workdir):
    """Runs a job file embedded; returns (summary, cpu seconds)."""
    store = os.path.join(workdir, "store")
    shutil.rmtree(store, ignore_errors=True)
    os.makedirs(store)
    job = os.path.join(workdir, "job.toml")
    with open(job, "w") as f:
        f.write(text)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        [BIN, "run", "--json", "--fresh", "--store", store, "--index", os.path.join(workdir, "index"), job],
        capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        sys.exit(f"job failed: {out.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return json.loads(out.stdout), cpu


def measure(name, text, parallelism, rows, runs, workdir):
    results = []
    for _ in range(runs):
        summary, cpu = run_job(text, workdir)
        results.append((summary, cpu))
    seconds = statistics.median(s["seconds"] for s, _ in results)
    events = results[0][0]["events"]
    cores = min(parallelism, os.cpu_count() or 1)
    durations = [c for s, _ in results for c in s.get("checkpoint_durations_ms", [])]
    row = {
        "job": name, "par": parallelism, "rows": events, "runs": runs,
        "seconds": round(seconds, 2),
        "rows_per_s": int(events / seconds),
        "rows_per_s_per_core": int(events / seconds / cores),
        "cpu_s": round(statistics.median(c for _, c in results), 2),
        "checkpoint_p50_ms": int(statistics.median(durations)) if durations else None,
    }
    return row


SERVING = "job manager on http://"


def start_jobmanager(args, log_path, env):
    """Starts `rivulet jobmanager --listen 127.0.0.1:0 ARGS` and returns it with the address it
    bound, read from its log: a port picked here and bound by the job manager later could be
    taken by another process in between (as tests/tests/engine_support does)."""
    log = open(log_path, "w")
    proc = subprocess.Popen([BIN, "jobmanager", "--listen", "127.0.0.1:0"] + args, env=env, stderr=log)
    log.close()
    deadline = time.time() + 60
    while time.time() < deadline:
        with open(log_path) as f:
            for line in f:
                if SERVING in line:
                    return proc, line.split(SERVING, 1)[1].split()[0]
        if proc.poll() is not None:
            with open(log_path) as f:
                sys.exit(f"the benchmark job manager exited ({proc.returncode}):\n{f.read()}")
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    sys.exit("the benchmark job manager did not start serving in 60 s")


def recovery_time(workdir, runs):
    """Kills a task manager of a running job and measures how long until records flow again."""
    times = []
    token = "bench"
    env = dict(os.environ, RIVULET_CLUSTER_TOKEN=token)
    for run in range(runs):
        store = os.path.join(workdir, f"cluster-store-{run}")
        shutil.rmtree(store, ignore_errors=True)
        os.makedirs(store)
        jm, address = start_jobmanager(
            ["--store", store, "--heartbeat-timeout", "3s", "--index", os.path.join(workdir, f"jm-index-{run}")],
            os.path.join(workdir, f"jobmanager-{run}.log"), env)
        procs = [jm]
        logs = open(os.path.join(workdir, f"cluster-{run}.log"), "w")
        tms = []
        for i in range(2):
            tms.append(subprocess.Popen(
                [BIN, "taskmanager", "--jobmanager", address, "--slots", "2", "--name", f"tm{i}",
                 "--index", os.path.join(workdir, f"tm-index-{run}-{i}")], env=env, stderr=logs))
        try:
            def get(path):
                req = urllib.request.Request(f"http://{address}{path}",
                                             headers={"Authorization": f"Bearer {token}"})
                return json.load(urllib.request.urlopen(req, timeout=5))

            deadline = time.time() + 30
            while get("/overview")["slots-total"] < 4:
                if time.time() > deadline:
                    sys.exit("the benchmark cluster did not come up")
                time.sleep(0.2)
            job = header("recovery", 2, "1s") + source(10**12, 2, "rate = 200000") + file_sink("csv")
            req = urllib.request.Request(f"http://{address}/jobs", data=job.encode(), method="POST",
                                         headers={"Authorization": f"Bearer {token}"})
            job_id = json.load(urllib.request.urlopen(req))["jobid"]

            def source_records():
                j = get(f"/jobs/{job_id}")
                return j, sum(v["metrics"]["write-records"] for v in j["vertices"] if v["kind"] == "source")

            time.sleep(4)  # running, checkpoints completing
            tms[0].send_signal(signal.SIGKILL)
            killed = time.time()
            tms[0].wait()
            baseline = None
            while time.time() - killed < 60:
                j, records = source_records()
                if j["restarts"] >= 1 and j["state"] == "RUNNING":
                    if baseline is None:
                        baseline = records
                    elif records > baseline:
                        times.append(time.time() - killed)
                        break
                time.sleep(0.05)
        finally:
            for p in procs + tms:
                p.kill()
                p.wait()
            logs.close()
    return round(statistics.median(times), 2) if times else None


def flink(rows, runs, directory):
    """Runs the Flink anchor's matrix in this run; returns {(sink, par): median rows/s}."""
    py = "/tmp/flinkvenv/bin/python"
    if not os.path.exists(py):
        sys.exit(f"no Flink venv: run bash {ANCHOR}/setup.sh first")
    out = {}
    for sink in ("blackhole", "q1", "csv", "json"):
        for par in (1, 2):
            path = "file://" + os.path.join(directory, "flinkout")
            res = subprocess.run([py, os.path.join(ANCHOR, "bench.py"), sink, str(par), str(rows), str(runs + 1), path],
                                 capture_output=True, text=True)
            lines = [json.loads(l) for l in res.stdout.splitlines() if l.startswith("{")]
            warm = [l["rows_per_s"] for l in lines if l["run"] > 0]  # run 0 is a cold JVM
            if not warm:
                sys.exit(f"flink {sink} {par} failed: {res.stderr[-2000:]}")
            out[(sink, par)] = int(statistics.median(warm))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--events", type=int, default=20_000_000, help="bids per job")
    ap.add_argument("--flink", action="store_true", help="also run the Flink anchor in this run")
    ap.add_argument("--only", default="", help="comma-separated subset of: nexmark,anchor,recovery")
    ap.add_argument("--dir", default="/dev/shm", help="where stores and outputs go (default tmpfs)")
    args = ap.parse_args()
    only = set(args.only.split(",")) if args.only else {"nexmark", "anchor", "recovery"}
    # The same target directory as BIN, whatever the caller's environment says.
    subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "rivulet"], cwd=ROOT, check=True,
                   env=dict(os.environ, CARGO_TARGET_DIR=TARGET))
    workdir = tempfile.mkdtemp(prefix="rivulet-bench-", dir=args.dir)
    rows_out = []
    print(f"rivulet engine benchmarks: {args.events} bids a job, median of {args.runs} runs, "
          f"{os.cpu_count()} cores, stores under {args.dir}, {time.strftime('%Y-%m-%d %H:%M')}\n")
    if "nexmark" in only:
        print("| job | par | rows/s | rows/s per core | cpu s | checkpoint p50 |\n|---|---|---|---|---|---|")
        for name, make in NEXMARK.items():
            for par in (1, 2):
                r = measure(name, make(args.events, par), par, args.events, args.runs, workdir)
                rows_out.append(r)
                print(f"| {name} | {par} | {r['rows_per_s']:,} | {r['rows_per_s_per_core']:,} | {r['cpu_s']} | "
                      f"{r['checkpoint_p50_ms']} ms |", flush=True)
        by = {(r["job"], r["par"]): r for r in rows_out}
        for job in ("q10", "q10-all-columns"):
            for par in (1, 2):
                ratio = by[(job, par)]["rows_per_s"] / by[(job + "-discard", par)]["rows_per_s"]
                print(f"\n{job} exactly-once file sink vs discarding sink, parallelism {par}: {ratio:.2f}x")
    if "anchor" in only:
        fl = flink(args.events, args.runs, workdir) if args.flink else {}
        print("\n| anchor job | par | rivulet rows/s | flink rows/s | ratio |\n|---|---|---|---|---|")
        for name, make in ANCHOR_SHAPES.items():
            for par in (1, 2):
                r = measure("anchor-" + name, make(args.events, par), par, args.events, args.runs, workdir)
                rows_out.append(r)
                f = fl.get((name, par))
                ratio = f"{r['rows_per_s'] / f:.2f}x" if f else "-"
                print(f"| {name} | {par} | {r['rows_per_s']:,} | {f'{f:,}' if f else '-'} | {ratio} |", flush=True)
                if f:
                    rows_out.append({"job": "flink-" + name, "par": par, "rows_per_s": f})
    if "recovery" in only:
        t = recovery_time(workdir, args.runs)
        print(f"\ntime to recover after a task manager is killed (median of {args.runs}): {t} s")
        rows_out.append({"job": "recovery", "seconds": t})
    out = os.environ.get("OUT", "/tmp/rivulet-bench/engine.jsonl")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "a") as f:
        for r in rows_out:
            f.write(json.dumps(r) + "\n")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

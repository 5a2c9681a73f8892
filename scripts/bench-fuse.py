#!/usr/bin/env python3
"""One round of one contender of scripts/bench-fuse.sh, and the report of all rounds.

  bench-fuse.py mkbucket BUCKET
  bench-fuse.py fuse KIND ROUND     # through the mount $W/mnt/KIND of bucket KIND
  bench-fuse.py raw BUCKET ROUND    # boto3 without FUSE: multipart upload/download, PUTs
  bench-fuse.py report ROUNDS.jsonl PLOT.png

Prints one JSON line per measurement. The measurements are those of the peer scripts in
/work/shared/anchors/fuse/ (bench.py, raw_s3.py, s3util.py, summarize.py), adapted: one round per
call (the shell script runs the rounds round-robin), the Rivulet mount as one more kind, a plot.
"""
import json
import os
import statistics
import subprocess
import sys
import time

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

MiB = 1 << 20
# The big file's size: 1 GiB; smaller only to try the script out (RIVULET_FUSE_BENCH_MIB).
SIZE_MIB = int(os.environ.get("RIVULET_FUSE_BENCH_MIB", "1024"))
W = os.environ["W"]
SRC = os.environ["SRC"]
HERE = os.path.dirname(os.path.abspath(__file__))


def client():
    return boto3.client(
        "s3",
        endpoint_url=os.environ["EP"],
        aws_access_key_id="a",
        aws_secret_access_key="b",
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
    )


def keys(s3, bucket, prefix=""):
    out = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out += [o["Key"] for o in page.get("Contents", [])]
    return out


def sh(cmd, **kw):
    subprocess.run(cmd, shell=True, check=True, **kw)


def drop_caches():
    sh("sync; echo 3 > /proc/sys/vm/drop_caches")


def out(kind, metric, run, value, unit):
    print(json.dumps(dict(kind=kind, metric=metric, run=run, value=round(value, 1), unit=unit,
                          load1=os.getloadavg()[0])), flush=True)


def wait_size(s3, bucket, key, size, t0, limit=600):
    while time.time() - t0 < limit:
        try:
            if s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == size:
                return time.time()
        except Exception:
            pass
        time.sleep(0.1)
    return float("nan")


def fuse_round(kind, run):
    s3 = client()
    bucket, mnt = kind, f"{W}/mnt/{kind}"
    f = f"{mnt}/f1g"
    if os.path.exists(f):
        os.unlink(f)
    time.sleep(1)
    drop_caches()
    t0 = time.time()
    sh(f"dd if={SRC} of={f} bs=1M conv=fsync status=none")
    out(kind, "write", run, SIZE_MIB / (time.time() - t0), "MiB/s")
    out(kind, "write_durable", run, SIZE_MIB / (wait_size(s3, bucket, "f1g", SIZE_MIB * MiB, t0) - t0), "MiB/s")
    drop_caches()
    t0 = time.time()
    sh(f"dd if={f} of=/dev/null bs=1M status=none")
    out(kind, "read", run, SIZE_MIB / (time.time() - t0), "MiB/s")
    # Cold: a new mount (rclone's disk cache wiped), nothing cached.
    sh(f"{HERE}/bench-fuse.sh umount {mnt}")
    sh(f"{HERE}/bench-fuse.sh mount {kind} {bucket} {mnt}", env=dict(os.environ, FRESH_CACHE="1"))
    drop_caches()
    t0 = time.time()
    sh(f"dd if={f} of=/dev/null bs=1M status=none")
    out(kind, "read_cold", run, SIZE_MIB / (time.time() - t0), "MiB/s")
    sh(f"cmp {SRC} {f}")
    os.unlink(f)
    payload = os.urandom(4096)
    drop_caches()
    t0 = time.time()
    for i in range(1000):
        with open(f"{mnt}/cr{run}-f{i:04d}", "wb") as fh:
            fh.write(payload)
    out(kind, "creates", run, 1000 / (time.time() - t0), "files/s")
    while len(keys(s3, bucket, f"cr{run}-f")) < 1000 and time.time() - t0 < 900:
        time.sleep(0.5)
    out(kind, "creates_durable", run, 1000 / (time.time() - t0), "files/s")
    # Every round starts from a near-empty bucket (s3s-fs listings slow down with many objects).
    for i in range(1000):
        os.unlink(f"{mnt}/cr{run}-f{i:04d}")
    while keys(s3, bucket, f"cr{run}-f") and time.time() - t0 < 900:
        time.sleep(0.5)


def raw_round(bucket, run):
    """The ceiling without FUSE: what `aws s3 cp` does (8 MiB parts, 10 threads)."""
    s3 = client()
    config = TransferConfig(multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB,
                            max_concurrency=10)
    dl = "/dev/shm/rivulet-fusebench-dl1g"
    drop_caches()
    t0 = time.time()
    s3.upload_file(SRC, bucket, "f1g", Config=config)
    out("boto3", "write", run, SIZE_MIB / (time.time() - t0), "MiB/s")
    drop_caches()
    t0 = time.time()
    s3.download_file(bucket, "f1g", dl, Config=config)
    out("boto3", "read", run, SIZE_MIB / (time.time() - t0), "MiB/s")
    sh(f"cmp {SRC} {dl} && rm {dl}")
    s3.delete_object(Bucket=bucket, Key="f1g")
    payload = os.urandom(4096)
    t0 = time.time()
    for i in range(1000):
        s3.put_object(Bucket=bucket, Key=f"cr{run}-f{i:04d}", Body=payload)
    out("boto3", "creates", run, 1000 / (time.time() - t0), "files/s")
    for key in keys(s3, bucket):
        s3.delete_object(Bucket=bucket, Key=key)


LABELS = {
    "rivulet": "Rivulet mount",
    "s3fs": "s3fs-fuse",
    "rclone-writes": "rclone mount, cache writes",
    "rclone-off": "rclone mount, cache off",
    "boto3": "boto3, no FUSE",
}
METRICS = ["write", "write_durable", "read", "read_cold", "creates", "creates_durable"]


def report(path, plot):
    values = {}
    for line in open(path):
        try:
            d = json.loads(line)
        except ValueError:
            continue
        values.setdefault((d["kind"], d["metric"]), []).append(d["value"])
    kinds = [k for k in LABELS if any(kk == k for kk, _ in values)]
    med = {key: statistics.median(v) for key, v in values.items()}
    print("| | " + " | ".join(METRICS) + " |")
    print("|---|" + "---|" * len(METRICS))
    for kind in kinds:
        cells = []
        for metric in METRICS:
            v = values.get((kind, metric))
            cells.append(f"{med[(kind, metric)]:.0f} ({', '.join(f'{x:.0f}' for x in v)})"
                         if v else "-")
        print(f"| {LABELS[kind]} | " + " | ".join(cells) + " |")
    for metric in ["write", "read"]:
        base = med.get(("boto3", metric))
        mine = med.get(("rivulet", metric))
        if base and mine:
            print(f"rivulet {metric} / boto3 {metric}: {mine / base:.2f}")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    panels = [("write", "read", "MiB/s", "1 GiB sequential (median)"),
              ("write_durable", "read_cold", "MiB/s", "durable in the bucket / cold read"),
              ("creates", "creates_durable", "files/s", "1,000 x 4 KiB files")]
    for ax, (a, b, unit, title) in zip(axes, panels):
        xs = range(len(kinds))
        va = [med.get((k, a), 0) for k in kinds]
        vb = [med.get((k, b), 0) for k in kinds]
        ax.bar([x - 0.2 for x in xs], va, width=0.4, label=a)
        ax.bar([x + 0.2 for x in xs], vb, width=0.4, label=b)
        ax.set_xticks(list(xs))
        ax.set_xticklabels([LABELS[k] for k in kinds], rotation=25, ha="right", fontsize=8)
        ax.set_ylabel(unit)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle("FUSE mounts over one loopback s3s-fs (scripts/bench-fuse.sh)", fontsize=11)
    fig.tight_layout()
    os.makedirs(os.path.dirname(plot), exist_ok=True)
    fig.savefig(plot, dpi=110)
    print(f"plot: {plot}")


def main():
    cmd = sys.argv[1]
    if cmd == "mkbucket":
        client().create_bucket(Bucket=sys.argv[2])
    elif cmd == "fuse":
        fuse_round(sys.argv[2], int(sys.argv[3]))
    elif cmd == "raw":
        raw_round(sys.argv[2], int(sys.argv[3]))
    elif cmd == "report":
        report(sys.argv[2], sys.argv[3])
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine, idempotently:
#   - moto (S3 API server enforcing S3's rules) in a venv under $RIVULET_VENV
#   - s3s-fs 0.14.1 (fast S3 API server over a directory) via cargo install
#   - fuse3 (for the FUSE mount tests)
#   - fsx 0.3.2 (File System eXerciser, run by the FUSE tests) via cargo install
# Every step is skipped when its result is already there, so repeated runs are cheap.
set -euo pipefail

VENV="${RIVULET_VENV:-$HOME/.cache/rivulet-venv}"
S3S_FS_VERSION=0.14.1
FSX_VERSION=0.3.2

log() { printf '[install-test-deps] %s\n' "$*" >&2; }

if ! command -v fusermount3 >/dev/null 2>&1; then
  log "installing fuse3"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq fuse3 >/dev/null
fi

# `ip` for the engine's network-namespace test (tests/tests/engine_netns.rs).
if ! command -v ip >/dev/null 2>&1; then
  log "installing iproute2"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq iproute2 >/dev/null
fi

if [ ! -x "$VENV/bin/moto_server" ]; then
  log "creating venv $VENV with moto[server]"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q 'moto[server]'
fi

# Real S3 clients for the gateway's tests: the AWS CLI and boto3.
if [ ! -x "$VENV/bin/aws" ] || ! "$VENV/bin/python" -c 'import boto3' 2>/dev/null; then
  log "installing the AWS CLI and boto3 into $VENV"
  "$VENV/bin/pip" install -q awscli boto3
fi

if ! s3s-fs --version 2>/dev/null | grep -q "$S3S_FS_VERSION"; then
  log "installing s3s-fs $S3S_FS_VERSION (cargo install, a few minutes once)"
  cargo install -q "s3s-fs@$S3S_FS_VERSION" --locked --features binary
fi

if ! fsx --version 2>/dev/null | grep -q "$FSX_VERSION"; then
  log "installing fsx $FSX_VERSION (cargo install, a minute once)"
  cargo install -q "fsx@$FSX_VERSION" --locked
fi

log "moto_server: $VENV/bin/moto_server"
log "s3s-fs: $(command -v s3s-fs)"
log "fsx: $(command -v fsx)"

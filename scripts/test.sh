#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the end-to-end tests need, checks
# formatting and lints, then runs the Rust tests and the end-to-end tests against the real binary.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

log "installing test dependencies"
if ! command -v redis-cli >/dev/null 2>&1 || ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-tools redis-server >/dev/null
  else
    sudo apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-tools redis-server >/dev/null
  fi
fi
# A running system redis-server is not needed: tests start their own servers.
python3 -m pip install --quiet --disable-pip-version-check -r tests/e2e/requirements.txt

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

log "cargo test"
cargo test --workspace

log "end-to-end tests (real chorus binary, redis-cli and redis-py)"
cargo build -p chorus
CHORUS_BIN="$PWD/target/debug/chorus" python3 -m pytest tests/e2e -q

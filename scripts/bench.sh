#!/usr/bin/env bash
# One load-test run against a fresh release server: the server pinned to CPU 0, the load
# tester to CPU 1, rate limiting off (a closed loop sends far more than 500 commands/s per
# connection; every other limit at its default).
# Usage: scripts/bench.sh [loadtest options] MODE [mode options]
#   e.g. scripts/bench.sh --json relay --pairs 100 --window 32 --duration 5
set -euo pipefail
cd "$(dirname "$0")/.."
target_dir=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --release -q --workspace
out=$(mktemp)
taskset -c 0 "$target_dir/release/signaling-server" --listen 127.0.0.1:0 --rate-limit 0 >"$out" 2>/dev/null &
server=$!
trap 'kill $server 2>/dev/null || true; rm -f "$out"' EXIT
for _ in $(seq 100); do grep -q "listening on" "$out" && break; sleep 0.05; done
addr=$(sed -n 's/^listening on //p' "$out")
timeout 600 taskset -c 1 "$target_dir/release/loadtest" --url "ws://$addr/" --server-pid "$server" "$@"

#!/usr/bin/env bash
# RFC 6455 conformance: runs the Autobahn|Testsuite fuzzing client (517 cases, compression
# groups 12 and 13 excluded: the server negotiates no extensions) against the server's echo
# path, and fails if any case FAILED or closed uncleanly.
#
# Needs a Python 2.7 (pyenv's 2.7.18 on these machines); installs wstest into
# target/autobahn/ on first use (about a minute) and reuses it after.
# Usage: scripts/autobahn.sh            (builds the release binary first)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
target_dir=${CARGO_TARGET_DIR:-$root/target}
work=$target_dir/autobahn
mkdir -p "$work"

py27=${PY27:-$(command -v pyenv >/dev/null && echo "$(pyenv root)/versions/2.7.18/bin/python" || true)}
if [ -z "$py27" ] || [ ! -x "$py27" ]; then
  echo "autobahn: no Python 2.7 found (set PY27=/path/to/python2.7)" >&2
  exit 1
fi

if [ ! -x "$work/py27/bin/wstest" ]; then
  echo "autobahn: installing wstest (Python 2.7 virtualenv) ..."
  python3 -m venv "$work/venv3"
  "$work/venv3/bin/pip" install -q 'virtualenv<20.22'
  "$work/venv3/bin/virtualenv" -q -p "$py27" "$work/py27"
  "$work/py27/bin/pip" install -q -c "$root/scripts/autobahn-constraints-py27.txt" autobahntestsuite==25.10.1
fi

cargo build --release -q --bin signaling-server
out=$work/server.out
# The echo path needs the large limits group 9 uses (16 MiB messages); the rate limit is
# off because the suite sends thousands of frames as fast as it can.
"$target_dir/release/signaling-server" --listen 127.0.0.1:0 --echo-path /echo \
  --rate-limit 0 --max-connections-per-ip 0 >"$out" 2>"$work/server.err" &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q "listening on" "$out" && break; sleep 0.05; done
addr=$(sed -n 's/^listening on //p' "$out")
[ -n "$addr" ] || { echo "autobahn: the server did not start" >&2; cat "$work/server.err" >&2; exit 1; }

cat >"$work/spec.json" <<JSON
{
  "outdir": "$work/reports",
  "servers": [{"agent": "signaling-server", "url": "ws://$addr/echo"}],
  "cases": ["*"],
  "exclude-cases": ["12.*", "13.*"],
  "exclude-agent-cases": {}
}
JSON
rm -rf "$work/reports"
(cd "$work" && timeout 600 "$work/py27/bin/wstest" -m fuzzingclient -s "$work/spec.json" >"$work/wstest.log" 2>&1) || {
  echo "autobahn: wstest failed to run" >&2; tail -20 "$work/wstest.log" >&2; exit 1; }

python3 - "$work/reports/signaling-server/index.json" "$work/reports/index.json" <<'PY'
import json, sys, os
path = sys.argv[1] if os.path.exists(sys.argv[1]) else sys.argv[2]
data = json.load(open(path))
cases = data.get("signaling-server", data)
counts, failed = {}, []
for case, result in sorted(cases.items()):
    behavior, close = result["behavior"], result["behaviorClose"]
    counts[behavior] = counts.get(behavior, 0) + 1
    if behavior == "FAILED" or close in ("FAILED", "UNCLEAN"):
        failed.append(f"{case}: behavior {behavior}, close {close}")
print("autobahn: " + ", ".join(f"{n} {b}" for b, n in sorted(counts.items())) + f"; {len(failed)} failed")
for line in failed:
    print("  " + line)
sys.exit(1 if failed else 0)
PY

#!/usr/bin/env bash
# API conformance: schemathesis (every check) against the document a throwaway
# `ferry server` serves, on loopback, with a temporary data directory. Fails on any server
# error or conformance failure. Bounded: MAX_EXAMPLES per operation, MAX_TIME seconds.
#
#   scripts/schemathesis.sh                # install schemathesis if needed, build, run
#   MAX_EXAMPLES=50 MAX_TIME=600 scripts/schemathesis.sh
#   scripts/schemathesis.sh --include-path-regex /flags   # more arguments go to `st run`
#
# `POST /v1/teardown` is left out: it stops the server under test (its own tests cover it).
set -euo pipefail
cd "$(dirname "$0")/.."
MAX_EXAMPLES=${MAX_EXAMPLES:-20}
MAX_TIME=${MAX_TIME:-180}
target=${CARGO_TARGET_DIR:-target}

st=${ST:-$(command -v st || true)}
if [ -z "$st" ]; then
    venv="$target/schemathesis-venv"
    if [ ! -x "$venv/bin/st" ]; then
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet 'schemathesis>=4.3,<5'
    fi
    st="$venv/bin/st"
fi
"$st" --version

cargo build --quiet --locked -p ferry
data=$(mktemp -d)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$target/debug/ferry" server --data "$data" --listen "127.0.0.1:$port" >"$data/server.log" 2>&1 &
server=$!
cleanup() {
    # The server supervises a proxy in its own process group: stop both.
    proxy=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["pid"])' \
        "$data/proxy/proxy.json" 2>/dev/null || true)
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    if [ -n "$proxy" ]; then kill "$proxy" 2>/dev/null || true; fi
    rm -rf "$data"
}
trap cleanup EXIT
python3 - "$port" <<'PY'
import sys, time, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}/readyz"
deadline = time.monotonic() + 60
while True:
    try:
        urllib.request.urlopen(url, timeout=2)
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit(f"the server did not get ready: {url}")
        time.sleep(0.2)
PY

status=0
timeout $((MAX_TIME + 120)) "$st" --config-file scripts/schemathesis.toml run \
    "http://127.0.0.1:$port/openapi.json" \
    --checks all \
    --header "Authorization: Bearer $(cat "$data/admin.token")" \
    --exclude-path /v1/teardown \
    --max-examples "$MAX_EXAMPLES" \
    --max-time "$MAX_TIME" \
    --workers 1 \
    --seed "${SEED:-1}" "$@" || status=$?
if grep -q "panicked" "$data/server.log"; then
    echo "the server panicked:" >&2
    grep -A5 "panicked" "$data/server.log" >&2
    status=1
fi
exit "$status"

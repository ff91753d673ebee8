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
#
# Two runs on the same server. The first, on an empty server, takes every operation. The
# second takes the feature-flag operations (Ferry's flag API and the SDK endpoints) on
# something real the script sets up first (app `shop`, flags, client tokens; see
# scripts/schemathesis.toml), so they are judged on real flags and not only on 404s. Only the
# flag operations run then: values schemathesis learns from their answers (the app, its
# environments, token ids) reach no other operation, such as a log or status stream that
# would stay open on a real app.
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

run() {
    timeout $((MAX_TIME + 120)) "$st" --config-file "$1" run \
        "http://127.0.0.1:$port/openapi.json" \
        --exclude-path /v1/teardown \
        --max-examples "$MAX_EXAMPLES" \
        --max-time "$MAX_TIME" \
        --workers 1 \
        --seed "${SEED:-1}" "${@:2}"
}
export FERRY_ADMIN_TOKEN
FERRY_ADMIN_TOKEN=$(cat "$data/admin.token")

status=0
echo "== every operation, on an empty server"
run scripts/schemathesis.toml --checks all "$@" || status=$?

# The flag fixture: app `shop` (production and staging); in production flags `checkout`
# (on, a 50 % rollout, two variants) and `banner`, and a client token the fuzzing may list
# and revoke; the SDK endpoints read `staging` with a client token of their own, which the
# fuzzing (bound to production) never sees.
python3 - "$port" "$data/admin.token" >"$data/client.token" <<'PY'
import json, socket, sys, urllib.error, urllib.request
base, admin = f"http://127.0.0.1:{sys.argv[1]}", open(sys.argv[2]).read().strip()

def call(method, path, body):
    request = urllib.request.Request(
        base + path, method=method, data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {admin}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.load(answer)
    except urllib.error.HTTPError as e:
        sys.exit(f"flag fixture: {method} {path}: {e.code} {e.read().decode()}")

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

manifest = f"""app: shop
services:
  web:
    run: ["true"]
environments:
  staging:
    listen: 127.0.0.1:{free_port()}
  production:
    listen: 127.0.0.1:{free_port()}
"""
call("POST", "/v1/apps", {"manifest": manifest})
for env in ("staging", "production"):
    flags = f"/v1/apps/shop/envs/{env}/flags"
    call("POST", flags, {"name": "checkout", "enabled": True})
    call("PUT", f"{flags}/checkout/rollout", {"percent": 50})
    call("PUT", f"{flags}/checkout/variants",
         {"variants": [{"name": "blue", "percent": 50}, {"name": "green", "percent": 50}]})
    call("POST", flags, {"name": "banner"})
call("POST", "/v1/apps/shop/envs/production/flag-tokens", {"name": "fuzz"})
print(call("POST", "/v1/apps/shop/envs/staging/flag-tokens", {"name": "sdk"})["token"])
PY
export FERRY_CLIENT_TOKEN
FERRY_CLIENT_TOKEN=$(cat "$data/client.token")
echo "== the flag operations, on app shop"
run scripts/schemathesis-flags.toml \
    --include-path-regex '^/v1/apps/\{app\}/envs/\{env\}/(flags|features|flag-tokens|flag-metrics)|^/(api/client|ofrep)/' \
    "$@" || status=$?

if grep -q "panicked" "$data/server.log"; then
    echo "the server panicked:" >&2
    grep -A5 "panicked" "$data/server.log" >&2
    status=1
fi
exit "$status"

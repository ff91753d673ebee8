#!/usr/bin/env bash
# Failed client requests across progressive transitions under load, on loopback.
#
#   bench/switch-errors.sh                  # 300 req/s per listener
#   RATE=500 bench/switch-errors.sh
#   KEEP=1 bench/ ...                       # keep the temporary directory (logs, data)
#   SKIP_BUILD=1 bench/switch-errors.sh     # reuse target/release/{ferry,ferry-demo}
#
# Starts `ferry server` (and so its proxy) on a temporary data dir with one app and two
# environments running `ferry-demo` (3 replicas each): `canary` (steps 10% → wait → 50% →
# wait) and `bg` (blue/green, promote by hand, scale_down_delay 3s). A bounded client loop
# sends RATE req/s to each listener the whole time and records every answer. Then, one
# after the other:
#   weight change   canary: deploy 2.0.0 (0% → 10%), promote (10% → 50%)
#   promote         canary: promote --full (50% → 100%, 1.0.0 drained and stopped)
#   abort           canary: deploy 3.0.0 to 10%, abort --wait (back to 2.0.0)
#   rollback        canary: rollback --wait (2.0.0 → 1.0.0)
#   blue/green      bg: deploy 2.0.0 (green beside blue), promote (switch), blue stopped
# and prints, per transition, the requests sent while it ran (plus 1 s after) and how many
# failed (any answer but 200, or no answer). Every process it starts is stopped on exit.
set -euo pipefail

RATE=${RATE:-300}          # requests per second per listener
CLIENTS=${CLIENTS:-3}      # keep-alive clients per listener

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
if [[ -z "${SKIP_BUILD:-}" ]]; then
    echo "building (cargo build --release -p ferry)" >&2
    cargo build --release -p ferry >&2
fi
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
FERRY="$TARGET_DIR/release/ferry"
DEMO="$TARGET_DIR/release/ferry-demo"
for bin in "$FERRY" "$DEMO"; do
    [[ -x "$bin" ]] || { echo "missing $bin" >&2; exit 1; }
done

TMP=$(mktemp -d /tmp/ferry-switch-bench.XXXXXX)
SERVER_PID=""
LOAD_PIDS=()
cleanup() {
    local pid
    for pid in "${LOAD_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        curl -fsS -m 60 -X POST -H "Authorization: Bearer $(cat "$TMP/data/admin.token" 2>/dev/null)" \
            -H 'Content-Type: application/json' -d '{}' "$FERRY_URL/v1/teardown" >/dev/null 2>&1 || true
        for _ in $(seq 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    if [[ -n "${KEEP:-}" ]]; then echo "kept $TMP" >&2; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

API_PORT=$(free_port)
CANARY_PORT=$(free_port)
BG_PORT=$(free_port)
PREVIEW_PORT=$(free_port)
export FERRY_URL="http://127.0.0.1:$API_PORT"
"$FERRY" server --data "$TMP/data" --listen "127.0.0.1:$API_PORT" >"$TMP/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 300); do
    curl -fsS -o /dev/null "$FERRY_URL/readyz" 2>/dev/null && break
    sleep 0.1
done
export FERRY_TOKEN=$(cat "$TMP/data/admin.token")
export FERRY_CONFIG="$TMP/cli.json"

cat >"$TMP/ferry.yaml" <<EOF
app: bench
services:
  web:
    run: ["$DEMO", "--port", "\${PORT}", "--version", "\${VERSION}"]
    replicas: 3
    health: { path: /health, interval: 500ms, timeout: 400ms }
environments:
  canary:
    listen: 127.0.0.1:$CANARY_PORT
    strategy:
      canary:
        steps: [{ weight: 10 }, { pause: {} }, { weight: 50 }, { pause: {} }]
        analysis: { interval: 2s, metrics: [{ name: errors, builtin: error_rate, max: 1% }] }
  bg:
    listen: 127.0.0.1:$BG_PORT
    strategy:
      blue_green: { auto_promote: false, preview_listen: "127.0.0.1:$PREVIEW_PORT", scale_down_delay: 3s }
EOF
"$FERRY" apply -f "$TMP/ferry.yaml" >/dev/null
"$FERRY" deploy bench --env canary --version 1.0.0 --wait --timeout 2m >/dev/null
"$FERRY" deploy bench --env bg --version 1.0.0 --wait --timeout 2m >/dev/null

# One line per answer (`wall_ms status x-version`) in $1 until SIGTERM.
python3 "$ROOT/bench/load.py" "$TMP/canary.txt" "$CANARY_PORT" "$RATE" "$CLIENTS" &
LOAD_PIDS+=($!)
python3 "$ROOT/bench/load.py" "$TMP/bg.txt" "$BG_PORT" "$RATE" "$CLIENTS" &
LOAD_PIDS+=($!)
sleep 2

now_ms() { python3 -c 'import time; print(int(time.time()*1000))'; }
PHASES="$TMP/phases.txt"
: >"$PHASES"
phase() { # NAME LISTENER-FILE COMMAND...
    local name=$1 file=$2; shift 2
    local start end
    start=$(now_ms)
    "$@"
    sleep 1
    end=$(now_ms)
    echo "$name $file $start $end" >>"$PHASES"
    echo "done: $name" >&2
}
status_json() { curl -fsS -m 10 -H "Authorization: Bearer $FERRY_TOKEN" "$FERRY_URL/v1/apps/bench/status?env=$1"; }
wait_rollout() { # ENV PYTHON-CONDITION-ON-r (the rollout object)
    for _ in $(seq 600); do
        if status_json "$1" | python3 -c "import json,sys; s=json.load(sys.stdin)['environments'][0]; r=s.get('rollout'); sys.exit(0 if r and ($2) else 1)"; then return 0; fi
        sleep 0.1
    done
    echo "timed out waiting for: $2" >&2; return 1
}
wait_done() { # ENV: latest deployment terminal
    for _ in $(seq 600); do
        if status_json "$1" | python3 -c "import json,sys; d=json.load(sys.stdin)['environments'][0]['latest_deployment']; sys.exit(0 if d['state'] in ('succeeded','rolled-back','aborted','failed') else 1)"; then return 0; fi
        sleep 0.1
    done
    echo "timed out waiting for the end of the rollout in $1" >&2; return 1
}

weight_changes() {
    "$FERRY" deploy bench --env canary --version 2.0.0 >/dev/null
    wait_rollout canary "r['canary_weight'] == 10 and r['waiting_for']"
    "$FERRY" promote bench --env canary >/dev/null
    wait_rollout canary "r['canary_weight'] == 50 and r['waiting_for']"
}
promote_full() {
    "$FERRY" promote bench --env canary --full >/dev/null
    wait_done canary
}
abort() {
    "$FERRY" deploy bench --env canary --version 3.0.0 >/dev/null
    wait_rollout canary "r['canary_weight'] == 10 and r['waiting_for']"
    "$FERRY" abort bench --env canary --wait --timeout 2m >/dev/null
}
rollback() {
    "$FERRY" rollback bench --env canary --wait --timeout 2m >/dev/null
}
blue_green() {
    "$FERRY" deploy bench --env bg --version 2.0.0 >/dev/null
    wait_rollout bg "r['waiting_for']"
    "$FERRY" promote bench --env bg >/dev/null
    wait_done bg
}
phase "weight 0→10→50%" canary weight_changes
phase "promote --full (50→100%)" canary promote_full
phase "abort (10%→0)" canary abort
phase "rollback (2.0.0→1.0.0)" canary rollback
phase "blue/green switch" bg blue_green

for i in "${!LOAD_PIDS[@]}"; do kill -TERM "${LOAD_PIDS[$i]}"; wait "${LOAD_PIDS[$i]}" || true; done
LOAD_PIDS=()

python3 - "$TMP" <<'EOF'
import sys
tmp = sys.argv[1]
data = {}
for name in ("canary", "bg"):
    data[name] = [l.split() for l in open(f"{tmp}/{name}.txt") if l.strip()]
print("| transition | requests during it | failed | versions that answered |")
print("| --- | --- | --- | --- |")
total = failed_total = 0
for line in open(f"{tmp}/phases.txt"):
    *name, file, start, end = line.split()
    rows = [r for r in data[file] if int(start) <= int(r[0]) <= int(end)]
    failed = [r for r in rows if r[1] != "200"]
    versions = sorted({r[2] for r in rows if r[1] == "200"})
    total += len(rows); failed_total += len(failed)
    print("| %s | %d | %d | %s |" % (" ".join(name), len(rows), len(failed), ", ".join(versions)))
all_rows = sum(len(v) for v in data.values())
all_failed = sum(1 for v in data.values() for r in v if r[1] != "200")
print("| **whole run** (both listeners, %d s) | %d | %d | |" % (
    (max(int(r[0]) for v in data.values() for r in v) - min(int(r[0]) for v in data.values() for r in v)) // 1000,
    all_rows, all_failed))
EOF

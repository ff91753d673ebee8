#!/usr/bin/env bash
# Detection-to-rollback time of a bad canary, on loopback.
#
#   bench/rollback-time.sh                 # 5 runs per profile, 400 req/s
#   RUNS=10 RATE=300 bench/rollback-time.sh
#   KEEP=1 bench/ ...                       # keep the temporary directory (logs, data)
#   SKIP_BUILD=1 bench/rollback-time.sh    # reuse target/release/{ferry,ferry-demo}
#   PROFILE=debug SKIP_BUILD=1 RUNS=1 bench/rollback-time.sh   # target/debug (quick check only)
#
# Starts `ferry server` (which starts its proxy) on a temporary data dir, deploys a stable
# `ferry-demo` 1.0.0 (4 replicas), keeps a bounded client loop of RATE req/s on the
# environment's listener, then RUNS times deploys a canary that answers 500 to half its
# requests (DEMO_ERROR_RATE=0.5) at 5% weight, and measures, per run:
#   first bad answer      the first 500 the client got from the canary (client clock)
#   → decision            the deployment's `rolling-back` event (analysis failed; the route
#                         table with 0% canary is pushed right after)
#   → last canary answer  the last answer the client got from the canary (traffic is back)
#   → rolled-back         canary replicas drained and stopped, deployment `rolled-back`
# for two analysis profiles:
#   default  analysis defaults (interval 5s, failure_limit 0, min_requests 20),
#            metric error_rate max 1%
#   fast     the same with interval 1s
# and prints the median and max of each. Every process it starts is stopped on exit.
set -euo pipefail

RUNS=${RUNS:-5}
RATE=${RATE:-400}          # requests per second, all clients together
CLIENTS=${CLIENTS:-4}
PROFILES=${PROFILES:-"default fast"}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh" # TMP, PIDS, build_ferry, start/stop_ferry_server, free_port
build_ferry

LOAD_PID=""
# after the server's teardown (bench/lib.sh): the client loop
bench_extra_cleanup() {
    if [[ -n "$LOAD_PID" ]]; then kill -TERM "$LOAD_PID" 2>/dev/null || true; wait "$LOAD_PID" 2>/dev/null || true; fi
}

LISTEN_PORT=$(free_port)
start_ferry_server "$TMP/server.log"

# The client loop: CLIENTS keep-alive clients at RATE req/s in total; one line per answer
# (`wall_ms status x-version`) in $1 until SIGTERM.

write_manifest() { # $1: analysis block (flow YAML)
    cat >"$TMP/ferry.yaml" <<EOF
app: bench
services:
  web:
    run: ["sh", "-c", "case \"\$VERSION\" in bad-*) export DEMO_ERROR_RATE=0.5;; esac; exec '$DEMO' --port \${PORT} --version \$VERSION"]
    replicas: 4
    health: { path: /health, interval: 500ms, timeout: 400ms }
environments:
  production:
    listen: 127.0.0.1:$LISTEN_PORT
    strategy:
      canary:
        steps: [{ weight: 5 }, { pause: 10m }]
        analysis: $1
EOF
    "$FERRY" apply -f "$TMP/ferry.yaml" >/dev/null
}

api() { curl -fsS -m 30 -H "Authorization: Bearer $FERRY_TOKEN" "$FERRY_URL$1"; }

write_manifest '{ metrics: [{ name: errors, builtin: error_rate, max: 1% }] }'
"$FERRY" deploy bench --env production --version 1.0.0 --wait --timeout 2m >/dev/null
echo "stable 1.0.0 serving on 127.0.0.1:$LISTEN_PORT; $RATE req/s from $CLIENTS clients; $RUNS runs per profile" >&2

RESULTS="$TMP/results.txt"
: >"$RESULTS"
n=0
for profile in $PROFILES; do
    case $profile in
        default) write_manifest '{ metrics: [{ name: errors, builtin: error_rate, max: 1% }] }' ;;
        fast) write_manifest '{ interval: 1s, metrics: [{ name: errors, builtin: error_rate, max: 1% }] }' ;;
        *) echo "unknown profile $profile" >&2; exit 2 ;;
    esac
    for run in $(seq "$RUNS"); do
        n=$((n + 1))
        version="bad-$n"
        python3 "$ROOT/bench/load.py" "$TMP/load-$n.txt" "$LISTEN_PORT" "$RATE" "$CLIENTS" &
        LOAD_PID=$!
        sleep 1
        set +e
        "$FERRY" deploy bench --env production --version "$version" --wait --timeout 3m >"$TMP/deploy-$n.out" 2>&1
        code=$?
        set -e
        sleep 1
        kill -TERM "$LOAD_PID"; wait "$LOAD_PID" || true; LOAD_PID=""
        [[ $code -eq 3 ]] || { echo "run $n: deploy exited $code, expected 3 (rolled back)" >&2; cat "$TMP/deploy-$n.out" >&2; exit 1; }
        id=$(api "/v1/apps/bench/envs/production/deployments?limit=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
        api "/v1/deployments/$id" >"$TMP/dep-$n.json"
        python3 - "$TMP/dep-$n.json" "$TMP/load-$n.txt" "$version" "$profile" >>"$RESULTS" <<'EOF'
import json, sys
dep = json.load(open(sys.argv[1])); version = sys.argv[3]
ev = dep["events"]
decision = next(e["at_ms"] for e in ev if e["kind"] == "state" and e["message"].startswith("rolling-back"))
done = next(e["at_ms"] for e in ev if e["message"].startswith("rolled-back"))
rows = [l.split() for l in open(sys.argv[2]) if l.strip()]
bad = [int(r[0]) for r in rows if r[2] == version and r[1] == "500"]
canary = [int(r[0]) for r in rows if r[2] == version]
other_fail = [r for r in rows if r[1] != "200" and r[2] != version]
first = min(bad)
print(sys.argv[4], decision - first, max(canary) - first, done - first, len(rows), len(canary), len(bad), len(other_fail))
EOF
        tail -1 "$RESULTS" | awk -v n="$n" '{printf "run %d (%s): first 500 → decision %d ms, → last canary answer %d ms, → rolled-back %d ms (%d requests, %d to the canary, %d its 500s, %d other failures)\n", n, $1, $2, $3, $4, $5, $6, $7, $8}' >&2
    done
done

python3 - "$RESULTS" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
print("| profile | runs | first 500 → decision (median / max) | → last canary answer (median / max) | → rolled-back (median / max) | failures not from the canary |")
print("| --- | --- | --- | --- | --- | --- |")
for profile in dict.fromkeys(r[0] for r in rows):
    rs = [r for r in rows if r[0] == profile]
    def col(i):
        v = [int(r[i]) for r in rs]
        return "%.1f s / %.1f s" % (statistics.median(v) / 1000, max(v) / 1000)
    print("| %s | %d | %s | %s | %s | %d |" % (profile, len(rs), col(1), col(2), col(3), sum(int(r[7]) for r in rs)))
EOF

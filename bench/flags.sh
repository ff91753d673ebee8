#!/usr/bin/env bash
# The SDK endpoints under load, beside nginx serving the same document as a static file:
# the Unleash poll `GET /api/client/features` with 1,000 flags (200: the whole document;
# 304: `If-None-Match` names the current revision) and one OFREP evaluation
# (`POST /ofrep/v1/evaluate/flags/{key}` with a context), on loopback, same run.
#
#   bench/flags.sh                                  # wrk -t2 -c64 -d10s, 3 rounds
#   DURATION=30s CONNS=128 ROUNDS=5 bench/flags.sh
#   SKIP_BUILD=1 bench/flags.sh                     # reuse target/release/ferry
#   FLAGS=5000 bench/flags.sh                       # a bigger document
#
# Starts `ferry server` on a temporary data dir, imports FLAGS flags (a mix of Unleash
# strategies: flexibleRollout with stickiness and groupId, userWithId, constraints,
# variants with payloads) into one environment, creates a client token, writes the
# document Ferry serves into an nginx root (nginx: worker_processes auto, access log off,
# its own ETag), checks that both answer 200 and 304 as expected, then runs wrk against
# each target in turn ROUNDS times (interleaved, so background noise hits all alike) and
# prints a markdown table of the medians. Every process it starts is stopped on exit.
set -euo pipefail

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-2}
CONNS=${CONNS:-64}
FLAGS=${FLAGS:-1000}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh" # TMP, PIDS, build_ferry, start_ferry_server, run_nginx, wrk_figures
need_nginx_wrk
build_ferry

# 1. The server, an app with one environment, FLAGS flags, a client token.
start_ferry_server "$TMP/server.log"
cat >"$TMP/ferry.yaml" <<YAML
app: bench
services:
  web:
    run: ["true"]
environments:
  prod:
    listen: 127.0.0.1:$(free_port)
YAML
"$FERRY" apply -f "$TMP/ferry.yaml" >/dev/null
python3 - "$FLAGS" >"$TMP/features.json" <<'PY'
import json, sys
n = int(sys.argv[1])
features = []
for i in range(n):
    constraints = [{"contextName": "region", "operator": "IN", "values": ["eu", "us"]}] if i % 3 == 0 else []
    if i % 5 == 0:
        constraints.append({"contextName": "appVersion", "operator": "SEMVER_GTE", "value": "1.2.0"})
    strategies = [{"name": "flexibleRollout", "constraints": constraints,
                   "parameters": {"rollout": str(i % 101), "stickiness": "userId", "groupId": f"flag-{i:04d}"}}]
    if i % 4 == 0:
        strategies.append({"name": "userWithId", "parameters": {"userIds": "alice,bob,carol"}})
    variants = [{"name": v, "weight": 500, "stickiness": "default",
                 "payload": {"type": "json", "value": json.dumps({"color": v})}} for v in ("blue", "green")] if i % 2 == 0 else []
    features.append({"name": f"flag-{i:04d}", "type": "release", "enabled": i % 7 != 0,
                     "description": f"benchmark flag {i}", "strategies": strategies, "variants": variants})
json.dump({"version": 2, "features": features}, sys.stdout)
PY
"$FERRY" flags import bench --env prod "$TMP/features.json" >/dev/null
CLIENT_TOKEN=$("$FERRY" flags token create bench --env prod -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
FEATURES="$FERRY_URL/api/client/features"
curl -fsS -H "Authorization: $CLIENT_TOKEN" -D "$TMP/ferry.headers" -o "$TMP/served.json" "$FEATURES"
FERRY_ETAG=$(awk 'tolower($1) == "etag:" { print $2 }' "$TMP/ferry.headers" | tr -d '\r')
BYTES=$(wc -c <"$TMP/served.json")

# 2. nginx serving the same bytes as a static file, at the same path.
NGINX_PORT=$(free_port)
mkdir -p "$TMP/nginx/www/api/client"
cp "$TMP/served.json" "$TMP/nginx/www/api/client/features"
run_nginx "$TMP/nginx" auto "
    keepalive_requests 100000000;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        root $TMP/nginx/www;
        default_type application/json;
    }"
STATIC="http://127.0.0.1:$NGINX_PORT/api/client/features"
wait_http "$STATIC"
NGINX_ETAG=$(curl -fsS -D - -o /dev/null "$STATIC" | awk 'tolower($1) == "etag:" { print $2 }' | tr -d '\r')

# 3. Each target answers as it should before it is measured.
expect() { # expect CODE curl-args...: the status of one request is CODE
    local code=$1 got; shift
    got=$(curl -sS -o /dev/null -w '%{http_code}' "$@")
    [[ "$got" == "$code" ]] || { echo "expected $code, got $got: curl $*" >&2; exit 1; }
}
expect 200 -H "Authorization: $CLIENT_TOKEN" "$FEATURES"
expect 304 -H "Authorization: $CLIENT_TOKEN" -H "If-None-Match: $FERRY_ETAG" "$FEATURES"
expect 200 "$STATIC"
expect 304 -H "If-None-Match: $NGINX_ETAG" "$STATIC"
cmp -s "$TMP/served.json" <(curl -fsS "$STATIC") || { echo "nginx serves other bytes" >&2; exit 1; }
OFREP_KEY=flag-0030 # flexibleRollout 30% on userId, region IN (eu, us), appVersion ≥ 1.2.0, variants
OFREP="$FERRY_URL/ofrep/v1/evaluate/flags/$OFREP_KEY"
OFREP_BODY='{"context": {"targetingKey": "user-42", "region": "eu", "appVersion": "1.4.0"}}'
expect 200 -X POST -H "Authorization: $CLIENT_TOKEN" -H 'Content-Type: application/json' -d "$OFREP_BODY" "$OFREP"
cat >"$TMP/ofrep.lua" <<LUA
wrk.method = "POST"
wrk.body = '$OFREP_BODY'
wrk.headers["Content-Type"] = "application/json"
LUA

# 4. Load, in turn.
TARGETS=(ferry-200 nginx-200 ferry-304 nginx-304 ferry-ofrep)
target_args() {
    case $1 in
        ferry-200) echo "-H|Authorization: $CLIENT_TOKEN|$FEATURES" ;;
        nginx-200) echo "$STATIC" ;;
        ferry-304) echo "-H|Authorization: $CLIENT_TOKEN|-H|If-None-Match: $FERRY_ETAG|$FEATURES" ;;
        nginx-304) echo "-H|If-None-Match: $NGINX_ETAG|$STATIC" ;;
        ferry-ofrep) echo "-H|Authorization: $CLIENT_TOKEN|-s|$TMP/ofrep.lua|$OFREP" ;;
    esac
}
declare -A RPS P50 P99 ERRS
for round in $(seq "$ROUNDS"); do
    echo "===== round $round/$ROUNDS" >&2
    for t in "${TARGETS[@]}"; do
        IFS='|' read -r -a args <<<"$(target_args "$t")"
        wrk -t"$THREADS" -c"$CONNS" -d"$WARMUP" "${args[@]}" >/dev/null
        out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency "${args[@]}")
        echo "----- $t" >&2
        echo "$out" >&2
        read -r rps p50 p99 errs <<<"$(wrk_figures "$out")"
        echo "round: $t req/s=$rps p50=${p50}ms p99=${p99}ms errors=$errs" >&2
        RPS[$t]="${RPS[$t]:-} $rps"
        P50[$t]="${P50[$t]:-} $p50"
        P99[$t]="${P99[$t]:-} $p99"
        ERRS[$t]=$(( ${ERRS[$t]:-0} + errs ))
    done
done
declare -A ALL_RPS
for t in "${TARGETS[@]}"; do
    ALL_RPS[$t]=${RPS[$t]}
    RPS[$t]=$(median <<<"${RPS[$t]}")
    P50[$t]=$(median <<<"${P50[$t]}")
    P99[$t]=$(median <<<"${P99[$t]}")
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else printf "n/a" }'; }

echo
echo "wrk -t$THREADS -c$CONNS -d$DURATION --latency, median of $ROUNDS interleaved rounds; $FLAGS flags, document $BYTES bytes; $(nproc) CPUs; $(uname -srm)"
echo
echo "| target | req/s (median) | p50 ms | p99 ms | req/s vs nginx, same answer | errors |"
echo "| --- | ---: | ---: | ---: | ---: | ---: |"
for t in "${TARGETS[@]}"; do
    case $t in
        ferry-200) vs=$(ratio "${RPS[$t]}" "${RPS[nginx-200]}") ;;
        ferry-304) vs=$(ratio "${RPS[$t]}" "${RPS[nginx-304]}") ;;
        ferry-ofrep) vs="$(ratio "${RPS[$t]}" "${RPS[nginx-304]}") (vs nginx 304)" ;;
        *) vs="1.00" ;;
    esac
    echo "| $t | ${RPS[$t]} | ${P50[$t]} | ${P99[$t]} | $vs | ${ERRS[$t]} |"
done
echo
echo "errors are summed over all rounds; req/s of each round:"
for t in "${TARGETS[@]}"; do echo "  $t:${ALL_RPS[$t]}"; done

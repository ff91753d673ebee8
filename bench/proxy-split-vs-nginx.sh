#!/usr/bin/env bash
# Ferry proxy splitting 90/10 between two versions vs nginx doing a 90/10 weighted
# upstream split, on loopback, same upstreams, same run.
#
#   bench/proxy-split-vs-nginx.sh              # wrk -t2 -c64 -d10s --latency, 3 rounds
#   ROUNDS=5 DURATION=10s bench/proxy-split-vs-nginx.sh
#   SKIP_BUILD=1 bench/proxy-split-vs-nginx.sh # reuse target/release/{ferry,ferry-demo}
#   FERRY_CMD="target/release/examples/proxy" SKIP_BUILD=1 bench/proxy-split-vs-nginx.sh
#       # the proxy under test as a command that takes `--state-dir D --admin-listen A`
#       # (default: "target/release/ferry proxy")
#   ALT_PROXY=/path/to/proxy bench/proxy-split-vs-nginx.sh
#       # also runs a second proxy binary that takes `--state-dir D --admin-listen A`
#       # directly (e.g. target/release/examples/proxy, or a saved older build), as
#       # target "ferry-alt", interleaved with the others (A/B of two builds)
#   TASKSET_LOAD=1 TASKSET_SERVERS=0 ...       # pin wrk / the servers to CPU lists
#   UPSTREAM=nginx ...                         # static nginx upstreams instead of ferry-demo
#   NO_HAPROXY=1 ...                           # leave haproxy out (it runs when installed)
#
# Starts two `ferry-demo` upstreams (v1 and v2), a `ferry proxy` with one route
# `v1 9000 bp / v2 1000 bp` (PUT over its admin API) and a foreground nginx
# (`upstream { server v1 weight=9; server v2 weight=1; keepalive 64; }`,
# worker_processes auto, access log off). Runs wrk against direct (v1 only, as a
# reference), nginx and ferry in turn, ROUNDS times interleaved, and prints the medians.
#
# Observed split:
# - ferry, under the wrk load: per-version request counts from the proxy's `/v1/stats`
#   (difference before/after the measured runs).
# - both, in a bounded sample after the load: SAMPLE requests (default 2000) over one
#   keep-alive connection with curl, answers counted per version (`hello from demo vN`).
# Every process it starts is stopped on exit. Loopback only; bounded by DURATION x ROUNDS.
set -euo pipefail

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-2}
CONNS=${CONNS:-64}
SAMPLE=${SAMPLE:-2000}
CANARY_BP=${CANARY_BP:-1000}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then
    echo "installing nginx and wrk" >&2
    apt-get install -y nginx wrk >/dev/null
fi

if [[ -z "${SKIP_BUILD:-}" ]]; then
    echo "building (cargo build --release -p ferry)" >&2
    cargo build --release -p ferry >&2
fi
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
FERRY=${FERRY_BIN:-$TARGET_DIR/release/ferry}
DEMO=${DEMO_BIN:-$TARGET_DIR/release/ferry-demo}
if [[ -n "${FERRY_CMD:-}" ]]; then
    read -r -a FERRY_ARGV <<<"$FERRY_CMD"
    FERRY=${FERRY_ARGV[0]}
else
    FERRY_ARGV=("$FERRY" proxy)
fi
[[ "${UPSTREAM:-demo}" == nginx ]] && DEMO=""
for bin in "$FERRY" ${DEMO:+"$DEMO"} ${ALT_PROXY:+"$ALT_PROXY"}; do
    [[ -x "$bin" ]] || { echo "missing $bin" >&2; exit 1; }
done

LOAD_CPUS=${TASKSET_LOAD:-}
SERVER_CPUS=${TASKSET_SERVERS:-}
# Command prefixes (taskset execs the program, so $! stays the server's own pid).
PIN_LOAD=()
PIN_SERVERS=()
[[ -n "$LOAD_CPUS" ]] && PIN_LOAD=(taskset -c "$LOAD_CPUS")
[[ -n "$SERVER_CPUS" ]] && PIN_SERVERS=(taskset -c "$SERVER_CPUS")

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"   # TMP, PIDS (stopped on exit), free_port, wait_http

V1_PORT=$(free_port)
V2_PORT=$(free_port)
NGINX_PORT=$(free_port)

# 1. Upstreams (ferry-demo, or a static nginx with UPSTREAM=nginx).
start_upstream v1 "$V1_PORT" v1
start_upstream v2 "$V2_PORT" v2

# 2. Proxies under test: name, pid, listen port, admin port, token.
declare -A PORT ADMIN TOKEN PID
start_proxy() { # start_proxy NAME cmd...
    local name=$1; shift
    local dir="$TMP/$name" admin listen
    admin=$(free_port)
    listen=$(free_port)
    mkdir -p "$dir"
    "${PIN_SERVERS[@]}" "$@" --state-dir "$dir" --admin-listen "127.0.0.1:$admin" >"$TMP/$name.log" 2>&1 &
    PID[$name]=$!
    PIDS+=("${PID[$name]}")
    wait_http "http://127.0.0.1:$admin/healthz"
    TOKEN[$name]=$(cat "$dir/admin.token")
    cat >"$dir/routes.json" <<JSON
{"generation": 1, "listeners": [{"id": "bench/prod", "listen": "127.0.0.1:$listen",
  "routes": [{"service": "demo", "path_prefix": "/",
    "backends": [
      {"version": "v2", "weight": $CANARY_BP, "endpoints": ["127.0.0.1:$V2_PORT"]},
      {"version": "v1", "weight": $((10000 - CANARY_BP)), "endpoints": ["127.0.0.1:$V1_PORT"]}]}]}]}
JSON
    curl -fsS -X PUT -H "Authorization: Bearer ${TOKEN[$name]}" -H 'Content-Type: application/json' \
        --data-binary @"$dir/routes.json" "http://127.0.0.1:$admin/v1/routes" >/dev/null
    wait_http "http://127.0.0.1:$listen/"
    PORT[$name]=$listen
    ADMIN[$name]=$admin
}
TARGETS=(direct nginx ferry)
start_proxy ferry "${FERRY_ARGV[@]}"
if [[ -n "${ALT_PROXY:-}" ]]; then
    start_proxy ferry-alt "$ALT_PROXY"
    TARGETS+=(ferry-alt)
fi
PORT[direct]=$V1_PORT

# 3. nginx in the foreground with its own prefix.
mkdir -p "$TMP/nginx/logs"
V1_W=$(( (10000 - CANARY_BP) / 1000 ))
V2_W=$(( CANARY_BP / 1000 ))
cat >"$TMP/nginx/nginx.conf" <<CONF
worker_processes auto;
daemon off;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $TMP/nginx/client_body;
    proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fastcgi;
    uwsgi_temp_path $TMP/nginx/uwsgi;
    scgi_temp_path $TMP/nginx/scgi;
    upstream app {
        server 127.0.0.1:$V1_PORT weight=$V1_W;
        server 127.0.0.1:$V2_PORT weight=$V2_W;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
CONF
"${PIN_SERVERS[@]}" nginx -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -e "$TMP/nginx/logs/error.log" &
PID[nginx]=$!
PIDS+=("${PID[nginx]}")
PORT[nginx]=$NGINX_PORT
wait_http "http://127.0.0.1:$NGINX_PORT/"

# 3b. haproxy (when installed; NO_HAPROXY=1 leaves it out): the same weighted split,
# keep-alive to the upstreams, one process with a thread per CPU.
if command -v haproxy >/dev/null && [[ -z "${NO_HAPROXY:-}" ]]; then
    HAPROXY_PORT=$(free_port)
    cat >"$TMP/haproxy.cfg" <<CONF
global
    maxconn 4096
    nbthread $(nproc)
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    option http-keep-alive
    http-reuse always
frontend fe
    bind 127.0.0.1:$HAPROXY_PORT
    default_backend app
backend app
    balance roundrobin
    server v1 127.0.0.1:$V1_PORT weight $V1_W
    server v2 127.0.0.1:$V2_PORT weight $V2_W
CONF
    "${PIN_SERVERS[@]}" haproxy -f "$TMP/haproxy.cfg" -db >"$TMP/haproxy.log" 2>&1 &
    PID[haproxy]=$!
    PIDS+=("${PID[haproxy]}")
    PORT[haproxy]=$HAPROXY_PORT
    wait_http "http://127.0.0.1:$HAPROXY_PORT/"
    TARGETS=(direct nginx haproxy "${TARGETS[@]:2}")
fi

# 4. Load, in turn.
to_ms() {
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
        else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.3f", v * 1000 }
        else printf "nan" }'
}
# per-version request counts of a ferry proxy: "v1 v2"
ferry_counts() {
    curl -fsS -H "Authorization: Bearer ${TOKEN[$1]}" "http://127.0.0.1:${ADMIN[$1]}/v1/stats" |
        python3 -c 'import json,sys
c={v["version"]: v["requests"] for v in json.load(sys.stdin)["versions"]}
print(c.get("v1", 0), c.get("v2", 0))'
}
declare -A RPS P50 P99 ERRS SPLIT_LOAD
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
run_wrk() {
    local name=$1 port=$2 out rps p50 p99 errs
    "${PIN_LOAD[@]}" wrk -t"$THREADS" -c"$CONNS" -d"$WARMUP" "http://127.0.0.1:$port/" >/dev/null
    out=$("${PIN_LOAD[@]}" wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency "http://127.0.0.1:$port/")
    echo "----- $name (127.0.0.1:$port)" >&2
    echo "$out" >&2
    rps=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' <<<"$out")
    p50=$(to_ms "$(awk '$1 == "50%" { print $2 }' <<<"$out")")
    p99=$(to_ms "$(awk '$1 == "99%" { print $2 }' <<<"$out")")
    errs=$(awk '/Non-2xx or 3xx responses:/ { n += $NF } /Socket errors:/ { gsub(/,/, ""); n += $4 + $6 + $8 + $10 } END { print n + 0 }' <<<"$out")
    echo "round: $name req/s=$rps p50=${p50}ms p99=${p99}ms errors=$errs" >&2
    RPS[$name]="${RPS[$name]:-} $rps"
    P50[$name]="${P50[$name]:-} $p50"
    P99[$name]="${P99[$name]:-} $p99"
    ERRS[$name]=$(( ${ERRS[$name]:-0} + errs ))
}
declare -A BEFORE
for t in "${TARGETS[@]}"; do
    [[ $t == ferry* ]] && BEFORE[$t]=$(ferry_counts "$t")
done
for round in $(seq "$ROUNDS"); do
    echo "===== round $round/$ROUNDS" >&2
    for t in "${TARGETS[@]}"; do
        run_wrk "$t" "${PORT[$t]}"
    done
done
for t in "${TARGETS[@]}"; do
    if [[ $t == ferry* ]]; then
        read -r b1 b2 <<<"${BEFORE[$t]}"
        read -r a1 a2 <<<"$(ferry_counts "$t")"
        SPLIT_LOAD[$t]=$(awk -v v1=$((a1 - b1)) -v v2=$((a2 - b2)) 'BEGIN { printf "%d / %d = %.2f %% v2", v1, v2, 100 * v2 / (v1 + v2) }')
    fi
done

# 5. Bounded split sample: SAMPLE sequential requests on one keep-alive connection.
sample_split() {
    local port=$1 urls=() i
    for ((i = 0; i < SAMPLE; i++)); do urls+=("http://127.0.0.1:$port/"); done
    curl -fsS --max-time 60 "${urls[@]}" | awk '/demo v1$/ { a++ } /demo v2$/ { b++ } END { printf "%d / %d = %.2f %% v2", a, b, 100 * b / (a + b) }'
}
declare -A SPLIT_SAMPLE
for t in "${TARGETS[@]}"; do
    [[ $t == direct ]] && continue
    SPLIT_SAMPLE[$t]=$(sample_split "${PORT[$t]}")
done

declare -A ALL_RPS
for t in "${TARGETS[@]}"; do
    ALL_RPS[$t]=${RPS[$t]}
    RPS[$t]=$(median <<<"${RPS[$t]}")
    P50[$t]=$(median <<<"${P50[$t]}")
    P99[$t]=$(median <<<"${P99[$t]}")
done

hwm_kb() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
rss_of() {
    local t=$1 kb
    case $t in
        nginx)
            kb=$(hwm_kb "${PID[nginx]}")
            for w in $(pgrep -P "${PID[nginx]}" || true); do kb=$(( kb + $(hwm_kb "$w") )); done
            echo "$(( kb / 1024 )) MiB (master + workers)" ;;
        ferry* | haproxy) echo "$(( $(hwm_kb "${PID[$t]}") / 1024 )) MiB" ;;
        *) echo "-" ;;
    esac
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else printf "n/a" }'; }

echo
echo "90/10 split (v1 $((10000 - CANARY_BP)) bp, v2 $CANARY_BP bp). wrk -t$THREADS -c$CONNS -d$DURATION --latency, median of $ROUNDS interleaved rounds; $(nproc) CPUs; $(uname -srm)${LOAD_CPUS:+; wrk on CPUs $LOAD_CPUS}${SERVER_CPUS:+; servers on CPUs $SERVER_CPUS}"
echo
echo "| target | req/s (median) | p50 ms | p99 ms | req/s vs nginx | req/s vs direct | errors | split under load (v1 / v2) | split, $SAMPLE-request sample (v1 / v2) | peak RSS |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: |"
for t in "${TARGETS[@]}"; do
    label=$t
    [[ $t == direct ]] && label="direct (v1 only)"
    echo "| $label | ${RPS[$t]} | ${P50[$t]} | ${P99[$t]} | $(ratio "${RPS[$t]}" "${RPS[nginx]}") | $(ratio "${RPS[$t]}" "${RPS[direct]}") | ${ERRS[$t]} | ${SPLIT_LOAD[$t]:--} | ${SPLIT_SAMPLE[$t]:--} | $(rss_of "$t") |"
done
echo
echo -n "errors are summed over all rounds; req/s of each round:"
for t in "${TARGETS[@]}"; do echo -n " $t:${ALL_RPS[$t]} /"; done
echo
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"


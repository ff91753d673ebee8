#!/usr/bin/env bash
# Instructions per proxied request, counted exactly by valgrind (callgrind), for machines
# without hardware performance counters (where `perf stat -e instructions` says "not
# supported", e.g. most VMs) and for runs on a busy machine: the count does not depend on
# the load, only on the code.
#
#   SKIP_BUILD=1 bench/proxy-instructions.sh                   # ferry (examples/proxy) vs nginx
#   SKIP_BUILD=1 ALT_PROXY=/tmp/proxy-old bench/proxy-instructions.sh   # + an older build
#   REQUESTS_FOR=5s CONNS=16 ...
#   HOSTS=100 ...   # host routing: 100 sites (site1.example … site100.example) share the
#                   # listener, in ferry (one environment per host) and in nginx (one
#                   # server block each); wrk asks for the middle one by Host
#
# Each proxy runs under `valgrind --tool=callgrind` (nginx with `master_process off`, so
# one process does everything), in front of the same static nginx upstream (not
# instrumented), with the 90/10 split of proxy-split-vs-nginx.sh. After a 2 s warm-up the
# counters are zeroed, wrk runs for REQUESTS_FOR, the counters are dumped: user-space
# instructions (all threads) / requests completed. Kernel work is not counted. Valgrind
# slows the proxy ~50x: the req/s it reaches mean nothing. Loopback only.
# Also writes each profile to $OUT (default /tmp/ferry-callgrind): `callgrind_annotate
# --inclusive=yes $OUT/ferry.out | less` shows where the instructions go.
set -euo pipefail

REQUESTS_FOR=${REQUESTS_FOR:-5s}
HOSTS=${HOSTS:-0}
WRK_HOST=()
if (( HOSTS > 0 )); then
    WRK_HOST=(-H "Host: site$(( HOSTS / 2 + 1 )).example")
fi
CONNS=${CONNS:-16}
OUT=${OUT:-/tmp/ferry-callgrind}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
for tool in valgrind callgrind_control wrk nginx; do
    command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install valgrind wrk nginx)" >&2; exit 1; }
done
if [[ -z "${SKIP_BUILD:-}" ]]; then
    cargo build --release -p ferry-proxy --example proxy >&2
fi
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
FERRY=${FERRY_BIN:-$TARGET_DIR/release/examples/proxy}

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
PIN_SERVERS=()
mkdir -p "$OUT"

V1_PORT=$(free_port)
V2_PORT=$(free_port)
UPSTREAM=nginx start_upstream v1 "$V1_PORT" v1
UPSTREAM=nginx start_upstream v2 "$V2_PORT" v2

# callgrind_run NAME PORT CMD...: starts CMD under callgrind; sets VG_PID.
callgrind_run() {
    local name=$1; shift
    rm -f "$OUT/$name.out"*
    valgrind --tool=callgrind --callgrind-out-file="$OUT/$name.out" "$@" >"$TMP/$name.vg.log" 2>&1 &
    VG_PID=$!
    PIDS+=("$VG_PID")
}

declare -A PORT VG
start_ferry() { # start_ferry NAME BINARY
    local name=$1 bin=$2 admin dir="$TMP/$1"
    admin=$(free_port)
    PORT[$name]=$(free_port)
    mkdir -p "$dir"
    callgrind_run "$name" "$bin" --state-dir "$dir" --admin-listen "127.0.0.1:$admin"
    VG[$name]=$VG_PID
    for _ in $(seq 300); do curl -fsS -o /dev/null "http://127.0.0.1:$admin/healthz" 2>/dev/null && break; sleep 0.2; done
    local listeners="" i
    for i in $(seq "$(( HOSTS > 0 ? HOSTS : 1 ))"); do
        local hosts='[]'
        (( HOSTS > 0 )) && hosts="[\"site$i.example\"]"
        listeners+="${listeners:+,}"'{"id": "bench/prod'"$i"'", "listen": "127.0.0.1:'"${PORT[$name]}"'", "hosts": '"$hosts"',
  "routes": [{"service": "demo", "path_prefix": "/",
    "backends": [
      {"version": "v2", "weight": 1000, "endpoints": ["127.0.0.1:'"$V2_PORT"'"]},
      {"version": "v1", "weight": 9000, "endpoints": ["127.0.0.1:'"$V1_PORT"'"]}]}]}'
    done
    echo '{"generation": 1, "listeners": ['"$listeners"']}' >"$dir/table.json"
    curl -fsS -X PUT -H "Authorization: Bearer $(cat "$dir/admin.token")" -H 'Content-Type: application/json' \
        --data-binary @"$dir/table.json" "http://127.0.0.1:$admin/v1/routes" >/dev/null
    wait_http "http://127.0.0.1:${PORT[$name]}/" "${WRK_HOST[@]}"
}

TARGETS=(nginx ferry)
PORT[nginx]=$(free_port)
mkdir -p "$TMP/nginx/logs"
cat >"$TMP/nginx/nginx.conf" <<CONF
master_process off;
worker_processes 1;
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
        server 127.0.0.1:$V1_PORT weight=9;
        server 127.0.0.1:$V2_PORT weight=1;
        keepalive 64;
    }
$(for i in $(seq "$(( HOSTS > 0 ? HOSTS : 1 ))"); do
    (( HOSTS > 0 )) && name="server_name site$i.example;" || name=""
    echo "    server {
        listen 127.0.0.1:${PORT[nginx]};
        $name
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }
    }"
done)
}
CONF
callgrind_run nginx "$(command -v nginx)" -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -e "$TMP/nginx/logs/error.log"
VG[nginx]=$VG_PID
for _ in $(seq 300); do curl -fsS -o /dev/null "${WRK_HOST[@]}" "http://127.0.0.1:${PORT[nginx]}/" 2>/dev/null && break; sleep 0.2; done
start_ferry ferry "$FERRY"
if [[ -n "${ALT_PROXY:-}" ]]; then
    start_ferry ferry-alt "$ALT_PROXY"
    TARGETS+=(ferry-alt)
fi

echo "| proxy | requests | user instructions | instructions / request | vs nginx |"
echo "| --- | ---: | ---: | ---: | ---: |"
declare -A PER
for t in "${TARGETS[@]}"; do
    url="http://127.0.0.1:${PORT[$t]}/"
    wrk -t2 -c"$CONNS" -d2s "${WRK_HOST[@]}" "$url" >/dev/null
    callgrind_control -z "${VG[$t]}" >/dev/null
    requests=$(wrk -t2 -c"$CONNS" -d"$REQUESTS_FOR" "${WRK_HOST[@]}" "$url" | awk '/requests in/ { print $1 }')
    callgrind_control -d "${VG[$t]}" >/dev/null
    dump=""
    for _ in $(seq 100); do
        dump=$(ls -t "$OUT/$t.out".* 2>/dev/null | head -1 || true)
        [[ -n "$dump" ]] && grep -q '^totals:' "$dump" && break
        sleep 0.2
    done
    total=$(awk '/^totals:/ { print $2 }' "$dump")
    PER[$t]=$(( total / requests ))
    echo "| $t | $requests | $total | ${PER[$t]} | $(awk -v a="${PER[$t]}" -v b="${PER[nginx]}" 'BEGIN { printf "%.2f", a / b }') |"
    cp "$dump" "$OUT/$t.out"
done

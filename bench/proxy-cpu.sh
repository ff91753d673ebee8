#!/usr/bin/env bash
# CPU per proxied request, ferry proxy vs nginx, same upstream, same run: the figure that
# stays comparable on a busy machine (instruction counts barely move with the load).
#
#   bench/proxy-cpu.sh                       # wrk -t2 -c64, 4 s per measurement, 3 rounds
#   SKIP_BUILD=1 ALT_PROXY=/tmp/proxy-old bench/proxy-cpu.sh
#       # also measures a second proxy binary taking `--state-dir D --admin-listen A`
#       # (e.g. `target/release/examples/proxy` of an older commit)
#   FERRY_CMD=target/release/examples/proxy SKIP_BUILD=1 bench/proxy-cpu.sh
#       # the proxy under test as a stand-alone binary instead of `ferry proxy`
#   UPSTREAM=nginx ...   # a static nginx upstream instead of ferry-demo
#
# For each target in turn (ROUNDS times, interleaved) it runs wrk and, over the same
# DURATION, `perf stat -e instructions:u,instructions:k` on the proxy's processes (nginx:
# its workers), then prints the medians per request. Loopback only; needs perf, wrk, nginx.
set -euo pipefail

DURATION=${DURATION:-4}   # seconds
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-2}
CONNS=${CONNS:-64}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
for tool in perf wrk nginx; do
    command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install linux-perf wrk nginx)" >&2; exit 1; }
done
if [[ -z "${SKIP_BUILD:-}" ]]; then
    echo "building (cargo build --release -p ferry)" >&2
    cargo build --release -p ferry >&2
fi
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
FERRY="$TARGET_DIR/release/ferry"
DEMO="$TARGET_DIR/release/ferry-demo"

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

UP_PORT=$(free_port)
PIN_SERVERS=()
start_upstream demo "$UP_PORT" bench

declare -A PORT PROCS
TARGETS=(nginx ferry)
PORT[nginx]=$(free_port)
start_nginx "${PORT[nginx]}" "$UP_PORT"
PROCS[nginx]=$(pgrep -d, -P "$NGINX_PID")
PORT[ferry]=$(free_port)
if [[ -n "${FERRY_CMD:-}" ]]; then read -r -a FERRY_ARGV <<<"$FERRY_CMD"; else FERRY_ARGV=("$FERRY" proxy); fi
start_ferry_proxy ferry "${PORT[ferry]}" "$UP_PORT" "${FERRY_ARGV[@]}"
PROCS[ferry]=$PROXY_PID
if [[ -n "${ALT_PROXY:-}" ]]; then
    TARGETS+=(ferry-alt)
    PORT[ferry-alt]=$(free_port)
    start_ferry_proxy ferry-alt "${PORT[ferry-alt]}" "$UP_PORT" "$ALT_PROXY"
    PROCS[ferry-alt]=$PROXY_PID
fi

declare -A USER KERNEL RPS
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.1f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
measure() {
    local name=$1 url="http://127.0.0.1:${PORT[$1]}/" perf_out wrk_out requests user kernel
    wrk -t"$THREADS" -c"$CONNS" -d1s "$url" >/dev/null
    perf stat -x, -e instructions:u,instructions:k -p "${PROCS[$name]}" -o "$TMP/perf.$name" -- sleep "$DURATION" &
    local perf_pid=$!
    wrk_out=$(wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" "$url")
    wait "$perf_pid"
    requests=$(awk '/requests in/ { print $1 }' <<<"$wrk_out")
    user=$(awk -F, '$3 ~ /instructions:u/ { print $1 }' "$TMP/perf.$name")
    kernel=$(awk -F, '$3 ~ /instructions:k/ { print $1 }' "$TMP/perf.$name")
    USER[$name]="${USER[$name]:-} $(awk -v i="$user" -v r="$requests" 'BEGIN { printf "%.0f", i / r }')"
    KERNEL[$name]="${KERNEL[$name]:-} $(awk -v i="$kernel" -v r="$requests" 'BEGIN { printf "%.0f", i / r }')"
    RPS[$name]="${RPS[$name]:-} $(awk -v r="$requests" -v d="$DURATION" 'BEGIN { printf "%.0f", r / d }')"
    echo "round: $name requests=$requests user_instr=$user kernel_instr=$kernel" >&2
}
for round in $(seq "$ROUNDS"); do
    echo "===== round $round/$ROUNDS" >&2
    for t in "${TARGETS[@]}"; do measure "$t"; done
done

echo
echo "wrk -t$THREADS -c$CONNS, ${DURATION}s per measurement, median of $ROUNDS interleaved rounds; $(nproc) CPUs; $(uname -srm); load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| proxy | user instructions / req | kernel instructions / req | user instr. vs nginx | req/s (noisy) |"
echo "| --- | ---: | ---: | ---: | ---: |"
NGINX_USER=$(median <<<"${USER[nginx]}")
for t in "${TARGETS[@]}"; do
    u=$(median <<<"${USER[$t]}")
    echo "| $t | $u | $(median <<<"${KERNEL[$t]}") | $(awk -v a="$u" -v b="$NGINX_USER" 'BEGIN { printf "%.2f", a / b }') | $(median <<<"${RPS[$t]}") |"
done

#!/usr/bin/env bash
# Ferry proxy vs nginx vs direct, on loopback, same upstream, same run.
#
#   bench/proxy-vs-nginx.sh            # defaults: wrk -t2 -c64 -d10s --latency
#   DURATION=30s CONNS=128 ROUNDS=5 bench/proxy-vs-nginx.sh
#   SKIP_BUILD=1 bench/proxy-vs-nginx.sh   # reuse target/release/{ferry,ferry-demo}
#
# Builds `cargo build --release -p ferry`, starts one `ferry-demo` upstream, a
# `ferry proxy` (route table PUT over its admin API) and a foreground nginx (own prefix,
# worker_processes auto, upstream keepalive 64) in front of the same upstream, runs wrk
# against direct, nginx and ferry in turn (ROUNDS times, interleaved, so background noise
# hits all three alike), and prints a markdown table of the medians. Every process it
# starts is stopped on exit. Loopback only; bounded by DURATION.
set -euo pipefail

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
ROUNDS=${ROUNDS:-3}   # direct, nginx, ferry run in turn ROUNDS times; medians are reported
THREADS=${THREADS:-2}
CONNS=${CONNS:-64}
PATH_UNDER_TEST=${PATH_UNDER_TEST:-/}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then
    echo "installing nginx and wrk" >&2
    apt-get install -y nginx wrk >/dev/null
fi

if [[ -z "${SKIP_BUILD:-}" ]]; then   # SKIP_BUILD=1: use the binaries already built
    echo "building (cargo build --release -p ferry)" >&2
    cargo build --release -p ferry >&2
fi
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
FERRY="$TARGET_DIR/release/ferry"
DEMO="$TARGET_DIR/release/ferry-demo"
for bin in "$FERRY" "$DEMO"; do
    [[ -x "$bin" ]] || { echo "missing $bin" >&2; exit 1; }
done

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

UP_PORT=$(free_port)
FERRY_PORT=$(free_port)
NGINX_PORT=$(free_port)

# 1. Upstream.
"$DEMO" --port "$UP_PORT" --version bench >"$TMP/demo.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$UP_PORT/"

# 2. Ferry proxy + route table, 3. nginx (bench/lib.sh).
start_ferry_proxy ferry "$FERRY_PORT" "$UP_PORT" "$FERRY" proxy
FERRY_PID=$PROXY_PID
start_nginx "$NGINX_PORT" "$UP_PORT"

# 4. Load, in turn.
to_ms() { # "1.23ms" / "456.00us" / "1.20s" -> ms
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
        else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.3f", v * 1000 }
        else printf "nan" }'
}
declare -A RPS P50 P99 ERRS
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
run_wrk() {
    local name=$1 port=$2 out rps p50 p99 errs
    wrk -t"$THREADS" -c"$CONNS" -d"$WARMUP" "http://127.0.0.1:$port$PATH_UNDER_TEST" >/dev/null
    out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency "http://127.0.0.1:$port$PATH_UNDER_TEST")
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
for round in $(seq "$ROUNDS"); do
    echo "===== round $round/$ROUNDS" >&2
    run_wrk direct "$UP_PORT"
    run_wrk nginx "$NGINX_PORT"
    run_wrk ferry "$FERRY_PORT"
done
declare -A ALL_RPS
for t in direct nginx ferry; do
    ALL_RPS[$t]=${RPS[$t]}
    RPS[$t]=$(median <<<"${RPS[$t]}")
    P50[$t]=$(median <<<"${P50[$t]}")
    P99[$t]=$(median <<<"${P99[$t]}")
done

hwm_kb() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
FERRY_HWM=$(hwm_kb "$FERRY_PID")
NGINX_HWM=$(( $(hwm_kb "$NGINX_PID") ))
for w in $(pgrep -P "$NGINX_PID" || true); do NGINX_HWM=$(( NGINX_HWM + $(hwm_kb "$w") )); done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else printf "n/a" }'; }
minus() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }

echo
echo "wrk -t$THREADS -c$CONNS -d$DURATION --latency http://127.0.0.1:PORT$PATH_UNDER_TEST, median of $ROUNDS interleaved rounds; $(nproc) CPUs; $(uname -srm)"
echo
echo "| target | req/s (median) | p50 ms | p99 ms | added p99 ms vs direct | req/s vs nginx | req/s vs direct | errors | peak RSS |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for t in direct nginx ferry; do
    case $t in
        ferry) rss="$(( FERRY_HWM / 1024 )) MiB" ;;
        nginx) rss="$(( NGINX_HWM / 1024 )) MiB (master + workers)" ;;
        *) rss="-" ;;
    esac
    added=$([[ $t == direct ]] && echo "-" || minus "${P99[$t]}" "${P99[direct]}")
    echo "| $t | ${RPS[$t]} | ${P50[$t]} | ${P99[$t]} | $added | $(ratio "${RPS[$t]}" "${RPS[nginx]}") | $(ratio "${RPS[$t]}" "${RPS[direct]}") | ${ERRS[$t]} | $rss |"
done
echo
echo "errors are summed over all rounds; req/s of each round: direct:${ALL_RPS[direct]} / nginx:${ALL_RPS[nginx]} / ferry:${ALL_RPS[ferry]}"
echo "ferry throughput vs nginx: $(ratio "${RPS[ferry]}" "${RPS[nginx]}")x; ferry added p99: $(minus "${P99[ferry]}" "${P99[direct]}") ms, nginx added p99: $(minus "${P99[nginx]}" "${P99[direct]}") ms"

#!/usr/bin/env bash
# A rolling update of 3 replicas end to end, on the process runtime and on Docker, and the
# server's memory meanwhile.
#
#   bench/runtime-rollout.sh                     # 3 runs per runtime, 100 req/s
#   RUNS=5 RUNTIMES=docker bench/runtime-rollout.sh
#   SKIP_BUILD=1 bench/runtime-rollout.sh        # reuse target/release/{ferry,ferry-demo}
#   KEEP=1 bench/runtime-rollout.sh              # keep the temporary directory
#   PROFILE=debug SKIP_BUILD=1 bench/runtime-rollout.sh   # target/debug (quick check only)
#
# Per runtime: starts `ferry server` on a temporary data dir, deploys `ferry-demo` 1.0.0 as
# 3 replicas (rolling, max_surge 1, max_unavailable 0; health every 300 ms), measures the
# server's resident memory (VmRSS of the `ferry server` process, sampled every 100 ms for
# 3 s) idle, then RUNS times deploys the next version with `ferry deploy --wait` under a
# bounded client loop (RATE req/s through the proxy) and measures:
#   wall     from `ferry deploy` to its return (succeeded: 3 new replicas healthy, in
#            traffic, the old ones drained and stopped)
#   rss      the server's peak VmRSS during the rollout
#   failed   client requests that failed during the rollout (must be 0)
# The Docker runtime needs an engine (`dockerd --iptables=false --bridge=none`); its image
# is built here like the tests' (`docker import` of ferry-demo and its libraries, USER
# 65534). Every process and container it starts is removed on exit.
set -euo pipefail

RUNS=${RUNS:-3}
RATE=${RATE:-100}
CLIENTS=${CLIENTS:-2}
RUNTIMES=${RUNTIMES:-"process docker"}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh" # TMP, PIDS, build_ferry, start/stop_ferry_server, free_port
build_ferry

LOAD_PID=""
SAMPLER_PID=""
IMAGE=ferry-bench/demo
# after the server's teardown (bench/lib.sh): the load and sampler, leftover containers
bench_extra_cleanup() {
    for pid in "$LOAD_PID" "$SAMPLER_PID"; do
        if [[ -n "$pid" ]]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    done
    if command -v docker >/dev/null && docker version >/dev/null 2>&1; then
        left=$(docker ps -aq --filter "label=ferry.owner=$TMP/data" 2>/dev/null || true)
        [[ -z "$left" ]] || docker rm -f $left >/dev/null 2>&1 || true
    fi
}

# rss_kib PID: the process's resident memory in KiB.
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# sample_rss PID OUT: one VmRSS line every 100 ms into OUT until SIGTERM.
sample_rss() {
    local pid=$1 out=$2
    trap 'exit 0' TERM
    while kill -0 "$pid" 2>/dev/null; do
        rss_kib "$pid" >>"$out"
        sleep 0.1
    done
}

build_image() {
    local root="$TMP/image" bin lib
    mkdir -p "$root/bin" "$root/tmp"
    cp "$DEMO" "$root/ferry-demo"
    for bin in "$DEMO" /bin/sh; do
        [[ "$bin" == "$DEMO" ]] || cp "$bin" "$root/bin/"
        for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
            mkdir -p "$root$(dirname "$lib")"
            cp "$lib" "$root$lib"
        done
    done
    tar -C "$root" -c . | docker import --change 'USER 65534:65534' \
        --change 'CMD ["/ferry-demo"]' - "$IMAGE:1.0.0" >/dev/null
    for n in $(seq "$RUNS"); do docker tag "$IMAGE:1.0.0" "$IMAGE:1.$n.0"; done
}

write_manifest() { # $1: runtime
    local workload runtime=""
    if [[ $1 == docker ]]; then
        workload="image: $IMAGE:\${VERSION}
    resources: { memory: 128Mi, cpus: 0.5 }"
        runtime="    runtime: docker"
    else
        workload="run: [\"$DEMO\"]"
    fi
    cat >"$TMP/ferry.yaml" <<EOF
app: bench
services:
  web:
    $workload
    replicas: 3
    stop_timeout: 5s
    health: { path: /health, interval: 300ms, timeout: 300ms }
environments:
  production:
    listen: 127.0.0.1:$LISTEN_PORT
    strategy: { rolling: { max_surge: 1, max_unavailable: 0 } }
$runtime
EOF
}

RESULTS="$TMP/results.txt"
: >"$RESULTS"
for runtime in $RUNTIMES; do
    if [[ $runtime == docker ]]; then
        docker version >/dev/null 2>&1 || { echo "no Docker engine answers: start one (dockerd --iptables=false --bridge=none)" >&2; exit 1; }
        build_image
    fi
    LISTEN_PORT=$(free_port)
    start_ferry_server "$TMP/server-$runtime.log"
    write_manifest "$runtime"
    "$FERRY" apply -f "$TMP/ferry.yaml" >/dev/null
    "$FERRY" deploy bench --env production --version 1.0.0 --wait --timeout 3m >/dev/null

    : >"$TMP/rss-idle.txt"
    sample_rss "$SERVER_PID" "$TMP/rss-idle.txt" &
    SAMPLER_PID=$!
    sleep 3
    kill -TERM "$SAMPLER_PID"; wait "$SAMPLER_PID" || true; SAMPLER_PID=""
    idle=$(sort -n "$TMP/rss-idle.txt" | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}')

    for n in $(seq "$RUNS"); do
        version="1.$n.0"
        python3 "$ROOT/bench/load.py" "$TMP/load-$runtime-$n.txt" "$LISTEN_PORT" "$RATE" "$CLIENTS" &
        LOAD_PID=$!
        : >"$TMP/rss-$runtime-$n.txt"
        sample_rss "$SERVER_PID" "$TMP/rss-$runtime-$n.txt" &
        SAMPLER_PID=$!
        sleep 0.5
        start=$(date +%s%N)
        "$FERRY" deploy bench --env production --version "$version" --wait --timeout 3m >"$TMP/deploy-$runtime-$n.out" 2>&1 ||
            { echo "$runtime run $n: deploy of $version failed" >&2; cat "$TMP/deploy-$runtime-$n.out" >&2; exit 1; }
        wall=$(( ($(date +%s%N) - start) / 1000000 ))
        kill -TERM "$SAMPLER_PID"; wait "$SAMPLER_PID" || true; SAMPLER_PID=""
        sleep 0.3
        kill -TERM "$LOAD_PID"; wait "$LOAD_PID" || true; LOAD_PID=""
        peak=$(sort -n "$TMP/rss-$runtime-$n.txt" | tail -1)
        requests=$(wc -l <"$TMP/load-$runtime-$n.txt")
        failed=$(awk '$2 != 200' "$TMP/load-$runtime-$n.txt" | wc -l)
        echo "$runtime $wall $idle $peak $requests $failed" >>"$RESULTS"
        echo "$runtime run $n (→ $version): $wall ms, server RSS idle $((idle / 1024)) MiB, peak $((peak / 1024)) MiB, $requests requests, $failed failed" >&2
    done
    stop_ferry_server
done

echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs" >&2
python3 - "$RESULTS" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
print("| runtime | runs | rolling update of 3 replicas, wall (median / max) | server RSS idle | server RSS peak during it (max) | requests | failed |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for runtime in dict.fromkeys(r[0] for r in rows):
    rs = [r for r in rows if r[0] == runtime]
    wall = [int(r[1]) for r in rs]
    print("| %s | %d | %.1f s / %.1f s | %.1f MiB | %.1f MiB | %d | %d |" % (
        runtime, len(rs), statistics.median(wall) / 1000, max(wall) / 1000,
        int(rs[0][2]) / 1024, max(int(r[3]) for r in rs) / 1024,
        sum(int(r[4]) for r in rs), sum(int(r[5]) for r in rs)))
EOF

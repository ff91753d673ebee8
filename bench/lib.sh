# Shared by the benchmarks: process cleanup, ports, readiness, the binaries, a `ferry server`
# on a temporary data directory, and the two proxies under test (a `ferry proxy` fed one
# route table, a foreground nginx). Source it after `set -euo pipefail`; it sets TMP and an
# EXIT trap that stops everything started here: the processes in PIDS, the server
# (`stop_ferry_server`), then whatever the script's own `bench_extra_cleanup` does, if it
# defines one. KEEP=1 keeps TMP (logs, data).

TMP=$(mktemp -d /tmp/ferry-bench.XXXXXX)
chmod 0755 "$TMP" # replicas run as nobody when this runs as root
PIDS=()
SERVER_PID=""
bench_cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    stop_ferry_server
    if declare -F bench_extra_cleanup >/dev/null; then bench_extra_cleanup || true; fi
    if [[ -n "${KEEP:-}" ]]; then echo "kept $TMP" >&2; else rm -rf "$TMP"; fi
}
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

# build_ferry: `cargo build --release -p ferry` unless SKIP_BUILD is set; sets FERRY and DEMO
# to the binaries of PROFILE (release by default; `PROFILE=debug` for a quick check only).
build_ferry() {
    if [[ -z "${SKIP_BUILD:-}" ]]; then
        echo "building (cargo build --release -p ferry)" >&2
        cargo build --release -p ferry >&2
    fi
    local target_dir bin
    target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
    FERRY="$target_dir/${PROFILE:-release}/ferry"
    DEMO="$target_dir/${PROFILE:-release}/ferry-demo"
    for bin in "$FERRY" "$DEMO"; do
        [[ -x "$bin" ]] || { echo "missing $bin" >&2; exit 1; }
    done
}

# start_ferry_server LOG: `ferry server` on a free port with data in $TMP/data (emptied
# first), up to 30 s for /readyz; sets SERVER_PID and exports FERRY_URL, FERRY_TOKEN and
# FERRY_CONFIG for the CLI.
start_ferry_server() {
    local port
    rm -rf "$TMP/data"
    port=$(free_port)
    export FERRY_URL="http://127.0.0.1:$port"
    "$FERRY" server --data "$TMP/data" --listen "127.0.0.1:$port" >"$1" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 300); do
        curl -fsS -o /dev/null "$FERRY_URL/readyz" 2>/dev/null && break
        sleep 0.1
    done
    FERRY_TOKEN=$(cat "$TMP/data/admin.token")
    export FERRY_TOKEN
    export FERRY_CONFIG="$TMP/cli.json"
}

# stop_ferry_server: teardown (the server stops the replicas, containers included, and the
# proxy, then itself), SIGKILL after 10 s.
stop_ferry_server() {
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        curl -fsS -m 60 -X POST -H "Authorization: Bearer ${FERRY_TOKEN:-}" \
            -H 'Content-Type: application/json' -d '{}' "$FERRY_URL/v1/teardown" >/dev/null 2>&1 || true
        for _ in $(seq 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=""
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# wait_http URL [curl args...]: up to 10 s for a 2xx answer.
wait_http() {
    local url=$1; shift
    for _ in $(seq 100); do
        if curl -fsS -o /dev/null "$@" "$url" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "timed out waiting for $url" >&2
    return 1
}

# start_ferry_proxy NAME LISTEN_PORT UPSTREAM_PORT CMD...: a proxy (`CMD --state-dir D
# --admin-listen A`) routing everything on LISTEN_PORT to the upstream. Sets PROXY_PID.
start_ferry_proxy() {
    local name=$1 listen=$2 upstream=$3; shift 3
    local dir="$TMP/$name" admin token
    admin=$(free_port)
    mkdir -p "$dir"
    "$@" --state-dir "$dir" --admin-listen "127.0.0.1:$admin" >"$TMP/$name.log" 2>&1 &
    PROXY_PID=$!
    PIDS+=("$PROXY_PID")
    wait_http "http://127.0.0.1:$admin/healthz"
    token=$(cat "$dir/admin.token")
    cat >"$dir/table.json" <<JSON
{"generation": 1, "listeners": [{"id": "bench/prod", "listen": "127.0.0.1:$listen",
  "routes": [{"service": "demo", "path_prefix": "/",
    "backends": [{"version": "bench", "weight": 10000, "endpoints": ["127.0.0.1:$upstream"]}]}]}]}
JSON
    curl -fsS -X PUT -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
        --data-binary @"$dir/table.json" "http://127.0.0.1:$admin/v1/routes" >/dev/null
    wait_http "http://127.0.0.1:$listen/"
}

# run_nginx DIR WORKERS HTTP_BODY: a foreground nginx with its own prefix DIR (pid, error log
# and temporary paths inside it, access log off), worker_processes WORKERS, HTTP_BODY inside
# its `http` block. Its pid is added to PIDS and set in LAST_NGINX_PID.
run_nginx() {
    local dir=$1 workers=$2 body=$3
    mkdir -p "$dir/logs"
    cat >"$dir/nginx.conf" <<CONF
worker_processes $workers;
daemon off;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
$body
}
CONF
    nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/logs/error.log" &
    LAST_NGINX_PID=$!
    PIDS+=("$LAST_NGINX_PID")
}

# start_nginx LISTEN_PORT UPSTREAM_PORT: nginx in the foreground with its own prefix
# (worker_processes auto, upstream keepalive 64, access log off). Sets NGINX_PID.
start_nginx() {
    local listen=$1 upstream=$2
    run_nginx "$TMP/nginx" auto "
    upstream app {
        server 127.0.0.1:$upstream;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$listen;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }
    }"
    NGINX_PID=$LAST_NGINX_PID
    wait_http "http://127.0.0.1:$listen/"
}

# start_static_upstream NAME PORT VERSION: an nginx answering every request like ferry-demo
# (`x-version: VERSION`, body `hello from demo VERSION`), for runs without a release
# ferry-demo (UPSTREAM=nginx). Keep-alive connections are never closed by it.
start_static_upstream() {
    local port=$2 version=$3
    run_nginx "$TMP/$1" 1 "
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server {
        listen 127.0.0.1:$port;
        location / {
            add_header x-version $version;
            return 200 \"hello from demo $version\\n\";
        }
    }"
    wait_http "http://127.0.0.1:$port/"
}

# start_upstream NAME PORT VERSION: ferry-demo ($DEMO), or a static nginx when UPSTREAM=nginx.
start_upstream() {
    if [[ "${UPSTREAM:-demo}" == nginx ]]; then
        start_static_upstream "$@"
    else
        "${PIN_SERVERS[@]}" "$DEMO" --port "$2" --version "$3" >"$TMP/$1.log" 2>&1 &
        PIDS+=($!)
        wait_http "http://127.0.0.1:$2/"
    fi
}

# to_ms TIME: wrk's "1.23ms" / "456.00us" / "1.20s" in milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
        else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.3f", v * 1000 }
        else printf "nan" }'
}

# median: the median of the numbers on stdin (whitespace separated).
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# wrk_figures OUTPUT: "REQ_PER_S P50_MS P99_MS ERRORS" of one `wrk --latency` run (errors:
# socket errors and answers other than 2xx/3xx).
wrk_figures() {
    local rps p50 p99 errs
    rps=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' <<<"$1")
    p50=$(to_ms "$(awk '$1 == "50%" { print $2 }' <<<"$1")")
    p99=$(to_ms "$(awk '$1 == "99%" { print $2 }' <<<"$1")")
    errs=$(awk '/Non-2xx or 3xx responses:/ { n += $NF } /Socket errors:/ { gsub(/,/, ""); n += $4 + $6 + $8 + $10 } END { print n + 0 }' <<<"$1")
    echo "$rps $p50 $p99 $errs"
}

# need_nginx_wrk: installs nginx and wrk (Debian) when either is missing.
need_nginx_wrk() {
    if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then
        echo "installing nginx and wrk" >&2
        apt-get install -y nginx wrk >/dev/null
    fi
}

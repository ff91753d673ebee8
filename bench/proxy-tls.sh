#!/usr/bin/env bash
# TLS termination: Ferry's proxy beside nginx with the same certificate, same upstream,
# same run, on loopback.
#
#   bench/proxy-tls.sh                          # 3 interleaved rounds of 5 s per measurement
#   SKIP_BUILD=1 FERRY_CMD=target/release/examples/proxy UPSTREAM=nginx bench/proxy-tls.sh
#   ROUNDS=5 DURATION=10s KEY=rsa bench/proxy-tls.sh
#   HOSTS=100 bench/proxy-tls.sh                # SNI host routing: 100 sites on one listener
#
# Two figures per proxy, each `wrk -t2` against https://127.0.0.1:PORT/:
# - new handshakes per second: `Connection: close` on every request, so each request is
#   a new TCP connection and a full TLS handshake (wrk resumes no session), CONNS_NEW (16)
#   connections at a time;
# - keep-alive requests per second over CONNS (64) TLS connections.
# The certificate is a fresh self-signed one (KEY=ec: ECDSA P-256, the default; KEY=rsa:
# RSA 2048) for `bench.local`; both proxies negotiate TLS 1.3 with wrk (OpenSSL).
# HOSTS=N: N sites (site1.example … siteN.example) share the listener, each with its own
# certificate, chosen by SNI and Host: in ferry N environments with `hosts` and `tls`, in
# nginx N server blocks with `server_name`. wrk asks for the middle one by name (a Lua
# `wrk.resolve` connects it to 127.0.0.1, so the name goes out as SNI and Host; no
# /etc/hosts needed); the first site's is the default certificate of both.
# nginx: worker_processes auto, ssl_protocols TLSv1.2 TLSv1.3, upstream keepalive 64,
# access log off. Every process started is stopped on exit; bounded by DURATION x ROUNDS.
set -euo pipefail

DURATION=${DURATION:-5s}
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-2}
CONNS=${CONNS:-64}
CONNS_NEW=${CONNS_NEW:-16}
KEY=${KEY:-ec}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
for tool in wrk nginx openssl; do
    command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install wrk nginx openssl)" >&2; exit 1; }
done
if [[ -z "${SKIP_BUILD:-}" ]]; then
    echo "building (cargo build --release -p ferry)" >&2
    cargo build --release -p ferry >&2
fi
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
DEMO=${DEMO_BIN:-$TARGET_DIR/release/ferry-demo}
if [[ -n "${FERRY_CMD:-}" ]]; then read -r -a FERRY_ARGV <<<"$FERRY_CMD"; else FERRY_ARGV=("$TARGET_DIR/release/ferry" proxy); fi

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
PIN_SERVERS=()

# 1. One certificate for both.
case $KEY in
    ec) KEYGEN=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1) ;;
    rsa) KEYGEN=(-newkey rsa:2048) ;;
    *) echo "KEY is ec or rsa" >&2; exit 1 ;;
esac
HOSTS=${HOSTS:-0}
SITES=$(( HOSTS > 0 ? HOSTS : 1 ))
name_of() { if (( HOSTS > 0 )); then echo "site$1.example"; else echo bench.local; fi; }
for i in $(seq "$SITES"); do
    openssl req -x509 "${KEYGEN[@]}" -nodes -days 2 -subj "/CN=$(name_of "$i")" \
        -addext "subjectAltName=DNS:$(name_of "$i")" -keyout "$TMP/key$i.pem" -out "$TMP/cert$i.pem" 2>/dev/null
done
# What wrk and curl ask for: an address, or the middle site by name.
WRK_ARGS=()
CURL_ARGS=(-k)
TARGET_HOST=127.0.0.1
if (( HOSTS > 0 )); then
    TARGET_HOST=$(name_of $(( HOSTS / 2 + 1 )))
    cat >"$TMP/resolve.lua" <<'LUA'
-- Connect to 127.0.0.1 whatever the URL's host: the name still goes out as SNI and Host.
wrk.resolve = function(host, service)
   wrk.addrs = wrk.lookup("127.0.0.1", service)
end
LUA
    WRK_ARGS=(-s "$TMP/resolve.lua")
fi
url_of() { echo "https://$TARGET_HOST:$1/"; }

# 2. The upstream.
UP_PORT=$(free_port)
start_upstream demo "$UP_PORT" bench

# 3. ferry, terminating TLS.
declare -A PORT
PORT[ferry]=$(free_port)
admin=$(free_port)
mkdir -p "$TMP/ferry"
"${FERRY_ARGV[@]}" --state-dir "$TMP/ferry" --admin-listen "127.0.0.1:$admin" >"$TMP/ferry.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$admin/healthz"
listeners=""
for i in $(seq "$SITES"); do
    hosts='[]'
    (( HOSTS > 0 )) && hosts="[\"$(name_of "$i")\"]"
    listeners+="${listeners:+,}"'{"id": "bench/site'"$i"'", "listen": "127.0.0.1:'"${PORT[ferry]}"'", "hosts": '"$hosts"',
  "tls": {"cert": "'"$TMP/cert$i.pem"'", "key": "'"$TMP/key$i.pem"'"},
  "routes": [{"service": "demo", "path_prefix": "/",
    "backends": [{"version": "bench", "weight": 10000, "endpoints": ["127.0.0.1:'"$UP_PORT"'"]}]}]}'
done
echo '{"generation": 1, "listeners": ['"$listeners"']}' >"$TMP/ferry/table.json"
curl -fsS -X PUT -H "Authorization: Bearer $(cat "$TMP/ferry/admin.token")" -H 'Content-Type: application/json' \
    --data-binary @"$TMP/ferry/table.json" "http://127.0.0.1:$admin/v1/routes" >/dev/null
if (( HOSTS > 0 )); then CURL_ARGS+=(--resolve "$TARGET_HOST:${PORT[ferry]}:127.0.0.1"); fi
wait_http "$(url_of "${PORT[ferry]}")" "${CURL_ARGS[@]}"

# 4. nginx, terminating TLS with the same files.
PORT[nginx]=$(free_port)
mkdir -p "$TMP/nginx/logs"
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
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
    }
$(for i in $(seq "$SITES"); do
    (( HOSTS > 0 )) && name="server_name $(name_of "$i");" || name=""
    (( i == 1 )) && default=" default_server" || default=""
    echo "    server {
        listen 127.0.0.1:${PORT[nginx]} ssl$default;
        $name
        ssl_certificate $TMP/cert$i.pem;
        ssl_certificate_key $TMP/key$i.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }
    }"
done)
}
CONF
nginx -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -e "$TMP/nginx/logs/error.log" &
PIDS+=($!)
CURL_ARGS=(-k)
if (( HOSTS > 0 )); then CURL_ARGS+=(--resolve "$TARGET_HOST:${PORT[nginx]}:127.0.0.1"); fi
wait_http "$(url_of "${PORT[nginx]}")" "${CURL_ARGS[@]}"

# 5. Load, interleaved.
declare -A NEW KA
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.0f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
rps() { awk '/^Requests\/sec:/ { printf "%.0f", $2 }'; }
errors() { awk '/Non-2xx or 3xx responses:/ { n += $NF } /Socket errors:/ { gsub(/,/, ""); n += $4 + $6 + $8 + $10 } END { print n + 0 }'; }
ERRS=0
for round in $(seq "$ROUNDS"); do
    for t in nginx ferry; do
        url=$(url_of "${PORT[$t]}")
        out=$(wrk -t"$THREADS" -c"$CONNS_NEW" -d"$DURATION" "${WRK_ARGS[@]}" -H 'Connection: close' "$url")
        n=$(rps <<<"$out")
        ERRS=$(( ERRS + $(errors <<<"$out") ))
        out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" "${WRK_ARGS[@]}" "$url")
        k=$(rps <<<"$out")
        ERRS=$(( ERRS + $(errors <<<"$out") ))
        NEW[$t]="${NEW[$t]:-} $n"
        KA[$t]="${KA[$t]:-} $k"
        echo "round $round: $t handshakes/s=$n keep-alive req/s=$k" >&2
    done
done

# The protocol each proxy negotiates with OpenSSL (wrk's library), for the same name.
proto_of() {
    local sni=()
    (( HOSTS > 0 )) && sni=(-servername "$TARGET_HOST")
    openssl s_client -brief -connect "127.0.0.1:$1" "${sni[@]}" </dev/null 2>&1 |
        awk -F': *' '/^Protocol version/ { print $2; exit }'
}
proto="nginx $(proto_of "${PORT[nginx]}"), ferry $(proto_of "${PORT[ferry]}")"
# Both presented the asked-for site's own certificate.
if (( HOSTS > 0 )); then
    for t in nginx ferry; do
        cn=$(openssl s_client -connect "127.0.0.1:${PORT[$t]}" -servername "$TARGET_HOST" </dev/null 2>/dev/null |
            openssl x509 -noout -subject | sed 's/.*CN *= *//')
        [[ "$cn" == "$TARGET_HOST" ]] || { echo "$t presented $cn for $TARGET_HOST" >&2; exit 1; }
    done
fi
sites="one site, wrk to https://127.0.0.1 (no SNI)"
(( HOSTS > 0 )) && sites="$HOSTS sites by SNI and Host on one listener, each its own certificate; wrk to https://$TARGET_HOST"
echo
echo "TLS ($KEY certificate, $proto with OpenSSL; $sites), wrk -t$THREADS, ${DURATION} per measurement, median of $ROUNDS interleaved rounds; $(nproc) CPUs; load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| proxy | new TLS connections/s (-c$CONNS_NEW, Connection: close) | vs nginx | keep-alive req/s (-c$CONNS) | vs nginx |"
echo "| --- | ---: | ---: | ---: | ---: |"
NN=$(median <<<"${NEW[nginx]}")
NK=$(median <<<"${KA[nginx]}")
for t in nginx ferry; do
    n=$(median <<<"${NEW[$t]}")
    k=$(median <<<"${KA[$t]}")
    echo "| $t | $n | $(awk -v a="$n" -v b="$NN" 'BEGIN { printf "%.2f", a / b }') | $k | $(awk -v a="$k" -v b="$NK" 'BEGIN { printf "%.2f", a / b }') |"
done
echo
echo "errors (all rounds, both proxies): $ERRS; per round: nginx new:${NEW[nginx]} ka:${KA[nginx]} / ferry new:${NEW[ferry]} ka:${KA[ferry]}"

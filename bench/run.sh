#!/usr/bin/env bash
# Side-by-side benchmark: registry-gate against nginx (the distribution docs recipe), Caddy,
# HAProxy and the registry itself, all on loopback.
#
# Targets (all running at once, requests interleaved between them):
#   direct       docker-registry serve, plain HTTP: the upper bound (no proxy, no TLS)
#   nginx        nginx as the distribution recipe, with production settings (worker_processes
#                auto, upstream keepalive, proxy_http_version 1.1, proxy_buffering off,
#                proxy_request_buffering off, TLS 1.2+1.3, auth_basic)
#   nginx-tuned  the same plus proxy_buffer_size 64k
#   nginx-noauth nginx-tuned without auth_basic, in S3 only: what the TLS proxy hop costs
#                with no authentication at all, the floor for S3's "gate/direct" ratio
#   caddy        Debian's caddy (2.6): reverse_proxy with flush_interval -1, upstream
#                keepalive, basicauth (bcrypt only; it caches verified passwords), h1+h2
#   haproxy      Debian's haproxy (2.6): mode http, keep-alive and http-reuse to the
#                registry, alpn h2,http/1.1, a userlist (crypt(3): bcrypt on every request)
#   gate         target/release/registry-gate ([auth] mode = "basic")
#   gate-cluster the same gate with [cluster] on a redis-server started here: what the
#                fleet's shared state costs one gate (a warm pull makes no Redis call)
# All proxies use the same certificate (ECDSA P-256) and the same htpasswd file. Caddy and
# HAProxy cannot check the APR1 user: they authenticate every transfer as the bcrypt user,
# and S3's APR1 pass skips them (their cells show "—").
#
# Scenarios:
#   S1  one 1 GiB blob download (HTTP/1.1; and over HTTP/2 for the proxies): MB/s, proxy CPU s/GiB
#   S2  1 GiB upload, monolithic PUT and chunked PATCH: MB/s, proxy CPU s/GiB
#   S3  manifest GET, wrk -c64 with Basic auth, bcrypt and APR1 user: req/s, p50, p99, CPU/req
#   S4  16 parallel 256 MiB downloads: aggregate MB/s, proxy CPU s/GiB; over HTTP/1.1 (16
#       connections), then over HTTP/2 (16 streams of one connection)
#   S5  peak RSS over S1-S4 (VmHWM, and the peaks of its anonymous and file-backed parts),
#       memory per idle TLS connection (N held open)
#   S6  new TLS connections/s (wrk, Connection: close), HTTP/2 small requests (h2load)
# Every download is checked for size and sha256; every upload ends with PUT ?digest=, which
# the registry only answers 201 after verifying the digest.
#
# Usage: bash bench/run.sh [--quick] [--reps N] [--write] [--targets LIST] [--scenarios LIST]
#                          [--idle-conns N] [--duration SECS] [--compare-gate PATH]
#   --quick          small sizes (64 MiB, 16 x 16 MiB), 1 repetition, 3 s runs, 1000 idle
#                    connections: checks that everything works, numbers are not meaningful
#   --reps N         repetitions (default 3); the report gives median (min-max)
#   --write          also write the report to bench/results-run.md and every repetition's
#                    raw value to bench/results-run.tsv (metric, target, repetition, value)
#   --targets LIST   comma-separated subset of direct,nginx,nginx-tuned,nginx-noauth,caddy,
#                    haproxy,gate (the default set), gate-cluster (not in it)
#   --scenarios LIST comma-separated subset of S1,S2,S3,S4,S5,S6
#   --compare-gate PATH  add a target "gate-b" running another registry-gate binary (A/B tests)
#   --hold           set everything up, print each target's URL, the blob paths and the client
#                    arguments, then wait (Ctrl-C ends it): for profiling one target by hand
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"

REPS=3
REPS_SET=0
QUICK=0
WRITE=0
DURATION=""
IDLE_CONNS=""
TARGETS_ARG="direct,nginx,nginx-tuned,nginx-noauth,caddy,haproxy,gate"
SCENARIOS_ARG="S1,S2,S3,S4,S5,S6"
COMPARE_GATE=""
HOLD=0

# The header comment above, up to the first line that is not a comment.
usage() { awk 'NR == 1 { next } !/^#/ { exit } { sub(/^# ?/, ""); print }' "$0"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --reps) REPS="$2"; REPS_SET=1; shift ;;
        --write) WRITE=1 ;;
        --targets) TARGETS_ARG="$2"; shift ;;
        --scenarios) SCENARIOS_ARG="$2"; shift ;;
        --duration) DURATION="$2"; shift ;;
        --idle-conns) IDLE_CONNS="$2"; shift ;;
        --compare-gate) COMPARE_GATE="$(realpath "$2")"; shift ;;
        --hold) HOLD=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "run.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

if [ "$QUICK" -eq 1 ]; then
    BLOB_MIB=64; PAR_MIB=16; CHUNK_MIB=16
    : "${DURATION:=3}"; : "${IDLE_CONNS:=1000}"
    [ "$REPS_SET" -eq 1 ] || REPS=1
else
    BLOB_MIB=1024; PAR_MIB=256; CHUNK_MIB=64
    : "${DURATION:=10}"; : "${IDLE_CONNS:=10000}"
fi
PARALLEL=16
for n in "$REPS" "$DURATION" "$IDLE_CONNS"; do
    [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] || { echo "run.sh: not a positive whole number: $n" >&2; exit 2; }
done
IFS=, read -r -a TARGETS <<<"$TARGETS_ARG"
IFS=, read -r -a SCENARIOS <<<"$SCENARIOS_ARG"
for t in "${TARGETS[@]}"; do
    case "$t" in direct|nginx|nginx-tuned|nginx-noauth|caddy|haproxy|gate|gate-cluster) ;; *) echo "run.sh: unknown target $t" >&2; exit 2 ;; esac
done
[ -z "$COMPARE_GATE" ] || TARGETS+=(gate-b)
want() { case ",$SCENARIOS_ARG," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
has_target() { case ",$TARGETS_ARG," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
# Caddy's basicauth takes bcrypt hashes only, HAProxy's userlist crypt(3), which has no
# $apr1$: these targets authenticate as the bcrypt user and skip S3's APR1 pass.
bcrypt_only() { case "$1" in caddy|haproxy) return 0 ;; *) return 1 ;; esac; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MANIFEST_TYPE="application/vnd.oci.image.manifest.v1+json"
REPO="bench/app"
PASS="bench-$(date +%s)-$$"
USER_BCRYPT="bench-bcrypt"
USER_APR1="bench-apr1"

log() { echo "run.sh: $*" >&2; }
die() { echo "run.sh: FAILED: $*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# Tools: install what is missing (Debian/Ubuntu), as scripts/install-test-deps.sh does.
# ---------------------------------------------------------------------------------------------
missing=""
need() {
    command -v "$1" >/dev/null 2>&1 && return 0
    case " $missing " in *" $2 "*) ;; *) missing="$missing $2" ;; esac
}
need nginx nginx
need wrk wrk
need h2load nghttp2-client
need htpasswd apache2-utils
need curl curl
need docker-registry docker-registry
need python3 python3
need sha256sum coreutils
need openssl openssl
need split coreutils
# Only when asked for: installing Debian's caddy also enables its caddy.service (see below).
has_target caddy && need caddy caddy
has_target haproxy && need haproxy haproxy
if [ -n "$missing" ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    log "installing:$missing"
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086
    $SUDO apt-get install -y -qq $missing >&2 \
        || { $SUDO apt-get update -qq >&2 && $SUDO apt-get install -y -qq $missing >&2; } \
        || die "cannot install:$missing (apt-get install$missing)"
fi
command -v cargo >/dev/null 2>&1 || die "cargo is not installed (https://rustup.rs)"
# Debian's postinst starts caddy.service (:80, admin on localhost:2019) and haproxy.service
# (/etc/haproxy/haproxy.cfg: no listener). They cannot collide with the instances here (own
# config, free ports, no admin endpoint, no :80), but they share the cores: say so.
for svc in caddy haproxy; do
    has_target "$svc" && command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null \
        && log "note: $svc.service (Debian's) is running; the bench starts its own $svc, stop that one for a quiet machine (systemctl stop $svc)"
done

# Idle connections need file descriptors in the client and in the proxy (which inherits this).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
[ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -ge $((IDLE_CONNS + 200)) ] \
    || die "ulimit -n is $(ulimit -n), need $((IDLE_CONNS + 200)) for --idle-conns $IDLE_CONNS (raise the hard limit or lower --idle-conns)"

log "cargo build --release"
(cd "$ROOT" && cargo build --release --quiet >&2)
GATE_BIN="$ROOT/target/release/registry-gate"
[ -x "$GATE_BIN" ] || die "no $GATE_BIN after cargo build --release"

# ---------------------------------------------------------------------------------------------
# Scratch directory, process bookkeeping, cleanup.
# ---------------------------------------------------------------------------------------------
TMP="$(mktemp -d "${TMPDIR:-/tmp}/registry-gate-run.XXXXXX")"
SINK=""               # tmpfs directory downloads land in (see "Downloads" below), or none
DIGEST_WHERE=""
declare -A PID=()     # target -> main pid (nginx: master)
PIDS_EXTRA=()         # helpers (idle clients)

cleanup() {
    local rc=$?
    local p
    for p in "${PIDS_EXTRA[@]}"; do stop_pid "$p"; done
    for p in "${PID[@]}"; do stop_pid "$p"; done
    if [ "$rc" -ne 0 ]; then
        for f in "$TMP"/*.log "$TMP"/*/error.log; do
            [ -s "$f" ] || continue
            echo "--- $f (last 15 lines) ---" >&2
            tail -n 15 "$f" >&2
        done
    fi
    rm -rf "$TMP"
    [ -z "$SINK" ] || rm -rf "$SINK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

now() { date +%s.%N; }


# The pids whose CPU and memory count for a target: nginx master and its workers, the gate,
# or for direct the registry.
pids_of() {
    local main="${PID[$1]}"
    echo "$main"
    case "$1" in nginx*) pgrep -P "$main" || true ;; esac
}
# User + system CPU of a target, in clock ticks.
cpu_ticks() {
    local total=0 p t
    for p in $(pids_of "$1"); do
        t="$(awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null || echo 0)"
        total=$((total + t))
    done
    echo "$total"
}
CLK_TCK="$(getconf CLK_TCK)"
# status_kib TARGET FIELD: sum of FIELD (VmRSS, VmHWM) over the target's processes, in KiB.
status_kib() {
    local total=0 p v
    for p in $(pids_of "$1"); do
        v="$(awk -v f="$2:" '$1 == f { print $2 }' "/proc/$p/status" 2>/dev/null || echo 0)"
        total=$((total + ${v:-0}))
    done
    echo "$total"
}
# mib KIB: KiB as MiB with one decimal.
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

RESULTS="$TMP/results.tsv"
: >"$RESULTS"
# record METRIC TARGET REP VALUE
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$RESULTS"; }

# ---------------------------------------------------------------------------------------------
# Test material: certificate, htpasswd (one bcrypt and one APR1 user), blobs.
# ---------------------------------------------------------------------------------------------
log "certificate (registry-gate gencert, ECDSA P-256) and htpasswd"
"$GATE_BIN" gencert --dir "$TMP/pki" --dns localhost --ip 127.0.0.1 >"$TMP/gencert.log" 2>&1 \
    || die "gencert failed: $(cat "$TMP/gencert.log")"
CA="$TMP/pki/ca.pem"; CERT="$TMP/pki/cert.pem"; KEY="$TMP/pki/key.pem"
{
    htpasswd -nbB -C 10 "$USER_BCRYPT" "$PASS" | sed '/^$/d'
    htpasswd -nbm "$USER_APR1" "$PASS" | sed '/^$/d'
} >"$TMP/htpasswd"
chmod 600 "$TMP/htpasswd"
grep -qF "$USER_BCRYPT:\$2y\$10\$" "$TMP/htpasswd" || die "htpasswd -B -C 10 did not write a \$2y\$10\$ hash"
grep -qF "$USER_APR1:\$apr1\$" "$TMP/htpasswd" || die "htpasswd -m did not write an \$apr1\$ hash"
basic() { echo "Authorization: Basic $(printf '%s:%s' "$1" "$PASS" | base64 -w0)"; }
AUTH_BCRYPT="$(basic "$USER_BCRYPT")"
AUTH_APR1="$(basic "$USER_APR1")"

log "blobs: ${BLOB_MIB} MiB and ${PAR_MIB} MiB of random bytes"
head -c "$((BLOB_MIB * 1048576))" /dev/urandom >"$TMP/big.blob"
head -c "$((PAR_MIB * 1048576))" /dev/urandom >"$TMP/par.blob"
BIG_SIZE="$(stat -c %s "$TMP/big.blob")"
PAR_SIZE="$(stat -c %s "$TMP/par.blob")"
BIG_SHA="$(sha256sum "$TMP/big.blob" | cut -d' ' -f1)"
PAR_SHA="$(sha256sum "$TMP/par.blob" | cut -d' ' -f1)"
mkdir -p "$TMP/chunks"
split -b "${CHUNK_MIB}M" -d -a 4 "$TMP/big.blob" "$TMP/chunks/c"

# ---------------------------------------------------------------------------------------------
# The registry, filled directly.
# ---------------------------------------------------------------------------------------------
start_registry registry-gate-bench
PID[registry]=$REGISTRY_PID

# location_of HEADERS_FILE BASE: the Location header, made absolute.
location_of() {
    local loc
    loc="$(tr -d '\r' <"$1" | sed -n 's/^[Ll]ocation: //p' | tail -n1)"
    [ -n "$loc" ] || return 1
    case "$loc" in http*) echo "$loc" ;; *) echo "$2$loc" ;; esac
}
with_digest() { case "$1" in *\?*) echo "$1&digest=$2" ;; *) echo "$1?digest=$2" ;; esac; }

# Client options per target: base URL and curl arguments (certificate, credentials).
declare -A BASE=()
BASE[direct]="$REGISTRY_URL"
curl_args() {
    if [ "$1" = direct ]; then
        echo ""
    elif bcrypt_only "$1"; then
        echo "--cacert $CA -u $USER_BCRYPT:$PASS"
    else
        echo "--cacert $CA -u $USER_APR1:$PASS"
    fi
}

# upload_monolithic TARGET REPO FILE DIGEST: POST, then one PUT ?digest= with the whole file.
upload_monolithic() {
    local target="$1" repo="$2" file="$3" digest="$4" base="${BASE[$1]}" loc code
    # shellcheck disable=SC2046
    curl -sS --http1.1 -o /dev/null -D "$TMP/h.post" -X POST $(curl_args "$target") \
        "$base/v2/$repo/blobs/uploads/" || return 1
    loc="$(location_of "$TMP/h.post" "$base")" || { log "$target: no Location after POST"; return 1; }
    # shellcheck disable=SC2046
    code="$(curl -sS --http1.1 -o /dev/null -w '%{http_code}' -T "$file" -H 'Expect:' \
        -H 'Content-Type: application/octet-stream' $(curl_args "$target") "$(with_digest "$loc" "sha256:$digest")")" || return 1
    [ "$code" = 201 ] || { log "$target: monolithic PUT answered $code"; return 1; }
}

# upload_chunked TARGET REPO DIGEST: POST, a PATCH per chunk file, then PUT ?digest=.
upload_chunked() {
    local target="$1" repo="$2" digest="$3" base="${BASE[$1]}" loc code start=0 size chunk
    # shellcheck disable=SC2046
    curl -sS --http1.1 -o /dev/null -D "$TMP/h.post" -X POST $(curl_args "$target") \
        "$base/v2/$repo/blobs/uploads/" || return 1
    loc="$(location_of "$TMP/h.post" "$base")" || { log "$target: no Location after POST"; return 1; }
    for chunk in "$TMP"/chunks/c*; do
        size="$(stat -c %s "$chunk")"
        # shellcheck disable=SC2046
        code="$(curl -sS --http1.1 -o /dev/null -D "$TMP/h.patch" -w '%{http_code}' -X PATCH -T "$chunk" \
            -H 'Expect:' -H 'Content-Type: application/octet-stream' \
            -H "Content-Range: $start-$((start + size - 1))" $(curl_args "$target") "$loc")" || return 1
        [ "$code" = 202 ] || { log "$target: PATCH answered $code"; return 1; }
        loc="$(location_of "$TMP/h.patch" "$base")" || { log "$target: no Location after PATCH"; return 1; }
        start=$((start + size))
    done
    # shellcheck disable=SC2046
    code="$(curl -sS --http1.1 -o /dev/null -w '%{http_code}' -X PUT --data-binary '' \
        -H 'Content-Type: application/octet-stream' $(curl_args "$target") "$(with_digest "$loc" "sha256:$digest")")" || return 1
    [ "$code" = 201 ] || { log "$target: final PUT answered $code"; return 1; }
}

log "pushing the blobs and a small OCI image to the registry"
upload_monolithic direct "$REPO" "$TMP/big.blob" "$BIG_SHA" || die "pushing the big blob failed"
upload_monolithic direct "$REPO" "$TMP/par.blob" "$PAR_SHA" || die "pushing the parallel blob failed"
printf '{"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":[]}}' >"$TMP/config.json"
CONFIG_SHA="$(sha256sum "$TMP/config.json" | cut -d' ' -f1)"
upload_monolithic direct "$REPO" "$TMP/config.json" "$CONFIG_SHA" || die "pushing the config failed"
printf '{"schemaVersion":2,"mediaType":"%s","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%d}]}' \
    "$MANIFEST_TYPE" "$CONFIG_SHA" "$(stat -c %s "$TMP/config.json")" "$PAR_SHA" "$PAR_SIZE" >"$TMP/manifest.json"
code="$(curl -sS -o /dev/null -w '%{http_code}' -X PUT -H "Content-Type: $MANIFEST_TYPE" \
    --data-binary "@$TMP/manifest.json" "$REGISTRY_URL/v2/$REPO/manifests/latest")"
[ "$code" = 201 ] || die "manifest PUT answered $code, not 201"
MANIFEST_BYTES="$(stat -c %s "$TMP/manifest.json")"

# ---------------------------------------------------------------------------------------------
# The proxies.
# ---------------------------------------------------------------------------------------------
# nginx as the distribution docs recipe (docs/recipes/nginx.md), with the production settings
# that recipe leaves out. write_nginx_conf DIR PORT EXTRA AUTH: EXTRA = extra proxy
# directives; AUTH "off" leaves auth_basic out (nginx-noauth).
write_nginx_conf() {
    local dir="$1" port="$2" extra="$3" auth="$4" user_line="" auth_lines=""
    [ "$auth" = off ] || auth_lines="auth_basic \"Registry realm\";
            auth_basic_user_file $TMP/htpasswd;"
    [ "$(id -u)" -ne 0 ] || user_line="user root;"   # workers must read the htpasswd in $TMP
    mkdir -p "$dir"
    cat >"$dir/nginx.conf" <<EOF
$user_line
worker_processes auto;
worker_rlimit_nofile $(ulimit -n);
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events {
    worker_connections $(ulimit -n);
}
http {
    # The gate runs with [log] level = "warn", which has no access log either.
    access_log off;
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;

    upstream docker-registry {
        server 127.0.0.1:$REGISTRY_PORT;
        keepalive 64;
    }

    ## Set a variable to help us decide if we need to add the
    ## 'Docker-Distribution-Api-Version' header.
    map \$upstream_http_docker_distribution_api_version \$docker_distribution_api_version {
        '' 'registry/2.0';
    }

    server {
        listen 127.0.0.1:$port ssl http2;
        server_name localhost;

        ssl_certificate $CERT;
        ssl_certificate_key $KEY;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ciphers 'EECDH+AESGCM:EDH+AESGCM:AES256+EECDH:AES256+EDH';
        ssl_prefer_server_ciphers on;
        ssl_session_cache shared:SSL:10m;

        # disable any limits to avoid HTTP 413 for large image uploads
        client_max_body_size 0;

        # required to avoid HTTP 411: see Issue #1486 (https://github.com/moby/moby/issues/1486)
        chunked_transfer_encoding on;

        location /v2/ {
            # Do not allow connections from docker 1.5 and earlier
            # docker pre-1.6.0 did not properly set the user agent on ping, catch "Go *" user agents
            if (\$http_user_agent ~ "^(docker\/1\.(3|4|5(?!\.[0-9]-dev))|Go ).*\$" ) {
                return 404;
            }

            $auth_lines

            add_header 'Docker-Distribution-Api-Version' \$docker_distribution_api_version always;

            proxy_pass                          http://docker-registry;
            proxy_set_header  Host              \$http_host;
            proxy_set_header  X-Real-IP         \$remote_addr;
            proxy_set_header  X-Forwarded-For   \$proxy_add_x_forwarded_for;
            proxy_set_header  X-Forwarded-Proto \$scheme;
            proxy_read_timeout                  900;

            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            $extra
        }
    }
}
EOF
}

# The target just started in the background ($!): its pid, its URL, and a wait until it
# answers on /v2/.
started() {
    PID[$1]=$!
    BASE[$1]="https://127.0.0.1:$2"
    wait_http "${BASE[$1]}/v2/" --cacert "$CA" || die "$1 did not answer on ${BASE[$1]}/v2/"
}

start_nginx() {
    local name="$1" extra="$2" auth="${3:-on}" port dir="$TMP/$1"
    port="$(free_port)"
    write_nginx_conf "$dir" "$port" "$extra" "$auth"
    nginx -t -p "$dir" -c "$dir/nginx.conf" >"$dir.test.log" 2>&1 || die "nginx -t ($name): $(cat "$dir.test.log")"
    nginx -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;' >"$TMP/$name.log" 2>&1 </dev/null &
    started "$name" "$port"
}

start_gate() {
    local name="$1" bin="$2" extra="${3:-}" port
    port="$(free_port)"
    mkdir -p "$TMP/$name"
    cat >"$TMP/$name/gate.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
shutdown_grace = "2s"
# Every benchmark client comes from 127.0.0.1; S5 holds $IDLE_CONNS connections open.
max_connections = $((IDLE_CONNS + 1000))
max_connections_per_ip = $((IDLE_CONNS + 1000))

[upstream]
url = "$REGISTRY_URL"

[tls]
cert = "$CERT"
key = "$KEY"
dir = "$TMP/$name"

[log]
level = "warn"

[auth]
mode = "basic"
htpasswd = ["$TMP/htpasswd"]
$extra
EOF
    "$bin" run --config "$TMP/$name/gate.toml" >"$TMP/$name.log" 2>&1 </dev/null &
    started "$name" "$port"
}

# Caddy as packaged by Debian (2.6), in production form: the documented reverse_proxy with
# streaming both ways (flush_interval -1: every read from the registry is flushed to the
# client; request_buffers/response_buffers unset, so no buffering, 2.6's default), upstream
# keep-alive (the default transport, up to 64 idle connections like nginx's keepalive 64),
# basicauth with the bcrypt hash (base64 in 2.6's Caddyfile; the Caddyfile turns on its
# cache of verified passwords), TLS 1.2+1.3 with the same certificate, HTTP/1.1 and HTTP/2
# (2.6 would add HTTP/3 on UDP: off, no other target has it), no access log (Caddy's
# default, like access_log off). No admin endpoint (the default is localhost:2019, which
# Debian's caddy.service and each instance here would share), no automatic HTTPS (no :80
# listener, no certificate management), and its autosave and storage under $TMP, not $HOME.
start_caddy() {
    local name="$1" port dir="$TMP/$1" hash
    port="$(free_port)"
    mkdir -p "$dir"
    hash="$(sed -n "s/^$USER_BCRYPT://p" "$TMP/htpasswd" | tr -d '\n' | base64 -w0)"
    [ -n "$hash" ] || die "no $USER_BCRYPT in $TMP/htpasswd"
    cat >"$dir/Caddyfile" <<EOF
{
	admin off
	auto_https off
	servers {
		protocols h1 h2
	}
}
https://:$port {
	bind 127.0.0.1
	tls $CERT $KEY {
		protocols tls1.2 tls1.3
	}
	basicauth bcrypt "Registry realm" {
		$USER_BCRYPT $hash
	}
	# On every answer, the 401s included (nginx: add_header ... always); the registry's own
	# copy is dropped so it is not sent twice.
	header Docker-Distribution-Api-Version registry/2.0
	reverse_proxy 127.0.0.1:$REGISTRY_PORT {
		flush_interval -1
		header_down -Docker-Distribution-Api-Version
		transport http {
			keepalive 2m
			keepalive_idle_conns_per_host 64
		}
	}
}
EOF
    XDG_CONFIG_HOME="$dir/config" XDG_DATA_HOME="$dir/data" \
        caddy validate --config "$dir/Caddyfile" --adapter caddyfile >"$dir.test.log" 2>&1 \
        || die "caddy validate ($name): $(tail -n 5 "$dir.test.log")"
    XDG_CONFIG_HOME="$dir/config" XDG_DATA_HOME="$dir/data" \
        caddy run --config "$dir/Caddyfile" --adapter caddyfile >"$TMP/$name.log" 2>&1 </dev/null &
    started "$name" "$port"
}

# HAProxy as packaged by Debian (2.6), in production form: mode http with keep-alive on both
# sides (the default http-keep-alive, not http-server-close) and idle registry connections
# shared between clients (http-reuse always: nginx's upstream keepalive pool does the same;
# the registry is one well-behaved server on loopback), no request buffering (no option
# http-buffer-request, the default), one thread per core (the default, like nginx's
# worker_processes auto), TLS 1.2+1.3 (ssl-default-bind-options ssl-min-ver TLSv1.2, as
# nginx's ssl_protocols) with the same certificate and key in one PEM, alpn h2,http/1.1,
# nginx's timeouts (proxy_read_timeout 900, keepalive_timeout 75s, client_header_timeout
# 60s), the forwarded headers, no logging (like access_log off). The userlist holds the
# bcrypt user; HAProxy checks it with crypt(3) (libxcrypt reads $2y$) on every request.
# maxconn is raised for S5's idle connections, as the gate's max_connections is. HAProxy
# wants two descriptors per connection it may take (one to the server), more than a 20,000
# hard limit allows for 11,000; S5's idle connections need one each, so "no strict-limits"
# lets it start on the descriptors there are (it warns).
start_haproxy() {
    local name="$1" port dir="$TMP/$1" hash
    port="$(free_port)"
    mkdir -p "$dir"
    hash="$(sed -n "s/^$USER_BCRYPT://p" "$TMP/htpasswd")"
    [ -n "$hash" ] || die "no $USER_BCRYPT in $TMP/htpasswd"
    cat "$CERT" "$KEY" >"$dir/cert.pem"
    chmod 600 "$dir/cert.pem"
    cat >"$dir/haproxy.cfg" <<EOF
global
    maxconn $((IDLE_CONNS + 1000))
    no strict-limits
    ssl-default-bind-options ssl-min-ver TLSv1.2

defaults
    mode http
    maxconn $((IDLE_CONNS + 1000))
    option forwardfor
    timeout connect 5s
    timeout client 900s
    timeout server 900s
    timeout http-request 60s
    timeout http-keep-alive 75s

userlist registry_users
    user $USER_BCRYPT password $hash

frontend registry
    bind 127.0.0.1:$port ssl crt $dir/cert.pem alpn h2,http/1.1
    http-request auth realm "Registry realm" unless { http_auth(registry_users) }
    http-request set-header X-Forwarded-Proto https
    # On every answer, the 401s included (nginx: add_header ... always).
    http-after-response set-header Docker-Distribution-Api-Version registry/2.0
    default_backend registry

backend registry
    http-reuse always
    server registry 127.0.0.1:$REGISTRY_PORT
EOF
    haproxy -c -q -f "$dir/haproxy.cfg" >"$dir.test.log" 2>&1 || die "haproxy -c ($name): $(cat "$dir.test.log")"
    # -db: in the foreground, one process (its threads), no master.
    haproxy -db -f "$dir/haproxy.cfg" >"$TMP/$name.log" 2>&1 </dev/null &
    started "$name" "$port"
}

# proxy_buffers and proxy_busy_buffers_size only so nginx accepts the larger
# proxy_buffer_size; with proxy_buffering off they are not used.
NGINX_TUNED="proxy_buffer_size 64k; proxy_buffers 4 64k; proxy_busy_buffers_size 128k;"
start_target() {
    case "$1" in
        direct) PID[direct]="${PID[registry]}" ;;
        nginx) start_nginx nginx "" ;;
        nginx-tuned) start_nginx nginx-tuned "$NGINX_TUNED" ;;
        nginx-noauth) start_nginx nginx-noauth "$NGINX_TUNED" off ;;
        caddy) start_caddy caddy ;;
        haproxy) start_haproxy haproxy ;;
        gate) start_gate gate "$GATE_BIN" ;;
        gate-b) start_gate gate-b "$COMPARE_GATE" ;;
        gate-cluster)
            local redis_port
            redis_port="$(free_port)"
            redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no \
                >"$TMP/redis.log" 2>&1 </dev/null &
            PID[redis]=$!
            sleep 0.5
            start_gate gate-cluster "$GATE_BIN" "[cluster]
redis = \"redis://127.0.0.1:$redis_port/0\"" ;;
    esac
}
for t in "${TARGETS[@]}"; do start_target "$t"; done
# The registry is a "target" only as direct; pids_of registry is the registry.
log "targets: ${TARGETS[*]}"

# Sanity: the manifest through every target, with each user; auth really on. And the TLS
# 1.3 suite each proxy picks for curl (OpenSSL, like wrk, h2load and the idle client, offers
# AES-256-GCM first; Go's crypto/tls, hence Caddy, prefers AES-128-GCM where AES-NI is).
SUITES=""
for t in "${TARGETS[@]}"; do
    if [ "$t" = direct ]; then
        code="$(curl -sS -o "$TMP/m" -w '%{http_code}' -H "Accept: $MANIFEST_TYPE" "$REGISTRY_URL/v2/$REPO/manifests/latest")"
        [ "$code" = 200 ] && cmp -s "$TMP/m" "$TMP/manifest.json" || die "direct: manifest GET answered $code"
        continue
    fi
    code="$(curl -sS -o "$TMP/m" -w '%{http_code}' --cacert "$CA" -H "Accept: $MANIFEST_TYPE" "${BASE[$t]}/v2/$REPO/manifests/latest")"
    if [ "$t" = nginx-noauth ]; then
        [ "$code" = 200 ] && cmp -s "$TMP/m" "$TMP/manifest.json" || die "$t: manifest GET without credentials answered $code or other bytes"
        continue
    fi
    [ "$code" = 401 ] || die "$t: manifest GET without credentials answered $code, not 401"
    suite="$(curl -sv -o /dev/null --cacert "$CA" "${BASE[$t]}/v2/" 2>&1 | sed -n 's/^\* SSL connection using //p' | head -n1)"
    SUITES="$SUITES${SUITES:+; }$t ${suite:-?}"
    users=("$AUTH_BCRYPT" "$AUTH_APR1")
    if bcrypt_only "$t"; then
        users=("$AUTH_BCRYPT")
        code="$(curl -sS -o /dev/null -w '%{http_code}' --cacert "$CA" -H "$AUTH_APR1" -H "Accept: $MANIFEST_TYPE" \
            "${BASE[$t]}/v2/$REPO/manifests/latest")"
        [ "$code" = 401 ] || log "$t: the APR1 user answered $code, not 401: $t reads \$apr1\$ now? S3's APR1 pass still skips it"
    fi
    for h in "${users[@]}"; do
        code="$(curl -sS -o "$TMP/m" -w '%{http_code}' --cacert "$CA" -H "$h" -H "Accept: $MANIFEST_TYPE" \
            "${BASE[$t]}/v2/$REPO/manifests/latest")"
        [ "$code" = 200 ] && cmp -s "$TMP/m" "$TMP/manifest.json" || die "$t: manifest GET answered $code or other bytes"
    done
done

if [ "$HOLD" -eq 1 ]; then
    for t in "${TARGETS[@]}"; do
        echo "$t: ${BASE[$t]}  pid(s) $(pids_of "$t" | tr '\n' ' ') curl $(curl_args "$t")"
    done
    echo "blobs: /v2/$REPO/blobs/sha256:$BIG_SHA ($BIG_SIZE bytes), /v2/$REPO/blobs/sha256:$PAR_SHA ($PAR_SIZE bytes)"
    echo "manifest: /v2/$REPO/manifests/latest (Accept: $MANIFEST_TYPE); $AUTH_BCRYPT; $AUTH_APR1"
    echo "holding; Ctrl-C or kill $$ stops every target"
    # A waited-for background sleep, so a signal ends the hold at once.
    while :; do
        sleep 3600 &
        PIDS_EXTRA+=("$!")
        wait "$!" || true
    done
fi

# ---------------------------------------------------------------------------------------------
# Scenarios. Each function runs one target once and records its metrics.
# ---------------------------------------------------------------------------------------------
GIB=1073741824
# mbps BYTES T0 T1 (seconds since the epoch), cpu_per_gib TICKS BYTES
mbps() { awk -v b="$1" -v t0="$2" -v t1="$3" 'BEGIN { printf "%.1f", b / (t1 - t0) / 1e6 }'; }
cpu_per_gib() { awk -v t="$1" -v b="$2" -v hz="$CLK_TCK" -v g="$GIB" 'BEGIN { printf "%.3f", t / hz / (b / g) }'; }

# Downloads. curl writes each one into a tmpfs file that was filled with zeros before the
# clock started (opened with 1<>: overwritten in place, no page allocated while timed); its
# size and sha256 are checked after the clock stopped. A digest in curl's pipe instead puts
# a pipe and a second process in every target's path: measured here, curl's system time per
# GiB doubled (0.5 -> 1.0 s) and every proxy's single download fell to the same ~420 MB/s,
# the client's speed, not the proxy's (bench/history.md, "The client's digest"). Without room in
# /dev/shm the digest goes back into the pipe, and the report says so.
sink_setup() {
    local need avail
    need=$(( (BIG_SIZE + PAR_SIZE * PARALLEL) / 1024 + 1024 * 1024 ))
    avail="$(df -k --output=avail /dev/shm 2>/dev/null | tail -n1 | tr -d ' ' || true)"
    if [ -n "$avail" ] && [ "$avail" -gt "$need" ]; then
        SINK="$(mktemp -d /dev/shm/registry-gate-sink.XXXXXX)"
        DIGEST_WHERE="after each download, from a preallocated tmpfs file"
    else
        log "/dev/shm has less than $((need / 1024)) MiB free: digests taken in curl's pipe (slower client)"
        DIGEST_WHERE="in curl's pipe (no room in /dev/shm)"
    fi
}

# download_prepare OUTPREFIX SIZE: before the clock starts.
download_prepare() {
    rm -f "$1.err" "$1.sha"
    [ -z "$SINK" ] || head -c "$2" /dev/zero >"$SINK/$(basename "$1")"
}

# download TARGET URL_PATH OUTPREFIX [curl args…]: the timed part of one download.
download() {
    local target="$1" path="$2" out="$3"; shift 3
    if [ -n "$SINK" ]; then
        # shellcheck disable=SC2046
        curl -sS --fail $(curl_args "$target") "$@" -w '%{stderr}%{size_download}\n' \
            "${BASE[$target]}$path" 2>"$out.err" 1<>"$SINK/$(basename "$out")"
    else
        # shellcheck disable=SC2046
        curl -sS --fail $(curl_args "$target") "$@" -w '%{stderr}%{size_download}\n' \
            "${BASE[$target]}$path" 2>"$out.err" | openssl dgst -sha256 -r | cut -d' ' -f1 >"$out.sha"
    fi
}

# download_verify TARGET OUTPREFIX SIZE SHA: byte count and sha256, after the clock stops.
download_verify() {
    local target="$1" out="$2" size="$3" sha="$4" got_sha got_size
    got_size="$(tail -n1 "$out.err" 2>/dev/null || true)"
    [ "$got_size" = "$size" ] || { log "$target: downloaded ${got_size:-no} bytes, expected $size: $(head -c 300 "$out.err" 2>/dev/null)"; return 1; }
    if [ -n "$SINK" ]; then
        got_sha="$(openssl dgst -sha256 -r "$SINK/$(basename "$out")" | cut -d' ' -f1)"
    else
        got_sha="$(cat "$out.sha")"
    fi
    [ "$got_sha" = "$sha" ] || { log "$target: sha256 of the download is $got_sha, expected $sha"; return 1; }
}

s1() {
    local t="$1" rep="$2" proto="$3" flag t0 t1 c0 c1
    [ "$proto" = h2 ] && flag=--http2 || flag=--http1.1
    download_prepare "$TMP/s1" "$BIG_SIZE"
    c0="$(cpu_ticks "$t")"; t0="$(now)"
    download "$t" "/v2/$REPO/blobs/sha256:$BIG_SHA" "$TMP/s1" "$flag" \
        || die "$t: S1 ($proto) download failed: $(head -c 300 "$TMP/s1.err")"
    t1="$(now)"; c1="$(cpu_ticks "$t")"
    download_verify "$t" "$TMP/s1" "$BIG_SIZE" "$BIG_SHA" || die "$t: S1 ($proto) download failed"
    local suffix=""; [ "$proto" = h2 ] && suffix="_h2"
    record "s1${suffix}_mbps" "$t" "$rep" "$(mbps "$BIG_SIZE" "$t0" "$t1")"
    record "s1${suffix}_cpu" "$t" "$rep" "$(cpu_per_gib $((c1 - c0)) "$BIG_SIZE")"
}

s2() {
    local t="$1" rep="$2" mode="$3" t0 t1 c0 c1
    c0="$(cpu_ticks "$t")"; t0="$(now)"
    if [ "$mode" = put ]; then
        upload_monolithic "$t" "bench/up-$t" "$TMP/big.blob" "$BIG_SHA" || die "$t: S2 monolithic upload failed"
    else
        upload_chunked "$t" "bench/up-$t" "$BIG_SHA" || die "$t: S2 chunked upload failed"
    fi
    t1="$(now)"; c1="$(cpu_ticks "$t")"
    record "s2_${mode}_mbps" "$t" "$rep" "$(mbps "$BIG_SIZE" "$t0" "$t1")"
    record "s2_${mode}_cpu" "$t" "$rep" "$(cpu_per_gib $((c1 - c0)) "$BIG_SIZE")"
}

# wrk output -> "rps p50_ms p99_ms non2xx socket_errors requests"
parse_wrk() {
    awk '
        function ms(v,   n, u) {
            n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
            if (u == "us") return n / 1000
            if (u == "ms") return n
            if (u == "s") return n * 1000
            if (u == "m") return n * 60000
            return -1
        }
        BEGIN { rps = ""; p50 = -1; p99 = -1; non2xx = 0; sockerr = 0; reqs = 0 }
        /^Requests\/sec:/ { rps = $2 }
        / requests in / { reqs = $1 }
        /^[ \t]+50%/ { p50 = ms($2) }
        /^[ \t]+99%/ { p99 = ms($2) }
        /Non-2xx or 3xx responses:/ { non2xx = $NF }
        /Socket errors:/ { gsub(/,/, ""); sockerr = $4 + $6 + $8 + $10 }
        END { printf "%s %s %s %d %d %d\n", rps, p50, p99, non2xx, sockerr, reqs }
    '
}

# warm_auth TARGET HEADERS…: one request with the run's credentials before the timed run,
# as a docker login comes before a pull, so a proxy that caches verified passwords (the gate,
# Caddy) starts the run warm. Caddy's cache has no single flight: against a cold cache every
# one of h2load's 640 concurrent first requests ran bcrypt (~100 ms of CPU each), and h2load
# completed none in 3 s.
warm_auth() {
    local t="$1"; shift
    curl -sS -o /dev/null --cacert "$CA" "$@" "${BASE[$t]}/v2/$REPO/manifests/latest" || true
}

s3() {
    local t="$1" rep="$2" kind="$3" url c0 c1
    local -a headers=(-H "Accept: $MANIFEST_TYPE")
    url="${BASE[$t]}/v2/$REPO/manifests/latest"
    if [ "$t" != direct ]; then
        if [ "$kind" = bcrypt ]; then headers+=(-H "$AUTH_BCRYPT"); else headers+=(-H "$AUTH_APR1"); fi
    fi
    if [ "$kind" = apr1 ] && bcrypt_only "$t"; then
        log "  ($t cannot check APR1 passwords: skipped, its S3 APR1 cells stay empty)"
        return 0
    fi
    warm_auth "$t" "${headers[@]}"
    wrk -t2 -c64 -d2s --timeout 10s "${headers[@]}" "$url" >/dev/null 2>&1 || true
    c0="$(cpu_ticks "$t")"
    wrk -t2 -c64 -d"${DURATION}s" --timeout 10s --latency "${headers[@]}" "$url" >"$TMP/wrk.out" 2>&1 \
        || die "$t: wrk failed: $(cat "$TMP/wrk.out")"
    c1="$(cpu_ticks "$t")"
    local rps p50 p99 non2xx sockerr reqs
    read -r rps p50 p99 non2xx sockerr reqs < <(parse_wrk <"$TMP/wrk.out")
    [ -n "$rps" ] || die "$t: S3 $kind: cannot parse wrk output: $(cat "$TMP/wrk.out")"
    [ "$non2xx" -eq 0 ] || die "$t: S3 $kind: $non2xx non-2xx answers: $(cat "$TMP/wrk.out")"
    [ "$sockerr" -eq 0 ] || log "$t: S3 $kind: $sockerr socket errors (timeouts count here)"
    record "s3_${kind}_rps" "$t" "$rep" "$rps"
    # nginx checks bcrypt on every request in its event loop (HAProxy in its threads): it may
    # complete none at all.
    if [ "$reqs" -eq 0 ]; then
        log "$t: S3 $kind: no request completed in ${DURATION}s"
        settle "$t"
        return 0
    fi
    record "s3_${kind}_p50" "$t" "$rep" "$p50"
    record "s3_${kind}_p99" "$t" "$rep" "$p99"
    record "s3_${kind}_cpu_us" "$t" "$rep" "$(awk -v t=$((c1 - c0)) -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN { printf "%.1f", t / hz / n * 1e6 }')"
    settle "$t"
}

# settle TARGET: wait until the target stops using CPU (nginx and HAProxy may still be
# checking bcrypt passwords of requests wrk gave up on), so it does not slow the next target
# down.
settle() {
    local a b
    a="$(cpu_ticks "$1")"
    for _ in $(seq 240); do
        sleep 0.5
        b="$(cpu_ticks "$1")"
        [ "$b" -gt $((a + 2)) ] || return 0
        a="$b"
    done
    log "$1 is still busy after 120 s"
}

s4() {
    local t="$1" rep="$2" t0 t1 c0 c1 i
    local -a jobs=()
    for i in $(seq "$PARALLEL"); do download_prepare "$TMP/s4-$i" "$PAR_SIZE"; done
    c0="$(cpu_ticks "$t")"; t0="$(now)"
    for i in $(seq "$PARALLEL"); do
        download "$t" "/v2/$REPO/blobs/sha256:$PAR_SHA" "$TMP/s4-$i" --http1.1 &
        jobs+=($!)
    done
    local failed=0
    for i in "${jobs[@]}"; do wait "$i" || failed=$((failed + 1)); done
    t1="$(now)"; c1="$(cpu_ticks "$t")"
    for i in $(seq "$PARALLEL"); do
        download_verify "$t" "$TMP/s4-$i" "$PAR_SIZE" "$PAR_SHA" || failed=$((failed + 1))
    done
    [ "$failed" -eq 0 ] || die "$t: S4: $failed of $PARALLEL downloads failed"
    record s4_mbps "$t" "$rep" "$(mbps $((PAR_SIZE * PARALLEL)) "$t0" "$t1")"
    record s4_cpu "$t" "$rep" "$(cpu_per_gib $((c1 - c0)) $((PAR_SIZE * PARALLEL)))"
}

# S4 over HTTP/2: the same 16 downloads as streams of one connection (one curl, -Z). curl's
# -o truncates each file, so curl allocates its pages while it writes (every target alike);
# the proxy's CPU per GiB is what compares with S4. Proxies only: the registry speaks
# HTTP/1.1 only.
s4_h2() {
    local t="$1" rep="$2" t0 t1 c0 c1 i dir="${SINK:-$TMP}" conns sizes
    local -a outs=()
    for i in $(seq "$PARALLEL"); do
        outs+=(-o "$dir/s4-$i" "${BASE[$t]}/v2/$REPO/blobs/sha256:$PAR_SHA")
    done
    c0="$(cpu_ticks "$t")"; t0="$(now)"
    # shellcheck disable=SC2046
    curl -sS --no-progress-meter --fail -Z --parallel-max "$PARALLEL" --http2 $(curl_args "$t") \
        -w '%{num_connects} %{size_download} %{http_version}\n' "${outs[@]}" >"$TMP/s4h2.out" 2>"$TMP/s4h2.err" \
        || die "$t: S4 (h2) download failed: $(head -c 300 "$TMP/s4h2.err")"
    t1="$(now)"; c1="$(cpu_ticks "$t")"
    # One connection for all: the connects of every transfer add up to 1, each is HTTP/2.
    conns="$(awk 'NF == 3 { n += $1 } END { print n + 0 }' "$TMP/s4h2.out")"
    sizes="$(awk -v s="$PAR_SIZE" 'NF == 3 && $2 == s && $3 == 2 { n++ } END { print n + 0 }' "$TMP/s4h2.out")"
    [ "$conns" = 1 ] && [ "$sizes" = "$PARALLEL" ] \
        || die "$t: S4 (h2): $sizes of $PARALLEL complete HTTP/2 downloads over $conns connection(s): $(head -c 300 "$TMP/s4h2.out") $(head -c 300 "$TMP/s4h2.err")"
    for i in $(seq "$PARALLEL"); do
        [ "$(openssl dgst -sha256 -r "$dir/s4-$i" | cut -d' ' -f1)" = "$PAR_SHA" ] \
            || die "$t: S4 (h2): download $i has another sha256"
    done
    record s4_h2_mbps "$t" "$rep" "$(mbps $((PAR_SIZE * PARALLEL)) "$t0" "$t1")"
    record s4_h2_cpu "$t" "$rep" "$(cpu_per_gib $((c1 - c0)) $((PAR_SIZE * PARALLEL)))"
}

s5_idle() {
    local t="$1" rep="$2" before after port line
    [ "$t" = direct ] && return 0
    # A fresh process: one that held connections before keeps the freed memory in its
    # allocator and would hold the next N for almost nothing.
    stop_pid "${PID[$t]}"
    start_target "$t"
    port="${BASE[$t]##*:}"
    sleep 1
    before="$(status_kib "$t" VmRSS)"
    python3 "$ROOT/bench/idle_conns.py" --cacert "$CA" 127.0.0.1 "$port" "$IDLE_CONNS" \
        >"$TMP/idle.out" 2>"$TMP/idle.err" < <(sleep 600) &
    local client=$!
    PIDS_EXTRA+=("$client")
    for _ in $(seq 1200); do
        line="$(head -n1 "$TMP/idle.out")"
        [ -n "$line" ] && break
        kill -0 "$client" 2>/dev/null || break
        sleep 0.1
    done
    case "$line" in
        ready*) ;;
        *) die "$t: S5: the idle client did not connect: $line $(head -c 500 "$TMP/idle.err")" ;;
    esac
    sleep 2
    after="$(status_kib "$t" VmRSS)"
    stop_pid "$client"
    PIDS_EXTRA=()
    record s5_idle_kib "$t" "$rep" "$(awk -v a="$after" -v b="$before" -v n="$IDLE_CONNS" 'BEGIN { printf "%.2f", (a - b) / n }')"
    sleep 2   # let the proxy close them before the next target
}

s6_handshakes() {
    local t="$1" rep="$2" c0 c1
    [ "$t" = direct ] && return 0
    c0="$(cpu_ticks "$t")"
    # GET /v2/ without credentials: the proxy answers 401 itself, so the registry (about
    # 1 ms of CPU per request) does not set the pace of a handshake benchmark.
    wrk -t2 -c16 -d"${DURATION}s" --timeout 10s -H 'Connection: close' \
        "${BASE[$t]}/v2/" >"$TMP/wrk.out" 2>&1 || die "$t: wrk failed: $(cat "$TMP/wrk.out")"
    c1="$(cpu_ticks "$t")"
    local rps p50 p99 non2xx sockerr reqs
    read -r rps p50 p99 non2xx sockerr reqs < <(parse_wrk <"$TMP/wrk.out")
    [ "$reqs" -gt 0 ] && [ "$non2xx" -eq "$reqs" ] || die "$t: S6: expected only 401 answers: $(cat "$TMP/wrk.out")"
    record s6_conn_per_s "$t" "$rep" "$rps"
    record s6_cpu_us "$t" "$rep" "$(awk -v t=$((c1 - c0)) -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN { printf "%.1f", t / hz / n * 1e6 }')"
}

s6_h2() {
    local t="$1" rep="$2" rps ok auth="$AUTH_APR1"
    [ "$t" = direct ] && return 0
    # Caddy and HAProxy as the bcrypt user: HAProxy checks bcrypt on every request here.
    bcrypt_only "$t" && auth="$AUTH_BCRYPT"
    warm_auth "$t" -H "$auth" -H "Accept: $MANIFEST_TYPE"
    h2load -c64 -m10 -t2 -D "$DURATION" --warm-up-time=1 -H "$auth" -H "Accept: $MANIFEST_TYPE" \
        "${BASE[$t]}/v2/$REPO/manifests/latest" >"$TMP/h2.out" 2>&1 || die "$t: h2load failed: $(cat "$TMP/h2.out")"
    grep -q 'Application protocol: h2' "$TMP/h2.out" || die "$t: h2load did not negotiate h2: $(cat "$TMP/h2.out")"
    rps="$(sed -n 's/^finished in [^,]*, \([0-9.]*\) req\/s.*/\1/p' "$TMP/h2.out")"
    ok="$(awk '/^status codes:/ { print ($5 + $7 + $9 == 0) }' "$TMP/h2.out")"
    [ -n "$rps" ] && [ "$ok" = 1 ] || die "$t: h2load: $(cat "$TMP/h2.out")"
    record s6_h2_rps "$t" "$rep" "$rps"
    settle "$t"   # HAProxy may still be checking the passwords of streams h2load left behind
}

# Targets in a rotated order each repetition, so no target always goes first.
rotated() {
    local rep="$1" n="${#TARGETS[@]}" i
    for i in $(seq 0 $((n - 1))); do echo "${TARGETS[$(((i + rep) % n))]}"; done
}
# The same without nginx-noauth: a reference for S3 alone, every other scenario runs these.
rotated_main() { rotated "$1" | grep -vx nginx-noauth || true; }

sink_setup
LOAD_START="$(cut -d' ' -f1-3 /proc/loadavg)"
log "$REPS repetition(s): ${BLOB_MIB} MiB blob, $PARALLEL x ${PAR_MIB} MiB, ${DURATION}s runs, $IDLE_CONNS idle connections"
# Peak RssAnon and RssFile of each proxy over S1-S4, beside VmHWM (see bench/rss_peak.py).
sampled=()
for t in "${TARGETS[@]}"; do
    [ "$t" = direct ] || sampled+=("$t=$(pids_of "$t" | paste -sd, -)")
done
python3 "$ROOT/bench/rss_peak.py" "$TMP/rss_peak.tsv" "${sampled[@]}" &
RSS_SAMPLER=$!
PIDS_EXTRA+=("$RSS_SAMPLER")
for rep in $(seq "$REPS"); do
    mapfile -t order < <(rotated "$rep")
    log "repetition $rep/$REPS (order: ${order[*]}; loadavg $(cut -d' ' -f1-3 /proc/loadavg))"
    mapfile -t main < <(rotated_main "$rep")
    if want S1; then
        for t in "${main[@]}"; do log "  S1 $t"; s1 "$t" "$rep" h1; done
        for t in "${main[@]}"; do [ "$t" = direct ] || { log "  S1 h2 $t"; s1 "$t" "$rep" h2; }; done
    fi
    if want S2; then
        for t in "${main[@]}"; do log "  S2 PUT $t"; s2 "$t" "$rep" put; done
        for t in "${main[@]}"; do log "  S2 PATCH $t"; s2 "$t" "$rep" patch; done
    fi
    if want S3; then
        for kind in apr1 bcrypt; do
            for t in "${order[@]}"; do log "  S3 $kind $t"; s3 "$t" "$rep" "$kind"; done
        done
    fi
    if want S4; then
        for t in "${main[@]}"; do log "  S4 $t"; s4 "$t" "$rep"; done
        for t in "${main[@]}"; do [ "$t" = direct ] || { log "  S4 h2 $t"; s4_h2 "$t" "$rep"; }; done
    fi
done
# Peak RSS over S1-S4 (before the idle connections of S5).
kill -TERM "$RSS_SAMPLER"
wait "$RSS_SAMPLER" || die "the RSS sampler failed"
PIDS_EXTRA=()
for t in $(rotated_main 0); do
    [ "$t" = direct ] && continue
    read -r anon file < <(awk -F'\t' -v t="$t" '$1 == t { print $2, $3 }' "$TMP/rss_peak.tsv")
    record s5_peak_mib "$t" 1 "$(mib "$(status_kib "$t" VmHWM)")"
    record s5_peak_anon_mib "$t" 1 "$(mib "${anon:-0}")"
    record s5_peak_file_mib "$t" 1 "$(mib "${file:-0}")"
done
for rep in $(seq "$REPS"); do
    mapfile -t main < <(rotated_main "$rep")
    if want S5; then
        for t in "${main[@]}"; do [ "$t" = direct ] || log "  S5 idle $t"; s5_idle "$t" "$rep"; done
    fi
    if want S6; then
        for t in "${main[@]}"; do [ "$t" = direct ] || log "  S6 handshakes $t"; s6_handshakes "$t" "$rep"; done
        for t in "${main[@]}"; do [ "$t" = direct ] || log "  S6 h2 $t"; s6_h2 "$t" "$rep"; done
    fi
done
LOAD_END="$(cut -d' ' -f1-3 /proc/loadavg)"

# ---------------------------------------------------------------------------------------------
# Report.
# ---------------------------------------------------------------------------------------------
COMMIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
[ -z "$(git -C "$ROOT" status --porcelain --untracked-files=no -- src Cargo.toml Cargo.lock 2>/dev/null)" ] || COMMIT="$COMMIT+dirty"
export RUN_DATE="$(date -u '+%Y-%m-%d %H:%M UTC')" RUN_COMMIT="$COMMIT" RUN_REPS="$REPS" RUN_QUICK="$QUICK"
export RUN_CPU="$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)" RUN_NPROC="$(nproc)"
export RUN_AES="$(grep -qw aes /proc/cpuinfo && echo yes || echo no)" RUN_KERNEL="$(uname -r)"
RUN_CADDY=""; RUN_HAPROXY=""
has_target caddy && RUN_CADDY="$(caddy version | awk '{ print $1 }')"
has_target haproxy && RUN_HAPROXY="$(haproxy -v | awk 'NR == 1 { print $3 }')"
export RUN_CADDY RUN_HAPROXY RUN_SUITES="$SUITES"
export RUN_NGINX="$(nginx -v 2>&1 | sed 's/^nginx version: //')" RUN_REGISTRY="$(docker-registry --version | awk '{ print $3 }')"
export RUN_RUSTC="$(rustc --version)" RUN_CURL="$(curl --version | head -n1 | cut -d' ' -f1-2)"
export RUN_LOAD_START="$LOAD_START" RUN_LOAD_END="$LOAD_END" RUN_BLOB_MIB="$BLOB_MIB" RUN_PAR_MIB="$PAR_MIB"
export RUN_DIGEST="$DIGEST_WHERE"
export RUN_CHUNK_MIB="$CHUNK_MIB" RUN_DURATION="$DURATION" RUN_IDLE="$IDLE_CONNS" RUN_MANIFEST="$MANIFEST_BYTES"
REPORT="$(python3 "$ROOT/bench/report.py" "$RESULTS")"
echo "$REPORT"
if [ "$WRITE" -eq 1 ]; then
    echo "$REPORT" >"$ROOT/bench/results-run.md"
    cp "$RESULTS" "$ROOT/bench/results-run.tsv"
    log "wrote bench/results-run.md and bench/results-run.tsv"
fi

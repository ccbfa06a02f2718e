#!/usr/bin/env bash
# Benchmark: authenticated vs anonymous manifest pulls through registry-gate.
#
# Measures requests/s and latency of `GET /v2/bench/app/manifests/latest` (an OCI manifest)
# through the release build of the gate in front of a real `docker-registry serve`, for:
#
#   registry   the registry directly over plain HTTP (reference: no gate, no TLS)
#   none       the gate with [auth] mode = "none"           (anonymous baseline)
#   bcrypt     the gate, Basic auth, bcrypt cost-10 htpasswd (htpasswd -nbB -C 10)
#   apr1       the gate, Basic auth, APR1 htpasswd           (htpasswd -nbm)
#   token      the gate, mode = "token", one bearer token fetched once from GET /token
#
# Each target runs --rounds times, interleaved (round 1: all targets, round 2: all targets, …)
# so drift on the machine hits every target alike; the table reports the median, min and max
# req/s, the median p50/p99 latency, the gate's CPU time per request and the ratio to the
# anonymous gate (per round, median over rounds).
# The goal from the issue: bcrypt / none >= 0.8.
#
# Not a test: it never fails on a slow result, only when something does not work (a manifest
# GET that is not 200, non-2xx answers during a run, a process that does not start).
#
# Usage: bash bench/auth.sh [--write] [--rounds N] [--duration SECS] [--warmup SECS]
#                           [--connections N] [--threads N]
#   --write   also write the report to bench/results-auth.md
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"

ROUNDS=3
DURATION=10
WARMUP=2
CONNECTIONS=64
THREADS=2
WRITE=0

usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --write) WRITE=1 ;;
        --rounds) ROUNDS="$2"; shift ;;
        --duration) DURATION="$2"; shift ;;
        --warmup) WARMUP="$2"; shift ;;
        --connections) CONNECTIONS="$2"; shift ;;
        --threads) THREADS="$2"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "auth.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
for n in "$ROUNDS" "$DURATION" "$WARMUP" "$CONNECTIONS" "$THREADS"; do
    [[ "$n" =~ ^[0-9]+$ ]] || { echo "auth.sh: not a whole number: $n" >&2; exit 2; }
done
[ "$ROUNDS" -ge 1 ] && [ "$DURATION" -ge 1 ] || { echo "auth.sh: --rounds and --duration must be >= 1" >&2; exit 2; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPO="bench/app"
MANIFEST_TYPE="application/vnd.oci.image.manifest.v1+json"
BENCH_USER="bench"
BENCH_PASS="bench-$(date +%s)-$$"

log() { echo "auth.sh: $*" >&2; }
die() { echo "auth.sh: FAILED: $*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# Tools: install only what is missing (Debian/Ubuntu).
# ---------------------------------------------------------------------------------------------
missing=""
need() {
    command -v "$1" >/dev/null 2>&1 && return 0
    case " $missing " in *" $2 "*) ;; *) missing="$missing $2" ;; esac
}
need wrk wrk
need docker-registry docker-registry
need htpasswd apache2-utils
need curl curl
need skopeo skopeo
need python3 python3
need sha256sum coreutils
need tar tar
need gzip gzip
if [ -n "$missing" ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    log "installing:$missing"
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086
    $SUDO apt-get install -y -qq $missing >&2 \
        || { $SUDO apt-get update -qq >&2 && $SUDO apt-get install -y -qq $missing >&2; }
fi
command -v cargo >/dev/null 2>&1 || die "cargo is not installed (https://rustup.rs)"

# ---------------------------------------------------------------------------------------------
# Build once, in release.
# ---------------------------------------------------------------------------------------------
log "cargo build --release"
(cd "$ROOT" && cargo build --release --quiet >&2)
GATE_BIN="$ROOT/target/release/registry-gate"
[ -x "$GATE_BIN" ] || die "no $GATE_BIN after cargo build --release"

# ---------------------------------------------------------------------------------------------
# Scratch directory and cleanup of everything started here.
# ---------------------------------------------------------------------------------------------
TMP="$(mktemp -d "${TMPDIR:-/tmp}/registry-gate-bench.XXXXXX")"
REGISTRY_PID=""
GATE_PID=""

cleanup() {
    local rc=$?
    stop_pid "$GATE_PID"
    stop_pid "$REGISTRY_PID"
    if [ "$rc" -ne 0 ]; then
        for f in "$TMP"/registry.log "$TMP"/gate-*.log; do
            [ -s "$f" ] || continue
            echo "--- $(basename "$f") (last 20 lines) ---" >&2
            tail -n 20 "$f" >&2
        done
    fi
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM



# ---------------------------------------------------------------------------------------------
# The registry, with one small OCI image pushed by hand.
# ---------------------------------------------------------------------------------------------
start_registry registry-gate-bench

# push_blob FILE: POST an upload, PUT the bytes with their digest; prints the digest.
push_blob() {
    local file="$1" digest location code
    digest="sha256:$(sha256sum "$file" | cut -d' ' -f1)"
    location="$(curl -sS -o /dev/null -D - -X POST "$REGISTRY_URL/v2/$REPO/blobs/uploads/" \
        | tr -d '\r' | sed -n 's/^[Ll]ocation: //p')"
    [ -n "$location" ] || die "no upload Location from POST /v2/$REPO/blobs/uploads/"
    case "$location" in http*) ;; *) location="$REGISTRY_URL$location" ;; esac
    case "$location" in *\?*) location="$location&digest=$digest" ;; *) location="$location?digest=$digest" ;; esac
    code="$(curl -sS -o /dev/null -w '%{http_code}' -X PUT \
        -H 'Content-Type: application/octet-stream' --data-binary "@$file" "$location")"
    [ "$code" = 201 ] || die "blob upload of $file answered $code, not 201"
    echo "$digest"
}

mkdir -p "$TMP/image/rootfs"
echo "registry-gate benchmark" >"$TMP/image/rootfs/hello.txt"
tar -C "$TMP/image/rootfs" --owner=0 --group=0 --numeric-owner --mtime='2020-01-01' -cf "$TMP/image/layer.tar" hello.txt
DIFF_ID="sha256:$(sha256sum "$TMP/image/layer.tar" | cut -d' ' -f1)"
gzip -n -c "$TMP/image/layer.tar" >"$TMP/image/layer.tar.gz"
printf '{"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":["%s"]}}' \
    "$DIFF_ID" >"$TMP/image/config.json"
LAYER_DIGEST="$(push_blob "$TMP/image/layer.tar.gz")"
CONFIG_DIGEST="$(push_blob "$TMP/image/config.json")"
printf '{"schemaVersion":2,"mediaType":"%s","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"%s","size":%d}]}' \
    "$MANIFEST_TYPE" "$CONFIG_DIGEST" "$(stat -c %s "$TMP/image/config.json")" \
    "$LAYER_DIGEST" "$(stat -c %s "$TMP/image/layer.tar.gz")" >"$TMP/image/manifest.json"
code="$(curl -sS -o /dev/null -w '%{http_code}' -X PUT -H "Content-Type: $MANIFEST_TYPE" \
    --data-binary "@$TMP/image/manifest.json" "$REGISTRY_URL/v2/$REPO/manifests/latest")"
[ "$code" = 201 ] || die "manifest PUT answered $code, not 201"
MANIFEST_BYTES="$(stat -c %s "$TMP/image/manifest.json")"
log "pushed $REPO:latest ($MANIFEST_BYTES-byte OCI manifest)"

# Cross-check with a real client: skopeo must be able to read what was pushed.
skopeo inspect --raw --tls-verify=false "docker://127.0.0.1:$REGISTRY_PORT/$REPO:latest" \
    >"$TMP/image/manifest.skopeo" 2>"$TMP/skopeo.log" \
    || die "skopeo cannot read the pushed image: $(cat "$TMP/skopeo.log")"
cmp -s "$TMP/image/manifest.json" "$TMP/image/manifest.skopeo" \
    || die "skopeo read a different manifest than the one pushed"

# ---------------------------------------------------------------------------------------------
# htpasswd files and gate configurations. All gates share [tls] dir = "certs" in $TMP: the
# first one creates the CA (certs/ca.pem), the server certificate and the token key.
# ---------------------------------------------------------------------------------------------
htpasswd -nbB -C 10 "$BENCH_USER" "$BENCH_PASS" | sed '/^$/d' >"$TMP/htpasswd-bcrypt"
htpasswd -nbm "$BENCH_USER" "$BENCH_PASS" | sed '/^$/d' >"$TMP/htpasswd-apr1"
chmod 600 "$TMP"/htpasswd-*
grep -qF ":\$2y\$10\$" "$TMP/htpasswd-bcrypt" || die "htpasswd -B -C 10 did not write a \$2y\$10\$ hash"
grep -qF ":\$apr1\$" "$TMP/htpasswd-apr1" || die "htpasswd -m did not write an \$apr1\$ hash"
CA="$TMP/certs/ca.pem"
BASIC_HEADER="Authorization: Basic $(printf '%s:%s' "$BENCH_USER" "$BENCH_PASS" | base64 -w0)"

# write_gate_config NAME PORT: $TMP/gate-NAME.toml
write_gate_config() {
    local name="$1" port="$2" auth
    case "$name" in
        none) auth='mode = "none"' ;;
        bcrypt) auth=$'mode = "basic"\nhtpasswd = ["htpasswd-bcrypt"]' ;;
        apr1) auth=$'mode = "basic"\nhtpasswd = ["htpasswd-apr1"]' ;;
        token) auth=$'mode = "token"\nhtpasswd = ["htpasswd-bcrypt"]\ntoken_ttl = "1h"' ;;
        *) die "unknown gate config $name" ;;
    esac
    cat >"$TMP/gate-$name.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
shutdown_grace = "2s"

[upstream]
url = "$REGISTRY_URL"

[tls]
dir = "certs"

[log]
level = "warn"

[auth]
$auth
EOF
}

start_gate() {
    local name="$1" port
    port="$(free_port)"
    write_gate_config "$name" "$port"
    "$GATE_BIN" run --config "$TMP/gate-$name.toml" >>"$TMP/gate-$name.log" 2>&1 </dev/null &
    GATE_PID=$!
    GATE_URL="https://127.0.0.1:$port"
    for _ in $(seq 100); do
        [ -s "$CA" ] && wait_http "$GATE_URL/v2/" --cacert "$CA" && return 0
        kill -0 "$GATE_PID" 2>/dev/null || die "gate ($name) exited at start-up"
        sleep 0.1
    done
    die "gate ($name) did not answer on $GATE_URL/v2/"
}

stop_gate() {
    stop_pid "$GATE_PID"
    GATE_PID=""
}

# status URL [curl args…]: the HTTP status of a manifest GET.
status() {
    local url="$1"; shift
    curl -sS -o "$TMP/last-body" -w '%{http_code}' --max-time 10 \
        -H "Accept: $MANIFEST_TYPE" "$@" "$url" || true
}

# ---------------------------------------------------------------------------------------------
# One measurement: prepare the target, check that the manifest GET is 200 (and that without
# credentials it is 401 where credentials are needed), run wrk, record one TSV line.
# ---------------------------------------------------------------------------------------------
TARGETS=(registry none bcrypt apr1 token)
RESULTS="$TMP/results.tsv"
: >"$RESULTS"

# CPU time (user + system) a process has used, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
CLK_TCK="$(getconf CLK_TCK)"

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
        /^Requests\/sec:/ { rps = $2 }
        / requests in / { reqs = $1 }
        /^[ \t]+50%/ { p50 = ms($2) }
        /^[ \t]+99%/ { p99 = ms($2) }
        /Non-2xx or 3xx responses:/ { non2xx = $NF }
        /Socket errors:/ { gsub(/,/, ""); sockerr = $4 + $6 + $8 + $10 }
        END { printf "%s %s %s %d %d %d\n", rps, p50, p99, non2xx, sockerr, reqs }
    '
}

measure() {
    local target="$1" round="$2" url code token
    local -a headers=()
    if [ "$target" = registry ]; then
        url="$REGISTRY_URL/v2/$REPO/manifests/latest"
        code="$(status "$url")"
        [ "$code" = 200 ] || die "registry: manifest GET answered $code, not 200: $(head -c 300 "$TMP/last-body")"
    else
        start_gate "$target"
        url="$GATE_URL/v2/$REPO/manifests/latest"
        case "$target" in
            bcrypt|apr1) headers=(-H "$BASIC_HEADER") ;;
            token)
                local token_url="$GATE_URL/token?service=registry-gate&scope=repository:$REPO:pull"
                curl -sS --fail --cacert "$CA" -u "$BENCH_USER:$BENCH_PASS" "$token_url" >"$TMP/token.json" \
                    || die "token: GET /token failed"
                token="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["token"])' "$TMP/token.json")" \
                    || die "token: no \"token\" in the /token answer: $(head -c 300 "$TMP/token.json")"
                headers=(-H "Authorization: Bearer $token")
                ;;
        esac
        if [ "$target" != none ]; then
            code="$(status "$url" --cacert "$CA")"
            [ "$code" = 401 ] || die "$target: manifest GET without credentials answered $code, not 401 (auth is not on?)"
        fi
        # Also warms the gate's credential cache, so bcrypt runs once here and not in wrk.
        code="$(status "$url" --cacert "$CA" "${headers[@]}")"
        [ "$code" = 200 ] || die "$target: manifest GET answered $code, not 200: $(head -c 300 "$TMP/last-body")"
        cmp -s "$TMP/last-body" "$TMP/image/manifest.json" || die "$target: the gate served a different manifest"
    fi

    local -a wrk_args=(-t"$THREADS" -c"$CONNECTIONS" --latency "${headers[@]}" -H "Accept: $MANIFEST_TYPE")
    if [ "$WARMUP" -gt 0 ]; then
        wrk "${wrk_args[@]}" -d"${WARMUP}s" "$url" >/dev/null
    fi
    log "round $round/$ROUNDS: $target (${DURATION}s)"
    # The gate's own CPU time per request, independent of how fast the registry is.
    local cpu_pid="${GATE_PID:-$REGISTRY_PID}" cpu_before cpu_after
    cpu_before="$(cpu_ticks "$cpu_pid")"
    wrk "${wrk_args[@]}" -d"${DURATION}s" "$url" >"$TMP/wrk.out" 2>&1 || die "$target: wrk failed: $(cat "$TMP/wrk.out")"
    cpu_after="$(cpu_ticks "$cpu_pid")"
    local rps p50 p99 non2xx sockerr reqs cpu_us
    read -r rps p50 p99 non2xx sockerr reqs < <(parse_wrk <"$TMP/wrk.out")
    [ -n "$rps" ] && [ "$p99" != "-1" ] || die "$target: cannot parse wrk output: $(cat "$TMP/wrk.out")"
    [ "$non2xx" -eq 0 ] || die "$target: $non2xx non-2xx answers during the run:
$(cat "$TMP/wrk.out")"
    [ "$sockerr" -eq 0 ] || log "$target: $sockerr socket errors during round $round"
    [ "$reqs" -gt 0 ] || die "$target: wrk completed no request: $(cat "$TMP/wrk.out")"
    cpu_us="$(( (cpu_after - cpu_before) * 1000000 / CLK_TCK / reqs ))"
    log "  $rps req/s, p50 ${p50} ms, p99 ${p99} ms, ${cpu_us} µs CPU/request ($([ "$target" = registry ] && echo registry || echo gate))"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$target" "$round" "$rps" "$p50" "$p99" "$sockerr" "$cpu_us" >>"$RESULTS"

    [ "$target" = registry ] || stop_gate
}

log "$ROUNDS rounds x ${#TARGETS[@]} targets, wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s (+${WARMUP}s warm-up each)"
for round in $(seq "$ROUNDS"); do
    for target in "${TARGETS[@]}"; do
        measure "$target" "$round"
    done
done

# ---------------------------------------------------------------------------------------------
# Report.
# ---------------------------------------------------------------------------------------------
CPU="$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)"
COMMIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
DIRTY=""
if [ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ]; then DIRTY="+dirty"; fi

REPORT="$(python3 - "$RESULTS" <<EOF
import statistics, sys

rows = {}
by_round = {}
for line in open(sys.argv[1]):
    target, rnd, rps, p50, p99, err, cpu = line.rstrip("\n").split("\t")
    rows.setdefault(target, []).append((float(rps), float(p50), float(p99), int(err), int(cpu)))
    by_round.setdefault(rnd, {})[target] = float(rps)

labels = {
    "registry": ("registry directly, plain HTTP", "none (reference, no gate, no TLS)"),
    "none": ("gate", 'anonymous, mode = "none"'),
    "bcrypt": ("gate", "Basic, bcrypt cost 10"),
    "apr1": ("gate", "Basic, APR1"),
    "token": ("gate", "Bearer token (from GET /token once)"),
}
median = {t: statistics.median(r[0] for r in v) for t, v in rows.items()}

# Ratio to the anonymous gate: each round's run against the same round's anonymous run (the
# targets are interleaved, so drift between rounds cancels), then the median over rounds.
def ratio(t):
    pairs = [r[t] / r["none"] for r in by_round.values() if t in r and r.get("none")]
    return statistics.median(pairs) if pairs else None

print("## registry-gate: manifest GET throughput by authentication")
print()
print("- date: $(date -u '+%Y-%m-%d %H:%M UTC'), commit $COMMIT$DIRTY, release build")
print("- machine: $(nproc) CPUs ($CPU); wrk and the gate share them")
print("- wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --latency (after a ${WARMUP}s warm-up), "
      "GET /v2/$REPO/manifests/latest ($MANIFEST_BYTES-byte OCI manifest), HTTP/1.1 keep-alive, TLS to the gate")
print("- $ROUNDS rounds, targets interleaved; req/s median (min to max); latency is the median over rounds")
print("- vs anonymous gate: req/s over the anonymous gate's req/s in the same round, median over rounds")
print("- CPU µs/req: user + system CPU time of the serving process (the gate; the registry in the first row) "
      "during the run divided by the requests completed, median over rounds")
print()
print("| target | authentication | req/s median | req/s min | req/s max | p50 ms | p99 ms | CPU µs/req | vs anonymous gate |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
for t in ["registry", "none", "bcrypt", "apr1", "token"]:
    if t not in rows:
        continue
    v = rows[t]
    rps = [r[0] for r in v]
    p50 = statistics.median(r[1] for r in v)
    p99 = statistics.median(r[2] for r in v)
    q = ratio(t)
    q = f"{q:.2f}" if q is not None else "n/a"
    where, auth = labels[t]
    cpu = statistics.median(r[4] for r in v)
    errs = sum(r[3] for r in v)
    if errs:
        auth += f" ({errs} socket errors)"
    print(f"| {where} | {auth} | {median[t]:,.0f} | {min(rps):,.0f} | {max(rps):,.0f} | {p50:.2f} | {p99:.2f} | {cpu:.0f} | {q} |")
print()
r = ratio("bcrypt")
if r is not None:
    verdict = "met" if r >= 0.8 else "NOT met"
    print(f"Goal (bcrypt cost-10 Basic >= 0.8 x anonymous): {r:.2f}, {verdict}.")
EOF
)"

echo "$REPORT"
if [ "$WRITE" -eq 1 ]; then
    echo "$REPORT" >"$ROOT/bench/results-auth.md"
    log "wrote bench/results-auth.md"
fi

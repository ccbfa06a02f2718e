#!/usr/bin/env bash
# The registry browser's speed on a large registry (issue 15: "pages render in under 100 ms
# for a registry with 1,000 repositories and 10,000 tags").
#
# Starts a real docker-registry and the release gate in front of it, fills the registry
# through the gate (so the activity page holds a full ring too): one small layer uploaded
# once and mounted into every other repository, then per tag a config of its own (as
# separate builds have) and a manifest, over keep-alive HTTPS. Then it logs in through the
# browser's form and times repeated GETs of each page with curl (one connection per page,
# reused, so the numbers are the page's work and not TLS handshakes): the repository list,
# one repository's tag page (its first page), one tag's manifest page and the activity page.
# Prints median, p95 and max per page, and the first view (the check before the timed
# GETs: nothing remembered yet, TLS handshake included).
#
# Usage: bash bench/ui.sh [--repos N] [--tags N] [--requests N]
#   --repos N      repositories (default 1000)
#   --tags N       tags per repository (default 10)
#   --requests N   timed requests per page, after 5 warm-up ones (default 200)
#   --gate PATH    time this registry-gate binary instead of building target/release (A/B)
# Not a test: a slow page never fails it; it exits non-zero only when something is broken
# (a process does not start, a push or a page does not answer as it should).
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"

REPOS=1000
TAGS=10
REQUESTS=200
WARMUP=5
GATE_BIN=""

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --repos) REPOS="$2"; shift ;;
        --tags) TAGS="$2"; shift ;;
        --requests) REQUESTS="$2"; shift ;;
        --gate) GATE_BIN="$2"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "ui.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
for n in "$REPOS" "$TAGS" "$REQUESTS"; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "ui.sh: not a positive whole number: $n" >&2; exit 2; }
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH_USER="bench"
BENCH_PASS="bench-$(date +%s)-$$"

log() { echo "ui.sh: $*" >&2; }
die() { echo "ui.sh: FAILED: $*" >&2; exit 1; }

for tool in docker-registry curl python3; do
    command -v "$tool" >/dev/null 2>&1 \
        || die "$tool is not installed (sudo apt-get install -y docker-registry curl python3)"
done
if [ -z "$GATE_BIN" ]; then
    command -v cargo >/dev/null 2>&1 || die "cargo is not installed (https://rustup.rs)"
    log "cargo build --release"
    (cd "$ROOT" && cargo build --release --quiet >&2)
    GATE_BIN="$ROOT/target/release/registry-gate"
fi
[ -x "$GATE_BIN" ] || die "no gate binary at $GATE_BIN"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/registry-gate-bench-ui.XXXXXX")"
REGISTRY_PID=""
GATE_PID=""

cleanup() {
    local rc=$?
    stop_pid "$GATE_PID"
    stop_pid "$REGISTRY_PID"
    if [ "$rc" -ne 0 ]; then
        for f in "$TMP"/registry.log "$TMP"/gate.log; do
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



# The registry: filesystem storage in the temp dir, quiet.
start_registry registry-gate-bench-ui

# The gate: basic auth, one user who may do everything (a rule is still evaluated for every
# repository a page lists, as in production), the browser at its default /ui/.
start_basic_gate "$GATE_BIN" "$BENCH_USER" "$BENCH_PASS"

# The fill, through the gate over one keep-alive connection: a layer and config uploaded
# once to the first repository, mounted into the others (the registry links, nothing is
# copied), then a distinct manifest per tag (an annotation names the tag). 10,000 skopeo
# runs would take an hour; this takes about a minute.
log "filling: $REPOS repositories x $TAGS tags"
fill_start=$(date +%s)
python3 - "$GATE_URL" "$CA" "$BENCH_USER" "$BENCH_PASS" "$REPOS" "$TAGS" <<'PY'
import base64, hashlib, http.client, io, json, ssl, sys, tarfile, urllib.parse

url, ca, user, password, repos, tags = sys.argv[1:7]
repos, tags = int(repos), int(tags)
host = urllib.parse.urlsplit(url).netloc
auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
conn = http.client.HTTPSConnection(host, context=ssl.create_default_context(cafile=ca))

def call(method, path, body=None, headers=None, want=(200, 201, 202)):
    h = {"Authorization": auth}
    h.update(headers or {})
    conn.request(method, path, body=body, headers=h)
    r = conn.getresponse()
    r.read()
    if r.status not in want:
        sys.exit(f"{method} {path} answered {r.status}")
    return r

def digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()

layer_io = io.BytesIO()
with tarfile.open(fileobj=layer_io, mode="w") as tar:
    data = b"registry-gate ui benchmark\n"
    info = tarfile.TarInfo("hello.txt")
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
layer = layer_io.getvalue()

def upload(repo, blob):
    r = call("POST", f"/v2/{repo}/blobs/uploads/", want=(202,))
    location = urllib.parse.urlsplit(r.getheader("Location"))
    query = (location.query + "&" if location.query else "") + "digest=" + digest(blob)
    call("PUT", f"{location.path}?{query}", body=blob,
         headers={"Content-Type": "application/octet-stream"}, want=(201,))

first = "bench/r0000"
upload(first, layer)
media = "application/vnd.oci.image.manifest.v1+json"
for i in range(repos):
    repo = f"bench/r{i:04d}"
    if i:
        call("POST", f"/v2/{repo}/blobs/uploads/?mount={digest(layer)}&from={first}", want=(201,))
    for t in range(tags):
        # A config of its own per tag, as separate builds have: the page reads each one.
        config = json.dumps({
            "created": f"2024-05-01T{t % 24:02d}:{i % 60:02d}:00Z", "architecture": "amd64",
            "os": "linux", "config": {"Labels": {"bench.tag": f"{repo}:t{t}"}},
            "rootfs": {"type": "layers", "diff_ids": [digest(layer)]},
        }).encode()
        upload(repo, config)
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": media,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": digest(config), "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": digest(layer), "size": len(layer)}],
            "annotations": {"bench.tag": f"{repo}:t{t}"},
        }).encode()
        call("PUT", f"/v2/{repo}/manifests/t{t}", body=manifest,
             headers={"Content-Type": media}, want=(201,))
PY
log "filled in $(( $(date +%s) - fill_start )) s"

# A session, through the login form, as a browser would.
JAR="$TMP/cookies"
code="$(curl -sS -o /dev/null -w '%{http_code}' --cacert "$CA" -c "$JAR" \
    -H "Origin: $GATE_URL" --data-urlencode "user=$BENCH_USER" \
    --data-urlencode "password=$BENCH_PASS" "$GATE_URL/ui/login")"
[ "$code" = 303 ] || die "the browser login answered $code, not 303"

MID=$(( REPOS / 2 ))
REPO="$(printf 'bench/r%04d' "$MID")"
TAG="t$(( TAGS / 2 ))"

# One page: a check that it is the page (status and a marker), timed as the first view
# (nothing cached yet, TLS handshake included), then WARMUP + REQUESTS GETs on one reused
# connection; prints "median p95 max first" in ms and the page's size.
measure() {
    local path="$1" marker="$2" config="$TMP/curl.conf" i first
    first="$(curl -sS --cacert "$CA" -b "$JAR" -o "$TMP/page.html" -w '%{time_total}' \
        "$GATE_URL$path")" || die "GET $path failed"
    grep -qF -- "$marker" "$TMP/page.html" || die "GET $path: no \"$marker\" in the page"
    : >"$config"
    for (( i = 0; i < WARMUP + REQUESTS; i++ )); do
        printf 'url = "%s%s"\noutput = "/dev/null"\n' "$GATE_URL" "$path" >>"$config"
    done
    curl -sS --cacert "$CA" -b "$JAR" -w '%{http_code} %{time_total}\n' -K "$config" \
        >"$TMP/times" || die "timed GETs of $path failed"
    if awk '$1 != 200 { bad = 1 } END { exit !bad }' "$TMP/times"; then
        die "GET $path answered other than 200"
    fi
    tail -n "$REQUESTS" "$TMP/times" | awk '{ print $2 * 1000 }' | sort -n | awk -v n="$REQUESTS" '
        { v[NR] = $1 }
        END {
            p50 = v[int((n + 1) / 2)]; i95 = int(n * 0.95 + 0.999); if (i95 < 1) i95 = 1
            printf "%.1f %.1f %.1f", p50, v[i95], v[n]
        }'
    awk -v s="$first" 'BEGIN { printf " %.1f", s * 1000 }'
    printf ' %s\n' "$(stat -c %s "$TMP/page.html")"
}

log "timing $REQUESTS requests per page (after $WARMUP warm-up)"
printf '\n%s repositories x %s tags; %s timed GETs per page, one reused HTTP/1.1 connection\n\n' \
    "$REPOS" "$TAGS" "$REQUESTS"
printf '| page | path | median ms | p95 ms | max ms | first view ms | HTML bytes |\n|---|---|---|---|---|---|---|\n'
for spec in \
    "repository list|/ui/|href=\"/ui/repo/bench/r$(printf '%04d' $(( REPOS - 1 )))\"" \
    "tag page|/ui/repo/$REPO|docker pull 127.0.0.1:$GATE_PORT/$REPO:t0" \
    "manifest page|/ui/repo/$REPO/-/tag/$TAG|id=\"layers\"" \
    "activity page|/ui/activity|id=\"activity\""; do
    IFS='|' read -r name path marker <<<"$spec"
    read -r p50 p95 max first bytes <<<"$(measure "$path" "$marker")"
    printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$name" "\`$path\`" "$p50" "$p95" "$max" "$first" "$bytes"
done

#!/usr/bin/env bash
# What an OCI 1.1 referrer costs through the gate (issue 24): manifest PUTs with a `subject`,
# which the gate indexes in the subject's fallback tag, against PUTs without one, through the
# gate and straight to the registry.
#
# Starts a real docker-registry (with its access log on, to count the requests it gets) and
# the release gate in front of it, pushes the empty blob and a subject image, then times N
# sequential PUTs over one keep-alive connection each, per case:
#   direct-plain   a manifest without subject, straight to the registry (plain HTTP)
#   gate-plain     the same through the gate (HTTPS, basic auth, cached credentials)
#   gate-subject   a distinct referrer of the one subject each time, through the gate (its
#                  index grows to N entries)
# Prints median and p95 milliseconds per PUT and the registry requests per PUT (from its
# access log).
#
# Usage: bash bench/referrers.sh [--puts N] [--gate PATH]
#   --puts N     PUTs per case (default 200)
#   --gate PATH  this registry-gate binary instead of building target/release (A/B)
# Not a test: it exits non-zero only when something is broken.
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"

PUTS=200
GATE_BIN=""
usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --puts) PUTS="$2"; shift ;;
        --gate) GATE_BIN="$2"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "referrers.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
[[ "$PUTS" =~ ^[1-9][0-9]*$ ]] || { echo "referrers.sh: not a positive whole number: $PUTS" >&2; exit 2; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH_USER="bench"
BENCH_PASS="bench-$(date +%s)-$$"
log() { echo "referrers.sh: $*" >&2; }
die() { echo "referrers.sh: FAILED: $*" >&2; exit 1; }

for tool in docker-registry curl python3; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed"
done
if [ -z "$GATE_BIN" ]; then
    log "cargo build --release"
    (cd "$ROOT" && cargo build --release --quiet >&2)
    GATE_BIN="$ROOT/target/release/registry-gate"
fi
[ -x "$GATE_BIN" ] || die "no gate binary at $GATE_BIN"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/registry-gate-bench-referrers.XXXXXX")"
REGISTRY_PID=""
GATE_PID=""
cleanup() {
    local rc=$?
    stop_pid "$GATE_PID"
    stop_pid "$REGISTRY_PID"
    if [ "$rc" -ne 0 ]; then
        for f in "$TMP"/registry.log "$TMP"/gate.log; do
            [ -s "$f" ] && { echo "--- $(basename "$f") (last 20 lines) ---" >&2; tail -n 20 "$f" >&2; }
        done
    fi
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The registry with its access log on: one line per request it serves.
REGISTRY_ACCESS_LOG_OFF=false start_registry registry-gate-bench-referrers
start_basic_gate "$GATE_BIN" "$BENCH_USER" "$BENCH_PASS"

log "$PUTS PUTs per case"
python3 - "$GATE_URL" "$REGISTRY_URL" "$CA" "$BENCH_USER" "$BENCH_PASS" "$PUTS" "$TMP/registry.log" <<'PY'
import base64, hashlib, http.client, json, ssl, statistics, sys, time, urllib.parse

gate_url, registry_url, ca, user, password, puts, registry_log = sys.argv[1:8]
puts = int(puts)
auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
EMPTY = {"mediaType": "application/vnd.oci.empty.v1+json",
         "digest": "sha256:" + hashlib.sha256(b"{}").hexdigest(), "size": 2}

def connect(url):
    u = urllib.parse.urlparse(url)
    if u.scheme == "https":
        return http.client.HTTPSConnection(u.hostname, u.port, context=ssl.create_default_context(cafile=ca))
    return http.client.HTTPConnection(u.hostname, u.port)

def call(conn, method, path, body=b"", content_type=None):
    headers = {"Authorization": auth}
    if content_type:
        headers["Content-Type"] = content_type
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    return response.status, response.headers, data

def manifest(i, subject=None):
    m = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/vnd.example+json",
         "config": EMPTY, "layers": [EMPTY], "annotations": {"n": str(i)}}
    if subject:
        m["subject"] = {"mediaType": OCI_MANIFEST, "digest": subject, "size": 1}
    return json.dumps(m).encode()

conn = connect(gate_url)
status, headers, _ = call(conn, "POST", "/v2/bench/app/blobs/uploads/")
assert status == 202, status
location = headers["Location"]
path = location[location.index("/v2/"):] + "&digest=" + EMPTY["digest"]
status, _, body = call(conn, "PUT", path, b"{}", "application/octet-stream")
assert status == 201, (status, body)
subject_body = manifest("subject")
status, _, body = call(conn, "PUT", "/v2/bench/app/manifests/base", subject_body, OCI_MANIFEST)
assert status == 201, (status, body)
subject = "sha256:" + hashlib.sha256(subject_body).hexdigest()

def log_lines():
    with open(registry_log, errors="replace") as f:
        return sum(1 for line in f if '"PUT ' in line or '"GET ' in line or '"HEAD ' in line)

def run(name, url, with_subject, offset):
    conn = connect(url)
    call(conn, "GET", "/v2/")
    before = log_lines()
    times = []
    for i in range(puts):
        body = manifest(offset + i, subject if with_subject else None)
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        t0 = time.perf_counter()
        status, headers, data = call(conn, "PUT", f"/v2/bench/app/manifests/{digest}", body, OCI_MANIFEST)
        times.append((time.perf_counter() - t0) * 1000)
        assert status == 201, (name, status, data)
        if with_subject:
            assert headers.get("OCI-Subject") == subject, (name, dict(headers))
    time.sleep(0.5)
    per_put = (log_lines() - before) / puts
    times.sort()
    p95 = times[min(len(times) - 1, int(len(times) * 0.95))]
    print(f"| {name} | {statistics.median(times):.2f} | {p95:.2f} | {per_put:.1f} |")

print("| case | median ms per PUT | p95 ms | registry requests per PUT |")
print("|---|---|---|---|")
run("direct-plain", registry_url, False, 100000)
run("gate-plain", gate_url, False, 200000)
run("gate-subject", gate_url, True, 300000)
PY

#!/usr/bin/env bash
# Soak test (not a CI test): CLIENTS skopeo clients push and pull freshly made random images
# through the gate for DURATION seconds, against the real registry on a unix socket. Every
# pulled image is compared with what was pushed (manifest and layer digests); the gate's RSS
# and open file descriptors are sampled every 10 s. Prints a summary and exits 1 on any
# failed operation or mismatch.
#
#   bash bench/soak.sh                        # 32 clients, 600 s
#   CLIENTS=8 DURATION=60 bash bench/soak.sh  # a short run
#
# Needs docker-registry, skopeo, sha256sum, gzip, tar (scripts/install-test-deps.sh) and a
# release build (built here if missing). Everything runs on 127.0.0.1 in a temp dir that is
# removed on exit, with every process started here stopped by pid.
set -euo pipefail
cd "$(dirname "$0")/.."

CLIENTS=${CLIENTS:-32}
DURATION=${DURATION:-600}
GATE_BIN=${GATE_BIN:-target/release/registry-gate}

for tool in docker-registry skopeo sha256sum gzip tar python3; do
    command -v "$tool" >/dev/null || {
        echo "soak: $tool missing: run scripts/install-test-deps.sh" >&2
        exit 1
    }
done
[ -x "$GATE_BIN" ] || cargo build --release --quiet

work=$(mktemp -d /tmp/rgsoak.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/storage" "$work/gate"
cat >"$work/registry.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $work/storage
http:
  net: unix
  addr: $work/registry.sock
  secret: soak
EOF
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
pids+=($!)

printf 'soak-password\n' | "$GATE_BIN" htpasswd -f "$work/gate/htpasswd" add soak --password-stdin >/dev/null
"$GATE_BIN" gencert --dir "$work/gate/certs" --dns localhost --ip 127.0.0.1 >/dev/null
mkdir -p "$work/trust"
cp "$work/gate/certs/ca.pem" "$work/trust/ca.crt"
cat >"$work/gate/proxy.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
[upstream]
url = "unix://$work/registry.sock"
[tls]
cert = "certs/cert.pem"
key = "certs/key.pem"
[log]
level = "warn"
[auth]
htpasswd = ["htpasswd"]
EOF
"$GATE_BIN" run --config "$work/gate/proxy.toml" >"$work/gate.log" 2>&1 &
gate_pid=$!
pids+=("$gate_pid")
for _ in $(seq 50); do
    [ -S "$work/registry.sock" ] && "$GATE_BIN" --config "$work/gate/proxy.toml" healthcheck --ready 2>/dev/null && break
    sleep 0.2
done

# make_image DIR SEED: an OCI layout with one random layer of 1-4 MiB.
make_image() {
    local dir=$1 seed=$2
    mkdir -p "$dir/blobs/sha256" "$dir/rootfs"
    head -c $(((seed % 4 + 1) * 1024 * 1024)) /dev/urandom >"$dir/rootfs/data"
    tar -C "$dir/rootfs" -cf - data | gzip -1 >"$dir/layer.tgz"
    local diff layer layer_size config config_size manifest manifest_size
    diff=$(gzip -dc "$dir/layer.tgz" | sha256sum | cut -d' ' -f1)
    layer=$(sha256sum "$dir/layer.tgz" | cut -d' ' -f1)
    layer_size=$(stat -c %s "$dir/layer.tgz")
    mv "$dir/layer.tgz" "$dir/blobs/sha256/$layer"
    printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"config":{}}' "$diff" >"$dir/config.json"
    config=$(sha256sum "$dir/config.json" | cut -d' ' -f1)
    config_size=$(stat -c %s "$dir/config.json")
    mv "$dir/config.json" "$dir/blobs/sha256/$config"
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
        "$config" "$config_size" "$layer" "$layer_size" >"$dir/manifest.json"
    manifest=$(sha256sum "$dir/manifest.json" | cut -d' ' -f1)
    manifest_size=$(stat -c %s "$dir/manifest.json")
    mv "$dir/manifest.json" "$dir/blobs/sha256/$manifest"
    printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"soak"}}]}' \
        "$manifest" "$manifest_size" >"$dir/index.json"
    printf '{"imageLayoutVersion":"1.0.0"}' >"$dir/oci-layout"
    rm -rf "$dir/rootfs"
    echo "$manifest $layer"
}

# client N: push and pull until the deadline; one result line per round.
client() {
    local n=$1 deadline=$2 round=0
    while [ "$(date +%s)" -lt "$deadline" ]; do
        round=$((round + 1))
        local dir="$work/c$n/r$round" ref="localhost:$port/soak/c$n:r$round"
        local digests manifest layer
        digests=$(make_image "$dir/src" $((n * 1000 + round)))
        manifest=${digests% *}
        layer=${digests#* }
        if ! skopeo --insecure-policy copy -q --preserve-digests --dest-cert-dir "$work/trust" \
            --dest-creds soak:soak-password "oci:$dir/src:soak" "docker://$ref" 2>>"$work/c$n.err"; then
            echo "FAIL push c$n r$round"
            continue
        fi
        if ! skopeo --insecure-policy copy -q --preserve-digests --src-cert-dir "$work/trust" \
            --src-creds soak:soak-password "docker://$ref" "oci:$dir/dst:soak" 2>>"$work/c$n.err"; then
            echo "FAIL pull c$n r$round"
            continue
        fi
        if [ -f "$dir/dst/blobs/sha256/$manifest" ] && [ -f "$dir/dst/blobs/sha256/$layer" ] &&
            [ "$(sha256sum "$dir/dst/blobs/sha256/$layer" | cut -d' ' -f1)" = "$layer" ]; then
            echo "OK c$n r$round"
        else
            echo "FAIL digest c$n r$round"
        fi
        rm -rf "$dir"
    done
}

sample() {
    local rss fds
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$gate_pid/status")
    fds=$(find "/proc/$gate_pid/fd" -mindepth 1 -maxdepth 1 | wc -l)
    echo "$(date +%s) $rss $fds"
}

echo "soak: $CLIENTS clients for ${DURATION}s against 127.0.0.1:$port"
sample >"$work/samples"
start=$(date +%s)
deadline=$((start + DURATION))
client_pids=()
for n in $(seq "$CLIENTS"); do
    client "$n" "$deadline" >"$work/c$n.results" &
    client_pids+=($!)
done
while [ "$(date +%s)" -lt "$deadline" ]; do
    sleep 10
    sample >>"$work/samples"
done
for pid in "${client_pids[@]}"; do wait "$pid" || true; done
sleep 2
sample >>"$work/samples"

ok=$(cat "$work"/c*.results | grep -c '^OK' || true)
failed=$(cat "$work"/c*.results | grep -c '^FAIL' || true)
read -r _ rss0 fds0 < <(head -1 "$work/samples")
read -r _ rss1 fds1 < <(tail -1 "$work/samples")
rss_max=$(awk '{print $2}' "$work/samples" | sort -n | tail -1)
echo "soak: $ok rounds (push + pull + digest check) ok, $failed failed in ${DURATION}s with $CLIENTS clients"
echo "soak: gate RSS ${rss0} KiB at start, ${rss_max} KiB peak, ${rss1} KiB at the end; open fds ${fds0} -> ${fds1}"
if [ "$failed" -gt 0 ]; then
    grep -h '^FAIL' "$work"/c*.results | head -20
    tail -5 "$work"/c*.err 2>/dev/null | head -40
    exit 1
fi

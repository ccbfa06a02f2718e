# Shared by the benchmark scripts (sourced, not run): stopping processes, free ports,
# waiting for an HTTP answer, and the registry every scenario runs against.
# The caller defines log and die, and TMP (its temporary directory).
# shellcheck shell=bash

# stop_pid PID: TERM, up to 5 s, then KILL; reaps it.
stop_pid() {
    local pid="$1"
    [ -n "$pid" ] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# wait_http URL [curl args…]: until URL answers with any HTTP status (15 s).
wait_http() {
    local url="$1" code
    shift
    for _ in $(seq 150); do
        code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$@" "$url" 2>/dev/null || true)"
        [ -n "$code" ] && [ "$code" != "000" ] && return 0
        sleep 0.1
    done
    return 1
}

# REGISTRY_ACCESS_LOG_OFF=false before it keeps the registry's access log in registry.log.
# start_registry SECRET: docker-registry on a free port with filesystem storage in
# $TMP/storage, quiet; sets REGISTRY_PORT, REGISTRY_URL and REGISTRY_PID, and returns once
# it answers /v2/.
start_registry() {
    REGISTRY_PORT="$(free_port)"
    REGISTRY_URL="http://127.0.0.1:$REGISTRY_PORT"
    mkdir -p "$TMP/storage"
    cat >"$TMP/registry.yml" <<REGISTRY
version: 0.1
log:
  level: warn
  accesslog:
    disabled: ${REGISTRY_ACCESS_LOG_OFF:-true}
storage:
  filesystem:
    rootdirectory: $TMP/storage
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$REGISTRY_PORT
  secret: $1
REGISTRY
    log "starting docker-registry on $REGISTRY_URL"
    docker-registry serve "$TMP/registry.yml" >"$TMP/registry.log" 2>&1 </dev/null &
    # shellcheck disable=SC2034 # read by the scripts that source this file
    REGISTRY_PID=$!
    wait_http "$REGISTRY_URL/v2/" || die "docker-registry did not answer on $REGISTRY_URL/v2/"
}

# start_basic_gate BIN USER PASS: the gate BIN on a free port in front of REGISTRY_URL, with
# basic auth for USER (password PASS) allowed everything, its generated CA in
# $TMP/certs/ca.pem; sets GATE_PID, GATE_PORT, GATE_URL and CA.
start_basic_gate() {
    local bin="$1" user="$2" pass="$3"
    printf '%s\n' "$pass" | "$bin" htpasswd -f "$TMP/htpasswd" add "$user" --password-stdin >/dev/null
    GATE_PORT="$(free_port)"
    GATE_URL="https://127.0.0.1:$GATE_PORT"
    CA="$TMP/certs/ca.pem"
    cat >"$TMP/gate.toml" <<GATE
[server]
listen = "127.0.0.1:$GATE_PORT"
shutdown_grace = "2s"

[upstream]
url = "$REGISTRY_URL"

[tls]
dir = "certs"

[log]
level = "warn"

[auth]
mode = "basic"
htpasswd = ["htpasswd"]

[[rules]]
users = ["$user"]
repositories = ["**"]
actions = ["*"]
GATE
    log "starting the gate on $GATE_URL"
    "$bin" run --config "$TMP/gate.toml" >"$TMP/gate.log" 2>&1 </dev/null &
    GATE_PID=$!
    for _ in $(seq 100); do
        [ -s "$CA" ] && wait_http "$GATE_URL/v2/" --cacert "$CA" && break
        kill -0 "$GATE_PID" 2>/dev/null || die "the gate exited at start-up"
        sleep 0.1
    done
    [ -s "$CA" ] || die "the gate wrote no $CA"
}

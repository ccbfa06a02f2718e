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
    disabled: true
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

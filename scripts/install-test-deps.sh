#!/bin/sh
# Installs the tools the integration tests (tests/) start: the registry, skopeo, dockerd and
# the docker CLI, htpasswd, ip, openssl, curl, gzip, nginx (the recipe the filter is compared
# with), redis-server (the shared state of a fleet of gates), pebble (the ACME test server), testssl.sh (the TLS scan), chromium and
# chromium-driver (the registry browser in a real browser), g++ and, when
# FUZZ_SECONDS is set, cargo-fuzz (the fuzz targets, scripts/fuzz), and the checkers of the
# deployment files: docker-compose (compose.yaml), systemd-analyze
# (contrib/registry-gate.service), shellcheck (scripts/) and, from PyPI, kubernetes-validate
# (deploy/kubernetes, against the schemas it bundles, offline).
# Idempotent: installs only what is missing, and runs `apt-get update` only when something
# is. Debian/Ubuntu; run as root or with sudo available.
set -eu

export DEBIAN_FRONTEND=noninteractive

missing=""

# need COMMAND PACKAGE: queue PACKAGE unless COMMAND is on PATH (or PACKAGE already queued).
need() {
    command -v "$1" >/dev/null 2>&1 && return 0
    case " $missing " in
        *" $2 "*) ;;
        *) missing="$missing $2" ;;
    esac
}

need docker-registry docker-registry
need skopeo skopeo
need dockerd docker.io
need docker docker.io
need htpasswd apache2-utils
need ip iproute2
need openssl openssl
need curl curl
need gzip gzip
need docker-compose docker-compose
need nginx nginx
need redis-server redis-server
need pebble pebble
need systemd-analyze systemd
need shellcheck shellcheck
need python3 python3
need testssl testssl.sh
# The registry browser's tests drive a headless Chromium over WebDriver.
need chromium chromium
need chromedriver chromium-driver
# libFuzzer, which the fuzz targets (fuzz/, scripts/fuzz) link, is C++.
need g++ g++

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

if [ -z "$missing" ]; then
    echo "install-test-deps: every Debian package is installed"
else
    echo "install-test-deps: installing:$missing"
    $SUDO apt-get update
    # shellcheck disable=SC2086 # the package list is meant to split into words
    $SUDO apt-get install -y --no-install-recommends $missing
fi

# kubernetes-validate: pinned, so the schema versions scripts/check-kubernetes asks for are
# the ones bundled. Debian's own python3 refuses pip outside a venv unless told otherwise.
KUBERNETES_VALIDATE=kubernetes-validate==1.37.0
if python3 -c 'import kubernetes_validate, jsonschema, yaml' 2>/dev/null; then
    echo "install-test-deps: kubernetes-validate is installed"
else
    echo "install-test-deps: installing $KUBERNETES_VALIDATE"
    if ! python3 -m pip --version >/dev/null 2>&1; then
        $SUDO apt-get update
        $SUDO apt-get install -y --no-install-recommends python3-pip
    fi
    python3 -m pip install --quiet "$KUBERNETES_VALIDATE" ||
        python3 -m pip install --quiet --break-system-packages "$KUBERNETES_VALIDATE"
fi

# oras (the Python SDK, oras-py): a real OCI 1.1 client for the referrers tests; Debian has
# no package of it. Pinned, as the API it is driven through (tests/it/oras_attach.py) moves.
ORAS=oras==0.2.43
if python3 -c 'import oras.client' 2>/dev/null; then
    echo "install-test-deps: oras is installed"
else
    echo "install-test-deps: installing $ORAS"
    python3 -m pip install --quiet "$ORAS" ||
        python3 -m pip install --quiet --break-system-packages "$ORAS"
fi

# cargo-fuzz for scripts/fuzz: about a minute to build, once per machine, so only when the
# fuzzing run is asked for (FUZZ_SECONDS, see scripts/test).
if [ "${FUZZ_SECONDS:-0}" != 0 ] && ! cargo fuzz --version >/dev/null 2>&1; then
    echo "install-test-deps: installing cargo-fuzz"
    cargo install cargo-fuzz --version 0.13.2 --locked
fi

#!/bin/sh
# Installs the tools the integration tests (tests/) start: the registry, skopeo, dockerd and
# the docker CLI, htpasswd, ip, openssl, curl, gzip, nginx (the recipe the filter is compared
# with), docker-compose (which validates compose.yaml), and g++ and cargo-fuzz for the fuzz
# targets (scripts/fuzz, when FUZZ_SECONDS is set). Idempotent: installs only what is
# missing, and runs `apt-get update` once, only when something is. Debian/Ubuntu; run as root
# or with sudo available.
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
# libFuzzer, which the fuzz targets (fuzz/, scripts/fuzz) link, is C++.
need g++ g++

# cargo-fuzz for scripts/fuzz: about a minute to build, once per machine, so only when the
# fuzzing run is asked for (FUZZ_SECONDS, see scripts/test).
if [ "${FUZZ_SECONDS:-0}" != 0 ] && ! cargo fuzz --version >/dev/null 2>&1; then
    echo "install-test-deps: installing cargo-fuzz"
    cargo install cargo-fuzz --version 0.13.2 --locked
fi

if [ -z "$missing" ]; then
    echo "install-test-deps: everything is installed"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

echo "install-test-deps: installing:$missing"
$SUDO apt-get update
# shellcheck disable=SC2086 # the package list is meant to split into words
$SUDO apt-get install -y --no-install-recommends $missing

#!/usr/bin/env bash
# The README's test command: installs what the tests need on a fresh Debian
# machine (a Mosquitto binary for broker-restart tests), then runs the whole
# workspace's tests with one shared build.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkg() {
    if ! command -v "$1" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$1" ]; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            echo "installing $2 (needed by the tests)"
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
        else
            echo "error: $1 not found; install the '$2' package" >&2
            exit 1
        fi
    fi
}
need_pkg mosquitto mosquitto

cargo test --workspace "$@"

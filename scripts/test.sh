#!/usr/bin/env bash
# The README's test command: installs what the tests need on a fresh Debian
# machine (Mosquitto for broker-restart tests, NATS for its MQTT gateway,
# Chromium and chromedriver for the dashboard's browser test), then runs the
# whole workspace's tests with one shared build, and the agent's
# broker-facing suite again against Mosquitto and NATS's MQTT gateway.
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
# The agent's suite also runs against NATS's MQTT gateway (broker_matrix.sh).
need_pkg nats-server nats-server
# The dashboard's browser test drives headless Chromium through chromedriver.
need_pkg chromium chromium
need_pkg chromedriver chromium-driver

# drover-onnx's node tests run the ai.onnx.ml cases the `onnx` Python
# package defines; without it that test fails (it never skips).
# Checked from / : in the repository root, the crate directory onnx/ would
# pass for the package.
if ! (cd / && python3 -c "import onnx.numpy_helper") >/dev/null 2>&1; then
    echo "installing the onnx Python package (needed by the drover-onnx node tests)"
    # A distribution's own Python may refuse a system-wide install (PEP 668).
    python3 -m pip install --quiet onnx \
        || python3 -m pip install --quiet --user --break-system-packages onnx || {
        echo "error: could not pip install onnx; the drover-onnx node tests need it" >&2
        exit 1
    }
fi

cargo test --workspace "$@"
# Agents against third-party brokers (Mosquitto, NATS's MQTT gateway), on
# the same build.
bash scripts/broker_matrix.sh

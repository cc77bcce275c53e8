#!/usr/bin/env bash
# The agent against third-party brokers: reruns the agent's broker-facing
# integration suite (agent/tests/integration.rs, a real agent and a scripted
# controller peer on one broker) against
#   - Mosquitto 2 (what "Run Drover on more than one machine" uses), and
#   - NATS's MQTT gateway (MQTT 3.1.1 only; JetStream keeps its sessions and
#     retained messages),
# each started here with a config of our own on free ports, stopped at exit.
# Uses the build `cargo test` made (scripts/test.sh calls this after it);
# extra arguments go to `cargo test` (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d "${TMPDIR:-/tmp}/drover-brokers.XXXXXX")
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_port() { # wait_port PORT LOG
    for _ in $(seq 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "error: nothing listening on 127.0.0.1:$1; its log:" >&2
    cat "$2" >&2
    return 1
}
find_bin() { command -v "$1" 2>/dev/null || { [ -x "/usr/sbin/$1" ] && echo "/usr/sbin/$1"; }; }

mosquitto=$(find_bin mosquitto) || { echo "error: mosquitto not found" >&2; exit 1; }
nats=$(find_bin nats-server) || { echo "error: nats-server not found" >&2; exit 1; }

# Mosquitto: anonymous on loopback (the suite's peer and agent share the
# broker; device ACLs are the controller's business), no persistence.
mport=$(free_port)
cat >"$work/mosquitto.conf" <<CONF
listener $mport 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 10000
CONF
"$mosquitto" -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
pids+=($!)
wait_port "$mport" "$work/mosquitto.log"

# NATS: its MQTT listener needs a server name and JetStream.
nport=$(free_port)
qport=$(free_port)
cat >"$work/nats.conf" <<CONF
server_name: drover-test
listen: 127.0.0.1:$nport
jetstream { store_dir: "$work/jetstream" }
mqtt { listen: 127.0.0.1:$qport }
CONF
"$nats" -c "$work/nats.conf" >"$work/nats.log" 2>&1 &
pids+=($!)
wait_port "$qport" "$work/nats.log"

status=0
for broker in "mosquitto mqtt://127.0.0.1:$mport" "nats-mqtt mqtt://127.0.0.1:$qport"; do
    read -r name url <<<"$broker"
    echo "== the agent's broker-facing suite against $name ($url)"
    if ! DROVER_TEST_BROKER=$url cargo test -q -p drover-agent --test integration "$@"; then
        echo "error: the agent suite failed against $name" >&2
        status=1
    fi
done
exit $status

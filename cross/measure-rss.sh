#!/usr/bin/env bash
# Idle RSS of a drover-agent binary (native or ARM under qemu-user). See --help.
set -euo pipefail

# shellcheck source=cross/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<'EOF'
Usage: cross/measure-rss.sh BINARY [--seconds N]

Starts a local Mosquitto on a free loopback port, writes a minimal agent config
(`drover-agent init`), runs `BINARY run --config ...` for N seconds (default 10),
checks that the agent connected to the broker, and prints VmRSS and VmHWM from
/proc/PID/status.

ARM binaries run under qemu-user (the same runner as cross/test.sh); the figure
is then the RSS of the qemu process, i.e. the agent plus qemu's own translator
and code cache: an upper bound on the agent's RSS on a device.
EOF
}

bin=""
secs=10
while [ $# -gt 0 ]; do
    case "$1" in
    -h | --help)
        usage
        exit 0
        ;;
    --seconds)
        [ $# -ge 2 ] || die "--seconds needs a number"
        secs=$2
        shift
        ;;
    *) bin=$1 ;;
    esac
    shift
done
[ -n "$bin" ] || {
    usage >&2
    exit 2
}
[ -x "$bin" ] || die "$bin is not an executable"

runner=()
case "$(file -b "$bin")" in
*aarch64*) read -r -a runner <<<"$(qemu_runner aarch64-unknown-linux-gnu)" ;;
*"ARM, EABI5"*) read -r -a runner <<<"$(qemu_runner armv7-unknown-linux-gnueabihf)" ;;
esac

mosq=$(command -v mosquitto || echo /usr/sbin/mosquitto)
[ -x "$mosq" ] || die "mosquitto not found (apt-get install mosquitto)"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
work=$(mktemp -d "${TMPDIR:-/tmp}/drover-rss.XXXXXX")
mpid=""
apid=""
cleanup() {
    if [ -n "$apid" ]; then kill "$apid" 2>/dev/null || true; fi
    if [ -n "$mpid" ]; then kill "$mpid" 2>/dev/null || true; fi
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

mport=$(free_port)
aport=$(free_port)
printf 'listener %s 127.0.0.1\nallow_anonymous true\nlog_dest stdout\nlog_type all\n' "$mport" >"$work/mosquitto.conf"
"$mosq" -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
mpid=$!

${runner[@]+"${runner[@]}"} "$bin" init --device-id rss-probe --fleet bench \
    --broker "mqtt://127.0.0.1:$mport" --root-key "$(printf '%064d' 0)" \
    --data-dir "$work/data" --api "127.0.0.1:$aport" --out "$work/agent.toml" >/dev/null

RUST_LOG=info ${runner[@]+"${runner[@]}"} "$bin" run --config "$work/agent.toml" >"$work/agent.log" 2>&1 &
apid=$!
sleep "$secs"
kill -0 "$apid" 2>/dev/null || {
    cat "$work/agent.log" >&2
    die "the agent exited early"
}
rss=$(awk '/^VmRSS/ {print $2}' "/proc/$apid/status")
hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$apid/status")
connected=no
if grep -q 'mqtt connected' "$work/agent.log"; then connected=yes; fi
echo "binary: $bin${runner[*]:+ (under ${runner[*]})}"
echo "after ${secs} s idle: VmRSS ${rss} kB ($((rss / 1024)) MiB), VmHWM ${hwm} kB; connected to the broker: $connected"
if [ ${#runner[@]} -gt 0 ] && file -b "$bin" | grep -q '64-bit'; then
    # A 64-bit guest's own mappings sit below 0x7000_0000_0000 (qemu's
    # guest_base is 0 and the guest loads at 0x55_0000_0000); qemu's binary,
    # heap and translated-code cache sit above. Splitting smaps by address
    # gives the agent's own RSS, i.e. what it would use natively.
    python3 - "$apid" <<'PY'
import re, sys
guest = qemu = 0
start, name = 0, ""
with open(f"/proc/{sys.argv[1]}/smaps") as f:
    for line in f:
        m = re.match(r"^([0-9a-f]+)-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$", line)
        if m:
            start, name = int(m.group(1), 16), m.group(2)
        elif line.startswith("Rss:"):
            kb = int(line.split()[1])
            if start < 0x7000_0000_0000 and "qemu" not in name:
                guest += kb
            else:
                qemu += kb
print(f"  of which the guest (the agent itself): {guest} kB ({guest // 1024} MiB); qemu's binary, heap and code cache: {qemu} kB")
PY
fi
[ "$connected" = yes ] || {
    sed 's/^/  agent: /' "$work/agent.log" >&2
    die "the agent never connected to the broker"
}

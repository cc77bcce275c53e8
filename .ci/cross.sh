#!/usr/bin/env bash
# CI step for ARM devices: cross-build the aarch64 agent (debug) and run the
# protocol and agent tests under qemu-user; then build the amd64 .deb from the
# host debug build and check it in a scratch root.
#
# Works on a fresh Debian 12 machine as root with rustup's stable toolchain and
# gcc: cross/build.sh installs what the Debian route needs (rustc-web, the arm64
# std, the cross gcc, qemu-user-static) and cross/package.sh installs cargo-deb.
#
# Time on 2 shared cores: about 9 min with the packages installed and the
# builds warm, 17-19 min on a fresh machine (apt-get, cold aarch64 build, cargo-deb).
# Cross builds go to target/cross; the host cache in target/ is not touched
# (the .deb step builds the host debug agent, as `cargo build` would).
#
# Environment:
#   DROVER_CI_SKIP_DEB=1   skip the .deb build and check
#   DROVER_QEMU_TEST_TIMEOUT   seconds per test binary under qemu (default 900)
set -euo pipefail
cd "$(dirname "$0")/.."

start=$(date +%s)
step_start=$start
step() {
    local now
    now=$(date +%s)
    echo "== cross: $1 (+$((now - step_start)) s, $((now - start)) s total)"
    step_start=$now
}

step "aarch64 agent build (debug, target/cross)"
cross/build.sh aarch64

step "protocol + agent tests under qemu-aarch64 (lib + integration, minus cross/qemu-skips.txt)"
cross/test.sh aarch64 --fast

if [ "${DROVER_CI_SKIP_DEB:-0}" != 1 ]; then
    step "amd64 .deb from the host debug build, checked in a scratch root"
    cross/verify-deb.sh --build
fi

step "done"

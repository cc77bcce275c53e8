#!/usr/bin/env bash
# Run the protocol and agent test suites for an ARM target under qemu-user. See --help.
set -euo pipefail

# shellcheck source=cross/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<'EOF'
Usage: cross/test.sh aarch64|armv7 [--lib-only] [--fast] [--release] [-p CRATE]... [-- TEST_ARGS...]

Cross-builds the test binaries of drover-protocol and drover-agent for the target
and runs them under qemu-user (qemu-aarch64-static / qemu-arm-static, through
CARGO_TARGET_<TRIPLE>_RUNNER), with the same route detection as cross/build.sh.

Tests that need a broker start their own (embedded rumqttd, or a spawned host
`mosquitto`: a host process, so it runs natively beside the emulated test).

Tests that cannot work under qemu-user are listed in cross/qemu-skips.txt with
the reason; each skip is printed on every run.

Options:
  --lib-only     only the library unit tests (no integration tests, no doctests)
  --fast         also skip the tests marked `slow` in cross/qemu-skips.txt (CI)
  --release      test the release profile
  -p CRATE       test this crate (repeatable; default: drover-protocol drover-agent)
  -h, --help     this help
  -- ARGS        passed to every test binary (e.g. a name filter, --nocapture)

Environment:
  DROVER_CROSS_ROUTE     force a route (rustup, debian, cross-rs)
  RUST_TEST_THREADS      test threads per binary (default: the core count)
  DROVER_QEMU_TEST_TIMEOUT  seconds one test binary may run under qemu (default 900);
                         a binary killed by it fails the run (exit 124/137)
Tests see DROVER_UNDER_QEMU=1, so a timing-sensitive test can widen its budget,
and DROVER_TEST_RUNNER (the qemu-user command, e.g. `qemu-arm-static -L
/usr/arm-linux-gnueabihf`), which a test that runs the target binary itself
(CARGO_BIN_EXE_drover-agent) puts in front of it.
EOF
}

arch=""
lib_only=0
fast=0
profile=dev
crates=()
test_args=()
while [ $# -gt 0 ]; do
    case "$1" in
    -h | --help)
        usage
        exit 0
        ;;
    --lib-only) lib_only=1 ;;
    --fast) fast=1 ;;
    --release) profile=release ;;
    -p | --package)
        [ $# -ge 2 ] || die "$1 needs a crate name"
        crates+=("$2")
        shift
        ;;
    --)
        shift
        test_args=("$@")
        break
        ;;
    -*)
        usage >&2
        die "unknown option $1"
        ;;
    *)
        [ -z "$arch" ] || die "one target at a time (got '$arch' and '$1')"
        arch=$1
        ;;
    esac
    shift
done
if [ -z "$arch" ]; then
    usage >&2
    exit 2
fi
[ ${#crates[@]} -gt 0 ] || crates=(drover-protocol drover-agent)
triple=$(triple_of "$arch")

root=$(repo_root)
cd "$root"

route=$(pick_route "$triple")
log "$triple: $(describe_route "$route" "$triple")"
setup_env "$route" "$triple"

if [ "$route" != cross-rs ]; then
    qemu=$(qemu_of "$triple")
    if ! command -v "$qemu" >/dev/null 2>&1; then
        if is_root && is_debian; then
            log "installing qemu-user-static"
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static >/dev/null
        else
            die "$qemu not found (apt-get install qemu-user-static)"
        fi
    fi
    # Each test binary gets a time limit, so a test that hangs under emulation
    # fails loudly instead of holding CI until its global limit.
    runner_var="CARGO_TARGET_$(env_key "$triple")_RUNNER"
    per_bin=${DROVER_QEMU_TEST_TIMEOUT:-900}
    # Tests that exec a target binary themselves (CARGO_BIN_EXE_*) prefix it
    # with this (see agent/tests/support: bin_command): the bare qemu command,
    # so a signal sent to the child's pid reaches the guest (qemu-user forwards it).
    export DROVER_TEST_RUNNER="$(printenv "$runner_var")"
    export "$runner_var=timeout --kill-after=10 $per_bin $(printenv "$runner_var")"
    log "runner: $runner_var=$(printenv "$runner_var")"
    log "DROVER_TEST_RUNNER=$DROVER_TEST_RUNNER (for tests that run the target binary)"
fi
# Broker tests may spawn a host mosquitto (a native process, fine beside qemu).
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    if is_root && is_debian; then
        log "installing mosquitto (spawned by the broker tests)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
    else
        log "warning: mosquitto not found; tests that spawn it will fail (apt-get install mosquitto)"
    fi
fi
export PATH="$PATH:/usr/sbin"
export DROVER_UNDER_QEMU=1

# Can the kernel exec target binaries itself (binfmt_misc handler for qemu)?
binfmt=0
case "$triple" in
aarch64-*) handler=/proc/sys/fs/binfmt_misc/qemu-aarch64 ;;
armv7-*) handler=/proc/sys/fs/binfmt_misc/qemu-arm ;;
esac
if [ -r "$handler" ] && head -n1 "$handler" | grep -qx enabled; then
    binfmt=1
fi
# ...or do the tests prefix the target binary with the qemu runner themselves?
if [ -n "${DROVER_TEST_RUNNER:-}" ]; then
    binfmt=1
fi

# Skips from cross/qemu-skips.txt: KIND CRATE FILTER REASON...
skip_args_for() {
    local crate=$1 kind c filter reason
    SKIP_ARGS=()
    while read -r kind c filter reason; do
        case "$kind" in '' | '#'*) continue ;; esac
        [ "$c" = "$crate" ] || continue
        if [ "$kind" = exec ] && [ "$binfmt" = 1 ]; then
            log "running $crate: $filter (target binaries run through ${DROVER_TEST_RUNNER:-binfmt_misc})"
            continue
        fi
        if [ "$kind" = qemu ] || [ "$kind" = exec ] || { [ "$kind" = slow ] && [ "$fast" = 1 ]; }; then
            log "SKIP ($kind) $crate: $filter — $reason"
            SKIP_ARGS+=(--skip "$filter")
        fi
    done <"$root/cross/qemu-skips.txt"
}

failed=()
summary=()
total_start=$(date +%s)
for crate in "${crates[@]}"; do
    skip_args_for "$crate"
    if [ "$lib_only" = 1 ]; then
        sel=(--lib)
    else
        # All test targets; doctests are left out: they build with rustdoc for the
        # target, which the -Zbuild-std route cannot do, and they are run natively
        # by the host test run anyway.
        sel=(--lib --bins --tests)
    fi
    cmd=("${CARGO_CMD[@]}" test -p "$crate" --target "$triple"
        --target-dir "$CROSS_TARGET_DIR_REL" --profile "$profile" "${sel[@]}"
        ${BUILD_STD_ARGS[@]+"${BUILD_STD_ARGS[@]}"}
        -- ${SKIP_ARGS[@]+"${SKIP_ARGS[@]}"} ${test_args[@]+"${test_args[@]}"})
    log "$crate: ${cmd[*]}"
    start=$(date +%s)
    if "${cmd[@]}"; then
        summary+=("ok     $crate ($(($(date +%s) - start)) s)")
    else
        summary+=("FAILED $crate ($(($(date +%s) - start)) s)")
        failed+=("$crate")
    fi
done

log "---- $triple under qemu ($(($(date +%s) - total_start)) s) ----"
for line in "${summary[@]}"; do log "$line"; done
if [ ${#failed[@]} -gt 0 ]; then
    die "test failures under qemu ($triple): ${failed[*]}"
fi

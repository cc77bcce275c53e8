#!/usr/bin/env bash
# Cross-build the Drover agent for ARM devices. See --help.
set -euo pipefail

# shellcheck source=cross/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<'EOF'
Usage: cross/build.sh aarch64|armv7|all [--release | --profile NAME] [-p CRATE] [--route-only] [-- CARGO_ARGS...]

Cross-builds the device agent (crate drover-agent, bin drover-agent) and leaves it at
  target/cross/<triple>/<profile>/drover-agent
(<profile>: debug by default, device with --release)
  aarch64 -> aarch64-unknown-linux-gnu      (64-bit Raspberry Pi OS, Pi 3/4/5, Jetson)
  armv7   -> armv7-unknown-linux-gnueabihf  (32-bit Raspberry Pi OS, Pi 2/3/4)

Picks a toolchain route and says which it used (force one with DROVER_CROSS_ROUTE):
  rustup    the target is in 'rustup target list --installed' (needs the GNU cross
            linker: apt-get install gcc-aarch64-linux-gnu / gcc-arm-linux-gnueabihf)
  debian    Debian 12's rustc-web (prebuilt arm64 std; armv7 std built from source
            with -Zbuild-std). When root on Debian, missing packages are installed.
  cross-rs  'cross' with a running Docker/Podman engine (Cross.toml at the root)

Options:
  --release        build the binary to ship: the 'device' profile of the root
                   Cargo.toml (release + opt-level z, fat LTO, codegen-units 1,
                   panic=abort, stripped), at target/cross/<triple>/device/
  --profile NAME   build a named profile instead ('release': plain release,
                   opt-level 3, unwinding, at target/cross/<triple>/release/)
  -p, --package C  build another workspace crate instead (default drover-agent)
  --route-only     print the route for each target and exit
  -h, --help       this help
  -- ARGS          passed to cargo build as is

Cross builds use their own target dir (target/cross), so the host build cache in
target/ is never invalidated. Re-running is cheap: cargo rebuilds only what changed.
EOF
}

targets=()
profile=dev
package=drover-agent
route_only=0
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
    -h | --help)
        usage
        exit 0
        ;;
    --release) profile=device ;;
    --profile)
        [ $# -ge 2 ] || die "--profile needs a name"
        profile=$2
        shift
        ;;
    --profile=*) profile=${1#--profile=} ;;
    -p | --package)
        [ $# -ge 2 ] || die "$1 needs a crate name"
        package=$2
        shift
        ;;
    --route-only) route_only=1 ;;
    --)
        shift
        extra=("$@")
        break
        ;;
    all) targets+=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf) ;;
    -*)
        usage >&2
        die "unknown option $1"
        ;;
    *) targets+=("$(triple_of "$1")") ;;
    esac
    shift
done
if [ ${#targets[@]} -eq 0 ]; then
    usage >&2
    exit 2
fi

root=$(repo_root)
cd "$root"

for triple in "${targets[@]}"; do
    route=$(pick_route "$triple")
    log "$triple: $(describe_route "$route" "$triple")"
    [ "$route_only" = 1 ] && continue
    # Each target gets a fresh environment (the routes set different variables).
    (
        setup_env "$route" "$triple"
        cmd=("${CARGO_CMD[@]}" build -p "$package" --target "$triple"
            --target-dir "$CROSS_TARGET_DIR_REL" --profile "$profile"
            ${BUILD_STD_ARGS[@]+"${BUILD_STD_ARGS[@]}"} ${extra[@]+"${extra[@]}"})
        log "$triple: ${cmd[*]}"
        start=$(date +%s)
        "${cmd[@]}"
        log "$triple: built in $(($(date +%s) - start)) s"
    )
    if [ "$package" = drover-agent ]; then
        bin="$CROSS_TARGET_DIR_REL/$triple/$(profile_dir "$profile")/drover-agent"
        [ -x "$bin" ] || die "expected $bin after the build, but it is not there"
        size=$(stat -c %s "$bin")
        stripped=""
        if file -b "$bin" 2>/dev/null | grep -q 'not stripped'; then stripped=", not stripped"; fi
        log "$triple: $bin ($((size / 1024)) KiB$stripped)"
        echo "$root/$bin"
    fi
done

# shellcheck shell=bash
# Shared helpers for cross/*.sh: target names, toolchain route detection and the
# environment each route needs. Sourced, not run.
#
# Routes, tried in this order (override with DROVER_CROSS_ROUTE=rustup|debian|cross-rs):
#   rustup    the target's std is installed (`rustup target list --installed`);
#             a cross C toolchain (gcc-aarch64-linux-gnu / gcc-arm-linux-gnueabihf)
#             links it and builds the C dependencies (bundled SQLite).
#   debian    Debian 12's rustc-web (/usr/bin/rustc + /usr/bin/cargo): prebuilt
#             arm64 std from libstd-rust-web-dev:arm64; armv7 std built from
#             rust-web-src with -Zbuild-std (RUSTC_BOOTSTRAP=1). Installed with
#             apt-get when missing and running as root on Debian.
#   cross-rs  `cross` with a running Docker/Podman engine (uses Cross.toml).

# Where every cross build goes, so the host build cache (target/) is untouched.
# (Used by the scripts that source this file; likewise CARGO_CMD and BUILD_STD_ARGS.)
# shellcheck disable=SC2034
CROSS_TARGET_DIR_REL="target/cross"

# Debian packages of the Debian route.
DEBIAN_BASE_PKGS=(rustc-web cargo-web gcc-aarch64-linux-gnu g++-aarch64-linux-gnu
    libc6-dev-arm64-cross gcc-arm-linux-gnueabihf g++-arm-linux-gnueabihf
    libc6-dev-armhf-cross qemu-user-static)
DEBIAN_AARCH64_PKGS=('libstd-rust-web-dev:arm64')
DEBIAN_ARMV7_PKGS=(rust-web-src)

log() { echo "[cross] $*" >&2; }
die() {
    echo "[cross] error: $*" >&2
    exit 1
}

# repo_root: the workspace root (parent of cross/).
repo_root() { cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd; }

# triple_of ARCH -> Rust target triple.
triple_of() {
    case "$1" in
    aarch64 | arm64 | aarch64-unknown-linux-gnu) echo aarch64-unknown-linux-gnu ;;
    armv7 | armhf | armv7-unknown-linux-gnueabihf) echo armv7-unknown-linux-gnueabihf ;;
    *) die "unknown target '$1' (expected aarch64 or armv7)" ;;
    esac
}

# gnu_prefix TRIPLE -> prefix of the GNU cross tools (aarch64-linux-gnu).
gnu_prefix() {
    case "$1" in
    aarch64-unknown-linux-gnu) echo aarch64-linux-gnu ;;
    armv7-unknown-linux-gnueabihf) echo arm-linux-gnueabihf ;;
    *) die "no GNU prefix for $1" ;;
    esac
}

# qemu_of TRIPLE -> qemu-user binary name.
qemu_of() {
    case "$1" in
    aarch64-unknown-linux-gnu) echo qemu-aarch64-static ;;
    armv7-unknown-linux-gnueabihf) echo qemu-arm-static ;;
    *) die "no qemu for $1" ;;
    esac
}

# qemu_runner TRIPLE -> the qemu-user command line that runs a target binary.
# A multiarch libc (libc6:arm64, which the Debian route's std package pulls in)
# is found by the binary's own loader path (/lib/ld-linux-aarch64.so.1), so no
# -L is given then: qemu 7.2's -L path redirection makes aarch64 test binaries
# spin forever as soon as libtest starts a test (seen on Debian 12, with
# libc6-arm64-cross). Without a multiarch libc, -L /usr/<gnu-prefix> points qemu
# at the loader and libc of the libc6-*-cross package (armv7 runs fine that way).
qemu_runner() {
    local triple=$1 loader
    case "$triple" in
    aarch64-unknown-linux-gnu) loader=/lib/ld-linux-aarch64.so.1 ;;
    armv7-unknown-linux-gnueabihf) loader=/lib/ld-linux-armhf.so.3 ;;
    esac
    if [ -e "$loader" ]; then
        qemu_of "$triple"
    else
        echo "$(qemu_of "$triple") -L /usr/$(gnu_prefix "$triple")"
    fi
}

# env_key TRIPLE -> AARCH64_UNKNOWN_LINUX_GNU (for CARGO_TARGET_<KEY>_*).
env_key() { echo "$1" | tr 'a-z-' 'A-Z_'; }

# profile_dir PROFILE -> directory name cargo uses for it.
profile_dir() {
    case "$1" in
    dev | debug) echo debug ;;
    test) echo debug ;;
    bench) echo release ;;
    *) echo "$1" ;;
    esac
}

is_root() { [ "$(id -u)" = 0 ]; }
is_debian() { [ -r /etc/debian_version ] && command -v apt-get >/dev/null 2>&1; }

rustup_has_target() {
    command -v rustup >/dev/null 2>&1 || return 1
    (cd "$(repo_root)" && rustup target list --installed 2>/dev/null) | grep -qx "$1"
}

debian_rustc() { [ -x /usr/bin/rustc ] && [ -x /usr/bin/cargo ] && /usr/bin/rustc --version >/dev/null 2>&1; }

# debian_ready TRIPLE: the Debian route has everything it needs for TRIPLE.
debian_ready() {
    debian_rustc || return 1
    command -v "$(gnu_prefix "$1")-gcc" >/dev/null 2>&1 || return 1
    [ -e "/usr/$(gnu_prefix "$1")/lib/crt1.o" ] || return 1 # libc6-dev-*-cross
    local sysroot
    sysroot=$(/usr/bin/rustc --print sysroot)
    case "$1" in
    aarch64-unknown-linux-gnu) [ -d "$sysroot/lib/rustlib/aarch64-unknown-linux-gnu/lib" ] ;;
    armv7-unknown-linux-gnueabihf) [ -f "$sysroot/lib/rustlib/src/rust/library/Cargo.lock" ] ;;
    esac
}

# debian_installable: this machine can get the Debian route by apt-get.
debian_installable() {
    # rustc-web is in Debian 12 (bookworm) and its security suite; apt-get
    # update runs first, so stale lists do not matter here.
    is_root && is_debian
}

# debian_install TRIPLE...: install the Debian route's packages (root only).
debian_install() {
    local pkgs=("${DEBIAN_BASE_PKGS[@]}") t
    for t in "$@"; do
        case "$t" in
        aarch64-unknown-linux-gnu) pkgs+=("${DEBIAN_AARCH64_PKGS[@]}") ;;
        armv7-unknown-linux-gnueabihf) pkgs+=("${DEBIAN_ARMV7_PKGS[@]}") ;;
        esac
    done
    if ! dpkg --print-foreign-architectures | grep -qx arm64; then
        log "dpkg --add-architecture arm64"
        dpkg --add-architecture arm64
    fi
    log "apt-get install ${pkgs[*]}"
    apt-get update -qq
    # With Recommends: the cross gcc packages only recommend their libc6-dev-*-cross.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
}

docker_running() {
    { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; } ||
        { command -v podman >/dev/null 2>&1 && podman info >/dev/null 2>&1; }
}

# pick_route TRIPLE -> prints rustup|debian|cross-rs (installing the Debian
# route's packages when that is the route and they are missing).
pick_route() {
    local triple=$1 forced=${DROVER_CROSS_ROUTE:-}
    case "$forced" in
    "") ;;
    rustup)
        rustup_has_target "$triple" || die "DROVER_CROSS_ROUTE=rustup but 'rustup target list --installed' has no $triple (rustup target add $triple)"
        echo rustup
        return
        ;;
    debian)
        if ! debian_ready "$triple"; then
            if ! { is_root && is_debian; }; then
                die "DROVER_CROSS_ROUTE=debian but the Debian packages are missing and this is not root on Debian"
            fi
            debian_install "$triple"
            debian_ready "$triple" || die "the Debian route is still incomplete after apt-get install"
        fi
        echo debian
        return
        ;;
    cross-rs | cross)
        command -v cross >/dev/null 2>&1 || die "DROVER_CROSS_ROUTE=cross-rs but 'cross' is not installed (cargo install cross)"
        echo cross-rs
        return
        ;;
    *) die "DROVER_CROSS_ROUTE must be rustup, debian or cross-rs (got '$forced')" ;;
    esac

    if rustup_has_target "$triple"; then
        echo rustup
    elif debian_ready "$triple"; then
        echo debian
    elif debian_installable; then
        log "the Debian route is missing packages for $triple; installing them"
        debian_install "$triple"
        debian_ready "$triple" || die "the Debian route is still incomplete after apt-get install"
        echo debian
    elif command -v cross >/dev/null 2>&1 && docker_running; then
        echo cross-rs
    else
        die "no route to build for $triple. One of:
  - rustup target add $triple   (plus the $(gnu_prefix "$triple")-gcc cross linker)
  - Debian 12 as root: this script installs rustc-web and the cross toolchains itself
  - cargo install cross, with a running Docker or Podman engine"
    fi
}

# setup_env ROUTE TRIPLE: exports the compiler/linker/runner variables and sets
# CARGO_CMD (array) and BUILD_STD_ARGS (array) for that route.
# shellcheck disable=SC2034 # CARGO_CMD and BUILD_STD_ARGS are used by the callers
setup_env() {
    local route=$1 triple=$2 key prefix
    key=$(env_key "$triple")
    prefix=$(gnu_prefix "$triple")
    BUILD_STD_ARGS=()
    case "$route" in
    rustup | debian)
        if command -v "$prefix-gcc" >/dev/null 2>&1; then
            export "CARGO_TARGET_${key}_LINKER=${prefix}-gcc"
            export "CC_${triple//-/_}=${prefix}-gcc"
            export "CXX_${triple//-/_}=${prefix}-g++"
            export "AR_${triple//-/_}=${prefix}-ar"
        else
            log "warning: $prefix-gcc not found; linking will probably fail (apt-get install gcc-$prefix)"
        fi
        if [ -z "$(printenv "CARGO_TARGET_${key}_RUNNER" || true)" ]; then
            export "CARGO_TARGET_${key}_RUNNER=$(qemu_runner "$triple")"
        fi
        ;;
    esac
    case "$route" in
    rustup)
        CARGO_CMD=(cargo)
        ;;
    debian)
        # The compiler and its std must be the exact same version: Debian's cargo
        # with Debian's rustc, whatever rustup puts first on PATH.
        export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
        CARGO_CMD=(/usr/bin/cargo)
        if [ "$triple" = armv7-unknown-linux-gnueabihf ]; then
            # No armhf std package: build std from rust-web-src.
            export RUSTC_BOOTSTRAP=1
            BUILD_STD_ARGS=("-Zbuild-std=std,panic_abort")
        fi
        ;;
    cross-rs)
        CARGO_CMD=(cross)
        ;;
    *) die "unknown route $route" ;;
    esac
}

# describe_route ROUTE TRIPLE: one line saying what is used.
describe_route() {
    local route=$1 triple=$2
    case "$route" in
    rustup) echo "route: rustup ($(rustc --version 2>/dev/null || echo '?'), target $triple installed)" ;;
    debian)
        local extra=""
        [ "$triple" = armv7-unknown-linux-gnueabihf ] && extra=", std built from rust-web-src with -Zbuild-std"
        echo "route: debian ($(/usr/bin/rustc --version)$extra)"
        ;;
    cross-rs) echo "route: cross-rs ($(cross --version 2>/dev/null | head -n1), Docker/Podman, Cross.toml)" ;;
    esac
}

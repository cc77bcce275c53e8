#!/usr/bin/env bash
# Build .deb packages of the Drover agent with cargo-deb. See --help.
set -euo pipefail

# shellcheck source=cross/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<'EOF'
Usage: cross/package.sh [amd64|arm64|armhf|all]... [--profile NAME | --release] [--no-build] [--host-build] [--fast]

Builds .deb packages of drover-agent with cargo-deb (metadata: [package.metadata.deb]
in agent/Cargo.toml; files: agent/packaging/) into target/cross/debian/ and
prints their paths. Each package holds
  /usr/bin/drover-agent
  /lib/systemd/system/drover-agent.service   (enabled; starts once /etc/drover/agent.toml exists)
  /etc/drover/agent.toml.example             (conffile)
  /usr/share/doc/drover-agent/README.Debian
and maintainer scripts that create the drover system user and /var/lib/drover-agent.

Architectures (default: all = amd64 arm64):
  amd64   x86_64-unknown-linux-gnu, built natively into target/cross
  arm64   aarch64-unknown-linux-gnu, built by cross/build.sh aarch64
  armhf   armv7-unknown-linux-gnueabihf, built by cross/build.sh armv7

Options:
  --profile NAME  cargo profile of the packaged binary (default: device = opt-level z,
                  fat LTO, codegen-units 1, panic=abort, stripped; 'release' builds faster)
  --release       the default: the device profile, as with cross/build.sh --release
  --no-build      package what is already built (fails if the binary is missing)
  --host-build    amd64 only: package the host build's binary (target/<profile>/),
                  e.g. '--host-build --profile dev' after 'cargo build' (quick, for checks)
  --fast          faster compression (bigger .deb; much quicker for a debug binary)
  -h, --help      this help

Needs cargo-deb (installed with 'cargo install cargo-deb --locked' when missing) and
dpkg-deb. Check a package with cross/verify-deb.sh.
EOF
}

arches=()
profile=device
build=1
host_build=0
fast=()
while [ $# -gt 0 ]; do
    case "$1" in
    -h | --help)
        usage
        exit 0
        ;;
    --profile)
        [ $# -ge 2 ] || die "--profile needs a name"
        profile=$2
        shift
        ;;
    --profile=*) profile=${1#--profile=} ;;
    --release) profile=device ;;
    --no-build) build=0 ;;
    --host-build) host_build=1 ;;
    --fast) fast=(--fast) ;;
    all) arches+=(amd64 arm64) ;;
    amd64 | arm64 | armhf) arches+=("$1") ;;
    aarch64) arches+=(arm64) ;;
    armv7) arches+=(armhf) ;;
    x86_64) arches+=(amd64) ;;
    *)
        usage >&2
        die "unknown argument $1"
        ;;
    esac
    shift
done
[ ${#arches[@]} -gt 0 ] || arches=(amd64 arm64)

root=$(repo_root)
cd "$root"

if ! cargo deb --version >/dev/null 2>&1; then
    log "installing cargo-deb (cargo install cargo-deb --locked)"
    cargo install cargo-deb --locked --version '^3'
fi
command -v dpkg-deb >/dev/null 2>&1 || die "dpkg-deb not found (apt-get install dpkg)"

out_dir="$CROSS_TARGET_DIR_REL/debian"
mkdir -p "$out_dir"
pdir=$(profile_dir "$profile")
debs=()

for arch in "${arches[@]}"; do
    case "$arch" in
    amd64) triple=x86_64-unknown-linux-gnu ;;
    arm64) triple=aarch64-unknown-linux-gnu ;;
    armhf) triple=armv7-unknown-linux-gnueabihf ;;
    esac
    deb_args=(deb -p drover-agent --profile "$profile" --no-build --no-dbgsym -o "$out_dir" ${fast[@]+"${fast[@]}"})
    if [ "$host_build" = 1 ]; then
        [ "$arch" = amd64 ] || die "--host-build packages the host (amd64) build only"
        bin="target/$pdir/drover-agent"
        if [ "$build" = 1 ]; then
            log "amd64: cargo build -p drover-agent --profile $profile (host target dir)"
            cargo build -p drover-agent --profile "$profile"
        fi
        [ -x "$bin" ] || die "$bin is missing: cargo build -p drover-agent --profile $profile"
        log "amd64: packaging the host build $bin"
        # cargo-deb finds target/<profile>/ itself when no --target is given.
        env_prefix=(env)
    else
        bin="$CROSS_TARGET_DIR_REL/$triple/$pdir/drover-agent"
        if [ "$build" = 1 ]; then
            if [ "$arch" = amd64 ]; then
                log "amd64: cargo build -p drover-agent --target $triple --target-dir $CROSS_TARGET_DIR_REL --profile $profile"
                cargo build -p drover-agent --target "$triple" --target-dir "$CROSS_TARGET_DIR_REL" --profile "$profile"
            else
                "$root/cross/build.sh" "$triple" --profile "$profile" >/dev/null
            fi
        fi
        [ -x "$bin" ] || die "$bin is missing (build it: cross/build.sh ... --profile $profile, or drop --no-build)"
        deb_args+=(--target "$triple")
        # cargo-deb has no --target-dir; it follows CARGO_TARGET_DIR.
        env_prefix=(env "CARGO_TARGET_DIR=$root/$CROSS_TARGET_DIR_REL")
        if [ "$arch" != amd64 ]; then
            # so cargo-deb strips with the target's binutils
            prefix=$(gnu_prefix "$triple")
            if command -v "$prefix-strip" >/dev/null 2>&1; then
                env_prefix+=("CARGO_TARGET_$(env_key "$triple")_STRIP=$prefix-strip")
            fi
        fi
    fi
    log "$arch: cargo ${deb_args[*]}"
    deb=$("${env_prefix[@]}" cargo "${deb_args[@]}" | tail -n1)
    [ -f "$deb" ] || die "cargo deb did not report a .deb (got '$deb')"
    pkg_arch=$(dpkg-deb -f "$deb" Architecture)
    [ "$pkg_arch" = "$arch" ] || die "$deb is for $pkg_arch, expected $arch"
    log "$arch: $deb ($(($(stat -c %s "$deb") / 1024)) KiB; binary $(($(stat -c %s "$bin") / 1024)) KiB)"
    debs+=("$deb")
done

for d in "${debs[@]}"; do
    case "$d" in
    /*) echo "$d" ;;
    *) echo "$root/$d" ;;
    esac
done

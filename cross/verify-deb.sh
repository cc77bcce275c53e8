#!/usr/bin/env bash
# Check a drover-agent .deb: install it into a scratch root and assert what it
# holds and what its maintainer scripts do. See --help.
set -euo pipefail

# shellcheck source=cross/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<'EOF'
Usage: cross/verify-deb.sh [DEB] [--build]

Checks a drover-agent .deb (default: the newest target/cross/debian/drover-agent_*_amd64.deb):
  1. control fields: package, architecture, Depends on adduser
  2. `dpkg --root SCRATCH --unpack`: dpkg installs the files into a scratch root
     with its own dpkg database (maintainer scripts are not run by dpkg there)
  3. the files: /usr/bin/drover-agent (an ELF for the package's architecture;
     run with --version, natively or under qemu-user), the systemd unit and its
     key settings, /etc/drover/agent.toml.example registered as a conffile;
     on amd64 the update path: the unit's ExecStartPre (`boot-check`) on a
     fresh data dir points bin/current (the unit's ExecStart) at the packaged
     binary, which runs from there
  4. the maintainer scripts, run against the scratch root (DPKG_ROOT) with the
     system-changing commands (adduser, deb-systemd-helper, systemctl, chown...)
     replaced by stubs that only record their arguments:
       - first install, no config: drover user created, data dir made, unit
         enabled, service NOT started
       - configure with /etc/drover/agent.toml present: service started
       - remove keeps data and user; purge deletes the data dir and the user
  5. `systemd-analyze verify` on the unit (ExecStart pointed at the unpacked
     binary); any warning fails. When systemd-analyze is missing it installs
     the systemd package (root on Debian), else skips the check with a message.

Options:
  --build     first build a quick amd64 .deb from the host debug build
              (cross/package.sh amd64 --host-build --profile dev --fast)
  -h, --help  this help
EOF
}

deb=""
build=0
while [ $# -gt 0 ]; do
    case "$1" in
    -h | --help)
        usage
        exit 0
        ;;
    --build) build=1 ;;
    -*)
        usage >&2
        die "unknown option $1"
        ;;
    *) deb=$1 ;;
    esac
    shift
done

root=$(repo_root)
cd "$root"
if [ "$build" = 1 ]; then
    deb=$("$root/cross/package.sh" amd64 --host-build --profile dev --fast | tail -n1)
fi
if [ -z "$deb" ]; then
    deb=$(find "$CROSS_TARGET_DIR_REL/debian" -maxdepth 1 -name 'drover-agent_*_amd64.deb' -printf '%T@ %p\n' 2>/dev/null |
        sort -rn | head -n1 | cut -d' ' -f2- || true)
    [ -n "$deb" ] || die "no .deb given and none in $CROSS_TARGET_DIR_REL/debian (run cross/package.sh amd64, or pass --build)"
fi
[ -f "$deb" ] || die "$deb: no such file"
deb=$(cd "$(dirname "$deb")" && pwd)/$(basename "$deb")

failures=0
pass() { echo "  ok    $*"; }
fail() {
    echo "  FAIL  $*" >&2
    failures=$((failures + 1))
}
check() { # check DESCRIPTION COMMAND...
    local what=$1
    shift
    if "$@" >/dev/null 2>&1; then pass "$what"; else fail "$what"; fi
}

work=$(mktemp -d "${TMPDIR:-/tmp}/drover-verify-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT
scratch=$work/root

echo "== $deb"

echo "-- control"
arch=$(dpkg-deb -f "$deb" Architecture)
check "Package: drover-agent" test "$(dpkg-deb -f "$deb" Package)" = drover-agent
check "Architecture: $arch is amd64, arm64 or armhf" grep -qxE 'amd64|arm64|armhf' <<<"$arch"
check "Depends on adduser" grep -q adduser <<<"$(dpkg-deb -f "$deb" Depends)"

echo "-- dpkg --root (scratch root $scratch)"
mkdir -p "$scratch/var/lib/dpkg/info" "$scratch/var/lib/dpkg/updates" "$scratch/var/lib/dpkg/triggers"
touch "$scratch/var/lib/dpkg/status" "$scratch/var/lib/dpkg/available"
if dpkg --root="$scratch" --log=/dev/null --force-architecture --force-depends --unpack "$deb" >"$work/dpkg.log" 2>&1; then
    pass "dpkg --root --unpack"
else
    cat "$work/dpkg.log" >&2
    fail "dpkg --root --unpack"
    # Fall back to a plain extraction so the file checks still say something.
    dpkg-deb -x "$deb" "$scratch"
    dpkg-deb -e "$deb" "$scratch/DEBIAN"
fi
# dpkg leaves conffiles as *.dpkg-new until the configure step (which would
# run the postinst inside the scratch root): do that step's rename by hand.
for f in "$scratch"/etc/drover/*.dpkg-new; do
    [ -e "$f" ] && mv "$f" "${f%.dpkg-new}"
done
status=$(dpkg --root="$scratch" -s drover-agent 2>/dev/null | sed -n 's/^Status: //p' || true)
check "dpkg database knows drover-agent (Status: $status)" grep -q 'unpacked' <<<"$status"

info=$scratch/var/lib/dpkg/info
[ -d "$scratch/DEBIAN" ] && info=$scratch/DEBIAN
conffiles=$info/drover-agent.conffiles
[ -f "$conffiles" ] || conffiles=$info/conffiles
script() { if [ -f "$info/drover-agent.$1" ]; then echo "$info/drover-agent.$1"; else echo "$info/$1"; fi; }

echo "-- files"
bin=$scratch/usr/bin/drover-agent
unit=$scratch/lib/systemd/system/drover-agent.service
check "/usr/bin/drover-agent is executable" test -x "$bin"
case "$arch" in
amd64) elf='x86-64' qemu="" ;;
arm64) elf='ARM aarch64' qemu=$(qemu_runner aarch64-unknown-linux-gnu) ;;
armhf) elf='ARM, EABI5' qemu=$(qemu_runner armv7-unknown-linux-gnueabihf) ;;
*) elf='?' qemu="" ;;
esac
if command -v file >/dev/null 2>&1; then
    check "/usr/bin/drover-agent is an ELF for $arch ($elf)" grep -q "$elf" <<<"$(file -b "$bin")"
fi
# shellcheck disable=SC2086 # $qemu is a command line
if version=$($qemu "$bin" --version 2>&1); then
    pass "drover-agent --version: $version"
else
    fail "drover-agent --version ($version)"
fi
check "/lib/systemd/system/drover-agent.service" test -f "$unit"
for line in 'User=drover' 'Restart=on-failure' 'NoNewPrivileges=true' 'ProtectSystem=strict' \
    'ProtectHome=true' 'PrivateTmp=true' 'ReadWritePaths=/var/lib/drover-agent' \
    'ExecStartPre=/usr/bin/drover-agent boot-check --config /etc/drover/agent.toml' \
    'ExecStart=/var/lib/drover-agent/bin/current run --boot-checked --config /etc/drover/agent.toml' \
    'ConditionPathExists=/etc/drover/agent.toml' 'WantedBy=multi-user.target'; do
    check "unit has $line" grep -qxF "$line" "$unit"
done
check "/etc/drover/agent.toml.example" test -f "$scratch/etc/drover/agent.toml.example"
check "agent.toml.example is a conffile" grep -qx /etc/drover/agent.toml.example "$conffiles"
check "no /etc/drover/agent.toml shipped (the service must not start by itself)" test ! -e "$scratch/etc/drover/agent.toml"
check "README.Debian" test -f "$scratch/usr/share/doc/drover-agent/README.Debian"
for s in postinst prerm postrm; do
    check "maintainer script $s is executable" test -x "$(script "$s")"
done
check "postinst creates a system user" grep -q 'adduser --system' "$(script postinst)"
check "postinst enables the unit" grep -q 'deb-systemd-helper enable' "$(script postinst)"

if [ "$arch" = amd64 ]; then
    echo "-- the example config, once filled in, is accepted by the agent"
    # Any well-formed key will do: this checks the file parses and validates.
    key=$(printf '%064d' 0)
    sed -e "s/^root_key = .*/root_key = \"$key\"/" -e 's/^device_id = .*/device_id = "verify-deb"/' \
        "$scratch/etc/drover/agent.toml.example" >"$work/agent.toml"
    if out=$("$bin" install --config "$work/agent.toml" --root "$work/install-root" 2>&1); then
        pass "drover-agent install accepts the filled-in example"
    else
        fail "drover-agent install rejects the filled-in example: $out"
    fi
    echo "-- the update path: ExecStartPre's boot-check makes bin/current, ExecStart runs it"
    sed -e "s|^data_dir = .*|data_dir = \"$work/state\"|" "$work/agent.toml" >"$work/agent-state.toml"
    if out=$("$bin" boot-check --config "$work/agent-state.toml" 2>&1); then
        pass "drover-agent boot-check (ExecStartPre) exits 0 on a fresh data dir"
    else
        fail "drover-agent boot-check fails on a fresh data dir: $out"
    fi
    check "boot-check points bin/current at the packaged binary" \
        test "$(readlink "$work/state/bin/current")" = "$(readlink -f "$bin")"
    check "bin/current is what ExecStart can run (--version)" "$work/state/bin/current" --version
    check "boot-check wrote its record bin/boot.json" test -f "$work/state/bin/boot.json"
fi

echo "-- maintainer scripts against the scratch root (stubbed system commands)"
stubs=$work/stubs
calls=$work/calls.log
mkdir -p "$stubs"
: >"$calls"
for cmd in adduser deluser delgroup userdel groupdel chown chgrp dpkg-statoverride \
    deb-systemd-helper deb-systemd-invoke systemctl; do
    cat >"$stubs/$cmd" <<EOF
#!/bin/sh
echo "$cmd \$*" >>"$calls"
case "$cmd" in
adduser) touch "$work/user-exists" ;;
deluser) rm -f "$work/user-exists" ;;
dpkg-statoverride) exit 1 ;;
deb-systemd-helper) [ "\$1" = --quiet ] && [ "\$2" = was-enabled ] && exit 0 ;;
esac
exit 0
EOF
done
cat >"$stubs/getent" <<EOF
#!/bin/sh
echo "getent \$*" >>"$calls"
[ "\$1" = passwd ] || [ "\$1" = group ] || exit 2
[ -e "$work/user-exists" ] && echo "drover:x:999:999::/var/lib/drover-agent:/usr/sbin/nologin" && exit 0
exit 2
EOF
chmod +x "$stubs"/*
mkdir -p "$scratch/usr/bin"
cp "$stubs/deb-systemd-helper" "$scratch/usr/bin/deb-systemd-helper"
run_script() { # run_script NAME ARGS...
    local name=$1
    shift
    DPKG_ROOT=$scratch PATH="$stubs:$PATH" sh -e "$(script "$name")" "$@" >>"$work/scripts.out" 2>&1
}
called() { grep -qE "$1" "$calls"; }

# 1. first install, no config, systemd running
mkdir -p "$scratch/run/systemd/system"
: >"$calls"
if run_script postinst configure ""; then pass "postinst configure (first install) exits 0"; else fail "postinst configure exits non-zero"; fi
check "postinst: adduser --system ... drover" called '^adduser --system .*drover$'
check "postinst: /var/lib/drover-agent created" test -d "$scratch/var/lib/drover-agent"
check "postinst: data dir chowned to drover" called '^chown drover:drover .*/var/lib/drover-agent$'
check "postinst: deb-systemd-helper enable drover-agent.service" called '^deb-systemd-helper enable drover-agent.service$'
check "postinst: service NOT started without /etc/drover/agent.toml" test -z "$(grep '^deb-systemd-invoke' "$calls" || true)"
# 2. configure again (upgrade) with a config present
echo 'device_id = "x"' >"$scratch/etc/drover/agent.toml"
: >"$calls"
if run_script postinst configure 0.0.9-1; then pass "postinst configure (upgrade, config present) exits 0"; else fail "postinst configure (upgrade) exits non-zero"; fi
check "postinst: no second adduser when the user exists" test -z "$(grep '^adduser' "$calls" || true)"
check "postinst: config group set to drover" called '^chgrp drover .*/etc/drover/agent.toml$'
check "postinst: service (re)started once the config exists" called '^deb-systemd-invoke (start|restart) drover-agent.service$'
# 3. remove keeps data and user
: >"$calls"
run_script prerm remove || fail "prerm remove exits non-zero"
check "prerm remove: service stopped" called '^deb-systemd-invoke stop drover-agent.service$'
run_script postrm remove || fail "postrm remove exits non-zero"
check "postrm remove: data dir kept" test -d "$scratch/var/lib/drover-agent"
check "postrm remove: user kept" test -z "$(grep -E '^(deluser|userdel)' "$calls" || true)"
# 4. purge deletes data dir and user, keeps the admin's config
: >"$calls"
run_script postrm purge || fail "postrm purge exits non-zero"
check "postrm purge: data dir deleted" test ! -e "$scratch/var/lib/drover-agent"
check "postrm purge: drover user deleted" called '^(deluser|userdel) .*drover$'
check "postrm purge: deb-systemd-helper purge" called '^deb-systemd-helper purge drover-agent.service$'
check "postrm purge: /etc/drover/agent.toml (the admin's file) kept" test -f "$scratch/etc/drover/agent.toml"

echo "-- systemd-analyze verify"
if ! command -v systemd-analyze >/dev/null 2>&1 && is_root && is_debian; then
    # Cheap in a container (it is not started as PID 1), and it makes the check real.
    echo "  installing systemd for systemd-analyze"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null; } ||
        echo "  (apt-get install systemd failed)"
fi
if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "  SKIP  systemd-analyze is not installed (apt-get install systemd); unit not verified"
else
    # verify checks that ExecStart exists on this machine: point it at the
    # unpacked binary, keep everything else as shipped.
    mkdir -p "$work/units"
    sed -e "s#^ExecStartPre=/usr/bin/drover-agent#ExecStartPre=$bin#" \
        -e "s#^ExecStart=/var/lib/drover-agent/bin/current#ExecStart=$bin#" "$unit" >"$work/units/drover-agent.service"
    if out=$(systemd-analyze verify "$work/units/drover-agent.service" 2>&1) && [ -z "$out" ]; then
        pass "systemd-analyze verify: no errors, no warnings"
    elif grep -qiE 'not been booted with systemd|Failed to (connect|initialize)|System has not been booted' <<<"$out"; then
        echo "  SKIP  systemd-analyze cannot run here: $out"
    else
        fail "systemd-analyze verify: $out"
    fi
fi

if [ "$failures" -gt 0 ]; then
    [ -s "$work/scripts.out" ] && sed 's/^/  script: /' "$work/scripts.out" >&2
    die "$failures check(s) failed for $deb"
fi
echo "verify-deb: all checks passed for $(basename "$deb")"

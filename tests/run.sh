#!/usr/bin/env bash
# The test command (README, .ci/run): installs what the tests need on a fresh Debian
# 12 machine, runs the Deno suite and the real-kernel suite (a QEMU guest with VFIO
# and the mtty sample device), and ends with one line: "N passed, N failed".
#   VFIO_MIG_KERNEL_TESTS=0   skip the real-kernel suite
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
logs=$(mktemp -d)
passed=0 failed=0

log() { printf '[tests %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

bash scripts/ensure-deno.sh >/dev/null || { echo "0 passed, 1 failed"; exit 1; }

# Scratch files on tmpfs: a simulated device persists each state change by write +
# rename, which ext4 on these virtual disks makes cost ~2 ms (the fuzzer and the fault
# matrix make tens of thousands). TMPDIR is where Deno.makeTempDir puts them; not under
# /dev (Deno asks for --allow-all there). Needs root to mount; else /tmp as it is.
scratch=""
if [ -z "${VFIO_MIG_KEEP_TMPDIR:-}" ] && [ "$(id -u)" = 0 ]; then
    scratch=$(mktemp -d /tmp/vfio-mig-tests.XXXXXX)
    if mount -t tmpfs -o size=50%,mode=1777 vfio-mig-tests "$scratch" 2>/dev/null; then
        export TMPDIR=$scratch
        trap 'umount "$scratch" 2>/dev/null; rmdir "$scratch" 2>/dev/null' EXIT
    else
        rmdir "$scratch"
    fi
fi
# gcc and the kernel's uapi headers for the struct layout test; openssl (a TLS
# certificate) and openssh-server/-client (a real sshd on loopback) for the network tests.
if ! command -v gcc >/dev/null || [ ! -f /usr/include/linux/vfio.h ] || ! command -v openssl >/dev/null ||
    [ ! -x /usr/sbin/sshd ] || ! command -v ssh >/dev/null || ! command -v ssh-keygen >/dev/null; then
    log "installing gcc, linux-libc-dev, openssl and openssh"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null && apt-get install -y -qq gcc libc6-dev linux-libc-dev openssl \
        openssh-server openssh-client >/dev/null
fi

# zstd, age and openssl: the README's recipes for state at rest (tests/readme/recipes_test.ts).
if ! command -v zstd >/dev/null || ! command -v age >/dev/null || ! command -v openssl >/dev/null; then
    log "installing zstd, age and openssl (the README's at-rest recipes)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null && apt-get install -y -qq zstd age openssl >/dev/null
fi

# Debian's chromium renders vfio-mig report's output headless (tests/report/report_chromium_test.ts).
if ! command -v chromium >/dev/null; then
    log "installing chromium (headless, for the report rendering test)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null && apt-get install -y -qq chromium >/dev/null
fi

# Counts from Deno's summary line: "ok | 45 passed (3 steps) | 0 failed (2s)".
count_deno() {
    local line
    line=$(sed 's/\x1b\[[0-9;]*m//g' "$1" | grep -E '^(ok|FAILED) \| [0-9]+ passed' | tail -1)
    if [ -z "$line" ]; then
        failed=$((failed + 1))
        return
    fi
    passed=$((passed + $(sed -E 's/.*\| ([0-9]+) passed.*/\1/' <<<"$line")))
    failed=$((failed + $(sed -E 's/.*\| ([0-9]+) failed.*/\1/' <<<"$line")))
}

# Prepare the real-kernel guest first (downloads and builds are cached): its 6.12
# uapi headers also let the struct layout test compare against a current kernel.
kernel=${VFIO_MIG_KERNEL_TESTS:-1}
if [ "$kernel" = 1 ] && [ -f tests/kernel/run.sh ]; then
    log "preparing the real-kernel guest (cached after the first run)"
    t0=$(date +%s)
    if bash tests/kernel/run.sh --prepare >"$logs/prepare.log" 2>&1; then
        uapi=$(ls -d "${VFIO_MIG_KERNEL_CACHE:-$HOME/.cache/vfio-mig-kernel}"/kernel/*/root/usr/src/linux-headers-*-common/include/uapi 2>/dev/null | tail -1)
        [ -n "$uapi" ] && export VFIO_MIG_UAPI_INCLUDE=$uapi
    else
        tail -20 "$logs/prepare.log"
        log "preparing the guest failed: the kernel suite will report it"
    fi
    log "prepared in $(( $(date +%s) - t0 )) s"
fi

log "deno test (unit, simulator and CLI tests)"
t0=$(date +%s)
NO_COLOR=1 deno task test 2>&1 | tee "$logs/deno.log"
count_deno "$logs/deno.log"
log "deno tests took $(( $(date +%s) - t0 )) s"

if [ "$kernel" = 1 ] && [ -f tests/kernel/suite.sh ]; then
    log "real-kernel suite (QEMU guest, Debian 6.12 kernel, mtty)"
    t0=$(date +%s)
    bash tests/kernel/suite.sh 2>&1 | tee "$logs/kernel.log"
    rc=${PIPESTATUS[0]}
    line=$(grep -E '^kernel: [0-9]+ passed, [0-9]+ failed' "$logs/kernel.log" | tail -1)
    if [ -n "$line" ]; then
        passed=$((passed + $(sed -E 's/kernel: ([0-9]+) passed.*/\1/' <<<"$line")))
        failed=$((failed + $(sed -E 's/.* ([0-9]+) failed.*/\1/' <<<"$line")))
    fi
    if [ "$rc" != 0 ] && { [ -z "$line" ] || [ "$(sed -E 's/.* ([0-9]+) failed.*/\1/' <<<"$line")" = 0 ]; }; then
        log "kernel suite exited $rc without reporting a failure: counting it as one"
        failed=$((failed + 1))
    fi
    log "kernel suite took $(( $(date +%s) - t0 )) s"
fi

rm -rf "$logs"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ] && [ "$passed" -gt 0 ]

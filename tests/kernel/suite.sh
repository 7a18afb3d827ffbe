#!/usr/bin/env bash
# Host side of the real-kernel suite: boots the guest (tests/kernel/run.sh) and runs
# tests/kernel/suite.ts inside it against real mtty devices; with the custom kernel
# (IOMMUFD, VFIO_DEVICE_CDEV) it runs again through /dev/vfio/devices/vfioN.
# Ends with "kernel: N passed, N failed".
#   VFIO_MIG_KERNEL_CDEV=0|1   also run on the custom kernel (default 1)
#   VFIO_MIG_KERNEL_QEMU=0|1   the QEMU judge group (QEMU 10 and 7.2 nested in the
#                              guest; default 0: under TCG it takes longer than the rest)
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
passed=0 failed=0
out=$(mktemp)
trap 'rm -f "$out"' EXIT

run_suite() { # label, run.sh options..., -- suite args
    local label=$1; shift
    local t0 rc line
    t0=$(date +%s)
    bash "$here/run.sh" "$@" 2>&1 | tee "$out"
    rc=${PIPESTATUS[0]}
    line=$(grep -E '^kernel: [0-9]+ passed, [0-9]+ failed' "$out" | tail -1)
    if [ -n "$line" ]; then
        passed=$((passed + $(sed -E 's/kernel: ([0-9]+) passed.*/\1/' <<<"$line")))
        failed=$((failed + $(sed -E 's/.* ([0-9]+) failed.*/\1/' <<<"$line")))
    else
        echo "kernel suite ($label): no result (exit code $rc)" >&2
        failed=$((failed + 1))
    fi
    echo "kernel suite ($label) took $(( $(date +%s) - t0 )) s" >&2
}

without=--without\ qemu
[ "${VFIO_MIG_KERNEL_QEMU:-0}" = 1 ] && without=
run_suite "Debian 6.12 kernel, group/container" --timeout 2700 -- "deno run -A tests/kernel/suite.ts $without"
if [ "${VFIO_MIG_KERNEL_CDEV:-1}" = 1 ]; then
    run_suite "custom 6.12 kernel, iommufd cdev" --custom-kernel --timeout 1500 -- 'deno run -A tests/kernel/suite.ts --cdev'
fi
echo "kernel: $passed passed, $failed failed"
[ "$failed" = 0 ]

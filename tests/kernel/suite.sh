#!/usr/bin/env bash
# Host side of the real-kernel suite: boots the guest (tests/kernel/run.sh) and runs
# tests/kernel/suite.ts inside it against real mtty devices; with the custom kernel
# (IOMMUFD, VFIO_DEVICE_CDEV) the checks about how a device is reached run again
# through /dev/vfio/devices/vfioN, with the borrow, interrupt and sim_reset groups; the
# Debian guest runs the QEMU judge. A third guest, the sanitizer kernel (KASAN, UBSAN,
# lockdep, hang detectors), runs the torture group (guest/torture.ts: `check --torture`
# on every real driver of the lab, the planted defect as positive control, the known
# findings) after the custom one. A fourth guest, the VF lab (run.sh --vf: the Debian
# kernel under QEMU 10, an igb PF with two SR-IOV VFs), runs the vf group after the
# Debian one. The Debian-then-VF chain and the custom-then-torture chain run at the same
# time (each guest is one TCG vCPU; these machines have two cores); their lines are
# prefixed [debian], [vf], [custom] and [torture]. Ends with "kernel: N passed, N failed".
#   VFIO_MIG_KERNEL_CDEV=0|1   also run on the custom kernel (default 1)
#   VFIO_MIG_KERNEL_QEMU=0|1   the QEMU judge group (QEMU 10 and 7.2 nested in the
#                              Debian guest; default 1)
#   VFIO_MIG_KERNEL_INTERRUPT=0|1  the interrupt group (default 1)
#   VFIO_MIG_KERNEL_TORTURE=0|1  the torture group on the sanitizer kernel (default 1)
#   VFIO_MIG_TORTURE_STEPS=N   its budget: fuzz cases and stress steps per device (default 20)
#   VFIO_MIG_KERNEL_VF=0|1     the VF lab's guest and its vf group (default 1)
#   VFIO_MIG_KERNEL_SERIAL=1   one guest after the other
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
passed=0 failed=0
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

run_suite() { # name, label, run.sh options..., -- suite args
    local name=$1 label=$2; shift 2
    local t0 rc
    t0=$(date +%s)
    bash "$here/run.sh" "$@" >"$logs/$name.log" 2>&1 &
    local pid=$!
    # Stream it, prefixed, while it runs.
    tail -n +1 -f "$logs/$name.log" --pid "$pid" | sed -u "s/^/[$name] /" &
    local tailer=$!
    wait "$pid"
    rc=$?
    wait "$tailer" 2>/dev/null
    echo "$rc" >"$logs/$name.rc"
    echo "[$name] kernel suite ($label) took $(( $(date +%s) - t0 )) s" >&2
}

count() { # name, label
    local name=$1 label=$2 line rc
    rc=$(cat "$logs/$name.rc" 2>/dev/null || echo 125)
    line=$(grep -E '^kernel: [0-9]+ passed, [0-9]+ failed' "$logs/$name.log" | tail -1)
    if [ -n "$line" ]; then
        passed=$((passed + $(sed -E 's/kernel: ([0-9]+) passed.*/\1/' <<<"$line")))
        failed=$((failed + $(sed -E 's/.* ([0-9]+) failed.*/\1/' <<<"$line")))
    else
        echo "kernel suite ($label): no result (exit code $rc)" >&2
        failed=$((failed + 1))
    fi
}

# Groups that can be left out: qemu (QEMU nested in the guest, ~10 min under TCG) and
# interrupt (Ctrl-C at the waits).
optional=""
[ "${VFIO_MIG_KERNEL_QEMU:-1}" = 1 ] || optional="$optional --without qemu"
[ "${VFIO_MIG_KERNEL_INTERRUPT:-1}" = 1 ] || optional="$optional --without interrupt"
cdev=${VFIO_MIG_KERNEL_CDEV:-1}
# The two guests share the groups out, so that neither takes much longer than the other:
# Debian (group/container) runs core, qemu (whose many vfio-mig runs all open
# through the group) and pci; the custom kernel (cdev) runs core's open-path checks, borrow,
# interrupt, sim_reset and pci's two cdev checks. Without the custom kernel, Debian runs them all.
without=$optional
[ "$cdev" = 1 ] && without="$without --without borrow --without interrupt --without sim_reset"
debian_label="Debian 6.12 kernel, group/container"
custom_label="custom 6.12 kernel, iommufd cdev"

# Prepare both first (one at a time: they share the cache lock), so neither guest's
# clock runs while the other builds.
prepared=1
bash "$here/run.sh" --prepare >/dev/null 2>&1 || prepared=0
[ "$cdev" = 1 ] && { bash "$here/run.sh" --custom-kernel --prepare >/dev/null 2>&1 || prepared=0; }
torture=${VFIO_MIG_KERNEL_TORTURE:-1}
[ "$torture" = 1 ] && { bash "$here/run.sh" --sanitizer-kernel --prepare >/dev/null 2>&1 || prepared=0; }
# Prepared: the guests take the cache lock shared and boot together (else each
# prepares under the exclusive lock, and reports what failed).
export VFIO_MIG_KERNEL_PREPARED=$prepared

vf=${VFIO_MIG_KERNEL_VF:-1}
vf_label="Debian 6.12 kernel under QEMU 10, SR-IOV VFs"
# The VF lab after the Debian guest: measured 2026-12-07, Debian 765 s + VF 146 s against
# custom 398 s + torture 638 s, so it adds nothing to the wall time there.
{
    run_suite debian "$debian_label" --timeout 2700 -- "deno run -A tests/kernel/suite.ts $without"
    [ "$vf" = 1 ] && run_suite vf "$vf_label" --vf --timeout 1200 -- "deno run -A tests/kernel/suite.ts --group vf"
} &
jobs_=($!)
torture_label="sanitizer 6.12 kernel, check --torture"
torture_run() {
    # The replay files of what it finds go to tests/kernel/torture/out/ in the checkout.
    run_suite torture "$torture_label" --sanitizer-kernel --timeout 1800 -- \
        "deno run -A tests/kernel/guest/torture.ts --steps ${VFIO_MIG_TORTURE_STEPS:-20}"
}
[ "${VFIO_MIG_KERNEL_SERIAL:-0}" = 1 ] && wait "${jobs_[@]}"
if [ "$cdev" = 1 ]; then
    {
        run_suite custom "$custom_label" --custom-kernel --timeout 2700 -- "deno run -A tests/kernel/suite.ts --cdev --without qemu $optional"
        [ "$torture" = 1 ] && torture_run
    } &
    jobs_+=($!)
elif [ "$torture" = 1 ]; then
    torture_run &
    jobs_+=($!)
fi
wait "${jobs_[@]}"

count debian "$debian_label"
[ "$cdev" = 1 ] && count custom "$custom_label"
[ "$torture" = 1 ] && count torture "$torture_label"
[ "$vf" = 1 ] && count vf "$vf_label"
echo "kernel: $passed passed, $failed failed"
[ "$failed" = 0 ]

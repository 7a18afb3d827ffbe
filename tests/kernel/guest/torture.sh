#!/bin/sh
# torture.sh - `vfio-mig check --torture` against the lab's real drivers, inside the
# kernel test VM (busybox sh): the kernel's mtty (uAPI v2), and mtty_v1 (the v1 region
# protocol; Debian kernel only, where it is a module), each with a fixed seed and budget.
#
#   bash tests/kernel/run.sh --timeout 1800 -- sh tests/kernel/guest/torture.sh
#
# Environment: TORTURE_SEED (default 20261206), TORTURE_STEPS (fuzz cases and stress
# steps, default 100), TORTURE_OUT (replay files, default /tmp/torture: the guest's
# tmpfs; point it into the shared checkout to keep them).
#
# What the torture finds in drivers we did not write is reported, not a failure: each
# finding is printed with its replay command, and the script exits 0. It exits 1 when
# the torture itself could not run (exit code other than 0, 1), or when the positive
# control at the end (a WARNING record written to /dev/kmsg during a run) is not reported.

# shellcheck shell=dash
SEED=${TORTURE_SEED:-20261206}
STEPS=${TORTURE_STEPS:-100}
OUT=${TORTURE_OUT:-/tmp/torture}
status=0
mkdir -p "$OUT"
. tests/kernel/guest/mtty.sh

torture() { # NAME DEVICE
    t0=$(date +%s)
    deno run -A cli.ts check --torture --i-accept-state-loss --device "$2" --seed "$SEED" --steps "$STEPS" \
        --step-timeout 120 --out "$OUT/$1"
    rc=$?
    echo "torture $1: exit $rc in $(($(date +%s) - t0)) s (0 no finding, 1 findings: reported above)"
    case $rc in 0 | 1) ;; *) status=1 ;; esac
}

u=$(mtty_create mtty-2) || exit 1
torture mtty-2 "$u"
mtty_remove "$u"

V1=/sys/class/mdev_bus/mtty_v1/mdev_supported_types/mtty_v1-2
if [ -d "$V1" ]; then
    u=$(cat /proc/sys/kernel/random/uuid)
    echo "$u" >"$V1/create" || exit 1
    torture mtty_v1-2 "$u"
    echo 1 >"$MDEV_DEVICES/$u/remove"
else
    echo "torture mtty_v1-2: skipped (no mtty_v1 module on this kernel)"
fi

# Positive control of the kernel-log watcher on the real /dev/kmsg: a WARNING record
# written while the torture runs must come back as a finding with that line (exit 1 of
# this script if it does not).
u=$(mtty_create mtty-2) || exit 1
ev="$OUT/control.jsonl"
rm -f "$ev"
(
    while ! grep -q '"t":"start"' "$ev" 2>/dev/null; do sleep 1; done
    sleep 2
    echo "<4>WARNING: CPU: 0 PID: 0 at tests/kernel/guest/torture.sh: planted record (positive control)" >/dev/kmsg
) &
out=$(deno run -A cli.ts check --torture --i-accept-state-loss --device "$u" --seed "$SEED" --steps 150 \
    --only stress --step-timeout 30 --out "$OUT/control" --events "$ev")
rc=$?
mtty_remove "$u"
if [ $rc = 1 ] && echo "$out" | grep -q "kmsg:   WARNING: CPU: 0 PID: 0 at tests/kernel/guest/torture.sh"; then
    echo "torture kmsg control: the planted record was reported: $(echo "$out" | grep -m1 '^FINDING')"
else
    echo "torture kmsg control: FAILED: the planted /dev/kmsg record was not reported (exit $rc)"
    echo "$out"
    status=1
fi
exit $status

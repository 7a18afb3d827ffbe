#!/bin/sh
# torture.sh - the torture group (guest/torture.ts) from a guest shell: `vfio-mig check
# --torture` on every real driver of the lab, the planted defect as positive control, the
# known findings replayed. Arguments go to torture.ts (--seed N, --steps N, --step-timeout
# S, --out DIR). Meant for the sanitizer kernel:
#
#   bash tests/kernel/run.sh --sanitizer-kernel --timeout 1800 -- sh tests/kernel/guest/torture.sh
#
# Exit 0 when every check passed (no new finding, every known one still there, the
# planted defect found); 1 otherwise. See tests/kernel/README.md, "The torture group".
exec deno run -A tests/kernel/guest/torture.ts "$@"

#!/usr/bin/env bash
# The demo: two simulated VFIO devices; one's migration state is streamed into the
# other through a pipe (save - | load -), and they end up equal.
set -euo pipefail
cd "$(dirname "$0")"
export VFIO_MIG_DENO; VFIO_MIG_DENO=$(bash scripts/ensure-deno.sh)
# bin/vfio-mig: deno run cli.ts with SIGUSR1 blocked (README "Security").
vm() { bin/vfio-mig "$@"; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
size=${DEMO_SIZE:-256M}

echo "== two simulated devices with different state ($size each)"
vm sim create "$dir/A" --model bulk --size "$size" --seed 1
vm sim create "$dir/B" --model bulk --size "$size" --seed 2
vm sim compare "$dir/A" "$dir/B" || true

echo
echo "== vfio-mig save --device sim:A - | vfio-mig load --device sim:B -"
vm save --device "sim:$dir/A" - | vm load --device "sim:$dir/B" -

echo
echo "== after the migration"
vm sim compare "$dir/A" "$dir/B"
echo "source state: $(vm state --device "sim:$dir/A"), destination state: $(vm state --device "sim:$dir/B")"

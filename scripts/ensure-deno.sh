#!/usr/bin/env bash
# Makes `deno` 2.9.6 available, from the npm registry (JSR and deno.land are not
# needed). Source it or run it; prints the path of the deno binary.
set -euo pipefail
want=${DENO_VERSION:-2.9.6}
have=$(deno --version 2>/dev/null | head -1 | awk '{print $2}' || true)
if [ "$have" != "$want" ]; then
    if ! command -v npm >/dev/null 2>&1; then
        echo "ensure-deno: installing npm (Debian package) to fetch deno" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        apt-get install -y -qq npm >/dev/null
    fi
    echo "ensure-deno: installing deno@$want from the npm registry" >&2
    npm install -g --no-audit --no-fund "deno@$want" >/dev/null 2>&1 ||
        npm install -g --no-audit --no-fund "deno@$want"
    hash -r
fi
command -v deno

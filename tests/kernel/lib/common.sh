# shellcheck shell=bash
# Settings and helpers of the kernel test harness. Sourced by run.sh; not run.
#
# Settings (environment):
#   KVER_UPSTREAM          Debian 6.12 kernel to use (default 6.12.117); the
#                          packages are linux-image-${KVER_UPSTREAM}+deb12-amd64-unsigned etc.
#   VFIO_MIG_KERNEL_CACHE  cache folder (default ~/.cache/vfio-mig-kernel)
#   VFIO_MIG_DENO_VERSION  deno for the guest (default 2.9.6)
#   VFIO_MIG_KERNEL_DENO   auto (default: host deno if it is that version, else
#                          npm), npm (always the npm copy in the cache) or a
#                          path to a deno binary
#   VFIO_MIG_KERNEL_JOBS   make -j for the custom kernel (default: nproc)

KVER_UPSTREAM=${KVER_UPSTREAM:-6.12.117}
DENO_VERSION=${VFIO_MIG_DENO_VERSION:-2.9.6}
CACHE=${VFIO_MIG_KERNEL_CACHE:-${HOME:-/root}/.cache/vfio-mig-kernel}

# Debian bookworm's 6.12 kernels ("+deb12" ABI). Image, headers, kbuild and
# source must come from the same upload: the source is fetched at the image's
# package version.
KABI=${KVER_UPSTREAM}+deb12            # e.g. 6.12.117+deb12
KREL=${KABI}-amd64                     # uname -r in the guest
DEB_IMAGE=linux-image-${KREL}-unsigned
DEB_HEADERS=linux-headers-${KREL}
DEB_HEADERS_COMMON=linux-headers-${KABI}-common
DEB_KBUILD=linux-kbuild-${KABI}
DEB_SOURCE=linux-source-6.12

DEBS=$CACHE/debs                       # downloaded .deb files, all versions
KCACHE=$CACHE/kernel/$KVER_UPSTREAM    # everything derived from one kernel version
KROOT=$KCACHE/root                     # dpkg-deb -x of image + headers + kbuild
KDIR=$KROOT/usr/src/linux-headers-$KREL
MODDIR=$KROOT/lib/modules/$KREL
VMLINUZ=$KROOT/boot/vmlinuz-$KREL
CUSTOM=$KCACHE/custom                  # the optional custom kernel
LOGS=$CACHE/logs

PREFIX="vfio-mig-kernel"
log() { printf '%s: %s\n' "$PREFIX" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# now_us: wall clock in microseconds (bash 5 EPOCHREALTIME).
now_us() { local t=${EPOCHREALTIME/./}; echo "$((10#$t))"; }
# secs FROM_US: seconds since FROM_US, one decimal.
secs() {
    local d=$(( $(now_us) - $1 ))
    printf '%d.%d' $((d / 1000000)) $((d % 1000000 / 100000))
}

# step NAME FUNCTION [ARGS...]: run one preparation step and print its time.
# A step that finds its output up to date sets STEP_NOTE=cached.
STEP_NOTE=""
step() {
    local name=$1 t0; shift
    t0=$(now_us); STEP_NOTE=""
    "$@"
    log "$(printf '%-22s %6s s%s' "$name" "$(secs "$t0")" "${STEP_NOTE:+ ($STEP_NOTE)}")"
}

# run_logged LOGNAME CMD...: run CMD with its output appended to
# $LOGS/LOGNAME.log; returns CMD's status.
# quiet LOGNAME CMD...: the same, but on failure show the end of that log
# and stop.
# CMD must be a simple command or a function that is one pipeline (errexit
# does not apply inside a function called from a condition).
run_logged() {
    local name=$1; shift
    mkdir -p "$LOGS"
    printf '\n### %s: %s\n' "$(date '+%F %T')" "$*" >>"$LOGS/$name.log"
    "$@" >>"$LOGS/$name.log" 2>&1
}
quiet() {
    if ! run_logged "$@"; then
        log "failed: ${*:2}"
        tail -n 40 "$LOGS/$1.log" | sed 's/^/    /' >&2
        die "see $LOGS/$1.log"
    fi
}

# Stamps: a folder's .stamp holds the key of the inputs it was built from.
# key ITEMS...: hash of strings; an item "@FILE" stands for FILE's content.
key() {
    local x
    for x in "$@"; do
        case "$x" in
            @*) sha256sum <"${x#@}" ;; # the content only: not the checkout's path
            *) printf '%s\n' "$x" ;;
        esac
    done | sha256sum | cut -c1-16
}
# recipe FUNCTION...: the source text of shell functions, so that changing
# how a step builds its output also changes its key.
recipe() { declare -f "$@"; }
stamp_ok() { [ -f "$1/.stamp" ] && [ "$(cat "$1/.stamp")" = "$2" ]; }
stamp_set() { printf '%s\n' "$2" >"$1/.stamp"; }

# shq STRING: quote for a POSIX (busybox) shell.
shq() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }

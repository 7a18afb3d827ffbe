#!/bin/sh
# mtty.sh - manage mtty mdev devices inside the kernel test VM (busybox sh).
#
# Run it:
#   sh tests/kernel/guest/mtty.sh create [mtty-1|mtty-2] [UUID]   prints the UUID
#   sh tests/kernel/guest/mtty.sh remove UUID|all
#   sh tests/kernel/guest/mtty.sh list                            UUID TYPE GROUP per line
#   sh tests/kernel/guest/mtty.sh types                           TYPE AVAILABLE per line
#   sh tests/kernel/guest/mtty.sh group UUID                      /dev/vfio/N
#   sh tests/kernel/guest/mtty.sh cdev UUID                       /dev/vfio/devices/vfioN
# or source it and call the functions:
#   . tests/kernel/guest/mtty.sh; uuid=$(mtty_create mtty-2); ...; mtty_remove "$uuid"
#
# mtty-1 has one serial port, mtty-2 two. Each mdev gets its own IOMMU group
# (/dev/vfio/N); the iommufd cdev (/dev/vfio/devices/vfioN) exists only on
# the custom kernel (run.sh --custom-kernel).

# shellcheck shell=dash  # busybox ash has "local", like dash
MTTY_TYPES=/sys/class/mdev_bus/mtty/mdev_supported_types
MDEV_DEVICES=/sys/bus/mdev/devices

mtty_err() { echo "mtty.sh: $*" >&2; return 1; }

# mtty_create [TYPE] [UUID]: create a device (default mtty-2, random UUID).
mtty_create() {
    local type="${1:-mtty-2}" uuid="${2:-$(cat /proc/sys/kernel/random/uuid)}"
    [ -d "$MTTY_TYPES" ] || mtty_err "no mtty parent device ($MTTY_TYPES)" || return
    [ -d "$MTTY_TYPES/$type" ] || mtty_err "unknown type $type (have: $(ls "$MTTY_TYPES" | tr '\n' ' '))" || return
    echo "$uuid" >"$MTTY_TYPES/$type/create" || mtty_err "cannot create $type $uuid" || return
    echo "$uuid"
}

# mtty_remove UUID|all
mtty_remove() {
    local d
    [ -n "$1" ] || mtty_err "remove: UUID or 'all' needed" || return
    if [ "$1" = all ]; then
        for d in "$MDEV_DEVICES"/*; do
            [ -e "$d/remove" ] && echo 1 >"$d/remove"
        done
        return 0
    fi
    [ -e "$MDEV_DEVICES/$1/remove" ] || mtty_err "no mdev $1" || return
    echo 1 >"$MDEV_DEVICES/$1/remove"
}

# mtty_group UUID: the device's VFIO group node.
mtty_group() {
    local g
    g=$(readlink "$MDEV_DEVICES/$1/iommu_group" 2>/dev/null) || mtty_err "no mdev $1" || return
    echo "/dev/vfio/${g##*/}"
}

# mtty_cdev UUID: the device's iommufd character device.
mtty_cdev() {
    local v
    for v in "$MDEV_DEVICES/$1"/vfio-dev/vfio*; do
        [ -e "$v" ] && { echo "/dev/vfio/devices/${v##*/}"; return 0; }
    done
    mtty_err "no vfio cdev for $1 (needs VFIO_DEVICE_CDEV: run.sh --custom-kernel)"
}

mtty_list() {
    local d t
    for d in "$MDEV_DEVICES"/*; do
        [ -e "$d/mdev_type" ] || continue
        t=$(readlink "$d/mdev_type")
        echo "${d##*/} ${t##*/} $(mtty_group "${d##*/}")"
    done
}

mtty_types() {
    local t
    for t in "$MTTY_TYPES"/*; do
        echo "${t##*/} $(cat "$t/available_instances")"
    done
}

mtty_main() {
    local cmd="$1"
    [ $# -gt 0 ] && shift
    case "$cmd" in
        create) mtty_create "$@" ;;
        remove) mtty_remove "$@" ;;
        list) mtty_list ;;
        types) mtty_types ;;
        group) mtty_group "$@" ;;
        cdev) mtty_cdev "$@" ;;
        *) sed -n '3,13s/^# \{0,1\}//p' "$0" >&2; return 2 ;;
    esac
}

# Run as a script (not sourced): do the subcommand.
case "${0##*/}" in
    mtty.sh) mtty_main "$@" ;;
esac

# shellcheck shell=bash
# The sanitizer flavour of the kernel test harness (run.sh --sanitizer-kernel): a
# 6.12 kernel from linux-source-6.12 with KASAN, UBSAN, lockdep and the hang
# detectors (guest/sanitizer-kernel.config), and the lab's out-of-tree modules built
# against it. Sourced by run.sh after lib/steps.sh; its steps keep their stamps in
# $SANITIZER, apart from the custom kernel's. The guest of the torture group
# (guest/torture.sh).

SANITIZER=$KCACHE/sanitizer            # bzImage, build/ (the kernel tree's O=), modules/

# The unpacked linux-source-6.12 tree, shared with the custom kernel (the same folder
# and stamp as build_custom_kernel's: whichever flavour comes first unpacks it; builds
# are out of tree, O=, so the tree itself stays clean).
sanitizer_source_tree() {
    local src=$CUSTOM/src sk
    sk=$(key "${DEB[$DEB_SOURCE]##*/}")
    stamp_ok "$src" "$sk" && return 0
    log "unpacking linux-source-6.12 (shared by the custom and sanitizer kernels)"
    rm -rf "$src" "$CUSTOM/build"; mkdir -p "$src"
    quiet sanitizer-kernel source_member "${DEB[$DEB_SOURCE]}" linux-source-6.12 "$src"
    stamp_set "$src" "$sk"
}

# config_applied FRAGMENT CONFIG: every CONFIG_X=v line of the fragment is in the
# .config, and every "# CONFIG_X is not set" line is not set there.
config_applied() {
    local line name bad=0
    while IFS= read -r line; do
        case "$line" in
            CONFIG_*=*) grep -qx "$line" "$2" || { log "not set in .config: $line"; bad=1; } ;;
            "# CONFIG_"*" is not set")
                name=${line#\# }; name=${name%% *}
                ! grep -q "^$name=" "$2" || { log "set in .config, the fragment says not: $name"; bad=1; } ;;
        esac
    done <"$1"
    [ $bad = 0 ]
}

build_sanitizer_kernel() {
    local S=$CUSTOM/src/linux-source-6.12 O=$SANITIZER/build frag=$GUEST_SRC/sanitizer-kernel.config k
    k=$(key "$(recipe build_sanitizer_kernel sanitizer_source_tree config_applied)" "${DEB[$DEB_SOURCE]##*/}" "@$frag")
    if stamp_ok "$SANITIZER" "$k" && [ -f "$SANITIZER/bzImage" ]; then STEP_NOTE=cached; return 0; fi
    mkdir -p "$SANITIZER"
    rm -f "$SANITIZER/.stamp"
    sanitizer_source_tree

    mkdir -p "$O"
    quiet sanitizer-kernel make -C "$S" O="$O" tinyconfig
    quiet sanitizer-kernel "$S/scripts/kconfig/merge_config.sh" -m -O "$O" "$O/.config" "$frag"
    quiet sanitizer-kernel make -C "$S" O="$O" olddefconfig
    config_applied "$frag" "$O/.config" || die "$frag is not fully applied (see $O/.config)"
    log "building the sanitizer kernel (make -j${VFIO_MIG_KERNEL_JOBS:-$(nproc)}); log: $LOGS/sanitizer-kernel.log"
    # bzImage and modules: the second gives Module.symvers, which out-of-tree modules link against.
    quiet sanitizer-kernel nice -n 10 make -C "$S" O="$O" -j"${VFIO_MIG_KERNEL_JOBS:-$(nproc)}" bzImage modules
    cp "$O/arch/x86/boot/bzImage" "$SANITIZER/bzImage"
    make -s -C "$S" O="$O" kernelrelease >"$SANITIZER/kernelrelease"
    stamp_set "$SANITIZER" "$k"
    STEP_NOTE="$(( $(stat -c %s "$SANITIZER/bzImage") / 1024 )) KiB bzImage"
}

# sanitizer_module NAME SOURCE...: build NAME.ko out of tree against the sanitizer
# kernel's tree, in $SANITIZER/modules/NAME, and check its vermagic.
sanitizer_module() {
    local name=$1 d=$SANITIZER/modules/$1 f; shift
    rm -rf "$d"; mkdir -p "$d"
    for f in "$@"; do cp "$f" "$d/"; done
    echo "obj-m := $name.o" >"$d/Kbuild"
    quiet sanitizer-modules make -C "$CUSTOM/src/linux-source-6.12" O="$SANITIZER/build" M="$d" modules
    [ "$(modinfo -F vermagic "$d/$name.ko" | cut -d' ' -f1)" = "$(cat "$SANITIZER/kernelrelease")" ] ||
        die "$name.ko has the wrong vermagic for the sanitizer kernel"
}

# mtty_v1.ko (the v1 region protocol: mtty.c of the same tree + mtty_v1/mtty_v1.patch)
# and ivshmem_vfio_pci.ko (ivshmem_mig/, the test variant driver with its planted
# defects), both against the sanitizer kernel. mtty itself is built in.
build_sanitizer_modules() {
    local d=$SANITIZER/modules p=$HARNESS/mtty_v1/mtty_v1.patch src=$HARNESS/ivshmem_mig/ivshmem_vfio_pci.c k tmp
    k=$(key "$(recipe build_sanitizer_modules sanitizer_module)" "@$p" "@$src" "$(cat "$SANITIZER/.stamp")")
    if stamp_ok "$d" "$k" && [ -f "$d/mtty_v1/mtty_v1.ko" ] && [ -f "$d/ivshmem_vfio_pci/ivshmem_vfio_pci.ko" ]; then
        STEP_NOTE=cached; return 0
    fi
    rm -rf "$d"; mkdir -p "$d"
    tmp=$(mktemp -d "$SANITIZER/.mtty_v1.XXXXXX")
    quiet sanitizer-modules patch --quiet -o "$tmp/mtty_v1.c" "$CUSTOM/src/linux-source-6.12/samples/vfio-mdev/mtty.c" "$p"
    sanitizer_module mtty_v1 "$tmp/mtty_v1.c"
    rm -rf "$tmp"
    sanitizer_module ivshmem_vfio_pci "$src"
    stamp_set "$d" "$k"
}

# Paths of the modules the sanitizer guest loads, in load order.
sanitizer_guest_modules() {
    echo "$SANITIZER/modules/mtty_v1/mtty_v1.ko"
    echo "$SANITIZER/modules/ivshmem_vfio_pci/ivshmem_vfio_pci.ko"
}

# The guest's initramfs: the common one (build_initramfs, which has no modules for a
# flavour other than Debian) followed by a second cpio archive with the modules and the
# list /init loads them from (the kernel unpacks concatenated archives in order; a later
# file replaces an earlier one). build_initramfs itself stays as it is.
build_sanitizer_initramfs() {
    local base=$KCACHE/initramfs-$FLAVOUR/initramfs.cpio.gz d=$SANITIZER/initramfs k l keyargs=()
    for l in $(sanitizer_guest_modules); do keyargs+=("@$l"); done
    k=$(key "$(recipe build_sanitizer_initramfs sanitizer_guest_modules)" "@$base" "${keyargs[@]}")
    if stamp_ok "$d" "$k" && [ -f "$d/initramfs.cpio.gz" ]; then STEP_NOTE=cached; return 0; fi
    rm -rf "$d"; mkdir -p "$d/root/lib/modules" "$d/root/etc/vfio-mig"
    : >"$d/root/etc/vfio-mig/modules"
    for l in $(sanitizer_guest_modules); do
        cp "$l" "$d/root/lib/modules/"
        echo "${l##*/}" >>"$d/root/etc/vfio-mig/modules"
    done
    (cd "$d/root" && find . -mindepth 1 -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet --reproducible) |
        gzip -1 >"$d/modules.cpio.gz"
    cat "$base" "$d/modules.cpio.gz" >"$d/initramfs.cpio.gz"
    rm -rf "$d/root"
    stamp_set "$d" "$k"
    STEP_NOTE="$(( $(stat -c %s "$d/initramfs.cpio.gz") / 1024 )) KiB"
}

# shellcheck shell=bash
# The preparation steps of the kernel test harness: host packages, Debian
# kernel packages, mtty.ko, deno, initramfs, custom kernel. Sourced by run.sh
# after lib/common.sh. Each step skips its work when the stamp of its output
# folder matches the key of its inputs (which includes the step's own code).

GUEST_SRC=$HARNESS/guest

# Host tools (Debian 12 package names). Only tools: no kernel is installed.
#   qemu-system-x86      the VM (TCG; 7.2 in bookworm, virtio-9p built in)
#   busybox-static       the guest userland, one static binary
#   cpio, gzip           initramfs packing
#   xz-utils, zstd, kmod module decompression, depmod/modinfo
#   gcc-12, gcc, make, libc6-dev, libelf-dev, libssl-dev, dwarves, bc
#                        kbuild for mtty.ko (Debian's headers pin gcc-12)
#   patch                mtty_v1.ko from mtty.c
HOST_PACKAGES=(qemu-system-x86 busybox-static cpio gzip xz-utils zstd kmod
               gcc-12 gcc make libc6-dev libelf-dev libssl-dev dwarves bc patch)
CUSTOM_PACKAGES=(flex bison)       # kconfig of the full source tree

APT_UPDATED=0
apt_update_once() {
    [ "$APT_UPDATED" = 1 ] && return 0
    quiet apt apt-get update
    APT_UPDATED=1
}

# ensure_packages PKG...: apt-get install those not installed yet.
ensure_packages() {
    local missing=() p
    local installed
    installed=$(dpkg-query -W -f='${Package} ${db:Status-Abbrev}\n' "$@" 2>/dev/null | awk '$2 == "ii" {print $1}') || true
    for p in "$@"; do
        grep -qx "$p" <<<"$installed" || missing+=("$p")
    done
    if [ ${#missing[@]} = 0 ]; then STEP_NOTE=installed; return 0; fi
    [ "$(id -u)" = 0 ] || die "missing host packages (run as root, or install them): ${missing[*]}"
    log "installing host packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt_update_once
    quiet apt apt-get install -y --no-install-recommends "${missing[@]}"
}

host_packages() {
    local pkgs=("${HOST_PACKAGES[@]}")
    [ "$FLAVOUR" != debian ] && pkgs+=("${CUSTOM_PACKAGES[@]}")
    ensure_packages "${pkgs[@]}"
    # A dynamically linked /bin/busybox (package busybox) cannot run alone in
    # the initramfs.
    if ldd /bin/busybox >/dev/null 2>&1; then
        die "/bin/busybox is not static: apt-get install busybox-static"
    fi
}

# ---------------------------------------------------------------------------
# Debian kernel packages: apt-get download (never installed on the host).

# Upstream versions that the archive has, for the error message.
available_kernels() {
    { apt-cache search --names-only '^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$' 2>/dev/null || true; } |
        sed -E 's/^(linux-image-(6\.12\.[0-9]+)\+deb12-amd64-unsigned).*/\2 (\1)/' | sort -V
}
no_such_kernel() {
    local avail
    avail=$(available_kernels | sed 's/^/    /')
    log "error: $DEB_IMAGE is not in the apt archive (KVER_UPSTREAM=$KVER_UPSTREAM)."
    log "available linux-image-6.12.*-unsigned versions:"
    printf '%s\n' "${avail:-    (none: check /etc/apt/sources.list* for bookworm and bookworm-security)}" >&2
    log "set KVER_UPSTREAM to one of them, e.g. KVER_UPSTREAM=$(available_kernels | tail -n1 | cut -d' ' -f1)"
    exit 1
}

# Package version of the image (the same upload gives headers, kbuild and
# the matching linux-source-6.12).
image_version() {
    { apt-cache show --no-all-versions "$DEB_IMAGE" 2>/dev/null || true; } | sed -n 's/^Version: //p' | head -n1
}

# kernel_debs PKG...: make sure the .debs are in $DEBS; sets DEB[PKG]=file.
# $KCACHE/debs.list remembers the files, so a second run asks apt nothing.
declare -A DEB=()
kernel_debs() {
    local listf=$KCACHE/debs.list need=() p f ver tmp
    mkdir -p "$KCACHE" "$DEBS"
    for p in "$@"; do
        f=""
        [ -f "$listf" ] && f=$(awk -v p="$p" '$1 == p {f = $2} END {print f}' "$listf")
        if [ -n "$f" ] && [ -f "$DEBS/$f" ]; then DEB[$p]=$DEBS/$f; else need+=("$p"); fi
    done
    if [ ${#need[@]} = 0 ]; then STEP_NOTE=cached; return 0; fi

    ver=$(image_version)
    if [ -z "$ver" ]; then apt_update_once; ver=$(image_version); fi
    [ -n "$ver" ] || no_such_kernel
    tmp=$(mktemp -d "$DEBS/.download.XXXXXX")
    # (As root apt warns that _apt cannot write here; harmless.)
    if ! run_logged fetch env -C "$tmp" apt-get download "${need[@]/%/=$ver}"; then
        # The package lists may be stale (the archive keeps few versions).
        APT_UPDATED=0; apt_update_once
        ver=$(image_version)
        [ -n "$ver" ] || { rm -rf "$tmp"; no_such_kernel; }
        if ! run_logged fetch env -C "$tmp" apt-get download "${need[@]/%/=$ver}"; then
            rm -rf "$tmp"
            tail -n 20 "$LOGS/fetch.log" | sed 's/^/    /' >&2
            die "apt-get download of ${need[*]} (version $ver) failed; see $LOGS/fetch.log"
        fi
    fi
    local bytes=0
    for p in "${need[@]}"; do
        f=$(cd "$tmp" && ls "${p}"_*.deb)
        bytes=$(( bytes + $(stat -c %s "$tmp/$f") ))
        mv "$tmp/$f" "$DEBS/$f"
        printf '%s %s\n' "$p" "$f" >>"$listf"
        DEB[$p]=$DEBS/$f
    done
    rm -rf "$tmp"
    STEP_NOTE="$ver: ${#need[@]} package(s), $(( bytes / 1048576 )) MiB"
}

# Unpack image + headers + kbuild into $KROOT and make it usable.
unpack_kernel() {
    local k p
    k=$(key "$(recipe unpack_kernel)" "${DEB[$DEB_IMAGE]##*/}" "${DEB[$DEB_HEADERS]##*/}" \
            "${DEB[$DEB_HEADERS_COMMON]##*/}" "${DEB[$DEB_KBUILD]##*/}")
    if stamp_ok "$KROOT" "$k"; then STEP_NOTE=cached; return 0; fi
    rm -rf "$KROOT"; mkdir -p "$KROOT"
    for p in "$DEB_IMAGE" "$DEB_HEADERS" "$DEB_HEADERS_COMMON" "$DEB_KBUILD"; do
        quiet unpack dpkg-deb -x "${DEB[$p]}" "$KROOT"
    done
    # The headers' Makefile includes an absolute
    # /usr/src/linux-headers-*-common/Makefile: point it into $KROOT.
    sed -i "s#^include /usr/src/#include $KROOT/usr/src/#" "$KDIR/Makefile"
    # The image ships .ko.xz files but no modules.dep.
    quiet unpack depmod -b "$KROOT" "$KREL"
    [ -f "$VMLINUZ" ] && [ -s "$MODDIR/modules.dep" ] || die "unpacked kernel incomplete in $KROOT"
    stamp_set "$KROOT" "$k"
}

# source_member DEB MEMBER DEST [STRIP]: extract files from the source tarball
# inside linux-source-6.12's .deb (no temporary copy of the 150 MB tarball).
source_member() {
    dpkg-deb --fsys-tarfile "$1" |
        tar -xO ./usr/src/linux-source-6.12.tar.xz |
        tar -xJ -C "$3" --strip-components="${4:-0}" "$2"
}

# Out-of-tree mtty.ko (Debian's config has CONFIG_SAMPLES unset). Unsigned:
# MODULE_SIG_FORCE is off, so it loads and only taints the kernel.
build_mtty() {
    local d=$KCACHE/mtty k
    k=$(key "$(recipe build_mtty source_member)" "${DEB[$DEB_SOURCE]##*/}" "$(cat "$KROOT/.stamp")")
    if stamp_ok "$d" "$k" && [ -f "$d/mtty.ko" ]; then STEP_NOTE=cached; return 0; fi
    rm -rf "$d"; mkdir -p "$d"
    quiet mtty source_member "${DEB[$DEB_SOURCE]}" linux-source-6.12/samples/vfio-mdev/mtty.c "$d" 3
    echo 'obj-m := mtty.o' >"$d/Kbuild"
    quiet mtty make -C "$KDIR" M="$d" modules
    [ "$(modinfo -F vermagic "$d/mtty.ko" | cut -d' ' -f1)" = "$KREL" ] || die "mtty.ko has the wrong vermagic"
    stamp_set "$d" "$k"
}

# mtty_v1.ko: the mtty sample with migration protocol v1 (the region protocol of
# Linux 5.8-5.17 that QEMU 7.2 drives) in place of v2, for the QEMU judge
# (groups/qemu.ts): mtty.c from the step above + mtty_v1/mtty_v1.patch.
build_mtty_v1() {
    local d=$KCACHE/mtty_v1 p=$HARNESS/mtty_v1/mtty_v1.patch k
    k=$(key "$(recipe build_mtty_v1)" "@$KCACHE/mtty/mtty.c" "@$p" "$(cat "$KROOT/.stamp")")
    if stamp_ok "$d" "$k" && [ -f "$d/mtty_v1.ko" ]; then STEP_NOTE=cached; return 0; fi
    rm -rf "$d"; mkdir -p "$d"
    quiet mtty patch --quiet -o "$d/mtty_v1.c" "$KCACHE/mtty/mtty.c" "$p"
    echo 'obj-m := mtty_v1.o' >"$d/Kbuild"
    quiet mtty make -C "$KDIR" M="$d" modules
    [ "$(modinfo -F vermagic "$d/mtty_v1.ko" | cut -d' ' -f1)" = "$KREL" ] || die "mtty_v1.ko has the wrong vermagic"
    stamp_set "$d" "$k"
}

# ivshmem_vfio_pci.ko: the test variant driver over vfio-pci-core for QEMU's
# ivshmem-plain function, with migration uAPI v2 (ivshmem_mig/README.md), for
# the pci group (groups/pci.ts). Built from the checkout's source.
build_ivshmem_mig() {
    local d=$KCACHE/ivshmem_mig src=$HARNESS/ivshmem_mig/ivshmem_vfio_pci.c k
    k=$(key "$(recipe build_ivshmem_mig)" "@$src" "$(cat "$KROOT/.stamp")")
    if stamp_ok "$d" "$k" && [ -f "$d/ivshmem_vfio_pci.ko" ]; then STEP_NOTE=cached; return 0; fi
    rm -rf "$d"; mkdir -p "$d"
    cp "$src" "$d/"
    echo 'obj-m := ivshmem_vfio_pci.o' >"$d/Kbuild"
    quiet ivshmem_mig make -C "$KDIR" M="$d" modules
    [ "$(modinfo -F vermagic "$d/ivshmem_vfio_pci.ko" | cut -d' ' -f1)" = "$KREL" ] ||
        die "ivshmem_vfio_pci.ko has the wrong vermagic"
    stamp_set "$d" "$k"
}

# ---------------------------------------------------------------------------
# The deno binary for the guest (glibc build, exported read-only over 9p).
# Sets DENO_BIN to the real binary (symlinks resolved).

deno_version_of() { "$1" --version 2>/dev/null | head -n1 | cut -d' ' -f2; }
is_elf() { [ -f "$1" ] && [ "$(head -c 4 "$1" | od -An -c | tr -d ' ')" = '177ELF' ]; }

deno_binary() {
    local mode=${VFIO_MIG_KERNEL_DENO:-auto} c dir
    case "$mode" in
        auto)
            # The host's deno, if it is a real binary (not npm's JS shim) of
            # the wanted version.
            if c=$(command -v deno) && c=$(readlink -f "$c") && is_elf "$c" &&
               [ "$(deno_version_of "$c")" = "$DENO_VERSION" ]; then
                DENO_BIN=$c; STEP_NOTE="host $c"; return 0
            fi ;;
        npm) ;;
        *)
            c=$(readlink -f "$mode") && is_elf "$c" || die "VFIO_MIG_KERNEL_DENO=$mode: not a deno binary"
            [ "$(deno_version_of "$c")" = "$DENO_VERSION" ] ||
                log "warning: $c is deno $(deno_version_of "$c"), not $DENO_VERSION"
            DENO_BIN=$c; STEP_NOTE="given $c"; return 0 ;;
    esac
    # npm's deno package pulls the platform package @deno/linux-x64-glibc,
    # which holds the plain ELF; no install script is needed.
    dir=$CACHE/deno/$DENO_VERSION
    DENO_BIN=$dir/node_modules/@deno/linux-x64-glibc/deno
    if stamp_ok "$dir" "$DENO_VERSION" && [ -x "$DENO_BIN" ]; then STEP_NOTE="cached npm copy"; return 0; fi
    command -v npm >/dev/null || ensure_packages npm
    rm -rf "$dir"; mkdir -p "$dir"
    echo '{"private": true}' >"$dir/package.json"
    quiet deno npm install --prefix "$dir" --no-audit --no-fund --ignore-scripts \
        --include=optional "deno@$DENO_VERSION"
    is_elf "$DENO_BIN" && [ "$(deno_version_of "$DENO_BIN")" = "$DENO_VERSION" ] ||
        die "npm install deno@$DENO_VERSION gave no working $DENO_BIN"
    stamp_set "$dir" "$DENO_VERSION"
    STEP_NOTE="npm install deno@$DENO_VERSION"
}

# Shared libraries of the deno binary (glibc loader included), one a line.
deno_libs() {
    ldd "$DENO_BIN" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u
}

# ---------------------------------------------------------------------------
# initramfs: busybox, /init, modules in dependency order, glibc for deno.

# Modules the guest loads (Debian kernel); their dependencies come first.
# irqbypass and vfio-pci-core: the ivshmem variant driver of the pci group. igb: the VF
# lab's PF driver (run.sh --vf; no igb function elsewhere, so it binds nothing there);
# vfio-pci: the PF on vfio-pci with enable_sriov (the VF token case).
GUEST_MODULES="virtio_pci netfs 9pnet 9pnet_virtio 9p vfio vfio_iommu_type1 mdev irqbypass vfio-pci-core igb vfio-pci"

# resolve_modules: print module paths (relative to $MODDIR) in load order,
# skipping modules built into the image.
resolve_modules() {
    local m rel
    local -A seen=()
    _resolve() {
        local rel=$1 dep
        [ -n "${seen[$rel]:-}" ] && return 0
        seen[$rel]=1
        for dep in $(awk -F': *' -v r="$rel" '$1 == r {print $2}' "$MODDIR/modules.dep"); do
            _resolve "$dep"
        done
        echo "$rel"
    }
    for m in $GUEST_MODULES; do
        grep -qE "/$m\.ko$" "$MODDIR/modules.builtin" && continue
        rel=$(grep -oE "^[^:]*/$m\.ko(\.xz|\.zst)?:" "$MODDIR/modules.dep" | tr -d :)
        [ -n "$rel" ] || die "module $m is neither built in nor in modules.dep"
        _resolve "$rel"
    done
}

build_initramfs() {
    local d=$KCACHE/initramfs-$FLAVOUR out k rel base l libs mods=""
    out=$d/initramfs.cpio.gz
    libs=$(deno_libs)
    [ "$FLAVOUR" = debian ] && mods=$(resolve_modules)
    local keyargs=("$(recipe build_initramfs resolve_modules deno_libs)" "$FLAVOUR"
                   "@$GUEST_SRC/init" "@/bin/busybox" "@/usr/bin/env" "$mods" "$libs")
    for l in $libs; do keyargs+=("@$(readlink -f "$l")"); done
    [ "$FLAVOUR" = debian ] && keyargs+=("$(cat "$KROOT/.stamp")" "@$KCACHE/mtty/mtty.ko" \
                                         "@$KCACHE/mtty_v1/mtty_v1.ko" "@$KCACHE/ivshmem_mig/ivshmem_vfio_pci.ko")
    k=$(key "${keyargs[@]}")
    if stamp_ok "$d" "$k" && [ -f "$out" ]; then STEP_NOTE=cached; return 0; fi

    local R=$d/root
    rm -rf "$d"; mkdir -p "$d"
    mkdir -p "$R"/{bin,sbin,etc/vfio-mig,proc,sys,dev,tmp,run,root,mnt,opt/deno,usr} \
             "$R"/lib/{modules,x86_64-linux-gnu} "$R/lib64"
    cp /bin/busybox "$R/bin/busybox"
    # GNU env (coreutils; its libraries are glibc's, copied below for deno): the guest's
    # /bin/deno starts every Deno with SIGUSR1 blocked (--block-signal), as bin/vfio-mig
    # does on a host, so no guest Deno can open its inspector and vfio-mig does not
    # re-execute itself (src/launch.ts): a second Deno start costs seconds under TCG.
    cp /usr/bin/env "$R/bin/coreutils-env"
    install -m 0755 "$GUEST_SRC/init" "$R/init"
    ln -s ../lib "$R/usr/lib"; ln -s ../bin "$R/usr/bin"; ln -s ../sbin "$R/usr/sbin"

    # Modules: decompressed, flat in /lib/modules, listed in load order.
    : >"$R/etc/vfio-mig/modules"
    for rel in $mods; do
        base=${rel##*/}; base=${base%.xz}; base=${base%.zst}
        case "$rel" in
            *.xz) xz -dc "$MODDIR/$rel" >"$R/lib/modules/$base" ;;
            *.zst) zstd -qdc "$MODDIR/$rel" >"$R/lib/modules/$base" ;;
            *) cp "$MODDIR/$rel" "$R/lib/modules/$base" ;;
        esac
        echo "$base" >>"$R/etc/vfio-mig/modules"
    done
    if [ "$FLAVOUR" = debian ]; then
        cp "$KCACHE/mtty/mtty.ko" "$KCACHE/mtty_v1/mtty_v1.ko" "$KCACHE/ivshmem_mig/ivshmem_vfio_pci.ko" "$R/lib/modules/"
        printf 'mtty.ko\nmtty_v1.ko\nivshmem_vfio_pci.ko\n' >>"$R/etc/vfio-mig/modules"
    fi

    # glibc runtime for the deno binary read over 9p (and for Deno.dlopen).
    for l in $libs; do
        case "$l" in
            /lib64/*) cp "$(readlink -f "$l")" "$R/lib64/${l##*/}" ;;
            *) cp "$(readlink -f "$l")" "$R/lib/x86_64-linux-gnu/${l##*/}" ;;
        esac
    done
    echo /lib/x86_64-linux-gnu >"$R/etc/ld.so.conf"
    ldconfig -r "$R"
    printf 'root:x:0:0:root:/root:/bin/sh\n' >"$R/etc/passwd"
    printf 'root:x:0:\n' >"$R/etc/group"
    printf '127.0.0.1 localhost\n::1 localhost\n' >"$R/etc/hosts"
    printf 'passwd: files\ngroup: files\nhosts: files\n' >"$R/etc/nsswitch.conf"

    (cd "$R" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet --reproducible) |
        gzip -1 >"$out.tmp"
    mv "$out.tmp" "$out"
    rm -rf "$R"
    stamp_set "$d" "$k"
    STEP_NOTE="$(( $(stat -c %s "$out") / 1024 )) KiB"
}

# ---------------------------------------------------------------------------
# Optional custom kernel: tinyconfig + guest/custom-kernel.config, all built
# in: IOMMUFD + VFIO_DEVICE_CDEV (missing in Debian's config) and mtty.

build_custom_kernel() {
    local src=$CUSTOM/src S=$CUSTOM/src/linux-source-6.12 O=$CUSTOM/build frag=$GUEST_SRC/custom-kernel.config
    local k sk line bad=0
    local ivmg=$HARNESS/ivshmem_mig/ivshmem_vfio_pci.c
    k=$(key "$(recipe build_custom_kernel)" "${DEB[$DEB_SOURCE]##*/}" "@$frag" "@$ivmg")
    if stamp_ok "$CUSTOM" "$k" && [ -f "$CUSTOM/bzImage" ]; then STEP_NOTE=cached; return 0; fi
    mkdir -p "$CUSTOM"

    # Full source tree (about 1.5 GB), kept between builds.
    sk=$(key "${DEB[$DEB_SOURCE]##*/}")
    if ! stamp_ok "$src" "$sk"; then
        log "unpacking linux-source-6.12 for the custom kernel"
        rm -rf "$src" "$O"; mkdir -p "$src"
        quiet custom-kernel source_member "${DEB[$DEB_SOURCE]}" linux-source-6.12 "$src"
        stamp_set "$src" "$sk"
    fi

    # The pci group's variant driver, built in beside vfio-pci-core (no modules here),
    # behind its own symbol IVSHMEM_VFIO_PCI_TEST (custom-kernel.config sets it): the
    # tree is shared with the sanitizer kernel (lib/sanitizer.sh), which loads the
    # driver as a module and must not get it built in as well.
    local mk=$S/drivers/vfio/pci/Makefile kc=$S/drivers/vfio/pci/Kconfig
    local mkline='obj-$(CONFIG_IVSHMEM_VFIO_PCI_TEST) += ivshmem_vfio_pci.o'
    cmp -s "$ivmg" "$S/drivers/vfio/pci/ivshmem_vfio_pci.c" || cp "$ivmg" "$S/drivers/vfio/pci/"
    if ! grep -qxF "$mkline" "$mk"; then
        sed -i '/ivshmem_vfio_pci/d' "$mk"
        echo "$mkline" >>"$mk"
    fi
    grep -q '^config IVSHMEM_VFIO_PCI_TEST$' "$kc" ||
        printf '\nconfig IVSHMEM_VFIO_PCI_TEST\n\ttristate "vfio-mig test variant driver (tests/kernel/ivshmem_mig)"\n\tdepends on VFIO_PCI_CORE\n' >>"$kc"
    mkdir -p "$O"
    quiet custom-kernel make -C "$S" O="$O" tinyconfig
    quiet custom-kernel "$S/scripts/kconfig/merge_config.sh" -m -O "$O" "$O/.config" "$frag"
    quiet custom-kernel make -C "$S" O="$O" olddefconfig
    # Every line of the fragment must survive dependency resolution.
    while IFS= read -r line; do
        case "$line" in
            CONFIG_*=*) grep -qx "$line" "$O/.config" || { log "not set in .config: $line"; bad=1; } ;;
        esac
    done <"$frag"
    [ $bad = 0 ] || die "$frag is not fully applied (see $O/.config)"
    log "building the custom kernel (make -j${VFIO_MIG_KERNEL_JOBS:-$(nproc)}; ~6 min on 2 cores); log: $LOGS/custom-kernel.log"
    quiet custom-kernel nice -n 10 make -C "$S" O="$O" -j"${VFIO_MIG_KERNEL_JOBS:-$(nproc)}" bzImage
    cp "$O/arch/x86/boot/bzImage" "$CUSTOM/bzImage"
    stamp_set "$CUSTOM" "$k"
}

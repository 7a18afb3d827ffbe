#!/bin/bash
# Run a shell command inside a QEMU guest that has a real VFIO device with
# migration support (the kernel's mtty sample mdev driver), and exit with the
# command's exit code. See tests/kernel/README.md.
#
#   bash tests/kernel/run.sh [options] [--] 'guest shell command'
#
# Options:
#   --custom-kernel  boot the small custom 6.12 kernel built from
#                    linux-source-6.12 (IOMMUFD + VFIO_DEVICE_CDEV + mtty built
#                    in: /dev/iommu, /dev/vfio/devices/vfioN) instead of
#                    Debian's 6.12 kernel (env VFIO_MIG_CUSTOM_KERNEL=1)
#   --sanitizer-kernel  boot the sanitizer 6.12 kernel (KASAN, UBSAN, lockdep,
#                    hang detectors; mtty built in, mtty_v1.ko and
#                    ivshmem_vfio_pci.ko built against it, the PCI lab's
#                    IOMMU and ivshmem functions): the torture group's guest
#                    (guest/torture.sh; env VFIO_MIG_SANITIZER_KERNEL=1)
#   --vf             the SR-IOV VF lab (Debian kernel): QEMU 10 (the cache's
#                    relocatable root) as the outer QEMU instead of the host's
#                    7.2, with an igb (82576) PF behind a root port under the
#                    emulated IOMMU instead of the ivshmem and e1000e functions:
#                    the `vf` group's guest (env VFIO_MIG_VF_LAB=1)
#   --timeout SECS   stop the VM after SECS seconds, exit 124 (default 600,
#                    env VFIO_MIG_KERNEL_TIMEOUT)
#   --mem MB         guest memory (default 512, 1024 for the sanitizer
#                    kernel; env VFIO_MIG_KERNEL_MEM)
#   --log FILE       also save the guest console transcript to FILE
#   --verbose        show kernel messages and the guest init's progress
#   --prepare        only fetch and build what the VM needs; do not boot
#   --shell          interactive guest shell instead of a command
#                    (Ctrl-A x quits QEMU)
#   -h, --help       this text
# Environment: KVER_UPSTREAM (Debian kernel, default 6.12.117),
#   VFIO_MIG_KERNEL_CACHE (default ~/.cache/vfio-mig-kernel), VFIO_MIG_DENO_VERSION,
#   VFIO_MIG_KERNEL_PREPARED=1 (--prepare ran: take the cache lock shared),
#   VFIO_MIG_KERNEL_DENO, VFIO_MIG_KERNEL_JOBS, VFIO_MIG_KERNEL_APPEND (extra
#   kernel command line), VFIO_MIG_KERNEL_PCI=0 (no IOMMU and no ivshmem
#   functions in the Debian guest): see lib/common.sh and README.md.
#
# The command runs under busybox sh as root in the guest, with stdin from
# /dev/null, in the project checkout (shared read-write over 9p at the same
# path as on the host); several arguments are joined with spaces (like ssh).
# Exit status: the command's; 124 when the host timeout hit; 125 when the
# guest stopped without reporting one (kernel panic, setup failure); 1 when
# preparing failed. Step timings go to stderr; build logs to the cache.
set -euo pipefail
shopt -s inherit_errexit

HARNESS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HARNESS/lib/common.sh"
. "$HARNESS/lib/steps.sh"
. "$HARNESS/lib/qemu.sh"
. "$HARNESS/lib/sanitizer.sh"

# The whole run is one function, read before anything runs: editing this file
# during a (long) run cannot derail it.
usage() { sed -n '2,/^$/s/^# \{0,1\}//p' "$HARNESS/run.sh"; }

main() {
    FLAVOUR=debian
    [ "${VFIO_MIG_CUSTOM_KERNEL:-0}" = 1 ] && FLAVOUR=custom
    [ "${VFIO_MIG_SANITIZER_KERNEL:-0}" = 1 ] && FLAVOUR=sanitizer
    TIMEOUT=${VFIO_MIG_KERNEL_TIMEOUT:-600}
    MEM=${VFIO_MIG_KERNEL_MEM:-}
    VERBOSE=${VFIO_MIG_KERNEL_VERBOSE:-0}
    VF_LAB=${VFIO_MIG_VF_LAB:-0}
    LOGFILE="" PREPARE_ONLY=0 SHELL_MODE=0
    while [ $# -gt 0 ]; do
        case "$1" in
            --custom-kernel) FLAVOUR=custom; shift ;;
            --sanitizer-kernel) FLAVOUR=sanitizer; shift ;;
            --vf) VF_LAB=1; shift ;;
            --timeout) TIMEOUT=${2:?--timeout needs a value}; shift 2 ;;
            --mem) MEM=${2:?--mem needs a value}; shift 2 ;;
            --log) LOGFILE=${2:?--log needs a file}; shift 2 ;;
            --verbose) VERBOSE=1; shift ;;
            --prepare) PREPARE_ONLY=1; shift ;;
            --shell) SHELL_MODE=1; shift ;;
            -h|--help) usage; exit 0 ;;
            --) shift; break ;;
            -*) usage >&2; die "unknown option $1" ;;
            *) break ;;
        esac
    done
    COMMAND="$*"
    # KASAN's shadow (1/8 of memory) and quarantine: the sanitizer guest gets more.
    if [ -z "$MEM" ]; then MEM=512; [ "$FLAVOUR" = sanitizer ] && MEM=1024; fi
    if [ "$PREPARE_ONLY" = 0 ] && [ "$SHELL_MODE" = 0 ] && [ -z "$COMMAND" ]; then
        usage >&2; die "no guest command given"
    fi
    [[ "$TIMEOUT" =~ ^[0-9]+$ ]] || die "--timeout must be a number of seconds"
    [ "$VF_LAB" = 1 ] && [ "$FLAVOUR" != debian ] && die "--vf runs the Debian kernel only"
    [ "$(uname -m)" = x86_64 ] || die "this harness needs an x86_64 host"

    # The project checkout: the git top folder holding tests/kernel.
    PROJECT=$(git -C "$HARNESS" rev-parse --show-toplevel 2>/dev/null) || PROJECT=$(cd "$HARNESS/../.." && pwd)

    # ---------------------------------------------------------------------------
    # Prepare, under an exclusive lock on the cache (another run may be building).
    mkdir -p "$CACHE/runs"
    exec {LOCK_FD}>"$CACHE/.lock"
    if [ "${VFIO_MIG_KERNEL_PREPARED:-0}" = 1 ]; then
        # The caller prepared this flavour already (tests/kernel/suite.sh): the steps
        # below only find their stamps, so a shared lock lets two guests start together.
        flock -s "$LOCK_FD"
    elif ! flock -n "$LOCK_FD"; then
        log "waiting for the cache lock $CACHE/.lock"
        flock "$LOCK_FD"
    fi
    T_START=$(now_us)
    step "host packages" host_packages
    if [ "$FLAVOUR" = debian ]; then
        step "kernel packages" kernel_debs "$DEB_IMAGE" "$DEB_HEADERS" "$DEB_HEADERS_COMMON" "$DEB_KBUILD" "$DEB_SOURCE"
        step "unpack kernel" unpack_kernel
        step "mtty.ko" build_mtty
        step "mtty_v1.ko" build_mtty_v1
        step "ivshmem_vfio_pci.ko" build_ivshmem_mig
        step "QEMU roots" qemu_roots
        KERNEL=$VMLINUZ
    elif [ "$FLAVOUR" = sanitizer ]; then
        step "kernel source package" kernel_debs "$DEB_SOURCE"
        step "sanitizer kernel" build_sanitizer_kernel
        step "sanitizer modules" build_sanitizer_modules
        KERNEL=$SANITIZER/bzImage
    else
        step "kernel source package" kernel_debs "$DEB_SOURCE"
        step "custom kernel" build_custom_kernel
        KERNEL=$CUSTOM/bzImage
    fi
    step "deno" deno_binary
    step "initramfs" build_initramfs
    INITRD=$KCACHE/initramfs-$FLAVOUR/initramfs.cpio.gz
    if [ "$FLAVOUR" = sanitizer ]; then
        step "sanitizer initramfs" build_sanitizer_initramfs
        INITRD=$SANITIZER/initramfs/initramfs.cpio.gz
    fi
    log "$(printf '%-22s %6s s' "prepared ($FLAVOUR)" "$(secs "$T_START")")"
    [ "$PREPARE_ONLY" = 1 ] && exit 0
    # Booting only reads the cache: let other runs boot too, but not rebuild.
    flock -s "$LOCK_FD"

    # ---------------------------------------------------------------------------
    # Boot. A per-run control folder (9p tag "ctl") carries the settings and the
    # command in, and the exit status out.
    find "$CACHE/runs" -mindepth 1 -maxdepth 1 -mmin +1440 -exec rm -rf {} + 2>/dev/null || true
    RUN=$(mktemp -d "$CACHE/runs/run.XXXXXX")
    cleanup() {
        local pid
        if [ -s "$RUN/qemu.pid" ] && pid=$(cat "$RUN/qemu.pid") && kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
        fi
        rm -rf "$RUN"
    }
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    QEMU_SHARED=0
    [ "$FLAVOUR" = debian ] && [ "${VFIO_MIG_QEMU:-1}" = 1 ] && [ -x "$QROOTS/10/qemu" ] && QEMU_SHARED=1
    printf '%s\n' "$COMMAND" >"$RUN/cmd.sh"
    {
        echo "VM_PROJECT=$(shq "$PROJECT")"
        echo "VM_DENO=$(shq "${DENO_BIN##*/}")"
        echo "VM_FLAVOUR=$FLAVOUR"
        echo "VM_VERBOSE=$VERBOSE"
        echo "VM_SHELL=$SHELL_MODE"
        echo "VM_QEMU=$QEMU_SHARED"
        echo "VM_VF=$VF_LAB"
    } >"$RUN/env"

    # security_model=none: files keep the host user's ownership; multidevs=remap
    # avoids inode clashes when the checkout spans several file systems.
    # (A comma in a QEMU option value is written twice.)
    fsdev() { echo "local,path=${1//,/,,},mount_tag=$2,security_model=none,multidevs=remap,id=$2${3:+,$3}"; }
    kcmd="console=ttyS0 panic=-1 quiet loglevel=3"
    [ "$VERBOSE" = 1 ] && kcmd="console=ttyS0 panic=-1 loglevel=7"
    # Every kernel: an emulated IOMMU with interrupt remapping (vfio_iommu_type1
    # refuses groups without it) and two ivshmem-plain functions, each alone behind
    # a root port (its own IOMMU group), for the pci group (ivshmem_mig/README.md),
    # and an e1000e behind a third (MSI and MSI-X, which ivshmem-plain lacks).
    # VFIO_MIG_KERNEL_PCI=0 leaves them out.
    machine=q35 pcidevs=()
    if [ "${VFIO_MIG_KERNEL_PCI:-1}" = 1 ]; then
        machine=q35,kernel-irqchip=split
        # no_timer_check: with the IO-APIC behind interrupt remapping, a slow (loaded, TCG)
        # host sometimes fails check_timer: "timer doesn't work through Interrupt-remapped IO-APIC".
        kcmd="$kcmd intel_iommu=on no_timer_check"
        pcidevs=(-device intel-iommu,intremap=on
                 -object memory-backend-ram,id=ivm1,size=1M
                 -device pcie-root-port,id=rp1,chassis=1,slot=1 -device ivshmem-plain,memdev=ivm1,bus=rp1
                 -object memory-backend-ram,id=ivm2,size=1M
                 -device pcie-root-port,id=rp2,chassis=2,slot=2 -device ivshmem-plain,memdev=ivm2,bus=rp2
                 -device pcie-root-port,id=rp3,chassis=3,slot=3 -device e1000e,bus=rp3)
    fi
    # The VF lab (--vf): QEMU 10's igb (82576 PF, 8086:10c9; the host's 7.2 has no igb) alone
    # behind a root port, with ARI (its VFs 8086:10ca sit at devfn 0x80 and up on that bus).
    # The guest's igb driver takes the PF; the vf group enables the VFs (sriov_numvfs).
    outer=qemu-system-x86_64
    if [ "$VF_LAB" = 1 ]; then
        [ -x "$QROOTS/10/qemu" ] || die "--vf needs the QEMU 10 root ($QROOTS/10; VFIO_MIG_QEMU=0 leaves it out)"
        outer=$QROOTS/10/qemu
        machine=q35,kernel-irqchip=split
        [[ "$kcmd" == *intel_iommu=on* ]] || kcmd="$kcmd intel_iommu=on no_timer_check"
        pcidevs=(-device intel-iommu,intremap=on
                 -device pcie-root-port,id=rp1,chassis=1,slot=1 -device igb,bus=rp1)
    fi
    # The sanitizer kernel: KASAN reports every bug, not only the first one.
    [ "$FLAVOUR" = sanitizer ] && kcmd="$kcmd kasan_multi_shot"
    QEMU=("$outer" -M "$machine" "${pcidevs[@]}" -accel tcg,thread=multi -cpu max -smp 1 -m "$MEM"
          -nodefaults -no-user-config -display none -no-reboot -pidfile "$RUN/qemu.pid"
          -kernel "$KERNEL" -initrd "$INITRD"
          -append "$kcmd ${VFIO_MIG_KERNEL_APPEND:-}"
          -virtfs "$(fsdev "$RUN" ctl)"
          -virtfs "$(fsdev "$PROJECT" project)"
          -virtfs "$(fsdev "$(dirname "$DENO_BIN")" deno readonly=on)")
    # The QEMU roots (lib/qemu.sh) for the QEMU judge, read-only at /opt/qemu.
    [ "$QEMU_SHARED" = 1 ] && QEMU+=(-virtfs "$(fsdev "$QROOTS" qemu readonly=on)")
    [ "$VERBOSE" = 1 ] && log "qemu: ${QEMU[*]}"

    T_BOOT=$(now_us)
    set +e
    if [ "$SHELL_MODE" = 1 ]; then
        "${QEMU[@]}" -serial mon:stdio 2>"$RUN/qemu.err"
        QRC=$?
        : >"$RUN/console.log"
    else
        # Console (kernel errors + the command's stdout and stderr) to our
        # stdout, without carriage returns, the exit marker and the power-off
        # message.
        timeout --foreground -k 5 "$TIMEOUT" "${QEMU[@]}" -serial stdio </dev/null 2>"$RUN/qemu.err" |
            tee "$RUN/console.log" |
            sed -u -e 's/\r$//' -e '/^VFIO_MIG_EXIT=[0-9]*$/d' -e 's/VFIO_MIG_EXIT=[0-9]*$//' \
                -e '/^\(\[ *[0-9.]*\] \)\{0,1\}reboot: Power down$/d'
        QRC=${PIPESTATUS[0]}
    fi
    set -e
    ELAPSED=$(secs "$T_BOOT")
    mkdir -p "$LOGS"
    cp "$RUN/console.log" "$LOGS/console-$FLAVOUR.log"
    [ -n "$LOGFILE" ] && cp "$RUN/console.log" "$LOGFILE"

    RC=""
    if [ -f "$RUN/rc" ]; then
        RC=$(cat "$RUN/rc")
    else
        RC=$(sed -n 's/.*VFIO_MIG_EXIT=\([0-9]*\).*/\1/p' "$RUN/console.log" | tail -n1)
    fi
    if [ -z "$RC" ]; then
        if [ "$QRC" = 124 ] || { [ "$QRC" = 137 ] && [ "${ELAPSED%.*}" -ge "$TIMEOUT" ]; }; then
            log "$(printf '%-22s %6s s' "boot + command" "$ELAPSED") (timeout)"
            log "error: the guest command did not finish within $TIMEOUT s; console log: $LOGS/console-$FLAVOUR.log"
            exit 124
        fi
        log "$(printf '%-22s %6s s' "boot + command" "$ELAPSED")"
        log "error: the guest stopped without reporting an exit status (qemu exit $QRC)"
        [ -s "$RUN/qemu.err" ] && sed 's/^/    qemu: /' "$RUN/qemu.err" >&2
        log "console log: $LOGS/console-$FLAVOUR.log"
        exit 125
    fi
    log "$(printf '%-22s %6s s' "boot + command" "$ELAPSED") (exit $RC)"
    exit "$RC"
}

main "$@"

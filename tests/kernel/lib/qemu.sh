# shellcheck shell=bash
# The QEMUs that run INSIDE the test guest (the QEMU judge, groups/qemu.ts): QEMU 10
# from Debian's bookworm-backports (apt-get download + dpkg-deb -x, never installed on
# the host) and the host's own QEMU 7.2 (Debian 12's package). Each becomes a
# self-contained root under $QROOTS (binary, every library ldd lists and the glibc
# loader, the BIOS, 7.2's TCG module) with a `qemu` launcher script; run.sh exports
# $QROOTS read-only into the guest over the 9p tag "qemu" (mounted at /opt/qemu).
# Sourced by run.sh after lib/common.sh and lib/steps.sh.
#
# Settings (environment):
#   VFIO_MIG_QEMU10_VERSION  Debian version of qemu-system-x86 to fetch from
#                            bookworm-backports (default: the archive's current one,
#                            remembered in $QCACHE/debs.list after the first fetch)
#   VFIO_MIG_QEMU=0          do not prepare or export the QEMU roots

QCACHE=$CACHE/qemu                      # apt state, downloaded .debs, unpacked trees
QROOTS=$QCACHE/roots                    # 10/ and 7.2/: what the guest sees at /opt/qemu
QEMU10_PACKAGES=(qemu-system-x86 qemu-system-common qemu-system-data seabios)

# apt with a private configuration: only bookworm-backports, its own lists and cache.
# The mirror is the one the host already uses for bookworm.
backports_mirror() {
    local uri
    uri=$(awk '/^URIs:/ {u=$2} /^Suites:/ && / bookworm( |$)/ {print u; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    [ -n "$uri" ] || uri=$(awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
    echo "${uri:-http://deb.debian.org/debian}"
}
qapt() { # apt-get|apt-cache ARGS...: with the private backports configuration
    local tool=$1; shift
    "$tool" -o Dir::Etc::sourcelist="$QCACHE/apt/sources.list" -o Dir::Etc::sourceparts=/nonexistent \
        -o Dir::State::Lists="$QCACHE/apt/lists" -o Dir::Cache="$QCACHE/apt/cache" \
        -o Debug::NoLocking=1 "$@"
}

qemu10_download() { (cd "$1" && shift && qapt apt-get download "$@"); }

# fetch_qemu10: the QEMU 10 packages in $QCACHE/debs (a second run asks apt nothing).
fetch_qemu10() {
    local listf=$QCACHE/debs.list p f ver tmp missing=0
    mkdir -p "$QCACHE/debs" "$QCACHE/apt/lists/partial" "$QCACHE/apt/cache/archives/partial"
    for p in "${QEMU10_PACKAGES[@]}"; do
        f=""
        [ -f "$listf" ] && f=$(awk -v p="$p" '$1 == p {f = $2} END {print f}' "$listf")
        [ -n "$f" ] && [ -f "$QCACHE/debs/$f" ] || missing=1
    done
    if [ "$missing" = 0 ] && { [ -z "${VFIO_MIG_QEMU10_VERSION:-}" ] ||
        grep -qF "_${VFIO_MIG_QEMU10_VERSION#*:}_" "$listf"; }; then
        return 0
    fi
    echo "deb $(backports_mirror) bookworm-backports main" >"$QCACHE/apt/sources.list"
    quiet qemu qapt apt-get update
    ver=${VFIO_MIG_QEMU10_VERSION:-$(qapt apt-cache show qemu-system-x86 2>/dev/null |
        awk '/^Version: 1:10\./ {print $2; exit}')}
    [ -n "$ver" ] || die "bookworm-backports has no qemu-system-x86 1:10.x (see $LOGS/qemu.log)"
    tmp=$(mktemp -d "$QCACHE/debs/.download.XXXXXX")
    # qemu-system-* at the chosen version; seabios at the backports candidate.
    if ! run_logged qemu qemu10_download "$tmp" qemu-system-x86="$ver" qemu-system-common="$ver" \
            qemu-system-data="$ver" seabios/bookworm-backports; then
        rm -rf "$tmp"; die "apt-get download of QEMU $ver failed; see $LOGS/qemu.log"
    fi
    : >"$listf.new"
    for p in "${QEMU10_PACKAGES[@]}"; do
        f=$(cd "$tmp" && ls "${p}"_*.deb)
        mv "$tmp/$f" "$QCACHE/debs/$f"
        printf '%s %s\n' "$p" "$f" >>"$listf.new"
    done
    mv "$listf.new" "$listf"
    rm -rf "$tmp"
    FETCHED="fetched $ver"
}

# qemu_root DIR BINARY SHARE_FILES... [-- MODULES...]: a self-contained root.
#   DIR/bin/qemu-system-x86_64, DIR/lib/ (ldd of the binary and modules, plus the
#   loader), DIR/share/ (firmware), DIR/modules/ (QEMU_MODULE_DIR), DIR/qemu (launcher)
qemu_root() {
    local dir=$1 bin=$2 f l; shift 2
    local share=() mods=()
    while [ $# -gt 0 ] && [ "$1" != -- ]; do share+=("$1"); shift; done
    [ "${1:-}" = -- ] && { shift; mods=("$@"); }
    rm -rf "$dir"; mkdir -p "$dir"/{bin,lib,share,modules}
    cp "$bin" "$dir/bin/qemu-system-x86_64"
    for f in "${share[@]}"; do cp -L "$f" "$dir/share/"; done
    for f in "${mods[@]}"; do cp "$f" "$dir/modules/"; done
    # Every library of the binary and its modules; the loader under its plain name.
    { ldd "$bin"; for f in "${mods[@]}"; do ldd "$f"; done; } |
        awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u |
        while read -r l; do cp -L "$l" "$dir/lib/${l##*/}"; done
    if ldd "$bin" | grep -q 'not found'; then
        ldd "$bin" | grep 'not found' >&2
        die "$bin needs libraries the host does not have"
    fi
    cat >"$dir/qemu" <<'EOF'
#!/bin/sh
# Runs this root's QEMU with its own loader and libraries (no host install needed).
R=$(cd "$(dirname "$0")" && pwd)
export QEMU_MODULE_DIR="$R/modules"
exec "$R/lib/ld-linux-x86-64.so.2" --library-path "$R/lib" "$R/bin/qemu-system-x86_64" -L "$R/share" "$@"
EOF
    chmod +x "$dir/qemu"
    "$dir/qemu" --version | head -n1 >"$dir/VERSION"
}

qemu_roots() {
    local k10 k72 x10=$QCACHE/unpacked-10 note=() f
    [ "${VFIO_MIG_QEMU:-1}" = 0 ] && { STEP_NOTE=disabled; return 0; }
    FETCHED=""
    fetch_qemu10
    [ -n "$FETCHED" ] && note+=("$FETCHED")
    # QEMU 10: the unpacked backports packages (TCG is built in).
    k10=$(key "$(recipe qemu_roots qemu_root)" "@$QCACHE/debs.list")
    if ! stamp_ok "$QROOTS/10" "$k10"; then
        rm -rf "$x10"; mkdir -p "$x10"
        while read -r _ f; do quiet qemu dpkg-deb -x "$QCACHE/debs/$f" "$x10"; done <"$QCACHE/debs.list"
        qemu_root "$QROOTS/10" "$x10/usr/bin/qemu-system-x86_64" "$x10/usr/share/seabios/bios-256k.bin" \
            "$x10/usr/share/qemu/kvmvapic.bin" "$x10/usr/share/qemu/linuxboot_dma.bin"
        rm -rf "$x10"
        stamp_set "$QROOTS/10" "$k10"
        note+=("10 built")
    fi
    # QEMU 7.2: the host's package (TCG is a module: accel-tcg-x86_64.so).
    k72=$(key "$(recipe qemu_roots qemu_root)" "$(dpkg-query -W -f='${Version}' qemu-system-x86)" \
              "$(dpkg-query -W -f='${Version}' seabios 2>/dev/null || true)")
    if ! stamp_ok "$QROOTS/7.2" "$k72"; then
        qemu_root "$QROOTS/7.2" /usr/bin/qemu-system-x86_64 /usr/share/seabios/bios-256k.bin \
            /usr/share/qemu/kvmvapic.bin /usr/share/qemu/linuxboot_dma.bin \
            -- /usr/lib/x86_64-linux-gnu/qemu/accel-tcg-x86_64.so
        stamp_set "$QROOTS/7.2" "$k72"
        note+=("7.2 built")
    fi
    STEP_NOTE="$(cut -d' ' -f4 "$QROOTS/10/VERSION"), $(cut -d' ' -f4 "$QROOTS/7.2/VERSION")"
    [ ${#note[@]} -gt 0 ] && STEP_NOTE+="; $(IFS=,; echo "${note[*]}")"
    return 0
}

# Shared shell helpers for hull's scripts. Source it; it defines functions only.

# Installs the packages in scripts/packages.txt that are missing (root only).
hull_install_packages() {
    local root missing=() listed=() pkg
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    while read -r pkg; do
        [[ -z "$pkg" || "$pkg" == \#* ]] && continue
        listed+=("$pkg")
        hull_pkg_installed "$pkg" || missing+=("$pkg")
    done < "$root/scripts/packages.txt"
    [[ ${#missing[@]} -eq 0 ]] && return 0
    if [[ $(id -u) -ne 0 ]]; then
        echo "missing Debian packages: ${missing[*]} (run as root, or apt-get install them)" >&2
        return 1
    fi
    echo "== installing ${missing[*]}"
    # The whole list, not just what is missing: apt may otherwise satisfy a missing package by
    # removing an installed one we need (it offers to remove qemu-utils 10 for qemu-system-x86).
    hull_apt_install "${listed[*]}"
}

# Whether the Debian package $1 is installed (as the dpkg status that apt reads says).
hull_pkg_installed() {
    dpkg-query ${HULL_DPKG_ADMINDIR:+--admindir="$HULL_DPKG_ADMINDIR"} -W -f='${Status}' "$1" 2>/dev/null |
        grep -q "install ok installed"
}

# The version of $1 that dpkg has installed, or nothing.
hull_pkg_version() {
    hull_pkg_installed "$1" &&
        dpkg-query ${HULL_DPKG_ADMINDIR:+--admindir="$HULL_DPKG_ADMINDIR"} -W -f='${Version}' "$1"
}

# Installs the space-separated packages $1. A machine image may already hold a package
# newer than any of apt's sources carry (e.g. qemu-utils from bookworm-backports with no
# backports source configured) whose Breaks block a package we need (qemu-system-common of
# bookworm). When apt cannot satisfy the request as it stands, each package of $2 (the whole
# list we rely on) whose installed version no configured source carries is pinned to the
# newest version a source does carry, with downgrades allowed; if that still cannot be
# satisfied, fails naming the packages and apt's conflicts. With HULL_APT_SIMULATE=1 it only
# prints apt's plan (apt-get -s), which is how scripts/tests/apt-plan checks the logic
# against a made-up dpkg status (HULL_APT_OPTS, HULL_DPKG_ADMINDIR) without touching the host.
hull_apt_install() {
    local -a want listed aopts pins=()
    read -ra want <<< "$1"
    read -ra listed <<< "${2:-$1}"
    read -ra aopts <<< "${HULL_APT_OPTS:-}"
    # -q, not -qq: the latter drops the lines that explain a failure.
    local -a iopts=("${aopts[@]}" -y -q --no-install-recommends)
    local plan pkg inst newest
    local ok=0
    plan="$(apt-get "${iopts[@]}" -s install "${want[@]}" 2>&1)" && ok=1
    if [[ $ok == 0 && "${HULL_APT_SIMULATE:-}" != 1 ]]; then
        # Stale lists are the common cause; after an update, a failure is the real one.
        apt-get "${aopts[@]}" update -qq >/dev/null 2>&1 || true
        plan="$(apt-get "${iopts[@]}" -s install "${want[@]}" 2>&1)" && ok=1
    fi
    [[ $ok == 1 ]] && hull_plan_removes "$plan" "${want[@]}" && ok=0
    if [[ $ok == 1 ]]; then
        hull_apt_run "${iopts[@]}" install "${want[@]}"
        return
    fi
    for pkg in "${listed[@]}"; do
        inst="$(hull_pkg_version "$pkg")" || continue
        [[ -n "$inst" ]] || continue
        # madison lists only what the configured sources carry, newest first.
        apt-cache "${aopts[@]}" madison "$pkg" 2>/dev/null |
            awk -F'|' -v v="$inst" '{gsub(/ /, "", $2)} $2 == v {found = 1} END {exit !found}' && continue
        newest="$(apt-cache "${aopts[@]}" madison "$pkg" 2>/dev/null |
            awk -F'|' 'NR == 1 {gsub(/ /, "", $2); print $2}')"
        [[ -n "$newest" ]] || continue
        pins+=("$pkg=$newest")
        echo "   $pkg $inst is installed, but no configured source carries that version"
    done
    if [[ ${#pins[@]} -gt 0 ]] &&
        plan="$(apt-get "${iopts[@]}" --allow-downgrades -s install "${want[@]}" "${pins[@]}" 2>&1)" &&
        ! hull_plan_removes "$plan" "${want[@]}"; then
        echo "   apt can install the list only with a downgrade: ${pins[*]}"
        hull_apt_run "${iopts[@]}" --allow-downgrades install "${want[@]}" "${pins[@]}"
        return
    fi
    {
        echo "cannot install Debian packages: ${want[*]}"
        [[ ${#pins[@]} -gt 0 ]] && echo "  (not even with downgrades to the sources' versions: ${pins[*]})"
        grep -E ' : (Depends|PreDepends|Breaks|Conflicts)|^E:|^ +(Depends|Breaks|Conflicts)' <<< "$plan" |
            sed 's/^/  /'
        echo "  a package named above is newer than apt's sources carry, or held: install the"
        echo "  version a source has (apt-cache policy NAME) or configure the source it came from"
    } >&2
    return 1
}

# Whether apt's simulated plan $1 removes one of the packages $2...; says which.
hull_plan_removes() {
    local plan="$1" pkg
    shift
    for pkg in "$@"; do
        if grep -q "^Remv $pkg " <<< "$plan"; then
            echo "   apt's plan removes $pkg, which hull needs" >&2
            return 0
        fi
    done
    return 1
}

# Runs apt-get with $@, or only prints its plan under HULL_APT_SIMULATE=1.
hull_apt_run() {
    if [[ "${HULL_APT_SIMULATE:-}" == 1 ]]; then
        apt-get -s "$@"
    else
        DEBIAN_FRONTEND=noninteractive apt-get "$@" >/dev/null
    fi
}

# Prints a loud skip line for a tier that cannot run here.
hull_skip() {
    echo
    echo "!!!!!!!! SKIPPED: $* !!!!!!!!"
    echo
}

# Downloads a Debian package (its candidate version) into ${HULL_CACHE:-~/.cache/hull}/debs
# once, and prints the path of the .deb.
hull_fetch_deb() {
    local pkg="$1" cache="${HULL_CACHE:-$HOME/.cache/hull}" ver dir
    ver="$(apt-cache policy "$pkg" | awk '/Candidate:/ {print $2}')"
    [[ -n "$ver" && "$ver" != "(none)" ]] || { apt-get update -qq >/dev/null; ver="$(apt-cache policy "$pkg" | awk '/Candidate:/ {print $2}')"; }
    dir="$cache/debs/$pkg/$ver"
    mkdir -p "$dir"
    ls "$dir"/*.deb >/dev/null 2>&1 || (cd "$dir" && apt-get download -qq "$pkg=$ver" 2>/dev/null) ||
        { echo "cannot download $pkg=$ver" >&2; return 1; }
    ls "$dir"/*.deb | head -1
}

# The package Debian's linux-image-amd64 points at (e.g. linux-image-6.1.0-56-amd64).
hull_kernel_pkg() {
    apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'
}

# Copies the binary $1 to $2 inside the tree $3, with the shared libraries and the ELF
# interpreter ldd lists for it at their own paths in $3 (for initramfs images).
hull_copy_with_libs() {
    local bin="$1" dest="$2" tree="$3" lib
    mkdir -p "$(dirname "$tree/$dest")"
    cp "$bin" "$tree/$dest"
    ldd "$bin" | awk '/=>/ {print $3} /^\t\/lib/ {print $1}' | while read -r lib; do
        [[ -f "$lib" ]] && mkdir -p "$tree$(dirname "$lib")" && cp -L "$lib" "$tree$lib"
    done
    return 0
}

# The CPU of every nested tier's L1: TCG's "max" without XSAVE. QEMU's TCG emulation of SVM
# does not intercept XSETBV, so the XCR0 an L2 guest sets never reaches L1's KVM: KVM's CPUID
# leaf 0xD keeps the size for XCR0 = x87 (Linux warns in fpu__init_system and, some boots,
# dies by a triple fault) and KVM loads its own stale XCR0 at every VMRUN. Real SVM hardware
# always intercepts XSETBV. Without XSAVE in L1, KVM offers none to L2, which uses FXSAVE.
# QEMU's "max" keeps AVX, PKU and MPX when XSAVE is taken away, and Linux does not withdraw
# them by itself at boot: they go too, so that L1 and every L2 peer see a consistent CPU.
HULL_L1_CPU="max,-xsave,-xsaveopt,-xgetbv1,-avx,-avx2,-fma,-f16c,-vaes,-pku,-mpx"
# Runs an L1 machine of the nested tiers: `hull_l1 LOG SECONDS QEMU-ARGS...` runs
# qemu-system-x86_64 with QEMU-ARGS, its console in LOG, for at most SECONDS. QEMU's TCG
# emulation of SVM now and then breaks L1's own kernel while it runs a guest (seen: GS base
# wrong after a #VMEXIT; a page-fault loop into the stack guard; every CPU idle with its timer
# lost; a CPU stuck for minutes in a kworker while the other runs the guest). That is the test
# machine failing, not a check: such a run is ended as soon as it shows (a panic, a console
# silent for 180 s, a CPU reported stuck for a minute or more, RCU's grace-period thread
# starved; or the time limit reached after L1's kernel reported a soft lockup or an RCU stall,
# as happens when its clock crawls), said loudly with its excerpt and what this host was doing
# (load, memory, free disk, the busiest processes: a starved or full host shows there), kept as
# LOG.l1-failed (LOG.l1-failed2 for a second), and L1 runs again, at most three times in all.
# Failures of any other kind are the checks'. L1's kernel boots without `quiet` (its init
# quiets the console then), so a boot that stalls shows where and a slow one is not silent.
hull_l1_once() {
    local log="$1" limit="$2" q last=-1 still=0 size rc=0; shift 2
    # Appending (O_APPEND): QEMU's own last words must not overwrite the "[hull] L1 ..." line
    # written here before it is ended, which would hide the verdict from hull_l1.
    : > "$log"
    timeout "$limit" qemu-system-x86_64 "$@" >> "$log" 2>&1 &
    q=$!
    while kill -0 "$q" 2>/dev/null; do
        sleep 5
        size=$(stat -c %s "$log")
        if [[ $size == "$last" ]]; then still=$((still + 5)); else still=0 last=$size; fi
        if ((still >= 180)); then
            echo "[hull] L1 hangs: nothing on its console for 180 s" >> "$log"; kill "$q"; break
        fi
        if grep -a -q -E 'soft lockup - CPU#[0-9]+ stuck for ([6-9][0-9]|[0-9]{3,})s|rcu_preempt kthread starved for' "$log"; then
            sleep 3; echo "[hull] L1 wedged: a CPU of its kernel stuck for a minute or RCU starved" >> "$log"; kill "$q"; break
        fi
    done
    wait "$q" || rc=$?
    if ((rc == 124)) && grep -a -q -E 'soft lockup - CPU#|rcu: INFO: rcu_.* detected stalls' "$log"; then
        echo "[hull] L1 wedged: time limit reached after a soft lockup or RCU stall" >> "$log"
    fi
}
hull_l1() {
    local log="$1" run
    hull_l1_once "$@"
    for run in 2 3; do
        grep -a -q -E '^\[ *[0-9.]*\] Kernel panic|^\[hull\] L1 (hangs|wedged)' "$log" || return 0
        grep -a -E -A12 '^\[ *[0-9.]*\] (BUG|watchdog: BUG)|^\[hull\] L1 (hangs|wedged)' "$log" | head -30 || true
        echo "--- the last 15 lines L1 printed before that:"
        grep -a -v '^\[hull\]' "$log" | tail -15 || true
        hull_host_state "$log"
        echo "L1 failed under QEMU's TCG (above), not a check: running L1 again (run $run of 3)"
        cp "$log" "$log.l1-failed$( ((run == 2)) || echo $((run - 1)))"
        hull_l1_once "$@"
    done
}

# What this host is doing, for a test machine that failed: load, memory, free disk where FILE
# is, and the processes that used the most CPU.
hull_host_state() {
    echo "--- this host: $(uptime)"
    free -m | sed 's/^/    /'
    df -h "$(dirname "$1")" | sed 's/^/    /'
    ps -eo pid,pcpu,rss,etime,args --sort=-pcpu | head -8 | cut -c1-160 | sed 's/^/    /'
}

# Shared shell helpers for hull's scripts. Source it; it defines functions only.

# Installs the packages in scripts/packages.txt that are missing (root only).
hull_install_packages() {
    local root missing=() pkg
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    while read -r pkg; do
        [[ -z "$pkg" || "$pkg" == \#* ]] && continue
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done < "$root/scripts/packages.txt"
    [[ ${#missing[@]} -eq 0 ]] && return 0
    if [[ $(id -u) -ne 0 ]]; then
        echo "missing Debian packages: ${missing[*]} (run as root, or apt-get install them)" >&2
        return 1
    fi
    echo "== installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
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

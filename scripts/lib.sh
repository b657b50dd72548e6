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

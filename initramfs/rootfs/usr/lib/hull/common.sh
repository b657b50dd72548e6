# Shared by the live image's scripts (sourced; busybox sh). Paths, boot parameters, console
# messages and the node config.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HULL_SOCKET=/run/hull/vmmd.sock
HULL_DATA=/var/lib/hull
HULL_CONF=$HULL_DATA/config/node.conf
HULL_LOGDIR=$HULL_DATA/log
HULL_LABEL=hullpool

# The value of boot parameter $1 (hull.pool=...); status 1 when it is absent. A bare
# parameter (hull.debug) has the value 1.
param() {
    set -f
    for w in $(cat /proc/cmdline); do
        case "$w" in
            "$1="*) set +f; echo "${w#*=}"; return 0 ;;
            "$1") set +f; echo 1; return 0 ;;
        esac
    done
    set +f
    return 1
}

# Seconds since the kernel started.
uptime_s() { cut -d' ' -f1 /proc/uptime; }

# A message on every console (the screen and the serial port both), and in the boot log
# (/run/hull/boot.log, copied to the pool once it is mounted). Never pass a secret.
say() {
    local t
    for t in $(cat /run/hull/consoles 2>/dev/null || echo console); do
        echo "hull: $*" > "/dev/$t" 2>/dev/null
    done
    echo "[$(uptime_s)] $*" >> /run/hull/boot.log
    [ -d "$HULL_LOGDIR" ] && grep -q " $HULL_DATA " /proc/mounts && echo "[$(uptime_s)] $*" >> "$HULL_LOGDIR/boot.log"
    return 0
}

# One key of the node config (key=value lines; values are never run by a shell).
conf_get() {
    [ -f "$HULL_CONF" ] || return 1
    sed -n "s/^$1=//p" "$HULL_CONF" | tail -1
}

# Sets key $1 to $2 in the node config, crash-safe: a new file, fsync, rename, fsync.
conf_set() {
    local tmp="$HULL_CONF.tmp"
    mkdir -p "${HULL_CONF%/*}"
    { [ -f "$HULL_CONF" ] && grep -v "^$1=" "$HULL_CONF"; printf '%s=%s\n' "$1" "$2"; } > "$tmp" || return 1
    chmod 0600 "$tmp" && sync "$tmp" 2>/dev/null || sync
    mv "$tmp" "$HULL_CONF" && sync "${HULL_CONF%/*}" 2>/dev/null || sync
}

# Whether the pool is mounted as the data root.
pool_mounted() { grep -q "^[^ ]* $HULL_DATA " /proc/mounts; }

# Whether vmmd answers on its socket.
vmmd_answers() { vmadm list -H -o uuid >/dev/null 2>&1; }

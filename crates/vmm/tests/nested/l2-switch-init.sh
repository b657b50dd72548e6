#!/bin/busybox sh
# Switch guest of the nested bench (rdinit=/switch-init): two of these run at once, each on
# a TAP on one bridge in L1, with a "zone" at 192.0.2.3 on the same bridge. Role a
# (192.0.2.11) streams TCP with the zone for 3 s each way, then with guest b each way; role b
# (192.0.2.12) waits for guest a's two streams. Each receiving end prints its figure:
# "L2: switch DIRECTION: netbench ...". Then power off (a reset without ACPI).
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_mmio failover net_failover virtio_net; do
  [ -f /m/$m.ko ] && /bin/busybox insmod /m/$m.ko
done
# Where the modules sit (the kernel runs without KASLR): a hung run's RIPs in a module
# (L1's watchdog prints them) can then be placed in a function.
[ "$(/bin/busybox sed -n 's/.*hullrole=\([ab]\).*/\1/p' /proc/cmdline)" = a ] &&
  /bin/busybox sed 's/^/L2: module /' /proc/modules
ROLE=$(/bin/busybox sed -n 's/.*hullrole=\([ab]\).*/\1/p' /proc/cmdline)
say() { /bin/busybox sed "s/^/L2: switch $1: /"; }
# A stream's other end may not be listening yet (the other guest still booting): a refused
# connection is tried again, for up to 60 s.
try() {
  for i in $(/bin/busybox seq 1 120); do
    out=$("$@" 2>&1) && { echo "$out"; return 0; }
    case "$out" in *refused*|*"No route"*|*unreachable*) /bin/busybox sleep 0.5 ;; *) echo "$out"; return 1 ;; esac
  done
  echo "$out"; return 1
}
/bin/busybox ip link set lo up
# Every 20 s, for a run that hangs: the TCP sockets (local, remote, state, queues, hex as
# /proc/net/tcp gives them) and eth0's counters.
while /bin/busybox sleep 20; do
  echo "L2: switch tcp: $(/bin/busybox awk 'NR > 1 { printf "%s>%s st %s q %s; ", $2, $3, $4, $5 }' /proc/net/tcp)"
  echo "L2: switch eth0: $(/bin/busybox grep eth0 /proc/net/dev)"
done &
if /bin/busybox ip link set eth0 up; then
  if [ "$ROLE" = b ]; then
    /bin/busybox ip addr add 192.0.2.12/24 dev eth0
    /netbench source 5004 s3 >/dev/null 2>&1 &
    SRC=$!
    /netbench sink 5003 2>&1 | say from-a
    wait $SRC
  else
    /bin/busybox ip addr add 192.0.2.11/24 dev eth0
    try /netbench send 192.0.2.3 5002 s3 >/dev/null
    try /netbench recv 192.0.2.3 5001 | say zone-to-guest
    try /netbench send 192.0.2.12 5003 s3 >/dev/null
    try /netbench recv 192.0.2.12 5004 | say from-b
  fi
else
  echo "L2: switch: no eth0"
fi
if [ -d /sys/firmware/acpi ]; then /bin/busybox poweroff -f; else /bin/busybox reboot -f; fi

#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /mnt
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo "L2: init reached, $(grep -c ^processor /proc/cpuinfo) cpus, kernel $(uname -r)"
# 48 MiB of random bytes in RAM (rootfs), among the free memory the balloon will report.
dd if=/dev/urandom of=/keep bs=1M count=48 2>/dev/null
before=$(md5sum < /keep)
for m in virtio_ring virtio virtio_mmio virtio_blk virtio-rng failover net_failover virtio_net virtio_balloon; do
  insmod /m/$m.ko || echo "L2: insmod $m failed"
done
sleep 1
echo "L2: virtio devices: $(ls /sys/bus/virtio/devices | tr '\n' ' ')"
if [ -b /dev/vda ]; then
  echo "L2: vda present, $(cat /sys/block/vda/size) sectors"
  # A request queue per vCPU (VIRTIO_BLK_F_MQ): blk-mq's hardware contexts.
  echo "L2: vda request queues $(ls /sys/block/vda/mq | wc -l)"
  echo "written-by-L2-guest" | dd of=/dev/vda bs=512 seek=1 conv=sync 2>/dev/null && sync
  dd if=/dev/vda bs=8 count=1 2>/dev/null | grep -q HULLDISK && echo "L2: vda sector 0 reads HULLDISK"
fi
[ -e /dev/hwrng ] && dd if=/dev/hwrng bs=16 count=1 2>/dev/null | od -An -tx1 | sed 's/^/L2: hwrng /'
if ip link set eth0 up 2>/dev/null; then
  ip addr add 192.0.2.2/24 dev eth0
  ping -c 2 -W 2 192.0.2.1 >/dev/null && echo "L2: ping to the TAP host side works"
  # TCP both ways with L1 (netbench: every byte checked), and what the driver negotiated:
  # the offloads and mergeable buffers these streams went through.
  /netbench recv 192.0.2.1 5001 | sed 's/^/L2: tcp from host: /'
  /netbench send 192.0.2.1 5002 16777216 | sed 's/^/L2: tcp to host: /'
  for d in /sys/bus/virtio/devices/*; do
    [ "$(cat $d/device)" = 0x0001 ] || continue
    f=$(cat $d/features)
    echo "L2: net offloads: csum $(echo $f | cut -c1) guest_csum $(echo $f | cut -c2) guest_tso4 $(echo $f | cut -c8) host_tso4 $(echo $f | cut -c12) mrg_rxbuf $(echo $f | cut -c16)"
  done
fi
# The balloon: the driver inflated to the VMM's target at probe; page reporting hands the
# free memory over 2 s after the driver registered (the VMM's exit line counts both).
sleep 3
echo "L2: balloon: $(grep -E '^(MemFree|MemAvailable)' /proc/meminfo | tr -s ' ' | tr '\n' ' ')"
# The VMM drops what the guest reports: the random bytes kept in RAM since before the
# balloon's driver came must read back the same after its reports went around them.
[ "$(md5sum < /keep)" = "$before" ] && echo "L2: memory intact after free page reporting"
# The kernel's own view of its FPU and any warning it printed (run.sh wants none: the XSAVE
# warning of HULL_L1_CPU in scripts/lib.sh, a bad CPUID or MSR answer would show here).
dmesg | grep -E 'x86/fpu: (Enabled|x87 FPU will use)' | sed 's/^\[[ 0-9.]*\] /L2: fpu: /'
echo "L2: kernel warnings: $(dmesg | grep -c -E 'WARNING: CPU|cut here')"
dmesg | grep -E -A1 'WARNING: CPU' | head -6 | sed 's/^/L2: /'
echo "L2: done, powering off"
poweroff -f

#!/bin/busybox sh
# Data-path guest of the nested bench: load the virtio modules, run blkbench against the
# disk (its lines go to the console), stream TCP with L1 for 3 s each way (netbench), power
# off (a reset without ACPI).
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_mmio virtio_blk failover net_failover virtio_net; do
  [ -f /m/$m.ko ] && /bin/busybox insmod /m/$m.ko
done
for i in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/vda ] && break; /bin/busybox sleep 0.1; done
/blkbench /dev/vda 3 && /bin/busybox echo "L2: blk done"
if /bin/busybox ip link set eth0 up 2>/dev/null; then
  /bin/busybox ip addr add 192.0.2.2/24 dev eth0
  /netbench send 192.0.2.1 5002 s3 | /bin/busybox sed 's/^/L2: net send: /'
  /netbench recv 192.0.2.1 5001 | /bin/busybox sed 's/^/L2: net recv: /'
fi
if [ -d /sys/firmware/acpi ]; then /bin/busybox poweroff -f; else /bin/busybox reboot -f; fi

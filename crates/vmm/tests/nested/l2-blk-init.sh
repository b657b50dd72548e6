#!/bin/busybox sh
# Data-path guest of the nested bench: load the virtio modules, run blkbench against the
# disk (its lines go to the console), power off (a reset without ACPI).
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_mmio virtio_blk; do
  [ -f /m/$m.ko ] && /bin/busybox insmod /m/$m.ko
done
for i in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/vda ] && break; /bin/busybox sleep 0.1; done
/blkbench /dev/vda 3 && /bin/busybox echo "L2: blk done"
if [ -d /sys/firmware/acpi ]; then /bin/busybox poweroff -f; else /bin/busybox reboot -f; fi

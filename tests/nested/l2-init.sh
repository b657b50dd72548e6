#!/bin/busybox sh
# L2 (Debian's stock kernel under hull's vmm, started by vmadm inside L1): checks its disk
# and rng, then waits for the ACPI power button and powers off.
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo "L2: init reached, $(grep -c ^processor /proc/cpuinfo) cpus, kernel $(uname -r)"
for m in virtio_ring virtio virtio_mmio virtio_blk virtio-rng evdev button; do
  insmod /m/$m.ko || echo "L2: insmod $m failed"
done
sleep 1
if [ -b /dev/vda ]; then
  echo "written-by-L2-guest" | dd of=/dev/vda bs=512 seek=1 conv=sync 2>/dev/null && sync
  dd if=/dev/vda bs=8 count=1 2>/dev/null | grep -q HULLDISK && echo "L2: vda sector 0 reads HULLDISK"
fi
[ -e /dev/hwrng ] && dd if=/dev/hwrng bs=16 count=1 2>/dev/null | od -An -tx1 | sed 's/^/L2: hwrng /'
EV=
for d in /sys/class/input/event*; do
  grep -q "Power Button" "$d/device/name" 2>/dev/null && EV=/dev/input/${d##*/}
done
echo "L2: power button device ${EV:-none}"
echo "L2: waiting for the power button"
[ -n "$EV" ] && head -c 1 "$EV" > /dev/null && echo "L2: power button pressed, powering off"
poweroff -f

#!/bin/busybox sh
# L2 (Debian's stock kernel under hull's vmm, started by vmadm inside L1): checks its disk
# and rng, watches its disk's size (L1 grows it), then waits for the ACPI power button and
# powers off.
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
# vmadm update grows the disk while this guest runs: its driver gets the config-change
# interrupt and the kernel's idea of the size moves, without a reboot.
if [ -b /dev/vda ]; then
  (old=$(cat /sys/block/vda/size); echo "L2: vda size $old sectors"
   for i in $(seq 1200); do
     new=$(cat /sys/block/vda/size)
     [ "$new" != "$old" ] && { echo "L2: vda size changed to $new sectors"; break; }
     sleep 0.5
   done) &
fi
echo "L2: waiting for the power button"
[ -n "$EV" ] && head -c 1 "$EV" > /dev/null && echo "L2: power button pressed, powering off"
poweroff -f

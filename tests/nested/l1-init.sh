#!/bin/busybox sh
# L1 (inside QEMU TCG with emulated SVM, cgroup v2 only): run vmmd from the initramfs and
# drive a microVM of Debian's stock kernel through vmadm: create with autoboot, console,
# info, growing the running guest's disk, a graceful stop through the guest's ACPI power
# button, then the disk write.
/bin/busybox --install -s /bin
if [ "$$" = 1 ] && [ ! -e /.switched ]; then
  # pivot_root (zones and microVM zones) refuses the initramfs's rootfs: move into a tmpfs,
  # as a live image does.
  mkdir -p /newroot && mount -t tmpfs -o size=1536m root /newroot
  for d in /*; do case "$d" in /newroot|/proc|/sys|/dev) ;; *) cp -a "$d" /newroot/ ;; esac; done
  mkdir -p /newroot/proc /newroot/sys /newroot/dev && touch /newroot/.switched
  exec switch_root /newroot /init
fi
mkdir -p /proc /sys /dev /tmp /run /sys/fs/cgroup /var/lib/hull
mount -t proc proc /proc
# L1 booted without `quiet` (hull_l1 in scripts/lib.sh): its console is quiet from here.
echo 4 > /proc/sys/kernel/printk
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mount -t cgroup2 none /sys/fs/cgroup
mount -t tmpfs tmpfs /run
echo "L1: up, $(grep -c ^processor /proc/cpuinfo) cpus, cgroup controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
for m in irqbypass kvm ccp kvm-amd; do insmod /m/$m.ko 2>/dev/null || echo "L1: insmod $m failed"; done
[ -e /dev/kvm ] || { echo "L1: FAIL no /dev/kvm"; poweroff -f; }
up() { cut -d' ' -f1 /proc/uptime; }
export HULL_SOCKET=/run/hull/vmmd.sock PATH=/hull:$PATH
mkdir -p /run/hull
/hull/vmmd --socket $HULL_SOCKET --data-root /var/lib/hull > /tmp/vmmd.log 2>&1 &
for i in $(seq 100); do vmadm list -H >/dev/null 2>&1 && break; sleep 0.2; done
vmadm list -H >/dev/null 2>&1 || { echo "L1: FAIL vmmd did not start"; cat /tmp/vmmd.log; poweroff -f; }
echo "L1: vmmd up"
dd if=/dev/zero of=/var/lib/hull/disk.img bs=1M count=8 2>/dev/null
printf HULLDISK | dd of=/var/lib/hull/disk.img conv=notrunc 2>/dev/null
S=$(up)
echo '{"brand": "kvm", "alias": "nested", "ram": 256, "vcpus": 2,
  "kernel": "/vmlinuz", "initrd": "/l2.cpio.gz",
  "cmdline": "console=ttyS0 reboot=k panic=-1 pci=off quiet",
  "disks": [{"path": "/var/lib/hull/disk.img", "boot": true}]}' | vmadm create > /tmp/create.out 2>&1
cat /tmp/create.out | sed 's/^/L1: vmadm create: /'
UUID=$(vmadm lookup -1 alias=nested)
[ -n "$UUID" ] || { echo "L1: FAIL no VM"; cat /tmp/vmmd.log; poweroff -f; }
echo "L1: vmadm list: $(vmadm list -H -o alias,state,type | tr -s ' ')"
# vmadm console copies the guest's console while its stdin stays open.
sleep 600 | vmadm console "$UUID" > /tmp/console.log 2>&1 &
for i in $(seq 600); do grep -q "L2: waiting for the power button" /tmp/console.log && break; sleep 0.5; done
grep -a '^L2:' /tmp/console.log | tr -d '\r'
echo "L1: guest up after $(up) - $S s"
PID=$(vmadm get "$UUID" | sed -n 's/.*"pid": *\([0-9]*\).*/\1/p')
[ -n "$PID" ] && echo "L1: VMM capabilities $(grep CapEff /proc/$PID/status | tr -s '\t ' ' '), $(grep NoNewPrivs /proc/$PID/status | tr -s '\t ' ' ')"
vmadm info "$UUID" devices | grep -q '"vda"' && echo "L1: vmadm info lists vda"
# Grow the running guest's disk from 8 to 24 MiB: the file grows, the VMM is told, and the
# guest's /sys/block/vda/size follows.
echo '{"update_disks": [{"path": "/var/lib/hull/disk.img", "size": 24}]}' | vmadm update "$UUID" > /tmp/update.out 2>&1 \
  && echo "L1: vmadm update grew the disk to $(ls -ln /var/lib/hull/disk.img | awk '{print $5}') bytes" \
  || sed 's/^/L1: FAIL vmadm update: /' /tmp/update.out
for i in $(seq 240); do grep -q "L2: vda size changed" /tmp/console.log && break; sleep 0.5; done
grep -a '^L2: vda size' /tmp/console.log | tr -d '\r'
vmadm info "$UUID" devices | tr -d ' \n' | grep -q '"capacity_bytes":25165824' && echo "L1: vmadm info shows vda at 24 MiB"
S=$(up)
vmadm stop -t 120 "$UUID" > /tmp/stop.out 2>&1; RC=$?
echo "L1: vmadm stop exit $RC after $(up) - $S s, state $(vmadm list -H -o state alias=nested)"
sleep 1
grep -a '^L2:' /tmp/console.log | tr -d '\r' | grep -a 'power button pressed'
vmadm get "$UUID" | grep -E '"(exit_status|failure)"' | sed 's/^ */L1: record /'
dd if=/var/lib/hull/disk.img bs=512 skip=1 count=1 2>/dev/null | grep -q written-by-L2-guest && echo "L1: the L2 guest's disk write is in the disk"
vmadm delete "$UUID" > /dev/null 2>&1 && echo "L1: deleted, $(ls /sys/fs/cgroup/hull 2>/dev/null | grep -c "$UUID") cgroups left"
echo "L1: done"
poweroff -f

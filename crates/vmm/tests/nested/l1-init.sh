#!/bin/busybox sh
# L1 (inside QEMU TCG with emulated SVM): load KVM, then run hull's vmm on Debian's stock
# kernel as an L2 guest. MODE=check runs the functional guest (disk, rng, TAP ping, power
# off); MODE=bench alternates hull vmm and qemu -M microvm on a guest that powers off at init.
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /tmp /dev/net
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
MODE=$(sed -n 's/.*hullmode=\([a-z]*\).*/\1/p' /proc/cmdline)
echo "L1: up, $(grep -c ^processor /proc/cpuinfo) cpus, mode $MODE"
for m in irqbypass kvm ccp kvm-amd tun; do insmod /m/$m.ko 2>/dev/null || echo "L1: insmod $m failed"; done
[ -e /dev/kvm ] || { echo "L1: FAIL no /dev/kvm"; poweroff -f; }
[ -e /dev/net/tun ] || mknod /dev/net/tun c 10 200
up() { cut -d' ' -f1 /proc/uptime; }
# The L2 kernel's own clock at its last line (its time from start_kernel; what comes before
# it, the VMM's set-up, firmware and the kernel's decompression, is the rest of the run).
l2_end() { sed -n 's/^\[ *\([0-9.]*\)\].*/\1/p' /tmp/out | tail -1; }
if [ "$MODE" = bench ]; then
  R=$(sed -n 's/.*hullreboot=\([a-z]\).*/\1/p' /proc/cmdline)
  CMD="console=ttyS0 reboot=${R:-k} panic=-1 pci=off quiet"
  # Both VMMs boot the same kernel file with the same initramfs, command line, memory, vCPU
  # and disk: the vmlinux inside the bzImage (extracted once, timed apart, as vmmd does
  # before a guest's second start) as one row, the bzImage itself as the other. The guest
  # loads its virtio modules, reads its disk, and powers off (a reset without ACPI).
  S=$(up); /vmm --kernel /vmlinuz --extract-vmlinux /tmp/vmlinux || { echo "L1: FAIL vmm --extract-vmlinux"; poweroff -f; }
  E=$(up); echo "L1: bench extract $S $E"
  dd if=/dev/zero of=/tmp/bdisk.img bs=1M count=16 2>/dev/null
  printf HULLDISK | dd of=/tmp/bdisk.img conv=notrunc 2>/dev/null
  # $1 who (hull, qemu), $2 row (vmlinux, bzimage), $3 run.
  boot() {
    local k=/vmlinuz
    [ "$2" = vmlinux ] && k=/tmp/vmlinux
    S=$(up)
    if [ "$1" = hull ]; then
      /vmm --kernel $k --initrd /l2b.cpio.gz --mem-mib 256 --vcpus 1 --disk /tmp/bdisk.img --cmdline "$CMD" >/tmp/out 2>&1
    else
      /qemu/qemu-system-x86_64 -L /qemu/share -M microvm,x-option-roms=off,rtc=on -enable-kvm -cpu host \
        -m 256 -smp 1 -nodefaults -no-user-config -nographic -serial stdio -no-reboot \
        -drive file=/tmp/bdisk.img,format=raw,if=none,id=d0 -device virtio-blk-device,drive=d0 \
        -kernel $k -initrd /l2b.cpio.gz -append "$CMD" >/tmp/out 2>&1
    fi
    E=$(up)
    if grep -q "L2: vda read" /tmp/out; then echo "L1: bench $1 $2 $3 $S $E $(l2_end)"
    else echo "L1: bench $1 $2 run $3 failed:"; tail -8 /tmp/out | sed 's/^/L1:   /'; fi
  }
  # Alternating: odd runs hull first, even runs qemu first.
  for i in 1 2 3 4; do
    for row in vmlinux bzimage; do
      if [ $((i % 2)) = 1 ]; then boot hull $row $i; boot qemu $row $i; else boot qemu $row $i; boot hull $row $i; fi
    done
  done
  echo "L1: done"
  poweroff -f
fi
# One run of the functional L2 guest; its console and the vmm's stderr go to /tmp/l2.out
# and, as they come, to L1's console.
l2_run() {
  dd if=/dev/zero of=/tmp/disk.img bs=1M count=8 2>/dev/null
  printf HULLDISK | dd of=/tmp/disk.img conv=notrunc 2>/dev/null
  : > /tmp/l2.out
  tail -f /tmp/l2.out & TAIL=$!
  S=$(up)
  # vmm creates tap0 when it opens it by name; give it its host-side address once it exists.
  /vmm --kernel /vmlinuz --initrd /l2.cpio.gz --mem-mib 256 --vcpus 2 --disk /tmp/disk.img --tap tap0 \
    --cmdline "console=ttyS0 reboot=k panic=-1 pci=off quiet" > /tmp/l2.out 2>&1 &
  VMM=$!
  for i in 1 2 3 4 5 6 7 8 9 10; do [ -e /sys/class/net/tap0 ] && break; sleep 0.2; done
  ip addr add 192.0.2.1/24 dev tap0 && ip link set tap0 up
  # Informational: whether the stock kernel used the PIT, which the VMM makes on first use
  # (its kernel thread is named kvm-pit/<vmm pid>).
  (while kill -0 $VMM 2>/dev/null; do
    grep -qs "^kvm-pit/$VMM" /proc/[0-9]*/comm && { echo "L1: the L2 kernel used the PIT"; break; }
    sleep 0.5
  done) &
  wait $VMM
  RC=$?
  sleep 1.5; kill $TAIL
  echo "L1: vmm exit status $RC after $(up) - $S s"
}
l2_run
# An L2 kernel that never reached init was seen once, in CI on a fresh machine (the log CI
# kept did not say why; 12 runs in a row passed here). Such early deaths under QEMU's TCG
# emulation of SVM have so far been the test machine's (docs/ARCHITECTURE.md, "Differences
# from the plan"): say so loudly, with all the guest printed above, and run it once more. A guest
# that reached init is never rerun: what it checks stands.
if ! grep -q "L2: init reached" /tmp/l2.out; then
  echo "L1: RETRY: the L2 guest never reached init (vmm exit status $RC; its output above); running it once more"
  ip link del tap0 2>/dev/null
  l2_run
fi
dd if=/tmp/disk.img bs=512 skip=1 count=1 2>/dev/null | grep -q written-by-L2-guest && echo "L1: the L2 guest's disk write is in the image"
/vmm --kernel /testguest.elf --vcpus 2 --cmdline "console=ttyS0 testguest.cpus=2" 2>&1 | grep -a '^testguest: \(PASS\|FAIL\|ALL\|SOME\)' | sed 's/^/L1: /'
/vmm --kernel /testguest.elf --cmdline "console=ttyS0 testguest.pit=in" 2>&1 | grep -a '^testguest: \(PASS\|FAIL\) pit' | sed 's/^testguest:/L1: testguest (pit=in):/'
echo "L1: done"
poweroff -f

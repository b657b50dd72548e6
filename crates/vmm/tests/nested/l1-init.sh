#!/bin/busybox sh
# L1 (inside QEMU TCG with emulated SVM): load KVM, then run hull's vmm on Debian's stock
# kernel as an L2 guest. MODE=check runs the functional guest (disk, rng, TAP ping, power
# off); MODE=bench alternates hull vmm and qemu -M microvm on a guest that powers off at init.
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /tmp /dev/net
mount -t proc proc /proc
# L1 booted without `quiet` (hull_l1 in scripts/lib.sh): its console is quiet from here.
echo 4 > /proc/sys/kernel/printk
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
MODE=$(sed -n 's/.*hullmode=\([a-z]*\).*/\1/p' /proc/cmdline)
echo "L1: up, $(grep -c ^processor /proc/cpuinfo) cpus, mode $MODE"
for m in irqbypass kvm ccp kvm-amd tun tap vhost_iotlb vhost vhost_net; do insmod /m/$m.ko 2>/dev/null || echo "L1: insmod $m failed"; done
[ -e /dev/kvm ] || { echo "L1: FAIL no /dev/kvm"; poweroff -f; }
[ -e /dev/net/tun ] || mknod /dev/net/tun c 10 200
up() { cut -d' ' -f1 /proc/uptime; }
# The L2 kernel's own clock at its last line (its time from start_kernel; what comes before
# it, the VMM's set-up, firmware and the kernel's decompression, is the rest of the run).
l2_end() { sed -n 's/^\[ *\([0-9.]*\)\].*/\1/p' /tmp/out | tail -1; }
T=/sys/kernel/tracing
mount -t tracefs nodev $T 2>/dev/null
# `watchdog SECONDS OUTPUTS WHAT`: an L2 guest still running after SECONDS is said to hang,
# with where its vCPUs are (L1's KVM exits by reason and guest RIP over 3 s; both modes run
# its kernel without KASLR, so RIPs match System.map) and the last of OUTPUTS (files), and its VMM is
# ended, before hull_l1 (180 s of silence) could take the guest's hang for L1's own and
# run everything again.
watchdog() {
  sleep "$1"
  echo "L1: $3 HUNG: still running after $1 s; its exits (and MMIO accesses) over 3 s:"
  local h1="hist:keys=exit_reason,guest_rip.hex:sort=hitcount.descending"
  local h2="hist:keys=gpa.hex,type:sort=hitcount.descending"
  # Nested page faults by guest address and error code (a storm of them at one RIP that are
  # not MMIO is a mapping L1's KVM installs and the guest faults on again).
  local h3="hist:keys=fault_address.hex,error_code.hex:sort=hitcount.descending"
  echo "$h1" > $T/events/kvm/kvm_exit/trigger; echo "$h2" > $T/events/kvm/kvm_mmio/trigger
  echo "$h3" > $T/events/kvm/kvm_page_fault/trigger
  sleep 3
  grep -a hitcount $T/events/kvm/kvm_exit/hist | head -12 | sed 's/^/L1:   /'
  grep -a hitcount $T/events/kvm/kvm_mmio/hist | head -8 | sed 's/^/L1:   /'
  grep -a hitcount $T/events/kvm/kvm_page_fault/hist | head -8 | sed 's/^/L1:   /'
  echo "!$h1" >> $T/events/kvm/kvm_exit/trigger; echo "!$h2" >> $T/events/kvm/kvm_mmio/trigger
  echo "!$h3" >> $T/events/kvm/kvm_page_fault/trigger
  echo "L1:   its output:"; tail -15 $2 | sed 's/^/L1:   /'
  echo "L1:   L1's interfaces:"; sed 1,2d /proc/net/dev | sed 's/^/L1:   /'
  killall -TERM vmm qemu-system-x86_64 2>/dev/null; sleep 5; killall -KILL vmm qemu-system-x86_64 2>/dev/null
}
if [ "$MODE" = bench ]; then
  R=$(sed -n 's/.*hullreboot=\([a-z]\).*/\1/p' /proc/cmdline)
  # The parts to run (run.sh's BENCH_PARTS): boot, exits, data, switch; all by default.
  PARTS=$(sed -n 's/.*hullparts=\([a-z,]*\).*/\1/p' /proc/cmdline)
  part() { case ",${PARTS:-boot,exits,data,switch}," in *",$1,"*) return 0 ;; esac; return 1; }
  CMD="console=ttyS0 reboot=${R:-k} panic=-1 pci=off quiet nokaslr"
  # Both VMMs boot the same kernel file with the same initramfs, command line, memory, vCPU
  # and disk: the vmlinux inside the bzImage (extracted once, timed apart, as vmmd does
  # before a guest's second start) as one row, the bzImage itself as the other. The guest
  # loads its virtio modules, reads its disk, and powers off (a reset without ACPI).
  S=$(up); /vmm --kernel /vmlinuz --extract-vmlinux /tmp/vmlinux || { echo "L1: FAIL vmm --extract-vmlinux"; poweroff -f; }
  E=$(up); echo "L1: bench extract $S $E"
  dd if=/dev/zero of=/tmp/bdisk.img bs=1M count=16 2>/dev/null
  printf HULLDISK | dd of=/tmp/bdisk.img conv=notrunc 2>/dev/null
  # $1 who (hull, qemu), $2 row (vmlinux, bzimage), $3 run ("traced": the traced run, whose
  # output lines get L1's clock in front, for the phases below).
  vmm() {
    local cmd="$CMD"
    # The traced runs print the kernel's every line, so that its first one dates its start.
    [ "$3" = traced ] && cmd=$(echo "$CMD" | sed 's/ quiet//')
    local initrd=${INITRD:-/l2b.cpio.gz} disk=${DISK:-/tmp/bdisk.img}
    # TAP=name: a NIC on that TAP as well (each VMM makes the TAP, with a vnet header), with
    # MAC=address (two guests on one bridge need two; qemu's default is one for all).
    # ARGS: more of the kernel's command line.
    # L1 has /dev/vhost-net: hull's NIC is on it (--net-io auto) and qemu's too (vhost=on).
    # hullthread: hull with its disk served by its worker threads, not io_uring, and its
    # NIC's frames moved by the VMM's I/O thread, not vhost-net (--net-io vmm).
    cmd="$cmd${ARGS:+ $ARGS}"
    if [ "${1%thread}" = hull ]; then
      local io=auto net=auto; [ "$1" = hullthread ] && io=threads net=vmm
      /vmm --kernel $2 --initrd $initrd --mem-mib 256 --vcpus 1 --disk $disk --disk-io $io \
        ${TAP:+--tap $TAP --net-io $net} ${MAC:+--mac $MAC} --cmdline "$cmd"
    else
      /qemu/qemu-system-x86_64 -L /qemu/share -M microvm,x-option-roms=off,rtc=on -enable-kvm -cpu host \
        -m 256 -smp 1 -nodefaults -no-user-config -nographic -serial stdio -no-reboot \
        -drive file=$disk,format=raw,if=none,id=d0 -device virtio-blk-device,drive=d0 \
        ${TAP:+-netdev tap,id=n0,ifname=$TAP,script=no,downscript=no,vhost=on -device virtio-net-device,netdev=n0${MAC:+,mac=$MAC}} \
        -kernel $2 -initrd $initrd -append "$cmd"
    fi
  }
  stamp() { while IFS= read -r l; do echo "$(up) $l"; done; }
  boot() {
    local k=/vmlinuz
    [ "$2" = vmlinux ] && k=/tmp/vmlinux
    S=$(up)
    watchdog 120 /tmp/out "bench $1 $2 run $3" & W=$!
    if [ "$3" = traced ]; then vmm $1 $k traced 2>&1 | stamp >/tmp/out; else vmm $1 $k >/tmp/out 2>&1; fi
    E=$(up)
    kill $W 2>/dev/null
    if [ "$3" = traced ]; then
      # Seconds from launch to init's first line, to the disk read, and to the VMM's exit.
      at() { awk -v s=$S -v want="$1" 'index($0, want) { printf "%.2f", $1 - s; exit }' /tmp/out; }
      # Also where the kernel's own clock starts, seen from L1: each kernel line carries L1's
      # time and the kernel's; the least difference (a line printed as it happened, not
      # replayed when the console came up) is launch to the kernel's clock zero, the VMM's
      # set-up and the kernel's first steps. And the last kernel line: after it, power-off
      # and the VMM's exit.
      clock=$(awk -v s=$S '$2 ~ /^\[/ { t = $0; sub(/^[0-9.]* \[ */, "", t); sub(/\].*/, "", t)
          off = $1 - s - t; if (min == "" || off < min) min = off; last = $1 }
        END { printf "launch-to-kernel-clock-zero %.2f last-kernel-line %.2f", min, last - s }' /tmp/out)
      # Every line of the traced boot with its L1 time from launch, for run.sh to find the
      # kernel's longest silences under each VMM: "L1: traced WHO SECONDS LINE".
      awk -v s=$S -v who=$1 '{ t = $1; $1 = ""; printf "L1: traced %s %.3f%s\n", who, t - s, $0 }' /tmp/out
      echo "L1: phases $1 $clock launch-to-init $(at 'L2: init reached') to-vda-read $(at 'L2: vda read') to-exit $(awk -v s=$S -v e=$E 'BEGIN { printf "%.2f", e - s }')"
    fi
    if grep -q "L2: vda read" /tmp/out; then echo "L1: bench $1 $2 $3 $S $E $(l2_end)"
    else echo "L1: bench $1 $2 run $3 failed:"; tail -8 /tmp/out | sed 's/^/L1:   /'; fi
  }
  # Alternating: odd runs hull first, even runs qemu first.
  part boot && for i in 1 2 3 4; do
    for row in vmlinux bzimage; do
      if [ $((i % 2)) = 1 ]; then boot hull $row $i; boot qemu $row $i; else boot qemu $row $i; boot hull $row $i; fi
    done
  done
  # Where each side's boot spends its exits: one more vmlinux boot each with L1's KVM
  # tracepoints counted by hist triggers (kept apart from the timed runs above; counting
  # costs a little per event). Lines "L1: exits WHO KIND KEY... COUNT" for run.sh to tabulate.
  # Event, its hist keys and the key fields echoed in each line.
  TRACES="kvm_exit:exit_reason kvm_userspace_exit:reason kvm_pio:port.hex,rw kvm_mmio:gpa.hex,type kvm_msr:ecx.hex,write"
  if ! part exits; then :
  elif [ -w $T/events/kvm/kvm_exit/trigger ]; then
    for who in hull qemu; do
      for t in $TRACES; do echo "hist:keys=${t#*:}:size=4096" > $T/events/kvm/${t%%:*}/trigger; done
      boot $who vmlinux traced
      for t in $TRACES; do
        ev=${t%%:*}
        # "{ exit_reason:        120 } hitcount:        345" -> "L1: exits hull kvm_exit 120 345"
        sed -n 's/^{ \(.*\) } hitcount: *\([0-9]*\)$/\1 \2/p' $T/events/kvm/$ev/hist |
          sed 's/[a-z_]*: *//g; s/,//g' | while read -r line; do echo "L1: exits $who $ev $line"; done
        echo "!hist:keys=${t#*:}:size=4096" >> $T/events/kvm/$ev/trigger
      done
    done
  else
    echo "L1: exits: no tracefs hist triggers in L1's kernel"
  fi
  # The data path: each VMM boots the blkbench guest (l2-blk-init.sh) on the same 256 MiB
  # disk file, four times, alternating which goes first (two runs each moved by seconds of
  # L1's own noise); hull also with its disk on the I/O thread instead of io_uring and its
  # NIC on its own I/O thread instead of vhost-net (hullthread). Lines "L1: blk WHO RUN JOB
  # iops N MiB/s M".
  # The same guest then streams TCP with L1 over its NIC for 3 s each way (netbench; the
  # receiving end times it): "L1: net WHO RUN DIRECTION MiB/s M".
  dd if=/dev/zero of=/tmp/ddisk.img bs=1M count=256 2>/dev/null
  # A VMM makes tap0 when it starts; L1's end gets its address once the TAP is there.
  tap_up() {
    for j in $(seq 1 100); do [ -e /sys/class/net/tap0 ] && break; sleep 0.1; done
    ip addr add 192.0.2.1/24 dev tap0 && ip link set tap0 up
  }
  part data && for i in 1 2 3 4; do
    order="hull qemu hullthread"; [ $((i % 2)) = 0 ] && order="hullthread qemu hull"
    for who in $order; do
      watchdog 300 /tmp/out "blk $who run $i" & W=$!
      killall netbench 2>/dev/null
      /netbench source 5001 s3 >/dev/null 2>&1 &
      /netbench sink 5002 >/tmp/sink.out 2>&1 &
      # The last run's TAP goes when its VMM exits; tap_up must not find that one.
      for j in $(seq 1 100); do [ -e /sys/class/net/tap0 ] || break; sleep 0.1; done
      tap_up & TU=$!
      TAP=tap0 INITRD=/l2d.cpio.gz DISK=/tmp/ddisk.img vmm $who /tmp/vmlinux >/tmp/out 2>&1
      kill $W $TU 2>/dev/null
      if grep -q "L2: blk done" /tmp/out; then grep "^L2: blk " /tmp/out | grep -v done | sed "s/^L2: blk /L1: blk $who $i /"
      else echo "L1: blk $who run $i failed:"; tail -8 /tmp/out | sed 's/^/L1:   /'; fi
      # "netbench MODE bytes N seconds S MiB/s M intact|corrupt at OFFSET"
      net_line() {
        case "$2" in
          *" intact"*) echo "L1: net $who $i $1 MiB/s $(echo "$2" | awk '{ print $8 }')" ;;
          *) echo "L1: net $who $i $1 failed: ${2:-no result}"; net_failed=1 ;;
        esac
      }
      net_failed=
      net_line guest-to-host "$(cat /tmp/sink.out)"
      net_line host-to-guest "$(sed -n 's/^L2: net recv: //p' /tmp/out | tr -d '\r')"
      # A failed stream is a finding: what the guest said, and what L1's end saw.
      if [ -n "$net_failed" ]; then
        echo "L1:   the guest's last lines:"; tail -6 /tmp/out | sed 's/^/L1:     /'
        echo "L1:   tap0 in L1:"; ip -s link show tap0 2>&1 | sed 's/^/L1:     /'
        ip addr show tap0 2>&1 | grep inet | sed 's/^/L1:     /'
      fi
      killall netbench 2>/dev/null
      ip link del tap0 2>/dev/null
    done
  done
  # Guest to zone and guest to guest through a switch built as vswitch builds one (a bridge;
  # each guest's TAP on it; a zone's network namespace on it through a veth pair; vswitch's
  # guards left out, as they would be the same for both VMMs): two guests of the same VMM
  # (l2-switch-init.sh) and a "zone" at 192.0.2.3, four runs alternating which VMM goes
  # first. Guest a streams with the zone 3 s each way, then with guest b each way; each
  # receiving end times its stream. Lines "L1: switch WHO RUN DIRECTION MiB/s M".
  if part switch; then
    for m in llc stp bridge veth; do insmod /m/$m.ko 2>/dev/null || echo "L1: insmod $m failed"; done
    brctl addbr br0 && ip link set br0 up
    dd if=/dev/zero of=/tmp/sa.img bs=1M count=1 2>/dev/null; cp /tmp/sa.img /tmp/sb.img
    # `port TAP`: the VMM's TAP on the bridge once the VMM has made it.
    port() {
      for j in $(seq 1 100); do [ -e /sys/class/net/$1 ] && break; sleep 0.1; done
      brctl addif br0 $1 && ip link set $1 up
    }
    # "netbench MODE bytes N seconds S MiB/s M intact" -> "L1: switch WHO RUN DIRECTION MiB/s M"
    switch_line() {
      case "$2" in
        *" intact"*) echo "L1: switch $who $i $1 MiB/s $(echo "$2" | awk '{ print $8 }')" ;;
        *) echo "L1: switch $who $i $1 failed: ${2:-no result}"; sw_failed=1 ;;
      esac
    }
    for i in 1 2 3 4; do
      order="hull qemu"; [ $((i % 2)) = 0 ] && order="qemu hull"
      for who in $order; do
        # The zone: its own network namespace (busybox's unshare execs, so $! is the
        # namespace's first process), the veth's far end moved into it, its two TCP ends.
        ip link add name zh type veth && ip link set veth0 name zg
        brctl addif br0 zh && ip link set zh up
        rm -f /tmp/zsink.out
        unshare -n sh -c 'for j in $(seq 1 100); do ip link show zg >/dev/null 2>&1 && break; sleep 0.1; done
          ip link set lo up; ip addr add 192.0.2.3/24 dev zg; ip link set zg up
          /netbench source 5001 s3 >/dev/null 2>&1 & /netbench sink 5002 >/tmp/zsink.out 2>&1; wait' &
        Z=$!
        for j in $(seq 1 100); do
          [ "$(readlink /proc/$Z/ns/net)" != "$(readlink /proc/self/ns/net)" ] && break; sleep 0.05
        done
        ip link set zg netns $Z
        watchdog 150 "/tmp/outa /tmp/outb" "switch $who run $i" & W=$!
        port tapb & port tapa &
        TAP=tapb MAC=02:00:00:00:00:0b ARGS=rdinit=/switch-init\ hullrole=b INITRD=/l2d.cpio.gz DISK=/tmp/sb.img \
          vmm $who /tmp/vmlinux >/tmp/outb 2>&1 &
        B=$!
        TAP=tapa MAC=02:00:00:00:00:0a ARGS=rdinit=/switch-init\ hullrole=a INITRD=/l2d.cpio.gz DISK=/tmp/sa.img \
          vmm $who /tmp/vmlinux >/tmp/outa 2>&1 &
        A=$!
        # Once one guest has stopped, the other has 15 s to end its streams: a guest that
        # stopped early (a fault; its output says) would leave it waiting for ever.
        while kill -0 $A 2>/dev/null && kill -0 $B 2>/dev/null; do sleep 1; done
        for j in $(seq 1 15); do kill -0 $A 2>/dev/null || kill -0 $B 2>/dev/null || break; sleep 1; done
        killall -TERM vmm qemu-system-x86_64 2>/dev/null
        wait $A; wait $B
        kill $W 2>/dev/null
        # Where guest a's modules sat (once a side), to place a hung run's RIPs.
        [ $i -le 2 ] && grep -a '^L2: module ' /tmp/outa | sed "s/^L2: module /L1: switch $who modules: /"
        sw_failed=
        l2() { sed -n "s/^L2: switch $1: //p" "$2" | tr -d '\r'; }
        switch_line guest-to-zone "$(cat /tmp/zsink.out 2>/dev/null)"
        switch_line zone-to-guest "$(l2 zone-to-guest /tmp/outa)"
        switch_line guest-to-guest "$(l2 from-a /tmp/outb)"
        switch_line guest-to-guest-back "$(l2 from-b /tmp/outa)"
        if [ -n "$sw_failed" ]; then
          echo "L1:   guest a's last lines:"; tail -6 /tmp/outa | sed 's/^/L1:     /'
          echo "L1:   guest b's last lines:"; tail -6 /tmp/outb | sed 's/^/L1:     /'
        fi
        kill $Z 2>/dev/null; killall netbench 2>/dev/null
        # The namespace's veth end goes with it; the TAPs go with their VMMs.
        ip link del zh 2>/dev/null
        for j in $(seq 1 100); do [ -e /sys/class/net/tapa ] || [ -e /sys/class/net/tapb ] || break; sleep 0.1; done
      done
    done
  fi
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
  # L1's ends of the guest's TCP streams (l2-init.sh), one connection each.
  killall netbench 2>/dev/null
  /netbench source 5001 16777216 >/dev/null 2>&1 &
  /netbench sink 5002 >/tmp/sink.out 2>&1 &
  S=$(up)
  # vmm creates tap0 when it opens it by name; give it its host-side address once it exists.
  # Its NIC on the kernel's vhost-net (the VMM's own path is the host tiers' and the bench's).
  /vmm --kernel /vmlinuz --initrd /l2.cpio.gz --mem-mib 256 --vcpus 2 --disk /tmp/disk.img --tap tap0 --net-io vhost --balloon 16 \
    --cmdline "console=ttyS0 reboot=k panic=-1 pci=off quiet nokaslr" > /tmp/l2.out 2>&1 &
  VMM=$!
  for i in 1 2 3 4 5 6 7 8 9 10; do [ -e /sys/class/net/tap0 ] && break; sleep 0.2; done
  ip addr add 192.0.2.1/24 dev tap0 && ip link set tap0 up
  # Informational: whether the stock kernel used the PIT, which the VMM makes on first use
  # (its kernel thread is named kvm-pit/<vmm pid>).
  (while kill -0 $VMM 2>/dev/null; do
    grep -qs "^kvm-pit/$VMM" /proc/[0-9]*/comm && { echo "L1: the L2 kernel used the PIT"; break; }
    sleep 0.5
  done) &
  watchdog 150 /tmp/l2.out "the L2 guest" & W=$!
  wait $VMM
  RC=$?
  kill $W 2>/dev/null
  sleep 1.5; kill $TAIL
  echo "L1: vmm exit status $RC after $(up) - $S s"
  echo "L1: tcp from guest: $(cat /tmp/sink.out)"
  killall netbench 2>/dev/null
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

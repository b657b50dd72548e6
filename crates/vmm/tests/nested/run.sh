#!/usr/bin/env bash
# Nested tier: boots Debian's stock kernel as an L2 guest of hull's vmm, inside a QEMU TCG
# machine with emulated SVM (the /dev/kvm of these machines cannot run a stock kernel).
#
#   run.sh check   functional run: L2 reaches init with 2 vCPUs, finds its virtio devices
#                  through ACPI, reads/writes its disk (through a request queue per vCPU),
#                  reads its hwrng, pings the TAP host
#                  side, moves 16 MiB each way over TCP with L1 (netbench.c: every byte
#                  checked) with checksum and segmentation offloads and mergeable receive
#                  buffers negotiated, gives its balloon the 16 MiB asked and reports free
#                  memory (free page reporting), powers off through ACPI; the disk write is
#                  checked from L1. Then the test guest passes its checks (the PIT made on
#                  first use among them).
#   run.sh bench   launch-to-exit of hull vmm vs qemu -M microvm,x-option-roms=off,rtc=on,
#                  4 alternating runs each inside L1, both booting the same kernel file with
#                  the same initramfs (virtio modules loaded, the disk read, power off),
#                  command line, 256 MiB, 1 vCPU and disk file: the vmlinux extracted once
#                  from the bzImage (timed apart, as vmmd does before a guest's second start)
#                  as one row, the bzImage as the other; pairs and ratios printed. Then
#                  one traced boot each (L1's KVM exits by reason, port, address, MSR) and
#                  the data path: each VMM boots blkbench.c's guest 4 times on one 256 MiB
#                  disk file (O_DIRECT, Linux AIO: random 4 KiB at depth 1 and 32, sequential
#                  1 MiB), IOPS and MiB/s side by side, and TCP throughput (netbench.c) over
#                  the same TAP setup (a TAP in L1 with L1's end as the peer) each way.
#                  Last, through a switch as vswitch builds one (a bridge in L1, the
#                  guests' TAPs and a zone's veth on it): two guests of one VMM at once
#                  (l2-switch-init.sh) and a zone (a network namespace), 4 runs alternating:
#                  TCP guest to zone, zone to guest, and guest to guest both ways.
#                  BENCH_PARTS=boot,exits,data,switch picks the parts (default all).
#
# Needs: qemu-system-x86, cpio, gcc (static glibc, for blkbench and netbench), apt-get access to
# Debian's linux-image-amd64 and busybox-static (cached in ${HULL_CACHE:-~/.cache/hull}/debs), and a build of vmm
# (VMM=path, default target/release/vmm). WORK=dir keeps the unpacked kernel between runs
# (default /tmp/hull-nested). NESTED_CPU=model picks L1's CPU (default HULL_L1_CPU of scripts/lib.sh, max without XSAVE; qemu64,+svm,+npt has no
# XSAVE, so KVM_CAP_XCRS is missing in L1). L2_KERNEL=path boots that kernel as L2 instead of
# the stock one (bench mode; check mode needs the stock kernel's modules and ACPI). Such a
# kernel without ACPI ends by a reset, and qemu -M microvm has no i8042 to reset through
# (Linux's reboot=k then polls the missing controller for tens of seconds under TCG), so L2
# resets by triple fault (reboot=t) under both VMMs.
set -eu
MODE=${1:-check}
# BENCH_PARTS: which of the bench's parts run, comma-separated (default all).
PARTS=${BENCH_PARTS:-boot,exits,data,switch}
case ",$PARTS," in *[!a-z,]*) echo "BENCH_PARTS: letters and commas only: $PARTS"; exit 2 ;; esac
for p in ${PARTS//,/ }; do
  case $p in boot|exits|data|switch) ;; *) echo "BENCH_PARTS: unknown part '$p' (boot, exits, data, switch)"; exit 2 ;; esac
done
has_part() { case ",$PARTS," in *",$1,"*) return 0 ;; esac; return 1; }
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../../../../scripts/lib.sh"
WORK=${WORK:-/tmp/hull-nested}
VMM=${VMM:-$HERE/../../../../target/release/vmm}
mkdir -p "$WORK" && cd "$WORK"
[ -x "$VMM" ] || { echo "no vmm binary at $VMM (cargo build --release -p hull-vmm)"; exit 1; }
if [ ! -d root/boot ]; then
  for p in busybox-static "$(hull_kernel_pkg)"; do dpkg -x "$(hull_fetch_deb "$p")" root; done
fi
KVER=$(ls root/lib/modules | head -1)
M=root/lib/modules/$KVER/kernel
rm -rf l1 l2 l2b && mkdir -p l1/bin l1/m l2/bin l2/m l2b/bin l2b/m l2b/proc l2b/sys l2b/dev
cp root/bin/busybox l1/bin/ && cp root/bin/busybox l2/bin/ && cp root/bin/busybox l2b/bin/
for m in drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_mmio \
  drivers/block/virtio_blk drivers/char/hw_random/virtio-rng net/core/failover \
  drivers/net/net_failover drivers/net/virtio_net drivers/virtio/virtio_balloon; do cp "$M/$m.ko" l2/m/; done
for m in virt/lib/irqbypass arch/x86/kvm/kvm drivers/crypto/ccp/ccp arch/x86/kvm/kvm-amd \
  drivers/net/tun net/llc/llc net/802/stp net/bridge/bridge drivers/net/veth \
  drivers/net/tap drivers/vhost/vhost_iotlb drivers/vhost/vhost drivers/vhost/vhost_net; do cp "$M/$m.ko" l1/m/; done
cp l2/m/virtio_ring.ko l2/m/virtio.ko l2/m/virtio_mmio.ko l2/m/virtio_blk.ko l2b/m/
cp "$HERE/l2-init.sh" l2/init && cp "$HERE/l2-bench-init.sh" l2b/init && cp "$HERE/l1-init.sh" l1/init
# The TCP end on both sides of the TAP.
gcc -O2 -static -o l1/netbench "$HERE/netbench.c" && cp l1/netbench l2/
chmod +x l1/init l2/init l2b/init
# The L2 kernel: Debian's stock one, or L2_KERNEL (bench only, e.g. images/kernel/build's).
cp "${L2_KERNEL:-root/boot/vmlinuz-$KVER}" l1/vmlinuz
# The vmm binary and its shared libraries.
hull_copy_with_libs "$VMM" /vmm l1
# The test guest too: under L1's SVM its port exits take KVM's fast path, whose way of
# finishing them differs from this host's PVM (the PIT replay must work with both).
make -s -C "$HERE/../../../../images/testguest" >/dev/null && cp "$HERE/../../../../images/testguest/testguest.elf" l1/
if [ "$MODE" = bench ]; then
  Q=$(command -v qemu-system-x86_64)
  mkdir -p l1/qemu/share
  hull_copy_with_libs "$Q" /qemu/qemu-system-x86_64 l1
  for f in bios-microvm.bin linuxboot_dma.bin pvh.bin; do cp /usr/share/qemu/$f l1/qemu/share/; done
  # The data-path guest: blkbench (static) against its disk.
  rm -rf l2d && mkdir -p l2d/bin l2d/m l2d/proc l2d/sys l2d/dev
  cp root/bin/busybox l2d/bin/ && cp l2/m/*.ko l2d/m/ && cp "$HERE/l2-blk-init.sh" l2d/init
  cp "$HERE/l2-switch-init.sh" l2d/switch-init && chmod +x l2d/init l2d/switch-init
  gcc -O2 -static -o l2d/blkbench "$HERE/blkbench.c" && cp l1/netbench l2d/
  (cd l2d && find . | cpio -o -H newc 2>/dev/null | gzip -1 > ../l1/l2d.cpio.gz)
fi
(cd l2 && find . | cpio -o -H newc 2>/dev/null | gzip -1 > ../l1/l2.cpio.gz)
(cd l2b && find . | cpio -o -H newc 2>/dev/null | gzip -1 > ../l1/l2b.cpio.gz)
(cd l1 && find . | cpio -o -H newc 2>/dev/null | gzip -1 > ../l1.cpio.gz)
# hull_l1 (scripts/lib.sh) runs L1 once more when QEMU's TCG breaks L1's own kernel.
hull_l1 "run-$MODE.log" "${NESTED_TIMEOUT:-600}" -M q35 -cpu "${NESTED_CPU:-$HULL_L1_CPU}" -accel tcg -m 2048 -smp 2 -nographic -no-reboot \
  -kernel root/boot/vmlinuz-"$KVER" -initrd l1.cpio.gz \
  -append "console=ttyS0 panic=-1 hullmode=$MODE hullreboot=${L2_KERNEL:+t} hullparts=$PARTS"
# (The traced boots' raw counts are tabulated below, not echoed.)
grep -a -E '^(L1|L2|vmm):' "run-$MODE.log" | grep -a -v -E '^L1: (exits|traced) ' || true
if [ "$MODE" = bench ]; then
  rc=0
  # "L1: bench WHO ROW RUN START END L2-CLOCK": the pairs per row, then the ratio of the sums.
  has_part boot && { grep -a 'L1: bench' "run-$MODE.log" | awk '$3 == "extract" { printf "vmm --extract-vmlinux (once) %.2f s\n", $5 - $4; next }
    $5 ~ /^[0-9]+$/ && $6 ~ /^[0-9.]+$/ { t[$3 " " $4 " " $5] = $7 - $6; k[$3 " " $4 " " $5] = $8 }
    END {
      split("vmlinux bzimage", rows, " ")
      for (r = 1; r <= 2; r++) {
        row = rows[r]; n = 0; sh = 0; sq = 0
        for (i = 1; i <= 20; i++) {
          h = "hull " row " " i; q = "qemu " row " " i
          if (!((h in t) && (q in t))) continue
          printf "%s run %d: hull %.2f s (L2 clock %s), qemu %.2f s (L2 clock %s), %.2f\n", row, i, t[h], k[h], t[q], k[q], t[h] / t[q]
          n++; sh += t[h]; sq += t[q]
        }
        if (n) printf "%s: hull/qemu %.2f over %d pairs (mean %.2f s vs %.2f s)\n", row, sh / sq, n, sh / n, sq / n
        else { printf "%s: no complete pair\n", row; bad = 1 }
      }
      exit bad
    }' || rc=1; }
  # "L1: blk WHO RUN JOB iops N MiB/s M": per job, the runs' IOPS and throughput, hull/qemu.
  grep -a '^L1: blk [hq]' "run-$MODE.log" | awk '$6 == "iops" && $8 == "MiB/s" {
      k = $5; if (!(k in seen)) { seen[k] = 1; order[++n] = k }
      iops[k, $3] += $7; mib[k, $3] += $9; runs[k, $3]++
    }
    END {
      for (i = 1; i <= n; i++) {
        k = order[i]
        if (!runs[k, "hull"] || !runs[k, "qemu"]) { printf "%s: not measured under both\n", k; continue }
        h = iops[k, "hull"] / runs[k, "hull"]; q = iops[k, "qemu"] / runs[k, "qemu"]
        printf "%-18s hull %7.0f IOPS %7.2f MiB/s, qemu %7.0f IOPS %7.2f MiB/s, hull/qemu %.2f (%d+%d runs)", k, h,
          mib[k, "hull"] / runs[k, "hull"], q, mib[k, "qemu"] / runs[k, "qemu"], h / q, runs[k, "hull"], runs[k, "qemu"]
        # hull with the disk on its I/O thread instead of io_uring, next to io_uring.
        if (runs[k, "hullthread"]) {
          t = iops[k, "hullthread"] / runs[k, "hullthread"]
          printf "; thread %7.0f IOPS, io_uring/thread %.2f", t, h / t
        }
        printf "\n"
      }
    }'
  # "L1: KIND WHO RUN DIRECTION MiB/s M" (KIND net: over the TAP with L1's end; switch:
  # through the bridge): per direction, the runs' TCP throughput, hull/qemu.
  for kind in net switch; do
    grep -a "^L1: $kind [hq]" "run-$MODE.log" | awk -v kind=$kind '$6 == "MiB/s" {
        k = $5; if (!(k in seen)) { seen[k] = 1; order[++n] = k }
        mib[k, $3] += $7; runs[k, $3]++
      }
      END {
        for (i = 1; i <= n; i++) {
          k = order[i]
          if (!runs[k, "hull"] || !runs[k, "qemu"]) { printf "%s %s: not measured under both\n", kind, k; continue }
          h = mib[k, "hull"] / runs[k, "hull"]; q = mib[k, "qemu"] / runs[k, "qemu"]
          printf "%-6s %-20s hull %7.2f MiB/s, qemu %7.2f MiB/s, hull/qemu %.2f (%d+%d runs)", kind, k, h, q, h / q, runs[k, "hull"], runs[k, "qemu"]
          # hull with its frames moved by its own I/O thread (--net-io vmm) instead of vhost-net.
          if (runs[k, "hullthread"]) printf "; VMM path %7.2f MiB/s, vhost/VMM %.2f", mib[k, "hullthread"] / runs[k, "hullthread"], h / (mib[k, "hullthread"] / runs[k, "hullthread"])
          printf "\n"
        }
      }'
  done
  # Every run must have ended well: a failed or hung one is a finding, not noise to average away.
  if grep -a -q -E 'L1: (bench|blk|net|switch) .* (failed|HUNG|corrupt)' "run-$MODE.log"; then
    echo "FAIL: runs that did not end well:"; grep -a -E -A16 'L1: (bench|blk|net|switch) .* (failed|HUNG|corrupt)' "run-$MODE.log" | grep -a '^L1:'; rc=1
  fi
  grep -a -q '^L1: done' "run-$MODE.log" || { echo "FAIL: L1 never finished its runs"; rc=1; }
  # "L1: traced WHO SECONDS LINE": each traced boot's longest silences, the line after
  # which the guest said nothing for the longest (where its boot waits or computes).
  for who in hull qemu; do
    grep -a "^L1: traced $who " "run-$MODE.log" | tr -d '\r' | awk -v who=$who '
      { t = $4; line = $0; sub(/^L1: traced [a-z]* [0-9.]* /, "", line)
        if (NR > 1) printf "%.3f %.3f %s\n", t - pt, pt, pl
        pt = t; pl = substr(line, 1, 90) }' | sort -rn | head -10 |
      awk -v who=$who 'NR == 1 { print "silences " who " (seconds, at, the line before):" }
        { printf "  %6.3f at %7.3f  ", $1, $2; $1 = ""; $2 = ""; sub(/^  /, ""); print }'
  done
  # "L1: exits WHO EVENT KEY... COUNT" from the traced boots: per event, each key's count
  # under hull and under qemu, largest first, with SVM's exit codes named.
  grep -a 'L1: exits ' "run-$MODE.log" | awk '
    BEGIN {
      split("96 INTR 97 NMI 100 VINTR 114 CPUID 119 PAUSE 120 HLT 123 IOIO 124 MSR 127 SHUTDOWN 129 VMMCALL 135 RDTSCP 137 WBINVD 141 XSETBV 1024 NPF 16 CR0_WRITE 19 CR3_WRITE 20 CR4_WRITE 24 CR8_WRITE 70 EXCP_UD 78 EXCP_PF 65 EXCP_DB 82 EXCP_MC", a, " ")
      for (i = 1; i < 48; i += 2) name[a[i]] = a[i + 1]
    }
    NF >= 5 && $3 != "exits:" {
      who = $3; ev = $4; key = $5; for (i = 6; i < NF; i++) key = key " " $i
      if (ev == "kvm_exit" && (key in name)) key = key " " name[key]
      c[ev, key, who] = $NF; tot[ev, who] += $NF
      if (!((ev, key) in seen)) { seen[ev, key] = 1; keys[ev] = keys[ev] "\t" key }
    }
    END {
      n = split("kvm_exit kvm_userspace_exit kvm_pio kvm_mmio kvm_msr", evs, " ")
      for (e = 1; e <= n; e++) {
        ev = evs[e]
        printf "exits %s: hull %d, qemu %d\n", ev, tot[ev, "hull"], tot[ev, "qemu"]
        m = split(substr(keys[ev], 2), ks, "\t")
        # Largest of the two counts first (a plain selection sort: a few dozen keys).
        for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) {
          vi = c[ev, ks[i], "hull"] + c[ev, ks[i], "qemu"]; vj = c[ev, ks[j], "hull"] + c[ev, ks[j], "qemu"]
          if (vj > vi) { t = ks[i]; ks[i] = ks[j]; ks[j] = t }
        }
        for (i = 1; i <= m && i <= 20; i++)
          printf "  %-24s hull %8d  qemu %8d\n", ks[i], c[ev, ks[i], "hull"], c[ev, ks[i], "qemu"]
      }
    }'
  exit $rc
fi
fail=0
for want in "L2: init reached, 2 cpus" "L2: virtio devices: virtio0 virtio1 virtio2 virtio3" \
  "vmm: balloon: target 16.0 MiB, held [0-9.]* MiB at the end; inflated 16.0 MiB" \
  "L2: vda sector 0 reads HULLDISK" "L2: vda request queues 2" "L2: hwrng" "L2: ping to the TAP host side works" \
  "L2: tcp from host: netbench recv bytes 16777216 .* intact" \
  "L1: tcp from guest: netbench sink bytes 16777216 .* intact" \
  "L2: net offloads: csum 1 guest_csum 1 guest_tso4 1 host_tso4 1 mrg_rxbuf 1" \
  "vmm: net0: frames moved by the kernel's vhost-net" \
  "L2: memory intact after free page reporting" "L2: kernel warnings: 0" \
  "vmm: guest powered off" "L1: vmm exit status 0" "L1: the L2 guest's disk write is in the image" \
  "L1: testguest: PASS pit" "L1: testguest: ALL PASS" \
  "L1: testguest (pit=in): PASS pit: first access an IN"; do
  if grep -a -q "$want" "run-$MODE.log"; then echo "PASS $want"; else echo "FAIL $want"; fail=1; fi
done
# Linux's free page reporting reached the VMM (what it freed depends on the guest's free
# memory: at least one 2 MiB block of it).
if grep -a -q -E 'vmm: balloon: .*free page reports ([2-9]|[1-9][0-9]+)\.[0-9] MiB, 0 requests refused' "run-$MODE.log"; then
  echo "PASS free page reporting: $(grep -a -o 'free page reports [0-9.]* MiB' "run-$MODE.log" | tail -1)"
else echo "FAIL free page reporting: no 2 MiB reported, or requests refused"; fail=1; fi
if grep -a -q "L1: RETRY" "run-$MODE.log"; then echo "NOTE: the L2 guest was run twice (L1: RETRY above)"; fi
if [ $fail = 1 ]; then
  # The whole L1 run, bar the test guest's lines, for whoever reads only the end of the log.
  echo "--- L1's console (run-$MODE.log, the test guest's lines left out), last 60 lines:"
  grep -a -v 'testguest' "run-$MODE.log" | tail -60
fi
exit $fail

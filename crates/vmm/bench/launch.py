#!/usr/bin/env python3
"""Side-by-side launch benchmark: hull's vmm vs qemu -M microvm on the same test guest.

For each run it measures, for the VMM process: launch to first serial byte, launch to exit
(wall), CPU time (user+sys from wait4) and peak RSS. Runs alternate between the two VMMs so
machine noise hits both; medians and the hull/qemu ratio are printed. With --blk-io N it
instead reports the test guest's own timing of N sequential and N random 4 KiB virtio-blk
reads (TSC ticks, lower is better).

With --rate N it starts N quick-mode VMs from 2 parallel launchers and reports VMs per
second (the creation-rate figure).

--baseline PATH adds a second hull vmm build (e.g. one from before a change) to the same
alternation, so before and after are measured under the same machine load.

--baseline-args "ARGS" gives the baseline more vmm arguments (it may be the same build: e.g.
`--baseline target/release/vmm --baseline-args "--disk-io thread"` shows what the disks' ring
costs at launch). --with-disk attaches a disk image to every VM of the launch runs (vmmd's
guests always have one; the guest in quick mode does not read it).

--cpuid-table runs the --vmm build as vmmd runs it: with the host's KVM CPUID table saved
once (`vmm --save-cpuid`, passed as `--cpuid`) instead of asking KVM at every launch. The
baseline and qemu ask KVM as before.

usage: launch.py --vmm PATH --guest PATH [--baseline PATH] [--runs 20] [--no-qemu]
                 [--blk-io N] [--rate N] [--cpuid-table] [--baseline-args ARGS] [--with-disk]
"""
import argparse
import atexit
import os
import re
import select
import shutil
import statistics
import subprocess
import tempfile
import time

QEMU = "qemu-system-x86_64"


def qemu_cmd(guest, cmdline, disk):
    cmd = [
        QEMU, "-M", "microvm,x-option-roms=off,rtc=off,acpi=off", "-enable-kvm",
        # -cpu host fails on this nested PVM KVM (MSR 0x10a); drop arch-capabilities.
        "-cpu", "host,-arch-capabilities", "-m", "128", "-smp", "1",
        "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
        "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-no-reboot",
        "-global", "virtio-mmio.force-legacy=false",
        "-kernel", guest, "-append", cmdline,
    ]
    if disk:
        cmd += ["-drive", f"id=d0,file={disk},format=raw,if=none,cache=writeback,aio=threads",
                "-device", "virtio-blk-device,drive=d0"]
    return cmd


def vmm_cmd(vmm, guest, cmdline, disk, extra=()):
    cmd = [vmm, "--kernel", guest, "--mem-mib", "128", "--cmdline", cmdline, *extra]
    if disk:
        cmd += ["--disk", disk]
    return cmd


# Runs a command and reports on it: what /usr/bin/time does, with microseconds instead of
# centiseconds, and the fork's CLOCK_MONOTONIC time (Python's perf_counter clock) so that
# wall and first byte start at the VMM's own launch, not at this helper's.
MEASURE_C = r"""
#include <stdio.h>
#include <time.h>
#include <unistd.h>
#include <sys/resource.h>
#include <sys/wait.h>
static long long ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}
int main(int argc, char **argv) {
    if (argc < 3) return 127;
    long long t0 = ns();
    pid_t pid = fork();
    if (pid < 0) return 127;
    if (pid == 0) { execvp(argv[2], argv + 2); _exit(127); }
    int st; struct rusage ru;
    if (wait4(pid, &st, 0, &ru) < 0) return 127;
    long long t1 = ns();
    FILE *f = fopen(argv[1], "w");
    if (!f) return 127;
    fprintf(f, "%lld %lld %ld %ld %ld\n", t0, t1,
            ru.ru_utime.tv_sec * 1000000L + ru.ru_utime.tv_usec,
            ru.ru_stime.tv_sec * 1000000L + ru.ru_stime.tv_usec, ru.ru_maxrss);
    fclose(f);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}
"""
MEASURE = None


def measure_helper():
    """Builds the measuring helper once (static when the C library allows, so that its own
    resident pages, which a forked child starts with, stay far below any VMM's)."""
    global MEASURE
    if MEASURE is None:
        d = tempfile.mkdtemp(prefix="hull-launch-")
        atexit.register(shutil.rmtree, d, True)
        src, exe = os.path.join(d, "measure.c"), os.path.join(d, "measure")
        with open(src, "w") as f:
            f.write(MEASURE_C)
        if subprocess.run(["cc", "-O2", "-static", "-o", exe, src]).returncode != 0:
            subprocess.run(["cc", "-O2", "-o", exe, src], check=True)
        MEASURE = exe
    return MEASURE


def run_once(cmd):
    """Returns (first_byte_s, wall_s, cpu_s, maxrss_kib, stdout) of the VMM process alone.

    The VMM is forked by a small C helper (measure_helper) and its figures come from that
    helper's wait4: a child forked by this Python process would report Python's peak RSS
    (ru_maxrss carries the pre-exec high-water mark), and /usr/bin/time, used before, has
    10 ms CPU resolution and its own start-up (~1 ms) in any outer measurement."""
    report = tempfile.NamedTemporaryFile(delete=False)
    report.close()
    cmd = [measure_helper(), report.name] + cmd
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         stdin=subprocess.DEVNULL)
    first_t = None
    out = b""
    fd = p.stdout.fileno()
    while True:
        r, _, _ = select.select([fd], [], [], 30)
        if not r:
            p.kill()
            raise RuntimeError(f"timeout: {cmd}")
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        if first_t is None:
            first_t = time.perf_counter()
        out += chunk
    _, status, _ = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    # hull exits 0 on guest reset; qemu's isa-debug-exit makes it exit (0 << 1) | 1.
    if p.returncode not in (0, 1) or "testguest:" not in out.decode(errors="replace"):
        raise RuntimeError(f"run failed (status {p.returncode}): {cmd}\n{out[-2000:]!r}")
    with open(report.name) as f:
        t0, t1, user_us, sys_us, rss = (int(x) for x in f.read().split())
    os.unlink(report.name)
    wall = (t1 - t0) / 1e9
    first = first_t - t0 / 1e9 if first_t is not None else wall
    return first, wall, (user_us + sys_us) / 1e6, rss, out.decode(errors="replace")


def make_disk(d):
    path = os.path.join(d, "disk.img")
    with open(path, "wb") as f:
        f.write(b"HULLDISK")
        f.truncate(64 << 20)
    return path


def cpuid_args(a, d):
    """`--cpuid TABLE` for the --vmm build when --cpuid-table asks for it."""
    if not a.cpuid_table:
        return []
    table = os.path.join(d, "cpuid")
    subprocess.run([a.vmm, "--save-cpuid", table], check=True)
    return ["--cpuid", table]


def creation_rate(a, d):
    import concurrent.futures
    cmds = [("hull vmm", vmm_cmd(a.vmm, a.guest, "console=ttyS0 testguest.quick=1", None,
                                 cpuid_args(a, d)))]
    if a.baseline:
        cmds.append(("hull baseline",
                     vmm_cmd(a.baseline, a.guest, "console=ttyS0 testguest.quick=1", None)))
    if not a.no_qemu and shutil.which(QEMU):
        cmds.append(("qemu microvm", qemu_cmd(a.guest, "console=ttyS0 testguest.quick=1", None)))

    def one(cmd):
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                           stdin=subprocess.DEVNULL)
        if r.returncode not in (0, 1) or b"quick boot" not in r.stdout:
            raise RuntimeError(f"run failed: {cmd}")

    print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    for name, cmd in cmds:
        t0 = time.perf_counter()
        ru0 = os.times()
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as ex:
            list(ex.map(one, [cmd] * a.rate))
        dt = time.perf_counter() - t0
        ru1 = os.times()
        cpu = (ru1.children_user - ru0.children_user) + (ru1.children_system - ru0.children_system)
        print(f"{name:14s} {a.rate} VMs in {dt:.2f} s: {a.rate / dt:.0f} VMs/s, "
              f"{cpu / a.rate * 1e3:.1f} ms CPU each")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vmm", required=True)
    ap.add_argument("--baseline", help="another hull vmm build to alternate with")
    ap.add_argument("--guest", required=True)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--no-qemu", action="store_true")
    ap.add_argument("--blk-io", type=int, default=0)
    ap.add_argument("--rate", type=int, default=0)
    ap.add_argument("--cpuid-table", action="store_true")
    ap.add_argument("--baseline-args", default="")
    ap.add_argument("--with-disk", action="store_true")
    a = ap.parse_args()
    if a.rate:
        with tempfile.TemporaryDirectory() as d:
            creation_rate(a, d)
        return
    with_qemu = not a.no_qemu and shutil.which(QEMU)
    with tempfile.TemporaryDirectory() as d:
        disk = make_disk(d) if a.blk_io or a.with_disk else None
        cmdline = f"console=ttyS0 testguest.blk_io={a.blk_io}" if a.blk_io else \
            "console=ttyS0 testguest.quick=1"
        kinds = [("hull vmm", vmm_cmd(a.vmm, a.guest, cmdline, disk, cpuid_args(a, d)))]
        if a.baseline:
            kinds.append(("hull baseline", vmm_cmd(a.baseline, a.guest, cmdline, disk,
                                                   a.baseline_args.split())))
        if with_qemu:
            kinds.append(("qemu microvm", qemu_cmd(a.guest, cmdline, disk)))
        res = {k: [] for k, _ in kinds}
        for _ in range(a.runs):
            for name, cmd in kinds:
                res[name].append(run_once(cmd))
        med = lambda xs: statistics.median(xs)
        if a.blk_io:
            print(f"virtio-blk, {a.blk_io} x 4 KiB reads each (median TSC ticks of {a.runs} runs)")
            figs = {}
            for name, rs in res.items():
                seq, rnd = [], []
                for r in rs:
                    m = re.search(r"sequential (\d+) tsc, random (\d+) tsc", r[4])
                    if m:
                        seq.append(int(m.group(1)))
                        rnd.append(int(m.group(2)))
                if not seq:
                    print(f"{name}: no timing line in output:\n{rs[-1][4]}")
                    continue
                figs[name] = (med(seq), med(rnd))
                print(f"{name:14s} sequential {med(seq):>12.0f}  random {med(rnd):>12.0f}")
            if "hull vmm" in figs and "qemu microvm" in figs:
                h, q = figs["hull vmm"], figs["qemu microvm"]
                print(f"qemu/hull time ratio (>1 means hull is faster): "
                      f"sequential {q[0] / h[0]:.2f}, random {q[1] / h[1]:.2f}")
            return
        print(f"launch to exit, test guest quick mode, median of {a.runs} alternating runs")
        print(f"{'':14s} {'first byte':>11s} {'wall':>9s} {'CPU':>9s} {'peak RSS':>10s}")
        figs = {}
        for name, rs in res.items():
            f = (med([r[0] for r in rs]) * 1e3, med([r[1] for r in rs]) * 1e3,
                 med([r[2] for r in rs]) * 1e3, med([r[3] for r in rs]) / 1024)
            figs[name] = f
            print(f"{name:14s} {f[0]:9.1f}ms {f[1]:7.1f}ms {f[2]:7.1f}ms {f[3]:7.1f}MiB")
        for name in ("hull vmm", "hull baseline"):
            if name in figs and "qemu microvm" in figs:
                h, q = figs[name], figs["qemu microvm"]
                print(f"{name}/qemu ratio: wall {h[1] / q[1]:.2f}, "
                      f"CPU {h[2] / max(q[2], 1e-9):.3f}, RSS {h[3] / q[3]:.2f}")
        print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()

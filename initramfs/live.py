#!/usr/bin/env python3
"""Boots hull's live image under QEMU and drives its serial console.

Used by the live-image test tier (tests/live/run), the benchmark and scripts/demo; also a
command of its own:

    initramfs/live.py attach SOCKET    the serial console of a running machine (Ctrl-\ leaves)
    initramfs/live.py demo             scripts/demo's live part (see demo() below)

The serial port is a Unix socket (QEMU waits for the first client before it starts the
machine, so nothing of the boot is lost); everything read is also appended to a log file.
"""

import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIVE = os.path.join(TOP, "target", "live")
OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"
# Leaves `attach` (Ctrl-\): Ctrl-] is vmadm console's own escape, inside the machine.
ESCAPE = b"\x1c"
# Lines hull's boot scripts (say) and the kernel print on the console between commands.
CONSOLE_NOISE = re.compile(r"^(hull: |\[ *[0-9]+\.[0-9]+\] )")


class Timeout(Exception):
    """A pattern did not show up on the console in time."""


class Machine:
    """One QEMU machine with its serial console on a socket.

    boot: "kernel" (vmlinuz + initrd.img with `append`, PXE's way), or "bios"/"uefi" (from a
    USB stick holding `usb`, hull.img, through SeaBIOS or OVMF).
    """

    def __init__(self, workdir, name, boot="kernel", append="console=ttyS0 quiet", cpu="max",
                 accel="tcg", mem=3072, smp=2, disks=(), nics=("user",), usb=None,
                 extra=(), kernel=None, initrd=None):
        self.workdir = workdir
        self.name = name
        self.boot = boot
        self.append = append
        self.cpu = cpu
        self.accel = accel
        self.mem = mem
        self.smp = smp
        self.disks = list(disks)   # (path, interface): "virtio" or "sata"
        # "user"; ("user", model); ("dgram", qemu's socket, the peer's socket, model, mac):
        # frames as datagrams on Unix sockets, to a peer on the host side.
        self.nics = list(nics)
        self.usb = usb
        self.extra = list(extra)
        self.kernel = kernel or os.path.join(LIVE, "vmlinuz")
        self.initrd = initrd or os.path.join(LIVE, "initrd.img")
        self.serial_path = os.path.join(workdir, name + ".serial")
        self.monitor_path = os.path.join(workdir, name + ".monitor")
        self.log_path = os.path.join(workdir, name + ".console.log")
        self.proc = None
        self.sock = None
        self.buf = bytearray()
        self.pos = 0           # expect() searches from here
        self.cond = threading.Condition()
        self.started = None
        self.eof = False
        self.seq = 0
        self.echo = None       # called with each chunk read (the demo shows hull's lines)

    def argv(self):
        a = ["qemu-system-x86_64", "-M", "q35", "-cpu", self.cpu, "-accel", self.accel,
             "-m", str(self.mem), "-smp", str(self.smp), "-display", "none", "-no-user-config",
             "-chardev", f"socket,id=ser0,path={self.serial_path},server=on,wait=on",
             "-serial", "chardev:ser0",
             "-monitor", f"unix:{self.monitor_path},server=on,wait=off"]
        if self.boot == "kernel":
            a += ["-kernel", self.kernel, "-initrd", self.initrd, "-append", self.append]
        elif self.boot == "uefi":
            vars_copy = os.path.join(self.workdir, self.name + ".OVMF_VARS.fd")
            if not os.path.exists(vars_copy):
                shutil.copyfile(OVMF_VARS, vars_copy)
            a += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                  "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}"]
        if self.usb:
            a += ["-device", "qemu-xhci,id=xhci",
                  "-drive", f"if=none,id=stick,format=raw,readonly=on,file={self.usb}",
                  "-device", "usb-storage,bus=xhci.0,drive=stick,bootindex=0"]
        for i, (path, iface) in enumerate(self.disks):
            if iface == "sata":
                a += ["-drive", f"if=none,id=d{i},format=raw,file={path},cache=unsafe",
                      "-device", f"ide-hd,drive=d{i},bus=ide.{i}"]
            else:
                a += ["-drive", f"if=none,id=d{i},format=raw,file={path},cache=unsafe",
                      "-device", f"virtio-blk-pci,drive=d{i}"]
        for i, nic in enumerate(self.nics):
            if nic == "user":
                a += ["-nic", "user,model=virtio-net-pci"]
            elif nic[0] == "user":
                a += ["-nic", f"user,model={nic[1]}"]
            else:
                _, local, remote, model, mac = nic
                a += ["-netdev", f"dgram,id=n{i},local.type=unix,local.path={local},"
                      f"remote.type=unix,remote.path={remote}",
                      "-device", f"{model},netdev=n{i},mac={mac}"]
        return a + self.extra

    def start(self):
        for p in (self.serial_path, self.monitor_path):
            if os.path.exists(p):
                os.unlink(p)
        self.buf = bytearray()
        self.pos = 0
        self.eof = False
        qlog = open(os.path.join(self.workdir, self.name + ".qemu.log"), "ab")
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=qlog,
                                     stderr=qlog, start_new_session=True)
        for _ in range(200):
            if os.path.exists(self.serial_path):
                break
            if self.proc.poll() is not None:
                raise RuntimeError(f"qemu ended at once: see {qlog.name}")
            time.sleep(0.05)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.serial_path)
        self.started = time.monotonic()
        with open(self.log_path, "ab") as f:
            f.write(f"\n==== {self.name}: {' '.join(self.argv())}\n".encode())
        threading.Thread(target=self._reader, daemon=True).start()
        return self

    def _reader(self):
        with open(self.log_path, "ab", buffering=0) as log:
            while True:
                try:
                    data = self.sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    with self.cond:
                        self.eof = True
                        self.cond.notify_all()
                    return
                log.write(data)
                if self.echo:
                    self.echo(data)
                with self.cond:
                    self.buf += data
                    self.cond.notify_all()

    def text(self, start=0):
        with self.cond:
            return self.buf[start:].decode("utf-8", "replace").replace("\r", "")

    def expect(self, pattern, timeout=120, consume=True):
        """Waits until regex `pattern` appears after the cursor; returns the match (its text
        has \\r removed) and moves the cursor past it."""
        rx = re.compile(pattern.encode() if isinstance(pattern, str) else pattern, re.S | re.M)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                m = rx.search(self.buf, self.pos)
                if m:
                    if consume:
                        self.pos = m.end()
                    return m
                left = deadline - time.monotonic()
                if left <= 0 or self.eof:
                    tail = self.buf[-600:].decode("utf-8", "replace")
                    why = "the console closed" if self.eof else f"{timeout} s passed"
                    raise Timeout(f"{self.name}: waiting for {pattern!r}, {why}; last output:\n{tail}")
                self.cond.wait(min(left, 1))

    def send(self, text):
        self.sock.sendall(text.encode() if isinstance(text, str) else text)

    def login(self, password, timeout=300, expect_prompt=True):
        # A fresh prompt: the one getty printed may be behind the cursor already, or buried
        # under boot messages.
        deadline = time.monotonic() + timeout
        while True:
            self.send("\n")
            try:
                self.expect(r"login: $", 10)
                break
            except Timeout:
                if time.monotonic() > deadline:
                    raise
        self.send("root\n")
        self.expect(r"Password: ", 30)
        self.send(password + "\n")
        if not expect_prompt:
            return
        self.expect(r"\]# ", 30)
        # A wide terminal: long command lines are not wrapped by the line editor.
        self.run("stty cols 400 rows 50")

    def run(self, cmd, timeout=120, check=True):
        """Runs `cmd` in the logged-in shell; returns (status, output). The markers are split
        in the typed line so that only the shell's output matches them."""
        self.seq += 1
        n = self.seq
        sep = " " if cmd.rstrip().endswith("&") else "; "
        self.send(f'echo "<<""{n}>"; {cmd}{sep}echo "<{n}"":$?>>"\n')
        m = self.expect(rf"^<<{n}>\r?\n(.*?)<{n}:(\d+)>>", timeout)
        out = m.group(1).decode("utf-8", "replace").replace("\r", "")
        # The live image's own messages (say) and the kernel's reach the console at any
        # time: they are not the command's output.
        out = "".join(line for line in out.splitlines(keepends=True)
                      if not CONSOLE_NOISE.match(line))
        rc = int(m.group(2))
        if check and rc != 0:
            raise RuntimeError(f"{self.name}: `{cmd}` exited {rc}:\n{out}")
        return rc, out

    def answers(self, timeout=30):
        """Whether the console still answers: a typed newline brings any output back (getty's
        prompt again, a shell's). A machine whose kernel froze answers nothing."""
        with self.cond:
            before = len(self.buf)
        self.send("\n")
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.buf) == before and not self.eof:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 1))
            return len(self.buf) > before

    def monitor_query(self, cmd, wait=3):
        """QEMU's monitor's answer to `cmd` (its banner included)."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(self.monitor_path)
        s.settimeout(wait)
        s.sendall(cmd.encode() + b"\n")
        out = bytearray()
        try:
            while True:
                data = s.recv(65536)
                if not data:
                    break
                out += data
        except OSError:
            pass
        s.close()
        return out.decode("utf-8", "replace").replace("\r", "")

    def monitor(self, cmd):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(self.monitor_path)
        s.settimeout(5)
        s.sendall(cmd.encode() + b"\n")
        time.sleep(0.5)
        s.close()

    def kill(self):
        """Pulls the plug: SIGKILL, no shutdown of any kind."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.close()

    def wait_exit(self, timeout):
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        self.close()
        return True

    def close(self):
        if self.sock:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None


def attach(path):
    """The serial console on the terminal, raw, until Ctrl-\\."""
    import termios
    import tty
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    interactive = sys.stdin.isatty()
    if interactive:
        old = termios.tcgetattr(0)
        tty.setraw(0)
        os.write(1, b"\r\n[connected to the hull console; Ctrl-\\ leaves, the machine keeps running]\r\n")
    else:
        old = None
    s.sendall(b"\n")
    try:
        while True:
            r, _, _ = select.select([0, s], [], [])
            if s in r:
                data = s.recv(65536)
                if not data:
                    break
                os.write(1, data)
            if 0 in r:
                data = os.read(0, 1024)
                if not data or ESCAPE in data:
                    data = data.split(ESCAPE)[0]
                    if data:
                        s.sendall(data)
                    break
                s.sendall(data)
    finally:
        if old is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, old)
            os.write(1, b"\r\n[left the hull console]\r\n")
    return 0


def kvm_for_live():
    """(accel, cpu, why): KVM where this host's /dev/kvm is hardware virtualization with
    nested virtualization on (the live image's microVMs need a /dev/kvm of their own), TCG
    with -cpu max otherwise (this machine kind's nested "PVM" /dev/kvm cannot boot a stock
    kernel)."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg", "max", "no usable /dev/kvm"
    for mod in ("kvm_intel", "kvm_amd"):
        if os.path.isdir(f"/sys/module/{mod}"):
            try:
                nested = open(f"/sys/module/{mod}/parameters/nested").read().strip()
            except OSError:
                nested = "N"
            if nested in ("Y", "1"):
                return "kvm", "host", f"{mod} with nested virtualization"
            return "tcg", "max", f"{mod} has nested virtualization off (microVMs inside need it)"
    return "tcg", "max", "/dev/kvm is not hardware virtualization (kvm_intel/kvm_amd)"


def qemu_running(pidfile):
    try:
        pid = int(open(pidfile).read())
        cmd = open(f"/proc/{pid}/cmdline", "rb").read()
    except (OSError, ValueError):
        return None
    return pid if b"qemu-system-x86_64" in cmd and os.path.dirname(pidfile).encode() in cmd else None


def demo():
    """Boots target/live's image under QEMU with a pool on target/live/demo/pool.img (made on
    the first run: hull.setup=auto, root's password generated and kept in
    target/live/demo/root-password, only its hash on the command line), makes sure the demo
    guests exist (a busybox zone and a microVM of the bundled kit on an internal switch,
    both autoboot), shows them answering each other, and then hands over the serial
    console when run from a terminal; otherwise QEMU keeps running in the background and
    this prints how to attach. A second run attaches to the machine that still runs."""
    work = os.path.join(LIVE, "demo")
    os.makedirs(work, mode=0o700, exist_ok=True)
    pidfile = os.path.join(work, "qemu.pid")
    serial = os.path.join(work, "demo.serial")
    pwfile = os.path.join(work, "root-password")
    tty = sys.stdin.isatty() and sys.stdout.isatty()

    def how():
        pid = qemu_running(pidfile)
        print(f"the live image runs under QEMU (pid {pid}); its log: {work}/demo.qemu.log")
        print(f"  console:  initramfs/live.py attach {os.path.relpath(serial)}   (Ctrl-\\ leaves it running)")
        print(f"  login:    root, password in {os.path.relpath(pwfile)}")
        print(f"  stop:     poweroff on the console (guests stop first), or kill {pid}")

    if qemu_running(pidfile):
        print("== the live image is running already")
        how()
        return attach(serial) if tty else 0
    if not os.path.exists(pwfile):
        import secrets
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, (secrets.token_urlsafe(12) + "\n").encode())
        os.close(fd)
    pw = open(pwfile).read().strip()
    try:
        import warnings
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # Python 3.11 (bookworm); the image hashes a plain password itself
        rootpw = crypt.crypt(pw, crypt.mksalt(crypt.METHOD_SHA512))
    except ImportError:
        rootpw = pw
    pool = os.path.join(work, "pool.img")
    if not os.path.exists(pool):
        with open(pool, "wb") as f:
            f.truncate(8 << 30)
    accel, cpu, why = kvm_for_live()
    print(f"== booting the live image under QEMU ({accel}, -cpu {cpu}: {why}); pool {os.path.relpath(pool)}")
    m = Machine(work, "demo", accel=accel, cpu=cpu, disks=[(pool, "virtio")],
                append=f"console=ttyS0 quiet hull.pool=vda hull.setup=auto hull.rootpw={rootpw} hull.hostname=hull-demo")
    pending = bytearray()

    def show(data):
        pending.extend(data)
        while b"\n" in pending:
            line, _, rest = bytes(pending).partition(b"\n")
            pending[:] = rest
            text = line.decode("utf-8", "replace").strip("\r")
            if text.startswith("hull: "):
                print("   " + text, flush=True)

    m.echo = show
    m.start()
    with open(pidfile, "w") as f:
        f.write(str(m.proc.pid))
    m.expect(r"vmmd answering", 900)
    m.echo = None
    m.login(pw)
    kit = "/usr/share/hull/guest"
    img = "/usr/share/hull/images/busybox"
    print("== on the live image's console: the demo guests (imgadm install, nictagadm, vmadm create)")
    script = [
        f"[ -n \"$(imgadm list -H -o uuid name=busybox)\" ] || imgadm install -m {img}/manifest.json -f {img}/busybox.tar.gz > /dev/null",
        "nictagadm list -H -p | grep -q '^internal:' || nictagadm add -l internal",
        "[ -n \"$(vmadm lookup alias=demo-zone)\" ] || echo '{\"brand\": \"joyent-minimal\", \"alias\": \"demo-zone\", "
        "\"image_uuid\": \"'$(imgadm list -H -o uuid name=busybox)'\", \"hostname\": \"demo-zone\", \"max_physical_memory\": 128, "
        "\"nics\": [{\"nic_tag\": \"internal\", \"ips\": [\"192.0.2.10/24\"]}]}' | vmadm create",
        "[ -n \"$(vmadm lookup alias=demo-vm)\" ] || echo '{\"brand\": \"kvm\", \"alias\": \"demo-vm\", \"ram\": 256, \"vcpus\": 1, "
        f"\"kernel\": \"{kit}/vmlinuz\", \"initrd\": \"{kit}/initrd.img\", "
        "\"cmdline\": \"console=ttyS0 quiet panic=-1 pci=off hull.ip=192.0.2.20/24 hull.hostname=demo-vm\", "
        "\"disks\": [{\"size\": 64, \"boot\": true}], \"nics\": [{\"nic_tag\": \"internal\", \"ips\": [\"192.0.2.20/24\"]}]}' | vmadm create",
    ]
    for line in script:
        rc, out = m.run(line, timeout=600, check=False)
        if rc != 0:
            print(f"   failed ({rc}): {line}\n{out}")
            return 1
    print("== the zone pings the microVM (Debian's stock kernel, booting under nested KVM)")
    rc, out = m.run("z=$(vmadm lookup -1 alias=demo-zone); for i in $(seq 120); do "
                    "zlogin $z ping -c 1 -W 2 192.0.2.20 > /dev/null 2>&1 && { zlogin $z ping -c 2 192.0.2.20; break; }; "
                    "sleep 2; done", timeout=900, check=False)
    print("\n".join("   " + x for x in out.strip().splitlines()))
    rc, out = m.run("vmadm list", check=False)
    print("== vmadm list on the live image\n" + "\n".join("   " + x for x in out.strip().splitlines()))
    if not tty:
        m.send("exit\n")
        time.sleep(1)
    m.close()
    how()
    if tty:
        print("You are root on the live image's console: try vmadm list, zlogin, vmadm console (Ctrl-] leaves those).")
        return attach(serial)
    return 0


def main(argv):
    if len(argv) == 3 and argv[1] == "attach":
        return attach(argv[2])
    if len(argv) == 2 and argv[1] == "demo":
        return demo()
    print(__doc__.strip(), file=sys.stderr)
    return 2


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main(sys.argv))

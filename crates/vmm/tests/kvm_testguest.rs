//! KVM tier: runs the real `vmm` binary on the freestanding test guest (images/testguest).
//! Needs /dev/kvm, so every test is ignored by default; run with
//! `cargo nextest run -p hull-vmm --run-ignored all`.

// Test helpers: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const VMM: &str = env!("CARGO_BIN_EXE_vmm");
const GUEST: &str = env!("HULL_TESTGUEST");
const DISK_SECTORS: usize = 8192;

fn guest() -> &'static str {
    assert!(
        !GUEST.is_empty() && Path::new(GUEST).exists(),
        "the test guest was not built (is gcc installed?): {GUEST:?}"
    );
    GUEST
}

/// A raw disk with the magic the guest checks in sector 0.
/// What the test guest's block checks leave in a writable image: its pattern in sector 1,
/// 0x5a in sectors 10-15 and zeroes in 8-9 (written, then write-zeroed), all sectors there.
fn assert_guest_writes(data: &[u8]) {
    assert_eq!(data.len(), DISK_SECTORS * 512);
    assert_eq!(&data[512..521], b"HULLWROTE");
    assert!(data[8 * 512..10 * 512].iter().all(|&b| b == 0));
    assert!(data[10 * 512..16 * 512].iter().all(|&b| b == 0x5a));
}

fn make_disk(dir: &Path) -> PathBuf {
    let p = dir.join("disk.img");
    let mut data = vec![0u8; DISK_SECTORS * 512];
    data[..8].copy_from_slice(b"HULLDISK");
    std::fs::write(&p, &data).unwrap();
    p
}

/// An initrd the guest recognises: magic plus its own length.
fn make_initrd(dir: &Path) -> PathBuf {
    let p = dir.join("initrd.img");
    let size = 12_345u64;
    let mut data = vec![0x11u8; size as usize];
    data[..8].copy_from_slice(b"HULLRD01");
    data[8..16].copy_from_slice(&size.to_le_bytes());
    std::fs::write(&p, &data).unwrap();
    p
}

/// Answers the guest's "ping" frame with a "pong" frame. Datagram socket pairs see no EOF
/// when the VMM exits, so this stops after the first answer (or a timeout). Returns the
/// answers sent and the DHCP client frames (IPv4, UDP to port 67) that reached the peer.
fn spawn_echo(peer: UnixDatagram) -> std::thread::JoinHandle<(usize, usize)> {
    std::thread::spawn(move || {
        peer.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut buf = [0u8; 2048];
        let mut dhcp = 0;
        while let Ok(n) = peer.recv(&mut buf) {
            let frame = &mut buf[..n];
            if n > 38 && frame[12..14] == [8, 0] && frame[23] == 17 && frame[36..38] == [0, 67] {
                dhcp += 1;
            }
            if let Some(pos) = frame.windows(18).position(|w| w == b"hull-net-test ping") {
                frame[pos + 14..pos + 18].copy_from_slice(b"pong");
                return (usize::from(peer.send(frame).is_ok()), dhcp);
            }
        }
        (0, dhcp)
    })
}

/// Runs vmm with `args`; when `net` is given, its fd becomes fd 3 in the child.
fn run_vmm(args: &[&str], net: Option<&UnixDatagram>) -> Output {
    let mut cmd = Command::new(VMM);
    cmd.args(args).stdin(Stdio::null());
    if let Some(sock) = net {
        let fd = sock.as_raw_fd();
        // SAFETY: dup2 is async-signal-safe; it runs in the forked child before exec and
        // only duplicates an fd the parent keeps open.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Reads an `--exit-file` record and checks its detail is the last stderr line.
fn exit_record(path: &Path, stderr: &str) -> (String, String) {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    assert_eq!(v.as_object().unwrap().len(), 2, "{v}");
    let (reason, detail) = (
        v["reason"].as_str().unwrap().to_owned(),
        v["detail"].as_str().unwrap().to_owned(),
    );
    let last = stderr.lines().last().unwrap_or_default();
    assert_eq!(
        last.strip_prefix("vmm: "),
        Some(detail.as_str()),
        "{stderr}"
    );
    // Only the record is left in its directory: the temp file was renamed over it.
    let dir = path.parent().unwrap();
    assert_eq!(std::fs::read_dir(dir).unwrap().count(), 1, "{dir:?}");
    (reason, detail)
}

fn assert_pass(out: &str, line: &str) {
    assert!(
        out.lines()
            .any(|l| l.contains("testguest: PASS") && l.contains(line)),
        "missing PASS line containing {line:?} in:\n{out}"
    );
}

fn full_run(vcpus: u32) {
    let dir = tempfile::tempdir().unwrap();
    let disk = make_disk(dir.path());
    let initrd = make_initrd(dir.path());
    let (ours, theirs) = UnixDatagram::pair().unwrap();
    let echo = spawn_echo(ours);
    let cmdline =
        format!("console=ttyS0 testguest.cpus={vcpus} testguest.net_echo=1 testguest.dhcp=1");
    // The VMM answers the guest's DHCP itself; nothing of it reaches the network.
    let lease = r#"{"nic":0,"address":"192.0.2.31","prefix":24,"routers":["192.0.2.1"],"dns":["192.0.2.53"],"hostname":"tg","lease_secs":600}"#;
    let vc = vcpus.to_string();
    let out = run_vmm(
        &[
            "--kernel",
            guest(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--vcpus",
            &vc,
            "--mem-mib",
            "64",
            "--disk",
            disk.to_str().unwrap(),
            "--tap-fd",
            "3",
            "--dhcp",
            lease,
            "--cmdline",
            &cmdline,
        ],
        Some(&theirs),
    );
    drop(theirs);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "vmm failed: {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        text(&out.stderr)
    );
    for line in [
        "zeropage: setup header",
        "e820: map present",
        "cmdline: ",
        "initrd: at",
        "cpuid: bsp apic id 0",
        &format!("mptable: {vcpus} enabled cpus"),
        "blk0: read sector 0, magic HULLDISK",
        "blk0: write sector 1",
        "blk0: read sectors 0-1 through split buffers, data matches",
        "blk0: write-zeroes sectors 8-9, the rest of the block kept",
        "blk0: write-zeroes with an unknown flag refused with UNSUPP",
        "blk0: discard sectors 16-23",
        "blk0: flush",
        "blk0: get-id \"hull-vda\"",
        "blk0: read past the end refused",
        "rng: read 64 random bytes",
        "net: sent a frame",
        "net: received the peer's answer",
        "dhcp: 192.0.2.31/24 router 192.0.2.1 dns 192.0.2.53 hostname tg",
        &format!("acpi: hardware-reduced FADT, MADT {vcpus} cpus, DSDT 3 LNRO0005 devices"),
    ] {
        assert_pass(&stdout, line);
    }
    if vcpus > 1 {
        // The guest started its APs with INIT-SIPI-SIPI through a real-mode trampoline.
        assert_pass(
            &stdout,
            &format!("smp: {} application processor(s) started", vcpus - 1),
        );
    }
    assert!(stdout.contains("magic and length match"), "{stdout}");
    assert!(stdout.contains("testguest: ALL PASS"), "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
    // The guest's writes and write-zeroes reached the host file.
    assert_guest_writes(&std::fs::read(&disk).unwrap());
    let (answered, dhcp) = echo.join().unwrap();
    assert!(answered >= 1, "the guest's frame never reached the peer");
    assert_eq!(dhcp, 0, "DHCP frames leaked to the network");
}

#[test]
#[ignore = "needs /dev/kvm: run with --run-ignored"]
fn kvm_testguest_passes_with_1_vcpu() {
    full_run(1);
}

#[test]
#[ignore = "needs /dev/kvm: run with --run-ignored"]
fn kvm_testguest_passes_with_2_vcpus() {
    full_run(2);
}

/// The metadata agent's side of COM2 for one run: connects to the VMM's `--metadata`
/// socket only after `late` (the guest has written by then: the VMM must have kept it) and
/// answers as vmmd's agent would, with hull-mdata's codec. Returns the lines it got.
fn spawn_agent(
    path: PathBuf,
    uuid: &'static str,
    late: Duration,
) -> std::thread::JoinHandle<Vec<String>> {
    use hull_mdata::{Answer, Incoming, Request};
    std::thread::spawn(move || {
        std::thread::sleep(late);
        let t = Instant::now();
        let stream = loop {
            match UnixStream::connect(&path) {
                Ok(s) => break s,
                Err(_) if t.elapsed() < Duration::from_secs(10) => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("cannot reach {path:?}: {e}"),
            }
        };
        let mut out = stream.try_clone().unwrap();
        let mut seen = Vec::new();
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let reply = match hull_mdata::parse_request(line.as_bytes()) {
                Incoming::InvalidCommand => hull_mdata::INVALID_COMMAND.to_vec(),
                Incoming::Negotiate { v2 } => hull_mdata::encode_negotiate(v2).to_vec(),
                Incoming::V2 { reqid, request } => {
                    let answer = match request {
                        Ok(Request::Get(k)) if k == "sdc:uuid" => Answer::Value(uuid.into()),
                        _ => Answer::NotFound,
                    };
                    hull_mdata::encode_v2(&reqid, &answer)
                }
                other => panic!("unexpected from the guest: {other:?}"),
            };
            seen.push(line);
            if out.write_all(&reply).is_err() {
                break;
            }
        }
        seen
    })
}

#[test]
#[ignore = "needs /dev/kvm: run with --run-ignored"]
fn kvm_testguest_finds_smbios_and_reads_metadata_over_com2() {
    const UUID: &str = "9f4c2d1e-0a0b-4c0d-8e0f-102030405060";
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("metadata.sock");
    let agent = spawn_agent(sock.clone(), UUID, Duration::from_millis(300));
    let o = run_vmm(
        &[
            "--kernel",
            guest(),
            "--cmdline",
            "console=ttyS0 testguest.mdata=1 testguest.smp=0",
            "--uuid",
            UUID,
            "--metadata",
            &sock.to_string_lossy(),
        ],
        None,
    );
    let out = text(&o.stdout);
    assert!(
        o.status.success(),
        "{out}
{}",
        text(&o.stderr)
    );
    assert_pass(
        &out,
        &format!("smbios: Joyent SmartDC HVM, a virtual machine, serial {UUID}"),
    );
    assert_pass(
        &out,
        &format!("mdata: COM2 negotiated V2, sdc:uuid {UUID}, the SMBIOS serial"),
    );
    assert!(out.contains("testguest: ALL PASS"), "{out}");
    let seen = agent.join().unwrap();
    assert_eq!(seen[..2], ["", "NEGOTIATE V2"], "{seen:?}");
}

#[test]
#[ignore = "needs /dev/kvm: run with --run-ignored"]
fn kvm_read_only_disk_refuses_guest_writes() {
    let dir = tempfile::tempdir().unwrap();
    let disk = make_disk(dir.path());
    let before = std::fs::read(&disk).unwrap();
    let ro = format!("{},ro", disk.display());
    let out = run_vmm(&["--kernel", guest(), "--disk", &ro], None);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert_pass(
        &stdout,
        "blk0: write to a read-only disk refused with IOERR",
    );
    assert!(stdout.contains("testguest: ALL PASS"), "{stdout}");
    assert_eq!(std::fs::read(&disk).unwrap(), before);
}

#[test]
#[ignore = "needs /dev/kvm: run with --run-ignored"]
fn kvm_acpi_power_off_ends_the_vm_cleanly() {
    let out = run_vmm(
        &[
            "--kernel",
            guest(),
            "--cmdline",
            "console=ttyS0 testguest.exit=acpi",
        ],
        None,
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("testguest: powering off through ACPI"),
        "{stdout}"
    );
    assert!(stderr.contains("vmm: guest powered off"), "{stderr}");
}

#[test]
#[ignore = "needs /dev/kvm: run with --run-ignored"]
fn kvm_exit_file_says_reset_or_power_off() {
    for (mode, status, reason, detail) in [
        ("testguest.quick=1", 0, "reset", "guest reset"),
        ("testguest.exit=acpi", 0, "poweroff", "guest powered off"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let exit = dir.path().join("exit.json");
        let cmdline = format!("console=ttyS0 {mode}");
        let out = run_vmm(
            &[
                "--kernel",
                guest(),
                "--cmdline",
                &cmdline,
                "--exit-file",
                exit.to_str().unwrap(),
            ],
            None,
        );
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(status), "{stderr}");
        assert_eq!(
            exit_record(&exit, &stderr),
            (reason.to_owned(), detail.to_owned())
        );
    }
}

#[test]
#[ignore = "needs /dev/kvm: run with --run-ignored"]
fn kvm_exit_file_says_error_for_a_bad_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let exit = dir.path().join("exit.json");
    let out = run_vmm(
        &[
            "--kernel",
            "/nonexistent/hull-kernel",
            "--exit-file",
            exit.to_str().unwrap(),
        ],
        None,
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let (reason, detail) = exit_record(&exit, &stderr);
    assert_eq!(reason, "error");
    assert!(
        detail.starts_with("error: ")
            && detail.contains("cannot read kernel /nonexistent/hull-kernel"),
        "{detail}"
    );
    // An exit file that cannot be prepared is an error before anything else happens.
    let out = run_vmm(
        &[
            "--kernel",
            guest(),
            "--exit-file",
            "/nonexistent/hull/exit.json",
        ],
        None,
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("/nonexistent/hull"), "{stderr}");
    assert!(out.stdout.is_empty(), "the guest never ran");
}

#[test]
#[ignore = "needs /dev/kvm: run with --run-ignored"]
fn kvm_bad_kernel_path_is_a_clear_error() {
    let out = run_vmm(&["--kernel", "/nonexistent/hull-kernel"], None);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot read kernel /nonexistent/hull-kernel"),
        "{stderr}"
    );
    assert!(stderr.contains("No such file"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk");
    std::fs::write(&junk, vec![0x5au8; 4096]).unwrap();
    let out = run_vmm(&["--kernel", junk.to_str().unwrap()], None);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("is not a loadable x86-64 ELF or bzImage"),
        "{stderr}"
    );
}

#[test]
#[ignore = "needs /dev/kvm: run with --run-ignored"]
fn kvm_bad_disk_path_is_a_clear_error() {
    let out = run_vmm(
        &["--kernel", guest(), "--disk", "/nonexistent/disk.img"],
        None,
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot open disk image /nonexistent/disk.img"),
        "{stderr}"
    );
}

#[test]
#[ignore = "needs /dev/kvm: run with --run-ignored"]
fn kvm_a_saved_cpuid_table_stands_in_for_asking_kvm() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("cpuid");
    let t = table.to_str().unwrap();
    let out = run_vmm(&["--save-cpuid", t], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(std::fs::read(&table).unwrap().starts_with(b"HULLCPU1"));
    // The guest sees the same CPUID either way: its checks (topology of 2 vCPUs, the
    // hypervisor bit, the APs' CPUID) pass.
    let out = run_vmm(
        &[
            "--kernel",
            guest(),
            "--vcpus",
            "2",
            "--cpuid",
            t,
            "--cmdline",
            "console=ttyS0 testguest.cpus=2",
        ],
        None,
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("testguest: ALL PASS"), "{stdout}");
    assert_pass(&stdout, "smp: 1 application processor");
    // A damaged table is bad input, named as such.
    let bytes = std::fs::read(&table).unwrap();
    std::fs::write(&table, &bytes[..bytes.len() - 3]).unwrap();
    let out = run_vmm(&["--kernel", guest(), "--cpuid", t], None);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is not a CPUID table"), "{stderr}");
}

/// The test guest as the compressed payload of a bzImage-shaped file (boot protocol 2.15,
/// xz, the uncompressed size appended as the kernel build does).
fn guest_in_a_bzimage() -> Vec<u8> {
    use std::io::Write as _;
    let elf = std::fs::read(guest()).unwrap();
    let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 6);
    xz.write_all(&elf).unwrap();
    let payload = xz.finish().unwrap();
    let mut img = vec![0u8; 5 * 512];
    img[0x1f1] = 4;
    img[0x202..0x206].copy_from_slice(b"HdrS");
    img[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
    img[0x248..0x24c].copy_from_slice(&0x200u32.to_le_bytes());
    img[0x24c..0x250].copy_from_slice(&(payload.len() as u32 + 4).to_le_bytes());
    img.resize(5 * 512 + 0x200, 0);
    img.extend_from_slice(&payload);
    img.extend_from_slice(&(elf.len() as u32).to_le_bytes());
    img
}

#[test]
#[ignore = "needs /dev/kvm: run with --run-ignored"]
fn kvm_an_extracted_vmlinux_is_the_kernel_and_boots() {
    let dir = tempfile::tempdir().unwrap();
    let bz = dir.path().join("vmlinuz");
    std::fs::write(&bz, guest_in_a_bzimage()).unwrap();
    let out = dir.path().join("vmlinux");
    let o = run_vmm(
        &[
            "--kernel",
            bz.to_str().unwrap(),
            "--extract-vmlinux",
            out.to_str().unwrap(),
        ],
        None,
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(guest()).unwrap()
    );
    let o = run_vmm(
        &[
            "--kernel",
            out.to_str().unwrap(),
            "--cmdline",
            "console=ttyS0",
        ],
        None,
    );
    let stdout = text(&o.stdout);
    assert!(o.status.success(), "{stdout}{}", text(&o.stderr));
    assert!(stdout.contains("testguest: ALL PASS"), "{stdout}");
    // An existing output is never overwritten; an ELF has nothing to extract (exit 3, and
    // no output file).
    let o = run_vmm(
        &[
            "--kernel",
            bz.to_str().unwrap(),
            "--extract-vmlinux",
            out.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let none = dir.path().join("none");
    let o = run_vmm(
        &[
            "--kernel",
            guest(),
            "--extract-vmlinux",
            none.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("nothing to extract"));
    assert!(!none.exists());
}

#[test]
#[ignore = "needs /dev/kvm: run with --run-ignored"]
fn kvm_triple_fault_is_reported_not_crashed() {
    let dir = tempfile::tempdir().unwrap();
    let exit = dir.path().join("exit.json");
    let out = run_vmm(
        &[
            "--kernel",
            guest(),
            "--cmdline",
            "console=ttyS0 testguest.fault=1",
            "--exit-file",
            exit.to_str().unwrap(),
        ],
        None,
    );
    let stderr = text(&out.stderr);
    assert_eq!(exit_record(&exit, &stderr).0, "fault");
    assert!(text(&out.stdout).contains("triple-faulting on request"));
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    // Real KVM reports KVM_EXIT_SHUTDOWN; this host's nested PVM KVM fails to emulate the
    // faulting delivery instead and reports an internal error. Both must end the VM cleanly.
    assert!(
        stderr.contains("vmm: guest stopped abnormally: vCPU 0: guest triple fault")
            || stderr.contains("vmm: guest stopped abnormally: vCPU 0: KVM internal error"),
        "{stderr}"
    );
    // Where KVM says triple fault, the VMM says where the guest was: its empty IDT.
    if stderr.contains("guest triple fault") {
        assert!(
            stderr.contains("vmm: vCPU 0 at its triple fault: rip ")
                && stderr.contains("idt 0x0+0x0"),
            "{stderr}"
        );
    }
}

/// Kills a VMM child if the test panics before waiting for it, so a failed test does not
/// leave a holding guest behind.
struct KillOnPanic(u32);

impl Drop for KillOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let pid = self.0 as i32;
        // SAFETY: waitpid/kill on a pid this test process spawned; WNOHANG returns 0 only
        // while it is still our unreaped child, so a reaped (reusable) pid is never killed.
        unsafe {
            if libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) == 0 {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
        }
    }
}

fn wait_for(path: &Path) {
    let t = Instant::now();
    while !path.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn request(s: &mut BufReader<UnixStream>, line: &str) -> serde_json::Value {
    s.get_mut()
        .write_all(format!("{line}\n").as_bytes())
        .unwrap();
    let mut reply = String::new();
    s.read_line(&mut reply).unwrap();
    serde_json::from_str(&reply).unwrap()
}

/// Where [`start_holding`] asks for the exit file: a directory of its own.
fn holding_exit_file(dir: &Path) -> PathBuf {
    dir.join("exit").join("exit.json")
}

/// Starts a guest that halts after its checks, with a control socket and an exit file
/// ([`holding_exit_file`]), and waits until it says it is holding. Returns the child (stdout
/// already consumed) and the socket path.
fn start_holding(dir: &Path, vcpus: &str) -> (std::process::Child, PathBuf, KillOnPanic) {
    start_holding_with(dir, vcpus, "")
}

/// [`start_holding`] with more test guest switches on its command line.
fn start_holding_with(
    dir: &Path,
    vcpus: &str,
    switches: &str,
) -> (std::process::Child, PathBuf, KillOnPanic) {
    start_holding_args(dir, vcpus, switches, &[])
}

/// [`start_holding_with`] with more `vmm` arguments.
fn start_holding_args(
    dir: &Path,
    vcpus: &str,
    switches: &str,
    extra: &[&str],
) -> (std::process::Child, PathBuf, KillOnPanic) {
    let ctl = dir.join("ctl.sock");
    let disk = make_disk(dir);
    let exit = holding_exit_file(dir);
    std::fs::create_dir(exit.parent().unwrap()).unwrap();
    let mut child = Command::new(VMM)
        .args([
            "--kernel",
            guest(),
            "--vcpus",
            vcpus,
            "--disk",
            disk.to_str().unwrap(),
            "--control",
            ctl.to_str().unwrap(),
            "--cmdline",
            &format!("console=ttyS0 testguest.hold=1 {switches}"),
            "--exit-file",
            exit.to_str().unwrap(),
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("testguest: holding") {
                let _ = tx.send(());
            }
        }
    });
    let guard = KillOnPanic(child.id());
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the guest never reached its holding point");
    wait_for(&ctl);
    (child, ctl, guard)
}

#[test]
#[ignore = "needs /dev/kvm: run with --run-ignored"]
fn kvm_writes_acknowledged_before_a_flush_survive_a_killed_vmm() {
    // The guest writes, write-zeroes and flushes, then holds; the VMM then dies by SIGKILL,
    // as in a pulled plug of the VMM: what the flush covered must be in the image. Both
    // ways a disk's data moves: io_uring (where this kernel has it) and the I/O thread.
    for engine in [expected_disk_io(), "threads"] {
        let dir = tempfile::tempdir().unwrap();
        let (mut child, ctl, _guard) =
            start_holding_args(dir.path(), "1", "", &["--disk-io", engine]);
        let mut s = BufReader::new(UnixStream::connect(&ctl).unwrap());
        let r = request(&mut s, r#"{"cmd":"stats"}"#);
        assert_eq!(r["stats"]["disk_io"], engine, "{r}");
        if engine == "threads" {
            // The pool's workers, each under one filter of its own.
            let mut workers = 0;
            for t in std::fs::read_dir(format!("/proc/{}/task", child.id())).unwrap() {
                let path = t.unwrap().path();
                let comm = std::fs::read_to_string(path.join("comm")).unwrap();
                if comm.trim() == "disk-worker" {
                    let status = std::fs::read_to_string(path.join("status")).unwrap();
                    assert!(status.contains("Seccomp_filters:\t1"), "{status}");
                    workers += 1;
                }
            }
            assert_eq!(workers, 4);
        }
        // SAFETY: kill(2) on the child we started and have not yet reaped.
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGKILL) }, 0);
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
        assert_guest_writes(&std::fs::read(dir.path().join("disk.img")).unwrap());
    }
}

/// How `vmm --disk-io auto` moves disk data on this host: io_uring unless the kernel
/// switched it off.
fn expected_disk_io() -> &'static str {
    match std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        Ok(v) if v.trim() != "0" => "threads",
        _ => "io_uring",
    }
}

#[test]
#[ignore = "needs /dev/kvm: run with --run-ignored"]
fn kvm_disk_io_auto_takes_io_uring_and_io_uring_without_one_is_refused() {
    // Where the kernel has io_uring, `auto` (the default) uses it; where it is switched off,
    // asking for it is an error that says so (a VM never silently falls back then).
    if expected_disk_io() == "io_uring" {
        let dir = tempfile::tempdir().unwrap();
        let (child, ctl, _guard) = start_holding(dir.path(), "1");
        let mut s = BufReader::new(UnixStream::connect(&ctl).unwrap());
        let r = request(&mut s, r#"{"cmd":"stats"}"#);
        assert_eq!(
            r["stats"]["disk_io"], "io_uring",
            "auto takes the ring: {r}"
        );
        assert_eq!(request(&mut s, r#"{"cmd":"shutdown"}"#)["ok"], true);
        assert!(child.wait_with_output().unwrap().status.success());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = make_disk(dir.path());
    let out = run_vmm(
        &[
            "--kernel",
            guest(),
            "--disk",
            disk.to_str().unwrap(),
            "--disk-io",
            "io_uring",
        ],
        None,
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("io_uring for the disks"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
#[ignore = "needs /dev/kvm: run with --run-ignored"]
fn kvm_the_balloon_frees_what_the_guest_gives_and_takes_a_new_target() {
    // The guest fills 1 MiB, gives it, reads zeroes back (the host freed it) and takes it
    // back.
    let out = run_vmm(
        &["--kernel", guest(), "--mem-mib", "64", "--balloon", "1"],
        None,
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    for line in [
        "balloon: target 256 pages",
        "balloon: inflated 256 pages",
        "balloon: inflated pages read back as zeroes: the host freed them",
        "balloon: deflated",
    ] {
        assert_pass(&stdout, line);
    }
    assert!(stdout.contains("testguest: ALL PASS"), "{stdout}");
    // The same, counted by the VMM, and a new target through the control socket.
    let dir = tempfile::tempdir().unwrap();
    let (mut child, ctl, _guard) =
        start_holding_args(dir.path(), "1", "", &["--balloon", "1", "--mem-mib", "64"]);
    let mut s = BufReader::new(UnixStream::connect(&ctl).unwrap());
    let r = request(&mut s, r#"{"cmd":"stats"}"#);
    let b = &r["stats"]["balloon"];
    assert_eq!(b["target_bytes"], 1 << 20, "{r}");
    assert_eq!(b["inflated_bytes"], 1 << 20, "{r}");
    assert_eq!(b["deflated_bytes"], 1 << 20, "{r}");
    assert_eq!(b["actual_bytes"], 0, "{r}");
    assert_eq!(b["errors"], 0, "{r}");
    let r = request(&mut s, r#"{"cmd":"balloon","target_mib":32}"#);
    assert_eq!(r["ok"], true, "{r}");
    let r = request(&mut s, r#"{"cmd":"stats"}"#);
    assert_eq!(r["stats"]["balloon"]["target_bytes"], 32 << 20, "{r}");
    let r = request(&mut s, r#"{"cmd":"balloon","target_mib":65}"#);
    assert_eq!(
        r["error"], "balloon target 65 MiB is more than the guest's 64 MiB",
        "{r}"
    );
    assert_eq!(request(&mut s, r#"{"cmd":"shutdown"}"#)["ok"], true);
    assert!(child.wait().unwrap().success());
    // A balloon bigger than the guest is refused before anything runs.
    let out = run_vmm(
        &["--kernel", guest(), "--mem-mib", "64", "--balloon", "65"],
        None,
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("balloon target 65 MiB is more than the guest's 64 MiB"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
#[ignore = "needs /dev/kvm: run with --run-ignored"]
fn kvm_serial_batching_ends_when_the_guest_enables_uart_interrupts() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, ctl, _guard) = start_holding_with(dir.path(), "1", "testguest.uart_ier=1");
    let mut s = BufReader::new(UnixStream::connect(&ctl).unwrap());
    let r = request(&mut s, r#"{"cmd":"stats"}"#);
    // Only the first line went through KVM's ring; everything after the IER write exited,
    // and none of it was lost (start_holding saw "testguest: holding").
    let batched = r["stats"]["serial_batched"].as_u64().unwrap();
    assert!((1..=80).contains(&batched), "{r}");
    assert!(
        r["stats"]["vcpus"][0]["exits_io"].as_u64().unwrap() > 500,
        "{r}"
    );
    assert_eq!(request(&mut s, r#"{"cmd":"shutdown"}"#)["ok"], true);
    assert!(child.wait().unwrap().success());
}

#[test]
#[ignore = "needs /dev/kvm: run with --run-ignored"]
fn kvm_the_pit_made_on_an_in_serves_that_in_too() {
    let out = run_vmm(
        &[
            "--kernel",
            guest(),
            "--cmdline",
            "console=ttyS0 testguest.pit=in",
        ],
        None,
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert_pass(&stdout, "pit: first access an IN of port 0x61");
    assert_pass(&stdout, "pit: counter 2 mode 0");
}

#[test]
#[ignore = "needs /dev/kvm: run with --run-ignored"]
fn kvm_guests_that_never_touch_the_pit_get_none() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, ctl, _guard) = start_holding_with(dir.path(), "1", "testguest.pit=0");
    let mut s = BufReader::new(UnixStream::connect(&ctl).unwrap());
    let r = request(&mut s, r#"{"cmd":"stats"}"#);
    assert_eq!(r["stats"]["pit"], false, "{r}");
    assert_eq!(request(&mut s, r#"{"cmd":"shutdown"}"#)["ok"], true);
    assert!(child.wait().unwrap().success());
}

#[test]
#[ignore = "needs /dev/kvm: run with --run-ignored"]
fn kvm_control_socket_pause_stats_resume_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let (child, ctl, _guard) = start_holding(dir.path(), "2");
    let mut s = BufReader::new(UnixStream::connect(&ctl).unwrap());
    // The VMM runs the main thread (event loop and control socket), one thread per vCPU and
    // one for the disk's I/O, each under exactly one seccomp filter of its own.
    let tasks = std::fs::read_dir(format!("/proc/{}/task", child.id())).unwrap();
    let mut names = Vec::new();
    for t in tasks {
        let path = t.unwrap().path();
        let status = std::fs::read_to_string(path.join("status")).unwrap();
        assert!(status.contains("Seccomp:\t2"), "{status}");
        let name = std::fs::read_to_string(path.join("comm"))
            .unwrap()
            .trim()
            .to_owned();
        // KVM adds a kernel worker (kvm-nx-lpage-recovery) to the process, and io_uring its
        // workers (iou-wrk-*) for the disk's ring; they are the kernel's, not ours.
        if !name.starts_with("kvm-") && !name.starts_with("iou-") {
            assert!(status.contains("Seccomp_filters:\t1"), "{name}: {status}");
            names.push(name);
        }
    }
    names.sort();
    assert_eq!(names, ["io", "vcpu0", "vcpu1", "vmm"]);
    let r = request(&mut s, r#"{"cmd":"stats"}"#);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["stats"]["disk_io"], expected_disk_io(), "{r}");
    let devices = r["stats"]["devices"].as_array().unwrap();
    let dev = |name: &str| devices.iter().find(|d| d["name"] == name).unwrap().clone();
    // Sector 0, sectors 0-1 and sectors 8-15 in (get-id's 20 bytes are not disk data);
    // sector 1, sectors 8-15 and the write-zeroes of 8-9 out.
    assert_eq!(dev("vda")["read_bytes"], 512 + 1024 + 4096);
    assert_eq!(dev("vda")["written_bytes"], 512 + 4096 + 1024);
    assert_eq!(dev("rng0")["read_bytes"], 64);
    assert_eq!(r["stats"]["vcpus"].as_array().unwrap().len(), 2);
    // Status polls, the PIT and the i8042 still exit; transmitted bytes mostly do not.
    assert!(
        r["stats"]["vcpus"][0]["exits_io"].as_u64().unwrap() > 50,
        "{r}"
    );
    assert!(
        r["stats"]["vcpus"][0]["exits_mmio"].as_u64().unwrap() > 10,
        "{r}"
    );
    // The table by kind and address adds up to the per-vCPU counts, and names the UART's
    // line status register the guest polls.
    let exits = r["stats"]["exits"].as_array().unwrap();
    let sum = |kinds: &[&str]| -> u64 {
        exits
            .iter()
            .filter(|e| kinds.contains(&e["kind"].as_str().unwrap()))
            .map(|e| e["count"].as_u64().unwrap())
            .sum()
    };
    let per_vcpu = |field: &str| -> u64 {
        r["stats"]["vcpus"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v[field].as_u64().unwrap())
            .sum()
    };
    assert_eq!(sum(&["io_in", "io_out"]), per_vcpu("exits_io"), "{r}");
    assert_eq!(
        sum(&["mmio_read", "mmio_write"]),
        per_vcpu("exits_mmio"),
        "{r}"
    );
    assert!(
        exits
            .iter()
            .any(|e| e["kind"] == "io_in" && e["addr"] == 0x3fd && e["count"].as_u64() > Some(0)),
        "{r}"
    );
    // The guest's PIT check made the VMM create the PIT on the first access.
    assert_eq!(r["stats"]["pit"], true, "{r}");
    // The guest polls the UART, so KVM queued its transmitted bytes without exits.
    assert!(r["stats"]["serial_batched"].as_u64().unwrap() > 500, "{r}");
    assert_eq!(request(&mut s, r#"{"cmd":"pause"}"#)["ok"], true);
    assert_eq!(request(&mut s, r#"{"cmd":"resume"}"#)["ok"], true);
    assert_eq!(request(&mut s, r#"{"cmd":"power_button"}"#)["ok"], true);
    let bad = request(&mut s, r#"{"cmd":"explode"}"#);
    assert_eq!(bad["ok"], false);
    assert_eq!(request(&mut s, r#"{"cmd":"shutdown"}"#)["ok"], true);
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!ctl.exists(), "the control socket is removed on exit");
    assert_eq!(
        exit_record(&holding_exit_file(dir.path()), &stderr),
        (
            "stopped".to_owned(),
            "stopped: control socket shutdown".to_owned()
        )
    );
}

#[test]
#[ignore = "needs /dev/kvm: run with --run-ignored"]
fn kvm_sigterm_stops_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let (child, _ctl, _guard) = start_holding(dir.path(), "1");
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let t = Instant::now();
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{:?} {stderr}", out.status);
    assert!(t.elapsed() < Duration::from_secs(5));
    let (reason, detail) = exit_record(&holding_exit_file(dir.path()), &stderr);
    assert_eq!(reason, "stopped");
    assert!(detail.starts_with("stopped: SIGTERM"), "{detail}");
}

/// Starts a holding guest with `console` and a control socket; returns the child.
fn start_with_console(dir: &Path, console: &str) -> (std::process::Child, PathBuf, KillOnPanic) {
    start_guest(dir, console, "console=ttyS0 testguest.hold=1")
}

fn start_guest(
    dir: &Path,
    console: &str,
    cmdline: &str,
) -> (std::process::Child, PathBuf, KillOnPanic) {
    let ctl = dir.join("ctl.sock");
    let child = Command::new(VMM)
        .args([
            "--kernel",
            guest(),
            "--console",
            console,
            "--control",
            ctl.to_str().unwrap(),
            "--cmdline",
            cmdline,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let guard = KillOnPanic(child.id());
    wait_for(&ctl);
    (child, ctl, guard)
}

/// Reads lines from `r` until one contains `want`; returns everything read.
fn read_until(r: impl std::io::Read, want: &str) -> String {
    let mut seen = String::new();
    for line in BufReader::new(r).lines() {
        let Ok(line) = line else { break };
        seen.push_str(&line);
        seen.push('\n');
        if line.contains(want) {
            return seen;
        }
    }
    panic!("never saw {want:?} in:\n{seen}");
}

#[test]
#[ignore = "needs /dev/kvm: run with --run-ignored"]
fn kvm_unix_socket_console_replays_output_to_a_late_client() {
    let dir = tempfile::tempdir().unwrap();
    let con = dir.path().join("console.sock");
    let (child, ctl, _guard) = start_with_console(dir.path(), &format!("unix:{}", con.display()));
    // The client attaches whenever it likes: what the guest printed before is replayed.
    let stream = UnixStream::connect(&con).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let seen = read_until(&stream, "testguest: holding");
    assert!(
        seen.contains("testguest: hello from the hull test guest"),
        "{seen}"
    );
    assert!(seen.contains("testguest: ALL PASS"), "{seen}");
    let mut s = BufReader::new(UnixStream::connect(&ctl).unwrap());
    assert_eq!(request(&mut s, r#"{"cmd":"shutdown"}"#)["ok"], true);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        out.stdout.is_empty(),
        "nothing goes to stdout with a socket console"
    );
}

#[test]
#[ignore = "needs /dev/kvm: run with --run-ignored"]
fn kvm_pty_console_carries_guest_output() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, ctl, _guard) = start_with_console(dir.path(), "pty");
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let first = lines.next().unwrap().unwrap();
    let path = first
        .strip_prefix("vmm: console on ")
        .unwrap_or_else(|| panic!("unexpected first stderr line {first:?}"))
        .to_owned();
    let pty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let seen = read_until(&pty, "testguest: holding");
    assert!(seen.contains("testguest: ALL PASS"), "{seen}");
    let mut s = BufReader::new(UnixStream::connect(&ctl).unwrap());
    assert_eq!(request(&mut s, r#"{"cmd":"shutdown"}"#)["ok"], true);
    assert!(child.wait().unwrap().success());
}

#[test]
#[ignore = "needs /dev/kvm: run with --run-ignored"]
fn kvm_spinning_guest_can_be_paused_and_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, ctl, _guard) = start_guest(
        dir.path(),
        "stdio",
        "console=ttyS0 testguest.spin=1 testguest.smp=0",
    );
    let stdout = child.stdout.take().unwrap();
    read_until(stdout, "testguest: spinning");
    let mut s = BufReader::new(UnixStream::connect(&ctl).unwrap());
    // The vCPU never exits on its own: pausing needs the kick signal to get it out of KVM_RUN.
    let t = Instant::now();
    assert_eq!(request(&mut s, r#"{"cmd":"pause"}"#)["ok"], true);
    assert!(t.elapsed() < Duration::from_secs(2));
    assert_eq!(request(&mut s, r#"{"cmd":"resume"}"#)["ok"], true);
    assert_eq!(request(&mut s, r#"{"cmd":"stats"}"#)["ok"], true);
    assert_eq!(request(&mut s, r#"{"cmd":"shutdown"}"#)["ok"], true);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
#[ignore = "needs /dev/kvm: run with --run-ignored"]
fn kvm_sigterm_types_ctrl_alt_del_for_guests_without_acpi() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, _ctl, _guard) = start_guest(
        dir.path(),
        "stdio",
        "console=ttyS0 testguest.hold=kbd testguest.smp=0",
    );
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        if line
            .unwrap()
            .contains("testguest: waiting for ctrl-alt-del")
        {
            break;
        }
    }
    let t = Instant::now();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        rest.iter()
            .any(|l| l.contains("testguest: got ctrl-alt-del")),
        "{rest:?}"
    );
    assert!(status.success(), "{status:?} {stderr}");
    // The guest reset itself well before the grace period would have run out.
    assert!(stderr.contains("vmm: guest reset"), "{stderr}");
    assert!(t.elapsed() < Duration::from_secs(3));
}

/// The terminal flags raw mode clears (the guest runs its own line discipline).
const COOKED_LFLAGS: libc::tcflag_t = libc::ICANON | libc::ECHO | libc::ISIG | libc::IEXTEN;

fn termios_of(fd: i32) -> libc::termios {
    // SAFETY: tcgetattr fills the zeroed struct; the result is checked.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        assert_eq!(libc::tcgetattr(fd, &mut t), 0);
        t
    }
}

#[test]
#[ignore = "needs /dev/kvm: run with --run-ignored"]
fn kvm_stdin_terminal_is_raw_while_the_guest_runs() {
    use std::os::fd::{FromRawFd, OwnedFd};
    let (mut m, mut sl) = (-1, -1);
    // SAFETY: openpty writes two new fds into the locals; the optional arguments are null.
    let r = unsafe {
        libc::openpty(
            &mut m,
            &mut sl,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0);
    // SAFETY: both fds are new and owned by nothing else.
    let (_master, slave) = unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(sl)) };
    let before = termios_of(sl);
    assert_eq!(before.c_lflag & COOKED_LFLAGS, COOKED_LFLAGS);

    let dir = tempfile::tempdir().unwrap();
    let ctl = dir.path().join("ctl.sock");
    let mut child = Command::new(VMM)
        .args([
            "--kernel",
            guest(),
            "--control",
            ctl.to_str().unwrap(),
            "--cmdline",
            "console=ttyS0 testguest.hold=1",
        ])
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _guard = KillOnPanic(child.id());
    read_until(child.stdout.take().unwrap(), "testguest: holding");
    let during = termios_of(sl);
    assert_eq!(during.c_lflag & COOKED_LFLAGS, 0, "not raw while running");
    assert_eq!(during.c_iflag & (libc::ICRNL | libc::IXON), 0);
    assert_eq!(during.c_oflag, before.c_oflag, "output processing stays");
    wait_for(&ctl);
    let mut s = BufReader::new(UnixStream::connect(&ctl).unwrap());
    assert_eq!(request(&mut s, r#"{"cmd":"shutdown"}"#)["ok"], true);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let after = termios_of(sl);
    assert_eq!(after.c_lflag, before.c_lflag);
    assert_eq!(after.c_iflag, before.c_iflag);
    assert_eq!(after.c_cflag, before.c_cflag);
    assert_eq!(after.c_cc, before.c_cc);
}

#[test]
#[ignore = "needs /dev/kvm: run with --run-ignored"]
fn kvm_a_grown_disk_reaches_the_running_guest() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = dir.path().join("ctl.sock");
    let disk = make_disk(dir.path());
    let mut child = Command::new(VMM)
        .args([
            "--kernel",
            guest(),
            "--disk",
            disk.to_str().unwrap(),
            "--control",
            ctl.to_str().unwrap(),
            "--cmdline",
            "console=ttyS0 testguest.hold=1 testguest.smp=0 testguest.blk_resize=1",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _guard = KillOnPanic(child.id());
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = String::new();
    let mut until = |want: &str| loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("never saw {want:?} in:\n{seen}"));
        seen.push_str(&line);
        seen.push('\n');
        if line.contains(want) {
            return seen.clone();
        }
    };
    until("blk0: waiting for a config change");
    wait_for(&ctl);
    let mut s = BufReader::new(UnixStream::connect(&ctl).unwrap());
    let vda = |r: &serde_json::Value| {
        r["stats"]["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == "vda")
            .unwrap()["capacity_bytes"]
            .as_u64()
            .unwrap()
    };
    let old = (DISK_SECTORS * 512) as u64;
    assert_eq!(vda(&request(&mut s, r#"{"cmd":"stats"}"#)), old);
    let file = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    // A shrunk image is refused and the guest is not disturbed (it keeps waiting).
    file.set_len(old / 2).unwrap();
    let r = request(&mut s, r#"{"cmd":"resize_disk","index":0}"#);
    assert_eq!(r["ok"], false, "{r}");
    assert!(r["error"].as_str().unwrap().contains("shrank"), "{r}");
    let r = request(&mut s, r#"{"cmd":"resize_disk","index":1}"#);
    assert_eq!(r["ok"], false, "{r}");
    // Grown (sparsely) to three times the size: the guest gets the interrupt and uses it.
    file.set_len(3 * old).unwrap();
    let r = request(&mut s, r#"{"cmd":"resize_disk","index":0}"#);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["disk"]["old_bytes"], old, "{r}");
    assert_eq!(r["disk"]["new_bytes"], 3 * old, "{r}");
    let out = until("testguest: holding");
    for line in [
        "blk0: configuration change interrupt",
        &format!(
            "blk0: resized: config generation 0 -> 1, capacity {} sectors",
            3 * DISK_SECTORS
        ),
        "blk0: read the new last sector",
        "blk0: read past the new end refused with IOERR",
    ] {
        assert_pass(&out, line);
    }
    assert!(out.contains("testguest: ALL PASS"), "{out}");
    assert_eq!(vda(&request(&mut s, r#"{"cmd":"stats"}"#)), 3 * old);
    assert_eq!(request(&mut s, r#"{"cmd":"shutdown"}"#)["ok"], true);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
#[ignore = "needs /dev/kvm: run with --run-ignored"]
fn kvm_net_io_vhost_is_refused_by_name_where_a_nic_cannot_have_it() {
    // A NIC on a datagram socket has no vnet header, so vhost-net cannot carry its frames:
    // `vhost` refuses the VM before it runs, `auto` and `vmm` run it on the VMM's path.
    let (ours, theirs) = UnixDatagram::pair().unwrap();
    let args = |io: &'static str| {
        [
            "--kernel",
            guest(),
            "--mem-mib",
            "64",
            "--tap-fd",
            "3",
            "--net-io",
            io,
            "--cmdline",
            "console=ttyS0",
        ]
    };
    let out = run_vmm(&args("vhost"), Some(&theirs));
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("NIC 0 cannot use vhost-net (--net-io vhost)")
            && stderr.contains("no vnet header"),
        "{stderr}"
    );
    assert!(!text(&out.stdout).contains("testguest:"), "the guest ran");
    for io in ["auto", "vmm"] {
        let out = run_vmm(&args(io), Some(&theirs));
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(out.status.success(), "{io}: {stderr}");
        assert!(stdout.contains("testguest: ALL PASS"), "{io}: {stdout}");
        assert!(!stderr.contains("vhost-net"), "{io}: {stderr}");
    }
    let out = run_vmm(&args("fast"), Some(&theirs));
    assert!(
        text(&out.stderr).contains("\"fast\" is not auto, vhost or vmm"),
        "{}",
        text(&out.stderr)
    );
    drop(ours);
}

//! The guest metadata service end to end, as root (tier 2): zones read and write their
//! metadata with hull's mdata tools (bound into the busybox zone) and with a client nobody
//! here wrote, cloud-init's own (Debian's python3 cloud-init package, its SmartOS
//! datasource's `JoyentMetadataSocketClient`), through vmmd's agent.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hull_tests::Daemon;
use hull_tests::zone::{create, install, text};
use serde_json::{Value, json};

fn get(d: &Daemon, uuid: &str) -> Value {
    let o = d.vmadm(&["get", uuid], None);
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).expect("json")
}

/// The host side of the zone's metadata socket (the same socket the zone sees at
/// /.zonecontrol/metadata.sock).
fn socket(d: &Daemon, uuid: &str) -> PathBuf {
    let rt = d
        .client()
        .runtime(uuid::Uuid::parse_str(uuid).expect("uuid"))
        .expect("runtime");
    Path::new(&rt.dir).join("zonecontrol/metadata.sock")
}

/// Runs `code` under Debian's python3 with cloud-init's SmartOS datasource imported as `ds`.
fn cloud_init(code: &str) -> std::process::Output {
    let script =
        format!("import sys\nfrom cloudinit.sources import DataSourceSmartOS as ds\n{code}\n");
    // Debian's own python3, the one its cloud-init package installs into.
    Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .output()
        .expect("python3")
}

#[test]
#[ignore = "needs root: run with --run-ignored"]
fn root_zones_read_and_write_their_metadata() {
    hull_tests::require_mdata_tool();
    let d = Daemon::start();
    install(&d);
    let o = d.run("nictagadm", &["add", "-l", "mdt"], None);
    assert!(o.status.success(), "{}", text(&o));
    let a = create(
        &d,
        json!({
            "customer_metadata": {"foo": "bar baz", "user-script": "#!/bin/sh\n.echo hi\n"},
            "internal_metadata": {"admin_pw": "s3cret", "hidden": "no", "acme:key": "k1"},
            "internal_metadata_namespaces": ["acme"],
            "nics": [{"nic_tag": "mdt", "ips": ["192.0.2.31/24"], "primary": true}],
            "resolvers": ["192.0.2.53"],
        }),
    );
    let b = create(&d, json!({"customer_metadata": {"only-b": "1"}}));

    // mdata-get in the zone: values, exit codes, sdc: keys, internal _pw keys.
    let o = d.zlogin(&a, "mdata-get foo");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "bar baz\n");
    let o = d.zlogin(&a, "mdata-get user-script");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "#!/bin/sh\n.echo hi\n\n"
    );
    let o = d.zlogin(&a, "mdata-get nope");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let o = d.zlogin(
        &a,
        "mdata-get sdc:uuid; mdata-get sdc:hostname; mdata-get admin_pw",
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!("{a}\nztest\ns3cret\n"),
        "{}",
        text(&o)
    );
    let o = d.zlogin(&a, "mdata-get sdc:nics");
    assert!(o.status.success(), "{}", text(&o));
    let nics: Value = serde_json::from_slice(&o.stdout).expect("sdc:nics is JSON");
    assert_eq!(nics, get(&d, &a)["nics"], "sdc:nics is the record's NICs");
    let o = d.zlogin(&a, "mdata-list");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "foo\nuser-script\nacme:key\nadmin_pw\n"
    );
    // An operator's namespace reads from internal_metadata and cannot be written.
    let o = d.zlogin(
        &a,
        "mdata-get acme:key; mdata-get hidden; echo rc=$?; mdata-put acme:x y",
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "k1\nrc=1\n",
        "{}",
        text(&o)
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Cannot update the \"acme\" Namespace."),
        "{}",
        text(&o)
    );

    // Writes go through vmmd's update path and show in vmadm get.
    let o = d.zlogin(
        &a,
        "mdata-put k 'v 1' && mdata-get k && echo piped | mdata-put p",
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "v 1\n");
    let vm = get(&d, &a);
    assert_eq!(vm["customer_metadata"]["k"], "v 1");
    assert_eq!(vm["customer_metadata"]["p"], "piped\n");
    let o = d.zlogin(&a, "mdata-delete k");
    assert!(o.status.success(), "{}", text(&o));
    assert!(get(&d, &a)["customer_metadata"].get("k").is_none());
    let o = d.zlogin(&a, "mdata-put sdc:uuid x");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Cannot update the \"sdc\" Namespace."),
        "{}",
        text(&o)
    );

    // A zone reads its own keys only.
    let o = d.zlogin(&b, "mdata-get foo; echo rc=$?; mdata-get only-b");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "rc=1\n1\n",
        "{}",
        text(&o)
    );

    // cloud-init's own client, on the same socket, from the host.
    let path = socket(&d, &a);
    let o = cloud_init(&format!(
        "c = ds.JoyentMetadataSocketClient({path:?})\n\
         with c:\n\
         \x20   print(c.get('foo'))\n\
         \x20   print(c.get('sdc:uuid'))\n\
         \x20   print(sorted(c.list()))\n\
         \x20   c.put('from-cloud-init', 'yes')\n\
         \x20   print(c.get('from-cloud-init'))\n\
         \x20   c.delete('from-cloud-init')\n\
         \x20   print(c.get('from-cloud-init', default='gone'))\n\
         \x20   print(c.get_json('sdc:resolvers'))\n",
        path = path.display().to_string()
    ));
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!(
            "bar baz\n{a}\n['acme:key', 'admin_pw', 'foo', 'p', 'user-script']\nyes\ngone\n['192.0.2.53']\n"
        ),
        "{}",
        text(&o)
    );

    // cloud-init's serial client (what a KVM guest runs on /dev/ttyS1), its line given as
    // a file object over the same socket: it drains input, sends a bare newline and expects
    // "invalid command", negotiates, then asks.
    let o = cloud_init(&format!(
        "import socket\n\
         class Line:\n\
         \x20   def __init__(self, path):\n\
         \x20       self.s = socket.socket(socket.AF_UNIX)\n\
         \x20       self.s.connect(path)\n\
         \x20       self._t = None\n\
         \x20   @property\n\
         \x20   def timeout(self): return self._t\n\
         \x20   @timeout.setter\n\
         \x20   def timeout(self, t):\n\
         \x20       self._t = t\n\
         \x20       self.s.settimeout(t)\n\
         \x20   def read(self, n):\n\
         \x20       try: return self.s.recv(n)\n\
         \x20       except socket.timeout: return b''\n\
         \x20   def write(self, b): self.s.sendall(b)\n\
         \x20   def flush(self): pass\n\
         \x20   def close(self): self.s.close()\n\
         line = Line({path:?})\n\
         line.timeout = 10\n\
         c = ds.JoyentMetadataSerialClient('/dev/ttyS1', timeout=10, fp=line)\n\
         c.open_transport()\n\
         print(c.get('foo'))\n\
         print(c.get_json('sdc:nics')[0]['ips'])\n",
        path = path.display().to_string()
    ));
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "bar baz\n['192.0.2.31/24']\n",
        "{}",
        text(&o)
    );

    for z in [&a, &b] {
        let o = d.vmadm(&["delete", z], None);
        assert!(o.status.success(), "{}", text(&o));
    }
    let o = d.run("nictagadm", &["delete", "mdt"], None);
    assert!(o.status.success(), "{}", text(&o));
}

/// One raw exchange on the socket: sends `line`, returns the reply line (None: nothing
/// came within `wait`).
fn exchange(s: &mut UnixStream, line: &[u8], wait: Duration) -> Option<String> {
    s.set_read_timeout(Some(wait)).expect("timeout");
    s.write_all(line).expect("write");
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    let mut reply = String::new();
    match r.read_line(&mut reply) {
        Ok(n) if n > 0 => Some(reply),
        _ => None,
    }
}

fn v2(reqid: u32, verb: &str, arg: Option<&str>) -> Vec<u8> {
    let mut body = format!("{reqid:08x} {verb}");
    if let Some(a) = arg {
        body.push(' ');
        body.push_str(a);
    }
    let crc = crc32(body.as_bytes());
    format!("V2 {} {crc:08x} {body}\n", body.len()).into_bytes()
}

/// zlib's CRC-32, written out here so the test does not trust the crate it tests.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
#[ignore = "needs root: run with --run-ignored"]
fn root_metadata_agent_survives_hostile_guests_and_vmmd_restarts() {
    hull_tests::require_mdata_tool();
    let mut d = Daemon::start();
    install(&d);
    let big = "x".repeat(60 * 1024);
    let a = create(&d, json!({"customer_metadata": {"big": big, "k": "v"}}));
    let b = create(&d, json!({"customer_metadata": {"k": "b's"}}));
    let (sa, sb) = (socket(&d, &a), socket(&d, &b));
    let get_k = "aw=="; // base64("k")
    let short = Duration::from_millis(500);

    // A malformed frame and a wrong CRC are dropped unanswered; the connection goes on.
    let mut s = UnixStream::connect(&sa).expect("connect");
    assert_eq!(
        exchange(&mut s, b"\n", short).as_deref(),
        Some("invalid command\n")
    );
    assert_eq!(
        exchange(&mut s, b"NEGOTIATE V2\n", short).as_deref(),
        Some("V2_OK\n")
    );
    assert_eq!(exchange(&mut s, b"V2 5 00000000 zz GET\n", short), None);
    let mut bad_crc = v2(1, "GET", Some(get_k));
    bad_crc[5] ^= 1;
    assert_eq!(exchange(&mut s, &bad_crc, short), None);
    let reply = exchange(&mut s, &v2(2, "GET", Some(get_k)), short).expect("a reply");
    assert!(reply.contains("00000002 SUCCESS dg=="), "{reply}");
    // An unknown verb is a FAILURE naming it.
    let reply = exchange(&mut s, &v2(3, "FROB", None), short).expect("a reply");
    assert!(reply.contains("00000003 FAILURE"), "{reply}");

    // An oversized line ends that connection; the agent serves the next one.
    let mut s = UnixStream::connect(&sa).expect("connect");
    let flood = vec![b'A'; 300 * 1024];
    let _ = s.write_all(&flood);
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));

    // A flood from zone a does not slow zone b.
    let flooder = std::thread::spawn({
        let sa = sa.clone();
        move || {
            let mut s = UnixStream::connect(&sa).expect("connect");
            let mut all = Vec::new();
            for i in 0..1000u32 {
                all.extend(v2(i, "GET", Some("aw==")));
            }
            s.write_all(&all).expect("write");
            let mut r = BufReader::new(s);
            let mut n = 0;
            let mut line = String::new();
            while n < 1000 && r.read_line(&mut line).expect("read") > 0 {
                n += 1;
                line.clear();
            }
            n
        }
    });
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    let mut s = UnixStream::connect(&sb).expect("connect");
    assert_eq!(
        exchange(&mut s, b"NEGOTIATE V2\n", short).as_deref(),
        Some("V2_OK\n")
    );
    let reply = exchange(&mut s, &v2(9, "GET", Some(get_k)), short).expect("b answered");
    assert!(reply.contains("SUCCESS Yidz"), "{reply}");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "b waited {:?}",
        t.elapsed()
    );
    assert_eq!(
        flooder.join().expect("flooder"),
        1000,
        "every flooded request is answered"
    );

    // A vmmd killed in the middle of long GETs: every one of them still gets the value.
    let loop_ = "i=0; while [ $i -lt 30 ]; do mdata-get big | wc -c; i=$((i+1)); done > /tmp/sizes 2>&1; touch /tmp/done";
    let o = d.zlogin(
        &a,
        &format!("setsid sh -c '{loop_}' </dev/null >/dev/null 2>&1 &"),
    );
    assert!(o.status.success(), "{}", text(&o));
    std::thread::sleep(Duration::from_millis(300));
    d.kill9();
    std::thread::sleep(Duration::from_millis(500));
    d.spawn();
    let t = Instant::now();
    loop {
        let o = d.zlogin(&a, "test -e /tmp/done && cat /tmp/sizes");
        if o.status.success() {
            let out = String::from_utf8_lossy(&o.stdout).to_string();
            let sizes: Vec<&str> = out.lines().map(str::trim).collect();
            assert_eq!(sizes.len(), 30, "{out}");
            assert!(sizes.iter().all(|s| *s == "61441"), "{out}");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the GET loop never ended"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for z in [&a, &b] {
        let o = d.vmadm(&["delete", z], None);
        assert!(o.status.success(), "{}", text(&o));
    }
}

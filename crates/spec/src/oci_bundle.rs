//! An OCI runtime bundle's `config.json` (the runtime spec, 1.x) as a zone runs it: what
//! hull honours becomes a [`BundleConfig`], and everything else is refused naming the field,
//! never dropped. A bundle is what containerd (and `ctr run --rootfs`, `umoci unpack`,
//! `crun spec`) hands a runtime: the process to run and the root it runs in; the zone keeps
//! its own isolation (user namespace with the zone's id range, seccomp, capability
//! ceiling, cgroup limits, anti-spoofed NICs) underneath.
//!
//! The bytes are untrusted: at most [`MAX_CONFIG`] of them, every field checked.

use serde_json::{Map, Value};

use crate::ValidationReport;

/// The largest config.json read.
pub const MAX_CONFIG: u64 = 4 << 20;

/// The capabilities a zone's process may keep (zoned's ceiling, `KEPT_CAPS`): a bundle
/// asking for any other is refused.
pub const CAPABILITY_CEILING: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The resource limits a process may be given (setrlimit's, as the spec names them).
pub const RLIMITS: &[&str] = &[
    "RLIMIT_AS",
    "RLIMIT_CORE",
    "RLIMIT_CPU",
    "RLIMIT_DATA",
    "RLIMIT_FSIZE",
    "RLIMIT_LOCKS",
    "RLIMIT_MEMLOCK",
    "RLIMIT_MSGQUEUE",
    "RLIMIT_NICE",
    "RLIMIT_NOFILE",
    "RLIMIT_NPROC",
    "RLIMIT_RSS",
    "RLIMIT_RTPRIO",
    "RLIMIT_RTTIME",
    "RLIMIT_SIGPENDING",
    "RLIMIT_STACK",
];

/// The mounts every zone has already, as its runtime makes them (type, destination):
/// a bundle's own entries for them are what the zone gives.
const ZONE_MOUNTS: &[(&str, &str)] = &[
    ("proc", "/proc"),
    ("sysfs", "/sys"),
    ("tmpfs", "/dev"),
    ("devpts", "/dev/pts"),
    ("tmpfs", "/dev/shm"),
    ("mqueue", "/dev/mqueue"),
];

/// The device nodes a zone has (path, major, minor).
const ZONE_NODES: &[(&str, i64, i64)] = &[
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
    ("/dev/console", 5, 1),
    ("/dev/ptmx", 5, 2),
];

/// The device nodes a zone has (major, minor): a device cgroup rule may allow only these.
const ZONE_DEVICES: &[(i64, i64)] = &[
    (1, 3),
    (1, 5),
    (1, 7),
    (1, 8),
    (1, 9),
    (5, 0),
    (5, 1),
    (5, 2),
];

/// One resource limit of the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rlimit {
    /// Its name (`RLIMIT_NOFILE`).
    pub kind: String,
    pub soft: u64,
    pub hard: u64,
}

/// A tmpfs the bundle mounts somewhere the zone has none (containerd's /run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TmpfsMount {
    /// Where, in the zone.
    pub at: String,
    /// Its size in bytes (default: the zone's memory bounds it).
    pub size: Option<u64>,
    /// The mode of its root (default 1777).
    pub mode: Option<u32>,
    pub read_only: bool,
}

/// A bind of a file or directory of the bundle into the zone (`ctr run --mount`, or the
/// files containerd's CRI hands a pod: its runtime shim puts them in the bundle).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    /// The source as given: relative to the bundle, or absolute; it must lie in the bundle.
    pub source: String,
    /// Where, in the zone.
    pub at: String,
    pub read_only: bool,
}

/// What hull runs of a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleConfig {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub terminal: bool,
    /// The process's capabilities (bounding = permitted = effective), each within
    /// [`CAPABILITY_CEILING`]; `None` when the bundle gives no capabilities object.
    pub capabilities: Option<Vec<String>>,
    pub rlimits: Vec<Rlimit>,
    /// `root.path` as given: relative to the bundle, or absolute.
    pub root: String,
    pub hostname: Option<String>,
    pub tmpfs: Vec<TmpfsMount>,
    pub binds: Vec<BindMount>,
    /// Paths hidden from the process (a file behind /dev/null, a directory behind an empty
    /// read-only tmpfs), beyond the zone's own.
    pub masked: Vec<String>,
    /// Paths made read-only, beyond the zone's own.
    pub read_only: Vec<String>,
    /// `linux.resources`: memory limit (bytes), cpu shares, cpu quota and period (µs),
    /// pids limit.
    pub memory: Option<u64>,
    /// `linux.resources.memory.swap`: memory and swap together (bytes), SmartOS's max_swap.
    pub swap: Option<u64>,
    pub cpu_shares: Option<u64>,
    pub cpu_quota: Option<(i64, u64)>,
    pub pids: Option<i64>,
    /// The init pid of another zone whose network, IPC and UTS namespaces (and so its user
    /// namespace, which owns them) the container shares: `linux.namespaces` paths
    /// `/proc/PID/ns/net|ipc|uts`, as containerd names a pod's sandbox (`ctr run --with-ns`).
    pub join: Option<i32>,
    /// A network namespace made outside hull that the zone joins, as containerd's CNI makes
    /// one for a pod (`/var/run/netns/cni-...`): `linux.namespaces` type network with a path
    /// under /run/netns or /var/run/netns. vmmd checks at each start that it is a network
    /// namespace and not the host's.
    pub netns: Option<String>,
    /// `process.oomScoreAdj`: the OOM killer's adjustment of the zone's init (-1000 to
    /// 1000), which zoned sets before the process runs (containerd's CRI gives a pod's
    /// sandbox -998).
    pub oom_score_adj: Option<i32>,
    /// `root.readonly`: the zone's root mounted read-only once its runtime has written /etc
    /// (a pod's sandbox has one); its /dev, /proc, tmpfs and binds are as they say.
    pub read_only_root: bool,
    /// A `cgroup` mount at /sys/fs/cgroup (read-only): the zone's own cgroups shown there.
    pub cgroup_fs: bool,
}

/// Checks an OCI `linux.resources.devices` list on its own (CRI's UpdateContainerResources
/// sends a container's whole list again): Ok when it allows no device a zone lacks.
pub fn check_device_rules(devices: &Value) -> Result<(), ValidationReport> {
    let mut c = Checker {
        r: ValidationReport::default(),
    };
    c.devices(devices);
    match c.r.details.is_empty() {
        true => Ok(()),
        false => Err(c.r),
    }
}

/// Parses and checks a bundle's config.json; the report names every field hull refuses
/// (`process.capabilities.bounding.3`), with why.
pub fn parse(bytes: &[u8]) -> Result<BundleConfig, ValidationReport> {
    let mut r = ValidationReport::default();
    let root: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => {
            r.bad_value("config.json", format!("config.json is not JSON: {e}"));
            return Err(r);
        }
    };
    let Some(top) = root.as_object() else {
        r.bad_value("config.json", "config.json must be a JSON object");
        return Err(r);
    };
    let mut c = Checker { r };
    c.fields(
        "",
        top,
        &[
            "ociVersion",
            "process",
            "root",
            "hostname",
            "mounts",
            "annotations",
            "linux",
        ],
        &[
            (
                "hooks",
                "hooks run host programs at a container's start and stop",
            ),
            ("domainname", "a zone has no NIS domain name of its own"),
            ("solaris", "not a Linux container"),
            ("windows", "not a Linux container"),
            ("vm", "a zone is no virtual machine"),
        ],
    );
    match top.get("ociVersion").and_then(Value::as_str) {
        Some(v) if v.starts_with("1.") => {}
        Some(v) => c.bad(
            "ociVersion",
            format!("ociVersion {v:?}: hull takes runtime spec 1.x"),
        ),
        None => c.r.missing("ociVersion", "config.json needs ociVersion"),
    }
    let empty = Map::new();
    let process = match top.get("process") {
        Some(Value::Object(p)) => p,
        _ => {
            c.r.missing("process", "config.json needs a process object");
            &empty
        }
    };
    let mut out = c.process(process);
    match top.get("root") {
        Some(Value::Object(root)) => {
            c.fields("root", root, &["path", "readonly"], &[]);
            match root.get("path").and_then(Value::as_str) {
                Some(p) if !p.is_empty() && !p.contains('\0') => out.root = p.to_string(),
                _ => c.bad("root.path", "root.path must name the root directory"),
            }
            match root.get("readonly") {
                None => {}
                Some(Value::Bool(b)) => out.read_only_root = *b,
                Some(_) => c.bad("root.readonly", "root.readonly must be true or false"),
            }
        }
        _ => c.r.missing("root", "config.json needs root.path"),
    }
    if let Some(h) = top.get("hostname") {
        match h.as_str() {
            Some(h) if h.len() <= 63 && !h.contains(['\0', '/']) => {
                out.hostname = (!h.is_empty()).then(|| h.to_string());
            }
            _ => c.bad("hostname", "hostname must be a name of at most 63 bytes"),
        }
    }
    if let Some(m) = top.get("annotations")
        && !m
            .as_object()
            .is_some_and(|m| m.values().all(Value::is_string))
    {
        c.bad("annotations", "annotations must map names to strings");
    }
    match top.get("mounts") {
        None => {}
        Some(Value::Array(list)) => {
            for (i, m) in list.iter().enumerate() {
                c.mount(&format!("mounts.{i}"), m, &mut out);
            }
        }
        Some(_) => c.bad("mounts", "mounts must be a list"),
    }
    if let Some(l) = top.get("linux") {
        match l.as_object() {
            Some(l) => c.linux(l, &mut out),
            None => c.bad("linux", "linux must be an object"),
        }
    }
    if c.r.is_empty() { Ok(out) } else { Err(c.r) }
}

/// `items` for a message: all of them up to eight, else the first six and how many more.
fn list_some(items: &[&str]) -> String {
    match items.len() {
        0..=8 => items.join(", "),
        n => format!("{} and {} more", items[..6].join(", "), n - 6),
    }
}

struct Checker {
    r: ValidationReport,
}

impl Checker {
    fn bad(&mut self, p: &str, why: impl Into<String>) {
        self.r.bad_value(p, why);
    }

    /// Refuses fields of `obj` (at `at`) that are neither `known` nor in `refused` (the
    /// spec's fields hull does not honour, with why).
    fn fields(
        &mut self,
        at: &str,
        obj: &Map<String, Value>,
        known: &[&str],
        refused: &[(&str, &str)],
    ) {
        for (k, v) in obj {
            let p = if at.is_empty() {
                k.clone()
            } else {
                format!("{at}.{k}")
            };
            if known.contains(&k.as_str()) {
                continue;
            }
            let empty = v.is_null()
                || v.as_str().is_some_and(str::is_empty)
                || v.as_array().is_some_and(Vec::is_empty)
                || v.as_object().is_some_and(Map::is_empty);
            match refused.iter().find(|(name, _)| name == k) {
                Some(_) if empty => {}
                Some((_, why)) => self
                    .r
                    .bad_property(&p, format!("{p} is not supported by hull: {why}")),
                None => self.r.bad_property(
                    &p,
                    format!("{p} is no field of the OCI runtime spec that hull knows"),
                ),
            }
        }
    }

    fn strings(&mut self, p: &str, v: Option<&Value>) -> Vec<String> {
        match v {
            None => Vec::new(),
            Some(Value::Array(a))
                if a.iter()
                    .all(|s| s.as_str().is_some_and(|s| !s.contains('\0'))) =>
            {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            }
            Some(_) => {
                self.bad(p, format!("{p} must be a list of strings"));
                Vec::new()
            }
        }
    }

    fn process(&mut self, p: &Map<String, Value>) -> BundleConfig {
        self.fields(
            "process",
            p,
            &[
                "terminal",
                "consoleSize",
                "user",
                "args",
                "env",
                "cwd",
                "capabilities",
                "rlimits",
                "noNewPrivileges",
                "oomScoreAdj",
            ],
            &[
                (
                    "apparmorProfile",
                    "hull confines zones with namespaces and seccomp, not AppArmor",
                ),
                (
                    "selinuxLabel",
                    "hull confines zones with namespaces and seccomp, not SELinux",
                ),
                ("commandLine", "a Windows process's field"),
                (
                    "ioPriority",
                    "the zone's zfs_io_priority sets its I/O weight",
                ),
                (
                    "scheduler",
                    "a zone's processes run under the host's default scheduler",
                ),
                (
                    "execCPUAffinity",
                    "a zone's processes run on every CPU its cgroup allows",
                ),
            ],
        );
        let args = self.strings("process.args", p.get("args"));
        if args.first().is_none_or(String::is_empty) {
            self.r
                .missing("process.args", "process.args must name the program to run");
        }
        let env = self.strings("process.env", p.get("env"));
        if let Some(bad) = env
            .iter()
            .find(|e| e.split_once('=').is_none_or(|(k, _)| k.is_empty()))
        {
            self.bad(
                "process.env",
                format!("process.env: {bad:?} is not NAME=value"),
            );
        }
        let cwd = match p.get("cwd").and_then(Value::as_str) {
            Some(c) if c.starts_with('/') && !c.contains('\0') => c.to_string(),
            None => "/".to_string(),
            Some(_) => {
                self.bad("process.cwd", "process.cwd must be an absolute path");
                "/".to_string()
            }
        };
        let terminal = match p.get("terminal") {
            None => false,
            Some(Value::Bool(t)) => *t,
            Some(_) => {
                self.bad("process.terminal", "process.terminal must be true or false");
                false
            }
        };
        if let Some(v) = p.get("noNewPrivileges")
            && !v.is_boolean()
        {
            // hull sets no_new_privs for every zone process: true or false, it holds.
            self.bad(
                "process.noNewPrivileges",
                "process.noNewPrivileges must be true or false",
            );
        }
        if let Some(cs) = p.get("consoleSize") {
            match cs.as_object() {
                Some(o) => self.fields("process.consoleSize", o, &["height", "width"], &[]),
                None => self.bad(
                    "process.consoleSize",
                    "process.consoleSize must be an object",
                ),
            }
        }
        let (mut uid, mut gid, mut groups) = (0, 0, Vec::new());
        match p.get("user") {
            None => {}
            Some(Value::Object(u)) => {
                self.fields(
                    "process.user",
                    u,
                    &["uid", "gid", "additionalGids"],
                    &[
                        (
                            "umask",
                            "the zone's process keeps the umask it starts with (022)",
                        ),
                        ("username", "a Windows process's field"),
                    ],
                );
                uid = self.id("process.user.uid", u.get("uid"));
                gid = self.id("process.user.gid", u.get("gid"));
                match u.get("additionalGids") {
                    None => {}
                    Some(Value::Array(a)) => {
                        for (i, g) in a.iter().enumerate() {
                            groups.push(
                                self.id(&format!("process.user.additionalGids.{i}"), Some(g)),
                            );
                        }
                    }
                    Some(_) => self.bad(
                        "process.user.additionalGids",
                        "process.user.additionalGids must be a list of ids",
                    ),
                }
            }
            Some(_) => self.bad("process.user", "process.user must be an object"),
        }
        let capabilities = p.get("capabilities").and_then(|c| self.capabilities(c));
        let mut rlimits = Vec::new();
        match p.get("rlimits") {
            None => {}
            Some(Value::Array(list)) => {
                for (i, l) in list.iter().enumerate() {
                    let at = format!("process.rlimits.{i}");
                    let Some(o) = l.as_object() else {
                        self.bad(&at, format!("{at} must be an object"));
                        continue;
                    };
                    self.fields(&at, o, &["type", "soft", "hard"], &[]);
                    let kind = o.get("type").and_then(Value::as_str).unwrap_or_default();
                    let (soft, hard) = (
                        o.get("soft").and_then(Value::as_u64),
                        o.get("hard").and_then(Value::as_u64),
                    );
                    match (RLIMITS.contains(&kind), soft, hard) {
                        (false, _, _) => self.bad(
                            &format!("{at}.type"),
                            format!("{at}.type {kind:?} is no resource limit Linux has"),
                        ),
                        (true, Some(soft), Some(hard)) if soft <= hard => rlimits.push(Rlimit {
                            kind: kind.to_string(),
                            soft,
                            hard,
                        }),
                        _ => self.bad(&at, format!("{at} needs soft and hard, soft <= hard")),
                    }
                }
            }
            Some(_) => self.bad("process.rlimits", "process.rlimits must be a list"),
        }
        let oom_score_adj = match p.get("oomScoreAdj") {
            None => None,
            Some(v) => match v.as_i64().filter(|n| (-1000..=1000).contains(n)) {
                Some(n) => Some(n as i32),
                None => {
                    self.bad(
                        "process.oomScoreAdj",
                        format!(
                            "process.oomScoreAdj {v} must be a whole number from -1000 to 1000"
                        ),
                    );
                    None
                }
            },
        };
        BundleConfig {
            args,
            env,
            cwd,
            uid,
            gid,
            groups,
            terminal,
            capabilities,
            rlimits,
            root: String::new(),
            hostname: None,
            tmpfs: Vec::new(),
            binds: Vec::new(),
            masked: Vec::new(),
            read_only: Vec::new(),
            memory: None,
            swap: None,
            cpu_shares: None,
            cpu_quota: None,
            pids: None,
            join: None,
            netns: None,
            oom_score_adj,
            read_only_root: false,
            cgroup_fs: false,
        }
    }

    /// A uid or gid: the zone has 65536 of them.
    fn id(&mut self, p: &str, v: Option<&Value>) -> u32 {
        match v.and_then(Value::as_u64) {
            Some(id) if id < 65536 => id as u32,
            _ => {
                self.bad(p, format!("{p} must be an id the zone has (0 to 65535)"));
                0
            }
        }
    }

    /// One set for the process (bounding = permitted = effective; inheritable and ambient
    /// may repeat it or be empty), within the zone's ceiling.
    fn capabilities(&mut self, c: &Value) -> Option<Vec<String>> {
        let Some(o) = c.as_object() else {
            self.bad(
                "process.capabilities",
                "process.capabilities must be an object",
            );
            return None;
        };
        let sets = [
            "bounding",
            "effective",
            "permitted",
            "inheritable",
            "ambient",
        ];
        self.fields("process.capabilities", o, &sets, &[]);
        let bounding = self.strings("process.capabilities.bounding", o.get("bounding"));
        // One refusal naming every capability beyond the ceiling (a privileged container
        // asks for them all), at the first of them.
        let beyond: Vec<(usize, &String)> = bounding
            .iter()
            .enumerate()
            .filter(|(_, cap)| !CAPABILITY_CEILING.contains(&cap.as_str()))
            .collect();
        if let Some((first, _)) = beyond.first() {
            let names: Vec<&str> = beyond.iter().map(|(_, c)| c.as_str()).collect();
            let privileged = if names.contains(&"CAP_SYS_ADMIN") && names.len() > 10 {
                "; a privileged container (every capability of the host) cannot run in a zone"
            } else {
                ""
            };
            self.r.bad_value(
                format!("process.capabilities.bounding.{first}"),
                format!(
                    "{} beyond what a zone's process may hold (hull's ceiling: {}){privileged}",
                    match names.len() {
                        1 => format!("{} is", names[0]),
                        _ => format!("{} are", list_some(&names)),
                    },
                    CAPABILITY_CEILING.join(", ")
                ),
            );
        }
        for set in &sets[1..] {
            let p = format!("process.capabilities.{set}");
            let mut list = self.strings(&p, o.get(*set));
            list.sort();
            let mut want = bounding.clone();
            want.sort();
            let may_be_empty = matches!(*set, "inheritable" | "ambient");
            if list != want && !(may_be_empty && list.is_empty()) && o.contains_key(*set) {
                self.r.bad_value(
                    &p,
                    format!(
                        "{p} differs from the bounding set: hull gives a zone's process one set \
                         of capabilities"
                    ),
                );
            }
        }
        Some(bounding)
    }

    fn mount(&mut self, at: &str, m: &Value, out: &mut BundleConfig) {
        let Some(o) = m.as_object() else {
            self.bad(at, format!("{at} must be an object"));
            return;
        };
        self.fields(
            at,
            o,
            &["destination", "type", "source", "options"],
            &[
                ("uidMappings", "the zone maps its ids itself"),
                ("gidMappings", "the zone maps its ids itself"),
            ],
        );
        let dest = o
            .get("destination")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let kind = o.get("type").and_then(Value::as_str).unwrap_or_default();
        let options = self.strings(&format!("{at}.options"), o.get("options"));
        let plain = dest.starts_with('/')
            && dest.len() > 1
            && dest
                .split('/')
                .skip(1)
                .all(|c| !c.is_empty() && c != "." && c != "..");
        if !plain {
            self.bad(
                &format!("{at}.destination"),
                format!("{at}.destination {dest:?} must be an absolute path of plain names"),
            );
            return;
        }
        let dest = dest.trim_end_matches('/');
        if ZONE_MOUNTS.contains(&(kind, dest)) {
            return;
        }
        if (kind, dest) == ("cgroup", "/sys/fs/cgroup") {
            for opt in &options {
                if !["ro", "nosuid", "nodev", "noexec", "relatime"].contains(&opt.as_str()) {
                    self.bad(
                        &format!("{at}.options"),
                        format!("{at}: cgroup option {opt:?} is not supported: a zone sees its cgroups read-only"),
                    );
                }
            }
            out.cgroup_fs = true;
            return;
        }
        let under = |root: &str| dest == root || dest.starts_with(&format!("{root}/"));
        if ["/proc", "/sys", "/dev"].iter().any(|r| under(r)) {
            self.bad(
                &format!("{at}.destination"),
                format!("{at}: a {kind} mount at {dest} is not supported: the zone's runtime owns /proc, /sys and /dev"),
            );
            return;
        }
        match kind {
            "tmpfs" => {
                let mut t = TmpfsMount {
                    at: dest.to_string(),
                    size: None,
                    mode: None,
                    read_only: false,
                };
                for opt in &options {
                    match opt.split_once('=') {
                        Some(("size", v)) => t.size = size_bytes(v),
                        Some(("mode", v)) => {
                            t.mode = u32::from_str_radix(v, 8).ok().filter(|m| *m <= 0o7777)
                        }
                        None if opt == "ro" => t.read_only = true,
                        None if [
                            "rw",
                            "nosuid",
                            "nodev",
                            "noexec",
                            "strictatime",
                            "relatime",
                            "noatime",
                        ]
                        .contains(&opt.as_str()) => {}
                        _ => {
                            self.bad(
                                &format!("{at}.options"),
                                format!("{at}: tmpfs option {opt:?} is not supported"),
                            );
                            continue;
                        }
                    }
                    if opt.starts_with("size=") && t.size.is_none()
                        || opt.starts_with("mode=") && t.mode.is_none()
                    {
                        self.bad(
                            &format!("{at}.options"),
                            format!("{at}: bad tmpfs option {opt:?}"),
                        );
                    }
                }
                out.tmpfs.push(t);
            }
            _ if kind == "bind"
                || kind == "rbind"
                || options.iter().any(|o| o == "bind" || o == "rbind") =>
            {
                let source = o.get("source").and_then(Value::as_str).unwrap_or_default();
                if source.is_empty() || source.contains('\0') {
                    self.bad(
                        &format!("{at}.source"),
                        format!("{at}.source must name a file or directory"),
                    );
                    return;
                }
                let mut read_only = false;
                for opt in &options {
                    match opt.as_str() {
                        "ro" => read_only = true,
                        "bind" | "rbind" | "rw" | "nosuid" | "nodev" | "noexec" | "private"
                        | "rprivate" | "slave" | "rslave" => {}
                        other => self.bad(
                            &format!("{at}.options"),
                            format!("{at}: bind option {other:?} is not supported"),
                        ),
                    }
                }
                out.binds.push(BindMount {
                    source: source.to_string(),
                    at: dest.to_string(),
                    read_only,
                });
            }
            other => self.bad(
                &format!("{at}.type"),
                format!("{at}: a {other:?} mount at {dest} is not supported"),
            ),
        }
    }

    fn linux(&mut self, l: &Map<String, Value>, out: &mut BundleConfig) {
        self.fields(
            "linux",
            l,
            &[
                "namespaces",
                "resources",
                "cgroupsPath",
                "maskedPaths",
                "readonlyPaths",
                "devices",
            ],
            &[
                (
                    "uidMappings",
                    "the zone maps its ids itself (its own 65536-id range)",
                ),
                (
                    "gidMappings",
                    "the zone maps its ids itself (its own 65536-id range)",
                ),
                ("sysctl", "a zone's sysctls are the host's"),
                ("seccomp", "the zone's own seccomp filter applies"),
                ("rootfsPropagation", "the zone's mounts are private"),
                (
                    "mountLabel",
                    "hull confines zones with namespaces and seccomp, not SELinux",
                ),
                ("intelRdt", "no cache allocation for zones"),
                ("personality", "a zone runs in the host's personality"),
                ("timeOffsets", "a zone keeps the host's clocks"),
                (
                    "memoryPolicy",
                    "a zone's memory follows the host's NUMA policy",
                ),
            ],
        );
        // Device nodes to make: those a zone has anyway (ctr's defaults) are what it gets;
        // any other is refused.
        match l.get("devices") {
            None => {}
            Some(Value::Array(list)) => {
                // One refusal naming every node a zone does not have, at the first of them.
                let mut refused: Vec<(usize, &str)> = Vec::new();
                for (i, d) in list.iter().enumerate() {
                    let node = d.get("path").and_then(Value::as_str).unwrap_or_default();
                    let (major, minor) = (
                        d.get("major").and_then(Value::as_i64),
                        d.get("minor").and_then(Value::as_i64),
                    );
                    let kind = d.get("type").and_then(Value::as_str);
                    let zones = ZONE_NODES
                        .iter()
                        .any(|(p, ma, mi)| *p == node && Some(*ma) == major && Some(*mi) == minor);
                    if !zones || kind != Some("c") {
                        refused.push((i, node));
                    }
                }
                if let Some((first, _)) = refused.first() {
                    let nodes: Vec<&str> = refused.iter().map(|(_, n)| *n).collect();
                    self.r.bad_value(
                        format!("linux.devices.{first}"),
                        format!(
                            "device node{} {} not supported: a zone gets /dev/null, zero, \
                             full, random, urandom, tty, console and ptmx only",
                            if nodes.len() == 1 { "" } else { "s" },
                            match nodes.len() {
                                1 => format!("{} is", nodes[0]),
                                _ => format!("{} are", list_some(&nodes)),
                            }
                        ),
                    );
                }
            }
            Some(_) => self.bad("linux.devices", "linux.devices must be a list"),
        }
        if let Some(p) = l.get("cgroupsPath")
            && !p.is_string()
        {
            // A zone's cgroup is hull/<uuid>; where the bundle would put it names no limit.
            self.bad("linux.cgroupsPath", "linux.cgroupsPath must be a string");
        }
        match l.get("namespaces") {
            None => {}
            Some(Value::Array(list)) => {
                let kinds = [
                    "pid", "network", "ipc", "uts", "mount", "cgroup", "user", "time",
                ];
                for (i, n) in list.iter().enumerate() {
                    let at = format!("linux.namespaces.{i}");
                    let Some(o) = n.as_object() else {
                        self.bad(&at, format!("{at} must be an object"));
                        continue;
                    };
                    self.fields(&at, o, &["type", "path"], &[]);
                    let kind = o.get("type").and_then(Value::as_str).unwrap_or_default();
                    if !kinds.contains(&kind) {
                        self.bad(
                            &format!("{at}.type"),
                            format!("{at}.type {kind:?} is no namespace"),
                        );
                    } else if let Some(path) = o
                        .get("path")
                        .and_then(Value::as_str)
                        .filter(|p| !p.is_empty())
                    {
                        // Another process's network, IPC or UTS namespace (a pod's sandbox):
                        // the zone joins it if that process is a hull zone's init, which
                        // vmmd checks at each start.
                        let file = match kind {
                            "network" => Some("net"),
                            "ipc" | "uts" => Some(kind),
                            _ => None,
                        };
                        let pid = path
                            .strip_prefix("/proc/")
                            .and_then(|r| r.split_once("/ns/"))
                            .filter(|(_, f)| Some(*f) == file)
                            .and_then(|(pid, _)| pid.parse::<i32>().ok())
                            .filter(|&pid| pid > 0);
                        // A network namespace CNI or `ip netns` made (never a path elsewhere:
                        // a bundle names no other host file as a namespace).
                        let named = kind == "network"
                            && ["/run/netns/", "/var/run/netns/"].iter().any(|d| {
                                path.strip_prefix(d).is_some_and(|n| {
                                    !n.is_empty() && !n.contains('/') && n != "." && n != ".."
                                })
                            });
                        match (pid, out.join) {
                            (None, _) if named => out.netns = Some(path.to_string()),
                            (Some(p), None) => out.join = Some(p),
                            (Some(p), Some(q)) if p == q => {}
                            (Some(_), Some(_)) => self.r.bad_property(
                                format!("{at}.path"),
                                "the namespaces a container joins must all be one process's \
                                 (a pod's sandbox)",
                            ),
                            (None, _) => self.r.bad_property(
                                format!("{at}.path"),
                                format!(
                                    "joining the {kind} namespace {path} is not supported: a zone \
                                     joins only another zone's network, IPC and UTS namespaces, \
                                     named /proc/PID/ns/net|ipc|uts, or a network namespace \
                                     under /run/netns (CNI's)"
                                ),
                            ),
                        }
                    }
                }
            }
            Some(_) => self.bad("linux.namespaces", "linux.namespaces must be a list"),
        }
        for (key, list) in [
            ("maskedPaths", &mut out.masked),
            ("readonlyPaths", &mut out.read_only),
        ] {
            let p = format!("linux.{key}");
            for (i, path) in self.strings(&p, l.get(key)).into_iter().enumerate() {
                let plain = path.split('/').skip(1).all(|c| !c.is_empty() && c != "..");
                let under = path.starts_with("/proc/") || path.starts_with("/sys/");
                if plain && under {
                    list.push(path);
                } else {
                    self.bad(
                        &format!("{p}.{i}"),
                        format!("{p}.{i} {path:?}: hull hides or protects paths under /proc and /sys only"),
                    );
                }
            }
        }
        if let Some(res) = l.get("resources") {
            match res.as_object() {
                Some(res) => self.resources(res, out),
                None => self.bad("linux.resources", "linux.resources must be an object"),
            }
        }
    }

    /// `linux.resources.devices`: allow rules only for the devices a zone has.
    fn devices(&mut self, devs: &Value) {
        let Some(list) = devs.as_array() else {
            self.bad(
                "linux.resources.devices",
                "linux.resources.devices must be a list",
            );
            return;
        };
        for (i, d) in list.iter().enumerate() {
            let at = format!("linux.resources.devices.{i}");
            let Some(o) = d.as_object() else {
                self.bad(&at, format!("{at} must be an object"));
                continue;
            };
            self.fields(&at, o, &["allow", "type", "major", "minor", "access"], &[]);
            if o.get("allow") != Some(&Value::Bool(true)) {
                continue; // a deny rule: the zone's device rules deny more already
            }
            let (major, minor) = (
                o.get("major").and_then(Value::as_i64),
                o.get("minor").and_then(Value::as_i64),
            );
            // mknod alone ("m"): a zone's user namespace makes no device node anyway.
            let mknod_only = o.get("access").and_then(Value::as_str) == Some("m");
            let standard = mknod_only
                || matches!((major, minor), (Some(ma), Some(mi)) if ZONE_DEVICES.contains(&(ma, mi)))
                || (major == Some(136) && o.get("type").and_then(Value::as_str) == Some("c"));
            if !standard {
                self.r.bad_value(
                    &at,
                    format!(
                        "access to device {}:{} is not supported: a zone gets /dev/null, \
                         zero, full, random, urandom, tty, console, ptmx and its ptys only",
                        major.map_or("*".into(), |m| m.to_string()),
                        minor.map_or("*".into(), |m| m.to_string())
                    ),
                );
            }
        }
    }

    fn resources(&mut self, res: &Map<String, Value>, out: &mut BundleConfig) {
        self.fields(
            "linux.resources",
            res,
            &["devices", "memory", "cpu", "pids"],
            &[
                ("blockIO", "the zone's zfs_io_priority sets its I/O weight"),
                ("hugepageLimits", "zones get no huge pages"),
                ("network", "the zone's NICs carry their own bandwidth caps"),
                ("rdma", "zones get no RDMA devices"),
                ("unified", "hull sets the zone's cgroup files itself"),
            ],
        );
        if let Some(devs) = res.get("devices") {
            self.devices(devs);
        }
        if let Some(m) = res.get("memory").and_then(Value::as_object) {
            self.fields(
                "linux.resources.memory",
                m,
                &["limit", "swap"],
                &[
                    (
                        "reservation",
                        "a zone's memory has a limit, not a reservation",
                    ),
                    ("swappiness", "a zone swaps as the host does"),
                    (
                        "disableOOMKiller",
                        "a zone at its memory limit meets the OOM killer",
                    ),
                    ("kernel", "kernel memory is counted with the rest"),
                    ("kernelTCP", "kernel memory is counted with the rest"),
                    ("useHierarchy", "cgroup v1's hierarchy flag is the host's"),
                    ("checkBeforeUpdate", "limits are set, not checked"),
                ],
            );
            out.memory = m
                .get("limit")
                .and_then(Value::as_i64)
                .filter(|l| *l > 0)
                .map(|l| l as u64);
            // Memory and swap together, as SmartOS's max_swap is (-1: no limit of its own).
            out.swap = m
                .get("swap")
                .and_then(Value::as_i64)
                .filter(|l| *l > 0)
                .map(|l| l as u64);
        }
        if let Some(cpu) = res.get("cpu").and_then(Value::as_object) {
            self.fields(
                "linux.resources.cpu",
                cpu,
                &["shares", "quota", "period"],
                &[
                    ("burst", "a zone's CPU cap has no burst"),
                    ("realtimeRuntime", "zones get no realtime CPU time"),
                    ("realtimePeriod", "zones get no realtime CPU time"),
                    ("cpus", "a zone runs on every CPU (cpu_cap bounds it)"),
                    ("mems", "a zone's memory follows the host's NUMA policy"),
                    ("idle", "a zone's CPU weight is its cpu_shares"),
                ],
            );
            out.cpu_shares = cpu.get("shares").and_then(Value::as_u64).filter(|s| *s > 0);
            if let (Some(q), Some(p)) = (
                cpu.get("quota").and_then(Value::as_i64),
                cpu.get("period").and_then(Value::as_u64),
            ) && q > 0
                && p > 0
            {
                out.cpu_quota = Some((q, p));
            }
        }
        if let Some(p) = res.get("pids").and_then(Value::as_object) {
            self.fields("linux.resources.pids", p, &["limit"], &[]);
            out.pids = p.get("limit").and_then(Value::as_i64).filter(|l| *l > 0);
        }
    }
}

/// A tmpfs size option (`65536k`, `64m`, `1g`, bytes) in bytes.
fn size_bytes(v: &str) -> Option<u64> {
    let (num, mul) = match v.char_indices().last()? {
        (i, 'k' | 'K') => (&v[..i], 1 << 10),
        (i, 'm' | 'M') => (&v[..i], 1 << 20),
        (i, 'g' | 'G') => (&v[..i], 1 << 30),
        _ => (v, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mul)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What containerd 1.6 writes for `ctr run` (its default spec), trimmed to the fields
    /// whose values matter here.
    fn containerd_default() -> Value {
        json!({
            "ociVersion": "1.0.2-dev",
            "process": {
                "user": {"uid": 0, "gid": 0, "additionalGids": [10]},
                "args": ["/bin/sh", "-c", "echo hi"],
                "env": ["PATH=/usr/bin:/bin"],
                "cwd": "/",
                "capabilities": {
                    "bounding": ["CAP_CHOWN", "CAP_KILL", "CAP_AUDIT_WRITE"],
                    "effective": ["CAP_CHOWN", "CAP_KILL", "CAP_AUDIT_WRITE"],
                    "permitted": ["CAP_CHOWN", "CAP_KILL", "CAP_AUDIT_WRITE"]
                },
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
                "noNewPrivileges": true
            },
            "root": {"path": "rootfs"},
            "hostname": "c1",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid"]},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts"},
                {"destination": "/dev/shm", "type": "tmpfs", "source": "shm"},
                {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue"},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["ro"]},
                {"destination": "/run", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}
            ],
            "linux": {
                "resources": {"devices": [{"allow": false, "access": "rwm"},
                    {"allow": true, "type": "c", "access": "m"},
                    {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"}],
                    "memory": {"limit": 268435456}, "cpu": {"shares": 512}, "pids": {"limit": 100}},
                "cgroupsPath": "/default/c1",
                "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"},
                    {"type": "mount"}, {"type": "network"}],
                "devices": [{"path": "/dev/null", "type": "c", "major": 1, "minor": 3,
                    "fileMode": 438, "uid": 0, "gid": 0}],
                "maskedPaths": ["/proc/kcore", "/proc/asound"],
                "readonlyPaths": ["/proc/sys"]
            }
        })
    }

    fn parsed(v: &Value) -> Result<BundleConfig, ValidationReport> {
        parse(v.to_string().as_bytes())
    }

    #[test]
    fn containerds_default_spec_is_what_a_zone_runs() {
        let c = parsed(&containerd_default()).expect("taken");
        assert_eq!(c.args, ["/bin/sh", "-c", "echo hi"]);
        assert_eq!((c.uid, c.gid, c.groups.as_slice()), (0, 0, &[10][..]));
        assert_eq!(c.root, "rootfs");
        assert_eq!(c.hostname.as_deref(), Some("c1"));
        assert_eq!(
            c.capabilities.as_deref(),
            Some(
                &[
                    "CAP_CHOWN".to_string(),
                    "CAP_KILL".into(),
                    "CAP_AUDIT_WRITE".into()
                ][..]
            )
        );
        assert_eq!(
            c.rlimits,
            [Rlimit {
                kind: "RLIMIT_NOFILE".into(),
                soft: 1024,
                hard: 1024
            }]
        );
        assert_eq!(
            c.tmpfs,
            [TmpfsMount {
                at: "/run".into(),
                size: Some(64 << 20),
                mode: Some(0o755),
                read_only: false
            }]
        );
        assert_eq!(c.masked, ["/proc/kcore", "/proc/asound"]);
        assert_eq!(c.read_only, ["/proc/sys"]);
        assert_eq!(
            (c.memory, c.cpu_shares, c.pids),
            (Some(256 << 20), Some(512), Some(100))
        );
    }

    #[test]
    fn a_pods_namespaces_are_a_zones_or_cnis() {
        let with = |namespaces: Value| {
            let spec = json!({"ociVersion": "1.0.2", "process": {"args": ["/bin/true"]},
                "root": {"path": "rootfs"}, "linux": {"namespaces": namespaces}});
            parse(spec.to_string().as_bytes())
        };
        let c = with(json!([{"type": "pid"}, {"type": "network", "path": "/proc/42/ns/net"},
            {"type": "ipc", "path": "/proc/42/ns/ipc"}, {"type": "uts", "path": "/proc/42/ns/uts"}]))
        .expect("a sandbox's namespaces");
        assert_eq!((c.join, c.netns), (Some(42), None));
        let c = with(json!([{"type": "network", "path": "/var/run/netns/cni-1"},
            {"type": "ipc", "path": "/proc/42/ns/ipc"}]))
        .expect("CNI's network, the sandbox's IPC");
        assert_eq!(
            (c.join, c.netns.as_deref()),
            (Some(42), Some("/var/run/netns/cni-1"))
        );
        for bad in [
            json!([{"type": "network", "path": "/proc/42/ns/net"}, {"type": "ipc", "path": "/proc/43/ns/ipc"}]),
            json!([{"type": "mount", "path": "/proc/42/ns/mnt"}]),
            json!([{"type": "network", "path": "/run/netns/../x"}]),
            json!([{"type": "ipc", "path": "/run/netns/cni-1"}]),
            json!([{"type": "network", "path": "/proc/42/ns/ipc"}]),
        ] {
            assert!(with(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn what_a_zone_cannot_honour_is_refused_naming_it() {
        let cases: &[(&str, Value, &str)] = &[
            ("/process/bogus", json!(1), "process.bogus"),
            (
                "/process/capabilities",
                json!({"bounding": ["CAP_CHOWN", "CAP_SYS_ADMIN"],
                "effective": ["CAP_CHOWN", "CAP_SYS_ADMIN"], "permitted": ["CAP_SYS_ADMIN", "CAP_CHOWN"]}),
                "process.capabilities.bounding.1",
            ),
            ("/process/user/uid", json!(70000), "process.user.uid"),
            (
                "/process/apparmorProfile",
                json!("docker-default"),
                "process.apparmorProfile",
            ),
            (
                "/linux/devices",
                json!([{"path": "/dev/sda", "type": "b", "major": 8, "minor": 0}]),
                "linux.devices.0",
            ),
            (
                "/linux/resources/devices/2/major",
                json!(8),
                "linux.resources.devices.2",
            ),
            (
                "/linux/namespaces/4/path",
                json!("/tmp/netns/cni-1"),
                "linux.namespaces.4.path",
            ),
            (
                "/hooks",
                json!({"prestart": [{"path": "/bin/true"}]}),
                "hooks",
            ),
            (
                "/mounts/0",
                json!({"destination": "/etc/hosts", "type": "bind", "source": "hosts",
                "options": ["rbind", "ro", "shared"]}),
                "mounts.0.options",
            ),
            (
                "/mounts/1",
                json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                    "options": ["rw"]}),
                "mounts.1.options",
            ),
            (
                "/mounts/1",
                json!({"destination": "/sys/fs/cgroup/memory", "type": "cgroup", "source": "cgroup"}),
                "mounts.1.destination",
            ),
            ("/root/readonly", json!("yes"), "root.readonly"),
            ("/ociVersion", json!("0.9"), "ociVersion"),
            (
                "/process/rlimits/0/type",
                json!("RLIMIT_BOGUS"),
                "process.rlimits.0.type",
            ),
        ];
        for (pointer, value, property) in cases {
            let mut spec = containerd_default();
            let (parent, last) = pointer.rsplit_once('/').expect("pointer");
            match spec
                .pointer_mut(parent)
                .unwrap_or_else(|| panic!("{pointer}"))
            {
                Value::Object(o) => {
                    o.insert(last.to_string(), value.clone());
                }
                Value::Array(a) => a[last.parse::<usize>().expect("index")] = value.clone(),
                other => panic!("{pointer}: {other}"),
            }
            let r = parsed(&spec).expect_err(pointer);
            let named: Vec<&str> = r.details.iter().map(|p| p.property.as_str()).collect();
            assert_eq!(named, [*property], "{pointer}: {r:?}");
        }
        let mut spec = containerd_default();
        spec["process"]["capabilities"]["ambient"] = json!(["CAP_KILL"]);
        let r = parsed(&spec).expect_err("one set");
        assert_eq!(r.bad_values, ["process.capabilities.ambient"]);
        assert!(parse(b"[]").is_err() && parse(b"{").is_err());
    }
}

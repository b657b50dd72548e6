//! `mdata-get`, `mdata-put`, `mdata-delete` and `mdata-list`, as joyent/mdata-client has
//! them: one binary, which tool it is comes from its name (`mdata get` works too). hull
//! binds it read-only into every zone (/usr/sbin/mdata-*, /native/usr/sbin/mdata-* in lx
//! zones); it is linked statically, since a zone's userland may have no C library at all.
//!
//! Exit codes as mdata-client's: 0 found (or done), 1 not found, 2 error, 3 usage.
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hull_mdata::client::{self, Call, Reply};

/// Where a zone finds the metadata service (lx zones under /native, as on SmartOS).
const SOCKETS: &[&str] = &[
    "/.zonecontrol/metadata.sock",
    "/native/.zonecontrol/metadata.sock",
];
/// A reply longer than this is not one the agent sends.
const MAX_REPLY: usize = 4 << 20;
/// How long one exchange may take; PUT goes through vmmd's update path.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Connections tried before giving up: the service is briefly away while vmmd restarts.
const ATTEMPTS: u32 = 10;

const FOUND: u8 = 0;
const NOT_FOUND: u8 = 1;
const ERROR: u8 = 2;
const USAGE: u8 = 3;

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().collect();
    let name = args
        .first()
        .map(|a| {
            Path::new(a)
                .file_name()
                .map_or(a.clone(), |n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_default();
    let tool = match name.strip_prefix("mdata-") {
        Some(t) => t.to_string(),
        None if args.len() > 1 => args.remove(1),
        None => String::new(),
    };
    let rest = &args[1..];
    let mut stdin_value = String::new();
    let call = match (tool.as_str(), rest) {
        ("get", [key]) => Call::Get(key),
        ("list", []) => Call::Keys,
        ("delete", [key]) => Call::Delete(key),
        ("put", [key, value]) => Call::Put(key, value),
        ("put", [key]) => {
            if let Err(e) = std::io::stdin().read_to_string(&mut stdin_value) {
                eprintln!("mdata-put: cannot read the value from stdin: {e}");
                return ExitCode::from(ERROR);
            }
            Call::Put(key, &stdin_value)
        }
        _ => {
            eprintln!(
                "usage: mdata-get KEY | mdata-put KEY [VALUE] (else stdin) | mdata-delete KEY | mdata-list"
            );
            return ExitCode::from(USAGE);
        }
    };
    match exchange(call) {
        Ok(Reply::Success(value)) => {
            if matches!(call, Call::Get(_) | Call::Keys) && !value.is_empty() {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(value.as_bytes());
                let _ = out.write_all(b"\n");
            }
            ExitCode::from(FOUND)
        }
        Ok(Reply::NotFound) => {
            if let Call::Get(key) = call {
                eprintln!("No metadata for '{key}'");
            }
            ExitCode::from(NOT_FOUND)
        }
        Ok(Reply::Failure(why)) => {
            eprintln!("mdata-{tool}: the metadata service refused: {why}");
            ExitCode::from(ERROR)
        }
        Err(e) => {
            eprintln!("mdata-{tool}: {e}");
            ExitCode::from(ERROR)
        }
    }
}

/// One request and its reply; a connection that breaks before the reply is retried.
fn exchange(call: Call<'_>) -> Result<Reply, String> {
    let path = SOCKETS
        .iter()
        .find(|p| Path::new(p).exists())
        .ok_or_else(|| format!("no metadata service here (none of {})", SOCKETS.join(", ")))?;
    let mut last = String::new();
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(200 * u64::from(attempt)));
        }
        match once(path, call) {
            Ok(reply) => return Ok(reply),
            Err(Failed::Retry(e)) => last = e,
            Err(Failed::Fatal(e)) => return Err(e),
        }
    }
    Err(format!("{last} (tried {ATTEMPTS} times)"))
}

enum Failed {
    /// The service was away or went away mid-request.
    Retry(String),
    Fatal(String),
}

fn once(path: &str, call: Call<'_>) -> Result<Reply, Failed> {
    let retry = |what: &str, e: std::io::Error| Failed::Retry(format!("{what} {path}: {e}"));
    let stream = UnixStream::connect(path).map_err(|e| retry("cannot connect to", e))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
        .map_err(|e| Failed::Fatal(format!("cannot set up {path}: {e}")))?;
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| retry("cannot use", e))?);
    let mut writer = stream;
    writer
        .write_all(b"NEGOTIATE V2\n")
        .map_err(|e| retry("cannot write to", e))?;
    let line = read_line(&mut reader).map_err(|e| retry("cannot read from", e))?;
    if line != "V2_OK" {
        return Err(Failed::Fatal(format!(
            "the metadata service at {path} does not speak V2 (it answered {line:?})"
        )));
    }
    let reqid = request_id();
    writer
        .write_all(client::encode(reqid, call).as_bytes())
        .map_err(|e| retry("cannot write to", e))?;
    let line = read_line(&mut reader).map_err(|e| retry("cannot read from", e))?;
    client::decode(&line, reqid).map_err(|e| Failed::Fatal(e.to_string()))
}

/// Reads one line (without its newline); EOF before it is an error.
fn read_line(r: &mut impl BufRead) -> std::io::Result<String> {
    let mut buf = Vec::new();
    r.take(MAX_REPLY as u64).read_until(b'\n', &mut buf)?;
    if buf.pop() != Some(b'\n') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the connection closed before a whole reply",
        ));
    }
    String::from_utf8(buf).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, "a reply that is not text")
    })
}

/// A request id that differs between runs (mdata-client uses a random one).
fn request_id() -> u32 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    nanos ^ std::process::id().rotate_left(16)
}

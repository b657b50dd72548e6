//! The client's side: the frames `mdata-get` and friends send and the replies they read.

use std::fmt;

use crate::{base64_decode, base64_encode, crc32};

/// What a client asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call<'a> {
    Get(&'a str),
    Keys,
    Put(&'a str, &'a str),
    Delete(&'a str),
}

/// The V2 request line (newline included) for `call`, with request id `reqid`.
pub fn encode(reqid: u32, call: Call<'_>) -> String {
    let (verb, arg) = match call {
        Call::Get(key) => ("GET", Some(base64_encode(key.as_bytes()))),
        Call::Keys => ("KEYS", None),
        Call::Put(key, value) => {
            let inner = format!(
                "{} {}",
                base64_encode(key.as_bytes()),
                base64_encode(value.as_bytes())
            );
            ("PUT", Some(base64_encode(inner.as_bytes())))
        }
        Call::Delete(key) => ("DELETE", Some(base64_encode(key.as_bytes()))),
    };
    let mut body = format!("{reqid:08x} {verb}");
    if let Some(arg) = arg {
        body.push(' ');
        body.push_str(&arg);
    }
    format!("V2 {} {:08x} {body}\n", body.len(), crc32(body.as_bytes()))
}

/// A reply, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `SUCCESS`, with the value (empty when none was sent).
    Success(String),
    /// `NOTFOUND`.
    NotFound,
    /// `FAILURE`, with the reason if the agent gave one.
    Failure(String),
}

/// A reply line that is not an answer to the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyError {
    /// Not a V2 frame.
    Syntax(String),
    /// Its length or CRC does not match its body.
    Corrupt,
    /// It answers another request.
    OtherRequest { want: String, got: String },
    /// An unknown status.
    Status(String),
    /// The value is not base64 text.
    Value,
}

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplyError::Syntax(line) => write!(f, "the metadata service answered {line:?}"),
            ReplyError::Corrupt => f.write_str("the reply's length or CRC is wrong"),
            ReplyError::OtherRequest { want, got } => {
                write!(f, "the reply is for request {got}, not {want}")
            }
            ReplyError::Status(s) => write!(f, "unknown reply status {s:?}"),
            ReplyError::Value => f.write_str("the reply's value is not base64 text"),
        }
    }
}

impl std::error::Error for ReplyError {}

/// Decodes the reply line (without its newline) to request `reqid`.
pub fn decode(line: &str, reqid: u32) -> Result<Reply, ReplyError> {
    let syntax = || ReplyError::Syntax(line.chars().take(80).collect());
    let rest = line.strip_prefix("V2 ").ok_or_else(syntax)?;
    let mut fields = rest.splitn(3, ' ');
    let (Some(len), Some(crc), Some(body)) = (fields.next(), fields.next(), fields.next()) else {
        return Err(syntax());
    };
    let len: usize = len.parse().map_err(|_| syntax())?;
    let crc = u32::from_str_radix(crc, 16).map_err(|_| syntax())?;
    if len != body.len() || crc != crc32(body.as_bytes()) {
        return Err(ReplyError::Corrupt);
    }
    let mut parts = body.splitn(3, ' ');
    let (Some(id), Some(status)) = (parts.next(), parts.next()) else {
        return Err(syntax());
    };
    let want = format!("{reqid:08x}");
    if id != want {
        return Err(ReplyError::OtherRequest {
            want,
            got: id.to_string(),
        });
    }
    let value = match parts.next() {
        Some(b64) => base64_decode(b64)
            .and_then(|v| String::from_utf8(v).ok())
            .ok_or(ReplyError::Value)?,
        None => String::new(),
    };
    match status {
        "SUCCESS" => Ok(Reply::Success(value)),
        "NOTFOUND" => Ok(Reply::NotFound),
        "FAILURE" => Ok(Reply::Failure(value)),
        other => Err(ReplyError::Status(other.to_string())),
    }
}

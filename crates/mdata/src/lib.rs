//! The SmartOS metadata protocol, as SmartOS's metadata agent speaks it to a guest and as
//! `mdata-get` and cloud-init's SmartOS datasource speak it to the agent. Bytes in, values
//! out, no I/O: vmmd's agent and hull's `mdata-*` tools both use it.
//!
//! One request or reply is one line. A guest first sends a bare newline (answered
//! `invalid command`) and `NEGOTIATE V2` (answered `V2_OK`); then each request is a V2
//! frame:
//!
//! ```text
//! V2 <body length> <crc32 of body, 8 hex digits> <body>\n
//! body = <request id, hex> <VERB>[ <base64 argument>]
//! ```
//!
//! and each reply echoes the request id with `SUCCESS`, `NOTFOUND` or `FAILURE` and a
//! base64 value. `PUT`'s argument is itself `<base64 key> <base64 value>`. V1 clients send
//! `GET key` or `KEYS` and get `SUCCESS`, the value dot-stuffed, and a line holding `.`.
//!
//! Every byte a guest sends is untrusted: [`parse_request`] bounds what it accepts, never
//! panics, and tells a frame to drop (bad length, bad CRC: SmartOS answers nothing) from a
//! request to refuse (an answer of `FAILURE`).
#![forbid(unsafe_code)]

use std::fmt;

use base64::Engine;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD as BASE64};

/// Decoding as lenient as SmartOS's (node's Buffer): padding or none, and stray bits after
/// the last byte ignored. Encoding is always canonical.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

pub mod client;

/// The longest request line the agent reads, newline included. A 64 KiB value PUT is about
/// 116 KiB on the wire (base64 twice); anything longer is cut off and refused.
pub const MAX_REQUEST_LINE: usize = 256 * 1024;
/// The longest request id taken (mdata-client and cloud-init send 8 hex digits).
pub const MAX_REQUEST_ID: usize = 16;

/// What a bare newline or an unknown line gets: how a client knows a metadata service is
/// listening.
pub const INVALID_COMMAND: &[u8] = b"invalid command\n";
/// The answer to `NEGOTIATE V2`.
pub const V2_OK: &[u8] = b"V2_OK\n";

/// One request a guest makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// The value of a key.
    Get(String),
    /// The keys the guest may read, one per line.
    Keys,
    /// Sets a key (an empty value removes it, as SmartOS does).
    Put { key: String, value: String },
    /// Removes a key.
    Delete(String),
}

/// A line from a guest, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// An empty or unknown line: answer [`INVALID_COMMAND`].
    InvalidCommand,
    /// `NEGOTIATE <version>`: answer [`V2_OK`] for V2, `FAILURE` otherwise.
    Negotiate { v2: bool },
    /// A V1 request (GET and KEYS only); answer with [`encode_v1`].
    V1(Result<Request, Refusal>),
    /// A V2 request; answer with [`encode_v2`] and its id.
    V2 {
        reqid: String,
        request: Result<Request, Refusal>,
    },
    /// A V2 frame that cannot be trusted to be what the guest sent (its length or CRC is
    /// wrong, or it does not parse): SmartOS drops it without an answer, and so do we.
    Dropped(FrameError),
}

/// Why a well-framed request is refused; the agent answers `FAILURE` with this text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A verb the protocol version does not have.
    UnknownCommand(String),
    /// GET or DELETE without a key, or a key that is not text.
    NoKey(&'static str),
    /// PUT's argument is not `<base64 key> <base64 value>`.
    BadPut,
    /// The argument is not base64.
    NotBase64,
    /// A key or value that is not UTF-8 text (metadata values are JSON strings).
    NotText,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::UnknownCommand(c) => write!(f, "Unknown command {c}"),
            Refusal::NoKey(verb) => write!(f, "Invalid {verb} Request"),
            Refusal::BadPut => f.write_str("Invalid PUT Request"),
            Refusal::NotBase64 => f.write_str("the request's argument is not base64"),
            Refusal::NotText => f.write_str("metadata keys and values must be UTF-8 text"),
        }
    }
}

impl std::error::Error for Refusal {}

/// Why a V2 frame is dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// Not `<length> <crc> <reqid> <body>`.
    Syntax,
    /// The length field is not the body's length.
    Length { said: usize, body: usize },
    /// The CRC field is not the body's CRC-32.
    Crc { said: u32, body: u32 },
    /// The line is longer than [`MAX_REQUEST_LINE`] or not ASCII.
    TooLong,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Syntax => f.write_str("the V2 frame does not parse"),
            FrameError::Length { said, body } => {
                write!(f, "the V2 frame says {said} bytes, its body has {body}")
            }
            FrameError::Crc { said, body } => {
                write!(
                    f,
                    "the V2 frame's CRC is {said:08x}, its body's is {body:08x}"
                )
            }
            FrameError::TooLong => write!(
                f,
                "the request line is not ASCII or longer than {MAX_REQUEST_LINE} bytes"
            ),
        }
    }
}

impl std::error::Error for FrameError {}

/// What the agent answers a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `SUCCESS` with a value (PUT and DELETE answer `OK`, as SmartOS does).
    Value(String),
    /// `NOTFOUND`.
    NotFound,
    /// `FAILURE`, with the reason (sent to V2 clients).
    Failure(String),
}

/// The protocol's CRC-32 (IEEE, as zlib's), of a frame body.
pub fn crc32(body: &[u8]) -> u32 {
    crc32fast::hash(body)
}

/// Standard base64 with padding, as both ends of the protocol write it.
pub fn base64_encode(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}

/// Decodes standard base64, padded or not (see [`LENIENT`]).
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    LENIENT.decode(text).ok()
}

/// Parses one line from a guest (without its newline; a trailing `\r` or blanks are
/// ignored, as SmartOS's agent ignores them).
pub fn parse_request(line: &[u8]) -> Incoming {
    if line.len() >= MAX_REQUEST_LINE || !line.is_ascii() {
        return Incoming::Dropped(FrameError::TooLong);
    }
    // ASCII was checked just above, so this cannot fail.
    let Ok(line) = std::str::from_utf8(line) else {
        return Incoming::Dropped(FrameError::TooLong);
    };
    let line = line.trim_end();
    let (cmd, rest) = match line.split_once(|c: char| c.is_ascii_whitespace()) {
        Some((cmd, rest)) => (cmd, rest),
        None => (line, ""),
    };
    if cmd.is_empty() {
        return Incoming::InvalidCommand;
    }
    match cmd {
        "NEGOTIATE" if rest.is_empty() => Incoming::InvalidCommand,
        "NEGOTIATE" => Incoming::Negotiate { v2: rest == "V2" },
        "GET" if rest.trim().is_empty() => Incoming::InvalidCommand,
        "GET" => Incoming::V1(Ok(Request::Get(rest.trim().to_string()))),
        "KEYS" => Incoming::V1(Ok(Request::Keys)),
        "V2" => parse_v2(rest),
        other => Incoming::V1(Err(Refusal::UnknownCommand(other.to_string()))),
    }
}

fn parse_v2(frame: &str) -> Incoming {
    let drop = |e| Incoming::Dropped(e);
    let mut fields = frame.trim_start().splitn(3, ' ');
    let (Some(len), Some(crc), Some(body)) = (fields.next(), fields.next(), fields.next()) else {
        return drop(FrameError::Syntax);
    };
    let digits = |s: &str, hex: bool| {
        !s.is_empty()
            && s.len() <= 8
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (hex && matches!(b, b'a'..=b'f')))
    };
    if !digits(len, false) || !digits(crc, true) {
        return drop(FrameError::Syntax);
    }
    let (Ok(said), Ok(crc)) = (len.parse::<usize>(), u32::from_str_radix(crc, 16)) else {
        return drop(FrameError::Syntax);
    };
    if said != body.len() {
        return drop(FrameError::Length {
            said,
            body: body.len(),
        });
    }
    let actual = crc32(body.as_bytes());
    if crc != actual {
        return drop(FrameError::Crc {
            said: crc,
            body: actual,
        });
    }
    let mut parts = body.splitn(3, ' ');
    let (Some(reqid), Some(verb)) = (parts.next(), parts.next()) else {
        return drop(FrameError::Syntax);
    };
    if reqid.is_empty()
        || reqid.len() > MAX_REQUEST_ID
        || !reqid
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        || verb.is_empty()
    {
        return drop(FrameError::Syntax);
    }
    let arg = parts.next().unwrap_or("").trim();
    Incoming::V2 {
        reqid: reqid.to_string(),
        request: v2_request(verb, arg),
    }
}

fn v2_request(verb: &str, arg: &str) -> Result<Request, Refusal> {
    let text = |arg: &str| -> Result<String, Refusal> {
        let bytes = base64_decode(arg).ok_or(Refusal::NotBase64)?;
        String::from_utf8(bytes).map_err(|_| Refusal::NotText)
    };
    match verb {
        "GET" | "DELETE" => {
            let name = if verb == "GET" { "GET" } else { "DELETE" };
            let key = text(arg)?.trim().to_string();
            if key.is_empty() {
                return Err(Refusal::NoKey(name));
            }
            Ok(match verb {
                "GET" => Request::Get(key),
                _ => Request::Delete(key),
            })
        }
        "KEYS" => Ok(Request::Keys),
        "PUT" => {
            let inner = text(arg)?;
            let mut terms = inner.trim().split(' ');
            let (Some(k), Some(v), None) = (terms.next(), terms.next(), terms.next()) else {
                return Err(Refusal::BadPut);
            };
            let key = text(k).map_err(|_| Refusal::BadPut)?.trim().to_string();
            let value = text(v).map_err(|_| Refusal::BadPut)?;
            if key.is_empty() {
                return Err(Refusal::BadPut);
            }
            Ok(Request::Put { key, value })
        }
        other => Err(Refusal::UnknownCommand(other.to_string())),
    }
}

/// The V2 reply line to request `reqid`.
pub fn encode_v2(reqid: &str, answer: &Answer) -> Vec<u8> {
    let (code, value) = match answer {
        Answer::Value(v) => ("SUCCESS", Some(v.as_str())),
        Answer::NotFound => ("NOTFOUND", None),
        Answer::Failure(why) => ("FAILURE", Some(why.as_str())),
    };
    let mut body = format!("{reqid} {code}");
    if let Some(v) = value.filter(|v| !v.is_empty()) {
        body.push(' ');
        body.push_str(&base64_encode(v.as_bytes()));
    }
    format!("V2 {} {:08x} {body}\n", body.len(), crc32(body.as_bytes())).into_bytes()
}

/// The V1 reply: `SUCCESS`, the value with lines that start with `.` doubled, and `.`;
/// or `NOTFOUND`; or `FAILURE`.
pub fn encode_v1(answer: &Answer) -> Vec<u8> {
    match answer {
        Answer::Value(v) => {
            let mut out = String::from("SUCCESS\n");
            for line in v.split('\n') {
                if line.starts_with('.') {
                    out.push('.');
                }
                out.push_str(line);
                out.push('\n');
            }
            out.push_str(".\n");
            out.into_bytes()
        }
        Answer::NotFound => b"NOTFOUND\n".to_vec(),
        Answer::Failure(_) => b"FAILURE\n".to_vec(),
    }
}

/// The reply to a `NEGOTIATE`.
pub fn encode_negotiate(v2: bool) -> &'static [u8] {
    if v2 { V2_OK } else { b"FAILURE\n" }
}

#[cfg(test)]
mod tests;

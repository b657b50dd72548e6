//! nf_tables over nfnetlink, encoded by hand: the few messages the anti-spoofing guard
//! sends (tables, chains, sets, rules made of a handful of expressions, set elements) and
//! the replies it reads (acks, errors, set element dumps).
//!
//! Why by hand: no maintained crate under a licence hull can take speaks nf_tables netlink
//! (rustables is GPL-3.0; the `nftables` crate drives the `nft` binary, a process spawn
//! and a full ruleset parse per call, which is what a NIC's setup must not cost). The
//! subset here is small and fixed, and every message of a change goes in one batch, which
//! the kernel applies atomically.
//!
//! Integers in nf_tables attributes are big-endian unless noted; netlink headers and
//! attribute headers are host-endian.

use std::os::fd::AsFd;
use std::time::Duration;

/// `NFPROTO_BRIDGE`: the family of hull's tables.
pub const FAMILY_BRIDGE: u8 = 7;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
/// `NLM_F_CREATE`.
pub const F_CREATE: u16 = 0x400;
/// `NLM_F_APPEND`.
pub const F_APPEND: u16 = 0x800;
/// `NLM_F_EXCL`.
pub const F_EXCL: u16 = 0x200;
/// Set in an error reply whose echoed request is cut to its header.
const NLM_F_CAPPED: u16 = 0x100;
/// Set in an error reply that carries extended-ack attributes.
const NLM_F_ACK_TLVS: u16 = 0x200;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLMSGERR_ATTR_MSG: u16 = 1;

/// nf_tables message types (`enum nf_tables_msg_types`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum MsgType {
    NewTable = 0,
    DelTable = 2,
    NewChain = 3,
    NewRule = 6,
    NewSet = 9,
    NewSetElem = 12,
    GetSetElem = 13,
    DelSetElem = 14,
}

/// Attribute numbers (from linux/netfilter/nf_tables.h).
pub mod attr {
    pub const TABLE_NAME: u16 = 1;
    pub const TABLE_FLAGS: u16 = 2;

    pub const CHAIN_TABLE: u16 = 1;
    pub const CHAIN_NAME: u16 = 3;
    pub const CHAIN_HOOK: u16 = 4;
    pub const CHAIN_POLICY: u16 = 5;
    pub const CHAIN_TYPE: u16 = 7;
    pub const HOOK_HOOKNUM: u16 = 1;
    pub const HOOK_PRIORITY: u16 = 2;

    pub const RULE_TABLE: u16 = 1;
    pub const RULE_CHAIN: u16 = 2;
    pub const RULE_EXPRESSIONS: u16 = 4;
    pub const LIST_ELEM: u16 = 1;
    pub const EXPR_NAME: u16 = 1;
    pub const EXPR_DATA: u16 = 2;

    pub const SET_TABLE: u16 = 1;
    pub const SET_NAME: u16 = 2;
    pub const SET_FLAGS: u16 = 3;
    pub const SET_KEY_TYPE: u16 = 4;
    pub const SET_KEY_LEN: u16 = 5;
    pub const SET_DATA_TYPE: u16 = 6;
    pub const SET_DESC: u16 = 9;
    pub const SET_ID: u16 = 10;
    pub const SET_USERDATA: u16 = 13;
    pub const SET_DESC_CONCAT: u16 = 2;
    pub const SET_FIELD_LEN: u16 = 1;

    pub const SET_ELEM_LIST_TABLE: u16 = 1;
    pub const SET_ELEM_LIST_SET: u16 = 2;
    pub const SET_ELEM_LIST_ELEMENTS: u16 = 3;
    pub const SET_ELEM_KEY: u16 = 1;
    pub const SET_ELEM_DATA: u16 = 2;
    pub const SET_ELEM_KEY_END: u16 = 10;

    pub const DATA_VALUE: u16 = 1;
    pub const DATA_VERDICT: u16 = 2;
    pub const VERDICT_CODE: u16 = 1;
    pub const VERDICT_CHAIN: u16 = 2;
}

/// `NFT_SET_INTERVAL`.
pub const SET_INTERVAL: u32 = 0x4;
/// `NFT_SET_MAP`.
pub const SET_MAP: u32 = 0x8;
/// `NFT_SET_CONCAT`.
pub const SET_CONCAT: u32 = 0x80;

/// Registers: the verdict register, the first 16-byte one, and 32-bit ones by number.
pub const REG_VERDICT: u32 = 0;
pub const REG_1: u32 = 1;
/// `NFT_REG32_00 + n`.
pub const fn reg32(n: u32) -> u32 {
    8 + n
}

/// Where a payload expression reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Base {
    Link = 0,
    Network = 1,
    Transport = 2,
}

/// `NFT_META_*` keys hull reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum MetaKey {
    Iif = 4,
    L4Proto = 16,
}

/// A rule's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
    Jump(String),
    /// To a chain, not coming back: at its end the frame goes on after the last jump.
    Goto(String),
}

/// The expressions hull's rules are made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// Loads packet metadata into `dreg`.
    Meta { key: MetaKey, dreg: u32 },
    /// Loads `len` bytes at `offset` from `base` into `dreg`.
    Payload {
        base: Base,
        offset: u32,
        len: u32,
        dreg: u32,
    },
    /// Compares `sreg` with `data`: equal, or not equal with `neq`.
    Cmp { sreg: u32, neq: bool, data: Vec<u8> },
    /// Looks `sreg` up in the set; the rule goes on when found (or when not, with `inv`).
    Lookup {
        set: String,
        set_id: u32,
        sreg: u32,
        inv: bool,
    },
    /// Looks `sreg` up in the verdict map `set`: a found key's verdict is the rule's (a
    /// missing one ends the rule).
    Vmap { set: String, set_id: u32, sreg: u32 },
    /// Converts `len` bytes of 4-byte words in `reg` to network order.
    Hton { reg: u32, len: u32 },
    /// Counts packets and bytes.
    Counter,
    /// Ends the rule with a verdict.
    Verdict(Verdict),
}

/// A growing list of netlink attributes.
#[derive(Debug, Default, Clone)]
pub struct Attrs(Vec<u8>);

impl Attrs {
    pub fn new() -> Attrs {
        Attrs::default()
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    fn pad(&mut self) {
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
    }

    /// An attribute with a raw value.
    pub fn put(&mut self, ty: u16, value: &[u8]) -> &mut Attrs {
        let len = (4 + value.len()) as u16;
        self.0.extend_from_slice(&len.to_ne_bytes());
        self.0.extend_from_slice(&ty.to_ne_bytes());
        self.0.extend_from_slice(value);
        self.pad();
        self
    }

    /// A NUL-terminated string.
    pub fn str(&mut self, ty: u16, s: &str) -> &mut Attrs {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.put(ty, &v)
    }

    /// A big-endian u32.
    pub fn u32(&mut self, ty: u16, v: u32) -> &mut Attrs {
        self.put(ty, &v.to_be_bytes())
    }

    /// A nested attribute whose contents `f` writes.
    pub fn nest(&mut self, ty: u16, f: impl FnOnce(&mut Attrs)) -> &mut Attrs {
        let start = self.0.len();
        self.0.extend_from_slice(&[0; 4]);
        f(self);
        let len = (self.0.len() - start) as u16;
        self.0[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self.0[start + 2..start + 4].copy_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        self
    }

    /// `NFTA_DATA_VALUE` inside a nest of type `ty`.
    pub fn data(&mut self, ty: u16, value: &[u8]) -> &mut Attrs {
        self.nest(ty, |a| {
            a.put(attr::DATA_VALUE, value);
        })
    }

    /// One expression, as an element of a rule's expression list.
    pub fn expr(&mut self, e: &Expr) -> &mut Attrs {
        self.nest(attr::LIST_ELEM, |a| {
            let (name, data): (&str, Attrs) = match e {
                Expr::Meta { key, dreg } => {
                    let mut d = Attrs::new();
                    d.u32(1, *dreg).u32(2, *key as u32);
                    ("meta", d)
                }
                Expr::Payload {
                    base,
                    offset,
                    len,
                    dreg,
                } => {
                    let mut d = Attrs::new();
                    d.u32(1, *dreg)
                        .u32(2, *base as u32)
                        .u32(3, *offset)
                        .u32(4, *len);
                    ("payload", d)
                }
                Expr::Cmp { sreg, neq, data } => {
                    let mut d = Attrs::new();
                    d.u32(1, *sreg).u32(2, u32::from(*neq)).data(3, data);
                    ("cmp", d)
                }
                Expr::Lookup {
                    set,
                    set_id,
                    sreg,
                    inv,
                } => {
                    let mut d = Attrs::new();
                    d.str(1, set).u32(2, *sreg).u32(4, *set_id);
                    if *inv {
                        d.u32(5, 1);
                    }
                    ("lookup", d)
                }
                Expr::Vmap { set, set_id, sreg } => {
                    let mut d = Attrs::new();
                    d.str(1, set)
                        .u32(2, *sreg)
                        .u32(3, REG_VERDICT)
                        .u32(4, *set_id);
                    ("lookup", d)
                }
                Expr::Hton { reg, len } => {
                    let mut d = Attrs::new();
                    // sreg, dreg, op (hton), len, size
                    d.u32(1, *reg).u32(2, *reg).u32(3, 1).u32(4, *len).u32(5, 4);
                    ("byteorder", d)
                }
                Expr::Counter => ("counter", Attrs::new()),
                Expr::Verdict(v) => {
                    let mut d = Attrs::new();
                    d.u32(1, REG_VERDICT).nest(2, |imm| {
                        imm.nest(attr::DATA_VERDICT, |vd| match v {
                            Verdict::Accept => {
                                vd.u32(attr::VERDICT_CODE, 1);
                            }
                            Verdict::Drop => {
                                vd.u32(attr::VERDICT_CODE, 0);
                            }
                            Verdict::Jump(chain) => {
                                vd.u32(attr::VERDICT_CODE, NFT_JUMP as u32);
                                vd.str(attr::VERDICT_CHAIN, chain);
                            }
                            Verdict::Goto(chain) => {
                                vd.u32(attr::VERDICT_CODE, NFT_GOTO as u32);
                                vd.str(attr::VERDICT_CHAIN, chain);
                            }
                        });
                    });
                    ("immediate", d)
                }
            };
            a.str(attr::EXPR_NAME, name);
            if !data.0.is_empty() {
                a.put(attr::EXPR_DATA | NLA_F_NESTED, &data.0);
            }
        })
    }
}

fn header(buf: &mut Vec<u8>, ty: u16, flags: u16, seq: u32, family: u8, res_id: u16) {
    // nlmsghdr: length (patched by the caller), type, flags, seq, port id (0: the kernel).
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: family, version 0, resource id (big-endian).
    buf.push(family);
    buf.push(0);
    buf.extend_from_slice(&res_id.to_be_bytes());
}

fn message(ty: u16, flags: u16, seq: u32, family: u8, res_id: u16, attrs: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(20 + attrs.len());
    header(&mut buf, ty, flags, seq, family, res_id);
    buf.extend_from_slice(attrs);
    let len = buf.len() as u32;
    buf[..4].copy_from_slice(&len.to_ne_bytes());
    buf
}

/// One nf_tables message of a batch, before encoding (what the recording fake keeps).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    pub ty: MsgType,
    pub flags: u16,
    pub family: u8,
    pub attrs: Vec<u8>,
}

/// A transaction: messages the kernel applies all together or not at all.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Batch {
    pub msgs: Vec<Msg>,
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    pub fn push(&mut self, ty: MsgType, flags: u16, attrs: &Attrs) {
        self.msgs.push(Msg {
            ty,
            flags,
            family: FAMILY_BRIDGE,
            attrs: attrs.0.clone(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    /// The bytes of the batch (begin, the messages with sequence numbers from `seq + 1`,
    /// end). Only the last message asks for an ack: the kernel reports every failing
    /// message anyway, and one ack per message of a large batch (vmmd's start with hundreds
    /// of running guests) would overrun the socket's receive buffer.
    pub fn encode(&self, seq: u32) -> Vec<u8> {
        let mut out = message(
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            seq,
            0,
            NFNL_SUBSYS_NFTABLES,
            &[],
        );
        let last = self.msgs.len().saturating_sub(1);
        for (i, m) in self.msgs.iter().enumerate() {
            let ack = if i == last { NLM_F_ACK } else { 0 };
            out.extend(message(
                (NFNL_SUBSYS_NFTABLES << 8) | m.ty as u16,
                NLM_F_REQUEST | ack | m.flags,
                seq.wrapping_add(1 + i as u32),
                m.family,
                0,
                &m.attrs,
            ));
        }
        out.extend(message(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            seq.wrapping_add(1 + self.msgs.len() as u32),
            0,
            NFNL_SUBSYS_NFTABLES,
            &[],
        ));
        out
    }
}

/// A dump request for the elements of set `set` in table `table`.
pub fn dump_request(table: &str, set: &str, seq: u32) -> Vec<u8> {
    let mut a = Attrs::new();
    a.str(attr::SET_ELEM_LIST_TABLE, table)
        .str(attr::SET_ELEM_LIST_SET, set);
    message(
        (NFNL_SUBSYS_NFTABLES << 8) | MsgType::GetSetElem as u16,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        FAMILY_BRIDGE,
        0,
        &a.0,
    )
}

/// A set element: its key, and for an interval its last key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Elem {
    pub key: Vec<u8>,
    pub key_end: Option<Vec<u8>>,
}

/// Messages adding (or deleting) `elems` to set `set` of `table`.
pub fn elements(table: &str, set: &str, elems: &[Elem]) -> Attrs {
    let mut a = Attrs::new();
    a.str(attr::SET_ELEM_LIST_TABLE, table)
        .str(attr::SET_ELEM_LIST_SET, set)
        .nest(attr::SET_ELEM_LIST_ELEMENTS, |list| {
            for e in elems {
                list.nest(attr::LIST_ELEM, |el| {
                    el.data(attr::SET_ELEM_KEY, &e.key);
                    if let Some(end) = &e.key_end {
                        el.data(attr::SET_ELEM_KEY_END, end);
                    }
                });
            }
        });
    a
}

const NFT_JUMP: i32 = -3;
const NFT_GOTO: i32 = -4;

/// Messages adding elements to the verdict map `set`: key -> go to chain (no return).
pub fn verdict_elements(table: &str, set: &str, elems: &[(Vec<u8>, &str)]) -> Attrs {
    let mut a = Attrs::new();
    a.str(attr::SET_ELEM_LIST_TABLE, table)
        .str(attr::SET_ELEM_LIST_SET, set)
        .nest(attr::SET_ELEM_LIST_ELEMENTS, |list| {
            for (key, chain) in elems {
                list.nest(attr::LIST_ELEM, |el| {
                    el.data(attr::SET_ELEM_KEY, key);
                    el.nest(attr::SET_ELEM_DATA, |d| {
                        d.nest(attr::DATA_VERDICT, |v| {
                            v.u32(attr::VERDICT_CODE, NFT_GOTO as u32);
                            v.str(attr::VERDICT_CHAIN, chain);
                        });
                    });
                });
            }
        });
    a
}

/// What a reply said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// An ack (`errno` 0) or an error for the request with sequence number `seq`, with the
    /// kernel's extended-ack message when it gave one.
    Ack {
        seq: u32,
        errno: i32,
        msg: Option<String>,
    },
    /// The end of a dump.
    Done { seq: u32 },
    /// Set elements from a dump.
    Elems { seq: u32, elems: Vec<Elem> },
    /// Anything else (ignored).
    Other { seq: u32 },
}

/// Why a reply could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a malformed netlink reply: {0}")]
pub struct ParseError(&'static str);

fn u16_at(b: &[u8], at: usize) -> Result<u16, ParseError> {
    b.get(at..at + 2)
        .map(|s| u16::from_ne_bytes([s[0], s[1]]))
        .ok_or(ParseError("truncated"))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, ParseError> {
    b.get(at..at + 4)
        .map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(ParseError("truncated"))
}

/// Iterates the attributes in `b`: (type without flags, value).
pub fn attrs(b: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8]), ParseError>> {
    let mut at = 0;
    std::iter::from_fn(move || {
        if at >= b.len() {
            return None;
        }
        let item = (|| {
            let len = usize::from(u16_at(b, at)?);
            let ty = u16_at(b, at + 2)? & NLA_TYPE_MASK;
            if len < 4 || at + len > b.len() {
                return Err(ParseError("an attribute overruns its message"));
            }
            Ok((ty, &b[at + 4..at + len], len))
        })();
        match item {
            Ok((ty, value, len)) => {
                at += (len + 3) & !3;
                Some(Ok((ty, value)))
            }
            Err(e) => {
                at = b.len();
                Some(Err(e))
            }
        }
    })
}

fn find(b: &[u8], want: u16) -> Result<Option<&[u8]>, ParseError> {
    for a in attrs(b) {
        let (ty, v) = a?;
        if ty == want {
            return Ok(Some(v));
        }
    }
    Ok(None)
}

fn data_value(nest: &[u8]) -> Result<Vec<u8>, ParseError> {
    find(nest, attr::DATA_VALUE)?
        .map(<[u8]>::to_vec)
        .ok_or(ParseError("a set element key without a value"))
}

fn parse_elems(body: &[u8]) -> Result<Vec<Elem>, ParseError> {
    let Some(list) = find(body, attr::SET_ELEM_LIST_ELEMENTS)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for item in attrs(list) {
        let (ty, el) = item?;
        if ty != attr::LIST_ELEM {
            continue;
        }
        let key = find(el, attr::SET_ELEM_KEY)?.ok_or(ParseError("a set element without a key"))?;
        let key_end = find(el, attr::SET_ELEM_KEY_END)?
            .map(data_value)
            .transpose()?;
        out.push(Elem {
            key: data_value(key)?,
            key_end,
        });
    }
    Ok(out)
}

/// Splits a buffer of netlink messages from the kernel into replies.
pub fn parse_replies(buf: &[u8]) -> Result<Vec<Reply>, ParseError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 16 <= buf.len() {
        let len = u32_at(buf, at)? as usize;
        if len < 16 || at + len > buf.len() {
            return Err(ParseError("a message overruns the buffer"));
        }
        let ty = u16_at(buf, at + 4)?;
        let flags = u16_at(buf, at + 6)?;
        let seq = u32_at(buf, at + 8)?;
        let body = &buf[at + 16..at + len];
        out.push(match ty {
            NLMSG_ERROR => {
                let errno = (u32_at(body, 0)? as i32).wrapping_neg();
                // The request's header follows, then its payload unless capped, then the
                // extended-ack attributes.
                let echoed = if flags & NLM_F_CAPPED != 0 {
                    16
                } else {
                    body.get(4..8)
                        .map(|_| u32_at(body, 4))
                        .transpose()?
                        .map_or(16, |l| l as usize)
                };
                let msg = if flags & NLM_F_ACK_TLVS != 0 {
                    body.get(4 + echoed..)
                        .map(|tlvs| find(tlvs, NLMSGERR_ATTR_MSG))
                        .transpose()?
                        .flatten()
                        .map(|m| {
                            String::from_utf8_lossy(m)
                                .trim_end_matches('\0')
                                .to_string()
                        })
                } else {
                    None
                };
                Reply::Ack { seq, errno, msg }
            }
            NLMSG_DONE => Reply::Done { seq },
            t if t == (NFNL_SUBSYS_NFTABLES << 8) | MsgType::NewSetElem as u16 => Reply::Elems {
                seq,
                // After the 4-byte nfgenmsg.
                elems: parse_elems(body.get(4..).ok_or(ParseError("truncated"))?)?,
            },
            _ => Reply::Other { seq },
        });
        at += (len + 3) & !3;
    }
    Ok(out)
}

/// Errors of the nfnetlink socket.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot {what}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// The kernel refused message `index` of a batch (so none of it was applied).
    #[error("nf_tables refused {what}: {}{}", std::io::Error::from_raw_os_error(*errno),
        msg.as_deref().map(|m| format!(" ({m})")).unwrap_or_default())]
    Refused {
        what: String,
        errno: i32,
        msg: Option<String>,
    },
    #[error("nf_tables did not answer in time")]
    Timeout,
}

impl NftError {
    /// The errno of a refusal.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NftError::Refused { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// What the guard needs from nf_tables: apply a batch, list a set's elements.
pub trait Netfilter {
    /// Applies `batch` atomically; `what` names each message for errors.
    fn commit(&mut self, batch: &Batch, what: &dyn Fn(usize) -> String) -> Result<(), NftError>;
    /// The elements of `set` in `table`.
    fn list(&mut self, table: &str, set: &str) -> Result<Vec<Elem>, NftError>;
}

/// A NETLINK_NETFILTER socket in the caller's network namespace.
#[derive(Debug)]
pub struct Socket {
    sock: netlink_sys::Socket,
    seq: u32,
    buf: Vec<u8>,
}

const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
const SEND_BUFFER: usize = 16 << 20;

impl Socket {
    pub fn open() -> Result<Socket, NftError> {
        let io = |what| move |source| NftError::Io { what, source };
        let mut sock = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_NETFILTER)
            .map_err(io("open a netfilter netlink socket"))?;
        sock.bind_auto()
            .map_err(io("bind a netfilter netlink socket"))?;
        // Small errors (the request's header only) with the kernel's reason in words.
        sock.set_cap_ack(true).map_err(io("set NETLINK_CAP_ACK"))?;
        sock.set_ext_ack(true).map_err(io("set NETLINK_EXT_ACK"))?;
        // Room for a whole batch (a table loaded with hundreds of ports' elements is one
        // message of several hundred KiB): forced past the system's limit as root.
        let fd = sock.as_fd();
        if nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::SndBufForce, &SEND_BUFFER)
            .is_err()
        {
            nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::SndBuf, &SEND_BUFFER)
                .map_err(|e| NftError::Io {
                    what: "size a netlink send buffer",
                    source: e.into(),
                })?;
        }
        // And for the errors of a refused large batch, or a large dump.
        if nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::RcvBufForce, &SEND_BUFFER)
            .is_err()
        {
            let _ =
                nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::RcvBuf, &SEND_BUFFER);
        }
        let tv = nix::sys::time::TimeVal::new(REPLY_TIMEOUT.as_secs() as _, 0);
        nix::sys::socket::setsockopt(
            &sock.as_fd(),
            nix::sys::socket::sockopt::ReceiveTimeout,
            &tv,
        )
        .map_err(|e| NftError::Io {
            what: "set a netlink receive timeout",
            source: e.into(),
        })?;
        let seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(1);
        Ok(Socket {
            sock,
            seq,
            buf: vec![0; 256 * 1024],
        })
    }

    fn recv(&mut self) -> Result<Vec<Reply>, NftError> {
        match self.sock.recv(&mut &mut self.buf[..], libc::MSG_TRUNC) {
            Ok(n) if n > self.buf.len() => Err(NftError::Parse(ParseError(
                "a reply larger than the receive buffer",
            ))),
            Ok(n) => Ok(parse_replies(&self.buf[..n])?),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Err(NftError::Timeout)
            }
            Err(source) => Err(NftError::Io {
                what: "read from nf_tables",
                source,
            }),
        }
    }

    fn next_seq(&mut self, n: u32) -> u32 {
        let s = self.seq;
        self.seq = self.seq.wrapping_add(n);
        s
    }
}

impl Netfilter for Socket {
    fn commit(&mut self, batch: &Batch, what: &dyn Fn(usize) -> String) -> Result<(), NftError> {
        if batch.is_empty() {
            return Ok(());
        }
        let n = batch.msgs.len() as u32;
        let seq = self.next_seq(n + 2);
        let bytes = batch.encode(seq);
        self.sock.send(&bytes, 0).map_err(|source| NftError::Io {
            what: "send to nf_tables",
            source,
        })?;
        // Errors for the messages that failed, then the last message's ack or error (the
        // kernel goes through the whole batch before it answers); any error means it
        // applied none of it.
        let last = seq.wrapping_add(n);
        let mut refused = None;
        let mut done = false;
        while !done {
            for r in self.recv()? {
                let Reply::Ack { seq: s, errno, msg } = r else {
                    continue;
                };
                let index = s.wrapping_sub(seq.wrapping_add(1)) as usize;
                if index >= n as usize {
                    // A late answer to an earlier request, or the batch itself.
                    if errno != 0 && s == seq {
                        return Err(NftError::Refused {
                            what: "the batch".into(),
                            errno,
                            msg,
                        });
                    }
                    continue;
                }
                done |= s == last;
                if errno != 0 && refused.is_none() {
                    refused = Some(NftError::Refused {
                        what: what(index),
                        errno,
                        msg,
                    });
                }
            }
        }
        refused.map_or(Ok(()), Err)
    }

    fn list(&mut self, table: &str, set: &str) -> Result<Vec<Elem>, NftError> {
        let seq = self.next_seq(1);
        self.sock
            .send(&dump_request(table, set, seq), 0)
            .map_err(|source| NftError::Io {
                what: "send to nf_tables",
                source,
            })?;
        let mut out = Vec::new();
        loop {
            for r in self.recv()? {
                match r {
                    Reply::Elems { seq: s, elems } if s == seq => out.extend(elems),
                    Reply::Done { seq: s } if s == seq => return Ok(out),
                    Reply::Ack { seq: s, errno, msg } if s == seq && errno != 0 => {
                        return Err(NftError::Refused {
                            what: format!("listing the set {set} of table {table}"),
                            errno,
                            msg,
                        });
                    }
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_nests_carry_their_length() {
        let mut a = Attrs::new();
        a.str(1, "ab").nest(3, |n| {
            n.u32(1, 0x0102_0304);
        });
        let b = a.bytes();
        // "ab\0" -> 4 + 3 = 7, padded to 8.
        assert_eq!(u16::from_ne_bytes([b[0], b[1]]), 7);
        assert_eq!(u16::from_ne_bytes([b[2], b[3]]), 1);
        assert_eq!(&b[4..8], b"ab\0\0");
        assert_eq!(u16::from_ne_bytes([b[8], b[9]]), 12);
        assert_eq!(u16::from_ne_bytes([b[10], b[11]]), 3 | NLA_F_NESTED);
        assert_eq!(&b[16..20], &[1, 2, 3, 4]);
        let parsed: Vec<(u16, &[u8])> = attrs(b).collect::<Result<_, _>>().expect("parses");
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0], (1, &b"ab\0"[..]));
        assert_eq!(parsed[1].0, 3);
    }

    #[test]
    fn a_batch_is_framed_and_numbered() {
        let mut b = Batch::new();
        let mut a = Attrs::new();
        a.str(attr::TABLE_NAME, "t");
        b.push(MsgType::NewTable, F_CREATE, &a);
        let bytes = b.encode(100);
        // begin (20) + table (20 + 8) + end (20)
        assert_eq!(bytes.len(), 68);
        let begin_type = u16::from_ne_bytes([bytes[4], bytes[5]]);
        assert_eq!(begin_type, NFNL_MSG_BATCH_BEGIN);
        assert_eq!(&bytes[18..20], &NFNL_SUBSYS_NFTABLES.to_be_bytes());
        let ty = u16::from_ne_bytes([bytes[24], bytes[25]]);
        assert_eq!(ty, (10 << 8) | MsgType::NewTable as u16);
        let flags = u16::from_ne_bytes([bytes[26], bytes[27]]);
        assert_eq!(flags, NLM_F_REQUEST | NLM_F_ACK | F_CREATE);
        assert_eq!(
            u32::from_ne_bytes([bytes[28], bytes[29], bytes[30], bytes[31]]),
            101
        );
        assert_eq!(bytes[36], FAMILY_BRIDGE);
        let end_seq = u32::from_ne_bytes([bytes[56], bytes[57], bytes[58], bytes[59]]);
        assert_eq!(end_seq, 102);
    }

    fn nlmsg(ty: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(&flags.to_ne_bytes());
        v.extend_from_slice(&seq.to_ne_bytes());
        v.extend_from_slice(&0u32.to_ne_bytes());
        v.extend_from_slice(body);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    #[test]
    fn replies_decode_acks_errors_and_elements() {
        let mut buf = Vec::new();
        // An ack for seq 5.
        let mut ack = 0i32.to_ne_bytes().to_vec();
        ack.extend_from_slice(&[0; 16]);
        buf.extend(nlmsg(NLMSG_ERROR, NLM_F_CAPPED, 5, &ack));
        // ENOENT for seq 6, with an extended-ack message.
        let mut err = (-libc::ENOENT).to_ne_bytes().to_vec();
        err.extend_from_slice(&[0; 16]);
        let mut tlv = Attrs::new();
        tlv.str(NLMSGERR_ATTR_MSG, "no such set");
        err.extend_from_slice(tlv.bytes());
        buf.extend(nlmsg(NLMSG_ERROR, NLM_F_CAPPED | NLM_F_ACK_TLVS, 6, &err));
        // Elements of a dump for seq 7.
        let mut body = vec![FAMILY_BRIDGE, 0, 0, 0];
        let elems = [
            Elem {
                key: vec![1, 2, 3, 4],
                key_end: None,
            },
            Elem {
                key: vec![5; 8],
                key_end: Some(vec![6; 8]),
            },
        ];
        body.extend_from_slice(elements("t", "s", &elems).bytes());
        buf.extend(nlmsg((10 << 8) | 12, 0, 7, &body));
        buf.extend(nlmsg(NLMSG_DONE, 0, 7, &0u32.to_ne_bytes()));
        let r = parse_replies(&buf).expect("parses");
        assert_eq!(
            r,
            vec![
                Reply::Ack {
                    seq: 5,
                    errno: 0,
                    msg: None
                },
                Reply::Ack {
                    seq: 6,
                    errno: libc::ENOENT,
                    msg: Some("no such set".into())
                },
                Reply::Elems {
                    seq: 7,
                    elems: elems.to_vec()
                },
                Reply::Done { seq: 7 },
            ]
        );
    }

    /// The fuzz target's property (fuzz/fuzz_targets/nft_replies.rs) on mutations of real
    /// replies, deterministically, so it runs with the unit tests.
    #[test]
    fn mutated_replies_never_panic() {
        let mut body = vec![FAMILY_BRIDGE, 0, 0, 0];
        let elems = [Elem {
            key: vec![5; 8],
            key_end: Some(vec![6; 8]),
        }];
        body.extend_from_slice(elements("t", "s", &elems).bytes());
        let mut seed = nlmsg((10 << 8) | 12, 0, 7, &body);
        let mut err = (-libc::ENOENT).to_ne_bytes().to_vec();
        err.extend_from_slice(&[0; 16]);
        let mut tlv = Attrs::new();
        tlv.str(NLMSGERR_ATTR_MSG, "no such set");
        err.extend_from_slice(tlv.bytes());
        seed.extend(nlmsg(NLMSG_ERROR, NLM_F_CAPPED | NLM_F_ACK_TLVS, 6, &err));
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            let mut buf = seed.clone();
            for _ in 0..1 + (x % 4) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let at = (x as usize) % buf.len();
                buf[at] = (x >> 32) as u8;
            }
            if let Ok(replies) = parse_replies(&buf[..buf.len() - (x as usize % 3)]) {
                for r in replies {
                    if let Reply::Elems { elems, .. } = r {
                        let _ = elements("t", "s", &elems);
                    }
                }
            }
        }
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        let good = nlmsg(NLMSG_DONE, 0, 1, &[0; 4]);
        for cut in 0..good.len() {
            let _ = parse_replies(&good[..cut]);
        }
        // A length past the buffer.
        let mut bad = good.clone();
        bad[0] = 200;
        assert!(parse_replies(&bad).is_err());
        // An element list whose attribute claims more bytes than it has.
        let mut body = vec![FAMILY_BRIDGE, 0, 0, 0];
        body.extend_from_slice(&[8, 0, 3, 0x80, 200, 0, 1, 0]);
        assert!(parse_replies(&nlmsg((10 << 8) | 12, 0, 1, &body)).is_err());
        // An element without a key.
        let mut body = vec![FAMILY_BRIDGE, 0, 0, 0];
        let mut a = Attrs::new();
        a.nest(attr::SET_ELEM_LIST_ELEMENTS, |l| {
            l.nest(attr::LIST_ELEM, |_| {});
        });
        body.extend_from_slice(a.bytes());
        assert!(parse_replies(&nlmsg((10 << 8) | 12, 0, 1, &body)).is_err());
    }
}

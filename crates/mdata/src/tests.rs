//! Frames here were made by Python's binascii.crc32 and base64 (what cloud-init uses), not
//! by this crate, so a wrong CRC or encoding here cannot agree with itself.

use super::client::{self, Call, Reply, ReplyError};
use super::*;

#[test]
fn a_bare_newline_and_junk_are_invalid_commands() {
    for line in [
        &b""[..],
        b"\r",
        b"   ",
        b" GET x",
        b"NEGOTIATE",
        b"GET",
        b"GET  ",
    ] {
        assert_eq!(parse_request(line), Incoming::InvalidCommand, "{line:?}");
    }
    assert_eq!(INVALID_COMMAND, b"invalid command\n");
}

#[test]
fn negotiation_answers_v2_only() {
    assert_eq!(
        parse_request(b"NEGOTIATE V2"),
        Incoming::Negotiate { v2: true }
    );
    assert_eq!(encode_negotiate(true), b"V2_OK\n");
    assert_eq!(
        parse_request(b"NEGOTIATE V3"),
        Incoming::Negotiate { v2: false }
    );
    assert_eq!(encode_negotiate(false), b"FAILURE\n");
}

#[test]
fn v2_get_parses_from_clouds_init_framing() {
    assert_eq!(
        parse_request(b"V2 25 8cf8e622 dc4fae17 GET c2RjOnV1aWQ=\n"),
        Incoming::V2 {
            reqid: "dc4fae17".into(),
            request: Ok(Request::Get("sdc:uuid".into())),
        }
    );
}

#[test]
fn v2_put_carries_a_base64_key_and_value_inside_base64() {
    assert_eq!(
        parse_request(b"V2 25 a510d06f 00000001 PUT YXc9PSBkaUF4"),
        Incoming::V2 {
            reqid: "00000001".into(),
            request: Ok(Request::Put {
                key: "k".into(),
                value: "v 1".into()
            }),
        }
    );
}

#[test]
fn replies_match_what_python_computes() {
    assert_eq!(
        encode_v2("dc4fae17", &Answer::Value("hello".into())),
        b"V2 25 a6a4257d dc4fae17 SUCCESS aGVsbG8=\n"
    );
    assert_eq!(
        encode_v2("0000002a", &Answer::NotFound),
        b"V2 17 c1454fd2 0000002a NOTFOUND\n"
    );
    assert_eq!(
        encode_v2(
            "00000001",
            &Answer::Failure("Unknown command NEGOTIATE".into())
        ),
        &b"V2 53 e25b2896 00000001 FAILURE VW5rbm93biBjb21tYW5kIE5FR09USUFURQ==\n"[..]
    );
}

#[test]
fn a_bad_length_or_crc_drops_the_frame() {
    assert_eq!(
        parse_request(b"V2 24 8cf8e622 dc4fae17 GET c2RjOnV1aWQ="),
        Incoming::Dropped(FrameError::Length { said: 24, body: 25 })
    );
    assert_eq!(
        parse_request(b"V2 25 8cf8e623 dc4fae17 GET c2RjOnV1aWQ="),
        Incoming::Dropped(FrameError::Crc {
            said: 0x8cf8_e623,
            body: 0x8cf8_e622
        })
    );
    for line in [
        &b"V2"[..],
        b"V2 25",
        b"V2 x 8cf8e622 dc4fae17 GET c2RjOnV1aWQ=",
        b"V2 25 XYZ dc4fae17 GET c2RjOnV1aWQ=",
        b"V2 999999999 8cf8e622 dc4fae17 GET c2RjOnV1aWQ=",
    ] {
        assert_eq!(
            parse_request(line),
            Incoming::Dropped(FrameError::Syntax),
            "{line:?}"
        );
    }
    let long = vec![b'A'; MAX_REQUEST_LINE];
    assert_eq!(parse_request(&long), Incoming::Dropped(FrameError::TooLong));
    assert_eq!(
        parse_request("GET ключ".as_bytes()),
        Incoming::Dropped(FrameError::TooLong)
    );
}

/// A correct frame around `body`, made here the way the client module makes one.
fn framed(body: &str) -> Vec<u8> {
    format!("V2 {} {:08x} {body}", body.len(), crc32(body.as_bytes())).into_bytes()
}

#[test]
fn well_framed_but_wrong_requests_are_refused_with_a_reason() {
    let refused = |body: &str| match parse_request(&framed(body)) {
        Incoming::V2 { request, .. } => request.expect_err("refused"),
        other => panic!("{body}: {other:?}"),
    };
    assert_eq!(refused("0a GET"), Refusal::NoKey("GET"));
    assert_eq!(refused("0a DELETE IA=="), Refusal::NoKey("DELETE"));
    assert_eq!(refused("0a GET !!!"), Refusal::NotBase64);
    assert_eq!(refused("0a GET /w=="), Refusal::NotText);
    assert_eq!(refused("0a PUT YQ=="), Refusal::BadPut);
    assert_eq!(
        refused("0a NEGOTIATE"),
        Refusal::UnknownCommand("NEGOTIATE".into())
    );
    assert_eq!(refused("0a FROB"), Refusal::UnknownCommand("FROB".into()));
    assert_eq!(
        Refusal::UnknownCommand("FROB".into()).to_string(),
        "Unknown command FROB"
    );
    // An id that is not lower-case hex is not a frame SmartOS would read.
    assert_eq!(
        parse_request(&framed("ZZ GET YQ==")),
        Incoming::Dropped(FrameError::Syntax)
    );
}

#[test]
fn v1_has_get_and_keys_only() {
    assert_eq!(
        parse_request(b"GET user-script  \r"),
        Incoming::V1(Ok(Request::Get("user-script".into())))
    );
    assert_eq!(parse_request(b"KEYS"), Incoming::V1(Ok(Request::Keys)));
    assert_eq!(
        parse_request(b"PUT a b"),
        Incoming::V1(Err(Refusal::UnknownCommand("PUT".into())))
    );
}

#[test]
fn v1_values_are_dot_stuffed() {
    assert_eq!(
        encode_v1(&Answer::Value("a\n.b\nc".into())),
        b"SUCCESS\na\n..b\nc\n.\n"
    );
    assert_eq!(encode_v1(&Answer::NotFound), b"NOTFOUND\n");
    assert_eq!(encode_v1(&Answer::Failure("x".into())), b"FAILURE\n");
}

#[test]
fn the_client_encodes_what_the_agent_parses() {
    assert_eq!(
        client::encode(0xdc4f_ae17, Call::Get("sdc:uuid")),
        "V2 25 8cf8e622 dc4fae17 GET c2RjOnV1aWQ=\n"
    );
    assert_eq!(
        client::encode(1, Call::Put("k", "v 1")),
        "V2 25 a510d06f 00000001 PUT YXc9PSBkaUF4\n"
    );
    for call in [
        Call::Keys,
        Call::Delete("a b"),
        Call::Put("ключ", "значение\n"),
    ] {
        let line = client::encode(7, call);
        let Incoming::V2 { reqid, request } = parse_request(line.trim_end().as_bytes()) else {
            panic!("{line}");
        };
        assert_eq!(reqid, "00000007");
        let expected = match call {
            Call::Keys => Request::Keys,
            Call::Delete(k) => Request::Delete(k.into()),
            Call::Put(k, v) => Request::Put {
                key: k.into(),
                value: v.into(),
            },
            Call::Get(k) => Request::Get(k.into()),
        };
        assert_eq!(request, Ok(expected));
    }
}

#[test]
fn the_client_checks_what_it_reads() {
    let id = 0xdc4f_ae17;
    assert_eq!(
        client::decode("V2 25 a6a4257d dc4fae17 SUCCESS aGVsbG8=", id),
        Ok(Reply::Success("hello".into()))
    );
    assert_eq!(
        client::decode("V2 17 c1454fd2 0000002a NOTFOUND", 0x2a),
        Ok(Reply::NotFound)
    );
    assert_eq!(
        client::decode("V2 25 a6a4257e dc4fae17 SUCCESS aGVsbG8=", id),
        Err(ReplyError::Corrupt)
    );
    assert_eq!(
        client::decode("V2 17 c1454fd2 0000002a NOTFOUND", id),
        Err(ReplyError::OtherRequest {
            want: "dc4fae17".into(),
            got: "0000002a".into()
        })
    );
    assert!(matches!(
        client::decode("invalid command", id),
        Err(ReplyError::Syntax(_))
    ));
}

#[test]
fn base64_takes_padding_or_none() {
    assert_eq!(base64_decode("aGVsbG8="), Some(b"hello".to_vec()));
    assert_eq!(base64_decode("aGVsbG8"), Some(b"hello".to_vec()));
    assert_eq!(base64_decode(""), Some(Vec::new()));
    assert_eq!(base64_decode("a"), None);
    // Bits past the last byte are ignored, as node's decoder (SmartOS's) ignores them.
    assert_eq!(base64_decode("a2"), Some(b"k".to_vec()));
    assert_eq!(base64_decode("aGV sbG8="), None);
}

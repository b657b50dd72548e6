//! Acceptance 6: malformed JSON, a 64 MiB body, invalid UTF-8, a wrong content type, an
//! unknown route or method: a JSON error with a 4xx status, and the daemon keeps serving.

use hull_tests::{Daemon, raw_http, request};
use serde_json::Value;

fn assert_json_4xx(d: &Daemon, label: &str, req: &[u8], want: u16) {
    let (status, body) = raw_http(&d.socket(), req);
    assert_eq!(status, want, "{label}: status (body {body:?})");
    let v: Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("{label}: body is not JSON ({e}): {body:?}"));
    assert!(
        v["code"].is_string() && v["message"].is_string(),
        "{label}: {v}"
    );
    assert!(d.client().ping().is_ok(), "{label}: daemon stopped serving");
}

#[test]
fn bad_requests_get_json_4xx_and_the_daemon_keeps_serving() {
    let d = Daemon::start();
    let json = Some("application/json");
    assert_json_4xx(
        &d,
        "malformed JSON",
        &request("POST", "/v1/vms", json, b"{\"brand\": "),
        400,
    );
    assert_json_4xx(
        &d,
        "JSON array",
        &request("POST", "/v1/vms", json, b"[1,2]"),
        400,
    );
    assert_json_4xx(
        &d,
        "invalid UTF-8",
        &request("POST", "/v1/vms", json, b"{\"alias\": \"\xff\xfe\"}"),
        400,
    );
    assert_json_4xx(
        &d,
        "wrong content type",
        &request("POST", "/v1/vms", Some("text/plain"), b"{}"),
        415,
    );
    assert_json_4xx(
        &d,
        "no content type",
        &request("POST", "/v1/vms", None, b"{}"),
        415,
    );
    assert_json_4xx(
        &d,
        "unknown route",
        &request("GET", "/v1/frobs", None, b""),
        404,
    );
    assert_json_4xx(
        &d,
        "not a uuid",
        &request("GET", "/v1/vms/../../etc/passwd", None, b""),
        404,
    );
    assert_json_4xx(
        &d,
        "unknown method",
        &request("BREW", "/v1/vms", None, b""),
        405,
    );
    assert_json_4xx(
        &d,
        "wrong method",
        &request("DELETE", "/v1/ping", None, b""),
        405,
    );
    assert_json_4xx(
        &d,
        "bad query",
        &request("GET", "/v1/vms?frob=1", None, b""),
        400,
    );
    assert_json_4xx(
        &d,
        "body on a GET",
        &request("GET", "/v1/ping", json, b"{}"),
        400,
    );
    // Declared 64 MiB: refused from the header, before reading.
    let mut big = format!("POST /v1/vms HTTP/1.1\r\nHost: v\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", 64 << 20).into_bytes();
    big.extend(std::iter::repeat_n(b' ', 1 << 20));
    assert_json_4xx(&d, "64 MiB declared", &big, 413);
    // 64 MiB really sent, chunked, with no length declared.
    let mut chunked = b"POST /v1/vms HTTP/1.1\r\nHost: v\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let chunk = vec![b' '; 1 << 20];
    for _ in 0..64 {
        chunked.extend(format!("{:x}\r\n", chunk.len()).as_bytes());
        chunked.extend(&chunk);
        chunked.extend(b"\r\n");
    }
    chunked.extend(b"0\r\n\r\n");
    assert_json_4xx(&d, "64 MiB chunked", &chunked, 413);
    // Garbage that is not HTTP at all must not hurt the daemon either.
    let _ = raw_http(&d.socket(), b"\x00\x01\x02 not http\r\n\r\n");
    assert!(d.client().ping().is_ok(), "garbage stopped the daemon");
}

//! Bytes as a guest sends them to the metadata agent, and as an agent's reply reaches a
//! client: any line may be refused or dropped, none may panic, and every request the agent
//! accepts must come out of the client's encoder the same.
#![no_main]

use hull_mdata::client::{self, Call};
use hull_mdata::{Incoming, Request, parse_request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Incoming::V2 {
        request: Ok(request),
        ..
    } = parse_request(data)
    {
        let call = match &request {
            Request::Get(k) => Call::Get(k),
            Request::Keys => Call::Keys,
            Request::Put { key, value } => Call::Put(key, value),
            Request::Delete(k) => Call::Delete(k),
        };
        let line = client::encode(1, call);
        match parse_request(line.trim_end_matches('\n').as_bytes()) {
            Incoming::V2 { request: Ok(again), .. } => assert_eq!(again, request),
            other => panic!("{request:?} re-encoded as {line:?} parses as {other:?}"),
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = client::decode(text, 1);
    }
});

//! Untrusted request lines through the router and list filters: a method, a path and a
//! query built from the input may be refused, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmmd::api::router::route;
use vmmd::service::filter::Filter;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let method = parts.next().unwrap_or("GET");
    let path = parts.next().unwrap_or("/");
    let query = parts.next();
    if let Ok(m) = hyper::Method::from_bytes(method.as_bytes()) {
        let _ = route(&m, path, query);
    }
    if let Ok(f) = Filter::parse(&text) {
        let _ = f.matches(&serde_json::json!({"alias": "a", "nics": [{"ip": "192.0.2.1"}], "tags": {"k": 1}}));
    }
});

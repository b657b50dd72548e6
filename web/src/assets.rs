//! The browser assets web/frontend/build made (embedded: the binary is all a host needs),
//! each whole and gzipped.

/// One asset: its name under /assets/, its type, and its bytes whole and gzipped.
#[derive(Debug)]
pub struct Asset {
    pub name: &'static str,
    pub kind: &'static str,
    pub body: &'static [u8],
    pub gzip: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $kind:literal) => {
        Asset {
            name: $name,
            kind: $kind,
            body: include_bytes!(concat!(env!("OUT_DIR"), "/", $name)),
            gzip: include_bytes!(concat!(env!("OUT_DIR"), "/", $name, ".gz")),
        }
    };
}

/// Every asset: xterm.js (npm's @xterm/xterm, as the lockfile pins it), its style sheet and
/// license, and the console page's script.
pub static ASSETS: [Asset; 4] = [
    asset!("xterm.mjs", "text/javascript; charset=utf-8"),
    asset!("xterm.css", "text/css; charset=utf-8"),
    asset!("console.js", "text/javascript; charset=utf-8"),
    asset!("xterm.LICENSE", "text/plain; charset=utf-8"),
];

/// The asset at `/assets/NAME`.
pub fn find(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name)
}

//! `zoned run [--hold] DIR` supervises one zone; `zoned spare ZONES CGROUP` is one made ahead,
//! waiting for a zone's directory on stdin; `zoned exec DIR [-t] [-- CMD ARGS...]` runs a command
//! (or a login shell) in a running zone. vmmd starts the first, zlogin the second.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

const USAGE: &str = "usage: zoned run [--hold] DIR\n       zoned spare ZONES CGROUP\n       zoned exec DIR [-t] [-u USER] [-e NAME=VALUE]... [-w DIR] [-- CMD [ARGS...]]";

/// `run`'s arguments: `[--hold] DIR`.
fn run_args(args: &[String]) -> Option<(&Path, bool)> {
    match args {
        [dir] => Some((Path::new(dir), false)),
        [flag, dir] if flag == "--hold" => Some((Path::new(dir), true)),
        _ => None,
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("run") if run_args(&args[1..]).is_some() => {
            let (dir, hold) = run_args(&args[1..]).unwrap_or((Path::new(""), false));
            match zoned::run::run(dir, hold) {
                Ok(state) => {
                    eprintln!("zoned: zone stopped ({:?})", state.last_exit);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("zoned: {}", hull_sys::chain(&e));
                    ExitCode::FAILURE
                }
            }
        }
        Some("spare") if args.len() == 3 => {
            match zoned::run::spare(Path::new(&args[1]), &args[2]) {
                Ok(Some(state)) => {
                    eprintln!("zoned: zone stopped ({:?})", state.last_exit);
                    ExitCode::SUCCESS
                }
                Ok(None) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("zoned: {}", hull_sys::chain(&e));
                    ExitCode::FAILURE
                }
            }
        }
        Some("exec") if args.len() >= 2 => {
            let dir = PathBuf::from(&args[1]);
            let (opts, rest) = match zoned::exec::ExecOptions::parse(&args[2..]) {
                Ok(parsed) => parsed,
                Err(e) => {
                    eprintln!("{e}\n{USAGE}");
                    return ExitCode::from(2);
                }
            };
            match zoned::exec::exec(&dir, rest, &opts) {
                Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
                Err(e) => {
                    eprintln!("zlogin: {}", hull_sys::chain(&e));
                    ExitCode::from(1)
                }
            }
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

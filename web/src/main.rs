//! `hull-web`: see the library's documentation and docs/web.md.

use std::io::{BufRead as _, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Parser;

use hull_web::server::{Config, run};
use hull_web::tls::CertFiles;

/// hull's web console: HTTPS in front of vmmd's socket.
#[derive(Debug, Parser)]
#[command(name = "hull-web", version)]
struct Args {
    /// vmmd's API socket.
    #[arg(long, default_value = "/run/hull/vmmd.sock", env = "HULL_SOCKET")]
    socket: PathBuf,
    /// Where its passwords, certificate, metrics token and audit log are (0700).
    #[arg(long, default_value = "/var/lib/hull/web")]
    state_dir: PathBuf,
    /// The address and port to serve HTTPS on (plain HTTP there gets a redirect).
    #[arg(long, default_value = "0.0.0.0:8006")]
    listen: SocketAddr,
    /// A certificate (PEM) of the operator's, in place of the self-signed one.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Store USER's password (read from stdin, one line) as a hash, then exit.
    #[arg(long, value_name = "USER")]
    set_password: Option<String>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(user) = &args.set_password {
        std::fs::create_dir_all(&args.state_dir)
            .with_context(|| format!("create {}", args.state_dir.display()))?;
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("read the password from stdin")?;
        let password = line.trim_end_matches(['\n', '\r']);
        if password.is_empty() {
            bail!("no password on stdin");
        }
        hull_web::auth::set_password(&args.state_dir, user, password)?;
        println!("hull-web: {user}'s password is set");
        return Ok(());
    }
    let cert = match (args.cert, args.key) {
        (Some(cert), Some(key)) => Some(CertFiles { cert, key }),
        _ => None,
    };
    let cfg = Config {
        socket: args.socket,
        state: args.state_dir,
        listen: args.listen,
        cert,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the runtime")?;
    rt.block_on(run(cfg, |addr| {
        println!("hull-web: listening on https://{addr}");
        let _ = std::io::stdout().flush();
    }))
}

//! `vmadm`: see hull_cli::vmadm.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = hull_cli::vmadm::Cli::parse();
    hull_cli::finish("vmadm", hull_cli::vmadm::run(cli))
}

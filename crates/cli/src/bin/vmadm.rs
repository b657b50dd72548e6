//! `vmadm`: see hull_cli::vmadm.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = hull_cli::vmadm::Cli::parse_from(hull_cli::vmadm::smartos_argv(std::env::args_os()));
    hull_cli::finish("vmadm", hull_cli::vmadm::run(cli))
}

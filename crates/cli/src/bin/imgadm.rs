//! `imgadm`: see hull_cli::imgadm.

use clap::Parser;

fn main() -> std::process::ExitCode {
    hull_cli::finish(
        "imgadm",
        hull_cli::imgadm::run(hull_cli::imgadm::Cli::parse()),
    )
}

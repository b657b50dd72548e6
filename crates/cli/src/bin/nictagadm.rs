//! `nictagadm`: see hull_cli::nictagadm.

use clap::Parser;

fn main() -> std::process::ExitCode {
    hull_cli::finish(
        "nictagadm",
        hull_cli::nictagadm::run(hull_cli::nictagadm::Cli::parse()),
    )
}

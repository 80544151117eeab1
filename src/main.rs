//! `sfam`: the SFAM Studio command line. With no arguments it will open the
//! desktop app; subcommands do the same work headless.

mod app;
mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    sfam_studio::model::device::tune_host_allocator();
    cli::main()
}
